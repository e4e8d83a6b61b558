//! keccak256 throughput for Merkle leaves: the incremental hasher one message at a time against the
//! batched single-block path (four lanes with AVX2).

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use verity_core::keccak_batch::{keccak256_batch, keccak256_short};
use verity_core::{elements_root, keccak256};

fn bench(c: &mut Criterion) {
    let words: Vec<[u8; 64]> = (0..1024u32)
        .map(|i| {
            let mut w = [0u8; 64];
            w[..4].copy_from_slice(&i.to_be_bytes());
            w
        })
        .collect();
    c.bench_function("keccak::incremental/msgs=1024,len=64", |b| {
        b.iter(|| black_box(words.iter().map(|w| keccak256(w)).collect::<Vec<_>>()))
    });
    c.bench_function("keccak::short/msgs=1024,len=64", |b| {
        b.iter(|| black_box(words.iter().map(|w| keccak256_short(w)).collect::<Vec<_>>()))
    });
    c.bench_function("keccak::batch/msgs=1024,len=64", |b| {
        b.iter(|| black_box(keccak256_batch(&words)))
    });
    let elems: Vec<i32> = (0..8192).collect();
    c.bench_function("merkle::elements_root/n=8192", |b| {
        b.iter(|| black_box(elements_root(&elems)))
    });
    // Bulk rates: one keccak pass over a 1 MiB chunk, and the elements root of the same bytes (what a
    // replica recomputes for every weight); the floor on any keccak-verified transfer.
    let mut g = c.benchmark_group("bulk");
    g.throughput(Throughput::Bytes(1 << 20));
    let chunk = vec![7u8; 1 << 20];
    g.bench_function("keccak256/1MiB", |b| {
        b.iter(|| black_box(keccak256(&chunk)))
    });
    let elems: Vec<i32> = (0..(1 << 18)).collect();
    g.bench_function("elements_root/1MiB", |b| {
        b.iter(|| black_box(elements_root(&elems)))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
