//! One element of one node, computed from its operands' elements alone: the *one-step* of a fraud-proof
//! dispute (`docs/spec/disputes.md`). [`eval_element`] follows `docs/spec/canonical.md` §3 element by
//! element, reading operands through an accessor, so the same code computes a value, records which operand
//! elements a value needs (the witness), and is the reference the Solidity `OneStep` contract mirrors.
//!
//! [`prove_step`] builds the witness of node `k`, element `e` from a model and a trace: the node's item and
//! the operands' items with their paths to the model ID, the operands' elements roots with their paths to
//! the trace root, and the operand words a value reads with one multiproof per operand. [`verify_step`]
//! checks a witness against a model ID and a trace root and recomputes the element, as the contract does.

use verity_core::{
    bind_length, merkle_proof, multiproof, multiproof_root, root_from_path, word_leaves, Hash,
    Keccak, ELEMENTS_PER_LEAF,
};

use crate::arith::{div_round, fit, isqrt_round, rshift};
use crate::commit::trace_roots;
use crate::error::ExecError;
use crate::exec::{table_index, Trace};
use crate::ir::*;
use crate::vty::{
    decode_const_desc, decode_header, decode_node, encode_const_desc, encode_header, encode_node,
    leaves,
};

/// Shape and scale of one operand of a node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Operand {
    /// Shape.
    pub shape: Vec<u32>,
    /// Fractional bits.
    pub scale: i8,
}

fn unravel(mut e: u64, shape: &[u32]) -> Vec<u64> {
    let mut idx = vec![0u64; shape.len()];
    for ax in (0..shape.len()).rev() {
        let d = shape[ax] as u64;
        if d > 0 {
            idx[ax] = e % d;
            e /= d;
        }
    }
    idx
}

fn ravel(idx: &[u64], shape: &[u32]) -> u64 {
    idx.iter()
        .zip(shape)
        .fold(0u64, |acc, (&i, &d)| acc * d as u64 + i)
}

/// The flat index in an operand of `shape` that numpy broadcasting maps output index `oi` to.
fn broadcast_index(oi: &[u64], shape: &[u32]) -> u64 {
    let off = oi.len() - shape.len();
    let idx: Vec<u64> = shape
        .iter()
        .enumerate()
        .map(|(i, &d)| if d == 1 { 0 } else { oi[off + i] })
        .collect();
    ravel(&idx, shape)
}

fn rescaled(v: i32, k: i32) -> Result<i32, ExecError> {
    fit(rshift(v as i128, k))
}

/// Iterate over every multi-index of `dims` (row-major); an empty `dims` visits one empty index, a zero
/// dimension none.
fn each_index(
    dims: &[u64],
    mut f: impl FnMut(&[u64]) -> Result<(), ExecError>,
) -> Result<(), ExecError> {
    if dims.contains(&0) {
        return Ok(());
    }
    let mut idx = vec![0u64; dims.len()];
    loop {
        f(&idx)?;
        let mut ax = dims.len();
        loop {
            if ax == 0 {
                return Ok(());
            }
            ax -= 1;
            idx[ax] += 1;
            if idx[ax] < dims[ax] {
                break;
            }
            idx[ax] = 0;
        }
    }
}

