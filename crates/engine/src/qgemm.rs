//! Exact 8-bit matrix products: `C[m×n] = A[m×k] · B[k×n]`, accumulated in `i32`, where one operand holds
//! `i8` weights and the other 8-bit activations (values in `0..=255`, or in `-128..=127`). Either side may
//! be the weights: `A` is read row by row (one broadcast per 4 values of `k`; per pair on AVX2), `B` in
//! blocks of 16 columns.
//!
//! Every product of a `u8` and an `i8` is below `2^15` in magnitude, so a sum over `k ≤ MAX_K` terms stays
//! below `2^31`: the `i32` accumulator never wraps and the result is the exact integer sum the reference
//! executor computes with `i128`. Signed activations are offset by 128 into `0..=255` and the offset's
//! contribution (128 times the weights' sum over `k`) is subtracted per row or column (again exact). Which instruction set runs
//! (AVX-512 VNNI `vpdpbusd`, AVX2 `vpmaddwd` on bytes widened to `i16`, or portable Rust) is chosen at
//! run time and cannot change a bit.
//!
//! A side of 16-bit values comes as two 8-bit parts ([`Parts`]); the caller adds the parts' products,
//! or `gemm_joined` multiplies the 16-bit values as they are (`join_plan`: on AVX2, and on AVX-512
//! VNNI where both sides are split but small enough for one pass of `vpdpwssd` over blocks of `k` whose
//! `i32` sums cannot wrap), accumulating the blocks in `i64`.

/// Largest reduction length for which the `i32` accumulator is exact: `k · 255 · 128 < 2^31`.
pub const MAX_K: usize = 65_536;
/// Columns per packed block (one 512-bit register of `i32` lanes).
pub(crate) const NR: usize = 16;
/// Rows per register tile.
pub(crate) const MR: usize = 8;
/// Reduction quads (4 values of `k`) per cache block.
const KCQ: usize = 256;
/// Rows per cache block of `A`.
const MC: usize = 64;

/// Which implementation runs the inner loop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Level {
    /// Plain Rust loops, on every CPU.
    Portable,
    /// AVX2: bytes widened to `i16`, pairs multiplied and added into `i32` (`vpmaddwd`).
    Avx2,
    /// AVX-512 with VNNI (`vpdpbusd`).
    Avx512Vnni,
}

impl Level {
    /// The fastest level this CPU supports, within the cap [`crate::simd::Isa::cap`] sets (so tests
    /// run every level on one machine).
    pub fn detect() -> Level {
        use crate::simd::Isa;
        match Isa::detect() {
            Isa::Avx512 if Level::Avx512Vnni.supported() => Level::Avx512Vnni,
            Isa::Avx512 | Isa::Avx2 => Level::Avx2,
            Isa::Base => Level::Portable,
        }
    }

    /// Whether this CPU can run the level.
    pub fn supported(self) -> bool {
        match self {
            Level::Portable => true,
            #[cfg(target_arch = "x86_64")]
            Level::Avx2 => std::arch::is_x86_feature_detected!("avx2"),
            #[cfg(target_arch = "x86_64")]
            Level::Avx512Vnni => {
                std::arch::is_x86_feature_detected!("avx512f")
                    && std::arch::is_x86_feature_detected!("avx512bw")
                    && std::arch::is_x86_feature_detected!("avx512vnni")
            }
            #[cfg(not(target_arch = "x86_64"))]
            _ => false,
        }
    }
}

/// The largest 16-bit weight [`split16`] splits (the smallest is −32768).
pub const WEIGHT16_MAX: i32 = 32639;

/// A weight as two `i8` parts, `w = 256·hi + lo` with `lo = ((w + 128) mod 256) − 128`; `None` outside
/// `−32896..=32639` (where `hi` would leave `i8`), so for every 16-bit weight up to [`WEIGHT16_MAX`].
pub fn split16(w: i32) -> Option<(i8, i8)> {
    let lo = (w + 128).rem_euclid(256) - 128;
    Some((i8::try_from((w - lo) >> 8).ok()?, lo as i8))
}

/// An operand in the 8-bit kernels' form: whole (`hi`, no `lo`), or as a high and a low part, so that
/// a product is `256·(hi·x) + lo·x`, exact. Weights of 16 bits are split by [`split16`], each part
/// packed like 8-bit weights (the kernels split 16-bit activations into their halves likewise).
#[derive(Clone, Copy, Debug)]
pub struct Parts<T> {
    /// The whole weights, or their high parts.
    pub hi: T,
    /// The low parts of 16-bit weights.
    pub lo: Option<T>,
}

impl<T> Parts<T> {
    /// The parts by reference.
    pub fn as_ref(&self) -> Parts<&T> {
        Parts {
            hi: &self.hi,
            lo: self.lo.as_ref(),
        }
    }

    /// Each part with the left shift its product takes: `(hi, 8), (lo, 0)`, or `(hi, 0)` alone.
    pub fn each(&self) -> impl Iterator<Item = (&T, u32)> {
        let sh = if self.lo.is_some() { 8 } else { 0 };
        std::iter::once((&self.hi, sh)).chain(self.lo.as_ref().map(|l| (l, 0)))
    }

    /// The weights packed whole if `whole` can, else their high (`pack(true)`) and low
    /// (`pack(false)`) parts; `None` if those cannot either (a weight [`split16`] does not split).
    fn build(
        whole: impl FnOnce() -> Option<T>,
        pack: impl Fn(bool) -> Option<T>,
    ) -> Option<Parts<T>> {
        if let Some(hi) = whole() {
            return Some(Parts { hi, lo: None });
        }
        Some(Parts {
            hi: pack(true)?,
            lo: Some(pack(false)?),
        })
    }
}

/// Part `high` of weight `w` ([`split16`]) as an `i32`, or a value no `i8` holds: also for a weight
/// below −32768 (which splits, but whose parts the AVX2 kernel could not join into one `i16`).
fn part_of(w: i32, high: bool) -> i32 {
    match split16(w) {
        Some((h, l)) if w >= i16::MIN as i32 => (if high { h } else { l }) as i32,
        _ => i32::MAX,
    }
}

impl Parts<PackedA> {
    /// Weights `A[i][kk] = w[i·k + kk]` (row-major `m×k`), if each fits `i8` or is a 16-bit value
    /// [`split16`] splits (`−32768..=`[`WEIGHT16_MAX`]).
    pub fn weights<T: Copy + Into<i32>>(w: &[T], m: usize, k: usize) -> Option<Self> {
        Parts::build(
            || PackedA::weights(w, m, k),
            |high| PackedA::weights_by(m, k, |i, kk| part_of(w[i * k + kk].into(), high)),
        )
    }
}

impl Parts<PackedB> {
    /// Weights `B[kk][j] = b[kk·n + j]` (row-major `k×n`), if each fits `i8` or is a 16-bit value
    /// [`split16`] splits (`−32768..=`[`WEIGHT16_MAX`]).
    pub fn weights<T: Copy + Into<i32>>(b: &[T], k: usize, n: usize) -> Option<Self> {
        Parts::build(
            || PackedB::new(b, k, n),
            |high| PackedB::from_fn(k, n, |kk, j| part_of(b[kk * n + j].into(), high)),
        )
    }
}

/// `B` (`k×n`, `i8`) packed for the kernels: blocks of 16 columns, each a run of `kq = ⌈k/4⌉` groups of
/// 16 columns × 4 consecutive `k` (64 bytes); `k` and `n` are zero-padded.
#[derive(Clone, Debug)]
pub struct PackedB {
    k: usize,
    n: usize,
    kq: usize,
    data: Vec<u8>,
    /// The bytes are `i8` weights (else 8-bit activations).
    weights: bool,
    /// Activations stored with a +128 offset.
    offset: bool,
    /// Weights: `Σ_k B[k][j]` per (padded) column, for an offset on the other side.
    colsum: Vec<i32>,
    /// Weights: their largest magnitude, found as they are packed (0 for activations).
    magnitude: u32,
}

impl PackedB {
    /// Pack a row-major `k×n` matrix whose elements all lie in `-128..=127`; `None` otherwise or when
    /// `k` exceeds [`MAX_K`].
    pub fn new<T: Copy + Into<i32>>(b: &[T], k: usize, n: usize) -> Option<PackedB> {
        Self::from_fn(k, n, |kk, j| b[kk * n + j].into())
    }

    /// Weights `B[kk][j] = f(kk, j)`; `None` if a value lies outside `-128..=127` or `k > MAX_K`.
    pub fn from_fn(k: usize, n: usize, f: impl Fn(usize, usize) -> i32) -> Option<PackedB> {
        let mut p = PackedB::empty(k, n, true, false)?;
        for kk in 0..k {
            for j in 0..n {
                let v = i8::try_from(f(kk, j)).ok()?;
                p.put(kk, j, v as u8);
                p.colsum[j] += v as i32;
                p.magnitude = p.magnitude.max(v.unsigned_abs() as u32);
            }
        }
        Some(p)
    }

    /// Activations `B[kk][j] = x[kk·n + j]` (a row-major `k×n` matrix), if they are 8-bit.
    pub fn activations(x: &[i32], k: usize, n: usize) -> Option<PackedB> {
        let (lo, hi) = min_max(x);
        let offset = PackedA::offset_for(lo, hi)?;
        PackedB::activations_in(x, k, n, offset)
    }

    /// Like [`PackedB::activations`] for values the caller knows to lie in `−128..=127` (`offset`) or in
    /// `0..=255`, e.g. image patches of a scanned input; `None` if `k > MAX_K` or `x` is too short.
    pub fn activations_in(x: &[i32], k: usize, n: usize, offset: bool) -> Option<PackedB> {
        PackedB::shifted_in(x, 0, k, n, offset)
    }

    /// The values `x >> shift` (their low bytes when `shift` is 0 and `offset` false), as
    /// [`PackedB::activations_in`] packs `x`: with `shift` 8, the high halves of 16-bit values.
    pub fn shifted_in(x: &[i32], shift: u32, k: usize, n: usize, offset: bool) -> Option<PackedB> {
        PackedB::shifted_par(x, shift, k, n, offset, 1)
    }

    /// [`PackedB::shifted_in`] with the blocks of columns split across up to `threads` parts (the
    /// same bytes: each block is written by exactly one part).
    pub fn shifted_par(
        x: &[i32],
        shift: u32,
        k: usize,
        n: usize,
        offset: bool,
        threads: usize,
    ) -> Option<PackedB> {
        let add = if offset { 128 } else { 0 };
        PackedB::activations_par(x.len(), k, n, offset, threads, |kq, blk0, part| {
            interleave(x, k, n, kq, (shift, add), blk0, part)
        })
    }

    /// Activations already stored as their bytes (`x + 128` when `offset`, else `x`), a row-major
    /// `k×n` matrix, packed like [`PackedB::shifted_par`] on up to `threads` threads.
    pub fn bytes_par(
        x: &[u8],
        k: usize,
        n: usize,
        offset: bool,
        threads: usize,
    ) -> Option<PackedB> {
        PackedB::activations_par(x.len(), k, n, offset, threads, |kq, blk0, part| {
            interleave_bytes(x, k, n, kq, blk0, part)
        })
    }

    /// Activations stored as their bytes (as for [`PackedB::bytes_par`]) whose row `r` is the `n` bytes
    /// from `x[starts[r]]` on — rows may overlap, as the shifted windows of a convolution over a padded
    /// image do; `None` if a row runs past `x` or there are more than [`MAX_K`] rows.
    pub fn rows_of(x: &[u8], starts: &[usize], n: usize, offset: bool) -> Option<PackedB> {
        if starts
            .iter()
            .any(|&s| s.checked_add(n).is_none_or(|e| e > x.len()))
        {
            return None;
        }
        let k = starts.len();
        PackedB::activations_par(k * n, k, n, offset, 1, |kq, blk0, part| {
            interleave_starts(x, starts, n, kq, blk0, part)
        })
    }

    /// Packed activations from a source of `len` values (`None` if fewer than `k·n`, or `k > MAX_K`),
    /// each part of whole column blocks written by `fill(kq, first block, bytes)` on up to `threads`
    /// threads. `fill` must write every byte but the padding (which holds the offset's zero: the buffer
    /// is filled with it first only where there is any).
    fn activations_par(
        len: usize,
        k: usize,
        n: usize,
        offset: bool,
        threads: usize,
        fill: impl Fn(usize, usize, &mut [u8]) + Sync,
    ) -> Option<PackedB> {
        if len < k * n {
            return None;
        }
        // with `k` a multiple of 4 the fill writes every byte but the last block's padded columns:
        // only that block is filled first
        let mut p = if k.is_multiple_of(4) && k <= MAX_K {
            let (kq, nb) = (k / 4, n.div_ceil(NR));
            let mut data = crate::buffers::take_overwritten(nb * kq * NR * 4);
            if !n.is_multiple_of(NR) {
                let pad = if offset { 128 } else { 0 };
                data[(nb - 1) * kq * NR * 4..].fill(pad);
            }
            PackedB {
                k,
                n,
                kq,
                data,
                weights: false,
                offset,
                colsum: vec![0; nb * NR],
                magnitude: 0,
            }
        } else {
            PackedB::empty_par(k, n, false, offset, threads)?
        };
        let kq = p.kq;
        crate::par::rows(&mut p.data, kq * NR * 4, threads, 1, |blk0, part| {
            fill(kq, blk0, part)
        });
        Some(p)
    }

    fn empty(k: usize, n: usize, weights: bool, offset: bool) -> Option<PackedB> {
        PackedB::empty_par(k, n, weights, offset, 1)
    }

    fn empty_par(
        k: usize,
        n: usize,
        weights: bool,
        offset: bool,
        threads: usize,
    ) -> Option<PackedB> {
        if k > MAX_K {
            return None;
        }
        let kq = k.div_ceil(4);
        let nb = n.div_ceil(NR);
        let pad = if offset { 128 } else { 0 };
        Some(PackedB {
            k,
            n,
            kq,
            data: crate::par::filled(nb * kq * NR * 4, pad, threads),
            weights,
            offset,
            colsum: vec![0; nb * NR],
            magnitude: 0,
        })
    }

    #[inline]
    fn put(&mut self, kk: usize, j: usize, v: u8) {
        let (blk, lane) = (j / NR, j % NR);
        self.data[((blk * self.kq + kk / 4) * NR + lane) * 4 + kk % 4] = v;
    }

    /// Where activation `B[kk][j]` is stored: `row_base(kk) + column_offsets()[j]` in [`PackedB::bytes_mut`].
    pub fn row_base(&self, kk: usize) -> usize {
        (kk / 4) * NR * 4 + kk % 4
    }

    /// See [`PackedB::row_base`].
    pub fn column_offsets(&self) -> Vec<usize> {
        (0..self.n)
            .map(|j| (j / NR) * self.kq * NR * 4 + (j % NR) * 4)
            .collect()
    }

    /// The stored bytes and the value added to each activation before it is stored (128 for signed
    /// activations, else 0).
    pub fn bytes_mut(&mut self) -> (&mut [u8], i32) {
        (&mut self.data, if self.offset { 128 } else { 0 })
    }

    /// The shape of `k×n` split activations (`offset` as their high bytes are stored) given as
    /// [`pairs16`] instead of bytes: no bytes, the sums of columns zero (a single pass starts its sums
    /// from zero); `None` when `k > MAX_K`.
    pub(crate) fn pairs_shape(k: usize, n: usize, offset: bool) -> Option<PackedB> {
        if k > MAX_K {
            return None;
        }
        Some(PackedB {
            k,
            n,
            kq: k.div_ceil(4),
            data: Vec::new(),
            weights: false,
            offset,
            colsum: vec![0; n.div_ceil(NR) * NR],
            magnitude: 0,
        })
    }

    /// Zero 8-bit activations of shape `k×n`, stored with a +128 offset when `offset` (signed values),
    /// to be filled through [`PackedB::bytes_mut`]; `None` if `k > MAX_K`.
    pub fn activation_zeros(k: usize, n: usize, offset: bool) -> Option<PackedB> {
        PackedB::empty(k, n, false, offset)
    }

    /// Reduction length.
    pub fn k(&self) -> usize {
        self.k
    }

    /// Columns.
    pub fn n(&self) -> usize {
        self.n
    }

    /// Row stride of the products [`gemm`] returns (`n` rounded up to 16).
    pub fn ldc(&self) -> usize {
        self.colsum.len()
    }
}

