//! A constant matrix applied along one axis whose columns hold few nonzero weights, as a linear
//! resize's interpolation (`EinSum {…p…, pq → …q…}`): `out[u, o, v] = Σ_i w[i, o] · x[u, i, v]` summed
//! over each column's nonzero taps only, where the product would multiply every `i` (most by zero).
//! The sum is exact in `i32` (checked on every run from the operand's magnitude, else the caller's
//! product runs) and is requantized by the product's own routine, so the integers are the product's.

use crate::error::ExecError;
use crate::kernels::{requantize_then, Range, RowHook, REQUANT_PART};

/// The most nonzero weights per column this form is kept for (a linear resize has two, a cubic four).
const MAX_TAPS: usize = 4;

/// A sparse matrix along one axis of its operand, laid out as `pre × k × post` (the axes before the
/// summed one, the summed one, the axes after it).
#[derive(Debug)]
pub(crate) struct AxisTaps {
    pre: usize,
    k: usize,
    n: usize,
    post: usize,
    /// Taps per column: every column padded to this many with index 0 and weight 0.
    taps: usize,
    /// `idx[t·n + o]`, `w[t·n + o]`: column `o`'s tap `t`.
    idx: Vec<u32>,
    w: Vec<i32>,
    /// The largest `Σ_t |w_t(o)|` of any column.
    wsum: u64,
}

impl AxisTaps {
    /// The form of `EinSum {a, b → out}` when `b` is the constant matrix `m` (`k × n`, row-major),
    /// `a` holds `b[0]` at some position and not `b[1]`, `out` is `a` with `b[1]` in that place, and
    /// every column has at most [`MAX_TAPS`] nonzeros (and at most half its length); else `None`.
    pub(crate) fn new(
        (a, b, out): (&[u8], &[u8], &[u8]),
        a_shape: &[usize],
        m: &[i32],
    ) -> Option<AxisTaps> {
        if b.len() != 2 || a.len() != out.len() || a.len() != a_shape.len() || b[0] == b[1] {
            return None;
        }
        let axis = a.iter().position(|&l| l == b[0])?;
        let distinct = (0..a.len()).all(|i| !a[..i].contains(&a[i]));
        let same_but_axis = (0..a.len()).all(|i| (i == axis) == (a[i] != out[i]));
        if !distinct || a.contains(&b[1]) || out[axis] != b[1] || !same_but_axis {
            return None;
        }
        let k = a_shape[axis];
        let n = m.len().checked_div(k)?;
        if n == 0 || m.len() != k * n {
            return None;
        }
        let mut cols: Vec<Vec<(u32, i32)>> = vec![Vec::new(); n];
        for (i, row) in m.chunks_exact(n).enumerate() {
            for (o, &w) in row.iter().enumerate() {
                if w != 0 {
                    cols[o].push((i as u32, w));
                }
            }
        }
        let taps = cols.iter().map(Vec::len).max().unwrap_or(0).max(1);
        if taps > MAX_TAPS || 2 * taps > k {
            return None;
        }
        let (mut idx, mut w) = (vec![0u32; taps * n], vec![0i32; taps * n]);
        for (o, col) in cols.iter().enumerate() {
            for (t, &(i, v)) in col.iter().enumerate() {
                idx[t * n + o] = i;
                w[t * n + o] = v;
            }
        }
        let wsum = cols
            .iter()
            .map(|c| c.iter().map(|&(_, v)| v.unsigned_abs() as u64).sum::<u64>())
            .max()
            .unwrap_or(0);
        Some(AxisTaps {
            pre: a_shape[..axis].iter().product(),
            k,
            n,
            post: a_shape[axis + 1..].iter().product(),
            taps,
            idx,
            w,
            wsum,
        })
    }

    /// The requantized output (`shift` as the product's), the fused chain `hook` run on it part by
    /// part; `None` when `x`'s magnitude could take a column's sum out of `i32` (or `x` is not of
    /// the planned shape): the caller then runs the product.
    pub(crate) fn run(
        &self,
        x: &[i32],
        range: Range,
        shift: i32,
        threads: usize,
        hook: &mut Option<RowHook<'_>>,
    ) -> Option<Result<Vec<i32>, ExecError>> {
        let (pre, k, n, post) = (self.pre, self.k, self.n, self.post);
        if x.len() != pre * k * post {
            return None;
        }
        let max = crate::kernels::max_abs_in(x, range) as u64;
        if self.wsum.checked_mul(max)? > i32::MAX as u64 {
            return None;
        }
        let out_len = pre * n * post;
        let mut out = crate::buffers::take_overwritten::<i32>(out_len);
        let hook = hook.take();
        // rows of `post` outputs (one output index), or of `n` (one `pre` index) when `post` is 1
        let row_len = if post == 1 { n } else { post };
        let th = if out_len >= 1 << 14 { threads } else { 1 };
        let group = (REQUANT_PART / row_len).max(1);
        let err = crate::par::FirstError::default();
        crate::par::rows(&mut out, row_len, th, 1, |r0, part| {
            for (g, rows) in part.chunks_mut(group * row_len).enumerate() {
                let first = r0 + g * group;
                for (j, row) in rows.chunks_mut(row_len).enumerate() {
                    let r = first + j;
                    if post == 1 {
                        self.gather_row(row, &x[r * k..(r + 1) * k]);
                    } else {
                        let (u, o) = (r / n, r % n);
                        let plane = &x[u * k * post..(u + 1) * k * post];
                        self.weigh_rows(row, plane, o);
                    }
                }
                if let Err(e) = requantize_then(rows, first * row_len, 0, shift, hook) {
                    return err.set(e);
                }
            }
        });
        Some(err.into_result().map(|()| out))
    }

