//! Verity's canonical integer IR: the model structure, its `.vty` encoding and Merkle model ID, the
//! fast and reference executors, traces and their commitments. Independent of any ONNX front-end.
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

pub mod arith;
pub mod blockdot;
mod buffers;
pub mod calib;
pub mod cancel;
pub mod commit;
pub mod cost;
pub mod dispute;
pub mod elements;
pub mod error;
pub mod exec;
mod fuse;
pub mod io;
pub mod ir;
mod kernels;
pub mod onestep;
mod par;
pub mod qgemm;
pub mod segments;
pub mod simd;
mod taps;
pub mod vty;

pub use cancel::Cancel;
pub use cost::Cost;
pub use error::{ExecError, ModelError};
pub use exec::{Executor, Mode, SharedPacks, Trace};
pub use ir::Model;
