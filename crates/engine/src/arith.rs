//! The integer primitives every canonical op is built from. All of them work on exact integers (`i128`
//! holds every intermediate the spec allows) and have exactly one rounding rule: round half toward
//! positive infinity (`floor(x / 2^k + 1/2)`), which is an add and an arithmetic shift.

use crate::error::ExecError;

/// Largest shift amount a valid model may use.
pub const MAX_SHIFT: i32 = 64;

/// `floor(x / 2^k + 1/2)` for `k > 0`; `x * 2^-k` for `k <= 0` (exact).
#[inline]
pub fn rshift(x: i128, k: i32) -> i128 {
    // Model validation bounds every shift to [-MAX_SHIFT, MAX_SHIFT] and operands to |x| < 2^100.
    if k > 0 {
        (x + (1i128 << (k - 1))) >> k
    } else {
        x << -k
    }
}

/// Like [`rshift`] on `i64` with `0 < k < 63`; the caller guarantees `x + 2^(k-1)` does not overflow.
#[inline(always)]
pub fn rshift64(x: i64, k: u32) -> i64 {
    (x + (1i64 << (k - 1))) >> k
}

/// [`rshift`] on `i32` for `k` in `0..=31`, without widening: with `v = q·2^k + r`, `(v >> k) + (bit
/// k − 1 of v)` is `q + (r ≥ 2^(k−1))`, which is `⌊(v + 2^(k−1)) / 2^k⌋` exactly and cannot overflow
/// (written for vector lanes of `i32`).
#[inline(always)]
pub fn rshift32(v: i32, k: u32) -> i32 {
    if k == 0 {
        v
    } else {
        (v >> k) + ((v >> (k - 1)) & 1)
    }
}

/// A rounding shift by `k` as `((t + half) >> right) << left` (`right = k, left = 0` for `k > 0`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Shift {
    /// `2^(k-1)` for `k > 0`, else 0.
    pub half: i64,
    /// `k` for `k > 0`, else 0.
    pub right: u32,
    /// `-k` for `k <= 0`, else 0.
    pub left: u32,
}

impl Shift {
    /// `k` in `-31..=62`, where a shifted `i32` stays inside `i64`.
    pub fn new(k: i32) -> Option<Shift> {
        match k {
            1..=62 => Some(Shift {
                half: 1 << (k - 1),
                right: k as u32,
                left: 0,
            }),
            -31..=0 => Some(Shift {
                half: 0,
                right: 0,
                left: (-k) as u32,
            }),
            _ => None,
        }
    }

    /// `t` shifted (the caller keeps `t + half` and the left shift inside `i64`).
    #[inline(always)]
    pub fn apply(self, t: i64) -> i64 {
        ((t + self.half) >> self.right) << self.left
    }
}

/// `floor((2a + b) / (2b))`: `a / b` rounded half toward positive infinity. `b == 0` is an error.
#[inline]
pub fn div_round(a: i128, b: i128) -> Result<i128, ExecError> {
    if b == 0 {
        return Err(ExecError::DivisionByZero);
    }
    let (a, b) = if b < 0 { (-a, -b) } else { (a, b) };
    // operands are bounded by validation, but stay total: an intermediate beyond i128 cannot fit i32
    let num = a
        .checked_mul(2)
        .and_then(|x| x.checked_add(b))
        .ok_or(ExecError::Overflow)?;
    let den = b.checked_mul(2).ok_or(ExecError::Overflow)?;
    Ok(num.div_euclid(den))
}

/// [`div_round`] in `i64` for `|a| < 2^61` and `0 < b < 2^61` (the caller checks); a power-of-two `b`
/// is a rounding shift.
#[inline]
pub fn div_round_i64(a: i64, b: i64) -> i64 {
    if b & (b - 1) == 0 {
        let p = b.trailing_zeros();
        if p == 0 {
            return a;
        }
        return (a + (1 << (p - 1))) >> p;
    }
    (2 * a + b).div_euclid(2 * b)
}

