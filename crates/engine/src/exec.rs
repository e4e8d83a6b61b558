//! Executing a canonical model: a reference executor (plain loops over exact `i128` arithmetic, written to
//! mirror the spec) and a fast executor (packed, blocked `i64` GEMM and im2col convolution, AVX2 when the
//! CPU has it, optional threads). Both give identical bits; property tests and the fixtures check it.

use crate::arith::{div_round, div_round_fast, fit, isqrt_round, rshift};
use crate::elements::Elements;
use crate::error::ExecError;
use crate::fuse::{self, Role};
use crate::ir::*;
use crate::kernels::{self, RowHook};
use std::borrow::Borrow;
use std::sync::Arc;

/// Which implementation runs the heavy ops (`EinSum`, `Conv2d`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Plain loops that follow the spec's definitions literally.
    Reference,
    /// Packed kernels on up to `threads` threads (1 = current thread only).
    Fast {
        /// Worker threads for large contractions.
        threads: usize,
    },
}

impl Default for Mode {
    fn default() -> Self {
        Mode::Fast { threads: 1 }
    }
}

/// Row-major strides of a shape.
pub fn strides(shape: &[usize]) -> Vec<usize> {
    let mut s = vec![1; shape.len()];
    for i in (0..shape.len().saturating_sub(1)).rev() {
        s[i] = s[i + 1] * shape[i + 1];
    }
    s
}

fn us(shape: &[u32]) -> Vec<usize> {
    shape.iter().map(|&d| d as usize).collect()
}

/// Strides of `inp` as seen from `out_shape` under numpy broadcasting (0 on broadcast axes).
pub fn broadcast_strides(out: &[usize], inp: &[usize]) -> Vec<usize> {
    let s = strides(inp);
    let off = out.len() - inp.len();
    (0..out.len())
        .map(|i| {
            if i < off || inp[i - off] == 1 {
                0
            } else {
                s[i - off]
            }
        })
        .collect()
}

/// Visit every output multi-index in row-major order with the matching offsets of several inputs.
pub fn for_each_index(out: &[usize], ins: &[Vec<usize>], mut f: impl FnMut(usize, &[usize])) {
    let n: usize = out.iter().product();
    if n == 0 {
        return;
    }
    let r = out.len();
    let mut idx = vec![0usize; r];
    let mut offs = vec![0usize; ins.len()];
    for flat in 0..n {
        f(flat, &offs);
        // odometer increment
        let mut ax = r;
        while ax > 0 {
            ax -= 1;
            idx[ax] += 1;
            for (o, st) in offs.iter_mut().zip(ins) {
                *o += st[ax];
            }
            if idx[ax] < out[ax] {
                break;
            }
            for (o, st) in offs.iter_mut().zip(ins) {
                *o -= st[ax] * out[ax];
            }
            idx[ax] = 0;
        }
    }
}

/// The elements `x[base + Σ idx·strides]` for every index of `shape`, in row-major order (Slice,
/// Broadcast, Transpose): a loop over the last axis per output row.
fn strided_copy(x: &[i32], base: usize, shape: &[usize], strides: &[usize]) -> Vec<i32> {
    let Some((&len, outer)) = shape.split_last() else {
        return vec![x[base]];
    };
    // (from the executor's pool: every element is written below)
    let mut out = crate::buffers::take_overwritten(shape.iter().product());
    if out.is_empty() {
        return out;
    }
    let step = strides[outer.len()];
    for_each_index(outer, &[strides[..outer.len()].to_vec()], |row, o| {
        let (at, dst) = (base + o[0], &mut out[row * len..(row + 1) * len]);
        if step == 1 {
            dst.copy_from_slice(&x[at..at + len]);
        } else {
            for (j, d) in dst.iter_mut().enumerate() {
                *d = x[at + j * step];
            }
        }
    });
    out
}

/// A constant matrix `w` (`o × g`, row-major) for products with a few vectors, prepared once.
struct MatVec {
    w: MatWeights,
    o: usize,
    g: usize,
    max: u128,
}

/// How a [`MatVec`] holds its matrix.
enum MatWeights {
    /// Every element fits `i8`: the rows as bytes (the constant's own 8-bit elements when it holds
    /// them so, else a copy), each output a dot product of a row with the vector.
    Bytes(Bytes),
    /// Wider elements: the matrix transposed (`g × o`), each vector element scaling a row of it into
    /// `i64` sums.
    Wide(Vec<i32>),
}

/// A matrix's 8-bit elements: shared with the constant, or a copy.
enum Bytes {
    Shared(Elements),
    Own(Vec<i8>),
}

impl MatVec {
    fn new(c: &Elements, g: usize) -> MatVec {
        let g = g.max(1);
        let o = c.len() / g;
        if let Some(w) = c.bytes() {
            let max = kernels::max_abs_of(w);
            return MatVec {
                w: MatWeights::Bytes(Bytes::Shared(c.clone())),
                o,
                g,
                max,
            };
        }
        let w = c.transient();
        let max = kernels::max_abs(&w);
        if max <= 127 && w.iter().all(|&v| v >= -128) {
            let bytes = w.iter().map(|&v| v as i8).collect();
            return MatVec {
                w: MatWeights::Bytes(Bytes::Own(bytes)),
                o,
                g,
                max,
            };
        }
        let mut wt = vec![0; w.len()];
        for (r, row) in w.chunks_exact(g).enumerate() {
            for (c, &v) in row.iter().enumerate() {
                wt[c * o + r] = v;
            }
        }
        MatVec {
            w: MatWeights::Wide(wt),
            o,
            g,
            max,
        }
    }

    /// `y[m, o] = fit(rshift(Σ_g w[o, g] · x[m, g], shift))`, the reference's integers. 8-bit weights and
    /// vectors below `2^15`: dot products in `i32` runs short enough that no sum leaves `i32`
    /// (`|w| ≤ 128`), the runs added in `i64`; larger vectors: exact `i128` sums. Wider weights: sums
    /// over as many columns as keep `max|w| · max|x|` times their count below `2^62` run in `i64` over all
    /// outputs at once, added in `i128` when there are several. `x` holds whole rows of `g` (a validated
    /// model's shapes).
    fn run(&self, x: &[i32], shift: i32, threads: usize) -> Result<Vec<i32>, ExecError> {
        let (o, g) = (self.o, self.g);
        let mx = kernels::max_abs(x);
        let mut out = crate::buffers::take(x.len() / g * o, 0i32);
        if o == 0 {
            return Ok(out);
        }
        let failed = crate::par::FirstError::default();
        match &self.w {
            MatWeights::Bytes(b) if mx < 1 << 15 => {
                let w = match b {
                    Bytes::Shared(e) => e.bytes().unwrap_or(&[]),
                    Bytes::Own(v) => v,
                };
                // runs of at most `per` products sum in i32 (|w| ≤ 128), the runs in i64
                let per =
                    (((1u64 << 31) - 1) / (128 * mx.max(1) as u64)).clamp(1, g as u64) as usize;
                // a row of weights is read once per vector: split the rows, not the vectors
                let th = if o * g >= 1 << 19 { threads } else { 1 };
                for (xr, yr) in x.chunks_exact(g).zip(out.chunks_exact_mut(o)) {
                    let xs: Vec<i16> = xr.iter().map(|&v| v as i16).collect();
                    crate::par::rows(yr, 1, th, 16, |first, part| {
                        let acc: Vec<i64> = (first..first + part.len())
                            .map(|r| {
                                let row = &w[r * g..(r + 1) * g];
                                row.chunks(per)
                                    .zip(xs.chunks(per))
                                    .map(|(a, b)| kernels::dot8(a, b) as i64)
                                    .sum()
                            })
                            .collect();
                        if let Err(e) = kernels::requantize_row(part, &acc, 0, shift) {
                            failed.set(e);
                        }
                    });
                }
            }
            MatWeights::Bytes(_) => {
                // wide vectors: exact i64 sums of the rows (rare: 8-bit weights meet 8- or 16-bit
                // activations)
                let w = self.widened();
                for (xr, yr) in x.chunks_exact(g).zip(out.chunks_exact_mut(o)) {
                    for (r, y) in yr.iter_mut().enumerate() {
                        let v: i128 = w[r * g..(r + 1) * g]
                            .iter()
                            .zip(xr)
                            .map(|(&a, &b)| a as i128 * b as i128)
                            .sum();
                        *y = fit(rshift(v, shift))?;
                    }
                }
            }
            MatWeights::Wide(wt) => {
                let per = ((1u128 << 62) / (self.max * mx).max(1)).clamp(1, g as u128) as usize;
                for (xr, yr) in x.chunks_exact(g).zip(out.chunks_exact_mut(o)) {
                    crate::par::rows(yr, 1, threads, 64, |first, part| {
                        let n = part.len();
                        let mut acc = vec![0i64; n];
                        let mut wide: Vec<i128> = Vec::new();
                        for (c0, xs) in xr.chunks(per).enumerate() {
                            acc.iter_mut().for_each(|a| *a = 0);
                            for (j, &xv) in xs.iter().enumerate() {
                                let c = c0 * per + j;
                                axpy(&mut acc, &wt[c * o + first..][..n], xv as i64);
                            }
                            if per < g {
                                wide.resize(n, 0);
                                for (w, &a) in wide.iter_mut().zip(&acc) {
                                    *w += a as i128;
                                }
                            }
                        }
                        let done = if per >= g {
                            kernels::requantize_row(part, &acc, 0, shift)
                        } else {
                            part.iter_mut()
                                .zip(&wide)
                                .try_for_each(|(y, &v)| fit(rshift(v, shift)).map(|r| *y = r))
                        };
                        if let Err(e) = done {
                            failed.set(e);
                        }
                    });
                }
            }
        }
        failed.into_result()?;
        Ok(out)
    }

    /// The 8-bit matrix as `i32` (row-major).
    fn widened(&self) -> Vec<i32> {
        match &self.w {
            MatWeights::Bytes(Bytes::Shared(e)) => e.transient().into_owned(),
            MatWeights::Bytes(Bytes::Own(v)) => v.iter().map(|&b| b as i32).collect(),
            MatWeights::Wide(_) => Vec::new(),
        }
    }
}

#[inline(always)]
fn axpy_body(acc: &mut [i64], w: &[i32], x: i64) {
    for (a, &v) in acc.iter_mut().zip(w) {
        *a += v as i64 * x;
    }
}

crate::multiversion! {
    fn axpy(acc: &mut [i64], w: &[i32], x: i64) -> () = axpy_body
}

/// Whether an `EinSum` is `{og, g → o}` or `{og, mg → mo}`: a matrix times a vector (or a few).
/// Whether an `EinSum` multiplies a constant matrix `b = [o, g]` (its second input) by a vector `a`
/// laid out as `g` among axes of length one (`a_shape`), into `o` among axes of length one: a
/// classifier's `Gemm` after a global pooling (`{g,1,1}, {o,g} → {1,o}`) is a matrix times a vector.
fn matvec_second(a: &[u8], b: &[u8], out: &[u8], a_shape: &[usize], out_shape: &[usize]) -> bool {
    let ([o, g], true) = (b, a.len() == a_shape.len() && out.len() == out_shape.len()) else {
        return false;
    };
    let once = |labels: &[u8], l: &u8| labels.iter().filter(|&x| x == l).count() == 1;
    let unit_else = |labels: &[u8], shape: &[usize], keep: &u8| {
        labels.iter().zip(shape).all(|(l, &d)| l == keep || d == 1)
    };
    o != g
        && once(a, g)
        && !a.contains(o)
        && once(out, o)
        && !out.contains(g)
        && unit_else(a, a_shape, g)
        && unit_else(out, out_shape, o)
}

