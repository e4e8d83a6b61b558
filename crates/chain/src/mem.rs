//! An in-memory chain with the hub's request, assignment and receipt rules, for fast unit tests of code
//! written against [`Chain`]. Never a replacement for the anvil tests: it has no EVM, no gas and no
//! payments, only the rules a node's behaviour depends on (who is assigned, which receipts count, when a
//! request is final) and block hashes that change under [`MemChain::reorg`].

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use alloy::primitives::U256;
use verity_core::{keccak256, Address, Hash, SignedReceipt};

use crate::bindings::OpenGradientEvents::ModelInferenceRequest;
use crate::{
    assign, seed_of, Assignment, BlockRef, Chain, ChainError, HubEvent, HubEventKind, Mode,
    NodeInfo, RequestInfo, Status,
};

#[derive(Default)]
struct State {
    /// Block hashes; block n at index n. Block 0 exists from the start.
    blocks: Vec<BlockRef>,
    events: Vec<HubEvent>,
    requests: BTreeMap<u64, (RequestInfo, u64)>,
    nodes: Vec<(Address, NodeInfo)>,
    submitted: BTreeMap<(u64, Address), (Hash, Hash)>,
    declined: BTreeMap<u64, Vec<Address>>,
    salt: u64,
    fail_rpc: bool,
    og: BTreeMap<u64, ModelInferenceRequest>,
    hosts: BTreeMap<Hash, Vec<Address>>,
}

/// An in-memory chain; clones share state. `as_sender` gives a handle that sends as another account.
#[derive(Clone)]
pub struct MemChain {
    state: Arc<Mutex<State>>,
    sender: Address,
    hub: Address,
}

const MEM_CHAIN_ID: u64 = 1337;

impl Default for MemChain {
    fn default() -> Self {
        Self::new()
    }
}

