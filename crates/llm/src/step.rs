//! One decode step of a llama-family model as a canonical Verity model (spec: `docs/spec/llm.md`).
//!
//! Inputs: `token` and `pos` (integers), then per layer `k_cache.L` and `v_cache.L`, `[kv_heads,
//! context − 1, head_dim]`: the keys and values the earlier steps of the generation output (rows at
//! `pos` and beyond are ignored, whatever they hold). Outputs: `logits` `[vocab]`, then per layer `k.L`
//! and `v.L` `[kv_heads · head_dim]`, this position's key and value, which the next steps read from
//! their caches. Every op is a v1 op, so the semantics, one-step checks and proofs apply unchanged.

use std::collections::BTreeMap;
use verity_engine::calib::ceil_log2;
use verity_engine::elements::Elements;

use verity_engine::ir::{
    broadcast_shapes, Const, Input, InputKind, Model, Node, Op, Output, ReduceKind,
};

use crate::arch::{Hparams, LlmError, Matrix, RopeKind, Weights};
use crate::gguf::Dyadic;
use crate::reference::{rope_angle, Maxima};

#[derive(Clone, Copy, Debug)]
enum R {
    In(u32),
    C(u32),
    N(u32),
}

/// A graph under construction (constants and nodes are numbered at the end).
#[derive(Default)]
struct G {
    inputs: Vec<Input>,
    consts: Vec<Const>,
    nodes: Vec<(Node, Vec<R>)>,
}

impl G {
    fn input(&mut self, name: String, shape: Vec<u32>, scale: i32, kind: InputKind) -> R {
        self.inputs.push(Input {
            name,
            shape,
            scale: scale as i8,
            kind,
        });
        R::In(self.inputs.len() as u32 - 1)
    }

    fn konst(&mut self, shape: Vec<u32>, scale: i32, data: Vec<i32>) -> R {
        self.shared(shape, scale, data.into())
    }

    fn shared(&mut self, shape: Vec<u32>, scale: i32, data: Elements) -> R {
        self.consts.push(Const {
            shape,
            scale: scale as i8,
            data,
        });
        R::C(self.consts.len() as u32 - 1)
    }

    fn node(&mut self, name: String, op: Op, ins: &[R], shape: Vec<u32>, scale: i32) -> R {
        self.nodes.push((
            Node {
                name,
                op,
                inputs: Vec::new(),
                shape,
                scale: scale as i8,
            },
            ins.to_vec(),
        ));
        R::N(self.nodes.len() as u32 - 1)
    }

    fn shape(&self, r: R) -> Vec<u32> {
        match r {
            R::In(i) => self.inputs[i as usize].shape.clone(),
            R::C(c) => self.consts[c as usize].shape.clone(),
            R::N(n) => self.nodes[n as usize].0.shape.clone(),
        }
    }

    fn scale(&self, r: R) -> i32 {
        match r {
            R::In(i) => self.inputs[i as usize].scale.into(),
            R::C(c) => self.consts[c as usize].scale.into(),
            R::N(n) => self.nodes[n as usize].0.scale.into(),
        }
    }

    /// An element-wise node: the inputs' broadcast shape for arithmetic, else the first input's
    /// (a table's length does not broadcast).
    fn map(&mut self, name: String, op: Op, ins: &[R], scale: i32) -> R {
        let mut shape = self.shape(ins[0]);
        if matches!(op, Op::Add | Op::Sub | Op::Mul | Op::Div) {
            for &r in &ins[1..] {
                shape = broadcast_shapes(&shape, &self.shape(r)).expect("operands broadcast");
            }
        }
        self.node(name, op, ins, shape, scale)
    }

    /// A `Reduce` over `x`'s last axis, kept with size 1.
    fn reduce_last(&mut self, name: String, kind: ReduceKind, x: R, scale: i32) -> R {
        let mut shape = self.shape(x);
        let axis = shape.len() as u32 - 1;
        shape[axis as usize] = 1;
        let op = Op::Reduce {
            kind,
            axes: vec![axis],
        };
        self.node(name, op, &[x], shape, scale)
    }

    /// The largest magnitude along `x`'s last axis (`{name}/abs`, then `max_name`), at `x`'s scale.
    fn abs_max(&mut self, name: &str, max_name: &str, x: R) -> R {
        let s = self.scale(x);
        let abs = self.map(
            format!("{name}/abs"),
            Op::LeakyRelu {
                alpha_q: -1,
                alpha_scale: 0,
            },
            &[x],
            s,
        );
        self.reduce_last(format!("{name}/{max_name}"), ReduceKind::Max, abs, s)
    }

    fn reshape(&mut self, name: String, x: R, shape: Vec<u32>) -> R {
        let s = self.scale(x);
        self.node(name, Op::Reshape, &[x], shape, s)
    }

    fn finish(self, outputs: Vec<(String, R)>) -> Model {
        let ni = self.inputs.len() as u32;
        let nc = self.consts.len() as u32;
        let id = |r: R| match r {
            R::In(i) => i,
            R::C(c) => ni + c,
            R::N(n) => ni + nc + n,
        };
        Model {
            inputs: self.inputs,
            consts: self.consts,
            nodes: self
                .nodes
                .into_iter()
                .map(|(mut n, ins)| {
                    n.inputs = ins.into_iter().map(id).collect();
                    n
                })
                .collect(),
            outputs: outputs
                .into_iter()
                .map(|(name, r)| Output { name, value: id(r) })
                .collect(),
        }
    }
}

