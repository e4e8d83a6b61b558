//! Fast kernels for the heavy ops. They compute exactly what the reference executor computes: operands
//! are packed into contiguous blocks and multiplied with `i64` accumulation, which is exact whenever
//! `K * max|a| * max|b| + |bias| < 2^62` — checked on every call; otherwise the exact `i128` reference
//! path runs; below `2^53` (AVX-512) or `2^51` (AVX2) the products run in `f64`, exact there. The
//! instruction set is chosen at run time; integer results do not depend on it.

use std::borrow::Cow;

use crate::arith::{fit, rshift, rshift32, Shift};
use crate::elements::Elements;
use crate::error::ExecError;
use crate::exec::{label_strides, ConvSpec, EinSpec};
use crate::qgemm::{self, Level, PackedA, PackedB, Part, Parts};

const I64_SAFE: u128 = 1 << 62;

pub(crate) fn max_abs(x: &[i32]) -> u128 {
    max_abs_run(x) as u128
}

crate::multiversion! {
    fn max_abs_run(x: &[i32]) -> u32 = max_abs_body
}

/// The range an activation's values are known to lie in before it is read (the bounds of the `Clamp`
/// that made it), so that a kernel need not scan it for its magnitude.
pub type Range = Option<(i32, i32)>;

/// A known range of at most 16 bits (a wider one would only make a kernel take a slower path than its
/// values may allow).
fn narrow_range(r: Range) -> Option<(i32, i32)> {
    r.filter(|&(lo, hi)| lo >= -32768 && hi <= 32767)
}

/// `max|x|`: from its known range when that is narrow, else scanned.
pub(crate) fn max_abs_in(x: &[i32], r: Range) -> u128 {
    match narrow_range(r) {
        Some((lo, hi)) => lo.unsigned_abs().max(hi.unsigned_abs()) as u128,
        None => max_abs(x),
    }
}

/// The least and greatest of `x`: its known range when that is an 8-bit one (the 8-bit kernels' form
/// then follows from it), else scanned.
fn min_max_in(x: &[i32], r: Range) -> (i32, i32) {
    match r {
        Some((lo, hi)) if PackedA::offset_for(lo, hi).is_some() => (lo, hi),
        _ => qgemm::min_max(x),
    }
}

/// The largest `|v|` of any integers up to 32 bits.
pub(crate) fn max_abs_of<T: Copy + Into<i32>>(x: &[T]) -> u128 {
    x.iter().fold(0u32, |m, &v| m.max(v.into().unsigned_abs())) as u128
}

/// `Σ w[j]·x[j]` over the common length in wrapping `i32` (see [`dot8_body`]); on a CPU with AVX2, 16
/// products a `vpmaddwd` (the weights sign-extended to 16 bits; a pair of products of an 8-bit and a
/// 16-bit value never leaves `i32`), the same integers.
pub(crate) fn dot8(w: &[i8], x: &[i16]) -> i32 {
    #[cfg(target_arch = "x86_64")]
    if crate::simd::Isa::detect() != crate::simd::Isa::Base {
        // SAFETY: every level above `Base` has AVX2 (`Isa::detect`)
        return unsafe { dot8_avx2(w, x) };
    }
    dot8_body(w, x)
}

/// [`dot8`] on AVX2: 32 products per step into two registers of `i32` lanes, the tail one by one.
///
/// # Safety
/// The CPU must support AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn dot8_avx2(w: &[i8], x: &[i16]) -> i32 {
    use std::arch::x86_64::*;
    let n = w.len().min(x.len());
    let (wp, xp) = (w.as_ptr(), x.as_ptr());
    let (mut a0, mut a1) = (_mm256_setzero_si256(), _mm256_setzero_si256());
    let mut j = 0;
    while j + 32 <= n {
        // SAFETY: `j + 32 ≤ n` elements of both are readable
        let (w0, w1, x0, x1) = unsafe {
            (
                _mm256_cvtepi8_epi16(_mm_loadu_si128(wp.add(j) as *const __m128i)),
                _mm256_cvtepi8_epi16(_mm_loadu_si128(wp.add(j + 16) as *const __m128i)),
                _mm256_loadu_si256(xp.add(j) as *const __m256i),
                _mm256_loadu_si256(xp.add(j + 16) as *const __m256i),
            )
        };
        a0 = _mm256_add_epi32(a0, _mm256_madd_epi16(w0, x0));
        a1 = _mm256_add_epi32(a1, _mm256_madd_epi16(w1, x1));
        j += 32;
    }
    let mut lanes = [0i32; 8];
    // SAFETY: `lanes` holds 8 `i32`
    unsafe { _mm256_storeu_si256(lanes.as_mut_ptr() as *mut __m256i, _mm256_add_epi32(a0, a1)) };
    let tail = w[j..n]
        .iter()
        .zip(&x[j..n])
        .fold(0i32, |s, (&a, &b)| s.wrapping_add(a as i32 * b as i32));
    lanes.iter().fold(tail, |s, &v| s.wrapping_add(v))
}

/// `Σ w[j]·x[j]` over the common length, in `i32` lanes (the caller keeps the sum inside `i32`, so the
/// order of the additions does not matter): pairs of 16-bit products add into 32-bit lanes.
#[inline(always)]
fn dot8_body(w: &[i8], x: &[i16]) -> i32 {
    let n = w.len().min(x.len());
    let (w, x) = (&w[..n], &x[..n]);
    let mut lanes = [0i32; 32];
    let (wc, xc) = (w.chunks_exact(32), x.chunks_exact(32));
    let (wr, xr) = (wc.remainder(), xc.remainder());
    for (a, b) in wc.zip(xc) {
        for l in 0..32 {
            lanes[l] = lanes[l].wrapping_add((a[l] as i32).wrapping_mul(b[l] as i32));
        }
    }
    let tail = wr
        .iter()
        .zip(xr)
        .fold(0i32, |s, (&a, &b)| s.wrapping_add(a as i32 * b as i32));
    lanes.iter().fold(tail, |s, &v| s.wrapping_add(v))
}

#[inline(always)]
fn max_abs_body(x: &[i32]) -> u32 {
    x.iter().fold(0u32, |m, v| m.max(v.unsigned_abs()))
}

/// `c[m×n] += a[m×k] · b[k×n]` (`m = c.len() / n`), exact `i64` accumulation. Rows are processed four
/// at a time against column strips so each loaded strip of `b` feeds four accumulator rows.
#[inline(always)]
fn gemm_body(a: &[i32], b: &[i32], c: &mut [i64], k: usize, n: usize) {
    const NB: usize = 64;
    let m = c.len() / n.max(1);
    let mut i = 0;
    while i + 4 <= m {
        for j0 in (0..n).step_by(NB) {
            let w = NB.min(n - j0);
            let mut acc = [[0i64; NB]; 4];
            for kk in 0..k {
                let brow = &b[kk * n + j0..kk * n + j0 + w];
                let av = [
                    a[i * k + kk],
                    a[(i + 1) * k + kk],
                    a[(i + 2) * k + kk],
                    a[(i + 3) * k + kk],
                ];
                for (r, accr) in acc.iter_mut().enumerate() {
                    let ar = av[r];
                    // both factors visibly sign-extended from i32: one vpmuldq per lane pair on AVX2
                    for (cv, &bv) in accr[..w].iter_mut().zip(brow) {
                        *cv += ar as i64 * bv as i64;
                    }
                }
            }
            for (r, accr) in acc.iter().enumerate() {
                for (cv, &v) in c[(i + r) * n + j0..(i + r) * n + j0 + w]
                    .iter_mut()
                    .zip(&accr[..w])
                {
                    *cv += v;
                }
            }
        }
        i += 4;
    }
    for i in i..m {
        let crow = &mut c[i * n..(i + 1) * n];
        for (kk, &av) in a[i * k..(i + 1) * k].iter().enumerate() {
            if av == 0 {
                continue;
            }
            for (cv, &bv) in crow.iter_mut().zip(&b[kk * n..(kk + 1) * n]) {
                *cv += av as i64 * bv as i64;
            }
        }
    }
}

/// An AVX2 register tile: rows `i..i+R`, columns `j..j+8` of `c += a · b`, 64-bit lanes.
/// `_mm256_mul_epi32` multiplies the low signed 32 bits of each lane: `a` is broadcast as a
/// sign-extended `i64` and `b` is sign-extended from `i32`, so every product is exact.
///
/// # Safety
/// The CPU must support AVX2; `a` holds at least `(i+R)·k` and `b` at least `k·n` elements,
/// `c` at least `(i+R)·n`, and `j + 8 <= n`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn tile_avx2<const R: usize>(
    a: &[i64],
    b: &[i32],
    c: &mut [i64],
    k: usize,
    n: usize,
    i: usize,
    j: usize,
) {
    use std::arch::x86_64::*;
    let mut acc = [[_mm256_setzero_si256(); 2]; R];
    let (ap, bp) = (a.as_ptr(), b.as_ptr());
    for kk in 0..k {
        // SAFETY (all pointer reads): indices are within the bounds the caller guarantees.
        let row = bp.add(kk * n + j);
        let b0 = _mm256_cvtepi32_epi64(_mm_loadu_si128(row as *const __m128i));
        let b1 = _mm256_cvtepi32_epi64(_mm_loadu_si128(row.add(4) as *const __m128i));
        for (r, accr) in acc.iter_mut().enumerate() {
            // `a` is pre-widened to i64, so this is one broadcast load
            let av = _mm256_set1_epi64x(*ap.add((i + r) * k + kk));
            accr[0] = _mm256_add_epi64(accr[0], _mm256_mul_epi32(av, b0));
            accr[1] = _mm256_add_epi64(accr[1], _mm256_mul_epi32(av, b1));
        }
    }
    let cp = c.as_mut_ptr();
    for (r, accr) in acc.iter().enumerate() {
        let dst = cp.add((i + r) * n + j) as *mut __m256i;
        _mm256_storeu_si256(dst, _mm256_add_epi64(_mm256_loadu_si256(dst), accr[0]));
        let dst = dst.add(1);
        _mm256_storeu_si256(dst, _mm256_add_epi64(_mm256_loadu_si256(dst), accr[1]));
    }
}

/// The register tile for `rows` (1..=6) rows.
///
/// # Safety
/// As for [`tile_avx2`] with `R = rows`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
#[allow(clippy::too_many_arguments)]
unsafe fn tile_rows_avx2(
    rows: usize,
    a: &[i64],
    b: &[i32],
    c: &mut [i64],
    k: usize,
    n: usize,
    i: usize,
    j: usize,
) {
    match rows {
        6 => tile_avx2::<6>(a, b, c, k, n, i, j),
        5 => tile_avx2::<5>(a, b, c, k, n, i, j),
        4 => tile_avx2::<4>(a, b, c, k, n, i, j),
        3 => tile_avx2::<3>(a, b, c, k, n, i, j),
        2 => tile_avx2::<2>(a, b, c, k, n, i, j),
        _ => tile_avx2::<1>(a, b, c, k, n, i, j),
    }
}

/// `c += a · b` with AVX2 register tiles of up to 6 rows × 8 columns; the leftover columns run the
/// portable loop.
///
/// # Safety
/// The CPU must support AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn gemm_avx2(a: &[i32], b: &[i32], c: &mut [i64], k: usize, n: usize) {
    let m = c.len() / n.max(1);
    if a.len() < m * k || b.len() < k * n || n < 8 {
        return gemm_body(a, b, c, k, n);
    }
    let full = n / 8 * 8;
    let a: Vec<i64> = a[..m * k].iter().map(|&v| v as i64).collect();
    let a = &a[..];
    let mut i = 0;
    while i < m {
        let rows = (m - i).min(6);
        for j in (0..full).step_by(8) {
            tile_rows_avx2(rows, a, b, c, k, n, i, j);
        }
        if full < n {
            // leftover columns: run the same tile on zero-padded copies of the strips
            let tail = n - full;
            let mut bt = vec![0i32; k * 8];
            for kk in 0..k {
                bt[kk * 8..kk * 8 + tail].copy_from_slice(&b[kk * n + full..(kk + 1) * n]);
            }
            let mut ct = vec![0i64; (i + rows) * 8];
            tile_rows_avx2(rows, a, &bt, &mut ct, k, 8, i, 0);
            for r in i..i + rows {
                for (dst, &v) in c[r * n + full..(r + 1) * n]
                    .iter_mut()
                    .zip(&ct[r * 8..r * 8 + tail])
                {
                    *dst += v;
                }
            }
        }
        i += rows;
    }
}

fn gemm(a: &[i32], b: &[i32], c: &mut [i64], k: usize, n: usize) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU supports AVX2, checked just above; the function is otherwise safe Rust.
            unsafe { gemm_avx2(a, b, c, k, n) };
            return;
        }
    }
    gemm_body(a, b, c, k, n)
}

/// Sums of products of integers below this bound are exact in `f64` (53-bit significand): every
/// product and every partial sum is an integer of magnitude below `2^53`, so each rounding is exact
/// whatever the order of the additions.
const F64_EXACT: u128 = 1 << 53;

/// Columns of one `f64` panel of `b` (two AVX-512 registers).
const F64_PANEL: usize = 16;

/// `b` (`k × n`, row-major `i32`) as panels of [`F64_PANEL`] columns of `f64`, each `k × 16`
/// contiguous, the last one's missing columns zero.
fn f64_panels(b: &[i32], k: usize, n: usize, out: &mut Vec<f64>) {
    let panels = n.div_ceil(F64_PANEL);
    out.clear();
    out.resize(panels * k * F64_PANEL, 0.0);
    for (p, panel) in out.chunks_exact_mut(k * F64_PANEL).enumerate() {
        let (j0, w) = (p * F64_PANEL, F64_PANEL.min(n - p * F64_PANEL));
        for (kk, dst) in panel.chunks_exact_mut(F64_PANEL).enumerate() {
            for (d, &v) in dst[..w].iter_mut().zip(&b[kk * n + j0..kk * n + j0 + w]) {
                *d = v as f64;
            }
        }
    }
}

/// An AVX-512 register tile of `c = a · b` in `f64`: `R` rows of `a` (`k × R`: column `kk` of the
/// rows at `kk·R`) times one panel of `b` (`k × 16`), stored as `i64` into `c`'s rows (`ldc` apart),
/// the panel's first `w` columns. Exact when every `|Σ a·b|` partial sum stays below `2^53` (the
/// caller's bound): each fused multiply-add then rounds nothing, and the sums convert to `i64`
/// exactly.
///
/// # Safety
/// The CPU must support AVX-512 F and DQ; `a` holds `R·k` elements, `panel` `16·k`, `c` reaches row
/// `R − 1`'s column `w − 1` (`w ≤ 16`).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512dq")]
unsafe fn tile_f64<const R: usize>(
    a: &[f64],
    panel: &[f64],
    k: usize,
    c: &mut [i64],
    ldc: usize,
    w: usize,
) {
    use std::arch::x86_64::*;
    debug_assert!(a.len() >= R * k && panel.len() >= F64_PANEL * k && w <= F64_PANEL);
    debug_assert!(R == 0 || c.len() >= (R - 1) * ldc + w);
    let mut acc = [[_mm512_setzero_pd(); 2]; R];
    let (ap, bp) = (a.as_ptr(), panel.as_ptr());
    for kk in 0..k {
        // SAFETY (all pointer reads): within the lengths checked above.
        let b0 = _mm512_loadu_pd(bp.add(kk * F64_PANEL));
        let b1 = _mm512_loadu_pd(bp.add(kk * F64_PANEL + 8));
        for (r, accr) in acc.iter_mut().enumerate() {
            let av = _mm512_set1_pd(*ap.add(kk * R + r));
            accr[0] = _mm512_fmadd_pd(av, b0, accr[0]);
            accr[1] = _mm512_fmadd_pd(av, b1, accr[1]);
        }
    }
    // the lanes of columns 0..w in the two registers
    let lanes = |from: usize| ((1u32 << w.saturating_sub(from).min(8)) - 1) as __mmask8;
    let cp = c.as_mut_ptr();
    for (r, accr) in acc.iter().enumerate() {
        for (h, sums) in accr.iter().enumerate() {
            // SAFETY: the masked lanes lie within row r's first w columns (checked above).
            let dst = cp.add(r * ldc + 8 * h);
            _mm512_mask_storeu_epi64(dst, lanes(8 * h), _mm512_cvtpd_epi64(*sums));
        }
    }
}

/// `c = a · b` (`a`: `rows × k`, `b` as [`f64_panels`] of `k × n`, `c`: `rows × n`, every element
/// written) by [`tile_f64`], each block of rows of `a` converted to `f64` in `abuf`. Exact under the
/// caller's bound (`k·max|a|·max|b| < 2^53`).
///
/// # Safety
/// The CPU must support AVX-512 F and DQ; `a` holds `rows·k` elements, `panels` those of `n` columns.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512dq")]
unsafe fn gemm_f64(
    a: &[i32],
    panels: &[f64],
    c: &mut [i64],
    k: usize,
    n: usize,
    abuf: &mut Vec<f64>,
) {
    let rows = c.len() / n;
    let mut i = 0;
    while i < rows {
        // 12 rows at a time (24 accumulators), the rest in tiles of 8, 4, 2 and 1
        let r = match rows - i {
            12.. => 12,
            8..=11 => 8,
            4..=7 => 4,
            2 | 3 => 2,
            _ => 1,
        };
        f64_columns(a, i, r, k, abuf);
        for (p, panel) in panels.chunks_exact(k * F64_PANEL).enumerate() {
            let j = p * F64_PANEL;
            let (w, c) = (F64_PANEL.min(n - j), &mut c[i * n + j..]);
            match r {
                12 => tile_f64::<12>(abuf, panel, k, c, n, w),
                8 => tile_f64::<8>(abuf, panel, k, c, n, w),
                4 => tile_f64::<4>(abuf, panel, k, c, n, w),
                2 => tile_f64::<2>(abuf, panel, k, c, n, w),
                _ => tile_f64::<1>(abuf, panel, k, c, n, w),
            }
        }
        i += r;
    }
}

/// Rows `i .. i + r` of `a` (`k` columns) as `f64` in `abuf`, column after column (`r` values each).
#[inline(always)]
fn f64_columns(a: &[i32], i: usize, r: usize, k: usize, abuf: &mut Vec<f64>) {
    abuf.clear();
    abuf.resize(r * k, 0.0);
    for (dr, row) in a[i * k..(i + r) * k].chunks_exact(k).enumerate() {
        for (kk, &v) in row.iter().enumerate() {
            abuf[kk * r + dr] = v as f64;
        }
    }
}

/// Sums below this bound convert from `f64` to `i64` on AVX2 by adding `1.5·2^52` (their bits then
/// hold the integer in the significand's low bits, exactly) and subtracting that constant's bits.
const F64_EXACT_AVX2: u128 = 1 << 51;

/// Whether the CPU has fused multiply-adds (every AVX2 CPU made has them; checked all the same).
fn fma() -> bool {
    #[cfg(target_arch = "x86_64")]
    return std::arch::is_x86_feature_detected!("fma");
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// [`gemm_f64`] on AVX2 ([`tile_f64_avx2`]): tiles of up to 6 rows, each panel in two halves of 8
/// columns. Exact under the caller's bound (`k·max|a|·max|b| < 2^51`).
///
/// # Safety
/// The CPU must support AVX2 and FMA; `a` holds `rows·k` elements, `panels` those of `n` columns.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn gemm_f64_avx2(
    a: &[i32],
    panels: &[f64],
    c: &mut [i64],
    k: usize,
    n: usize,
    abuf: &mut Vec<f64>,
) {
    let rows = c.len() / n;
    let mut i = 0;
    while i < rows {
        let r = (rows - i).min(6);
        f64_columns(a, i, r, k, abuf);
        for (p, panel) in panels.chunks_exact(k * F64_PANEL).enumerate() {
            let j = p * F64_PANEL;
            let w = F64_PANEL.min(n - j);
            for h in 0..w.div_ceil(8) {
                let c = &mut c[i * n + j + 8 * h..];
                let w = (w - 8 * h).min(8);
                // SAFETY: this function's features; the sizes as `tile_f64_avx2` requires
                unsafe {
                    match r {
                        6 => tile_f64_avx2::<6>(abuf, panel, h, k, c, n, w),
                        5 => tile_f64_avx2::<5>(abuf, panel, h, k, c, n, w),
                        4 => tile_f64_avx2::<4>(abuf, panel, h, k, c, n, w),
                        3 => tile_f64_avx2::<3>(abuf, panel, h, k, c, n, w),
                        2 => tile_f64_avx2::<2>(abuf, panel, h, k, c, n, w),
                        _ => tile_f64_avx2::<1>(abuf, panel, h, k, c, n, w),
                    }
                }
            }
        }
        i += r;
    }
}

/// An AVX2 register tile of `c = a · b` in `f64`: `R` rows of `a` (`k × R`, as for [`tile_f64`])
/// times columns `8h .. 8h + 8` of one panel of `b`, fused multiply-adds in 4 lanes, stored as
/// `i64` into `c`'s rows (`ldc` apart), the first `w` of those 8 columns. Exact when every partial
/// sum stays below `2^51` in magnitude (the caller's bound).
///
/// # Safety
/// The CPU must support AVX2 and FMA; `a` holds `R·k` elements, `panel` `16·k`, `h ≤ 1`, `c` reaches
/// row `R − 1`'s column `w − 1` (`w ≤ 8`).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn tile_f64_avx2<const R: usize>(
    a: &[f64],
    panel: &[f64],
    h: usize,
    k: usize,
    c: &mut [i64],
    ldc: usize,
    w: usize,
) {
    use std::arch::x86_64::*;
    debug_assert!(a.len() >= R * k && panel.len() >= F64_PANEL * k && h <= 1 && w <= 8);
    debug_assert!(R == 0 || c.len() >= (R - 1) * ldc + w);
    let mut acc = [[_mm256_setzero_pd(); 2]; R];
    let (ap, bp) = (a.as_ptr(), panel.as_ptr().add(8 * h));
    for kk in 0..k {
        // SAFETY (all pointer reads): within the lengths checked above.
        let b0 = _mm256_loadu_pd(bp.add(kk * F64_PANEL));
        let b1 = _mm256_loadu_pd(bp.add(kk * F64_PANEL + 4));
        for (r, accr) in acc.iter_mut().enumerate() {
            let av = _mm256_broadcast_sd(&*ap.add(kk * R + r));
            accr[0] = _mm256_fmadd_pd(av, b0, accr[0]);
            accr[1] = _mm256_fmadd_pd(av, b1, accr[1]);
        }
    }
    let magic = _mm256_set1_pd(6_755_399_441_055_744.0);
    let lanes = _mm256_setr_epi64x(0, 1, 2, 3);
    let cp = c.as_mut_ptr();
    for (r, accr) in acc.iter().enumerate() {
        for (q, &sums) in accr.iter().enumerate() {
            let valid = w.saturating_sub(4 * q).min(4);
            if valid == 0 {
                continue;
            }
            let v = _mm256_sub_epi64(
                _mm256_castpd_si256(_mm256_add_pd(sums, magic)),
                _mm256_castpd_si256(magic),
            );
            // SAFETY: the stored lanes lie within row r's first w columns (checked above).
            let dst = cp.add(r * ldc + 4 * q);
            if valid == 4 {
                _mm256_storeu_si256(dst as *mut __m256i, v);
            } else {
                let mask = _mm256_cmpgt_epi64(_mm256_set1_epi64x(valid as i64), lanes);
                _mm256_maskstore_epi64(dst, mask, v);
            }
        }
    }
}

/// Most rows of a wide product computed between two checks for cancellation.
const ROW_BLOCK: usize = 192;

/// `c = a · b` for `batch` independent products, split across `threads` by rows.
/// `bound` is at least `k · max|a| · max|b|`: below `2^53` on AVX-512 ([`gemm_f64`]) or `2^51` on AVX2
/// ([`gemm_f64_avx2`]) the products run in `f64`, exact there, else in `i64`.
#[allow(clippy::too_many_arguments)]
fn batched_gemm(
    a: &[i32],
    b: &[i32],
    batch: usize,
    m: usize,
    k: usize,
    n: usize,
    bound: u128,
    threads: usize,
) -> Vec<i64> {
    // AVX-512's f64 form (Some(true)) or AVX2's (Some(false)), planned once for the CPU found
    let f64_form = match crate::simd::Isa::detect() {
        crate::simd::Isa::Avx512 if bound < F64_EXACT => Some(true),
        crate::simd::Isa::Avx2 if bound < F64_EXACT_AVX2 && fma() => Some(false),
        _ => None,
    }
    .filter(|_| cfg!(target_arch = "x86_64") && k > 0);
    let in_f64 = f64_form.is_some();
    // the f64 form writes every sum; the i64 one adds to zeros
    let mut c = match in_f64 {
        true => crate::buffers::take_overwritten(batch * m * n),
        false => crate::buffers::take(batch * m * n, 0i64),
    };
    if n == 0 || m == 0 {
        return c;
    }
    let work = batch * m * k * n;
    let rows = batch * m;
    let threads = if work >= 1 << 18 {
        threads.clamp(1, rows)
    } else {
        1
    };
    let tokens = crate::cancel::current();
    // about 2^24 multiply-accumulates between two checks (milliseconds), in blocks of 8 rows or more
    let block = ((1usize << 24) / (k * n).max(1)).clamp(8, ROW_BLOCK);
    let run_rows = |r0: usize, c: &mut [i64]| {
        // rows r0.. of the flattened (batch, m) space; split at batch boundaries and into blocks of
        // rows, between which a cancelled run stops
        let mut r = r0;
        let mut off = 0;
        let total = c.len() / n;
        // the f64 form of the batch's b and of a block's rows of a
        let (mut panels, mut panels_of, mut abuf) = (Vec::new(), usize::MAX, Vec::new());
        while off < total {
            if crate::cancel::any(&tokens) {
                return;
            }
            let bi = r / m;
            let i = r % m;
            let len = (m - i).min(total - off).min(block);
            let (a, b) = (
                &a[(bi * m + i) * k..(bi * m + i + len) * k],
                &b[bi * k * n..(bi + 1) * k * n],
            );
            let c = &mut c[off * n..(off + len) * n];
            #[cfg(target_arch = "x86_64")]
            if in_f64 {
                if panels_of != bi {
                    f64_panels(b, k, n, &mut panels);
                    panels_of = bi;
                }
                // SAFETY: AVX-512 F/DQ are present, or else AVX2 and FMA (`Isa::detect`, `fma`);
                // the slices have the sizes gemm_f64 and gemm_f64_avx2 require.
                unsafe {
                    match f64_form {
                        Some(true) => gemm_f64(a, &panels, c, k, n, &mut abuf),
                        _ => gemm_f64_avx2(a, &panels, c, k, n, &mut abuf),
                    }
                };
                r += len;
                off += len;
                continue;
            }
            gemm(a, b, c, k, n);
            r += len;
            off += len;
        }
    };
    crate::par::rows(&mut c, n, threads, 1, run_rows);
    c
}

/// Copy `x` (with `labels` over `shape`) into the row-major order of labels `order` with `sizes`.
fn pack<T: crate::buffers::Pooled>(
    x: &[T],
    labels: &[u8],
    shape: &[usize],
    order: &[u8],
    sizes: &[usize; 256],
) -> Vec<T> {
    let st = label_strides(labels, shape, order);
    let dims: Vec<usize> = order.iter().map(|&l| sizes[l as usize]).collect();
    let total: usize = dims.iter().product();
    let mut out = crate::buffers::reuse(total).unwrap_or_default();
    out.clear();
    out.reserve(total);
    if total == 0 {
        return out;
    }
    // the innermost axis is copied as a run (contiguous when its stride is 1)
    let (inner, inner_st) = (
        dims.last().copied().unwrap_or(1),
        st.last().copied().unwrap_or(0),
    );
    let outer_dims = &dims[..dims.len().saturating_sub(1)];
    let mut idx = vec![0usize; outer_dims.len()];
    for _ in 0..total / inner {
        let off: usize = idx.iter().zip(&st).map(|(i, s)| i * s).sum();
        if inner_st == 1 {
            out.extend_from_slice(&x[off..off + inner]);
        } else {
            out.extend((0..inner).map(|j| x[off + j * inner_st]));
        }
        for ax in (0..outer_dims.len()).rev() {
            idx[ax] += 1;
            if idx[ax] < outer_dims[ax] {
                break;
            }
            idx[ax] = 0;
        }
    }
    out
}

/// An operand packed ahead of time (constant weights), with its largest magnitude and, when every
/// element fits `i8`, its per-batch form for the 8-bit kernels.
#[derive(Clone, Debug)]
pub struct Packed {
    /// The packed `i32` elements, kept only when there is no 8-bit form (else packed again from the
    /// constant on the rare run whose other operand leaves 16 bits).
    data: Option<Vec<i32>>,
    max_abs: u128,
    narrow: Option<Narrow>,
}

/// A constant operand in the 8-bit kernels' form, one matrix per batch.
#[derive(Clone, Debug)]
enum Narrow {
    /// A constant `a` (`m×k`), the kernels' row side.
    A(Vec<Parts<PackedA>>),
    /// A constant `b` (`k×n`), the kernels' column side.
    B(Vec<Parts<PackedB>>),
}

/// How an `EinSum` maps onto a batched matrix product; depends only on labels and shapes.
#[derive(Clone, Debug)]
pub struct EinPlan {
    sizes: [usize; 256],
    packable: bool,
    a_order: Vec<u8>,
    b_order: Vec<u8>,
    c_order: Vec<u8>,
    bt: usize,
    m: usize,
    n: usize,
    k: usize,
    /// Axes of `c_order` that index C's rows (batch and m labels); the rest index its columns.
    row_axes: usize,
    /// The plan is for `b · a` (operands exchanged), so that C's columns are the output's innermost
    /// axis and the epilogue writes whole rows; the product is the same integers either way.
    swap: bool,
    /// Where C's rows and columns go in the output (and read the bias), tabulated on first use for the
    /// output and bias shapes of that use (a node's plan always sees the same ones).
    places: std::sync::OnceLock<Places>,
}

/// The output (and bias) offsets of an [`EinPlan`]'s product: an offset is a sum over C's axes, so it
/// splits into a part for the row (batch and `m` axes) and a part for the column (`n` axes).
#[derive(Clone, Debug)]
struct Places {
    /// The shapes they were tabulated for.
    out_shape: Vec<usize>,
    bias_shape: Option<Vec<usize>>,
    row_out: Vec<usize>,
    col_out: Vec<usize>,
    /// The bias's row and column parts.
    bias: Option<(Vec<usize>, Vec<usize>)>,
}

impl EinPlan {
    /// Classify labels into batch, row, column and contracted roles; the operands are exchanged when the
    /// output's innermost axis belongs to `a` alone (e.g. activations `[HW, C]` times weights `[C, O]`
    /// into an `[O, HW]` output), so that the output is written row by row.
    pub fn new(s: &EinSpec<'_>) -> EinPlan {
        let plan = EinPlan::roles(s);
        let a_only = |l: u8| s.a.contains(&l) && !s.b.contains(&l);
        match s.out.last() {
            Some(&l) if plan.packable && a_only(l) && plan.m > 1 => EinPlan {
                swap: true,
                ..EinPlan::roles(&s.swapped())
            },
            _ => plan,
        }
    }