impl MemChain {
    /// A chain with only block 0.
    pub fn new() -> MemChain {
        let c = MemChain {
            state: Arc::new(Mutex::new(State::default())),
            sender: Address([0; 20]),
            hub: Address([0x4b; 20]),
        };
        c.lock().blocks.push(BlockRef {
            number: 0,
            hash: keccak256(b"genesis"),
            timestamp: 1_000_000,
        });
        c
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The same chain, sending as `sender`.
    pub fn as_sender(&self, sender: Address) -> MemChain {
        MemChain {
            state: self.state.clone(),
            sender,
            hub: self.hub,
        }
    }

    /// Mine one empty block (timestamps advance 1 s per block).
    pub fn mine(&self) -> u64 {
        let mut s = self.lock();
        mine(&mut s)
    }

    /// Make every RPC-like call fail with a transient error (a dropped connection) until called with false.
    pub fn set_unreachable(&self, down: bool) {
        self.lock().fail_rpc = down;
    }

    /// Place a request as the current sender; returns its ID. Mined in a new block.
    pub fn place_request(
        &self,
        model_id: Hash,
        input_hash: Hash,
        input_uri: &str,
        mode: Mode,
        k: u8,
    ) -> u64 {
        let mut s = self.lock();
        let block = mine(&mut s);
        let id = s.requests.keys().next_back().map(|k| k + 1).unwrap_or(1);
        let k = if mode == Mode::Signed { 1 } else { k };
        let ts = s.blocks[block as usize].timestamp;
        let info = RequestInfo {
            id,
            client: self.sender,
            mode,
            k,
            status: Status::Pending,
            seed_block: block + 1,
            deadline: ts + 600,
            model_id,
            input_hash,
            output_hash: Hash::ZERO,
            fee: "0".into(),
            input_uri: input_uri.into(),
        };
        s.requests.insert(id, (info.clone(), block));
        let kind = HubEventKind::Requested {
            id,
            model_id,
            input_hash,
            input_uri: input_uri.into(),
            mode,
            k,
            seed_block: block + 1,
            deadline: ts + 600,
        };
        push_event(&mut s, block, kind);
        id
    }

    /// Register a model (mined in a new block, with its `ModelRegistered` event).
    pub fn register_model(&self, model_id: Hash, name: &str, version: &str) {
        let mut s = self.lock();
        let block = mine(&mut s);
        push_event(
            &mut s,
            block,
            HubEventKind::ModelRegistered {
                model_id,
                name: name.into(),
                version: version.into(),
            },
        );
    }

    /// Attach an OpenGradient request to a hub request (what the 0x…F4 event carries on a real chain).
    pub fn attach_opengradient(&self, id: u64, req: ModelInferenceRequest) {
        self.lock().og.insert(id, req);
    }

    /// Drop the newest `depth` blocks with everything that happened in them, then mine `depth` + 1 new
    /// (empty) blocks with different hashes.
    pub fn reorg(&self, depth: u64) {
        let mut s = self.lock();
        let keep = (s.blocks.len() as u64).saturating_sub(depth).max(1);
        s.blocks.truncate(keep as usize);
        s.events.retain(|e| e.block < keep);
        let gone: Vec<u64> = s
            .requests
            .iter()
            .filter(|(_, (_, b))| *b >= keep)
            .map(|(id, _)| *id)
            .collect();
        for id in gone {
            s.requests.remove(&id);
            s.submitted.retain(|(r, _), _| *r != id);
        }
        s.salt += 1;
        for _ in 0..=depth {
            mine(&mut s);
        }
    }
}

fn mine(s: &mut State) -> u64 {
    let prev = *s.blocks.last().expect("genesis");
    let n = prev.number + 1;
    let mut buf = Vec::with_capacity(48);
    buf.extend_from_slice(&prev.hash.0);
    buf.extend_from_slice(&n.to_be_bytes());
    buf.extend_from_slice(&s.salt.to_be_bytes());
    s.blocks.push(BlockRef {
        number: n,
        hash: keccak256(&buf),
        timestamp: prev.timestamp + 1,
    });
    n
}

fn push_event(s: &mut State, block: u64, kind: HubEventKind) {
    let b = s.blocks[block as usize];
    let log_index = s.events.iter().filter(|e| e.block == block).count() as u64;
    let tx = keccak256(&[&b.hash.0[..], &log_index.to_be_bytes()].concat());
    s.events.push(HubEvent {
        block,
        block_hash: b.hash,
        tx,
        log_index,
        kind,
    });
}

/// Request `id` if it is pending, else the hub's revert.
fn pending_request(s: &State, id: u64) -> Result<RequestInfo, ChainError> {
    let rev = |m: &str| ChainError::Reverted(format!("InferenceHub: {m}"));
    match s.requests.get(&id) {
        None => Err(rev("the request is not pending")),
        Some((r, _)) if r.status != Status::Pending => Err(rev(
            "the request is not pending (already finalized or refunded)",
        )),
        Some((r, _)) => Ok(r.clone()),
    }
}

fn assignment_of(s: &State, id: u64) -> Assignment {
    let Some((r, _)) = s.requests.get(&id) else {
        return Assignment::NotReady;
    };
    let head = s.blocks.len() as u64 - 1;
    if head <= r.seed_block {
        return Assignment::NotReady;
    }
    if head - r.seed_block > 256 {
        return Assignment::Expired;
    }
    let seed = seed_of(s.blocks[r.seed_block as usize].hash, id);
    let nodes: Vec<(Address, U256)> = s
        .nodes
        .iter()
        .map(|(a, n)| {
            (
                *a,
                if n.active {
                    n.stake.parse().unwrap_or(U256::ZERO)
                } else {
                    U256::ZERO
                },
            )
        })
        .collect();
    let count = if r.mode == Mode::Signed {
        1
    } else {
        r.k as usize + 2
    };
    Assignment::Nodes(assign(seed, &nodes, count))
}

impl MemChain {
    fn check(&self) -> Result<std::sync::MutexGuard<'_, State>, ChainError> {
        let s = self.lock();
        if s.fail_rpc {
            return Err(ChainError::Rpc("connection refused (simulated)".into()));
        }
        Ok(s)
    }
}

