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

/// A one-step witness as the `OneStep.Step` argument of the binding module `$m`.
macro_rules! step_arg_in {
    ($m:path, $w:expr) => {{
        use $m as os;
        let w: &StepWitness = $w;
        os::Step {
            itemCount: w.item_count,
            itemRoot: to_b256(&w.item_root),
            header: Bytes::from(w.header.clone()),
            headerPath: b256s(&w.header_path),
            nodeIndex: w.node_index,
            node: Bytes::from(w.node.clone()),
            nodePath: b256s(&w.node_path),
            element: w.element,
            traceTree: to_b256(&w.trace_tree),
            operands: w
                .operands
                .iter()
                .map(|o: &OperandWitness| os::Operand {
                    item: Bytes::from(o.item.clone()),
                    itemPath: b256s(&o.item_path),
                    root: to_b256(&o.root),
                    tracePath: b256s(&o.trace_path),
                    wordIndices: o.word_indices.iter().map(|&i| U256::from(i)).collect(),
                    words: b256s(&o.words),
                    proof: b256s(&o.proof),
                })
                .collect(),
        }
    }};
}

/// A one-step witness as the `OneStep.evaluate` argument.
pub fn step_arg(w: &StepWitness) -> OneStep::Step {
    step_arg_in!(OneStep, w)
}

/// A one-step witness as the `OptimisticHub.step` argument.
pub fn game_step_arg(w: &StepWitness) -> crate::bindings::optimistic::OneStep::Step {
    step_arg_in!(crate::bindings::optimistic::OneStep, w)
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

use crate::bindings::optimistic::OptimisticHub as Opt;
use crate::evm::{contract_err, event_in, EvmChain, Placed};
use crate::{from_b256, from_evm, to_evm, ChainError};
use alloy::providers::DynProvider;
use alloy::sol_types::SolEvent;
use verity_engine::dispute::Side;

/// Stages of a game (`OptimisticHub.Stage`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Stage {
    /// No such game.
    None,
    /// Defender: header, trace tree, input and output roots.
    Reveal,
    /// Defender: the children of the current node.
    Split,
    /// Challenger: which child it disputes.
    Choose,
    /// Defender: length and word tree of the disputed tensor.
    Open,
    /// Defender: the disputed word.
    Word,
    /// Challenger: the one-step witness.
    Step,
    /// Over.
    Done,
}

impl Stage {
    fn from_u8(s: u8) -> Stage {
        match s {
            1 => Stage::Reveal,
            2 => Stage::Split,
            3 => Stage::Choose,
            4 => Stage::Open,
            5 => Stage::Word,
            6 => Stage::Step,
            7 => Stage::Done,
            _ => Stage::None,
        }
    }

    /// Whether the defender moves in this stage (else the challenger).
    pub fn defender_moves(self) -> bool {
        matches!(
            self,
            Stage::Reveal | Stage::Split | Stage::Open | Stage::Word
        )
    }
}

/// A game as the contract holds it.
#[derive(Clone, Debug)]
pub struct Game {
    /// Request disputed.
    pub request_id: u64,
    /// Challenger.
    pub challenger: verity_core::Address,
    /// Challenger's claim.
    pub output_hash: Hash,
    /// Challenger's trace root.
    pub trace_root: Hash,
    /// Stage.
    pub stage: Stage,
    /// Bisecting the word tree (else the trace tree).
    pub words: bool,
    /// Depth of the tree being bisected.
    pub depth: u8,
    /// Level of the current node.
    pub level: u8,
    /// Block after which the side to move loses.
    pub deadline: u64,
    /// Index of the current node.
    pub index: u64,
    /// Trace inputs.
    pub inputs: u64,
    /// Disputed trace leaf.
    pub leaf: u64,
    /// Its element count as opened.
    pub len: u64,
    /// Moves so far.
    pub moves: u32,
    /// Defender's last split.
    pub left: Hash,
    /// Defender's last split.
    pub right: Hash,
    /// Revealed word.
    pub word: Hash,
}

/// The pending claim of an optimistic request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Claim {
    /// Who stands behind it.
    pub owner: verity_core::Address,
    /// Output hash.
    pub output_hash: Hash,
    /// Trace root.
    pub trace_root: Hash,
}