/// Element `e` (row-major) of the output of `node`, whose operands have the given shapes and scales,
/// reading operand elements through `get(operand, flat index)`. The node and operands are assumed valid
/// (as a loaded model guarantees); the result is exactly what the executors compute for that element.
pub fn eval_element(
    node: &Node,
    ops: &[Operand],
    e: u64,
    get: &mut dyn FnMut(usize, u64) -> i32,
) -> Result<i32, ExecError> {
    let so = node.scale as i32;
    let os = &node.shape;
    let oi = unravel(e, os);
    let s = |i: usize| ops[i].scale as i32;
    match &node.op {
        Op::EinSum { a, b, out } => {
            let mut size = [1u64; 256];
            for (labels, shape) in [(a, &ops[0].shape), (b, &ops[1].shape), (out, os)] {
                for (&l, &d) in labels.iter().zip(shape.iter()) {
                    size[l as usize] = size[l as usize].max(d as u64);
                }
            }
            let mut summed: Vec<u8> = Vec::new();
            for &l in a.iter().chain(b.iter()) {
                if !out.contains(&l) && !summed.contains(&l) {
                    summed.push(l);
                }
            }
            let dims: Vec<u64> = summed.iter().map(|&l| size[l as usize]).collect();
            let coord = |l: u8, k: &[u64]| -> u64 {
                match out.iter().position(|&x| x == l) {
                    Some(p) => oi[p],
                    None => summed
                        .iter()
                        .position(|&x| x == l)
                        .map(|p| k[p])
                        .unwrap_or(0),
                }
            };
            let index = |labels: &[u8], shape: &[u32], k: &[u64]| -> u64 {
                let idx: Vec<u64> = labels
                    .iter()
                    .zip(shape)
                    .map(|(&l, &d)| if d == 1 { 0 } else { coord(l, k) })
                    .collect();
                ravel(&idx, shape)
            };
            let mut acc = 0i128;
            each_index(&dims, |k| {
                let x = get(0, index(a, &ops[0].shape, k)) as i128;
                let y = get(1, index(b, &ops[1].shape, k)) as i128;
                acc += x * y;
                Ok(())
            })?;
            let sacc = s(0) + s(1);
            if ops.len() > 2 {
                let c = get(2, broadcast_index(&oi, &ops[2].shape)) as i128;
                acc += c << (sacc - s(2));
            }
            fit(rshift(acc, sacc - so))
        }
        Op::Conv2d { window: w, groups } => {
            let (xs, ws) = (&ops[0].shape, &ops[1].shape);
            let (n, o, oy, ox) = (oi[0], oi[1], oi[2] as i64, oi[3] as i64);
            let (c, h, wd) = (xs[1] as u64, xs[2] as i64, xs[3] as i64);
            let (oc, cg, kh, kw) = (ws[0] as u64, ws[1] as u64, ws[2] as u64, ws[3] as u64);
            let grp = o / (oc / *groups as u64);
            let mut acc = 0i128;
            for ci in 0..cg {
                for ky in 0..kh {
                    let iy = oy * w.stride[0] as i64 + ky as i64 * w.dilation[0] as i64
                        - w.pads[0] as i64;
                    for kx in 0..kw {
                        let ix = ox * w.stride[1] as i64 + kx as i64 * w.dilation[1] as i64
                            - w.pads[1] as i64;
                        if iy < 0 || iy >= h || ix < 0 || ix >= wd {
                            continue;
                        }
                        let ch = grp * cg + ci;
                        let xv = get(
                            0,
                            ((n * c + ch) * h as u64 + iy as u64) * wd as u64 + ix as u64,
                        );
                        let wv = get(1, ((o * cg + ci) * kh + ky) * kw + kx);
                        acc += xv as i128 * wv as i128;
                    }
                }
            }
            let sacc = s(0) + s(1);
            if ops.len() > 2 {
                acc += (get(2, o) as i128) << (sacc - s(2));
            }
            fit(rshift(acc, sacc - so))
        }
        Op::Add | Op::Sub | Op::Mul | Op::Div | Op::Max | Op::Min => {
            let x = get(0, broadcast_index(&oi, &ops[0].shape)) as i128;
            let y = get(1, broadcast_index(&oi, &ops[1].shape)) as i128;
            let (sa, sb) = (s(0), s(1));
            let m = sa.max(sb);
            let (xl, yl) = (x << (m - sa), y << (m - sb));
            match &node.op {
                Op::Add => fit(rshift(xl + yl, m - so)),
                Op::Sub => fit(rshift(xl - yl, m - so)),
                Op::Max => fit(rshift(xl.max(yl), m - so)),
                Op::Min => fit(rshift(xl.min(yl), m - so)),
                Op::Mul => fit(rshift(x * y, sa + sb - so)),
                _ => {
                    let ex = so + sb - sa;
                    let (num, den) = if ex >= 0 { (x << ex, y) } else { (x, y << -ex) };
                    fit(div_round(num, den)?)
                }
            }
        }
        Op::Clamp { lo, hi } => {
            let x = get(0, e) as i128;
            Ok(rshift(x, s(0) - so).clamp(*lo as i128, *hi as i128) as i32)
        }
        Op::LeakyRelu {
            alpha_q,
            alpha_scale,
        } => {
            let x = get(0, e) as i128;
            fit(if x >= 0 {
                rshift(x, s(0) - so)
            } else {
                rshift(x * *alpha_q as i128, s(0) + *alpha_scale as i32 - so)
            })
        }
        Op::Lookup { shift, lo } => {
            let x = get(0, e) as i128;
            let len = numel(&ops[1].shape) as usize;
            Ok(get(1, table_index(x, *shift, *lo, len) as u64))
        }
        Op::Rescale | Op::Reshape => rescaled(get(0, e), s(0) - so),
        Op::Sqrt => {
            let x = get(0, e);
            if x < 0 {
                return Err(ExecError::NegativeSqrt);
            }
            let n = rshift(x as i128, s(0) - 2 * so);
            fit(isqrt_round(n.max(0) as u128) as i128)
        }
        Op::Rsqrt => {
            let x = get(0, e);
            if x < 0 {
                return Err(ExecError::NegativeSqrt);
            }
            if x == 0 {
                return Err(ExecError::DivisionByZero);
            }
            let ex = 2 * so + s(0);
            let q = if ex >= 0 {
                (1i128 << ex) / x as i128
            } else {
                0
            };
            fit(isqrt_round(q as u128) as i128)
        }
        Op::Recip => {
            let x = get(0, e) as i128;
            let ex = so + s(0);
            let (num, den) = if ex >= 0 {
                (1i128 << ex, x)
            } else {
                (1, x << -ex)
            };
            fit(div_round(num, den)?)
        }
        Op::Reduce { kind, axes } => {
            let xs = &ops[0].shape;
            let dims: Vec<u64> = axes.iter().map(|&a| xs[a as usize] as u64).collect();
            let count: u64 = dims.iter().product();
            if count == 0 {
                return Ok(0);
            }
            let mut acc: Option<i128> = None;
            let mut idx = oi.clone();
            each_index(&dims, |k| {
                for (j, &a) in axes.iter().enumerate() {
                    idx[a as usize] = k[j];
                }
                let v = get(0, ravel(&idx, xs)) as i128;
                acc = Some(match (kind, acc) {
                    (_, None) => v,
                    (ReduceKind::Sum | ReduceKind::Mean, Some(a)) => a + v,
                    (ReduceKind::Max, Some(a)) => a.max(v),
                    (ReduceKind::Min, Some(a)) => a.min(v),
                });
                Ok(())
            })?;
            let acc = acc.unwrap_or(0);
            match kind {
                ReduceKind::Mean => {
                    let ex = so - s(0);
                    let (num, den) = if ex >= 0 {
                        (acc << ex, count as i128)
                    } else {
                        (acc, (count as i128) << -ex)
                    };
                    fit(div_round(num, den)?)
                }
                _ => fit(rshift(acc, s(0) - so)),
            }
        }
        Op::Softmax { axis, shift, lo } => {
            let ax = *axis as usize;
            let xs = &ops[0].shape;
            let n = xs[ax] as u64;
            let len = numel(&ops[1].shape) as usize;
            let mut idx = oi.clone();
            let mut at = |j: u64| {
                idx[ax] = j;
                ravel(&idx, xs)
            };
            let lane: Vec<i128> = (0..n).map(|j| get(0, at(j)) as i128).collect();
            let mx = lane.iter().copied().max().unwrap_or(0);
            let mut sum = 0i128;
            let mut mine = 0i128;
            for (j, &x) in lane.iter().enumerate() {
                let ej = get(1, table_index(x - mx, *shift, *lo, len) as u64) as i128;
                sum += ej;
                if j as u64 == oi[ax] {
                    mine = ej;
                }
            }
            fit(div_round(mine << so, sum)?)
        }
        Op::MaxPool2d { window: w } | Op::AvgPool2d { window: w, .. } => {
            let xs = &ops[0].shape;
            let (nc, oy, ox) = (oi[0] * xs[1] as u64 + oi[1], oi[2] as i64, oi[3] as i64);
            let (h, wd) = (xs[2] as i64, xs[3] as i64);
            let mut taps = 0i128;
            let mut sum = 0i128;
            let mut mx: Option<i128> = None;
            for ky in 0..w.kernel[0] as i64 {
                let iy = oy * w.stride[0] as i64 + ky * w.dilation[0] as i64 - w.pads[0] as i64;
                for kx in 0..w.kernel[1] as i64 {
                    let ix = ox * w.stride[1] as i64 + kx * w.dilation[1] as i64 - w.pads[1] as i64;
                    if iy < 0 || iy >= h || ix < 0 || ix >= wd {
                        continue;
                    }
                    let v = get(0, (nc * h as u64 + iy as u64) * wd as u64 + ix as u64) as i128;
                    taps += 1;
                    sum += v;
                    mx = Some(mx.map_or(v, |m| m.max(v)));
                }
            }
            match &node.op {
                Op::AvgPool2d {
                    count_include_pad, ..
                } => {
                    let count = if *count_include_pad {
                        w.kernel[0] as i128 * w.kernel[1] as i128
                    } else {
                        taps
                    };
                    if count == 0 {
                        return Ok(0);
                    }
                    let ex = so - s(0);
                    let (num, den) = if ex >= 0 {
                        (sum << ex, count)
                    } else {
                        (sum, count << -ex)
                    };
                    fit(div_round(num, den)?)
                }
                _ => fit(rshift(mx.unwrap_or(0), s(0) - so)),
            }
        }
        Op::Transpose { perm } => {
            let mut idx = vec![0u64; oi.len()];
            for (i, &p) in perm.iter().enumerate() {
                idx[p as usize] = oi[i];
            }
            rescaled(get(0, ravel(&idx, &ops[0].shape)), s(0) - so)
        }
        Op::Concat { axis } => {
            let ax = *axis as usize;
            let mut at = oi[ax];
            for (p, op) in ops.iter().enumerate() {
                let d = op.shape[ax] as u64;
                if at < d {
                    let mut idx = oi.clone();
                    idx[ax] = at;
                    return rescaled(get(p, ravel(&idx, &op.shape)), s(p) - so);
                }
                at -= d;
            }
            Err(ExecError::IndexOutOfRange {
                index: oi[ax] as i64,
                size: 0,
            })
        }
        Op::Slice {
            axis, start, step, ..
        } => {
            let ax = *axis as usize;
            let mut idx = oi.clone();
            idx[ax] = *start as u64 + oi[ax] * *step as u64;
            rescaled(get(0, ravel(&idx, &ops[0].shape)), s(0) - so)
        }
        Op::Gather { axis } => {
            let ax = *axis as usize;
            let (ds, is) = (&ops[0].shape, &ops[1].shape);
            let ir = is.len();
            let i = get(1, ravel(&oi[ax..ax + ir], is));
            let dim = ds[ax] as i64;
            let j = if i < 0 { i as i64 + dim } else { i as i64 };
            if j < 0 || j >= dim {
                return Err(ExecError::IndexOutOfRange {
                    index: i as i64,
                    size: dim as usize,
                });
            }
            let mut idx: Vec<u64> = oi[..ax].to_vec();
            idx.push(j as u64);
            idx.extend_from_slice(&oi[ax + ir..]);
            rescaled(get(0, ravel(&idx, ds)), s(0) - so)
        }
        Op::Broadcast => rescaled(get(0, broadcast_index(&oi, &ops[0].shape)), s(0) - so),
    }
}

