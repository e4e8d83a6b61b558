//! The Fiat–Shamir transcript: a keccak-256 chain. Every message the prover sends is absorbed with a
//! label; a challenge is squeezed from the current state and a counter. Extension challenges take two
//! 64-bit words by rejection sampling (a word ≥ `P` is discarded), so they are uniform.

use verity_core::{keccak256, Hash};

use crate::field::{ext_bytes, Ext, F, P};
use p3_field::{BasedVectorSpace, PrimeCharacteristicRing};

/// A transcript (prover and verifier keep identical ones).
#[derive(Clone, Debug)]
pub struct Transcript {
    state: Hash,
    squeezed: u64,
}

impl Transcript {
    /// A transcript bound to a domain separator (the protocol name and its public statement).
    pub fn new(domain: &[u8]) -> Transcript {
        Transcript {
            state: keccak256(domain),
            squeezed: 0,
        }
    }

    /// Absorb `bytes` under `label`.
    pub fn absorb(&mut self, label: &[u8], bytes: &[u8]) {
        let mut b = Vec::with_capacity(32 + 8 + label.len() + bytes.len());
        b.extend_from_slice(&self.state.0);
        b.extend_from_slice(&(label.len() as u64).to_le_bytes());
        b.extend_from_slice(label);
        b.extend_from_slice(bytes);
        self.state = keccak256(&b);
        self.squeezed = 0;
    }

    /// Absorb extension elements.
    pub fn absorb_ext(&mut self, label: &[u8], xs: &[Ext]) {
        let bytes: Vec<u8> = xs.iter().flat_map(ext_bytes).collect();
        self.absorb(label, &bytes);
    }

    fn word(&mut self) -> u64 {
        loop {
            let mut b = [0u8; 40];
            b[..32].copy_from_slice(&self.state.0);
            b[32..].copy_from_slice(&self.squeezed.to_le_bytes());
            self.squeezed += 1;
            let h = keccak256(&b);
            let w = u64::from_le_bytes(h.0[..8].try_into().unwrap_or([0; 8]));
            if w < P {
                return w;
            }
        }
    }

    /// Whether `nonce` is a proof of work of `bits` bits on the current state: keccak256(state ‖ "grind"
    /// ‖ u64le(nonce)) starts with `bits` zero bits.
    pub fn pow_ok(&self, nonce: u64, bits: u32) -> bool {
        let mut b = [0u8; 32 + 5 + 8];
        b[..32].copy_from_slice(&self.state.0);
        b[32..37].copy_from_slice(b"grind");
        b[37..].copy_from_slice(&nonce.to_le_bytes());
        let h = keccak256(&b);
        let lead = u64::from_be_bytes(h.0[..8].try_into().unwrap_or([0xff; 8])).leading_zeros();
        lead >= bits
    }

    /// A uniform extension challenge.
    pub fn challenge(&mut self) -> Ext {
        let (lo, hi) = (self.word(), self.word());
        Ext::from_basis_coefficients_slice(&[F::from_u64(lo), F::from_u64(hi)]).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenges_depend_on_everything_absorbed() {
        let mut a = Transcript::new(b"test");
        let mut b = Transcript::new(b"test");
        a.absorb(b"m", b"hello");
        b.absorb(b"m", b"hello");
        assert_eq!(a.challenge(), b.challenge());
        let mut c = Transcript::new(b"test");
        c.absorb(b"m", b"hellp");
        let mut d = Transcript::new(b"test");
        d.absorb(b"n", b"hello");
        let mut e = Transcript::new(b"other");
        e.absorb(b"m", b"hello");
        let x = Transcript::new(b"test").clone().challenge();
        let mut a2 = Transcript::new(b"test");
        a2.absorb(b"m", b"hello");
        let first = a2.challenge();
        assert_ne!(first, c.challenge());
        assert_ne!(first, d.challenge());
        assert_ne!(first, e.challenge());
        assert_ne!(first, x);
        // successive challenges differ
        assert_ne!(first, a2.challenge());
    }
}