/// A request of the optimistic hub.
#[derive(Clone, Debug)]
pub struct OptRequest {
    /// Status: 1 pending, 2 committed, 3 finalized, 4 refunded.
    pub status: u8,
    /// Model.
    pub model_id: Hash,
    /// Input hash.
    pub input_hash: Hash,
    /// Input URI.
    pub input_uri: String,
    /// Last block of the challenge window.
    pub window_end: u64,
    /// Games open against the claim.
    pub open_games: u32,
    /// Commit deadline (block).
    pub deadline: u64,
}

/// A move made in a game.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Move {
    /// `reveal`, `split`, `choose`, `open`, `revealWord` or `step`.
    pub name: &'static str,
    /// Gas it used.
    pub gas: u64,
}

/// What happened on the optimistic hub (the events a watcher and a serving node act on).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OptEventKind {
    /// A request was placed.
    Requested {
        /// Request.
        id: u64,
        /// Model.
        model_id: Hash,
    },
    /// A claim became the pending result: the assigned node's commitment, or a winning challenger's.
    Claimed {
        /// Request.
        id: u64,
        /// Who stands behind it.
        owner: verity_core::Address,
        /// Output hash.
        output_hash: Hash,
        /// Trace root.
        trace_root: Hash,
        /// Last block of its challenge window.
        window_end: u64,
    },
    /// A game was opened against a claim.
    Challenged {
        /// Request.
        id: u64,
        /// Game.
        game: u64,
        /// Challenger.
        challenger: verity_core::Address,
        /// The claim's owner.
        defender: verity_core::Address,
    },
    /// A game ended.
    Resolved {
        /// Request.
        id: u64,
        /// Game.
        game: u64,
        /// Winner.
        winner: verity_core::Address,
        /// Loser.
        loser: verity_core::Address,
        /// Moves made.
        moves: u32,
        /// Why.
        reason: String,
    },
    /// The request finalized with this output.
    Finalized {
        /// Request.
        id: u64,
        /// Output hash.
        output_hash: Hash,
        /// Claim owner paid.
        owner: verity_core::Address,
    },
    /// Nobody committed in time; the client was refunded.
    Refunded {
        /// Request.
        id: u64,
    },
}

/// An optimistic-hub event with where it was mined.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OptEvent {
    /// Block.
    pub block: u64,
    /// Transaction.
    pub tx: Hash,
    /// What happened.
    pub kind: OptEventKind,
}

impl OptEventKind {
    /// The request it concerns.
    pub fn request(&self) -> u64 {
        match self {
            OptEventKind::Requested { id, .. }
            | OptEventKind::Claimed { id, .. }
            | OptEventKind::Challenged { id, .. }
            | OptEventKind::Resolved { id, .. }
            | OptEventKind::Finalized { id, .. }
            | OptEventKind::Refunded { id } => *id,
        }
    }
}

fn u64_of(v: U256) -> u64 {
    u64::try_from(v).unwrap_or(u64::MAX)
}

/// An optimistic-hub log as an event (`None` for logs a watcher does not act on).
pub fn decode_opt_log(log: &alloy::rpc::types::Log) -> Option<OptEvent> {
    let l = &log.inner;
    let kind = if let Ok(e) = Opt::Requested::decode_log(l) {
        OptEventKind::Requested {
            id: u64_of(e.requestId),
            model_id: from_b256(&e.modelId),
        }
    } else if let Ok(e) = Opt::Committed::decode_log(l) {
        OptEventKind::Claimed {
            id: u64_of(e.requestId),
            owner: from_evm(&e.node),
            output_hash: from_b256(&e.outputHash),
            trace_root: from_b256(&e.traceRoot),
            window_end: e.windowEnd,
        }
    } else if let Ok(e) = Opt::ClaimReplaced::decode_log(l) {
        OptEventKind::Claimed {
            id: u64_of(e.requestId),
            owner: from_evm(&e.owner),
            output_hash: from_b256(&e.outputHash),
            trace_root: from_b256(&e.traceRoot),
            window_end: e.windowEnd,
        }
    } else if let Ok(e) = Opt::Challenged::decode_log(l) {
        OptEventKind::Challenged {
            id: u64_of(e.requestId),
            game: u64_of(e.gameId),
            challenger: from_evm(&e.challenger),
            defender: from_evm(&e.defender),
        }
    } else if let Ok(e) = Opt::GameResolved::decode_log(l) {
        OptEventKind::Resolved {
            id: u64_of(e.requestId),
            game: u64_of(e.gameId),
            winner: from_evm(&e.winner),
            loser: from_evm(&e.loser),
            moves: e.moves,
            reason: e.reason.clone(),
        }
    } else if let Ok(e) = Opt::Finalized::decode_log(l) {
        OptEventKind::Finalized {
            id: u64_of(e.requestId),
            output_hash: from_b256(&e.outputHash),
            owner: from_evm(&e.owner),
        }
    } else if let Ok(e) = Opt::Refunded::decode_log(l) {
        OptEventKind::Refunded {
            id: u64_of(e.requestId),
        }
    } else {
        return None;
    };
    Some(OptEvent {
        block: log.block_number.unwrap_or_default(),
        tx: log
            .transaction_hash
            .map(|h| from_b256(&h))
            .unwrap_or(Hash::ZERO),
        kind,
    })
}