    /// The spec as this plan multiplies it.
    fn oriented<'a>(&self, s: &EinSpec<'a>) -> EinSpec<'a> {
        if self.swap {
            s.swapped()
        } else {
            *s
        }
    }

    fn roles(s: &EinSpec<'_>) -> EinPlan {
        let sizes = s.label_sizes();
        let (mut bl, mut ml, mut nl, mut kl) = (vec![], vec![], vec![], vec![]);
        let mut packable = true;
        for &l in s.a.iter().chain(s.b).chain(s.out) {
            if bl.contains(&l) || ml.contains(&l) || nl.contains(&l) || kl.contains(&l) {
                continue;
            }
            match (s.a.contains(&l), s.b.contains(&l), s.out.contains(&l)) {
                (true, true, true) => bl.push(l),
                (true, false, true) => ml.push(l),
                (false, true, true) => nl.push(l),
                (true, true, false) => kl.push(l),
                // a size-1 label outside the four roles changes nothing
                _ => packable &= sizes[l as usize] == 1,
            }
        }
        let dim = |ls: &[u8]| ls.iter().map(|&l| sizes[l as usize]).product::<usize>();
        EinPlan {
            sizes,
            packable,
            bt: dim(&bl),
            m: dim(&ml),
            n: dim(&nl),
            k: dim(&kl),
            row_axes: bl.len() + ml.len(),
            a_order: bl.iter().chain(&ml).chain(&kl).copied().collect(),
            b_order: bl.iter().chain(&kl).chain(&nl).copied().collect(),
            c_order: bl.iter().chain(&ml).chain(&nl).copied().collect(),
            swap: false,
            places: std::sync::OnceLock::new(),
        }
    }

    /// The output and bias offsets of C's rows and columns for `s` (oriented) and a bias of
    /// `bias_shape` (aligned with the output's trailing axes).
    fn places_of(&self, s: &EinSpec<'_>, bias_shape: Option<&[usize]>) -> Places {
        let dims: Vec<usize> = self
            .c_order
            .iter()
            .map(|&l| self.sizes[l as usize])
            .collect();
        let part = |ds: &[usize], ss: &[usize]| -> Vec<usize> {
            let mut v = Vec::with_capacity(ds.iter().product());
            crate::exec::for_each_index(ds, &[ss.to_vec()], |_, offs| v.push(offs[0]));
            v
        };
        let split = |st: &[usize]| {
            (
                part(&dims[..self.row_axes], &st[..self.row_axes]),
                part(&dims[self.row_axes..], &st[self.row_axes..]),
            )
        };
        let (row_out, col_out) = split(&label_strides(s.out, s.out_shape, &self.c_order));
        let bias = bias_shape.map(|bshape| {
            let off = s.out.len() - bshape.len();
            split(&label_strides(&s.out[off..], bshape, &self.c_order))
        });
        Places {
            out_shape: s.out_shape.to_vec(),
            bias_shape: bias_shape.map(<[usize]>::to_vec),
            row_out,
            col_out,
            bias,
        }
    }

    /// [`EinPlan::places_of`], kept from the plan's first use when the shapes are that use's.
    fn places(&self, s: &EinSpec<'_>, bias_shape: Option<&[usize]>) -> Cow<'_, Places> {
        let p = self.places.get_or_init(|| self.places_of(s, bias_shape));
        if p.out_shape == s.out_shape && p.bias_shape.as_deref() == bias_shape {
            Cow::Borrowed(p)
        } else {
            Cow::Owned(self.places_of(s, bias_shape))
        }
    }

    /// Pack a constant `a` operand (of the node, whichever side the plan puts it on) ahead of time.
    pub fn pack_a<T: crate::buffers::Pooled + Into<i32>>(
        &self,
        s: &EinSpec<'_>,
        a: &[T],
    ) -> Option<Packed> {
        if self.swap {
            self.pack_right(&s.swapped(), a)
        } else {
            self.pack_left(s, a)
        }
    }

    /// Pack a constant `b` operand (of the node) ahead of time.
    pub fn pack_b<T: crate::buffers::Pooled + Into<i32>>(
        &self,
        s: &EinSpec<'_>,
        b: &[T],
    ) -> Option<Packed> {
        if self.swap {
            self.pack_left(&s.swapped(), b)
        } else {
            self.pack_right(s, b)
        }
    }

    /// [`EinPlan::pack_a`] of a constant, from its bytes or its `i16` elements when it holds them (no
    /// `i32` copy is made).
    pub fn pack_a_const(&self, s: &EinSpec<'_>, a: &Elements) -> Option<Packed> {
        match (a.bytes(), a.i16s()) {
            (Some(x), _) => self.pack_a(s, x),
            (None, Some(x)) => self.pack_a(s, x),
            (None, None) => self.pack_a(s, &a.transient()),
        }
    }

    /// [`EinPlan::pack_b`] of a constant, likewise.
    pub fn pack_b_const(&self, s: &EinSpec<'_>, b: &Elements) -> Option<Packed> {
        match (b.bytes(), b.i16s()) {
            (Some(x), _) => self.pack_b(s, x),
            (None, Some(x)) => self.pack_b(s, x),
            (None, None) => self.pack_b(s, &b.transient()),
        }
    }

    /// Pack the plan's left operand (`a` of the oriented spec).
    fn pack_left<T: crate::buffers::Pooled + Into<i32>>(
        &self,
        s: &EinSpec<'_>,
        a: &[T],
    ) -> Option<Packed> {
        self.packable.then(|| {
            // borrowed when already in the plan's order: no copy beside the 8-bit form
            let data = packed(a, s.a, s.a_shape, &self.a_order, &self.sizes);
            let (m, k) = (self.m, self.k);
            let narrow = (0..self.bt)
                .map(|bi| Parts::<PackedA>::weights(&data[bi * m * k..(bi + 1) * m * k], m, k))
                .collect::<Option<_>>()
                .map(Narrow::A);
            Packed {
                max_abs: max_abs_of(a),
                data: narrow
                    .is_none()
                    .then(|| data.iter().map(|&v| v.into()).collect()),
                narrow,
            }
        })
    }

    /// Pack the plan's right operand (`b` of the oriented spec).
    fn pack_right<T: crate::buffers::Pooled + Into<i32>>(
        &self,
        s: &EinSpec<'_>,
        b: &[T],
    ) -> Option<Packed> {
        self.packable.then(|| {
            let data = packed(b, s.b, s.b_shape, &self.b_order, &self.sizes);
            let (k, n) = (self.k, self.n);
            let narrow = (0..self.bt)
                .map(|bi| Parts::<PackedB>::weights(&data[bi * k * n..(bi + 1) * k * n], k, n))
                .collect::<Option<_>>()
                .map(Narrow::B);
            Packed {
                max_abs: max_abs_of(b),
                data: narrow
                    .is_none()
                    .then(|| data.iter().map(|&v| v.into()).collect()),
                narrow,
            }
        })
    }

    /// The 8-bit form of a packed `b` (`[batch][k][n]`), if every element fits `i8`.
    fn narrow_b<T: Copy + Into<i32>>(&self, b: &[T]) -> Option<Vec<PackedB>> {
        let (k, n) = (self.k, self.n);
        if !b.iter().all(|&v| (-128..=127).contains(&v.into())) {
            return None;
        }
        (0..self.bt)
            .map(|bi| PackedB::new(&b[bi * k * n..(bi + 1) * k * n], k, n))
            .collect()
    }

    /// The product by the 8-bit kernels when the constant side has 8- or 16-bit values and the other
    /// 8- or 16-bit ones (`None` otherwise): the constant side gives the `i8` operand (16-bit weights as
    /// their two [`Parts`]), the other the activations (16-bit ones as their two [`halves`]).
    fn narrow_product(
        &self,
        ap: &[i32],
        bp: &[i32],
        (pa, pb): (Option<&Packed>, Option<&Packed>),
        rb: Range,
        threads: usize,
        requant: Option<qgemm::Requant<'_>>,
    ) -> Option<(Acc, bool)> {
        let (bt, m, k, n) = (self.bt, self.m, self.k, self.n);
        let level = Level::detect();
        // (the rows' requantization: one batch of weights times whole activations)
        let requant = requant.filter(|_| bt == 1);
        if let (Some(Narrow::A(qa)), None) = (pa.and_then(|p| p.narrow.as_ref()), pb) {
            // constant a (weights) times 8- or 16-bit activations b, packed on every thread of the
            // run when the product is split too
            let batch = |bi: usize| &bp[bi * k * n..(bi + 1) * k * n];
            let th = if m * k * n >= 1 << 21 { threads } else { 1 };
            // the first batch's range, found once for whichever packing reads it
            let first = (bt > 0).then(|| min_max_in(batch(0), rb));
            // one batch of 16-bit activations by split weights: one pass over the values' pairs
            // where the sums allow it, packed straight from the activations
            if let (1, Some(_), Some((lo, hi))) = (bt, qa[0].lo.as_ref(), first) {
                let high = PackedA::offset_for(lo >> 8, hi >> 8);
                if let (None, Some(offset)) = (PackedA::offset_for(lo, hi), high) {
                    let range = (lo, hi, offset);
                    let w = qa[0].as_ref();
                    if let Some((c, ldc)) =
                        qgemm::gemm_pairs(w, batch(0), (k, n), range, threads, level)
                    {
                        return Some((Acc::Wide(c, ldc), false));
                    }
                }
            }
            // (sums in the whole form requantized when asked: its `whole` closure)
            return self
                .by_parts(
                    |bi, part| {
                        let x = batch(bi);
                        match part {
                            Part::Whole => {
                                let (lo, hi) = match (bi, first) {
                                    (0, Some(r)) => r,
                                    _ => min_max_in(x, rb),
                                };
                                let offset = PackedA::offset_for(lo, hi)?;
                                PackedB::shifted_par(x, 0, k, n, offset, th)
                            }
                            Part::High => PackedB::shifted_par(x, 8, k, n, halves(x)?, th),
                            Part::Low => PackedB::shifted_par(x, 0, k, n, false, th),
                        }
                    },
                    |bi| &qa[bi],
                    |w, act| {
                        let c = qgemm::gemm_requant(w, act, threads, level, requant);
                        (c, act.ldc())
                    },
                    |w, act| (qgemm::gemm(w, act, threads, level), act.ldc()),
                    |w, act| {
                        qgemm::gemm_joined(w.as_ref(), act.as_ref(), threads, level)
                            .map(|c| (c, act.hi.ldc()))
                    },
                )
                .map(|acc| {
                    let done = requant.is_some() && matches!(acc, Acc::Narrow(_));
                    (acc, done)
                });
        }
        let built: Vec<Parts<PackedB>>;
        let qb = match pb.and_then(|p| p.narrow.as_ref()) {
            Some(Narrow::B(q)) => q,
            _ => {
                // the activations' 8-bit check first, before any weights are packed
                halves(ap)?;
                built = self
                    .narrow_b(bp)?
                    .into_iter()
                    .map(|hi| Parts { hi, lo: None })
                    .collect();
                &built
            }
        };
        debug_assert_eq!(qb.len(), bt);
        let batch = |bi: usize| &ap[bi * m * k..(bi + 1) * m * k];
        // (activations on the row side: no per-row requantization, whole or in parts alike)
        let mul = |w: &PackedB, act: &PackedA| (qgemm::gemm(act, w, threads, level), w.ldc());
        self.by_parts(
            |bi, part| PackedA::part(batch(bi), m, k, part),
            |bi| &qb[bi],
            mul,
            mul,
            |w, act| {
                qgemm::gemm_joined(act.as_ref(), w.as_ref(), threads, level)
                    .map(|c| (c, w.hi.ldc()))
            },
        )
        .map(|acc| (acc, false))
    }

    /// The product of every batch's activations (packed by `pack`) by its weights (`weights`; `mul`
    /// gives the `i32` product of one part of them and one packing of activations, with its row
    /// stride; `mul_whole` the product of whole weights and activations, requantized where the caller
    /// asked): 8-bit activations whole when every batch's are, else each batch's 16-bit values as
    /// their two [`halves`]; with whole activations and whole weights the one product as it is, else
    /// every pair of parts' products joined in `i64` (`256·high + low` on each side), or the joined
    /// product `joined` gives at once (`i64`, with its row stride) where it can. `None` if a batch
    /// fits neither form.
    fn by_parts<'w, P, W: 'w>(
        &self,
        pack: impl Fn(usize, Part) -> Option<P>,
        weights: impl Fn(usize) -> &'w Parts<W>,
        mul_whole: impl Fn(&W, &P) -> (Vec<i32>, usize),
        mul: impl Fn(&W, &P) -> (Vec<i32>, usize),
        joined: impl Fn(&Parts<W>, &Parts<P>) -> Option<(Vec<i64>, usize)>,
    ) -> Option<Acc> {
        let (bt, m, n) = (self.bt, self.m, self.n);
        // every batch is packed before any product runs
        let whole = (0..bt)
            .map(|bi| pack(bi, Part::Whole))
            .collect::<Option<Vec<_>>>();
        let split = (0..bt).any(|bi| weights(bi).lo.is_some());
        if let (Some(acts), false) = (&whole, split) {
            return Some(Acc::Narrow(
                acts.iter()
                    .enumerate()
                    .map(|(bi, a)| mul_whole(&weights(bi).hi, a))
                    .collect(),
            ));
        }
        let mut whole = whole.map(|w| w.into_iter());
        let mut c = sums_buffer(bt * m * n);
        for bi in 0..bt {
            let acts = match whole.as_mut().and_then(|w| w.next()) {
                Some(a) => Parts { hi: a, lo: None },
                None => Parts {
                    hi: pack(bi, Part::High)?,
                    lo: Some(pack(bi, Part::Low)?),
                },
            };
            match joined(weights(bi), &acts) {
                // one batch's product read where it lies, its rows `ldc` apart
                Some((p, ldc)) if bt == 1 => {
                    crate::buffers::give(c);
                    return Some(Acc::Wide(p, ldc));
                }
                Some((p, ldc)) => {
                    for row in p.chunks_exact(ldc).take(m) {
                        c.extend_from_slice(&row[..n]);
                    }
                    crate::buffers::give(p);
                }
                None => join_parts(&mut c, weights(bi), &acts, (m, n), &mul),
            }
        }
        Some(Acc::Wide(c, n))
    }

    /// Run; `pa`/`pb` are the node's pre-packed operands when constant (`a`/`b` then give the operand's
    /// elements only if a path without the packed form needs them).
    #[allow(clippy::too_many_arguments)]
    pub fn run<'x>(
        &self,
        s: &EinSpec<'_>,
        (a, b): (Operand<'_, 'x>, Operand<'_, 'x>),
        (ra, rb): (Range, Range),
        pa: Option<&Packed>,
        pb: Option<&Packed>,
        bias: Option<(&[i32], &[usize], i32)>,
        shift: i32,
        threads: usize,
        hook: &mut Option<RowHook<'_>>,
    ) -> Result<Vec<i32>, ExecError> {
        if self.swap {
            let t = (b, a, rb, ra);
            self.run_oriented(&self.oriented(s), t, pb, pa, bias, shift, threads, hook)
        } else {
            self.run_oriented(s, (a, b, ra, rb), pa, pb, bias, shift, threads, hook)
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn run_oriented<'x>(
        &self,
        s: &EinSpec<'_>,
        (a, b, ra, rb): (Operand<'_, 'x>, Operand<'_, 'x>, Range, Range),
        pa: Option<&Packed>,
        pb: Option<&Packed>,
        bias: Option<(&[i32], &[usize], i32)>,
        shift: i32,
        threads: usize,
        hook: &mut Option<RowHook<'_>>,
    ) -> Result<Vec<i32>, ExecError> {
        let (ma, mb) = (
            pa.map_or_else(|| max_abs_in(a(), ra), |p| p.max_abs),
            pb.map_or_else(|| max_abs_in(b(), rb), |p| p.max_abs),
        );
        let bias_shift = bias.map_or(0, |(_, _, sh)| sh);
        let bias_max = bias.map_or(0, |(d, _, _)| max_abs(d) << bias_shift.clamp(0, 64));
        let bound = (self.k as u128)
            .saturating_mul(ma)
            .saturating_mul(mb)
            .saturating_add(bias_max);
        if !self.packable || bound >= I64_SAFE {
            return crate::exec::einsum_reference(s, a(), b(), bias, shift);
        }
        // a constant side with an 8-bit form and no i32 one is read by the 8-bit product from that
        // form (when the other side is not a constant too); the wide product packs it again
        let eight = |p: Option<&Packed>, q: Option<&Packed>| {
            p.is_some_and(|p| p.data.is_none()) && q.is_none()
        };
        let (a8, b8) = (eight(pa, pb), eight(pb, pa));
        let ap_of = || -> Cow<'_, [i32]> {
            match pa.and_then(|p| p.data.as_deref()) {
                Some(d) => Cow::Borrowed(d),
                None => packed(a(), s.a, s.a_shape, &self.a_order, &self.sizes),
            }
        };
        let bp_of = || -> Cow<'_, [i32]> {
            match pb.and_then(|p| p.data.as_deref()) {
                Some(d) => Cow::Borrowed(d),
                None => packed(b(), s.b, s.b_shape, &self.b_order, &self.sizes),
            }
        };
        let (ap, bp) = (
            if a8 { Cow::Borrowed(&[][..]) } else { ap_of() },
            if b8 { Cow::Borrowed(&[][..]) } else { bp_of() },
        );
        // where C's rows (labels batch, m) and columns (n) go in the output, with the bias
        let places = self.places(s, bias.map(|(_, bshape, _)| bshape));
        let (row_out, col_out) = (&places.row_out, &places.col_out);
        let bias_offs = places.bias.as_ref();
        let n_axes = self.c_order.len() - self.row_axes;
        let n = self.n;
        debug_assert_eq!(col_out.len(), if n_axes == 0 { 1 } else { n });
        let out_len: usize = s.out_shape.iter().product();
        let layout = RowLayout::new(col_out, bias_offs.map(|(_, c)| c.as_slice()));
        let rows = self.bt * self.m;
        // rows stored one after another (the usual layout) are split across threads
        let in_order = layout.contiguous
            && col_out[0] == 0
            && row_out.iter().enumerate().all(|(r, &o)| o == r * n);
        // requantization and the chain cost a few nanoseconds per element: 16 K elements or more
        let th = if rows * n >= 1 << 14 { threads } else { 1 };
        // one batch in order, one bias per row (or none): the product's kernel adds the bias and the
        // rounding term and shifts as it stores the sums, where no sum with its add can leave i32
        let row_bias = |r: usize| match (bias, &bias_offs) {
            (Some((bd, _, sh)), Some((brow, bcol))) => (bd[brow[r] + bcol[0]] as i128) << sh,
            _ => 0,
        };
        let adds = match self.bt == 1 && in_order && layout.bias_row_const && rows * n == out_len {
            true => kernel_adds((0..rows).map(row_bias), shift, bound),
            false => None,
        };
        let requant = adds.as_deref().map(|adds| qgemm::Requant {
            adds,
            shift: shift as u32,
        });
        let (mut c, requantized, ap, bp) =
            match self.narrow_product(&ap, &bp, (pa, pb), rb, threads, requant) {
                Some((c, done)) => (c, done, ap, bp),
                None => {
                    let ap = if a8 { ap_of() } else { ap };
                    let bp = if b8 { bp_of() } else { bp };
                    let (bt, m, k, n) = (self.bt, self.m, self.k, self.n);
                    let c = batched_gemm(&ap, &bp, bt, m, k, n, bound, threads);
                    (Acc::Wide(c, n), false, ap, bp)
                }
            };
        // the operands' packed copies are not read again
        for p in [ap, bp] {
            if let Cow::Owned(p) = p {
                crate::buffers::give(p);
            }
        }
        // one batch of `i32` sums laid out as the output (rows `ldc ≥ n` apart), with one bias per
        // row or one per column for every row: requantized in place, then the rows moved together
        if let Acc::Narrow(cs) = &mut c {
            let col_bias = match (bias, &bias_offs) {
                (Some((bd, _, sh)), Some((brow, bcol)))
                    if !layout.bias_row_const && brow.iter().all(|&o| o == brow[0]) =>
                {
                    bcol.iter()
                        .map(|&o| i64::try_from((bd[brow[0] + o] as i128) << sh).ok())
                        .collect::<Option<Vec<i64>>>()
                        .filter(|v| v.iter().all(|b| b.unsigned_abs() < 1 << 62))
                }
                _ => None,
            };
            let fits =
                in_order && (layout.bias_row_const || col_bias.is_some()) && rows * n == out_len;
            let ldc = cs.first().map_or(0, |c| c.1);
            if fits && cs.len() == 1 && n > 0 && ldc >= n && cs[0].0.len() == rows * ldc {
                let (mut out, _) = cs.remove(0);
                let hook = hook.take();
                let err = crate::par::FirstError::default();
                // short rows go to the chain several at a time (a call per row would cost more than
                // the row): end to end as they lie, or padded rows once moved together
                let per = match n < REQUANT_PART {
                    true => REQUANT_PART / n,
                    false => 1,
                };
                let gather = ldc > n && per > 1 && hook.is_some();
                let per = if ldc == n || gather { per } else { 1 };
                // (the product's kernel requantized the sums already where `requantized`)
                let row_then = |row: &mut [i32], r: usize, start: usize, hook| match &col_bias {
                    Some(cols) => requantize_cols_then(row, start, cols, shift, hook),
                    None if requantized => requantize_then(row, start, 0, 0, hook),
                    None => requantize_then(row, start, row_bias(r), shift, hook),
                };
                crate::par::rows(&mut out, ldc, th, 1, |r0, part| {
                    for (g, group) in part.chunks_mut(per * ldc).enumerate() {
                        let r = r0 + g * per;
                        if per == 1 {
                            if let Err(e) = row_then(&mut group[..n], r, r * n, hook) {
                                return err.set(e);
                            }
                            continue;
                        }
                        for (j, row) in group.chunks_mut(ldc).enumerate() {
                            if let Err(e) = row_then(&mut row[..n], r + j, 0, None) {
                                return err.set(e);
                            }
                        }
                        if let (Some(h), false) = (hook, gather) {
                            h(r * n, group);
                        }
                    }
                });
                err.into_result()?;
                if ldc > n {
                    // row r moves down to r·n (≤ r·ldc: never over a row not yet moved)
                    for r in 1..rows {
                        out.copy_within(r * ldc..r * ldc + n, r * n);
                    }
                    out.truncate(out_len);
                }
                if let (Some(h), true) = (hook, gather) {
                    // the moved rows to the chain a part of whole rows at a time
                    crate::par::rows(&mut out, n, th, per, |r0, part| {
                        for (g, group) in part.chunks_mut(per * n).enumerate() {
                            h((r0 + g * per) * n, group);
                        }
                    });
                }
                return Ok(out);
            }
        }
        // rows in order that cover the output write every element of it; otherwise the elements no
        // row reaches stay zero
        let mut out = match in_order && rows * n == out_len {
            true => crate::buffers::take_overwritten(out_len),
            false => {
                crate::par::filled(out_len, 0i32, if out_len >= 1 << 16 { threads } else { 1 })
            }
        };
        // a row's output is one slice only when the layout is contiguous
        let hook = if layout.contiguous { hook.take() } else { None };
        // row r of C into its place in `dst` (the output from element `base` on)
        let row_into = |r: usize, dst: &mut [i32], base: usize| -> Result<(), ExecError> {
            let bo = bias_offs
                .as_ref()
                .map(|(brow, bcol)| (brow[r], bcol.as_slice()));
            let place = (&mut *dst, row_out[r] - base, col_out.as_slice());
            match &c {
                Acc::Wide(c, ldc) => {
                    epilogue(&c[r * ldc..r * ldc + n], place, bias, bo, shift, layout)?
                }
                Acc::Narrow(c) => {
                    let (cb, ldc) = &c[r / self.m];
                    let i = r % self.m;
                    epilogue(&cb[i * ldc..i * ldc + n], place, bias, bo, shift, layout)?
                }
            }
            if let Some(h) = hook {
                let at = row_out[r] - base + col_out[0];
                h(base + at, &mut dst[at..at + n]);
            }
            Ok(())
        };
        if in_order && rows * n == out.len() {
            let err = crate::par::FirstError::default();
            crate::par::rows(&mut out, n, th, 1, |r0, part| {
                for j in 0..part.len() / n {
                    if let Err(e) = row_into(r0 + j, &mut part[j * n..], (r0 + j) * n) {
                        return err.set(e);
                    }
                }
            });
            err.into_result()?;
        } else {
            for r in 0..rows {
                row_into(r, &mut out, 0)?;
            }
        }
        match c {
            Acc::Narrow(c) => c.into_iter().for_each(|(c, _)| crate::buffers::give(c)),
            Acc::Wide(c, _) => crate::buffers::give(c),
        }
        Ok(out)
    }
}

/// An operand's elements, read only by the paths that need them (a constant operand held narrow is then
/// widened; its prepared form serves the others).
pub type Operand<'f, 'x> = &'f (dyn Fn() -> &'x [i32] + Sync);

/// Called by a kernel on consecutive output elements `start..start + row.len()`, once for each element
/// and as soon as they are final (a fused element-wise chain runs there while they sit in the cache).
/// A kernel that takes the hook out of its `Option` calls it on every element of its output.
pub type RowHook<'a> = &'a (dyn Fn(usize, &mut [i32]) + Sync);

/// Whether `x` holds 16-bit values the 8-bit kernels take as two halves, `x = 256·hi + lo` with
/// `hi = x >> 8` and `lo = x & 255` (in `0..=255`): `Some(offset)` if every `hi` lies in `0..=255`
/// (`offset` false) or every one in `-128..=127` (`offset` true), as for `0..=65535` or
/// `-32768..=32767`; `None` otherwise.
fn halves(x: &[i32]) -> Option<bool> {
    let (lo, hi) = qgemm::min_max(x);
    PackedA::offset_for(lo >> 8, hi >> 8)
}

crate::multiversion! {
    fn add_shifted_row(c: &mut [i64], p: &[i32], sh: u32) -> () = add_shifted_row_body
}

#[inline(always)]
fn add_shifted_row_body(c: &mut [i64], p: &[i32], sh: u32) {
    for (c, &v) in c.iter_mut().zip(p) {
        *c += (v as i64) << sh;
    }
}

/// The accumulators of an `EinSum`: `[batch·m × n]` in `i64`, rows the stride given apart (`n`, or
/// for one batch the joined product's padded row), or per batch in `i32` with a row stride.
enum Acc {
    Wide(Vec<i64>, usize),
    Narrow(Vec<(Vec<i32>, usize)>),
}

/// One of the multiversioned `add_shift_*` row loops.
type AddShift<T> = fn(&mut [i32], &[T], i64, u32, u32) -> (i64, i64);

/// Facts about an `EinSum`'s output layout, the same for every row.
#[derive(Clone, Copy)]
struct RowLayout {
    /// A row's output columns are consecutive.
    contiguous: bool,
    /// The bias is constant along a row (per output channel, the usual case).
    bias_row_const: bool,
    /// A row's bias elements are consecutive (a bias per output column, or one per element).
    bias_contiguous: bool,
}

impl RowLayout {
    fn new(col_off: &[usize], bias_col: Option<&[usize]>) -> RowLayout {
        let consecutive = |o: &[usize]| !o.is_empty() && o.windows(2).all(|w| w[1] == w[0] + 1);
        RowLayout {
            contiguous: consecutive(col_off),
            bias_row_const: bias_col.is_none_or(|b| b.iter().all(|&c| c == b[0])),
            bias_contiguous: bias_col.is_some_and(consecutive),
        }
    }
}

/// One row of accumulators into the output: `out[row_off + col_off[j]] = requantize(acc[j] + bias)`,
/// with the bias element at `bias_offs.0 + bias_offs.1[j]`.
fn epilogue<T: RowAcc>(
    acc: &[T],
    (out, row_off, col_off): (&mut [i32], usize, &[usize]),
    bias: Option<(&[i32], &[usize], i32)>,
    bias_offs: Option<(usize, &[usize])>,
    shift: i32,
    layout: RowLayout,
) -> Result<(), ExecError> {
    let bias_at = |j: usize| -> i64 {
        match (bias, bias_offs) {
            // fits i64: the caller's bound covers |bias| · 2^sh
            (Some((bd, _, sh)), Some((bo, bcol))) => ((bd[bo + bcol[j]] as i128) << sh) as i64,
            _ => 0,
        }
    };
    if let (Some(sh), true) = (Shift::new(shift), layout.contiguous) {
        // |acc| + |bias| < 2^62 (checked by the caller), so adding the half cannot overflow
        let dst = &mut out[row_off + col_off[0]..row_off + col_off[0] + acc.len()];
        if layout.bias_row_const {
            let b = if acc.is_empty() { 0 } else { bias_at(0) };
            return shift_row(dst, acc, b, sh, T::ADD_SHIFT);
        }
        // a row of bias elements one after another, in accumulator units `b << bsh` (fits i64)
        if let (Some((bd, _, bsh @ 0..=31)), Some((bo, bcol)), true) =
            (bias, bias_offs, layout.bias_contiguous)
        {
            let b = &bd[bo + bcol[0]..bo + bcol[0] + acc.len()];
            let (lo, hi) = T::ADD_BIAS_SHIFT(dst, acc, b, bsh as u32, sh.half, sh.right, sh.left);
            return check_row(lo, hi, sh.left);
        }
        let (mut lo, mut hi) = (0i64, 0i64);
        for (j, (d, &a)) in dst.iter_mut().zip(acc).enumerate() {
            let v = (a.into() + bias_at(j) + sh.half) >> sh.right;
            lo = lo.min(v);
            hi = hi.max(v);
            *d = (v as i32).wrapping_shl(sh.left);
        }
        return check_row(lo, hi, sh.left);
    }
    for (j, &a) in acc.iter().enumerate() {
        out[row_off + col_off[j]] = requantize(a.into() + bias_at(j), shift)?;
    }
    Ok(())
}

/// The row's range check: every `v << left` of values in `lo..=hi` fits `i32`.
fn check_row(lo: i64, hi: i64, left: u32) -> Result<(), ExecError> {
    if ((lo as i128) << left) < i32::MIN as i128 || ((hi as i128) << left) > i32::MAX as i128 {
        return Err(ExecError::Overflow);
    }
    Ok(())
}

/// `dst[j] = fit(rshift(acc[j] + add, shift))` for `|acc| + |add| < 2^62`: the rounding shift runs
/// branch-free (by `add_shift`, one of the multiversioned loops) and the range is checked once for the
/// row; a left shift is range-checked on the unshifted sums.
fn shift_row<T>(
    dst: &mut [i32],
    acc: &[T],
    add: i64,
    shift: Shift,
    add_shift: AddShift<T>,
) -> Result<(), ExecError> {
    let (lo, hi) = add_shift(dst, acc, add + shift.half, shift.right, shift.left);
    check_row(lo, hi, shift.left)
}

/// `dst[j] = ((acc[j] + add) >> right) << left` (wrapping to `i32`); returns the least and greatest
/// `(acc[j] + add) >> right` (0 included), for one range check per row. `|acc| + |add| < 2^63`.
#[inline(always)]
fn add_shift_body<T: Copy + Into<i64>>(
    dst: &mut [i32],
    acc: &[T],
    add: i64,
    right: u32,
    left: u32,
) -> (i64, i64) {
    let (mut lo, mut hi) = (0i64, 0i64);
    for (d, &a) in dst.iter_mut().zip(acc) {
        let v = (a.into() + add) >> right;
        lo = lo.min(v);
        hi = hi.max(v);
        *d = (v as i32).wrapping_shl(left);
    }
    (lo, hi)
}

/// Values per chunk of [`add_shift_narrow_body`].
const NARROW_CHUNK: usize = 64;

/// [`add_shift_body`] of `i32` sums in `i32` lanes (eight to a 256-bit register, where the `i64` loop
/// has no vector arithmetic shift before AVX-512): `a + add` wraps only past `i32`, which each chunk of
/// [`NARROW_CHUNK`] values detects (the sign of `(a ^ s) & (add ^ s)`) and then redoes in `i64`;
/// `s >> min(right, 31)` equals the `i64` shift of a sum inside `i32`. The same results and bounds.
#[inline(always)]
fn add_shift_narrow_body(
    dst: &mut [i32],
    acc: &[i32],
    add: i64,
    right: u32,
    left: u32,
) -> (i64, i64) {
    let Ok(add32) = i32::try_from(add) else {
        return add_shift_body(dst, acc, add, right, left);
    };
    let r = right.min(31);
    let (mut lo, mut hi) = (0i64, 0i64);
    for (d, a) in dst.chunks_mut(NARROW_CHUNK).zip(acc.chunks(NARROW_CHUNK)) {
        let (mut l, mut h, mut wrap) = (0i32, 0i32, 0i32);
        for (d, &a) in d.iter_mut().zip(a) {
            let s = a.wrapping_add(add32);
            wrap |= (a ^ s) & (add32 ^ s);
            let v = s >> r;
            l = l.min(v);
            h = h.max(v);
            *d = v.wrapping_shl(left);
        }
        let (l, h) = if wrap < 0 {
            add_shift_body(d, a, add, right, left)
        } else {
            (l as i64, h as i64)
        };
        lo = lo.min(l);
        hi = hi.max(h);
    }
    (lo, hi)
}

/// Where the taps of a pooling window fall along one axis: for output position `o`, the valid input
/// positions are `o·stride + t·dilation − pad` for `t` in `first[o]..last[o]` (an empty range when the
/// window lies wholly in the padding).
struct PoolAxis {
    stride: usize,
    dilation: usize,
    pad: usize,
    first: Vec<usize>,
    last: Vec<usize>,
}

impl PoolAxis {
    fn new(n: usize, outs: usize, kernel: u32, stride: u32, dilation: u32, pad: u32) -> PoolAxis {
        let (k, s, d, p) = (
            kernel as usize,
            stride as usize,
            dilation as usize,
            pad as usize,
        );
        let valid = |o: usize, t: usize| (o * s + t * d).checked_sub(p).is_some_and(|i| i < n);
        let (mut first, mut last) = (Vec::with_capacity(outs), Vec::with_capacity(outs));
        for o in 0..outs {
            let f = (0..k).find(|&t| valid(o, t)).unwrap_or(k);
            let l = (f..k)
                .take_while(|&t| valid(o, t))
                .last()
                .map_or(f, |t| t + 1);
            first.push(f);
            last.push(l);
        }
        PoolAxis {
            stride: s,
            dilation: d,
            pad: p,
            first,
            last,
        }
    }

    /// The outputs `a..b` whose every one of the `k` taps is valid (`a ≥ b` if there are none), and
    /// `k`; the rest lie before `a` or from `b` on.
    fn interior(&self) -> (usize, usize, usize) {
        let k = self
            .first
            .iter()
            .zip(&self.last)
            .map(|(f, l)| l - f)
            .max()
            .unwrap_or(0);
        let full = |o: &usize| self.first[*o] == 0 && self.last[*o] == k;
        let outs = self.first.len();
        match (0..outs).find(full) {
            Some(a) => (a, a + (a..outs).take_while(|o| full(o)).count(), k),
            None => (0, 0, k),
        }
    }

    /// Input position of tap `t` of output `o` (a valid tap).
    #[inline(always)]
    fn at(&self, o: usize, t: usize) -> usize {
        o * self.stride + t * self.dilation - self.pad
    }
}

crate::multiversion! {
    fn max_pool_plane(plane: &[i32], dst: &mut [i32], width: usize, rows: &PoolAxis, cols: &PoolAxis, tmp: &mut [i32]) -> () = max_pool_plane_body
}

/// One plane of a max pooling: per output row, the element-wise maximum of its valid input rows (a
/// vector loop over the width), then per output column the maximum of that row at its valid taps; a
/// window with no valid tap gives 0. The columns whose taps are all valid (all but a few at the edges)
/// take, tap by tap, the element-wise maximum of contiguous runs: the row is first split into its
/// `stride` phases (positions `i` with the same `i mod stride`, one after another in `tmp`), and tap
/// `t` of the columns `a..b` is then the run of phase `(t·d − p) mod s` from `a + ⌊(t·d − p) / s⌋`.
#[inline(always)]
fn max_pool_plane_body(
    plane: &[i32],
    dst: &mut [i32],
    width: usize,
    rows: &PoolAxis,
    cols: &PoolAxis,
    tmp: &mut [i32],
) {
    let ow = cols.first.len();
    let s = cols.stride;
    let (a, b, taps) = cols.interior();
    if s == 1 && rows.stride == 1 && ow == width && a < b {
        return max_pool_plane_same(plane, dst, width, (rows, cols), (a, b, taps), tmp);
    }
    let pw = width.div_ceil(s);
    let (row, phases) = tmp.split_at_mut(width);
    for (oy, out_row) in dst.chunks_mut(ow).enumerate() {
        let (f, l) = (rows.first[oy], rows.last[oy]);
        if f == l {
            out_row.fill(0);
            continue;
        }
        row.copy_from_slice(&plane[rows.at(oy, f) * width..][..width]);
        for t in f + 1..l {
            let src = &plane[rows.at(oy, t) * width..][..width];
            for (m, &v) in row.iter_mut().zip(src) {
                *m = (*m).max(v);
            }
        }
        for ox in (0..a).chain(b..ow) {
            let (f, l) = (cols.first[ox], cols.last[ox]);
            out_row[ox] = (f..l).map(|t| row[cols.at(ox, t)]).max().unwrap_or(0);
        }
        if a >= b {
            continue;
        }
        let ph: &[i32] = match s {
            1 => row,
            // a constant stride: the loop's loads are an interleaved group the compiler vectorizes
            2 => split_phases::<2>(row, phases, pw),
            3 => split_phases::<3>(row, phases, pw),
            _ => {
                for (i, c) in row.chunks(s).enumerate() {
                    for (r, &v) in c.iter().enumerate() {
                        phases[r * pw + i] = v;
                    }
                }
                phases
            }
        };
        let run = |t: usize| {
            let off = (t * cols.dilation) as isize - cols.pad as isize;
            let (q, r) = (
                off.div_euclid(s as isize),
                off.rem_euclid(s as isize) as usize,
            );
            // interior columns' taps are valid: a + q ≥ 0 and b + q ≤ the phase's length
            let start = r * pw + (a as isize + q) as usize;
            &ph[start..start + (b - a)]
        };
        let out = &mut out_row[a..b];
        out.copy_from_slice(run(0));
        for t in 1..taps {
            for (m, &v) in out.iter_mut().zip(run(t)) {
                *m = (*m).max(v);
            }
        }
    }
}

