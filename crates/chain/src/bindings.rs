//! Typed bindings generated from the committed contract artifacts (`contracts/artifacts/*.json`).
#![allow(missing_docs, clippy::too_many_arguments)]
use alloy::sol;

sol!(
    #[sol(rpc)]
    #[derive(Debug)]
    InferenceHub,
    "../../contracts/artifacts/InferenceHub.json"
);
sol!(
    #[sol(rpc)]
    #[derive(Debug)]
    ModelRegistry,
    "../../contracts/artifacts/ModelRegistry.json"
);
sol!(
    #[sol(rpc)]
    #[derive(Debug)]
    NodeRegistry,
    "../../contracts/artifacts/NodeRegistry.json"
);
sol!(
    #[sol(rpc)]
    #[derive(Debug)]
    VerityDeployer,
    "../../contracts/artifacts/VerityDeployer.json"
);
sol!(
    #[sol(rpc)]
    #[derive(Debug)]
    OneStep,
    "../../contracts/artifacts/OneStep.json"
);
/// The factory of OptimisticHubs the deployer calls (its ABI carries the deployer's parameter struct).
pub mod factory {
    #![allow(missing_docs, clippy::too_many_arguments)]
    alloy::sol!(
        #[sol(rpc)]
        #[derive(Debug)]
        OptimisticFactory,
        "../../contracts/artifacts/OptimisticFactory.json"
    );
}
pub use factory::OptimisticFactory;
/// Where any receipt can be disputed (its ABI carries the receipt struct, in this module).
pub mod court {
    #![allow(missing_docs, clippy::too_many_arguments)]
    alloy::sol!(
        #[sol(rpc)]
        #[derive(Debug)]
        ReceiptCourt,
        "../../contracts/artifacts/ReceiptCourt.json"
    );
}
pub use court::ReceiptCourt;
/// The optimistic hub (its ABI carries the `OneStep.Step` witness types, in this module).
pub mod optimistic {
    #![allow(missing_docs, clippy::too_many_arguments)]
    alloy::sol!(
        #[sol(rpc)]
        #[derive(Debug)]
        OptimisticHub,
        "../../contracts/artifacts/OptimisticHub.json"
    );
}
pub use optimistic::OptimisticHub;
/// The OpenGradient front door (its tensor types live in this module).
pub mod og_inference {
    #![allow(missing_docs, clippy::too_many_arguments)]
    alloy::sol!(
        #[sol(rpc)]
        #[derive(Debug)]
        OpenGradientInference,
        "../../contracts/artifacts/OpenGradientInference.json"
    );
}
/// The OpenGradient event source placed at 0x…F4.
pub mod og_events {
    #![allow(missing_docs, clippy::too_many_arguments)]
    alloy::sol!(
        #[sol(rpc)]
        #[derive(Debug, PartialEq)]
        OpenGradientEvents,
        "../../contracts/artifacts/OpenGradientEvents.json"
    );
}
pub use og_events::OpenGradientEvents;
pub use og_inference::OpenGradientInference;

/// Where OpenGradient clients look for `ModelInferenceEvent` logs.
pub const OPENGRADIENT_EVENTS: alloy::primitives::Address =
    alloy::primitives::address!("00000000000000000000000000000000000000F4");