    /// `dst[q] = Σ_t w_t(o) · plane[i_t(o)·post + q]`: output index `o`'s row from the rows of its taps.
    fn weigh_rows(&self, dst: &mut [i32], plane: &[i32], o: usize) {
        let (n, post) = (self.n, self.post);
        for t in 0..self.taps {
            let (i, w) = (self.idx[t * n + o] as usize, self.w[t * n + o]);
            let src = &plane[i * post..(i + 1) * post];
            if t == 0 {
                scale_row(dst, src, w);
            } else if w != 0 {
                add_scaled_row(dst, src, w);
            }
        }
    }

    /// `dst[o] = Σ_t w_t(o) · x[i_t(o)]` for one row `x` of `k` elements (the last axis resized).
    fn gather_row(&self, dst: &mut [i32], x: &[i32]) {
        #[cfg(target_arch = "x86_64")]
        if crate::simd::Isa::detect() == crate::simd::Isa::Avx512 {
            // SAFETY: the CPU has AVX-512 F (checked above); every index is below `k = x.len()`
            // (built so in `new`), `dst` holds `n` elements and the tables `taps · n`.
            unsafe { gather_row_avx512(dst, x, &self.idx, &self.w, self.taps) };
            return;
        }
        gather_row_run(dst, x, &self.idx, &self.w, self.taps);
    }
}

#[inline(always)]
fn scale_row_body(dst: &mut [i32], src: &[i32], w: i32) {
    for (d, &s) in dst.iter_mut().zip(src) {
        *d = s.wrapping_mul(w);
    }
}

#[inline(always)]
fn add_scaled_row_body(dst: &mut [i32], src: &[i32], w: i32) {
    for (d, &s) in dst.iter_mut().zip(src) {
        *d = d.wrapping_add(s.wrapping_mul(w));
    }
}

// The wrapping operations never wrap: `run` checks that every column's sum of |w|·max|x| fits i32.
crate::multiversion! {
    fn scale_row(dst: &mut [i32], src: &[i32], w: i32) -> () = scale_row_body
}

crate::multiversion! {
    fn add_scaled_row(dst: &mut [i32], src: &[i32], w: i32) -> () = add_scaled_row_body
}

#[inline(always)]
fn gather_row_body(dst: &mut [i32], x: &[i32], idx: &[u32], w: &[i32], taps: usize) {
    let n = dst.len();
    for (o, d) in dst.iter_mut().enumerate() {
        let mut acc = 0i32;
        for t in 0..taps {
            let v = x[idx[t * n + o] as usize];
            acc = acc.wrapping_add(v.wrapping_mul(w[t * n + o]));
        }
        *d = acc;
    }
}

crate::multiversion! {
    fn gather_row_run(dst: &mut [i32], x: &[i32], idx: &[u32], w: &[i32], taps: usize) -> () = gather_row_body
}

