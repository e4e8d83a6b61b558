//! The `.vty` encoding of a canonical model and its model ID (see `docs/spec/canonical.md`, "Encoding").
//!
//! A model is a list of *items*: the header, one item per node, one per constant. Each item has a
//! deterministic byte encoding and a leaf hash; the **model ID** is
//! `keccak256(u64_be(item_count) ‖ merkle_root(leaves))`. A constant's leaf commits to its elements through
//! their elements root, so a single weight is proven by two short Merkle paths.
//!
//! File layout: `b"VTY"`, file version byte, `u64` item count, each item as `u32` length + bytes, then the
//! 32-byte model ID. File version 2 stores each constant's elements at the narrowest width that holds them
//! (`i4`, `i8`, `i16` or `i32`); version 1 stored every element as `i32`. The width is a property of the
//! file only: a constant's leaf commits to its integer values, so the model ID, one-step checks and proofs
//! are the same for a model written either way.

use verity_core::{
    keccak256, merkle_proof, merkle_root, root_from_path, ElementProof, Hash, Keccak, Reader,
    Writer,
};

use crate::elements::Elements;
use crate::error::ModelError;
use crate::ir::*;

/// Magic bytes at the start of every `.vty` file.
pub const MAGIC: &[u8; 3] = b"VTY";
/// The version of the canonical semantics and item encodings (the header's version byte, part of the
/// model ID).
pub const FORMAT_VERSION: u8 = 1;
/// The file container version this build writes; it reads this one and version 1.
pub const FILE_VERSION: u8 = 2;

/// Storage width of a constant's elements in a version-2 file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Width {
    /// Two's-complement nibbles, two per byte, high nibble first; an odd count ends with a zero nibble.
    I4 = 3,
    /// One byte each.
    I8 = 2,
    /// Big-endian `i16`.
    I16 = 1,
    /// Big-endian `i32`.
    I32 = 0,
}

impl Width {
    /// The narrowest width holding every value of `data`.
    pub fn of(data: &[i32]) -> Width {
        Width::of_values(data)
    }

    /// [`Width::of`] for values of any integer type up to 32 bits.
    pub fn of_values<T: Copy + Into<i32>>(data: &[T]) -> Width {
        let (lo, hi) = data.iter().fold((0i32, 0i32), |(l, h), &v| {
            let v = v.into();
            (l.min(v), h.max(v))
        });
        if lo >= -8 && hi <= 7 {
            Width::I4
        } else if lo >= -128 && hi <= 127 {
            Width::I8
        } else if lo >= -32768 && hi <= 32767 {
            Width::I16
        } else {
            Width::I32
        }
    }

    /// Bytes taken by `n` elements.
    pub fn bytes(self, n: u64) -> u64 {
        match self {
            Width::I4 => n.div_ceil(2),
            Width::I8 => n,
            Width::I16 => 2 * n,
            Width::I32 => 4 * n,
        }
    }

    fn from_code(c: u8) -> Option<Width> {
        [Width::I32, Width::I16, Width::I8, Width::I4]
            .into_iter()
            .find(|w| *w as u8 == c)
    }
}

/// The elements of a constant as stored in a version-2 file: the width code, then the packed values.
pub fn encode_elements(data: &[i32]) -> Vec<u8> {
    let w = Width::of(data);
    let mut out = Vec::with_capacity(1 + w.bytes(data.len() as u64) as usize);
    out.push(w as u8);
    match w {
        Width::I4 => {
            for pair in data.chunks(2) {
                let hi = (pair[0] as u8) & 0x0f;
                let lo = pair.get(1).map_or(0, |&v| (v as u8) & 0x0f);
                out.push(hi << 4 | lo);
            }
        }
        Width::I8 => out.extend(data.iter().map(|&v| v as i8 as u8)),
        Width::I16 => {
            for &v in data {
                out.extend_from_slice(&(v as i16).to_be_bytes());
            }
        }
        Width::I32 => {
            for &v in data {
                out.extend_from_slice(&v.to_be_bytes());
            }
        }
    }
    out
}

