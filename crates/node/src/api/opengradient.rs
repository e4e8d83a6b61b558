//! OpenGradient SDK compatibility: the SDK's fixed-point input tensors to Verity inputs, and a verified
//! result in the shape its `_get_inference_result_from_node` reads.

use serde_json::{json, Value};
use verity_chain::bindings::OpenGradientEvents::ModelInput;

use crate::error::ApiError;
use crate::tensors::NamedTensor;

/// `value · 10^-decimals` as the nearest float32 (widened to f64): the SDK writes float32 tensors as their
/// shortest decimal form, and model inputs are float32, so rounding the decimal straight to float32
/// recovers the exact value the client had. Rust's decimal parsing rounds correctly, so every machine gets
/// the same bits.
pub fn fixed_to_f64(value: i128, decimals: i128) -> Result<f64, ApiError> {
    if !(0..=60).contains(&decimals) {
        return Err(ApiError::unprocessable(
            "bad_input",
            format!("decimals {decimals} out of range 0..=60"),
        ));
    }
    let v = format!("{value}e-{decimals}")
        .parse::<f32>()
        .map_err(|e| ApiError::unprocessable("bad_input", format!("bad number: {e}")))?;
    if !v.is_finite() {
        return Err(ApiError::unprocessable(
            "value_out_of_range",
            format!("{value}e-{decimals} is not a finite float32"),
        ));
    }
    Ok(v as f64)
}

/// The float32 nearest to `value · 10^-decimals` (ties to even), exactly, as `(negative, M, e)` with the
/// value `±M · 2^e`, `2^23 ≤ M < 2^24`; `Tiny` below 2^-100, where `Zero` says whether it rounds to 0.
#[derive(Debug, PartialEq)]
enum F32 {
    Zero,
    /// Not zero, below 2^-100 (a subnormal, or a normal this small): `floor(x·2^s + 1/2)` is 0 for every
    /// allowed scale.
    Tiny,
    Normal(bool, u32, i32),
}

fn nearest_f32(value: i128, decimals: i128) -> Result<F32, String> {
    use verity_chain::U256;
    let bits = |x: U256| 256 - x.leading_zeros() as i32;
    let n = U256::from(value.unsigned_abs());
    let d = U256::from(10u8).pow(U256::from(decimals as u64));
    if n.is_zero() {
        return Ok(F32::Zero);
    }
    if (n << 100usize) < d {
        // at or below 2^-150 a float32 is 0 (the tie at 2^-150 goes to the even 0)
        let zero = bits(n) + 150 <= 256 && (n << 150usize) <= d;
        return Ok(if zero { F32::Zero } else { F32::Tiny });
    }
    // floor(n·2^-e / d) with its remainder and denominator
    let div = |e: i32| {
        let (num, den) = if e <= 0 {
            (n << (-e) as usize, d)
        } else {
            (n, d << e as usize)
        };
        (num / den, num % den, den)
    };
    let mut e = bits(n) - bits(d) - 24;
    let (mut m, mut rem, mut den) = div(e);
    while m >= U256::from(1u32 << 24) {
        e += 1;
        (m, rem, den) = div(e);
    }
    while m < U256::from(1u32 << 23) {
        e -= 1;
        (m, rem, den) = div(e);
    }
    let twice = rem * U256::from(2u8);
    if twice > den || (twice == den && m.bit(0)) {
        m += U256::from(1u8);
    }
    if m == U256::from(1u32 << 24) {
        m = U256::from(1u32 << 23);
        e += 1;
    }
    if e > 104 {
        return Err(format!("{value}e-{decimals} is not a finite float32"));
    }
    Ok(F32::Normal(value < 0, m.to::<u32>(), e))
}