/// [`AxisTaps::gather_row`] 16 outputs at a time: a row of at most 32 elements is held in two
/// registers and its taps picked by a permutation, a longer one gathered.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn gather_row_avx512(dst: &mut [i32], x: &[i32], idx: &[u32], w: &[i32], taps: usize) {
    use std::arch::x86_64::*;
    let (n, k) = (dst.len(), x.len());
    let held = k <= 32;
    let low = if k >= 16 { 0xffffu16 } else { (1u16 << k) - 1 };
    let high = if k >= 32 {
        0xffffu16
    } else {
        ((1u32 << k.saturating_sub(16)) - 1) as u16
    };
    let (x0, x1) = if held {
        (
            _mm512_maskz_loadu_epi32(low, x.as_ptr()),
            _mm512_maskz_loadu_epi32(high, x.as_ptr().add(16.min(k))),
        )
    } else {
        (_mm512_setzero_si512(), _mm512_setzero_si512())
    };
    let mut o = 0;
    while o < n {
        let mask: u16 = if n - o >= 16 {
            0xffff
        } else {
            (1u16 << (n - o)) - 1
        };
        let mut acc = _mm512_setzero_si512();
        for t in 0..taps {
            let at = t * n + o;
            let i = _mm512_maskz_loadu_epi32(mask, idx.as_ptr().add(at).cast());
            let v = if held {
                _mm512_permutex2var_epi32(x0, i, x1)
            } else {
                _mm512_mask_i32gather_epi32::<4>(_mm512_setzero_si512(), mask, i, x.as_ptr().cast())
            };
            let wt = _mm512_maskz_loadu_epi32(mask, w.as_ptr().add(at));
            acc = _mm512_add_epi32(acc, _mm512_mullo_epi32(v, wt));
        }
        _mm512_mask_storeu_epi32(dst.as_mut_ptr().add(o), mask, acc);
        o += 16;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A linear resize's matrix (`k` to `n`, half-pixel centres, weights in 1/64) as the compiler
    /// lowers it: two taps per column, one at the edges.
    fn interpolation(k: usize, n: usize) -> Vec<i32> {
        let mut m = vec![0i32; k * n];
        for o in 0..n {
            let c = ((o as f64 + 0.5) * k as f64 / n as f64 - 0.5).clamp(0.0, (k - 1) as f64);
            let i0 = c.floor() as usize;
            let f = ((c - i0 as f64) * 64.0).round() as i32;
            m[i0 * n + o] += 64 - f;
            if f != 0 {
                m[(i0 + 1) * n + o] += f;
            }
        }
        m
    }

    fn product(x: &[i32], m: &[i32], (pre, k, n, post): (usize, usize, usize, usize)) -> Vec<i32> {
        let mut out = vec![0i32; pre * n * post];
        for u in 0..pre {
            for o in 0..n {
                for v in 0..post {
                    let s: i64 = (0..k)
                        .map(|i| m[i * n + o] as i64 * x[(u * k + i) * post + v] as i64)
                        .sum();
                    out[(u * n + o) * post + v] = s as i32;
                }
            }
        }
        out
    }

    /// Every axis position, row lengths on both sides of 16 and 32, several threads and every
    /// instruction set: the taps' sums equal the dense product's.
    #[test]
    fn taps_equal_the_dense_product() {
        let mut seed = 7u64;
        let mut next = move || {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((seed >> 33) as i32 % 255) - 127
        };
        for (pre, k, n, post) in [
            (3, 7, 14, 1),
            (2, 28, 224, 1),
            (1, 40, 90, 1),
            (5, 20, 47, 1),
            (2, 28, 224, 28),
            (4, 9, 3, 5),
            (1, 33, 66, 17),
        ] {
            let m = interpolation(k, n);
            let x: Vec<i32> = (0..pre * k * post).map(|_| next()).collect();
            let (a, b, out) = ([0u8, 1, 2], [1u8, 3], [0u8, 3, 2]);
            let taps = AxisTaps::new((&a, &b, &out), &[pre, k, post], &m).expect("sparse");
            assert!(taps.taps <= 2);
            let want = product(&x, &m, (pre, k, n, post));
            for isa in [
                crate::simd::Isa::Avx512,
                crate::simd::Isa::Avx2,
                crate::simd::Isa::Base,
            ] {
                crate::simd::Isa::cap(isa);
                for threads in [1, 3] {
                    let got = taps.run(&x, None, 0, threads, &mut None).expect("fits");
                    assert_eq!(
                        got.expect("no error"),
                        want,
                        "{pre}×{k}→{n}×{post}, {isa:?}"
                    );
                }
                crate::simd::Isa::cap(crate::simd::Isa::Avx512);
            }
        }
    }

    /// Dense matrices, other label layouts and sums that could leave `i32` are not taken.
    #[test]
    fn only_sparse_axis_maps_are_taken() {
        let m = interpolation(8, 16);
        let ok = AxisTaps::new((&[0, 1], &[1, 2], &[0, 2]), &[3, 8], &m);
        assert!(ok.is_some());
        let dense = vec![1i32; 8 * 16];
        assert!(AxisTaps::new((&[0, 1], &[1, 2], &[0, 2]), &[3, 8], &dense).is_none());
        // the new label in another place, or an operand label repeated
        assert!(AxisTaps::new((&[0, 1], &[1, 2], &[2, 0]), &[3, 8], &m).is_none());
        assert!(AxisTaps::new((&[1, 1], &[1, 2], &[1, 2]), &[8, 8], &m).is_none());
        let taps = ok.expect("sparse");
        let x = vec![i32::MAX / 32; 24];
        assert!(taps.run(&x, None, 0, 1, &mut None).is_none());
    }
}