/// [`max_pool_plane_body`] for stride 1 along both axes and as many output as input columns (a "same"
/// pooling, as in an inception block): long vector loops over the whole plane instead of row by row.
/// The rows whose taps are all valid take each tap's maximum over the plane's rows at once (into
/// `dst`, as wide as the input), the rest row by row; then each interior column's maximum runs over
/// the flattened plane — a tap at column `ox − p + t·d` of its row is element `i − p + t·d` of the
/// flattened rows — from a copy of that vertical maximum, and the edge columns, which that run gave
/// their neighbours' row elements, are then recomputed from it one by one.
#[inline(always)]
fn max_pool_plane_same(
    plane: &[i32],
    dst: &mut [i32],
    width: usize,
    (rows, cols): (&PoolAxis, &PoolAxis),
    (a, b, taps): (usize, usize, usize),
    tmp: &mut [i32],
) {
    let (ra, rb, rtaps) = rows.interior();
    let oh = rows.first.len();
    // vertical maxima, row oy at dst[oy·width..]
    for oy in (0..ra.min(oh)).chain(rb.max(ra)..oh) {
        let (f, l) = (rows.first[oy], rows.last[oy]);
        let out = &mut dst[oy * width..(oy + 1) * width];
        if f == l {
            out.fill(i32::MIN);
            continue;
        }
        out.copy_from_slice(&plane[rows.at(oy, f) * width..][..width]);
        for t in f + 1..l {
            for (m, &v) in out
                .iter_mut()
                .zip(&plane[rows.at(oy, t) * width..][..width])
            {
                *m = (*m).max(v);
            }
        }
    }
    if ra < rb {
        let len = (rb - ra) * width;
        let out = &mut dst[ra * width..rb * width];
        let run = |t: usize| &plane[rows.at(ra, t) * width..][..len];
        out.copy_from_slice(run(0));
        for t in 1..rtaps {
            for (m, &v) in out.iter_mut().zip(run(t)) {
                *m = (*m).max(v);
            }
        }
    }
    // (the caller's scratch: a buffer per plane costs about as much as a small plane's maxima)
    let vert = &mut tmp[..oh * width];
    vert.copy_from_slice(&dst[..oh * width]);
    // interior columns over the flattened rows: elements a .. (oh − 1)·width + b
    let (lo, hi) = (a, (oh - 1) * width + b);
    let out = &mut dst[lo..hi];
    let run = |t: usize| {
        let start = lo + t * cols.dilation - cols.pad;
        &vert[start..start + (hi - lo)]
    };
    out.copy_from_slice(run(0));
    for t in 1..taps {
        for (m, &v) in out.iter_mut().zip(run(t)) {
            *m = (*m).max(v);
        }
    }
    for oy in 0..oh {
        let (vrow, orow) = (
            &vert[oy * width..(oy + 1) * width],
            &mut dst[oy * width..(oy + 1) * width],
        );
        if rows.first[oy] == rows.last[oy] {
            orow.fill(0);
            continue;
        }
        for ox in (0..a).chain(b..width) {
            let (f, l) = (cols.first[ox], cols.last[ox]);
            orow[ox] = (f..l).map(|t| vrow[cols.at(ox, t)]).max().unwrap_or(0);
        }
    }
}

/// `row` split into its `S` phases, phase `r` (positions `i·S + r`) from `phases[r·pw]` on (`pw =
/// ⌈len / S⌉`, the slots past a short phase's end left as they were).
#[inline(always)]
fn split_phases<'a, const S: usize>(row: &[i32], phases: &'a mut [i32], pw: usize) -> &'a [i32] {
    let whole = row.len() / S;
    for r in 0..S {
        let dst = &mut phases[r * pw..r * pw + whole];
        for (d, c) in dst.iter_mut().zip(row.chunks_exact(S)) {
            *d = c[r];
        }
    }
    for (r, &v) in row[whole * S..].iter().enumerate() {
        phases[r * pw + whole] = v;
    }
    phases
}

/// The fast executor's `AvgPool2d` without dilation: each window's sum from the sums along every
/// input row of each output column's taps, then those of each output row's rows (taps in the padding
/// add nothing, [`row_sums`], [`column_sums`]), and the reference's rounding `div_round(sum · 2^e, count)` (`e = −k`;
/// a negative `e` multiplies the count instead), the count the window's area or its valid taps —
/// taken exactly: the truncated `f64` quotient, corrected by its integer remainder (for a numerator
/// below 2^52 it lies within one of the floor). `None` where a numerator could reach 2^52 (the
/// reference's loop runs). Planes split across up to `threads` threads; a result past `i32` fails as
/// the reference does.
pub(crate) fn avg_pool(
    x: &[i32],
    xs: &[usize],
    w: &crate::ir::Window,
    out_shape: &[usize],
    (include_pad, k): (bool, i32),
    threads: usize,
) -> Option<Result<Vec<i32>, ExecError>> {
    let (planes, h, wd) = (xs[0] * xs[1], xs[2], xs[3]);
    let (oh, ow) = (out_shape[2], out_shape[3]);
    let area = w.kernel[0] as u128 * w.kernel[1] as u128;
    let e = -(k as i64);
    if w.dilation != [1, 1] || area == 0 || !(-24..=24).contains(&e) {
        return None;
    }
    let mx = max_abs(x);
    // |sum| ≤ area · max|x|: the rounding's numerator `2·(sum·2^e) + count·2^(−e)` and its
    // denominator below 2^52
    let (num, den) = ((area * mx) << e.max(0), area << (-e).max(0));
    if 2 * num + den >= 1 << 52 || 2 * den >= 1 << 52 {
        return None;
    }
    let g = AvgPlan::new(w, (h, wd), (oh, ow), (include_pad, e));
    let mut out = crate::buffers::take_overwritten(planes * oh * ow);
    // (split from 8 K input elements: a small plane's rows cost far more than their taps)
    let th = if x.len() >= 1 << 13 { threads } else { 1 };
    let plane = |q: usize| &x[q * h * wd..(q + 1) * h * wd];
    // every numerator and denominator inside i32, and so every quotient times its denominator (at
    // most the numerator plus the denominator): the planes in 32-bit lanes
    if 2 * num + 3 * den < 1 << 31 {
        let d = Divisors32::new(&g);
        if g.same.is_some() {
            // blocks of whole planes of about 16 K elements, so that a block, its row sums and its
            // output stay in the second-level cache between the passes
            let (d, pl) = (d.plane(&g), h * wd);
            let per = ((1 << 14) / pl).max(1);
            crate::par::rows(&mut out, pl, th, 1, |c0, part| {
                let mut sums = crate::buffers::take_overwritten(part.len().min(per * pl));
                for (j, dst) in part.chunks_mut(per * pl).enumerate() {
                    let at = (c0 + j * per) * pl;
                    avg_same(&x[at..at + dst.len()], dst, (&g, &d), &mut sums);
                }
                crate::buffers::give(sums);
            });
            return Some(Ok(out));
        }
        crate::par::rows(&mut out, oh * ow, th, 1, |c0, part| {
            let mut scratch = vec![0i32; (h + 2) * ow];
            for (j, dst) in part.chunks_mut((oh * ow).max(1)).enumerate() {
                avg_plane_narrow(plane(c0 + j), dst, (&g, &d), &mut scratch);
            }
        });
        return Some(Ok(out));
    }
    let err = crate::par::FirstError::default();
    crate::par::rows(&mut out, oh * ow, th, 1, |c0, part| {
        let (mut hs, mut acc) = (vec![0i64; h * ow], vec![0i64; ow]);
        for (j, dst) in part.chunks_mut((oh * ow).max(1)).enumerate() {
            let mut fit = true;
            row_sums(plane(c0 + j), &g, &mut hs);
            for (drow, &(a, b)) in dst.chunks_mut(ow.max(1)).zip(&g.rr) {
                column_sums(&hs, (a, b), &mut acc);
                for ((d, &s), &(ca, cb)) in drow.iter_mut().zip(&acc).zip(&g.cr) {
                    let count = g.count(b - a, cb - ca) as i64;
                    if count == 0 {
                        *d = 0;
                        continue;
                    }
                    let (n, dn) = match e >= 0 {
                        true => (s << e, count),
                        false => (s, count << -e),
                    };
                    // floor((2n + dn) / 2dn), the rounding of `div_round`: the truncated `f64`
                    // quotient lies within one of it (truncation, not `floor`, which would call
                    // into the C library here)
                    let (a2, b2) = (2 * n + dn, 2 * dn);
                    let mut q = (a2 as f64 / b2 as f64) as i64;
                    let r = a2 - q * b2;
                    q += (r >= b2) as i64 - (r < 0) as i64;
                    match i32::try_from(q) {
                        Ok(v) => *d = v,
                        Err(_) => fit = false,
                    }
                }
            }
            if !fit {
                return err.set(ExecError::Overflow);
            }
        }
    });
    Some(err.into_result().map(|()| out))
}

/// Valid input ranges, one per output row or column.
type Ranges = Vec<(usize, usize)>;

/// The geometry of [`avg_pool`]'s planes.
struct AvgPlan {
    /// Input rows, output columns, the column stride.
    h: usize,
    ow: usize,
    stride: usize,
    /// Each output row's and column's valid input range (empty in the padding).
    rr: Ranges,
    cr: Ranges,
    /// Per tap of a row, the output columns whose tap lies in the row (`o0..o1`) and the input column
    /// the first of them reads.
    taps: Vec<(usize, usize, usize)>,
    /// Whether a window counts its padding, and its area.
    include_pad: bool,
    area: usize,
    /// The rescale `e` (the sum times `2^e`, or the count times `2^−e`).
    e: i64,
    /// For a "same" pooling (stride 1, the output as large as the input, as in an inception block),
    /// the kernel's extent and its leading padding along the rows and along the columns.
    same: Option<[(usize, usize); 2]>,
}

impl AvgPlan {
    fn new(
        w: &crate::ir::Window,
        (h, wd): (usize, usize),
        (oh, ow): (usize, usize),
        (include_pad, e): (bool, i64),
    ) -> AvgPlan {
        let rows = PoolAxis::new(h, oh, w.kernel[0], w.stride[0], 1, w.pads[0]);
        let cols = PoolAxis::new(wd, ow, w.kernel[1], w.stride[1], 1, w.pads[1]);
        let ranges = |a: &PoolAxis, outs: usize| -> Ranges {
            (0..outs)
                .map(|o| match a.first[o] < a.last[o] {
                    true => (
                        o * a.stride + a.first[o] - a.pad,
                        o * a.stride + a.last[o] - a.pad,
                    ),
                    false => (0, 0),
                })
                .collect()
        };
        let taps = (0..w.kernel[1] as usize)
            .filter_map(|t| {
                let at = |o: usize| {
                    (o * cols.stride + t)
                        .checked_sub(cols.pad)
                        .filter(|&i| i < wd)
                };
                let o0 = (0..ow).find(|&o| at(o).is_some())?;
                let o1 = (o0..ow).take_while(|&o| at(o).is_some()).last()? + 1;
                Some((o0, o1, at(o0)?))
            })
            .collect();
        AvgPlan {
            h,
            ow,
            stride: cols.stride,
            rr: ranges(&rows, oh),
            cr: ranges(&cols, ow),
            taps,
            include_pad,
            area: w.kernel[0] as usize * w.kernel[1] as usize,
            e,
            same: (w.stride == [1, 1] && (oh, ow) == (h, wd))
                .then_some([0, 1].map(|a| (w.kernel[a] as usize, w.pads[a] as usize)))
                .filter(|axes| axes.iter().all(|&(k, p)| p < k)),
        }
    }

    /// The count a window of `rows` valid rows and `cols` valid columns divides by (0 for none: its
    /// average is 0).
    fn count(&self, rows: usize, cols: usize) -> usize {
        match self.include_pad {
            true if rows > 0 && cols > 0 => self.area,
            true => 0,
            false => rows * cols,
        }
    }
}

/// One plane's sums along its rows ([`avg_pool`]): `hs` (`h · ow` values) takes each input row's sums
/// of every output column's taps — tap by tap, at stride 1 a slice of the row added to a slice of the
/// sums. (Functions, not closures, so that they take the caller's target features when inlined.)
#[inline(always)]
fn row_sums<T: Copy + Default + std::ops::AddAssign + From<i32>>(
    plane: &[i32],
    g: &AvgPlan,
    hs: &mut [T],
) {
    let (h, ow) = (g.h, g.ow.max(1));
    let wd = plane.len() / h.max(1);
    for (src, hrow) in plane.chunks_exact(wd.max(1)).zip(hs.chunks_exact_mut(ow)) {
        hrow.fill(T::default());
        for &(o0, o1, i0) in &g.taps {
            match g.stride {
                1 => {
                    for (d, &v) in hrow[o0..o1].iter_mut().zip(&src[i0..i0 + (o1 - o0)]) {
                        *d += T::from(v);
                    }
                }
                st => {
                    for (d, ix) in hrow[o0..o1].iter_mut().zip((i0..).step_by(st)) {
                        *d += T::from(src[ix]);
                    }
                }
            }
        }
    }
}

/// An output row's window sums ([`avg_pool`]) into `acc`: the row sums `hs` of its valid input rows
/// `a..b`, added.
#[inline(always)]
fn column_sums<T: Copy + Default + std::ops::AddAssign>(
    hs: &[T],
    (a, b): (usize, usize),
    acc: &mut [T],
) {
    acc.fill(T::default());
    for hrow in hs.chunks_exact(acc.len().max(1)).take(b).skip(a) {
        for (s, &v) in acc.iter_mut().zip(hrow) {
            *s += v;
        }
    }
}

/// [`avg_pool`]'s divisors in 32-bit lanes: per count of valid rows `rc` (0 to the kernel's height)
/// and output column, the rounding's `den = count·2^(−e)`, `2·den` and `1 / (2·den)` (for no valid
/// tap: 0, 2 and ½, so the result is 0). The caller's bound keeps them inside `i32`.
struct Divisors32 {
    den: Vec<i32>,
    den2: Vec<i32>,
    inv: Vec<f64>,
}

impl Divisors32 {
    fn new(g: &AvgPlan) -> Divisors32 {
        let kh = g.rr.iter().map(|&(a, b)| b - a).max().unwrap_or(0);
        let (mut den, mut den2, mut inv) = (Vec::new(), Vec::new(), Vec::new());
        for rc in 0..=kh {
            for &(ca, cb) in &g.cr {
                let count = g.count(rc, cb - ca) as i64;
                let (d, d2) = match count {
                    0 => (0, 2),
                    _ => (count << (-g.e).max(0), 2 * (count << (-g.e).max(0))),
                };
                den.push(d as i32);
                den2.push(d2 as i32);
                inv.push(1.0 / d2 as f64);
            }
        }
        Divisors32 { den, den2, inv }
    }
}

impl Divisors32 {
    /// The divisors of each position of a plane (`oh · ow`), in the plane's order.
    fn plane(&self, g: &AvgPlan) -> Divisors32 {
        fn rows<T: Copy>(v: &[T], g: &AvgPlan) -> Vec<T> {
            let ow = g.ow;
            g.rr.iter()
                .flat_map(|&(a, b)| v[(b - a) * ow..(b - a + 1) * ow].iter().copied())
                .collect()
        }
        Divisors32 {
            den: rows(&self.den, g),
            den2: rows(&self.den2, g),
            inv: rows(&self.inv, g),
        }
    }
}

crate::multiversion! {
    fn avg_same(x: &[i32], dst: &mut [i32], gd: (&AvgPlan, &Divisors32), sums: &mut [i32]) -> () = avg_same_body
}

/// Whole planes of a "same" [`avg_pool`] in 32-bit lanes (`x` and `dst` the same number of planes, `d`
/// a plane's divisors, [`Divisors32::plane`], `sums` at least as long as `x`), in long vector runs
/// over the flattened planes instead of row by row (a 17-wide row pays a loop's setup per pass): each
/// element's sum of `x[i − p + t]` over the kernel's columns `t` (its row's taps, for every column
/// whose taps all lie in its row), then each of those sums' over the kernel's rows, `w` apart (its
/// plane's rows, for every row whose taps all lie in its plane); the edge columns and rows, which
/// those runs gave a neighbouring row's or plane's elements, are then summed again from their valid
/// taps alone. Every partial sum is a sum of at most a window's elements: inside the caller's bound.
/// Then the rounding of [`avg_plane_narrow_body`].
#[inline(always)]
fn avg_same_body(x: &[i32], dst: &mut [i32], (g, d): (&AvgPlan, &Divisors32), sums: &mut [i32]) {
    let Some([(kh, ph), (kw, pw)]) = g.same else {
        return;
    };
    let (h, w) = (g.h, g.ow);
    let (rs, up) = (&mut sums[..x.len()], g.e.max(0) as u32);
    sum_shifted(x, rs, pw, kw, 1);
    let right = kw - 1 - pw;
    let edges = |n: usize, lead: usize, trail: usize| {
        (0..lead.min(n)).chain(n.saturating_sub(trail).max(lead.min(n))..n)
    };
    // (an edge column's taps one at a time down all its rows: short loops, no per-element setup)
    for ox in edges(w, pw, right) {
        let (a, b) = (ox.saturating_sub(pw), (ox + right + 1).min(w));
        for (i, &v) in (ox..).step_by(w).zip(x[a..].iter().step_by(w)) {
            rs[i] = v;
        }
        for c in a + 1..b {
            for (i, &v) in (ox..).step_by(w).zip(x[c..].iter().step_by(w)) {
                rs[i] += v;
            }
        }
    }
    sum_shifted(rs, dst, ph * w, kh, w);
    let below = kh - 1 - ph;
    for (src, out) in rs.chunks_exact(h * w).zip(dst.chunks_exact_mut(h * w)) {
        for oy in edges(h, ph, below) {
            let orow = &mut out[oy * w..(oy + 1) * w];
            let a = oy.saturating_sub(ph);
            orow.copy_from_slice(&src[a * w..(a + 1) * w]);
            for r in a + 1..(oy + below + 1).min(h) {
                for (s, &v) in orow.iter_mut().zip(&src[r * w..(r + 1) * w]) {
                    *s += v;
                }
            }
        }
        for (((q, &dn), &d2), &r) in out.iter_mut().zip(&d.den).zip(&d.den2).zip(&d.inv) {
            *q = round_quotient(2 * (*q << up) + dn, d2, r);
        }
    }
}

/// `⌊n / d2⌋` for `|n| < 2^31` and `0 < d2 < 2^31`, `inv` being `1 / d2` rounded: the truncated
/// product `n · inv` in `f64` (a relative error below 2^−51 on a quotient below 2^31: within one of
/// the floor), corrected by the remainder.
#[inline(always)]
fn round_quotient(n: i32, d2: i32, inv: f64) -> i32 {
    let p = n as f64 * inv;
    // SAFETY: `p` is finite and |p| ≤ |n| < 2^31 (`inv` ≤ 1), so it truncates to an `i32`; the
    // unchecked form is one vector instruction where `as` clamps lane by lane
    let t: i32 = unsafe { p.to_int_unchecked() };
    let rem = n - t * d2;
    t + (rem >= d2) as i32 - (rem < 0) as i32
}

/// `out[i] = Σ_{t < k} src[i − lead + t·step]` for every `i` whose terms all lie in `src` (`lead ..
/// lead + len − (k − 1)·step`); the rest of `out` is left as it was.
#[inline(always)]
fn sum_shifted(src: &[i32], out: &mut [i32], lead: usize, k: usize, step: usize) {
    let span = (k - 1) * step;
    let Some(len) = src.len().checked_sub(span).filter(|&l| l > 0) else {
        return;
    };
    let out = &mut out[lead..lead + len];
    out.copy_from_slice(&src[..len]);
    for t in 1..k {
        for (o, &v) in out.iter_mut().zip(&src[t * step..t * step + len]) {
            *o += v;
        }
    }
}

crate::multiversion! {
    fn avg_plane_narrow(plane: &[i32], dst: &mut [i32], gd: (&AvgPlan, &Divisors32), scratch: &mut [i32]) -> () = avg_plane_narrow_body
}

/// One plane of [`avg_pool`] in 32-bit lanes (the caller's bound keeps every sum, numerator and
/// denominator inside `i32`): the window sums ([`row_sums`], [`column_sums`]), then
/// `⌊(2·(sum·2^e) + den) / 2·den⌋` as the truncated product by `1 / (2·den)` in `f64` (within one of
/// the floor: a relative error below 2^−51 on a quotient below 2^31), corrected by the remainder.
/// `scratch` holds `(h + 2) · ow` values.
#[inline(always)]
fn avg_plane_narrow_body(
    plane: &[i32],
    dst: &mut [i32],
    (g, d): (&AvgPlan, &Divisors32),
    scratch: &mut [i32],
) {
    let ow = g.ow.max(1);
    let (hs, rest) = scratch.split_at_mut(g.h * ow);
    let (acc, num) = rest.split_at_mut(ow);
    let up = g.e.max(0) as u32;
    row_sums(plane, g, hs);
    for (drow, &(a, b)) in dst.chunks_mut(ow).zip(&g.rr) {
        column_sums(hs, (a, b), acc);
        let at = (b - a) * ow;
        let (den, den2, inv) = (
            &d.den[at..at + ow],
            &d.den2[at..at + ow],
            &d.inv[at..at + ow],
        );
        for ((n, &s), &dn) in num[..ow].iter_mut().zip(acc.iter()).zip(den) {
            *n = 2 * (s << up) + dn;
        }
        for (((q, &n), &d2), &r) in drow.iter_mut().zip(&num[..ow]).zip(den2).zip(inv) {
            *q = round_quotient(n, d2, r);
        }
    }
}

/// The fast executor's `MaxPool2d` without rescaling (input and output at one scale): planes split
/// across up to `threads` threads; the same integers as the reference's loop over the taps.
pub(crate) fn max_pool(
    x: &[i32],
    xs: &[usize],
    w: &crate::ir::Window,
    out_shape: &[usize],
    threads: usize,
) -> Vec<i32> {
    let (planes, h, wd) = (xs[0] * xs[1], xs[2], xs[3]);
    let (oh, ow) = (out_shape[2], out_shape[3]);
    let rows = PoolAxis::new(h, oh, w.kernel[0], w.stride[0], w.dilation[0], w.pads[0]);
    let cols = PoolAxis::new(wd, ow, w.kernel[1], w.stride[1], w.dilation[1], w.pads[1]);
    // every output element is written: each row's columns, or a row of zeros for a window with no
    // valid row
    let mut out = crate::buffers::take_overwritten(planes * oh * ow);
    let th = if x.len() >= 1 << 16 { threads } else { 1 };
    crate::par::rows(&mut out, oh * ow, th, 1, |c0, part| {
        // the row's maxima and its phases, or (a "same" pooling) the plane's vertical maxima
        let mut tmp = vec![0i32; (wd + wd.div_ceil(cols.stride) * cols.stride).max(oh * wd)];
        for (j, dst) in part.chunks_mut(oh * ow).enumerate() {
            let plane = &x[(c0 + j) * h * wd..(c0 + j + 1) * h * wd];
            max_pool_plane(plane, dst, wd, &rows, &cols, &mut tmp);
        }
    });
    out
}

crate::multiversion! {
    fn lookup_run(x: &mut [i32], table: &[i32], k: u32, lo: i64) -> () = lookup_body
}

/// `x[j] = table[clamp(rshift(x[j], k) − lo, 0, len − 1)]` for `k` in `0..=31`: the rounding shift in
/// `i32` lanes ([`rshift32`]), the index in `i64`. `table` is not empty.
#[inline(always)]
fn lookup_body(x: &mut [i32], table: &[i32], k: u32, lo: i64) {
    let last = table.len() as i64 - 1;
    for v in x.iter_mut() {
        *v = table[(rshift32(*v, k) as i64 - lo).clamp(0, last) as usize];
    }
}

/// The fast executor's `Lookup` for a shift `k` in `0..=31` and a non-empty table.
pub(crate) fn lookup(x: &[i32], table: &[i32], k: u32, lo: i32, threads: usize) -> Vec<i32> {
    map_elements(x, threads, |dst, src| {
        dst.copy_from_slice(src);
        lookup_in_place(dst, (table, None), k, lo as i64)
    })
}

/// `x[j] = table[clamp(rshift(x[j], k) − lo, 0, len − 1)]` for `k` in `0..=31` and a non-empty table
/// (`segments` its knots, if it has them): with AVX-512 (AVX2), 16 (8) lanes at a time by a gather
/// or from the knots (the index clamped in `i32` lanes to `lo..=lo + len − 1` before `lo` is
/// subtracted, which is the same index when that range lies in `i32`), else [`lookup_run`].
pub(crate) fn lookup_in_place(
    x: &mut [i32],
    (table, segments): (&[i32], Option<&crate::segments::Segments>),
    k: u32,
    lo: i64,
) {
    let hi = lo + table.len() as i64 - 1;
    #[cfg(target_arch = "x86_64")]
    if crate::simd::Isa::detect() == crate::simd::Isa::Avx512
        && i32::try_from(lo).is_ok()
        && i32::try_from(hi).is_ok()
        && table.len() <= i32::MAX as usize / 4
    {
        // SAFETY: the CPU has AVX-512 F and BW (checked above); every position lies in
        // 0..table.len() (clamped to lo..=hi, then lo subtracted, all in i32), `segments` are
        // `table`'s, and every load and store is inside `x`.
        unsafe { lookup_gather(x, (table, segments), k, lo as i32, hi as i32) };
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if crate::simd::Isa::detect() == crate::simd::Isa::Avx2
        && i32::try_from(lo).is_ok()
        && i32::try_from(hi).is_ok()
        && table.len() <= i32::MAX as usize / 4
    {
        // SAFETY: the CPU has AVX2 (checked above); indices and accesses as for `lookup_gather`
        unsafe { lookup_gather_avx2(x, table, k, lo as i32, hi as i32) };
        return;
    }
    lookup_run(x, table, k, lo);
}

/// [`lookup_gather`] 8 lanes at a time on AVX2: the same index (the rounding shift of
/// [`rshift32`] in `i32` lanes, clamped to `lo..=hi`, `lo` subtracted), one `vpgatherdd`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn lookup_gather_avx2(x: &mut [i32], table: &[i32], k: u32, lo: i32, hi: i32) {
    use std::arch::x86_64::*;
    // SAFETY: the CPU has AVX2 (this function's feature)
    let index = unsafe { TableIndex8::new(k, lo, hi) };
    let mut chunks = x.chunks_exact_mut(8);
    for c in &mut chunks {
        let v = _mm256_loadu_si256(c.as_ptr().cast());
        // SAFETY: as above; every index lies in 0..table.len() (clamped to lo..=hi, lo subtracted)
        let g = unsafe { _mm256_i32gather_epi32::<4>(table.as_ptr(), index.of(v)) };
        _mm256_storeu_si256(c.as_mut_ptr().cast(), g);
    }
    lookup_run(chunks.into_remainder(), table, k, lo as i64);
}

/// [`lookup_in_place`] 16 lanes at a time on AVX-512: the positions of [`TableIndex`], the entries by
/// one gather, or from the table's knots ([`crate::segments::SegmentLanes`]) when it has them.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn lookup_gather(
    x: &mut [i32],
    (table, segments): (&[i32], Option<&crate::segments::Segments>),
    k: u32,
    lo: i32,
    hi: i32,
) {
    use std::arch::x86_64::*;
    // SAFETY: the CPU has AVX-512 F (this function's features)
    let index = unsafe { TableIndex::new(k, lo, hi) };
    // (a macro, not a closure: a closure would not inherit this function's target features)
    macro_rules! each {
        ($i:ident => $entries:expr) => {{
            let mut chunks = x.chunks_exact_mut(16);
            for c in &mut chunks {
                let v = _mm512_loadu_si512(c.as_ptr().cast());
                // SAFETY: as above; the chunk holds 16 elements
                let $i = unsafe { index.of(v) };
                _mm512_storeu_si512(c.as_mut_ptr().cast(), $entries);
            }
            lookup_run(chunks.into_remainder(), table, k, lo as i64);
        }};
    }
    match segments {
        Some(s) => {
            // SAFETY: the CPU has AVX-512 F and BW (this function's features)
            let lanes = unsafe { crate::segments::SegmentLanes::new(s) };
            // SAFETY: as above
            each!(i => unsafe { lanes.at(i) })
        }
        None => each!(i => _mm512_i32gather_epi32::<4>(i, table.as_ptr().cast())),
    }
}

/// The table positions `clamp(rshift(v, k), lo, hi) − lo` of 16 `i32` lanes (`k ≤ 31`, the rounding
/// shift taken in `i32` lanes as [`rshift32`] takes it), from registers set once.
///
/// The rounding shift `(v + h) >> k` (`h = 2^(k−1)`, or `0` for `k = 0`) is monotone, so clamping
/// its result to `lo..=hi` is clamping `v` to the inputs that reach those ends,
/// `lo·2^k − h ..= hi·2^k + 2^k − 1 − h`; and `lo` is a multiple of `2^k` there, so the position is
/// `(clamp(v) + h − lo·2^k) >> k`: four instructions, when those bounds and the largest sum lie in
/// `i32`. Otherwise the shift's rounding bit is added and the result clamped (seven).
#[cfg(target_arch = "x86_64")]
#[derive(Clone, Copy)]
pub(crate) struct TableIndex {
    k: u32,
    /// Whether the input is clamped (the four-instruction form).
    inputs: bool,
    right: std::arch::x86_64::__m128i,
    bit: std::arch::x86_64::__m128i,
    one: std::arch::x86_64::__m512i,
    /// The clamp's bounds (on the input or on its shift).
    lo: std::arch::x86_64::__m512i,
    hi: std::arch::x86_64::__m512i,
    /// What is added before the shift (`h − lo·2^k`), or subtracted after it (`lo`).
    offset: std::arch::x86_64::__m512i,
}

#[cfg(target_arch = "x86_64")]
impl TableIndex {
    /// # Safety
    /// The CPU must have AVX-512 F.
    #[inline(always)]
    pub(crate) unsafe fn new(k: u32, lo: i32, hi: i32) -> TableIndex {
        use std::arch::x86_64::*;
        let h = if k == 0 { 0 } else { 1i64 << (k - 1) };
        let (l, u) = (
            ((lo as i64) << k) - h,
            ((hi as i64) << k) + (1i64 << k) - 1 - h,
        );
        let offset = h - ((lo as i64) << k);
        let fits = |v: i64| i32::try_from(v).is_ok();
        let inputs = fits(l) && fits(u) && fits(offset) && fits(u + offset);
        let (b_lo, b_hi, off) = match inputs {
            true => (l as i32, u as i32, offset as i32),
            false => (lo, hi, lo),
        };
        unsafe {
            TableIndex {
                k,
                inputs,
                right: _mm_cvtsi32_si128(k as i32),
                bit: _mm_cvtsi32_si128(k.max(1) as i32 - 1),
                one: _mm512_set1_epi32(1),
                lo: _mm512_set1_epi32(b_lo),
                hi: _mm512_set1_epi32(b_hi),
                offset: _mm512_set1_epi32(off),
            }
        }
    }

    /// # Safety
    /// The CPU must have AVX-512 F.
    #[inline(always)]
    pub(crate) unsafe fn of(&self, v: std::arch::x86_64::__m512i) -> std::arch::x86_64::__m512i {
        use std::arch::x86_64::*;
        unsafe {
            if self.inputs {
                let c = _mm512_min_epi32(_mm512_max_epi32(v, self.lo), self.hi);
                return _mm512_sra_epi32(_mm512_add_epi32(c, self.offset), self.right);
            }
            let s = if self.k == 0 {
                v
            } else {
                let r = _mm512_sra_epi32(v, self.right);
                _mm512_add_epi32(r, _mm512_and_si512(_mm512_sra_epi32(v, self.bit), self.one))
            };
            _mm512_sub_epi32(
                _mm512_min_epi32(_mm512_max_epi32(s, self.lo), self.hi),
                self.offset,
            )
        }
    }
}

/// [`TableIndex`] for 8 `i32` lanes (AVX2): the same positions, from registers set once.
#[cfg(target_arch = "x86_64")]
#[derive(Clone, Copy)]
pub(crate) struct TableIndex8 {
    k: u32,
    right: std::arch::x86_64::__m128i,
    bit: std::arch::x86_64::__m128i,
    one: std::arch::x86_64::__m256i,
    lo: std::arch::x86_64::__m256i,
    hi: std::arch::x86_64::__m256i,
}

#[cfg(target_arch = "x86_64")]
impl TableIndex8 {
    /// # Safety
    /// The CPU must have AVX2.
    #[inline(always)]
    pub(crate) unsafe fn new(k: u32, lo: i32, hi: i32) -> TableIndex8 {
        use std::arch::x86_64::*;
        unsafe {
            TableIndex8 {
                k,
                right: _mm_cvtsi32_si128(k as i32),
                bit: _mm_cvtsi32_si128(k.max(1) as i32 - 1),
                one: _mm256_set1_epi32(1),
                lo: _mm256_set1_epi32(lo),
                hi: _mm256_set1_epi32(hi),
            }
        }
    }

