//! The proof as a message stream. The prover appends every message to a byte buffer and absorbs it into
//! the Fiat–Shamir [`Transcript`]; the verifier reads the same messages back in the same order and absorbs
//! them identically, so both draw the same challenges. The proof bytes are exactly the concatenation of
//! the messages (extension elements as 16 bytes, hashes as 32, counts as u64 little-endian): one encoding,
//! fixed by the protocol, and a verifier refuses leftover or missing bytes.

use p3_field::BasedVectorSpace;
use verity_core::Hash;

use crate::field::{ext_bytes, ext_from_bytes, Ext, F, P};
use crate::transcript::Transcript;
use crate::ZkError;
use p3_field::{PrimeCharacteristicRing, PrimeField64};

/// One side of the proof: writing (prover) or reading (verifier).
#[derive(Debug)]
pub struct Channel {
    t: Transcript,
    buf: Vec<u8>,
    pos: usize,
    proving: bool,
    lenient: bool,
}

impl Channel {
    /// The prover's channel for a protocol bound to `domain`.
    pub fn prover(domain: &[u8]) -> Channel {
        Channel {
            t: Transcript::new(domain),
            buf: Vec::new(),
            pos: 0,
            proving: true,
            lenient: false,
        }
    }

    /// A prover that keeps going where an honest one would stop (its own checks fail): what a cheating
    /// prover sends, for soundness tests.
    pub fn cheating_prover(domain: &[u8]) -> Channel {
        Channel {
            lenient: true,
            ..Channel::prover(domain)
        }
    }

    /// A failed check: an error, except for a cheating prover, which goes on.
    pub fn reject(&self, why: impl Into<String>) -> Result<(), ZkError> {
        if self.proving && self.lenient {
            Ok(())
        } else {
            Err(ZkError::Rejected(why.into()))
        }
    }

    /// The verifier's channel over `proof`.
    pub fn verifier(domain: &[u8], proof: Vec<u8>) -> Channel {
        Channel {
            t: Transcript::new(domain),
            buf: proof,
            pos: 0,
            proving: false,
            lenient: false,
        }
    }

    /// Is this the prover's side?
    pub fn proving(&self) -> bool {
        self.proving
    }

    /// Absorb public data both sides know (not part of the proof bytes).
    pub fn absorb_public(&mut self, label: &[u8], bytes: &[u8]) {
        self.t.absorb(label, bytes);
    }

    /// A uniform extension challenge.
    pub fn challenge(&mut self) -> Ext {
        self.t.challenge()
    }

    /// `n` challenges.
    pub fn challenges(&mut self, n: usize) -> Vec<Ext> {
        (0..n).map(|_| self.t.challenge()).collect()
    }

    /// A uniform integer below `2^bits` (bits ≤ 32), for query positions.
    pub fn index(&mut self, bits: u32) -> usize {
        let c = self.t.challenge();
        let w: &[F] = c.as_basis_coefficients_slice();
        (w[0].as_canonical_u64() & ((1u64 << bits) - 1)) as usize
    }

    /// Proof of work: the prover searches a nonce with `bits` leading zero bits (about 2^bits hashes),
    /// the verifier checks it with one; either way it is absorbed. Adds `bits` bits of security to the
    /// challenges drawn after it.
    pub fn grind(&mut self, bits: u32) -> Result<(), ZkError> {
        let nonce = if self.proving {
            let mut n = 0u64;
            while !self.t.pow_ok(n, bits) {
                n += 1;
            }
            n
        } else {
            u64::from_le_bytes(self.take(8)?.try_into().unwrap_or([0; 8]))
        };
        if self.proving {
            self.buf.extend_from_slice(&nonce.to_le_bytes());
        } else if !self.t.pow_ok(nonce, bits) {
            self.reject("the proof of work is missing")?;
        }
        self.t.absorb(b"grind", &nonce.to_le_bytes());
        Ok(())
    }

