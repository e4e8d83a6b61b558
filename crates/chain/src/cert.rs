//! Quorum certificates: k signed receipts from distinct registered nodes that agree on (model, input,
//! output) for one request, with the registry snapshot that proves those nodes were the ones to ask.
//!
//! Selection is the hub's public stake-weighted rule ([`crate::assign`]) over the snapshot's active nodes
//! with seed `keccak256(blockhash(snapshot block) ‖ request ID)` — for an on-chain request (request ID =
//! its number as bytes32, snapshot block = its seed block) the very nodes the hub assigns. The first k
//! drawn are asked; a node that fails is replaced by the next drawn, up to `k + 2` candidates (the
//! hub's assignment size), so a certificate's signers must all be among the first `min(k + 2, active)`
//! drawn. Verification needs no network: [`verify_certificate`] checks everything against the embedded
//! snapshot; [`check_snapshot`] compares that snapshot with the chain (or a snapshot file) when one is at
//! hand.

use std::collections::BTreeSet;

use alloy::primitives::U256;
use serde::{Deserialize, Serialize};
use verity_core::{keccak256, Address, Hash, SignedReceipt};

/// Format version of [`QuorumCertificate`].
pub const CERT_VERSION: u32 = 1;
/// Largest quorum.
pub const MAX_K: u8 = 7;

/// The NodeRegistry's active nodes at one block.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegistrySnapshot {
    /// Chain ID.
    pub chain_id: u64,
    /// Block the snapshot was read at; its hash seeds the selection.
    pub block: u64,
    /// That block's hash.
    pub block_hash: Hash,
    /// Active nodes in registration order.
    pub nodes: Vec<SnapshotNode>,
}

/// One active node of a snapshot.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotNode {
    /// Node address.
    pub address: Address,
    /// Stake in wei (decimal).
    pub stake: String,
    /// Registered endpoint.
    pub endpoint: String,
}

impl RegistrySnapshot {
    /// (address, stake) in registration order, as the selection rule takes them.
    pub fn stakes(&self) -> Result<Vec<(Address, U256)>, CertError> {
        self.nodes
            .iter()
            .map(|n| {
                n.stake
                    .parse::<U256>()
                    .map(|s| (n.address, s))
                    .map_err(|_| CertError::Snapshot(format!("bad stake '{}'", n.stake)))
            })
            .collect()
    }

    /// The selection order for `request_id`: at most `count` nodes.
    pub fn draw(&self, request_id: &Hash, count: usize) -> Result<Vec<Address>, CertError> {
        Ok(crate::assign(
            selection_seed(&self.block_hash, request_id),
            &self.stakes()?,
            count,
        ))
    }
}

/// `keccak256(block hash ‖ request ID)`.
pub fn selection_seed(block_hash: &Hash, request_id: &Hash) -> Hash {
    let mut buf = [0u8; 64];
    buf[..32].copy_from_slice(&block_hash.0);
    buf[32..].copy_from_slice(&request_id.0);
    keccak256(&buf)
}

/// How many nodes may take part in a quorum of `k` among `active` nodes: the first k drawn and up to two
/// replacements.
pub fn candidates(k: u8, active: usize) -> usize {
    (k as usize + 2).min(active)
}

/// k agreeing receipts for one request, with the evidence to check who was asked.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuorumCertificate {
    /// [`CERT_VERSION`].
    pub version: u32,
    /// The request ID every receipt carries.
    pub request_id: Hash,
    /// Model.
    pub model_id: Hash,
    /// Canonical input hash.
    pub input_hash: Hash,
    /// Canonical output hash all k receipts agree on.
    pub output_hash: Hash,
    /// Quorum size.
    pub k: u8,
    /// The registry the nodes were drawn from.
    pub registry: RegistrySnapshot,
    /// The k agreeing receipts, from distinct nodes.
    pub receipts: Vec<SignedReceipt>,
    /// Receipts from asked nodes that disagreed (evidence; never counted).
    #[serde(default)]
    pub dissent: Vec<SignedReceipt>,
}

/// Why a certificate is not valid.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CertError {
    /// Format or parameters.
    #[error("malformed certificate: {0}")]
    Malformed(String),
    /// A receipt's signature.
    #[error("receipt {index} ({node}): {why}")]
    Receipt {
        /// Position in `receipts`.
        index: usize,
        /// The node it names.
        node: Address,
        /// What is wrong.
        why: String,
    },
    /// The snapshot.
    #[error("registry snapshot: {0}")]
    Snapshot(String),
}

/// What a valid certificate establishes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CertSummary {
    /// Request.
    pub request_id: Hash,
    /// Model.
    pub model_id: Hash,
    /// Input hash.
    pub input_hash: Hash,
    /// Output hash.
    pub output_hash: Hash,
    /// The k signers, in the certificate's order.
    pub signers: Vec<Address>,
    /// Their positions in the selection order (0 = first drawn).
    pub positions: Vec<usize>,
}