/// The scale that holds `m` with 16× headroom in `i32` (at most 24 fractional bits).
fn scale_for(m: f64) -> i32 {
    (27 - ceil_log2(m.max(1e-6))).clamp(-30, 24)
}

/// Exact dyadic values as integers at one scale: the scale that keeps every value exact if that fits
/// 31 bits, else the finest that fits (the values it rounds are counted).
fn at_one_scale(vals: &[Dyadic], cap: i32) -> (Vec<i32>, i32, u64) {
    let nz = vals.iter().filter(|d| d.m != 0);
    let e_min = nz.clone().map(|d| d.e).min().unwrap_or(0);
    let top = nz
        .map(|d| 64 - d.m.unsigned_abs().leading_zeros() as i32 + d.e)
        .max()
        .unwrap_or(0);
    let s = (-e_min).min(30 - top).min(cap).clamp(-127, 127);
    let mut rounded = 0;
    let data = vals
        .iter()
        .map(|d| {
            let k = d.e + s;
            if d.m == 0 {
                0
            } else if k >= 0 {
                (d.m << k) as i32
            } else {
                let r = verity_engine::arith::rshift(d.m as i128, -k);
                if r << -k != d.m as i128 {
                    rounded += 1;
                }
                r as i32
            }
        })
        .collect();
    (data, s, rounded)
}

/// A matrix's constants in the graph.
#[derive(Clone, Copy)]
struct Mat {
    rows: usize,
    blocks: usize,
    block: usize,
    q: R,
    mult: R,
    offset: Option<R>,
    /// Largest `|m_b| Σ_k |q|` over the blocks (real units): bounds one block's product for `|x| ≤ 1`.
    block_bound: f64,
}

/// An activation in dynamic 8-bit blocks.
#[derive(Clone, Copy)]
struct Dq {
    q: R,
    max: R,
    block: usize,
}

/// What the import did to the weights, for the compile report.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ImportReport {
    /// Float matrices requantized to 8-bit blocks (not exact).
    pub requantized: Vec<String>,
    /// Block multipliers or offsets rounded because a tensor's spread exceeded 31 bits.
    pub rounded_multipliers: u64,
    /// Calibration maxima the scales were chosen from.
    pub maxima: Maxima,
}

/// A model that computes what the step computes, bit for bit, for fewer cache rows, for several
/// consecutive positions at once (a prefill chunk: inputs `token` `[rows]`, `pos`, `last` and the
/// caches; outputs the logits of row `last` and every row's keys and values), or for one position of
/// each of several generations (`sequences`: inputs `token` and `pos` `[rows]` and the caches
/// `[rows, cache rows, kv_heads, head_dim]`; outputs every row's logits, keys and values).
#[derive(Clone, Debug)]
pub struct Variant {
    /// Positions computed at once (1 for a step).
    pub rows: usize,
    /// Whether the rows are separate generations (each its own position and cache).
    pub sequences: bool,
    /// Cache rows it reads: it serves (first) positions up to this one.
    pub cache_rows: usize,
    /// The model.
    pub model: Model,
}

/// The cache lengths variants are built for below `t` (32, 128, 512, …), then `t`.
pub fn cache_buckets(t: usize) -> Vec<usize> {
    let mut b: Vec<usize> = std::iter::successors(Some(32usize), |c| Some(c * 4))
        .take_while(|&c| c < t)
        .collect();
    b.push(t);
    b
}

/// A compiled decode step.
#[derive(Clone, Debug)]
pub struct Step {
    /// The canonical model.
    pub model: Model,
    /// Faster models with the step's bits, sharing its constants: the step over fewer cache rows, and
    /// prefill chunks (several consecutive positions at once), fewest cache rows first.
    pub variants: Vec<Variant>,
    /// Hyper-parameters.
    pub hp: Hparams,
    /// Positions a generation can hold (the caches have `context − 1` rows).
    pub context: usize,
    /// What the import did.
    pub report: ImportReport,
}

/// A matrix's integer constants, computed once and shared by every model built from the weights.
#[derive(Clone)]
struct MatConsts {
    q: Elements,
    mult: Elements,
    offset: Option<Elements>,
    scale: i32,
    block_bound: f64,
}

struct Ctx<'a> {
    g: G,
    hp: &'a Hparams,
    report: ImportReport,
    /// Rows (positions) the model computes at once.
    rows: u32,
    /// Matrices' constants by tensor name.
    pool: &'a mut BTreeMap<String, MatConsts>,
}

const MAX: i32 = i32::MAX;