impl Chain for MemChain {
    fn chain_id(&self) -> u64 {
        MEM_CHAIN_ID
    }

    fn hub(&self) -> Address {
        self.hub
    }

    async fn head(&self) -> Result<BlockRef, ChainError> {
        Ok(*self.check()?.blocks.last().expect("genesis"))
    }

    async fn block_hash(&self, n: u64) -> Result<Option<Hash>, ChainError> {
        Ok(self.check()?.blocks.get(n as usize).map(|b| b.hash))
    }

    async fn hub_events(&self, from: u64, to: u64) -> Result<Vec<HubEvent>, ChainError> {
        Ok(self
            .check()?
            .events
            .iter()
            .filter(|e| e.block >= from && e.block <= to)
            .cloned()
            .collect())
    }

    async fn request(&self, id: u64) -> Result<Option<RequestInfo>, ChainError> {
        Ok(self.check()?.requests.get(&id).map(|r| r.0.clone()))
    }

    async fn assignment(&self, id: u64) -> Result<Assignment, ChainError> {
        let s = self.check()?;
        Ok(assignment_of(&s, id))
    }

    async fn submitted(&self, id: u64, node: Address) -> Result<Option<Hash>, ChainError> {
        Ok(self.check()?.submitted.get(&(id, node)).map(|v| v.1))
    }

    async fn submit(&self, id: u64, receipt: &SignedReceipt) -> Result<Hash, ChainError> {
        let mut s = self.check()?;
        let rev = |m: &str| Err(ChainError::Reverted(format!("InferenceHub: {m}")));
        let r = pending_request(&s, id)?;
        let rc = &receipt.receipt;
        if rc.request_id != Hash(U256::from(id).to_be_bytes::<32>())
            || rc.model_id != r.model_id
            || (r.input_hash != Hash::ZERO && rc.input_hash != r.input_hash)
        {
            return rev("the receipt is for another request, model or input");
        }
        let domain_ok = receipt.domain.chain_id == Some(MEM_CHAIN_ID)
            && receipt.domain.verifying_contract == Some(self.hub);
        if !domain_ok || receipt.verify().ok() != Some(rc.node) {
            return rev("the receipt's signature is not the node's");
        }
        let Assignment::Nodes(assigned) = assignment_of(&s, id) else {
            return rev("the seed block is not mined yet");
        };
        if !assigned.contains(&rc.node) {
            return rev(&format!("node {} is not assigned to this request", rc.node));
        }
        if s.submitted.contains_key(&(id, rc.node)) {
            return rev("this node already submitted a receipt");
        }
        if s.declined.get(&id).is_some_and(|d| d.contains(&rc.node)) {
            return rev("this node declined the request");
        }
        let block = mine(&mut s);
        s.submitted
            .insert((id, rc.node), (rc.input_hash, rc.output_hash));
        push_event(
            &mut s,
            block,
            HubEventKind::ReceiptAccepted {
                id,
                node: rc.node,
                output_hash: rc.output_hash,
                trace_root: rc.trace_root,
                input_hash: rc.input_hash,
                timestamp: rc.timestamp,
                signature: receipt.signature,
            },
        );
        let votes = s
            .submitted
            .iter()
            .filter(|((i, _), v)| *i == id && **v == (rc.input_hash, rc.output_hash))
            .count();
        if votes >= r.k as usize {
            let e = s.requests.get_mut(&id).expect("present");
            e.0.status = Status::Finalized;
            e.0.output_hash = rc.output_hash;
            e.0.input_hash = rc.input_hash;
            push_event(
                &mut s,
                block,
                HubEventKind::Finalized {
                    id,
                    input_hash: rc.input_hash,
                    output_hash: rc.output_hash,
                },
            );
        }
        let tx = s.events.last().expect("just pushed").tx;
        Ok(tx)
    }

