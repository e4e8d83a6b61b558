//! Decoding inference requests from the network: the native JSON form, the KServe v2 JSON form, and the
//! KServe binary tensor extension (a JSON header followed by raw little-endian tensor bytes). Every
//! function here takes untrusted bytes and returns a [`TensorError`], never panics.

use serde_json::Value;
use verity_core::Hash;

/// What is wrong with a request's tensors.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TensorError {
    /// Not parseable (HTTP 400).
    #[error("{0}")]
    Malformed(String),
    /// Over a configured size limit (HTTP 413).
    #[error("{0}")]
    TooLarge(String),
    /// Well-formed but not what the model takes (HTTP 422).
    #[error("{0}")]
    Unprocessable(String),
}

/// One decoded input tensor.
#[derive(Clone, Debug, PartialEq)]
pub struct NamedTensor {
    /// Input name.
    pub name: String,
    /// Declared shape.
    pub shape: Vec<usize>,
    /// Row-major values.
    pub data: Vec<f64>,
    /// The same values as exact decimals `(value, decimals)` — `value · 10^-decimals` — when they came
    /// as such (an OpenGradient request): quantized exactly, as the front door hashes them on-chain.
    pub decimals: Option<Vec<(i128, i128)>>,
}

/// An output the client asked for (KServe `outputs`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestedOutput {
    /// Output name.
    pub name: String,
    /// Return it in the binary extension.
    pub binary: bool,
}

/// A decoded inference request.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct InferRequest {
    /// Inputs as sent (order as sent).
    pub inputs: Vec<NamedTensor>,
    /// The request ID to bind the receipt to, if the client chose one.
    pub request_id: Option<Hash>,
    /// KServe `id`, echoed back.
    pub id: Option<String>,
    /// Requested outputs (KServe); `None` = all.
    pub outputs: Option<Vec<RequestedOutput>>,
    /// KServe `parameters.binary_data_output`.
    pub binary_output: bool,
    /// Native `"mode"`: `"zk"` asks for a proof with the result.
    pub zk: bool,
}

/// Parse the native `"mode"` field.
pub fn parse_mode(v: Option<&Value>) -> Result<bool, TensorError> {
    match v {
        None | Some(Value::Null) => Ok(false),
        Some(Value::String(s)) if s == "zk" => Ok(true),
        Some(Value::String(s)) if s == "vanilla" => Ok(false),
        Some(other) => Err(TensorError::Malformed(format!(
            "mode must be \"vanilla\" or \"zk\", got {other}"
        ))),
    }
}

/// Element size in bytes of a KServe datatype, or `None` if Verity does not take it.
pub fn dtype_size(dt: &str) -> Option<usize> {
    Some(match dt {
        "BOOL" | "INT8" | "UINT8" => 1,
        "INT16" | "UINT16" | "FP16" | "BF16" => 2,
        "INT32" | "UINT32" | "FP32" => 4,
        "INT64" | "UINT64" | "FP64" => 8,
        _ => return None,
    })
}

fn f16_to_f64(h: u16) -> f64 {
    let sign = if h & 0x8000 != 0 { -1.0 } else { 1.0 };
    let exp = ((h >> 10) & 0x1f) as i32;
    let frac = (h & 0x3ff) as f64;
    match exp {
        0 => sign * frac * 2f64.powi(-24),
        31 if frac == 0.0 => sign * f64::INFINITY,
        31 => f64::NAN,
        e => sign * (1.0 + frac / 1024.0) * 2f64.powi(e - 15),
    }
}

