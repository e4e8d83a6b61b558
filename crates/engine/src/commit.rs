//! Commitments to inference data: input and output hashes and the trace root, built with the same rules
//! as the model ID (elements roots of `i32` tensors, combined with [`list_root`]).

use verity_core::{elements_root, Hash};

use crate::exec::Trace;
use crate::vty::list_root;

/// Commitment to a list of tensors (the quantized inputs or outputs of one inference).
pub fn tensors_hash(tensors: &[Vec<i32>]) -> Hash {
    let roots: Vec<Hash> = tensors.iter().map(|t| elements_root(t)).collect();
    list_root(&roots)
}

/// Elements roots of every traced tensor (inputs, then node outputs).
pub fn trace_roots(trace: &Trace) -> Vec<Hash> {
    trace.tensors.iter().map(|t| elements_root(t)).collect()
}

/// The trace root: `list_root` over the elements roots of the inputs then every node output.
pub fn trace_root(trace: &Trace) -> Hash {
    list_root(&trace_roots(trace))
}