/// Which input of a two-input `EinSum` is a matrix applied to a vector ([`MatVec`]): the first
/// (`{og, g → o}`, `{og, mg → mo}`), or the second when it is a constant ([`matvec_second`]).
fn matvec_at(model: &Model, node: &Node, (a, b, out): (&[u8], &[u8], &[u8])) -> Option<usize> {
    if matvec(a, b, out) {
        return Some(0);
    }
    let a_shape = us(model.value(node.inputs[0])?.shape);
    let second = model.const_of(node.inputs[1]).is_some()
        && matvec_second(a, b, out, &a_shape, &us(&node.shape));
    second.then_some(1)
}

fn matvec(a: &[u8], b: &[u8], out: &[u8]) -> bool {
    match (a, b, out) {
        ([o, g], [g2], [o2]) => g2 == g && o2 == o && o != g,
        ([o, g], [m, g2], [m2, o2]) => g2 == g && o2 == o && m2 == m && o != g && m != o && m != g,
        _ => false,
    }
}

/// The sparse form of an `EinSum` applying a constant matrix along one axis of its other operand
/// ([`crate::taps::AxisTaps`]), without a bias.
fn axis_taps(
    model: &Model,
    node: &Node,
    (a, b, out): (&[u8], &[u8], &[u8]),
) -> Option<crate::taps::AxisTaps> {
    if node.inputs.len() != 2 || model.const_of(node.inputs[0]).is_some() {
        return None;
    }
    let m = model.const_of(node.inputs[1])?;
    let shape = us(model.value(node.inputs[0])?.shape);
    crate::taps::AxisTaps::new((a, b, out), &shape, &m.data.transient())
}

/// `x` rescaled by `k` like [`map_rescale`], kept as it is when `k` is 0.
/// `x` rescaled by `k` in place (an error discards it).
fn rescaled(mut x: Vec<i32>, k: i32) -> Result<Vec<i32>, ExecError> {
    if k != 0 {
        for v in x.iter_mut() {
            *v = fit(rshift(*v as i128, k))?;
        }
    }
    Ok(x)
}

/// `x` rescaled by `k` into a buffer of the current pool.
fn map_rescale(x: &[i32], k: i32) -> Result<Vec<i32>, ExecError> {
    // every element is written below (an error discards the buffer)
    let mut out = crate::buffers::take_overwritten(x.len());
    if k == 0 {
        out.copy_from_slice(x);
        return Ok(out);
    }
    for (o, &v) in out.iter_mut().zip(x) {
        *o = fit(rshift(v as i128, k))?;
    }
    Ok(out)
}

/// The result of a traced run: every input and node output, in value order (constants excluded).
#[derive(Clone, Debug)]
pub struct Trace {
    /// Model inputs then node outputs, each row-major.
    pub tensors: Vec<Vec<i32>>,
}

/// Per-node preparation of the fast executor (constant operands packed once).
enum Prepared {
    None,
    Ein(
        Box<kernels::EinPlan>,
        Option<kernels::Packed>,
        Option<kernels::Packed>,
    ),
    /// A constant matrix times a few vectors (`EinSum {og, g → o}` or `{og, mg → mo}`, or a vector
    /// times a constant `{og}`, see [`matvec_second`]), with which input is the vector.
    MatVec(Arc<MatVec>, usize),
    /// A convolution's weights in 8-bit form, one matrix per group.
    Conv(Vec<crate::qgemm::Parts<crate::qgemm::PackedA>>),
    /// A constant matrix with few nonzeros per column applied along one axis (a linear resize).
    Taps(Box<crate::taps::AxisTaps>),
    /// Block-wise products `{gk, ogk → og}` with 8-bit constant weights (shareable between
    /// executors of models holding the same constants, see [`Executor::new_sharing`]).
    Blocks(Arc<crate::blockdot::PackedBlocks>),
}

/// The prepared forms of constants an executor holds — packed block weights by the identity of the
/// shared constants they were packed from (weights, multipliers), column-major matrices for
/// matrix-vector products by (weights, columns) — for [`Executor::new_sharing`].
#[derive(Clone, Default)]
pub struct SharedPacks {
    blocks: Keyed<crate::blockdot::PackedBlocks>,
    matvecs: Keyed<MatVec>,
}

/// Prepared forms by the two identities they were made from.
type Keyed<T> = Vec<(usize, usize, Arc<T>)>;

/// The entry of `list` made from `key`.
fn keyed<T>(list: &Keyed<T>, key: (usize, usize)) -> Option<&Arc<T>> {
    list.iter().find(|x| (x.0, x.1) == key).map(|x| &x.2)
}

/// Adds `from`'s entries whose keys `into` lacks.
fn add_missing<T>(into: &mut Keyed<T>, from: &Keyed<T>) {
    for e in from {
        if keyed(into, (e.0, e.1)).is_none() {
            into.push(e.clone());
        }
    }
}

impl SharedPacks {
    /// Adds `other`'s entries that this one lacks (so one set can carry every executor's of a group).
    pub fn extend(&mut self, other: &SharedPacks) {
        add_missing(&mut self.blocks, &other.blocks);
        add_missing(&mut self.matvecs, &other.matvecs);
    }
}

/// The packed weights of an `EinSum {gk, ogk → og}` (or `{mgk, ogk → mog}`) whose second operand is
/// a constant of 8-bit values (a block-quantized matrix product, see [`crate::blockdot`]).
fn block_weights(
    a: &[u8],
    b: &[u8],
    out: &[u8],
    b_shape: &[usize],
    w: Option<&Const>,
) -> Option<crate::blockdot::PackedBlocks> {
    let (m, g, k) = match a {
        [g, k] => (None, *g, *k),
        [m, g, k] => (Some(*m), *g, *k),
        _ => return None,
    };
    match (b, out) {
        ([o, g2, k2], [o2, g3]) if m.is_none() && *g2 == g && *k2 == k && o2 == o && *g3 == g => {}
        ([o, g2, k2], [m2, o2, g3])
            if Some(*m2) == m && *g2 == g && *k2 == k && o2 == o && *g3 == g => {}
        _ => return None,
    }
    if g == k || b[0] == g || b[0] == k || m.is_some_and(|m| m == g || m == k || m == b[0]) {
        return None;
    }
    crate::blockdot::PackedBlocks::new(&w?.data.transient(), b_shape[0], b_shape[1], b_shape[2])
}

/// Runs models.
///
/// `M` is how the executor holds its model: `&Model` for a borrowed one, `Arc<Model>` (or `Model`) for an
/// executor that owns or shares it, e.g. in a server's model cache.
pub struct Executor<M: Borrow<Model>> {
    model: M,
    mode: Mode,
    prepared: Vec<Prepared>,
    /// Per value: the index of the last node reading it (`usize::MAX` for model outputs and values no
    /// node reads), so an untraced run can free intermediates early.
    last_use: Vec<usize>,
    /// The fused schedule of element-wise chains (fast mode; empty in reference mode).
    roles: Vec<Role>,
    /// The packed block weights, by the constants they came from.
    packs: SharedPacks,
    /// Per value: the bounds of the `Clamp` node that computes it (its values lie in them).
    ranges: Vec<kernels::Range>,
    /// Buffers freed by earlier runs, drawn on by the next (see [`crate::buffers`]).
    pool: Arc<crate::buffers::Pool>,
}

/// The values of a run as the fused steps read them.
struct View<'a> {
    m: &'a Model,
    vals: &'a [Option<Vec<i32>>],
}

impl fuse::Values for View<'_> {
    fn data(&self, v: ValueId) -> &[i32] {
        match self.m.const_of(v) {
            Some(c) => &c.data,
            None => self.vals[v as usize].as_deref().unwrap_or(&[]),
        }
    }
}

impl<M: Borrow<Model> + Sync> Executor<M> {
    /// An executor for a validated model. In fast mode, constant matrix operands are packed here, once.
    pub fn new(model_ref: M, mode: Mode) -> Self {
        Self::new_sharing(model_ref, mode, &SharedPacks::default())
    }

    /// [`Executor::new`] that takes the prepared forms (packed block weights, matrix-vector matrices)
    /// of constants it shares with the model of another executor (see [`Executor::shared_packs`])
    /// instead of preparing them again: models built from the same weights (a language model's step
    /// for several cache lengths, and the sessions running it on other threads) hold one copy.
    pub fn new_sharing(model_ref: M, mode: Mode, shared: &SharedPacks) -> Self {
        let model: &Model = model_ref.borrow();
        let const_id = |v: ValueId| model.const_of(v).map_or(0, |c| c.data.identity());
        let roles = match mode {
            Mode::Reference => Vec::new(),
            Mode::Fast { .. } => fuse::plan(model),
        };
        // the constants a block product's packing depends on: its weights and its multipliers
        let pack_key = |k: usize, node: &Node| {
            let mult = match roles.get(k) {
                Some(Role::BlockSum(b)) => const_id(b.mult),
                _ => 0,
            };
            (const_id(node.inputs[1]), mult)
        };
        let prepared = match mode {
            Mode::Reference => Vec::new(),
            Mode::Fast { .. } => model
                .nodes
                .iter()
                .enumerate()
                .map(|(k, node)| match &node.op {
                    Op::EinSum { a, b, out }
                        if let Some(t) = axis_taps(model, node, (a, b, out)) =>
                    {
                        Prepared::Taps(Box::new(t))
                    }
                    Op::EinSum { a, b, out }
                        if node.inputs.len() == 2
                            && let Some(at) = matvec_at(model, node, (a, b, out)) =>
                    {
                        // the constant matrix is input `at`, the vector the other one
                        match model.const_of(node.inputs[at]) {
                            Some(c) => {
                                let key = (const_id(node.inputs[at]), (c.shape[1] as usize).max(1));
                                let mv = match keyed(&shared.matvecs, key) {
                                    Some(p) => p.clone(),
                                    None => Arc::new(MatVec::new(&c.data, key.1)),
                                };
                                Prepared::MatVec(mv, 1 - at)
                            }
                            None => Prepared::None,
                        }
                    }
                    Op::EinSum { a, b, out } => {
                        let key = pack_key(k, node);
                        if let Some(p) = keyed(&shared.blocks, key).filter(|_| key.0 != 0) {
                            return Prepared::Blocks(p.clone());
                        }
                        let shape =
                            |v: ValueId| model.value(v).map(|i| us(i.shape)).unwrap_or_default();
                        let (sa, sb, so) = (
                            shape(node.inputs[0]),
                            shape(node.inputs[1]),
                            us(&node.shape),
                        );
                        let spec = EinSpec {
                            a,
                            b,
                            out,
                            a_shape: &sa,
                            b_shape: &sb,
                            out_shape: &so,
                        };
                        if let Some(p) =
                            block_weights(a, b, out, &sb, model.const_of(node.inputs[1]))
                        {
                            return Prepared::Blocks(Arc::new(p));
                        }
                        let plan = kernels::EinPlan::new(&spec);
                        let pa = model
                            .const_of(node.inputs[0])
                            .and_then(|c| plan.pack_a_const(&spec, &c.data));
                        let pb = model
                            .const_of(node.inputs[1])
                            .and_then(|c| plan.pack_b_const(&spec, &c.data));
                        Prepared::Ein(Box::new(plan), pa, pb)
                    }
                    Op::Conv2d { groups, .. } => model
                        .const_of(node.inputs[1])
                        .and_then(|w| {
                            let (shape, g) = (us(&w.shape), *groups as usize);
                            // 16-bit weights packed from their elements, not an i32 copy
                            match w.data.i16s() {
                                Some(v) => kernels::conv_weights(&shape, g, v),
                                None => kernels::conv_weights(&shape, g, &w.data.transient()),
                            }
                        })
                        .map_or(Prepared::None, Prepared::Conv),
                    _ => Prepared::None,
                })
                .collect(),
        };
        let last_use = model.last_uses();
        let mut prepared = prepared;
        for (k, role) in roles.iter().enumerate() {
            if let (Role::BlockSum(b), Some(Prepared::Blocks(p))) = (role, prepared.get_mut(k)) {
                if let (Some(c), Some(p)) = (model.const_of(b.mult), Arc::get_mut(p)) {
                    p.set_multipliers(&c.data.transient());
                }
            }
        }
        let mut packs = SharedPacks::default();
        for (k, (p, node)) in prepared.iter().zip(&model.nodes).enumerate() {
            match p {
                Prepared::Blocks(p) => {
                    let (w, m) = pack_key(k, node);
                    packs.blocks.push((w, m, p.clone()));
                }
                Prepared::MatVec(p, vector) => {
                    packs
                        .matvecs
                        .push((const_id(node.inputs[1 - vector]), p.g, p.clone()));
                }
                _ => {}
            }
        }
        let mut ranges = vec![None; model.value_count()];
        let first = model.first_node_value();
        for (k, node) in model.nodes.iter().enumerate() {
            if let Op::Clamp { lo, hi } = node.op {
                ranges[first + k] = Some((lo, hi));
            }
        }
        Executor {
            model: model_ref,
            mode,
            prepared,
            last_use,
            roles,
            packs,
            ranges,
            pool: Default::default(),
        }
    }