/// An OpenGradient number `value · 10^-decimals` as a model input's canonical integer, computed exactly —
/// the rule `OpenGradientInference.quantize` applies on-chain, so a node and the front door hash an
/// OpenGradient input alike. The number is first the float32 nearest to it (OpenGradient inputs are
/// float32 tensors, which the SDK writes as their shortest decimals), then, for a real input,
/// `floor(x · 2^scale + 1/2)` (the engine's rounding), or for an integer input `x` itself (refused if not
/// whole or beyond ±(2^31 − 1)). `decimals` must be in 0…60 and a real input's scale in −32…64. Equal to
/// `fixed_to_f64` followed by `verity_engine::io::quantize_value` wherever both are defined.
pub fn quantize_decimal(value: i128, decimals: i128, scale: i8, int: bool) -> Result<i32, String> {
    if !(0..=60).contains(&decimals) {
        return Err(format!("decimals {decimals} out of 0..60"));
    }
    if !int && !(-32..=64).contains(&scale) {
        return Err(format!("scale {scale} out of -32..64"));
    }
    let out_of_range =
        || format!("{value}e-{decimals} is out of the 32-bit range at scale 2^-{scale}");
    let (neg, m, e) = match nearest_f32(value, decimals)? {
        F32::Zero => return Ok(0),
        F32::Tiny if int => return Err(format!("{value}e-{decimals} is not a whole number")),
        F32::Tiny => return Ok(0),
        F32::Normal(neg, m, e) => (neg, m as u128, e),
    };
    let signed = |mag: u128| -> Result<i32, String> {
        let limit: u128 = if neg && !int { 1 << 31 } else { (1 << 31) - 1 };
        if mag > limit {
            return Err(out_of_range());
        }
        Ok(if neg {
            (mag as i64).wrapping_neg() as i32
        } else {
            mag as i32
        })
    };
    if int {
        if e >= 0 {
            return if e > 8 {
                Err(out_of_range())
            } else {
                signed(m << e)
            };
        }
        let sh = (-e) as u32;
        if sh >= 24 || m % (1u128 << sh) != 0 {
            return Err(format!("{value}e-{decimals} is not a whole number"));
        }
        return signed(m >> sh);
    }
    let t = e + scale as i32;
    if t >= 0 {
        return if t > 8 {
            Err(out_of_range())
        } else {
            signed(m << t)
        };
    }
    // x·2^s = M / 2^k with k = −t ≥ 1
    let k = (-t) as u32;
    if k > 120 {
        // |x·2^s| < 2^24 · 2^-120: floor(±x + 1/2) = 0
        return Ok(0);
    }
    let (a, half, unit) = (2 * m, 1u128 << k, 1u128 << (k + 1));
    if !neg {
        return signed((a + half) >> (k + 1));
    }
    // floor(−y + 1/2) = −ceil(y − 1/2) = −ceil((2M − 2^k) / 2^(k+1)), 0 when 2M ≤ 2^k
    if a <= half {
        return Ok(0);
    }
    signed((a - half + unit - 1) >> (k + 1))
}

/// The SDK's `ModelInput` as named tensors. String tensors are refused (canonical models take numbers).
pub fn input_tensors(input: &ModelInput, max_elements: u64) -> Result<Vec<NamedTensor>, ApiError> {
    if let Some(s) = input.strings.first() {
        return Err(ApiError::unprocessable(
            "unsupported_dtype",
            format!(
                "string input '{}' is not supported by canonical models",
                s.name
            ),
        ));
    }
    let mut out = Vec::with_capacity(input.numbers.len());
    for t in &input.numbers {
        let shape: Vec<usize> = t.shape.iter().map(|&d| d as usize).collect();
        let n = shape
            .iter()
            .try_fold(1u64, |a, &d| a.checked_mul(d as u64))
            .unwrap_or(u64::MAX);
        if n > max_elements {
            return Err(ApiError::too_large(format!(
                "input '{}': {n} elements is over the limit",
                t.name
            )));
        }
        if n != t.values.len() as u64 {
            return Err(ApiError::unprocessable(
                "shape_mismatch",
                format!(
                    "input '{}': shape {:?} needs {n} values, {} given",
                    t.name,
                    shape,
                    t.values.len()
                ),
            ));
        }
        let data = t
            .values
            .iter()
            .map(|v| fixed_to_f64(v.value, v.decimals))
            .collect::<Result<Vec<_>, _>>()?;
        out.push(NamedTensor {
            name: t.name.clone(),
            shape,
            data,
            decimals: Some(t.values.iter().map(|v| (v.value, v.decimals)).collect()),
        });
    }
    Ok(out)
}

