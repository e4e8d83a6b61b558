//! The proof layer of Verity's `zk` mode: a succinct, transparent argument that the canonical execution
//! of a model on an input gives an output, over the Goldilocks field (p = 2⁶⁴ − 2³² + 1) with verifier
//! challenges in its degree-2 extension (≈ 2¹²⁸ elements) and a keccak-256 Fiat–Shamir transcript.
//! Field arithmetic and the NTT come from Plonky3 (`p3-field`, `p3-goldilocks`, `p3-dft`); the protocol
//! layer — sumchecks, the fractional-sum (logUp) range argument, the tensor-code commitment and the
//! per-op reductions — is Verity's own. See `docs/spec/zk.md`.
#![deny(missing_docs)]
#![allow(clippy::needless_range_loop)]

pub mod channel;
pub mod circuit;
pub mod dims;
pub mod field;
pub mod file;
pub mod logup;
pub mod mle;
pub mod pcs;
pub mod protocol;
pub mod sumcheck;
pub mod transcript;
pub mod witness;

pub use circuit::{keygen, ProvingKey, VerifyingKey};
pub use field::{Ext, F};
pub use file::ProofFile;
pub use protocol::{prove, verify};

/// Why proving or verifying failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ZkError {
    /// The proof bytes are not a proof (truncated, trailing bytes, non-canonical elements).
    #[error("malformed proof: {0}")]
    Malformed(String),
    /// The proof is well formed but a check fails: the statement is not proven.
    #[error("the proof does not verify: {0}")]
    Rejected(String),
    /// The model uses something the prover cannot handle (found when its keys are made).
    #[error("not provable: {0}")]
    Unsupported(String),
    /// This execution cannot be proven (a value outside the provable range, or the execution failed).
    #[error("cannot prove this execution: {0}")]
    Execution(String),
}

impl ZkError {
    pub(crate) fn malformed(m: &str) -> ZkError {
        ZkError::Malformed(m.to_string())
    }
    pub(crate) fn rejected(m: impl Into<String>) -> ZkError {
        ZkError::Rejected(m.into())
    }
}
