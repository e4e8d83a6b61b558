//! What compilers of canonical models share to choose scales reproducibly (not part of the semantics):
//! an exact `⌈log₂⌉` and the seeded generator of calibration data.

/// The smallest `e` with `2^e >= m` (for `m > 0`), by exact power-of-two arithmetic.
pub fn ceil_log2(m: f64) -> i32 {
    let mut e = 0i32;
    while libm::ldexp(1.0, e) < m && e < 1100 {
        e += 1;
    }
    while e > -1100 && libm::ldexp(1.0, e - 1) >= m {
        e -= 1;
    }
    e
}

/// SplitMix64: the deterministic generator for calibration inputs and tokens.
pub struct SplitMix64(pub u64);

impl SplitMix64 {
    /// Next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[lo, hi)`, exact dyadic arithmetic.
    pub fn uniform(&mut self, lo: f64, hi: f64) -> f64 {
        let u = (self.next_u64() >> 11) as f64 * libm::ldexp(1.0, -53);
        lo + (hi - lo) * u
    }
}