impl EvmChain {
    fn optimistic(&self) -> Result<Opt::OptimisticHubInstance<DynProvider>, ChainError> {
        let a = self.deployment().optimistic.ok_or_else(|| {
            ChainError::Other(
                "this deployment has no OptimisticHub (redeploy the contracts)".into(),
            )
        })?;
        Ok(Opt::new(to_evm(&a), self.provider().clone()))
    }

    /// Whether this deployment has an optimistic hub.
    pub fn has_optimistic(&self) -> bool {
        self.deployment().optimistic.is_some()
    }

    /// The optimistic hub's events in blocks `from..=to`, in chain order.
    pub async fn optimistic_events(&self, from: u64, to: u64) -> Result<Vec<OptEvent>, ChainError> {
        use alloy::providers::Provider;
        let c = self.optimistic()?;
        let f = alloy::rpc::types::Filter::new()
            .address(*c.address())
            .from_block(from)
            .to_block(to);
        let logs = self
            .retry(|| async {
                self.provider()
                    .get_logs(&f)
                    .await
                    .map_err(crate::evm::rpc_err)
            })
            .await?;
        Ok(logs
            .iter()
            .filter(|l| !l.removed)
            .filter_map(decode_opt_log)
            .collect())
    }

    /// Time out optimistic request `id` (nobody committed by its deadline): the client is refunded.
    pub async fn timeout_optimistic(&self, id: u64) -> Result<u64, ChainError> {
        let c = self.optimistic()?;
        Ok(self
            .send("timing out the request", || {
                c.timeoutRequest(U256::from(id)).into_transaction_request()
            })
            .await?
            .1)
    }

    /// The commit and challenge bonds (wei).
    pub async fn bonds(&self) -> Result<(U256, U256), ChainError> {
        let c = self.optimistic()?;
        let a = self
            .retry(|| async { c.commitBond().call().await.map_err(contract_err) })
            .await?;
        let b = self
            .retry(|| async { c.challengeBond().call().await.map_err(contract_err) })
            .await?;
        Ok((a, b))
    }

    /// Ask for an optimistic inference; the ID comes from the transaction's own `Requested` event.
    pub async fn request_optimistic(
        &self,
        model: &Hash,
        input_hash: &Hash,
        input_uri: &str,
        fee: U256,
    ) -> Result<Placed, ChainError> {
        let c = self.optimistic()?;
        let receipt = self
            .send_receipt("requesting an optimistic inference", || {
                c.request(to_b256(model), to_b256(input_hash), input_uri.to_string())
                    .value(fee)
                    .into_transaction_request()
            })
            .await?;
        let id = event_in::<Opt::Requested>(&receipt, c.address())
            .ok_or_else(|| ChainError::Other("no Requested event".into()))?
            .requestId;
        Ok(Placed {
            id: u64::try_from(id)
                .map_err(|_| ChainError::Other("request ID out of range".into()))?,
            tx: from_b256(&receipt.transaction_hash),
            gas: receipt.gas_used,
            block: receipt.block_number.unwrap_or_default(),
        })
    }

