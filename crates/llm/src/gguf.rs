//! GGUF, the file format open-weight language models are distributed in for CPU inference: a header,
//! typed metadata (architecture hyper-parameters, tokenizer, chat template) and tensors, each stored as
//! `f32`, `f16`, `bf16` or one of ggml's block-quantized types.
//!
//! Every quantized weight of a GGUF is an exact dyadic rational: its block scales are `f16` values,
//! each `m · 2^e` with an 11-bit `m`, times small integers. [`Gguf::decode`] turns a tensor into that
//! exact form — per element a small signed integer `q`, per block of 16 or 32 elements along the
//! contiguous axis a multiplier `a` and an offset `c`, the weight being `q · a + c` exactly — so the
//! canonical model carries the file's weights without re-rounding any of them.
//!
//! The reader trusts nothing in the file: every count, length, offset and size is checked against the
//! file before use, and a malformed file is a [`GgufError`], never a panic or an allocation the file's
//! size does not justify.

use std::collections::BTreeMap;

/// Why a GGUF file could not be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum GgufError {
    /// Not a GGUF file, or a GGUF version this reader does not know.
    #[error("not a GGUF file: {0}")]
    NotGguf(String),
    /// The file ends inside a structure.
    #[error("the GGUF file is truncated: {0}")]
    Truncated(String),
    /// A structure that is present but invalid.
    #[error("malformed GGUF: {0}")]
    Malformed(String),
    /// A tensor type this reader cannot represent exactly.
    #[error(
        "tensor '{tensor}' has type {ty}, which Verity does not import (supported: {supported})"
    )]
    UnsupportedType {
        /// Tensor name.
        tensor: String,
        /// The type's name or number.
        ty: String,
        /// The supported types.
        supported: &'static str,
    },
    /// A needed metadata key is missing or has the wrong type.
    #[error("metadata '{key}': {why}")]
    Metadata {
        /// The key.
        key: String,
        /// What is wrong.
        why: String,
    },
}

/// A metadata value.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    /// `uint8`.
    U8(u8),
    /// `int8`.
    I8(i8),
    /// `uint16`.
    U16(u16),
    /// `int16`.
    I16(i16),
    /// `uint32`.
    U32(u32),
    /// `int32`.
    I32(i32),
    /// `float32`.
    F32(f32),
    /// `bool`.
    Bool(bool),
    /// UTF-8 string.
    Str(String),
    /// Array of values of one type.
    Array(Vec<Value>),
    /// `uint64`.
    U64(u64),
    /// `int64`.
    I64(i64),
    /// `float64`.
    F64(f64),
}

impl Value {
    /// The value as an unsigned integer, if it is a non-negative integer of any width.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Value::U8(v) => Some(v.into()),
            Value::U16(v) => Some(v.into()),
            Value::U32(v) => Some(v.into()),
            Value::U64(v) => Some(v),
            Value::I8(v) => u64::try_from(v).ok(),
            Value::I16(v) => u64::try_from(v).ok(),
            Value::I32(v) => u64::try_from(v).ok(),
            Value::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    /// The value as a float, if it is a float or an integer.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::F32(v) => Some(v.into()),
            Value::F64(v) => Some(v),
            Value::I8(v) => Some(v.into()),
            Value::I16(v) => Some(v.into()),
            Value::I32(v) => Some(v.into()),
            _ => self.as_u64().map(|v| v as f64),
        }
    }

    /// The value as a string.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }
}

