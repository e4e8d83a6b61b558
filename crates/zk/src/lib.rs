//! The proof layer of Verity's `zk` mode, built bottom-up. This crate holds the pieces finished so far:
//! the field (Goldilocks, p = 2⁶⁴ − 2³² + 1, and its degree-2 extension for verifier challenges, ≈ 2¹²⁸
//! elements), a keccak-256 Fiat–Shamir transcript, multilinear extensions, and the sumcheck protocol for
//! a sum of products of two multilinear polynomials — the protocol that proves a matrix product in time
//! linear in its size. The field arithmetic comes from Plonky3's `p3-field` / `p3-goldilocks`; the
//! protocol layer is Verity's own.
#![deny(missing_docs)]

pub mod field;
pub mod matmul;
pub mod mle;
pub mod sumcheck;
pub mod transcript;

pub use field::{Ext, F};
