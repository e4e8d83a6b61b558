//! keccak256 (the Ethereum variant, as computed by the EVM's `KECCAK256` opcode) and a 32-byte hash type.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use tiny_keccak::Hasher;

/// A 32-byte hash, displayed and serialized as `0x`-prefixed lowercase hex.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Hash(pub [u8; 32]);

impl Hash {
    /// The all-zero hash, used to pad Merkle trees.
    pub const ZERO: Hash = Hash([0u8; 32]);

    /// The raw bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// `0x`-prefixed lowercase hex.
    pub fn to_hex(&self) -> String {
        let mut s = String::with_capacity(66);
        s.push_str("0x");
        for b in self.0 {
            s.push_str(&format!("{b:02x}"));
        }
        s
    }
}

impl fmt::Display for Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

/// Error parsing a hash from hex.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("expected 32 bytes as 64 hex digits with an optional 0x prefix")]
pub struct ParseHashError;

impl FromStr for Hash {
    type Err = ParseHashError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.strip_prefix("0x").unwrap_or(s);
        if s.len() != 64 || !s.is_ascii() {
            return Err(ParseHashError);
        }
        let mut out = [0u8; 32];
        for (i, byte) in out.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).map_err(|_| ParseHashError)?;
        }
        Ok(Hash(out))
    }
}

impl Serialize for Hash {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_hex())
    }
}

impl<'de> Deserialize<'de> for Hash {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// keccak256 of `data`.
pub fn keccak256(data: &[u8]) -> Hash {
    let mut k = Keccak::new();
    k.update(data);
    k.finalize()
}

/// Incremental keccak256.
pub struct Keccak(tiny_keccak::Keccak);

impl Keccak {
    /// A fresh hasher.
    pub fn new() -> Self {
        Keccak(tiny_keccak::Keccak::v256())
    }
    /// Absorb bytes.
    pub fn update(&mut self, data: &[u8]) {
        self.0.update(data);
    }
    /// Finish and return the hash.
    pub fn finalize(self) -> Hash {
        let mut out = [0u8; 32];
        self.0.finalize(&mut out);
        Hash(out)
    }
}

impl Default for Keccak {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_vectors() {
        // keccak256("") and keccak256("abc") as computed by the EVM.
        assert_eq!(
            keccak256(b"").to_hex(),
            "0xc5d2460186f7233c927e7db2dcc703c0e500b653ca82273b7bfad8045d85a470"
        );
        assert_eq!(
            keccak256(b"abc").to_hex(),
            "0x4e03657aea45a94fc7d47ba826c8d667c0d1e6e33a64a036ec44f58fa12d6c45"
        );
    }

    #[test]
    fn hex_round_trip_and_errors() {
        let h = keccak256(b"verity");
        assert_eq!(h.to_hex().parse::<Hash>(), Ok(h));
        assert_eq!(h.to_hex()[2..].parse::<Hash>(), Ok(h));
        assert_eq!("0x12".parse::<Hash>(), Err(ParseHashError));
        assert_eq!(
            format!("0x{}", "zz".repeat(32)).parse::<Hash>(),
            Err(ParseHashError)
        );
    }
}