    /// # Safety
    /// The CPU must have AVX2.
    #[inline(always)]
    pub(crate) unsafe fn of(&self, v: std::arch::x86_64::__m256i) -> std::arch::x86_64::__m256i {
        use std::arch::x86_64::*;
        unsafe {
            let s = if self.k == 0 {
                v
            } else {
                let r = _mm256_sra_epi32(v, self.right);
                _mm256_add_epi32(r, _mm256_and_si256(_mm256_sra_epi32(v, self.bit), self.one))
            };
            _mm256_sub_epi32(
                _mm256_min_epi32(_mm256_max_epi32(s, self.lo), self.hi),
                self.lo,
            )
        }
    }
}

crate::multiversion! {
    fn clamp_shift_run(dst: &mut [i32], src: &[i32], k: u32, lo: i32, hi: i32) -> () = clamp_shift_body
}

/// `dst[j] = clamp(rshift(src[j], k), lo, hi)` for `k` in `0..=31`, in `i32` lanes ([`rshift32`]).
#[inline(always)]
fn clamp_shift_body(dst: &mut [i32], src: &[i32], k: u32, lo: i32, hi: i32) {
    for (d, &v) in dst.iter_mut().zip(src) {
        *d = rshift32(v, k).clamp(lo, hi);
    }
}

/// The fast executor's `Clamp` for a rescale by `k` in `0..=31` (`lo ≤ hi`).
pub(crate) fn clamp_shift(x: &[i32], k: u32, lo: i32, hi: i32, threads: usize) -> Vec<i32> {
    map_elements(x, threads, |dst, src| clamp_shift_run(dst, src, k, lo, hi))
}

/// An element-wise op over `x` by `run(dst, src)` on matching runs of the output and the input: every
/// element at once, on up to `threads` threads for tensors of 64 K elements or more. `run` writes
/// every element of `dst` (the buffer is not filled first).
fn map_elements(x: &[i32], threads: usize, run: impl Fn(&mut [i32], &[i32]) + Sync) -> Vec<i32> {
    let th = if x.len() >= 1 << 16 { threads } else { 1 };
    let mut out = crate::buffers::take_overwritten(x.len());
    crate::par::rows(&mut out, 1, th, 1 << 10, |at, part| {
        run(part, &x[at..at + part.len()])
    });
    out
}

crate::multiversion! {
    fn add_shift_i32(dst: &mut [i32], acc: &[i32], add: i64, right: u32, left: u32) -> (i64, i64) = add_shift_narrow_body
}
crate::multiversion! {
    fn add_shift_i64(dst: &mut [i32], acc: &[i64], add: i64, right: u32, left: u32) -> (i64, i64) = add_shift_body::<i64>
}
crate::multiversion! {
    fn add_shift_rows_i32(dst: &mut [i32], acc: &[i32], rows: (usize, usize), add: i64, right: u32, left: u32) -> (i64, i64) = add_shift_rows_narrow_body
}
crate::multiversion! {
    fn add_shift_rows_i64(dst: &mut [i32], acc: &[i64], rows: (usize, usize), add: i64, right: u32, left: u32) -> (i64, i64) = add_shift_rows_body::<i64>
}

/// [`add_shift_rows_body`] of `i32` sums, each row by [`add_shift_narrow_body`] (rows shorter than two
/// registers of lanes by the `i64` loop, which costs them less).
#[inline(always)]
fn add_shift_rows_narrow_body(
    dst: &mut [i32],
    acc: &[i32],
    rows: (usize, usize),
    add: i64,
    right: u32,
    left: u32,
) -> (i64, i64) {
    if rows.0 < 16 {
        return add_shift_rows_body(dst, acc, rows, add, right, left);
    }
    by_rows(dst, acc, rows, |d, a| {
        add_shift_narrow_body(d, a, add, right, left)
    })
}

/// [`add_shift_body`] over the rows of `dst` (`w` elements each), read from `acc` rows `stride` apart
/// (`rows = (w, stride)`): one call for a plane whose accumulator rows are padded.
#[inline(always)]
fn add_shift_rows_body<T: Copy + Into<i64>>(
    dst: &mut [i32],
    acc: &[T],
    (w, stride): (usize, usize),
    add: i64,
    right: u32,
    left: u32,
) -> (i64, i64) {
    by_rows(dst, acc, (w, stride), |d, a| {
        add_shift_body(d, a, add, right, left)
    })
}

/// `f` over the rows of `dst` (`w` elements each) and of `acc` (rows `stride` apart), with the least
/// and greatest of the bounds it returns (0 included).
#[inline(always)]
fn by_rows<T>(
    dst: &mut [i32],
    acc: &[T],
    (w, stride): (usize, usize),
    f: impl Fn(&mut [i32], &[T]) -> (i64, i64),
) -> (i64, i64) {
    let (mut lo, mut hi) = (0i64, 0i64);
    for (r, d) in dst.chunks_mut(w.max(1)).enumerate() {
        let (l, h) = f(d, &acc[r * stride..r * stride + d.len()]);
        lo = lo.min(l);
        hi = hi.max(h);
    }
    (lo, hi)
}

/// `x` in the row-major order of labels `order`: borrowed when its layout already is that order's
/// (axes of one element aside, no broadcast axis), else packed.
fn packed<'a, T: crate::buffers::Pooled>(
    x: &'a [T],
    labels: &[u8],
    shape: &[usize],
    order: &[u8],
    sizes: &[usize; 256],
) -> Cow<'a, [T]> {
    // the same row-major layout: every axis of `x` of more than one element is, in the same order,
    // an axis of `order` of that size, and the axes of `order` missing from `x` have one element
    let axes = |ls: &[u8], dim: &dyn Fn(usize) -> usize| -> Vec<u8> {
        (0..ls.len())
            .filter(|&i| dim(i) != 1)
            .map(|i| ls[i])
            .collect()
    };
    let same = labels
        .iter()
        .zip(shape)
        .all(|(&l, &d)| d == 1 || (order.contains(&l) && d == sizes[l as usize]))
        && order
            .iter()
            .all(|&l| labels.contains(&l) || sizes[l as usize] == 1)
        && axes(labels, &|i| shape[i]) == axes(order, &|i| sizes[order[i] as usize]);
    if same {
        Cow::Borrowed(x)
    } else {
        Cow::Owned(pack(x, labels, shape, order, sizes))
    }
}

/// `fit(rshift(v, shift))` on `i64` when the shift keeps it exact, else through `i128`.
#[inline]
fn requantize(v: i64, shift: i32) -> Result<i32, ExecError> {
    if (1..63).contains(&shift) && v.checked_add(1i64 << (shift - 1)).is_some() {
        i32::try_from(crate::arith::rshift64(v, shift as u32)).map_err(|_| ExecError::Overflow)
    } else {
        fit(rshift(v as i128, shift))
    }
}

/// The output columns `x0..x1` for kernel column `kx` whose input column `ox·sx + kx·dx − px` lies in
/// `0..wd`, with the input column of `x0`; `None` if there are none. `(sx, dx, px)`: stride, dilation,
/// left padding.
fn valid_columns(
    ow: usize,
    wd: usize,
    (sx, dx, px): (usize, usize, i64),
    kx: usize,
) -> Option<(usize, usize, usize)> {
    let first_in = |ox: usize| (ox * sx + kx * dx) as i64;
    let x0 = (0..ow).find(|&ox| first_in(ox) >= px).unwrap_or(ow);
    let x1 = (x0..ow)
        .find(|&ox| first_in(ox) >= px + wd as i64)
        .unwrap_or(ow);
    (x1 > x0).then(|| (x0, x1, (first_in(x0) - px) as usize))
}

/// A convolution's weights in the 8-bit kernels' form, one matrix `[O/g × cg·kh·kw]` per group (16-bit
/// weights as their two [`Parts`]); `None` unless every weight splits ([`qgemm::split16`]: up to
/// [`qgemm::WEIGHT16_MAX`]).
pub fn conv_weights<T: Copy + Into<i32>>(
    w_shape: &[usize],
    groups: usize,
    w: &[T],
) -> Option<Vec<Parts<PackedA>>> {
    if w_shape.len() != 4 || groups == 0 || !w.iter().all(|&v| v.into() <= qgemm::WEIGHT16_MAX) {
        return None;
    }
    let og = w_shape[0] / groups;
    let kk = w_shape[1] * w_shape[2] * w_shape[3];
    (0..groups)
        .map(|g| Parts::<PackedA>::weights(&w[g * og * kk..(g + 1) * og * kk], og, kk))
        .collect()
}

/// Rows `r0..r0 + rows` of the product of `w` by the activations `x` (whole, or the high and low
/// [`halves`] of 16-bit ones) when some side has two parts: every pair of parts' products joined in
/// `i64`, `rows × n` with the row stride returned beside them (`n`, or the product's
/// [`PackedB::ldc`] when the joined kernels multiply the 16-bit side as it is: `join`, the caller's
/// [`qgemm::join_plan`] of these operands).
fn joined_parts(
    w: &Parts<PackedA>,
    (x, low): (&PackedB, Option<&PackedB>),
    (r0, rows, n): (usize, usize, usize),
    (level, join, pairs): (Level, Option<qgemm::JoinPlan>, Option<&[i16]>),
    tokens: &[crate::cancel::Cancel],
) -> (Vec<i64>, usize) {
    let ldc = x.ldc();
    let acts = Parts { hi: x, lo: low };
    if let Some(plan) = join {
        // (every element written)
        let mut c = crate::buffers::take_overwritten(rows * ldc);
        qgemm::product_joined(w.as_ref(), acts, r0, &mut c, (plan, pairs), tokens);
        return (c, ldc);
    }
    let mut c = sums_buffer(rows * n);
    join_parts(&mut c, w, &acts, (rows, n), |wp, xp| {
        let mut acc = crate::buffers::take(rows * ldc, 0i32);
        qgemm::product(wp, xp, r0, &mut acc, level, None, tokens);
        (acc, ldc)
    });
    (c, n)
}

/// Append to `c` the `rows × n` exact sums of every product of a part of the weights `w` by a part of
/// the activations `x` (each side whole, or `256·high + low`), `mul` giving one product in `i32` with
/// its row stride; the products go back to the pool.
fn join_parts<W, X>(
    c: &mut Vec<i64>,
    w: &Parts<W>,
    x: &Parts<X>,
    (rows, n): (usize, usize),
    mul: impl Fn(&W, &X) -> (Vec<i32>, usize),
) {
    let mut prods = Vec::with_capacity(4);
    let mut ldc = n;
    for (wp, ws) in w.each() {
        for (xp, xs) in x.each() {
            let (p, l) = mul(wp, xp);
            ldc = l;
            prods.push((p, ws + xs));
        }
    }
    join_products(c, &prods, (rows, ldc, n));
    prods.into_iter().for_each(|(p, _)| crate::buffers::give(p));
}

/// An empty buffer for `len` 64-bit sums, from the current pool when it has one.
fn sums_buffer(len: usize) -> Vec<i64> {
    let mut c = crate::buffers::reuse::<i64>(len).unwrap_or_default();
    c.clear();
    c.reserve(len);
    c
}

/// Append to `c` the `rows × n` sums `Σ_i p_i[r][j] << s_i` of the products `(p_i, s_i)` (at least
/// one; rows of stride `ldc`), exact in `i64`: two or four where a side has two parts, one for a batch
/// whose weights are whole beside another batch's that are not.
fn join_products(
    c: &mut Vec<i64>,
    prods: &[(Vec<i32>, u32)],
    (rows, ldc, n): (usize, usize, usize),
) {
    debug_assert!(!prods.is_empty());
    for r in 0..rows {
        let row = |i: usize| &prods[i].0[r * ldc..r * ldc + n];
        let at = c.len();
        match prods.len() {
            1 => c.extend(row(0).iter().map(|&v| (v as i64) << prods[0].1)),
            _ => join2_row(c, (row(0), prods[0].1), (row(1), prods[1].1)),
        }
        for (i, (_, sh)) in prods.iter().enumerate().skip(2) {
            add_shifted_row(&mut c[at..], row(i), *sh);
        }
    }
}

crate::multiversion! {
    fn join2_row(c: &mut Vec<i64>, a: (&[i32], u32), b: (&[i32], u32)) -> () = join2_row_body
}

#[inline(always)]
fn join2_row_body(c: &mut Vec<i64>, (a, sa): (&[i32], u32), (b, sb): (&[i32], u32)) {
    c.extend(
        a.iter()
            .zip(b)
            .map(|(&x, &y)| ((x as i64) << sa) + ((y as i64) << sb)),
    );
}

/// `Conv2d` by the 8-bit kernels when the input's values are 8-bit (or 16-bit, multiplied as their two
/// 8-bit [`halves`]): the packed weights (`[O/g × cg·kh·kw]`) times the image patches as columns
/// (`[cg·kh·kw × OH·OW]`), then bias and requantization row by row in the output's layout, each output
/// plane then handed to `hook`. `None` (before any call of `hook`) if the input has wider values or the
/// reduction is too long for the 8-bit kernels.
fn conv2d_narrow(
    s: &ConvSpec<'_>,
    (x, rx): (&[i32], Range),
    qw: &[Parts<PackedA>],
    bias: Option<(&[i32], i32)>,
    shift: i32,
    threads: usize,
    hook: Option<RowHook<'_>>,
) -> Option<Result<Vec<i32>, ExecError>> {
    let (lo, hi) = min_max_in(x, rx);
    // the 8-bit form of the patches, or that of their high halves for 16-bit values
    let (offset, split) = match PackedA::offset_for(lo, hi) {
        Some(off) => (off, false),
        None => (halves(x)?, true),
    };
    let n = s.x[0];
    let (o_ch, cg, kh, kw) = (s.w[0], s.w[1], s.w[2], s.w[3]);
    let og = o_ch / s.groups;
    let kk = cg * kh * kw;
    if kk > qgemm::MAX_K {
        return None;
    }
    let p = s.out[2] * s.out[3];
    let level = Level::detect();
    let wparts = if qw.iter().any(|q| q.lo.is_some()) {
        2
    } else {
        1
    };
    let work = og * kk * p * if split { 2 } else { 1 } * wparts;
    let th = if work >= 1 << 21 { threads } else { 1 };
    // a 1×1 convolution with stride 1 and no padding reads its input planes as they are
    let direct = kh == 1 && kw == 1 && s.window.stride == [1, 1] && s.window.pads == [0; 4];
    // the patches of 8-bit inputs as their stored bytes (a quarter of the traffic of `i32` ones)
    let bytes = !direct && !split;
    // read in place from a padded byte image (split by stride phase; for 16-bit values one of
    // their high bytes and one of their low bytes), panel by panel; as many groups as threads or
    // more run whole groups per thread, which pays when all of them together are enough work
    let groupwise = threads > 1 && s.groups >= threads && work * s.groups >= 1 << 21;
    // (panels as for one thread when the threads take whole groups or split the channels)
    let one = groupwise || channel_parts(s, th);
    if !direct && panels_suit(s, if one { 1 } else { th }) {
        // every output row of every plane is requantized into below
        let mut out = crate::buffers::take_overwritten(n * o_ch * p);
        // every sum's magnitude at most kk · max|x| · 128 (8-bit weights)
        let mx = lo.unsigned_abs().max(hi.unsigned_abs()) as u128;
        let act = (offset, split, kk as u128 * mx * 128, (lo, hi));
        let th = if groupwise { threads } else { th };
        let done = conv2d_panels(s, x, qw, bias, shift, (act, level, th), hook, &mut out);
        return Some(done.map(|()| out));
    }
    // every output plane of every group and batch is requantized into below
    let mut out = crate::buffers::take_overwritten(n * o_ch * p);
    // the patch gathers write every element (padding as zero)
    let mut im = crate::buffers::take_overwritten(if direct || bytes { 0 } else { kk * p });
    let mut im8 = crate::buffers::take_overwritten(if bytes { kk * p } else { 0 });
    let add = if offset { 128 } else { 0 };
    for b in 0..n {
        for (g, qw) in qw.iter().enumerate() {
            // 16-bit patches by split weights in a single pass: the patches as its pairs
            let mut pairs: Option<(qgemm::JoinPlan, Vec<i16>)> = None;
            // rows of whole input channels per part
            let (cols, low) = if bytes {
                crate::par::rows(&mut im8, p, th, 1, |r0, part| {
                    im2col_bytes(s, x, (b, g, r0), part, add)
                });
                (PackedB::bytes_par(&im8, kk, p, offset, th)?, None)
            } else {
                let patches: &[i32] = if direct {
                    let at = (b * s.x[1] + g * cg) * p;
                    &x[at..at + kk * p]
                } else {
                    crate::par::rows(&mut im, p, th, 1, |r0, part| {
                        im2col(s, x, b, g, r0, part, |v| v)
                    });
                    &im
                };
                let n16 = p.div_ceil(qgemm::NR) * qgemm::NR;
                let single = qw.lo.as_ref().and_then(|_| {
                    qgemm::pairs_plan(&qw.as_ref(), (kk, n16), (lo, hi, offset), level)
                });
                if let (true, Some((plan, shape))) = (split, single) {
                    let kcq = plan.single.expect("a single pass");
                    pairs = Some((plan, qgemm::matrix_pairs(patches, (kk, p), kcq)));
                    (shape.clone(), Some(shape))
                } else if split {
                    // 16-bit patches: their high halves here, their low bytes beside
                    (
                        PackedB::shifted_par(patches, 8, kk, p, offset, th)?,
                        Some(PackedB::shifted_par(patches, 0, kk, p, false, th)?),
                    )
                } else {
                    (PackedB::shifted_par(patches, 0, kk, p, offset, th)?, None)
                }
            };
            // the output channels of this group, split across threads: each part multiplies its rows
            // of weights, then requantizes its planes and hands them to the hook
            let ldc = cols.ldc();
            let first = (b * o_ch + g * og) * p;
            let err = crate::par::FirstError::default();
            let tokens = crate::cancel::current();
            let planes = &mut out[first..first + og * p];
            // (how a product with a 16-bit side runs: found once for every part)
            let acts = Parts {
                hi: &cols,
                lo: low.as_ref(),
            };
            let join = match &pairs {
                Some((plan, _)) => Some(*plan),
                None => qgemm::join_plan(&qw.as_ref(), &acts, level),
            };
            let p16 = pairs.as_ref().map(|(_, v)| &v[..]);
            crate::par::rows(planes, p, th, qgemm::part_rows(qw), |o0, part| {
                let rows = part.len() / p;
                if low.is_none() && qw.lo.is_none() && ldc == p {
                    // unpadded rows: the product's sums go straight into the output planes, then
                    // are requantized there
                    qgemm::product(&qw.hi, &cols, o0, part, level, None, &tokens);
                    for (o, plane) in part.chunks_mut(p).enumerate() {
                        let oc = g * og + o0 + o;
                        let bv = bias.map_or(0i128, |(d, sh)| (d[oc] as i128) << sh);
                        let at = first + (o0 + o) * p;
                        if let Err(e) = requantize_then(plane, at, bv, shift, hook) {
                            return err.set(e);
                        }
                    }
                    return;
                }
                // 16-bit inputs or weights: every pair of parts' products joined in i64
                let (acc, wide) = if low.is_none() && qw.lo.is_none() {
                    // the product stores every sum
                    let mut acc = crate::buffers::take_overwritten(rows * ldc);
                    qgemm::product(&qw.hi, &cols, o0, &mut acc, level, None, &tokens);
                    (acc, None)
                } else {
                    let at = (o0, rows, p);
                    let how = (level, join, p16);
                    let c = joined_parts(qw, (&cols, low.as_ref()), at, how, &tokens);
                    (Vec::new(), Some(c))
                };
                for (o, plane) in part.chunks_mut(p).enumerate() {
                    let oc = g * og + o0 + o;
                    let bv = bias.map_or(0i128, |(d, sh)| (d[oc] as i128) << sh);
                    let at = first + (o0 + o) * p;
                    let ho = o * ldc;
                    let done = match &wide {
                        Some((c, st)) => {
                            let lo = o * st;
                            requantize_from_then(plane, &c[lo..lo + p], at, bv, shift, hook)
                        }
                        None => requantize_from_then(plane, &acc[ho..ho + p], at, bv, shift, hook),
                    };
                    if let Err(e) = done {
                        return err.set(e);
                    }
                }
                crate::buffers::give(acc);
                if let Some((c, _)) = wide {
                    crate::buffers::give(c);
                }
            });
            if let Err(e) = err.into_result() {
                return Some(Err(e));
            }
            if let Some((_, v)) = pairs {
                crate::buffers::give(v);
            }
        }
    }
    crate::buffers::give(im);
    crate::buffers::give(im8);
    Some(Ok(out))
}

/// A convolution with one input channel per group, tap by tap: each output channel accumulates
/// `x · w[ky][kx]` over the valid positions of its one input plane, in `i32` when every sum fits
/// (`kh·kw · max|x| · max|w| + |bias| < 2^31`, as in 8-bit models) and otherwise in `i64` (the caller
/// checked the same bound against `2^62`).
fn conv2d_depthwise(
    s: &ConvSpec<'_>,
    (x, mx): (&[i32], u128),
    w: &[i32],
    bias: Option<(&[i32], i32)>,
    shift: i32,
    threads: usize,
    hook: &mut Option<RowHook<'_>>,
) -> Result<Vec<i32>, ExecError> {
    let p = s.out[2] * s.out[3];
    let bias_at = |oc: usize| bias.map_or(0, |(d, sh)| ((d[oc] as i128) << sh) as i64);
    let mw = max_abs(w);
    let bound = (s.w[2] * s.w[3]) as u128 * mx * mw
        + bias.map_or(0, |(d, sh)| max_abs(d) << sh.clamp(0, 64));
    // 16-bit inputs and weights: sixteen channels per register on small planes (but dilated ones
    // that pairs of taps down a column take: two taps per instruction), else pairs of taps per
    // multiply-add instruction
    let lanes = ChannelLanes::new(s, mx, mw).filter(|_| {
        bound < 1 << 31 && (s.window.dilation == [1, 1] || RowPairs::new(s, mx, mw).is_none())
    });
    if let Some(plan) = lanes {
        let mut out = crate::buffers::take_overwritten(s.x[0] * s.w[0] * p);
        let (kk, hw) = (s.w[2] * s.w[3], s.x[2] * s.x[3]);
        let th = if out.len() * kk >= 1 << 17 {
            threads
        } else {
            1
        };
        let hook = hook.take();
        let err = crate::par::FirstError::default();
        // blocks of 16 planes split across threads, each part with its own padded rows; output plane
        // `q` (batch `q / o_ch`, channel `q % o_ch`) reads input plane `q`
        let bias_of = |c: usize| bias_at(c) as i32;
        crate::par::rows(&mut out, p, th, ChannelLanes::LANES, |q0, part| {
            let mut rows = vec![0i32; plan.len()];
            let mut words = vec![[0i32; 16]; kk];
            for (g, block) in part.chunks_mut(ChannelLanes::LANES * p).enumerate() {
                let q = q0 + g * ChannelLanes::LANES;
                let n = block.len() / p;
                let planes = &x[q * hw..(q + n) * hw];
                plan.run(s, planes, &mut rows, &mut words, (q, w, &bias_of), block);
                if let Err(e) = requantize_then(block, q * p, 0, shift, hook) {
                    return err.set(e);
                }
            }
        });
        err.into_result()?;
        return Ok(out);
    }
    let pairs = Pairs::new(s, mx, mw).filter(|_| bound < 1 << 31);
    let mut out = match pairs {
        // it stores every element of every output plane
        Some(_) => crate::buffers::take_overwritten(s.x[0] * s.w[0] * p),
        None => crate::buffers::take(s.x[0] * s.w[0] * p, 0i32),
    };
    if bound < 1 << 31 {
        let (c, o_ch, kk) = (s.x[1], s.w[0], s.w[2] * s.w[3]);
        let og = o_ch / s.groups;
        let plan = DwPlan::new(s);
        let hook = hook.take();
        let hw = s.x[2] * s.x[3];
        let th = if out.len() * kk >= 1 << 17 {
            threads
        } else {
            1
        };
        let err = crate::par::FirstError::default();
        // output planes split across threads, each part with its own padded rows
        crate::par::rows(&mut out, p, th, 1, |q0, part| {
            // the padded rows, then (stride 2) room for one input row split into even and odd columns
            let mut rows = match pairs {
                Some(_) => Vec::new(),
                None => vec![0i32; plan.hp * s.window.stride[1] as usize * plan.span + s.x[3] + 1],
            };
            let mut rows16 = vec![0i16; pairs.as_ref().map_or(0, |q| q.len())];
            // planes of a few hundred elements are requantized and handed to the chain together
            let per = (REQUANT_PART / p.max(1)).max(1);
            for (g, group) in part.chunks_mut(per * p).enumerate() {
                let q = q0 + g * per;
                for (j, dst) in group.chunks_mut(p).enumerate() {
                    let (b, oc) = ((q + j) / o_ch, (q + j) % o_ch);
                    let ci = oc / og;
                    let plane = &x[(b * c + ci) * hw..(b * c + ci + 1) * hw];
                    let taps = &w[oc * kk..(oc + 1) * kk];
                    let bias = bias_at(oc) as i32;
                    match &pairs {
                        Some(q) => q.run(s, plane, &mut rows16, taps, bias, dst),
                        None => depthwise_plane(s, &plan, plane, &mut rows, taps, bias, dst),
                    }
                }
                // the planes' sums (bias included) requantized by the vector row loop
                if let Err(e) = requantize_then(group, q * p, 0, shift, hook) {
                    return err.set(e);
                }
            }
        });
        err.into_result()?;
        return Ok(out);
    }
    depthwise_taps::<i64>(s, x, w, bias_at, &mut out, |row, acc| {
        for (d, &a) in row.iter_mut().zip(acc) {
            *d = requantize(a, shift)?;
        }
        Ok(())
    })?;
    Ok(out)
}

/// Whether the depthwise kernels of 16-bit lanes ([`PairPlan`], [`RowPairs`], [`ChannelLanes`]) may
/// run: on AVX-512, inputs and weights of magnitudes `mx`, `mw` at most `i16::MAX`.
fn sixteen_bit_lanes(mx: u128, mw: u128) -> bool {
    crate::simd::Isa::detect() == crate::simd::Isa::Avx512
        && mx <= i16::MAX as u128
        && mw <= i16::MAX as u128
}

/// The geometry of pairs of taps along a row ([`Pairs::run`]): a depthwise convolution of stride 1 or
/// 2 (no dilation) whose inputs and weights fit 16 bits, on AVX-512. Each input plane is copied once,
/// as `i16`, into zero-padded rows of `width` elements; a 32-bit lane read at element `o` of a row
/// holds the pair `(row[o], row[o + 1])`, which one `vpmaddwd` multiplies by a pair of neighbouring
/// taps and adds: half the multiplications of one tap per instruction, in `i32` as before (the
/// caller's bound keeps every partial sum in it, and integer sums do not depend on their order).
struct PairPlan {
    /// Padded rows read.
    hp: usize,
    /// Elements per padded row.
    width: usize,
    /// Whether the AVX-512 kernels run (else the AVX2 ones), as the CPU was found when planned.
    wide: bool,
}

impl PairPlan {
    /// Output columns per block: 32 at stride 1 (even and odd columns in two registers), 16 at stride 2.
    const BLOCK1: usize = 32;
    const BLOCK2: usize = 16;
    /// The most pairs of taps a plane's weights may take (a 7×14 kernel).
    const MAX_PAIRS: usize = 49;
    /// The widest image rows narrowed to `i16` 16 values at a time on AVX2.
    const NARROW_ROWS: usize = 32;

    fn new(s: &ConvSpec<'_>, mx: u128, mw: u128) -> Option<PairPlan> {
        // AVX-512, or AVX2's half-width registers (the same pairs and products, 16 and 8 columns
        // per block)
        let avx2 = crate::simd::Isa::detect() == crate::simd::Isa::Avx2
            && mx <= i16::MAX as u128
            && mw <= i16::MAX as u128;
        let wide = sixteen_bit_lanes(mx, mw);
        if !wide && !avx2 {
            return None;
        }
        let win = s.window;
        let (kh, kw) = (s.w[2], s.w[3]);
        let sx = win.stride[1] as usize;
        let pairs = kh * kw.div_ceil(2);
        if win.dilation != [1, 1] || !(1..=2).contains(&sx) || pairs > Self::MAX_PAIRS || pairs == 0
        {
            return None;
        }
        let (oh, ow) = (s.out[2], s.out[3]);
        let (pl, pr) = (win.pads[1] as usize, win.pads[3] as usize);
        // the last block's loads end below `blocks · 32 + kw + 1` (stride 1) or `2 · blocks · 16 + kw + 32`
        // (stride 2), and the image's padded columns must fit too
        let reads = match sx {
            1 => ow.div_ceil(Self::BLOCK1) * Self::BLOCK1 + kw + 2,
            _ => 2 * ow.div_ceil(Self::BLOCK2) * Self::BLOCK2 + kw + Self::BLOCK1,
        };
        Some(PairPlan {
            hp: (oh.max(1) - 1) * win.stride[0] as usize + kh,
            width: reads.max(pl + s.x[3] + pr),
            wide,
        })
    }

    /// Elements of the padded rows.
    fn len(&self) -> usize {
        self.hp * self.width
    }

    /// The taps of each kernel row `ky` as pairs `(w[2p], w[2p + 1])` in one word each, the second 0
    /// past the kernel's width.
    fn words(s: &ConvSpec<'_>, taps: &[i32]) -> [i32; Self::MAX_PAIRS] {
        let (kh, kw) = (s.w[2], s.w[3]);
        let np = kw.div_ceil(2);
        let mut words = [0i32; Self::MAX_PAIRS];
        for ky in 0..kh {
            for p in 0..np {
                let lo = taps[ky * kw + 2 * p] as i16 as u16 as u32;
                let hi = taps.get(ky * kw + 2 * p + 1).filter(|_| 2 * p + 1 < kw);
                let hi = hi.map_or(0, |&v| v as i16 as u16 as u32);
                words[ky * np + p] = (lo | hi << 16) as i32;
            }
        }
        words
    }

    /// The kernels' view of one plane's padded rows and taps.
    #[cfg(target_arch = "x86_64")]
    fn blocks<'a>(
        &self,
        s: &ConvSpec<'_>,
        rows: &'a [i16],
        words: &'a [i32; Self::MAX_PAIRS],
        bias: i32,
    ) -> PairBlocks<'a> {
        PairBlocks {
            rows,
            width: self.width,
            out: [s.out[2], s.out[3]],
            stride: [s.window.stride[0] as usize, s.window.stride[1] as usize],
            pairs: [s.w[2], s.w[3].div_ceil(2)],
            words,
            bias,
        }
    }

    /// Each row of the image in `plane` with the position in the padded rows it is copied to. Only
    /// the image's own elements are written: the padding around them lies at the same places for
    /// every plane and stays as the caller made it, zero.
    fn image_rows<'a>(
        &self,
        s: &ConvSpec<'_>,
        plane: &'a [i32],
    ) -> impl Iterator<Item = (&'a [i32], usize)> + 'a {
        let (h, wd, width) = (s.x[2], s.x[3], self.width);
        let (pt, pl) = (s.window.pads[0] as usize, s.window.pads[1] as usize);
        plane
            .chunks_exact(wd)
            .take(h)
            .enumerate()
            .map(move |(iy, src)| (src, (pt + iy) * width + pl))
    }

    /// [`PairPlan::products`] on AVX2: the plane narrowed to `i16` — rows of up to
    /// [`PairPlan::NARROW_ROWS`] 16 values at a time (a row's last ones loaded under a mask, and
    /// stored with zeros past the row, over its right padding, where the padded row has room), others
    /// by a plain loop —, then [`pair_blocks_avx2`].
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    unsafe fn products_avx2(
        &self,
        s: &ConvSpec<'_>,
        plane: &[i32],
        rows: &mut [i16],
        taps: &[i32],
        bias: i32,
        dst: &mut [i32],
    ) {
        use std::arch::x86_64::*;
        // the caller checked that the inputs fit i16 (the saturating pack changes none of them)
        let wd = s.x[3];
        let whole = wd.div_ceil(16) * 16;
        // (wider rows: the compiler's own vector loop, whose stores are narrower and its
        // remainders a small part of the row)
        let vector = wd <= Self::NARROW_ROWS && s.window.pads[1] as usize + whole <= self.width;
        let lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
        let (base, len) = (rows.as_mut_ptr(), rows.len());
        for (src, at) in self.image_rows(s, plane) {
            if at + src.len() > len {
                break;
            }
            if !vector || at + whole > len {
                // SAFETY: `at + src.len() ≤ len` (above)
                let mid = unsafe { std::slice::from_raw_parts_mut(base.add(at), src.len()) };
                for (d, &v) in mid.iter_mut().zip(src) {
                    *d = v as i16;
                }
                continue;
            }
            // the row's columns `at..at + whole` lie in its padded row (`vector`): those past the
            // image's own are its right padding, stored as the zeros it holds
            // SAFETY: `at + whole ≤ len`
            let to = unsafe { base.add(at) };
            for j in (0..wd).step_by(16) {
                let load = |o: usize| {
                    let (from, n) = ((j + o).min(wd), wd - (j + o).min(wd));
                    // SAFETY: 8 lanes from `from` where they lie inside `src`, else only the `n` that do
                    unsafe {
                        let at = src.as_ptr().add(from);
                        if n >= 8 {
                            _mm256_loadu_si256(at as *const __m256i)
                        } else {
                            let m = _mm256_cmpgt_epi32(_mm256_set1_epi32(n as i32), lane);
                            _mm256_maskload_epi32(at, m)
                        }
                    }
                };
                let v =
                    _mm256_permute4x64_epi64::<0b11_01_10_00>(_mm256_packs_epi32(load(0), load(8)));
                // SAFETY: `j + 16 ≤ whole`: inside the padded row and `rows` (see above)
                unsafe { _mm256_storeu_si256(to.add(j) as *mut __m256i, v) };
            }
        }
        let words = Self::words(s, taps);
        let g = self.blocks(s, rows, &words, bias);
        let (kh, np) = (s.w[2], s.w[3].div_ceil(2));
        // SAFETY: this function's feature (AVX2); `new` sized the rows for every block's loads (the
        // AVX-512 blocks' reads bound these half-width ones), and the stores stay inside `dst`
        unsafe {
            match (kh, np) {
                (3, 2) => pair_blocks_avx2::<3, 2>(&g, dst),
                (5, 3) => pair_blocks_avx2::<5, 3>(&g, dst),
                _ => pair_blocks_avx2::<0, 0>(&g, dst),
            }
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx512bw")]
    unsafe fn products(
        &self,
        s: &ConvSpec<'_>,
        plane: &[i32],
        rows: &mut [i16],
        taps: &[i32],
        bias: i32,
        dst: &mut [i32],
    ) {
        let wd = s.x[3];
        for (src, at) in self.image_rows(s, plane) {
            // image rows below the last one read are not copied
            let Some(mid) = rows.get_mut(at..at + wd) else {
                break;
            };
            // the caller checked that the inputs fit i16: each 16 values narrowed by one masked
            // instruction (the rows are short: a plain loop spends its time in its remainders)
            use std::arch::x86_64::*;
            for j in (0..wd).step_by(16) {
                let k = ((1u32 << (wd - j).min(16)) - 1) as __mmask16;
                // SAFETY: the `k` lanes lie inside `src[j..]` and `mid[j..]` (both `wd` long); the
                // caller enabled AVX-512 F and BW
                unsafe {
                    let v = _mm512_maskz_loadu_epi32(k, src.as_ptr().add(j));
                    _mm512_mask_cvtepi32_storeu_epi16(mid.as_mut_ptr().add(j) as *mut _, k, v);
                }
            }
        }
        let (kh, np) = (s.w[2], s.w[3].div_ceil(2));
        let words = Self::words(s, taps);
        let g = self.blocks(s, rows, &words, bias);
        // the common kernels with their taps held in registers, the others read from memory; the
        // dot-product instruction where the CPU has it (the same sums: one multiply-add less)
        let vnni = crate::qgemm::Level::detect() == crate::qgemm::Level::Avx512Vnni;
        // SAFETY: this function's features (AVX-512 F, BW) and VNNI where it is taken; `new` sized the
        // rows for every block's loads, and the stores stay inside `dst` (see `Pairs::run`)
        unsafe {
            match ((kh, np), vnni) {
                ((3, 2), true) => pair_blocks_vnni::<3, 2>(&g, dst),
                ((5, 3), true) => pair_blocks_vnni::<5, 3>(&g, dst),
                (_, true) => pair_blocks_vnni::<0, 0>(&g, dst),
                ((3, 2), false) => pair_blocks::<3, 2, false>(&g, dst),
                ((5, 3), false) => pair_blocks::<5, 3, false>(&g, dst),
                (_, false) => pair_blocks::<0, 0, false>(&g, dst),
            }
        }
    }
}

/// `acc` plus, in each 32-bit lane, the two 16-bit products of `x`'s pair by `w`'s: one `vpmaddwd` and
/// an add, or one `vpdpwssd` when `VNNI` (the same wrapping `i32` sums).
///
/// # Safety
/// The CPU must have AVX-512 F and BW, and VNNI when `VNNI`.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn pair_madd<const VNNI: bool>(
    acc: std::arch::x86_64::__m512i,
    x: std::arch::x86_64::__m512i,
    w: std::arch::x86_64::__m512i,
) -> std::arch::x86_64::__m512i {
    use std::arch::x86_64::*;
    unsafe {
        if VNNI {
            _mm512_dpwssd_epi32(acc, x, w)
        } else {
            _mm512_add_epi32(acc, _mm512_madd_epi16(x, w))
        }
    }
}

/// The first `n` of 16 lanes (all for 16 or more).
#[cfg(target_arch = "x86_64")]
fn first_lanes(n: usize) -> std::arch::x86_64::__mmask16 {
    ((1u32 << n.min(16)) - 1) as std::arch::x86_64::__mmask16
}

/// One plane's padded `i16` rows and the taps of a [`PairPlan`] product.
#[cfg(target_arch = "x86_64")]
struct PairBlocks<'a> {
    rows: &'a [i16],
    width: usize,
    /// Output rows and columns.
    out: [usize; 2],
    stride: [usize; 2],
    /// Kernel rows, pairs of taps per row.
    pairs: [usize; 2],
    /// Pair `p` of kernel row `ky` at `ky · pairs[1] + p`.
    words: &'a [i32; PairPlan::MAX_PAIRS],
    bias: i32,
}