crate::multiversion! {
    fn interleave(x: &[i32], k: usize, n: usize, kq: usize, shift_add: (u32, i32), blk0: usize, data: &mut [u8]) -> () = interleave_body
}

/// Store the row-major `k×n` activations `x` (as the bytes of `(x >> shift) + add`, `shift_add`) in
/// [`PackedB`]'s layout: per block of [`NR`] columns and group of 4 rows, 64 bytes holding each column's
/// 4 values side by side. `data` holds the blocks from `blk0` on (as many as it has room for). Padding
/// bytes are left as they are.
#[inline(always)]
fn interleave_body(
    x: &[i32],
    k: usize,
    n: usize,
    kq: usize,
    (shift, add): (u32, i32),
    blk0: usize,
    data: &mut [u8],
) {
    let byte = |v: i32| ((v >> shift) + add) as u8;
    interleave_with(
        x,
        |r| r * n,
        k,
        n,
        kq,
        blk0,
        data,
        byte,
        |r, dst| quads_by(r, byte, dst),
    )
}

/// Four rows' [`NR`] values as each column's 4 bytes side by side (`dst[4l + i] = byte(r[i][l])`): one
/// little-endian word per column, built with whole-register shifts and ors.
#[inline(always)]
fn quads_by<T: Copy>(r: [&[T; NR]; 4], byte: impl Fn(T) -> u8, dst: &mut [u8]) {
    let mut words = [0u32; NR];
    for (l, w) in words.iter_mut().enumerate() {
        *w = u32::from_le_bytes([byte(r[0][l]), byte(r[1][l]), byte(r[2][l]), byte(r[3][l])]);
    }
    for (d, w) in dst.chunks_exact_mut(4).zip(words) {
        d.copy_from_slice(&w.to_le_bytes());
    }
}

/// [`quads_by`] of bytes as they are: on x86-64 two rounds of SSE2 unpacks (bytes of rows 0/1 and
/// 2/3 paired, then the pairs paired), four 16-byte stores.
#[inline(always)]
fn quads16(r: [&[u8; NR]; 4], dst: &mut [u8]) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::*;
        let dst = &mut dst[..4 * NR];
        // SAFETY: SSE2 is part of x86-64; each load reads one row's 16 bytes, the four stores the 64
        // bytes of `dst` (sliced just above)
        unsafe {
            let ld = |row: &[u8; NR]| _mm_loadu_si128(row.as_ptr() as *const __m128i);
            let (a, b, c, d) = (ld(r[0]), ld(r[1]), ld(r[2]), ld(r[3]));
            let (ab_lo, ab_hi) = (_mm_unpacklo_epi8(a, b), _mm_unpackhi_epi8(a, b));
            let (cd_lo, cd_hi) = (_mm_unpacklo_epi8(c, d), _mm_unpackhi_epi8(c, d));
            let p = dst.as_mut_ptr() as *mut __m128i;
            _mm_storeu_si128(p, _mm_unpacklo_epi16(ab_lo, cd_lo));
            _mm_storeu_si128(p.add(1), _mm_unpackhi_epi16(ab_lo, cd_lo));
            _mm_storeu_si128(p.add(2), _mm_unpacklo_epi16(ab_hi, cd_hi));
            _mm_storeu_si128(p.add(3), _mm_unpackhi_epi16(ab_hi, cd_hi));
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    quads_by(r, |v| v, dst)
}

crate::multiversion! {
    fn interleave_bytes(x: &[u8], k: usize, n: usize, kq: usize, blk0: usize, data: &mut [u8]) -> () = interleave_bytes_body
}

/// [`interleave_body`] for activations already stored as bytes.
#[inline(always)]
fn interleave_bytes_body(x: &[u8], k: usize, n: usize, kq: usize, blk0: usize, data: &mut [u8]) {
    interleave_with(x, |r| r * n, k, n, kq, blk0, data, |v| v, quads16)
}

crate::multiversion! {
    fn interleave_starts(x: &[u8], starts: &[usize], n: usize, kq: usize, blk0: usize, data: &mut [u8]) -> () = interleave_starts_body
}

/// [`interleave_bytes_body`] for a matrix whose row `r` is the `n` bytes from `x[starts[r]]` on (rows
/// may overlap).
#[inline(always)]
fn interleave_starts_body(
    x: &[u8],
    starts: &[usize],
    n: usize,
    kq: usize,
    blk0: usize,
    data: &mut [u8],
) {
    interleave_with(
        x,
        |r| starts[r],
        starts.len(),
        n,
        kq,
        blk0,
        data,
        |v| v,
        quads16,
    )
}

/// The loop of [`interleave_body`], each element stored as the byte `byte(v)` (`quads` stores a whole
/// block's group of 4 rows likewise: [`quads_by`] with `byte`); row `r` of the `k×n` matrix is
/// `x[start(r)..start(r) + n]`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn interleave_with<T: Copy>(
    x: &[T],
    start: impl Fn(usize) -> usize,
    k: usize,
    n: usize,
    kq: usize,
    blk0: usize,
    data: &mut [u8],
    byte: impl Fn(T) -> u8,
    quads: impl Fn([&[T; NR]; 4], &mut [u8]),
) {
    let blocks = data.len() / (kq * NR * 4).max(1);
    let blocks = blocks.min(n.div_ceil(NR).saturating_sub(blk0));
    // a few blocks at a time, all their groups of rows: the reads walk 4 rows of `x` a few cache
    // lines at a time and the writes stay a few sequential streams
    const TILE: usize = 8;
    for t0 in (0..blocks).step_by(TILE) {
        for g in 0..kq {
            let rows = 4.min(k - 4 * g);
            for blk in t0..blocks.min(t0 + TILE) {
                let j0 = (blk0 + blk) * NR;
                let len = NR.min(n - j0);
                let dst = &mut data[(blk * kq + g) * NR * 4..(blk * kq + g + 1) * NR * 4];
                if rows == 4 && len == NR {
                    let r: [&[T; NR]; 4] = std::array::from_fn(|i| {
                        let at = start(4 * g + i) + j0;
                        x[at..at + NR].try_into().expect("NR values")
                    });
                    quads(r, dst);
                } else if rows == 4 {
                    // a last, partial block of columns: the same words, for its columns only
                    let r: [&[T]; 4] = std::array::from_fn(|i| {
                        let at = start(4 * g + i) + j0;
                        &x[at..at + len]
                    });
                    for (l, d) in dst.chunks_exact_mut(4).take(len).enumerate() {
                        d.copy_from_slice(&[
                            byte(r[0][l]),
                            byte(r[1][l]),
                            byte(r[2][l]),
                            byte(r[3][l]),
                        ]);
                    }
                } else if len == NR {
                    // the last group of a reduction not a multiple of 4 (a 3-channel stem's 27):
                    // its rows (the last repeated) through `quads`, then the missing rows' bytes
                    // put back from what the buffer holds there, the padding
                    let r: [&[T; NR]; 4] = std::array::from_fn(|i| {
                        let at = start(4 * g + i.min(rows - 1)) + j0;
                        x[at..at + NR].try_into().expect("NR values")
                    });
                    let mut pad = [0u8; NR * 4];
                    pad.copy_from_slice(dst);
                    quads(r, dst);
                    // (word l's byte i is row i's)
                    let keep = u32::MAX >> (8 * (4 - rows));
                    for (d, p) in dst.chunks_exact_mut(4).zip(pad.chunks_exact(4)) {
                        let word = |b: &[u8]| u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
                        d.copy_from_slice(&(word(d) & keep | word(p) & !keep).to_le_bytes());
                    }
                } else {
                    for i in 0..rows {
                        let at = start(4 * g + i) + j0;
                        let row = &x[at..at + len];
                        for (l, &v) in row.iter().enumerate() {
                            dst[l * 4 + i] = byte(v);
                        }
                    }
                }
            }
        }
    }
}

/// Activations converted for the kernels: `m` rows of `4·kq` bytes.
#[derive(Clone, Debug)]
pub struct PackedA {
    m: usize,
    kq: usize,
    data: Vec<u8>,
    /// The bytes are `i8` weights (else 8-bit activations).
    weights: bool,
    /// Activations stored with a +128 offset.
    offset: bool,
    /// Weights: `Σ_k A[i][k]` per row, for an offset on the other side.
    rowsum: Vec<i32>,
    /// Weights: their largest magnitude, found as they are packed (0 for activations).
    magnitude: u32,
    /// Weights of at most [`TILED_MAX`] values multiplied by at most [`TILED_COLS`] columns: the AVX2
    /// kernel's `i16` tiles of every row, widened on first use and kept ([`PackedA::tiled`]).
    tiles: std::sync::OnceLock<Vec<i16>>,
    /// The high parts of split weights: the single pass's `i16` tiles of the whole weights
    /// ([`PackedA::joined_tiles`]), widened on first use and kept.
    joined: std::sync::OnceLock<Vec<i16>>,
}

/// Most weights whose single-pass tiles a [`PackedA`] keeps (8 MiB of them, a 3×3 convolution from 512
/// to 512 channels fits): widening the weights costs a pass over them per product, which a product
/// over few columns (a late convolution's 7×7 plane) feels as much as a sixth of its time.
const JOINED_MAX: usize = 1 << 22;

/// Rows a split product's parts are aligned to (a multiple of both kernels' tiles, [`MR`] and
/// [`MR2`]): a part then starts and ends on the kept single-pass tiles' boundaries.
const JOINED_ROWS: usize = 24;

/// Rows the parts of a product by `w` split across threads are aligned to: whole register tiles
/// ([`MR`]), and for split weights whole kept single-pass tiles too ([`JOINED_ROWS`]).
pub(crate) fn part_rows(w: &Parts<PackedA>) -> usize {
    match w.lo {
        Some(_) => JOINED_ROWS,
        None => MR,
    }
}

/// Most weights whose AVX2 tiles a [`PackedA`] keeps (2 MiB of them): widening costs a pass over the
/// weights per product, which a product over few columns (a grouped or late convolution) feels.
const TILED_MAX: usize = 1 << 20;
/// Most columns of a product that reads (and so keeps) the tiles: over more, widening the weights
/// costs little beside the product and keeping them would only hold memory.
const TILED_COLS: usize = 64;

/// A packing's bytes go back to the running executor's pool (see [`crate::buffers`]).
impl Drop for PackedA {
    fn drop(&mut self) {
        crate::buffers::give(std::mem::take(&mut self.data));
    }
}

impl Drop for PackedB {
    fn drop(&mut self) {
        crate::buffers::give(std::mem::take(&mut self.data));
    }
}

/// Smallest and largest of `x` (0 and 0 for an empty slice... or any slice: the range always holds 0).
pub(crate) fn min_max(x: &[i32]) -> (i32, i32) {
    min_max_run(x)
}

crate::multiversion! {
    fn min_max_run(x: &[i32]) -> (i32, i32) = min_max_body
}

#[inline(always)]
fn min_max_body(x: &[i32]) -> (i32, i32) {
    x.iter()
        .fold((0i32, 0i32), |(l, h), &v| (l.min(v), h.max(v)))
}

/// Which activations a packing holds: all of them (8-bit values), or the high (`v >> 8`) or low
/// (`v & 255`) halves of 16-bit ones.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Part {
    Whole,
    High,
    Low,
}

impl Part {
    /// The part of `v` is `(v >> right) & mask`: `(right, mask)`.
    fn bits(self) -> (u32, i32) {
        match self {
            Part::Whole => (0, -1),
            Part::High => (8, -1),
            Part::Low => (0, 255),
        }
    }

    /// The value this part holds of `v`.
    fn of(self, v: i32) -> i32 {
        let (right, mask) = self.bits();
        (v >> right) & mask
    }
}

crate::multiversion! {
    fn encode_run(dst: &mut [u8], src: &[i32], right: u32, mask: i32, add: i32) -> () = encode_run_body
}

/// `dst[j] = ((src[j] >> right) & mask) + add`, as a byte.
#[inline(always)]
fn encode_run_body(dst: &mut [u8], src: &[i32], right: u32, mask: i32, add: i32) {
    for (d, &v) in dst.iter_mut().zip(src) {
        *d = (((v >> right) & mask) + add) as u8;
    }
}

impl PackedA {
    /// Activations: the `part` of every value of the row-major `m×k` matrix `a`, if every such value
    /// lies in `0..=255` or every one in `-128..=127` ([`PackedA::from_fn`] of `part.of(a[i·k + kk])`).
    pub(crate) fn part(a: &[i32], m: usize, k: usize, part: Part) -> Option<PackedA> {
        let a = &a[..m * k];
        // (`v >> 8` is monotone: the range of the high halves is the halves of the range)
        let (lo, hi) = match part {
            Part::Low => (0, 255),
            _ => {
                let (lo, hi) = min_max(a);
                (part.of(lo), part.of(hi))
            }
        };
        let mut p = PackedA::zeros(m, k, PackedA::offset_for(lo, hi)?)?;
        let (right, mask) = part.bits();
        let add = if p.offset { 128 } else { 0 };
        if k > 0 {
            for (i, row) in a.chunks_exact(k).enumerate() {
                encode_run(&mut p.row_mut(i)[..k], row, right, mask, add);
            }
        }
        Some(p)
    }

    /// Rows of `A[i][kk] = f(i, kk)` (`m×k`), if every value lies in `0..=255` or every value in
    /// `-128..=127`; `None` otherwise (the caller takes a wider path).
    pub fn from_fn(m: usize, k: usize, f: impl Fn(usize, usize) -> i32) -> Option<PackedA> {
        if k > MAX_K {
            return None;
        }
        let (mut lo, mut hi) = (0i32, 0i32);
        for i in 0..m {
            for kk in 0..k {
                let v = f(i, kk);
                lo = lo.min(v);
                hi = hi.max(v);
            }
        }
        let mut p = PackedA::zeros(m, k, PackedA::offset_for(lo, hi)?)?;
        for i in 0..m {
            for kk in 0..k {
                let v = p.encode(f(i, kk));
                p.row_mut(i)[kk] = v;
            }
        }
        Some(p)
    }

    /// How values in `lo..=hi` are stored: `Some(false)` as `u8`, `Some(true)` as `i8` offset by 128,
    /// `None` if they fit neither.
    pub fn offset_for(lo: i32, hi: i32) -> Option<bool> {
        if lo >= 0 && hi <= 255 {
            Some(false)
        } else if lo >= -128 && hi <= 127 {
            Some(true)
        } else {
            None
        }
    }

    /// Whole 8-bit weights' AVX2 tiles ([`widen_tiles`] of all rows, from row 0, by blocks of
    /// [`KCQ2`] quads: the block from quad `q0` at `4·q0·m`, in it the tile from row `i` at `i·qn·4`),
    /// widened on first use; `None` for activations, or weights of more than [`TILED_MAX`] values.
    #[cfg(target_arch = "x86_64")]
    fn tiled(&self) -> Option<&[i16]> {
        if !self.weights || self.m * self.kq * 4 > TILED_MAX {
            return None;
        }
        let t = self.tiles.get_or_init(|| {
            let mut t = vec![0i16; self.m * self.kq * 4];
            for q0 in (0..self.kq).step_by(KCQ2) {
                let qn = KCQ2.min(self.kq - q0);
                let block = &mut t[4 * q0 * self.m..4 * (q0 + qn) * self.m];
                let me = Parts { hi: self, lo: None };
                // SAFETY: only the AVX2 kernel asks for the tiles, on a CPU that has AVX2
                unsafe { widen_tiles(me, Widen::Signed, 0, self.m, q0, qn, block) };
            }
            t
        });
        Some(t)
    }

    /// Split 16-bit weights' tiles as a single pass reads them (`self` the high parts, `lo` the low
    /// ones): [`widen_tiles`] of every row from row 0 over the whole reduction ([`Widen::Weight16`]:
    /// the tile from row `i` at `i·kq·4`, in it pair `p` of row `t` at `2(p·r + t)`, so a block of
    /// the reduction from quad `q0` is the stretch from `4·q0·r`), widened on first use and kept;
    /// `None` for activations, or weights of more than [`JOINED_MAX`] values.
    #[cfg(target_arch = "x86_64")]
    fn joined_tiles(&self, lo: &PackedA) -> Option<&[i16]> {
        if !self.weights || self.m * self.kq * 4 > JOINED_MAX || lo.m != self.m || lo.kq != self.kq
        {
            return None;
        }
        let t = self.joined.get_or_init(|| {
            let mut t = vec![0i16; self.m * self.kq * 4];
            let me = Parts {
                hi: self,
                lo: Some(lo),
            };
            // SAFETY: only the single pass asks for the tiles, on a CPU that has AVX2
            unsafe { widen_tiles(me, Widen::Weight16, 0, self.m, 0, self.kq, &mut t) };
            t
        });
        Some(t)
    }

