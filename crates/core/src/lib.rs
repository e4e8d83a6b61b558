//! Verity primitives: keccak256 hashing, the binary Merkle commitment used for model IDs and traces,
//! the packing of `i32` tensor elements into 32-byte leaves, and the canonical big-endian codec.
//!
//! Everything here is deterministic by construction: no maps with unspecified iteration order, no
//! floating point, no time, no randomness.
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

pub mod codec;
pub mod hash;
pub mod merkle;

pub use codec::{DecodeError, Reader, Writer};
pub use hash::{keccak256, Hash, Keccak};
pub use merkle::{
    elements_root, merkle_proof, merkle_root, root_from_path, tree_depth, verify_element,
    verify_proof, ElementProof, ELEMENTS_PER_LEAF,
};
