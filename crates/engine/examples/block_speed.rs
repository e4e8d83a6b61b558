//! Times the block-product kernel on one matrix-vector product of a language-model shape:
//! `cargo run --release -p verity-engine --example block_speed -- ROWS COLS [BLOCK] [BITS] [M]`.
use std::time::Instant;
use verity_engine::blockdot::PackedBlocks;
use verity_engine::calib::SplitMix64;

fn main() {
    let a: Vec<usize> = std::env::args()
        .skip(1)
        .map(|s| s.parse().expect("a number"))
        .collect();
    let (rows, cols) = (
        a.first().copied().unwrap_or(1536),
        a.get(1).copied().unwrap_or(576),
    );
    let block = a.get(2).copied().unwrap_or(32);
    let bits = a.get(3).copied().unwrap_or(4);
    let m = a.get(4).copied().unwrap_or(1);
    let nb = cols / block;
    let mut rng = SplitMix64(7);
    let lim = 1i64 << (bits - 1);
    let mut r = |lo: i64, hi: i64| lo + (rng.next_u64() % (hi - lo) as u64) as i64;
    let w: Vec<i32> = (0..rows * cols).map(|_| r(-lim, lim) as i32).collect();
    let mult: Vec<i32> = (0..rows * nb).map(|_| r(1, 1 << 20) as i32).collect();
    let x: Vec<i32> = (0..m * cols).map(|_| r(-127, 128) as i32).collect();
    let scale: Vec<i32> = (0..m * nb).map(|_| r(1, 1 << 16) as i32).collect();
    let mut p = PackedBlocks::new(&w, rows, nb, block).expect("packs");
    p.set_multipliers(&mult);
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(2)
        .build()
        .expect("a pool");
    for threads in [1, 2] {
        let time = |f: &(dyn Fn() + Sync)| {
            pool.install(|| {
                f();
                let n = 200;
                let t0 = Instant::now();
                for _ in 0..n {
                    f();
                }
                t0.elapsed().as_secs_f64() / n as f64 * 1e6
            })
        };
        let plain = time(&|| {
            p.run(&x, threads).expect("runs");
        });
        let sums = time(&|| {
            p.run_sums(&x, &scale, [20, 20, 0], threads).expect("runs");
        });
        let macs = (m * rows * cols) as f64;
        println!(
            "{threads} threads: products {plain:.1} us ({:.1} GMAC/s), with sums {sums:.1} us ({:.1} GMAC/s)",
            macs / plain / 1e3,
            macs / sums / 1e3
        );
    }
}
