//! Block-wise dot products of 8-bit activations with 8-bit (or narrower) weights: the contraction
//! `y[o, g] = Σ_k x[g, k] · w[o, g, k]` (`EinSum {gk, ogk → og}`) that block-quantized matrix products
//! (GGUF weights, `w4` precisions) compute before scaling each block — a batch of matrix-vector
//! products, one per block, which the general GEMM path would run as many tiny products.
//!
//! The weights are packed once, 16 rows at a time: for each block and each quad of 4 values of `k`,
//! 16 rows × 4 bytes, one 512-bit register. A row tile's product then needs one broadcast of 4
//! activation bytes per quad and one `vpdpbusd`, and writes 16 outputs at once. Weights are stored
//! offset by `B` (128 for bytes, 8 for 4-bit values) into unsigned bytes (`vpdpbusd` multiplies
//! unsigned by signed bytes); the offset's contribution, `B` times the activation block's sum, is the
//! same for every weight row and is subtracted exactly. `|Σ| ≤ k · 255 · 128` stays in `i32` for blocks
//! of up to 65,536 values, so every level (AVX-512 VNNI, or portable code compiled for the CPU's
//! vector width) gives the exact integers of the reference executor.

use crate::par;

/// Rows per packed tile.
const TILE: usize = 16;

/// Products (activation rows × weight rows × length) below which a run stays on one thread.
const SPLIT_PRODUCTS: usize = 4 << 20;

/// Activation rows a tile's weights are loaded for at once.
const GROUP: usize = 4;

/// Weights `[rows, blocks, block]` packed for [`PackedBlocks::run`].
#[derive(Clone, Debug)]
pub struct PackedBlocks {
    rows: usize,
    blocks: usize,
    block: usize,
    /// Per tile, per block, per quad: 16 rows × 4 bytes `w + 128`; or, when every weight is 4-bit
    /// (`nibbles`), per pair of quads one such register whose low nibbles are the first quad and high
    /// nibbles the second, each `w + 8` (half the bytes to stream).
    data: Vec<u8>,
    nibbles: bool,
    /// The per-block multipliers of [`PackedBlocks::run_sums`] in the same order, once given.
    mult: Vec<i32>,
    /// The largest magnitude among them.
    mult_max: i64,
}

impl PackedBlocks {
    /// Packs `w` (`[rows, blocks, block]`, row-major) when every value is in `−128..=127` and
    /// `block` is a multiple of 4 up to 65,536; `None` otherwise (the general path then runs).
    pub fn new(w: &[i32], rows: usize, blocks: usize, block: usize) -> Option<PackedBlocks> {
        if block == 0
            || !block.is_multiple_of(4)
            || block > 65_536
            || w.len() != rows * blocks * block
        {
            return None;
        }
        if w.iter().any(|&v| !(-128..=127).contains(&v)) {
            return None;
        }
        let tiles = rows.div_ceil(TILE);
        let quads = block / 4;
        let nibbles = quads.is_multiple_of(2) && w.iter().all(|&v| (-8..=7).contains(&v));
        let mut data = vec![0u8; tiles * blocks * quads * TILE * 4 / if nibbles { 2 } else { 1 }];
        for o in 0..rows {
            let (t, lane) = (o / TILE, o % TILE);
            for g in 0..blocks {
                let src = &w[(o * blocks + g) * block..][..block];
                for (kq, quad) in src.chunks_exact(4).enumerate() {
                    let q = (t * blocks + g) * quads + kq;
                    for (i, &v) in quad.iter().enumerate() {
                        if nibbles {
                            let at = ((q / 2) * TILE + lane) * 4 + i;
                            data[at] |= ((v + 8) as u8) << (4 * (kq % 2));
                        } else {
                            data[(q * TILE + lane) * 4 + i] = (v + 128) as u8;
                        }
                    }
                }
            }
        }
        Some(PackedBlocks {
            rows,
            blocks,
            block,
            data,
            nibbles,
            mult: Vec::new(),
            mult_max: 0,
        })
    }