    /// This executor's prepared constants (packed block weights, matrix-vector matrices), for
    /// [`Executor::new_sharing`].
    pub fn shared_packs(&self) -> &SharedPacks {
        &self.packs
    }

    fn check_inputs(&self, inputs: &[Vec<i32>]) -> Result<(), ExecError> {
        let m: &Model = self.model.borrow();
        if inputs.len() != m.inputs.len() {
            return Err(ExecError::InputCount {
                expected: m.inputs.len(),
                got: inputs.len(),
            });
        }
        for (spec, t) in m.inputs.iter().zip(inputs) {
            if numel(&spec.shape) != t.len() as u64 {
                return Err(ExecError::InputShape {
                    name: spec.name.clone(),
                    expected: us(&spec.shape),
                    got: vec![t.len()],
                });
            }
        }
        Ok(())
    }

    /// Runs later calls on `threads` threads (fast mode; the bits are the same on any count).
    pub fn set_threads(&mut self, threads: usize) {
        if let Mode::Fast { .. } = self.mode {
            self.mode = Mode::Fast {
                threads: threads.max(1),
            };
        }
    }

    /// The model this executor runs.
    pub fn model(&self) -> &Model {
        self.model.borrow()
    }

    /// Run on quantized inputs (one flat row-major vector per model input); returns the outputs.
    pub fn run(&self, inputs: Vec<Vec<i32>>) -> Result<Vec<Vec<i32>>, ExecError> {
        let mut vals = self.eval(inputs)?;
        Ok(self.take_outputs(&mut vals))
    }

    /// [`Executor::run`] that hands the inputs back unchanged beside the outputs, for callers that feed
    /// large inputs again (a language model's key/value caches) and would otherwise copy them.
    #[allow(clippy::type_complexity)]
    pub fn run_keeping_inputs(
        &self,
        inputs: Vec<Vec<i32>>,
    ) -> Result<(Vec<Vec<i32>>, Vec<Vec<i32>>), ExecError> {
        let mut vals = self.on_pool(|| self.eval_with(inputs, None, Some(&self.last_use), true))?;
        let outs = self.take_outputs(&mut vals);
        let ni = self.model.borrow().inputs.len();
        let inputs = vals[..ni]
            .iter_mut()
            .map(|v| v.take().unwrap_or_default())
            .collect();
        Ok((outs, inputs))
    }

    /// [`Executor::run`] with [`Executor::run_trace_tampered`]'s deliberate fault: the outputs of the same
    /// wrong execution (node by node, as the traced run). `None` is an honest [`Executor::run`].
    pub fn run_tampered(
        &self,
        inputs: Vec<Vec<i32>>,
        tamper: Option<(usize, usize)>,
    ) -> Result<Vec<Vec<i32>>, ExecError> {
        match tamper {
            None => self.run(inputs),
            Some(_) => Ok(self.run_trace_tampered(inputs, tamper)?.0),
        }
    }

    /// Run and keep every intermediate tensor.
    pub fn run_trace(&self, inputs: Vec<Vec<i32>>) -> Result<(Vec<Vec<i32>>, Trace), ExecError> {
        self.run_trace_tampered(inputs, None)
    }

    /// Like [`Executor::run_trace`], but flips the lowest bit of element `tamper.1` of node `tamper.0`'s
    /// output as soon as it is computed (later nodes compute from the changed value): a deliberately wrong
    /// yet self-consistent execution, for fault-injection tests of fraud proofs. `None` is an honest run.
    pub fn run_trace_tampered(
        &self,
        inputs: Vec<Vec<i32>>,
        tamper: Option<(usize, usize)>,
    ) -> Result<(Vec<Vec<i32>>, Trace), ExecError> {
        let vals = self.eval_tampered(inputs, tamper)?;
        let outs = self.collect_outputs(&vals);
        let ni = self.model.borrow().inputs.len();
        let first = self.model.borrow().first_node_value();
        let mut tensors = Vec::with_capacity(ni + self.model.borrow().nodes.len());
        let mut vals = vals;
        for (i, v) in vals.iter_mut().enumerate() {
            if i < ni || i >= first {
                tensors.push(std::mem::take(v).unwrap_or_default());
            }
        }
        Ok((outs, Trace { tensors }))
    }

    /// The outputs, moved out of `vals` (copied only for a value that is also an earlier output or a
    /// model input kept for the caller).
    fn take_outputs(&self, vals: &mut [Option<Vec<i32>>]) -> Vec<Vec<i32>> {
        let m = self.model.borrow();
        let mut taken: Vec<Vec<i32>> = Vec::with_capacity(m.outputs.len());
        for (i, o) in m.outputs.iter().enumerate() {
            let v = o.value as usize;
            let out = if let Some(c) = m.const_of(o.value) {
                c.data.transient().into_owned()
            } else if let Some(j) = m.outputs[..i].iter().position(|p| p.value == o.value) {
                taken[j].clone()
            } else if v < m.inputs.len() {
                vals[v].clone().unwrap_or_default()
            } else {
                vals[v].take().unwrap_or_default()
            };
            taken.push(out);
        }
        taken
    }

    fn collect_outputs(&self, vals: &[Option<Vec<i32>>]) -> Vec<Vec<i32>> {
        self.model
            .borrow()
            .outputs
            .iter()
            .map(|o| match self.model.borrow().const_of(o.value) {
                Some(c) => c.data.transient().into_owned(),
                None => vals[o.value as usize].clone().unwrap_or_default(),
            })
            .collect()
    }

    /// Evaluate without a trace: each intermediate is dropped after the last node that reads it.
    fn eval(&self, inputs: Vec<Vec<i32>>) -> Result<Vec<Option<Vec<i32>>>, ExecError> {
        self.on_pool(|| self.eval_with(inputs, None, Some(&self.last_use), false))
    }

    fn eval_tampered(
        &self,
        inputs: Vec<Vec<i32>>,
        tamper: Option<(usize, usize)>,
    ) -> Result<Vec<Option<Vec<i32>>>, ExecError> {
        self.on_pool(|| self.eval_with(inputs, tamper, None, false))
    }

    /// Run `f` on a worker of the shared pool of this executor's thread count (fast mode with several
    /// threads), carrying the calling thread's cancellation tokens and instruction-set cap along; else
    /// on the calling thread.
    fn on_pool<R: Send>(&self, f: impl FnOnce() -> R + Send) -> R {
        match self.mode {
            Mode::Fast { threads } if threads > 1 => match crate::par::pool(threads) {
                Some(pool) => {
                    let tokens = crate::cancel::current();
                    let cap = crate::simd::Isa::current_cap();
                    pool.install(|| {
                        crate::simd::Isa::within_cap(cap, || {
                            crate::par::awake(threads, || crate::cancel::with_tokens(tokens, f))
                        })
                    })
                }
                None => f(),
            },
            _ => f(),
        }
    }

    /// Evaluate every node; with `last_use`, free each value once no later node reads it (model inputs
    /// too, unless `keep_inputs`).
    fn eval_with(
        &self,
        inputs: Vec<Vec<i32>>,
        tamper: Option<(usize, usize)>,
        last_use: Option<&[usize]>,
        keep_inputs: bool,
    ) -> Result<Vec<Option<Vec<i32>>>, ExecError> {
        crate::buffers::scoped(&self.pool, || {
            self.eval_pooled(inputs, tamper, last_use, keep_inputs)
        })
    }

