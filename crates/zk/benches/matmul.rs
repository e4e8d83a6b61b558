//! Proving and checking one matrix product the size of the MLP fixture's first layer (1×784 · 784×128),
//! next to computing the product directly.

use criterion::{criterion_group, criterion_main, Criterion};
use verity_zk::matmul::{prove, verify, Statement};

fn bench(c: &mut Criterion) {
    let (m, k, n) = (1usize, 784usize, 128usize);
    let a: Vec<i64> = (0..m * k)
        .map(|i| (i as i64 * 37) % 65_536 - 32_768)
        .collect();
    let b: Vec<i64> = (0..k * n)
        .map(|i| (i as i64 * 91) % 65_536 - 32_768)
        .collect();
    let product = |a: &[i64], b: &[i64]| -> Vec<i64> {
        let mut out = vec![0i64; m * n];
        for i in 0..m {
            for x in 0..k {
                for j in 0..n {
                    out[i * n + j] += a[i * k + x] * b[x * n + j];
                }
            }
        }
        out
    };
    let cm = product(&a, &b);
    let st = Statement {
        m,
        k,
        n,
        a: &a,
        b: &b,
        c: &cm,
    };
    let proof = prove(&st).expect("prove");
    let mut g = c.benchmark_group("matmul 1x784x128");
    g.bench_function("direct product", |x| x.iter(|| product(&a, &b)));
    g.bench_function("prove", |x| x.iter(|| prove(&st).expect("prove")));
    g.bench_function("verify", |x| {
        x.iter(|| verify(&st, &proof).expect("verify"))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
