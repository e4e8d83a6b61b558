//! Model manifests: what a publisher says about a model, signed with the owner's key (EIP-712).
//!
//! ```text
//! ModelManifest(bytes32 modelId,string name,string version,string description,string task,string license,string[] tags,address owner,bytes32 sourceHash,bytes32 reportHash)
//! domain: EIP712Domain(string name,string version), name "Verity Model Manifest", version "1"
//! ```
//! `sourceHash` is keccak256 of the file the model was compiled from (the ONNX file; provenance only),
//! `reportHash` keccak256 of the compile report's bytes (zero when none is attached).

use serde::{Deserialize, Serialize};

use crate::eip712::{string_array_word, string_word, Domain};
use crate::eth::{Address, EthError, SecretKey, Signature};
use crate::hash::{keccak256, Hash, Keccak};

/// The EIP-712 type string of [`Manifest`].
pub const MANIFEST_TYPE: &str = "ModelManifest(bytes32 modelId,string name,string version,string description,string task,string license,string[] tags,address owner,bytes32 sourceHash,bytes32 reportHash)";

/// The domain manifests are signed under (not tied to a chain: a manifest describes a model anywhere).
pub fn manifest_domain() -> Domain {
    Domain {
        name: "Verity Model Manifest".into(),
        version: "1".into(),
        chain_id: None,
        verifying_contract: None,
    }
}

/// Limits on manifest fields.
pub mod limits {
    /// Longest name.
    pub const NAME: usize = 64;
    /// Longest version.
    pub const VERSION: usize = 32;
    /// Longest description (bytes).
    pub const DESCRIPTION: usize = 4096;
    /// Longest task or license.
    pub const SHORT: usize = 64;
    /// Most tags.
    pub const TAGS: usize = 32;
    /// Longest tag.
    pub const TAG: usize = 32;
}

/// A model's signed metadata.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// The canonical model ID this manifest describes.
    pub model_id: Hash,
    /// Name: 1–64 of `A-Z a-z 0-9 . _ -`, starting with a letter or digit.
    pub name: String,
    /// Version: 1–32 of `A-Z a-z 0-9 . _ - +`.
    pub version: String,
    /// Free text.
    #[serde(default)]
    pub description: String,
    /// What the model does, e.g. `image-classification`.
    #[serde(default)]
    pub task: String,
    /// License identifier, e.g. `Apache-2.0`.
    #[serde(default)]
    pub license: String,
    /// Search tags (same alphabet as names).
    #[serde(default)]
    pub tags: Vec<String>,
    /// The publisher; must be the signer.
    pub owner: Address,
    /// keccak256 of the source file (ONNX), or zero.
    #[serde(default)]
    pub source_hash: Hash,
    /// keccak256 of the compile report's bytes, or zero.
    #[serde(default)]
    pub report_hash: Hash,
}

/// Why a manifest is not acceptable.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum ManifestError {
    /// A field breaks its format or length rule.
    #[error("manifest field '{field}': {reason}")]
    Field {
        /// Which field.
        field: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// The signature is malformed.
    #[error("bad manifest signature: {0}")]
    Signature(#[from] EthError),
    /// Signed by someone other than the owner.
    #[error("manifest is signed by {signer}, not by its owner {owner}")]
    NotOwner {
        /// Who signed.
        signer: Address,
        /// The claimed owner.
        owner: Address,
    },
}

fn ident_ok(s: &str, extra: &[char], max: usize) -> bool {
    !s.is_empty()
        && s.len() <= max
        && s.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || extra.contains(&c))
}

/// Whether `s` is a valid model name.
pub fn valid_name(s: &str) -> bool {
    ident_ok(s, &['.', '_', '-'], limits::NAME)
}

/// Whether `s` is a valid version.
pub fn valid_version(s: &str) -> bool {
    ident_ok(s, &['.', '_', '-', '+'], limits::VERSION)
}