/// Decode raw little-endian tensor bytes of a KServe datatype.
pub fn decode_raw(dt: &str, bytes: &[u8]) -> Result<Vec<f64>, TensorError> {
    let size = dtype_size(dt).ok_or_else(|| {
        TensorError::Unprocessable(format!(
            "datatype {dt} is not supported (numeric and BOOL only)"
        ))
    })?;
    if !bytes.len().is_multiple_of(size) {
        return Err(TensorError::Malformed(format!(
            "{} bytes is not a whole number of {dt} elements",
            bytes.len()
        )));
    }
    let out = bytes.chunks_exact(size).map(|c| {
        let mut b = [0u8; 8];
        b[..size].copy_from_slice(c);
        match dt {
            "BOOL" => (c[0] != 0) as u8 as f64,
            "INT8" => c[0] as i8 as f64,
            "UINT8" => c[0] as f64,
            "INT16" => i16::from_le_bytes([c[0], c[1]]) as f64,
            "UINT16" => u16::from_le_bytes([c[0], c[1]]) as f64,
            "FP16" => f16_to_f64(u16::from_le_bytes([c[0], c[1]])),
            "BF16" => f32::from_bits((u16::from_le_bytes([c[0], c[1]]) as u32) << 16) as f64,
            "INT32" => i32::from_le_bytes([b[0], b[1], b[2], b[3]]) as f64,
            "UINT32" => u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as f64,
            "FP32" => f32::from_le_bytes([b[0], b[1], b[2], b[3]]) as f64,
            "INT64" => i64::from_le_bytes(b) as f64,
            "UINT64" => u64::from_le_bytes(b) as f64,
            _ => f64::from_le_bytes(b),
        }
    });
    Ok(out.collect())
}

fn shape_of(v: Option<&Value>, what: &str, max: u64) -> Result<(Vec<usize>, usize), TensorError> {
    let arr = v.and_then(Value::as_array).ok_or_else(|| {
        TensorError::Malformed(format!(
            "{what}: \"shape\" must be an array of non-negative integers"
        ))
    })?;
    if arr.len() > 16 {
        return Err(TensorError::Unprocessable(format!(
            "{what}: more than 16 dimensions"
        )));
    }
    let mut shape = Vec::with_capacity(arr.len());
    let mut n: u64 = 1;
    for d in arr {
        let d = d.as_u64().ok_or_else(|| {
            TensorError::Malformed(format!("{what}: \"shape\" must hold non-negative integers"))
        })?;
        n = n.saturating_mul(d);
        shape.push(usize::try_from(d).unwrap_or(usize::MAX));
    }
    if n > max {
        return Err(TensorError::TooLarge(format!(
            "{what}: {n} elements is over the limit of {max}"
        )));
    }
    Ok((shape, n as usize))
}

fn flatten(v: &Value, out: &mut Vec<f64>, depth: usize, what: &str) -> Result<(), TensorError> {
    match v {
        Value::Array(items) if depth < 32 => {
            for it in items {
                flatten(it, out, depth + 1, what)?;
            }
            Ok(())
        }
        Value::Number(n) => {
            out.push(
                n.as_f64().ok_or_else(|| {
                    TensorError::Malformed(format!("{what}: number out of range"))
                })?,
            );
            Ok(())
        }
        Value::Bool(b) => {
            out.push(*b as u8 as f64);
            Ok(())
        }
        _ => Err(TensorError::Malformed(format!(
            "{what}: \"data\" must hold numbers (or booleans for BOOL)"
        ))),
    }
}

fn parse_request_id(v: Option<&Value>) -> Result<Option<Hash>, TensorError> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => s.parse::<Hash>().map(Some).map_err(|_| {
            TensorError::Malformed("request_id must be 32 bytes as 0x-prefixed hex".into())
        }),
        Some(_) => Err(TensorError::Malformed(
            "request_id must be 32 bytes as 0x-prefixed hex".into(),
        )),
    }
}