    /// The node that must answer optimistic request `id`.
    pub async fn optimistic_assigned(&self, id: u64) -> Result<verity_core::Address, ChainError> {
        let c = self.optimistic()?;
        let a = self
            .retry(|| async {
                c.assigned(U256::from(id))
                    .call()
                    .await
                    .map_err(contract_err)
            })
            .await?;
        Ok(from_evm(&a))
    }

    /// Optimistic request `id`.
    pub async fn optimistic_request(&self, id: u64) -> Result<OptRequest, ChainError> {
        let c = self.optimistic()?;
        let r = self
            .retry(|| async {
                c.getRequest(U256::from(id))
                    .call()
                    .await
                    .map_err(contract_err)
            })
            .await?;
        Ok(OptRequest {
            status: r.status,
            model_id: from_b256(&r.modelId),
            input_hash: from_b256(&r.inputHash),
            input_uri: r.inputUri,
            window_end: r.windowEnd,
            open_games: r.openGames,
            deadline: r.deadline,
        })
    }

    /// The pending claim of request `id`.
    pub async fn claim(&self, id: u64) -> Result<Claim, ChainError> {
        let c = self.optimistic()?;
        let r = self
            .retry(|| async { c.claims(U256::from(id)).call().await.map_err(contract_err) })
            .await?;
        Ok(Claim {
            owner: from_evm(&r.owner),
            output_hash: from_b256(&r.outputHash),
            trace_root: from_b256(&r.traceRoot),
        })
    }

    /// Commit an answer (output hash, trace root) with the bond.
    pub async fn commit(&self, id: u64, output: &Hash, trace: &Hash) -> Result<u64, ChainError> {
        let c = self.optimistic()?;
        let (bond, _) = self.bonds().await?;
        let (_, gas) = self
            .send("committing the result", || {
                c.commit(U256::from(id), to_b256(output), to_b256(trace))
                    .value(bond)
                    .into_transaction_request()
            })
            .await?;
        Ok(gas)
    }

    /// Challenge the claim of request `id` with this key's own claim; returns the game ID and gas.
    pub async fn challenge(
        &self,
        id: u64,
        output: &Hash,
        trace: &Hash,
    ) -> Result<(u64, u64), ChainError> {
        let c = self.optimistic()?;
        let (_, bond) = self.bonds().await?;
        let receipt = self
            .send_receipt("challenging the result", || {
                c.challenge(U256::from(id), to_b256(output), to_b256(trace))
                    .value(bond)
                    .into_transaction_request()
            })
            .await?;
        let g = event_in::<Opt::Challenged>(&receipt, c.address())
            .ok_or_else(|| ChainError::Other("no Challenged event".into()))?
            .gameId;
        Ok((
            u64::try_from(g).map_err(|_| ChainError::Other("game ID out of range".into()))?,
            receipt.gas_used,
        ))
    }

    /// Dispute `receipt` at the ReceiptCourt with this account's own execution of its input (`input`,
    /// the quantized tensors, which must hash to the receipt's input hash): output hash `output`, trace
    /// root `trace`. Pays the challenge bond. `hub_receipt`: signed in the InferenceHub's domain (else
    /// the court's own, an off-chain receipt). Returns (dispute ID, game ID, gas); the game is then
    /// played on the OptimisticHub like any other.
    pub async fn dispute_receipt(
        &self,
        receipt: &verity_core::SignedReceipt,
        hub_receipt: bool,
        output: &Hash,
        trace: &Hash,
        input: &[Vec<i32>],
    ) -> Result<(u64, u64, u64), ChainError> {
        use crate::bindings::court;
        let at = self.deployment().court.ok_or_else(|| {
            ChainError::Other("this deployment has no ReceiptCourt (redeploy the contracts)".into())
        })?;
        let c = court::ReceiptCourt::new(to_evm(&at), self.provider().clone());
        let (_, bond) = self.bonds().await?;
        let rec = crate::evm::receipt_in!(court::VerityReceipts, &receipt.receipt);
        let sig = Bytes::from(receipt.signature.0.to_vec());
        let (lens, words) = crate::court::input_words(input);
        let tx = self
            .send_receipt("disputing the receipt", || {
                c.disputeReceipt(
                    rec.clone(),
                    sig.clone(),
                    hub_receipt,
                    to_b256(output),
                    to_b256(trace),
                    lens.clone(),
                    words.clone(),
                )
                .value(bond)
                .into_transaction_request()
            })
            .await?;
        let e = event_in::<court::ReceiptCourt::ReceiptDisputed>(&tx, c.address())
            .ok_or_else(|| ChainError::Other("no ReceiptDisputed event".into()))?;
        let id = |v: U256| {
            u64::try_from(v).map_err(|_| ChainError::Other("dispute ID out of range".into()))
        };
        Ok((id(e.disputeId)?, id(e.gameId)?, tx.gas_used))
    }