    /// `m×k` zeros (values 0) to be filled row by row with [`PackedA::row_mut`] and [`PackedA::encode`].
    /// `None` if `k` exceeds [`MAX_K`].
    fn zeros(m: usize, k: usize, offset: bool) -> Option<PackedA> {
        if k > MAX_K {
            return None;
        }
        let kq = k.div_ceil(4);
        let pad = if offset { 128u8 } else { 0 };
        Some(PackedA {
            m,
            kq,
            data: crate::buffers::take(m * kq * 4, pad),
            weights: false,
            offset,
            rowsum: Vec::new(),
            magnitude: 0,
            tiles: std::sync::OnceLock::new(),
            joined: std::sync::OnceLock::new(),
        })
    }

    /// Weights `A[i][kk] = w[i·k + kk]` (a row-major `m×k` matrix), if every value fits `i8`.
    pub fn weights<T: Copy + Into<i32>>(w: &[T], m: usize, k: usize) -> Option<PackedA> {
        PackedA::weights_by(m, k, |i, kk| w[i * k + kk].into())
    }

    /// Weights `A[i][kk] = f(i, kk)`, if every value fits `i8`.
    pub fn weights_by(m: usize, k: usize, f: impl Fn(usize, usize) -> i32) -> Option<PackedA> {
        let mut p = PackedA::zeros(m, k, false)?;
        p.weights = true;
        p.rowsum = vec![0; m];
        for i in 0..m {
            for kk in 0..k {
                let v = i8::try_from(f(i, kk)).ok()?;
                p.row_mut(i)[kk] = v as u8;
                p.rowsum[i] += v as i32;
                p.magnitude = p.magnitude.max(v.unsigned_abs() as u32);
            }
        }
        Some(p)
    }

    /// The stored byte of value `v` (which must lie in the range [`PackedA::offset_for`] chose).
    #[inline]
    fn encode(&self, v: i32) -> u8 {
        if self.offset {
            (v + 128) as u8
        } else {
            v as u8
        }
    }

    /// Row `i` (its first `k` bytes are the row's values; the rest is padding of value 0).
    fn row_mut(&mut self, i: usize) -> &mut [u8] {
        let w = self.kq * 4;
        &mut self.data[i * w..(i + 1) * w]
    }

    /// A row-major `m×k` matrix.
    pub fn new(a: &[i32], m: usize, k: usize) -> Option<PackedA> {
        Self::part(a, m, k, Part::Whole)
    }
}

/// `C = A · B` exactly, as `i32` with row stride [`PackedB::ldc`], on up to `threads` threads.
/// `A` and `B` must agree on `k`, and exactly one of them must hold the weights.
pub fn gemm(a: &PackedA, b: &PackedB, threads: usize, level: Level) -> Vec<i32> {
    gemm_requant(a, b, threads, level, None)
}

/// A requantization of finished `i32` sums: row `r`'s become `(s + adds[r]) >> shift` (an arithmetic
/// shift), which the caller has checked cannot leave `i32` (`|s| + |adds[r]| < 2^31`). The AVX2
/// kernel applies it as it stores a tile's last sums; the other levels to each part's rows after
/// its product.
#[derive(Clone, Copy)]
pub(crate) struct Requant<'a> {
    /// One per row of `A`.
    pub adds: &'a [i32],
    /// At most 31.
    pub shift: u32,
}

impl Requant<'_> {
    /// Rows `r0 ..` of `c` (`ldc` apart, their first `n` elements) requantized.
    fn rows(self, r0: usize, c: &mut [i32], (n, ldc): (usize, usize)) {
        for (i, row) in c.chunks_mut(ldc).enumerate() {
            let add = self.adds[r0 + i];
            let n = n.min(row.len());
            for v in &mut row[..n] {
                *v = v.wrapping_add(add) >> self.shift;
            }
        }
    }
}

/// [`gemm`] with the sums requantized ([`Requant`]) where `requant` is given.
pub(crate) fn gemm_requant(
    a: &PackedA,
    b: &PackedB,
    threads: usize,
    level: Level,
    requant: Option<Requant<'_>>,
) -> Vec<i32> {
    assert!(requant.is_none_or(|q| q.adds.len() >= a.m && q.shift <= 31));
    assert_eq!(a.kq, b.kq, "operands disagree on k");
    assert!(
        a.weights != b.weights,
        "one operand holds weights, the other activations"
    );
    let ldc = b.ldc();
    // parts are tasks of the shared pool, kept awake during a run (see `par::awake`): products of
    // 2 M multiply-adds or more (~10-20 µs on one core) are split
    let work = a.m * b.kq * 4 * ldc;
    let threads = if work >= 1 << 21 { threads } else { 1 };
    // `product` stores every element
    let mut c = crate::buffers::take_overwritten(a.m * ldc);
    if a.m == 0 || ldc == 0 {
        return c;
    }
    let level = if level.supported() {
        level
    } else {
        Level::Portable
    };
    let tokens = crate::cancel::current();
    #[cfg(target_arch = "x86_64")]
    if level == Level::Avx2 && a.kq > 0 && by_columns(a.m, a.kq * 4, ldc / NR, threads) {
        by_column_parts(a, b, threads, (&mut c, ldc), requant, &tokens);
        return c;
    }
    crate::par::rows(&mut c, ldc, threads, MR, |r0, part| {
        product(a, b, r0, part, level, requant, &tokens)
    });
    c
}

/// Whether the AVX2 product of `m` rows by `nb` blocks of columns over a reduction of `k` splits its
/// columns among `threads` rather than its rows: when the rows are fewer than the columns and than the
/// reduction (a 1×1 convolution to few channels over a large map), every thread of a split by rows
/// would widen all of `B`'s bytes (`k` per column, more than the `m` sums a part copies out per column
/// when split by columns), and the rows would divide unevenly into register tiles (24 rows: 16 and 8);
/// split by columns each widens its own columns, and only the smaller `A` again. Needs at least two
/// blocks per thread.
#[cfg(target_arch = "x86_64")]
fn by_columns(m: usize, k: usize, nb: usize, threads: usize) -> bool {
    threads > 1 && nb >= 2 * threads && nb * NR > m && k > m
}

/// [`gemm`] on AVX2 with its column blocks split among `threads`: each part multiplies every row by its
/// blocks into a buffer of its own (whole tiles, the kernel's layout), then copies each row's stretch
/// into `c` (`ldc` apart), which the parts hold as disjoint row segments.
#[cfg(target_arch = "x86_64")]
fn by_column_parts(
    a: &PackedA,
    b: &PackedB,
    threads: usize,
    (c, ldc): (&mut [i32], usize),
    requant: Option<Requant<'_>>,
    tokens: &[crate::cancel::Cancel],
) {
    let nb = ldc / NR;
    let per = nb.div_ceil(threads.max(1));
    let mut parts: Vec<Vec<&mut [i32]>> = (0..nb.div_ceil(per))
        .map(|_| Vec::with_capacity(a.m))
        .collect();
    for row in c.chunks_mut(ldc) {
        let mut rest = row;
        for p in parts.iter_mut() {
            let (seg, tail) = rest.split_at_mut((per * NR).min(rest.len()));
            p.push(seg);
            rest = tail;
        }
    }
    crate::par::each(parts.into_iter().enumerate(), |(t, segs)| {
        let blocks = t * per..((t + 1) * per).min(nb);
        let w = blocks.len() * NR;
        // (every element written by the kernel)
        let mut sums = crate::buffers::take_overwritten(a.m * w);
        let (pa, pb) = (Parts { hi: a, lo: None }, Parts { hi: b, lo: None });
        gemm_rows_avx2(
            pa,
            pb,
            (0, blocks),
            Sums::Narrow(&mut sums, requant),
            (None, None),
            tokens,
        );
        for (seg, row) in segs.into_iter().zip(sums.chunks_exact(w)) {
            seg.copy_from_slice(row);
        }
        crate::buffers::give(sums);
    });
}

/// Rows `r0..` of `a · b` into `c` (whole rows of [`PackedB::ldc`] elements, every one stored: the
/// first block of the reduced axis stores its sums, an empty reduced axis zeros; what `c` held is never
/// read), the activations' offsets subtracted, on the calling thread; `level` must be supported. A
/// cancelled run stops between row blocks.
pub(crate) fn product(
    a: &PackedA,
    b: &PackedB,
    r0: usize,
    c: &mut [i32],
    level: Level,
    requant: Option<Requant<'_>>,
    tokens: &[crate::cancel::Cancel],
) {
    if a.kq == 0 {
        c.fill(0);
    }
    // every kernel starts the first block of its sums from the offsets' negation ([`Offsets`]); the
    // AVX2 kernel requantizes as it stores the last, the other levels' rows are requantized after
    if !gemm_rows(a, b, r0, c, level, requant, tokens) {
        if let Some(q) = requant {
            q.rows(r0, c, (b.ldc(), b.ldc()));
        }
    }
}

/// Rows `r0 .. r0 + c.len() / ldc` of the product into `c` (stopping early, between blocks of rows, when
/// the run is cancelled: the executor then discards the product); `true` where the kernel has applied
/// `requant` as it stored the sums (AVX2), `false` where the caller still has to.
fn gemm_rows(
    a: &PackedA,
    b: &PackedB,
    r0: usize,
    c: &mut [i32],
    level: Level,
    requant: Option<Requant<'_>>,
    tokens: &[crate::cancel::Cancel],
) -> bool {
    let ldc = b.ldc();
    let rows = c.len() / ldc;
    let nb = ldc / NR;
    let lda = a.kq * 4;
    #[cfg(target_arch = "x86_64")]
    if level == Level::Avx2 {
        let (a, b) = (Parts { hi: a, lo: None }, Parts { hi: b, lo: None });
        let blocks = 0..b.hi.ldc() / NR;
        gemm_rows_avx2(
            a,
            b,
            (r0, blocks),
            Sums::Narrow(c, requant),
            (None, None),
            tokens,
        );
        // (an empty reduction has no last block to requantize in)
        return a.hi.kq > 0;
    }
    // a short reduction's tile takes about as long as its call: the VNNI kernel sweeps every column
    // block of a band of rows in one call instead (its sums start from the offsets: one block of `k`)
    #[cfg(target_arch = "x86_64")]
    if level == Level::Avx512Vnni && a.kq <= BAND_KQ {
        let mut i = 0;
        while i < rows {
            if crate::cancel::any(tokens) {
                return false;
            }
            let r = MR.min(rows - i);
            let offsets = Offsets::of(a, b, (r0 + i, r), (0, nb * NR));
            let arow = &a.data[(r0 + i) * lda..];
            let bstride = b.kq * NR * 4;
            band(
                !a.weights,
                r,
                (arow, lda),
                (&b.data, bstride),
                a.kq,
                (&mut c[i * ldc..], ldc),
                nb,
                Some(offsets),
            );
            i += r;
        }
        return false;
    }
    for q0 in (0..a.kq).step_by(KCQ) {
        let qn = KCQ.min(a.kq - q0);
        let first = q0 == 0;
        for m0 in (0..rows).step_by(MC) {
            if crate::cancel::any(tokens) {
                return false;
            }
            let mrows = MC.min(rows - m0);
            let mut blk = 0;
            while blk < nb {
                let two = blk + 1 < nb;
                let mut i = 0;
                while i < mrows {
                    let r = MR.min(mrows - i);
                    let arow = &a.data[(r0 + m0 + i) * lda + q0 * 4..];
                    let cpos = (m0 + i) * ldc + blk * NR;
                    let bpos = (blk * b.kq + q0) * NR * 4;
                    let width = if two { 2 * NR } else { NR };
                    let offsets =
                        first.then(|| Offsets::of(a, b, (r0 + m0 + i, r), (blk * NR, width)));
                    tile(
                        level,
                        !a.weights,
                        r,
                        two,
                        arow,
                        lda,
                        &b.data[bpos..],
                        b.kq * NR * 4,
                        qn,
                        &mut c[cpos..],
                        ldc,
                        offsets,
                    );
                    i += r;
                }
                blk += if two { 2 } else { 1 };
            }
        }
    }
    false
}

/// Rows per AVX2 register tile.
const MR2: usize = 6;
/// Reduction quads per cache block of the AVX2 kernel (512 values of `k`: a column block's 256 pairs
/// as `i16` take 16 KiB).
const KCQ2: usize = 128;
/// Reduction quads per block when a side has 16 bits ([`gemm_joined`]): 256 values of `k`, over which
/// the `i32` sums cannot wrap (every product of a 16-bit and an 8-bit value is at most `2^23` in
/// magnitude, `255 · 2^15` for an unsigned byte, so 256 of them stay below `2^31`).
const KCQS: usize = 64;
/// Rows per cache block of `A` in the AVX2 kernel (whole tiles).
const MC2: usize = 16 * MR2;

/// About how many bytes of widened columns [`gemm_rows_avx2`] multiplies by one block of rows before
/// widening the next stretch of them (the stretch stays in the L2 cache, not in memory).
const BW_BYTES: usize = 64 << 10;

/// How one side's stored bytes become the AVX2 kernel's `i16` operand.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Widen {
    /// Each byte as `u8` (8-bit activations, offset or not).
    Unsigned,
    /// Each byte as `i8` (weights, or the parts of 16-bit ones).
    Signed,
    /// The high and low bytes of 16-bit activations as one `i16`, `256·(hi − 128) + lo`: the value
    /// itself when the high bytes are offset (signed values), else the value less 32768.
    Act16,
    /// The two `i8` parts of 16-bit weights as one `i16`, `256·hi + lo` (a weight in `−32768..=32639`,
    /// as [`Parts::weights`] admits).
    Weight16,
    /// The high and low bytes of unsigned 16-bit activations below 32768 as one `i16`, `256·hi + lo`:
    /// the value itself (a [`JoinPlan::single`] product's activations, whose high bytes are at most 127).
    Plain16,
}

impl Widen {
    /// How a side of weights (or activations) widens: split into two parts, as one 16-bit value;
    /// whole, byte by byte.
    fn of(weights: bool, split: bool, plain: bool) -> Widen {
        match (weights, split) {
            (true, true) => Widen::Weight16,
            (true, false) => Widen::Signed,
            (false, true) if plain => Widen::Plain16,
            (false, true) => Widen::Act16,
            (false, false) => Widen::Unsigned,
        }
    }

    /// One value (see [`widen16`]).
    fn one(self, h: u8, l: u8) -> i16 {
        match self {
            Widen::Unsigned => h as i16,
            Widen::Signed => h as i8 as i16,
            Widen::Act16 => (((h as u16) << 8 | l as u16) ^ 0x8000) as i16,
            Widen::Weight16 => ((h as i8 as i16) << 8).wrapping_add(l as i8 as i16),
            Widen::Plain16 => ((h as u16) << 8 | l as u16) as i16,
        }
    }
}

/// The products' sums of an AVX2 run: stored in `i32`, the first block of the reduction starting
/// from the offsets' negation ([`Offsets`]), or in `i64` (each product shifted left by its part's
/// shift), the first block starting from the given per-row or per-column values.
enum Sums<'c, 's> {
    /// Requantized as the last block of the reduction stores them, when given.
    Narrow(&'c mut [i32], Option<Requant<'s>>),
    Wide(&'c mut [i64], Starts<'s>),
}

/// What the `i64` sums start from: one value per row (of the rows computed) or per column.
#[derive(Clone, Copy)]
enum Starts<'s> {
    Rows(&'s [i64]),
    Cols(&'s [i64]),
}

impl Starts<'_> {
    /// Whether there are values for a tile of `rows` rows by `cols` columns.
    fn covers(&self, rows: usize, cols: usize) -> bool {
        match self {
            Starts::Rows(s) => s.len() >= rows,
            Starts::Cols(s) => s.len() >= cols,
        }
    }
}

/// One register tile's destination (see [`Sums`]).
enum Out<'c, 'o> {
    Narrow {
        c: &'c mut [i32],
        ldc: usize,
        first: Option<Offsets<'o>>,
        /// The reduction's last block: the tile's rows' requantization (its adds from its first row).
        last: Option<Requant<'o>>,
    },
    Wide {
        c: &'c mut [i64],
        ldc: usize,
        shift: u32,
        /// The first block's starting values: the tile's rows' (from its first) or its 16 columns'.
        first: Option<Starts<'o>>,
    },
}