/// The storage type of a tensor (ggml's type numbers).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum GgmlType {
    /// IEEE binary32.
    F32,
    /// IEEE binary16.
    F16,
    /// bfloat16.
    BF16,
    /// 32 weights: `f16` scale, 4-bit values, `w = d·(q − 8)`.
    Q4_0,
    /// 32 weights: `f16` scale and minimum, 4-bit values, `w = d·q + m`.
    Q4_1,
    /// 32 weights: `f16` scale, 5-bit values, `w = d·(q − 16)`.
    Q5_0,
    /// 32 weights: `f16` scale and minimum, 5-bit values, `w = d·q + m`.
    Q5_1,
    /// 32 weights: `f16` scale, 8-bit values, `w = d·q`.
    Q8_0,
    /// 256 weights in 16 sub-blocks: 4-bit scales and minimums, 2-bit values.
    Q2K,
    /// 256 weights in 16 sub-blocks: 6-bit signed scales, 3-bit values.
    Q3K,
    /// 256 weights in 8 sub-blocks: 6-bit scales and minimums, 4-bit values.
    Q4K,
    /// 256 weights in 8 sub-blocks: 6-bit scales and minimums, 5-bit values.
    Q5K,
    /// 256 weights in 16 sub-blocks: 8-bit signed scales, 6-bit values.
    Q6K,
    /// Any other ggml type (named in the error when such a tensor is decoded).
    Other(u32),
}

/// The types [`Gguf::decode`] supports, for error messages and documentation.
pub const SUPPORTED_TYPES: &str =
    "F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K";

impl GgmlType {
    fn from_code(code: u32) -> GgmlType {
        match code {
            0 => GgmlType::F32,
            1 => GgmlType::F16,
            2 => GgmlType::Q4_0,
            3 => GgmlType::Q4_1,
            6 => GgmlType::Q5_0,
            7 => GgmlType::Q5_1,
            8 => GgmlType::Q8_0,
            10 => GgmlType::Q2K,
            11 => GgmlType::Q3K,
            12 => GgmlType::Q4K,
            13 => GgmlType::Q5K,
            14 => GgmlType::Q6K,
            30 => GgmlType::BF16,
            c => GgmlType::Other(c),
        }
    }

    /// The name ggml gives the type.
    pub fn name(self) -> String {
        match self {
            GgmlType::F32 => "F32".into(),
            GgmlType::F16 => "F16".into(),
            GgmlType::BF16 => "BF16".into(),
            GgmlType::Q4_0 => "Q4_0".into(),
            GgmlType::Q4_1 => "Q4_1".into(),
            GgmlType::Q5_0 => "Q5_0".into(),
            GgmlType::Q5_1 => "Q5_1".into(),
            GgmlType::Q8_0 => "Q8_0".into(),
            GgmlType::Q2K => "Q2_K".into(),
            GgmlType::Q3K => "Q3_K".into(),
            GgmlType::Q4K => "Q4_K".into(),
            GgmlType::Q5K => "Q5_K".into(),
            GgmlType::Q6K => "Q6_K".into(),
            GgmlType::Other(c) => match c {
                9 => "Q8_1".into(),
                15 => "Q8_K".into(),
                16..=23 | 29 => format!("IQ type {c}"),
                24 => "I8".into(),
                25 => "I16".into(),
                26 => "I32".into(),
                27 => "I64".into(),
                28 => "F64".into(),
                34 => "TQ1_0".into(),
                35 => "TQ2_0".into(),
                _ => format!("type {c}"),
            },
        }
    }

    /// Elements per storage block and bytes per block, for the supported types.
    pub fn layout(self) -> Option<(usize, usize)> {
        Some(match self {
            GgmlType::F32 => (1, 4),
            GgmlType::F16 | GgmlType::BF16 => (1, 2),
            GgmlType::Q4_0 => (32, 18),
            GgmlType::Q4_1 => (32, 20),
            GgmlType::Q5_0 => (32, 22),
            GgmlType::Q5_1 => (32, 24),
            GgmlType::Q8_0 => (32, 34),
            GgmlType::Q2K => (256, 84),
            GgmlType::Q3K => (256, 110),
            GgmlType::Q4K => (256, 144),
            GgmlType::Q5K => (256, 176),
            GgmlType::Q6K => (256, 210),
            GgmlType::Other(_) => return None,
        })
    }
}

/// One tensor's entry in the file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorInfo {
    /// Name (e.g. `blk.0.attn_q.weight`).
    pub name: String,
    /// Dimensions in ggml order: `dims[0]` is the contiguous one (a matrix `[rows, cols]` is `[cols, rows]`).
    pub dims: Vec<u64>,
    /// Storage type.
    pub ty: GgmlType,
    /// Byte offset of the data from the start of the file.
    pub start: usize,
    /// Byte length of the data (0 for a type the reader does not know the layout of).
    pub len: usize,
}