    /// Game `g`.
    pub async fn game(&self, g: u64) -> Result<Game, ChainError> {
        let c = self.optimistic()?;
        let r = self
            .retry(|| async { c.getGame(U256::from(g)).call().await.map_err(contract_err) })
            .await?;
        Ok(Game {
            request_id: r.requestId.try_into().unwrap_or(u64::MAX),
            challenger: from_evm(&r.challenger),
            output_hash: from_b256(&r.outputHash),
            trace_root: from_b256(&r.traceRoot),
            stage: Stage::from_u8(r.stage),
            words: r.words,
            depth: r.depth,
            level: r.level,
            deadline: r.deadline,
            index: r.index,
            inputs: r.inputs,
            leaf: r.leaf,
            len: r.len,
            moves: r.moves,
            left: from_b256(&r.left),
            right: from_b256(&r.right),
            word: from_b256(&r.word),
        })
    }

    /// The games ever opened against request `id`.
    pub async fn games_of(&self, id: u64) -> Result<Vec<u64>, ChainError> {
        let c = self.optimistic()?;
        let v = self
            .retry(|| async {
                c.gamesOfRequest(U256::from(id))
                    .call()
                    .await
                    .map_err(contract_err)
            })
            .await?;
        Ok(v.into_iter()
            .map(|x| x.try_into().unwrap_or(u64::MAX))
            .collect())
    }

    /// Finalize request `id` after its window.
    pub async fn finalize_optimistic(&self, id: u64) -> Result<u64, ChainError> {
        let c = self.optimistic()?;
        Ok(self
            .send("finalizing the result", || {
                c.finalize(U256::from(id)).into_transaction_request()
            })
            .await?
            .1)
    }

    /// End game `g` after a missed move (the side that had to move loses).
    pub async fn timeout_game(&self, g: u64) -> Result<u64, ChainError> {
        let c = self.optimistic()?;
        Ok(self
            .send("ending the game for a missed move", || {
                c.timeout(U256::from(g)).into_transaction_request()
            })
            .await?
            .1)
    }

    /// What the defender of game `g` revealed of its trace tree (root and the splits down to `leaf`),
    /// read from the game's `Revealed` and `Split` events.
    pub async fn revealed(
        &self,
        g: u64,
        leaf: u64,
    ) -> Result<verity_engine::dispute::Revealed, ChainError> {
        use alloy::providers::Provider;
        use alloy::rpc::types::Filter;
        let c = self.optimistic()?;
        let from = self.deployment().deploy_block;
        let topic = B256::from(U256::from(g));
        let logs = |sig: B256| {
            let f = Filter::new()
                .address(*c.address())
                .event_signature(sig)
                .topic1(topic)
                .from_block(from);
            let p = self.provider().clone();
            async move { p.get_logs(&f).await.map_err(crate::evm::rpc_err) }
        };
        let rev = self.retry(|| logs(Opt::Revealed::SIGNATURE_HASH)).await?;
        let rev = rev
            .iter()
            .find_map(|l| Opt::Revealed::decode_log(&l.inner).ok())
            .ok_or_else(|| ChainError::Other(format!("game {g} has no revealed trace")))?;
        let depth = verity_core::tree_depth(rev.width as usize);
        let splits: Vec<(Hash, Hash)> = self
            .retry(|| logs(Opt::Split::SIGNATURE_HASH))
            .await?
            .iter()
            .filter_map(|l| Opt::Split::decode_log(&l.inner).ok())
            .map(|s| (from_b256(&s.left), from_b256(&s.right)))
            .collect();
        Ok(verity_engine::dispute::Revealed::from_splits(
            from_b256(&rev.traceTree),
            depth,
            leaf,
            &splits,
        ))
    }