/// [`gemm_rows`] on AVX2, by pairs of `k`: per cache block of the reduction, `B`'s bytes widened once
/// to `i16` as, per pair of `k` values, 16 columns' pairs (two registers of 8 columns); per cache
/// block of rows, `A`'s bytes widened and interleaved by tiles of [`MR2`] rows (a pair of each row
/// after the other); then register tiles of up to 6 rows × 16 columns ([`avx2`]). Whole activations
/// are zero-extended, whole weights sign-extended; a side given as two parts is widened to its 16-bit
/// values ([`Widen`]). With both sides split, the weights' parts run one after the other, each a
/// product of 8-bit weights by the 16-bit activations, added `256·high + low` — or, where `join`
/// says their magnitudes allow ([`JoinPlan::single`]), both sides' 16-bit values in one pass over
/// blocks short enough that no `i32` sum wraps, on AVX-512 VNNI's `vpdpwssd` where `join` asks.
/// `pairs`: a single pass's activations already as those pairs ([`pairs16`], laid out for the plan's
/// blocks; `b` then gives their shape only), read where they lie instead of widened here.
#[cfg(target_arch = "x86_64")]
fn gemm_rows_avx2(
    a: Parts<&PackedA>,
    b: Parts<&PackedB>,
    (r0, blocks): (usize, std::ops::Range<usize>),
    mut sums: Sums<'_, '_>,
    (join, pairs): (Option<JoinPlan>, Option<&[i16]>),
    tokens: &[crate::cancel::Cancel],
) {
    // the sums hold the blocks' columns only (rows `ldc` apart)
    let nb = blocks.len();
    let ldc = nb * NR;
    let len = match &sums {
        Sums::Narrow(c, _) => c.len(),
        Sums::Wide(c, _) => c.len(),
    };
    let rows = len.checked_div(ldc).unwrap_or(0);
    let kq = a.hi.kq;
    let plan = join.unwrap_or(JoinPlan {
        single: None,
        avx512: false,
    });
    // the products to add: each side whole or widened from its two parts, but the weights' parts one
    // at a time when the activations are split too (a 16-bit by 16-bit product would not fit a pair
    // over a whole block) unless the plan has both sides in one pass
    let both = a.lo.is_some() && b.lo.is_some() && plan.single.is_none();
    let passes: Vec<(Parts<&PackedA>, Parts<&PackedB>, u32)> = if !both {
        vec![(a, b, 0)]
    } else if a.hi.weights {
        a.each()
            .map(|(w, sh)| (Parts { hi: *w, lo: None }, b, sh))
            .collect()
    } else {
        b.each()
            .map(|(w, sh)| (a, Parts { hi: *w, lo: None }, sh))
            .collect()
    };
    let kcq = match (&sums, plan.single) {
        (Sums::Narrow(..), _) => KCQ2,
        (Sums::Wide(..), Some(kcq)) => kcq,
        (Sums::Wide(..), None) => KCQS,
    };
    let plain = plan.single.is_some();
    // a single pass's split weights on the left: their kept tiles, where this part's tiles are
    // theirs (it starts on a tile's first row and ends on a tile's last, or at the last row)
    let kept16 = match (a.lo, plan.single) {
        (Some(lo), Some(_))
            if a.hi.weights
                && r0.is_multiple_of(MR2)
                && ((r0 + rows).is_multiple_of(MR2) || r0 + rows == a.hi.m) =>
        {
            a.hi.joined_tiles(lo)
        }
        _ => None,
    };
    let kc = kcq.min(kq);
    // with one block of rows, the columns are widened a stretch at a time (about `BW_BYTES`), each
    // multiplied by every row while it sits in the cache, the rows widened once per block of `k`;
    // with several, all columns at once, each block of rows widened in turn
    let chunk = match rows <= MC2 {
        true => (BW_BYTES / (kc * NR * 4 * 2).max(1)).clamp(1, nb.max(1)),
        false => nb.max(1),
    };
    // (from the executor's pool: every element is written before it is read)
    let mut aw = crate::buffers::take_overwritten::<i16>(MC2.min(rows) * kc * 4);
    // (pairs are read only by a single pass)
    let pairs = pairs.filter(|_| plain);
    let widened = if pairs.is_some() {
        0
    } else {
        chunk.min(nb) * kc * NR * 4
    };
    let mut bw = crate::buffers::take_overwritten::<i16>(widened);
    for q0 in (0..kq).step_by(kcq) {
        let qn = kcq.min(kq - q0);
        for (pass, &(pa, pb, shift)) in passes.iter().enumerate() {
            let mb = Widen::of(pb.hi.weights, pb.lo.is_some(), plain && !pb.hi.offset);
            let ma = Widen::of(pa.hi.weights, pa.lo.is_some(), plain && !pa.hi.offset);
            for c0 in (0..nb).step_by(chunk) {
                let stretch = blocks.start + c0..blocks.start + (c0 + chunk).min(nb);
                let len = stretch.len() * qn * NR * 4;
                let bw: &[i16] = match pairs {
                    // (the plan's block from `q0` on: every block of columns' `qn` quads)
                    Some(p) => &p[(q0 * b.hi.ldc() + stretch.start * qn * NR) * 4..][..len],
                    None => {
                        let bw = &mut bw[..len];
                        // SAFETY: `gemm` runs this level only where the CPU supports AVX2
                        unsafe { widen_pairs(pb, mb, (q0, qn), stretch.clone(), bw) };
                        bw
                    }
                };
                for m0 in (0..rows).step_by(MC2) {
                    if crate::cancel::any(tokens) {
                        return;
                    }
                    let mrows = MC2.min(rows - m0);
                    // all rows of whole weights in blocks of KCQ2: their kept tiles (the same
                    // tiles, from the same rows), else widened here (once per block of `k` with
                    // one block of rows: the first stretch's)
                    let kept = match (pa.lo, &sums) {
                        (None, Sums::Narrow(..))
                            if r0 == 0 && rows == pa.hi.m && ldc <= TILED_COLS =>
                        {
                            pa.hi.tiled()
                        }
                        _ => None,
                    };
                    let aw: &[i16] = match kept {
                        Some(t) => &t[4 * q0 * pa.hi.m + m0 * qn * 4..][..mrows * qn * 4],
                        None => {
                            let aw = &mut aw[..mrows * qn * 4];
                            if c0 == 0 && kept16.is_none() {
                                // SAFETY: as above
                                unsafe { widen_tiles(pa, ma, r0 + m0, mrows, q0, qn, aw) };
                            }
                            aw
                        }
                    };
                    // (the AVX-512 single pass takes two blocks of columns at a time where there are)
                    let mut jj = 0;
                    while jj < stretch.len() {
                        let (blk, j) = (stretch.start + jj, c0 + jj);
                        let nbk = if plan.avx512 && jj + 1 < stretch.len() {
                            2
                        } else {
                            1
                        };
                        let bq = &bw[jj * qn * NR * 4..(jj + nbk) * qn * NR * 4];
                        let mut i = 0;
                        while i < mrows {
                            let r = MR2.min(mrows - i);
                            let at = match kept16 {
                                Some(t) => {
                                    let from = (r0 + m0 + i) * kq * 4 + 4 * q0 * r;
                                    &t[from..from + 4 * qn * r]
                                }
                                None => &aw[i * qn * 4..(i + r) * qn * 4],
                            };
                            let from = (m0 + i) * ldc + j * NR;
                            let out = match &mut sums {
                                Sums::Narrow(c, requant) => Out::Narrow {
                                    c: &mut c[from..],
                                    ldc,
                                    first: (q0 == 0).then(|| {
                                        Offsets::of(pa.hi, pb.hi, (r0 + m0 + i, r), (blk * NR, NR))
                                    }),
                                    last: requant
                                        .filter(|_| q0 + qn == kq && passes.len() == 1)
                                        .map(|q| Requant {
                                            adds: &q.adds[r0 + m0 + i..],
                                            shift: q.shift,
                                        }),
                                },
                                Sums::Wide(c, starts) => Out::Wide {
                                    c: &mut c[from..],
                                    ldc,
                                    shift,
                                    first: (q0 == 0 && pass == 0).then_some(match *starts {
                                        Starts::Rows(s) => Starts::Rows(&s[m0 + i..]),
                                        Starts::Cols(s) => Starts::Cols(&s[blk * NR..]),
                                    }),
                                },
                            };
                            // the register tile of `r` rows
                            macro_rules! by_rows {
                                ($kernel:ident $(, $nb:literal)?) => {
                                    match r {
                                        1 => $kernel::<1 $(, $nb)?>(at, bq, 2 * qn, out),
                                        2 => $kernel::<2 $(, $nb)?>(at, bq, 2 * qn, out),
                                        3 => $kernel::<3 $(, $nb)?>(at, bq, 2 * qn, out),
                                        4 => $kernel::<4 $(, $nb)?>(at, bq, 2 * qn, out),
                                        5 => $kernel::<5 $(, $nb)?>(at, bq, 2 * qn, out),
                                        _ => $kernel::<6 $(, $nb)?>(at, bq, 2 * qn, out),
                                    }
                                };
                            }
                            // SAFETY: as above; `at` holds `r` rows' `2·qn` pairs, `bq` `nbk` blocks of
                            // `2·qn` pairs of 16 columns, the kernel checks `out` holds `r` rows of
                            // `16·nbk`; the AVX-512 kernel is asked for only where `join_plan` found
                            // VNNI (and `i64` sums)
                            unsafe {
                                match (plan.avx512, nbk) {
                                    (true, 2) => by_rows!(vnni16, 2),
                                    (true, _) => by_rows!(vnni16, 1),
                                    (false, _) => by_rows!(avx2),
                                }
                            }
                            i += r;
                        }
                        jj += nbk;
                    }
                }
            }
        }
    }
    // (given back in the reverse of the order taken: the next call's first request, the rows',
    // finds its own buffer first, as the pool hands out the most recently given that fits)
    crate::buffers::give(bw);
    crate::buffers::give(aw);
}

/// A quad's 64 bytes (16 columns × 4 values of `k`) as four registers of 16 bytes, each 8 columns'
/// pairs in column order: the pair `(k0, k1)` of columns 0–7 and of 8–15, then `(k2, k3)` likewise.
///
/// # Safety
/// The CPU must support AVX2; `src` must point at 64 readable bytes.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
#[inline]
unsafe fn quad_pairs(src: *const u8) -> [std::arch::x86_64::__m128i; 4] {
    use std::arch::x86_64::*;
    let low = _mm256_set1_epi32(0xffff);
    let (x0, x1) = (
        _mm256_loadu_si256(src as *const __m256i),
        _mm256_loadu_si256(src.add(32) as *const __m256i),
    );
    // each column's first two bytes (a 16-bit word) and its last two, packed in column order (the
    // pack interleaves 128-bit lanes: the permutation restores the order)
    let first = _mm256_packus_epi32(_mm256_and_si256(x0, low), _mm256_and_si256(x1, low));
    let second = _mm256_packus_epi32(_mm256_srli_epi32::<16>(x0), _mm256_srli_epi32::<16>(x1));
    let (f, s) = (
        _mm256_permute4x64_epi64::<0b11_01_10_00>(first),
        _mm256_permute4x64_epi64::<0b11_01_10_00>(second),
    );
    [
        _mm256_castsi256_si128(f),
        _mm256_extracti128_si256::<1>(f),
        _mm256_castsi256_si128(s),
        _mm256_extracti128_si256::<1>(s),
    ]
}

/// 16 values as `i16` ([`Widen`]): from the bytes `h`, with the low bytes `l` of a split side.
///
/// # Safety
/// The CPU must support AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
#[inline]
unsafe fn widen16(
    mode: Widen,
    h: std::arch::x86_64::__m128i,
    l: std::arch::x86_64::__m128i,
) -> std::arch::x86_64::__m256i {
    use std::arch::x86_64::*;
    match mode {
        Widen::Unsigned => _mm256_cvtepu8_epi16(h),
        Widen::Signed => _mm256_cvtepi8_epi16(h),
        Widen::Act16 => _mm256_xor_si256(
            _mm256_or_si256(
                _mm256_slli_epi16::<8>(_mm256_cvtepu8_epi16(h)),
                _mm256_cvtepu8_epi16(l),
            ),
            _mm256_set1_epi16(i16::MIN),
        ),
        Widen::Weight16 => _mm256_add_epi16(
            _mm256_slli_epi16::<8>(_mm256_cvtepi8_epi16(h)),
            _mm256_cvtepi8_epi16(l),
        ),
        Widen::Plain16 => _mm256_or_si256(
            _mm256_slli_epi16::<8>(_mm256_cvtepu8_epi16(h)),
            _mm256_cvtepu8_epi16(l),
        ),
    }
}

/// Quads `q0 .. q0 + qn` of every column block of `b` as `i16` pairs ([`Widen`] `mode`): block `blk`'s
/// pair `p` at `(blk·qn·2 + p)·32`, its 16 columns' `(k = 2p, k = 2p + 1)` values one after the other.
///
/// # Safety
/// The CPU must support AVX2; `dst` holds `nb·qn·64` values; a low part is laid out like the high one.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn widen_pairs(
    b: Parts<&PackedB>,
    mode: Widen,
    (q0, qn): (usize, usize),
    blocks: std::ops::Range<usize>,
    dst: &mut [i16],
) {
    use std::arch::x86_64::*;
    let (h, kq) = (b.hi, b.hi.kq);
    let l = b.lo.unwrap_or(h);
    assert!(dst.len() >= blocks.len() * qn * NR * 4 && q0 + qn <= kq);
    assert!(blocks.end * NR <= h.ldc());
    assert!(h.data.len() >= blocks.end * kq * NR * 4 && l.data.len() >= h.data.len());
    let (hp, lp, dp) = (h.data.as_ptr(), l.data.as_ptr(), dst.as_mut_ptr());
    for (j, blk) in blocks.enumerate() {
        for q in 0..qn {
            let at = (blk * kq + q0 + q) * NR * 4;
            let hv = quad_pairs(hp.add(at));
            let lv = if b.lo.is_some() {
                quad_pairs(lp.add(at))
            } else {
                hv
            };
            let out = dp.add((j * qn + q) * NR * 4);
            for i in 0..4 {
                _mm256_storeu_si256(out.add(16 * i) as *mut __m256i, widen16(mode, hv[i], lv[i]));
            }
        }
    }
}

/// Rows `row .. row + rows` of `a`, quads `q0 .. q0 + qn`, as `i16` tiles of [`MR2`] rows ([`Widen`]
/// `mode`; the last tile may have fewer rows, `r`): the tile from row `i` at `i·qn·4`, its pair `p` at
/// `p·2r`, row `t`'s two values at `2t` within it.
///
/// # Safety
/// The CPU must support AVX2; `dst` holds `rows·qn·4` values; a low part is laid out like the high one.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn widen_tiles(
    a: Parts<&PackedA>,
    mode: Widen,
    row: usize,
    rows: usize,
    q0: usize,
    qn: usize,
    dst: &mut [i16],
) {
    use std::arch::x86_64::*;
    let (h, l) = (a.hi, a.lo.unwrap_or(a.hi));
    let lda = h.kq * 4;
    assert!(dst.len() >= rows * qn * 4 && q0 + qn <= h.kq);
    assert!(h.data.len() >= (row + rows) * lda && l.data.len() >= (row + rows) * lda);
    let mut i = 0;
    while i < rows {
        let r = MR2.min(rows - i);
        // the tile's pairs as 32-bit words: pair p of row t at p·r + t
        let tile = dst.as_mut_ptr().add(i * qn * 4) as *mut u32;
        for t in 0..r {
            let at = (row + i + t) * lda + q0 * 4;
            let (hs, ls) = (h.data.as_ptr().add(at), l.data.as_ptr().add(at));
            // 8 pairs (16 bytes) widened at a time, then placed word by word
            let mut words = [0u32; 8];
            for c in 0..qn / 4 {
                let ld = |p: *const u8| _mm_loadu_si128(p.add(16 * c) as *const __m128i);
                let v = widen16(mode, ld(hs), ld(ls));
                _mm256_storeu_si256(words.as_mut_ptr() as *mut __m256i, v);
                for (j, &w) in words.iter().enumerate() {
                    tile.add((8 * c + j) * r + t).write_unaligned(w);
                }
            }
            // the last quads' pairs one by one
            for p in qn / 4 * 8..2 * qn {
                let v = |e: usize| mode.one(*hs.add(e), *ls.add(e)) as u16 as u32;
                tile.add(p * r + t)
                    .write_unaligned(v(2 * p) | v(2 * p + 1) << 16);
            }
        }
        i += r;
    }
}

