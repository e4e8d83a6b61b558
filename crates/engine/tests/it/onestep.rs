//! The one-step evaluator equals the executors element by element, and its witnesses verify against the
//! model ID and trace root and fail when any part is tampered with.

use verity_core::Hash;
use verity_engine::commit::trace_root;
use verity_engine::ir::*;
use verity_engine::onestep::{eval_element, operands_of, prove_step, verify_step};
use verity_engine::vty::model_id;
use verity_engine::{Executor, Mode};

/// Every element of every node, evaluated alone from the values the run produced, equals the run; a run
/// that fails has an element of the failing node that fails alone (and none of the earlier nodes does).
/// Witnesses of a few elements per node verify (the first and last always).
pub fn agrees(m: &Model, inputs: Vec<Vec<i32>>) {
    let ni = m.inputs.len();
    let mut vals: Vec<Vec<i32>> = inputs.clone();
    vals.extend(m.consts.iter().map(|c| c.data.to_vec()));
    let ex = Executor::new(m, Mode::Reference);
    let full = ex.run_trace(inputs.clone());
    // node by node, element by element, from the values computed so far; a failing run stops at the
    // first node with a failing element
    for (k, node) in m.nodes.iter().enumerate() {
        let ops = operands_of(m, node);
        let n = numel(&node.shape);
        let mut out = Vec::with_capacity(n as usize);
        let mut failed = false;
        for e in 0..n {
            match eval_element(node, &ops, e, &mut |o, i| {
                vals[node.inputs[o] as usize][i as usize]
            }) {
                Ok(v) => out.push(v),
                Err(_) => {
                    failed = true;
                    break;
                }
            }
        }
        match &full {
            Ok((_, trace)) => {
                assert!(
                    !failed,
                    "node {k} ({}) fails alone but not in the run",
                    node.op.name()
                );
                assert_eq!(out, trace.tensors[ni + k], "node {k} ({})", node.op.name());
            }
            Err(_) if failed => return,
            Err(_) => {}
        }
        vals.push(out);
    }
    let (_, trace) = full.expect("a run with no failing element succeeds");
    let id = model_id(m);
    let root = trace_root(&trace);
    for (k, node) in m.nodes.iter().enumerate() {
        let n = numel(&node.shape);
        let picks: Vec<u64> = [0, n / 2, n.saturating_sub(1)]
            .into_iter()
            .filter(|&e| e < n)
            .collect();
        for e in picks {
            let (w, v) = prove_step(m, &trace, k, e).unwrap();
            assert_eq!(v.as_ref().ok(), Some(&trace.tensors[ni + k][e as usize]));
            assert_eq!(
                verify_step(id, root, &w).unwrap().ok(),
                v.ok(),
                "node {k} element {e}"
            );
            // a changed word, a wrong model ID or trace root, another element index: rejected or another value
            assert!(verify_step(Hash::ZERO, root, &w).is_err());
            assert!(verify_step(id, Hash::ZERO, &w).is_err());
            let mut bad = w.clone();
            if let Some(op) = bad.operands.iter_mut().find(|o| !o.words.is_empty()) {
                op.words[0].0[3] ^= 1;
                assert!(verify_step(id, root, &bad).is_err());
            }
            let mut bad = w.clone();
            bad.node_index += 1;
            assert!(verify_step(id, root, &bad).is_err());
        }
    }
}