    /// Keeps the per-block multipliers `[rows, blocks]` that [`PackedBlocks::run_sums`] applies, in
    /// tile order (false, and nothing kept, if the shape differs).
    pub fn set_multipliers(&mut self, mult: &[i32]) -> bool {
        if mult.len() != self.rows * self.blocks {
            return false;
        }
        let tiles = self.rows.div_ceil(TILE);
        self.mult = vec![0; tiles * self.blocks * TILE];
        for o in 0..self.rows {
            for g in 0..self.blocks {
                self.mult[((o / TILE) * self.blocks + g) * TILE + o % TILE] =
                    mult[o * self.blocks + g];
            }
        }
        self.mult_max = mult.iter().map(|&v| (v as i64).abs()).max().unwrap_or(0);
        true
    }

    /// `x` as signed bytes (`vpdpbusd`'s signed operand), the weight offset's contribution per
    /// activation block (`B · Σ_k x`), and the number of activation rows; or `None` unless `x` holds
    /// whole rows of the product's length and only values in `−128..=127`.
    fn activations(&self, x: &[i32]) -> Option<Activations> {
        let len = self.blocks * self.block;
        if x.is_empty() || !x.len().is_multiple_of(len) {
            return None;
        }
        if x.iter().any(|&v| !(-128..=127).contains(&v)) {
            return None;
        }
        let b = if self.nibbles { 8 } else { 128 };
        Some(Activations {
            bytes: x.iter().map(|&v| v as i8 as u8).collect(),
            corr: x
                .chunks_exact(self.block)
                .map(|c| b * c.iter().sum::<i32>())
                .collect(),
            rows: x.len() / len,
        })
    }

    /// Runs `each(tile, activation row, that row's 16 × blocks products)` over every row tile and
    /// activation row, tiles split among `threads`; `each` writes `per` values per weight row and
    /// activation row into its slice (`[16 rows][m][per]`), returned as `[m][rows][per]`.
    fn for_tiles(
        &self,
        x: &Activations,
        per: usize,
        threads: usize,
        each: impl Fn(usize, usize, &[i32], &mut [i32]) + Sync,
    ) -> Vec<i32> {
        let (len, nb, m) = (self.blocks * self.block, self.blocks, x.rows);
        // a small product runs on one thread: handing half of it to another costs more than it
        // saves; so does a single activation row, whose speed is the memory's (one pass over the
        // weights, which a second core's share of the bandwidth did not speed up where measured)
        let threads = if m < 2 || m * self.rows * len < SPLIT_PRODUCTS {
            1
        } else {
            threads
        };
        // weight-row major, so that each thread's tiles are one contiguous part
        let mut by_row = vec![0i32; self.rows * m * per];
        par::rows(&mut by_row, m * per, threads, TILE, |first, part| {
            let mut tmp = vec![0i32; self.blocks * TILE * GROUP];
            for (i, rows) in part.chunks_mut(TILE * m * per).enumerate() {
                let t = first / TILE + i;
                // up to GROUP activation rows at a time: each weight register loaded serves them all
                let mut r = 0;
                while r < m {
                    let n = (m - r).min(GROUP);
                    let xr = &x.bytes[r * len..(r + n) * len];
                    self.tiles(t, xr, &x.corr[r * nb..(r + n) * nb], n, &mut tmp);
                    for (j, part) in tmp.chunks_exact(nb * TILE).take(n).enumerate() {
                        each(t, r + j, part, rows);
                    }
                    r += n;
                }
            }
        });
        if m == 1 {
            return by_row;
        }
        let mut out = vec![0i32; by_row.len()];
        if per == 1 {
            for (o, row) in by_row.chunks_exact(m).enumerate() {
                for (r, &v) in row.iter().enumerate() {
                    out[r * self.rows + o] = v;
                }
            }
            return out;
        }
        for (o, row) in by_row.chunks_exact(m * per).enumerate() {
            for (r, vals) in row.chunks_exact(per).enumerate() {
                out[(r * self.rows + o) * per..][..per].copy_from_slice(vals);
            }
        }
        out
    }

    /// `y[m, o, g] = Σ_k x[m, g, k] · w[o, g, k]` (`[m, rows, blocks]`, `m` activation rows), or
    /// `None` when `x` holds a value outside `−128..=127`.
    pub fn run(&self, x: &[i32], threads: usize) -> Option<Vec<i32>> {
        let x = self.activations(x)?;
        let (nb, m) = (self.blocks, x.rows);
        Some(self.for_tiles(&x, nb, threads, |_, r, tmp, rows| {
            for (lane, row) in rows.chunks_mut(m * nb).enumerate() {
                for (g, y) in row[r * nb..(r + 1) * nb].iter_mut().enumerate() {
                    *y = tmp[g * TILE + lane];
                }
            }
        }))
    }