/// Where one operand of a one-step comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    /// A model input (shape and scale from the header; elements root in the trace).
    Input,
    /// A constant (descriptor and elements root in the model).
    Const,
    /// An earlier node's output (shape and scale from its item; elements root in the trace).
    Node,
}

/// The evidence for one operand.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct OperandWitness {
    /// Where the operand comes from.
    pub source: Source,
    /// A constant's descriptor or a node's item; empty for a model input.
    #[serde(with = "hex_bytes")]
    pub item: Vec<u8>,
    /// Path of that item's leaf to the model's item root (empty for a model input).
    pub item_path: Vec<Hash>,
    /// The operand's elements root.
    pub root: Hash,
    /// Path of `root` to the trace's Merkle root (empty for a constant).
    pub trace_path: Vec<Hash>,
    /// Indices of the words supplied, strictly increasing.
    pub word_indices: Vec<u64>,
    /// The words (8 big-endian `i32` each).
    pub words: Vec<Hash>,
    /// Multiproof of the words' leaves against the operand's word tree.
    pub proof: Vec<Hash>,
}

/// Everything a one-step check of node `node_index`, element `element` needs.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct StepWitness {
    /// Number of model items (header, nodes, constants).
    pub item_count: u64,
    /// Merkle root of the model items: `model ID = keccak256(u64_be(item_count) ‖ item_root)`.
    pub item_root: Hash,
    /// The header item.
    #[serde(with = "hex_bytes")]
    pub header: Vec<u8>,
    /// Its path (item 0).
    pub header_path: Vec<Hash>,
    /// Node index k.
    pub node_index: u64,
    /// The node's item.
    #[serde(with = "hex_bytes")]
    pub node: Vec<u8>,
    /// Its path (item 1 + k).
    pub node_path: Vec<Hash>,
    /// Element index in the node's output.
    pub element: u64,
    /// Merkle root of the trace's tensor roots: `trace root = keccak256(u64_be(I + N) ‖ trace_tree)`.
    pub trace_tree: Hash,
    /// One entry per node input, in order.
    pub operands: Vec<OperandWitness>,
}

