//! Quorum certificate verification: k receipts (signature recovery each), the stake-weighted draw over
//! the registry snapshot, and the field checks. Goal: under 1 ms for k = 5.

use criterion::{criterion_group, criterion_main, Criterion};
use std::hint::black_box;
use verity_chain::cert::{example_certificate, verify_certificate};

fn bench(c: &mut Criterion) {
    for (n, k) in [(5usize, 1u8), (5, 3), (7, 5), (50, 5)] {
        let (_, cert) = example_certificate(n, k);
        verify_certificate(&cert).expect("valid");
        c.bench_function(&format!("cert::verify k={k} nodes={n}"), |b| {
            b.iter(|| black_box(verify_certificate(black_box(&cert))))
        });
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