    async fn decline(&self, id: u64, reason: &str) -> Result<Hash, ChainError> {
        let _ = reason;
        let mut s = self.check()?;
        let rev = |m: &str| Err(ChainError::Reverted(format!("InferenceHub: {m}")));
        let r = pending_request(&s, id)?;
        let Assignment::Nodes(assigned) = assignment_of(&s, id) else {
            return rev("the seed block is not mined yet");
        };
        let me = self.sender;
        if !assigned.contains(&me) {
            return rev(&format!("node {me} is not assigned to this request"));
        }
        if s.submitted.contains_key(&(id, me)) {
            return rev("this node already submitted a receipt");
        }
        let d = s.declined.entry(id).or_default();
        if d.contains(&me) {
            return rev("this node declined the request");
        }
        d.push(me);
        let declines = d.len();
        let block = mine(&mut s);
        push_event(
            &mut s,
            block,
            HubEventKind::Declined {
                id,
                node: me,
                reason: reason.to_string(),
            },
        );
        if assigned.len() < declines + r.k as usize {
            s.requests.get_mut(&id).expect("present").0.status = Status::Refunded;
            push_event(&mut s, block, HubEventKind::Refunded { id });
        }
        Ok(s.events.last().expect("just pushed").tx)
    }

    async fn node_info(&self, node: Address) -> Result<Option<NodeInfo>, ChainError> {
        Ok(self
            .check()?
            .nodes
            .iter()
            .find(|n| n.0 == node)
            .map(|n| n.1.clone()))
    }

    async fn register_node(&self, endpoint: &str, stake: U256) -> Result<Hash, ChainError> {
        let mut s = self.check()?;
        if s.nodes.iter().any(|n| n.0 == self.sender) {
            return Err(ChainError::Reverted(
                "NodeRegistry: the node is already registered".into(),
            ));
        }
        let block = mine(&mut s);
        s.nodes.push((
            self.sender,
            NodeInfo {
                endpoint: endpoint.into(),
                stake: stake.to_string(),
                active: true,
            },
        ));
        Ok(s.blocks[block as usize].hash)
    }

    async fn set_endpoint(&self, endpoint: &str) -> Result<Hash, ChainError> {
        let mut s = self.check()?;
        let block = mine(&mut s);
        let me = self.sender;
        let n = s
            .nodes
            .iter_mut()
            .find(|n| n.0 == me)
            .ok_or_else(|| ChainError::Reverted("NodeRegistry: not registered".into()))?;
        n.1.endpoint = endpoint.into();
        Ok(s.blocks[block as usize].hash)
    }

    async fn nodes(&self) -> Result<Vec<(Address, NodeInfo)>, ChainError> {
        Ok(self.check()?.nodes.clone())
    }

    async fn hosts_of(&self, model: Hash) -> Result<Vec<Address>, ChainError> {
        Ok(self.check()?.hosts.get(&model).cloned().unwrap_or_default())
    }

    async fn set_hosting(&self, model: Hash, on: bool) -> Result<Hash, ChainError> {
        let mut s = self.check()?;
        if !s.nodes.iter().any(|n| n.0 == self.sender) {
            return Err(ChainError::Reverted(
                "NodeRegistry: the node is not registered".into(),
            ));
        }
        let list = s.hosts.entry(model).or_default();
        list.retain(|a| *a != self.sender);
        if on {
            list.push(self.sender);
        }
        let block = mine(&mut s);
        Ok(s.blocks[block as usize].hash)
    }