mod hex_bytes {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(b: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&verity_core::eth::to_hex(b))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s = String::deserialize(d)?;
        verity_core::eth::from_hex(&s).ok_or_else(|| serde::de::Error::custom("bad hex bytes"))
    }
}

/// Why a witness cannot be built or does not check.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum StepError {
    /// The node or element index is out of range.
    #[error("{0}")]
    Range(String),
    /// The witness does not match the model ID or the trace root.
    #[error("witness rejected: {0}")]
    Rejected(String),
}

fn words_of(elems: &[i32], indices: &[u64]) -> Vec<Hash> {
    indices
        .iter()
        .map(|&w| Hash(verity_core::merkle::pack_word(elems, w as usize)))
        .collect()
}

/// Shapes and scales of `node`'s inputs in `model`.
pub fn operands_of(model: &Model, node: &Node) -> Vec<Operand> {
    node.inputs
        .iter()
        .filter_map(|&v| model.value(v))
        .map(|i| Operand {
            shape: i.shape.to_vec(),
            scale: i.scale,
        })
        .collect()
}

/// The elements of value `v` in a run of `model`: a constant's data, else its tensor in `trace` (empty
/// if `v` is out of range).
pub fn value_data<'a>(model: &'a Model, trace: &'a Trace, v: u32) -> &'a [i32] {
    match model.const_of(v) {
        Some(c) => &c.data,
        None => model
            .trace_leaf(v)
            .and_then(|l| trace.tensors.get(l))
            .map(|t| t.as_slice())
            .unwrap_or(&[]),
    }
}

