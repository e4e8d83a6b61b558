//! Open-weight language models in Verity: GGUF files read and their block-quantized weights decoded
//! exactly ([`gguf`]), llama-family architectures ([`arch`]), one decode step as a canonical model
//! ([`step`]), generations as chains of steps ([`session`]), and a float forward pass to measure them
//! against ([`reference`]).
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

pub mod arch;
pub mod generate;
pub mod gguf;
pub mod json;
pub mod reference;
pub mod sample;
pub mod session;
pub mod step;
pub mod tokenizer;

pub use arch::{Hparams, LlmError, Weights};
pub use session::{Kv, Session};
pub use step::Step;
pub use tokenizer::Tokenizer;

/// Calibration tokens: the file's BOS token, then a fixed SplitMix64 sequence over the vocabulary.
pub fn calibration_tokens(g: &gguf::Gguf, vocab: usize, n: usize) -> Vec<u32> {
    let mut out = Vec::with_capacity(n);
    if let Ok(b) = g.get_u64("tokenizer.ggml.bos_token_id") {
        if (b as usize) < vocab {
            out.push(b as u32);
        }
    }
    let mut rng = verity_engine::calib::SplitMix64(0x5645_5249_5459); // "VERITY"
    while out.len() < n {
        out.push((rng.next_u64() % vocab as u64) as u32);
    }
    out
}

/// Compiles a GGUF model's decode step for generations of up to `context` positions, and its prefill
/// chunk of [`step::PREFILL_ROWS`] positions: weights read exactly, scales from a float run over the
/// calibration tokens.
pub fn compile(g: &gguf::Gguf, context: usize) -> Result<Step, LlmError> {
    compile_with(g, context, step::PREFILL_ROWS)
}

/// [`compile`] with a prefill chunk of `chunk` positions (none when `chunk < 2`).
pub fn compile_with(g: &gguf::Gguf, context: usize, chunk: usize) -> Result<Step, LlmError> {
    let w = Weights::load(g)?;
    // The float model is run a layer at a time: one layer's weights as f32 at once.
    let tokens: Vec<usize> = calibration_tokens(g, w.hp.vocab, 32)
        .into_iter()
        .map(|t| t as usize)
        .collect();
    let maxima = reference::calibrate(&w, &tokens);
    step::build_with(&w, maxima, context, chunk)
}
