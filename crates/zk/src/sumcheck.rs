//! The sumcheck protocol for `Σ_{x ∈ {0,1}ⁿ} P(x) = claim`, where `P = Σ_t c_t · ∏_{k ∈ t} T_k` is a sum of
//! products of multilinear tables (a *virtual polynomial* of degree `d`, the longest product).
//!
//! Round `j` sends `s_j(0), s_j(2), …, s_j(d)` of `s_j(X) = Σ P(r₁..r_{j−1}, X, x)`; the verifier
//! completes `s_j(1) = claim − s_j(0)` (so `s_j(0) + s_j(1)` is the running claim by construction), draws
//! `r_j` and continues with `s_j(r_j)` (Lagrange interpolation on `0..=d`). What remains is a claim
//! that `P(r) = e`; the caller checks it from values it obtains for the tables at `r` (public data it
//! evaluates itself, or committed data it will open).
//! Soundness: `n·d/|Ext|` (Schwartz–Zippel per round).

use p3_field::{Field, PrimeCharacteristicRing};

use crate::channel::Channel;
use crate::field::Ext;
use crate::ZkError;

/// A sum of products of multilinear tables, all of `2ⁿ` entries.
#[derive(Clone, Debug, Default)]
pub struct Poly {
    /// The tables.
    pub tables: Vec<Vec<Ext>>,
    /// Terms: a coefficient and the tables it multiplies.
    pub terms: Vec<(Ext, Vec<usize>)>,
}

impl Poly {
    /// A polynomial over the given tables.
    pub fn new(tables: Vec<Vec<Ext>>) -> Poly {
        Poly {
            tables,
            terms: Vec::new(),
        }
    }

    /// Add the term `c · ∏ tables[ks]`.
    pub fn term(mut self, c: Ext, ks: &[usize]) -> Poly {
        self.terms.push((c, ks.to_vec()));
        self
    }

    /// The degree (longest product).
    pub fn degree(&self) -> usize {
        self.terms.iter().map(|t| t.1.len()).max().unwrap_or(0)
    }

    /// The sum over the whole cube.
    pub fn sum(&self) -> Ext {
        let n = self.tables.first().map_or(0, Vec::len);
        (0..n)
            .map(|i| {
                self.terms.iter().fold(Ext::ZERO, |acc, (c, ks)| {
                    acc + *c * ks.iter().fold(Ext::ONE, |p, &k| p * self.tables[k][i])
                })
            })
            .sum()
    }
}

/// `s(r)` from `s(0), …, s(d)`.
pub fn interpolate(vals: &[Ext], r: Ext) -> Ext {
    let d = vals.len();
    let mut out = Ext::ZERO;
    for (i, &v) in vals.iter().enumerate() {
        let mut num = Ext::ONE;
        let mut den = Ext::ONE;
        for j in 0..d {
            if j != i {
                num *= r - Ext::from_usize(j);
                den *= Ext::from_usize(i) - Ext::from_usize(j);
            }
        }
        out += v * num * den.inverse();
    }
    out
}

/// Run the sumcheck for `claim = Σ P` over `n` variables and degree `degree` (both sides). The prover
/// passes `Some(P)`; the verifier `None`. Returns the point `r` and the value `P(r)` the last round leaves;
/// the prover also gets every table's value at `r`.
pub fn run(
    ch: &mut Channel,
    n: usize,
    degree: usize,
    mut claim: Ext,
    poly: Option<Poly>,
) -> Result<(Vec<Ext>, Ext, Vec<Ext>), ZkError> {
    let mut poly = poly;
    if let Some(p) = &poly {
        debug_assert!(p.degree() <= degree, "degree");
        debug_assert!(p.tables.iter().all(|t| t.len() == 1 << n), "table sizes");
    }
    let mut point = Vec::with_capacity(n);
    for _ in 0..n {
        // s(1) is not sent: the verifier takes it as claim − s(0), which is the round's check
        let sent = ch.ext(b"sumcheck round", degree, || {
            let mut v = round_values(
                poly.as_ref()
                    .map(|p| p as &Poly)
                    .unwrap_or(&Poly::default()),
                degree,
            );
            let _s1 = v.remove(1);
            v
        })?;
        let mut vals = Vec::with_capacity(degree + 1);
        vals.push(sent[0]);
        vals.push(claim - sent[0]);
        vals.extend_from_slice(&sent[1..]);
        let r = ch.challenge();
        claim = interpolate(&vals, r);
        point.push(r);
        if let Some(p) = poly.as_mut() {
            for t in p.tables.iter_mut() {
                let half = t.len() / 2;
                for i in 0..half {
                    t[i] = t[i] + r * (t[i + half] - t[i]);
                }
                t.truncate(half);
            }
        }
    }
    let finals = poly
        .map(|p| p.tables.iter().map(|t| t[0]).collect())
        .unwrap_or_default();
    Ok((point, claim, finals))
}

fn round_values(p: &Poly, degree: usize) -> Vec<Ext> {
    let half = p.tables.first().map_or(0, |t| t.len() / 2);
    let mut out = vec![Ext::ZERO; degree + 1];
    let mut lines: Vec<Vec<Ext>> = vec![vec![Ext::ZERO; degree + 1]; p.tables.len()];
    for i in 0..half {
        for (k, t) in p.tables.iter().enumerate() {
            let (a, d) = (t[i], t[i + half] - t[i]);
            let l = &mut lines[k];
            l[0] = a;
            for x in 1..=degree {
                l[x] = l[x - 1] + d;
            }
        }
        for (c, ks) in &p.terms {
            for (x, o) in out.iter_mut().enumerate() {
                let mut prod = *c;
                for &k in ks {
                    prod *= lines[k][x];
                }
                *o += prod;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::field::{from_i64, lift};
    use crate::mle::eval;

    fn table(seed: i64, n: usize) -> Vec<Ext> {
        (0..1 << n)
            .map(|i| lift(from_i64((i as i64 * 7919 + seed * 31) % 1000 - 500)))
            .collect()
    }

    #[test]
    fn honest_sums_verify_and_the_end_value_is_the_polynomial_at_the_point() {
        for n in 0..6 {
            let tabs = vec![table(1, n), table(2, n), table(3, n)];
            let p = Poly::new(tabs.clone())
                .term(lift(from_i64(3)), &[0, 1, 2])
                .term(lift(from_i64(-2)), &[1])
                .term(Ext::ONE, &[0, 0]);
            let claim = p.sum();
            let mut pc = Channel::prover(b"t");
            let (pt, end, finals) = run(&mut pc, n, 3, claim, Some(p)).unwrap();
            let bytes = pc.into_proof();
            let mut vc = Channel::verifier(b"t", bytes.clone());
            let (vpt, vend, _) = run(&mut vc, n, 3, claim, None).unwrap();
            vc.finish().unwrap();
            assert_eq!((pt.clone(), end), (vpt, vend));
            let ev: Vec<Ext> = tabs.iter().map(|t| eval(t, &pt)).collect();
            assert_eq!(finals, ev);
            let want = lift(from_i64(3)) * ev[0] * ev[1] * ev[2] - lift(from_i64(2)) * ev[1]
                + ev[0] * ev[0];
            assert_eq!(end, want);
            // a wrong claim leaves an end value that is not the polynomial at the point
            let mut vc = Channel::verifier(b"t", bytes);
            let (pt2, end2, _) = run(&mut vc, n, 3, claim + Ext::ONE, None).unwrap();
            assert_eq!(pt2, pt);
            assert_ne!(end2, want);
        }
    }
}
