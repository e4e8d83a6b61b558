//! Sums of fractions `Σ_x p(x)/q(x)` over `2ⁿ` leaves, proved layer by layer (the GKR protocol for
//! fractional sums), which lets a lookup argument (logUp) run without committing to any inverse: the
//! prover commits only the looked-up values and the multiplicities.
//!
//! Layer `k` holds `2ᵏ` fractions; a parent is `(p₀q₁ + p₁q₀, q₀q₁)` of its two children (the child's first
//! variable is 0 or 1). The prover sends the root `(P, Q)`; each layer is reduced to the next by one
//! sumcheck of degree 3 over `eq(r, y)·(p₀q₁ + p₁q₀ + λ·q₀q₁)`, after which the prover names the four
//! child values at the sumcheck point and a challenge `μ` folds them into claims one layer down. The
//! result is a claim on `p` and `q` at a random leaf point, which the caller checks.

use p3_field::PrimeCharacteristicRing;

use crate::channel::Channel;
use crate::field::Ext;
use crate::mle::eq_table;
use crate::sumcheck::{self, Poly};
use crate::ZkError;

/// What [`fraction_sum`] establishes: `Σ p/q = root_p/root_q`, given `p(z) = p_at` and `q(z) = q_at`.
#[derive(Clone, Debug)]
pub struct FractionSum {
    /// Root numerator.
    pub root_p: Ext,
    /// Root denominator.
    pub root_q: Ext,
    /// The leaf point.
    pub point: Vec<Ext>,
    /// Claimed `p` there.
    pub p_at: Ext,
    /// Claimed `q` there.
    pub q_at: Ext,
}

fn eq_at(a: &[Ext], b: &[Ext]) -> Ext {
    a.iter().zip(b).fold(Ext::ONE, |acc, (x, y)| {
        acc * (*x * *y + (Ext::ONE - *x) * (Ext::ONE - *y))
    })
}

/// Run the protocol over `n` variables; the prover passes the leaves `(p, q)`.
pub fn fraction_sum(
    ch: &mut Channel,
    n: usize,
    leaves: Option<(Vec<Ext>, Vec<Ext>)>,
) -> Result<FractionSum, ZkError> {
    // prover: all layers, leaves last
    let layers: Vec<(Vec<Ext>, Vec<Ext>)> = match leaves {
        Some((p, q)) => {
            let mut layers = vec![(p, q)];
            while layers.last().map_or(0, |l| l.0.len()) > 1 {
                let (cp, cq) = layers.last().expect("a layer");
                let h = cp.len() / 2;
                let np: Vec<Ext> = (0..h)
                    .map(|i| cp[i] * cq[i + h] + cp[i + h] * cq[i])
                    .collect();
                let nq: Vec<Ext> = (0..h).map(|i| cq[i] * cq[i + h]).collect();
                layers.push((np, nq));
            }
            layers.reverse();
            layers
        }
        None => Vec::new(),
    };
    let proving = ch.proving();
    let root = ch.ext(b"fraction root", 2, || vec![layers[0].0[0], layers[0].1[0]])?;
    let (root_p, root_q) = (root[0], root[1]);
    let (mut cp, mut cq) = (root_p, root_q);
    let mut point: Vec<Ext> = Vec::new();
    for k in 0..n {
        let lambda = ch.challenge();
        let poly = proving.then(|| {
            let (p, q) = &layers[k + 1];
            let h = p.len() / 2;
            Poly::new(vec![
                eq_table(&point),
                p[..h].to_vec(),
                p[h..].to_vec(),
                q[..h].to_vec(),
                q[h..].to_vec(),
            ])
            .term(Ext::ONE, &[0, 1, 4])
            .term(Ext::ONE, &[0, 2, 3])
            .term(lambda, &[0, 3, 4])
        });
        let (r, end, finals) = sumcheck::run(ch, k, 3, cp + lambda * cq, poly)?;
        let v = ch.ext(b"fraction children", 4, || finals[1..5].to_vec())?;
        let (p0, p1, q0, q1) = (v[0], v[1], v[2], v[3]);
        if eq_at(&point, &r) * (p0 * q1 + p1 * q0 + lambda * q0 * q1) != end {
            ch.reject(format!(
                "fraction layer {k}: the children do not combine to the parent"
            ))?;
        }
        let mu = ch.challenge();
        cp = p0 + mu * (p1 - p0);
        cq = q0 + mu * (q1 - q0);
        point = std::iter::once(mu).chain(r).collect();
    }
    Ok(FractionSum {
        root_p,
        root_q,
        point,
        p_at: cp,
        q_at: cq,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::field::{from_i64, lift};
    use crate::mle::eval;
    use p3_field::Field;

    #[test]
    fn fraction_sums_reduce_to_a_leaf_claim() {
        for n in 0..7 {
            let p: Vec<Ext> = (0..1i64 << n).map(|i| lift(from_i64(i % 3))).collect();
            let q: Vec<Ext> = (0..1i64 << n).map(|i| lift(from_i64(i + 5))).collect();
            let want: Ext = p.iter().zip(&q).map(|(a, b)| *a * b.inverse()).sum();
            let mut c = Channel::prover(b"f");
            let s = fraction_sum(&mut c, n, Some((p.clone(), q.clone()))).unwrap();
            assert_eq!(s.root_p * s.root_q.inverse(), want);
            let mut v = Channel::verifier(b"f", c.into_proof());
            let t = fraction_sum(&mut v, n, None).unwrap();
            v.finish().unwrap();
            assert_eq!(t.point, s.point);
            assert_eq!(t.p_at, eval(&p, &t.point));
            assert_eq!(t.q_at, eval(&q, &t.point));
        }
    }
}