    /// The block sums of a block-quantized product in one pass: per activation row and weight row `o`,
    /// `Σ_g fit(rshift(fit(rshift(y[o,g] · mult[o,g], s1)) · scale[g], s2))`, then `rshift(·, s3)` and
    /// fitted — the `Mul`, `Mul` and `Reduce Sum` nodes that follow the product, with the same
    /// integers, `mult` being the multipliers given to [`PackedBlocks::set_multipliers`]. `None` when
    /// there are none, `x` is not 8-bit, or some intermediate leaves `i32` (the caller then runs the
    /// nodes one by one, which report the error at its node). Shifts must be in `1..=62` (`s3` in
    /// `0..=62`). `x` may hold `m` activation rows (`[m, blocks, block]`, `scale` `[m, blocks]`); the
    /// result is then `[m, rows]`.
    pub fn run_sums(
        &self,
        x: &[i32],
        scale: &[i32],
        shifts: [u32; 3],
        threads: usize,
    ) -> Option<Vec<i32>> {
        let [s1, s2, s3] = shifts;
        let ok = |s: u32| (1..=62).contains(&s);
        if self.mult.is_empty() || !ok(s1) || !ok(s2) || s3 > 62 {
            return None;
        }
        let x = self.activations(x)?;
        let m = x.rows;
        if scale.len() != m * self.blocks {
            return None;
        }
        let failed = std::sync::atomic::AtomicBool::new(false);
        let nb = self.blocks;
        // per activation row: whether no block's two products can leave `i32` (then the epilogue
        // need not check each one), from the largest block product, multiplier and scale
        let y_max = (self.block as i128) * 128 * if self.nibbles { 8 } else { 128 };
        let bounded: Vec<bool> = scale
            .chunks_exact(nb)
            .map(|sc| {
                let sc_max = sc.iter().map(|&v| (v as i128).abs()).max().unwrap_or(0);
                let p = (y_max * self.mult_max as i128 + (1i128 << (s1 - 1))) >> s1;
                let v = (p * sc_max + (1i128 << (s2 - 1))) >> s2;
                p <= i32::MAX as i128 && v <= i32::MAX as i128
            })
            .collect();
        let out = self.for_tiles(&x, 1, threads, |t, r, tmp, rows| {
            let mult = &self.mult[t * nb * TILE..(t + 1) * nb * TILE];
            let mut sums = [0i64; TILE];
            let sc = &scale[r * nb..(r + 1) * nb];
            if !epilogue(tmp, mult, sc, shifts, bounded[r], &mut sums) {
                failed.store(true, std::sync::atomic::Ordering::Relaxed);
            }
            for (y, &v) in rows.chunks_mut(m).zip(&sums) {
                y[r] = v as i32;
            }
        });
        (!failed.into_inner()).then_some(out)
    }

    /// Tile `t`'s outputs for `n` (at most [`GROUP`]) activation rows, `[n][blocks][16]`, into `tmp`,
    /// from the rows' bytes and their per-block corrections.
    fn tiles(&self, t: usize, xs: &[u8], corr: &[i32], n: usize, tmp: &mut [i32]) {
        let quads = self.block / 4;
        let span = self.blocks * quads * TILE * 4 / if self.nibbles { 2 } else { 1 };
        let w = &self.data[t * span..(t + 1) * span];
        #[cfg(target_arch = "x86_64")]
        if crate::qgemm::Level::detect() == crate::qgemm::Level::Avx512Vnni {
            let b = self.blocks;
            // SAFETY: the CPU supports AVX-512F/BW/VNNI (checked by `Level::detect`); the slices
            // have the lengths the kernels read, by construction of `data` and the activations.
            unsafe {
                match (self.nibbles, n) {
                    (true, 1) => tile_vnni_nibbles::<1>(w, corr, xs, b, quads, tmp),
                    (true, 2) => tile_vnni_nibbles::<2>(w, corr, xs, b, quads, tmp),
                    (true, 3) => tile_vnni_nibbles::<3>(w, corr, xs, b, quads, tmp),
                    (true, _) => tile_vnni_nibbles::<GROUP>(w, corr, xs, b, quads, tmp),
                    (false, 1) => tile_vnni::<1>(w, corr, xs, b, quads, tmp),
                    (false, 2) => tile_vnni::<2>(w, corr, xs, b, quads, tmp),
                    (false, 3) => tile_vnni::<3>(w, corr, xs, b, quads, tmp),
                    (false, _) => tile_vnni::<GROUP>(w, corr, xs, b, quads, tmp),
                }
            };
            return;
        }
        let len = self.blocks * quads * 4;
        for j in 0..n {
            let (x, c) = (&xs[j * len..][..len], &corr[j * self.blocks..]);
            let out = &mut tmp[j * self.blocks * TILE..];
            if self.nibbles {
                tile_portable_nibbles(w, c, x, self.blocks, quads, out);
            } else {
                tile_portable(w, c, x, self.blocks, quads, out);
            }
        }
    }
}