/// A canonical integer `q · 2^-scale` exactly as (value, decimals): `q · 5^scale · 10^-scale` for positive
/// scales, `q · 2^-scale` with zero decimals otherwise.
pub fn exact_fixed(q: i32, scale: i8) -> (i128, i128) {
    if scale >= 0 {
        (q as i128 * 5i128.pow(scale as u32), scale as i128)
    } else {
        (q as i128 * (1i128 << (-scale as u32).min(64)), 0)
    }
}

/// The node's answer for the SDK: `{"inference_results": [base64(JSON)]}` where the JSON holds the
/// outputs under the key its mode reads.
pub fn result_document(outputs: &[(String, Vec<u64>, i8, Vec<i32>)], og_mode: u8) -> Value {
    use base64::Engine;
    let numbers: Vec<Value> = outputs
        .iter()
        .map(|(name, shape, scale, q)| {
            let values: Vec<Value> = q
                .iter()
                .map(|&x| {
                    let (v, d) = exact_fixed(x, *scale);
                    json!({"value": v, "decimals": d})
                })
                .collect();
            json!({"name": name, "shape": shape, "values": values})
        })
        .collect();
    let model_output =
        json!({"numbers": numbers, "strings": [], "jsons": [], "is_simulation_result": false});
    let inner = match og_mode {
        1 => json!({"ZkmlResult": {"model_output": model_output}}),
        2 => {
            json!({"TeeNodeResult": {"Response": {"VanillaResponse": {"model_output": model_output}}}})
        }
        _ => json!({"VanillaResult": {"model_output": model_output}}),
    };
    let text = json!({"InferenceResult": inner}).to_string();
    json!({"inference_results": [base64::engine::general_purpose::STANDARD.encode(text)]})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_decimal_quantization_is_the_engines_rounding_without_the_float() {
        let q = |v: i128, d: i128, s: i8| quantize_decimal(v, d, s, false);
        // halves round up, also below zero (floor(x + 1/2))
        assert_eq!(q(15, 1, 0), Ok(2));
        assert_eq!(q(-15, 1, 0), Ok(-1));
        assert_eq!(q(-25, 1, 0), Ok(-2));
        assert_eq!(q(-26, 1, 0), Ok(-3));
        assert_eq!(q(-5, 1, 0), Ok(0));
        assert_eq!(q(-4, 1, 0), Ok(0));
        assert_eq!(q(15, 1, 4), Ok(24));
        assert_eq!(q(-2, 0, 4), Ok(-32));
        assert_eq!(q(3, 0, -1), Ok(2)); // 1.5 → 2
        assert_eq!(q(-3, 0, -1), Ok(-1)); // −1.5 → −1
                                          // the 32-bit range: −2^31 is a real input's, not an integer input's
        assert_eq!(q(-(1 << 31), 0, 0), Ok(i32::MIN));
        assert!(q(1 << 31, 0, 0).is_err());
        assert!(quantize_decimal(-(1 << 31), 0, 0, true).is_err());
        assert_eq!(quantize_decimal(-7000, 3, 5, true), Ok(-7));
        assert!(quantize_decimal(7001, 3, 0, true).is_err());
        assert!(q(1, 61, 0).is_err() && q(1, -1, 0).is_err() && q(1, 0, 65).is_err());
        // huge numerators and denominators stay exact
        assert_eq!(q(i128::MAX, 60, 64), Ok(0));
        assert_eq!(q(i128::MIN, 38, 0), Ok(-2));
        // it equals the node's float path (nearest float32, then the engine's rounding) on the float32
        // values the SDK sends as their shortest decimals, and on arbitrary decimals
        let float_path = |v: i128, d: i128, s: i8| -> Option<i32> {
            verity_engine::io::quantize_value(fixed_to_f64(v, d).ok()?, s).ok()
        };
        let mut y: u64 = 0x2545f4914f6cdd1d;
        for _ in 0..50000 {
            y ^= y << 13;
            y ^= y >> 7;
            y ^= y << 17;
            let digits = (y >> 3) % 19 + 1;
            let v = ((y >> 8) % 10u64.pow(digits as u32)) as i128 * if y & 1 == 0 { 1 } else { -1 };
            let d = ((y >> 50) % 25) as i128;
            let s = [0i8, 3, 8, 12, 16, 24][((y >> 40) % 6) as usize];
            assert_eq!(
                q(v, d, s).ok(),
                float_path(v, d, s),
                "{v}e-{d} at scale {s}"
            );
        }
        let mut x: u64 = 0x9e3779b97f4a7c15;
        for _ in 0..20000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let f =
                f32::from_bits((x as u32 & 0x807f_ffff) | (((x >> 40) as u32 % 20 + 117) << 23));
            let text = format!("{f:e}");
            let (mant, exp) = text.split_once('e').unwrap();
            let exp: i32 = exp.parse().unwrap();
            let frac = mant.split_once('.').map_or(0, |p| p.1.len()) as i32;
            let digits: i128 = mant.replace('.', "").parse().unwrap();
            let (value, decimals) = if frac - exp >= 0 {
                (digits, (frac - exp) as i128)
            } else {
                (digits * 10i128.pow((exp - frac) as u32), 0)
            };
            for s in [0i8, 4, 8, 12, 16] {
                assert_eq!(
                    q(value, decimals, s).unwrap(),
                    verity_engine::io::quantize_value(f as f64, s).unwrap(),
                    "{f} ({value}e-{decimals}) at scale {s}"
                );
            }
        }
    }

    #[test]
    fn the_front_doors_input_hash_golden() {
        // OpenGradient.t.sol hashes x = [1.5, −2] (as (15, 1), (−2, 0)) for an input of 2 elements at
        // scale 4 to this value: the canonical hash of [24, −32].
        let q: Vec<i32> = [(15, 1), (-2, 0)]
            .iter()
            .map(|&(v, d)| quantize_decimal(v, d, 4, false).unwrap())
            .collect();
        assert_eq!(q, vec![24, -32]);
        assert_eq!(
            verity_engine::commit::tensors_hash(&[q]).to_string(),
            "0x0ed35ea413063455e485fdafb3b373be31f93d7a6c3041621d8cb39a7ec66369"
        );
        // and a model with a real input "x" (3 elements, scale 16) and an integer input "ids" (2),
        // given in the other order, with a value float32 rounds (1022.9994 is 1022.99938964…)
        let x: Vec<i32> = [(10229994, 4), (-26, 1), (15, 1)]
            .iter()
            .map(|&(v, d)| quantize_decimal(v, d, 16, false).unwrap())
            .collect();
        assert_eq!(x, vec![67043288, -170394, 98304]);
        let ids: Vec<i32> = [(7000, 3), (-12, 0)]
            .iter()
            .map(|&(v, d)| quantize_decimal(v, d, 0, true).unwrap())
            .collect();
        assert_eq!(
            verity_engine::commit::tensors_hash(&[x, ids]).to_string(),
            "0x8692c3f8c94f9ebcf58665523e7975284dbfcd31668a519f185189734dcba067"
        );
    }

    #[test]
    fn fixed_point_round_trips_exactly() {
        assert_eq!(fixed_to_f64(15, 1).unwrap(), 1.5);
        assert_eq!(fixed_to_f64(-2, 0).unwrap(), -2.0);
        assert_eq!(fixed_to_f64(1, 1).unwrap(), 0.1f32 as f64);
        // The shortest float32 form of a value maps back to exactly that float32.
        let x = 0.937_838_26_f32;
        assert_eq!(fixed_to_f64(93783826, 8).unwrap(), x as f64);
        assert_eq!(fixed_to_f64(i128::MAX, 0).unwrap(), i128::MAX as f32 as f64);
        assert!(fixed_to_f64(1, 99).is_err());
        // q · 2^-s as (value, decimals) is exact.
        for (q, s) in [(3, 1), (-7, 13), (i32::MAX, 20), (5, -3), (0, 8)] {
            let (v, d) = exact_fixed(q, s);
            let back: f64 = format!("{v}e-{d}").parse().unwrap();
            assert_eq!(back, q as f64 * 2f64.powi(-(s as i32)), "{q} {s}");
        }
    }
}