    /// [`Executor::eval_with`] with this executor's pool current: freed intermediates go to it.
    fn eval_pooled(
        &self,
        inputs: Vec<Vec<i32>>,
        tamper: Option<(usize, usize)>,
        last_use: Option<&[usize]>,
        keep_inputs: bool,
    ) -> Result<Vec<Option<Vec<i32>>>, ExecError> {
        self.check_inputs(&inputs)?;
        let m: &Model = self.model.borrow();
        let first = m.first_node_value();
        let mut vals: Vec<Option<Vec<i32>>> = (0..m.value_count()).map(|_| None).collect();
        for (slot, x) in vals.iter_mut().zip(inputs) {
            *slot = Some(x);
        }
        // element-wise chains run fused only when no trace is kept (a trace needs every intermediate)
        let roles = match last_use {
            Some(_) => self.roles.as_slice(),
            None => &[],
        };
        let profile = std::env::var_os("VERITY_PROFILE").is_some();
        // a kernel cancelled part-way leaves part of its output unwritten, which what follows it in
        // the node may have read as an error: the run was cancelled, whatever the node then reported
        let at = |node: &Node, e: ExecError| match crate::cancel::requested() {
            true => ExecError::Cancelled,
            false => ExecError::AtNode {
                node: node.name.clone(),
                op: node.op.name(),
                error: Box::new(e),
            },
        };
        for (k, node) in m.nodes.iter().enumerate() {
            if crate::cancel::requested() {
                return Err(ExecError::Cancelled);
            }
            let role = roles.get(k).unwrap_or(&Role::Alone);
            if *role != Role::Absorbed {
                let t0 = profile.then(std::time::Instant::now);
                match role {
                    Role::Head(chain) => {
                        let out = self.eval_chain(k, node, &chain.steps, &vals);
                        // a kernel that saw the cancellation skipped part of its work
                        if crate::cancel::requested() {
                            return Err(ExecError::Cancelled);
                        }
                        match out {
                            Some(out) => {
                                let last = chain.nodes.last().copied().unwrap_or(k);
                                vals[first + last] = Some(out);
                            }
                            None => {
                                // a step left i32: node by node, so the error names its node
                                let none = &mut None;
                                let out = self.eval_node(k, node, &vals, none);
                                vals[first + k] = Some(out.map_err(|e| at(node, e))?);
                                for &j in &chain.nodes {
                                    let n = &m.nodes[j];
                                    let out = self.eval_node(j, n, &vals, none);
                                    vals[first + j] = Some(out.map_err(|e| at(n, e))?);
                                }
                            }
                        }
                    }
                    Role::BlockSum(b) => {
                        let fused = match (self.mode, self.prepared.get(k)) {
                            (Mode::Fast { threads }, Some(Prepared::Blocks(p))) => {
                                let get = |v: ValueId| match m.const_of(v) {
                                    Some(c) => Some(&c.data[..]),
                                    None => vals[v as usize].as_deref(),
                                };
                                let x = get(node.inputs[0]).unwrap_or(&[]);
                                get(b.scale)
                                    .and_then(|scale| p.run_sums(x, scale, b.shifts, threads))
                            }
                            _ => None,
                        };
                        match fused {
                            Some(out) => vals[first + b.nodes[2]] = Some(out),
                            None => {
                                // node by node, so an error names its node
                                let none = &mut None;
                                for j in std::iter::once(k).chain(b.nodes) {
                                    let n = &m.nodes[j];
                                    let out = self.eval_node(j, n, &vals, none);
                                    vals[first + j] = Some(out.map_err(|e| at(n, e))?);
                                }
                            }
                        }
                    }
                    _ => {
                        // a reshape of a node's output read by no later node takes that buffer
                        let moved = match (&node.op, last_use) {
                            (Op::Reshape, Some(last)) => {
                                let v = node.inputs[0] as usize;
                                let own = v >= first && last.get(v) == Some(&k);
                                own.then(|| vals[v].take()).flatten()
                            }
                            _ => None,
                        };
                        let out = match moved {
                            Some(x) => {
                                let sc = m.value(node.inputs[0]).map_or(0, |i| i.scale as i32);
                                rescaled(x, sc - node.scale as i32)
                            }
                            None => self.eval_node(k, node, &vals, &mut None),
                        };
                        let mut out = out.map_err(|e| at(node, e))?;
                        if crate::cancel::requested() {
                            return Err(ExecError::Cancelled);
                        }
                        if let Some((tk, te)) = tamper {
                            if tk == k && !out.is_empty() {
                                let e = te.min(out.len() - 1);
                                out[e] ^= 1;
                            }
                        }
                        vals[first + k] = Some(out);
                    }
                }
                if let Some(t0) = t0 {
                    eprintln!(
                        "{:>10.1} us  {:<10} {}{}",
                        t0.elapsed().as_secs_f64() * 1e6,
                        node.op.name(),
                        node.name,
                        match role {
                            Role::Head(c) => format!(" (+{} fused)", c.nodes.len()),
                            Role::BlockSum(_) => " (+3 fused)".into(),
                            _ => String::new(),
                        }
                    );
                }
            }
            if let Some(last) = last_use {
                for &v in &node.inputs {
                    if last[v as usize] == k && !(keep_inputs && (v as usize) < m.inputs.len()) {
                        // a model input goes back to the allocator: the caller allocates the next
                        // run's there, while the pool keeps what runs allocate themselves
                        match vals[v as usize].take() {
                            Some(x) if (v as usize) >= m.inputs.len() => crate::buffers::give(x),
                            _ => {}
                        }
                    }
                }
            }
        }
        Ok(vals)
    }

    /// A head node's output with its chain's steps applied (by the kernel row by row when it takes
    /// the hook, else afterwards); `None` if the node or a step failed (the caller reruns node by node).
    fn eval_chain(
        &self,
        k: usize,
        node: &Node,
        steps: &[fuse::Fused],
        vals: &[Option<Vec<i32>>],
    ) -> Option<Vec<i32>> {
        let view = View {
            m: self.model.borrow(),
            vals,
        };
        let others = fuse::operands(steps, &view)?;
        let failed = std::sync::atomic::AtomicBool::new(false);
        let apply = |start: usize, row: &mut [i32]| {
            if fuse::apply(row, start, steps, &others).is_err() {
                failed.store(true, std::sync::atomic::Ordering::Relaxed);
            }
        };
        let mut hook: Option<RowHook<'_>> = Some(&apply);
        let mut out = self.eval_node(k, node, vals, &mut hook).ok()?;
        if hook.is_some() {
            match self.mode {
                Mode::Fast { threads } if threads > 1 && out.len() >= PAR_ELEMENTS => {
                    crate::par::rows(&mut out, 1, threads, 1 << 10, apply)
                }
                _ => apply(0, &mut out),
            }
        }
        (!failed.into_inner()).then_some(out)
    }

    /// One node's output. A kernel that takes `hook` has called it on every output element.
    fn eval_node(
        &self,
        k: usize,
        node: &Node,
        vals: &[Option<Vec<i32>>],
        hook: &mut Option<RowHook<'_>>,
    ) -> Result<Vec<i32>, ExecError> {
        let m: &Model = self.model.borrow();
        let get = |v: ValueId| -> &[i32] {
            match m.const_of(v) {
                Some(c) => &c.data,
                None => vals[v as usize].as_deref().unwrap_or(&[]),
            }
        };
        let info = |v: ValueId| {
            m.value(v)
                .map(|i| (us(i.shape), i.scale as i32))
                .unwrap_or_default()
        };
        // a constant the node's prepared form stands for is read (and, held narrow, widened) only by a
        // path without that form: through `lazy`; a gather reads the rows it takes of a constant
        let packed_input = |i: usize| match self.prepared.get(k) {
            _ if matches!(node.op, Op::Gather { .. }) => i == 0,
            Some(Prepared::MatVec(_, vector)) => i != *vector,
            Some(Prepared::Blocks(_) | Prepared::Conv(_) | Prepared::Taps(_)) => i == 1,
            Some(Prepared::Ein(_, pa, pb)) => (i == 0 && pa.is_some()) || (i == 1 && pb.is_some()),
            _ => false,
        };
        // the reference executor widens a narrow constant for the node alone (the fast one keeps the
        // widened copy: it reads the same constants on every run)
        let held: Vec<std::borrow::Cow<'_, [i32]>> = node
            .inputs
            .iter()
            .enumerate()
            .map(|(i, &v)| match m.const_of(v) {
                Some(_) if packed_input(i) => std::borrow::Cow::Borrowed(&[][..]),
                Some(c) if self.mode == Mode::Reference => c.data.transient(),
                _ => std::borrow::Cow::Borrowed(get(v)),
            })
            .collect();
        let xs: Vec<&[i32]> = held.iter().map(|c| &**c).collect();
        let lazy0 = || get(node.inputs[0]);
        // the range the model guarantees an input's values to lie in (the bounds of the Clamp that made
        // it), so a kernel need not scan it
        let range = |i: usize| {
            node.inputs
                .get(i)
                .and_then(|&v| self.ranges.get(v as usize).copied().flatten())
        };
        let lazy1 = || get(node.inputs.get(1).copied().unwrap_or(node.inputs[0]));
        let infos: Vec<(Vec<usize>, i32)> = node.inputs.iter().map(|&v| info(v)).collect();
        let out_shape = us(&node.shape);
        let so = node.scale as i32;
        let (s0, sc0) = (&infos[0].0, infos[0].1);
        let fast = match self.mode {
            Mode::Fast { threads } => Some(threads),
            Mode::Reference => None,
        };
        match &node.op {
            Op::EinSum { a, b, out } => {
                let acc = sc0 + infos[1].1;
                let bias = xs
                    .get(2)
                    .map(|d| (*d, infos[2].0.as_slice(), acc - infos[2].1));
                let spec = EinSpec {
                    a,
                    b,
                    out,
                    a_shape: s0,
                    b_shape: &infos[1].0,
                    out_shape: &out_shape,
                };
                let shift = acc - so;
                if let (Some(threads), None, Some(Prepared::MatVec(mv, vector))) =
                    (fast, bias, self.prepared.get(k))
                {
                    return mv.run(xs[*vector], shift, threads);
                }
                if let (Some(threads), None, Some(Prepared::Taps(t))) =
                    (fast, bias, self.prepared.get(k))
                {
                    // else (a magnitude that could leave i32) the product below
                    if let Some(r) = t.run(xs[0], range(0), shift, threads, hook) {
                        return r;
                    }
                }
                match self.mode {
                    Mode::Reference => einsum_reference(&spec, xs[0], xs[1], bias, shift),
                    Mode::Fast { threads } => match self.prepared.get(k) {
                        Some(Prepared::Blocks(p)) if bias.is_none() => {
                            match p.run(xs[0], threads) {
                                Some(acc) => rescaled(acc, shift),
                                None => einsum_reference(&spec, xs[0], lazy1(), bias, shift),
                            }
                        }
                        Some(Prepared::Ein(plan, pa, pb)) => plan.run(
                            &spec,
                            (&lazy0, &lazy1),
                            (range(0), range(1)),
                            pa.as_ref(),
                            pb.as_ref(),
                            bias,
                            shift,
                            threads,
                            hook,
                        ),
                        _ => kernels::EinPlan::new(&spec).run(
                            &spec,
                            (&lazy0, &lazy1),
                            (range(0), range(1)),
                            None,
                            None,
                            bias,
                            shift,
                            threads,
                            hook,
                        ),
                    },
                }
            }
            Op::Conv2d { window, groups } => {
                let bias = xs.get(2).map(|d| (*d, sc0 + infos[1].1 - infos[2].1));
                let spec = ConvSpec {
                    x: s0,
                    w: &infos[1].0,
                    window,
                    groups: *groups as usize,
                    out: &out_shape,
                };
                let shift = sc0 + infos[1].1 - so;
                match self.mode {
                    Mode::Reference => conv_reference(&spec, xs[0], xs[1], bias, shift),
                    Mode::Fast { threads } => {
                        let qw = match self.prepared.get(k) {
                            Some(Prepared::Conv(q)) => Some(q.as_slice()),
                            _ => None,
                        };
                        let x = (xs[0], range(0));
                        kernels::conv2d(&spec, x, &lazy1, qw, bias, shift, threads, hook)
                    }
                }
            }
            Op::Add | Op::Sub | Op::Mul | Op::Div | Op::Max | Op::Min => binary(
                &node.op,
                xs[0],
                s0,
                sc0,
                xs[1],
                &infos[1].0,
                infos[1].1,
                &out_shape,
                so,
                fast.unwrap_or(1),
            ),
            // the fast executor's common case: vector lanes of i32, several threads (the general form
            // below stays the reference)
            Op::Clamp { lo, hi }
                if (0..=31).contains(&(sc0 - so)) && lo <= hi && fast.is_some() =>
            {
                let threads = fast.unwrap_or(1);
                Ok(kernels::clamp_shift(
                    xs[0],
                    (sc0 - so) as u32,
                    *lo,
                    *hi,
                    threads,
                ))
            }
            Op::Clamp { lo, hi } if sc0 == so => {
                Ok(xs[0].iter().map(|&v| v.clamp(*lo, *hi)).collect())
            }
            Op::Clamp { lo, hi } => {
                let k = sc0 - so;
                let (lo, hi) = (*lo as i64, *hi as i64);
                Ok(if (1..=62).contains(&k) {
                    // (v + 2^(k-1)) >> k is rshift exactly, and stays inside i64
                    let half = 1i64 << (k - 1);
                    xs[0]
                        .iter()
                        .map(|&v| ((v as i64 + half) >> k).clamp(lo, hi) as i32)
                        .collect()
                } else if (-31..=0).contains(&k) {
                    xs[0]
                        .iter()
                        .map(|&v| ((v as i64) << -k).clamp(lo, hi) as i32)
                        .collect()
                } else {
                    xs[0]
                        .iter()
                        .map(|&v| rshift(v as i128, k).clamp(lo as i128, hi as i128) as i32)
                        .collect()
                })
            }
            Op::LeakyRelu {
                alpha_q,
                alpha_scale,
            } => {
                let kp = sc0 - so;
                let kn = sc0 + *alpha_scale as i32 - so;
                if (0..62).contains(&kp) && (0..62).contains(&kn) {
                    // exact in i64: |v · α| < 2^62, right shifts only
                    let (hp, hn) = (half(kp), half(kn));
                    let a = *alpha_q as i64;
                    map_split(xs[0], fast.unwrap_or(1), |v| {
                        let v = v as i64;
                        fit(if v >= 0 {
                            (v + hp) >> kp
                        } else {
                            (v * a + hn) >> kn
                        } as i128)
                    })
                } else {
                    xs[0]
                        .iter()
                        .map(|&v| {
                            let v = v as i128;
                            fit(if v >= 0 {
                                rshift(v, kp)
                            } else {
                                rshift(v * *alpha_q as i128, kn)
                            })
                        })
                        .collect()
                }
            }
            Op::Lookup { shift, lo }
                if (0..=31).contains(shift) && !xs[1].is_empty() && fast.is_some() =>
            {
                Ok(kernels::lookup(
                    xs[0],
                    xs[1],
                    *shift as u32,
                    *lo,
                    fast.unwrap_or(1),
                ))
            }
            Op::Lookup { shift, lo } => {
                let t = xs[1];
                Ok(xs[0]
                    .iter()
                    .map(|&v| t[table_index(v as i128, *shift, *lo, t.len())])
                    .collect())
            }
            Op::Rescale => map_rescale(xs[0], sc0 - so),
            Op::Sqrt => {
                let e = 2 * so - sc0;
                xs[0]
                    .iter()
                    .map(|&v| {
                        if v < 0 {
                            return Err(ExecError::NegativeSqrt);
                        }
                        let n = rshift(v as i128, -e);
                        fit(isqrt_round(n.max(0) as u128) as i128)
                    })
                    .collect()
            }
            Op::Rsqrt => {
                let e = 2 * so + sc0;
                xs[0]
                    .iter()
                    .map(|&v| {
                        if v < 0 {
                            return Err(ExecError::NegativeSqrt);
                        }
                        if v == 0 {
                            return Err(ExecError::DivisionByZero);
                        }
                        let q = if e >= 0 { (1i128 << e) / v as i128 } else { 0 };
                        fit(isqrt_round(q as u128) as i128)
                    })
                    .collect()
            }
            Op::Recip => {
                let e = so + sc0;
                xs[0]
                    .iter()
                    .map(|&v| {
                        let (num, den) = if e >= 0 {
                            (1i128 << e, v as i128)
                        } else {
                            (1, (v as i128) << -e)
                        };
                        fit(div_round(num, den)?)
                    })
                    .collect()
            }
            Op::Reduce { kind, axes } => reduce(*kind, axes, xs[0], s0, sc0, so),
            Op::Softmax { axis, shift, lo } => {
                softmax(xs[0], s0, *axis as usize, (*shift, *lo, xs[1]), so, fast)
            }
            Op::MaxPool2d { window } if sc0 == so && fast.is_some() && s0[2] * s0[3] > 0 => Ok(
                kernels::max_pool(xs[0], s0, window, &out_shape, fast.unwrap_or(1)),
            ),
            Op::MaxPool2d { window } => pool(xs[0], s0, window, &out_shape, None, sc0 - so),
            Op::AvgPool2d {
                window,
                count_include_pad,
            } => {
                // the fast executor's kernel where its bounds hold, else the definition's loop
                let include = (*count_include_pad, sc0 - so);
                fast.filter(|_| s0[2] * s0[3] > 0)
                    .and_then(|th| kernels::avg_pool(xs[0], s0, window, &out_shape, include, th))
                    .unwrap_or_else(|| {
                        pool(xs[0], s0, window, &out_shape, Some(include.0), include.1)
                    })
            }
            Op::Reshape => map_rescale(xs[0], sc0 - so),
            Op::Transpose { perm } => {
                let st = strides(s0);
                let perm_strides: Vec<usize> = perm.iter().map(|&p| st[p as usize]).collect();
                rescaled(strided_copy(xs[0], 0, &out_shape, &perm_strides), sc0 - so)
            }
            Op::Concat { axis } => {
                let ax = *axis as usize;
                let outer: usize = out_shape[..ax].iter().product();
                let inner: usize = out_shape[ax + 1..].iter().product();
                // inputs at the output's scale are read where they are
                let parts: Vec<std::borrow::Cow<'_, [i32]>> = xs
                    .iter()
                    .zip(&infos)
                    .map(|(d, (_, s))| match s - so {
                        0 => Ok(std::borrow::Cow::Borrowed(*d)),
                        k => map_rescale(d, k).map(std::borrow::Cow::Owned),
                    })
                    .collect::<Result<_, _>>()?;
                // the output as a list of runs of the inputs, in order
                let runs: Vec<&[i32]> = (0..outer)
                    .flat_map(|o| {
                        parts.iter().zip(&infos).map(move |(p, (shape, _))| {
                            let len = shape[ax] * inner;
                            &p[o * len..(o + 1) * len]
                        })
                    })
                    .collect();
                let total: usize = out_shape.iter().product();
                // a validated model's inputs fill the output exactly (every element is copied below)
                debug_assert_eq!(runs.iter().map(|r| r.len()).sum::<usize>(), total);
                let mut out = crate::buffers::take_overwritten(total);
                // a fused chain runs on each part as soon as it is copied, while it is in the cache
                let hook = hook.take();
                let fill = |start: usize, part: &mut [i32]| {
                    concat_into(&runs, start, part);
                    if let Some(h) = hook {
                        h(start, part);
                    }
                };
                match fast {
                    Some(threads) if threads > 1 && total >= PAR_ELEMENTS => {
                        crate::par::rows(&mut out, 1, threads, 1 << 10, |s, part| {
                            part.chunks_mut(CONCAT_PART)
                                .enumerate()
                                .for_each(|(i, c)| fill(s + i * CONCAT_PART, c))
                        })
                    }
                    _ => out
                        .chunks_mut(CONCAT_PART)
                        .enumerate()
                        .for_each(|(i, c)| fill(i * CONCAT_PART, c)),
                }
                Ok(out)
            }
            Op::Slice {
                axis, start, step, ..
            } => {
                let ax = *axis as usize;
                let mut st = strides(s0);
                let base = *start as usize * st[ax];
                st[ax] *= *step as usize;
                rescaled(strided_copy(xs[0], base, &out_shape, &st), sc0 - so)
            }
            Op::Gather { axis } => {
                let ax = *axis as usize;
                let outer: usize = s0[..ax].iter().product();
                let inner: usize = s0[ax + 1..].iter().product();
                let dim = s0[ax];
                let table = m.const_of(node.inputs[0]);
                // (every element is written below: the rows taken cover the output)
                let mut out = crate::buffers::take_overwritten(out_shape.iter().product());
                let mut filled = 0;
                for o in 0..outer {
                    for &i in xs[1] {
                        let j = if i < 0 {
                            i as i64 + dim as i64
                        } else {
                            i as i64
                        };
                        if j < 0 || j >= dim as i64 {
                            return Err(ExecError::IndexOutOfRange {
                                index: i as i64,
                                size: dim,
                            });
                        }
                        let at = (o * dim + j as usize) * inner;
                        let dst = &mut out[filled..filled + inner];
                        match table {
                            Some(c) => dst.copy_from_slice(&c.data.range(at..at + inner)),
                            None => dst.copy_from_slice(&xs[0][at..at + inner]),
                        }
                        filled += inner;
                    }
                }
                rescaled(out, sc0 - so)
            }
            Op::Broadcast => {
                let st = broadcast_strides(&out_shape, s0);
                rescaled(strided_copy(xs[0], 0, &out_shape, &st), sc0 - so)
            }
        }
    }
}