/// The AVX2 register tile: `R` rows × 16 columns. Per pair of `k` values, each row's pair is
/// broadcast and multiplied by the 16 columns' pairs (`vpmaddwd`: two products added per `i32` lane)
/// and added to the row's two accumulators (columns 0–7 and 8–15): every lane holds one column's sum,
/// exact under the same bound as VNNI (8-bit operands) or over the short blocks [`KCQS`] (a 16-bit
/// side). The sums are stored or added to `out`.
///
/// # Safety
/// The CPU must support AVX2; `a` must hold `pairs` pairs of `R` rows (`2R` values each), `b` `pairs`
/// pairs of 16 columns (32 values each).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
#[allow(clippy::needless_range_loop)]
unsafe fn avx2<const R: usize>(a: &[i16], b: &[i16], pairs: usize, out: Out<'_, '_>) {
    use std::arch::x86_64::*;
    debug_assert!(a.len() >= pairs * 2 * R && b.len() >= pairs * 32);
    let mut acc = [[_mm256_setzero_si256(); 2]; R];
    let (ap, bp) = (a.as_ptr(), b.as_ptr());
    for p in 0..pairs {
        let b0 = _mm256_loadu_si256(bp.add(p * 32) as *const __m256i);
        let b1 = _mm256_loadu_si256(bp.add(p * 32 + 16) as *const __m256i);
        for i in 0..R {
            let va = _mm256_set1_epi32((ap.add(p * 2 * R + 2 * i) as *const i32).read_unaligned());
            acc[i][0] = _mm256_add_epi32(acc[i][0], _mm256_madd_epi16(va, b0));
            acc[i][1] = _mm256_add_epi32(acc[i][1], _mm256_madd_epi16(va, b1));
        }
    }
    match out {
        Out::Narrow {
            c,
            ldc,
            first,
            last,
        } => {
            assert!(c.len() >= (R - 1) * ldc + NR);
            assert!(last.is_none_or(|q| q.adds.len() >= R));
            let cp = c.as_mut_ptr();
            let count = _mm_cvtsi32_si128(last.map_or(0, |q| q.shift as i32));
            for (i, accr) in acc.iter().enumerate() {
                for (h, &s) in accr.iter().enumerate() {
                    let dst = cp.add(i * ldc + 8 * h) as *mut __m256i;
                    let v = match &first {
                        // the offsets' products taken back out (wrapping, like the sums)
                        Some(o) => {
                            let mut s = s;
                            if let Some(cols) = o.cols {
                                let cs =
                                    _mm256_loadu_si256(cols.as_ptr().add(8 * h) as *const __m256i);
                                s = _mm256_sub_epi32(s, _mm256_slli_epi32::<7>(cs));
                            }
                            if let Some(rows) = o.rows {
                                s = _mm256_sub_epi32(
                                    s,
                                    _mm256_set1_epi32(rows[i].wrapping_mul(128)),
                                );
                            }
                            s
                        }
                        None => _mm256_add_epi32(_mm256_loadu_si256(dst as *const _), s),
                    };
                    // the finished sums requantized (the caller's bound: no add wraps)
                    let v = match last {
                        Some(q) => _mm256_sra_epi32(
                            _mm256_add_epi32(v, _mm256_set1_epi32(q.adds[i])),
                            count,
                        ),
                        None => v,
                    };
                    _mm256_storeu_si256(dst, v);
                }
            }
        }
        Out::Wide {
            c,
            ldc,
            shift,
            first,
        } => {
            assert!(c.len() >= (R - 1) * ldc + NR && first.is_none_or(|f| f.covers(R, NR)));
            let cp = c.as_mut_ptr();
            let count = _mm_cvtsi32_si128(shift as i32);
            for (i, accr) in acc.iter().enumerate() {
                for (h, &s) in accr.iter().enumerate() {
                    for (q, half) in [_mm256_castsi256_si128(s), _mm256_extracti128_si256::<1>(s)]
                        .into_iter()
                        .enumerate()
                    {
                        let dst = cp.add(i * ldc + 8 * h + 4 * q) as *mut __m256i;
                        let v = _mm256_sll_epi64(_mm256_cvtepi32_epi64(half), count);
                        let base = match first {
                            Some(Starts::Rows(s)) => _mm256_set1_epi64x(s[i]),
                            Some(Starts::Cols(s)) => {
                                _mm256_loadu_si256(s.as_ptr().add(8 * h + 4 * q) as *const __m256i)
                            }
                            None => _mm256_loadu_si256(dst as *const _),
                        };
                        _mm256_storeu_si256(dst, _mm256_add_epi64(base, v));
                    }
                }
            }
        }
    }
}

/// [`avx2`]'s register tile on AVX-512 VNNI for `i64` sums ([`Out::Wide`]): `R` rows × `16·NB`
/// columns (`NB` blocks of 16, one after the other in `b`, `pairs` pairs each), per pair of `k` values
/// each row's pair broadcast and multiplied by each block's 16 columns' pairs, two products added into
/// each `i32` lane (`vpdpwssd`, one 512-bit register per row and block; [`widen_pairs`] lays a pair's
/// 16 columns out as one). Exact over the blocks [`JoinPlan::single`] sizes; the sums are widened to
/// `i64`, shifted and added to `out` (or to its first block's starting values).
///
/// # Safety
/// The CPU must support AVX-512 F and VNNI; `a` must hold `pairs` pairs of `R` rows (`2R` values
/// each), `b` `NB` blocks of `pairs` pairs of 16 columns (32 values each); `out` must be
/// [`Out::Wide`].
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn vnni16<const R: usize, const NB: usize>(
    a: &[i16],
    b: &[i16],
    pairs: usize,
    out: Out<'_, '_>,
) {
    use std::arch::x86_64::*;
    assert!(a.len() >= pairs * 2 * R && b.len() >= NB * pairs * 32);
    let Out::Wide {
        c,
        ldc,
        shift,
        first,
    } = out
    else {
        unreachable!("single passes keep i64 sums");
    };
    let mut acc = [[_mm512_setzero_si512(); NB]; R];
    let (ap, bp) = (a.as_ptr(), b.as_ptr());
    for p in 0..pairs {
        let mut bv = [_mm512_setzero_si512(); NB];
        for (h, v) in bv.iter_mut().enumerate() {
            *v = _mm512_loadu_si512(bp.add(h * pairs * 32 + p * 32) as *const _);
        }
        for (i, row) in acc.iter_mut().enumerate() {
            let va = _mm512_set1_epi32((ap.add(p * 2 * R + 2 * i) as *const i32).read_unaligned());
            for (s, &v) in row.iter_mut().zip(&bv) {
                *s = _mm512_dpwssd_epi32(*s, va, v);
            }
        }
    }
    assert!(c.len() >= (R - 1) * ldc + NB * NR && first.is_none_or(|f| f.covers(R, NB * NR)));
    let cp = c.as_mut_ptr();
    let count = _mm_cvtsi32_si128(shift as i32);
    for (i, row) in acc.iter().enumerate() {
        for (blk, &s) in row.iter().enumerate() {
            for (h, half) in [_mm512_castsi512_si256(s), _mm512_extracti64x4_epi64::<1>(s)]
                .into_iter()
                .enumerate()
            {
                let col = blk * NR + 8 * h;
                let dst = cp.add(i * ldc + col) as *mut __m512i;
                let v = _mm512_sll_epi64(_mm512_cvtepi32_epi64(half), count);
                let base = match first {
                    Some(Starts::Rows(s)) => _mm512_set1_epi64(s[i]),
                    Some(Starts::Cols(s)) => _mm512_loadu_si512(s.as_ptr().add(col) as *const _),
                    None => _mm512_loadu_si512(dst as *const _),
                };
                _mm512_storeu_si512(dst as *mut _, _mm512_add_epi64(base, v));
            }
        }
    }
}

/// How [`gemm_joined`] runs a product with a 16-bit side.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct JoinPlan {
    /// Both sides split and small enough to multiply as 16-bit values in one pass: the quads of `k`
    /// per block (each block's `i32` sums added to the `i64` ones), at most [`KCQS`]. `None`: the
    /// weights' parts one pass each where both sides are split.
    pub single: Option<usize>,
    /// The products on AVX-512 VNNI (`vpdpwssd`) rather than AVX2 (single passes only).
    pub avx512: bool,
}

/// Fewest quads of `k` per block a single pass takes: below it, adding the blocks' sums to the `i64`
/// ones would cost more than a second pass saves.
const SINGLE_MIN_KCQ: usize = 16;

/// The largest `|byte − centre|` over `bytes` (`centre` 128 for offset bytes, else 0).
fn high_magnitude(bytes: &[u8], centre: u8) -> u32 {
    high_magnitude_run(bytes, centre)
}

crate::multiversion! {
    fn high_magnitude_run(bytes: &[u8], centre: u8) -> u32 = high_magnitude_body
}

#[inline(always)]
fn high_magnitude_body(bytes: &[u8], centre: u8) -> u32 {
    let (lo, hi) = bytes
        .iter()
        .fold((centre, centre), |(l, h), &b| (l.min(b), h.max(b)));
    (centre - lo).max(hi - centre) as u32
}

/// How [`gemm_joined`] multiplies `a · b`, or `None` where it does not (the caller joins 8-bit
/// products): one side the weights, the other the activations, at least one of them in two parts,
/// every part of a side shaped alike; on AVX2 always, on AVX-512 VNNI only as a single pass (where
/// two 8-bit products cost what one pass of 16-bit values does, a weights' part by the activations'
/// 16-bit values gains nothing, but one pass of both sides' 16-bit values halves four 8-bit products).
///
/// A single pass needs both sides split, the activations signed or below 32768 (so a value is its own
/// `i16`: high bytes at most 127), and magnitudes `A` (activations) and `W` (weights), bounded from the
/// high bytes (`256·|high| + 255` and `256·|high| + 128`; the weights' found as they were packed, the
/// activations' scanned here), small enough that a block of at least
/// [`SINGLE_MIN_KCQ`] quads keeps every `i32` sum exact: `4·kcq·A·W < 2^31`.
pub(crate) fn join_plan(
    a: &Parts<&PackedA>,
    b: &Parts<&PackedB>,
    level: Level,
) -> Option<JoinPlan> {
    let alike_a = a.lo.is_none_or(|l| l.m == a.hi.m && l.kq == a.hi.kq);
    let alike_b =
        b.lo.is_none_or(|l| l.kq == b.hi.kq && l.ldc() == b.hi.ldc());
    let shaped = (a.lo.is_some() || b.lo.is_some())
        && a.hi.kq == b.hi.kq
        && a.hi.weights != b.hi.weights
        && alike_a
        && alike_b;
    if !(shaped && has_avx2() && level.supported()) {
        return None;
    }
    let single = (a.lo.is_some() && b.lo.is_some())
        .then(|| {
            let (w, (act, offset)) = if a.hi.weights {
                (a.hi.magnitude, (&b.hi.data, b.hi.offset))
            } else {
                (b.hi.magnitude, (&a.hi.data, a.hi.offset))
            };
            single_kcq(w, high_magnitude(act, if offset { 128 } else { 0 }), offset)
        })
        .flatten();
    plan_at(single, level)
}

/// Whether the CPU has AVX2, which every joined product runs on.
fn has_avx2() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx2")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// A single pass's quads of `k` per block ([`join_plan`]) for split weights whose high bytes reach
/// `w` in magnitude and split activations whose high bytes lie within `ah` of their zero (`offset`:
/// signed values; unsigned ones must stay below 32768), if at least [`SINGLE_MIN_KCQ`].
fn single_kcq(w: u32, ah: u32, offset: bool) -> Option<usize> {
    if !offset && ah > 127 {
        return None;
    }
    let big_a = 256 * ah as u64 + 255;
    let big_w = 256 * w as u64 + 128;
    let kcq = (((1u64 << 31) - 1) / (4 * big_a * big_w)).min(KCQS as u64) as usize;
    (kcq >= SINGLE_MIN_KCQ).then_some(kcq)
}

/// The plan for a single pass of `single` quads per block (or none) at `level`.
fn plan_at(single: Option<usize>, level: Level) -> Option<JoinPlan> {
    match level {
        Level::Avx2 => Some(JoinPlan {
            single,
            avx512: false,
        }),
        Level::Avx512Vnni if single.is_some() => Some(JoinPlan {
            single,
            avx512: true,
        }),
        _ => None,
    }
}

/// The single pass of split weights `a` by the activations of a `k × n` matrix (`n` a whole number of
/// blocks of [`NR`] columns) whose 16-bit values lie in `lo..=hi` (as two halves, `offset` as
/// [`PackedB`] stores their high bytes), multiplied from the pairs [`pairs16`] lays out: the plan and
/// the activations' shape ([`PackedB::pairs_shape`]); `None` where no single pass holds ([`join_plan`]:
/// on AVX2 and AVX-512 VNNI, the same bound on the sums, from the activations' range instead of their
/// packed bytes).
pub(crate) fn pairs_plan(
    a: &Parts<&PackedA>,
    (k, n): (usize, usize),
    (lo, hi, offset): (i32, i32, bool),
    level: Level,
) -> Option<(JoinPlan, PackedB)> {
    let lo_part = a.lo?;
    let shaped = a.hi.weights && lo_part.m == a.hi.m && lo_part.kq == a.hi.kq;
    if !(shaped
        && has_avx2()
        && level.supported()
        && n.is_multiple_of(NR)
        && k.div_ceil(4) == a.hi.kq)
    {
        return None;
    }
    // the high bytes' distance from their zero, as `high_magnitude` finds it in the packed bytes
    let ah = (hi >> 8).max(0).max(-(lo >> 8)) as u32;
    let plan = plan_at(single_kcq(a.hi.magnitude, ah, offset), level)?;
    plan.single?;
    Some((plan, PackedB::pairs_shape(k, n, offset)?))
}

/// The rows of a `k × n` matrix (`n` a whole number of blocks of [`NR`] columns), row `r` the `n`
/// values from `x[starts[r]]` on, as a single pass of `kcq` quads per block reads its 16-bit
/// activations: per block of `k` (`kcq` quads, the last what is left), per block of columns, per pair
/// of `k` values, the 16 columns' pairs one after the other — what [`widen_pairs`] would make of the
/// values' two halves, for every block at once; rows past `k` up to a whole quad are zero. `None` if a
/// row runs past `x`.
pub(crate) fn pairs16(x: &[i16], starts: &[usize], n: usize, kcq: usize) -> Option<Vec<i16>> {
    if starts
        .iter()
        .any(|&s| s.checked_add(n).is_none_or(|e| e > x.len()))
        || !n.is_multiple_of(NR)
        || kcq == 0
    {
        return None;
    }
    let (k, nb) = (starts.len(), n / NR);
    let kq = k.div_ceil(4);
    // (every element written: the pairs of rows past `k` as zeros)
    let mut out = crate::buffers::take_overwritten::<i16>(kq * 4 * n);
    pairs16_into(x, starts, (nb, kq, kcq), &mut out);
    Some(out)
}

crate::multiversion! {
    fn pairs16_into(x: &[i16], starts: &[usize], shape: (usize, usize, usize), out: &mut [i16]) -> () = pairs16_body
}

/// [`pairs16`]'s loop: `shape` is (blocks of columns, quads of `k`, quads per block of `k`).
#[inline(always)]
fn pairs16_body(x: &[i16], starts: &[usize], shape: (usize, usize, usize), out: &mut [i16]) {
    let n = shape.0 * NR;
    pairs_body(
        |r| &x[starts[r]..starts[r] + n],
        starts.len(),
        shape,
        out,
        |v| v,
    )
}

crate::multiversion! {
    fn pairs32_into(x: &[i32], kn: (usize, usize), shape: (usize, usize, usize), out: &mut [i16]) -> () = pairs32_body
}

/// [`pairs16`] of a row-major `k×n` matrix of 16-bit values held as `i32`, its columns past `n` (to a
/// whole block) zero.
#[inline(always)]
fn pairs32_body(x: &[i32], (k, n): (usize, usize), shape: (usize, usize, usize), out: &mut [i16]) {
    pairs_body(|r| &x[r * n..(r + 1) * n], k, shape, out, |v| v as i16)
}

