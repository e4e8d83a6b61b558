//! Open-weight language models in Verity: GGUF files read and their block-quantized weights decoded
//! exactly ([`gguf`]).
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

pub mod gguf;
