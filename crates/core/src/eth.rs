//! Ethereum identities: secp256k1 keys, 20-byte addresses (EIP-55 checksummed), 65-byte recoverable
//! signatures `r ‖ s ‖ v` (v = 27/28, low `s` as EIP-2 requires) — the form Solidity's `ecrecover` takes.

use std::fmt;
use std::str::FromStr;

use k256::ecdsa::{RecoveryId, Signature as KSig, SigningKey, VerifyingKey};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::hash::{keccak256, Hash};

/// Errors from key, address and signature handling.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum EthError {
    /// Not hex, or the wrong number of bytes.
    #[error("expected {0} bytes as hex with an optional 0x prefix")]
    Hex(usize),
    /// A mixed-case address whose EIP-55 checksum is wrong (a likely typo).
    #[error("address checksum (EIP-55) does not match")]
    Checksum,
    /// Zero, or not below the curve order.
    #[error("not a valid secp256k1 secret key")]
    SecretKey,
    /// `v` not 27 or 28 (0 and 1 are refused: one encoding per signature), `s` in the upper half, or `r`/`s` out of range.
    #[error("malformed signature: {0}")]
    Signature(&'static str),
    /// The signature does not recover to any public key for this digest.
    #[error("signature does not recover to a public key")]
    Recover,
}

/// Lowercase hex with `0x`.
pub fn to_hex(bytes: &[u8]) -> String {
    const D: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(2 + 2 * bytes.len());
    s.push_str("0x");
    for b in bytes {
        s.push(D[(b >> 4) as usize] as char);
        s.push(D[(b & 15) as usize] as char);
    }
    s
}

/// Decode hex (optional `0x`) of any even length.
pub fn from_hex(s: &str) -> Option<Vec<u8>> {
    let s = s.strip_prefix("0x").unwrap_or(s);
    if !s.len().is_multiple_of(2) || !s.is_ascii() {
        return None;
    }
    (0..s.len() / 2)
        .map(|i| u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok())
        .collect()
}

fn from_hex_n<const N: usize>(s: &str) -> Result<[u8; N], EthError> {
    from_hex(s)
        .and_then(|v| <[u8; N]>::try_from(v).ok())
        .ok_or(EthError::Hex(N))
}

/// A 20-byte Ethereum address.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Address(pub [u8; 20]);

impl Address {
    /// The zero address.
    pub const ZERO: Address = Address([0u8; 20]);

    /// The address of a public key: the last 20 bytes of keccak256 of its uncompressed coordinates.
    pub fn from_public_key(k: &VerifyingKey) -> Address {
        Address::from_uncompressed_point(k.to_encoded_point(false).as_bytes())
    }

    /// The address of an uncompressed SEC1 point (`0x04 ‖ x ‖ y`): the last 20 bytes of keccak256(x ‖ y).
    fn from_uncompressed_point(point: &[u8]) -> Address {
        let h = keccak256(&point[1..]);
        let mut a = [0u8; 20];
        a.copy_from_slice(&h.0[12..]);
        Address(a)
    }

    /// EIP-55 mixed-case checksummed hex.
    pub fn to_checksum(&self) -> String {
        let lower = to_hex(&self.0);
        let h = keccak256(&lower.as_bytes()[2..]);
        let mut out = String::with_capacity(42);
        out.push_str("0x");
        for (i, c) in lower[2..].chars().enumerate() {
            let nibble = (h.0[i / 2] >> (if i % 2 == 0 { 4 } else { 0 })) & 15;
            out.push(if c.is_ascii_alphabetic() && nibble >= 8 {
                c.to_ascii_uppercase()
            } else {
                c
            });
        }
        out
    }

    /// The address as a 32-byte ABI word (left-padded with zeros).
    pub fn to_word(&self) -> [u8; 32] {
        let mut w = [0u8; 32];
        w[12..].copy_from_slice(&self.0);
        w
    }
}

impl FromStr for Address {
    type Err = EthError;
    fn from_str(s: &str) -> Result<Self, EthError> {
        let a = Address(from_hex_n::<20>(s)?);
        let body = s.strip_prefix("0x").unwrap_or(s);
        let mixed = body.chars().any(|c| c.is_ascii_lowercase())
            && body.chars().any(|c| c.is_ascii_uppercase());
        if mixed && a.to_checksum()[2..] != *body {
            return Err(EthError::Checksum);
        }
        Ok(a)
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_checksum())
    }
}

