//! Integration tests of the engine: fast vs reference executors bit for bit, the `.vty` codec, model IDs
//! and weight proofs.

mod codec;
mod kernels;
mod onestep;
mod random_models;

use verity_engine::ir::*;

/// A fixed-point input.
pub fn input(name: &str, shape: Vec<u32>, scale: i8) -> Input {
    Input {
        name: name.into(),
        shape,
        scale,
        kind: InputKind::Fixed,
    }
}

/// A seeded generator of `n` values in `[-mag, mag]`.
pub fn gen(seed: u64, mag: i32) -> impl FnMut(usize) -> Vec<i32> {
    let mut state = seed;
    move |n| {
        (0..n)
            .map(|_| {
                state = state
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let r = (state >> 32) as i64 % (2 * mag as i64 + 1);
                (r.rem_euclid(2 * mag as i64 + 1) - mag as i64) as i32
            })
            .collect()
    }
}
