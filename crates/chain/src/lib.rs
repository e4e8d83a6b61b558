//! Verity on an EVM chain: typed bindings for the contracts in `contracts/` (generated from the committed
//! artifacts), deployment, an RPC client that sends transactions with serialized nonces and retries and turns
//! reverts into sentences, a reorg-aware event watcher, and [`MemChain`], an in-memory chain with the hub's
//! rules for fast unit tests of code written against the [`Chain`] trait.
//!
//! Everything a node does on-chain goes through [`Chain`], implemented by [`EvmChain`] (any JSON-RPC
//! endpoint; anvil locally) and [`MemChain`].

pub mod bindings;
pub mod cert;
pub mod court;
pub mod dispute;
pub mod evm;
pub mod mem;
pub mod watch;

use std::future::Future;

pub use alloy::primitives::{Address as EvmAddress, B256, U256};
pub use evm::{Deployment, EvmChain, RegisteredModel};
pub use mem::MemChain;
use serde::{Deserialize, Serialize};
use verity_core::{Hash, SignedReceipt};
pub use watch::{WatchItem, Watcher, WatcherState};

/// A chain error, phrased for a person.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ChainError {
    /// The RPC endpoint could not be reached or answered garbage; worth retrying.
    #[error("the chain RPC endpoint failed: {0}")]
    Rpc(String),
    /// A contract refused the call; the message names the contract's reason.
    #[error("{0}")]
    Reverted(String),
    /// Anything else (bad deployment file, bad arguments).
    #[error("{0}")]
    Other(String),
}

impl ChainError {
    /// Whether trying again later may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, ChainError::Rpc(_))
    }
}

/// Inference modes of the hub (`InferenceHub.Mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Final on one valid receipt.
    Signed,
    /// Final on k matching receipts.
    Quorum,
}

impl Mode {
    /// The contract's enum value.
    pub fn as_u8(self) -> u8 {
        match self {
            Mode::Signed => 0,
            Mode::Quorum => 1,
        }
    }
    /// From the contract's enum value.
    pub fn from_u8(v: u8) -> Option<Mode> {
        match v {
            0 => Some(Mode::Signed),
            1 => Some(Mode::Quorum),
            _ => None,
        }
    }
}

/// Request status (`InferenceHub.Status`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// No such request.
    None,
    /// Waiting for receipts.
    Pending,
    /// Done; fees paid.
    Finalized,
    /// Timed out; client refunded.
    Refunded,
}

impl Status {
    fn from_u8(v: u8) -> Status {
        match v {
            1 => Status::Pending,
            2 => Status::Finalized,
            3 => Status::Refunded,
            _ => Status::None,
        }
    }
}

/// An on-chain inference request as the hub stores it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestInfo {
    /// Hub request ID.
    pub id: u64,
    /// Who asked (an EOA or a contract).
    pub client: verity_core::Address,
    /// Mode.
    pub mode: Mode,
    /// Receipts needed.
    pub k: u8,
    /// Status.
    pub status: Status,
    /// The block whose hash seeds the assignment.
    pub seed_block: u64,
    /// Receipts are accepted until this unix time.
    pub deadline: u64,
    /// Model ID.
    pub model_id: Hash,
    /// Canonical input hash (zero: named by the receipts; set on finalization).
    pub input_hash: Hash,
    /// Finalized output hash (zero until then).
    pub output_hash: Hash,
    /// Fee paid, in wei (decimal string).
    pub fee: String,
    /// Where the input is.
    pub input_uri: String,
}

/// The assignment of a request, once its seed block is mined.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Assignment {
    /// Seed block not mined yet.
    NotReady,
    /// The seed block is older than the 256 blocks the EVM can see; nobody can be assigned any more.
    Expired,
    /// The assigned nodes, in draw order.
    Nodes(Vec<verity_core::Address>),
}

/// A hub event with where it happened.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HubEvent {
    /// Block number.
    pub block: u64,
    /// Block hash.
    pub block_hash: Hash,
    /// Transaction hash.
    pub tx: Hash,
    /// Position in the block's logs.
    pub log_index: u64,
    /// What happened.
    pub kind: HubEventKind,
}