impl TensorInfo {
    /// Number of elements.
    pub fn elements(&self) -> u64 {
        self.dims.iter().product()
    }
}

/// A parsed GGUF file (its bytes are kept: tensors are decoded on demand).
#[derive(Debug)]
pub struct Gguf {
    /// Format version (2 or 3).
    pub version: u32,
    /// Metadata, by key.
    pub metadata: BTreeMap<String, Value>,
    /// Tensors, in file order.
    pub tensors: Vec<TensorInfo>,
    bytes: Vec<u8>,
}

/// Nesting depth allowed for arrays of arrays.
const MAX_DEPTH: u32 = 3;
/// Dimensions a ggml tensor can have.
const MAX_DIMS: u32 = 4;

struct Cursor<'a> {
    b: &'a [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], GgufError> {
        let end = self
            .at
            .checked_add(n)
            .filter(|&e| e <= self.b.len())
            .ok_or_else(|| {
                GgufError::Truncated(format!("{what} at byte {} needs {n} bytes", self.at))
            })?;
        let s = &self.b[self.at..end];
        self.at = end;
        Ok(s)
    }

    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N], GgufError> {
        let s = self.take(N, what)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }

    fn u32(&mut self, what: &str) -> Result<u32, GgufError> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: &str) -> Result<u64, GgufError> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    /// A count of items each at least `min_size` bytes long: refused when the rest of the file
    /// cannot hold them (so a hostile count never drives an allocation).
    fn count(&mut self, what: &str, min_size: usize) -> Result<usize, GgufError> {
        let n = self.u64(what)?;
        let left = (self.b.len() - self.at) as u64;
        if n.saturating_mul(min_size.max(1) as u64) > left {
            return Err(GgufError::Truncated(format!(
                "{what} says {n}, more than the {left} remaining bytes can hold"
            )));
        }
        usize::try_from(n).map_err(|_| GgufError::Malformed(format!("{what} {n} is too large")))
    }

    fn string(&mut self, what: &str) -> Result<String, GgufError> {
        let n = self.count(what, 1)?;
        let s = self.take(n, what)?;
        String::from_utf8(s.to_vec())
            .map_err(|_| GgufError::Malformed(format!("{what} is not UTF-8")))
    }

    fn value(&mut self, ty: u32, key: &str, depth: u32) -> Result<Value, GgufError> {
        Ok(match ty {
            0 => Value::U8(self.array::<1>(key)?[0]),
            1 => Value::I8(i8::from_le_bytes(self.array(key)?)),
            2 => Value::U16(u16::from_le_bytes(self.array(key)?)),
            3 => Value::I16(i16::from_le_bytes(self.array(key)?)),
            4 => Value::U32(self.u32(key)?),
            5 => Value::I32(i32::from_le_bytes(self.array(key)?)),
            6 => Value::F32(f32::from_le_bytes(self.array(key)?)),
            7 => match self.array::<1>(key)?[0] {
                0 => Value::Bool(false),
                1 => Value::Bool(true),
                b => {
                    return Err(GgufError::Malformed(format!(
                        "metadata '{key}': bool byte {b}"
                    )))
                }
            },
            8 => Value::Str(self.string(key)?),
            9 => {
                if depth >= MAX_DEPTH {
                    return Err(GgufError::Malformed(format!(
                        "metadata '{key}': arrays nested deeper than {MAX_DEPTH}"
                    )));
                }
                let inner = self.u32(key)?;
                let min = match inner {
                    0 | 1 | 7 => 1,
                    2 | 3 => 2,
                    4..=6 => 4,
                    8..=12 => 8,
                    t => {
                        return Err(GgufError::Malformed(format!(
                            "metadata '{key}': unknown array element type {t}"
                        )))
                    }
                };
                let n = self.count(key, min)?;
                let mut v = Vec::with_capacity(n);
                for _ in 0..n {
                    v.push(self.value(inner, key, depth + 1)?);
                }
                Value::Array(v)
            }
            10 => Value::U64(self.u64(key)?),
            11 => Value::I64(i64::from_le_bytes(self.array(key)?)),
            12 => Value::F64(f64::from_le_bytes(self.array(key)?)),
            t => {
                return Err(GgufError::Malformed(format!(
                    "metadata '{key}': unknown value type {t}"
                )))
            }
        })
    }
}