/// The pairs of [`pairs16`] from `k` rows (`row(r)`, each as long as the matrix is wide), each value
/// as `elem(v)`; the columns of a last, partial block past the rows' end and the rows past `k` zero.
#[inline(always)]
fn pairs_body<'x, T: Copy + 'x>(
    row: impl Fn(usize) -> &'x [T],
    k: usize,
    (nb, kq, kcq): (usize, usize, usize),
    out: &mut [i16],
    elem: impl Fn(T) -> i16,
) {
    let mut at = 0;
    for q0 in (0..kq).step_by(kcq) {
        let qn = kcq.min(kq - q0);
        for blk in 0..nb {
            let j0 = blk * NR;
            for p in 2 * q0..2 * (q0 + qn) {
                let dst = &mut out[at..at + 2 * NR];
                at += 2 * NR;
                let part = |r: usize| (r < k).then(|| &row(r)[j0..(j0 + NR).min(row(r).len())]);
                match (part(2 * p), part(2 * p + 1)) {
                    (Some(a), Some(b)) if a.len() == NR => {
                        for ((d, &u), &v) in dst.chunks_exact_mut(2).zip(a).zip(b) {
                            d[0] = elem(u);
                            d[1] = elem(v);
                        }
                    }
                    (Some(a), b) => {
                        dst.fill(0);
                        for (j, (d, &u)) in dst.chunks_exact_mut(2).zip(a).enumerate() {
                            d[0] = elem(u);
                            d[1] = b.map_or(0, |b| elem(b[j]));
                        }
                    }
                    _ => dst.fill(0),
                }
            }
        }
    }
}

/// The pairs [`pairs16`] lays out for a single pass of `kcq` quads per block, of the row-major `k×n`
/// matrix `x` of 16-bit values (at least `k·n` of them), its columns past `n` (to a whole block) zero.
pub(crate) fn matrix_pairs(x: &[i32], (k, n): (usize, usize), kcq: usize) -> Vec<i16> {
    let ldc = n.div_ceil(NR) * NR;
    let kq = k.div_ceil(4);
    // (every element written)
    let mut pairs = crate::buffers::take_overwritten::<i16>(kq * 4 * ldc);
    pairs32_into(x, (k, n), (ldc / NR, kq, kcq.max(1)), &mut pairs);
    pairs
}

/// [`gemm_joined`] of split weights `a` by the row-major `k×n` activations `x`, 16-bit values in
/// `lo..=hi` (`offset` as their halves' high bytes would be stored), as one pass over the pairs
/// [`pairs16`] lays out, packed here from `x` (no bytes, no widening in the product): the sums with
/// their row stride, or `None` where [`pairs_plan`] finds no single pass.
pub(crate) fn gemm_pairs(
    a: Parts<&PackedA>,
    x: &[i32],
    (k, n): (usize, usize),
    (lo, hi, offset): (i32, i32, bool),
    threads: usize,
    level: Level,
) -> Option<(Vec<i64>, usize)> {
    let ldc = n.div_ceil(NR) * NR;
    if x.len() < k * n {
        return None;
    }
    let (plan, shape) = pairs_plan(&a, (k, ldc), (lo, hi, offset), level)?;
    let pairs = matrix_pairs(x, (k, n), plan.single?);
    let b = Parts {
        hi: &shape,
        lo: Some(&shape),
    };
    let c = joined_rows(a, b, (plan, Some(&pairs)), threads);
    crate::buffers::give(pairs);
    Some((c, ldc))
}

/// `C = A · B` exactly, as `i64` with row stride [`PackedB::ldc`], where a side may be given as the
/// two 8-bit parts of 16-bit values ([`Parts`]: `256·high + low`), on up to `threads` threads: the
/// split side is multiplied as its 16-bit values, so a product costs about what an 8-bit one does
/// ([`gemm_rows_avx2`], [`join_plan`]). `None` where [`join_plan`] declines (the caller joins 8-bit
/// products).
pub(crate) fn gemm_joined(
    a: Parts<&PackedA>,
    b: Parts<&PackedB>,
    threads: usize,
    level: Level,
) -> Option<Vec<i64>> {
    let plan = join_plan(&a, &b, level)?;
    Some(joined_rows(a, b, (plan, None), threads))
}

/// Every row of [`product_joined`]'s product, split across up to `threads` threads where the work
/// pays for them.
fn joined_rows(
    a: Parts<&PackedA>,
    b: Parts<&PackedB>,
    how: (JoinPlan, Option<&[i16]>),
    threads: usize,
) -> Vec<i64> {
    let ldc = b.hi.ldc();
    let work = a.hi.m * a.hi.kq * 4 * ldc;
    let threads = if work >= 1 << 21 { threads } else { 1 };
    // every element is started before any is added to
    let mut c = crate::buffers::take_overwritten(a.hi.m * ldc);
    let tokens = crate::cancel::current();
    crate::par::rows(&mut c, ldc, threads, JOINED_ROWS, |r0, part| {
        product_joined(a, b, r0, part, how, &tokens);
    });
    c
}

/// Rows `r0..` of [`gemm_joined`]'s product into `c` (whole rows of [`PackedB::ldc`] elements, every
/// one written) on the calling thread, as `plan` ([`join_plan`] of these operands) has it; with
/// `pairs`, a single pass's activations as [`pairs16`] laid them out for the plan (`b` their shape,
/// [`PackedB::pairs_shape`]). A cancelled run stops between row blocks.
pub(crate) fn product_joined(
    a: Parts<&PackedA>,
    b: Parts<&PackedB>,
    r0: usize,
    c: &mut [i64],
    (plan, pairs): (JoinPlan, Option<&[i16]>),
    tokens: &[crate::cancel::Cancel],
) {
    let ldc = b.hi.ldc();
    // the sums start from what the activations' stored form leaves out: their widened value is the
    // value less `delta` (128 for offset bytes, −32768 for unsigned 16-bit values but in a single
    // pass, which takes them as they are), so every sum starts from `delta` times the weights' sum
    // over `k` (`256·high + low` for split weights)
    assert!(pairs.is_none() || (plan.single.is_some() && b.lo.is_some()));
    let (acts_split, acts_offset) = if a.hi.weights {
        (b.lo.is_some(), b.hi.offset)
    } else {
        (a.lo.is_some(), a.hi.offset)
    };
    let delta: i64 = match (acts_split, acts_offset) {
        (false, true) => -128,
        (true, false) if plan.single.is_none() => 32768,
        _ => 0,
    };
    if a.hi.kq == 0 {
        // no block of the reduction: every sum (and the weights' sums) is zero
        c.fill(0);
        return;
    }
    let rows = c.len() / ldc;
    let starts: Vec<i64> = if a.hi.weights {
        (r0..r0 + rows)
            .map(|i| {
                delta
                    * a.each()
                        .map(|(p, sh)| (p.rowsum[i] as i64) << sh)
                        .sum::<i64>()
            })
            .collect()
    } else {
        (0..ldc)
            .map(|j| {
                delta
                    * b.each()
                        .map(|(p, sh)| (p.colsum[j] as i64) << sh)
                        .sum::<i64>()
            })
            .collect()
    };
    let starts = if a.hi.weights {
        Starts::Rows(&starts)
    } else {
        Starts::Cols(&starts)
    };
    #[cfg(target_arch = "x86_64")]
    gemm_rows_avx2(
        a,
        b,
        (r0, 0..ldc / NR),
        Sums::Wide(c, starts),
        (Some(plan), pairs),
        tokens,
    );
}

/// What the first block of a tile's sums starts from: `−128 · rowsum` of each row when the activations
/// on the right are offset, `−128 · colsum` of each column when those on the left are (the offsets'
/// products taken back out, wrapping like the sums).
#[derive(Clone, Copy)]
struct Offsets<'a> {
    /// Row sums of the tile's rows (from its first), if subtracted.
    rows: Option<&'a [i32]>,
    /// Column sums of the tile's columns (from its first), if subtracted.
    cols: Option<&'a [i32]>,
}

impl<'a> Offsets<'a> {
    /// The offsets of the tile of `rows` rows from `row` and `cols` columns from `col` of `a · b`
    /// (each side's sums only when the other side is offset).
    fn of(
        a: &'a PackedA,
        b: &'a PackedB,
        (row, rows): (usize, usize),
        (col, cols): (usize, usize),
    ) -> Offsets<'a> {
        Offsets {
            rows: b.offset.then(|| &a.rowsum[row..row + rows]),
            cols: a.offset.then(|| &b.colsum[col..col + cols]),
        }
    }

    /// The starting sums of row `i` over the `NR` columns from `col` (relative to the tile).
    fn start(&self, acc: &mut [i32; NR], i: usize, col: usize) {
        if let Some(cols) = self.cols {
            for (a, &cs) in acc.iter_mut().zip(&cols[col..]) {
                *a = a.wrapping_sub(cs.wrapping_mul(128));
            }
        }
        if let Some(rows) = self.rows {
            let r = rows[i].wrapping_mul(128);
            for a in acc.iter_mut() {
                *a = a.wrapping_sub(r);
            }
        }
    }
}

/// One register tile: `r` rows × 16 (or 32 when `two`) columns over `qn` quads of `k`, added to `c`,
/// or stored when `first` (the reduced axis' first block), its sums then starting from `first`'s offsets.
/// `b` points at the first column block, the second is `bstride` further.
#[allow(clippy::too_many_arguments)]
#[inline]
fn tile(
    level: Level,
    a_u8: bool,
    r: usize,
    two: bool,
    a: &[u8],
    lda: usize,
    b: &[u8],
    bstride: usize,
    qn: usize,
    c: &mut [i32],
    ldc: usize,
    first: Option<Offsets>,
) {
    match level {
        #[cfg(target_arch = "x86_64")]
        Level::Avx512Vnni => {
            let nb = if two { 2 } else { 1 };
            band(a_u8, r, (a, lda), (b, bstride), qn, (c, ldc), nb, first)
        }
        _ if a_u8 => portable::<true>(r, two, a, lda, b, bstride, qn, c, ldc, first),
        _ => portable::<false>(r, two, a, lda, b, bstride, qn, c, ldc, first),
    }
}

#[allow(clippy::too_many_arguments)]
fn portable<const A_U8: bool>(
    r: usize,
    two: bool,
    a: &[u8],
    lda: usize,
    b: &[u8],
    bstride: usize,
    qn: usize,
    c: &mut [i32],
    ldc: usize,
    first: Option<Offsets>,
) {
    for blk in 0..if two { 2 } else { 1 } {
        let bb = &b[blk * bstride..];
        for i in 0..r {
            let mut acc = [0i32; NR];
            if let Some(o) = &first {
                o.start(&mut acc, i, blk * NR);
            }
            let arow = &a[i * lda..];
            for q in 0..qn {
                let bq = &bb[q * NR * 4..(q + 1) * NR * 4];
                let aq = &arow[q * 4..q * 4 + 4];
                for (lane, acc) in acc.iter_mut().enumerate() {
                    let bl = &bq[lane * 4..lane * 4 + 4];
                    // wrapping, like vpdpbusd (the sums start from the offsets' negation)
                    *acc = acc.wrapping_add(
                        (0..4)
                            .map(|t| {
                                if A_U8 {
                                    aq[t] as i32 * bl[t] as i8 as i32
                                } else {
                                    aq[t] as i8 as i32 * bl[t] as i32
                                }
                            })
                            .sum::<i32>(),
                    );
                }
            }
            let dst = &mut c[i * ldc + blk * NR..i * ldc + blk * NR + NR];
            for (d, v) in dst.iter_mut().zip(acc) {
                *d = if first.is_some() {
                    v
                } else {
                    d.wrapping_add(v)
                };
            }
        }
    }
}

/// Groups of 4 along `k` up to which [`gemm_rows`] runs the VNNI kernel band by band (`k ≤ 64`).
const BAND_KQ: usize = 16;

/// Rows `r` (1 to [`MR`]) of the product over `nb` column blocks by the VNNI kernel in one call: pairs
/// of blocks, then a last single one, added to `c` or stored when `first` (the reduced axis' first
/// block, its sums then starting from `first`'s offsets). `a` holds the rows (`lda` apart), `b` the
/// column blocks (`bstride` apart), `c` the output rows (`ldc` apart); `qn` groups of 4 along `k`. The
/// CPU must support AVX-512 VNNI. [`tile`]'s VNNI form (one or two blocks) and the band sweep of short
/// reductions.
#[cfg(target_arch = "x86_64")]
#[allow(clippy::too_many_arguments)]
fn band(
    a_u8: bool,
    r: usize,
    (a, lda): (&[u8], usize),
    (b, bstride): (&[u8], usize),
    qn: usize,
    (c, ldc): (&mut [i32], usize),
    nb: usize,
    first: Option<Offsets>,
) {
    // bounds the unsafe kernel relies on
    assert!((1..=MR).contains(&r) && nb > 0);
    assert!(a.len() >= (r - 1) * lda + qn * 4);
    assert!(b.len() >= (nb - 1) * bstride + qn * NR * 4);
    assert!(c.len() >= (r - 1) * ldc + nb * NR);
    if let Some(o) = &first {
        assert!(o.rows.is_none_or(|v| v.len() >= r));
        assert!(o.cols.is_none_or(|v| v.len() >= nb * NR));
    }
    assert!(Level::Avx512Vnni.supported());
    // SAFETY: the CPU supports VNNI (asserted above); the asserts bound every access the kernel makes
    unsafe {
        macro_rules! go {
            ($($n:literal)*) => {
                match (r, a_u8) {
                    $(($n, true) => band_vnni::<$n, true>(a, lda, b, bstride, qn, c, ldc, nb, first),
                      ($n, false) => band_vnni::<$n, false>(a, lda, b, bstride, qn, c, ldc, nb, first),)*
                    _ => unreachable!("tile rows are 1..=MR"),
                }
            };
        }
        go!(1 2 3 4 5 6 7 8)
    }
}

/// [`band`]'s loop over column blocks.
///
/// # Safety
/// The CPU must support AVX-512F/BW/VNNI; the slices must hold what [`band`] asserts.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
#[allow(clippy::too_many_arguments)]
unsafe fn band_vnni<const R: usize, const A_U8: bool>(
    a: &[u8],
    lda: usize,
    b: &[u8],
    bstride: usize,
    qn: usize,
    c: &mut [i32],
    ldc: usize,
    nb: usize,
    first: Option<Offsets>,
) {
    let mut blk = 0;
    while blk < nb {
        let o = first.map(|f| Offsets {
            rows: f.rows,
            cols: f.cols.map(|v| &v[blk * NR..]),
        });
        let (bb, cc) = (&b[blk * bstride..], &mut c[blk * NR..]);
        // SAFETY: as the caller's (the blocks from `blk` on lie inside what `band` asserted)
        unsafe {
            if blk + 1 < nb {
                vnni::<R, 2, A_U8>(a, lda, bb, bstride, qn, cc, ldc, o);
                blk += 2;
            } else {
                vnni::<R, 1, A_U8>(a, lda, bb, bstride, qn, cc, ldc, o);
                blk += 1;
            }
        }
    }
}