/// What a hub event says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum HubEventKind {
    /// A new request.
    Requested {
        /// Request ID.
        id: u64,
        /// Model.
        model_id: Hash,
        /// Input hash (may be zero).
        input_hash: Hash,
        /// Input location.
        input_uri: String,
        /// Mode.
        mode: Mode,
        /// Receipts needed.
        k: u8,
        /// Seed block.
        seed_block: u64,
        /// Deadline (unix seconds).
        deadline: u64,
    },
    /// A receipt was accepted.
    ReceiptAccepted {
        /// Request ID.
        id: u64,
        /// Node.
        node: verity_core::Address,
        /// Its output hash.
        output_hash: Hash,
        /// Its trace root.
        trace_root: Hash,
        /// Its input hash.
        input_hash: Hash,
        /// Its timestamp.
        timestamp: u64,
        /// Its signature (hub domain): with the request's model, the whole receipt, which anyone can
        /// dispute at the ReceiptCourt.
        signature: verity_core::Signature,
    },
    /// Two receipts disagree.
    Conflict {
        /// Request ID.
        id: u64,
        /// One node.
        node_a: verity_core::Address,
        /// The other.
        node_b: verity_core::Address,
    },
    /// Final.
    Finalized {
        /// Request ID.
        id: u64,
        /// Agreed input hash.
        input_hash: Hash,
        /// Agreed output hash.
        output_hash: Hash,
    },
    /// An assigned node declined.
    Declined {
        /// Request ID.
        id: u64,
        /// Node.
        node: verity_core::Address,
        /// Why it cannot serve the request (e.g. `input_mismatch`, `model_not_found`).
        reason: String,
    },
    /// Refunded (after the deadline, or once too few assigned nodes remain).
    Refunded {
        /// Request ID.
        id: u64,
    },
    /// A model was registered in the ModelRegistry.
    ModelRegistered {
        /// Model ID.
        model_id: Hash,
        /// Name.
        name: String,
        /// Version.
        version: String,
    },
}

/// A block reference.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockRef {
    /// Number.
    pub number: u64,
    /// Hash.
    pub hash: Hash,
    /// Unix timestamp.
    pub timestamp: u64,
}

/// Registration of a node in the NodeRegistry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    /// HTTP endpoint.
    pub endpoint: String,
    /// Stake in wei (decimal).
    pub stake: String,
    /// Registered and staked at least the minimum, not fully unbonding.
    pub active: bool,
}

/// What Verity code needs from a chain. Implemented by [`EvmChain`] and [`MemChain`].
pub trait Chain: Send + Sync + 'static {
    /// Chain ID.
    fn chain_id(&self) -> u64;
    /// The InferenceHub address (the verifying contract of receipts).
    fn hub(&self) -> verity_core::Address;
    /// The newest block.
    fn head(&self) -> impl Future<Output = Result<BlockRef, ChainError>> + Send;
    /// The hash of block `n` (None if beyond the head).
    fn block_hash(&self, n: u64) -> impl Future<Output = Result<Option<Hash>, ChainError>> + Send;
    /// Hub events in blocks `from..=to`, in chain order.
    fn hub_events(
        &self,
        from: u64,
        to: u64,
    ) -> impl Future<Output = Result<Vec<HubEvent>, ChainError>> + Send;
    /// A request (None if there is none with that ID).
    fn request(
        &self,
        id: u64,
    ) -> impl Future<Output = Result<Option<RequestInfo>, ChainError>> + Send;
    /// Who is assigned to a request.
    fn assignment(&self, id: u64) -> impl Future<Output = Result<Assignment, ChainError>> + Send;
    /// The output hash `node` submitted for request `id`, if any.
    fn submitted(
        &self,
        id: u64,
        node: verity_core::Address,
    ) -> impl Future<Output = Result<Option<Hash>, ChainError>> + Send;
    /// Submit a receipt (signed under this hub's domain); returns the transaction hash once mined.
    fn submit(
        &self,
        id: u64,
        receipt: &SignedReceipt,
    ) -> impl Future<Output = Result<Hash, ChainError>> + Send;
    /// The sender, assigned to request `id`, declines it (it cannot serve it: input unavailable or not
    /// matching, model not hosted, collateral not free); it is then never slashed for it.
    fn decline(
        &self,
        id: u64,
        reason: &str,
    ) -> impl Future<Output = Result<Hash, ChainError>> + Send;
    /// A node's registration (None if not registered).
    fn node_info(
        &self,
        node: verity_core::Address,
    ) -> impl Future<Output = Result<Option<NodeInfo>, ChainError>> + Send;
    /// Register the sender as a node with `endpoint` and `stake` wei.
    fn register_node(
        &self,
        endpoint: &str,
        stake: U256,
    ) -> impl Future<Output = Result<Hash, ChainError>> + Send;
    /// Change the sender's registered endpoint.
    fn set_endpoint(&self, endpoint: &str)
        -> impl Future<Output = Result<Hash, ChainError>> + Send;
    /// Every registered node with its registration, in registration order.
    fn nodes(
        &self,
    ) -> impl Future<Output = Result<Vec<(verity_core::Address, NodeInfo)>, ChainError>> + Send;
    /// The nodes announcing that they host `model`.
    fn hosts_of(
        &self,
        model: Hash,
    ) -> impl Future<Output = Result<Vec<verity_core::Address>, ChainError>> + Send;
    /// Announce (or withdraw) that the sender hosts `model`.
    fn set_hosting(
        &self,
        model: Hash,
        on: bool,
    ) -> impl Future<Output = Result<Hash, ChainError>> + Send;
    /// The ABI-encoded OpenGradient `ModelInferenceRequest` behind an `opengradient:<id>` input URI (the
    /// `ModelInferenceEvent` with that ID in the request's transaction), or None if absent.
    fn opengradient_request(
        &self,
        id: u64,
    ) -> impl Future<
        Output = Result<Option<bindings::OpenGradientEvents::ModelInferenceRequest>, ChainError>,
    > + Send;
}