/// Decode a KServe v2 request: `json` is the whole body (JSON form) or the header (binary form), and
/// `binary` the bytes after the header (`None` for the JSON form).
pub fn decode_kserve(
    json: &[u8],
    binary: Option<&[u8]>,
    max_elements: u64,
) -> Result<InferRequest, TensorError> {
    let v: Value = serde_json::from_slice(json)
        .map_err(|e| TensorError::Malformed(format!("request is not valid JSON: {e}")))?;
    let obj = v
        .as_object()
        .ok_or_else(|| TensorError::Malformed("request must be a JSON object".into()))?;
    let params = obj.get("parameters").and_then(Value::as_object);
    let mut req = InferRequest {
        id: match obj.get("id") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(_) => return Err(TensorError::Malformed("\"id\" must be a string".into())),
        },
        request_id: parse_request_id(params.and_then(|p| p.get("request_id")))?,
        binary_output: params
            .and_then(|p| p.get("binary_data_output"))
            .and_then(Value::as_bool)
            .unwrap_or(false),
        ..Default::default()
    };
    let inputs = obj
        .get("inputs")
        .and_then(Value::as_array)
        .ok_or_else(|| TensorError::Malformed("request needs an \"inputs\" array".into()))?;
    let mut rest = binary.unwrap_or(&[]);
    for (i, t) in inputs.iter().enumerate() {
        req.inputs.push(kserve_input(
            i,
            t,
            binary.is_some(),
            &mut rest,
            max_elements,
        )?);
    }
    if !rest.is_empty() {
        return Err(TensorError::Malformed(format!(
            "{} bytes of binary data left over after the last input",
            rest.len()
        )));
    }
    if let Some(outs) = obj.get("outputs") {
        req.outputs = Some(requested_outputs(outs, req.binary_output)?);
    }
    Ok(req)
}

/// Input `i` of a KServe request, its values from `data` or (binary form, `has_binary`) from the front
/// of `rest`, which it then advances past them.
fn kserve_input(
    i: usize,
    t: &Value,
    has_binary: bool,
    rest: &mut &[u8],
    max_elements: u64,
) -> Result<NamedTensor, TensorError> {
    let t = t
        .as_object()
        .ok_or_else(|| TensorError::Malformed(format!("inputs[{i}] must be an object")))?;
    let name = t
        .get("name")
        .and_then(Value::as_str)
        .ok_or_else(|| TensorError::Malformed(format!("inputs[{i}] needs a \"name\"")))?
        .to_string();
    let what = format!("input '{name}'");
    let dt = t
        .get("datatype")
        .and_then(Value::as_str)
        .ok_or_else(|| TensorError::Malformed(format!("{what} needs a \"datatype\"")))?;
    if dtype_size(dt).is_none() {
        return Err(TensorError::Unprocessable(format!(
            "{what}: datatype {dt} is not supported (numeric and BOOL only)"
        )));
    }
    let (shape, n) = shape_of(t.get("shape"), &what, max_elements)?;
    let bin_size = t.get("parameters").and_then(|p| p.get("binary_data_size"));
    let data = match (t.get("data"), bin_size) {
        (Some(d), None) => {
            let mut out = Vec::with_capacity(n.min(1 << 20));
            flatten(d, &mut out, 0, &what)?;
            out
        }
        (None, Some(size)) => {
            let size = size.as_u64().ok_or_else(|| {
                TensorError::Malformed(format!("{what}: binary_data_size must be an integer"))
            })?;
            if !has_binary {
                return Err(TensorError::Malformed(format!(
                    "{what} has binary_data_size but the request has no Inference-Header-Content-Length"
                )));
            }
            if size > rest.len() as u64 {
                return Err(TensorError::Malformed(format!(
                    "{what}: binary_data_size {size} is past the end of the body"
                )));
            }
            let (now, after) = rest.split_at(size as usize);
            *rest = after;
            decode_raw(dt, now).map_err(|e| match e {
                TensorError::Malformed(m) => TensorError::Malformed(format!("{what}: {m}")),
                other => other,
            })?
        }
        (Some(_), Some(_)) => {
            return Err(TensorError::Malformed(format!(
                "{what} has both \"data\" and binary_data_size"
            )))
        }
        (None, None) => return Err(TensorError::Malformed(format!("{what} has no \"data\""))),
    };
    if data.len() != n {
        return Err(TensorError::Malformed(format!(
            "{what}: shape {shape:?} needs {n} elements, got {}",
            data.len()
        )));
    }
    Ok(NamedTensor {
        name,
        shape,
        data,
        decimals: None,
    })
}

