//! Reading tensors from JSON and `.npy`, quantizing them onto a model's inputs, and dequantizing outputs.

use crate::error::ExecError;
use crate::ir::{InputKind, Model};

/// A real-valued tensor as given by a user.
#[derive(Clone, Debug, PartialEq)]
pub struct FloatTensor {
    /// Shape.
    pub shape: Vec<usize>,
    /// Row-major values.
    pub data: Vec<f64>,
}

/// Errors reading tensor files.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TensorIoError {
    /// Not valid JSON, or not a tensor layout Verity reads.
    #[error("bad tensor JSON: {0}")]
    Json(String),
    /// Not a `.npy` file Verity reads.
    #[error("bad .npy data: {0}")]
    Npy(String),
}

fn nested(
    v: &serde_json::Value,
    shape: &mut Vec<usize>,
    depth: usize,
    out: &mut Vec<f64>,
) -> Result<(), String> {
    match v {
        serde_json::Value::Array(items) => {
            if depth == shape.len() {
                if !out.is_empty() && depth > 0 {
                    return Err("ragged nested array".into());
                }
                shape.push(items.len());
            } else if shape[depth] != items.len() {
                return Err("ragged nested array".into());
            }
            for it in items {
                nested(it, shape, depth + 1, out)?;
            }
            Ok(())
        }
        serde_json::Value::Number(n) => {
            if depth != shape.len() {
                return Err("ragged nested array".into());
            }
            out.push(n.as_f64().ok_or("number out of range")?);
            Ok(())
        }
        serde_json::Value::String(s) if matches!(s.as_str(), "NaN" | "Infinity" | "-Infinity") => {
            out.push(s.parse::<f64>().unwrap_or(f64::NAN));
            Ok(())
        }
        _ => Err("tensor elements must be numbers".into()),
    }
}

