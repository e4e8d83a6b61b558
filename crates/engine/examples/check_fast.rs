//! Fast and reference executors on one `.vty` model and `.npy` input: equal outputs, or the first difference.
//! `cargo run --release -p verity-engine --example check_fast -- model.vty input.npy [threads]`.
use verity_engine::io::{quantize_inputs, tensor_from_npy};
use verity_engine::{vty, Executor, Mode};

/// The allocator the `verity` binary uses, so timings match the node's.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    let a: Vec<String> = std::env::args().skip(1).collect();
    let (model, _) = vty::decode(&std::fs::read(&a[0]).expect("model")).expect("valid model");
    let x = tensor_from_npy(&std::fs::read(&a[1]).expect("input")).expect("npy");
    let threads: usize = a.get(2).and_then(|s| s.parse().ok()).unwrap_or(1);
    let q = quantize_inputs(&model, &[x]).expect("input fits");
    let fast = Executor::new(&model, Mode::Fast { threads }).run(q.clone());
    let reference = Executor::new(&model, Mode::Reference).run(q);
    match (fast, reference) {
        (Ok(f), Ok(r)) if f == r => println!("equal: {} outputs", f.len()),
        (f, r) => {
            println!("DIFFERENT");
            if let (Ok(f), Ok(r)) = (&f, &r) {
                for (i, (a, b)) in f.iter().zip(r).enumerate() {
                    if let Some(j) = a.iter().zip(b).position(|(x, y)| x != y) {
                        println!("output {i} element {j}: fast {} reference {}", a[j], b[j]);
                    }
                }
            } else {
                println!("fast {:?}\nreference {:?}", f.err(), r.err());
            }
            std::process::exit(1);
        }
    }
}