impl Gguf {
    /// Reads a GGUF file.
    pub fn open(path: &std::path::Path) -> Result<Gguf, GgufError> {
        let bytes = std::fs::read(path)
            .map_err(|e| GgufError::NotGguf(format!("cannot read {}: {e}", path.display())))?;
        Gguf::parse(bytes)
    }

    /// Parses a GGUF file's bytes.
    pub fn parse(bytes: Vec<u8>) -> Result<Gguf, GgufError> {
        let mut c = Cursor { b: &bytes, at: 0 };
        let magic = c
            .take(4, "the magic")
            .map_err(|_| GgufError::NotGguf("shorter than its magic".into()))?;
        if magic != b"GGUF" {
            return Err(GgufError::NotGguf(format!(
                "the file starts with {magic:02x?}, not \"GGUF\""
            )));
        }
        let version = c.u32("the version")?;
        if version != 2 && version != 3 {
            return Err(GgufError::NotGguf(if version.swap_bytes() <= 3 {
                "a big-endian GGUF; only little-endian files are read".into()
            } else {
                format!("version {version} (versions 2 and 3 are read)")
            }));
        }
        // a tensor entry is at least 24 bytes, a metadata entry at least 13
        let n_tensors = c.count("the tensor count", 24)?;
        let n_kv = c.count("the metadata count", 13)?;
        let mut metadata = BTreeMap::new();
        for _ in 0..n_kv {
            let key = c.string("a metadata key")?;
            let ty = c.u32(&key)?;
            let v = c.value(ty, &key, 0)?;
            if metadata.insert(key.clone(), v).is_some() {
                return Err(GgufError::Malformed(format!(
                    "metadata key '{key}' appears twice"
                )));
            }
        }
        let alignment = match metadata.get("general.alignment") {
            None => 32,
            Some(v) => match v.as_u64() {
                Some(a) if a.is_power_of_two() && a <= 1 << 16 => a as usize,
                _ => {
                    return Err(GgufError::Malformed(format!(
                        "general.alignment {v:?} is not a power of two up to 65536"
                    )))
                }
            },
        };
        let mut raw = Vec::with_capacity(n_tensors);
        let mut names = std::collections::BTreeSet::new();
        for _ in 0..n_tensors {
            let name = c.string("a tensor name")?;
            if !names.insert(name.clone()) {
                return Err(GgufError::Malformed(format!(
                    "tensor '{name}' appears twice"
                )));
            }
            let n_dims = c.u32(&name)?;
            if n_dims == 0 || n_dims > MAX_DIMS {
                return Err(GgufError::Malformed(format!(
                    "tensor '{name}' has {n_dims} dimensions (1 to {MAX_DIMS})"
                )));
            }
            let mut dims = Vec::with_capacity(n_dims as usize);
            for _ in 0..n_dims {
                dims.push(c.u64(&name)?);
            }
            let ty = GgmlType::from_code(c.u32(&name)?);
            let offset = c.u64(&name)?;
            raw.push((name, dims, ty, offset));
        }
        let data_start = c.at.div_ceil(alignment) * alignment;
        let mut tensors = Vec::with_capacity(raw.len());
        for (name, dims, ty, offset) in raw {
            let elements = dims
                .iter()
                .try_fold(1u64, |a, &d| a.checked_mul(d))
                .filter(|&n| n <= 1 << 40)
                .ok_or_else(|| {
                    GgufError::Malformed(format!("tensor '{name}' has dimensions {dims:?}"))
                })?;
            if offset % alignment as u64 != 0 {
                return Err(GgufError::Malformed(format!(
                    "tensor '{name}' starts at offset {offset}, not a multiple of the alignment {alignment}"
                )));
            }
            let len = match ty.layout() {
                None => 0,
                Some((block, size)) => {
                    if dims[0] % block as u64 != 0 {
                        return Err(GgufError::Malformed(format!(
                            "tensor '{name}' ({}) has rows of {} elements, not a multiple of its block of {block}",
                            ty.name(),
                            dims[0]
                        )));
                    }
                    (elements / block as u64 * size as u64) as usize
                }
            };
            let start = (data_start as u64)
                .checked_add(offset)
                .filter(|s| s.checked_add(len as u64).is_some_and(|e| e <= bytes.len() as u64))
                .ok_or_else(|| {
                    GgufError::Truncated(format!(
                        "tensor '{name}' ({} bytes at offset {offset}) lies past the end of the file ({} bytes)",
                        len,
                        bytes.len()
                    ))
                })? as usize;
            tensors.push(TensorInfo {
                name,
                dims,
                ty,
                start,
                len,
            });
        }
        Ok(Gguf {
            version,
            metadata,
            tensors,
            bytes,
        })
    }