/// [`pair_blocks`] with `vpdpwssd` for each multiply-add.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn pair_blocks_vnni<const KH: usize, const NP: usize>(g: &PairBlocks<'_>, dst: &mut [i32]) {
    unsafe { pair_blocks::<KH, NP, true>(g, dst) }
}

/// The output plane of a [`PairPlan`] product into `dst`, block by block of output columns: a kernel of
/// `KH` rows of `NP` pairs with its taps in registers, or (`KH = 0`) of `g.pairs` read from memory;
/// each pair of taps by one `vpmaddwd` and an add, or one `vpdpwssd` when `VNNI` (wrapping sums of
/// the same products: equal, as the caller's bound keeps every sum inside `i32`).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn pair_blocks<const KH: usize, const NP: usize, const VNNI: bool>(
    g: &PairBlocks<'_>,
    dst: &mut [i32],
) {
    use std::arch::x86_64::*;
    let [oh, ow] = g.out;
    let [sy, sx] = g.stride;
    let (kh, np) = if KH > 0 {
        (KH, NP)
    } else {
        (g.pairs[0], g.pairs[1])
    };
    let mut wv = [_mm512_setzero_si512(); PairPlan::MAX_PAIRS];
    for (v, &w) in wv.iter_mut().zip(g.words).take(kh * np) {
        *v = _mm512_set1_epi32(w);
    }
    let base = g.rows.as_ptr();
    // (macros, not closures: a closure would not inherit the caller's target features)
    macro_rules! load {
        ($at:expr) => {
            unsafe { _mm512_loadu_si512(base.add($at) as *const _) }
        };
    }
    macro_rules! madd {
        ($acc:expr, $x:expr, $w:expr) => {{
            let (acc, x, w) = ($acc, $x, $w);
            unsafe { pair_madd::<VNNI>(acc, x, w) }
        }};
    }
    for oy in 0..oh {
        let out = &mut dst[oy * ow..(oy + 1) * ow];
        let row0 = oy * sy * g.width;
        if sx == 1 {
            // lane l of the even register is column j0 + 2l, of the odd one j0 + 2l + 1
            let lo_idx = _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
            let hi_idx =
                _mm512_setr_epi32(8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31);
            for j0 in (0..ow).step_by(PairPlan::BLOCK1) {
                let (mut even, mut odd) = (_mm512_set1_epi32(g.bias), _mm512_set1_epi32(g.bias));
                for ky in 0..kh {
                    let at = row0 + ky * g.width + j0;
                    for p in 0..np {
                        let w = wv[ky * np + p];
                        even = madd!(even, load!(at + 2 * p), w);
                        odd = madd!(odd, load!(at + 2 * p + 1), w);
                    }
                }
                let first = _mm512_permutex2var_epi32(even, lo_idx, odd);
                let second = _mm512_permutex2var_epi32(even, hi_idx, odd);
                let n = (ow - j0).min(PairPlan::BLOCK1);
                // the block's `n` columns, the last block's under a mask
                let to = out[j0..j0 + n].as_mut_ptr();
                unsafe {
                    _mm512_mask_storeu_epi32(to, first_lanes(n), first);
                    if n > 16 {
                        _mm512_mask_storeu_epi32(to.add(16), first_lanes(n - 16), second);
                    }
                }
            }
        } else {
            for j0 in (0..ow).step_by(PairPlan::BLOCK2) {
                let mut acc = _mm512_set1_epi32(g.bias);
                for ky in 0..kh {
                    let at = row0 + ky * g.width + 2 * j0;
                    for p in 0..np {
                        acc = madd!(acc, load!(at + 2 * p), wv[ky * np + p]);
                    }
                }
                let n = (ow - j0).min(PairPlan::BLOCK2);
                let to = out[j0..j0 + n].as_mut_ptr();
                unsafe { _mm512_mask_storeu_epi32(to, first_lanes(n), acc) };
            }
        }
    }
}

/// The first `min(n, 8)` lanes of the AVX2 register `v` stored at `to` (`*mut i32`): a whole
/// register, or (fewer lanes) through a copy on the stack — a masked store (`vpmaskmovd`) is
/// microcoded and slow on some AMD cores. A macro, so that it is compiled with the calling function's
/// target features; the caller's `unsafe` block vouches that `min(n, 8)` elements from `to` are
/// writable.
#[cfg(target_arch = "x86_64")]
macro_rules! store_first8 {
    ($to:expr, $n:expr, $v:expr) => {{
        let (to, n, v): (*mut i32, usize, std::arch::x86_64::__m256i) = ($to, $n, $v);
        if n >= 8 {
            std::arch::x86_64::_mm256_storeu_si256(to as *mut std::arch::x86_64::__m256i, v);
        } else {
            let mut t = [0i32; 8];
            std::arch::x86_64::_mm256_storeu_si256(
                t.as_mut_ptr() as *mut std::arch::x86_64::__m256i,
                v,
            );
            std::ptr::copy_nonoverlapping(t.as_ptr(), to, n);
        }
    }};
}

/// [`pair_blocks`] on AVX2: 8 lanes per register, each pair of taps by one `vpmaddwd` and an add;
/// blocks of 16 output columns at stride 1 (even and odd columns in two registers, interleaved back
/// by unpacking), of 8 at stride 2; a register whose lanes pass the plane's end stored under a mask.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn pair_blocks_avx2<const KH: usize, const NP: usize>(g: &PairBlocks<'_>, dst: &mut [i32]) {
    use std::arch::x86_64::*;
    let [oh, ow] = g.out;
    assert!(dst.len() >= oh * ow);
    let [sy, sx] = g.stride;
    let (kh, np) = if KH > 0 {
        (KH, NP)
    } else {
        (g.pairs[0], g.pairs[1])
    };
    let mut wv = [_mm256_setzero_si256(); PairPlan::MAX_PAIRS];
    for (v, &w) in wv.iter_mut().zip(g.words).take(kh * np) {
        *v = _mm256_set1_epi32(w);
    }
    let base = g.rows.as_ptr();
    // lane l set where l < n
    let mask = |n: usize| {
        let n = n.min(8) as i32;
        _mm256_cmpgt_epi32(
            _mm256_set1_epi32(n),
            _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7),
        )
    };
    // (macros, not closures: a closure would not inherit this function's target features)
    macro_rules! load {
        ($at:expr) => {
            unsafe { _mm256_loadu_si256(base.add($at) as *const __m256i) }
        };
    }
    macro_rules! madd {
        ($acc:expr, $x:expr, $w:expr) => {
            _mm256_add_epi32($acc, _mm256_madd_epi16($x, $w))
        };
    }
    // a block's lanes past its row's end fall on the next rows' first columns, which later blocks
    // store over: a whole register is stored wherever its 8 lanes lie in `dst`, and only the plane's
    // last lanes under a mask (a masked store costs about as much as a block's products on some CPUs)
    let (start, end) = (dst.as_mut_ptr(), dst.len());
    macro_rules! store {
        ($to:expr, $n:expr, $v:expr) => {{
            let (to, n, v): (*mut i32, usize, __m256i) = ($to, $n, $v);
            // SAFETY: the first `n` lanes lie inside `dst` (the caller's block bounds), and all 8
            // where the register is stored whole
            unsafe {
                if n >= 8 || to.offset_from(start) as usize + 8 <= end {
                    _mm256_storeu_si256(to as *mut __m256i, v);
                } else {
                    _mm256_maskstore_epi32(to, mask(n), v);
                }
            }
        }};
    }
    for oy in 0..oh {
        // (a raw pointer: stores may pass the row's end, see `store`)
        let out = unsafe { start.add(oy * ow) };
        let row0 = oy * sy * g.width;
        if sx == 1 {
            // lane l of the even register is column j0 + 2l, of the odd one j0 + 2l + 1
            for j0 in (0..ow).step_by(16) {
                let (mut even, mut odd) = (_mm256_set1_epi32(g.bias), _mm256_set1_epi32(g.bias));
                for ky in 0..kh {
                    let at = row0 + ky * g.width + j0;
                    for p in 0..np {
                        let w = wv[ky * np + p];
                        even = madd!(even, load!(at + 2 * p), w);
                        odd = madd!(odd, load!(at + 2 * p + 1), w);
                    }
                }
                // (e0 o0 e1 o1 | e4 o4 e5 o5) and (e2 o2 e3 o3 | e6 o6 e7 o7) → columns 0–7, 8–15
                let (lo, hi) = (
                    _mm256_unpacklo_epi32(even, odd),
                    _mm256_unpackhi_epi32(even, odd),
                );
                let first = _mm256_permute2x128_si256::<0x20>(lo, hi);
                let second = _mm256_permute2x128_si256::<0x31>(lo, hi);
                let n = (ow - j0).min(16);
                // SAFETY: the block's first column lies in the row (`j0 < ow`), and its columns 8..
                // where `n > 8`
                let to = unsafe { out.add(j0) };
                store!(to, n, first);
                if n > 8 {
                    store!(unsafe { to.add(8) }, n - 8, second);
                }
            }
        } else {
            for j0 in (0..ow).step_by(8) {
                let mut acc = _mm256_set1_epi32(g.bias);
                for ky in 0..kh {
                    let at = row0 + ky * g.width + 2 * j0;
                    for p in 0..np {
                        acc = madd!(acc, load!(at + 2 * p), wv[ky * np + p]);
                    }
                }
                let n = (ow - j0).min(8);
                // SAFETY: the block's first column lies in the row (`j0 < ow`)
                store!(unsafe { out.add(j0) }, n, acc);
            }
        }
    }
}

/// A 16-bit depthwise kernel: pairs of taps along a row ([`PairPlan`]) or down a column ([`RowPairs`],
/// for dilated columns, which leave no neighbouring taps in a row).
enum Pairs {
    Across(PairPlan),
    Down(RowPairs),
}

impl Pairs {
    fn new(s: &ConvSpec<'_>, mx: u128, mw: u128) -> Option<Pairs> {
        PairPlan::new(s, mx, mw)
            .map(Pairs::Across)
            .or_else(|| RowPairs::new(s, mx, mw).map(Pairs::Down))
    }

    /// `i16` elements of the padded rows.
    fn len(&self) -> usize {
        match self {
            Pairs::Across(q) => q.len(),
            Pairs::Down(q) => q.len(),
        }
    }

    /// One output plane (`dst`) from its input plane, weights `taps` (`kh·kw`) and `bias`, the padded
    /// rows built in `rows` (of [`Pairs::len`] elements, zero when first given: only the image's
    /// elements are written, so the padding around them stays zero for every later plane).
    fn run(
        &self,
        s: &ConvSpec<'_>,
        plane: &[i32],
        rows: &mut [i16],
        taps: &[i32],
        bias: i32,
        dst: &mut [i32],
    ) {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `PairPlan::new` checked that the CPU has AVX-512 (F, BW) or else AVX2 (`wide` says
        // which), `RowPairs::new` AVX-512; the copies' stores and the kernels' loads
        // stay inside `rows`, whose rows (as `new` sized them) are wide and many enough for every
        // block's loads, and the outputs' stores inside `dst` (a block's last columns stored under a
        // mask of the columns it has).
        unsafe {
            match self {
                Pairs::Across(q) if q.wide => q.products(s, plane, rows, taps, bias, dst),
                Pairs::Across(q) => q.products_avx2(s, plane, rows, taps, bias, dst),
                Pairs::Down(q) => q.products(s, plane, rows, taps, bias, dst),
            }
        }
    }
}

/// The geometry of pairs of taps down a column ([`Pairs::run`]): a depthwise convolution of column
/// stride 1 (any row stride, any dilation) whose inputs and weights fit 16 bits, on AVX-512. Each input
/// plane is copied once into zero-padded rows of `width` 32-bit lanes, lane `c` of row `r` holding the pair (padded element
/// `(r, c)`, padded element `(r + dy, c)`): one `vpmaddwd` (or `vpdpwssd`) multiplies 16 consecutive
/// output columns' pairs by the taps `(w[2t][kx], w[2t + 1][kx])` of two kernel rows and adds them,
/// wherever the dilation puts a row's taps. The same sums in `i32` as the other kernels (the caller's
/// bound keeps every partial sum inside it).
struct RowPairs {
    /// Padded rows read.
    hp: usize,
    /// Lanes (pairs) per padded row.
    width: usize,
}

impl RowPairs {
    /// Output columns per block (one register of `i32`).
    const BLOCK: usize = 16;

    fn new(s: &ConvSpec<'_>, mx: u128, mw: u128) -> Option<RowPairs> {
        if !sixteen_bit_lanes(mx, mw) {
            return None;
        }
        let win = s.window;
        let (kh, kw) = (s.w[2], s.w[3]);
        let (dy, dx) = (win.dilation[0] as usize, win.dilation[1] as usize);
        if win.stride[1] != 1
            || dy == 0
            || dx == 0
            || kh.div_ceil(2) * kw > PairPlan::MAX_PAIRS
            || kh * kw == 0
        {
            return None;
        }
        let (oh, ow) = (s.out[2], s.out[3]);
        let (pl, pr) = (win.pads[1] as usize, win.pads[3] as usize);
        // the last block's loads end below `blocks · 16 + (kw − 1) · dx`; the padded image fits too
        let reads = ow.div_ceil(Self::BLOCK) * Self::BLOCK + (kw - 1) * dx;
        Some(RowPairs {
            hp: (oh.max(1) - 1) * win.stride[0] as usize + (kh - 1) * dy + 1,
            width: reads.max(pl + s.x[3] + pr),
        })
    }

    /// `i16` elements of the padded rows (two per lane).
    fn len(&self) -> usize {
        2 * self.hp * self.width
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx512bw")]
    unsafe fn products(
        &self,
        s: &ConvSpec<'_>,
        plane: &[i32],
        rows: &mut [i16],
        taps: &[i32],
        bias: i32,
        dst: &mut [i32],
    ) {
        use std::arch::x86_64::*;
        let (h, wd) = (s.x[2], s.x[3]);
        let (pt, pl) = (s.window.pads[0] as usize, s.window.pads[1] as usize);
        let (dy, dx) = (s.window.dilation[0] as usize, s.window.dilation[1] as usize);
        let (kh, kw) = (s.w[2], s.w[3]);
        // only the image's own elements are written (the padding stays zero): element (r, c) is the
        // low half of lane c of row r and the high half of the same lane of row r − dy, each 16 of
        // them by one masked store of the 16-bit halves of their 32-bit lanes
        for (iy, src) in plane.chunks_exact(wd).take(h).enumerate() {
            let r = pt + iy;
            for j in (0..wd).step_by(16) {
                let n = (wd - j).min(16);
                let k = ((1u32 << n) - 1) as __mmask16;
                // the halves at even (low) and odd (high) positions of the first 2n
                let even = ((1u64 << (2 * n)) - 1) as u32 & 0x5555_5555;
                let v = unsafe { _mm512_maskz_loadu_epi32(k, src.as_ptr().add(j)) };
                let lane = |row: usize| (row * self.width + pl + j) * 2;
                if r < self.hp && lane(r) + 2 * n <= rows.len() {
                    let to = unsafe { rows.as_mut_ptr().add(lane(r)) };
                    unsafe { _mm512_mask_storeu_epi16(to, even, v) };
                }
                if r >= dy && r - dy < self.hp && lane(r - dy) + 2 * n <= rows.len() {
                    let to = unsafe { rows.as_mut_ptr().add(lane(r - dy)) };
                    let hi = _mm512_slli_epi32::<16>(v);
                    unsafe { _mm512_mask_storeu_epi16(to, even << 1, hi) };
                }
            }
        }
        // the taps of kernel rows 2t and 2t + 1 (0 past the kernel) at column kx, as one word each
        let pairs = kh.div_ceil(2);
        let mut words = [0i32; PairPlan::MAX_PAIRS];
        for t in 0..pairs {
            for kx in 0..kw {
                let lo = taps[2 * t * kw + kx] as i16 as u16 as u32;
                let hi = (2 * t + 1 < kh).then(|| taps[(2 * t + 1) * kw + kx]);
                let hi = hi.map_or(0, |v| v as i16 as u16 as u32);
                words[t * kw + kx] = (lo | hi << 16) as i32;
            }
        }
        let g = RowPairBlocks {
            rows,
            out: [s.out[2], s.out[3]],
            steps: [
                s.window.stride[0] as usize * self.width,
                2 * dy * self.width,
                dx,
            ],
            taps: [pairs, kw],
            words: &words,
            bias,
        };
        let vnni = crate::qgemm::Level::detect() == crate::qgemm::Level::Avx512Vnni;
        // SAFETY: as for `PairPlan::products`
        unsafe {
            match ((pairs, kw), vnni) {
                ((3, 5), true) => row_pair_blocks_vnni::<3, 5>(&g, dst),
                ((2, 3), true) => row_pair_blocks_vnni::<2, 3>(&g, dst),
                (_, true) => row_pair_blocks_vnni::<0, 0>(&g, dst),
                ((3, 5), false) => row_pair_blocks::<3, 5, false>(&g, dst),
                ((2, 3), false) => row_pair_blocks::<2, 3, false>(&g, dst),
                (_, false) => row_pair_blocks::<0, 0, false>(&g, dst),
            }
        }
    }
}

/// One plane's padded rows of pairs and the taps of a [`RowPairs`] product.
#[cfg(target_arch = "x86_64")]
struct RowPairBlocks<'a> {
    rows: &'a [i16],
    /// Output rows and columns.
    out: [usize; 2],
    /// Lanes from one output row's first row to the next's, from one pair of kernel rows to the
    /// next, from one tap of a row to the next.
    steps: [usize; 3],
    /// Pairs of kernel rows, taps per row.
    taps: [usize; 2],
    /// Taps `kx` of kernel rows `2t` and `2t + 1` at `t · taps[1] + kx`.
    words: &'a [i32; PairPlan::MAX_PAIRS],
    bias: i32,
}

/// [`row_pair_blocks`] with `vpdpwssd` for each multiply-add.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn row_pair_blocks_vnni<const T: usize, const KW: usize>(
    g: &RowPairBlocks<'_>,
    dst: &mut [i32],
) {
    unsafe { row_pair_blocks::<T, KW, true>(g, dst) }
}

/// The output plane of a [`RowPairs`] product into `dst`, 16 output columns at a time: `T` pairs of
/// kernel rows of `KW` taps with their words in registers, or (`T = 0`) `g.taps` read from memory;
/// each word by one `vpmaddwd` and an add, or one `vpdpwssd` when `VNNI`.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn row_pair_blocks<const T: usize, const KW: usize, const VNNI: bool>(
    g: &RowPairBlocks<'_>,
    dst: &mut [i32],
) {
    use std::arch::x86_64::*;
    let [oh, ow] = g.out;
    let [row_step, pair_step, tap_step] = g.steps;
    let (pairs, kw) = if T > 0 {
        (T, KW)
    } else {
        (g.taps[0], g.taps[1])
    };
    let mut wv = [_mm512_setzero_si512(); PairPlan::MAX_PAIRS];
    for (v, &w) in wv.iter_mut().zip(g.words).take(pairs * kw) {
        *v = _mm512_set1_epi32(w);
    }
    let base = g.rows.as_ptr() as *const i32;
    for oy in 0..oh {
        let out = &mut dst[oy * ow..(oy + 1) * ow];
        for j0 in (0..ow).step_by(RowPairs::BLOCK) {
            let mut acc = _mm512_set1_epi32(g.bias);
            for t in 0..pairs {
                let at = oy * row_step + t * pair_step + j0;
                for kx in 0..kw {
                    let x = unsafe { _mm512_loadu_si512(base.add(at + kx * tap_step) as *const _) };
                    let w = wv[t * kw + kx];
                    acc = unsafe { pair_madd::<VNNI>(acc, x, w) };
                }
            }
            let n = (ow - j0).min(RowPairs::BLOCK);
            unsafe { _mm512_mask_storeu_epi32(out[j0..j0 + n].as_mut_ptr(), first_lanes(n), acc) };
        }
    }
}

/// The geometry of a depthwise convolution 16 channels at a time ([`ChannelLanes::run`]): for small
/// planes (a few output columns, where the row kernels leave most lanes of a register empty) with
/// one output channel per input channel and inputs and weights of 16 bits, on AVX-512. Sixteen
/// consecutive planes are copied once into zero-padded rows whose element is a register of the
/// sixteen channels' values at one position; an output position is then one multiply-add per tap for
/// all sixteen channels, wherever stride and dilation put the tap. A lane holds the input `x` as its
/// `i32` and the tap `w` as its low 16 bits (the high ones zero), so `vpmaddwd` (or `vpdpwssd`) adds
/// exactly `x·w + (x >> 16)·0`: the same products and wrapping `i32` sums as the other kernels (the
/// caller's bound keeps every partial sum inside `i32`).
struct ChannelLanes {
    /// Padded rows read.
    hp: usize,
    /// Positions per padded row.
    wp: usize,
    /// Where each image position goes in the padded rows (the AVX2 copy's; see
    /// [`ChannelLanes::image_places`]), found once for every block of channels.
    places: Vec<usize>,
    /// Where each output position's first tap reads ([`ChannelLanes::output_reads`]), likewise.
    reads: Vec<usize>,
    /// The level the layout is for (AVX-512, or AVX2 with `places` and `reads`): decided once, so
    /// every block runs the kernels the layout was made for.
    isa: crate::simd::Isa,
}

impl ChannelLanes {
    /// Channels per block (one register of `i32`).
    const LANES: usize = 16;
    /// The widest input and output rows this layout is taken for: wider outputs fill the row kernels'
    /// registers, and wider inputs (a stride of 2 from 32 columns or more) cost more to lay out than
    /// their products gain.
    const MAX_WIDTH: usize = 16;
    /// The most taps a kernel may have (their registers are built once per block).
    const MAX_TAPS: usize = 64;

    fn new(s: &ConvSpec<'_>, mx: u128, mw: u128) -> Option<ChannelLanes> {
        // AVX-512, or AVX2 as two registers of eight channels
        let isa = crate::simd::Isa::detect();
        let vector = matches!(isa, crate::simd::Isa::Avx512 | crate::simd::Isa::Avx2);
        if !(vector && mx <= i16::MAX as u128 && mw <= i16::MAX as u128) {
            return None;
        }
        if isa == crate::simd::Isa::Avx2 && s.out[3] > 8 {
            return None;
        }
        let win = s.window;
        let (kh, kw) = (s.w[2], s.w[3]);
        let (oh, ow) = (s.out[2], s.out[3]);
        // one output channel per input channel (so output plane q reads input plane q), enough
        // channels to fill a register, short output rows
        if s.w[0] != s.x[1]
            || s.groups != s.x[1]
            || s.x[1] < Self::LANES
            || ow > Self::MAX_WIDTH
            || s.x[3] > Self::MAX_WIDTH
            || kh * kw == 0
            || kh * kw > Self::MAX_TAPS
            || oh * ow == 0
        {
            return None;
        }
        let (sy, sx) = (win.stride[0] as usize, win.stride[1] as usize);
        let (dy, dx) = (win.dilation[0] as usize, win.dilation[1] as usize);
        let mut plan = ChannelLanes {
            hp: (oh - 1) * sy + (kh - 1) * dy + 1,
            wp: (ow - 1) * sx + (kw - 1) * dx + 1,
            places: Vec::new(),
            reads: Vec::new(),
            isa,
        };
        if isa == crate::simd::Isa::Avx2 {
            plan.places = plan.image_places(s);
            plan.reads = plan.output_reads(s);
        }
        Some(plan)
    }

    /// `i32` elements of the padded rows, and one position more: where the AVX2 copy puts the image
    /// positions no tap reads ([`ChannelLanes::image_places`]).
    fn len(&self) -> usize {
        (self.hp * self.wp + 1) * Self::LANES
    }

    /// Where each tap reads in the padded rows (in `i32` elements), from an output position's first.
    fn tap_offsets(&self, s: &ConvSpec<'_>) -> [usize; Self::MAX_TAPS] {
        let (kh, kw) = (s.w[2], s.w[3]);
        let (dy, dx) = (s.window.dilation[0] as usize, s.window.dilation[1] as usize);
        let mut offs = [0usize; Self::MAX_TAPS];
        for (t, o) in offs.iter_mut().enumerate().take(kh * kw) {
            *o = ((t / kw) * dy * self.wp + (t % kw) * dx) * Self::LANES;
        }
        offs
    }

    /// Where each image position goes in the padded rows (none for those below the last row read).
    fn image_places(&self, s: &ConvSpec<'_>) -> Vec<usize> {
        let (h, wd) = (s.x[2], s.x[3]);
        let (pt, pl) = (s.window.pads[0] as usize, s.window.pads[1] as usize);
        let inside = |iy: usize, ix: usize| pt + iy < self.hp && pl + ix < self.wp;
        let unread = self.hp * self.wp * Self::LANES;
        (0..h * wd)
            .map(|f| {
                let (iy, ix) = (f / wd, f % wd);
                match inside(iy, ix) {
                    true => ((pt + iy) * self.wp + pl + ix) * Self::LANES,
                    false => unread,
                }
            })
            .collect()
    }

    /// Where each output position's first tap reads in the padded rows.
    fn output_reads(&self, s: &ConvSpec<'_>) -> Vec<usize> {
        let (oh, ow) = (s.out[2], s.out[3]);
        let (sy, sx) = (s.window.stride[0] as usize, s.window.stride[1] as usize);
        (0..oh * ow)
            .map(|o| ((o / ow) * sy * self.wp + (o % ow) * sx) * Self::LANES)
            .collect()
    }

