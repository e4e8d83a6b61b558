//! Proof that `C = A·B` for integer matrices held by both sides (A: m×k, B: k×n, C: m×n, row-major),
//! checked in `O(mk + kn + mn)` field operations instead of the `O(mkn)` of recomputing the product.
//!
//! Protocol (dimensions padded with zeros to powers of two): the transcript absorbs the keccak-256 of the
//! statement; challenges `rᵢ`, `rⱼ` pick a random point of `C`'s multilinear extension; since
//! `C̃(rᵢ, rⱼ) = Σ_κ Ã(rᵢ, κ)·B̃(κ, rⱼ)` for every `rᵢ, rⱼ` exactly when `C = A·B` in the field, a sumcheck
//! over κ reduces the claim to one value of `Ã(rᵢ, ·)` and one of `B̃(·, rⱼ)`, which the verifier
//! evaluates itself. A false `C` passes with probability at most `(log m + log n + 2 log k)/|Ext|`.
//!
//! Field equality is integer equality only without wrap-around: both sides refuse statements where
//! `max|A|·max|B|·k` or `max|C|` reaches 2⁶², far below `P/2`.

use p3_field::PrimeCharacteristicRing;
use verity_core::keccak256;

use crate::field::{from_i64, Ext};
use crate::mle::{eq_table, vars};
use crate::sumcheck::{self, Proof};
use crate::transcript::Transcript;

/// A matrix-product statement.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Statement<'a> {
    /// Rows of A and C.
    pub m: usize,
    /// Columns of A, rows of B.
    pub k: usize,
    /// Columns of B and C.
    pub n: usize,
    /// A, row-major.
    pub a: &'a [i64],
    /// B, row-major.
    pub b: &'a [i64],
    /// C, row-major.
    pub c: &'a [i64],
}

/// Why a statement or proof was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    /// Sizes do not match the dimensions, or a dimension is zero.
    #[error("matrix sizes do not match {m}×{k}·{k}×{n} (or a dimension is zero)")]
    Shape {
        /// m.
        m: usize,
        /// k.
        k: usize,
        /// n.
        n: usize,
    },
    /// Entries too large for field arithmetic to equal integer arithmetic.
    #[error("entries too large: the product could wrap around the field")]
    Range,
    /// The sumcheck failed.
    #[error("sumcheck: {0}")]
    Sumcheck(#[from] sumcheck::Error),
    /// The sumcheck's final values are not those of A and B.
    #[error("the proof's values of A and B at the random point are wrong")]
    Opening,
}

const LIMIT: u128 = 1 << 62;

impl Statement<'_> {
    fn check(&self) -> Result<(), Error> {
        let (m, k, n) = (self.m, self.k, self.n);
        let ok = m > 0
            && k > 0
            && n > 0
            && m.checked_mul(k) == Some(self.a.len())
            && k.checked_mul(n) == Some(self.b.len())
            && m.checked_mul(n) == Some(self.c.len());
        if !ok {
            return Err(Error::Shape { m, k, n });
        }
        let max = |v: &[i64]| {
            v.iter()
                .map(|x| x.unsigned_abs() as u128)
                .max()
                .unwrap_or(0)
        };
        if max(self.a) * max(self.b) * (k as u128) >= LIMIT || max(self.c) >= LIMIT {
            return Err(Error::Range);
        }
        Ok(())
    }

    fn transcript(&self) -> Transcript {
        let mut bytes = Vec::with_capacity(24 + 8 * (self.a.len() + self.b.len() + self.c.len()));
        for d in [self.m, self.k, self.n] {
            bytes.extend_from_slice(&(d as u64).to_le_bytes());
        }
        for x in self.a.iter().chain(self.b).chain(self.c) {
            bytes.extend_from_slice(&x.to_le_bytes());
        }
        let mut t = Transcript::new(b"verity-zk matmul v1");
        t.absorb(b"statement", &keccak256(&bytes).0);
        t
    }

    /// The random point of C and the eq tables of its row and column parts.
    fn point(&self, t: &mut Transcript) -> (Vec<Ext>, Vec<Ext>) {
        let ri: Vec<Ext> = (0..vars(self.m)).map(|_| t.challenge()).collect();
        let rj: Vec<Ext> = (0..vars(self.n)).map(|_| t.challenge()).collect();
        (eq_table(&ri), eq_table(&rj))
    }

    /// `C̃(rᵢ, rⱼ)`.
    fn claim(&self, ei: &[Ext], ej: &[Ext]) -> Ext {
        self.c
            .chunks_exact(self.n)
            .zip(ei)
            .fold(Ext::ZERO, |s, (row, &w)| s + w * dot(row, ej))
    }

    /// `Ã(rᵢ, κ)` for every κ (padded to a power of two).
    fn a_row(&self, ei: &[Ext]) -> Vec<Ext> {
        let mut f = vec![Ext::ZERO; 1 << vars(self.k)];
        for (row, &w) in self.a.chunks_exact(self.k).zip(ei) {
            for (acc, &x) in f.iter_mut().zip(row) {
                *acc += w * from_i64(x);
            }
        }
        f
    }

    /// `B̃(κ, rⱼ)` for every κ (padded to a power of two).
    fn b_col(&self, ej: &[Ext]) -> Vec<Ext> {
        let mut g = vec![Ext::ZERO; 1 << vars(self.k)];
        for (acc, row) in g.iter_mut().zip(self.b.chunks_exact(self.n)) {
            *acc = dot(row, ej);
        }
        g
    }
}

