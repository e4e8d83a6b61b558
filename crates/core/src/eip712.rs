//! EIP-712 typed-data hashing: domain separators and the word encodings Verity's typed structs use.
//!
//! `digest = keccak256(0x19 ‖ 0x01 ‖ domainSeparator ‖ hashStruct(message))`, so that a contract checks a
//! signature with `ecrecover(digest, v, r, s)`.

use serde::{Deserialize, Serialize};

use crate::eth::Address;
use crate::hash::{keccak256, Hash, Keccak};

/// An EIP-712 domain. Fields left `None` are omitted from the domain type, as EIP-712 allows.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Domain {
    /// `name`.
    pub name: String,
    /// `version`.
    pub version: String,
    /// `chainId`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chain_id: Option<u64>,
    /// `verifyingContract`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verifying_contract: Option<Address>,
}

impl Domain {
    /// The domain's type string, e.g. `EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)`.
    pub fn type_string(&self) -> String {
        let mut t = String::from("EIP712Domain(string name,string version");
        if self.chain_id.is_some() {
            t.push_str(",uint256 chainId");
        }
        if self.verifying_contract.is_some() {
            t.push_str(",address verifyingContract");
        }
        t.push(')');
        t
    }

    /// `hashStruct(domain)`.
    pub fn separator(&self) -> Hash {
        let mut k = Keccak::new();
        k.update(&keccak256(self.type_string().as_bytes()).0);
        k.update(&keccak256(self.name.as_bytes()).0);
        k.update(&keccak256(self.version.as_bytes()).0);
        if let Some(c) = self.chain_id {
            k.update(&u64_word(c));
        }
        if let Some(a) = self.verifying_contract {
            k.update(&a.to_word());
        }
        k.finalize()
    }

    /// The digest to sign for a message whose `hashStruct` is `struct_hash`.
    pub fn digest(&self, struct_hash: &Hash) -> Hash {
        let mut k = Keccak::new();
        k.update(&[0x19, 0x01]);
        k.update(&self.separator().0);
        k.update(&struct_hash.0);
        k.finalize()
    }
}

/// A `uint64`/`uint256` value as a 32-byte big-endian word.
pub fn u64_word(v: u64) -> [u8; 32] {
    let mut w = [0u8; 32];
    w[24..].copy_from_slice(&v.to_be_bytes());
    w
}

/// The encoding of a `string` member: keccak256 of its UTF-8 bytes.
pub fn string_word(s: &str) -> [u8; 32] {
    keccak256(s.as_bytes()).0
}

/// The encoding of a `string[]` member: keccak256 of the concatenated keccak256 of each string.
pub fn string_array_word(items: &[String]) -> [u8; 32] {
    let mut k = Keccak::new();
    for s in items {
        k.update(&keccak256(s.as_bytes()).0);
    }
    k.finalize().0
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The `Mail` example of the EIP-712 specification, whose digest the specification publishes.
    #[test]
    fn eip712_spec_example() {
        let domain = Domain {
            name: "Ether Mail".into(),
            version: "1".into(),
            chain_id: Some(1),
            verifying_contract: Some(
                "0xCcCCccccCCCCcCCCCCCcCcCccCcCCCcCcccccccC"
                    .parse()
                    .unwrap(),
            ),
        };
        assert_eq!(
            domain.separator().to_hex(),
            "0xf2cee375fa42b42143804025fc449deafd50cc031ca257e0b194a650a912090f"
        );
        let person = |name: &str, wallet: &str| {
            let mut k = Keccak::new();
            k.update(&keccak256(b"Person(string name,address wallet)").0);
            k.update(&string_word(name));
            k.update(&wallet.parse::<Address>().unwrap().to_word());
            k.finalize()
        };
        let mut k = Keccak::new();
        k.update(
            &keccak256(
                b"Mail(Person from,Person to,string contents)Person(string name,address wallet)",
            )
            .0,
        );
        k.update(&person("Cow", "0xCD2a3d9F938E13CD947Ec05AbC7FE734Df8DD826").0);
        k.update(&person("Bob", "0xbBbBBBBbbBBBbbbBbbBbbbbBBbBbbbbBbBbbBBbB").0);
        k.update(&string_word("Hello, Bob!"));
        let mail = k.finalize();
        assert_eq!(
            domain.digest(&mail).to_hex(),
            "0xbe609aee343fb3c4b28e1df9e632fca64fcfaede20f02e86244efddf30957bd2"
        );
    }
}