/// `clamp(rshift(x, shift) - lo, 0, len - 1)`.
pub fn table_index(x: i128, shift: i32, lo: i32, len: usize) -> usize {
    (rshift(x, shift) - lo as i128).clamp(0, len as i128 - 1) as usize
}

/// Visit the output in runs along merged trailing axes: `f(flat_start, offsets, len, inner_strides)`.
/// Axes are merged where every operand's strides are contiguous across them, so broadcasting a
/// per-channel or scalar operand runs over long stretches.
pub fn for_each_run(
    out: &[usize],
    ins: &[Vec<usize>],
    mut f: impl FnMut(usize, &[usize], usize, &[usize]),
) {
    // merge axis pairs (i, i+1) from the back while every operand is contiguous across them
    let mut dims: Vec<usize> = out.to_vec();
    let mut sts: Vec<Vec<usize>> = ins.to_vec();
    let mut i = dims.len();
    while i >= 2 {
        let (a, b) = (i - 2, i - 1);
        if sts.iter().all(|st| st[a] == st[b] * dims[b]) {
            dims[a] *= dims[b];
            dims.remove(b);
            for st in sts.iter_mut() {
                st.remove(a);
            }
        }
        i -= 1;
    }
    let (len, inner): (usize, Vec<usize>) = match dims.last() {
        Some(&d) => (d, sts.iter().map(|s| *s.last().unwrap_or(&0)).collect()),
        None => (1, vec![0; ins.len()]),
    };
    let outer: Vec<usize> = dims[..dims.len().saturating_sub(1)].to_vec();
    let outer_st: Vec<Vec<usize>> = sts
        .iter()
        .map(|s| s[..s.len().saturating_sub(1)].to_vec())
        .collect();
    let mut flat = 0;
    if outer.is_empty() {
        if len > 0 {
            f(0, &vec![0; ins.len()], len, &inner);
        }
        return;
    }
    for_each_index(&outer, &outer_st, |_, offs| {
        f(flat, offs, len, &inner);
        flat += len;
    });
}

fn binary_i64(
    a: &[i32],
    b: &[i32],
    st: &[Vec<usize>; 2],
    out_shape: &[usize],
    k: i32,
    threads: usize,
    f: impl Fn(i64, i64) -> i64 + Copy + Sync,
) -> Result<Vec<i32>, ExecError> {
    if k > 0 {
        let half = 1i64 << (k - 1);
        binary_runs(a, b, st, out_shape, threads, move |x, y| {
            (f(x, y) + half) >> k
        })
    } else {
        binary_runs(a, b, st, out_shape, threads, move |x, y| f(x, y) << -k)
    }
}

/// Outputs at least this large are split across the run's threads by element-wise kernels.
const PAR_ELEMENTS: usize = 1 << 13;

/// Elements a `Concat` copies before it hands them to its fused chain (they stay in the L1 cache).
const CONCAT_PART: usize = 4096;

/// Elements `start..start + out.len()` of the concatenation of `runs` into `out` (the runs cover it).
fn concat_into(runs: &[&[i32]], start: usize, out: &mut [i32]) {
    let mut at = 0;
    let mut filled = 0;
    for r in runs {
        let end = at + r.len();
        if filled < out.len() && end > start + filled {
            let from = start + filled - at;
            let n = (r.len() - from).min(out.len() - filled);
            out[filled..filled + n].copy_from_slice(&r[from..from + n]);
            filled += n;
        }
        at = end;
        if filled == out.len() {
            break;
        }
    }
}

/// `f` of every element, a large input split across `threads` (each part the same integers).
fn map_split(
    x: &[i32],
    threads: usize,
    f: impl Fn(i32) -> Result<i32, ExecError> + Sync,
) -> Result<Vec<i32>, ExecError> {
    // every element is written below (an error discards the buffer)
    let mut out = crate::buffers::take_overwritten(x.len());
    if threads <= 1 || x.len() < PAR_ELEMENTS {
        for (o, &v) in out.iter_mut().zip(x) {
            *o = f(v)?;
        }
        return Ok(out);
    }
    let err = crate::par::FirstError::default();
    crate::par::rows(&mut out, 1, threads, 1 << 10, |start, part| {
        for (o, &v) in part.iter_mut().zip(&x[start..]) {
            match f(v) {
                Ok(r) => *o = r,
                Err(e) => return err.set(e),
            }
        }
    });
    err.into_result()?;
    Ok(out)
}