impl Ctx<'_> {
    fn matrix(&mut self, m: &Matrix) -> Mat {
        let b = &m.blocks;
        let nb = m.cols / b.block;
        if !self.pool.contains_key(&m.name) {
            let has_off = b.offset.iter().any(|d| d.m != 0);
            let mut all = b.mult.clone();
            if has_off {
                all.extend_from_slice(&b.offset);
            }
            let (ints, s, rounded) = at_one_scale(&all, 127);
            self.report.rounded_multipliers += rounded;
            let n = b.mult.len();
            let unit = (-s as f64).exp2();
            let block_bound = (0..n).fold(0f64, |m, blk| {
                let qs: i64 = b.q[blk * b.block..(blk + 1) * b.block]
                    .iter()
                    .map(|&q| (q as i64).abs())
                    .sum();
                m.max((ints[blk] as f64).abs() * unit * qs as f64)
            });
            let c = MatConsts {
                q: b.q.as_slice().into(),
                mult: ints[..n].to_vec().into(),
                offset: has_off.then(|| ints[n..].to_vec().into()),
                scale: s,
                block_bound,
            };
            self.pool.insert(m.name.clone(), c);
        }
        let c = self.pool[&m.name].clone();
        let g = &mut self.g;
        let q = g.shared(vec![m.rows as u32, nb as u32, b.block as u32], 0, c.q);
        let shape = vec![m.rows as u32, nb as u32];
        let mult = g.shared(shape.clone(), c.scale, c.mult);
        let offset = c.offset.map(|o| g.shared(shape, c.scale, o));
        Mat {
            rows: m.rows,
            blocks: nb,
            block: b.block,
            q,
            mult,
            offset,
            block_bound: c.block_bound,
        }
    }

    fn vector(&mut self, v: &[Dyadic]) -> (R, f64) {
        let (data, s, _) = at_one_scale(v, 30);
        let max = v.iter().fold(0f64, |m, d| m.max(d.to_f64().abs()));
        (self.g.konst(vec![v.len() as u32], s, data), max)
    }

    /// `x` `[m, k]` → 8-bit values `[m, k / block, block]` at scale 7 (each element over its block's
    /// largest magnitude, as ggml quantizes activations) and the blocks' maxima `[m, 1, k / block]` at
    /// `x`'s scale.
    fn dynamic(&mut self, name: &str, x: R, block: usize) -> Dq {
        let s = self.g.scale(x);
        let k = self.g.shape(x)[1];
        let nb = k / block as u32;
        let m = self.rows;
        let g = &mut self.g;
        let xb = g.reshape(format!("{name}/blocks"), x, vec![m, nb, block as u32]);
        let max = g.abs_max(name, "blockmax", xb);
        // the divisor is the maximum × 128/127, so the largest element maps to ±127 (not ±128)
        let widen = g.konst(
            vec![1],
            30,
            vec![((128f64 / 127.0) * (30f64).exp2()).round() as i32],
        );
        let wide = g.map(format!("{name}/blockmax_wide"), Op::Mul, &[max, widen], s);
        let m1 = g.map(
            format!("{name}/blockmax1"),
            Op::Clamp { lo: 1, hi: MAX },
            &[wide],
            s,
        );
        let div = g.map(format!("{name}/div"), Op::Div, &[xb, m1], 7);
        let q = g.map(
            format!("{name}/q8d"),
            Op::Clamp { lo: -127, hi: 127 },
            &[div],
            7,
        );
        let max = g.reshape(format!("{name}/blockmaxima"), m1, vec![m, 1, nb]);
        Dq { q, max, block }
    }

    /// `x`'s dynamic blocks for `w` (made once per block size).
    fn dq_for(&mut self, name: &str, x: R, made: &mut Vec<Dq>, w: &Mat) -> Dq {
        if let Some(d) = made.iter().find(|d| d.block == w.block) {
            return *d;
        }
        let d = self.dynamic(&format!("{name}{}", w.block), x, w.block);
        made.push(d);
        d
    }

    /// `W x` from `x`'s dynamic 8-bit blocks, for each of the `m` rows; the result `[m, rows]` at
    /// `scale`.
    fn matmul(&mut self, name: &str, x: &Dq, w: &Mat, scale: i32) -> R {
        assert_eq!(x.block, w.block, "activation and weight blocks agree");
        // no finer than the product itself (a left shift would add only zero bits)
        let s_m = self.g.scale(w.mult);
        let s_p = (30 - ceil_log2(w.block_bound.max(1e-30))).clamp(-60, 7 + s_m - 1);
        let s_x = self.g.scale(x.max);
        let m = self.rows;
        let g = &mut self.g;
        let (o, nb) = (w.rows as u32, w.blocks as u32);
        let acc = g.node(
            format!("{name}/acc"),
            Op::EinSum {
                a: b"mgk".to_vec(),
                b: b"ogk".to_vec(),
                out: b"mog".to_vec(),
            },
            &[x.q, w.q],
            vec![m, o, nb],
            7,
        );
        let p = g.map(format!("{name}/blockscaled"), Op::Mul, &[acc, w.mult], s_p);
        let pm = g.map(
            format!("{name}/blockvalues"),
            Op::Mul,
            &[p, x.max],
            scale - 2,
        );
        let sum = g.reduce_last(format!("{name}/blocksum"), ReduceKind::Sum, pm, scale - 2);
        let Some(off) = w.offset else {
            return g.node(name.to_string(), Op::Reshape, &[sum], vec![m, o], scale);
        };
        let sum = g.reshape(format!("{name}/main"), sum, vec![m, o]);
        let xs = g.reduce_last(format!("{name}/xsum"), ReduceKind::Sum, x.q, 7);
        let xs = g.reshape(format!("{name}/xsum1"), xs, vec![m, nb]);
        let xmax = g.reshape(format!("{name}/xmax"), x.max, vec![m, nb]);
        let xm = g.map(format!("{name}/xsumvalues"), Op::Mul, &[xs, xmax], s_x - 5);
        let ot = g.node(
            format!("{name}/offsets"),
            Op::EinSum {
                a: b"og".to_vec(),
                b: b"mg".to_vec(),
                out: b"mo".to_vec(),
            },
            &[off, xm],
            vec![m, o],
            scale - 2,
        );
        g.map(name.to_string(), Op::Add, &[sum, ot], scale)
    }

    /// RMSNorm of `x` `[h]` with weights `w`, computed from `u = x / max|x|` so that every
    /// intermediate keeps its precision whatever the row's magnitude (spec: `docs/spec/llm.md`).
    fn rms_norm(&mut self, name: &str, x: R, w: &[Dyadic]) -> R {
        let h = self.hp.hidden;
        let eps = self.hp.eps;
        let (wn, wmax) = self.vector(w);
        let s = self.g.scale(x);
        let ceps = self.g.konst(
            vec![1],
            30,
            vec![((eps.sqrt() * (30f64).exp2()) + 0.5).floor() as i32],
        );
        let s_rs = 30 - ceil_log2((h as f64).sqrt().max(8.0));
        let s_uw = 30 - ceil_log2(wmax.max(1e-6));
        let s_h = (30 - ceil_log2(wmax.max(1e-6) * (h as f64).sqrt().max(8.0))).min(24);
        let g = &mut self.g;
        let max = g.abs_max(name, "max", x);
        let m1 = g.map(
            format!("{name}/max1"),
            Op::Clamp { lo: 1, hi: MAX },
            &[max],
            s,
        );
        let u = g.map(format!("{name}/u"), Op::Div, &[x, m1], 30);
        let u2 = g.map(format!("{name}/u2"), Op::Mul, &[u, u], 30);
        let ms = g.reduce_last(format!("{name}/mean"), ReduceKind::Mean, u2, 24);
        let v = g.map(format!("{name}/eps"), Op::Div, &[ceps, m1], 24);
        let vc = g.map(
            format!("{name}/eps1"),
            Op::Clamp { lo: 0, hi: 8 << 24 },
            &[v],
            24,
        );
        let t = g.map(format!("{name}/eps2"), Op::Mul, &[vc, vc], 24);
        let z = g.map(format!("{name}/z"), Op::Add, &[ms, t], 24);
        let rs = g.map(format!("{name}/rsqrt"), Op::Rsqrt, &[z], s_rs);
        let uw = g.map(format!("{name}/weighted"), Op::Mul, &[u, wn], s_uw);
        g.map(name.to_string(), Op::Mul, &[uw, rs], s_h)
    }

    /// RoPE on `x` `[m, heads · d]` with the rows' `cos`/`sin` rows.
    fn rope(&mut self, name: &str, x: R, heads: usize, (c, sn): (R, R)) -> R {
        let d = self.hp.head_dim as u32;
        let m = self.rows;
        let s = self.g.scale(x);
        let (shape, axis) = match self.hp.rope {
            RopeKind::Adjacent => (vec![m, heads as u32, d / 2, 2], 3),
            RopeKind::Halves => (vec![m, heads as u32, 2, d / 2], 2),
        };
        let g = &mut self.g;
        let r = g.reshape(format!("{name}/pairs"), x, shape.clone());
        let mut half = shape.clone();
        half[axis as usize] = 1;
        let part = |g: &mut G, i: u32, n: &str| {
            g.node(
                format!("{name}/{n}"),
                Op::Slice {
                    axis,
                    start: i,
                    end: i + 1,
                    step: 1,
                },
                &[r],
                half.clone(),
                s,
            )
        };
        let e = part(g, 0, "first");
        let o = part(g, 1, "second");
        let ec = g.map(format!("{name}/first_cos"), Op::Mul, &[e, c], s);
        let os = g.map(format!("{name}/second_sin"), Op::Mul, &[o, sn], s);
        let es = g.map(format!("{name}/first_sin"), Op::Mul, &[e, sn], s);
        let oc = g.map(format!("{name}/second_cos"), Op::Mul, &[o, c], s);
        let e2 = g.map(format!("{name}/first_rot"), Op::Sub, &[ec, os], s);
        let o2 = g.map(format!("{name}/second_rot"), Op::Add, &[es, oc], s);
        let cat = g.node(
            format!("{name}/joined"),
            Op::Concat { axis },
            &[e2, o2],
            shape,
            s,
        );
        g.reshape(name.to_string(), cat, vec![m, heads as u32 * d])
    }
}

