//! Whole-model benchmarks on the bundled fixtures (compile once, then time canonical execution).
use criterion::{criterion_group, criterion_main, Criterion};
use std::hint::black_box;
use std::path::Path;
use verity_compiler::{compile, CompileOptions};
use verity_engine::io::{inputs_from_json, quantize_inputs};
use verity_engine::{Executor, Mode};

fn bench(c: &mut Criterion) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures");
    for name in ["mlp", "cnn", "transformer", "digits"] {
        let onnx = std::fs::read(dir.join(format!("{name}.onnx"))).expect("fixture");
        let (model, _) = compile(&onnx, &CompileOptions::default()).expect("compile");
        let text = std::fs::read_to_string(dir.join(format!("{name}.input.json"))).expect("input");
        let q = quantize_inputs(&model, &inputs_from_json(&model, &text).expect("json"))
            .expect("quantize");
        let exec = Executor::new(&model, Mode::Fast { threads: 1 });
        c.bench_function(&format!("model::run/fixture={name}"), |b| {
            b.iter(|| black_box(exec.run(q.clone()).unwrap()))
        });
        let reference = Executor::new(&model, Mode::Reference);
        c.bench_function(&format!("model::run/fixture={name},exec=reference"), |b| {
            b.iter(|| black_box(reference.run(q.clone()).unwrap()))
        });
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20);
    targets = bench
}
criterion_main!(benches);
