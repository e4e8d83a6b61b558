//! Tensors as multilinear tables. A tensor of shape `(d₁, …, d_k)` is padded per axis to powers of two and
//! laid out row-major, so axis `i` owns `⌈log₂ dᵢ⌉` consecutive variables (first axis highest). Permuting
//! axes then permutes groups of variables, and fixing an axis fixes its group — the structure every op's
//! reduction uses. Padding entries are zero.

use p3_field::PrimeCharacteristicRing;

use crate::field::Ext;
use crate::mle::vars;

/// A padded shape.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Dims {
    /// The axis sizes.
    pub dims: Vec<usize>,
    /// Variables per axis.
    pub bits: Vec<usize>,
}

/// The extension at `r` of the indicator of `{i < d}` over `r.len()` variables (first = highest bit).
pub fn prefix_ind(d: usize, r: &[Ext]) -> Ext {
    match r.split_first() {
        None => {
            if d >= 1 {
                Ext::ONE
            } else {
                Ext::ZERO
            }
        }
        Some((&top, rest)) => {
            let half = 1usize << rest.len();
            if d <= half {
                (Ext::ONE - top) * prefix_ind(d, rest)
            } else {
                (Ext::ONE - top) + top * prefix_ind(d - half, rest)
            }
        }
    }
}

/// `eq(a, b) = ∏ (aᵢbᵢ + (1 − aᵢ)(1 − bᵢ))`.
pub fn eq_at(a: &[Ext], b: &[Ext]) -> Ext {
    a.iter().zip(b).fold(Ext::ONE, |acc, (x, y)| {
        acc * (*x * *y + (Ext::ONE - *x) * (Ext::ONE - *y))
    })
}

/// The point of the boolean index `i` over `n` variables.
pub fn bits_point(i: usize, n: usize) -> Vec<Ext> {
    (0..n)
        .map(|j| {
            if i >> (n - 1 - j) & 1 == 1 {
                Ext::ONE
            } else {
                Ext::ZERO
            }
        })
        .collect()
}

impl Dims {
    /// The padded layout of `shape`.
    pub fn new(shape: &[usize]) -> Dims {
        Dims {
            dims: shape.to_vec(),
            bits: shape.iter().map(|&d| vars(d)).collect(),
        }
    }

    /// Number of variables.
    pub fn nvars(&self) -> usize {
        self.bits.iter().sum()
    }

    /// Entries of the padded table.
    pub fn padded(&self) -> usize {
        1 << self.nvars()
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        self.dims.iter().product()
    }

    /// Whether the tensor has no element.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Padded position of a multi-index.
    pub fn at(&self, idx: &[usize]) -> usize {
        idx.iter()
            .zip(&self.bits)
            .fold(0usize, |acc, (&i, &b)| (acc << b) | i)
    }

    /// Padded position of every element, in row-major order.
    pub fn positions(&self) -> Vec<usize> {
        let mut out = Vec::with_capacity(self.len());
        let mut idx = vec![0usize; self.dims.len()];
        if self.is_empty() {
            return out;
        }
        loop {
            out.push(self.at(&idx));
            let mut ax = self.dims.len();
            loop {
                if ax == 0 {
                    return out;
                }
                ax -= 1;
                idx[ax] += 1;
                if idx[ax] < self.dims[ax] {
                    break;
                }
                idx[ax] = 0;
            }
        }
    }

    /// The padded table of row-major `dense` values.
    pub fn pad<T: Copy + Default>(&self, dense: &[T]) -> Vec<T> {
        let mut out = vec![T::default(); self.padded()];
        for (p, &v) in self.positions().into_iter().zip(dense) {
            out[p] = v;
        }
        out
    }

    /// Split a point into its per-axis coordinates.
    pub fn split<'a>(&self, point: &'a [Ext]) -> Vec<&'a [Ext]> {
        let mut out = Vec::with_capacity(self.bits.len());
        let mut at = 0;
        for &b in &self.bits {
            out.push(&point[at..at + b]);
            at += b;
        }
        out
    }

    /// The extension at `point` of the indicator of the real (non-padding) entries.
    pub fn ind_at(&self, point: &[Ext]) -> Ext {
        self.split(point)
            .iter()
            .zip(&self.dims)
            .fold(Ext::ONE, |acc, (r, &d)| acc * prefix_ind(d, r))
    }

    /// The indicator table.
    pub fn ind_table(&self) -> Vec<Ext> {
        let mut t = vec![Ext::ZERO; self.padded()];
        for p in self.positions() {
            t[p] = Ext::ONE;
        }
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::field::{from_i64, lift};
    use crate::mle::eval;

    #[test]
    fn indicators_and_padding_agree_with_tables() {
        let d = Dims::new(&[3, 5, 1, 2]);
        assert_eq!(d.nvars(), 6);
        let dense: Vec<i64> = (0..30).collect();
        let p = d.pad(&dense);
        assert_eq!(p[d.at(&[2, 4, 0, 1])], 29);
        assert_eq!(p.iter().filter(|&&v| v != 0).count(), 29);
        let r: Vec<Ext> = (0..6).map(|i| lift(from_i64(3 + 5 * i))).collect();
        assert_eq!(d.ind_at(&r), eval(&d.ind_table(), &r));
        for n in 0..5 {
            for k in 0..=(1usize << n) {
                let t: Vec<Ext> = (0..1usize << n)
                    .map(|i| if i < k { Ext::ONE } else { Ext::ZERO })
                    .collect();
                let r: Vec<Ext> = (0..n).map(|i| lift(from_i64(7 + i as i64))).collect();
                assert_eq!(prefix_ind(k, &r), eval(&t, &r));
            }
        }
    }
}
