//! Inference receipts: a node's EIP-712 signature over what it computed, checkable offline and by a
//! contract with `ecrecover`.
//!
//! ```text
//! Receipt(bytes32 requestId,bytes32 modelId,bytes32 inputHash,bytes32 outputHash,bytes32 traceRoot,address node,uint64 timestamp)
//! domain: EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)
//!         name "Verity", version "1"
//! ```

use serde::{Deserialize, Serialize};

use crate::eip712::{u64_word, Domain};
use crate::eth::{Address, EthError, SecretKey, Signature};
use crate::hash::{keccak256, Hash, Keccak};

/// The EIP-712 type string of [`Receipt`].
pub const RECEIPT_TYPE: &str = "Receipt(bytes32 requestId,bytes32 modelId,bytes32 inputHash,bytes32 outputHash,bytes32 traceRoot,address node,uint64 timestamp)";

/// The domain name receipts are signed under.
pub const RECEIPT_DOMAIN_NAME: &str = "Verity";
/// The domain version receipts are signed under.
pub const RECEIPT_DOMAIN_VERSION: &str = "1";

/// The receipt domain for a chain and a verifying contract (the zero address before one is deployed).
pub fn receipt_domain(chain_id: u64, verifying_contract: Address) -> Domain {
    Domain {
        name: RECEIPT_DOMAIN_NAME.into(),
        version: RECEIPT_DOMAIN_VERSION.into(),
        chain_id: Some(chain_id),
        verifying_contract: Some(verifying_contract),
    }
}

/// What a node attests: it ran model `model_id` on the inputs hashing to `input_hash` and got the outputs
/// hashing to `output_hash`, with execution trace root `trace_root` (all as in the canonical spec §8).
/// A `trace_root` of zero is **deferred**: the node did not hash its intermediates while serving, and
/// reveals the trace root in a dispute, where it is checked against the input and the signed output.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Receipt {
    /// The request this answers (chosen by the client or the chain; else by the node).
    pub request_id: Hash,
    /// Model ID.
    pub model_id: Hash,
    /// Input hash.
    pub input_hash: Hash,
    /// Output hash.
    pub output_hash: Hash,
    /// Trace root.
    pub trace_root: Hash,
    /// The signing node's address.
    pub node: Address,
    /// Unix time in seconds when the node produced the result.
    pub timestamp: u64,
}

/// Whether an execution giving `output` with trace root `trace` agrees with a claim of `claimed_output`
/// and `claimed_trace` (zero: a deferred trace, which only the output can contradict).
pub fn claim_agrees(
    claimed_output: &Hash,
    claimed_trace: &Hash,
    output: &Hash,
    trace: &Hash,
) -> bool {
    claimed_output == output && (*claimed_trace == Hash::ZERO || claimed_trace == trace)
}

impl Receipt {
    /// `hashStruct(receipt)`.
    pub fn struct_hash(&self) -> Hash {
        let mut k = Keccak::new();
        k.update(&keccak256(RECEIPT_TYPE.as_bytes()).0);
        k.update(&self.request_id.0);
        k.update(&self.model_id.0);
        k.update(&self.input_hash.0);
        k.update(&self.output_hash.0);
        k.update(&self.trace_root.0);
        k.update(&self.node.to_word());
        k.update(&u64_word(self.timestamp));
        k.finalize()
    }

    /// The hash of what was computed, independent of who, when and for which request:
    /// `keccak256(modelId ‖ inputHash ‖ outputHash ‖ traceRoot)`. Equal for every honest execution.
    pub fn result_hash(&self) -> Hash {
        let mut k = Keccak::new();
        k.update(&self.model_id.0);
        k.update(&self.input_hash.0);
        k.update(&self.output_hash.0);
        k.update(&self.trace_root.0);
        k.finalize()
    }

    /// Sign under `domain` with `key` (whose address must be `self.node`).
    pub fn sign(self, domain: Domain, key: &SecretKey) -> SignedReceipt {
        let digest = domain.digest(&self.struct_hash());
        SignedReceipt {
            receipt: self,
            domain,
            signature: key.sign(&digest),
        }
    }
}

/// Why a signed receipt does not hold.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum ReceiptError {
    /// The signature is malformed or recovers to nothing.
    #[error("bad signature: {0}")]
    Signature(#[from] EthError),
    /// The signature is valid but from another key than the receipt's `node`.
    #[error("signed by {signer}, but the receipt names node {node}")]
    WrongSigner {
        /// Who signed.
        signer: Address,
        /// Who the receipt claims signed.
        node: Address,
    },
    /// Not the receipt domain.
    #[error("domain is not a Verity receipt domain (name \"Verity\", version \"1\", chainId, verifyingContract)")]
    Domain,
}

