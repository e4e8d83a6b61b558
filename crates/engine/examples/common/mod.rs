//! What the model examples share: the node's allocator and loading a `.vty` model with one `.npy` input.
use verity_engine::io::{quantize_inputs, tensor_from_npy};
use verity_engine::{vty, Model};

/// The allocator the `verity` binary uses, so timings match the node's.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The model at `args[0]` and its quantized input from the `.npy` file at `args[1]`.
pub fn model_and_input(args: &[String]) -> (Model, Vec<Vec<i32>>) {
    let (model, _) = vty::decode(&std::fs::read(&args[0]).expect("model")).expect("valid model");
    let x = tensor_from_npy(&std::fs::read(&args[1]).expect("input")).expect("npy");
    let q = quantize_inputs(&model, &[x]).expect("input fits");
    (model, q)
}
