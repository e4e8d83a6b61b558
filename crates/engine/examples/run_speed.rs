//! Untraced latency of a `.vty` model on one `.npy` input, for profiling the executor alone:
//! `cargo run --release -p verity-engine --example run_speed -- model.vty input.npy [runs] [threads]`.
use std::time::Instant;
use verity_engine::{Executor, Mode};

mod common;

fn main() {
    let a: Vec<String> = std::env::args().skip(1).collect();
    let (model, q) = common::model_and_input(&a);
    let runs: usize = a.get(2).and_then(|s| s.parse().ok()).unwrap_or(20);
    let threads: usize = a.get(3).and_then(|s| s.parse().ok()).unwrap_or(1);
    let ex = Executor::new(&model, Mode::Fast { threads });
    ex.run(q.clone()).expect("runs");
    let mut t: Vec<f64> = (0..runs)
        .map(|_| {
            let t0 = Instant::now();
            std::hint::black_box(ex.run(q.clone()).expect("runs"));
            t0.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    t.sort_by(f64::total_cmp);
    println!(
        "median {:.2} ms, min {:.2} ms over {runs} runs",
        t[runs / 2],
        t[0]
    );
}