/// [`binary_runs_into`] on a new buffer; a large output split across `threads` along its first axis
/// longer than one (each part the same integers).
fn binary_runs(
    a: &[i32],
    b: &[i32],
    st: &[Vec<usize>; 2],
    out_shape: &[usize],
    threads: usize,
    g: impl Fn(i64, i64) -> i64 + Copy + Sync,
) -> Result<Vec<i32>, ExecError> {
    let n: usize = out_shape.iter().product();
    // the runs cover the output: every element is stored (an error discards the buffer)
    let mut out = crate::buffers::take_overwritten(n);
    match out_shape.iter().position(|&d| d > 1) {
        Some(ax) if threads > 1 && n >= PAR_ELEMENTS => {
            // the axes before `ax` have length one: parts are ranges of `ax`
            let inner = n / out_shape[ax];
            let sts = [st[0][ax..].to_vec(), st[1][ax..].to_vec()];
            let err = crate::par::FirstError::default();
            crate::par::rows(&mut out, inner, threads, 1, |r0, part| {
                let mut shape = out_shape[ax..].to_vec();
                shape[0] = part.len() / inner;
                let (pa, pb) = (&a[r0 * sts[0][0]..], &b[r0 * sts[1][0]..]);
                if let Err(e) = binary_runs_into(part, pa, pb, &sts, &shape, g) {
                    err.set(e);
                }
            });
            err.into_result()?;
        }
        _ => binary_runs_into(&mut out, a, b, st, out_shape, g)?,
    }
    Ok(out)
}

/// Apply `g` over broadcast runs, tracking the result range so the `i32` check is one comparison at the
/// end (keeps the loops branch-free so they vectorize), compiled for AVX-512 or AVX2 when the CPU has
/// it (the same integers: only the register width changes).
fn binary_runs_into(
    out: &mut [i32],
    a: &[i32],
    b: &[i32],
    st: &[Vec<usize>; 2],
    out_shape: &[usize],
    g: impl Fn(i64, i64) -> i64 + Copy,
) -> Result<(), ExecError> {
    /// [`binary_runs_body`] compiled for the given target features.
    #[cfg(target_arch = "x86_64")]
    macro_rules! compiled_for {
        ($features:literal) => {{
            #[target_feature(enable = $features)]
            unsafe fn body(
                out: &mut [i32],
                a: &[i32],
                b: &[i32],
                st: &[Vec<usize>; 2],
                out_shape: &[usize],
                g: impl Fn(i64, i64) -> i64 + Copy,
            ) -> Result<(), ExecError> {
                binary_runs_body(out, a, b, st, out_shape, g)
            }
            // SAFETY: the CPU has the features (`Isa::detect`); the function is otherwise safe Rust.
            unsafe { body(out, a, b, st, out_shape, g) }
        }};
    }
    #[cfg(target_arch = "x86_64")]
    match crate::simd::Isa::detect() {
        crate::simd::Isa::Avx512 => return compiled_for!("avx512f,avx512bw,avx512dq,avx512vl"),
        crate::simd::Isa::Avx2 => return compiled_for!("avx2"),
        crate::simd::Isa::Base => {}
    }
    binary_runs_body(out, a, b, st, out_shape, g)
}

#[inline(always)]
fn binary_runs_body(
    out: &mut [i32],
    a: &[i32],
    b: &[i32],
    st: &[Vec<usize>; 2],
    out_shape: &[usize],
    g: impl Fn(i64, i64) -> i64 + Copy,
) -> Result<(), ExecError> {
    // the runs first (each `len` long, operand steps `inner` along it), so the loops below sit in
    // this function, not in a closure
    let (mut runs, mut len, mut inner) = (Vec::new(), 0, [0usize; 2]);
    for_each_run(out_shape, st, |start, offs, n, step| {
        runs.push((start, offs[0], offs[1]));
        (len, inner) = (n, [step[0], step[1]]);
    });
    let (mut l, mut h) = (0i64, 0i64);
    // the common layouts get loops without index arithmetic; range tracking stays in locals
    macro_rules! body {
        ($iter:expr) => {
            for (d, (x, y)) in $iter {
                let r = g(x as i64, y as i64);
                l = l.min(r);
                h = h.max(r);
                *d = r as i32;
            }
        };
    }
    for (start, oa, ob) in runs {
        let dst = &mut out[start..start + len];
        match (inner[0], inner[1]) {
            (1, 1) => body!(dst.iter_mut().zip(
                a[oa..oa + len]
                    .iter()
                    .copied()
                    .zip(b[ob..ob + len].iter().copied())
            )),
            (1, 0) => {
                let y = b[ob];
                body!(dst.iter_mut().zip(a[oa..oa + len].iter().map(|&x| (x, y))))
            }
            (0, 1) => {
                let x = a[oa];
                body!(dst.iter_mut().zip(b[ob..ob + len].iter().map(|&y| (x, y))))
            }
            (sa, sb) => body!(dst
                .iter_mut()
                .enumerate()
                .map(|(j, d)| (d, (a[oa + j * sa], b[ob + j * sb])))),
        }
    }
    if l < i32::MIN as i64 || h > i32::MAX as i64 {
        Err(ExecError::Overflow)
    } else {
        Ok(())
    }
}

#[allow(clippy::too_many_arguments)]
fn binary(
    op: &Op,
    a: &[i32],
    sa_shape: &[usize],
    sa: i32,
    b: &[i32],
    sb_shape: &[usize],
    sb: i32,
    out_shape: &[usize],
    so: i32,
    threads: usize,
) -> Result<Vec<i32>, ExecError> {
    let st = [
        broadcast_strides(out_shape, sa_shape),
        broadcast_strides(out_shape, sb_shape),
    ];
    let s = sa.max(sb);
    let (la, lb) = (s - sa, s - sb);
    // i64 fast paths, exact under the stated bounds: |x << l| < 2^59, sums < 2^60, products < 2^62;
    // no shift at the end, or a right one, whatever the operands' shifts; a left shift at the end
    // only when operands were not shifted (|v| < 2^33, shift <= 29).
    let k_add = s - so;
    let add_ok =
        la <= 28 && lb <= 28 && (k_add >= 0 || (la == 0 && lb == 0 && k_add >= -29)) && k_add < 62;
    let k_mul = sa + sb - so;
    match op {
        Op::Add if add_ok => {
            return binary_i64(a, b, &st, out_shape, k_add, threads, |x, y| {
                (x << la) + (y << lb)
            })
        }
        Op::Sub if add_ok => {
            return binary_i64(a, b, &st, out_shape, k_add, threads, |x, y| {
                (x << la) - (y << lb)
            })
        }
        Op::Max if add_ok => {
            return binary_i64(a, b, &st, out_shape, k_add, threads, |x, y| {
                (x << la).max(y << lb)
            })
        }
        Op::Min if add_ok => {
            return binary_i64(a, b, &st, out_shape, k_add, threads, |x, y| {
                (x << la).min(y << lb)
            })
        }
        Op::Mul if (0..62).contains(&k_mul) => {
            return binary_i64(a, b, &st, out_shape, k_mul, threads, |x, y| x * y)
        }
        _ => {}
    }
    // Div with the numerator scaled up (e ≥ 0) and no zero divisor: `div_round` in i64, the quotient
    // taken from an f64 division and corrected to the exact floor. `n` is exact in i64 (|x| < 2^31,
    // e ≤ 30); past 2^53 its f64 value is rounded, which moves a quotient below 2^30 by less than one
    // before the floor, so one correction step (in i128: `q · d` may pass 2^63) makes it exact; larger
    // quotients, which may not fit i32, take the exact division
    let e = so + sb - sa;
    if matches!(op, Op::Div) && (0..=30).contains(&e) && !b.contains(&0) {
        return binary_runs(a, b, &st, out_shape, threads, move |x, y| {
            let (num, den) = if y < 0 { (-(x << e), -y) } else { (x << e, y) };
            let (n, d) = (2 * num + den, 2 * den);
            let q = (n as f64 / d as f64).floor();
            if q.abs() >= (1u64 << 30) as f64 {
                return (n as i128)
                    .div_euclid(d as i128)
                    .clamp(i64::MIN as i128, i64::MAX as i128) as i64;
            }
            let mut q = q as i64;
            let r = n as i128 - q as i128 * d as i128;
            if r < 0 {
                q -= 1;
            } else if r >= d as i128 {
                q += 1;
            }
            q
        });
    }
    let n: usize = out_shape.iter().product();
    let mut out = crate::buffers::take(n, 0i32);
    let mut err = None;
    for_each_index(out_shape, &st, |flat, o| {
        let x = a[o[0]] as i128;
        let y = b[o[1]] as i128;
        let r = match op {
            Op::Add => fit(rshift((x << la) + (y << lb), s - so)),
            Op::Sub => fit(rshift((x << la) - (y << lb), s - so)),
            Op::Max => fit(rshift((x << la).max(y << lb), s - so)),
            Op::Min => fit(rshift((x << la).min(y << lb), s - so)),
            Op::Mul => fit(rshift(x * y, sa + sb - so)),
            _ => {
                let e = so + sb - sa;
                let (num, den) = if e >= 0 { (x << e, y) } else { (x, y << -e) };
                div_round(num, den).and_then(fit)
            }
        };
        match r {
            Ok(v) => out[flat] = v,
            Err(e) => {
                err.get_or_insert(e);
            }
        }
    });
    match err {
        Some(e) => Err(e),
        None => Ok(out),
    }
}

/// The rounding half of a right shift by `k` (`k ≥ 0`).
fn half(k: i32) -> i64 {
    if k > 0 {
        1i64 << (k - 1)
    } else {
        0
    }
}

fn reduce(
    kind: ReduceKind,
    axes: &[u32],
    x: &[i32],
    shape: &[usize],
    si: i32,
    so: i32,
) -> Result<Vec<i32>, ExecError> {
    let out_shape: Vec<usize> = shape
        .iter()
        .enumerate()
        .map(|(i, &d)| if axes.contains(&(i as u32)) { 1 } else { d })
        .collect();
    let n_out: usize = out_shape.iter().product();
    let count: usize = axes.iter().map(|&a| shape[a as usize]).product();
    // Accumulate in input order; the result of each reduction is order-independent. A tensor has at
    // most 2^31 elements, so a sum of them stays below 2^62 in `i64`.
    let init = match kind {
        ReduceKind::Max => i64::MIN,
        ReduceKind::Min => i64::MAX,
        _ => 0,
    };
    let step = move |a: i64, v: i64| match kind {
        ReduceKind::Sum | ReduceKind::Mean => a + v,
        ReduceKind::Max => a.max(v),
        ReduceKind::Min => a.min(v),
    };
    let mut acc = vec![init; n_out];
    let r = shape.len();
    // the reduced axes one block `first..first + axes.len()` in order (a normalization over the
    // channels of `[N, C, H, W]`): each output row of `inner` elements folds `count` input rows; the
    // block at the end (or no axis) leaves one contiguous run per output
    let first = axes.first().map_or(r, |&a| a as usize);
    let block = axes
        .iter()
        .enumerate()
        .all(|(i, &a)| a as usize == first + i);
    let trailing = block && first + axes.len() == r;
    if trailing && count > 0 {
        // the reduced elements of each output are one contiguous run
        for (a, run) in acc.iter_mut().zip(x.chunks_exact(count)) {
            *a = run.iter().fold(init, |a, &v| step(a, v as i64));
        }
    } else if block && count > 0 && n_out > 0 {
        let inner: usize = shape[first + axes.len()..].iter().product();
        for (out_row, rows) in acc
            .chunks_exact_mut(inner.max(1))
            .zip(x.chunks_exact((count * inner).max(1)))
        {
            for row in rows.chunks_exact(inner.max(1)) {
                for (a, &v) in out_row.iter_mut().zip(row) {
                    *a = step(*a, v as i64);
                }
            }
        }
    } else {
        let ost = strides(&out_shape);
        let to_out: Vec<usize> = (0..shape.len())
            .map(|i| if out_shape[i] == 1 { 0 } else { ost[i] })
            .collect();
        for_each_index(shape, &[to_out], |flat, o| {
            let a = &mut acc[o[0]];
            *a = step(*a, x[flat] as i64);
        });
    }
    acc.into_iter()
        .map(|a| {
            let a = a as i128;
            if count == 0 {
                return Ok(0);
            }
            match kind {
                ReduceKind::Mean => {
                    let e = so - si;
                    let (num, den) = if e >= 0 {
                        (a << e, count as i128)
                    } else {
                        (a, (count as i128) << -e)
                    };
                    fit(div_round_fast(num, den)?)
                }
                _ => fit(rshift(a, si - so)),
            }
        })
        .collect()
}