    /// The tensor called `name`.
    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.iter().find(|t| t.name == name)
    }

    /// The raw bytes of a tensor.
    pub fn data(&self, t: &TensorInfo) -> &[u8] {
        &self.bytes[t.start..t.start + t.len]
    }

    /// A metadata value.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.metadata.get(key)
    }

    /// A required metadata value, read by `read` (`expected` names what it must be).
    fn required<'a, T>(
        &'a self,
        key: &str,
        expected: &str,
        read: impl Fn(&'a Value) -> Option<T>,
    ) -> Result<T, GgufError> {
        let why = |why: String| GgufError::Metadata {
            key: key.into(),
            why,
        };
        let v = self.get(key).ok_or_else(|| why("missing".into()))?;
        read(v).ok_or_else(|| why(format!("expected {expected}, found {v:?}")))
    }

    /// A required non-negative integer metadata value.
    pub fn get_u64(&self, key: &str) -> Result<u64, GgufError> {
        self.required(key, "a non-negative integer", Value::as_u64)
    }

    /// A required number.
    pub fn get_f64(&self, key: &str) -> Result<f64, GgufError> {
        self.required(key, "a number", Value::as_f64)
    }

    /// A required string.
    pub fn get_str(&self, key: &str) -> Result<&str, GgufError> {
        self.required(key, "a string", Value::as_str)
    }

    /// Decodes a tensor into its exact form.
    pub fn decode(&self, t: &TensorInfo) -> Result<Decoded, GgufError> {
        decode(t, self.data(t))
    }
}

/// An exact dyadic rational `m · 2^e`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Dyadic {
    /// The integer.
    pub m: i64,
    /// The power of two.
    pub e: i32,
}

impl Dyadic {
    /// `m · 2^e`, normalized (odd `m`, or zero with `e = 0`) so equal values have equal fields.
    pub fn new(m: i64, e: i32) -> Dyadic {
        if m == 0 {
            return Dyadic { m: 0, e: 0 };
        }
        let z = m.trailing_zeros().min(62);
        Dyadic {
            m: m >> z,
            e: e + z as i32,
        }
    }

    /// `self · k`; `None` if the integer leaves `i64`.
    pub fn times(self, k: i64) -> Option<Dyadic> {
        Some(Dyadic::new(self.m.checked_mul(k)?, self.e))
    }

    /// `self + o`; `None` if the aligned integers leave `i64`.
    pub fn plus(self, o: Dyadic) -> Option<Dyadic> {
        if self.m == 0 {
            return Some(o);
        }
        if o.m == 0 {
            return Some(self);
        }
        let e = self.e.min(o.e);
        let up = |d: Dyadic| -> Option<i64> {
            let s = u32::try_from(d.e - e).ok().filter(|&s| s < 63)?;
            let v = d.m.checked_mul(1i64 << s)?;
            Some(v)
        };
        Some(Dyadic::new(up(self)?.checked_add(up(o)?)?, e))
    }

