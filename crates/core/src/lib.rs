//! Verity primitives: keccak256 hashing, the binary Merkle commitment used for model IDs and traces,
//! the packing of `i32` tensor elements into 32-byte leaves, and the canonical big-endian codec.
//!
//! Also the Ethereum-compatible identities (secp256k1 keys, addresses, recoverable signatures) and the
//! EIP-712 typed data Verity signs: inference receipts and model manifests.
//!
//! Everything that feeds a hash is deterministic by construction: no maps with unspecified iteration
//! order, no floating point, no time; randomness only in fresh key generation.
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

pub mod codec;
pub mod eip712;
pub mod eth;
pub mod hash;
pub mod keccak_batch;
pub mod manifest;
pub mod merkle;
pub mod receipt;

pub use codec::{DecodeError, Reader, Writer};
pub use eth::{Address, SecretKey, Signature};
pub use hash::{keccak256, Hash, Keccak};
pub use manifest::{Manifest, SignedManifest};
pub use merkle::{
    bind_length, elements_root, elements_root_of, merkle_proof, merkle_root, multiproof,
    multiproof_root, root_from_path, tree_depth, verify_element, verify_proof, word_leaf,
    word_leaves, ElementProof, ELEMENTS_PER_LEAF,
};
pub use receipt::{Receipt, SignedReceipt};
