//! Function tables that are piecewise linear in integers, looked up without a gather.
//!
//! A `Lookup` reads `table[i]` for a position `i` per element; with AVX-512 that is one `vpgatherdd`
//! per 16 elements, whose throughput (not the table's size) bounds a model full of `x · sigmoid(x)`.
//! When every entry of a table is the integer interpolation of a few knots,
//!
//! `table[i] = p_j + ⌊(d_j · l + 2^(g−1)) / 2^g⌋` with `j = i >> g`, `l = i mod 2^g`,
//! `p_j = table[j·2^g]`, `d_j = table[(j+1)·2^g] − p_j` (`0` for the last knot),
//!
//! for at most [`KNOTS`] knots whose `p_j` and `d_j` fit `i16`, the entries are computed from the
//! knots held in registers (two permutes and a blend per 16 elements for up to 64 knots, four and
//! three for up to 128; a multiply-add, a shift).
//! [`knots`] checks every entry of the table against that formula, so the result is the
//! table's own entry, bit for bit: nothing in the canonical semantics changes, and a table of any
//! other shape is simply gathered as before. The compiler builds the tables of saturating functions
//! of narrow models this way (see `docs/spec/canonical.md`, §5).

/// The most knots a table is read from ([`knots`]): `(d_j << 16) | (p_j & 0xFFFF)`, one `i32` word
/// each, in eight AVX-512 registers (four when there are at most 64).
pub const KNOTS: usize = 128;

/// Entry `i` of a table interpolated between `knots` every `2^g` entries (`g ≥ 1`; `d_j = 0` past
/// the last knot), in `i64` (the result lies between two knots, so in `i32`).
fn entry(knots: &[i32], g: u32, i: usize) -> i32 {
    let j = i >> g;
    let p = knots[j] as i64;
    let d = knots.get(j + 1).map_or(0, |&q| q as i64 - p);
    let l = (i & ((1 << g) - 1)) as i64;
    (p + ((d * l + (1 << (g - 1))) >> g)) as i32
}

/// The `len` entries of a table interpolated between `knots` every `2^g` entries (`g` in `1..=15`,
/// `len` at most `knots.len() · 2^g`): `p_j + ⌊(d_j · l + 2^(g−1)) / 2^g⌋`, as above.
pub fn interpolated(knots: &[i32], g: u32, len: usize) -> Vec<i32> {
    (0..len).map(|i| entry(knots, g, i)).collect()
}

/// The segment length `g` (at most 14) and the knots of `table` if every entry is their
/// interpolation, with at most [`KNOTS`] knots whose values and differences fit `i16` (the smallest
/// such `g`), else `None`.
pub fn knots(table: &[i32]) -> Option<(u32, Vec<i32>)> {
    if table.len() < 2 {
        return None;
    }
    (1..=14).find_map(|g| {
        let span = 1usize << g;
        if (table.len() - 1) / span + 1 > KNOTS {
            return None;
        }
        let k: Vec<i32> = table.iter().step_by(span).copied().collect();
        let small = |v: i64| i16::try_from(v).is_ok();
        let fit = k.iter().all(|&v| small(v as i64))
            && k.windows(2).all(|w| small(w[1] as i64 - w[0] as i64));
        (fit && table.iter().enumerate().all(|(i, &t)| entry(&k, g, i) == t)).then_some((g, k))
    })
}

/// A table's knots in the engine's words, found by [`Segments::of`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Segments {
    /// `g`: entries per segment are `2^g`.
    bits: u32,
    /// The knots' words, zero past the last knot.
    words: [i32; KNOTS],
    /// Whether there are more than 64 knots.
    wide: bool,
}

impl Segments {
    /// The knots of `table` ([`knots`]) as words.
    pub(crate) fn of(table: &[i32]) -> Option<Segments> {
        let (g, k) = knots(table)?;
        let mut words = [0i32; KNOTS];
        for (j, w) in words.iter_mut().enumerate().take(k.len()) {
            let d = k.get(j + 1).map_or(0, |&q| q - k[j]);
            *w = (d << 16) | (k[j] as u16 as i32);
        }
        Some(Segments {
            bits: g,
            words,
            wide: k.len() > 64,
        })
    }

    /// Entry `i` from the words (in `i32`: `|d_j · l| < 2^15 · 2^15`).
    #[cfg(test)]
    fn entry(&self, i: usize) -> i32 {
        let g = self.bits;
        let w = self.words[i >> g];
        let (p, d) = (w as i16 as i32, w >> 16);
        let l = (i & ((1 << g) - 1)) as i32;
        p + ((d * l + (1 << (g - 1))) >> g)
    }
}

