//! Prometheus text-format metrics, kept in atomics and one small map (no external registry).

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// Latency histogram bucket bounds, seconds.
const BUCKETS: [f64; 12] = [
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.1, 1.0, 10.0,
];

/// A fixed-bucket histogram.
#[derive(Default)]
pub struct Histogram {
    counts: [AtomicU64; 12],
    count: AtomicU64,
    sum_ns: AtomicU64,
}

impl Histogram {
    /// Record one observation.
    pub fn observe(&self, secs: f64) {
        for (b, c) in BUCKETS.iter().zip(&self.counts) {
            if secs <= *b {
                c.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_ns
            .fetch_add((secs * 1e9) as u64, Ordering::Relaxed);
    }

    fn render(&self, name: &str, out: &mut String) {
        let _ = writeln!(out, "# TYPE {name} histogram");
        for (b, c) in BUCKETS.iter().zip(&self.counts) {
            let _ = writeln!(
                out,
                "{name}_bucket{{le=\"{b}\"}} {}",
                c.load(Ordering::Relaxed)
            );
        }
        let n = self.count.load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {n}");
        let _ = writeln!(
            out,
            "{name}_sum {}",
            self.sum_ns.load(Ordering::Relaxed) as f64 / 1e9
        );
        let _ = writeln!(out, "{name}_count {n}");
    }
}

/// All node metrics.
#[derive(Default)]
pub struct Metrics {
    /// HTTP responses by (route, status).
    pub http: Mutex<BTreeMap<(String, u16), u64>>,
    /// Successful inferences.
    pub inferences: AtomicU64,
    /// Failed inferences (bad input or execution error).
    pub inference_errors: AtomicU64,
    /// Engine time per inference (quantize, execute, commit, sign).
    pub inference_seconds: Histogram,
    /// Requests waiting for or holding a worker.
    pub in_flight: AtomicU64,
    /// Requests refused because the queue was full.
    pub rejected_busy: AtomicU64,
    /// Models published here (new name@version).
    pub publishes: AtomicU64,
    /// Publish attempts refused.
    pub publish_errors: AtomicU64,
    /// Models loaded into the cache.
    pub model_loads: AtomicU64,
    /// Connections closed at once because their IP had too many open.
    pub rejected_connections: AtomicU64,
}

impl Metrics {
    /// Count one HTTP response.
    pub fn http(&self, route: &str, status: u16) {
        if let Ok(mut m) = self.http.lock() {
            *m.entry((route.to_string(), status)).or_insert(0) += 1;
        }
    }

    /// Render in the Prometheus text format; `gauges` are extra name/value pairs, `models` each stored
    /// model's ID with its cost per inference.
    pub fn render(
        &self,
        gauges: &[(&str, f64)],
        models: &[(verity_core::Hash, verity_engine::Cost)],
    ) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "# TYPE verity_http_responses_total counter");
        if let Ok(m) = self.http.lock() {
            for ((route, status), n) in m.iter() {
                let _ = writeln!(
                    out,
                    "verity_http_responses_total{{route=\"{route}\",status=\"{status}\"}} {n}"
                );
            }
        }
        let counters = [
            ("verity_inferences_total", &self.inferences),
            ("verity_inference_errors_total", &self.inference_errors),
            ("verity_rejected_busy_total", &self.rejected_busy),
            ("verity_publishes_total", &self.publishes),
            ("verity_publish_errors_total", &self.publish_errors),
            ("verity_model_loads_total", &self.model_loads),
            (
                "verity_rejected_connections_total",
                &self.rejected_connections,
            ),
        ];
        for (name, c) in counters {
            let _ = writeln!(out, "# TYPE {name} counter");
            let _ = writeln!(out, "{name} {}", c.load(Ordering::Relaxed));
        }
        let _ = writeln!(out, "# TYPE verity_in_flight gauge");
        let _ = writeln!(
            out,
            "verity_in_flight {}",
            self.in_flight.load(Ordering::Relaxed)
        );
        for (name, v) in gauges {
            let _ = writeln!(out, "# TYPE {name} gauge");
            let _ = writeln!(out, "{name} {v}");
        }
        type Figure = fn(&verity_engine::Cost) -> u64;
        let per_model: [(&str, Figure); 5] = [
            ("verity_model_macs", |c| c.macs),
            ("verity_model_element_ops", |c| c.element_ops),
            ("verity_model_memory_bytes", |c| {
                c.const_bytes.saturating_add(c.traced_peak_bytes)
            }),
            ("verity_model_peak_bytes", |c| c.peak_bytes),
            ("verity_model_trace_bytes", |c| c.trace_bytes),
        ];
        for (name, f) in per_model {
            let _ = writeln!(out, "# TYPE {name} gauge");
            for (id, c) in models {
                let _ = writeln!(out, "{name}{{model=\"{id}\"}} {}", f(c));
            }
        }
        self.inference_seconds
            .render("verity_inference_seconds", &mut out);
        out
    }
}
