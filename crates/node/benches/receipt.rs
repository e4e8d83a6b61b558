//! The per-request costs a node adds to the engine: the traced run, trace commitments, receipt signing,
//! and request decoding.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use verity_core::receipt::receipt_domain;
use verity_core::{keccak256, Address, Receipt, SecretKey};
use verity_engine::commit::trace_roots;
use verity_engine::io::{inputs_from_json, quantize_inputs};
use verity_engine::{vty, Executor, Mode};

fn fixture(name: &str) -> Option<(verity_engine::Model, Vec<Vec<i32>>, String)> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures");
    let onnx = std::fs::read(root.join(format!("{name}.onnx"))).ok()?;
    let opts = verity_compiler::CompileOptions {
        input_ranges: vec![],
        default_range: (0.0, 1.0),
        ..Default::default()
    };
    let (m, _) = verity_compiler::compile(&onnx, &opts).ok()?;
    let text = std::fs::read_to_string(root.join(format!("{name}.input.json"))).ok()?;
    let q = quantize_inputs(&m, &inputs_from_json(&m, &text).ok()?).ok()?;
    Some((m, q, text))
}

fn bench(c: &mut Criterion) {
    let key = SecretKey::random();
    let r = Receipt {
        request_id: keccak256(b"r"),
        model_id: keccak256(b"m"),
        input_hash: keccak256(b"i"),
        output_hash: keccak256(b"o"),
        trace_root: keccak256(b"t"),
        node: key.address(),
        timestamp: 1,
    };
    let domain = receipt_domain(31337, Address::ZERO);
    c.bench_function("receipt::sign", |b| {
        b.iter(|| black_box(r.sign(domain.clone(), &key)))
    });
    let signed = r.sign(domain.clone(), &key);
    c.bench_function("receipt::verify", |b| b.iter(|| black_box(signed.verify())));

    for name in ["mlp", "cnn"] {
        let Some((m, q, text)) = fixture(name) else {
            continue;
        };
        let exec = Executor::new(&m, Mode::Fast { threads: 1 });
        c.bench_function(&format!("node::run/model={name}"), |b| {
            b.iter(|| black_box(exec.run(q.clone())))
        });
        c.bench_function(&format!("node::run_trace_commit/model={name}"), |b| {
            b.iter(|| {
                let (_, t) = exec.run_trace(q.clone()).unwrap_or_default_trace();
                black_box(vty::list_root(&trace_roots(&t)))
            })
        });
        let body = format!("{{\"inputs\": {text}}}");
        c.bench_function(&format!("node::decode_json/model={name}"), |b| {
            b.iter(|| {
                black_box(verity_node::tensors::decode_native(
                    body.as_bytes(),
                    1 << 24,
                ))
            })
        });
    }
}

trait OrEmpty {
    fn unwrap_or_default_trace(self) -> (Vec<Vec<i32>>, verity_engine::Trace);
}

impl OrEmpty for Result<(Vec<Vec<i32>>, verity_engine::Trace), verity_engine::ExecError> {
    fn unwrap_or_default_trace(self) -> (Vec<Vec<i32>>, verity_engine::Trace) {
        self.unwrap_or_else(|_| {
            (
                Vec::new(),
                verity_engine::Trace {
                    tensors: Vec::new(),
                },
            )
        })
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