impl fmt::Debug for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_checksum())
    }
}

impl Serialize for Address {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_checksum())
    }
}

impl<'de> Deserialize<'de> for Address {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// A 65-byte recoverable signature `r ‖ s ‖ v`, `v ∈ {27, 28}`.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Signature(pub [u8; 65]);

impl Signature {
    /// The recovery id and the parsed `(r, s)`, refusing a bad `v`, out-of-range `r`/`s` and high `s`
    /// (EIP-2): the checks both recovery paths share.
    fn checked(&self) -> Result<(u8, KSig), EthError> {
        let v = match self.0[64] {
            27 => 0u8,
            28 => 1u8,
            _ => return Err(EthError::Signature("v must be 27 or 28")),
        };
        let sig = KSig::from_slice(&self.0[..64])
            .map_err(|_| EthError::Signature("r or s out of range"))?;
        if sig.normalize_s().is_some() {
            return Err(EthError::Signature(
                "s is in the upper half of the curve order",
            ));
        }
        Ok((v, sig))
    }

    /// Recover the signer's address of a 32-byte digest. Rejects high `s` (EIP-2) and bad `v`.
    pub fn recover(&self, digest: &Hash) -> Result<Address, EthError> {
        let (v, _) = self.checked()?;
        // Recovery itself runs in libsecp256k1 (about 5x faster than the pure-Rust path, which
        // `recover_portable` keeps as the reference; the two are tested equal).
        let rid = secp256k1::ecdsa::RecoveryId::try_from(v as i32)
            .map_err(|_| EthError::Signature("bad recovery id"))?;
        let rsig = secp256k1::ecdsa::RecoverableSignature::from_compact(&self.0[..64], rid)
            .map_err(|_| EthError::Signature("r or s out of range"))?;
        let key = SECP
            .recover_ecdsa(secp256k1::Message::from_digest(digest.0), &rsig)
            .map_err(|_| EthError::Recover)?;
        Ok(Address::from_uncompressed_point(
            &key.serialize_uncompressed(),
        ))
    }

    /// [`Signature::recover`] in pure Rust (k256): the reference the fast path is tested against.
    pub fn recover_portable(&self, digest: &Hash) -> Result<Address, EthError> {
        let (v, sig) = self.checked()?;
        let rid = RecoveryId::from_byte(v).ok_or(EthError::Signature("bad recovery id"))?;
        let key = VerifyingKey::recover_from_prehash(&digest.0, &sig, rid)
            .map_err(|_| EthError::Recover)?;
        Ok(Address::from_public_key(&key))
    }
}

static SECP: std::sync::LazyLock<secp256k1::Secp256k1<secp256k1::VerifyOnly>> =
    std::sync::LazyLock::new(secp256k1::Secp256k1::verification_only);

impl fmt::Debug for Signature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&to_hex(&self.0))
    }
}

impl FromStr for Signature {
    type Err = EthError;
    fn from_str(s: &str) -> Result<Self, EthError> {
        Ok(Signature(from_hex_n::<65>(s)?))
    }
}

impl Serialize for Signature {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&to_hex(&self.0))
    }
}

impl<'de> Deserialize<'de> for Signature {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// A secp256k1 secret key with its address.
#[derive(Clone)]
pub struct SecretKey {
    key: SigningKey,
    address: Address,
}

impl SecretKey {
    /// A fresh key from the operating system's random source.
    pub fn random() -> SecretKey {
        loop {
            let mut b = [0u8; 32];
            if getrandom::getrandom(&mut b).is_err() {
                continue;
            }
            if let Ok(k) = SecretKey::from_bytes(&b) {
                return k;
            }
        }
    }

    /// A key from its 32 big-endian bytes.
    pub fn from_bytes(b: &[u8; 32]) -> Result<SecretKey, EthError> {
        let key = SigningKey::from_slice(b).map_err(|_| EthError::SecretKey)?;
        let address = Address::from_public_key(key.verifying_key());
        Ok(SecretKey { key, address })
    }

    /// Parse 64 hex digits (optional `0x`; surrounding whitespace ignored).
    pub fn from_hex(s: &str) -> Result<SecretKey, EthError> {
        SecretKey::from_bytes(&from_hex_n::<32>(s.trim())?)
    }

    /// The 32 secret bytes (handle with care).
    pub fn to_bytes(&self) -> [u8; 32] {
        self.key.to_bytes().into()
    }