/// Activation rows as the kernels read them.
struct Activations {
    /// Signed bytes.
    bytes: Vec<u8>,
    /// Per row and block: the weight offset (128, or 8 for 4-bit weights) times the block's sum.
    corr: Vec<i32>,
    /// Activation rows.
    rows: usize,
}

/// One tile's block sums (see [`PackedBlocks::run_sums`]) into `sums`; false if a value left `i32`.
#[inline(always)]
fn epilogue_body(
    tmp: &[i32],
    mult: &[i32],
    scale: &[i32],
    shifts: [u32; 3],
    sums: &mut [i64; TILE],
) -> bool {
    let [s1, s2, s3] = shifts;
    let (h1, h2) = (1i64 << (s1 - 1), 1i64 << (s2 - 1));
    let h3 = if s3 == 0 { 0 } else { 1i64 << (s3 - 1) };
    let (mut lo, mut hi) = ([0i64; TILE], [0i64; TILE]);
    for (g, &sc) in scale.iter().enumerate() {
        let (y, m) = (&tmp[g * TILE..][..TILE], &mult[g * TILE..][..TILE]);
        for lane in 0..TILE {
            let p = (y[lane] as i64 * m[lane] as i64 + h1) >> s1;
            let pc = p.clamp(i32::MIN as i64, i32::MAX as i64);
            let v = (pc * sc as i64 + h2) >> s2;
            lo[lane] = lo[lane].min(p).min(v);
            hi[lane] = hi[lane].max(p).max(v);
            sums[lane] += v;
        }
    }
    let mut fits = true;
    for lane in 0..TILE {
        let r = (sums[lane] + h3) >> s3;
        fits &= lo[lane] >= i32::MIN as i64 && hi[lane] <= i32::MAX as i64 && r == r as i32 as i64;
        sums[lane] = r;
    }
    fits
}

crate::multiversion! {
    fn epilogue_plain(tmp: &[i32], mult: &[i32], scale: &[i32], shifts: [u32; 3], sums: &mut [i64; TILE]) -> bool = epilogue_body
}

/// [`epilogue_body`], with AVX-512 when the CPU has it (the same integers: exact 64-bit products of
/// 32-bit values, arithmetic shifts, the same bounds).
/// `bounded` says that no product can leave `i32` (so none is checked).
fn epilogue(
    tmp: &[i32],
    mult: &[i32],
    scale: &[i32],
    shifts: [u32; 3],
    bounded: bool,
    sums: &mut [i64; TILE],
) -> bool {
    #[cfg(target_arch = "x86_64")]
    if crate::simd::Isa::detect() == crate::simd::Isa::Avx512 {
        // SAFETY: AVX-512 F is available (checked just above); the lengths are checked inside.
        return unsafe {
            if bounded {
                epilogue_avx512::<false>(tmp, mult, scale, shifts, sums)
            } else {
                epilogue_avx512::<true>(tmp, mult, scale, shifts, sums)
            }
        };
    }
    let _ = bounded;
    epilogue_plain(tmp, mult, scale, shifts, sums)
}