impl Manifest {
    /// Check field formats and lengths.
    pub fn validate(&self) -> Result<(), ManifestError> {
        let bad = |field, reason: &str| {
            Err(ManifestError::Field {
                field,
                reason: reason.to_string(),
            })
        };
        if !valid_name(&self.name) {
            return bad(
                "name",
                "1-64 characters of A-Z a-z 0-9 . _ -, starting with a letter or digit",
            );
        }
        if !valid_version(&self.version) {
            return bad(
                "version",
                "1-32 characters of A-Z a-z 0-9 . _ - +, starting with a letter or digit",
            );
        }
        if self.description.len() > limits::DESCRIPTION {
            return bad("description", "longer than 4096 bytes");
        }
        if self.task.len() > limits::SHORT || self.task.chars().any(char::is_control) {
            return bad("task", "at most 64 bytes, no control characters");
        }
        if self.license.len() > limits::SHORT || self.license.chars().any(char::is_control) {
            return bad("license", "at most 64 bytes, no control characters");
        }
        if self.tags.len() > limits::TAGS {
            return bad("tags", "at most 32 tags");
        }
        if self
            .tags
            .iter()
            .any(|t| !ident_ok(t, &['.', '_', '-'], limits::TAG))
        {
            return bad("tags", "each tag 1-32 characters of A-Z a-z 0-9 . _ -");
        }
        if self.model_id == Hash::ZERO {
            return bad("model_id", "must be the model's ID");
        }
        Ok(())
    }

    /// `hashStruct(manifest)`.
    pub fn struct_hash(&self) -> Hash {
        let mut k = Keccak::new();
        k.update(&keccak256(MANIFEST_TYPE.as_bytes()).0);
        k.update(&self.model_id.0);
        k.update(&string_word(&self.name));
        k.update(&string_word(&self.version));
        k.update(&string_word(&self.description));
        k.update(&string_word(&self.task));
        k.update(&string_word(&self.license));
        k.update(&string_array_word(&self.tags));
        k.update(&self.owner.to_word());
        k.update(&self.source_hash.0);
        k.update(&self.report_hash.0);
        k.finalize()
    }

    /// The EIP-712 digest the owner signs.
    pub fn digest(&self) -> Hash {
        manifest_domain().digest(&self.struct_hash())
    }

    /// Sign with the owner's key (sets `owner` to the key's address).
    pub fn sign(mut self, key: &SecretKey) -> SignedManifest {
        self.owner = key.address();
        let signature = key.sign(&self.digest());
        SignedManifest {
            manifest: self,
            signature,
        }
    }
}

/// A manifest with the owner's signature.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedManifest {
    /// The manifest.
    pub manifest: Manifest,
    /// The owner's signature over [`Manifest::digest`].
    pub signature: Signature,
}

impl SignedManifest {
    /// Validate the fields and check that the owner signed it.
    pub fn verify(&self) -> Result<(), ManifestError> {
        self.manifest.validate()?;
        let signer = self.signature.recover(&self.manifest.digest())?;
        if signer != self.manifest.owner {
            return Err(ManifestError::NotOwner {
                signer,
                owner: self.manifest.owner,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Manifest {
        Manifest {
            model_id: keccak256(b"m"),
            name: "digits".into(),
            version: "1.0.0".into(),
            description: "a classifier".into(),
            task: "image-classification".into(),
            license: "MIT".into(),
            tags: vec!["vision".into(), "mnist".into()],
            owner: Address::ZERO,
            source_hash: keccak256(b"onnx"),
            report_hash: Hash::ZERO,
        }
    }

    #[test]
    fn sign_verify_tamper() {
        let key = SecretKey::random();
        let s = sample().sign(&key);
        assert_eq!(s.verify(), Ok(()));
        let mut t = s.clone();
        t.manifest.tags.push("extra".into());
        assert!(matches!(t.verify(), Err(ManifestError::NotOwner { .. })));
        let mut t = s.clone();
        t.manifest.owner = SecretKey::random().address();
        assert!(matches!(t.verify(), Err(ManifestError::NotOwner { .. })));
        let mut t = s;
        t.manifest.name = "bad name".into();
        assert!(matches!(
            t.verify(),
            Err(ManifestError::Field { field: "name", .. })
        ));
    }

    #[test]
    fn names() {
        assert!(valid_name("resnet-50_v2.onnx"));
        assert!(!valid_name("-x"));
        assert!(!valid_name("a@b"));
        assert!(!valid_name(&"a".repeat(65)));
        assert!(valid_version("1.2.3+build.4"));
        assert!(!valid_version(""));
    }
}