    /// The output planes `dst` (`n ≤ 16` of them, `n·oh·ow` elements) from the input planes `x` (as
    /// many, `n·h·w` elements): plane `l` is channel `c = (q + l) mod o` of the `o` whose taps `w` holds
    /// (`kh·kw` each), with the bias `bias(c)`. `rows` holds [`ChannelLanes::len`] elements, zero when
    /// first given (only the image's positions are written, so the padding stays zero for every later
    /// block); `words` holds `kh·kw` registers' room, filled here.
    fn run(
        &self,
        s: &ConvSpec<'_>,
        x: &[i32],
        rows: &mut [i32],
        words: &mut [[i32; 16]],
        (q, w, bias): (usize, &[i32], &dyn Fn(usize) -> i32),
        dst: &mut [i32],
    ) {
        let (o, kk) = (s.w[0], s.w[2] * s.w[3]);
        let n = dst.len() / (s.out[2] * s.out[3]);
        assert!(n <= Self::LANES && x.len() >= n * s.x[2] * s.x[3] && rows.len() >= self.len());
        assert!(words.len() >= kk && w.len() >= o * kk);
        // each tap's sixteen weights in the low halves of their lanes (lanes past `n` are never
        // stored: whatever they hold)
        let mut biases = [0i32; 16];
        for (l, b) in biases.iter_mut().enumerate().take(n) {
            let c = (q + l) % o;
            for (t, &v) in w[c * kk..(c + 1) * kk].iter().enumerate() {
                words[t][l] = v & 0xffff;
            }
            *b = bias(c);
        }
        let vnni = crate::qgemm::Level::detect() == crate::qgemm::Level::Avx512Vnni;
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `new` checked that the CPU has AVX-512 (F, BW) or AVX2 (the level it recorded in
        // `isa`), and VNNI is taken only where the CPU has it; the assertions above
        // keep the loads of the planes inside `x` (planes below `n`, positions below `h·w` under a
        // mask), the copy and the taps' loads inside `rows` (positions below `hp·wp`, as `new` sized
        // them) and the stores inside `dst` (planes below `n`, positions below `oh·ow` under a mask)
        unsafe {
            let g = LaneBlock {
                rows,
                words: &words[..kk],
                biases: &biases,
                n,
            };
            if self.isa != crate::simd::Isa::Avx512 {
                return match kk {
                    9 => lane_block_avx2::<9>(self, s, x, g, dst),
                    25 => lane_block_avx2::<25>(self, s, x, g, dst),
                    _ => lane_block_avx2::<0>(self, s, x, g, dst),
                };
            }
            match (kk, vnni) {
                (9, true) => lane_block_vnni::<9>(self, s, x, g, dst),
                (25, true) => lane_block_vnni::<25>(self, s, x, g, dst),
                (_, true) => lane_block_vnni::<0>(self, s, x, g, dst),
                (9, false) => lane_block_avx512::<9>(self, s, x, g, dst),
                (25, false) => lane_block_avx512::<25>(self, s, x, g, dst),
                (_, false) => lane_block_avx512::<0>(self, s, x, g, dst),
            }
        }
    }
}

/// One block of [`ChannelLanes`]: its padded rows, the taps' and biases' lanes, the planes it has.
#[cfg(target_arch = "x86_64")]
struct LaneBlock<'a> {
    rows: &'a mut [i32],
    words: &'a [[i32; 16]],
    biases: &'a [i32; 16],
    n: usize,
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn lane_block_avx512<const KK: usize>(
    plan: &ChannelLanes,
    s: &ConvSpec<'_>,
    x: &[i32],
    g: LaneBlock<'_>,
    dst: &mut [i32],
) {
    unsafe { lane_block::<KK, false>(plan, s, x, g, dst) }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn lane_block_vnni<const KK: usize>(
    plan: &ChannelLanes,
    s: &ConvSpec<'_>,
    x: &[i32],
    g: LaneBlock<'_>,
    dst: &mut [i32],
) {
    unsafe { lane_block::<KK, true>(plan, s, x, g, dst) }
}

/// [`ChannelLanes::run`]'s copy and products: each 16 image positions of the sixteen planes loaded
/// (a register per plane) and turned into a register per position, stored in their padded row; then
/// every output position's sums (the bias, then each tap by one `vpmaddwd` and an add, or one
/// `vpdpwssd` when `VNNI`), turned back 16 positions at a time into a register per plane and stored.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn lane_block<const KK: usize, const VNNI: bool>(
    plan: &ChannelLanes,
    s: &ConvSpec<'_>,
    x: &[i32],
    g: LaneBlock<'_>,
    dst: &mut [i32],
) {
    use std::arch::x86_64::*;
    let (h, wd) = (s.x[2], s.x[3]);
    let (oh, ow) = (s.out[2], s.out[3]);
    let (kh, kw) = (s.w[2], s.w[3]);
    let win = s.window;
    let (sy, sx) = (win.stride[0] as usize, win.stride[1] as usize);
    let (pt, pl) = (win.pads[0] as usize, win.pads[1] as usize);
    let (hp, wp) = (plan.hp, plan.wp);
    let (hw, p) = (h * wd, oh * ow);
    let rows = g.rows.as_mut_ptr();
    let zero = _mm512_setzero_si512();
    // the image's positions, 16 at a time, into the padded rows read
    for f0 in (0..hw).step_by(16) {
        let m = first_lanes(hw - f0);
        let mut r = [zero; 16];
        for (l, v) in r.iter_mut().enumerate().take(g.n) {
            *v = unsafe { _mm512_maskz_loadu_epi32(m, x.as_ptr().add(l * hw + f0)) };
        }
        let cols = unsafe { transpose16(r) };
        for (j, col) in cols.iter().enumerate().take(hw - f0) {
            let (iy, ix) = ((f0 + j) / wd, (f0 + j) % wd);
            if pt + iy < hp && pl + ix < wp {
                let at = ((pt + iy) * wp + pl + ix) * 16;
                unsafe { _mm512_storeu_si512(rows.add(at) as *mut _, *col) };
            }
        }
    }
    let mut wv = [zero; ChannelLanes::MAX_TAPS];
    for (v, w) in wv.iter_mut().zip(g.words) {
        *v = unsafe { _mm512_loadu_si512(w.as_ptr() as *const _) };
    }
    let bias = unsafe { _mm512_loadu_si512(g.biases.as_ptr() as *const _) };
    let rows = rows as *const i32;
    // where each tap reads, from an output position's first; a fixed count unrolls the loop
    let taps = if KK > 0 { KK } else { kh * kw };
    let offs = plan.tap_offsets(s);
    // 16 output positions at a time, each a register of sixteen planes' sums
    for o0 in (0..p).step_by(16) {
        let mut acc = [bias; 16];
        for (j, sums) in acc.iter_mut().enumerate().take(p - o0) {
            let (oy, ox) = ((o0 + j) / ow, (o0 + j) % ow);
            let at = unsafe { rows.add((oy * sy * wp + ox * sx) * 16) };
            // the sums in a register, not in the array
            let mut a = bias;
            for (&off, &w) in offs[..taps].iter().zip(&wv[..taps]) {
                let x = unsafe { _mm512_loadu_si512(at.add(off) as *const _) };
                a = unsafe { pair_madd::<VNNI>(a, x, w) };
            }
            *sums = a;
        }
        let planes = unsafe { transpose16(acc) };
        let m = first_lanes(p - o0);
        for (l, v) in planes.iter().enumerate().take(g.n) {
            unsafe { _mm512_mask_storeu_epi32(dst.as_mut_ptr().add(l * p + o0), m, *v) };
        }
    }
}

/// [`lane_block`] on AVX2: each position's sixteen channels as two registers of eight. The copy
/// loads 8 positions of 8 planes at a time (under a mask past the image or the block's planes) and
/// transposes them into 8 positions' registers; the products run per half of the channels, 8
/// output positions at a time, each position's sums in a register (the bias, then each tap by one
/// `vpmaddwd` and an add), transposed back into 8 planes' registers and stored under a mask past
/// the last position.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn lane_block_avx2<const KK: usize>(
    plan: &ChannelLanes,
    s: &ConvSpec<'_>,
    x: &[i32],
    g: LaneBlock<'_>,
    dst: &mut [i32],
) {
    use std::arch::x86_64::*;
    let (hw, p) = (s.x[2] * s.x[3], s.out[2] * s.out[3]);
    let rows = g.rows.as_mut_ptr();
    let zero = _mm256_setzero_si256();
    // lane l set where l < n
    let mask = |n: usize| {
        _mm256_cmpgt_epi32(
            _mm256_set1_epi32(n.min(8) as i32),
            _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7),
        )
    };
    let (put, read) = (&plan.places, &plan.reads);
    assert!(put.len() == hw && read.len() == p);
    // the image's positions, 8 at a time, 8 planes at a time, into the padded rows read
    // (every position is stored: those no tap reads in the one past the padded rows)
    for f0 in (0..hw).step_by(8) {
        let m = mask(hw - f0);
        for half in 0..2 {
            let mut r = [zero; 8];
            if 8 * half + 8 <= g.n && f0 + 8 <= hw {
                // eight whole planes' eight positions
                for (l, v) in r.iter_mut().enumerate() {
                    let at = (8 * half + l) * hw + f0;
                    *v = unsafe { _mm256_loadu_si256(x.as_ptr().add(at) as *const __m256i) };
                }
            } else {
                for (l, v) in r.iter_mut().enumerate() {
                    let plane = 8 * half + l;
                    if plane < g.n {
                        *v = unsafe { _mm256_maskload_epi32(x.as_ptr().add(plane * hw + f0), m) };
                    }
                }
            }
            let cols = unsafe { transpose8(r) };
            for (col, &at) in cols.iter().zip(&put[f0..]) {
                let to = unsafe { rows.add(at + 8 * half) };
                unsafe { _mm256_storeu_si256(to as *mut __m256i, *col) };
            }
        }
    }
    let rows = rows as *const i32;
    // where each tap reads, from an output position's first; a fixed count unrolls the loop
    let taps = if KK > 0 { KK } else { s.w[2] * s.w[3] };
    let offs = plan.tap_offsets(s);
    for half in 0..2 {
        if 8 * half >= g.n {
            break;
        }
        let mut wv = [zero; ChannelLanes::MAX_TAPS];
        for (v, w) in wv.iter_mut().zip(g.words) {
            *v = unsafe { _mm256_loadu_si256(w.as_ptr().add(8 * half) as *const __m256i) };
        }
        let bias = unsafe { _mm256_loadu_si256(g.biases.as_ptr().add(8 * half) as *const __m256i) };
        // 8 output positions at a time, each a register of eight planes' sums
        for o0 in (0..p).step_by(8) {
            let mut acc = [bias; 8];
            for (sums, &first) in acc.iter_mut().zip(&read[o0..]) {
                let at = unsafe { rows.add(first + 8 * half) };
                let mut a = bias;
                for (&off, &w) in offs[..taps].iter().zip(&wv[..taps]) {
                    let x = unsafe { _mm256_loadu_si256(at.add(off) as *const __m256i) };
                    a = _mm256_add_epi32(a, _mm256_madd_epi16(x, w));
                }
                *sums = a;
            }
            let planes = unsafe { transpose8(acc) };
            for (l, v) in planes.iter().enumerate().take(g.n - 8 * half).take(8) {
                let to = unsafe { dst.as_mut_ptr().add((8 * half + l) * p + o0) };
                unsafe { store_first8!(to, p - o0, *v) };
            }
        }
    }
}

/// The 8×8 matrix of `i32` whose row `i` is `r[i]`, transposed (32-bit and 64-bit unpacks, then
/// 128-bit permutes).
///
/// # Safety
/// The CPU must have AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
#[inline]
unsafe fn transpose8(r: [std::arch::x86_64::__m256i; 8]) -> [std::arch::x86_64::__m256i; 8] {
    use std::arch::x86_64::*;
    // rows 2i and 2i + 1 interleaved: (a0 b0 a1 b1 | a4 b4 a5 b5) and (a2 b2 a3 b3 | a6 b6 a7 b7)
    let mut t = [_mm256_setzero_si256(); 8];
    for i in 0..4 {
        t[2 * i] = _mm256_unpacklo_epi32(r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = _mm256_unpackhi_epi32(r[2 * i], r[2 * i + 1]);
    }
    // four rows' columns side by side: (a0 b0 c0 d0 | a4 b4 c4 d4), (a1 b1 c1 d1 | a5 …), …
    let mut u = [_mm256_setzero_si256(); 8];
    for q in 0..2 {
        let (e, f) = (t[4 * q], t[4 * q + 2]);
        let (g, h) = (t[4 * q + 1], t[4 * q + 3]);
        u[4 * q] = _mm256_unpacklo_epi64(e, f);
        u[4 * q + 1] = _mm256_unpackhi_epi64(e, f);
        u[4 * q + 2] = _mm256_unpacklo_epi64(g, h);
        u[4 * q + 3] = _mm256_unpackhi_epi64(g, h);
    }
    // column j: rows 0–3 from u[j mod 4] of the first four rows, rows 4–7 from the second
    let mut out = [_mm256_setzero_si256(); 8];
    for j in 0..4 {
        out[j] = _mm256_permute2x128_si256::<0x20>(u[j], u[4 + j]);
        out[4 + j] = _mm256_permute2x128_si256::<0x31>(u[j], u[4 + j]);
    }
    out
}

/// The 16×16 matrix of `i32` whose row `i` is `r[i]`, transposed: element `j` of row `i` becomes
/// element `i` of row `j` (64 shuffles: 32-bit, 64-bit and two rounds of 128-bit ones).
///
/// # Safety
/// The CPU must have AVX-512 F.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn transpose16(r: [std::arch::x86_64::__m512i; 16]) -> [std::arch::x86_64::__m512i; 16] {
    use std::arch::x86_64::*;
    unsafe {
        // t[2i], t[2i + 1]: rows 2i and 2i + 1 interleaved (elements 0, 1 | 4, 5 | … and 2, 3 | 6, 7 | …)
        // (loops, not closures: a closure would not have this function's instruction sets)
        let mut t = [_mm512_setzero_si512(); 16];
        for i in 0..8 {
            t[2 * i] = _mm512_unpacklo_epi32(r[2 * i], r[2 * i + 1]);
            t[2 * i + 1] = _mm512_unpackhi_epi32(r[2 * i], r[2 * i + 1]);
        }
        // u[4q + c]: rows 4q..4q + 4 at elements c, c + 4, c + 8, c + 12 (one per 128-bit lane)
        let mut u = [_mm512_setzero_si512(); 16];
        for q in 0..4 {
            for h in 0..2 {
                let (a, b) = (t[4 * q + h], t[4 * q + 2 + h]);
                u[4 * q + 2 * h] = _mm512_unpacklo_epi64(a, b);
                u[4 * q + 2 * h + 1] = _mm512_unpackhi_epi64(a, b);
            }
        }
        let mut out = [_mm512_setzero_si512(); 16];
        for c in 0..4 {
            // lanes 0 and 2, then 1 and 3, of rows 0..8 and of rows 8..16
            let (e0, e1) = (
                _mm512_shuffle_i32x4::<0x88>(u[c], u[4 + c]),
                _mm512_shuffle_i32x4::<0x88>(u[8 + c], u[12 + c]),
            );
            let (o0, o1) = (
                _mm512_shuffle_i32x4::<0xdd>(u[c], u[4 + c]),
                _mm512_shuffle_i32x4::<0xdd>(u[8 + c], u[12 + c]),
            );
            out[c] = _mm512_shuffle_i32x4::<0x88>(e0, e1);
            out[c + 8] = _mm512_shuffle_i32x4::<0xdd>(e0, e1);
            out[c + 4] = _mm512_shuffle_i32x4::<0x88>(o0, o1);
            out[c + 12] = _mm512_shuffle_i32x4::<0xdd>(o0, o1);
        }
        out
    }
}

/// Output columns computed together in [`depthwise_plane`] (one AVX-512 register of `i32`).
const DW_LANES: usize = 16;

/// The geometry of a depthwise convolution in [`depthwise_plane`]'s layout: each input plane is copied
/// once into zero-padded rows split by column phase (`stride` phases, phase `q` holding padded columns
/// `q, q + stride, …`), so that every tap reads consecutive elements for consecutive output columns.
struct DwPlan {
    /// Padded rows read.
    hp: usize,
    /// Elements per phase of a padded row (whole register blocks of output columns fit).
    span: usize,
    /// Blocks of [`DW_LANES`] output columns per output row.
    blocks: usize,
    /// Where tap `(ky, kx)` reads, relative to output row 0 and column block 0.
    taps_at: Vec<usize>,
    /// Per phase, the positions whose padded column lies inside the image.
    inside: Vec<(usize, usize)>,
}

impl DwPlan {
    fn new(s: &ConvSpec<'_>) -> DwPlan {
        let (wd, kh, kw) = (s.x[3], s.w[2], s.w[3]);
        let (oh, ow) = (s.out[2], s.out[3]);
        let win = s.window;
        let (sy, sx) = (win.stride[0] as usize, win.stride[1] as usize);
        let (dy, dx) = (win.dilation[0] as usize, win.dilation[1] as usize);
        let px = win.pads[1] as i64;
        let blocks = ow.div_ceil(DW_LANES);
        let span = blocks * DW_LANES + (kw - 1) * dx / sx + 1;
        let inside_of = |q: usize| {
            let first = (0..span)
                .find(|&j| (j * sx + q) as i64 >= px)
                .unwrap_or(span);
            let end = (first..span)
                .find(|&j| (j * sx + q) as i64 >= px + wd as i64)
                .unwrap_or(span);
            (first, end)
        };
        DwPlan {
            hp: (oh.max(1) - 1) * sy + (kh - 1) * dy + 1,
            span,
            blocks,
            taps_at: (0..kh * kw)
                .map(|t| {
                    let (ky, kx) = (t / kw, t % kw);
                    (ky * dy * sx + (kx * dx) % sx) * span + (kx * dx) / sx
                })
                .collect(),
            inside: (0..sx).map(inside_of).collect(),
        }
    }
}

crate::multiversion! {
    fn depthwise_plane(s: &ConvSpec<'_>, plan: &DwPlan, plane: &[i32], rows: &mut [i32], taps: &[i32], bias: i32, dst: &mut [i32]) -> () = depthwise_plane_body
}

/// One input plane of a depthwise convolution in `i32` (the caller's bound keeps every sum inside it):
/// the plane is laid out as [`DwPlan`] says in `rows` (zero when first given: only the image's
/// elements are written, so the padding stays zero for every later plane), then each output channel
/// reading it (`taps` holds their `kh·kw` weights one after another, `dst` their output planes)
/// accumulates [`DW_LANES`] output columns over all taps in registers before storing them.
#[inline(always)]
fn depthwise_plane_body(
    s: &ConvSpec<'_>,
    plan: &DwPlan,
    plane: &[i32],
    rows: &mut [i32],
    taps: &[i32],
    bias: i32,
    dst: &mut [i32],
) {
    let (h, wd, kk) = (s.x[2], s.x[3], s.w[2] * s.w[3]);
    let (oh, ow) = (s.out[2], s.out[3]);
    let p = oh * ow;
    let (sy, sx) = (s.window.stride[0] as usize, s.window.stride[1] as usize);
    let (py, px) = (s.window.pads[0] as i64, s.window.pads[1] as i64);
    let span = plan.span;
    let (rows, halves) = rows.split_at_mut(plan.hp * sx * span);
    let half = wd.div_ceil(2);
    // only the image's own elements are written: the padding around them lies at the same places for
    // every plane and stays as the caller made it, zero
    for r in 0..plan.hp {
        let iy = r as i64 - py;
        let row = &mut rows[r * sx * span..(r + 1) * sx * span];
        if iy < 0 || iy >= h as i64 {
            continue;
        }
        let src = &plane[iy as usize * wd..(iy as usize + 1) * wd];
        if sx == 2 {
            // the row's even and odd columns, each then copied whole into the phase that reads it
            let (even, odd) = halves[..2 * half].split_at_mut(half);
            for (p, (e, o)) in src.chunks_exact(2).zip(even.iter_mut().zip(odd.iter_mut())) {
                *e = p[0];
                *o = p[1];
            }
            if wd % 2 == 1 {
                even[half - 1] = src[wd - 1];
            }
        }
        for (q, &(j0, j1)) in plan.inside.iter().enumerate() {
            let d = &mut row[q * span..(q + 1) * span];
            if j1 > j0 {
                let ix0 = ((j0 * sx + q) as i64 - px) as usize;
                if sx == 1 {
                    d[j0..j1].copy_from_slice(&src[ix0..ix0 + j1 - j0]);
                } else if sx == 2 {
                    let class = if ix0.is_multiple_of(2) {
                        &halves[..half]
                    } else {
                        &halves[half..]
                    };
                    d[j0..j1].copy_from_slice(&class[ix0 / 2..ix0 / 2 + j1 - j0]);
                } else {
                    for (t, v) in d[j0..j1].iter_mut().enumerate() {
                        *v = src[ix0 + t * sx];
                    }
                }
            }
        }
    }
    for (taps, out) in taps.chunks_exact(kk).zip(dst.chunks_exact_mut(p)) {
        for oy in 0..oh {
            let orow = &mut out[oy * ow..(oy + 1) * ow];
            let base = oy * sy * sx * span;
            for blk in 0..plan.blocks {
                let mut acc = [bias; DW_LANES];
                for (&wv, &t) in taps.iter().zip(&plan.taps_at) {
                    let at = base + t + blk * DW_LANES;
                    let src: &[i32; DW_LANES] =
                        rows[at..at + DW_LANES].try_into().unwrap_or(&[0; DW_LANES]);
                    for l in 0..DW_LANES {
                        acc[l] += src[l] * wv;
                    }
                }
                let j0 = blk * DW_LANES;
                let len = DW_LANES.min(ow - j0);
                orow[j0..j0 + len].copy_from_slice(&acc[..len]);
            }
        }
    }
}

/// A depthwise convolution's accumulators, tap by tap, in `T` (wide enough by the caller's bound);
/// each output channel's row is handed to `emit` with its slice of `out`.
#[inline(always)]
fn depthwise_taps<T>(
    s: &ConvSpec<'_>,
    x: &[i32],
    w: &[i32],
    bias_at: impl Fn(usize) -> T,
    out: &mut [i32],
    mut emit: impl FnMut(&mut [i32], &[T]) -> Result<(), ExecError>,
) -> Result<(), ExecError>
where
    T: Copy + From<i32> + std::ops::Mul<Output = T> + std::ops::AddAssign,
{
    let (n, c, h, wd) = (s.x[0], s.x[1], s.x[2], s.x[3]);
    let (o_ch, kh, kw) = (s.w[0], s.w[2], s.w[3]);
    let (oh, ow) = (s.out[2], s.out[3]);
    let og = o_ch / s.groups;
    let p = oh * ow;
    let win = s.window;
    let (sy, sx) = (win.stride[0] as usize, win.stride[1] as usize);
    let (dy, dx) = (win.dilation[0] as usize, win.dilation[1] as usize);
    let (py, px) = (win.pads[0] as i64, win.pads[1] as i64);
    let mut acc = vec![T::from(0); p];
    for b in 0..n {
        for oc in 0..o_ch {
            let plane = &x[(b * c + oc / og) * h * wd..(b * c + oc / og + 1) * h * wd];
            acc.fill(bias_at(oc));
            for ky in 0..kh {
                for kx in 0..kw {
                    let wv = w[(oc * kh + ky) * kw + kx];
                    if wv == 0 {
                        continue;
                    }
                    let wv = T::from(wv);
                    let Some((x0, x1, start)) = valid_columns(ow, wd, (sx, dx, px), kx) else {
                        continue;
                    };
                    for oy in 0..oh {
                        let iy = (oy * sy + ky * dy) as i64 - py;
                        if iy < 0 || iy >= h as i64 {
                            continue;
                        }
                        let src = &plane[iy as usize * wd..(iy as usize + 1) * wd];
                        let dst = &mut acc[oy * ow + x0..oy * ow + x1];
                        if sx == 1 {
                            for (d, &v) in dst.iter_mut().zip(&src[start..start + (x1 - x0)]) {
                                *d += T::from(v) * wv;
                            }
                        } else {
                            for (j, d) in dst.iter_mut().enumerate() {
                                *d += T::from(src[start + j * sx]) * wv;
                            }
                        }
                    }
                }
            }
            emit(&mut out[(b * o_ch + oc) * p..(b * o_ch + oc + 1) * p], &acc)?;
        }
    }
    Ok(())
}

/// A requantization's bias and shift in the form the multiversioned row loops take, if they have it: a
/// bias of magnitude below `2^62` (with `|acc| < 2^48`, `acc + bias` stays inside `i64`) and a
/// rounding shift below 62.
fn row_form(bias: i128, shift: i32) -> Option<(i64, Shift)> {
    let bv = i64::try_from(bias)
        .ok()
        .filter(|bv| bv.unsigned_abs() < 1 << 62)?;
    Some((bv, Shift::new(shift).filter(|_| shift < 62)?))
}

/// `dst[j] = fit(rshift(acc[j] + bias, shift))`, in `i64` when that is exact (`|acc| < 2^48`: 8-bit
/// products, or 16-bit ones joined from their halves; or `|acc| < 2^62` with no bias).
pub(crate) fn requantize_row<T: RowAcc>(
    dst: &mut [i32],
    acc: &[T],
    bias: i128,
    shift: i32,
) -> Result<(), ExecError> {
    if let Some((bv, sh)) = row_form(bias, shift) {
        return shift_row(dst, acc, bv, sh, T::ADD_SHIFT);
    }
    match i64::try_from(bias) {
        // |acc| < 2^48, so acc + bias cannot leave i64
        Ok(bv) if bv.unsigned_abs() < 1 << 62 => {
            for (d, &a) in dst.iter_mut().zip(acc) {
                *d = requantize(a.into() + bv, shift)?;
            }
        }
        _ => {
            for (d, &a) in dst.iter_mut().zip(acc) {
                *d = fit(rshift(a.into() as i128 + bias, shift))?;
            }
        }
    }
    Ok(())
}

/// Elements `start..start + row.len()` of an output requantized in place ([`requantize_in_place`])
/// and handed to `hook` a part of [`REQUANT_PART`] elements at a time, each part while it is in the
/// L1 cache.
pub(crate) fn requantize_then(
    row: &mut [i32],
    start: usize,
    bias: i128,
    shift: i32,
    hook: Option<RowHook<'_>>,
) -> Result<(), ExecError> {
    for (i, part) in row.chunks_mut(REQUANT_PART).enumerate() {
        if bias != 0 || shift != 0 {
            requantize_in_place(part, bias, shift)?;
        }
        if let Some(h) = hook {
            h(start + i * REQUANT_PART, part);
        }
    }
    Ok(())
}

/// Elements `start..start + dst.len()` of an output requantized from their sums `acc` (as many) into
/// `dst` ([`requantize_row`]) and handed to `hook` a part of [`REQUANT_PART`] elements at a
/// time, as [`requantize_then`] does in place.
pub(crate) fn requantize_from_then<T: RowAcc>(
    dst: &mut [i32],
    acc: &[T],
    start: usize,
    bias: i128,
    shift: i32,
    hook: Option<RowHook<'_>>,
) -> Result<(), ExecError> {
    for (i, (part, sums)) in dst
        .chunks_mut(REQUANT_PART)
        .zip(acc.chunks(REQUANT_PART))
        .enumerate()
    {
        requantize_row(part, sums, bias, shift)?;
        if let Some(h) = hook {
            h(start + i * REQUANT_PART, part);
        }
    }
    Ok(())
}

/// [`requantize_then`] with a bias per element of the row (`cols[j]`, at the sums' scale, each of
/// magnitude below `2^62`).
fn requantize_cols_then(
    row: &mut [i32],
    start: usize,
    cols: &[i64],
    shift: i32,
    hook: Option<RowHook<'_>>,
) -> Result<(), ExecError> {
    let parts = row.chunks_mut(REQUANT_PART).zip(cols.chunks(REQUANT_PART));
    for (i, (part, adds)) in parts.enumerate() {
        match Shift::new(shift).filter(|_| shift < 62) {
            // |part[j]| < 2^31 and |adds[j]| < 2^62: no sum leaves i64
            Some(sh) => {
                let (lo, hi) = add_cols_shift_in_place(part, adds, sh.half, sh.right, sh.left);
                check_row(lo, hi, sh.left)?;
            }
            None => {
                for (d, &b) in part.iter_mut().zip(adds) {
                    *d = fit(rshift(*d as i128 + b as i128, shift))?;
                }
            }
        }
        if let Some(h) = hook {
            h(start + i * REQUANT_PART, part);
        }
    }
    Ok(())
}

/// `row[j] = ((row[j] + adds[j] + half) >> right) << left` (wrapping to `i32`); returns the least
/// and greatest `(row[j] + adds[j] + half) >> right` (0 included), for one range check per row.
#[inline(always)]
fn add_cols_shift_in_place_body(
    row: &mut [i32],
    adds: &[i64],
    half: i64,
    right: u32,
    left: u32,
) -> (i64, i64) {
    let (mut lo, mut hi) = (0i64, 0i64);
    for (d, &b) in row.iter_mut().zip(adds) {
        let v = (*d as i64 + b + half) >> right;
        lo = lo.min(v);
        hi = hi.max(v);
        *d = (v as i32).wrapping_shl(left);
    }
    (lo, hi)
}

crate::multiversion! {
    fn add_cols_shift_in_place(row: &mut [i32], adds: &[i64], half: i64, right: u32, left: u32) -> (i64, i64) = add_cols_shift_in_place_body
}

/// Elements requantized and handed on together by [`requantize_then`] (16 KB of `i32`).
pub(crate) const REQUANT_PART: usize = 4096;

/// [`requantize_row`] of `i32` sums in place.
pub(crate) fn requantize_in_place(
    row: &mut [i32],
    bias: i128,
    shift: i32,
) -> Result<(), ExecError> {
    match i64::try_from(bias) {
        // |row[j]| < 2^31, so row[j] + bias cannot leave i64
        Ok(bv) if bv.unsigned_abs() < 1 << 62 => {
            if let Some(sh) = Shift::new(shift).filter(|_| shift < 62) {
                let (lo, hi) = add_shift_in_place(row, bv + sh.half, sh.right, sh.left);
                return check_row(lo, hi, sh.left);
            }
            for d in row.iter_mut() {
                *d = requantize(*d as i64 + bv, shift)?;
            }
        }
        _ => {
            for d in row.iter_mut() {
                *d = fit(rshift(*d as i128 + bias, shift))?;
            }
        }
    }
    Ok(())
}

/// `row[j] = ((row[j] + add) >> right) << left` (wrapping to `i32`); returns the least and greatest
/// `(row[j] + add) >> right` (0 included), for one range check per row.
#[inline(always)]
fn add_shift_in_place_body(row: &mut [i32], add: i64, right: u32, left: u32) -> (i64, i64) {
    let (mut lo, mut hi) = (0i64, 0i64);
    // each chunk copied out first, so that one redone in `i64` reads its sums unchanged
    let mut sums = [0i32; NARROW_CHUNK];
    for d in row.chunks_mut(NARROW_CHUNK) {
        let sums = &mut sums[..d.len()];
        sums.copy_from_slice(d);
        let (l, h) = add_shift_narrow_body(d, sums, add, right, left);
        lo = lo.min(l);
        hi = hi.max(h);
    }
    (lo, hi)
}

crate::multiversion! {
    fn add_shift_in_place(row: &mut [i32], add: i64, right: u32, left: u32) -> (i64, i64) = add_shift_in_place_body
}

/// An accumulator type with its multiversioned row loops.
pub(crate) trait RowAcc: Copy + Into<i64> {
    const ADD_SHIFT: AddShift<Self>;
    const ADD_SHIFT_ROWS: AddShiftRows<Self>;
    const ADD_BIAS_SHIFT: AddBiasShift<Self>;
}

/// One of the multiversioned `add_bias_shift_*` loops.
type AddBiasShift<T> = fn(&mut [i32], &[T], &[i32], u32, i64, u32, u32) -> (i64, i64);

/// `dst[j] = ((acc[j] + (bias[j] << bsh) + half) >> right) << left` (wrapping to `i32`); returns the
/// least and greatest `(acc[j] + (bias[j] << bsh) + half) >> right` (0 included), for one range
/// check per row. `bsh ≤ 31` and `|acc[j]| + |bias[j] << bsh| + half < 2^63`.
#[inline(always)]
fn add_bias_shift_body<T: Copy + Into<i64>>(
    dst: &mut [i32],
    acc: &[T],
    bias: &[i32],
    bsh: u32,
    half: i64,
    right: u32,
    left: u32,
) -> (i64, i64) {
    let (mut lo, mut hi) = (0i64, 0i64);
    for ((d, &a), &b) in dst.iter_mut().zip(acc).zip(bias) {
        let v = (a.into() + ((b as i64) << bsh) + half) >> right;
        lo = lo.min(v);
        hi = hi.max(v);
        *d = (v as i32).wrapping_shl(left);
    }
    (lo, hi)
}

crate::multiversion! {
    fn add_bias_shift_i32(dst: &mut [i32], acc: &[i32], bias: &[i32], bsh: u32, half: i64, right: u32, left: u32) -> (i64, i64) = add_bias_shift_body::<i32>
}
crate::multiversion! {
    fn add_bias_shift_i64(dst: &mut [i32], acc: &[i64], bias: &[i32], bsh: u32, half: i64, right: u32, left: u32) -> (i64, i64) = add_bias_shift_body::<i64>
}

/// One of the multiversioned `add_shift_rows_*` loops.
type AddShiftRows<T> = fn(&mut [i32], &[T], (usize, usize), i64, u32, u32) -> (i64, i64);

impl RowAcc for i32 {
    const ADD_SHIFT: AddShift<i32> = add_shift_i32;
    const ADD_SHIFT_ROWS: AddShiftRows<i32> = add_shift_rows_i32;
    const ADD_BIAS_SHIFT: AddBiasShift<i32> = add_bias_shift_i32;
}

impl RowAcc for i64 {
    const ADD_SHIFT: AddShift<i64> = add_shift_i64;
    const ADD_SHIFT_ROWS: AddShiftRows<i64> = add_shift_rows_i64;
    const ADD_BIAS_SHIFT: AddBiasShift<i64> = add_bias_shift_i64;
}

/// [`requantize_row`] over the rows of `dst` (`w` elements each), read from `acc` rows `stride` apart
/// (`rows = (w, stride)`), with one range check for all of them.
fn requantize_rows<T: RowAcc>(
    dst: &mut [i32],
    acc: &[T],
    (w, stride): (usize, usize),
    bias: i128,
    shift: i32,
) -> Result<(), ExecError> {
    if let Some((bv, sh)) = row_form(bias, shift) {
        let (lo, hi) = T::ADD_SHIFT_ROWS(dst, acc, (w, stride), bv + sh.half, sh.right, sh.left);
        return check_row(lo, hi, sh.left);
    }
    for (r, d) in dst.chunks_mut(w.max(1)).enumerate() {
        requantize_row(d, &acc[r * stride..r * stride + d.len()], bias, shift)?;
    }
    Ok(())
}

/// Each row's `bias + 2^(shift−1)`, which a product's kernel adds to its sums before shifting them
/// right by `shift` as it stores them ([`qgemm::Requant`]): `None` unless the shift is 0–31, every add
/// fits `i32` and no sum of magnitude at most `bound` with its add can leave `i32`.
fn kernel_adds(biases: impl Iterator<Item = i128>, shift: i32, bound: u128) -> Option<Vec<i32>> {
    let h = Shift::new(shift)
        .filter(|_| (0..=31).contains(&shift))?
        .half;
    biases
        .map(|b| i32::try_from(b + h as i128).ok())
        .collect::<Option<Vec<i32>>>()
        .filter(|adds| {
            let top = adds.iter().map(|a| a.unsigned_abs()).max().unwrap_or(0);
            bound.saturating_add(top as u128) < 1 << 31
        })
}

/// Bytes of packed activations per panel of [`conv2d_panels`] (the panel stays in the L2 cache while
/// every output channel's row is multiplied by it).
const PANEL_BYTES: usize = 1 << 19;

/// Output rows per panel of [`conv2d_panels`] for a reduction of `kk` over image rows of `wp` columns
/// and `oh` output rows: about [`PANEL_BYTES`] of packed activations, at least one panel per thread.
fn panel_rows(kk: usize, wp: usize, oh: usize, threads: usize) -> usize {
    (PANEL_BYTES / (kk * wp).max(1)).clamp(1, oh.div_ceil(threads.max(1)).max(1))
}

/// The reduction of [`conv2d_panels`]' products (a group's patch rows `cg·kh·kw`) and the columns of a
/// row of the padded image's stride phases (`⌈(iw + pad_l + pad_r) / sx⌉`, as [`padded_bytes`] lays
/// them out): what [`panel_rows`] sizes panels by.
fn panel_shape(s: &ConvSpec<'_>) -> (usize, usize) {
    let wp = s.x[3] + (s.window.pads[1] + s.window.pads[3]) as usize;
    (
        s.w[1] * s.w[2] * s.w[3],
        wp.div_ceil(s.window.stride[1].max(1) as usize),
    )
}

/// Whether the threads of [`conv2d_panels`] split a group's output channels rather than its output
/// rows: when one thread would take the whole output in fewer panels than there are threads (a late
/// layer: few output rows, many channels), splitting the rows would only make narrower panels (more
/// columns rounded up to whole blocks), each multiplied by every channel's weights, widened again by
/// every thread; split by channels, each thread packs the panels itself and multiplies only its own
/// rows of weights. Needs at least two register tiles of channels per thread.
fn channel_parts(s: &ConvSpec<'_>, threads: usize) -> bool {
    let (og, oh) = (s.w[0] / s.groups.max(1), s.out[2]);
    let (kk, wq) = panel_shape(s);
    threads > 1 && og >= 2 * qgemm::MR * threads && oh.div_ceil(panel_rows(kk, wq, oh, 1)) < threads
}

/// Whether [`conv2d_panels`] suits a convolution: its products run over whole rows of the padded
/// image's stride phases (`⌈(iw + pad_l + pad_r) / sx⌉` columns, each panel rounded up to whole blocks
/// of 16), which a patch matrix of the `ow` output columns does not. Panels save gathering the
/// patches (at stride 2, a 3×3 convolution from 14×14 to 7×7: 8 columns a row for 7); they are
/// chosen while their columns exceed the patch matrix's by at most a quarter (a 3×3 convolution
/// over a 56×56 map: 12%; a dilated one over a map barely wider than its padding — 14 columns and
/// 24 of padding — would multiply three times the columns).
fn panels_suit(s: &ConvSpec<'_>, threads: usize) -> bool {
    let (oh, ow) = (s.out[2], s.out[3]);
    let (kk, wq) = panel_shape(s);
    let rows = panel_rows(kk, wq, oh, threads);
    let whole = |cols: usize| cols.div_ceil(16) * 16;
    let panels: usize = (0..oh)
        .step_by(rows)
        .map(|y0| whole((rows.min(oh - y0)) * wq))
        .sum();
    4 * panels <= 5 * whole(oh * ow)
}

/// What [`conv2d_panels`] knows of its activations: whether their bytes are offset, whether they
/// are split into halves, the bound on a sum's magnitude, and their range.
type PanelActs = (bool, bool, u128, (i32, i32));

/// An 8-bit convolution read in place from the padded byte image of [`padded_bytes`] (16-bit inputs:
/// from an image of their high bytes, `offset` as [`halves`] found, and one of their low bytes, whose
/// products are joined in `i64` as the other paths join them): the product
/// runs over output rows as wide as the rows of the image's stride phases (`wq` columns each; those
/// past `ow` are no outputs and the requantization skips them), in panels of whole output rows (about
/// [`PANEL_BYTES`] of packed activations). Each panel is packed, multiplied by every output channel,
/// requantized and handed to `hook` (as those channels' output rows) while it sits in the cache. With
/// several threads the panels are split among them, each writing its output rows of every channel —
/// or, with at least as many groups as threads, whole groups are (each group's panels on its thread).
/// 16-bit inputs by split weights that one pass multiplies as 16-bit values ([`qgemm::pairs_plan`],
/// their values in `range`) are read instead from one image of their `i16` values
/// ([`padded_i16`]), each panel's patches laid out as that pass reads them ([`qgemm::pairs16`]): no
/// byte images, no widening in the product.
/// The same sums as [`conv2d_narrow`]'s other paths, in the same integers.
#[allow(clippy::too_many_arguments)]
fn conv2d_panels(
    s: &ConvSpec<'_>,
    x: &[i32],
    qw: &[Parts<PackedA>],
    bias: Option<(&[i32], i32)>,
    shift: i32,
    ((offset, split, bound, range), level, threads): (PanelActs, Level, usize),
    hook: Option<RowHook<'_>>,
    out: &mut [i32],
) -> Result<(), ExecError> {
    let (o_ch, kk) = (s.w[0], s.w[1] * s.w[2] * s.w[3]);
    let og = o_ch / s.groups;
    // 8-bit weights and inputs, a right shift: the product's kernel adds each channel's bias and
    // rounding term and shifts as it stores the sums, where no sum with its add can leave i32 (the
    // panel's rows are then only moved into the output)
    let adds_of = |g: usize, qw: &Parts<PackedA>| -> Option<Vec<i32>> {
        let biases = (0..og).map(|o| bias.map_or(0i128, |(d, sh)| (d[g * og + o] as i128) << sh));
        (!split && qw.lo.is_none())
            .then(|| kernel_adds(biases, shift, bound))
            .flatten()
    };
    let (oh, ow) = (s.out[2], s.out[3]);
    let p = oh * ow;
    let add = if offset { 128 } else { 0 };
    let tokens = crate::cancel::current();
    // every group's single pass over 16-bit pairs, where each group has one
    let pairs: Option<Vec<qgemm::JoinPlan>> = split
        .then(|| {
            let (lo, hi) = range;
            qw.iter()
                .map(|q| qgemm::pairs_plan(&q.as_ref(), (kk, qgemm::NR), (lo, hi, offset), level))
                .map(|p| p.map(|(plan, _)| plan))
                .collect()
        })
        .flatten();
    for b in 0..s.x[0] {
        // every group's planes padded at once; group g's windows start `g · plane` further
        let high = (if split { 8 } else { 0 }, add);
        let (image, image16, starts, wq, plane, low) = match pairs {
            Some(_) => {
                let (image16, starts, wq, plane) = padded_i16(s, x, b);
                (Vec::new(), image16, starts, wq, plane, None)
            }
            None => {
                let (image, starts, wq, plane) = padded_bytes(s, x, b, high);
                let low = split.then(|| padded_bytes(s, x, b, (0, 0)).0);
                (image, Vec::new(), starts, wq, plane, low)
            }
        };
        let image_len = image.len().max(image16.len());
        // group g's output planes, its panels (or its output channels) split across `threads`
        let one_group = |g: usize, qw: &Parts<PackedA>, out_g: &mut [i32], threads: usize| {
            let group = g * plane;
            let adds = adds_of(g, qw);
            let requant = adds.as_deref().map(|adds| qgemm::Requant {
                adds,
                shift: shift as u32,
            });
            // every window of every output row lies in the image, and so do the columns that round a
            // panel up to whole blocks (`padded_bytes` sizes it so)
            let last = (oh * wq).div_ceil(qgemm::NR) * qgemm::NR;
            debug_assert!(starts.iter().all(|&s0| group + s0 + last <= image_len));
            let by_channels = channel_parts(s, threads);
            // output rows per panel (but for parts by channels, at least one panel per thread), and
            // per part (whole panels)
            let rows = panel_rows(kk, wq, oh, if by_channels { 1 } else { threads });
            let panels = oh.div_ceil(rows);
            let first = (b * o_ch + g * og) * p;
            // part t: output rows `y0..y1` of channels `o0..`, one segment of rows per channel
            type Part<'o> = (usize, usize, usize, Vec<&'o mut [i32]>);
            let mut parts: Vec<Part<'_>> = Vec::new();
            if by_channels {
                // every output row of a run of channels (whole register tiles of them, and whole
                // kept single-pass tiles of split weights)
                let align = qgemm::part_rows(qw);
                let per = og.div_ceil(threads).div_ceil(align) * align;
                for (t, planes) in out_g.chunks_mut((per * p).max(1)).enumerate() {
                    parts.push((0, oh, t * per, planes.chunks_mut(p.max(1)).collect()));
                }
            } else {
                // part t writes output rows t·per.. of every channel's plane
                let per = panels.div_ceil(threads.clamp(1, panels.max(1))) * rows;
                for plane in out_g.chunks_mut(p.max(1)) {
                    for (t, seg) in plane.chunks_mut((per * ow).max(1)).enumerate() {
                        if parts.len() <= t {
                            let y0 = t * per;
                            parts.push((y0, (y0 + per).min(oh), 0, Vec::with_capacity(og)));
                        }
                        parts[t].3.push(seg);
                    }
                }
            }
            let err = crate::par::FirstError::default();
            let part = |(y0, y1, o0, mut segs): Part<'_>| {
                let n_o = segs.len();
                // the i32 sums of whole weights and inputs (split ones are joined into i64 sums)
                let whole = if qw.lo.is_none() && !split { n_o } else { 0 };
                // the product stores every sum it is given room for
                let mut acc =
                    crate::buffers::take_overwritten(whole * (rows * wq).div_ceil(16) * 16);
                let mut at = starts.clone();
                for oy0 in (y0..y1).step_by(rows) {
                    let oy1 = (oy0 + rows).min(y1);
                    for (a, &s0) in at.iter_mut().zip(&starts) {
                        *a = group + s0 + oy0 * wq;
                    }
                    // whole blocks of columns: those past the panel's rows are read from the image
                    // like the others and their sums never requantized (no partial block to pack)
                    let n = ((oy1 - oy0) * wq).div_ceil(qgemm::NR) * qgemm::NR;
                    // 16-bit weights or inputs: their two parts' products joined in i64 (row
                    // stride `ldc` either way)
                    let (wide, ldc) = if let (Some(plans), Some(_)) = (&pairs, &qw.lo) {
                        // the patches as the single pass's pairs, multiplied where they lie
                        let plan = plans[g];
                        let kcq = plan.single.expect("a single pass");
                        let p16 = qgemm::pairs16(&image16, &at, n, kcq)
                            .expect("the windows lie in the image");
                        let shape = PackedB::pairs_shape(kk, n, offset)
                            .expect("the caller checked the reduction");
                        let acts = Parts {
                            hi: &shape,
                            lo: Some(&shape),
                        };
                        // (every element written)
                        let mut c = crate::buffers::take_overwritten(n_o * n);
                        let how = (plan, Some(&p16[..]));
                        qgemm::product_joined(qw.as_ref(), acts, o0, &mut c, how, &tokens);
                        crate::buffers::give(p16);
                        (Some(c), n)
                    } else {
                        let cols = PackedB::rows_of(&image, &at, n, offset).expect(
                            "the windows lie in the image and the caller checked the reduction",
                        );
                        let low = low.as_ref().map(|l| {
                            PackedB::rows_of(l, &at, n, false).expect("as the high bytes' image")
                        });
                        let ldc = cols.ldc();
                        let wide = match (&qw.lo, &low) {
                            (None, None) => {
                                let acc = &mut acc[..whole * ldc];
                                qgemm::product(&qw.hi, &cols, o0, acc, level, requant, &tokens);
                                None
                            }
                            _ => {
                                let at = (o0, n_o, ldc);
                                let acts = Parts {
                                    hi: &cols,
                                    lo: low.as_ref(),
                                };
                                let join = qgemm::join_plan(&qw.as_ref(), &acts, level);
                                let how = (level, join, None);
                                Some(joined_parts(qw, (&cols, low.as_ref()), at, how, &tokens).0)
                            }
                        };
                        (wide, ldc)
                    };
                    let acc = &acc[..whole * ldc];
                    for (o, seg) in segs.iter_mut().enumerate() {
                        let oc = g * og + o0 + o;
                        let bv = bias.map_or(0i128, |(d, sh)| (d[oc] as i128) << sh);
                        let dst = &mut seg[(oy0 - y0) * ow..(oy1 - y0) * ow];
                        // the channel's output rows, `wq` apart in its sums
                        let from = o * ldc;
                        let done = match (&wide, requant) {
                            (Some(c), _) => requantize_rows(dst, &c[from..], (ow, wq), bv, shift),
                            // requantized by the product: the rows moved into place
                            (None, Some(_)) => {
                                for (y, d) in dst.chunks_mut(ow.max(1)).enumerate() {
                                    d.copy_from_slice(&acc[from + y * wq..][..d.len()]);
                                }
                                Ok(())
                            }
                            (None, None) => requantize_rows(dst, &acc[from..], (ow, wq), bv, shift),
                        };
                        if let Err(e) = done {
                            return err.set(e);
                        }
                        if let Some(h) = hook {
                            h(first + (o0 + o) * p + oy0 * ow, dst);
                        }
                    }
                    if let Some(c) = wide {
                        crate::buffers::give(c);
                    }
                }
                crate::buffers::give(acc);
            };
            if parts.len() <= 1 {
                if let Some(one) = parts.pop() {
                    part(one);
                }
            } else {
                crate::par::each(parts, part);
            }
            err.into_result()
        };
        let batch = &mut out[b * o_ch * p..(b + 1) * o_ch * p];
        if threads > 1 && s.groups >= threads && og * p > 0 {
            // as many groups as threads or more: whole groups per thread, each group's panels on
            // its thread (a part per group costs more to hand out than a small group's product)
            let err = crate::par::FirstError::default();
            crate::par::rows(batch, og * p, threads, 1, |g0, part| {
                for (i, out_g) in part.chunks_mut(og * p).enumerate() {
                    if let Err(e) = one_group(g0 + i, &qw[g0 + i], out_g, 1) {
                        return err.set(e);
                    }
                }
            });
            err.into_result()?;
        } else {
            for (g, (qw, out_g)) in qw.iter().zip(batch.chunks_mut((og * p).max(1))).enumerate() {
                one_group(g, qw, out_g, threads)?;
            }
        }
        crate::buffers::give(image);
        crate::buffers::give(image16);
        if let Some(l) = low {
            crate::buffers::give(l);
        }
    }
    Ok(())
}