/// [`epilogue_body`] on 8 lanes of 64 bits at a time; without `CHECKED`, for operands whose
/// products are known to stay in `i32` (the clamp and the range checks are then no-ops, left out).
///
/// # Safety
/// The CPU must support AVX-512 F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn epilogue_avx512<const CHECKED: bool>(
    tmp: &[i32],
    mult: &[i32],
    scale: &[i32],
    shifts: [u32; 3],
    sums: &mut [i64; TILE],
) -> bool {
    use std::arch::x86_64::*;
    let blocks = scale.len();
    assert!(tmp.len() >= blocks * TILE && mult.len() >= blocks * TILE);
    let [s1, s2, s3] = shifts;
    let (c1, c2) = (_mm_cvtsi64_si128(s1 as i64), _mm_cvtsi64_si128(s2 as i64));
    let h1 = _mm512_set1_epi64(1i64 << (s1 - 1));
    let h2 = _mm512_set1_epi64(1i64 << (s2 - 1));
    let (imin, imax) = (
        _mm512_set1_epi64(i32::MIN as i64),
        _mm512_set1_epi64(i32::MAX as i64),
    );
    let mut fits = true;
    for half in 0..2 {
        let at = half * 8;
        let mut sum = _mm512_loadu_si512(sums.as_ptr().add(at) as *const _);
        let (mut lo, mut hi) = (_mm512_setzero_si512(), _mm512_setzero_si512());
        for (g, &sc) in scale.iter().enumerate() {
            let y = _mm512_cvtepi32_epi64(_mm256_loadu_si256(
                tmp.as_ptr().add(g * TILE + at) as *const _
            ));
            let m = _mm512_cvtepi32_epi64(_mm256_loadu_si256(
                mult.as_ptr().add(g * TILE + at) as *const _
            ));
            // `_mm512_mul_epi32` multiplies the lanes' low 32 bits, sign-extended: exact here, as
            // every operand is a 32-bit value (`pc` after its clamp)
            let p = _mm512_sra_epi64(_mm512_add_epi64(_mm512_mul_epi32(y, m), h1), c1);
            let pc = if CHECKED {
                _mm512_min_epi64(_mm512_max_epi64(p, imin), imax)
            } else {
                p
            };
            let v = _mm512_mul_epi32(pc, _mm512_set1_epi64(sc as i64));
            let v = _mm512_sra_epi64(_mm512_add_epi64(v, h2), c2);
            if CHECKED {
                lo = _mm512_min_epi64(lo, _mm512_min_epi64(p, v));
                hi = _mm512_max_epi64(hi, _mm512_max_epi64(p, v));
            }
            sum = _mm512_add_epi64(sum, v);
        }
        fits &= _mm512_cmplt_epi64_mask(lo, imin) == 0 && _mm512_cmpgt_epi64_mask(hi, imax) == 0;
        _mm512_storeu_si512(sums.as_mut_ptr().add(at) as *mut _, sum);
    }
    let h3 = if s3 == 0 { 0 } else { 1i64 << (s3 - 1) };
    for v in sums.iter_mut() {
        let r = (*v + h3) >> s3;
        fits &= r == r as i32 as i64;
        *v = r;
    }
    fits
}

/// One tile's products into `tmp` (`[blocks][16]`), weights as offset bytes or, with `NIBBLES`, two
/// quads per register: register `r` of a block holds quads `2r` (low nibbles) and `2r + 1` (high
/// nibbles), each `w + 8`; `corr[g]` removes the offset's contribution.
#[inline(always)]
fn tile_body<const NIBBLES: bool>(
    w: &[u8],
    corr: &[i32],
    xs: &[u8],
    blocks: usize,
    quads: usize,
    tmp: &mut [i32],
) {
    let weight = |q: usize, lane: usize, i: usize| -> i32 {
        if NIBBLES {
            let b = w[((q / 2) * TILE + lane) * 4 + i];
            (if q % 2 == 1 { b >> 4 } else { b & 15 }) as i32
        } else {
            w[(q * TILE + lane) * 4 + i] as i32
        }
    };
    for g in 0..blocks {
        let mut acc = [0i32; TILE];
        for kq in 0..quads {
            let q = g * quads + kq;
            let xq = &xs[q * 4..][..4];
            for (lane, a) in acc.iter_mut().enumerate() {
                for (i, &x) in xq.iter().enumerate() {
                    *a += x as i8 as i32 * weight(q, lane, i);
                }
            }
        }
        for (lane, a) in acc.iter().enumerate() {
            tmp[g * TILE + lane] = a - corr[g];
        }
    }
}