    /// The 32 secret bytes as `0x` hex (handle with care).
    pub fn to_hex(&self) -> String {
        to_hex(&self.key.to_bytes())
    }

    /// This key's address.
    pub fn address(&self) -> Address {
        self.address
    }

    /// Sign a 32-byte digest (deterministic RFC 6979 nonce, low `s`).
    pub fn sign(&self, digest: &Hash) -> Signature {
        let (sig, rid) = match self.key.sign_prehash_recoverable(&digest.0) {
            Ok(x) => x,
            // Only fails for a digest that reduces to a degenerate nonce, which RFC 6979 retries avoid.
            Err(_) => unreachable_sign(),
        };
        let (sig, rid) = match sig.normalize_s() {
            Some(n) => (n, RecoveryId::new(!rid.is_y_odd(), rid.is_x_reduced())),
            None => (sig, rid),
        };
        let mut out = [0u8; 65];
        out[..64].copy_from_slice(&sig.to_bytes());
        out[64] = 27 + rid.to_byte();
        Signature(out)
    }
}

#[cold]
fn unreachable_sign() -> ! {
    panic!("secp256k1 signing failed for a 32-byte digest")
}

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretKey({})", self.address)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_address() {
        // The first anvil / hardhat development account.
        let k = SecretKey::from_hex(
            "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80",
        )
        .unwrap();
        assert_eq!(
            k.address().to_checksum(),
            "0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266"
        );
    }

    #[test]
    fn sign_recover_round_trip_and_tamper() {
        let k = SecretKey::random();
        let d = keccak256(b"hello");
        let s = k.sign(&d);
        assert_eq!(s.recover(&d).unwrap(), k.address());
        assert_ne!(s.recover(&keccak256(b"other")).ok(), Some(k.address()));
        let mut bad = s;
        bad.0[64] = 29;
        assert!(bad.recover(&d).is_err());
        // The high-s twin of a valid signature is rejected (malleability).
        let sig = KSig::from_slice(&s.0[..64]).unwrap();
        let n_minus_s = {
            let (r, s) = sig.split_scalars();
            KSig::from_scalars(r.to_bytes(), (-*s).to_bytes()).unwrap()
        };
        let mut high = [0u8; 65];
        high[..64].copy_from_slice(&n_minus_s.to_bytes());
        high[64] = if s.0[64] == 27 { 28 } else { 27 };
        assert!(Signature(high).recover(&d).is_err());
    }

    #[test]
    fn only_v_27_or_28_encodes_a_signature() {
        let k = SecretKey::from_bytes(&[7u8; 32]).unwrap();
        let d = keccak256(b"one encoding");
        let s = k.sign(&d);
        assert!(s.0[64] == 27 || s.0[64] == 28);
        let mut twin = s;
        twin.0[64] -= 27; // the same signature with v in {0, 1}
        assert!(twin.recover(&d).is_err());
        assert!(twin.recover_portable(&d).is_err());
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]
        #[test]
        fn fast_recovery_equals_the_portable_one(key in proptest::array::uniform32(1u8..), msg in proptest::collection::vec(proptest::num::u8::ANY, 0..64),
                                                 junk in proptest::array::uniform32(proptest::num::u8::ANY), v in 25u8..30) {
            let Ok(k) = SecretKey::from_bytes(&key) else { return Ok(()) };
            let d = keccak256(&msg);
            let s = k.sign(&d);
            proptest::prop_assert_eq!(s.recover(&d).unwrap(), k.address());
            proptest::prop_assert_eq!(s.recover(&d), s.recover_portable(&d));
            // Arbitrary signatures: same address or both refused.
            let mut bad = s;
            bad.0[..32].copy_from_slice(&junk);
            bad.0[64] = v;
            proptest::prop_assert_eq!(bad.recover(&d).ok(), bad.recover_portable(&d).ok());
        }
    }

    #[test]
    fn checksum_parse() {
        let a: Address = "0xf39fd6e51aad88f6f4ce6ab8827279cfffb92266"
            .parse()
            .unwrap();
        assert_eq!(a.to_string(), "0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266");
        assert_eq!(
            "0xF39fd6e51aad88F6F4ce6aB8827279cffFb92266".parse::<Address>(),
            Err(EthError::Checksum)
        );
        assert!("0x1234".parse::<Address>().is_err());
    }
}