/// A KServe request's `outputs`: the outputs to return, each binary or not (`binary_all` unless its
/// own `binary_data` says).
fn requested_outputs(outs: &Value, binary_all: bool) -> Result<Vec<RequestedOutput>, TensorError> {
    let outs = outs
        .as_array()
        .ok_or_else(|| TensorError::Malformed("\"outputs\" must be an array".into()))?;
    let mut list = Vec::new();
    for (i, o) in outs.iter().enumerate() {
        let name = o
            .get("name")
            .and_then(Value::as_str)
            .ok_or_else(|| TensorError::Malformed(format!("outputs[{i}] needs a \"name\"")))?;
        let binary = o
            .get("parameters")
            .and_then(|p| p.get("binary_data"))
            .and_then(Value::as_bool)
            .unwrap_or(binary_all);
        list.push(RequestedOutput {
            name: name.to_string(),
            binary,
        });
    }
    Ok(list)
}

/// Decode a native request: `{"inputs": {"name": tensor, …}, "request_id": "0x…"}` where a tensor is a
/// nested array or `{"shape": […], "data": […]}`; `"inputs"` may also be a KServe-style list.
pub fn decode_native(body: &[u8], max_elements: u64) -> Result<InferRequest, TensorError> {
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| TensorError::Malformed(format!("request is not valid JSON: {e}")))?;
    let obj = v
        .as_object()
        .ok_or_else(|| TensorError::Malformed("request must be a JSON object".into()))?;
    if obj.get("inputs").is_some_and(Value::is_array) {
        let mut r = decode_kserve(body, None, max_elements)?;
        r.request_id = parse_request_id(obj.get("request_id"))?.or(r.request_id);
        r.zk = parse_mode(obj.get("mode"))?;
        return Ok(r);
    }
    let inputs = obj
        .get("inputs")
        .and_then(Value::as_object)
        .ok_or_else(|| {
            TensorError::Malformed(
                "request needs \"inputs\": an object mapping input names to tensors".into(),
            )
        })?;
    let mut req = InferRequest {
        request_id: parse_request_id(obj.get("request_id"))?,
        zk: parse_mode(obj.get("mode"))?,
        ..Default::default()
    };
    for (name, t) in inputs {
        let what = format!("input '{name}'");
        let ft = verity_engine::io::tensor_from_json(t)
            .map_err(|e| TensorError::Malformed(format!("{what}: {e}")))?;
        let n = ft
            .shape
            .iter()
            .try_fold(1u64, |a, &d| a.checked_mul(d as u64))
            .unwrap_or(u64::MAX);
        if n > max_elements {
            return Err(TensorError::TooLarge(format!(
                "{what}: {n} elements is over the limit of {max_elements}"
            )));
        }
        req.inputs.push(NamedTensor {
            name: name.clone(),
            shape: ft.shape,
            data: ft.data,
            decimals: None,
        });
    }
    Ok(req)
}