/// Softmax (§3 of the spec). The fast executor (`fast`: its threads) takes lanes along the last axis
/// through [`softmax_row`]; the reference, and lanes across other axes, follow the definition.
fn softmax(
    x: &[i32],
    shape: &[usize],
    axis: usize,
    (shift, lo, table): (i32, i32, &[i32]),
    so: i32,
    fast: Option<usize>,
) -> Result<Vec<i32>, ExecError> {
    let n = shape[axis];
    let inner: usize = shape[axis + 1..].iter().product();
    let mut out = crate::buffers::take(x.len(), 0i32);
    let rows = fast
        .filter(|_| inner == 1 && n > 0 && n < 1 << 22)
        .and_then(|_| crate::arith::Shift::new(shift));
    // one part: the slices of `o0..` along the axes before `axis` (each slice's sums are its own)
    let part = |o0: usize, out: &mut [i32]| -> Result<(), ExecError> {
        if let Some(sh) = rows {
            for (o, out) in (o0..).zip(out.chunks_mut(n)) {
                softmax_row(&x[o * n..(o + 1) * n], out, table, sh, lo, so)?;
            }
            return Ok(());
        }
        let mut e = vec![0i128; n];
        for (o, out) in (o0..).zip(out.chunks_mut((n * inner).max(1))) {
            let x = &x[o * n * inner..(o + 1) * n * inner];
            for i in 0..inner {
                let at = |j: usize| j * inner + i;
                let mx = (0..n).map(|j| x[at(j)]).max().unwrap_or(0) as i128;
                let mut sum = 0i128;
                for (j, ej) in e.iter_mut().enumerate() {
                    *ej = table[table_index(x[at(j)] as i128 - mx, shift, lo, table.len())] as i128;
                    sum += *ej;
                }
                for (j, ej) in e.iter().enumerate() {
                    out[at(j)] = fit(div_round_fast(*ej << so, sum)?)?;
                }
            }
        }
        Ok(())
    };
    let threads = fast.unwrap_or(1);
    if threads > 1 && x.len() >= PAR_ELEMENTS && n * inner > 0 {
        let err = crate::par::FirstError::default();
        crate::par::rows(&mut out, n * inner, threads, 1, |o0, rows| {
            if let Err(e) = part(o0, rows) {
                err.set(e);
            }
        });
        err.into_result()?;
    } else {
        part(0, &mut out)?;
    }
    Ok(out)
}

/// One softmax lane of `0 < n < 2^22` contiguous elements, `shift` in the range of
/// [`crate::arith::Shift`]: the same integers as the definition, in `i64` and vector lanes. Each `x −
/// max` lies in `(−2^32, 0]`, so its shifted value and table index stay in `i64`; the entries are
/// non-negative `i32` (checked when the model loads), so `S < 2^53`. The quotient `⌊(2e·2^s + S) /
/// 2S⌋` (at most `2^s ≤ 2^30`, as `e ≤ S`) is estimated in `f64`, within 1 of it, and then corrected
/// by its exact remainder.
fn softmax_row(
    x: &[i32],
    out: &mut [i32],
    table: &[i32],
    sh: crate::arith::Shift,
    lo: i32,
    so: i32,
) -> Result<(), ExecError> {
    let m = x.iter().copied().max().unwrap_or(0);
    let s = softmax_exps(x, out, table, m, sh, lo);
    if s == 0 {
        return Err(ExecError::DivisionByZero);
    }
    softmax_divide(out, s, so as u32);
    Ok(())
}

crate::multiversion! {
    fn softmax_exps(x: &[i32], e: &mut [i32], table: &[i32], m: i32, sh: crate::arith::Shift, lo: i32) -> i64 = softmax_exps_body
}

/// `e[j] = E[clamp(rshift(x[j] − m, shift) − lo, 0, len − 1)]`; returns `Σ e[j]`.
#[inline(always)]
fn softmax_exps_body(
    x: &[i32],
    e: &mut [i32],
    table: &[i32],
    m: i32,
    sh: crate::arith::Shift,
    lo: i32,
) -> i64 {
    let (half, right, left) = (sh.half, sh.right, sh.left);
    let last = table.len() as i64 - 1;
    let mut sum = 0i64;
    for (ej, &v) in e.iter_mut().zip(x) {
        let d = v as i64 - m as i64;
        let i = (((d + half) >> right) << left) - lo as i64;
        let i = i.clamp(0, last) as usize;
        // SAFETY: `i` is clamped to the table's indices just above
        let t = unsafe { *table.get_unchecked(i) };
        *ej = t;
        sum += t as i64;
    }
    sum
}

crate::multiversion! {
    fn softmax_divide(e: &mut [i32], s: i64, so: u32) -> () = softmax_divide_body
}

/// `e[j] = ⌊(2·e[j]·2^so + s) / 2s⌋` for `0 ≤ e[j] ≤ s < 2^53`, `so ≤ 30`: an `f64` estimate, `e·2^so/s`
/// rounded to an integer by adding `2^52` (off by at most 1: the quotient is at most `2^so` and the
/// product's relative error about `2^−52`), then the remainder `2e·2^so + s − 2s·q` in wrapping `i64`
/// (exact: it lies within `(−2s, 4s)`) moves it to the quotient.
#[inline(always)]
fn softmax_divide_body(e: &mut [i32], s: i64, so: u32) {
    const MAGIC: f64 = (1u64 << 52) as f64;
    let scale = (1u64 << so) as f64 / s as f64;
    let two_s = 2 * s;
    for ej in e.iter_mut() {
        let v = *ej as i64;
        // below 2^31 + MAGIC: the sum's significand holds the integer nearest to v·scale
        let q = ((v as f64) * scale + MAGIC).to_bits() as i64 - MAGIC.to_bits() as i64;
        let r = ((v << (so + 1)) + s).wrapping_sub(two_s.wrapping_mul(q));
        *ej = (q - (r < 0) as i64 + (r >= two_s) as i64) as i32;
    }
}

pub(crate) fn pool(
    x: &[i32],
    xs: &[usize],
    w: &Window,
    out_shape: &[usize],
    avg: Option<bool>,
    k: i32,
) -> Result<Vec<i32>, ExecError> {
    let (c_all, h, wd) = (xs[0] * xs[1], xs[2], xs[3]);
    let (oh, ow) = (out_shape[2], out_shape[3]);
    let (kh, kw) = (w.kernel[0] as usize, w.kernel[1] as usize);
    let area = kh * kw;
    // Fast path: no padding, no dilation (every tap is valid, the divisor is the area). With at most
    // 2^12 taps and a shift of at most 12, |sum << -k| < 2^55, inside `div_round_i64`'s range.
    if w.pads == [0; 4] && w.dilation == [1, 1] && area <= 1 << 12 && (-12..=0).contains(&k) {
        let (sh, sw) = (w.stride[0] as usize, w.stride[1] as usize);
        let mut out = Vec::with_capacity(c_all * oh * ow);
        let (mut lo, mut hi) = (0i64, 0i64);
        for c in 0..c_all {
            let plane = &x[c * h * wd..(c + 1) * h * wd];
            for oy in 0..oh {
                for ox in 0..ow {
                    let base = oy * sh * wd + ox * sw;
                    let v = match avg {
                        None => {
                            let mut m = i32::MIN;
                            for ky in 0..kh {
                                for &v in &plane[base + ky * wd..base + ky * wd + kw] {
                                    m = m.max(v);
                                }
                            }
                            m as i64
                        }
                        Some(_) => {
                            let mut sum = 0i64;
                            for ky in 0..kh {
                                for &v in &plane[base + ky * wd..base + ky * wd + kw] {
                                    sum += v as i64;
                                }
                            }
                            crate::arith::div_round_i64(sum << -k, area as i64)
                        }
                    };
                    lo = lo.min(v);
                    hi = hi.max(v);
                    out.push(v as i32);
                }
            }
        }
        if avg.is_none() && k < 0 {
            // max pooling that only rescales upward: apply the shift exactly
            return out.into_iter().map(|v| fit(rshift(v as i128, k))).collect();
        }
        return if lo < i32::MIN as i64 || hi > i32::MAX as i64 {
            Err(ExecError::Overflow)
        } else {
            Ok(out)
        };
    }
    // valid (non-padding) input rows/columns of every output row/column
    let taps = |o: usize, n: usize, ax: usize| -> Vec<usize> {
        (0..w.kernel[ax] as usize)
            .filter_map(|t| {
                let i = (o * w.stride[ax] as usize + t * w.dilation[ax] as usize) as i64
                    - w.pads[ax] as i64;
                (i >= 0 && (i as usize) < n).then_some(i as usize)
            })
            .collect()
    };
    let rows: Vec<Vec<usize>> = (0..oh).map(|o| taps(o, h, 0)).collect();
    let cols: Vec<Vec<usize>> = (0..ow).map(|o| taps(o, wd, 1)).collect();
    let area = area as i128;
    let mut out = Vec::with_capacity(c_all * oh * ow);
    for c in 0..c_all {
        let plane = &x[c * h * wd..(c + 1) * h * wd];
        for ry in &rows {
            for cx in &cols {
                let v = match avg {
                    None => {
                        // max over the valid taps; a window with none yields 0
                        let mut m = i32::MIN;
                        for &iy in ry {
                            let row = &plane[iy * wd..(iy + 1) * wd];
                            for &ix in cx {
                                m = m.max(row[ix]);
                            }
                        }
                        let m = if ry.is_empty() || cx.is_empty() { 0 } else { m };
                        if k == 0 {
                            m
                        } else {
                            fit(rshift(m as i128, k))?
                        }
                    }
                    Some(include_pad) => {
                        let mut sum = 0i64;
                        for &iy in ry {
                            let row = &plane[iy * wd..(iy + 1) * wd];
                            for &ix in cx {
                                sum += row[ix] as i64;
                            }
                        }
                        let count = if include_pad {
                            area
                        } else {
                            (ry.len() * cx.len()) as i128
                        };
                        if count == 0 {
                            0
                        } else {
                            let e = -k;
                            let sum = sum as i128;
                            let (num, den) = if e >= 0 {
                                (sum << e, count)
                            } else {
                                (sum, count << -e)
                            };
                            fit(div_round_fast(num, den)?)?
                        }
                    }
                };
                out.push(v);
            }
        }
    }
    Ok(out)
}