/// Parse one tensor from JSON: `{"shape": [...], "data": [...]}` or a (nested) array.
pub fn tensor_from_json(v: &serde_json::Value) -> Result<FloatTensor, TensorIoError> {
    if let Some(obj) = v.as_object() {
        let shape = obj
            .get("shape")
            .and_then(|s| s.as_array())
            .ok_or_else(|| {
                TensorIoError::Json("tensor object needs \"shape\" and \"data\"".into())
            })?
            .iter()
            .map(|d| {
                d.as_u64().map(|d| d as usize).ok_or_else(|| {
                    TensorIoError::Json("shape must hold non-negative integers".into())
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let data_v = obj
            .get("data")
            .ok_or_else(|| TensorIoError::Json("tensor object needs \"data\"".into()))?;
        let mut data = Vec::new();
        let mut flat_shape = Vec::new();
        nested(data_v, &mut flat_shape, 0, &mut data).map_err(TensorIoError::Json)?;
        let n = shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
        if n != Some(data.len()) {
            return Err(TensorIoError::Json(format!(
                "shape {shape:?} needs {n:?} values, data has {}",
                data.len()
            )));
        }
        return Ok(FloatTensor { shape, data });
    }
    let mut shape = Vec::new();
    let mut data = Vec::new();
    nested(v, &mut shape, 0, &mut data).map_err(TensorIoError::Json)?;
    Ok(FloatTensor { shape, data })
}

/// Parse a JSON document of named inputs: `{"name": tensor, ...}`; a single bare tensor is accepted for
/// one-input models. Returns the tensors in the model's input order.
pub fn inputs_from_json(model: &Model, text: &str) -> Result<Vec<FloatTensor>, TensorIoError> {
    let v: serde_json::Value =
        serde_json::from_str(text).map_err(|e| TensorIoError::Json(e.to_string()))?;
    let is_tensor_obj = v
        .as_object()
        .is_some_and(|o| o.contains_key("shape") && o.contains_key("data"));
    if v.is_array() || is_tensor_obj {
        if model.inputs.len() != 1 {
            return Err(TensorIoError::Json(format!(
                "the model has {} inputs; give them as an object keyed by input name",
                model.inputs.len()
            )));
        }
        return Ok(vec![tensor_from_json(&v)?]);
    }
    let obj = v
        .as_object()
        .ok_or_else(|| TensorIoError::Json("expected an object keyed by input name".into()))?;
    for k in obj.keys() {
        if !model.inputs.iter().any(|i| &i.name == k) {
            return Err(TensorIoError::Json(format!(
                "the model has no input named '{k}'"
            )));
        }
    }
    model
        .inputs
        .iter()
        .map(|i| {
            obj.get(&i.name)
                .ok_or_else(|| TensorIoError::Json(format!("missing input '{}'", i.name)))
                .and_then(tensor_from_json)
        })
        .collect()
}

/// Parse a `.npy` file (format 1.0–3.0, C order; f2/f4/f8, i1–i8, u1–u8, bool).
pub fn tensor_from_npy(bytes: &[u8]) -> Result<FloatTensor, TensorIoError> {
    let err = |m: &str| TensorIoError::Npy(m.to_string());
    if bytes.len() < 10 || &bytes[..6] != b"\x93NUMPY" {
        return Err(err("missing the \\x93NUMPY magic"));
    }
    let (hlen, start): (usize, usize) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        2 | 3 if bytes.len() >= 12 => (
            u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
            12,
        ),
        _ => return Err(err("unsupported format version")),
    };
    let header = bytes
        .get(start..start.saturating_add(hlen))
        .ok_or_else(|| err("truncated header"))?;
    let header = std::str::from_utf8(header).map_err(|_| err("header is not text"))?;
    let field = |key: &str| -> Option<&str> {
        let at = header.find(&format!("'{key}'"))? + key.len() + 2;
        let rest = header[at..].trim_start().strip_prefix(':')?.trim_start();
        Some(rest)
    };
    let descr = field("descr").ok_or_else(|| err("header lacks descr"))?;
    let descr = descr
        .strip_prefix('\'')
        .and_then(|d| d.split('\'').next())
        .ok_or_else(|| err("bad descr"))?;
    let fortran = field("fortran_order").ok_or_else(|| err("header lacks fortran_order"))?;
    if fortran.starts_with("True") {
        return Err(err("Fortran-ordered arrays are not supported"));
    }
    let shape_s = field("shape").ok_or_else(|| err("header lacks shape"))?;
    let shape_s = shape_s
        .strip_prefix('(')
        .and_then(|s| s.split(')').next())
        .ok_or_else(|| err("bad shape"))?;
    let shape = shape_s
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse::<usize>().map_err(|_| err("bad shape")))
        .collect::<Result<Vec<_>, _>>()?;
    let n = shape
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .ok_or_else(|| err("shape too large"))?;
    let body = &bytes[start + hlen..];
    let (endian, kind) = descr.split_at(1);
    let little = match endian {
        "<" | "|" | "=" => true,
        ">" => false,
        _ => return Err(err("bad byte order")),
    };
    let width: usize = kind
        .get(1..)
        .and_then(|w| w.parse().ok())
        .ok_or_else(|| err("bad dtype"))?;
    if body.len() != n.saturating_mul(width) {
        return Err(err(&format!(
            "shape {shape:?} of {descr} needs {} data bytes, file has {}",
            n * width,
            body.len()
        )));
    }
    let mut data = Vec::with_capacity(n);
    for c in body.chunks_exact(width.max(1)) {
        let mut b = [0u8; 8];
        if little {
            b[..width].copy_from_slice(c);
        } else {
            for (i, x) in c.iter().rev().enumerate() {
                b[i] = *x;
            }
        }
        let sign_extend = |w: usize| -> i64 {
            let v = u64::from_le_bytes(b);
            let sh = 64 - 8 * w as u32;
            ((v << sh) as i64) >> sh
        };
        let v = match (&kind[..1], width) {
            ("f", 4) => f32::from_le_bytes([b[0], b[1], b[2], b[3]]) as f64,
            ("f", 8) => f64::from_le_bytes(b),
            ("f", 2) => half_to_f64(u16::from_le_bytes([b[0], b[1]])),
            ("i", 1 | 2 | 4 | 8) => sign_extend(width) as f64,
            ("u", 1 | 2 | 4 | 8) | ("b", 1) => u64::from_le_bytes(b) as f64,
            _ => return Err(err(&format!("unsupported dtype {descr}"))),
        };
        data.push(v);
    }
    Ok(FloatTensor { shape, data })
}

fn half_to_f64(h: u16) -> f64 {
    let sign = if h >> 15 == 1 { -1.0 } else { 1.0 };
    let exp = ((h >> 10) & 0x1f) as i32;
    let frac = (h & 0x3ff) as f64;
    sign * match exp {
        0 => frac * 2f64.powi(-24),
        31 if frac == 0.0 => f64::INFINITY,
        31 => f64::NAN,
        e => (1.0 + frac / 1024.0) * 2f64.powi(e - 15),
    }
}

/// Write a float tensor as a `.npy` (little-endian f64) file.
pub fn tensor_to_npy(t: &FloatTensor) -> Vec<u8> {
    let shape = match t.shape.len() {
        1 => format!("({},)", t.shape[0]),
        _ => format!(
            "({})",
            t.shape
                .iter()
                .map(|d| d.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    let mut header = format!("{{'descr': '<f8', 'fortran_order': False, 'shape': {shape}, }}");
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    for v in &t.data {
        out.extend_from_slice(&v.to_le_bytes());
    }
    out
}

/// Quantize one real value at `scale` fractional bits: `floor(x * 2^scale + 1/2)`, exact in `f64`.
pub fn quantize_value(x: f64, scale: i8) -> Result<i32, String> {
    if !x.is_finite() {
        return Err(format!("{x} is not a finite number"));
    }
    let v = (x * 2f64.powi(scale as i32) + 0.5).floor();
    if v < i32::MIN as f64 || v > i32::MAX as f64 {
        return Err(format!(
            "{x} is outside the representable range ±{} at scale 2^-{scale}",
            2f64.powi(31 - scale as i32)
        ));
    }
    Ok(v as i32)
}

/// Quantize user inputs onto the model's inputs (shapes must match exactly; a missing leading 1 is tolerated).
pub fn quantize_inputs(model: &Model, inputs: &[FloatTensor]) -> Result<Vec<Vec<i32>>, ExecError> {
    if inputs.len() != model.inputs.len() {
        return Err(ExecError::InputCount {
            expected: model.inputs.len(),
            got: inputs.len(),
        });
    }
    model
        .inputs
        .iter()
        .zip(inputs)
        .map(|(spec, t)| {
            let want: Vec<usize> = spec.shape.iter().map(|&d| d as usize).collect();
            let squeezed: Vec<usize> = want.iter().copied().skip_while(|&d| d == 1).collect();
            let got_sq: Vec<usize> = t.shape.iter().copied().skip_while(|&d| d == 1).collect();
            if t.shape != want && squeezed != got_sq {
                return Err(ExecError::InputShape {
                    name: spec.name.clone(),
                    expected: want,
                    got: t.shape.clone(),
                });
            }
            t.data
                .iter()
                .enumerate()
                .map(|(i, &x)| {
                    let bad = |what: String| ExecError::InputValue {
                        name: spec.name.clone(),
                        index: i,
                        what,
                    };
                    match spec.kind {
                        InputKind::Int => {
                            if !x.is_finite() || x.fract() != 0.0 || x.abs() > i32::MAX as f64 {
                                return Err(bad(format!("{x} is not a 32-bit integer")));
                            }
                            Ok(x as i32)
                        }
                        InputKind::Fixed => quantize_value(x, spec.scale).map_err(bad),
                    }
                })
                .collect()
        })
        .collect()
}

/// `q * 2^-scale` (exact).
pub fn dequantize(q: &[i32], scale: i8) -> Vec<f64> {
    let f = 2f64.powi(-(scale as i32));
    q.iter().map(|&v| v as f64 * f).collect()
}