    /// Make `side`'s move in game `g` if it is its turn (`defender`: the side behind the claim); `None`
    /// when it is the other side's turn, the game is over, or (challenger at the last step) this side
    /// finds nothing to dispute in the revealed word.
    pub async fn play_move(
        &self,
        g: u64,
        side: &Side<'_>,
        defender: bool,
    ) -> Result<Option<Move>, ChainError> {
        let c = self.optimistic()?;
        let gm = self.game(g).await?;
        if gm.stage == Stage::None
            || gm.stage == Stage::Done
            || gm.stage.defender_moves() != defender
        {
            return Ok(None);
        }
        let gid = U256::from(g);
        let level = gm.level as usize;
        let (name, gas) = match gm.stage {
            Stage::Reveal => {
                let v = side.reveal();
                let arg = Opt::Reveal {
                    itemCount: v.item_count,
                    itemRoot: to_b256(&v.item_root),
                    header: Bytes::from(v.header.clone()),
                    headerPath: b256s(&v.header_path),
                    traceTree: to_b256(&v.trace_tree),
                    roots: b256s(&v.roots),
                    paths: v.paths.iter().map(|p| b256s(p)).collect(),
                    descriptors: v
                        .descriptors
                        .iter()
                        .map(|d| Bytes::from(d.clone()))
                        .collect(),
                };
                let (_, gas) = self
                    .send("revealing the trace", || {
                        c.reveal(gid, arg.clone()).into_transaction_request()
                    })
                    .await?;
                ("reveal", gas)
            }
            Stage::Split => {
                let (l, r) = if gm.words {
                    side.word_tree(gm.leaf).children(level, gm.index)
                } else {
                    side.trace_tree().children(level, gm.index)
                };
                let (_, gas) = self
                    .send("splitting the disputed node", || {
                        c.split(gid, to_b256(&l), to_b256(&r))
                            .into_transaction_request()
                    })
                    .await?;
                ("split", gas)
            }
            Stage::Choose => {
                let own = if gm.words {
                    let (len, _) = side.open(gm.leaf);
                    if len != gm.len {
                        // another length: every element leads to the length check; go left
                        (gm.left, Hash::ZERO)
                    } else {
                        side.word_tree(gm.leaf).children(level, gm.index)
                    }
                } else {
                    side.trace_tree().children(level, gm.index)
                };
                let right = Side::choose(own, (gm.left, gm.right));
                let (_, gas) = self
                    .send("choosing the disputed half", || {
                        c.choose(gid, right).into_transaction_request()
                    })
                    .await?;
                ("choose", gas)
            }
            Stage::Open => {
                let (len, tree) = side.open(gm.leaf);
                let (_, gas) = self
                    .send("opening the disputed tensor", || {
                        c.open(gid, len, to_b256(&tree)).into_transaction_request()
                    })
                    .await?;
                ("open", gas)
            }
            Stage::Word => {
                let w = side.word(gm.leaf, gm.index);
                let (_, gas) = self
                    .send("revealing the disputed word", || {
                        c.revealWord(gid, to_b256(&w)).into_transaction_request()
                    })
                    .await?;
                ("revealWord", gas)
            }
            Stage::Step => {
                let Some(j) = side.disputed_element(gm.leaf, gm.len, gm.index, &gm.word) else {
                    return Ok(None);
                };
                let node = (gm.leaf - gm.inputs) as usize;
                let e = gm.index * 8 + j as u64;
                let theirs = self.revealed(g, gm.leaf).await?;
                let w = side
                    .step_against(node, e, &theirs)
                    .map_err(|e| ChainError::Other(format!("one-step witness: {e}")))?;
                let arg = game_step_arg(&w);
                let (_, gas) = self
                    .send("proving the element wrong", || {
                        c.step(gid, j, arg.clone()).into_transaction_request()
                    })
                    .await?;
                ("step", gas)
            }
            Stage::None | Stage::Done => return Ok(None),
        };
        Ok(Some(Move { name, gas }))
    }
}