/// The input planes of batch `b` of a convolution as the bytes `(v >> shift) + add` (`(shift, add)
/// = byte`: an 8-bit value's byte, or a 16-bit value's high or low byte), each zero-padded (the byte
/// of 0) to `hp × wp` and split by stride phase: plane `c` holds `sy · sx` phase images of `hq × wq`
/// bytes (`hq = ⌈hp / sy⌉`, `wq = ⌈wp / sx⌉`), phase `(qy, qx)` holding the padded rows `qy, qy + sy, …`
/// and of those the columns `qx, qx + sx, …` (at stride 1, one image: the padded plane itself). The
/// planes are stored one after another, followed by the few bytes the last window reads past them.
/// Returned with where each patch row `(ci, ky, kx)` of the first group starts, `wq`, and the bytes of
/// a group's planes (group `g`'s rows start `g` times that further). Read from its start, patch row
/// `r` holds at column `oy·wq + ox` the input that output `(oy, ox)` multiplies by tap `r`, for every
/// `ox < ow` (the other columns are no outputs): the tap's padded input `(oy·sy + ky·dy, ox·sx + kx·dx)`
/// lies in phase `(ky·dy mod sy, kx·dx mod sx)` at row `oy + ⌊ky·dy / sy⌋`, column `ox + ⌊kx·dx / sx⌋`.
fn padded_bytes(
    s: &ConvSpec<'_>,
    x: &[i32],
    b: usize,
    byte: (u32, i32),
) -> (Vec<u8>, Vec<usize>, usize, usize) {
    padded_image(s, x, b, byte.1 as u8, |plane, map, dst| {
        plane_bytes(plane, map, dst, byte)
    })
}

/// [`padded_bytes`] of 16-bit values, each stored as its `i16` (the padding 0).
fn padded_i16(s: &ConvSpec<'_>, x: &[i32], b: usize) -> (Vec<i16>, Vec<usize>, usize, usize) {
    padded_image(s, x, b, 0i16, plane_i16)
}