/// Shapes and labels of an `EinSum` node.
#[derive(Clone, Copy)]
pub struct EinSpec<'a> {
    /// Labels of `a`.
    pub a: &'a [u8],
    /// Labels of `b`.
    pub b: &'a [u8],
    /// Labels of the output.
    pub out: &'a [u8],
    /// Shape of `a`.
    pub a_shape: &'a [usize],
    /// Shape of `b`.
    pub b_shape: &'a [usize],
    /// Output shape.
    pub out_shape: &'a [usize],
}

impl<'a> EinSpec<'a> {
    /// The same product with the operands exchanged.
    pub fn swapped(&self) -> EinSpec<'a> {
        EinSpec {
            a: self.b,
            b: self.a,
            out: self.out,
            a_shape: self.b_shape,
            b_shape: self.a_shape,
            out_shape: self.out_shape,
        }
    }

    /// Size of every label (max over operands, so size-1 axes broadcast).
    pub fn label_sizes(&self) -> [usize; 256] {
        let mut size = [1usize; 256];
        for (labels, shape) in [
            (self.a, self.a_shape),
            (self.b, self.b_shape),
            (self.out, self.out_shape),
        ] {
            for (&l, &d) in labels.iter().zip(shape) {
                size[l as usize] = size[l as usize].max(d);
            }
        }
        size
    }

    /// Labels summed over (in `a` or `b` but not in the output), in first-appearance order.
    pub fn summed(&self) -> Vec<u8> {
        let mut s = Vec::new();
        for &l in self.a.iter().chain(self.b) {
            if !self.out.contains(&l) && !s.contains(&l) {
                s.push(l);
            }
        }
        s
    }
}

/// Strides of an operand indexed by a list of labels (0 where the operand lacks the label or broadcasts).
pub fn label_strides(labels: &[u8], shape: &[usize], by: &[u8]) -> Vec<usize> {
    let st = strides(shape);
    by.iter()
        .map(|l| match labels.iter().position(|x| x == l) {
            Some(p) if shape[p] > 1 => st[p],
            _ => 0,
        })
        .collect()
}

pub(crate) fn einsum_reference(
    s: &EinSpec<'_>,
    a: &[i32],
    b: &[i32],
    bias: Option<(&[i32], &[usize], i32)>,
    shift: i32,
) -> Result<Vec<i32>, ExecError> {
    let sizes = s.label_sizes();
    let summed = s.summed();
    let sum_shape: Vec<usize> = summed.iter().map(|&l| sizes[l as usize]).collect();
    let a_out = label_strides(s.a, s.a_shape, s.out);
    let b_out = label_strides(s.b, s.b_shape, s.out);
    let a_sum = label_strides(s.a, s.a_shape, &summed);
    let b_sum = label_strides(s.b, s.b_shape, &summed);
    let sum_st = [a_sum, b_sum];
    let bias_st = bias.map(|(_, bs, _)| broadcast_strides(s.out_shape, bs));
    let out_strides = strides(s.out_shape);
    let mut out = vec![0i32; s.out_shape.iter().product()];
    let mut err = None;
    for_each_index(s.out_shape, &[a_out, b_out], |flat, o| {
        let mut acc = 0i128;
        for_each_index(&sum_shape, &sum_st, |_, k| {
            acc += a[o[0] + k[0]] as i128 * b[o[1] + k[1]] as i128;
        });
        if let (Some((bd, _, bshift)), Some(bst)) = (bias, &bias_st) {
            // bias element for this output element
            let mut bi = 0;
            let mut rem = flat;
            for (ax, st) in out_strides.iter().enumerate() {
                bi += (rem / st) * bst[ax];
                rem %= st;
            }
            acc += (bd[bi] as i128) << bshift;
        }
        match fit(rshift(acc, shift)) {
            Ok(v) => out[flat] = v,
            Err(e) => {
                err.get_or_insert(e);
            }
        }
    });
    err.map_or(Ok(out), Err)
}

/// Shapes of a `Conv2d` node.
pub struct ConvSpec<'a> {
    /// Input shape NCHW.
    pub x: &'a [usize],
    /// Weight shape OIHW (I = C / groups).
    pub w: &'a [usize],
    /// Geometry.
    pub window: &'a Window,
    /// Groups.
    pub groups: usize,
    /// Output shape.
    pub out: &'a [usize],
}

pub(crate) fn conv_reference(
    s: &ConvSpec<'_>,
    x: &[i32],
    w: &[i32],
    bias: Option<(&[i32], i32)>,
    shift: i32,
) -> Result<Vec<i32>, ExecError> {
    let (n, c, h, wd) = (s.x[0], s.x[1], s.x[2] as i64, s.x[3] as i64);
    let (o_ch, cg, kh, kw) = (s.w[0], s.w[1], s.w[2], s.w[3]);
    let (oh, ow) = (s.out[2], s.out[3]);
    let og = o_ch / s.groups;
    let win = s.window;
    let mut out = Vec::with_capacity(n * o_ch * oh * ow);
    for b in 0..n {
        for o in 0..o_ch {
            let g = o / og;
            for oy in 0..oh {
                for ox in 0..ow {
                    let mut acc = 0i128;
                    for ci in 0..cg {
                        let ch = g * cg + ci;
                        for ky in 0..kh {
                            let iy = oy as i64 * win.stride[0] as i64
                                + ky as i64 * win.dilation[0] as i64
                                - win.pads[0] as i64;
                            for kx in 0..kw {
                                let ix = ox as i64 * win.stride[1] as i64
                                    + kx as i64 * win.dilation[1] as i64
                                    - win.pads[1] as i64;
                                if iy < 0 || iy >= h || ix < 0 || ix >= wd {
                                    continue; // zero padding
                                }
                                let xv =
                                    x[((b * c + ch) * s.x[2] + iy as usize) * s.x[3] + ix as usize];
                                let wv = w[((o * cg + ci) * kh + ky) * kw + kx];
                                acc += xv as i128 * wv as i128;
                            }
                        }
                    }
                    if let Some((bd, bshift)) = bias {
                        acc += (bd[o] as i128) << bshift;
                    }
                    out.push(fit(rshift(acc, shift))?);
                }
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An executor made beside another (`new_sharing`) takes its column-major matrix for a constant
    /// matrix-vector product instead of building one, and gives the same integers as one made alone and
    /// as the reference.
    #[test]
    fn executors_share_matrix_vector_weights() {
        let (o, g) = (5u32, 7u32);
        let w: Vec<i32> = (0..o * g).map(|i| i as i32 * 37 - 600).collect();
        let m = Model::one_node(
            vec![crate::ir::Input {
                name: "x".into(),
                shape: vec![g],
                scale: 4,
                kind: crate::ir::InputKind::Fixed,
            }],
            vec![Const {
                shape: vec![o, g],
                scale: 6,
                data: w.into(),
            }],
            Op::EinSum {
                a: vec![0, 1],
                b: vec![1],
                out: vec![0],
            },
            vec![1, 0],
            vec![o],
            5,
        );
        let fast = Mode::Fast { threads: 1 };
        let first = Executor::new(&m, fast);
        let beside = Executor::new_sharing(&m, fast, first.shared_packs());
        let alone = Executor::new(&m, fast);
        match (&first.prepared[0], &beside.prepared[0], &alone.prepared[0]) {
            (Prepared::MatVec(a, 1), Prepared::MatVec(b, 1), Prepared::MatVec(c, 1)) => {
                assert!(
                    Arc::ptr_eq(a, b),
                    "the executor beside takes the first one's matrix"
                );
                assert!(!Arc::ptr_eq(a, c), "one made alone builds its own");
            }
            _ => panic!("a constant matrix times a vector is prepared as such"),
        }
        let x = vec![(0..g as i32).map(|i| i * 11 - 30).collect::<Vec<_>>()];
        let want = Executor::new(&m, Mode::Reference).run(x.clone()).unwrap();
        assert_eq!(first.run(x.clone()).unwrap(), want);
        assert_eq!(beside.run(x.clone()).unwrap(), want);
        assert_eq!(alone.run(x).unwrap(), want);
    }

    /// A vector times a constant matrix given second — a classifier after global pooling,
    /// `{g,1,1}, {o,g} → {1,o}`, and `{g}, {o,g} → {1,o}` — is prepared as a matrix-vector product
    /// (the vector the first input) and gives the reference's integers on one and two threads (split
    /// by rows); a vector with an axis longer than one, or a matrix that is no constant, is not.
    #[test]
    fn vectors_times_a_second_constant_matrix_are_matrix_vector_products() {
        let (o, g) = (600u32, 1000u32);
        let w: Vec<i32> = (0..o * g).map(|i| (i * 37 % 251) as i32 - 125).collect();
        // (vector shape, its labels, the output's labels, the output shape, a matrix-vector product)
        type Case = (Vec<u32>, Vec<u8>, Vec<u8>, Vec<u32>, bool);
        let cases: [Case; 3] = [
            (vec![g, 1, 1], vec![0, 1, 2], vec![4, 3], vec![1, o], true),
            (vec![g], vec![0], vec![2, 1], vec![1, o], true),
            (vec![g, 2], vec![0, 1], vec![1, 3], vec![2, o], false),
        ];
        for (xs, a, out, ys, expect) in cases {
            let b = vec![if a.len() == 1 { 1 } else { 3 }, 0];
            let m = Model::one_node(
                vec![crate::ir::Input {
                    name: "x".into(),
                    shape: xs.clone(),
                    scale: 4,
                    kind: crate::ir::InputKind::Fixed,
                }],
                vec![Const {
                    shape: vec![o, g],
                    scale: 6,
                    data: w.clone().into(),
                }],
                Op::EinSum { a, b, out },
                vec![0, 1],
                ys,
                3,
            );
            m.validate().expect("valid");
            let n: u32 = xs.iter().product();
            let x = vec![(0..n as i32)
                .map(|i| i * 11 % 256 - 128)
                .collect::<Vec<_>>()];
            let want = Executor::new(&m, Mode::Reference).run(x.clone()).unwrap();
            for threads in [1, 2] {
                let fast = Executor::new(&m, Mode::Fast { threads });
                let prepared = matches!(fast.prepared[0], Prepared::MatVec(_, 0));
                assert_eq!(prepared, expect, "{xs:?}");
                assert_eq!(
                    fast.run(x.clone()).unwrap(),
                    want,
                    "{xs:?}, {threads} threads"
                );
            }
        }
        assert!(!matvec_second(&[0], &[1, 0], &[2, 1], &[1000], &[3, 600]));
    }

    /// The row-wise strided copy (Slice, Broadcast, Transpose) equals the element-wise odometer it
    /// replaced, for steps on every axis, permuted and zero (broadcast) strides, a scalar and an empty
    /// shape.
    #[test]
    fn strided_copy_equals_the_element_loop() {
        let x: Vec<i32> = (0..4096).map(|i| i * 7 - 1000).collect();
        let cases: [(&[usize], &[usize], usize); 7] = [
            (&[2, 3, 4], &[100, 10, 1], 5),
            (&[2, 3, 4], &[100, 10, 3], 0),
            (&[3, 5], &[0, 2], 7),
            (&[4, 1, 6], &[50, 0, 0], 1),
            (&[5, 4, 3], &[1, 15, 5], 0),
            (&[], &[], 11),
            (&[3, 0, 2], &[9, 3, 1], 0),
        ];
        for (shape, st, base) in cases {
            let mut want = vec![0i32; shape.iter().product()];
            for_each_index(shape, &[st.to_vec()], |flat, o| want[flat] = x[base + o[0]]);
            assert_eq!(strided_copy(&x, base, shape, st), want, "{shape:?} {st:?}");
        }
    }
}
