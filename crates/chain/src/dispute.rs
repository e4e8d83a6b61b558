//! Fraud-proof disputes on-chain: one-step witnesses as contract arguments (`OneStep.evaluate`), and the
//! calls of the dispute game (see `docs/spec/disputes.md`).

use alloy::primitives::{Bytes, B256, U256};
use verity_core::Hash;
use verity_engine::onestep::{OperandWitness, StepWitness};

use crate::bindings::OneStep;
use crate::to_b256;

fn b256s(hs: &[Hash]) -> Vec<B256> {
    hs.iter().map(to_b256).collect()
}

fn operand(o: &OperandWitness) -> OneStep::Operand {
    OneStep::Operand {
        item: Bytes::from(o.item.clone()),
        itemPath: b256s(&o.item_path),
        root: to_b256(&o.root),
        tracePath: b256s(&o.trace_path),
        wordIndices: o.word_indices.iter().map(|&w| U256::from(w)).collect(),
        words: b256s(&o.words),
        proof: b256s(&o.proof),
    }
}

/// A one-step witness as the `OneStep.Step` argument.
pub fn step_arg(w: &StepWitness) -> OneStep::Step {
    OneStep::Step {
        itemCount: w.item_count,
        itemRoot: to_b256(&w.item_root),
        header: Bytes::from(w.header.clone()),
        headerPath: b256s(&w.header_path),
        nodeIndex: w.node_index,
        node: Bytes::from(w.node.clone()),
        nodePath: b256s(&w.node_path),
        element: w.element,
        traceTree: to_b256(&w.trace_tree),
        operands: w.operands.iter().map(operand).collect(),
    }
}

/// Deploy a `OneStep` contract (it holds no state; every deployment answers the same).
pub async fn deploy_onestep(
    rpc: &str,
    key: &verity_core::SecretKey,
) -> Result<verity_core::Address, crate::ChainError> {
    let (p, _) = crate::evm::provider(rpc, Some(key))?;
    let c = OneStep::deploy(p).await.map_err(crate::evm::contract_err)?;
    Ok(crate::from_evm(c.address()))
}

/// What `OneStep.evaluate` says of a witness.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Evaluated {
    /// The element, or `None` if the canonical semantics stop there.
    pub value: Option<i32>,
    /// Element count of the node's output.
    pub len: u64,
    /// Gas the call takes as a transaction.
    pub gas: u64,
}

/// Call `OneStep.evaluate` at `at` (no transaction) and estimate its gas.
pub async fn evaluate_step(
    rpc: &str,
    at: &verity_core::Address,
    model_id: &Hash,
    trace_root: &Hash,
    w: &StepWitness,
) -> Result<Evaluated, crate::ChainError> {
    use alloy::providers::Provider;
    let (p, _) = crate::evm::provider(rpc, None)?;
    let c = OneStep::new(crate::to_evm(at), p.clone());
    let call = c.evaluate(to_b256(model_id), to_b256(trace_root), step_arg(w));
    let r = call.call().await.map_err(crate::evm::contract_err)?;
    let gas = p
        .estimate_gas(call.into_transaction_request())
        .await
        .map_err(crate::evm::rpc_err)?;
    let value = i32::try_from(r.value).ok().filter(|_| r.ok);
    Ok(Evaluated {
        value,
        len: r.len.try_into().unwrap_or(u64::MAX),
        gas,
    })
}
