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