/// [`Segments`] in AVX-512 registers, set once per run.
#[cfg(target_arch = "x86_64")]
#[derive(Clone, Copy)]
pub(crate) struct SegmentLanes {
    words: [std::arch::x86_64::__m512i; 8],
    wide: bool,
    bits: std::arch::x86_64::__m128i,
    /// `(2^g − 1) << 16`: a position's low `g` bits once moved to the high half.
    low: std::arch::x86_64::__m512i,
    /// `2^g` in the low half.
    unit: std::arch::x86_64::__m512i,
    half: std::arch::x86_64::__m512i,
    upper: std::arch::x86_64::__m512i,
    top: std::arch::x86_64::__m512i,
}

#[cfg(target_arch = "x86_64")]
impl SegmentLanes {
    /// # Safety
    /// The CPU must have AVX-512 F and BW.
    #[inline(always)]
    pub(crate) unsafe fn new(s: &Segments) -> SegmentLanes {
        use std::arch::x86_64::*;
        // SAFETY: the CPU has AVX-512 F (the caller's promise); each load reads 16 of the 128 words
        unsafe {
            SegmentLanes {
                words: std::array::from_fn(|r| {
                    _mm512_loadu_si512(s.words[16 * r..].as_ptr().cast())
                }),
                bits: _mm_cvtsi32_si128(s.bits as i32),
                low: _mm512_set1_epi32(((1 << s.bits) - 1) << 16),
                unit: _mm512_set1_epi32(1 << s.bits),
                half: _mm512_set1_epi32(1 << (s.bits - 1)),
                upper: _mm512_set1_epi32(32),
                top: _mm512_set1_epi32(64),
                wide: s.wide,
            }
        }
    }

