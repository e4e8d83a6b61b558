//! Throughput of the 8-bit GEMM levels on one thread: `cargo run --release -p verity-engine --example qgemm_speed [m k n [threads]]`.
use std::time::Instant;
use verity_engine::qgemm::{gemm, Level, PackedA, PackedB};

fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let (m, k, n, threads) = match args[..] {
        [m, k, n] => (m, k, n, 1),
        [m, k, n, t] => (m, k, n, t),
        _ => (784, 1152, 128, 1),
    };
    let a: Vec<i32> = (0..m * k).map(|i| (i * 7 % 256) as i32).collect();
    let b: Vec<i32> = (0..k * n).map(|i| (i * 13 % 256) as i32 - 128).collect();
    // VERITY_WEIGHTS_A=1: A holds 8-bit weights and B activations (a convolution's orientation)
    let (pa, pb) = if std::env::var_os("VERITY_WEIGHTS_A").is_some() {
        let w: Vec<i32> = a.iter().map(|&v| v - 128).collect();
        let x: Vec<i32> = b.iter().map(|&v| v + 128).collect();
        (
            PackedA::weights(&w, m, k).expect("i8"),
            PackedB::activations(&x, k, n).expect("u8"),
        )
    } else {
        (
            PackedA::new(&a, m, k).expect("u8"),
            PackedB::new(&b, k, n).expect("i8"),
        )
    };
    for level in [Level::Portable, Level::Avx2, Level::Avx512Vnni] {
        if !level.supported() {
            println!("{level:?}: not supported on this CPU");
            continue;
        }
        let reps = if level == Level::Portable { 3 } else { 30 };
        let t = Instant::now();
        for _ in 0..reps {
            std::hint::black_box(gemm(&pa, &pb, threads, level));
        }
        let s = t.elapsed().as_secs_f64() / reps as f64;
        println!(
            "{level:?}: {m}x{k}x{n} in {:.3} ms, {:.1} GMAC/s",
            s * 1e3,
            (m * k * n) as f64 / s / 1e9
        );
    }
}