    async fn opengradient_request(
        &self,
        id: u64,
    ) -> Result<Option<ModelInferenceRequest>, ChainError> {
        Ok(self.check()?.og.get(&id).cloned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{WatchItem, Watcher};
    use verity_core::receipt::receipt_domain;
    use verity_core::{Receipt, SecretKey};

    fn receipt(
        key: &SecretKey,
        chain: &MemChain,
        id: u64,
        model: Hash,
        input: Hash,
        out: Hash,
    ) -> SignedReceipt {
        Receipt {
            request_id: Hash(U256::from(id).to_be_bytes::<32>()),
            model_id: model,
            input_hash: input,
            output_hash: out,
            trace_root: keccak256(b"t"),
            node: key.address(),
            timestamp: 1,
        }
        .sign(receipt_domain(chain.chain_id(), chain.hub()), key)
    }

    #[tokio::test]
    async fn quorum_rules_match_the_hub() {
        let chain = MemChain::new();
        let keys: Vec<SecretKey> = (1..=4u8)
            .map(|i| SecretKey::from_bytes(&[i; 32]).unwrap())
            .collect();
        for k in &keys {
            chain
                .as_sender(k.address())
                .register_node("http://n", U256::from(10))
                .await
                .unwrap();
        }
        let (m, i) = (keccak256(b"m"), keccak256(b"i"));
        let id = chain.place_request(m, i, "http://in", Mode::Quorum, 2);
        assert_eq!(chain.assignment(id).await.unwrap(), Assignment::NotReady);
        chain.mine();
        chain.mine();
        let Assignment::Nodes(a) = chain.assignment(id).await.unwrap() else {
            panic!("assigned")
        };
        assert_eq!(a.len(), 4, "k + 2 capped by the node count");
        let key = |addr: &Address| keys.iter().find(|k| k.address() == *addr).unwrap();
        let good = keccak256(b"good");
        chain
            .submit(id, &receipt(key(&a[0]), &chain, id, m, i, good))
            .await
            .unwrap();
        let dup = chain
            .submit(id, &receipt(key(&a[0]), &chain, id, m, i, good))
            .await
            .unwrap_err();
        assert!(dup.to_string().contains("already submitted"), "{dup}");
        let wrong = chain
            .submit(
                id,
                &receipt(key(&a[1]), &chain, id, m, keccak256(b"x"), good),
            )
            .await
            .unwrap_err();
        assert!(wrong.to_string().contains("another request"), "{wrong}");
        let stranger = SecretKey::from_bytes(&[9; 32]).unwrap();
        let e = chain
            .submit(id, &receipt(&stranger, &chain, id, m, i, good))
            .await
            .unwrap_err();
        assert!(e.to_string().contains("not assigned"), "{e}");
        chain
            .submit(
                id,
                &receipt(key(&a[1]), &chain, id, m, i, keccak256(b"bad")),
            )
            .await
            .unwrap();
        assert_eq!(
            chain.request(id).await.unwrap().unwrap().status,
            Status::Pending
        );
        chain
            .submit(id, &receipt(key(&a[2]), &chain, id, m, i, good))
            .await
            .unwrap();
        let r = chain.request(id).await.unwrap().unwrap();
        assert_eq!((r.status, r.output_hash), (Status::Finalized, good));
    }

    #[tokio::test]
    async fn watcher_reports_reorgs_and_redelivers() {
        let chain = MemChain::new();
        let mut w = Watcher::new(0, None);
        let a = chain.place_request(keccak256(b"m"), Hash::ZERO, "u1", Mode::Signed, 1);
        chain.mine();
        let items = w.poll(&chain).await.unwrap();
        assert!(
            matches!(&items[..], [WatchItem::Events(e)] if e.len() == 1),
            "{items:?}"
        );
        assert!(w.poll(&chain).await.unwrap().is_empty(), "nothing new");
        // Replace the last 3 blocks (which hold request a) and place another request in the new branch.
        chain.reorg(3);
        let b = chain.place_request(keccak256(b"m"), Hash::ZERO, "u2", Mode::Signed, 1);
        assert_eq!(a, b, "the ID is reused on the new branch");
        let items = w.poll(&chain).await.unwrap();
        assert!(matches!(items[0], WatchItem::Reorg { .. }), "{items:?}");
        let WatchItem::Events(e) = &items[1] else {
            panic!("{items:?}")
        };
        assert!(
            matches!(&e[0].kind, HubEventKind::Requested { input_uri, .. } if input_uri == "u2")
        );
        // A dropped connection is an error the caller retries; the cursor does not move.
        chain.set_unreachable(true);
        let before = w.state.clone();
        assert!(w.poll(&chain).await.unwrap_err().is_transient());
        assert_eq!(w.state, before);
        chain.set_unreachable(false);
        chain.mine();
        w.poll(&chain).await.unwrap();
    }
}