    /// The value as `f64` (exact when `m` has at most 53 significant bits).
    pub fn to_f64(self) -> f64 {
        self.m as f64 * (self.e as f64).exp2()
    }
}

/// The exact value of an IEEE binary16; infinities and NaNs are refused.
pub fn f16_exact(bits: u16) -> Option<Dyadic> {
    float_exact(bits.into(), 10, 5)
}

/// The exact value of a bfloat16.
pub fn bf16_exact(bits: u16) -> Option<Dyadic> {
    float_exact(bits.into(), 7, 8)
}

/// The exact value of an IEEE binary32.
pub fn f32_exact(bits: u32) -> Option<Dyadic> {
    float_exact(bits.into(), 23, 8)
}

fn float_exact(bits: u64, mant: u32, exp: u32) -> Option<Dyadic> {
    let m = (bits & ((1 << mant) - 1)) as i64;
    let e = ((bits >> mant) & ((1 << exp) - 1)) as i32;
    let neg = bits >> (mant + exp) & 1 == 1;
    let bias = (1 << (exp - 1)) - 1;
    if e == (1 << exp) - 1 {
        return None;
    }
    let (m, e) = if e == 0 {
        (m, 1 - bias - mant as i32)
    } else {
        (m | 1 << mant, e - bias - mant as i32)
    };
    Some(Dyadic::new(if neg { -m } else { m }, e))
}

/// A tensor in exact form.
#[derive(Clone, Debug, PartialEq)]
pub enum Decoded {
    /// Block-quantized: element `i` of block `b` is `q[i] · mult[b] + offset[b]`.
    Blocks(Blocks),
    /// A float tensor: each element's exact value.
    Exact(Vec<Dyadic>),
}

/// A block-quantized tensor in exact form.
#[derive(Clone, Debug, PartialEq)]
pub struct Blocks {
    /// Elements per block, along the contiguous axis (16 or 32).
    pub block: usize,
    /// Bits of `q`: every `q` is in `−2^(bits−1) … 2^(bits−1) − 1`.
    pub bits: u8,
    /// Per element, row-major.
    pub q: Vec<i8>,
    /// Per block.
    pub mult: Vec<Dyadic>,
    /// Per block (zero for the symmetric types).
    pub offset: Vec<Dyadic>,
}

impl Blocks {
    /// The exact value of element `i`.
    pub fn value(&self, i: usize) -> Dyadic {
        let b = i / self.block;
        self.mult[b]
            .times(self.q[i].into())
            .and_then(|p| p.plus(self.offset[b]))
            .expect("a block's values fit i64 (checked when decoded)")
    }
}

fn half(b: &[u8], at: usize, what: &str) -> Result<Dyadic, GgufError> {
    let bits = u16::from_le_bytes([b[at], b[at + 1]]);
    f16_exact(bits).ok_or_else(|| {
        GgufError::Malformed(format!(
            "{what}: a block scale is infinite or NaN ({bits:#06x})"
        ))
    })
}

/// `q · a + c` must fit `i64` for every `q` of the block's range: checked once per block.
fn checked(a: Dyadic, c: Dyadic, bits: u8, what: &str) -> Result<(Dyadic, Dyadic), GgufError> {
    let lo = -(1i64 << (bits - 1));
    let hi = (1i64 << (bits - 1)) - 1;
    for q in [lo, hi] {
        a.times(q).and_then(|p| p.plus(c)).ok_or_else(|| {
            GgufError::Malformed(format!(
                "{what}: a block's scale and minimum are too far apart"
            ))
        })?;
    }
    Ok((a, c))
}

