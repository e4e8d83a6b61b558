//! Multilinear extensions. A table of `2ⁿ` values is the polynomial in `n` variables that equals the
//! table on `{0,1}ⁿ`; entry `i` sits at the point whose first variable is the highest bit of `i`.

use p3_field::PrimeCharacteristicRing;

use crate::field::Ext;

/// Fix the first variable of `t` at `r`: `t'[i] = t[i] + r·(t[i + half] − t[i])`.
pub fn fold(t: &[Ext], r: Ext) -> Vec<Ext> {
    let half = t.len() / 2;
    (0..half).map(|i| t[i] + r * (t[i + half] - t[i])).collect()
}

/// The value of `t`'s extension at `point` (one coordinate per variable; `t.len() == 2^point.len()`).
pub fn eval(t: &[Ext], point: &[Ext]) -> Ext {
    assert_eq!(t.len(), 1 << point.len(), "table size is not 2^variables");
    let mut cur = t.to_vec();
    for &r in point {
        cur = fold(&cur, r);
    }
    cur.first().copied().unwrap_or(Ext::ZERO)
}

/// The table `eq(point, ·)`: entry `i` is `∏ⱼ (xⱼ·rⱼ + (1 − xⱼ)(1 − rⱼ))` for the bits `x` of `i`, so that
/// `Σᵢ t[i]·eq[i] = eval(t, point)`.
pub fn eq_table(point: &[Ext]) -> Vec<Ext> {
    let mut t = vec![Ext::ONE];
    // each variable added becomes the new highest bit, so the first variable goes in last
    for &r in point.iter().rev() {
        let mut next = Vec::with_capacity(t.len() * 2);
        next.extend(t.iter().map(|&v| v * (Ext::ONE - r)));
        next.extend(t.iter().map(|&v| v * r));
        t = next;
    }
    t
}

/// Bits needed to index `n` entries (`⌈log₂ n⌉`, 0 for n ≤ 1).
pub fn vars(n: usize) -> usize {
    (usize::BITS - n.max(1).saturating_sub(1).leading_zeros()) as usize
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::field::{from_i64, lift};

    #[test]
    fn the_extension_agrees_with_the_table_and_eq_sums_to_it() {
        let t: Vec<Ext> = (0..8).map(|i| lift(from_i64(i * i - 3))).collect();
        for i in 0..8usize {
            let p: Vec<Ext> = (0..3)
                .map(|j| {
                    if i >> (2 - j) & 1 == 1 {
                        Ext::ONE
                    } else {
                        Ext::ZERO
                    }
                })
                .collect();
            assert_eq!(eval(&t, &p), t[i]);
        }
        let r: Vec<Ext> = (0..3).map(|j| lift(from_i64(10 + j))).collect();
        let e = eq_table(&r);
        let s = t.iter().zip(&e).fold(Ext::ZERO, |a, (x, y)| a + *x * *y);
        assert_eq!(s, eval(&t, &r));
        assert_eq!(vars(1), 0);
        assert_eq!(vars(2), 1);
        assert_eq!(vars(5), 3);
        assert_eq!(vars(8), 3);
    }
}