/// [`padded_bytes`]' layout of elements of any type: the padding `zero`, each plane written by `fill`.
fn padded_image<T: crate::buffers::Pooled>(
    s: &ConvSpec<'_>,
    x: &[i32],
    b: usize,
    zero: T,
    fill: impl Fn(&[i32], PhaseMap<'_>, &mut [T]),
) -> (Vec<T>, Vec<usize>, usize, usize) {
    let (c, h, wd) = (s.x[1], s.x[2], s.x[3]);
    let (cg, kh, kw) = (s.w[1], s.w[2], s.w[3]);
    let [pt, pl, pb, pr] = s.window.pads.map(|v| v as usize);
    let [dy, dx] = s.window.dilation.map(|v| v as usize);
    let [sy, sx] = s.window.stride.map(|v| v.max(1) as usize);
    let (hp, wp) = (h + pt + pb, wd + pl + pr);
    let (hq, wq) = (hp.div_ceil(sy), wp.div_ceil(sx));
    let phase = hq * wq;
    let chan = sy * sx * phase;
    // (and room for the last window's row to be read on to a whole block of columns)
    let tail = (kw - 1) * dx / sx + qgemm::NR - 1;
    let mut image = crate::buffers::take(c * chan + tail, zero);
    // per column phase: the first input column it holds (input column `j` is padded column
    // `j + pl`), where that column sits in a row of the phase image, and how many it holds
    let cols: Vec<(usize, usize, usize)> = (0..sx)
        .map(|qx| {
            let j0 = ((qx + sx - pl % sx) % sx).min(wd);
            (j0, qx * phase + (j0 + pl) / sx, (wd - j0).div_ceil(sx))
        })
        .collect();
    // where each input row starts in its plane's phase images
    let rows: Vec<usize> = (pt..pt + h)
        .map(|y| (y % sy) * sx * phase + (y / sy) * wq)
        .collect();
    for ci in 0..c {
        let plane = &x[(b * c + ci) * h * wd..][..h * wd];
        let phases = &mut image[ci * chan..(ci + 1) * chan];
        fill(plane, (&rows, &cols, sx), phases);
    }
    let starts = (0..cg * kh * kw)
        .map(|r| {
            let (ci, t) = (r / (kh * kw), r % (kh * kw));
            let (ry, rx) = ((t / kw) * dy, (t % kw) * dx);
            ci * chan + ((ry % sy) * sx + rx % sx) * phase + (ry / sy) * wq + rx / sx
        })
        .collect();
    (image, starts, wq, cg * chan)
}

/// Where [`plane_bytes`] writes: each input row's start in the plane's phase images, each column
/// phase's first input column, start in a row and count, and the column stride.
type PhaseMap<'a> = (&'a [usize], &'a [(usize, usize, usize)], usize);

crate::multiversion! {
    fn plane_bytes(plane: &[i32], map: PhaseMap<'_>, dst: &mut [u8], byte: (u32, i32)) -> () = plane_bytes_body
}

/// One input plane (rows of `plane.len() / rows.len()` values) into its phase images in `dst`, each
/// value `v` as the byte `(v >> shift) + add` (see [`padded_bytes`]).
#[inline(always)]
fn plane_bytes_body(plane: &[i32], map: PhaseMap<'_>, dst: &mut [u8], (shift, add): (u32, i32)) {
    plane_into(plane, map, dst, |v| ((v >> shift) + add) as u8)
}

crate::multiversion! {
    fn plane_i16(plane: &[i32], map: PhaseMap<'_>, dst: &mut [i16]) -> () = plane_i16_body
}

/// [`plane_bytes_body`] of 16-bit values as their `i16`.
#[inline(always)]
fn plane_i16_body(plane: &[i32], map: PhaseMap<'_>, dst: &mut [i16]) {
    plane_into(plane, map, dst, |v| v as i16)
}

/// [`plane_bytes_body`]'s loop, each value stored as `elem(v)`.
#[inline(always)]
fn plane_into<T: Copy>(
    plane: &[i32],
    (rows, cols, sx): PhaseMap<'_>,
    dst: &mut [T],
    elem: impl Fn(i32) -> T,
) {
    let wd = plane.len() / rows.len().max(1);
    for (src, &row) in plane.chunks_exact(wd.max(1)).zip(rows) {
        if let [(j0, a0, n0), (_, a1, n1)] = *cols {
            // stride 2: both column phases from each pair of inputs in one pass (the phase of the
            // even input columns first)
            let ((ae, ne), (ao, no)) = if j0 == 0 {
                ((a0, n0), (a1, n1))
            } else {
                ((a1, n1), (a0, n0))
            };
            let (even, odd) = if ae < ao {
                let (l, r) = dst[row + ae..].split_at_mut(ao - ae);
                (&mut l[..ne], &mut r[..no])
            } else {
                let (l, r) = dst[row + ao..].split_at_mut(ae - ao);
                (&mut r[..ne], &mut l[..no])
            };
            let pairs = src.chunks_exact(2);
            if let [last] = *pairs.remainder() {
                even[ne - 1] = elem(last);
            }
            for ((e, o), p) in even.iter_mut().zip(odd.iter_mut()).zip(pairs) {
                *e = elem(p[0]);
                *o = elem(p[1]);
            }
            continue;
        }
        for &(j0, at, n) in cols {
            let out = &mut dst[row + at..row + at + n];
            if sx == 1 {
                for (d, &v) in out.iter_mut().zip(&src[j0..]) {
                    *d = elem(v);
                }
            } else {
                for (d, &v) in out.iter_mut().zip(src[j0..].iter().step_by(sx)) {
                    *d = elem(v);
                }
            }
        }
    }
}

crate::multiversion! {
    fn im2col_bytes(s: &ConvSpec<'_>, x: &[i32], at: (usize, usize, usize), cols: &mut [u8], add: i32) -> () = im2col_bytes_body
}

/// [`im2col`] of 8-bit values stored as the bytes `v + add`, compiled for the CPU's vector width.
#[inline(always)]
fn im2col_bytes_body(
    s: &ConvSpec<'_>,
    x: &[i32],
    (b, g, r0): (usize, usize, usize),
    cols: &mut [u8],
    add: i32,
) {
    im2col(s, x, b, g, r0, cols, |v| (v + add) as u8)
}

/// The image patches of batch `b`, group `g` as a row-major `[cg·kh·kw × OH·OW]` matrix, each value
/// `v` stored as `f(v)`: row `(ci, ky, kx)`, column `(oy, ox)`; `f(0)` where the window reads padding.
#[inline(always)]
fn im2col<T: Copy>(
    s: &ConvSpec<'_>,
    x: &[i32],
    b: usize,
    g: usize,
    r0: usize,
    cols: &mut [T],
    f: impl Fn(i32) -> T,
) {
    let zero = f(0);
    let (c, h, wd) = (s.x[1], s.x[2], s.x[3]);
    let (cg, kh, kw) = (s.w[1], s.w[2], s.w[3]);
    let (oh, ow) = (s.out[2], s.out[3]);
    let p = oh * ow;
    let win = s.window;
    let (sy, sx) = (win.stride[0] as usize, win.stride[1] as usize);
    let (dy, dx) = (win.dilation[0] as usize, win.dilation[1] as usize);
    let (py, px) = (win.pads[0] as i64, win.pads[1] as i64);
    // `cols` holds rows `r0..` (any of them: a part may begin inside an input channel)
    let rows = (cols.len() / p.max(1)).min((cg * kh * kw).saturating_sub(r0));
    for r in 0..rows {
        let (ci, ky, kx) = ((r0 + r) / (kh * kw), (r0 + r) / kw % kh, (r0 + r) % kw);
        let plane = &x[(b * c + g * cg + ci) * h * wd..(b * c + g * cg + ci + 1) * h * wd];
        let row = &mut cols[r * p..(r + 1) * p];
        // output columns whose input column is inside the image: [x0, x1)
        let valid = valid_columns(ow, wd, (sx, dx, px), kx);
        for oy in 0..oh {
            let iy = (oy * sy + ky * dy) as i64 - py;
            let dst = &mut row[oy * ow..(oy + 1) * ow];
            let Some((x0, x1, start)) = valid.filter(|_| iy >= 0 && iy < h as i64) else {
                dst.fill(zero);
                continue;
            };
            let src = &plane[iy as usize * wd..(iy as usize + 1) * wd];
            dst[..x0].fill(zero);
            dst[x1..].fill(zero);
            if sx == 1 {
                for (d, &v) in dst[x0..x1].iter_mut().zip(&src[start..]) {
                    *d = f(v);
                }
            } else if sx == 2 {
                // 16 outputs from 32 consecutive inputs at a time (their even elements: a
                // shuffle, not 16 loads), the rest one by one
                let out = &mut dst[x0..x1];
                let mut j = 0;
                while j + 16 <= out.len() && start + 2 * j + 32 <= src.len() {
                    let pairs: &[i32; 32] = src[start + 2 * j..start + 2 * j + 32]
                        .try_into()
                        .unwrap_or(&[0; 32]);
                    for (t, d) in out[j..j + 16].iter_mut().enumerate() {
                        *d = f(pairs[2 * t]);
                    }
                    j += 16;
                }
                for (i, d) in out.iter_mut().enumerate().skip(j) {
                    *d = f(src[start + i * 2]);
                }
            } else {
                for (j, d) in dst[x0..x1].iter_mut().enumerate() {
                    *d = f(src[start + j * sx]);
                }
            }
        }
    }
}

/// Fast `Conv2d`: the 8-bit kernels when `qw` (the packed weights) is given and the input is 8-bit,
/// else im2col and the `i64` GEMM. A kernel that takes `hook` calls it on every output channel's plane.
#[allow(clippy::too_many_arguments)]
pub fn conv2d(
    s: &ConvSpec<'_>,
    (x, rx): (&[i32], Range),
    w: Operand<'_, '_>,
    qw: Option<&[Parts<PackedA>]>,
    bias: Option<(&[i32], i32)>,
    shift: i32,
    threads: usize,
    hook: &mut Option<RowHook<'_>>,
) -> Result<Vec<i32>, ExecError> {
    // one input channel per group (depthwise): a direct loop over the taps beats a product per group
    let depthwise = s.w[1] == 1 && s.groups > 1;
    if !depthwise {
        if let Some(r) =
            qw.and_then(|qw| conv2d_narrow(s, (x, rx), qw, bias, shift, threads, *hook))
        {
            // it called the hook on every output plane
            *hook = None;
            return r;
        }
    }
    let w = w();
    let n = s.x[0];
    let (o_ch, cg, kh, kw) = (s.w[0], s.w[1], s.w[2], s.w[3]);
    let og = o_ch / s.groups;
    let kk = cg * kh * kw;
    let p = s.out[2] * s.out[3];
    let bias_max = bias.map_or(0, |(d, sh)| max_abs(d) << sh.clamp(0, 64));
    let mx = max_abs_in(x, rx);
    let bound = (kk as u128)
        .saturating_mul(mx)
        .saturating_mul(max_abs(w))
        .saturating_add(bias_max);
    if bound >= I64_SAFE {
        return crate::exec::conv_reference(s, x, w, bias, shift);
    }
    if depthwise {
        return conv2d_depthwise(s, (x, mx), w, bias, shift, threads, hook);
    }
    let mut out = vec![0i32; n * o_ch * p];
    let mut cols = vec![0i32; kk * p];
    for b in 0..n {
        for g in 0..s.groups {
            im2col(s, x, b, g, 0, &mut cols, |v| v);
            let wg = &w[g * og * kk..(g + 1) * og * kk];
            let acc = batched_gemm(wg, &cols, 1, og, kk, p, bound, threads);
            for o in 0..og {
                let oc = g * og + o;
                let bv = bias.map_or(0i128, |(d, sh)| (d[oc] as i128) << sh);
                let dst = &mut out[(b * o_ch + oc) * p..(b * o_ch + oc + 1) * p];
                match i64::try_from(bv) {
                    Ok(bv) if bv.unsigned_abs() < 1 << 62 => {
                        for (d, &a) in dst.iter_mut().zip(&acc[o * p..(o + 1) * p]) {
                            *d = requantize(a + bv, shift)?;
                        }
                    }
                    _ => {
                        for (d, &a) in dst.iter_mut().zip(&acc[o * p..(o + 1) * p]) {
                            *d = fit(rshift(a as i128 + bv, shift))?;
                        }
                    }
                }
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::ir::Window;

    /// A xorshift generator of `u64`s from `seed` (non-zero).
    pub(crate) fn xorshift(mut v: u64) -> impl FnMut() -> u64 {
        move || {
            v ^= v << 13;
            v ^= v >> 7;
            v ^= v << 17;
            v
        }
    }

    /// The vector table positions ([`TableIndex`], both its forms) equal the definition
    /// `clamp(rshift32(v, k) − lo, 0, hi − lo)` for every shift, tables anywhere in `i32` (so that the
    /// clamped-input form's bounds leave `i32` for some) and inputs at and near `i32`'s ends.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn table_positions_equal_the_definition() {
        if crate::simd::Isa::detect() != crate::simd::Isa::Avx512 {
            return;
        }
        #[target_feature(enable = "avx512f")]
        unsafe fn positions(v: &[i32; 16], k: u32, lo: i32, hi: i32) -> [i32; 16] {
            use std::arch::x86_64::*;
            let mut out = [0i32; 16];
            // SAFETY: the CPU has AVX-512 F (this function's feature)
            unsafe {
                let index = TableIndex::new(k, lo, hi);
                let p = index.of(_mm512_loadu_si512(v.as_ptr().cast()));
                _mm512_storeu_si512(out.as_mut_ptr().cast(), p);
            }
            out
        }
        let mut next = xorshift(0x9e37_79b9_7f4a_7c15);
        let mut clamped = [0usize; 2];
        for case in 0..20_000 {
            let k = (next() % 32) as u32;
            let lo = match case % 3 {
                0 => (next() % 20_000) as i32 - 10_000,
                1 => next() as i32 >> (next() % 32),
                _ => [i32::MIN, i32::MAX - 40_000, -1 << 20][(next() % 3) as usize],
            };
            let len = 1 + (next() % 30_000) as i64;
            let hi = (lo as i64 + len - 1).min(i32::MAX as i64) as i32;
            let v: [i32; 16] = std::array::from_fn(|j| match j {
                0 => i32::MIN,
                1 => i32::MAX,
                2 => i32::MAX - 1,
                3 => i32::MIN + 1,
                _ => (next() as i32) >> (next() % 32),
            });
            // SAFETY: the CPU has AVX-512 F (checked above)
            let got = unsafe { positions(&v, k, lo, hi) };
            for (j, &x) in v.iter().enumerate() {
                let want = (rshift32(x, k) as i64 - lo as i64).clamp(0, hi as i64 - lo as i64);
                assert_eq!(got[j] as i64, want, "k {k}, lo {lo}, hi {hi}, v {x}");
            }
            // SAFETY: as above
            clamped[unsafe { TableIndex::new(k, lo, hi) }.inputs as usize] += 1;
        }
        assert!(clamped.iter().all(|&n| n > 1000), "{clamped:?}");
    }

    /// The `i32`-lane requantization (whole, by rows, in place) equals the `i64` loop on every sum and
    /// bound: sums anywhere in `i32` (the chunks whose additions wrap redone), additions inside and
    /// outside `i32`, every right shift up to 62, left shifts, lengths across the chunk size.
    #[test]
    fn narrow_requantization_equals_the_wide_loop() {
        let mut next = xorshift(0x2545_f491_4f6c_dd1d);
        for case in 0..3000 {
            let len = (next() % 300) as usize;
            // sums: small, or anywhere in i32 (near its ends, so some additions wrap)
            let wide = case % 3 == 0;
            let acc: Vec<i32> = (0..len)
                .map(|_| match wide {
                    true => next() as i32,
                    false => (next() % (1 << 20)) as i32 - (1 << 19),
                })
                .collect();
            let add = match case % 4 {
                0 => (next() % (1 << 16)) as i64 - (1 << 15),
                1 => (next() as i32) as i64,
                2 => (next() % (1 << 40)) as i64 - (1 << 39),
                _ => [i32::MAX as i64, i32::MIN as i64, 1, -1][(next() % 4) as usize],
            };
            let (right, left) = ((next() % 63) as u32, (next() % 4) as u32);
            let mut want = vec![0i32; len];
            let bounds = add_shift_body(&mut want, &acc, add, right, left);
            let mut got = vec![7i32; len];
            assert_eq!(
                add_shift_i32(&mut got, &acc, add, right, left),
                bounds,
                "case {case}"
            );
            assert_eq!(got, want, "case {case}");
            let mut row = acc.clone();
            assert_eq!(add_shift_in_place(&mut row, add, right, left), bounds);
            assert_eq!(row, want, "case {case}");
            // rows of `w` read `stride` apart (the sums between rows never read)
            let w = 1 + (next() % 40) as usize;
            let stride = w + (next() % 5) as usize;
            let rows = len / stride;
            let mut dst = vec![7i32; rows * w];
            let mut want = vec![0i32; rows * w];
            let bounds = add_shift_rows_body(&mut want, &acc, (w, stride), add, right, left);
            let got = add_shift_rows_i32(&mut dst, &acc, (w, stride), add, right, left);
            assert_eq!(
                (got, &dst),
                (bounds, &want),
                "case {case}: rows of {w}, {stride} apart"
            );
        }
    }

    /// Random padded rows of `len` `i16` elements and `pairs` words of two taps each, small enough
    /// that no sum leaves `i32`, for the pair kernels' tests.
    #[cfg(target_arch = "x86_64")]
    fn pair_inputs(
        next: &mut impl FnMut() -> u64,
        len: usize,
        pairs: usize,
    ) -> (Vec<i16>, [i32; PairPlan::MAX_PAIRS]) {
        let rows = (0..len).map(|_| (next() >> 48) as i16).collect();
        let mut words = [0i32; PairPlan::MAX_PAIRS];
        for w in words.iter_mut().take(pairs) {
            *w = (next() as i32) & 0x00ff_00ff;
        }
        (rows, words)
    }

    /// The AVX2 kernel of pairs of taps along a row gives each output's definition — the bias plus
    /// every pair's two products — with taps in registers (3×3, 5×5) or read from memory (7×7), at
    /// stride 1 and 2, for output widths that leave a partial last block (its stores masked: the
    /// columns past the plane keep what they held).
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn avx2_pair_kernels_follow_the_definition() {
        if !std::arch::is_x86_feature_detected!("avx2") {
            eprintln!("skipped: the CPU lacks AVX2");
            return;
        }
        let mut next = xorshift(0x2f0b);
        for (kh, np) in [(3, 2), (5, 3), (7, 4)] {
            for stride in [1, 2] {
                for ow in [1, 7, 8, 9, 16, 23, 37] {
                    let oh = 4;
                    let width = 2 * 48 + 16 + 2 * np + 40;
                    let (rows, words) = pair_inputs(&mut next, (oh * stride + kh) * width, kh * np);
                    let g = PairBlocks {
                        rows: &rows,
                        width,
                        out: [oh, ow],
                        stride: [stride, stride],
                        pairs: [kh, np],
                        words: &words,
                        bias: -12345,
                    };
                    let mut want = vec![0i32; oh * ow + 9];
                    for oy in 0..oh {
                        for ox in 0..ow {
                            let mut acc = -12345i64;
                            for ky in 0..kh {
                                for p in 0..np {
                                    let w = words[ky * np + p];
                                    let at = (oy * stride + ky) * width + ox * stride + 2 * p;
                                    acc += rows[at] as i64 * (w as i16) as i64
                                        + rows[at + 1] as i64 * ((w >> 16) as i16) as i64;
                                }
                            }
                            want[oy * ow + ox] = acc as i32;
                        }
                    }
                    // past the plane: untouched
                    want[oh * ow..].fill(7);
                    for fixed in [true, false] {
                        let mut dst = vec![7i32; oh * ow + 9];
                        // SAFETY: the CPU has AVX2 (checked above); `rows` is wide and deep enough
                        // for every block's loads
                        unsafe {
                            match (fixed, kh) {
                                (true, 3) => pair_blocks_avx2::<3, 2>(&g, &mut dst[..oh * ow]),
                                (true, 5) => pair_blocks_avx2::<5, 3>(&g, &mut dst[..oh * ow]),
                                _ => pair_blocks_avx2::<0, 0>(&g, &mut dst[..oh * ow]),
                            }
                        }
                        assert_eq!(dst, want, "{kh} rows, stride {stride}, width {ow}, {fixed}");
                    }
                }
            }
        }
    }

    /// The depthwise pair kernel's two forms of multiply-add (`vpmaddwd` and an add, `vpdpwssd`) give
    /// the same sums, with taps in registers (3×3, 5×5) or read from memory (7×7), at stride 1 and 2
    /// (the executor takes only one of them on a given CPU; this compares both where the CPU has both).
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn pair_kernels_agree_with_and_without_the_dot_product_instruction() {
        if crate::qgemm::Level::detect() != crate::qgemm::Level::Avx512Vnni {
            eprintln!("skipped: the CPU lacks AVX-512 VNNI");
            return;
        }
        let mut next = xorshift(0x9e37);
        for (kh, np) in [(3, 2), (5, 3), (7, 4)] {
            for stride in [1, 2] {
                let (oh, ow, width) = (5, 37, 2 * 48 + 16 + 2 * np + 40);
                let (rows, words) = pair_inputs(&mut next, (oh * stride + kh) * width, kh * np);
                let g = PairBlocks {
                    rows: &rows,
                    width,
                    out: [oh, ow],
                    stride: [stride, stride],
                    pairs: [kh, np],
                    words: &words,
                    bias: -12345,
                };
                let run = |vnni: bool, fixed: bool| {
                    let mut dst = vec![0i32; oh * ow];
                    // SAFETY: the CPU has AVX-512 F, BW and VNNI (checked above); `rows` is wide and
                    // deep enough for every block's loads
                    unsafe {
                        match (vnni, fixed, kh) {
                            (true, true, 3) => pair_blocks_vnni::<3, 2>(&g, &mut dst),
                            (true, true, 5) => pair_blocks_vnni::<5, 3>(&g, &mut dst),
                            (true, _, _) => pair_blocks_vnni::<0, 0>(&g, &mut dst),
                            (false, true, 3) => plain::<3, 2>(&g, &mut dst),
                            (false, true, 5) => plain::<5, 3>(&g, &mut dst),
                            (false, _, _) => plain::<0, 0>(&g, &mut dst),
                        }
                    }
                    dst
                };
                let want = run(false, false);
                assert!(want.iter().any(|&v| v != -12345));
                for (vnni, fixed) in [(true, true), (true, false), (false, true)] {
                    assert_eq!(
                        run(vnni, fixed),
                        want,
                        "{kh} rows, stride {stride}, {vnni} {fixed}"
                    );
                }
            }
        }
        #[target_feature(enable = "avx512f,avx512bw")]
        unsafe fn plain<const KH: usize, const NP: usize>(g: &PairBlocks<'_>, dst: &mut [i32]) {
            unsafe { pair_blocks::<KH, NP, false>(g, dst) }
        }
    }

    /// The same for the kernel of pairs down a column ([`RowPairs`]), with dilated taps.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn row_pair_kernels_agree_with_and_without_the_dot_product_instruction() {
        if crate::qgemm::Level::detect() != crate::qgemm::Level::Avx512Vnni {
            eprintln!("skipped: the CPU lacks AVX-512 VNNI");
            return;
        }
        let mut next = xorshift(0x51ed);
        for (pairs, kw) in [(3, 5), (2, 3), (4, 7)] {
            for (sy, dy, dx) in [(1, 2, 2), (2, 1, 3)] {
                let (oh, ow) = (4usize, 23usize);
                let width = ow.div_ceil(16) * 16 + (kw - 1) * dx;
                let hp = (oh - 1) * sy + (2 * pairs - 1) * dy + 1;
                let rows: Vec<i16> = (0..2 * hp * width).map(|_| (next() >> 48) as i16).collect();
                let mut words = [0i32; PairPlan::MAX_PAIRS];
                for w in words.iter_mut().take(pairs * kw) {
                    *w = (next() as i32) & 0x00ff_00ff;
                }
                let g = RowPairBlocks {
                    rows: &rows,
                    out: [oh, ow],
                    steps: [sy * width, 2 * dy * width, dx],
                    taps: [pairs, kw],
                    words: &words,
                    bias: 777,
                };
                let run = |vnni: bool, fixed: bool| {
                    let mut dst = vec![0i32; oh * ow];
                    // SAFETY: the CPU has AVX-512 F, BW and VNNI (checked above); the rows are wide
                    // and deep enough for every block's loads
                    unsafe {
                        match (vnni, fixed, pairs) {
                            (true, true, 3) => row_pair_blocks_vnni::<3, 5>(&g, &mut dst),
                            (true, true, 2) => row_pair_blocks_vnni::<2, 3>(&g, &mut dst),
                            (true, _, _) => row_pair_blocks_vnni::<0, 0>(&g, &mut dst),
                            (false, true, 3) => plain::<3, 5>(&g, &mut dst),
                            (false, true, 2) => plain::<2, 3>(&g, &mut dst),
                            (false, _, _) => plain::<0, 0>(&g, &mut dst),
                        }
                    }
                    dst
                };
                let want = run(false, false);
                assert!(want.iter().any(|&v| v != 777));
                for (vnni, fixed) in [(true, true), (true, false), (false, true)] {
                    assert_eq!(
                        run(vnni, fixed),
                        want,
                        "{pairs}×{kw}, {sy} {dy} {dx}, {vnni} {fixed}"
                    );
                }
            }
        }
        #[target_feature(enable = "avx512f,avx512bw")]
        unsafe fn plain<const T: usize, const KW: usize>(g: &RowPairBlocks<'_>, dst: &mut [i32]) {
            unsafe { row_pair_blocks::<T, KW, false>(g, dst) }
        }
    }

    /// The kernel of sixteen channels per register ([`ChannelLanes`]) with and without `vpdpwssd`, with
    /// its taps' count fixed (3×3, 5×5) and read at run time, equals the sums written out one by one
    /// (bias plus each tap's product, padding read as zero) for full and partial blocks, strides and
    /// dilations.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn channel_lane_kernels_agree_with_and_without_the_dot_product_instruction() {
        if crate::qgemm::Level::detect() != crate::qgemm::Level::Avx512Vnni {
            eprintln!("skipped: the CPU lacks AVX-512 VNNI");
            return;
        }
        let mut next = xorshift(0x1a4e);
        // (kernel, stride, dilation, pads, input h × w, planes)
        for (k, st, di, pads, [h, wd], n) in [
            ([3, 3], [1, 1], [1, 1], [1, 1, 1, 1], [7, 7], 16),
            ([5, 5], [2, 2], [1, 1], [2, 2, 2, 2], [13, 12], 9),
            ([3, 2], [2, 1], [2, 3], [2, 0, 1, 3], [9, 10], 16),
            ([4, 4], [1, 2], [1, 1], [0, 3, 3, 0], [6, 11], 5),
        ] {
            let window = Window {
                kernel: k,
                stride: st,
                dilation: di,
                pads,
            };
            let (oh, ow) = window.output_hw(h, wd).expect("fits");
            let (oh, ow) = (oh as usize, ow as usize);
            let (h, wd) = (h as usize, wd as usize);
            let (kh, kw) = (k[0] as usize, k[1] as usize);
            let (xs, ws, os) = ([1, 16, h, wd], [16, 1, kh, kw], [1, 16, oh, ow]);
            let s = ConvSpec {
                x: &xs,
                w: &ws,
                window: &window,
                groups: 16,
                out: &os,
            };
            let plan = ChannelLanes::new(&s, 255, 255).expect("small planes");
            let x: Vec<i32> = (0..n * h * wd)
                .map(|_| (next() % 511) as i32 - 255)
                .collect();
            let w: Vec<i32> = (0..16 * kh * kw)
                .map(|_| (next() % 255) as i32 - 127)
                .collect();
            let bias = |c: usize| c as i32 * 1000 - 7000;
            let mut want = vec![0i32; n * oh * ow];
            for (l, plane) in want.chunks_mut(oh * ow).enumerate() {
                for (o, v) in plane.iter_mut().enumerate() {
                    let (oy, ox) = (o / ow, o % ow);
                    *v = bias(l);
                    for t in 0..kh * kw {
                        let iy = (oy * st[0] as usize + (t / kw) * di[0] as usize) as i64
                            - pads[0] as i64;
                        let ix = (ox * st[1] as usize + (t % kw) * di[1] as usize) as i64
                            - pads[1] as i64;
                        if (0..h as i64).contains(&iy) && (0..wd as i64).contains(&ix) {
                            *v +=
                                x[l * h * wd + iy as usize * wd + ix as usize] * w[l * kh * kw + t];
                        }
                    }
                }
            }
            let run = |vnni: bool, fixed: bool| {
                let mut rows = vec![0i32; plan.len()];
                let mut words = vec![[0i32; 16]; kh * kw];
                for (t, lanes) in words.iter_mut().enumerate() {
                    for (l, v) in lanes.iter_mut().enumerate() {
                        *v = w[l * kh * kw + t] & 0xffff;
                    }
                }
                let mut biases = [0i32; 16];
                for (l, b) in biases.iter_mut().enumerate() {
                    *b = bias(l);
                }
                let mut dst = vec![0i32; n * oh * ow];
                let g = LaneBlock {
                    rows: &mut rows,
                    words: &words,
                    biases: &biases,
                    n,
                };
                // SAFETY: the CPU has AVX-512 F, BW and VNNI (checked above); `x` holds `n` planes,
                // `rows` the plan's length, `dst` `n` output planes
                unsafe {
                    match (vnni, fixed, kh * kw) {
                        (true, true, 9) => lane_block_vnni::<9>(&plan, &s, &x, g, &mut dst),
                        (true, true, 25) => lane_block_vnni::<25>(&plan, &s, &x, g, &mut dst),
                        (true, _, _) => lane_block_vnni::<0>(&plan, &s, &x, g, &mut dst),
                        (false, true, 9) => lane_block_avx512::<9>(&plan, &s, &x, g, &mut dst),
                        (false, true, 25) => lane_block_avx512::<25>(&plan, &s, &x, g, &mut dst),
                        (false, _, _) => lane_block_avx512::<0>(&plan, &s, &x, g, &mut dst),
                    }
                }
                dst
            };
            for (vnni, fixed) in [(false, false), (false, true), (true, true), (true, false)] {
                assert_eq!(
                    run(vnni, fixed),
                    want,
                    "{window:?} {h}×{wd} {n}, {vnni} {fixed}"
                );
            }
        }
    }

    /// An operand is read in place exactly when its layout already is the product's (axes of one
    /// element, present or not, do not count), and its elements are then the ones the copy would hold.
    #[test]
    fn operands_in_the_products_layout_are_not_copied() {
        let mut sizes = [1usize; 256];
        (sizes[1], sizes[2], sizes[3], sizes[4]) = (4, 3, 5, 3);
        // (labels, shape, order, read in place)
        type Case<'a> = (&'a [u8], &'a [usize], &'a [u8], bool);
        let cases: [Case<'_>; 7] = [
            (&[1, 2, 3], &[4, 3, 5], &[1, 2, 3], true),
            // a batch axis of one element, on either side or both
            (&[0, 1, 2, 3], &[1, 4, 3, 5], &[1, 2, 3], true),
            (&[1, 2, 3], &[4, 3, 5], &[0, 1, 2, 3], true),
            (&[1, 0, 3], &[4, 1, 5], &[1, 3, 0], true),
            // transposed, broadcast along an axis of several, a label the order lacks
            (&[1, 2, 3], &[4, 3, 5], &[1, 3, 2], false),
            (&[1, 0, 3], &[4, 1, 5], &[1, 2, 3], false),
            (&[1, 4, 3], &[4, 3, 5], &[1, 3], false),
        ];
        for (labels, shape, order, in_place) in cases {
            let x: Vec<i32> = (0..shape.iter().product::<usize>() as i32).collect();
            let got = packed(&x, labels, shape, order, &sizes);
            assert_eq!(
                matches!(got, Cow::Borrowed(_)),
                in_place,
                "{labels:?} {order:?}"
            );
            assert_eq!(
                &*got,
                &pack(&x, labels, shape, order, &sizes)[..],
                "{labels:?} {order:?}"
            );
        }
    }

    /// The extremes of `i32` and its neighbours of 0, then 70,000 values of every magnitude.
    fn extremes_and_noise(seed: u64) -> Vec<i32> {
        let mut next = xorshift(seed);
        let mut x = vec![i32::MIN, i32::MIN + 1, -1, 0, 1, i32::MAX - 1, i32::MAX];
        x.extend((0..70_000).map(|_| {
            let v = next();
            (v as i32) >> (v >> 59)
        }));
        x
    }

    #[test]
    fn a_cancelled_run_skips_the_rest_of_a_wide_product() {
        let (m, k, n) = (4 * ROW_BLOCK, 16, 16);
        let (a, b) = (vec![1i32 << 20; m * k], vec![3i32; k * n]);
        // the f64 products (a bound below 2^53) and the i64 ones
        for bound in [(k as u128 * 3) << 20, u128::MAX] {
            let full = batched_gemm(&a, &b, 1, m, k, n, bound, 1);
            assert!(full.iter().all(|&v| v == 3 * 16 * (1 << 20)));
            let token = crate::cancel::Cancel::new();
            token.cancel();
            for threads in [1, 2] {
                let c = crate::cancel::scope(&token, || {
                    batched_gemm(&a, &b, 1, m, k, n, bound, threads)
                });
                // (the f64 form's sums are not zero-filled first: nothing holds a product)
                assert!(
                    c.iter().all(|&v| v != 3 * 16 * (1 << 20)),
                    "no block computed once cancelled"
                );
            }
            // the token is gone with its scope
            assert_eq!(batched_gemm(&a, &b, 1, m, k, n, bound, 1), full);
        }
    }

    /// Wide products in `f64` (AVX-512, `k·max|a|·max|b| < 2^53`; AVX2, `< 2^51`) equal the `i64`
    /// ones, at the edge of each bound with every term of a sum of one sign (each partial sum then
    /// grows to the bound), over shapes whose rows and columns leave partial register tiles, in
    /// batches, on 1 and 2 threads.
    #[test]
    fn wide_products_in_f64_equal_the_i64_ones() {
        let mut next = xorshift(0x51f0);
        let shapes = [
            (1, 1, 1, 1),
            (1, 13, 64, 197),
            (12, 197, 64, 197),
            (3, 197, 197, 64),
            (2, 25, 7, 5),
            (1, 11, 300, 33),
            (1, 200, 3, 16),
        ];
        // bounds just below each f64 form's limit (AVX-512's 2^53, AVX2's 2^51)
        for (case, &(bt, m, k, n)) in shapes.iter().enumerate() {
            for limit in [F64_EXACT, F64_EXACT_AVX2] {
                // magnitudes with k·ma·mb just below the limit
                let ma: i64 = 1 << (10 + case % 12);
                let mb = ((limit as i64) - 1) / (k as i64 * ma);
                let mb = mb.min(i32::MAX as i64);
                let draw =
                    |next: &mut dyn FnMut() -> u64, mx: i64, len: usize, sign: i64| -> Vec<i32> {
                        (0..len)
                            .map(|i| match (i + case) % 3 {
                                // extremes of one sign: the sums reach the bound
                                0 => (sign * mx) as i32,
                                _ => ((next() % (2 * mx as u64 + 1)) as i64 - mx) as i32,
                            })
                            .collect()
                    };
                let a = draw(&mut next, ma, bt * m * k, 1);
                let b = draw(&mut next, mb, bt * k * n, -1);
                let bound = k as u128 * ma as u128 * mb as u128;
                assert!(bound < limit);
                let mut want = vec![0i64; bt * m * n];
                for bi in 0..bt {
                    gemm_body(
                        &a[bi * m * k..(bi + 1) * m * k],
                        &b[bi * k * n..(bi + 1) * k * n],
                        &mut want[bi * m * n..(bi + 1) * m * n],
                        k,
                        n,
                    );
                }
                use crate::simd::Isa;
                for isa in [Isa::Avx512, Isa::Avx2] {
                    for threads in [1, 2] {
                        Isa::cap(isa);
                        let f64s = batched_gemm(&a, &b, bt, m, k, n, bound, threads);
                        let i64s = batched_gemm(&a, &b, bt, m, k, n, u128::MAX, threads);
                        Isa::cap(Isa::Avx512);
                        let at = format!("case {case}, {limit}, {isa:?}, {threads} threads");
                        assert_eq!(f64s, want, "f64 products, {at}");
                        assert_eq!(i64s, want, "i64 products, {at}");
                    }
                }
            }
        }
    }

    #[test]
    fn eight_and_sixteen_bit_operands_take_the_eight_bit_kernels() {
        let (a_l, b_l, o_l) = ([0u8, 1], [1u8, 2], [0u8, 2]);
        let (ash, bsh, osh) = ([3usize, 5], [5usize, 4], [3usize, 4]);
        let spec = EinSpec {
            a: &a_l,
            b: &b_l,
            out: &o_l,
            a_shape: &ash,
            b_shape: &bsh,
            out_shape: &osh,
        };
        let plan = EinPlan::new(&spec);
        let a: Vec<i32> = (0..15).map(|i| i * 17 % 256).collect();
        let b: Vec<i32> = (0..20).map(|i| i * 13 % 256 - 128).collect();
        let pb = plan.pack_b(&spec, &b).expect("packable");
        assert!(matches!(pb.narrow, Some(Narrow::B(_))));
        assert!(matches!(
            plan.narrow_product(&a, &b, (None, Some(&pb)), None, 1, None)
                .map(|p| p.0),
            Some(Acc::Narrow(_))
        ));
        // 16-bit activations, unsigned or signed, are multiplied as two 8-bit halves
        for (at, v) in [(7, 300), (7, 65535), (3, -32768)] {
            let mut a16 = a.clone();
            a16[at] = v;
            assert!(matches!(
                plan.narrow_product(&a16, &b, (None, Some(&pb)), None, 1, None)
                    .map(|p| p.0),
                Some(Acc::Wide(..))
            ));
        }
        // wider ones (or 16-bit values mixing signs across the halves' forms) take the wide path
        for (at, v) in [(7, 65536), (3, -32769)] {
            let mut wide = a.clone();
            wide[at] = v;
            assert!(plan
                .narrow_product(&wide, &b, (None, Some(&pb)), None, 1, None)
                .is_none());
        }
        let mut mixed = a.clone();
        (mixed[2], mixed[3]) = (-1, 40000);
        assert!(plan
            .narrow_product(&mixed, &b, (None, Some(&pb)), None, 1, None)
            .is_none());
        // the 8-bit form keeps no i32 copy: the wide product packs the constant again, same integers
        assert!(pb.data.is_none());
        for x in [&mixed, &a] {
            let want = crate::exec::einsum_reference(&spec, x, &b, None, 0).expect("reference");
            let got = plan
                .run(
                    &spec,
                    (&|| x, &|| &b),
                    (None, None),
                    None,
                    Some(&pb),
                    None,
                    0,
                    1,
                    &mut None,
                )
                .expect("fast");
            assert_eq!(got, want);
        }
        // 16-bit weights are packed as two parts, wider ones not at all
        let mut wb = b.clone();
        wb[0] = 128;
        let parts = plan.pack_b(&spec, &wb).expect("packable").narrow;
        assert!(matches!(parts, Some(Narrow::B(p)) if p.iter().all(|p| p.lo.is_some())));
        wb[0] = 40000;
        assert!(plan.pack_b(&spec, &wb).expect("packable").narrow.is_none());
        // a convolution's weights likewise
        let w: Vec<i32> = (0..2 * 3 * 3).map(|i| i - 9).collect();
        let parts = |w: &[i32]| conv_weights(&[2, 1, 3, 3], 1, w).map(|q| q[0].lo.is_some());
        assert_eq!(parts(&w), Some(false));
        assert_eq!(parts(&[200; 18]), Some(true));
        assert_eq!(parts(&[32640; 18]), None);
        let win = Window {
            kernel: [3, 3],
            stride: [1, 1],
            dilation: [1, 1],
            pads: [1, 1, 1, 1],
        };
        let cs = ConvSpec {
            x: &[1, 1, 4, 4],
            w: &[2, 1, 3, 3],
            window: &win,
            groups: 1,
            out: &[1, 2, 4, 4],
        };
        let qw = conv_weights(&[2, 1, 3, 3], 1, &w).expect("8-bit");
        let x: Vec<i32> = (0..16).collect();
        assert!(conv2d_narrow(&cs, (&x, None), &qw, None, 0, 1, None).is_some());
        assert!(conv2d_narrow(&cs, (&[1000; 16], None), &qw, None, 0, 1, None).is_some());
        assert!(conv2d_narrow(&cs, (&[-32768; 16], None), &qw, None, 0, 1, None).is_some());
        assert!(conv2d_narrow(&cs, (&[70000; 16], None), &qw, None, 0, 1, None).is_none());
        // 16-bit weights too, with 8- and 16-bit inputs, to the reference's integers
        let w16: Vec<i32> = (0..18).map(|i| i * 3001 - 27000).collect();
        let qw = conv_weights(&[2, 1, 3, 3], 1, &w16).expect("16-bit");
        for x in [x.clone(), (0..16).map(|i| i * 4000 - 30000).collect()] {
            let got = conv2d_narrow(&cs, (&x, None), &qw, None, 4, 1, None).expect("8-bit kernels");
            let want = crate::exec::conv_reference(&cs, &x, &w16, None, 4);
            assert_eq!(got.expect("fits"), want.expect("fits"));
        }
    }

    /// The fast max pooling equals the reference's loop over the taps for windows with strides,
    /// dilations and padding (windows wholly in the padding give 0), on one and two threads.
    #[test]
    fn fast_max_pooling_equals_the_reference() {
        let mut next = xorshift(0x9e37_79b9);
        // (kernel, stride, dilation, pads [t, l, b, r], input h, w)
        let cases = [
            ([3, 3], [2, 2], [1, 1], [1, 1, 1, 1], 112, 112),
            ([2, 2], [2, 2], [1, 1], [0, 0, 0, 0], 9, 7),
            ([3, 2], [1, 3], [2, 1], [2, 0, 1, 1], 13, 17),
            ([1, 1], [2, 2], [1, 1], [3, 3, 3, 3], 4, 4),
            ([5, 5], [1, 1], [1, 1], [4, 4, 4, 4], 3, 5),
        ];
        for (kernel, stride, dilation, pads, h, w) in cases {
            let win = Window {
                kernel,
                stride,
                dilation,
                pads,
            };
            let (oh, ow) = win.output_hw(h, w).expect("fits");
            let xs = [1usize, 8, h as usize, w as usize];
            let os = [1usize, 8, oh as usize, ow as usize];
            let x: Vec<i32> = (0..xs.iter().product::<usize>())
                .map(|_| next() as i32 >> (next() % 31))
                .collect();
            let want = crate::exec::pool(&x, &xs, &win, &os, None, 0).unwrap();
            for threads in [1, 2] {
                assert_eq!(max_pool(&x, &xs, &win, &os, threads), want, "{win:?}");
            }
        }
    }

    /// The fast `Lookup` equals the reference's `table_index` (an `i128` rounding shift, then the
    /// clamp into the table) at the extremes of `i32`, for every shift it takes and several offsets.
    #[test]
    fn the_fast_lookup_equals_the_table_index() {
        let x = extremes_and_noise(0x9e37_79b9_7f4a_7c15u64);
        let table: Vec<i32> = (0..257).map(|i| i * 3 - 100).collect();
        for k in 0..=31u32 {
            for lo in [i32::MIN, -128, 0, 5, i32::MAX] {
                let want: Vec<i32> = x
                    .iter()
                    .map(|&v| table[crate::exec::table_index(v as i128, k as i32, lo, table.len())])
                    .collect();
                for threads in [1, 2] {
                    assert_eq!(lookup(&x, &table, k, lo, threads), want, "k {k}, lo {lo}");
                }
            }
        }
    }

    /// The fast `Clamp` in `i32` lanes equals `clamp(⌊(v + 2^(k−1)) / 2^k⌋, lo, hi)` computed in `i128`,
    /// at the extremes of `i32`, for every shift it takes, in parts on several threads.
    #[test]
    fn the_i32_clamp_with_rounding_shift_is_exact() {
        let x = extremes_and_noise(0x2545_f491_4f6c_dd1du64);
        for k in 0..=31u32 {
            for (lo, hi) in [(-128, 127), (0, 255), (i32::MIN, i32::MAX), (5, 5)] {
                let want: Vec<i32> = x
                    .iter()
                    .map(|&v| {
                        let r = if k == 0 {
                            v as i128
                        } else {
                            (v as i128 + (1i128 << (k - 1))) >> k
                        };
                        r.clamp(lo as i128, hi as i128) as i32
                    })
                    .collect();
                for threads in [1, 2] {
                    assert_eq!(clamp_shift(&x, k, lo, hi, threads), want, "k {k}");
                }
            }
        }
    }

    /// The table lookup (a gather of 16 lanes with AVX-512, of 8 with AVX2, the loop otherwise) follows its definition
    /// — `table[clamp(rshift(x, k) − lo, 0, len − 1)]` in `i64` — at every shift, for inputs at the
    /// extremes of `i32`, indices past both ends, and tables whose range leaves `i32`, at every level.
    #[test]
    fn lookups_follow_the_definition() {
        let mut bits = xorshift(0x51_7cc1_b727_220a);
        let mut x: Vec<i32> = (0..1000).map(|_| (bits() >> 20) as i32).collect();
        x.extend([i32::MIN, i32::MIN + 1, -1, 0, 1, i32::MAX - 1, i32::MAX]);
        x.extend((0..40).map(|i| i - 20));
        for len in [1usize, 5, 300, 8193] {
            let table: Vec<i32> = (0..len)
                .map(|_| (bits() >> 33) as i32 - (1 << 30))
                .collect();
            for k in [0u32, 1, 5, 17, 31] {
                for lo in [-1000i64, 0, 7, i32::MIN as i64 + 3, i32::MAX as i64 - 5] {
                    let want: Vec<i32> = x
                        .iter()
                        .map(|&v| {
                            let s = crate::arith::rshift(v as i128, k as i32) as i64;
                            table[(s - lo).clamp(0, len as i64 - 1) as usize]
                        })
                        .collect();
                    for isa in [
                        crate::simd::Isa::Avx512,
                        crate::simd::Isa::Avx2,
                        crate::simd::Isa::Base,
                    ] {
                        crate::simd::Isa::cap(isa);
                        let mut got = x.clone();
                        lookup_in_place(&mut got, (&table, None), k, lo);
                        crate::simd::Isa::cap(crate::simd::Isa::Avx512);
                        assert_eq!(got, want, "len {len}, k {k}, lo {lo}, {isa:?}");
                    }
                }
            }
        }
    }

    /// A random 8-bit convolution of `xs = [c, h, w]` inputs (drawn by `next` in `range`: signed, centred
    /// on 0, or from 0 when negative) into `o` channels in `groups` groups over `win`, with a bias and
    /// a requantizing shift, gives the reference's integers on one, two and three threads, and hands
    /// every output element to the chain's hook exactly once.
    fn narrow_conv_matches_reference(
        next: &mut impl FnMut(i64) -> i64,
        xs: [usize; 3],
        (o, groups): (usize, usize),
        win: &Window,
        range: i64,
    ) {
        let (oh, ow) = win.output_hw(xs[1] as u32, xs[2] as u32).expect("fits");
        let (kh, kw) = (win.kernel[0] as usize, win.kernel[1] as usize);
        let xsh = [1, xs[0], xs[1], xs[2]];
        let wsh = [o, xs[0] / groups, kh, kw];
        let osh = [1, o, oh as usize, ow as usize];
        let cs = ConvSpec {
            x: &xsh,
            w: &wsh,
            window: win,
            groups,
            out: &osh,
        };
        let x: Vec<i32> = (0..xs.iter().product::<usize>())
            .map(|_| match range {
                r if r < 0 => next(-r) as i32,
                r => (next(r) - r / 2) as i32,
            })
            .collect();
        let w: Vec<i32> = (0..wsh.iter().product::<usize>())
            .map(|_| (next(256) - 128) as i32)
            .collect();
        let bias: Vec<i32> = (0..o).map(|_| (next(1 << 16) - (1 << 15)) as i32).collect();
        let reference = crate::exec::conv_reference(&cs, &x, &w, Some((&bias, 3)), 9).unwrap();
        let qw = conv_weights(&wsh, groups, &w).expect("8-bit");
        for threads in [1, 2, 3] {
            let seen = std::sync::Mutex::new(vec![0u8; reference.len()]);
            let hook = |at: usize, part: &mut [i32]| {
                let mut seen = seen.lock().expect("not poisoned");
                seen[at..at + part.len()].iter_mut().for_each(|v| *v += 1);
            };
            let bias = Some((&bias[..], 3));
            let fast = conv2d_narrow(&cs, (&x, None), &qw, bias, 9, threads, Some(&hook))
                .expect("taken by the 8-bit kernels")
                .unwrap();
            let what = format!("{xs:?} kernel {kh}×{kw} in {groups} groups, threads {threads}");
            assert_eq!(fast, reference, "{what}");
            let seen = seen.into_inner().expect("not poisoned");
            let other = seen.iter().find(|&&v| v != 1);
            assert!(
                other.is_none(),
                "{what}: an element handed on {other:?} times"
            );
        }
    }

    /// The 8-bit convolution above the size where its patches are gathered and packed by several
    /// threads (a direct 1×1 read, and 3×3 patches with stride and padding; 8- and 16-bit inputs;
    /// plane sizes and reductions that leave partial blocks; stride-1 images in several panels, split
    /// among the threads) gives the reference's integers.
    #[test]
    fn large_narrow_convolutions_split_across_threads_are_exact() {
        let mut bits = xorshift(0x9e37_79b9_7f4a_7c15);
        let mut next = move |m: i64| (bits() % m as u64) as i64;
        // (input [c, h, w], output channels, kernel, stride, pads, input range: signed, centred on 0,
        // or from 0 when negative)
        // (the last four span several panels on one thread, two of them read from the stride phases
        // of an odd-sized image)
        let cases: [([usize; 3], usize, usize, u32, u32, i64); 9] = [
            ([67, 37, 39], 96, 1, 1, 0, 256),
            ([30, 41, 43], 80, 3, 1, 1, 256),
            ([33, 45, 47], 64, 3, 2, 1, 256),
            ([31, 39, 37], 64, 3, 1, 2, -256),
            ([19, 29, 31], 72, 3, 1, 1, 40_000),
            ([64, 40, 40], 16, 3, 1, 1, 256),
            ([48, 30, 50], 16, 3, 1, 2, -256),
            ([64, 90, 91], 16, 3, 2, 1, 256),
            ([3, 65, 67], 64, 7, 2, 3, -256),
        ];
        for (xs, o, kern, stride, pad, range) in cases {
            let win = Window {
                kernel: [kern as u32; 2],
                stride: [stride; 2],
                dilation: [1, 1],
                pads: [pad; 4],
            };
            let (oh, ow) = win.output_hw(xs[1] as u32, xs[2] as u32).expect("fits");
            assert!(
                o * xs[0] * kern * kern * (oh * ow) as usize >= 1 << 23,
                "above the split"
            );
            narrow_conv_matches_reference(&mut next, xs, (o, 1), &win, range);
        }
    }

    /// The 8-bit by 16-bit dot product (a matrix-vector product's rows) equals the exact sum at
    /// every length up to the longest run its callers give it (511: `128 · 2^15 · 511 < 2^31`),
    /// over the full ranges (−128 and −32768 included), also when one side is longer.
    #[test]
    fn eight_by_sixteen_bit_dot_products_are_exact() {
        let mut bits = xorshift(0x6a09_e667_f3bc_c908);
        for len in (0..70).chain([255, 256, 257, 500, 511]) {
            for extreme in [false, true] {
                let w: Vec<i8> = (0..len + 3)
                    .map(|_| if extreme { -128 } else { bits() as i8 })
                    .collect();
                let x: Vec<i16> = (0..len)
                    .map(|_| if extreme { -32768 } else { bits() as i16 })
                    .collect();
                let want: i64 = w.iter().zip(&x).map(|(&a, &b)| a as i64 * b as i64).sum();
                assert_eq!(dot8(&w, &x) as i64, want, "length {len}");
                assert_eq!(dot8_body(&w, &x) as i64, want, "length {len}");
            }
        }
    }

    /// Late layers (few output rows, many channels: one panel on one thread) split their output
    /// channels among the threads — a part of a channel count that is no multiple of the register
    /// tile, 16-bit inputs at stride 2, an unpadded window — and give the reference's integers, each
    /// element handed to the chain's hook once.
    #[test]
    fn late_convolutions_split_by_channels_are_exact() {
        let mut bits = xorshift(0x2545_f491_4f6c_dd1d);
        let mut next = move |m: i64| (bits() % m as u64) as i64;
        // (input [c, h, w], output channels, stride, pads, input range as in the tests above)
        let cases: [([usize; 3], usize, u32, u32, i64); 3] = [
            ([128, 7, 7], 100, 1, 1, 256),
            ([96, 14, 14], 72, 2, 1, 40_000),
            ([256, 9, 9], 64, 1, 0, -256),
        ];
        for (xs, o, stride, pad) in cases.map(|c| (c.0, c.1, c.2, c.3)) {
            let win = Window {
                kernel: [3, 3],
                stride: [stride; 2],
                dilation: [1, 1],
                pads: [pad; 4],
            };
            let (oh, ow) = win.output_hw(xs[1] as u32, xs[2] as u32).expect("fits");
            let (xsh, wsh) = ([1, xs[0], xs[1], xs[2]], [o, xs[0], 3, 3]);
            let osh = [1, o, oh as usize, ow as usize];
            let cs = ConvSpec {
                x: &xsh,
                w: &wsh,
                window: &win,
                groups: 1,
                out: &osh,
            };
            assert!(!channel_parts(&cs, 1));
            assert!(channel_parts(&cs, 2) && channel_parts(&cs, 3), "{xs:?}");
        }
        for (xs, o, stride, pad, range) in cases {
            let win = Window {
                kernel: [3, 3],
                stride: [stride; 2],
                dilation: [1, 1],
                pads: [pad; 4],
            };
            narrow_conv_matches_reference(&mut next, xs, (o, 1), &win, range);
        }
    }

    /// Grouped convolutions of many small groups (RegNet's 16 channels a group over 14×14 at stride 2
    /// and over 7×7, ResNeXt-like 16-channel groups over a larger map, 16-bit inputs) give the
    /// reference integers on one to three threads, the threads taking whole groups where there are as
    /// many groups as threads, and hand every output element to the chain's hook exactly once.
    #[test]
    fn many_small_groups_split_across_threads_are_exact() {
        let mut bits = xorshift(0x51_7cc1_b727_220a);
        let mut next = move |m: i64| (bits() % m as u64) as i64;
        // (input [c, h, w], output channels, groups, stride, input range as in the test above)
        let cases: [([usize; 3], usize, usize, u32, i64); 4] = [
            ([400, 14, 14], 400, 25, 2, 256),
            ([400, 7, 7], 400, 25, 1, -256),
            ([64, 30, 31], 64, 4, 1, 256),
            ([128, 15, 15], 128, 8, 2, 40_000),
        ];
        for (xs, o, groups, stride, range) in cases {
            let win = Window {
                kernel: [3, 3],
                stride: [stride; 2],
                dilation: [1, 1],
                pads: [1; 4],
            };
            narrow_conv_matches_reference(&mut next, xs, (o, groups), &win, range);
        }
    }
}