/// Decodes one tensor's bytes (its [`TensorInfo`] gives type and size).
pub fn decode(t: &TensorInfo, data: &[u8]) -> Result<Decoded, GgufError> {
    let n = t.elements() as usize;
    let what = t.name.as_str();
    let bad_float =
        |i: usize| GgufError::Malformed(format!("{what}: element {i} is infinite or NaN"));
    match t.ty {
        GgmlType::F32 => {
            return data
                .chunks_exact(4)
                .enumerate()
                .map(|(i, c)| {
                    f32_exact(u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                        .ok_or_else(|| bad_float(i))
                })
                .collect::<Result<_, _>>()
                .map(Decoded::Exact)
        }
        GgmlType::F16 | GgmlType::BF16 => {
            let f = if t.ty == GgmlType::F16 {
                f16_exact
            } else {
                bf16_exact
            };
            return data
                .chunks_exact(2)
                .enumerate()
                .map(|(i, c)| f(u16::from_le_bytes([c[0], c[1]])).ok_or_else(|| bad_float(i)))
                .collect::<Result<_, _>>()
                .map(Decoded::Exact);
        }
        GgmlType::Other(_) => {
            return Err(GgufError::UnsupportedType {
                tensor: t.name.clone(),
                ty: t.ty.name(),
                supported: SUPPORTED_TYPES,
            })
        }
        _ => {}
    }
    let (block_elems, size) = t.ty.layout().expect("known types have a layout");
    let (sub, bits) = match t.ty {
        GgmlType::Q4_0 | GgmlType::Q4_1 => (32, 4),
        GgmlType::Q5_0 | GgmlType::Q5_1 => (32, 5),
        GgmlType::Q8_0 => (32, 8),
        GgmlType::Q2K => (16, 2),
        GgmlType::Q3K => (16, 3),
        GgmlType::Q4K => (32, 4),
        GgmlType::Q5K => (32, 5),
        GgmlType::Q6K => (16, 6),
        _ => unreachable!("float and unknown types returned above"),
    };
    let mut q = vec![0i8; n];
    let mut mult = Vec::with_capacity(n / sub);
    let mut offset = Vec::with_capacity(n / sub);
    let mut push = |a: Dyadic, c: Dyadic| -> Result<(), GgufError> {
        let (a, c) = checked(a, c, bits, what)?;
        mult.push(a);
        offset.push(c);
        Ok(())
    };
    let zero = Dyadic::default();
    for (b, out) in data.chunks_exact(size).zip(q.chunks_exact_mut(block_elems)) {
        match t.ty {
            GgmlType::Q4_0 | GgmlType::Q4_1 => {
                let d = half(b, 0, what)?;
                let (qs, c) = if t.ty == GgmlType::Q4_0 {
                    (&b[2..18], zero)
                } else {
                    // w = d·v + m with v = q + 8
                    let m = half(b, 2, what)?;
                    (
                        &b[4..20],
                        m.plus(d.times(8).expect("f16 × 8"))
                            .expect("two f16 values"),
                    )
                };
                for j in 0..16 {
                    out[j] = (qs[j] & 15) as i8 - 8;
                    out[j + 16] = (qs[j] >> 4) as i8 - 8;
                }
                push(d, c)?;
            }
            GgmlType::Q5_0 | GgmlType::Q5_1 => {
                let d = half(b, 0, what)?;
                let (at, c) = if t.ty == GgmlType::Q5_0 {
                    (2, zero)
                } else {
                    let m = half(b, 2, what)?;
                    (
                        4,
                        m.plus(d.times(16).expect("f16 × 16"))
                            .expect("two f16 values"),
                    )
                };
                let qh = u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]);
                let qs = &b[at + 4..at + 20];
                for j in 0..16 {
                    let lo = qs[j] & 15 | (((qh >> j) & 1) as u8) << 4;
                    let hi = qs[j] >> 4 | (((qh >> (j + 16)) & 1) as u8) << 4;
                    out[j] = lo as i8 - 16;
                    out[j + 16] = hi as i8 - 16;
                }
                push(d, c)?;
            }
            GgmlType::Q8_0 => {
                let d = half(b, 0, what)?;
                for (o, &v) in out.iter_mut().zip(&b[2..34]) {
                    *o = v as i8;
                }
                push(d, zero)?;
            }
            GgmlType::Q2K => {
                let (scales, qs) = (&b[0..16], &b[16..80]);
                let d = half(b, 80, what)?;
                let dmin = half(b, 82, what)?;
                for (i, o) in out.iter_mut().enumerate() {
                    let (c, s, l) = (i / 128, (i % 128) / 32, i % 32);
                    *o = ((qs[c * 32 + l] >> (2 * s)) & 3) as i8 - 2;
                }
                for &sc in scales {
                    // w = a·v − dmin·m with v = q + 2
                    let a = d.times((sc & 15).into()).expect("f16 × 4 bits");
                    let m = dmin.times((sc >> 4).into()).expect("f16 × 4 bits");
                    let c = a.times(2).and_then(|x| x.plus(m.times(-1)?));
                    push(a, c.expect("f16 values"))?;
                }
            }
            GgmlType::Q3K => {
                let (hmask, qs, sc) = (&b[0..32], &b[32..96], &b[96..108]);
                let d = half(b, 108, what)?;
                for (i, o) in out.iter_mut().enumerate() {
                    let (c, s, l) = (i / 128, (i % 128) / 32, i % 32);
                    let low = (qs[c * 32 + l] >> (2 * s)) & 3;
                    let high = (hmask[l] >> (i / 32)) & 1;
                    // the high bit set means no offset: v = low + 4·high − 4
                    *o = low as i8 + 4 * high as i8 - 4;
                }
                for k in 0..16 {
                    let low = if k < 8 { sc[k] & 15 } else { sc[k - 8] >> 4 };
                    let high = (sc[8 + k % 4] >> (2 * (k / 4))) & 3;
                    let s = (low | high << 4) as i64 - 32;
                    push(d.times(s).expect("f16 × 6 bits"), zero)?;
                }
            }
            GgmlType::Q4K | GgmlType::Q5K => {
                let d = half(b, 0, what)?;
                let dmin = half(b, 2, what)?;
                let sc = &b[4..16];
                let five = t.ty == GgmlType::Q5K;
                let (qh, qs) = if five {
                    (&b[16..48], &b[48..176])
                } else {
                    (&b[0..0], &b[16..144])
                };
                for (i, o) in out.iter_mut().enumerate() {
                    let (c, h, l) = (i / 64, (i % 64) / 32, i % 32);
                    let mut v = (qs[c * 32 + l] >> (4 * h)) & 15;
                    if five {
                        v |= ((qh[l] >> (i / 32)) & 1) << 4;
                    }
                    *o = v as i8 - if five { 16 } else { 8 };
                }
                let centre: i64 = if five { 16 } else { 8 };
                for k in 0..8 {
                    let (s, m) = if k < 4 {
                        (sc[k] & 63, sc[k + 4] & 63)
                    } else {
                        (
                            (sc[k + 4] & 15) | ((sc[k - 4] >> 6) << 4),
                            (sc[k + 4] >> 4) | ((sc[k] >> 6) << 4),
                        )
                    };
                    let a = d.times(s.into()).expect("f16 × 6 bits");
                    let m = dmin.times(m.into()).expect("f16 × 6 bits");
                    let c = a.times(centre).and_then(|x| x.plus(m.times(-1)?));
                    push(a, c.expect("f16 values"))?;
                }
            }
            GgmlType::Q6K => {
                let (ql, qh, sc) = (&b[0..128], &b[128..192], &b[192..208]);
                let d = half(b, 208, what)?;
                for (i, o) in out.iter_mut().enumerate() {
                    let (c, r) = (i / 128, i % 128);
                    let low = (ql[c * 64 + r % 64] >> (4 * (r / 64))) & 15;
                    let high = (qh[c * 32 + r % 32] >> (2 * (r / 32))) & 3;
                    *o = (low | high << 4) as i8 - 32;
                }
                for &s in sc {
                    push(d.times((s as i8).into()).expect("f16 × 8 bits"), zero)?;
                }
            }
            _ => unreachable!("float and unknown types returned above"),
        }
    }
    Ok(Decoded::Blocks(Blocks {
        block: sub,
        bits,
        q,
        mult,
        offset,
    }))
}