/// Scales of the step's values, from calibration maxima.
#[derive(Clone, Copy, Debug)]
struct Scales {
    residual: i32,
    q: i32,
    k: i32,
    v: i32,
    scores: i32,
    gate: i32,
    up: i32,
    act: i32,
    logits: i32,
}

/// Positions the prefill chunk computes at once.
pub const PREFILL_ROWS: usize = 32;

/// Generations one step computes at once (the batches built; fewer are padded to the next size).
pub const SEQUENCE_ROWS: [usize; 3] = [2, 4, 8];

/// The longest cache a several-generation step is built for: every step copies each generation's
/// cache into its input, which beyond this costs more than the shared weights save.
pub const SEQUENCE_CACHE_MAX: usize = 512;

/// Builds the decode step of `w` for generations of up to `context` positions, its scales chosen from
/// `maxima` (a [`crate::reference::Reference`] run on calibration text), and the prefill chunk of
/// [`PREFILL_ROWS`] positions, which gives the same bits as that many steps.
pub fn build(w: &Weights, maxima: Maxima, context: usize) -> Result<Step, LlmError> {
    build_with(w, maxima, context, PREFILL_ROWS)
}

/// [`build`] with a prefill chunk of `chunk` positions (at most `context`; none when `chunk < 2`).
pub fn build_with(
    w: &Weights,
    maxima: Maxima,
    context: usize,
    chunk: usize,
) -> Result<Step, LlmError> {
    if !(2..=1 << 16).contains(&context) {
        return Err(LlmError::Request(format!(
            "a context of {context} positions (2 to 65536)"
        )));
    }
    if chunk > 1 << 12 {
        return Err(LlmError::Request(format!(
            "a prefill chunk of {chunk} positions (at most 4096)"
        )));
    }
    let mut pool = BTreeMap::new();
    let t = context - 1;
    let (model, report) = graph(w, maxima, context, 1, t, false, &mut pool)?;
    let mut variants = Vec::new();
    for c in cache_buckets(t) {
        if c < t {
            let model = graph(w, maxima, context, 1, c, false, &mut pool)?.0;
            variants.push(Variant {
                rows: 1,
                sequences: false,
                cache_rows: c,
                model,
            });
        }
        let m = chunk.min(context);
        if m > 1 {
            let model = graph(w, maxima, context, m as u32, c, false, &mut pool)?.0;
            variants.push(Variant {
                rows: m,
                sequences: false,
                cache_rows: c,
                model,
            });
        }
        if c <= SEQUENCE_CACHE_MAX {
            for b in SEQUENCE_ROWS {
                let model = graph(w, maxima, context, b as u32, c, true, &mut pool)?.0;
                variants.push(Variant {
                    rows: b,
                    sequences: true,
                    cache_rows: c,
                    model,
                });
            }
        }
    }
    Ok(Step {
        model,
        variants,
        hp: w.hp.clone(),
        context,
        report,
    })
}