/// `div_round` choosing the `i64` path when the operands allow it.
#[inline]
pub fn div_round_fast(a: i128, b: i128) -> Result<i128, ExecError> {
    const LIM: i128 = 1 << 61;
    if b > 0 && b < LIM && a > -LIM && a < LIM {
        Ok(div_round_i64(a as i64, b as i64) as i128)
    } else {
        div_round(a, b)
    }
}

/// `floor(sqrt(n))` for `n >= 0`.
pub fn isqrt_floor(n: u128) -> u128 {
    if n < 2 {
        return n;
    }
    // Newton's method from an over-estimate; converges monotonically downwards.
    let bits = 128 - n.leading_zeros();
    let mut x: u128 = 1u128 << bits.div_ceil(2);
    loop {
        let y = (x + n / x) >> 1;
        if y >= x {
            return x;
        }
        x = y;
    }
}

/// `floor(sqrt(n) + 1/2)`, the square root rounded half up, for `n >= 0`.
pub fn isqrt_round(n: u128) -> u128 {
    let r = isqrt_floor(n);
    // sqrt(n) >= r + 1/2  <=>  n >= r^2 + r + 1/4  <=>  n > r^2 + r  (n integer)
    if n > r * r + r {
        r + 1
    } else {
        r
    }
}

/// Check that `x` fits the canonical element type `i32`.
#[inline]
pub fn fit(x: i128) -> Result<i32, ExecError> {
    i32::try_from(x).map_err(|_| ExecError::Overflow)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn rounding_rule() {
        assert_eq!(rshift(5, 1), 3); // 2.5 -> 3
        assert_eq!(rshift(-5, 1), -2); // -2.5 -> -2
        assert_eq!(rshift(-6, 2), -1); // -1.5 -> -1
        assert_eq!(rshift(7, 2), 2); // 1.75 -> 2
        assert_eq!(rshift(3, -2), 12);
        assert_eq!(div_round(5, 2).unwrap(), 3);
        assert_eq!(div_round(-5, 2).unwrap(), -2);
        assert_eq!(div_round(5, -2).unwrap(), -2);
        assert_eq!(div_round(7, 3).unwrap(), 2);
        assert!(div_round(1, 0).is_err());
        assert_eq!(isqrt_round(2), 1);
        assert_eq!(isqrt_round(3), 2);
        assert_eq!(isqrt_round(6), 2);
        assert_eq!(isqrt_round(7), 3);
    }

    proptest! {
        #[test]
        fn rshift_matches_definition(x in -(1i64 << 50)..(1i64 << 50), k in 1i32..40) {
            let want = ((x as f64) / 2f64.powi(k) + 0.5).floor() as i128;
            prop_assert_eq!(rshift(x as i128, k), want);
            prop_assert_eq!(rshift64(x, k as u32) as i128, want);
        }

        #[test]
        fn isqrt_is_exact(n in any::<u64>()) {
            let r = isqrt_floor(n as u128);
            prop_assert!(r * r <= n as u128 && (r + 1) * (r + 1) > n as u128);
        }

        #[test]
        fn fast_division_equals_exact(a in any::<i64>(), b in 1i64..(1 << 40), p in 0u32..40) {
            let a = (a >> 3) as i128;
            prop_assert_eq!(div_round_fast(a, b as i128).unwrap(), div_round(a, b as i128).unwrap());
            let pow = 1i128 << p;
            prop_assert_eq!(div_round_fast(a, pow).unwrap(), div_round(a, pow).unwrap());
        }

        #[test]
        fn div_round_matches_definition(a in -1_000_000i64..1_000_000, b in 1i64..5000) {
            let q = div_round(a as i128, b as i128).unwrap();
            // q is the unique integer with q - 1/2 <= a/b < q + 1/2
            prop_assert!(2 * q * b as i128 - b as i128 <= 2 * a as i128);
            prop_assert!(2 * (a as i128) < 2 * q * b as i128 + b as i128);
        }
    }
}