/// Build the witness for element `element` of node `k` of `model` run with `trace`, and the value it
/// evaluates to (an error if the canonical semantics stop at that element).
pub fn prove_step(
    model: &Model,
    trace: &Trace,
    k: usize,
    element: u64,
) -> Result<(StepWitness, Result<i32, ExecError>), StepError> {
    let node = model
        .nodes
        .get(k)
        .ok_or_else(|| StepError::Range(format!("no node {k}")))?;
    if element >= numel(&node.shape) {
        return Err(StepError::Range(format!(
            "node {k} has {} elements, not {}",
            numel(&node.shape),
            element + 1
        )));
    }
    let ni = model.inputs.len();
    let nc = model.consts.len();
    if trace.tensors.len() != ni + model.nodes.len() {
        return Err(StepError::Range(
            "trace does not belong to this model".into(),
        ));
    }
    let items = leaves(model);
    let troots = trace_roots(trace);
    let data = |v: u32| value_data(model, trace, v);
    let ops = operands_of(model, node);
    let mut touched: Vec<std::collections::BTreeSet<u64>> = vec![Default::default(); ops.len()];
    let value = eval_element(node, &ops, element, &mut |o, i| {
        touched[o].insert(i / ELEMENTS_PER_LEAF as u64);
        data(node.inputs[o])[i as usize]
    });
    let mut operands = Vec::new();
    for (o, &v) in node.inputs.iter().enumerate() {
        let elems = data(v);
        let word_indices: Vec<u64> = touched[o].iter().copied().collect();
        let idx: Vec<usize> = word_indices.iter().map(|&w| w as usize).collect();
        let proof = if idx.is_empty() {
            Vec::new()
        } else {
            multiproof(&word_leaves(elems), &idx)
                .ok_or_else(|| StepError::Range("word index out of range".into()))?
        };
        let vi = v as usize;
        let (source, item, item_path, trace_path) = if vi < ni {
            (
                Source::Input,
                Vec::new(),
                Vec::new(),
                merkle_proof(&troots, vi),
            )
        } else if vi < ni + nc {
            let c = vi - ni;
            (
                Source::Const,
                encode_const_desc(&model.consts[c]),
                merkle_proof(&items, 1 + model.nodes.len() + c).unwrap_or_default(),
                Some(Vec::new()),
            )
        } else {
            let j = vi - ni - nc;
            (
                Source::Node,
                encode_node(&model.nodes[j]),
                merkle_proof(&items, 1 + j).unwrap_or_default(),
                merkle_proof(&troots, ni + j),
            )
        };
        operands.push(OperandWitness {
            source,
            item,
            item_path,
            root: verity_core::elements_root(elems),
            trace_path: trace_path.unwrap_or_default(),
            words: words_of(elems, &word_indices),
            word_indices,
            proof,
        });
    }
    let witness = StepWitness {
        item_count: items.len() as u64,
        item_root: verity_core::merkle_root(&items),
        header: encode_header(model),
        header_path: merkle_proof(&items, 0).unwrap_or_default(),
        node_index: k as u64,
        node: encode_node(node),
        node_path: merkle_proof(&items, 1 + k).unwrap_or_default(),
        element,
        trace_tree: verity_core::merkle_root(&troots),
        operands,
    };
    Ok((witness, value))
}