/// Split a binary-extension body at the JSON header length.
pub fn split_binary<'a>(
    body: &'a [u8],
    header_len: &str,
) -> Result<(&'a [u8], &'a [u8]), TensorError> {
    let n: usize = header_len.trim().parse().map_err(|_| {
        TensorError::Malformed("Inference-Header-Content-Length must be an integer".into())
    })?;
    if n > body.len() {
        return Err(TensorError::Malformed(format!(
            "Inference-Header-Content-Length {n} is longer than the body ({} bytes)",
            body.len()
        )));
    }
    Ok(body.split_at(n))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn kserve_json_and_binary() {
        let j = br#"{"id":"a","inputs":[{"name":"x","shape":[2,2],"datatype":"FP32","data":[[1,2],[3,4.5]]}],
                    "outputs":[{"name":"y","parameters":{"binary_data":true}}]}"#;
        let r = decode_kserve(j, None, 100).unwrap();
        assert_eq!(r.inputs[0].data, vec![1.0, 2.0, 3.0, 4.5]);
        assert!(r.outputs.unwrap()[0].binary);
        assert_eq!(r.id.as_deref(), Some("a"));

        let header = br#"{"inputs":[{"name":"x","shape":[3],"datatype":"FP16","parameters":{"binary_data_size":6}}]}"#;
        let bin = [0x00, 0x3c, 0x00, 0xc0, 0x00, 0x38]; // 1.0, -2.0, 0.5
        let r = decode_kserve(header, Some(&bin), 100).unwrap();
        assert_eq!(r.inputs[0].data, vec![1.0, -2.0, 0.5]);
        assert!(decode_kserve(header, Some(&bin[..4]), 100).is_err());
        let mut more = bin.to_vec();
        more.push(0);
        assert!(matches!(
            decode_kserve(header, Some(&more), 100),
            Err(TensorError::Malformed(_))
        ));
    }

    #[test]
    fn limits_and_errors() {
        let big = br#"{"inputs":[{"name":"x","shape":[100000,100000],"datatype":"FP32","parameters":{"binary_data_size":4}}]}"#;
        assert!(matches!(
            decode_kserve(big, Some(&[0; 4]), 1 << 20),
            Err(TensorError::TooLarge(_))
        ));
        let bytes = br#"{"inputs":[{"name":"x","shape":[1],"datatype":"BYTES","data":["a"]}]}"#;
        assert!(matches!(
            decode_kserve(bytes, None, 10),
            Err(TensorError::Unprocessable(_))
        ));
        assert!(decode_native(b"{\"inputs\":{\"x\":[[1,2],[3]]}}", 10).is_err());
        assert!(decode_native(b"[]", 10).is_err());
        let r = decode_native(
            b"{\"inputs\":{\"x\":{\"shape\":[2],\"data\":[1,2]}},\"request_id\":\"0x0000000000000000000000000000000000000000000000000000000000000001\"}",
            10,
        )
        .unwrap();
        assert_eq!(r.inputs[0].shape, vec![2]);
        assert!(r.request_id.is_some());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]
        /// Arbitrary bytes never panic either decoder.
        #[test]
        fn decoders_never_panic(body in proptest::collection::vec(any::<u8>(), 0..300), cut in 0usize..300) {
            let _ = decode_native(&body, 1000);
            let cut = cut.min(body.len());
            let _ = decode_kserve(&body[..cut], Some(&body[cut..]), 1000);
            let _ = decode_kserve(&body, None, 1000);
        }

        /// Structured but hostile JSON never panics and a valid tensor round-trips.
        #[test]
        fn structured_requests(shape in proptest::collection::vec(0u64..5, 0..4),
                               vals in proptest::collection::vec(-1e6f64..1e6, 0..40),
                               dt in prop::sample::select(vec!["FP32","FP64","INT8","UINT64","BOOL","FP16","BF16","BYTES","X"]),
                               binary in any::<bool>()) {
            let n: u64 = shape.iter().product();
            let body = serde_json::json!({"inputs":[{"name":"x","shape":shape,"datatype":dt,"data":vals}]});
            let r = decode_kserve(body.to_string().as_bytes(), None, 1000);
            if r.is_ok() {
                prop_assert_eq!(n as usize, vals.len());
            }
            if binary {
                let size = vals.len() * 8;
                let header = serde_json::json!({"inputs":[{"name":"x","shape":shape,"datatype":"FP64","parameters":{"binary_data_size":size}}]});
                let raw: Vec<u8> = vals.iter().flat_map(|v| v.to_le_bytes()).collect();
                let r = decode_kserve(header.to_string().as_bytes(), Some(&raw), 1000);
                if n as usize == vals.len() {
                    prop_assert_eq!(&r.unwrap().inputs[0].data, &vals);
                } else {
                    prop_assert!(r.is_err());
                }
            }
        }
    }
}