/// Check a certificate against its own snapshot: k distinct signers, every signature valid under one
/// Verity receipt domain on the snapshot's chain, every receipt for this request, model, input and
/// output, every signer active in the snapshot and among the first `min(k + 2, active)` drawn for the
/// request's seed. Dissenting receipts, if any, must at least be validly signed by a drawn node.
pub fn verify_certificate(c: &QuorumCertificate) -> Result<CertSummary, CertError> {
    if c.version != CERT_VERSION {
        return Err(CertError::Malformed(format!(
            "version {} (this build reads {CERT_VERSION})",
            c.version
        )));
    }
    if c.k == 0 || c.k > MAX_K {
        return Err(CertError::Malformed(format!("k = {} (1 to {MAX_K})", c.k)));
    }
    if c.receipts.len() != c.k as usize {
        return Err(CertError::Malformed(format!(
            "{} receipts for k = {}",
            c.receipts.len(),
            c.k
        )));
    }
    let active = c.registry.nodes.len();
    if active < c.k as usize {
        return Err(CertError::Snapshot(format!(
            "{active} active nodes cannot make a quorum of {}",
            c.k
        )));
    }
    let order = c.registry.draw(&c.request_id, candidates(c.k, active))?;
    let domain = &c.receipts[0].domain;
    let mut seen = BTreeSet::new();
    let mut signers = Vec::with_capacity(c.receipts.len());
    let mut positions = Vec::with_capacity(c.receipts.len());
    for (i, r) in c.receipts.iter().enumerate() {
        let bad = |why: String| CertError::Receipt {
            index: i,
            node: r.receipt.node,
            why,
        };
        if r.domain != *domain {
            return Err(bad(
                "signed under another domain than the first receipt".into()
            ));
        }
        if r.domain.chain_id != Some(c.registry.chain_id) {
            return Err(bad(format!(
                "signed for chain {:?}, the registry is chain {}",
                r.domain.chain_id, c.registry.chain_id
            )));
        }
        let x = &r.receipt;
        if x.request_id != c.request_id
            || x.model_id != c.model_id
            || x.input_hash != c.input_hash
            || x.output_hash != c.output_hash
        {
            return Err(bad(
                "it is for another request, model, input or output than the certificate".into(),
            ));
        }
        let signer = r.verify().map_err(|e| bad(e.to_string()))?;
        if !seen.insert(signer) {
            return Err(bad("a second receipt from the same node".into()));
        }
        let pos = order.iter().position(|a| *a == signer).ok_or_else(|| {
            bad(format!(
                "the node is not among the {} drawn for this request",
                order.len()
            ))
        })?;
        signers.push(signer);
        positions.push(pos);
    }
    for (i, r) in c.dissent.iter().enumerate() {
        let signer = r.verify().map_err(|e| CertError::Receipt {
            index: c.receipts.len() + i,
            node: r.receipt.node,
            why: format!("dissenting receipt: {e}"),
        })?;
        if !order.contains(&signer) || r.receipt.request_id != c.request_id {
            return Err(CertError::Receipt {
                index: c.receipts.len() + i,
                node: signer,
                why: "dissenting receipt from a node not drawn for this request".into(),
            });
        }
    }
    Ok(CertSummary {
        request_id: c.request_id,
        model_id: c.model_id,
        input_hash: c.input_hash,
        output_hash: c.output_hash,
        signers,
        positions,
    })
}

/// Compare a certificate's snapshot with a trusted one (read from the chain at the same block, or a
/// snapshot file): same chain, block, hash and the same active nodes with the same stakes.
pub fn check_snapshot(
    claimed: &RegistrySnapshot,
    trusted: &RegistrySnapshot,
) -> Result<(), CertError> {
    if claimed.chain_id != trusted.chain_id || claimed.block != trusted.block {
        return Err(CertError::Snapshot(format!(
            "the certificate's snapshot is chain {} block {}, the trusted one chain {} block {}",
            claimed.chain_id, claimed.block, trusted.chain_id, trusted.block
        )));
    }
    if claimed.block_hash != trusted.block_hash {
        return Err(CertError::Snapshot(format!(
            "block {} has hash {}, not the certificate's {}",
            trusted.block, trusted.block_hash, claimed.block_hash
        )));
    }
    let key = |s: &RegistrySnapshot| -> Vec<(Address, String)> {
        s.nodes
            .iter()
            .map(|n| (n.address, n.stake.clone()))
            .collect()
    };
    if key(claimed) != key(trusted) {
        return Err(CertError::Snapshot(format!(
            "the active nodes or stakes at block {} differ from the certificate's",
            trusted.block
        )));
    }
    Ok(())
}

