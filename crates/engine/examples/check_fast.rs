//! Fast and reference executors on one `.vty` model and `.npy` input: equal outputs, or the first difference.
//! `cargo run --release -p verity-engine --example check_fast -- model.vty input.npy [threads]`.
use verity_engine::{Executor, Mode};

mod common;

fn main() {
    let a: Vec<String> = std::env::args().skip(1).collect();
    let (model, q) = common::model_and_input(&a);
    let threads: usize = a.get(2).and_then(|s| s.parse().ok()).unwrap_or(1);
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
