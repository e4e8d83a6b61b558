//! The sumcheck protocol for `Σ_{x ∈ {0,1}ⁿ} f(x)·g(x) = claim`, `f` and `g` multilinear, made
//! non-interactive with the [`Transcript`]. Round `j` sends the degree-2 polynomial `sⱼ(X)` (as its values
//! at 0, 1, 2) that sums the product over the remaining variables with the first `j − 1` fixed at earlier
//! challenges; the verifier checks `sⱼ(0) + sⱼ(1)` against the running claim and continues with
//! `sⱼ(rⱼ)`. At the end the prover names `f(r)` and `g(r)`; the verifier checks their product against the
//! last claim and hands `(r, f(r), g(r))` back to the caller, who must check those two values against
//! what `f` and `g` really are (by evaluating public data itself, or through another proof).
//!
//! Soundness: a false claim survives a round with probability at most 2/|Ext| ≈ 2⁻¹²⁷ (Schwartz–Zippel
//! on a degree-2 polynomial); over n rounds at most 2n/|Ext|.

use p3_field::{Field, PrimeCharacteristicRing};

use crate::field::{ext_bytes, ext_from_bytes, Ext};
use crate::mle::fold;
use crate::transcript::Transcript;

/// A sumcheck proof.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Proof {
    /// Per round: s(0), s(1), s(2).
    pub rounds: Vec<[Ext; 3]>,
    /// f at the final point.
    pub f: Ext,
    /// g at the final point.
    pub g: Ext,
}

/// Why a proof was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    /// The proof has the wrong number of rounds.
    #[error("the proof has {got} rounds, the statement needs {want}")]
    Rounds {
        /// Rounds needed.
        want: usize,
        /// Rounds in the proof.
        got: usize,
    },
    /// A round polynomial does not sum to the running claim.
    #[error("round {0}: s(0) + s(1) is not the claim")]
    Round(usize),
    /// `f(r)·g(r)` is not the last claim.
    #[error("the final values do not multiply to the last claim")]
    Final,
    /// Malformed bytes.
    #[error("malformed proof: {0}")]
    Encoding(&'static str),
}

/// The verifier's outcome: the random point and the values the prover claims there.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    /// The challenges, one per variable.
    pub point: Vec<Ext>,
    /// Claimed f(point).
    pub f: Ext,
    /// Claimed g(point).
    pub g: Ext,
}

/// Interpolate the degree-2 polynomial with values `s` at 0, 1, 2 and evaluate it at `r`.
fn at(s: &[Ext; 3], r: Ext) -> Ext {
    let two = Ext::TWO;
    let half = two.inverse();
    let (r1, r2) = (r - Ext::ONE, r - two);
    s[0] * r1 * r2 * half - s[1] * r * r2 + s[2] * r * r1 * half
}

/// Prove `Σ f·g` over the tables `f`, `g` (same length, a power of two). Returns the claim and the proof;
/// the transcript must be the verifier's (same domain and absorbed statement).
pub fn prove(mut f: Vec<Ext>, mut g: Vec<Ext>, t: &mut Transcript) -> (Ext, Proof) {
    assert_eq!(f.len(), g.len(), "tables of different sizes");
    assert!(
        f.len().is_power_of_two(),
        "table size must be a power of two"
    );
    let claim = f.iter().zip(&g).fold(Ext::ZERO, |a, (x, y)| a + *x * *y);
    let mut rounds = Vec::new();
    while f.len() > 1 {
        let half = f.len() / 2;
        let mut s = [Ext::ZERO; 3];
        for i in 0..half {
            let (f0, f1, g0, g1) = (f[i], f[i + half], g[i], g[i + half]);
            s[0] += f0 * g0;
            s[1] += f1 * g1;
            s[2] += (f1.double() - f0) * (g1.double() - g0);
        }
        t.absorb_ext(b"sumcheck round", &s);
        let r = t.challenge();
        f = fold(&f, r);
        g = fold(&g, r);
        rounds.push(s);
    }
    let proof = Proof {
        rounds,
        f: f[0],
        g: g[0],
    };
    t.absorb_ext(b"sumcheck final", &[proof.f, proof.g]);
    (claim, proof)
}

/// Check `proof` for `Σ_{x ∈ {0,1}^vars} f·g = claim`.
pub fn verify(
    vars: usize,
    claim: Ext,
    proof: &Proof,
    t: &mut Transcript,
) -> Result<Outcome, Error> {
    if proof.rounds.len() != vars {
        return Err(Error::Rounds {
            want: vars,
            got: proof.rounds.len(),
        });
    }
    let mut cur = claim;
    let mut point = Vec::with_capacity(vars);
    for (j, s) in proof.rounds.iter().enumerate() {
        if s[0] + s[1] != cur {
            return Err(Error::Round(j));
        }
        t.absorb_ext(b"sumcheck round", s);
        let r = t.challenge();
        cur = at(s, r);
        point.push(r);
    }
    if proof.f * proof.g != cur {
        return Err(Error::Final);
    }
    t.absorb_ext(b"sumcheck final", &[proof.f, proof.g]);
    Ok(Outcome {
        point,
        f: proof.f,
        g: proof.g,
    })
}