/// A receipt with its domain and signature: the evidence file `verity verify` reads.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedReceipt {
    /// What is attested.
    pub receipt: Receipt,
    /// The EIP-712 domain it is signed under.
    pub domain: Domain,
    /// `r ‖ s ‖ v` over the EIP-712 digest.
    pub signature: Signature,
}

impl SignedReceipt {
    /// The EIP-712 digest the signature is over.
    pub fn digest(&self) -> Hash {
        self.domain.digest(&self.receipt.struct_hash())
    }

    /// Check the domain, the signature, and that the signer is the receipt's node. Returns the signer.
    pub fn verify(&self) -> Result<Address, ReceiptError> {
        if self.domain.name != RECEIPT_DOMAIN_NAME
            || self.domain.version != RECEIPT_DOMAIN_VERSION
            || self.domain.chain_id.is_none()
            || self.domain.verifying_contract.is_none()
        {
            return Err(ReceiptError::Domain);
        }
        let signer = self.signature.recover(&self.digest())?;
        if signer != self.receipt.node {
            return Err(ReceiptError::WrongSigner {
                signer,
                node: self.receipt.node,
            });
        }
        Ok(signer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(node: Address) -> Receipt {
        Receipt {
            request_id: keccak256(b"req"),
            model_id: keccak256(b"model"),
            input_hash: keccak256(b"in"),
            output_hash: keccak256(b"out"),
            trace_root: keccak256(b"trace"),
            node,
            timestamp: 1_700_000_000,
        }
    }

    #[test]
    fn sign_verify_and_tamper() {
        let key = SecretKey::random();
        let s = sample(key.address()).sign(receipt_domain(31337, Address::ZERO), &key);
        assert_eq!(s.verify(), Ok(key.address()));
        let json = serde_json::to_string(&s).unwrap();
        let back: SignedReceipt = serde_json::from_str(&json).unwrap();
        assert_eq!(back.verify(), Ok(key.address()));

        let mut t = s.clone();
        t.receipt.output_hash = keccak256(b"other");
        assert!(t.verify().is_err());
        let mut t = s.clone();
        t.domain.chain_id = Some(1);
        assert!(t.verify().is_err());
        let mut t = s.clone();
        t.receipt.node = SecretKey::random().address();
        assert!(matches!(t.verify(), Err(ReceiptError::WrongSigner { .. })));
        let mut t = s;
        t.domain.verifying_contract = None;
        assert_eq!(t.verify(), Err(ReceiptError::Domain));
    }
}

/// A fixed receipt signed by a fixed key: the cross-language vector `contracts/test/VerityReceipts.t.sol`
/// checks with `ecrecover` (signatures are deterministic, RFC 6979).
#[cfg(test)]
mod golden {
    use super::*;

    pub const KEY: &str = "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80";

    pub fn receipt(node: Address) -> Receipt {
        Receipt {
            request_id: keccak256(b"verity golden request"),
            model_id: keccak256(b"verity golden model"),
            input_hash: keccak256(b"verity golden input"),
            output_hash: keccak256(b"verity golden output"),
            trace_root: keccak256(b"verity golden trace"),
            node,
            timestamp: 1_800_000_000,
        }
    }

    #[test]
    fn golden_receipt_vector() {
        let key = SecretKey::from_hex(KEY).unwrap();
        let verifying: Address = "0x5FbDB2315678afecb367f032d93F642f64180aa3"
            .parse()
            .unwrap();
        let s = receipt(key.address()).sign(receipt_domain(31337, verifying), &key);
        // The same values are pinned in contracts/test/VerityReceipts.t.sol, which recomputes them in
        // Solidity and recovers the signer with ecrecover.
        assert_eq!(
            s.domain.separator().to_hex(),
            "0x8ed4e4b852ed82a574407ca5418d251167fa8f5cd1ec66dda73ba1ae5ecef281"
        );
        assert_eq!(
            s.receipt.struct_hash().to_hex(),
            "0xa051943aac8471320a1ff7993ff35785ebe3914c35f5001905605024645b90b3"
        );
        assert_eq!(
            s.digest().to_hex(),
            "0x2fb427e3c1bcf93e5b859048999f753c06cf2494e4a6490388876b6e292b91dd"
        );
        assert_eq!(
            format!("{:?}", s.signature),
            "0xc0e09138f4abf58dff61372f598f6faca7fe18afa18730e10d6c15332f77636d1d86440480585936ba14528e396537c34990e98dba8375fd698e5e7b6359971b1b"
        );
    }
}