/// A revert's reason as a sentence, decoded against every Verity contract's custom errors.
pub fn revert_sentence(data: &[u8]) -> Option<String> {
    use alloy::sol_types::SolInterface;
    use InferenceHub::InferenceHubErrors as H;
    use ModelRegistry::ModelRegistryErrors as M;
    use NodeRegistry::NodeRegistryErrors as N;
    use OpenGradientInference::OpenGradientInferenceErrors as O;
    if let Ok(e) = H::abi_decode(data) {
        return Some(match e {
            H::UnknownModel(_) => "the model is not registered".into(),
            H::BadMode(_) => {
                "InferenceHub: bad mode or quorum size (quorum needs 2 to 7 nodes)".into()
            }
            H::FeeTooLow(e) => format!("the fee is too low; {} wei required", e.required),
            H::NotPending(_) => {
                "InferenceHub: the request is not pending (already finalized or refunded)".into()
            }
            H::TooLate(_) => "InferenceHub: the request's deadline has passed".into(),
            H::TooEarly(_) => "InferenceHub: the request's deadline has not passed yet".into(),
            H::SeedNotReady(e) => {
                format!("the request's seed block {} is not mined yet", e.seedBlock)
            }
            H::SeedExpired(_) => "the request's seed block is older than 256 blocks".into(),
            H::WrongRequest(_) => {
                "InferenceHub: the receipt is for another request, model or input".into()
            }
            H::BadSignature(_) => "InferenceHub: the receipt's signature is not the node's".into(),
            H::NotAssigned(e) => format!(
                "InferenceHub: node {} is not assigned to this request",
                e.node
            ),
            H::AlreadySubmitted(_) => "InferenceHub: this node already submitted a receipt".into(),
            H::AlreadyDeclined(_) => "InferenceHub: this node declined the request".into(),
            H::TransferFailed(_) => "a payment transfer failed".into(),
            H::NothingOwed(_) => "nothing is owed to this account".into(),
        });
    }
    if let Ok(e) = N::abi_decode(data) {
        return Some(match e {
            N::AlreadyRegistered(_) => "NodeRegistry: the node is already registered".into(),
            N::NotRegistered(_) => "NodeRegistry: the node is not registered".into(),
            N::StakeTooLow(e) => format!(
                "NodeRegistry: the stake is below the minimum of {} wei",
                e.minStake
            ),
            N::BadEndpoint(_) => {
                "NodeRegistry: the endpoint must be an http(s) URL of at most 256 bytes".into()
            }
            N::AmountTooLarge(e) => format!("NodeRegistry: only {} wei is available", e.available),
            N::StillUnbonding(e) => format!("NodeRegistry: the stake unbonds at {}", e.unbondAt),
            N::NothingToWithdraw(_) => "NodeRegistry: nothing to withdraw".into(),
            N::NotSlasher(_) => {
                "NodeRegistry: only Verity's verification contracts may slash".into()
            }
            N::StakeLocked(e) => format!(
                "NodeRegistry: {} wei of the stake is locked as collateral of recent answers",
                e.locked
            ),
            N::InsufficientFreeStake(e) => format!(
                "NodeRegistry: the stake not locked ({} wei) does not cover the request's collateral",
                e.free
            ),
            other => format!("NodeRegistry: {other:?}"),
        });
    }
    if let Ok(e) = court::ReceiptCourt::ReceiptCourtErrors::abi_decode(data) {
        use court::ReceiptCourt::ReceiptCourtErrors as C;
        return Some(match e {
            C::BadReceipt(e) => format!("ReceiptCourt: {}", e.why),
            other => format!("ReceiptCourt: {other:?}"),
        });
    }
    // after the hub's and the registry's: errors of the same signature read as theirs
    if let Ok(e) = optimistic::OptimisticHub::OptimisticHubErrors::abi_decode(data) {
        use optimistic::OptimisticHub::OptimisticHubErrors as X;
        return Some(match e {
            X::SameClaim(_) => {
                "OptimisticHub: the challenge repeats the pending claim (the same output, \
                                and the same trace root unless the claim's trace is deferred)"
                    .into()
            }
            X::BadMove(e) => format!("OptimisticHub: bad move: {}", e.why),
            X::WrongBond(e) => format!("OptimisticHub: the bond must be {} wei", e.required),
            X::WindowClosed(_) => "OptimisticHub: the challenge window has closed".into(),
            X::WindowOpen(_) => "OptimisticHub: the challenge window is still open".into(),
            X::GamesOpen(_) => "OptimisticHub: games against the claim are still open".into(),
            X::WrongStage(_) => "OptimisticHub: not this move's turn in the game".into(),
            X::NotChallenger(_) => "OptimisticHub: only the game's challenger chooses".into(),
            X::DefenderRight(_) => {
                "OptimisticHub: the defender's element is the canonical value (nothing to prove)"
                    .into()
            }
            other => format!("OptimisticHub: {other:?}"),
        });
    }
    if let Ok(e) = M::abi_decode(data) {
        return Some(match e {
            M::ZeroModelId(_) => "ModelRegistry: the model ID is zero".into(),
            M::AlreadyRegistered(e) => {
                format!("ModelRegistry: model {} is already registered", e.modelId)
            }
            M::VersionTaken(e) => format!(
                "ModelRegistry: that version is already model {}",
                e.existing
            ),
            M::NotNameOwner(e) => format!("ModelRegistry: the name belongs to {}", e.owner),
            M::NotModelOwner(e) => format!("ModelRegistry: the model belongs to {}", e.owner),
            M::UnknownModel(e) => format!("ModelRegistry: model {} is not registered", e.modelId),
            M::BadName(_) => "ModelRegistry: bad name or version".into(),
        });
    }
    if let Ok(e) = O::abi_decode(data) {
        return Some(format!("OpenGradientInference: {e:?}"));
    }
    // A sentence (`Error(string)`), as the front door reverts for its callers.
    <alloy::sol_types::Revert as alloy::sol_types::SolError>::abi_decode(data)
        .ok()
        .map(|r| r.reason)
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloy::sol_types::{SolError, SolInterface};

    #[test]
    fn reverts_read_as_sentences() {
        let sentence =
            alloy::sol_types::Revert::from("OpenGradientInference: bad input: x").abi_encode();
        assert_eq!(
            revert_sentence(&sentence).as_deref(),
            Some("OpenGradientInference: bad input: x")
        );
        let custom =
            ModelRegistry::ModelRegistryErrors::BadName(ModelRegistry::BadName {}).abi_encode();
        assert_eq!(
            revert_sentence(&custom).as_deref(),
            Some("ModelRegistry: bad name or version")
        );
        assert_eq!(revert_sentence(&[0xde, 0xad, 0xbe, 0xef, 1]), None);
    }
}