/// Read `n` elements stored by [`encode_elements`] (all of `bytes`); refuses a width that is not the
/// narrowest for the values, or a non-zero padding nibble, so the encoding stays canonical.
pub fn decode_elements(bytes: &[u8], n: u64) -> Result<Vec<i32>, String> {
    decode_narrow(bytes, n).map(|e| e.transient().into_owned())
}

/// [`decode_elements`] into elements held at the width they are stored at (see [`Elements`]).
pub fn decode_narrow(bytes: &[u8], n: u64) -> Result<Elements, String> {
    let (&code, packed) = bytes.split_first().ok_or("missing element width")?;
    let w = Width::from_code(code).ok_or_else(|| format!("unknown element width {code}"))?;
    if w.bytes(n) != packed.len() as u64 {
        return Err(format!(
            "{n} elements of width {w:?} take {} bytes, found {}",
            w.bytes(n),
            packed.len()
        ));
    }
    // the elements at the width they are stored at, and the narrowest width their values need
    let (data, narrowest) = match w {
        Width::I4 => {
            if n % 2 == 1 && packed.last().is_some_and(|b| b & 0x0f != 0) {
                return Err("non-zero padding nibble".into());
            }
            (
                Elements::from_nibbles(packed.to_vec(), n as usize),
                Width::I4,
            )
        }
        Width::I8 => {
            let v: Vec<i8> = packed.iter().map(|&b| b as i8).collect();
            let narrowest = Width::of_values(&v);
            (Elements::from_i8(v), narrowest)
        }
        Width::I16 => {
            let v: Vec<i16> = packed
                .chunks_exact(2)
                .map(|c| i16::from_be_bytes([c[0], c[1]]))
                .collect();
            let narrowest = Width::of_values(&v);
            (Elements::from_i16(v), narrowest)
        }
        Width::I32 => {
            let v: Vec<i32> = packed
                .chunks_exact(4)
                .map(|c| i32::from_be_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            let narrowest = Width::of(&v);
            (Elements::from_i32(v), narrowest)
        }
    };
    if narrowest != w {
        return Err(format!(
            "elements stored as {w:?} fit {narrowest:?}: the narrowest width is required"
        ));
    }
    Ok(data)
}

const TAG_HEADER: u8 = 0;
const TAG_NODE: u8 = 1;
const TAG_CONST: u8 = 2;

fn put_shape(w: &mut Writer, s: &[u32]) {
    w.u8(s.len() as u8);
    for &d in s {
        w.u32(d);
    }
}

fn get_shape(r: &mut Reader<'_>) -> Result<Vec<u32>, ModelError> {
    let n = r.u8()? as usize;
    if n > MAX_RANK {
        return Err(r.invalid(format!("rank {n} exceeds {MAX_RANK}")).into());
    }
    (0..n).map(|_| r.u32().map_err(Into::into)).collect()
}

fn put_window(w: &mut Writer, win: &Window) {
    for v in win
        .kernel
        .iter()
        .chain(&win.stride)
        .chain(&win.dilation)
        .chain(&win.pads)
    {
        w.u32(*v);
    }
}

fn get_window(r: &mut Reader<'_>) -> Result<Window, ModelError> {
    let mut v = [0u32; 10];
    for x in v.iter_mut() {
        *x = r.u32()?;
    }
    Ok(Window {
        kernel: [v[0], v[1]],
        stride: [v[2], v[3]],
        dilation: [v[4], v[5]],
        pads: [v[6], v[7], v[8], v[9]],
    })
}

fn put_labels(w: &mut Writer, l: &[u8]) {
    w.u8(l.len() as u8);
    w.raw(l);
}

fn get_labels(r: &mut Reader<'_>) -> Result<Vec<u8>, ModelError> {
    let n = r.u8()? as usize;
    Ok(r.take(n)?.to_vec())
}

/// Encode the header item.
pub fn encode_header(m: &Model) -> Vec<u8> {
    let mut w = Writer::new();
    w.u8(TAG_HEADER);
    w.u8(FORMAT_VERSION);
    w.u32(m.inputs.len() as u32);
    for i in &m.inputs {
        w.str(&i.name);
        put_shape(&mut w, &i.shape);
        w.i8(i.scale);
        w.u8(match i.kind {
            InputKind::Fixed => 0,
            InputKind::Int => 1,
        });
    }
    w.u32(m.consts.len() as u32);
    w.u32(m.nodes.len() as u32);
    w.u32(m.outputs.len() as u32);
    for o in &m.outputs {
        w.str(&o.name);
        w.u32(o.value);
    }
    w.into_bytes()
}

/// Encode one node item.
pub fn encode_node(n: &Node) -> Vec<u8> {
    let mut w = Writer::new();
    w.u8(TAG_NODE);
    w.str(&n.name);
    match &n.op {
        Op::EinSum { a, b, out } => {
            w.u8(1);
            put_labels(&mut w, a);
            put_labels(&mut w, b);
            put_labels(&mut w, out);
        }
        Op::Conv2d { window, groups } => {
            w.u8(2);
            put_window(&mut w, window);
            w.u32(*groups);
        }
        Op::Add => w.u8(3),
        Op::Sub => w.u8(4),
        Op::Mul => w.u8(5),
        Op::Div => w.u8(6),
        Op::Max => w.u8(7),
        Op::Min => w.u8(8),
        Op::Clamp { lo, hi } => {
            w.u8(9);
            w.i32(*lo);
            w.i32(*hi);
        }
        Op::LeakyRelu {
            alpha_q,
            alpha_scale,
        } => {
            w.u8(10);
            w.i32(*alpha_q);
            w.i8(*alpha_scale);
        }
        Op::Lookup { shift, lo } => {
            w.u8(11);
            w.i32(*shift);
            w.i32(*lo);
        }
        Op::Rescale => w.u8(12),
        Op::Sqrt => w.u8(13),
        Op::Rsqrt => w.u8(14),
        Op::Recip => w.u8(15),
        Op::Reduce { kind, axes } => {
            w.u8(16);
            w.u8(*kind as u8);
            w.u32s(axes);
        }
        Op::Softmax { axis, shift, lo } => {
            w.u8(17);
            w.u32(*axis);
            w.i32(*shift);
            w.i32(*lo);
        }
        Op::MaxPool2d { window } => {
            w.u8(18);
            put_window(&mut w, window);
        }
        Op::AvgPool2d {
            window,
            count_include_pad,
        } => {
            w.u8(19);
            put_window(&mut w, window);
            w.u8(*count_include_pad as u8);
        }
        Op::Reshape => w.u8(20),
        Op::Transpose { perm } => {
            w.u8(21);
            w.u32s(perm);
        }
        Op::Concat { axis } => {
            w.u8(22);
            w.u32(*axis);
        }
        Op::Slice {
            axis,
            start,
            end,
            step,
        } => {
            w.u8(23);
            w.u32(*axis);
            w.u32(*start);
            w.u32(*end);
            w.u32(*step);
        }
        Op::Gather { axis } => {
            w.u8(24);
            w.u32(*axis);
        }
        Op::Broadcast => w.u8(25),
    }
    w.u32s(&n.inputs);
    put_shape(&mut w, &n.shape);
    w.i8(n.scale);
    w.into_bytes()
}

/// Encode a constant's descriptor (tag, shape, scale); its item is the descriptor followed by the
/// elements, and its leaf is `keccak256(descriptor ‖ elements_root)`.
pub fn encode_const_desc(c: &Const) -> Vec<u8> {
    let mut w = Writer::new();
    w.u8(TAG_CONST);
    put_shape(&mut w, &c.shape);
    w.i8(c.scale);
    w.into_bytes()
}

/// The leaf hash of a constant.
pub fn const_leaf(c: &Const) -> Hash {
    let mut k = Keccak::new();
    k.update(&encode_const_desc(c));
    k.update(&c.data.root().0);
    k.finalize()
}

/// All item leaves in order: header, nodes, constants.
pub fn leaves(m: &Model) -> Vec<Hash> {
    let mut out = Vec::with_capacity(1 + m.nodes.len() + m.consts.len());
    out.push(keccak256(&encode_header(m)));
    out.extend(m.nodes.iter().map(|n| keccak256(&encode_node(n))));
    out.extend(m.consts.iter().map(const_leaf));
    out
}

/// `keccak256(u64_be(len) ‖ merkle_root(leaves))`: the commitment to a list of leaves.
pub fn list_root(leaves: &[Hash]) -> Hash {
    let mut k = Keccak::new();
    k.update(&(leaves.len() as u64).to_be_bytes());
    k.update(&merkle_root(leaves).0);
    k.finalize()
}

/// The model ID.
pub fn model_id(m: &Model) -> Hash {
    list_root(&leaves(m))
}

/// Encode a model as a `.vty` file.
pub fn encode(m: &Model) -> Vec<u8> {
    encode_with_id(m).0
}

/// Encode a model as a `.vty` file, with its model ID (which the file ends with: computed once).
pub fn encode_with_id(m: &Model) -> (Vec<u8>, Hash) {
    let mut w = Writer::new();
    w.raw(MAGIC);
    w.u8(FILE_VERSION);
    w.u64((1 + m.nodes.len() + m.consts.len()) as u64);
    w.bytes(&encode_header(m));
    for n in &m.nodes {
        w.bytes(&encode_node(n));
    }
    for c in &m.consts {
        let mut item = encode_const_desc(c);
        item.extend_from_slice(&encode_elements(&c.data.transient()));
        w.bytes(&item);
    }
    let id = model_id(m);
    w.raw(&id.0);
    (w.into_bytes(), id)
}

/// Decode one node item (as proven against a model ID in a one-step check).
pub fn decode_node(bytes: &[u8]) -> Result<Node, ModelError> {
    let mut r = Reader::new(bytes);
    if r.u8()? != TAG_NODE {
        return Err(r.invalid("expected a node item").into());
    }
    let name = r.str()?;
    let tag = r.u8()?;
    let op = match tag {
        1 => Op::EinSum {
            a: get_labels(&mut r)?,
            b: get_labels(&mut r)?,
            out: get_labels(&mut r)?,
        },
        2 => Op::Conv2d {
            window: get_window(&mut r)?,
            groups: r.u32()?,
        },
        3 => Op::Add,
        4 => Op::Sub,
        5 => Op::Mul,
        6 => Op::Div,
        7 => Op::Max,
        8 => Op::Min,
        9 => Op::Clamp {
            lo: r.i32()?,
            hi: r.i32()?,
        },
        10 => Op::LeakyRelu {
            alpha_q: r.i32()?,
            alpha_scale: r.i8()?,
        },
        11 => Op::Lookup {
            shift: r.i32()?,
            lo: r.i32()?,
        },
        12 => Op::Rescale,
        13 => Op::Sqrt,
        14 => Op::Rsqrt,
        15 => Op::Recip,
        16 => {
            let kind = match r.u8()? {
                0 => ReduceKind::Sum,
                1 => ReduceKind::Mean,
                2 => ReduceKind::Max,
                3 => ReduceKind::Min,
                k => return Err(r.invalid(format!("unknown reduce kind {k}")).into()),
            };
            Op::Reduce {
                kind,
                axes: r.u32s()?,
            }
        }
        17 => Op::Softmax {
            axis: r.u32()?,
            shift: r.i32()?,
            lo: r.i32()?,
        },
        18 => Op::MaxPool2d {
            window: get_window(&mut r)?,
        },
        19 => {
            let window = get_window(&mut r)?;
            let cip = match r.u8()? {
                0 => false,
                1 => true,
                _ => return Err(r.invalid("count_include_pad must be 0 or 1").into()),
            };
            Op::AvgPool2d {
                window,
                count_include_pad: cip,
            }
        }
        20 => Op::Reshape,
        21 => Op::Transpose { perm: r.u32s()? },
        22 => Op::Concat { axis: r.u32()? },
        23 => Op::Slice {
            axis: r.u32()?,
            start: r.u32()?,
            end: r.u32()?,
            step: r.u32()?,
        },
        24 => Op::Gather { axis: r.u32()? },
        25 => Op::Broadcast,
        t => return Err(r.invalid(format!("unknown op tag {t}")).into()),
    };
    let inputs = r.u32s()?;
    let shape = get_shape(&mut r)?;
    let scale = r.i8()?;
    r.finish()?;
    Ok(Node {
        name,
        op,
        inputs,
        shape,
        scale,
    })
}

/// Read a constant's descriptor (tag, shape, scale).
fn read_const_desc(r: &mut Reader<'_>) -> Result<(Vec<u32>, i8), ModelError> {
    if r.u8()? != TAG_CONST {
        return Err(r.invalid("expected a constant item").into());
    }
    let shape = get_shape(r)?;
    Ok((shape, r.i8()?))
}

/// Decode a constant's descriptor alone (as proven inside its leaf in a one-step check): shape, scale.
pub fn decode_const_desc(bytes: &[u8]) -> Result<(Vec<u32>, i8), ModelError> {
    let mut r = Reader::new(bytes);
    let d = read_const_desc(&mut r)?;
    r.finish()?;
    Ok(d)
}

fn decode_const(bytes: &[u8], file_version: u8) -> Result<Const, ModelError> {
    let mut r = Reader::new(bytes);
    let (shape, scale) = read_const_desc(&mut r)?;
    let n = numel(&shape);
    if file_version >= 2 {
        let data = decode_narrow(r.take(r.remaining())?, n).map_err(|e| r.invalid(e))?;
        return Ok(Const { shape, scale, data });
    }
    if n.saturating_mul(4) != r.remaining() as u64 {
        return Err(r
            .invalid(format!(
                "constant of shape {shape:?} needs {} bytes of data",
                n * 4
            ))
            .into());
    }
    let data = r
        .take(r.remaining())?
        .chunks_exact(4)
        .map(|c| i32::from_be_bytes([c[0], c[1], c[2], c[3]]))
        .collect::<Vec<i32>>();
    Ok(Const {
        shape,
        scale,
        data: data.into(),
    })
}

/// What the header item says: the inputs, the constant and node counts, the outputs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    /// Model inputs.
    pub inputs: Vec<Input>,
    /// Number of constants.
    pub consts: u64,
    /// Number of nodes.
    pub nodes: u64,
    /// Outputs.
    pub outputs: Vec<Output>,
}