fn rejected(why: impl Into<String>) -> StepError {
    StepError::Rejected(why.into())
}

fn keccak_concat(parts: &[&[u8]]) -> Hash {
    let mut k = Keccak::new();
    for p in parts {
        k.update(p);
    }
    k.finalize()
}

/// Check `w` against `model_id` and `trace_root` and recompute its element: `Ok(value)` is what the
/// canonical semantics give for that element of the node, from operands the witness proves; `Err` (inner)
/// if the semantics stop there. The outer error means the witness itself is invalid.
pub fn verify_step(
    model_id: Hash,
    trace_root: Hash,
    w: &StepWitness,
) -> Result<Result<i32, ExecError>, StepError> {
    if bind_length(w.item_count as usize, w.item_root) != model_id {
        return Err(rejected("item root does not give the model ID"));
    }
    let n_items = w.item_count as usize;
    let item_ok = |leaf: Hash, index: u64, path: &[Hash]| {
        root_from_path(leaf, index as usize, n_items, path) == Some(w.item_root)
    };
    if !item_ok(verity_core::keccak256(&w.header), 0, &w.header_path) {
        return Err(rejected("header not in the model"));
    }
    let h = decode_header(&w.header).map_err(|e| rejected(format!("header: {e}")))?;
    let (ni, nc, nn) = (h.inputs.len() as u64, h.consts, h.nodes);
    if w.node_index >= nn
        || !item_ok(
            verity_core::keccak256(&w.node),
            1 + w.node_index,
            &w.node_path,
        )
    {
        return Err(rejected("node not in the model"));
    }
    let node = decode_node(&w.node).map_err(|e| rejected(format!("node item: {e}")))?;
    let trace_count = (ni + nn) as usize;
    if bind_length(trace_count, w.trace_tree) != trace_root {
        return Err(rejected("trace tree does not give the trace root"));
    }
    if w.element >= numel(&node.shape) {
        return Err(rejected("element out of range"));
    }
    if w.operands.len() != node.inputs.len() {
        return Err(rejected("one operand per node input"));
    }
    let mut ops = Vec::new();
    let mut words: Vec<(&[u64], &[Hash])> = Vec::new();
    for (o, (&v, ow)) in node.inputs.iter().zip(&w.operands).enumerate() {
        let v = v as u64;
        let info = if v < ni {
            if root_from_path(ow.root, v as usize, trace_count, &ow.trace_path)
                .is_none_or(|r| r != w.trace_tree)
            {
                return Err(rejected(format!(
                    "operand {o}: input root not in the trace"
                )));
            }
            let i = &h.inputs[v as usize];
            Operand {
                shape: i.shape.clone(),
                scale: i.scale,
            }
        } else if v < ni + nc {
            let leaf = keccak_concat(&[&ow.item, &ow.root.0]);
            if !item_ok(leaf, 1 + nn + (v - ni), &ow.item_path) {
                return Err(rejected(format!("operand {o}: constant not in the model")));
            }
            let (shape, scale) = decode_const_desc(&ow.item)
                .map_err(|e| rejected(format!("operand {o}: descriptor: {e}")))?;
            Operand { shape, scale }
        } else {
            let j = v - ni - nc;
            if j >= w.node_index {
                return Err(rejected(format!("operand {o} is not an earlier node")));
            }
            if !item_ok(verity_core::keccak256(&ow.item), 1 + j, &ow.item_path) {
                return Err(rejected(format!("operand {o}: node not in the model")));
            }
            if root_from_path(ow.root, (ni + j) as usize, trace_count, &ow.trace_path)
                .is_none_or(|r| r != w.trace_tree)
            {
                return Err(rejected(format!("operand {o}: node root not in the trace")));
            }
            let n = decode_node(&ow.item).map_err(|e| rejected(format!("operand item: {e}")))?;
            Operand {
                shape: n.shape,
                scale: n.scale,
            }
        };
        let len = numel(&info.shape) as usize;
        if !ow.word_indices.is_empty() {
            if ow.words.len() != ow.word_indices.len() {
                return Err(rejected(format!("operand {o}: one word per index")));
            }
            let width = len.div_ceil(ELEMENTS_PER_LEAF);
            let items: Vec<(usize, Hash)> = ow
                .word_indices
                .iter()
                .zip(&ow.words)
                .map(|(&i, wd)| (i as usize, verity_core::keccak256(&wd.0)))
                .collect();
            let tree = multiproof_root(width, &items, &ow.proof)
                .ok_or_else(|| rejected(format!("operand {o}: malformed multiproof")))?;
            if bind_length(len, tree) != ow.root {
                return Err(rejected(format!(
                    "operand {o}: words not in its elements root"
                )));
            }
        }
        ops.push(info);
        words.push((&ow.word_indices, &ow.words));
    }
    let mut missing = None;
    let value = eval_element(&node, &ops, w.element, &mut |o, i| {
        let (idx, wd) = words[o];
        match idx.binary_search(&(i / ELEMENTS_PER_LEAF as u64)) {
            Ok(p) => {
                let j = (i as usize % ELEMENTS_PER_LEAF) * 4;
                let b = &wd[p].0[j..j + 4];
                i32::from_be_bytes([b[0], b[1], b[2], b[3]])
            }
            Err(_) => {
                missing.get_or_insert((o, i));
                0
            }
        }
    });
    if let Some((o, i)) = missing {
        return Err(rejected(format!("operand {o}: element {i} not supplied")));
    }
    Ok(value)
}

/// Evaluate every element of every node alone from the trace's operands and compare with the trace:
/// the number of elements checked, or the first disagreement. (How the fixtures pin the one-step
/// evaluator to the executors.)
pub fn check_every_element(model: &Model, trace: &Trace) -> Result<u64, String> {
    let ni = model.inputs.len();
    if trace.tensors.len() != ni + model.nodes.len() {
        return Err("trace does not belong to this model".into());
    }
    let data = |v: u32| value_data(model, trace, v);
    let mut checked = 0;
    for (k, node) in model.nodes.iter().enumerate() {
        let ops = operands_of(model, node);
        let want = &trace.tensors[ni + k];
        for (e, &w) in want.iter().enumerate() {
            let got = eval_element(node, &ops, e as u64, &mut |o, i| {
                data(node.inputs[o])[i as usize]
            });
            if got != Ok(w) {
                return Err(format!(
                    "node {k} ({} {}) element {e}: one-step {got:?}, run {w}",
                    node.op.name(),
                    node.name
                ));
            }
            checked += 1;
        }
    }
    Ok(checked)
}