    /// The entries at 16 table positions (each in `0..len`): the knot's word by two permutes of 32
    /// words and a blend on the knot's bit 5 (for more than 64 knots, the same for knots 64.. and a
    /// blend on bit 6); then, as `p_j` is a multiple of `2^g` apart,
    /// `(p_j·2^g + d_j·l + 2^(g−1)) >> g` with `p_j·2^g + d_j·l` one `vpmaddwd` of the word and
    /// `(l << 16) | 2^g` (each product below `2^29` in magnitude, as `g ≤ 14`).
    ///
    /// # Safety
    /// The CPU must have AVX-512 F and BW.
    #[inline(always)]
    pub(crate) unsafe fn at(&self, i: std::arch::x86_64::__m512i) -> std::arch::x86_64::__m512i {
        use std::arch::x86_64::*;
        // SAFETY: the CPU has AVX-512 F and BW (the caller's promise)
        unsafe {
            let j = _mm512_srl_epi32(i, self.bits);
            let upper = _mm512_test_epi32_mask(j, self.upper);
            let a = _mm512_permutex2var_epi32(self.words[0], j, self.words[1]);
            let b = _mm512_permutex2var_epi32(self.words[2], j, self.words[3]);
            let mut w = _mm512_mask_blend_epi32(upper, a, b);
            if self.wide {
                let c = _mm512_permutex2var_epi32(self.words[4], j, self.words[5]);
                let d = _mm512_permutex2var_epi32(self.words[6], j, self.words[7]);
                let v = _mm512_mask_blend_epi32(upper, c, d);
                w = _mm512_mask_blend_epi32(_mm512_test_epi32_mask(j, self.top), w, v);
            }
            // (i << 16) & low | unit
            let m =
                _mm512_ternarylogic_epi32::<0xEA>(_mm512_slli_epi32::<16>(i), self.low, self.unit);
            _mm512_sra_epi32(
                _mm512_add_epi32(_mm512_madd_epi16(w, m), self.half),
                self.bits,
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The integer interpolation of `knots` with `2^g` entries per segment, the last knot its own
    /// entry (as a compiler builds it).
    fn interpolated(knots: &[i32], g: u32) -> Vec<i32> {
        super::interpolated(knots, g, ((knots.len() - 1) << g) + 1)
    }

    #[test]
    fn interpolated_tables_are_found_and_reproduced() {
        // a sigmoid-like curve of up to 128 knots at 14 bits at several segment lengths
        for (n, g) in [
            (64usize, 7u32),
            (64, 1),
            (128, 6),
            (100, 2),
            (40, 5),
            (2, 3),
            (33, 12),
        ] {
            let knots: Vec<i32> = (0..n)
                .map(|j| {
                    let x = (j as f64 - n as f64 / 2.0) / 4.0;
                    (8192.0 / (1.0 + (-x).exp())).round() as i32 - 77
                })
                .collect();
            let t = interpolated(&knots, g);
            assert_eq!(
                super::knots(&t),
                Some((g, knots.clone())),
                "{n} knots at g = {g}"
            );
            // entries past the last knot (which repeat it)
            for len in [t.len() + 1, t.len() + (1 << g) - 1] {
                let u = super::interpolated(&knots, g, len);
                let s = Segments::of(&u).expect("an interpolated table");
                assert!(
                    (0..len).all(|i| s.entry(i) == u[i]),
                    "{n} knots, {len} entries"
                );
            }
            let s = Segments::of(&t).expect("an interpolated table");
            assert!(s.bits <= g, "{n} knots at g = {g}: found g = {}", s.bits);
            for (i, &e) in t.iter().enumerate() {
                assert_eq!(s.entry(i), e, "{n} knots at g = {g}, entry {i}");
            }
        }
    }

    #[test]
    fn other_tables_are_refused() {
        let knots: Vec<i32> = (0..64).map(|j| j * j - 100).collect();
        let mut t = interpolated(&knots, 6);
        assert!(Segments::of(&t).is_some());
        // one entry off the line, anywhere
        for i in [1usize, 100, t.len() - 2] {
            let mut u = t.clone();
            u[i] += 1;
            assert_eq!(Segments::of(&u), None, "entry {i} changed");
        }
        // entries past the last knot repeat it
        t.extend([t[t.len() - 1]; 64]);
        assert!(Segments::of(&t).is_some());
        // too many knots, an entry or a step past i16, too short
        let many: Vec<i32> = (0..KNOTS as i32 + 1).map(|j| j * j - 100).collect();
        assert_eq!(Segments::of(&interpolated(&many, 1)), None);
        assert!(Segments::of(&interpolated(&many[..KNOTS], 1)).is_some());
        let long: Vec<i32> = (0..4 * KNOTS as i32 * 8)
            .map(|i| (i * 7919) % 1000)
            .collect();
        assert_eq!(Segments::of(&long), None);
        assert_eq!(Segments::of(&interpolated(&[0, 40_000], 4)), None);
        assert_eq!(Segments::of(&[-20_000, 20_000]), None);
        assert_eq!(Segments::of(&[5]), None);
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx512bw")]
    unsafe fn sixteen(s: &Segments, i: [i32; 16]) -> [i32; 16] {
        use std::arch::x86_64::*;
        let mut out = [0i32; 16];
        // SAFETY: the CPU has AVX-512 F and BW (this function's features)
        unsafe {
            let lanes = SegmentLanes::new(s);
            let v = lanes.at(_mm512_loadu_si512(i.as_ptr().cast()));
            _mm512_storeu_si512(out.as_mut_ptr().cast(), v);
        }
        out
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn lanes_equal_the_formula() {
        if crate::simd::Isa::detect() != crate::simd::Isa::Avx512 {
            return;
        }
        // knots anywhere in ±8000, and steps of ±32000 between knots at i16's ends
        let knots: Vec<i32> = (0..128).map(|j| (j * 523) % 16000 - 8000).collect();
        let steep: Vec<i32> = (0..128).map(|j| [-16000, 16000][j % 2]).collect();
        for (g, knots) in [
            (2u32, &knots[..]),
            (14, &knots[..70]),
            (5, &steep[..]),
            (1, &knots[..64]),
            (4, &knots[..64]),
            (9, &knots[..20]),
            (14, &knots[..33]),
            (3, &steep[..100]),
            (14, &steep[..70]),
        ] {
            let t = interpolated(knots, g);
            let s = Segments::of(&t).expect("interpolated");
            assert_eq!(s.bits, g);
            let idx: Vec<i32> = (0..t.len() as i32).collect();
            for c in idx.chunks(16) {
                let mut i = [0i32; 16];
                i[..c.len()].copy_from_slice(c);
                // SAFETY: the CPU has AVX-512 (checked above); positions lie in the table
                let out = unsafe { sixteen(&s, i) };
                for (k, &p) in c.iter().enumerate() {
                    assert_eq!(out[k], t[p as usize], "g = {g}, position {p}");
                }
            }
        }
    }
}