/// Decode a header item (as in a file, or as proven against a model ID in a one-step check).
pub fn decode_header(head: &[u8]) -> Result<Header, ModelError> {
    let mut h = Reader::new(head);
    if h.u8()? != TAG_HEADER {
        return Err(h.invalid("expected the header item").into());
    }
    let v = h.u8()?;
    if v != FORMAT_VERSION {
        return Err(ModelError::Version(v as u16));
    }
    let n_inputs = h.count(7)?;
    let mut inputs = Vec::with_capacity(n_inputs);
    for _ in 0..n_inputs {
        let name = h.str()?;
        let shape = get_shape(&mut h)?;
        let scale = h.i8()?;
        let kind = match h.u8()? {
            0 => InputKind::Fixed,
            1 => InputKind::Int,
            k => return Err(h.invalid(format!("unknown input kind {k}")).into()),
        };
        inputs.push(Input {
            name,
            shape,
            scale,
            kind,
        });
    }
    let n_consts = h.u32()? as u64;
    let n_nodes = h.u32()? as u64;
    let n_outputs = h.count(8)?;
    let mut outputs = Vec::with_capacity(n_outputs);
    for _ in 0..n_outputs {
        outputs.push(Output {
            name: h.str()?,
            value: h.u32()?,
        });
    }
    h.finish()?;
    Ok(Header {
        inputs,
        consts: n_consts,
        nodes: n_nodes,
        outputs,
    })
}

