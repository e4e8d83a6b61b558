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

/// Traces with fewer elements are hashed on the calling thread alone.
const PARALLEL_MIN: usize = 1 << 16;

/// Elements roots of every traced tensor (inputs, then node outputs). A large trace's tensors are hashed
/// on the machine's cores at once (each root is the same whoever computes it; the list keeps its order).
pub fn trace_roots(trace: &Trace) -> Vec<Hash> {
    let total: usize = trace.tensors.iter().map(Vec::len).sum();
    if total < PARALLEL_MIN {
        return trace.tensors.iter().map(|t| elements_root(t)).collect();
    }
    use rayon::prelude::*;
    trace
        .tensors
        .par_iter()
        .with_max_len(1)
        .map(|t| elements_root(t))
        .collect()
}

/// The trace root: `list_root` over the elements roots of the inputs then every node output.
pub fn trace_root(trace: &Trace) -> Hash {
    list_root(&trace_roots(trace))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_large_trace_hashed_on_several_cores_has_the_same_roots_in_order() {
        // sizes around the leaf and parallel thresholds, some empty, over PARALLEL_MIN in total
        let tensors: Vec<Vec<i32>> = [0usize, 1, 7, 8, 9, 4096, 70_000, 3, 65_536, 12_345]
            .iter()
            .enumerate()
            .map(|(k, &n)| {
                (0..n as i32)
                    .map(|i| i.wrapping_mul(2_654_435 + k as i32))
                    .collect()
            })
            .collect();
        let trace = Trace { tensors };
        assert!(trace.tensors.iter().map(Vec::len).sum::<usize>() >= PARALLEL_MIN);
        let serial: Vec<Hash> = trace.tensors.iter().map(|t| elements_root(t)).collect();
        assert_eq!(trace_roots(&trace), serial);
        assert_eq!(trace_root(&trace), list_root(&serial));
    }
}