/// `Σ v[i]·w[i]` for integers `v` and field weights `w`.
fn dot(v: &[i64], w: &[Ext]) -> Ext {
    v.iter()
        .zip(w)
        .fold(Ext::ZERO, |s, (&x, &y)| s + y * from_i64(x))
}

/// Prove `C = A·B`.
pub fn prove(s: &Statement<'_>) -> Result<Proof, Error> {
    s.check()?;
    let mut t = s.transcript();
    let (ei, ej) = s.point(&mut t);
    let (_, proof) = sumcheck::prove(s.a_row(&ei), s.b_col(&ej), &mut t);
    Ok(proof)
}

/// Check a proof of `C = A·B`.
pub fn verify(s: &Statement<'_>, proof: &Proof) -> Result<(), Error> {
    s.check()?;
    let mut t = s.transcript();
    let (ei, ej) = s.point(&mut t);
    let claim = s.claim(&ei, &ej);
    let out = sumcheck::verify(vars(s.k), claim, proof, &mut t)?;
    // Ã(rᵢ, r_κ) = Σ_κ eq(r_κ, κ)·Ã(rᵢ, κ), and likewise for B
    let ek = eq_table(&out.point);
    let dot = |v: &[Ext]| v.iter().zip(&ek).fold(Ext::ZERO, |a, (x, y)| a + *x * *y);
    if dot(&s.a_row(&ei)) != out.f || dot(&s.b_col(&ej)) != out.g {
        return Err(Error::Opening);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn product(m: usize, k: usize, n: usize, a: &[i64], b: &[i64]) -> Vec<i64> {
        let mut c = vec![0i64; m * n];
        for i in 0..m {
            for j in 0..n {
                c[i * n + j] = (0..k).map(|x| a[i * k + x] * b[x * n + j]).sum();
            }
        }
        c
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]
        #[test]
        fn true_products_verify_and_any_changed_entry_is_refused(
            m in 1usize..9, k in 1usize..17, n in 1usize..9,
            vals in proptest::collection::vec(-40_000i64..40_000, 2 * 16 * 16),
            which in 0usize..1000, delta in prop_oneof![Just(1i64), Just(-1), Just(1 << 20)],
        ) {
            let a = &vals[..m * k];
            let b = &vals[256..256 + k * n];
            let c = product(m, k, n, a, b);
            let st = Statement { m, k, n, a, b, c: &c };
            let proof = prove(&st).unwrap();
            prop_assert_eq!(verify(&st, &proof), Ok(()));
            // one changed output entry: the same proof fails, and so does a fresh one
            let mut c2 = c.clone();
            c2[which % c.len()] += delta;
            let st2 = Statement { c: &c2, ..st.clone() };
            prop_assert!(verify(&st2, &proof).is_err());
            prop_assert!(verify(&st2, &prove(&st2).unwrap()).is_err());
            // one changed weight: the claimed product no longer holds
            let mut b2 = b.to_vec();
            b2[which % b.len()] += delta;
            let st3 = Statement { b: &b2, ..st.clone() };
            prop_assert!(verify(&st3, &prove(&st3).unwrap()).is_err());
            // the proof survives its canonical encoding
            let back = Proof::from_bytes(&proof.to_bytes()).unwrap();
            prop_assert_eq!(verify(&st, &back), Ok(()));
        }
    }

    #[test]
    fn bad_shapes_and_wrapping_sizes_are_refused() {
        let st = Statement {
            m: 2,
            k: 2,
            n: 2,
            a: &[1, 2, 3],
            b: &[1, 2, 3, 4],
            c: &[0; 4],
        };
        assert!(matches!(prove(&st), Err(Error::Shape { .. })));
        let st = Statement {
            m: 1,
            k: 1,
            n: 0,
            a: &[1],
            b: &[],
            c: &[],
        };
        assert!(matches!(prove(&st), Err(Error::Shape { .. })));
        let big = [1i64 << 31; 4];
        let c = [0i64; 4];
        let st = Statement {
            m: 2,
            k: 2,
            n: 2,
            a: &big,
            b: &big,
            c: &c,
        };
        assert_eq!(prove(&st), Err(Error::Range));
    }
}