crate::multiversion! {
    fn tile_portable(w: &[u8], corr: &[i32], xs: &[u8], blocks: usize, quads: usize, tmp: &mut [i32]) -> () = tile_body::<false>
}

crate::multiversion! {
    fn tile_portable_nibbles(w: &[u8], corr: &[i32], xs: &[u8], blocks: usize, quads: usize, tmp: &mut [i32]) -> () = tile_body::<true>
}

/// Independent accumulator chains per activation row in the VNNI kernels, so that consecutive
/// `vpdpbusd`s do not wait on each other's results.
#[cfg(target_arch = "x86_64")]
const CHAINS: usize = 4;

/// One tile's products for `R` activation rows into `tmp` (`[R][blocks][16]`): each weight register
/// is loaded once per tile and block and multiplied with every row's broadcast quad.
///
/// # Safety
/// The CPU must support AVX-512F/BW/VNNI; `w` holds `blocks · quads · 64` bytes, `corr` `R · blocks`
/// and `tmp` `R · blocks · 16` values, `xs` `R · blocks · quads · 4` bytes.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn tile_vnni<const R: usize>(
    w: &[u8],
    corr: &[i32],
    xs: &[u8],
    blocks: usize,
    quads: usize,
    tmp: &mut [i32],
) {
    use std::arch::x86_64::*;
    let len = blocks * quads * 4;
    assert!(w.len() >= blocks * quads * 64 && corr.len() >= R * blocks);
    assert!(tmp.len() >= R * blocks * TILE && xs.len() >= R * len);
    let (wp, xp) = (w.as_ptr(), xs.as_ptr());
    let dot = |acc: &mut [__m512i; R], wq: __m512i, q: usize| dot_rows(acc, wq, xp, len, q);
    let load = |q: usize| _mm512_loadu_si512(wp.add(q * 64) as *const _);
    for g in 0..blocks {
        let z = [_mm512_setzero_si512(); R];
        let (mut a0, mut a1, mut a2, mut a3) = (z, z, z, z);
        let q0 = g * quads;
        // four quads at a time, one chain each
        let mut kq = 0;
        while kq + 4 <= quads {
            let q = q0 + kq;
            dot(&mut a0, load(q), q);
            dot(&mut a1, load(q + 1), q + 1);
            dot(&mut a2, load(q + 2), q + 2);
            dot(&mut a3, load(q + 3), q + 3);
            kq += 4;
        }
        while kq < quads {
            dot(&mut a0, load(q0 + kq), q0 + kq);
            kq += 1;
        }
        store_rows::<R>(&[a0, a1, a2, a3], corr, blocks, g, tmp);
    }
}

/// `acc[j] += wq · (row j's quad q, broadcast)` for each of the `R` activation rows (`len` bytes apart
/// from `xp`).
///
/// # Safety
/// The CPU must support AVX-512F/BW/VNNI; `xp` must hold `R · len` readable bytes, `q · 4 + 4 ≤ len`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
#[inline]
unsafe fn dot_rows<const R: usize>(
    acc: &mut [std::arch::x86_64::__m512i; R],
    wq: std::arch::x86_64::__m512i,
    xp: *const u8,
    len: usize,
    q: usize,
) {
    use std::arch::x86_64::*;
    for (j, a) in acc.iter_mut().enumerate() {
        let x = _mm512_set1_epi32((xp.add(j * len + q * 4) as *const i32).read_unaligned());
        *a = _mm512_dpbusd_epi32(*a, wq, x);
    }
}

/// Adds a block's chains per row, removes the weight offset's contribution and stores the row's
/// 16 products at `tmp[row][g]`.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn store_rows<const R: usize>(
    acc: &[[std::arch::x86_64::__m512i; R]; CHAINS],
    corr: &[i32],
    blocks: usize,
    g: usize,
    tmp: &mut [i32],
) {
    use std::arch::x86_64::*;
    for j in 0..R {
        let s = _mm512_add_epi32(
            _mm512_add_epi32(acc[0][j], acc[1][j]),
            _mm512_add_epi32(acc[2][j], acc[3][j]),
        );
        let s = _mm512_sub_epi32(s, _mm512_set1_epi32(corr[j * blocks + g]));
        _mm512_storeu_si512(tmp.as_mut_ptr().add((j * blocks + g) * TILE) as *mut _, s);
    }
}