/// Decode and validate a `.vty` file; the stored ID must match the contents.
pub fn decode(bytes: &[u8]) -> Result<(Model, Hash), ModelError> {
    let mut r = Reader::new(bytes);
    if r.take(3).map_err(|_| ModelError::BadMagic)? != MAGIC {
        return Err(ModelError::BadMagic);
    }
    let version = r.u8()?;
    if !(1..=FILE_VERSION).contains(&version) {
        return Err(ModelError::Version(version as u16));
    }
    let items = r.u64()?;
    let Header {
        inputs,
        consts: n_consts,
        nodes: n_nodes,
        outputs,
    } = decode_header(r.bytes()?)?;
    if items != 1 + n_nodes + n_consts {
        return Err(r.invalid("item count disagrees with the header").into());
    }
    // Each item needs at least its 4-byte length; reject impossible counts before allocating.
    if (n_nodes + n_consts).saturating_mul(4) > r.remaining() as u64 {
        return Err(r
            .invalid("item count exceeds the file size (truncated file?)")
            .into());
    }
    let mut nodes = Vec::with_capacity(n_nodes as usize);
    for _ in 0..n_nodes {
        nodes.push(decode_node(r.bytes()?)?);
    }
    let mut consts = Vec::with_capacity(n_consts as usize);
    for _ in 0..n_consts {
        consts.push(decode_const(r.bytes()?, version)?);
    }
    let stored = Hash(r.take(32)?.try_into().map_err(|_| r.invalid("bad id"))?);
    r.finish()?;
    let model = Model {
        inputs,
        consts,
        nodes,
        outputs,
    };
    model.validate()?;
    let computed = model_id(&model);
    if computed != stored {
        return Err(ModelError::IdMismatch {
            stored: stored.to_hex(),
            computed: computed.to_hex(),
        });
    }
    Ok((model, computed))
}