impl Proof {
    /// Canonical bytes: round count (u32 LE), then every value (16 bytes each).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(4 + 16 * (3 * self.rounds.len() + 2));
        out.extend_from_slice(&(self.rounds.len() as u32).to_le_bytes());
        for s in &self.rounds {
            for x in s {
                out.extend_from_slice(&ext_bytes(x));
            }
        }
        out.extend_from_slice(&ext_bytes(&self.f));
        out.extend_from_slice(&ext_bytes(&self.g));
        out
    }

    /// Decode [`Proof::to_bytes`] exactly (no trailing bytes, canonical values only).
    pub fn from_bytes(b: &[u8]) -> Result<Proof, Error> {
        let n = u32::from_le_bytes(
            b.get(..4)
                .and_then(|x| x.try_into().ok())
                .ok_or(Error::Encoding("truncated"))?,
        ) as usize;
        if n > 64 || b.len() != 4 + 16 * (3 * n + 2) {
            return Err(Error::Encoding("wrong length"));
        }
        let mut vals = b[4..].chunks_exact(16).map(|c| {
            let a: [u8; 16] = c.try_into().map_err(|_| Error::Encoding("truncated"))?;
            ext_from_bytes(&a).ok_or(Error::Encoding("non-canonical field element"))
        });
        let mut next = || vals.next().unwrap_or(Err(Error::Encoding("truncated")));
        let mut rounds = Vec::with_capacity(n);
        for _ in 0..n {
            rounds.push([next()?, next()?, next()?]);
        }
        let (f, g) = (next()?, next()?);
        Ok(Proof { rounds, f, g })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::field::{from_i64, lift};
    use crate::mle::eval;
    use proptest::prelude::*;

    fn table(v: &[i64]) -> Vec<Ext> {
        v.iter().map(|&x| lift(from_i64(x))).collect()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn honest_proofs_verify_and_bind_f_and_g(
            n in 0usize..8,
            seed in proptest::collection::vec(-1_000_000i64..1_000_000, 256 * 2),
        ) {
            let len = 1usize << n;
            let f = table(&seed[..len]);
            let g = table(&seed[256..256 + len]);
            let (claim, proof) = prove(f.clone(), g.clone(), &mut Transcript::new(b"t"));
            let want: i128 = seed[..len].iter().zip(&seed[256..256 + len]).map(|(a, b)| *a as i128 * *b as i128).sum();
            prop_assert_eq!(claim, lift(from_i64(want as i64)));
            let out = verify(n, claim, &proof, &mut Transcript::new(b"t")).unwrap();
            // the values named at the end are the extensions' real values at the random point
            prop_assert_eq!(out.f, eval(&f, &out.point));
            prop_assert_eq!(out.g, eval(&g, &out.point));
            // canonical bytes round-trip
            prop_assert_eq!(Proof::from_bytes(&proof.to_bytes()).unwrap(), proof.clone());
            // a claim off by one is refused
            prop_assert!(verify(n, claim + Ext::ONE, &proof, &mut Transcript::new(b"t")).is_err());
            // another transcript domain gives other challenges: the proof does not carry over
            if n > 0 {
                let other = verify(n, claim, &proof, &mut Transcript::new(b"u"));
                prop_assert!(other.map(|o| o.point != out.point).unwrap_or(true));
            }
        }
    }

    #[test]
    fn tampered_proofs_are_refused() {
        let f = table(&(0..64).map(|i| i * 3 - 50).collect::<Vec<_>>());
        let g = table(&(0..64).map(|i| 7 - i).collect::<Vec<_>>());
        let (claim, proof) = prove(f, g, &mut Transcript::new(b"t"));
        assert!(verify(6, claim, &proof, &mut Transcript::new(b"t")).is_ok());
        for j in 0..6 {
            for k in 0..3 {
                let mut p = proof.clone();
                p.rounds[j][k] += Ext::ONE;
                assert!(
                    verify(6, claim, &p, &mut Transcript::new(b"t")).is_err(),
                    "round {j} value {k}"
                );
            }
        }
        let mut p = proof.clone();
        p.f += Ext::ONE;
        assert_eq!(
            verify(6, claim, &p, &mut Transcript::new(b"t")),
            Err(Error::Final)
        );
        assert!(matches!(
            verify(5, claim, &proof, &mut Transcript::new(b"t")),
            Err(Error::Rounds { want: 5, got: 6 })
        ));
        let bytes = proof.to_bytes();
        assert!(Proof::from_bytes(&bytes[..bytes.len() - 1]).is_err());
        let mut bad = bytes.clone();
        bad[4..12].copy_from_slice(&u64::MAX.to_le_bytes());
        assert_eq!(
            Proof::from_bytes(&bad),
            Err(Error::Encoding("non-canonical field element"))
        );
    }
}
