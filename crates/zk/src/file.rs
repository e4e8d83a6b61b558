//! The proof file: the statement's data and the proof, in one canonical byte layout.
//!
//! `"VERITYZK"` ‖ `u32le(1)` (version) ‖ model ID (32) ‖ `W` root (32) ‖ inputs ‖ outputs ‖
//! `u64le(len)` ‖ proof, where a tensor list is `u32le(count)` then per tensor `u32le(len)` and its
//! elements as `i32le`. The input and output hashes of the statement are computed from these tensors.

use verity_core::Hash;

use crate::ZkError;

const MAGIC: &[u8; 8] = b"VERITYZK";
const VERSION: u32 = 1;

/// A proof with its statement.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProofFile {
    /// The model.
    pub model_id: Hash,
    /// The model's constants commitment.
    pub w_root: Hash,
    /// Quantized inputs.
    pub inputs: Vec<Vec<i32>>,
    /// Quantized outputs.
    pub outputs: Vec<Vec<i32>>,
    /// The proof bytes.
    pub proof: Vec<u8>,
}

/// Whether `bytes` look like a proof file.
pub fn is_proof_file(bytes: &[u8]) -> bool {
    bytes.starts_with(MAGIC)
}

fn put_tensors(out: &mut Vec<u8>, ts: &[Vec<i32>]) {
    out.extend_from_slice(&(ts.len() as u32).to_le_bytes());
    for t in ts {
        out.extend_from_slice(&(t.len() as u32).to_le_bytes());
        for v in t {
            out.extend_from_slice(&v.to_le_bytes());
        }
    }
}

struct Reader<'a> {
    b: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], ZkError> {
        let end = self
            .at
            .checked_add(n)
            .filter(|&e| e <= self.b.len())
            .ok_or_else(|| ZkError::malformed("the proof file ends early"))?;
        let s = &self.b[self.at..end];
        self.at = end;
        Ok(s)
    }
    fn u32(&mut self) -> Result<u32, ZkError> {
        Ok(u32::from_le_bytes(
            self.take(4)?.try_into().unwrap_or([0; 4]),
        ))
    }
    fn hash(&mut self) -> Result<Hash, ZkError> {
        Ok(Hash(self.take(32)?.try_into().unwrap_or([0; 32])))
    }
    fn tensors(&mut self) -> Result<Vec<Vec<i32>>, ZkError> {
        let n = self.u32()? as usize;
        if n > 1024 {
            return Err(ZkError::malformed("too many tensors"));
        }
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            let len = self.u32()? as usize;
            let bytes = self.take(len.checked_mul(4).ok_or(ZkError::malformed("length"))?)?;
            out.push(
                bytes
                    .chunks(4)
                    .map(|c| i32::from_le_bytes(c.try_into().unwrap_or([0; 4])))
                    .collect(),
            );
        }
        Ok(out)
    }
}

impl ProofFile {
    /// The canonical bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.proof.len() + 1024);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&VERSION.to_le_bytes());
        out.extend_from_slice(&self.model_id.0);
        out.extend_from_slice(&self.w_root.0);
        put_tensors(&mut out, &self.inputs);
        put_tensors(&mut out, &self.outputs);
        out.extend_from_slice(&(self.proof.len() as u64).to_le_bytes());
        out.extend_from_slice(&self.proof);
        out
    }

    /// Parse [`ProofFile::to_bytes`]; anything else is refused.
    pub fn from_bytes(b: &[u8]) -> Result<ProofFile, ZkError> {
        if !is_proof_file(b) {
            return Err(ZkError::malformed("not a Verity proof file"));
        }
        let mut r = Reader { b, at: 8 };
        let v = r.u32()?;
        if v != VERSION {
            return Err(ZkError::Malformed(format!(
                "proof file version {v} is not supported (this build reads {VERSION})"
            )));
        }
        let model_id = r.hash()?;
        let w_root = r.hash()?;
        let inputs = r.tensors()?;
        let outputs = r.tensors()?;
        let len = u64::from_le_bytes(r.take(8)?.try_into().unwrap_or([0; 8]));
        let proof = r
            .take(usize::try_from(len).map_err(|_| ZkError::malformed("length"))?)?
            .to_vec();
        if r.at != b.len() {
            return Err(ZkError::malformed("the proof file has trailing bytes"));
        }
        Ok(ProofFile {
            model_id,
            w_root,
            inputs,
            outputs,
            proof,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proof_files_round_trip_and_bad_ones_are_refused() {
        let f = ProofFile {
            model_id: verity_core::keccak256(b"m"),
            w_root: verity_core::keccak256(b"w"),
            inputs: vec![vec![1, -2, 3]],
            outputs: vec![vec![], vec![i32::MIN]],
            proof: vec![9; 100],
        };
        let b = f.to_bytes();
        assert_eq!(ProofFile::from_bytes(&b).unwrap(), f);
        assert!(ProofFile::from_bytes(&b[..b.len() - 1]).is_err());
        let mut longer = b.clone();
        longer.push(0);
        assert!(ProofFile::from_bytes(&longer).is_err());
        let mut v2 = b.clone();
        v2[8] = 2;
        assert!(ProofFile::from_bytes(&v2).is_err());
        assert!(ProofFile::from_bytes(b"hello").is_err());
    }
}