/// A proof that one element of one constant (a weight, a bias, a table entry) has a given value in the
/// model with a given ID: the constant's descriptor, the element's path to the constant's elements root,
/// and the constant's leaf path to the model ID.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ConstElementProof {
    /// Number of items in the model (header + nodes + constants).
    pub item_count: u64,
    /// Index of the constant's item.
    pub item_index: u64,
    /// The constant's descriptor bytes (tag, shape, scale).
    pub descriptor: Vec<u8>,
    /// Path from the element to the constant's elements root.
    pub element: ElementProof,
    /// Path from the constant's leaf to the items' Merkle root.
    pub item_path: Vec<Hash>,
}

/// Prove element `index` of constant `c`.
pub fn prove_const_element(m: &Model, c: usize, index: usize) -> Option<ConstElementProof> {
    let k = m.consts.get(c)?;
    let leaves = leaves(m);
    let item_index = 1 + m.nodes.len() + c;
    Some(ConstElementProof {
        item_count: leaves.len() as u64,
        item_index: item_index as u64,
        descriptor: encode_const_desc(k),
        element: ElementProof::new(&k.data.transient(), index)?,
        item_path: merkle_proof(&leaves, item_index)?,
    })
}

/// Check a constant-element proof against a model ID; returns the proven value.
pub fn verify_const_element(id: Hash, p: &ConstElementProof) -> Option<i32> {
    if p.descriptor.first() != Some(&TAG_CONST) {
        return None;
    }
    let mut k = Keccak::new();
    k.update(&p.descriptor);
    k.update(&p.element.root()?.0);
    let leaf = k.finalize();
    let root = root_from_path(
        leaf,
        usize::try_from(p.item_index).ok()?,
        usize::try_from(p.item_count).ok()?,
        &p.item_path,
    )?;
    let mut h = Keccak::new();
    h.update(&p.item_count.to_be_bytes());
    h.update(&root.0);
    (h.finalize() == id).then(|| p.element.value())
}
