//! Errors of the engine: decoding and validating `.vty` models, and executing them.

use verity_core::DecodeError;

/// A `.vty` model that could not be decoded or is not a valid canonical model.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ModelError {
    /// The bytes are not a well-formed encoding.
    #[error("malformed .vty: {0}")]
    Decode(DecodeError),
    /// The file does not start with the `.vty` magic bytes.
    #[error("not a .vty file (bad magic bytes)")]
    BadMagic,
    /// The format version is not one this build reads.
    #[error("unsupported .vty format version {0}")]
    Version(u16),
    /// The model ID stored in the file differs from the one recomputed from its contents.
    #[error("corrupted .vty: stored model ID {stored} but contents hash to {computed}")]
    IdMismatch {
        /// ID in the file trailer.
        stored: String,
        /// ID computed from the contents.
        computed: String,
    },
    /// The model decodes but breaks a structural rule (shapes, scales, references).
    #[error("invalid model at {at}: {what}")]
    Invalid {
        /// Which node or value.
        at: String,
        /// The rule that failed.
        what: String,
    },
}

impl From<DecodeError> for ModelError {
    fn from(e: DecodeError) -> Self {
        ModelError::Decode(e)
    }
}

/// A failure while executing a model on some input.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ExecError {
    /// Wrong number of input tensors.
    #[error("expected {expected} input tensors, got {got}")]
    InputCount {
        /// Model's input count.
        expected: usize,
        /// Given.
        got: usize,
    },
    /// An input tensor has the wrong shape.
    #[error("input '{name}' must have shape {expected:?}, got {got:?}")]
    InputShape {
        /// Input name.
        name: String,
        /// Declared shape.
        expected: Vec<usize>,
        /// Given shape.
        got: Vec<usize>,
    },
    /// An input value cannot be represented (NaN, infinite, not an integer where one is needed, or beyond
    /// the `i32` range at the input's scale).
    #[error("input '{name}' element {index}: {what}")]
    InputValue {
        /// Input name.
        name: String,
        /// Row-major element index.
        index: usize,
        /// What is wrong with it.
        what: String,
    },
    /// A result does not fit the canonical element type; the canonical semantics stop here.
    #[error("arithmetic overflow: a result does not fit in i32")]
    Overflow,
    /// A division by zero in `Div`, `Recip` or `Rsqrt`.
    #[error("division by zero")]
    DivisionByZero,
    /// Square root of a negative value.
    #[error("square root of a negative value")]
    NegativeSqrt,
    /// A gather index outside the indexed axis.
    #[error("gather index {index} out of range for an axis of size {size}")]
    IndexOutOfRange {
        /// The index.
        index: i64,
        /// Axis length.
        size: usize,
    },
    /// The run was cancelled (see [`crate::cancel`]) before it finished.
    #[error("the run was cancelled")]
    Cancelled,
    /// An error at a specific node, wrapping one of the above.
    #[error("node '{node}' ({op}): {error}")]
    AtNode {
        /// Node name.
        node: String,
        /// Op name.
        op: &'static str,
        /// The underlying error.
        error: Box<ExecError>,
    },
}