    /// Exchange extension elements: the prover sends `make()`, the verifier reads `n` of them.
    pub fn ext(
        &mut self,
        label: &[u8],
        n: usize,
        make: impl FnOnce() -> Vec<Ext>,
    ) -> Result<Vec<Ext>, ZkError> {
        let xs = if self.proving {
            let xs = make();
            debug_assert_eq!(xs.len(), n, "message length");
            for x in &xs {
                self.buf.extend_from_slice(&ext_bytes(x));
            }
            xs
        } else {
            let bytes = self.take(n.checked_mul(16).ok_or(ZkError::malformed("length"))?)?;
            bytes
                .chunks(16)
                .map(|c| {
                    ext_from_bytes(c.try_into().unwrap_or(&[0xff; 16]))
                        .ok_or(ZkError::malformed("a field element is not canonical"))
                })
                .collect::<Result<Vec<_>, _>>()?
        };
        self.t.absorb_ext(label, &xs);
        Ok(xs)
    }

    /// Exchange one extension element.
    pub fn ext1(&mut self, label: &[u8], make: impl FnOnce() -> Ext) -> Result<Ext, ZkError> {
        Ok(self.ext(label, 1, || vec![make()])?[0])
    }

    /// Exchange base-field elements (8 bytes each).
    pub fn base(
        &mut self,
        label: &[u8],
        n: usize,
        make: impl FnOnce() -> Vec<F>,
    ) -> Result<Vec<F>, ZkError> {
        let (xs, bytes) = if self.proving {
            let xs = make();
            let bytes: Vec<u8> = xs
                .iter()
                .flat_map(|x| x.as_canonical_u64().to_le_bytes())
                .collect();
            self.buf.extend_from_slice(&bytes);
            (xs, bytes)
        } else {
            let bytes = self
                .take(n.checked_mul(8).ok_or(ZkError::malformed("length"))?)?
                .to_vec();
            let xs = bytes
                .chunks(8)
                .map(|c| {
                    let v = u64::from_le_bytes(c.try_into().unwrap_or([0xff; 8]));
                    if v >= P {
                        Err(ZkError::malformed("a field element is not canonical"))
                    } else {
                        Ok(F::from_u64(v))
                    }
                })
                .collect::<Result<Vec<_>, _>>()?;
            (xs, bytes)
        };
        self.t.absorb(label, &bytes);
        Ok(xs)
    }

    /// Exchange hashes.
    pub fn hashes(
        &mut self,
        label: &[u8],
        n: usize,
        make: impl FnOnce() -> Vec<Hash>,
    ) -> Result<Vec<Hash>, ZkError> {
        let hs = if self.proving {
            let hs = make();
            for h in &hs {
                self.buf.extend_from_slice(&h.0);
            }
            hs
        } else {
            let bytes = self.take(n.checked_mul(32).ok_or(ZkError::malformed("length"))?)?;
            bytes
                .chunks(32)
                .map(|c| Hash(c.try_into().unwrap_or([0; 32])))
                .collect()
        };
        let bytes: Vec<u8> = hs.iter().flat_map(|h| h.0).collect();
        self.t.absorb(label, &bytes);
        Ok(hs)
    }

    /// Exchange a count (u64); the verifier refuses counts above `max`.
    pub fn count(
        &mut self,
        label: &[u8],
        max: u64,
        make: impl FnOnce() -> u64,
    ) -> Result<u64, ZkError> {
        let v = if self.proving {
            let v = make();
            self.buf.extend_from_slice(&v.to_le_bytes());
            v
        } else {
            let b = self.take(8)?;
            u64::from_le_bytes(b.try_into().unwrap_or([0xff; 8]))
        };
        if v > max {
            return Err(ZkError::malformed("a count is out of range"));
        }
        self.t.absorb(label, &v.to_le_bytes());
        Ok(v)
    }

    fn take(&mut self, n: usize) -> Result<&[u8], ZkError> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.buf.len())
            .ok_or(ZkError::malformed("the proof ends early"))?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    /// The prover's proof bytes.
    pub fn into_proof(self) -> Vec<u8> {
        self.buf
    }

    /// The verifier's last check: every byte was read.
    pub fn finish(&self) -> Result<(), ZkError> {
        if !self.proving && self.pos != self.buf.len() {
            return Err(ZkError::malformed("the proof has trailing bytes"));
        }
        Ok(())
    }
}

/// Convenience: an extension element from a signed integer.
pub fn ext_i(v: i64) -> Ext {
    Ext::from(crate::field::from_i64(v))
}

/// Convenience: an extension element from an i128 that fits the field's signed range.
pub fn ext_i128(v: i128) -> Ext {
    let p = P as i128;
    let r = v.rem_euclid(p);
    Ext::from(F::from_u64(r as u64))
}