/// A valid certificate over `n` nodes (stakes 1..n ETH) with keys derived from their index, for tests
/// and benchmarks.
#[doc(hidden)]
#[allow(clippy::unwrap_used)]
pub fn example_certificate(n: usize, k: u8) -> (Vec<verity_core::SecretKey>, QuorumCertificate) {
    use verity_core::receipt::receipt_domain;
    use verity_core::{Receipt, SecretKey};
    let keys: Vec<SecretKey> = (0..n)
        .map(|i| SecretKey::from_bytes(&[i as u8 + 1; 32]).unwrap())
        .collect();
    let registry = RegistrySnapshot {
        chain_id: 31337,
        block: 12,
        block_hash: keccak256(b"block 12"),
        nodes: keys
            .iter()
            .enumerate()
            .map(|(i, k)| SnapshotNode {
                address: k.address(),
                stake: crate::ether(1 + i as u64).to_string(),
                endpoint: format!("http://n{i}"),
            })
            .collect(),
    };
    let request_id = keccak256(b"request");
    let order = registry.draw(&request_id, n).unwrap();
    let domain = receipt_domain(31337, Address([0x4b; 20]));
    let receipts = order[..k as usize]
        .iter()
        .map(|a| {
            let key = keys.iter().find(|k| k.address() == *a).unwrap();
            Receipt {
                request_id,
                model_id: keccak256(b"model"),
                input_hash: keccak256(b"in"),
                output_hash: keccak256(b"out"),
                trace_root: keccak256(b"trace"),
                node: *a,
                timestamp: 1,
            }
            .sign(domain.clone(), key)
        })
        .collect();
    let cert = QuorumCertificate {
        version: CERT_VERSION,
        request_id,
        model_id: keccak256(b"model"),
        input_hash: keccak256(b"in"),
        output_hash: keccak256(b"out"),
        k,
        registry,
        receipts,
        dissent: vec![],
    };
    (keys, cert)
}

#[cfg(test)]
mod tests {
    use super::*;
    use verity_core::SecretKey;

    fn setup(n: usize, k: u8) -> (Vec<SecretKey>, QuorumCertificate) {
        example_certificate(n, k)
    }

    fn resign(c: &mut QuorumCertificate, i: usize, keys: &[SecretKey]) {
        let r = c.receipts[i].receipt;
        let key = keys.iter().find(|k| k.address() == r.node).unwrap();
        c.receipts[i] = r.sign(c.receipts[i].domain.clone(), key);
    }

    #[test]
    fn a_valid_certificate_verifies_and_every_tamper_fails() {
        let (keys, c) = setup(5, 3);
        let s = verify_certificate(&c).unwrap();
        assert_eq!(s.positions, vec![0, 1, 2]);
        // JSON round trip.
        let back: QuorumCertificate =
            serde_json::from_str(&serde_json::to_string(&c).unwrap()).unwrap();
        assert_eq!(verify_certificate(&back), Ok(s));

        let mut t = c.clone();
        t.output_hash = keccak256(b"other");
        assert!(
            verify_certificate(&t).is_err(),
            "certificate output changed"
        );
        let mut t = c.clone();
        t.receipts[1].receipt.output_hash = keccak256(b"other");
        assert!(
            verify_certificate(&t).is_err(),
            "receipt changed after signing"
        );
        let mut t = c.clone();
        t.receipts[1].receipt.output_hash = keccak256(b"other");
        resign(&mut t, 1, &keys);
        assert!(verify_certificate(&t).is_err(), "a disagreeing receipt");
        let mut t = c.clone();
        t.receipts[2] = t.receipts[0].clone();
        assert!(verify_certificate(&t).is_err(), "same node twice");
        let mut t = c.clone();
        t.receipts.pop();
        assert!(verify_certificate(&t).is_err(), "k - 1 receipts");
        let mut t = c.clone();
        t.registry.block_hash = keccak256(b"another block");
        assert!(
            verify_certificate(&t).is_err()
                || verify_certificate(&t).unwrap().positions != vec![0, 1, 2],
            "another seed draws other nodes"
        );
        let mut t = c.clone();
        t.registry
            .nodes
            .retain(|n| n.address != c.receipts[0].receipt.node);
        assert!(
            verify_certificate(&t).is_err(),
            "a signer not in the registry"
        );
        let mut t = c.clone();
        t.receipts[0].domain.chain_id = Some(1);
        resign(&mut t, 0, &keys);
        assert!(verify_certificate(&t).is_err(), "another chain's domain");
        let mut t = c.clone();
        t.version = 2;
        assert!(verify_certificate(&t).is_err());
    }

    #[test]
    fn only_the_drawn_candidates_may_sign() {
        // 7 nodes, k = 2: candidates are the first 4 drawn; the 5th may not sign.
        let (keys, c) = setup(7, 2);
        let order = c.registry.draw(&c.request_id, 7).unwrap();
        let mut t = c.clone();
        t.receipts[1].receipt.node = order[3];
        resign(&mut t, 1, &keys);
        assert_eq!(verify_certificate(&t).unwrap().positions, vec![0, 3]);
        t.receipts[1].receipt.node = order[4];
        resign(&mut t, 1, &keys);
        assert!(matches!(
            verify_certificate(&t),
            Err(CertError::Receipt { index: 1, .. })
        ));
    }

    #[test]
    fn snapshots_are_compared_exactly() {
        let (_, c) = setup(4, 2);
        let trusted = c.registry.clone();
        assert!(check_snapshot(&c.registry, &trusted).is_ok());
        let mut t = trusted.clone();
        t.nodes[0].stake = "1".into();
        assert!(check_snapshot(&c.registry, &t).is_err());
        let mut t = trusted.clone();
        t.block_hash = keccak256(b"x");
        assert!(check_snapshot(&c.registry, &t).is_err());
    }
}