/// The VNNI register tile: `R` rows × `NB` blocks of 16 columns.
///
/// # Safety
/// The CPU must support AVX-512F/BW/VNNI; the slices must hold what [`band`] asserts.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
#[allow(clippy::too_many_arguments)]
#[inline]
unsafe fn vnni<const R: usize, const NB: usize, const A_U8: bool>(
    a: &[u8],
    lda: usize,
    b: &[u8],
    bstride: usize,
    qn: usize,
    c: &mut [i32],
    ldc: usize,
    first: Option<Offsets>,
) {
    use std::arch::x86_64::*;
    let mut acc = [[_mm512_setzero_si512(); NB]; R];
    if let Some(o) = &first {
        // the first block of sums starts from the offsets' negation (wrapping, like the sums)
        if let Some(cols) = o.cols {
            for t in 0..NB {
                let v = _mm512_slli_epi32::<7>(_mm512_loadu_si512(
                    cols.as_ptr().add(t * NR) as *const _
                ));
                for accr in acc.iter_mut() {
                    accr[t] = _mm512_sub_epi32(accr[t], v);
                }
            }
        }
        if let Some(rows) = o.rows {
            for (accr, &rs) in acc.iter_mut().zip(rows) {
                let v = _mm512_set1_epi32(rs.wrapping_mul(128));
                for a in accr.iter_mut() {
                    *a = _mm512_sub_epi32(*a, v);
                }
            }
        }
    }
    let (ap, bp) = (a.as_ptr(), b.as_ptr());
    for q in 0..qn {
        let mut vb = [_mm512_setzero_si512(); NB];
        for (t, v) in vb.iter_mut().enumerate() {
            *v = _mm512_loadu_si512(bp.add(t * bstride + q * NR * 4) as *const _);
        }
        for (i, accr) in acc.iter_mut().enumerate() {
            let va = _mm512_set1_epi32((ap.add(i * lda + q * 4) as *const i32).read_unaligned());
            for t in 0..NB {
                // vpdpbusd multiplies unsigned bytes of its first operand by signed bytes of its second
                accr[t] = if A_U8 {
                    _mm512_dpbusd_epi32(accr[t], va, vb[t])
                } else {
                    _mm512_dpbusd_epi32(accr[t], vb[t], va)
                };
            }
        }
    }
    let cp = c.as_mut_ptr();
    for (i, accr) in acc.iter().enumerate() {
        for (t, &v) in accr.iter().enumerate() {
            let dst = cp.add(i * ldc + t * NR) as *mut __m512i;
            let v = if first.is_some() {
                v
            } else {
                _mm512_add_epi32(_mm512_loadu_si512(dst as *const _), v)
            };
            _mm512_storeu_si512(dst as *mut _, v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn naive(a: &[i32], b: &[i32], m: usize, k: usize, n: usize) -> Vec<i64> {
        let mut c = vec![0i64; m * n];
        for i in 0..m {
            for j in 0..n {
                c[i * n + j] = (0..k)
                    .map(|t| a[i * k + t] as i64 * b[t * n + j] as i64)
                    .sum();
            }
        }
        c
    }

    /// `A · B` from packed operands, on both levels, against the naive product of `a` and `b`.
    #[allow(clippy::too_many_arguments)]
    fn check_packed(
        pa: PackedA,
        pb: PackedB,
        a: &[i32],
        b: &[i32],
        m: usize,
        k: usize,
        n: usize,
        threads: usize,
    ) {
        let want = naive(a, b, m, k, n);
        // the sums requantized as they are stored: a bias and rounding term per row (any sign, up
        // to 2^29 or what the largest sum leaves of i32, the caller's bound), a shift from 0 to 31
        let top = want.iter().map(|v| v.abs()).max().unwrap_or(0);
        let room = (i32::MAX as i64 - top).min(1 << 29);
        let adds: Vec<i32> = (0..m)
            .map(|i| ((i as i64 * 2_654_435_761 + k as i64) % (2 * room + 1) - room) as i32)
            .collect();
        let shift = ((m + 3 * k + 7 * n) % 32) as u32;
        let requant = Requant { adds: &adds, shift };
        for level in [Level::Portable, Level::Avx2, Level::Avx512Vnni] {
            let c = gemm(&pa, &pb, threads, level);
            let q = gemm_requant(&pa, &pb, threads, level, Some(requant));
            for i in 0..m {
                for j in 0..n {
                    let at = i * pb.ldc() + j;
                    assert_eq!(c[at] as i64, want[i * n + j], "{level:?} ({i},{j})");
                    let r = (want[i * n + j] + adds[i] as i64) >> shift;
                    assert_eq!(q[at] as i64, r, "{level:?} ({i},{j}) requantized");
                }
            }
        }
    }

    /// Activations on the `A` side, weights on the `B` side.
    fn check(a: &[i32], b: &[i32], m: usize, k: usize, n: usize, threads: usize) {
        let pa = PackedA::new(a, m, k).expect("8-bit activations");
        let pb = PackedB::new(b, k, n).expect("i8 weights");
        check_packed(pa, pb, a, b, m, k, n, threads);
    }

    /// The same product with the weights on the `A` side and the activations on the `B` side.
    fn check_swapped(w: &[i32], x: &[i32], m: usize, k: usize, n: usize, threads: usize) {
        let pa = PackedA::weights(w, m, k).expect("i8 weights");
        let pb = PackedB::activations(x, k, n).expect("8-bit activations");
        check_packed(pa, pb, w, x, m, k, n, threads);
    }

    proptest! {
        #[test]
        fn weights_on_either_side_give_the_exact_product(
            m in 1usize..30, k in 1usize..200, n in 1usize..50, signed in any::<bool>(),
            threads in 1usize..4, seed in any::<u64>(),
        ) {
            let mut s = seed;
            let mut next = || { s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407); (s >> 33) as i32 };
            let w: Vec<i32> = (0..m * k).map(|_| next().rem_euclid(256) - 128).collect();
            let x: Vec<i32> = (0..k * n).map(|_| if signed { next().rem_euclid(256) - 128 } else { next().rem_euclid(256) }).collect();
            check_swapped(&w, &x, m, k, n, threads);
        }

        /// Activations or their halves packed by the vector pass hold what the per-element form
        /// holds, and refuse what it refuses: 8-bit values either way, 16-bit values only as halves,
        /// values past 16 bits (high halves past a byte) never as high halves.
        #[test]
        fn parts_pack_as_the_per_element_form(
            m in 1usize..12, k in 0usize..70, bits in prop::sample::select(vec![7u32, 8, 15, 16, 20]),
            signed in any::<bool>(), seed in any::<u64>(),
        ) {
            let mut s = seed;
            let mut next = || { s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407); (s >> 33) as i32 };
            let span = 1i32 << bits;
            let a: Vec<i32> = (0..m * k)
                .map(|_| if signed { next().rem_euclid(span) - span / 2 } else { next().rem_euclid(span) })
                .collect();
            for part in [Part::Whole, Part::High, Part::Low] {
                let fast = PackedA::part(&a, m, k, part);
                let slow = PackedA::from_fn(m, k, |i, kk| part.of(a[i * k + kk]));
                prop_assert_eq!(fast.is_some(), slow.is_some(), "{:?} bits {} signed {}", part, bits, signed);
                if let (Some(f), Some(p)) = (fast, slow) {
                    prop_assert_eq!((f.offset, f.m, f.kq), (p.offset, p.m, p.kq));
                    prop_assert_eq!(&f.data[..], &p.data[..], "{:?}", part);
                }
            }
        }

        #[test]
        fn equals_the_exact_product(
            m in 1usize..40, k in 1usize..300, n in 1usize..70, signed in any::<bool>(),
            threads in 1usize..4, seed in any::<u64>(),
        ) {
            let mut s = seed;
            let mut next = || { s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407); (s >> 33) as i32 };
            let a: Vec<i32> = (0..m * k).map(|_| if signed { next().rem_euclid(256) - 128 } else { next().rem_euclid(256) }).collect();
            let b: Vec<i32> = (0..k * n).map(|_| next().rem_euclid(256) - 128).collect();
            check(&a, &b, m, k, n, threads);
        }
    }

    /// At the edges of the ranges: the largest values a part holds, and one past them.
    #[test]
    fn parts_refuse_one_past_their_range() {
        let cases: [(&[i32], Part, Option<bool>); 10] = [
            (&[0, 255], Part::Whole, Some(false)),
            (&[0, 256], Part::Whole, None),
            (&[-128, 127], Part::Whole, Some(true)),
            (&[-129, 0], Part::Whole, None),
            (&[-128, 128], Part::Whole, None),
            (&[0, 65535], Part::High, Some(false)),
            (&[0, 65536], Part::High, None),
            (&[-32768, 32767], Part::High, Some(true)),
            (&[-32769, 0], Part::High, None),
            (&[-32769, 65536], Part::Low, Some(false)),
        ];
        for (a, part, offset) in cases {
            let p = PackedA::part(a, 1, 2, part);
            assert_eq!(p.as_ref().map(|p| p.offset), offset, "{a:?} {part:?}");
            let slow = PackedA::from_fn(1, 2, |_, kk| part.of(a[kk]));
            let bytes = |p: &Option<PackedA>| p.as_ref().map(|p| p.data.to_vec());
            assert_eq!(bytes(&p), bytes(&slow), "{a:?} {part:?}");
        }
    }

    #[test]
    fn products_split_across_threads_are_exact() {
        // large enough to be split (at least 2^24 multiply-adds), odd sizes at every edge
        let gen = |len: usize, mul: usize, lo: i32| -> Vec<i32> {
            (0..len).map(|i| (i * mul % 256) as i32 + lo).collect()
        };
        let (m, k, n) = (201, 1029, 99);
        // one thread, the weights on the left and few columns: the AVX2 kernel reads the weights'
        // kept tiles, across several blocks of rows and of the reduction (twice: kept, then read)
        let few = TILED_COLS - 3;
        for _ in 0..2 {
            check_swapped(
                &gen(n * k, 7919, -128),
                &gen(k * few, 104729, -128),
                n,
                k,
                few,
                1,
            );
        }
        // few rows, many columns (a 1×1 convolution to few channels): the AVX2 product splits its
        // columns among the threads, the last part shorter (45 blocks: 23 and 22, 15 each); weights
        // or activations on the row side, offset activations on the row side
        let (rows, cols): (usize, usize) = (24, 709);
        #[cfg(target_arch = "x86_64")]
        assert!((2..4).all(|t| by_columns(rows, k, cols.div_ceil(NR), t)));
        for threads in [2, 3] {
            check_swapped(
                &gen(rows * k, 7919, -128),
                &gen(k * cols, 104729, 0),
                rows,
                k,
                cols,
                threads,
            );
            check(
                &gen(rows * k, 104729, -128),
                &gen(k * cols, 7919, -128),
                rows,
                k,
                cols,
                threads,
            );
        }
        for threads in [1, 2, 3] {
            // activations on the row side, weights on the column side, then the other way round
            check(
                &gen(m * k, 104729, 0),
                &gen(k * n, 7919, -128),
                m,
                k,
                n,
                threads,
            );
            check_swapped(
                &gen(n * k, 7919, -128),
                &gen(k * m, 104729, -128),
                n,
                k,
                m,
                threads,
            );
        }
    }

    /// Packed activations hold each value's byte at its place — block of 16 columns, group of 4 rows
    /// of the reduction, column, row — and the offset's zero (128 for offset bytes, else 0) wherever
    /// the reduction or the columns are padded: reductions of 1 to 9, 27 (a 3-channel stem) and 30
    /// rows, whole and partial blocks of columns, offset or not, from `i32` values and from rows of
    /// an image's bytes.
    #[test]
    fn packed_activations_hold_each_value_and_the_offsets_zero() {
        for k in (1..=9).chain([27, 30]) {
            for n in [16, 33, 50] {
                for offset in [false, true] {
                    let x: Vec<i32> = (0..k * n)
                        .map(|i| ((i * 7919 + k) % 256) as i32 - if offset { 128 } else { 0 })
                        .collect();
                    let zero = if offset { 128u8 } else { 0 };
                    let byte = |v: i32| (v + if offset { 128 } else { 0 }) as u8;
                    // the same values as an image's bytes, row r from its own start
                    let image: Vec<u8> = x.iter().map(|&v| byte(v)).collect();
                    let starts: Vec<usize> = (0..k).map(|r| r * n).collect();
                    let packs = [
                        PackedB::activations_in(&x, k, n, offset).expect("8-bit values"),
                        PackedB::rows_of(&image, &starts, n, offset).expect("rows in the image"),
                    ];
                    for (which, p) in packs.iter().enumerate() {
                        for blk in 0..n.div_ceil(NR) {
                            for g in 0..p.kq {
                                for l in 0..NR {
                                    for i in 0..4 {
                                        let (r, c) = (4 * g + i, blk * NR + l);
                                        let want = match r < k && c < n {
                                            true => byte(x[r * n + c]),
                                            false => zero,
                                        };
                                        let at = ((blk * p.kq + g) * NR + l) * 4 + i;
                                        assert_eq!(
                                            p.data[at], want,
                                            "packing {which}, k {k}, n {n}, offset {offset}: \
                                             row {r}, column {c}"
                                        );
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    }

    /// One block of rows by many columns (a 1×1 convolution over a large map): the AVX2 product
    /// widens the columns a stretch at a time and multiplies every row by each stretch, the rows
    /// widened once per block of the reduction. Short reductions (one stretch of 2,048 columns, the
    /// last one partial), a reduction of several blocks (stretches of 64 columns, the rows widened
    /// again for each block), activations or weights on the row side, 96 rows (one block) and 97
    /// (two blocks: the columns at once), one to three threads: the exact products.
    #[test]
    fn columns_widened_a_stretch_at_a_time_are_exact() {
        let gen = |len: usize, mul: usize, lo: i32| -> Vec<i32> {
            (0..len).map(|i| (i * mul % 256) as i32 + lo).collect()
        };
        let shapes: [(usize, usize, usize); 4] = [
            (16, 16, 4133),
            (96, 8, 4200),
            (24, 700, 300),
            (97, 16, 2100),
        ];
        for (m, k, n) in shapes {
            #[cfg(target_arch = "x86_64")]
            {
                let kc = KCQ2.min(k.div_ceil(4));
                let stretch = BW_BYTES / (kc * NR * 4 * 2);
                assert!(
                    m > MC2 || n.div_ceil(NR) > stretch,
                    "{m}×{k}×{n}: one stretch"
                );
            }
            for threads in [1, 2, 3] {
                check(
                    &gen(m * k, 7919, -128),
                    &gen(k * n, 104729, -128),
                    m,
                    k,
                    n,
                    threads,
                );
                check_swapped(
                    &gen(m * k, 104729, -128),
                    &gen(k * n, 7919, 0),
                    m,
                    k,
                    n,
                    threads,
                );
            }
        }
    }

    /// An empty reduced axis gives zero sums, also in a pooled buffer that held other values (the
    /// product stores every element rather than adding to what the buffer held).
    #[test]
    fn an_empty_reduced_axis_gives_zeros_in_a_reused_buffer() {
        let pool = std::sync::Arc::new(crate::buffers::Pool::default());
        crate::buffers::scoped(&pool, || {
            let (m, n) = (64, 512);
            let pa = PackedA::new(&[], m, 0).expect("no activations");
            let pb = PackedB::new(&[0i32; 0], 0, n).expect("no weights");
            for level in [Level::Portable, Level::Avx2, Level::Avx512Vnni] {
                crate::buffers::give(vec![7i32; m * pb.ldc()]);
                let c = gemm(&pa, &pb, 1, level);
                assert_eq!(c.len(), m * pb.ldc());
                assert!(c.iter().all(|&v| v == 0), "{level:?}");
            }
        });
    }

    /// Values of a given form for the joined products' tests: 8- or 16-bit, signed or not, with the
    /// extremes of the range every few elements.
    fn values(len: usize, bits: u32, signed: bool, seed: u64) -> Vec<i32> {
        let (lo, hi) = match (bits, signed) {
            (8, true) => (-128, 127),
            (8, false) => (0, 255),
            (16, true) => (i16::MIN as i32, i16::MAX as i32),
            (16, false) => (0, 65535),
            (12 | 13, true) => (-(1 << (bits - 1)), (1 << (bits - 1)) - 1),
            (12 | 13, false) => (0, (1 << bits) - 1),
            // 16-bit weights: as far as they split
            _ => (i16::MIN as i32, WEIGHT16_MAX),
        };
        let mut s = seed;
        (0..len)
            .map(|i| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                match i % 7 {
                    0 => hi,
                    3 => lo,
                    _ => lo + ((s >> 33) % (hi - lo + 1) as u64) as i32,
                }
            })
            .collect()
    }

    /// Activations `k×n` packed whole, or as their high and low bytes when 16-bit.
    fn acts_b(x: &[i32], k: usize, n: usize) -> Parts<PackedB> {
        let (lo, hi) = min_max(x);
        match PackedA::offset_for(lo, hi) {
            Some(off) => Parts {
                hi: PackedB::activations_in(x, k, n, off).expect("packs"),
                lo: None,
            },
            None => Parts {
                hi: PackedB::shifted_in(
                    x,
                    8,
                    k,
                    n,
                    PackedA::offset_for(lo >> 8, hi >> 8).expect("16-bit"),
                )
                .expect("packs"),
                lo: Some(PackedB::shifted_in(x, 0, k, n, false).expect("packs")),
            },
        }
    }

    /// Activations `m×k` on the `A` side, likewise.
    fn acts_a(x: &[i32], m: usize, k: usize) -> Parts<PackedA> {
        match PackedA::new(x, m, k) {
            Some(hi) => Parts { hi, lo: None },
            None => Parts {
                hi: PackedA::from_fn(m, k, |i, kk| x[i * k + kk] >> 8).expect("16-bit"),
                lo: Some(PackedA::from_fn(m, k, |i, kk| x[i * k + kk] & 255).expect("bytes")),
            },
        }
    }

    /// On AVX2 a product with a 16-bit side (activations, weights or both, signed or not, on either
    /// side, over reductions across the 256-value blocks, split across threads or not) is the exact
    /// product; elsewhere `gemm_joined` declines and the caller joins 8-bit products.
    #[test]
    fn products_with_a_sixteen_bit_side_are_exact() {
        let forms = [
            (8, 16, true),
            (8, 16, false),
            (16, 8, true),
            (16, 8, false),
            (16, 16, true),
            (16, 16, false),
        ];
        let mut compared = 0;
        for (case, &(m, k, n)) in [
            (1, 1, 1),
            (7, 255, 17),
            (13, 256, 33),
            (6, 257, 16),
            (20, 1000, 40),
            (3, 600, 5),
        ]
        .iter()
        .enumerate()
        {
            for (f, &(wb, xb, signed)) in forms.iter().enumerate() {
                let seed = (case * 31 + f) as u64;
                let wbits = if wb == 16 { 17 } else { 8 };
                for weights_left in [true, false] {
                    for threads in [1, 3] {
                        let (c, want, ldc) = if weights_left {
                            let w = values(m * k, wbits, true, seed);
                            let x = values(k * n, xb, signed, seed + 7);
                            let pw = Parts::<PackedA>::weights(&w, m, k).expect("splits");
                            let px = acts_b(&x, k, n);
                            let c = gemm_joined(pw.as_ref(), px.as_ref(), threads, Level::Avx2);
                            (c, naive(&w, &x, m, k, n), px.hi.ldc())
                        } else {
                            let x = values(m * k, xb, signed, seed + 7);
                            let w = values(k * n, wbits, true, seed);
                            let px = acts_a(&x, m, k);
                            let pw = Parts::<PackedB>::weights(&w, k, n).expect("splits");
                            let c = gemm_joined(px.as_ref(), pw.as_ref(), threads, Level::Avx2);
                            (c, naive(&x, &w, m, k, n), pw.hi.ldc())
                        };
                        let Some(c) = c else {
                            assert!(!Level::Avx2.supported(), "AVX2 joins split products");
                            continue;
                        };
                        for i in 0..m {
                            for j in 0..n {
                                assert_eq!(c[i * ldc + j], want[i * n + j], "{m}×{k}×{n} w{wb} x{xb} signed {signed} left {weights_left} ({i},{j})");
                            }
                        }
                        compared += 1;
                    }
                }
            }
        }
        if Level::Avx2.supported() {
            assert_eq!(compared, 6 * 6 * 2 * 2);
        }
        // the largest magnitudes over whole blocks and past them: every product at its extreme
        for (w, x) in [
            (-128, i16::MIN as i32),
            (-128, 65535),
            (i16::MIN as i32, 255),
            (i16::MIN as i32, -128),
            (127, i16::MAX as i32),
            (i16::MIN as i32, i16::MIN as i32),
            (-128, -32768),
        ] {
            let (m, k, n) = (2, 1024, 17);
            let (wv, xv) = (vec![w; m * k], vec![x; k * n]);
            let pw = Parts::<PackedA>::weights(&wv, m, k).expect("splits");
            let px = acts_b(&xv, k, n);
            let pw = if pw.lo.is_none() && px.lo.is_none() {
                continue;
            } else {
                pw
            };
            if let Some(c) = gemm_joined(pw.as_ref(), px.as_ref(), 1, Level::Avx2) {
                assert_eq!(c[0], w as i64 * x as i64 * k as i64, "{w} · {x}");
                assert_eq!(
                    c[px.hi.ldc() + 16],
                    w as i64 * x as i64 * k as i64,
                    "{w} · {x}"
                );
            }
        }
        // whole operands on both sides, or another level: declined
        let pw = Parts::<PackedA>::weights(&[1, 2], 1, 2).expect("8-bit");
        let px = acts_b(&[3, 4], 2, 1);
        assert!(gemm_joined(pw.as_ref(), px.as_ref(), 1, Level::Avx2).is_none());
        let px = acts_b(&[3000, 4], 2, 1);
        assert!(gemm_joined(pw.as_ref(), px.as_ref(), 1, Level::Portable).is_none());
        assert!(gemm_joined(pw.as_ref(), px.as_ref(), 1, Level::Avx512Vnni).is_none());
    }

    /// The levels with a joined product that this CPU supports.
    fn joined_levels() -> impl Iterator<Item = Level> {
        [Level::Avx2, Level::Avx512Vnni]
            .into_iter()
            .filter(|l| l.supported())
    }

    /// Every shape `(m, k, n)` of `cases` with every activation format `(bits, signed)` of `formats`,
    /// each with its own seed.
    fn each_case(
        cases: &[(usize, usize, usize)],
        formats: &[(u32, bool)],
        mut f: impl FnMut((usize, usize, usize), (u32, bool), u64),
    ) {
        for (c, &shape) in cases.iter().enumerate() {
            for (i, &format) in formats.iter().enumerate() {
                f(shape, format, (c * 17 + i) as u64);
            }
        }
    }

    /// Split weights by 16-bit activations packed straight into the single pass's pairs (from a
    /// matrix, [`gemm_pairs`], and from rows read at arbitrary starts, [`pairs16`]) give the exact
    /// product and the same sums as the same activations packed as two halves and widened by the
    /// product ([`gemm_joined`]): widths past a whole block of columns and short of one, reductions
    /// that are not whole quads and that span several blocks of the plan (a short last one, over
    /// columns widened a stretch at a time), signed and unsigned activations, one and three threads,
    /// on AVX2 and AVX-512 VNNI. Activations too wide for one pass
    /// are declined (the caller packs their halves).
    #[test]
    fn activations_packed_as_pairs_give_the_joined_product() {
        let mut compared = 0;
        for level in joined_levels() {
            let cases = [
                (1, 1, 1),
                (7, 255, 17),
                (13, 1001, 33),
                (6, 130, 16),
                (30, 70, 50),
                (5, 300, 300),
            ];
            let formats = [(12, true), (12, false), (13, true)];
            each_case(&cases, &formats, |(m, k, n), (xb, signed), seed| {
                let w = values(m * k, 12, true, seed);
                let x = values(k * n, xb, signed, seed + 1);
                let pw = Parts::<PackedA>::weights(&w, m, k).expect("splits");
                let want = naive(&w, &x, m, k, n);
                let (lo, hi) = min_max(&x);
                let offset = PackedA::offset_for(lo >> 8, hi >> 8).expect("16-bit");
                let what = format!("{level:?} {m}×{k}×{n} x{xb} signed {signed}");
                for threads in [1, 3] {
                    let range = (lo, hi, offset);
                    let (c, ldc) = gemm_pairs(pw.as_ref(), &x, (k, n), range, threads, level)
                        .expect("one pass");
                    let px = acts_b(&x, k, n);
                    let joined = gemm_joined(pw.as_ref(), px.as_ref(), threads, level);
                    assert_eq!(ldc, px.hi.ldc(), "{what}");
                    assert_eq!(Some(&c), joined.as_ref(), "{what}");
                    for i in 0..m {
                        for j in 0..n {
                            assert_eq!(c[i * ldc + j], want[i * n + j], "{what} ({i},{j})");
                        }
                    }
                }
                // the same matrix as rows of an image, each at its own start (overlapping)
                let ldc = n.div_ceil(NR) * NR;
                let image: Vec<i16> = (0..k * 3 + ldc)
                    .map(|i| x[(i * 7) % x.len()] as i16)
                    .collect();
                let starts: Vec<usize> = (0..k).map(|r| r * 3).collect();
                let xr: Vec<i32> = (0..k * ldc)
                    .map(|i| image[starts[i / ldc] + i % ldc] as i32)
                    .collect();
                let (plan, shape) =
                    pairs_plan(&pw.as_ref(), (k, ldc), (lo, hi, offset), level).expect("plan");
                let pairs = pairs16(&image, &starts, ldc, plan.single.expect("one pass"))
                    .expect("rows in the image");
                let mut c = vec![7i64; m * ldc];
                let acts = Parts {
                    hi: &shape,
                    lo: Some(&shape),
                };
                product_joined(pw.as_ref(), acts, 0, &mut c, (plan, Some(&pairs)), &[]);
                let want = naive(&w, &xr, m, k, ldc);
                assert_eq!(c, want, "{what}: rows at starts");
                compared += 1;
            });
            // full 16-bit activations: no single pass
            let (m, k, n) = (3, 64, 16);
            let w = values(m * k, 12, true, 9);
            let x = values(k * n, 16, true, 10);
            let pw = Parts::<PackedA>::weights(&w, m, k).expect("splits");
            let (lo, hi) = min_max(&x);
            assert!(gemm_pairs(pw.as_ref(), &x, (k, n), (lo, hi, true), 1, level).is_none());
            // a row past the image's end is refused
            assert!(pairs16(&[0i16; 20], &[0, 8], 16, 16).is_none());
        }
        assert!(!Level::Avx2.supported() || compared > 0);
    }

    /// Both sides split but small (12-bit weights, 12- or 13-bit activations, signed or not, weights
    /// on either side, over several blocks of the reduction and past them, split across threads or
    /// not) multiply as 16-bit values in one pass, on AVX2 and on AVX-512 VNNI: the exact product.
    /// Every product at its extreme over a whole block stays exact (the block sized for four
    /// products per pair of lanes' sums); full 16-bit operands take no single pass (AVX2 joins the
    /// weights' parts, VNNI declines).
    #[test]
    fn small_sixteen_bit_operands_on_both_sides_multiply_in_one_pass() {
        let mut compared = 0;
        for level in joined_levels() {
            let cases = [
                (1, 1, 1),
                (7, 255, 17),
                (13, 1000, 33),
                (6, 4100, 16),
                (50, 1000, 33),
            ];
            let formats = [(12, true), (12, false), (13, true), (13, false)];
            each_case(&cases, &formats, |(m, k, n), (xb, signed), seed| {
                for weights_left in [true, false] {
                    for threads in [1, 3] {
                        let (c, plan, want, ldc) = if weights_left {
                            let w = values(m * k, 12, true, seed);
                            let x = values(k * n, xb, signed, seed + 3);
                            let pw = Parts::<PackedA>::weights(&w, m, k).expect("splits");
                            let px = acts_b(&x, k, n);
                            let plan = join_plan(&pw.as_ref(), &px.as_ref(), level);
                            let c = gemm_joined(pw.as_ref(), px.as_ref(), threads, level);
                            (c, plan, naive(&w, &x, m, k, n), px.hi.ldc())
                        } else {
                            let x = values(m * k, xb, signed, seed + 3);
                            let w = values(k * n, 12, true, seed);
                            let px = acts_a(&x, m, k);
                            let pw = Parts::<PackedB>::weights(&w, k, n).expect("splits");
                            let plan = join_plan(&px.as_ref(), &pw.as_ref(), level);
                            let c = gemm_joined(px.as_ref(), pw.as_ref(), threads, level);
                            (c, plan, naive(&x, &w, m, k, n), pw.hi.ldc())
                        };
                        let what = format!(
                            "{level:?} {m}×{k}×{n} x{xb} signed {signed} left {weights_left}"
                        );
                        let plan = plan.expect("joined");
                        assert!(plan.single.is_some_and(|q| q >= SINGLE_MIN_KCQ), "{what}");
                        assert_eq!(plan.avx512, level == Level::Avx512Vnni);
                        let c = c.expect("joined");
                        for i in 0..m {
                            for j in 0..n {
                                assert_eq!(c[i * ldc + j], want[i * n + j], "{what} ({i},{j})");
                            }
                        }
                        compared += 1;
                    }
                }
            });
            // rows from a part that does not start on a kept tile's first row (widened as they
            // come) and from one that does (the kept tiles), twice each (the tiles kept by then)
            let (m, k, n) = (40, 700, 20);
            let w = values(m * k, 12, true, 5);
            let x = values(k * n, 12, false, 6);
            let want = naive(&w, &x, m, k, n);
            let pw = Parts::<PackedA>::weights(&w, m, k).expect("splits");
            let px = acts_b(&x, k, n);
            let plan = join_plan(&pw.as_ref(), &px.as_ref(), level).expect("joined");
            let ldc = px.hi.ldc();
            for (r0, rows) in [(8, 20), (6, 30), (8, 20), (24, 16), (0, 40)] {
                let mut c = vec![7i64; rows * ldc];
                product_joined(pw.as_ref(), px.as_ref(), r0, &mut c, (plan, None), &[]);
                for i in 0..rows {
                    for j in 0..n {
                        assert_eq!(
                            c[i * ldc + j],
                            want[(r0 + i) * n + j],
                            "{level:?} from row {r0}: ({i},{j})"
                        );
                    }
                }
            }
            // every product at its extreme, over whole blocks and past them
            for (w, x) in [
                (-2048, 8191),
                (2047, 8191),
                (-2048, -8192),
                (2047, -8192),
                (-2048, 4095),
            ] {
                let (m, k, n) = (2, 1024, 17);
                let (wv, xv) = (vec![w; m * k], vec![x; k * n]);
                let pw = Parts::<PackedA>::weights(&wv, m, k).expect("splits");
                let px = acts_b(&xv, k, n);
                let plan = join_plan(&pw.as_ref(), &px.as_ref(), level).expect("joined");
                assert!(plan.single.is_some(), "{w} · {x}");
                let c = gemm_joined(pw.as_ref(), px.as_ref(), 1, level).expect("joined");
                for at in [0, px.hi.ldc() + 16] {
                    assert_eq!(c[at], w as i64 * x as i64 * k as i64, "{level:?} {w} · {x}");
                }
            }
            // full 16-bit values: the weights' parts one pass each on AVX2, declined on VNNI
            let pw = Parts::<PackedA>::weights(&[-32768, 32639], 1, 2).expect("splits");
            let px = acts_b(&[30000, -30000], 2, 1);
            let plan = join_plan(&pw.as_ref(), &px.as_ref(), level);
            match level {
                Level::Avx2 => assert_eq!(plan.map(|p| p.single), Some(None)),
                _ => assert_eq!(plan, None),
            }
            // unsigned activations from 32768: no single pass either
            let px = acts_b(&[40000, 3], 2, 1);
            let pw = Parts::<PackedA>::weights(&[300, 2], 1, 2).expect("splits");
            let plan = join_plan(&pw.as_ref(), &px.as_ref(), level);
            assert!(plan.is_none_or(|p| p.single.is_none()));
        }
        if Level::Avx2.supported() {
            assert!(compared >= 4 * 4 * 2 * 2);
        }
    }

    #[test]
    fn extremes_do_not_wrap() {
        // the largest reduction at the largest magnitudes, both signs of activations
        let (m, k, n) = (2, MAX_K, 17);
        for (av, bv) in [(255, -128), (255, 127), (-128, -128), (127, -128)] {
            check(&vec![av; m * k], &vec![bv; k * n], m, k, n, 2);
            check_swapped(&vec![bv; 17 * k], &vec![av; k * 2], 17, k, 2, 2);
        }
        assert!(PackedA::new(&[256], 1, 1).is_none());
        assert!(PackedA::new(&[-129], 1, 1).is_none());
        assert!(PackedA::new(&[-1, 200], 1, 2).is_none());
        assert!(PackedB::new(&[128], 1, 1).is_none());
        // 16-bit weights: two parts from -32768 to 32639, none past
        for w in [
            -32768, -32767, -129, -128, -1, 0, 1, 127, 128, 255, 256, 32639,
        ] {
            let (hi, lo) = split16(w).expect("splits");
            assert_eq!(256 * hi as i32 + lo as i32, w);
        }
        assert_eq!(split16(WEIGHT16_MAX + 1), None);
        assert!(split16(-32896).is_some() && split16(-32897).is_none());
        assert!(Parts::<PackedA>::weights(&[300, -5], 1, 2).is_some_and(|p| p.lo.is_some()));
        assert!(Parts::<PackedA>::weights(&[100, -5], 1, 2).is_some_and(|p| p.lo.is_none()));
        assert!(Parts::<PackedB>::weights(&[32640], 1, 1).is_none());
        // a weight below −32768 splits, but is no 16-bit weight: the wide path takes it
        assert!(Parts::<PackedA>::weights(&[-32768], 1, 1).is_some());
        assert!(Parts::<PackedA>::weights(&[-32769], 1, 1).is_none());
        assert!(PackedB::new(&vec![0; MAX_K + 1], MAX_K + 1, 1).is_none());
    }
}