/// The canonical model computing `rows` consecutive positions over `cache_rows` cache rows, for
/// generations of up to `context` positions (spec: `docs/spec/llm.md` §3); with `sequences`, one
/// position of each of `rows` generations, each over its own cache.
#[allow(clippy::too_many_arguments)]
fn graph(
    w: &Weights,
    maxima: Maxima,
    context: usize,
    rows: u32,
    cache_rows: usize,
    sequences: bool,
    pool: &mut BTreeMap<String, MatConsts>,
) -> Result<(Model, ImportReport), LlmError> {
    let hp = &w.hp;
    let sc = Scales {
        residual: scale_for(maxima.residual),
        q: scale_for(maxima.q),
        k: scale_for(maxima.k),
        v: scale_for(maxima.v),
        scores: scale_for(maxima.scores).min(24),
        gate: scale_for(maxima.gate),
        up: scale_for(maxima.up),
        act: scale_for(maxima.act),
        logits: scale_for(maxima.logits),
    };
    let (d, nh, nkv) = (hp.head_dim, hp.heads, hp.kv_heads);
    let t = cache_rows;
    let m = rows;
    // columns of a score row: the cache, the chunk's rows (when it has several), the row itself
    let chunk = m > 1 && !sequences;
    let batch = if chunk { m } else { 0 };
    let cols = t as u32 + batch + 1;
    let mut cx = Ctx {
        g: G::default(),
        hp,
        report: ImportReport {
            maxima,
            ..Default::default()
        },
        rows,
        pool,
    };
    cx.report.requantized = std::iter::once(&w.embd)
        .chain(w.output.iter())
        .chain(
            w.layers
                .iter()
                .flat_map(|l| [&l.wq, &l.wk, &l.wv, &l.wo, &l.gate, &l.up, &l.down]),
        )
        .filter(|m| m.requantized)
        .map(|m| m.name.clone())
        .collect();
    let token = cx.g.input("token".into(), vec![m], 0, InputKind::Int);
    let npos = if sequences { m } else { 1 };
    let pos = cx.g.input("pos".into(), vec![npos], 0, InputKind::Int);
    let last = chunk.then(|| cx.g.input("last".into(), vec![1], 0, InputKind::Int));
    let caches: Vec<(R, R)> = (0..hp.layers)
        .map(|l| {
            let mut shape = vec![t as u32, nkv as u32, d as u32];
            if sequences {
                shape.insert(0, m);
            }
            (
                cx.g.input(
                    format!("k_cache.{l}"),
                    shape.clone(),
                    sc.k,
                    InputKind::Fixed,
                ),
                cx.g.input(format!("v_cache.{l}"), shape, sc.v, InputKind::Fixed),
            )
        })
        .collect();

    // per-step values shared by every layer: RoPE rows and the attention mask
    let (cos, sin) = {
        let (mut c, mut s) = (Vec::new(), Vec::new());
        for p in 0..context {
            for i in 0..d / 2 {
                let a = rope_angle(p, i, d, hp.rope_base);
                let q = |v: f64| (v * (30f64).exp2() + 0.5).floor() as i32;
                c.push(q(libm::cos(a)));
                s.push(q(libm::sin(a)));
            }
        }
        let shape = vec![context as u32, d as u32 / 2];
        (cx.g.konst(shape.clone(), 30, c), cx.g.konst(shape, 30, s))
    };
    // the rows' positions (a chunk's padding rows past the context read the last table row)
    let positions = if chunk {
        let g = &mut cx.g;
        let iota = g.konst(vec![m], 0, (0..m as i32).collect());
        let p = g.map("positions/raw".into(), Op::Add, &[pos, iota], 0);
        g.map(
            "positions".into(),
            Op::Clamp {
                lo: 0,
                hi: context as i32 - 1,
            },
            &[p],
            0,
        )
    } else {
        pos
    };
    let row_shape = match hp.rope {
        RopeKind::Adjacent => vec![m, 1, d as u32 / 2, 1],
        RopeKind::Halves => vec![m, 1, 1, d as u32 / 2],
    };
    let rope_row = |cx: &mut Ctx, tab: R, n: &str| {
        let r = cx.g.node(
            format!("rope/{n}"),
            Op::Gather { axis: 0 },
            &[tab, positions],
            vec![m, d as u32 / 2],
            30,
        );
        cx.g.reshape(format!("rope/{n}_row"), r, row_shape.clone())
    };
    let cs = (rope_row(&mut cx, cos, "cos"), rope_row(&mut cx, sin, "sin"));
    // `[m, 1, 1, cols]`: 0 where a row may attend, −2^30 elsewhere: cache rows before `pos`, the
    // chunk's earlier rows, the row itself
    let mask = {
        let g = &mut cx.g;
        let mut iota: Vec<i32> = (0..t as i32).collect();
        iota.push(-1);
        let iota = g.konst(vec![1, t as u32 + 1], 0, iota);
        let one = g.konst(vec![1], 0, vec![1]);
        let big = g.konst(vec![1], sc.scores, vec![1 << 30]);
        // each generation's own position against the cache rows (`[rows, 1]` then)
        let pcol = if sequences {
            g.reshape("mask/pos".into(), pos, vec![m, 1])
        } else {
            pos
        };
        let diff = g.map("mask/diff".into(), Op::Sub, &[pcol, iota], 0);
        let valid = g.map("mask/valid".into(), Op::Clamp { lo: 0, hi: 1 }, &[diff], 0);
        let less = g.map("mask/less".into(), Op::Sub, &[valid, one], 0);
        let bias = g.map("mask/cache".into(), Op::Mul, &[less, big], sc.scores);
        let bias = if chunk {
            let rows = g.node(
                "mask/rows".into(),
                Op::Broadcast,
                &[bias],
                vec![m, t as u32 + 1],
                sc.scores,
            );
            let cache = g.node(
                "mask/cache_rows".into(),
                Op::Slice {
                    axis: 1,
                    start: 0,
                    end: t as u32,
                    step: 1,
                },
                &[rows],
                vec![m, t as u32],
                sc.scores,
            );
            let mut causal = Vec::with_capacity((m * (m + 1)) as usize);
            for i in 0..m {
                causal.extend((0..m).map(|j| if j < i { 0 } else { -(1 << 30) }));
                causal.push(0);
            }
            let causal = g.konst(vec![m, m + 1], sc.scores, causal);
            g.node(
                "mask/bias".into(),
                Op::Concat { axis: 1 },
                &[cache, causal],
                vec![m, cols],
                sc.scores,
            )
        } else {
            bias
        };
        g.reshape("mask/heads".into(), bias, vec![m, 1, 1, cols])
    };
    // softmax table: exp(δ / √d) for score differences δ in [−R, 0], entry 0 meaning −∞
    let (exp_table, sm_shift, sm_lo) = {
        let range = 30.0 * (d as f64).sqrt();
        let mut tb = (65535.0 / range).log2().floor() as i32;
        tb = tb.min(sc.scores);
        let lo = -((range * (tb as f64).exp2()).ceil() as i32);
        let len = (-lo) as usize + 1;
        let mut e: Vec<i32> = (0..len)
            .map(|i| {
                let delta = (lo + i as i32) as f64 * (-tb as f64).exp2();
                (libm::exp(delta / (d as f64).sqrt()) * (30f64).exp2() + 0.5).floor() as i32
            })
            .collect();
        e[0] = 0;
        (cx.g.konst(vec![len as u32], 30, e), sc.scores - tb, lo)
    };
    // sigmoid table over [−16, 16]
    let (sig_table, sig_shift, sig_lo) = {
        let tb = sc.gate.min(11);
        let lo = -(16 << tb);
        let len = (32usize << tb) + 1;
        let e: Vec<i32> = (0..len)
            .map(|i| {
                let x = (lo + i as i32) as f64 * (-tb as f64).exp2();
                (1.0 / (1.0 + libm::exp(-x)) * (30f64).exp2() + 0.5).floor() as i32
            })
            .collect();
        (cx.g.konst(vec![len as u32], 30, e), sc.gate - tb, lo)
    };

    // the embedding row
    let embd = cx.matrix(&w.embd);
    let x = {
        let g = &mut cx.g;
        let nb = embd.blocks as u32;
        let qg = g.node(
            "embd/q".into(),
            Op::Gather { axis: 0 },
            &[embd.q, token],
            vec![m, nb, embd.block as u32],
            0,
        );
        let sm = g.scale(embd.mult);
        let mg = g.node(
            "embd/mult".into(),
            Op::Gather { axis: 0 },
            &[embd.mult, token],
            vec![m, nb],
            sm,
        );
        let mg = g.reshape("embd/mult3".into(), mg, vec![m, nb, 1]);
        let mut x = g.map("embd/scaled".into(), Op::Mul, &[qg, mg], sc.residual);
        if let Some(off) = embd.offset {
            let og = g.node(
                "embd/offset".into(),
                Op::Gather { axis: 0 },
                &[off, token],
                vec![m, nb],
                sm,
            );
            let og = g.reshape("embd/offset3".into(), og, vec![m, nb, 1]);
            x = g.map("embd/withoffset".into(), Op::Add, &[x, og], sc.residual);
        }
        g.reshape("embd".into(), x, vec![m, hp.hidden as u32])
    };
    let mut x = x;
    let mut outs = Vec::new();
    for (l, layer) in w.layers.iter().enumerate() {
        let n = |s: &str| format!("blk.{l}.{s}");
        let h = cx.rms_norm(&n("attn_norm"), x, &layer.attn_norm);
        let (wq, wk, wv) = (
            cx.matrix(&layer.wq),
            cx.matrix(&layer.wk),
            cx.matrix(&layer.wv),
        );
        let mut made = Vec::new();
        let xq = cx.dq_for(&n("attn_in"), h, &mut made, &wq);
        let mut q = cx.matmul(&n("q"), &xq, &wq, sc.q);
        let xk = cx.dq_for(&n("attn_in"), h, &mut made, &wk);
        let mut k = cx.matmul(&n("k"), &xk, &wk, sc.k);
        let xv = cx.dq_for(&n("attn_in"), h, &mut made, &wv);
        let mut v = cx.matmul(&n("v"), &xv, &wv, sc.v);
        if let Some([bq, bk, bv]) = &layer.bias {
            for (t, b, s, nm) in [
                (&mut q, bq, sc.q, "q"),
                (&mut k, bk, sc.k, "k"),
                (&mut v, bv, sc.v, "v"),
            ] {
                let (data, bs, _) = at_one_scale(b, s);
                let bc = cx.g.konst(vec![b.len() as u32], bs, data);
                *t = cx.g.map(n(&format!("{nm}_bias")), Op::Add, &[*t, bc], s);
            }
        }
        let q = cx.rope(&n("q_rope"), q, nh, cs);
        let k = cx.rope(&n("k_rope"), k, nkv, cs);
        let (kc, vc) = caches[l];
        let g = &mut cx.g;
        let grp = (nh / nkv) as u32;
        let (nkv32, d32, t32) = (nkv as u32, d as u32, t as u32);
        let q4 = g.reshape(n("q_heads"), q, vec![m, nkv32, grp, d32]);
        let kn = g.reshape(n("k_heads"), k, vec![m, nkv32, d32]);
        let vn = g.reshape(n("v_heads"), v, vec![m, nkv32, d32]);
        let ein = |a: &[u8], b: &[u8], o: &[u8]| Op::EinSum {
            a: a.to_vec(),
            b: b.to_vec(),
            out: o.to_vec(),
        };
        // keys and values a row may attend besides its own: the cache, then (in a chunk) the
        // chunk's rows, so that a row's sums over them are one sum, as in a step
        let (keys, vals) = if chunk {
            let all = |g: &mut G, cache: R, new: R, nm: &str| {
                g.node(
                    n(&format!("{nm}_all")),
                    Op::Concat { axis: 0 },
                    &[cache, new],
                    vec![t32 + m, nkv32, d32],
                    g.scale(new),
                )
            };
            (all(g, kc, kn, "k"), all(g, vc, vn, "v"))
        } else {
            (kc, vc)
        };
        let seen = t32 + batch;
        // a generation's cache is its own (`mtkd`) when the rows are generations
        let cache_labels: &[u8] = if sequences { b"mtkd" } else { b"tkd" };
        let s1 = g.node(
            n("scores_cache"),
            ein(b"mkgd", cache_labels, b"mkgt"),
            &[q4, keys],
            vec![m, nkv32, grp, seen],
            sc.scores,
        );
        let s2 = g.node(
            n("scores_new"),
            ein(b"mkgd", b"mkd", b"mkg"),
            &[q4, kn],
            vec![m, nkv32, grp],
            sc.scores,
        );
        let s2 = g.reshape(n("scores_new1"), s2, vec![m, nkv32, grp, 1]);
        let s = g.node(
            n("scores"),
            Op::Concat { axis: 3 },
            &[s1, s2],
            vec![m, nkv32, grp, cols],
            sc.scores,
        );
        let s = g.map(
            n("scores_clamped"),
            Op::Clamp {
                lo: -(1 << 29),
                hi: 1 << 29,
            },
            &[s],
            sc.scores,
        );
        let s = g.map(n("scores_masked"), Op::Add, &[s, mask], sc.scores);
        // probabilities at 24 bits up to 2048 positions (values use at most 27 bits at calibration, so
        // `Σ_t p · v` stays inside the fast 64-bit path); fewer beyond, so the bound holds there too
        let s_prob = (35 - ceil_log2(context as f64)).min(24);
        let p = g.map(
            n("probs"),
            Op::Softmax {
                axis: 3,
                shift: sm_shift,
                lo: sm_lo,
            },
            &[s, exp_table],
            s_prob,
        );
        let p1 = g.node(
            n("probs_cache"),
            Op::Slice {
                axis: 3,
                start: 0,
                end: seen,
                step: 1,
            },
            &[p],
            vec![m, nkv32, grp, seen],
            s_prob,
        );
        let p2 = g.node(
            n("probs_new"),
            Op::Slice {
                axis: 3,
                start: seen,
                end: seen + 1,
                step: 1,
            },
            &[p],
            vec![m, nkv32, grp, 1],
            s_prob,
        );
        let p2 = g.reshape(n("probs_new1"), p2, vec![m, nkv32, grp]);
        let o1 = g.node(
            n("attn_cache"),
            ein(b"mkgt", cache_labels, b"mkgd"),
            &[p1, vals],
            vec![m, nkv32, grp, d32],
            sc.v,
        );
        let o2 = g.node(
            n("attn_new"),
            ein(b"mkg", b"mkd", b"mkgd"),
            &[p2, vn],
            vec![m, nkv32, grp, d32],
            sc.v,
        );
        let o = g.map(n("attn"), Op::Add, &[o1, o2], sc.v);
        let o = g.reshape(n("attn_flat"), o, vec![m, (nh * d) as u32]);
        let wo = cx.matrix(&layer.wo);
        let oq = cx.dq_for(&n("attn_out_in"), o, &mut Vec::new(), &wo);
        let a = cx.matmul(&n("attn_out"), &oq, &wo, sc.residual);
        x = cx.g.map(n("attn_residual"), Op::Add, &[x, a], sc.residual);
        let h = cx.rms_norm(&n("ffn_norm"), x, &layer.ffn_norm);
        let (wg, wu, wd) = (
            cx.matrix(&layer.gate),
            cx.matrix(&layer.up),
            cx.matrix(&layer.down),
        );
        let mut made = Vec::new();
        let xg = cx.dq_for(&n("ffn_in"), h, &mut made, &wg);
        let gate = cx.matmul(&n("gate"), &xg, &wg, sc.gate);
        let xu = cx.dq_for(&n("ffn_in"), h, &mut made, &wu);
        let up = cx.matmul(&n("up"), &xu, &wu, sc.up);
        let g = &mut cx.g;
        let sg = g.map(
            n("gate_sigmoid"),
            Op::Lookup {
                shift: sig_shift,
                lo: sig_lo,
            },
            &[gate, sig_table],
            30,
        );
        let silu = g.map(n("gate_silu"), Op::Mul, &[gate, sg], sc.gate);
        let act = g.map(n("ffn_act"), Op::Mul, &[silu, up], sc.act);
        let aq = cx.dq_for(&n("down_in"), act, &mut Vec::new(), &wd);
        let dn = cx.matmul(&n("down"), &aq, &wd, sc.residual);
        x = cx.g.map(n("ffn_residual"), Op::Add, &[x, dn], sc.residual);
        outs.push((format!("k.{l}"), k));
        outs.push((format!("v.{l}"), v));
    }
    // a chunk's logits are those of its row `last`
    let x = match last {
        Some(last) => cx.g.node(
            "last_row".into(),
            Op::Gather { axis: 0 },
            &[x, last],
            vec![1, hp.hidden as u32],
            sc.residual,
        ),
        None => x,
    };
    if !sequences {
        cx.rows = 1;
    }
    let h = cx.rms_norm("output_norm", x, &w.out_norm);
    let head = match &w.output {
        Some(m) => cx.matrix(m),
        None => embd,
    };
    let hq = cx.dq_for("output_in", h, &mut Vec::new(), &head);
    let logits = cx.matmul("logits", &hq, &head, sc.logits);
    let mut outputs = vec![("logits".to_string(), logits)];
    outputs.extend(outs);
    let report = cx.report;
    let model = cx.g.finish(outputs);
    model
        .validate()
        .map_err(|e| LlmError::Unsupported(format!("the step model is invalid: {e}")))?;
    Ok((model, report))
}