/// `n` ether in wei.
pub fn ether(n: u64) -> U256 {
    U256::from(n) * U256::from(10u64).pow(U256::from(18))
}

/// Convert between Verity's and alloy's byte types.
pub fn to_b256(h: &Hash) -> B256 {
    B256::from(h.0)
}
/// See [`to_b256`].
pub fn from_b256(b: &B256) -> Hash {
    Hash(b.0)
}
/// See [`to_b256`].
pub fn to_evm(a: &verity_core::Address) -> EvmAddress {
    EvmAddress::from(a.0)
}
/// See [`to_b256`].
pub fn from_evm(a: &EvmAddress) -> verity_core::Address {
    verity_core::Address(a.0 .0)
}

/// The hub's assignment rule, for checking it off-chain: `count` draws without replacement from `nodes`
/// (address, stake; zero stake = inactive), draw d picking the node where keccak256(seed ‖ d) mod the
/// remaining stake falls when walking the list in order.
pub fn assign(
    seed: Hash,
    nodes: &[(verity_core::Address, U256)],
    count: usize,
) -> Vec<verity_core::Address> {
    let mut stake: Vec<U256> = nodes.iter().map(|n| n.1).collect();
    let mut total: U256 = stake.iter().fold(U256::ZERO, |a, b| a + *b);
    let active = stake.iter().filter(|s| !s.is_zero()).count();
    let count = count.min(active);
    let mut picked = Vec::with_capacity(count);
    for d in 0..count {
        let mut buf = [0u8; 64];
        buf[..32].copy_from_slice(&seed.0);
        buf[32..].copy_from_slice(&U256::from(d).to_be_bytes::<32>());
        let mut x = U256::from_be_bytes(verity_core::keccak256(&buf).0) % total;
        for (i, s) in stake.iter_mut().enumerate() {
            if s.is_zero() {
                continue;
            }
            if x < *s {
                picked.push(nodes[i].0);
                total -= *s;
                *s = U256::ZERO;
                break;
            }
            x -= *s;
        }
    }
    picked
}

/// The seed of request `id` from the hash of its seed block: keccak256(blockhash ‖ id).
pub fn seed_of(block_hash: Hash, id: u64) -> Hash {
    let mut buf = [0u8; 64];
    buf[..32].copy_from_slice(&block_hash.0);
    buf[32..].copy_from_slice(&U256::from(id).to_be_bytes::<32>());
    verity_core::keccak256(&buf)
}