/// [`tile_vnni`] on 4-bit weights (see [`tile_body`]): each 64-byte load gives two quads.
///
/// # Safety
/// As [`tile_vnni`], with `w` holding `blocks · quads · 32` bytes and `quads` even.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn tile_vnni_nibbles<const R: usize>(
    w: &[u8],
    corr: &[i32],
    xs: &[u8],
    blocks: usize,
    quads: usize,
    tmp: &mut [i32],
) {
    use std::arch::x86_64::*;
    let len = blocks * quads * 4;
    assert!(w.len() >= blocks * quads * 32 && corr.len() >= R * blocks);
    assert!(tmp.len() >= R * blocks * TILE && xs.len() >= R * len && quads.is_multiple_of(2));
    let (wp, xp) = (w.as_ptr(), xs.as_ptr());
    let low = _mm512_set1_epi8(15);
    let dot = |acc: &mut [__m512i; R], wq: __m512i, q: usize| dot_rows(acc, wq, xp, len, q);
    // register `r` of block `g`: quads `2r` (low nibbles) and `2r + 1` (high nibbles)
    let halves = |g: usize, r: usize| {
        let v = _mm512_loadu_si512(wp.add((g * quads / 2 + r) * 64) as *const _);
        (
            _mm512_and_si512(v, low),
            _mm512_and_si512(_mm512_srli_epi16(v, 4), low),
        )
    };
    let regs = quads / 2;
    for g in 0..blocks {
        let z = [_mm512_setzero_si512(); R];
        let (mut a0, mut a1, mut a2, mut a3) = (z, z, z, z);
        let q0 = g * quads;
        // two registers (four quads) at a time, one chain each
        let mut r = 0;
        while r + 2 <= regs {
            let ((l0, h0), (l1, h1)) = (halves(g, r), halves(g, r + 1));
            let q = q0 + 2 * r;
            dot(&mut a0, l0, q);
            dot(&mut a1, h0, q + 1);
            dot(&mut a2, l1, q + 2);
            dot(&mut a3, h1, q + 3);
            r += 2;
        }
        if r < regs {
            let (l0, h0) = halves(g, r);
            dot(&mut a0, l0, q0 + 2 * r);
            dot(&mut a1, h0, q0 + 2 * r + 1);
        }
        store_rows::<R>(&[a0, a1, a2, a3], corr, blocks, g, tmp);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(x: &[i32], w: &[i32], rows: usize, blocks: usize, block: usize) -> Vec<i32> {
        let mut y = vec![0i32; rows * blocks];
        for o in 0..rows {
            for g in 0..blocks {
                y[o * blocks + g] = (0..block)
                    .map(|k| x[g * block + k] * w[(o * blocks + g) * block + k])
                    .sum();
            }
        }
        y
    }

    #[test]
    fn equals_the_exact_sums_at_every_level_and_split() {
        use crate::simd::Isa;
        let mut s = 7u64;
        let mut next = |lo: i32, hi: i32| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            lo + ((s >> 33) % (hi - lo + 1) as u64) as i32
        };
        let cases = [
            (1, 1, 4, 127),
            (17, 3, 32, 127),
            (40, 5, 16, 127),
            (33, 2, 256, 127),
            (5, 7, 8, 127),
        ];
        // 4-bit weights pack two to a byte (an odd number of quads keeps bytes)
        let nibble_cases = [(17, 3, 32, 7), (40, 5, 16, 7), (3, 2, 8, 7), (5, 1, 12, 7)];
        for &(rows, blocks, block, wmax) in cases.iter().chain(&nibble_cases) {
            let w: Vec<i32> = (0..rows * blocks * block)
                .map(|_| next(-wmax - 1, wmax))
                .collect();
            let mut x: Vec<i32> = (0..blocks * block).map(|_| next(-128, 127)).collect();
            // the extremes: every product at its largest magnitude
            x[0] = -128;
            let p = PackedBlocks::new(&w, rows, blocks, block).unwrap();
            assert_eq!(p.nibbles, wmax == 7 && block % 8 == 0);
            let want = naive(&x, &w, rows, blocks, block);
            for isa in [Isa::Base, Isa::Avx2, Isa::Avx512] {
                Isa::cap(isa);
                for threads in 1..=3 {
                    let got = p.run(&x, threads).unwrap();
                    assert_eq!(got, want, "{rows}x{blocks}x{block} on {threads} at {isa:?}");
                }
            }
            // several activation rows: groups of up to GROUP rows share each weight load
            for m in [2usize, 3, 4, 5, 9] {
                let xs: Vec<i32> = (0..m * blocks * block).map(|_| next(-128, 127)).collect();
                let want: Vec<i32> = xs
                    .chunks_exact(blocks * block)
                    .flat_map(|x| naive(x, &w, rows, blocks, block))
                    .collect();
                for isa in [Isa::Base, Isa::Avx512] {
                    Isa::cap(isa);
                    for threads in 1..=2 {
                        let got = p.run(&xs, threads).unwrap();
                        assert_eq!(got, want, "{m} rows of {rows}x{blocks}x{block} at {isa:?}");
                    }
                }
            }
            Isa::cap(Isa::Avx512);
            let mut wide = x.clone();
            wide[blocks * block - 1] = 128;
            assert!(p.run(&wide, 1).is_none());
        }
        // the fused epilogue equals the three nodes' formulas in i128
        let (rows, blocks, block) = (37, 6, 32);
        let w: Vec<i32> = (0..rows * blocks * block).map(|_| next(-8, 7)).collect();
        let x: Vec<i32> = (0..blocks * block).map(|_| next(-127, 127)).collect();
        let mult: Vec<i32> = (0..rows * blocks)
            .map(|_| next(-(1 << 24), 1 << 24))
            .collect();
        let scale: Vec<i32> = (0..blocks).map(|_| next(1, 1 << 20)).collect();
        let mut p = PackedBlocks::new(&w, rows, blocks, block).unwrap();
        assert!(
            p.run_sums(&x, &scale, [20, 18, 0], 1).is_none(),
            "no multipliers yet"
        );
        assert!(p.set_multipliers(&mult));
        let y = naive(&x, &w, rows, blocks, block);
        let r = |v: i128, k: u32| crate::arith::rshift(v, k as i32);
        for sh in [[20u32, 18, 0], [7, 30, 3], [1, 1, 62]] {
            let want: Option<Vec<i32>> = (0..rows)
                .map(|o| {
                    let mut sum = 0i128;
                    for g in 0..blocks {
                        let p = i32::try_from(r(
                            y[o * blocks + g] as i128 * mult[o * blocks + g] as i128,
                            sh[0],
                        ))
                        .ok()?;
                        sum += i32::try_from(r(p as i128 * scale[g] as i128, sh[1])).ok()? as i128;
                    }
                    i32::try_from(r(sum, sh[2])).ok()
                })
                .collect();
            for isa in [Isa::Base, Isa::Avx2, Isa::Avx512] {
                Isa::cap(isa);
                for threads in 1..=2 {
                    assert_eq!(p.run_sums(&x, &scale, sh, threads), want, "{sh:?} {isa:?}");
                }
            }
            Isa::cap(Isa::Avx512);
        }
        // a product large enough to be split among threads (several activation rows), and the same
        // product for one row, which stays on one thread: the same integers either way
        let (rows, blocks, block) = (520, 32, 128);
        assert!(2 * rows * blocks * block >= SPLIT_PRODUCTS);
        let w: Vec<i32> = (0..rows * blocks * block).map(|_| next(-8, 7)).collect();
        let xs: Vec<i32> = (0..2 * blocks * block).map(|_| next(-128, 127)).collect();
        let p = PackedBlocks::new(&w, rows, blocks, block).unwrap();
        let want: Vec<i32> = xs
            .chunks_exact(blocks * block)
            .flat_map(|x| naive(x, &w, rows, blocks, block))
            .collect();
        for threads in 1..=3 {
            assert_eq!(p.run(&xs, threads).unwrap(), want, "split on {threads}");
            let one = p.run(&xs[..blocks * block], threads).unwrap();
            assert_eq!(one, want[..rows * blocks], "one row on {threads}");
        }
        let all_min = vec![-128; 64 * 4];
        let p = PackedBlocks::new(&all_min, 4, 1, 64).unwrap();
        assert_eq!(p.run(&vec![-128; 64], 2).unwrap(), vec![64 * 128 * 128; 4]);
        assert!(PackedBlocks::new(&[200; 4], 1, 1, 4).is_none());
        assert!(PackedBlocks::new(&[1; 6], 1, 1, 6).is_none());
    }
}
