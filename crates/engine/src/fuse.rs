//! Element-wise chains, run in place (untraced fast runs only).
//!
//! After a node, the element-wise nodes that consume its output one after another — a per-channel `Mul`
//! by the requantization multipliers, the `Clamp`s of a ReLU and of the next 8-bit requantization, a
//! residual `Add`, a `Reshape` — each read one tensor once and write one of the same size. Run one by
//! one they pass over memory once each and allocate a tensor each. Here a chain is planned once per
//! model and applied to the first node's output block by block while the block sits in the L1 cache.
//! A value read by two nodes joins the chain when they are a `Lookup` of it and the `Mul` of it by the
//! lookup's result (`x · sigmoid(x)`): one step computes both.
//!
//! Each step computes exactly the integers its op computes alone (the same formulas as the executor's
//! `i64` paths, which are only chosen where the op's scales make them exact); only the order in which
//! elements are visited changes, and element-wise results do not depend on it. A step whose result leaves
//! `i32` stops the chain; the executor then runs the chain's nodes one by one, so the error is the one,
//! at the node, that an unfused run reports.

use crate::arith::Shift;
use crate::ir::{Model, Node, Op, ValueId};
use crate::segments::Segments;

/// Elements per block: every step runs over one block before the next block is touched.
const BLOCK: usize = 4096;

/// A second operand of a fused step, read at `(i / inner) % period` for the chain's flat index `i`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Operand {
    pub value: ValueId,
    inner: usize,
    period: usize,
}

/// A binary op in its exact `i64` form.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum BinOp {
    Add,
    Sub,
    Max,
    Min,
    Mul,
}

/// One fused element-wise step.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Step {
    /// `Clamp`: rescale, then clamp (never out of range).
    Clamp { shift: Shift, lo: i64, hi: i64 },
    /// `Rescale` or `Reshape`: rescale; the result must fit `i32`.
    Rescale { shift: Shift },
    /// `Lookup`: `table[clamp(rshift(x) - lo, 0, len - 1)]`, the table being `other`.
    Lookup {
        shift: Shift,
        lo: i64,
        table: ValueId,
        /// The table's knots when it is a constant interpolated between them ([`Segments::of`]).
        segments: Option<Box<Segments>>,
    },
    /// A `Lookup` of the chain's value followed by the `Mul` of that value by the looked-up one (the
    /// value's two readers, as in `x · sigmoid(x)`): `mul(x · table[clamp(shift(x) − lo, 0, len − 1)])`.
    LookupMul {
        shift: Shift,
        lo: i64,
        table: ValueId,
        mul: Shift,
        /// The largest magnitude of the table's entries when it is a constant (which
        /// [`lookup_mul_run`]'s 32-bit products need).
        top: Option<u32>,
        /// The table's knots when it is a constant interpolated between them ([`Segments::of`]).
        segments: Option<Box<Segments>>,
    },
    /// The `Add` of a constant to the chain's value, a `Clamp` of that sum and the `Mul` of the value
    /// by the clamped sum (the value's two readers, as in a hard swish `x · clamp(x + 3, 0, 6)`):
    /// `t = add(x << la + c)` (which must fit `i32`), `g = clamp(shift(t), lo, hi)`,
    /// `mul(x · g)` (which must fit `i32`).
    GateMul {
        la: u32,
        /// The constant, aligned (`c << lb`).
        c: i64,
        add: Shift,
        shift: Shift,
        lo: i64,
        hi: i64,
        mul: Shift,
    },
    /// A binary op with `other` (the chain's value is operand `a` when `chain_is_a`), operands
    /// aligned by `la`/`lb`, then rescaled.
    Binary {
        op: BinOp,
        la: u32,
        lb: u32,
        shift: Shift,
        chain_is_a: bool,
        other: Operand,
    },
}

/// A node run as a step of a chain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Fused {
    /// The node's index.
    pub node: usize,
    step: Step,
}

/// The nodes absorbed into a head, and the steps that compute them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Chain {
    /// The absorbed nodes in order (the last one's value is the chain's result).
    pub nodes: Vec<usize>,
    /// What runs: the nodes' steps with identity rescales dropped and neighbouring clamps merged.
    pub steps: Vec<Fused>,
}

/// What a node is in the fused schedule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Role {
    /// Run on its own.
    Alone,
    /// Run, then the chain's steps on its output (in place).
    Head(Chain),
    /// Run as a step of an earlier node's chain.
    Absorbed,
    /// A block-wise product `{gk, ogk → og}` with the `Mul` by per-block multipliers, the `Mul` by the
    /// activation blocks' scales and the `Reduce Sum` over the blocks that follow it, run in one pass
    /// (see [`crate::blockdot::PackedBlocks::run_sums`]).
    BlockSum(BlockSum),
}

/// The nodes and shifts of a fused block sum.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct BlockSum {
    /// The `Mul` by the multipliers, the `Mul` by the scales, the `Reduce Sum`.
    pub nodes: [usize; 3],
    /// The multipliers `[rows, blocks]` (a constant) and the scales `[blocks]`.
    pub mult: ValueId,
    pub scale: ValueId,
    /// The three nodes' shifts.
    pub shifts: [u32; 3],
}

/// `EinSum {gk, ogk → og}` (or `{mgk, ogk → mog}`, `m` rows at once) at node `h` followed, each the
/// only reader of the one before, by `Mul(·, mult)` with `mult` a constant `[o, g]`, `Mul(·, scale)`
/// with `scale` of shape `[g]` (`[m, 1, g]`) computed before `h`, and `Reduce Sum` over the last axis,
/// with right shifts only.
fn block_sum(m: &Model, h: usize, reads: &[u32], reader: &[usize]) -> Option<BlockSum> {
    let first = m.first_node_value();
    let node = &m.nodes[h];
    let Op::EinSum { a, b, out } = &node.op else {
        return None;
    };
    let rows = match (a.as_slice(), out.as_slice()) {
        ([g, _], [o, g2]) if o == &b[0] && g2 == g => false,
        ([mm, g, _], [m2, o, g2]) if m2 == mm && o == &b[0] && g2 == g && !b.contains(mm) => true,
        _ => return None,
    };
    if b.len() != 3 || b[1..] != a[a.len() - 2..] {
        return None;
    }
    let (o, g) = (
        node.shape[node.shape.len() - 2],
        node.shape[node.shape.len() - 1],
    );
    let scale_shape = if rows {
        vec![node.shape[0], 1, g]
    } else {
        vec![g]
    };
    if node.inputs.len() != 2 || m.const_of(node.inputs[1]).is_none() {
        return None;
    }
    let scale_of = |v: ValueId| m.value(v).map(|i| i.scale as i32);
    let acc_shift = scale_of(node.inputs[0])? + scale_of(node.inputs[1])? - node.scale as i32;
    if acc_shift != 0 {
        return None;
    }
    let next = |v: usize| (reads[v] == 1).then(|| reader[v]);
    let k1 = next(first + h)?;
    let k2 = next(first + k1)?;
    let k3 = next(first + k2)?;
    let (n1, n2, n3) = (&m.nodes[k1], &m.nodes[k2], &m.nodes[k3]);
    let acc = (first + h) as ValueId;
    let mult = match (&n1.op, n1.inputs.as_slice()) {
        (Op::Mul, [x, c]) if *x == acc && m.const_of(*c).is_some_and(|c| c.shape == [o, g]) => *c,
        _ => return None,
    };
    let scale = match (&n2.op, n2.inputs.as_slice()) {
        (Op::Mul, [x, sc])
            if *x == (first + k1) as ValueId
                && (*sc as usize) < first + h
                && m.value(*sc).is_some_and(|i| *i.shape == scale_shape[..]) =>
        {
            *sc
        }
        _ => return None,
    };
    match (&n3.op, n3.inputs.as_slice()) {
        (
            Op::Reduce {
                kind: crate::ir::ReduceKind::Sum,
                axes,
            },
            [x],
        ) if axes == &[a.len() as u32 - 1] && *x == (first + k2) as ValueId => {}
        _ => return None,
    }
    let s1 = node.scale as i32 + scale_of(mult)? - n1.scale as i32;
    let s2 = n1.scale as i32 + scale_of(scale)? - n2.scale as i32;
    let s3 = n2.scale as i32 - n3.scale as i32;
    let right = |s: i32| u32::try_from(s).ok().filter(|s| (1..=62).contains(s));
    Some(BlockSum {
        nodes: [k1, k2, k3],
        mult,
        scale,
        shifts: [
            right(s1)?,
            right(s2)?,
            u32::try_from(s3).ok().filter(|&s| s <= 62)?,
        ],
    })
}

/// The fused schedule of a validated model: one role per node.
pub(crate) fn plan(m: &Model) -> Vec<Role> {
    let nv = m.value_count();
    let first = m.first_node_value();
    // how many times each value is read (a node reading it twice counts twice), its last reader (its
    // only one when read once) and its first
    let mut reads = vec![0u32; nv];
    let mut reader = vec![usize::MAX; nv];
    let mut first_reader = vec![usize::MAX; nv];
    for (k, node) in m.nodes.iter().enumerate() {
        for &v in &node.inputs {
            if let Some(r) = reads.get_mut(v as usize) {
                *r += 1;
                reader[v as usize] = k;
                first_reader[v as usize] = first_reader[v as usize].min(k);
            }
        }
    }
    for o in &m.outputs {
        if let Some(r) = reads.get_mut(o.value as usize) {
            *r = u32::MAX;
        }
    }
    let mut roles = vec![Role::Alone; m.nodes.len()];
    for h in 0..m.nodes.len() {
        if roles[h] == Role::Absorbed {
            continue;
        }
        if let Some(b) = block_sum(m, h, &reads, &reader) {
            for &k in &b.nodes {
                roles[k] = Role::Absorbed;
            }
            roles[h] = Role::BlockSum(b);
            continue;
        }
        let mut chain = Vec::new();
        let mut nodes = Vec::new();
        let mut v = first + h;
        loop {
            if reads[v] == 1 {
                let j = reader[v];
                let Some(step) = step_of(m, &m.nodes[j], v as ValueId, first + h) else {
                    break;
                };
                chain.push(Fused { node: j, step });
                nodes.push(j);
                v = first + j;
            } else if reads[v] == 2 {
                let (l, j) = (first_reader[v], reader[v]);
                let only = |w: usize, by: usize| reads[w] == 1 && reader[w] == by;
                if let Some(step) = (l != j && only(first + l, j))
                    .then(|| lookup_mul(m, l, j, v as ValueId, first + h))
                    .flatten()
                {
                    chain.push(Fused { node: j, step });
                    nodes.extend([l, j]);
                } else {
                    // the sum's only reader is the clamp, the clamp's only reader the product
                    let k = reader[first + l];
                    let Some(step) =
                        (l != j && reads[first + l] == 1 && k < j && only(first + k, j))
                            .then(|| gate_mul(m, [l, k, j], v as ValueId))
                            .flatten()
                    else {
                        break;
                    };
                    chain.push(Fused { node: j, step });
                    nodes.extend([l, k, j]);
                }
                v = first + j;
            } else {
                break;
            }
        }
        for &j in &nodes {
            roles[j] = Role::Absorbed;
        }
        if !chain.is_empty() {
            roles[h] = Role::Head(Chain {
                nodes,
                steps: simplify(chain),
            });
        }
    }
    roles
}

/// The same integers in fewer passes: a rescale by `2^0` (a `Reshape` at its input's scale) is no step,
/// and two neighbouring `Clamp`s of which one does not rescale are one. A rounding shift `S` is
/// non-decreasing, so `S(clamp(x, a, b)) = clamp(S(x), S(a), S(b))`, and for `a ≤ b`, `c ≤ d`,
/// `clamp(clamp(y, a, b), c, d) = clamp(y, clamp(a, c, d), clamp(b, c, d))`. Right shifts only, so the
/// bounds stay where the steps put them (inside `i32`).
fn simplify(chain: Vec<Fused>) -> Vec<Fused> {
    let mut out: Vec<Fused> = Vec::with_capacity(chain.len());
    for f in chain {
        if let Step::Rescale { shift } = f.step {
            if shift.right == 0 && shift.left == 0 {
                continue;
            }
        }
        if let (
            Some(Fused {
                step:
                    Step::Clamp {
                        shift: s1,
                        lo: a,
                        hi: b,
                    },
                ..
            }),
            Step::Clamp {
                shift: s2,
                lo: c,
                hi: d,
            },
        ) = (out.last(), &f.step)
        {
            let (s2, c, d) = (*s2, *c, *d);
            let (s1, a, b) = (*s1, *a, *b);
            let plain = |s: Shift| s.right == 0 && s.left == 0;
            let merged = if a > b || c > d || s1.left != 0 || s2.left != 0 {
                None
            } else if plain(s2) {
                Some((s1, a.clamp(c, d), b.clamp(c, d)))
            } else if plain(s1) {
                Some((s2, s2.apply(a).clamp(c, d), s2.apply(b).clamp(c, d)))
            } else {
                None
            };
            if let Some((shift, lo, hi)) = merged {
                out.pop();
                out.push(Fused {
                    node: f.node,
                    step: Step::Clamp { shift, lo, hi },
                });
                continue;
            }
        }
        out.push(f);
    }
    out
}

/// `node` as a step applied to value `v` (its only read of `v`), if it is element-wise over `v`'s
/// elements and every other operand exists before the chain's head value `head` is computed.
fn step_of(m: &Model, node: &Node, v: ValueId, head: usize) -> Option<Step> {
    let info = m.value(v)?;
    let (sv, shape_v) = (info.scale as i32, info.shape);
    let so = node.scale as i32;
    let same_size = shape_v.iter().map(|&d| d as u64).product::<u64>()
        == node.shape.iter().map(|&d| d as u64).product::<u64>();
    let earlier = |w: ValueId| (w as usize) < head;
    match &node.op {
        Op::Clamp { lo, hi } if node.inputs[..] == [v] && shape_v == node.shape.as_slice() => {
            Some(Step::Clamp {
                shift: Shift::new(sv - so)?,
                lo: *lo as i64,
                hi: *hi as i64,
            })
        }
        Op::Rescale | Op::Reshape if node.inputs[..] == [v] && same_size => Some(Step::Rescale {
            shift: Shift::new(sv - so)?,
        }),
        Op::Lookup { shift, lo }
            if node.inputs[0] == v && node.inputs[1] != v && shape_v == node.shape.as_slice() =>
        {
            let table = node.inputs[1];
            (earlier(table) && m.value(table)?.shape.iter().product::<u32>() > 0).then_some(())?;
            Some(Step::Lookup {
                shift: Shift::new(*shift)?,
                lo: *lo as i64,
                table,
                segments: segments_of(m, table),
            })
        }
        Op::Add | Op::Sub | Op::Max | Op::Min | Op::Mul if shape_v == node.shape.as_slice() => {
            let (chain_is_a, w) = match node.inputs[..] {
                [a, b] if a == v && b != v => (true, b),
                [a, b] if b == v && a != v => (false, a),
                _ => return None,
            };
            if !earlier(w) {
                return None;
            }
            let wi = m.value(w)?;
            let other = operand(w, wi.shape, &node.shape)?;
            let (sa, sb) = if chain_is_a {
                (sv, wi.scale as i32)
            } else {
                (wi.scale as i32, sv)
            };
            // the conditions under which the executor's binary ops take their exact i64 paths
            let s = sa.max(sb);
            let (la, lb) = (s - sa, s - sb);
            let k_add = s - so;
            let add_ok = la <= 28
                && lb <= 28
                && (k_add > 0 || (la == 0 && lb == 0 && k_add >= -29))
                && k_add < 62;
            let (op, k) = match node.op {
                Op::Add if add_ok => (BinOp::Add, k_add),
                Op::Sub if add_ok => (BinOp::Sub, k_add),
                Op::Max if add_ok => (BinOp::Max, k_add),
                Op::Min if add_ok => (BinOp::Min, k_add),
                Op::Mul if (0..62).contains(&(sa + sb - so)) => (BinOp::Mul, sa + sb - so),
                _ => return None,
            };
            // a product is taken of the operands as they are; sums align them first
            let (la, lb) = if op == BinOp::Mul { (0, 0) } else { (la, lb) };
            Some(Step::Binary {
                op,
                la: la as u32,
                lb: lb as u32,
                shift: Shift::new(k)?,
                chain_is_a,
                other,
            })
        }
        _ => None,
    }
}

/// Nodes `l`, `k`, `j` as one [`Step::GateMul`] on value `v`, which `l` and `j` alone read: `l` the `Add`
/// of `v` and a one-element constant, `k` a `Clamp` of `l`'s result (its only reader), `j` the `Mul`
/// of `v` by `k`'s result (either order, `k`'s only reader); all of `v`'s shape.
fn gate_mul(m: &Model, [l, k, j]: [usize; 3], v: ValueId) -> Option<Step> {
    let first = m.first_node_value();
    let (nl, nk, nj) = (&m.nodes[l], &m.nodes[k], &m.nodes[j]);
    let info = m.value(v)?;
    let same = |n: &Node| info.shape == n.shape.as_slice();
    let (lv, kv) = ((first + l) as ValueId, (first + k) as ValueId);
    let by_k = nj.inputs[..] == [v, kv] || nj.inputs[..] == [kv, v];
    if !(same(nl) && same(nk) && same(nj) && nk.inputs[..] == [lv] && nj.op == Op::Mul && by_k) {
        return None;
    }
    // the sum as `step_of` takes an `Add` of the value and a constant (aligned, then rescaled)
    let Step::Binary {
        op: BinOp::Add,
        la,
        lb,
        shift: add,
        other,
        ..
    } = step_of(m, nl, v, first)?
    else {
        return None;
    };
    let c = m.const_of(other.value)?;
    let c = match c.data.transient()[..] {
        [c] => (c as i64) << lb,
        _ => return None,
    };
    let Step::Clamp { shift, lo, hi } = step_of(m, nk, lv, first)? else {
        return None;
    };
    let k = info.scale as i32 + nk.scale as i32 - nj.scale as i32;
    (0..62).contains(&k).then_some(())?;
    Some(Step::GateMul {
        la,
        c,
        add,
        shift,
        lo,
        hi,
        mul: Shift::new(k)?,
    })
}

/// Nodes `l` and `j` as one [`Step::LookupMul`] on value `v`, which they alone read: `l` a `Lookup` of
/// `v` by a table computed before the chain's head value `head`, `j` the `Mul` of `v` by `l`'s result
/// (either order), which only `j` reads; all of one shape.
fn lookup_mul(m: &Model, l: usize, j: usize, v: ValueId, head: usize) -> Option<Step> {
    let first = m.first_node_value();
    let (nl, nj) = (&m.nodes[l], &m.nodes[j]);
    let info = m.value(v)?;
    let Op::Lookup { shift, lo } = nl.op else {
        return None;
    };
    let table = nl.inputs[1];
    let lv = (first + l) as ValueId;
    let same = info.shape == nl.shape.as_slice() && info.shape == nj.shape.as_slice();
    let by_l = nj.inputs[..] == [v, lv] || nj.inputs[..] == [lv, v];
    if nl.inputs[0] != v
        || table == v
        || (table as usize) >= head
        || m.value(table)?.shape.iter().product::<u32>() == 0
        || !same
        || nj.op != Op::Mul
        || !by_l
    {
        return None;
    }
    let k = info.scale as i32 + nl.scale as i32 - nj.scale as i32;
    (0..62).contains(&k).then_some(())?;
    let top = m.const_of(table).and_then(|c| {
        let d = c.data.transient();
        d.iter().map(|v| v.unsigned_abs()).max()
    });
    Some(Step::LookupMul {
        shift: Shift::new(shift)?,
        lo: lo as i64,
        table,
        mul: Shift::new(k)?,
        top,
        segments: segments_of(m, table),
    })
}

/// The knots of `table` if it is a constant interpolated between them.
fn segments_of(m: &Model, table: ValueId) -> Option<Box<Segments>> {
    let c = m.const_of(table)?;
    Segments::of(&c.data.transient()).map(Box::new)
}

/// The `(inner, period)` indexing of an operand of shape `w` broadcast to `out`, if its non-broadcast
/// axes are one contiguous run of the output's axes (a scalar, a per-channel vector, a full tensor).
fn operand(value: ValueId, w: &[u32], out: &[u32]) -> Option<Operand> {
    if w.len() > out.len() {
        return None;
    }
    let pad = out.len() - w.len();
    let dim = |i: usize| if i < pad { 1 } else { w[i - pad] };
    // axes where the operand varies
    let varying: Vec<usize> = (0..out.len())
        .filter(|&i| out[i] > 1 && dim(i) > 1)
        .collect();
    if (0..out.len()).any(|i| dim(i) != 1 && dim(i) != out[i]) {
        return None;
    }
    // a scalar is one run over the whole tensor
    let (p, q) = match (varying.first(), varying.last()) {
        (Some(&p), Some(&q)) => (p, q + 1),
        _ => (0, 0),
    };
    // every axis inside the run must vary too (or be of size one in the output)
    if (p..q).any(|i| out[i] > 1 && dim(i) == 1) {
        return None;
    }
    let prod = |r: std::ops::Range<usize>| r.map(|i| out[i] as usize).product::<usize>();
    Some(Operand {
        value,
        inner: prod(q..out.len()).max(1),
        period: prod(p..q).max(1),
    })
}

/// Where a step's second operand comes from.
pub(crate) trait Values {
    /// The data of value `v` (a constant, an input or a computed tensor).
    fn data(&self, v: ValueId) -> &[i32];
}

/// The second operand of every step (empty for unary steps), or `None` if one is shorter than its
/// indexing needs (a malformed model: the chain then runs node by node, which reports it).
pub(crate) fn operands<'a>(steps: &[Fused], vals: &'a dyn Values) -> Option<Vec<&'a [i32]>> {
    steps
        .iter()
        .map(|f| match &f.step {
            Step::Binary { other, .. } => {
                let d = vals.data(other.value);
                (d.len() >= other.period).then_some(d)
            }
            Step::Lookup { table, .. } | Step::LookupMul { table, .. } => {
                let d = vals.data(*table);
                (!d.is_empty()).then_some(d)
            }
            _ => Some(&[][..]),
        })
        .collect()
}

/// Apply `steps` in place to `buf`, the elements `start..start + buf.len()` of the head's output, with
/// the steps' [`operands`]. `Err(i)`: step `i` left `i32` somewhere (the buffer is then partly
/// transformed; the caller recomputes the chain node by node).
pub(crate) fn apply(
    buf: &mut [i32],
    start: usize,
    steps: &[Fused],
    others: &[&[i32]],
) -> Result<(), usize> {
    apply_blocks(buf, start, steps, others)
}

crate::multiversion! {
    fn apply_blocks(buf: &mut [i32], start: usize, steps: &[Fused], others: &[&[i32]]) -> Result<(), usize> = apply_body
}

#[inline(always)]
fn apply_body(
    buf: &mut [i32],
    start: usize,
    steps: &[Fused],
    others: &[&[i32]],
) -> Result<(), usize> {
    for (b, block) in buf.chunks_mut(BLOCK).enumerate() {
        let start = start + b * BLOCK;
        let mut i = 0;
        while i < steps.len() {
            // a per-channel product, alone or followed by a clamp (a requantization): one pass
            if let Some(m) = mul_then_clamp(&steps[i].step) {
                let next = steps.get(i + 1).map(|f| &f.step);
                let clamp = match next {
                    Some(&Step::Clamp { shift, lo, hi }) => {
                        ComposedClamp::new(m.1, shift, lo, hi).map(|c| (c, next))
                    }
                    _ => None,
                };
                let (c, then) = clamp.unwrap_or((ComposedClamp::alone(m.1), None));
                if !mul_clamp_runs(block, start, others[i], m, c, then) {
                    return Err(i);
                }
                i += if then.is_some() { 2 } else { 1 };
                continue;
            }
            if !step(block, start, &steps[i].step, others[i]) {
                return Err(i);
            }
            i += 1;
        }
    }
    Ok(())
}

/// The operand and shift of a product by a constant over runs of the chain's elements, rescaled right
/// (a requantization's per-channel multipliers), which [`mul_clamp_runs`] takes.
#[inline(always)]
fn mul_then_clamp(st: &Step) -> Option<(Operand, Shift)> {
    match *st {
        Step::Binary {
            op: BinOp::Mul,
            la: 0,
            lb: 0,
            shift,
            other: o,
            ..
        } if shift.left == 0 && o.inner > 1 => Some((o, shift)),
        _ => None,
    }
}

/// A product's rounding shift `(p + h1) >> r1` followed by a clamp's `(y + h2) >> r2` as the one shift
/// `(p + h1 + h2·2^r1) >> (r1 + r2)`: `⌊(⌊a / 2^r1⌋ + h2) / 2^r2⌋ = ⌊(a + h2·2^r1) / 2^(r1 + r2)⌋` for
/// integers (a floor of a floor by powers of two is one floor), then the clamp's bounds.
#[derive(Clone, Copy)]
struct ComposedClamp {
    half: i64,
    right: u32,
    lo: i64,
    hi: i64,
}

impl ComposedClamp {
    /// A product's own shift, no clamp (bounds that hold every `i32`).
    fn alone(mul: Shift) -> ComposedClamp {
        ComposedClamp {
            half: mul.half,
            right: mul.right,
            lo: i32::MIN as i64,
            hi: i32::MAX as i64,
        }
    }

    /// For a product's shift `mul` and a clamp's `clamp` (right shifts): `None` when the joined shift
    /// passes 62 or the product's passes 61, where `p + half` could leave `i64` for `|p| ≤ 2^62`.
    fn new(mul: Shift, clamp: Shift, lo: i64, hi: i64) -> Option<ComposedClamp> {
        let right = mul.right + clamp.right;
        (mul.left == 0 && clamp.left == 0 && right <= 62 && mul.right <= 61).then(|| {
            ComposedClamp {
                half: mul.half + (clamp.half << mul.right),
                right,
                lo,
                hi,
            }
        })
    }
}

/// A product by a constant over runs ([`mul_then_clamp`]), then the `Clamp` step `then` if there is
/// one (`c` is the two composed, or the product's shift alone): in one pass over a run whose multiplier
/// has 17 bits or more ([`mul_run`]'s 32-bit lanes would need elements below `2^15`, which a
/// requantization's sums rarely are), keeping the run's least and greatest element, whose products'
/// shifted results (the extremes of all of them: the result is monotone in the element) must lie
/// inside `i32`; the steps one after the other on any other run. `false` if a product's result left
/// `i32` (the run is then partly transformed, as a failed step leaves it).
#[inline(always)]
fn mul_clamp_runs(
    x: &mut [i32],
    start: usize,
    other: &[i32],
    (o, shift): (Operand, Shift),
    c: ComposedClamp,
    then: Option<&Step>,
) -> bool {
    if mul_clamp_lanes(x, start, other, (o, shift), c) {
        return true;
    }
    let mut j = 0;
    while j < x.len() {
        let i = start + j;
        let run = (x.len() - j).min(o.inner - i % o.inner);
        let w = other[(i / o.inner) % o.period];
        let part = &mut x[j..j + run];
        if w.unsigned_abs() >= 1 << 16 {
            let (lo, hi) = composed_run(part, w, c);
            let at = |v: i32| (v as i128 * w as i128 + shift.half as i128) >> shift.right;
            let range = i32::MIN as i128..=i32::MAX as i128;
            if !range.contains(&at(lo)) || !range.contains(&at(hi)) {
                return false;
            }
        } else if mul_run(part, w, shift) {
            if let Some(st) = then {
                step(part, 0, st, &[]);
            }
        } else {
            return false;
        }
        j += run;
    }
    true
}

/// Runs of fewer elements than this go to [`mul_clamp_lanes`] (a 7×7 or 5×5 plane per channel), whose
/// registers may span two runs, instead of one call of [`composed_run`] per run.
const SHORT_RUN: usize = 64;

/// [`mul_clamp_runs`] over short runs of at least 8 elements ([`SHORT_RUN`]) on AVX2: every register's
/// lanes take their own run's multiplier (two runs' meet inside a register), the product and the
/// composed shift and clamp `c` as [`composed_run`] takes them — when the block's largest magnitude
/// times the largest multiplier of the runs it touches keeps every product's shifted result inside
/// `i32` (so the product step, alone or composed, cannot fail, and each lane's `i64` result fits its
/// low word). `false`, with nothing written, where it does not apply.
#[inline(always)]
fn mul_clamp_lanes(
    x: &mut [i32],
    start: usize,
    other: &[i32],
    (o, shift): (Operand, Shift),
    c: ComposedClamp,
) -> bool {
    #[cfg(target_arch = "x86_64")]
    if crate::simd::Isa::detect() != crate::simd::Isa::Base
        && (8..SHORT_RUN).contains(&o.inner)
        && o.period > 0
        && !x.is_empty()
    {
        // (the runs' multipliers from the first one's, wrapping at the period: no division per run)
        let (first, last) = (start / o.inner, (start + x.len() - 1) / o.inner);
        let at = first % o.period;
        let mw = (other[at..o.period].iter())
            .chain(other[..o.period].iter().cycle())
            .take(last - first + 1)
            .fold(0u32, |a, w| a.max(w.unsigned_abs())) as u128;
        let mx = x.iter().fold(0u32, |a, v| a.max(v.unsigned_abs())) as u128;
        // |x·w| ≤ mx·mw: (mx·mw + half) >> right below i32::MAX bounds every result from above,
        // and the floor of a negative product's from below (at most one under its negation)
        if shift.left == 0
            && (mx * mw + shift.half.unsigned_abs() as u128) >> shift.right < i32::MAX as u128
        {
            // SAFETY: AVX2 (or AVX-512, which includes it) is present and allowed (`Isa::detect`)
            unsafe { composed_lanes_avx2(x, start, other, o, c) };
            return true;
        }
    }
    false
}

/// [`composed_run_avx2`] over runs of at least 8 elements, each register's multipliers those of its
/// lanes' runs (element `start + j` in run `(start + j) / o.inner`, whose multiplier is
/// `other[run mod o.period]`); the last `len mod 8` elements one by one. The caller has checked that
/// every product's shifted result fits `i32`.
///
/// # Safety
/// The CPU must support AVX2; `o.inner ≥ 8`, `o.period > 0` and `other` holds `o.period` values.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn composed_lanes_avx2(
    x: &mut [i32],
    start: usize,
    other: &[i32],
    o: Operand,
    c: ComposedClamp,
) {
    use std::arch::x86_64::*;
    debug_assert!(o.inner >= 8 && other.len() >= o.period);
    let rounding = Rounding::new(c.half, c.right);
    let (lo, hi) = (
        _mm256_set1_epi32(c.lo.max(i32::MIN as i64) as i32),
        _mm256_set1_epi32(c.hi.min(i32::MAX as i64) as i32),
    );
    let lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    // the multiplier of element j = 0's run (at `run` in `other`), the first element (from j = 0)
    // of the next run, whose multiplier follows (wrapping at the period)
    let (mut run, mut next) = ((start / o.inner) % o.period, o.inner - start % o.inner);
    let after = |run: usize| if run + 1 == o.period { 0 } else { run + 1 };
    let mut chunks = x.chunks_exact_mut(8);
    let mut j = 0;
    for ch in &mut chunks {
        // lanes before the next run's first element take this run's multiplier, the rest the next's
        // (runs of 8 or more: one meeting at most)
        let wv = if j + 8 <= next {
            _mm256_set1_epi32(other[run])
        } else {
            let this = _mm256_cmpgt_epi32(_mm256_set1_epi32((next - j) as i32), lane);
            _mm256_blendv_epi8(
                _mm256_set1_epi32(other[after(run)]),
                _mm256_set1_epi32(other[run]),
                this,
            )
        };
        let p = ch.as_mut_ptr() as *mut __m256i;
        let r = rounding.products(_mm256_loadu_si256(p), wv);
        _mm256_storeu_si256(p, _mm256_min_epi32(_mm256_max_epi32(r, lo), hi));
        j += 8;
        if j >= next {
            run = after(run);
            next += o.inner;
        }
    }
    for v in chunks.into_remainder() {
        if j == next {
            run = after(run);
            next += o.inner;
        }
        *v = ((*v as i64 * other[run] as i64 + c.half) >> c.right).clamp(c.lo, c.hi) as i32;
        j += 1;
    }
}

/// `x[j] = clamp((x[j]·w + c.half) >> c.right, c.lo, c.hi)`, taken in `i32` — exact wherever the
/// product's own shifted result fits `i32` (the composed result then fits too), which the caller
/// checks from the returned least and greatest element of `x` (each bounded by 0).
#[inline(always)]
fn composed_run(x: &mut [i32], w: i32, c: ComposedClamp) -> (i32, i32) {
    #[cfg(target_arch = "x86_64")]
    if crate::simd::Isa::detect() == crate::simd::Isa::Avx512 {
        // SAFETY: the CPU has AVX-512 F (checked just above).
        return unsafe { composed_run_avx512(x, w, c) };
    }
    #[cfg(target_arch = "x86_64")]
    if crate::simd::Isa::detect() == crate::simd::Isa::Avx2 {
        // SAFETY: the CPU has AVX2 (checked just above).
        return unsafe { composed_run_avx2(x, w, c) };
    }
    composed_run_scalar(x, w, c)
}

/// [`composed_run`] element by element (the definition the vector forms follow).
#[inline(always)]
fn composed_run_scalar(x: &mut [i32], w: i32, c: ComposedClamp) -> (i32, i32) {
    let (mut lo, mut hi) = (0i32, 0i32);
    let w = w as i64;
    for v in x.iter_mut() {
        lo = lo.min(*v);
        hi = hi.max(*v);
        *v = ((*v as i64 * w + c.half) >> c.right).clamp(c.lo, c.hi) as i32;
    }
    (lo, hi)
}

/// `x` (`&mut [i32]`) rewritten 16 lanes at a time: each register `v` loaded, `f` (an expression of
/// it, in an `unsafe` block) stored in its place; whole registers unmasked, the last part under a mask
/// (its other lanes load as 0 and are not stored). A macro, so that the loop is compiled with the
/// calling function's target features (AVX-512 F).
#[cfg(target_arch = "x86_64")]
macro_rules! sixteen_lanes {
    ($x:expr, |$v:ident| $f:expr) => {{
        let mut chunks = $x.chunks_exact_mut(16);
        for c in &mut chunks {
            let p = c.as_mut_ptr();
            // SAFETY: each chunk holds 16 elements
            unsafe {
                let $v = _mm512_loadu_si512(p as *const _);
                _mm512_storeu_si512(p as *mut _, $f)
            }
        }
        let rest = chunks.into_remainder();
        if !rest.is_empty() {
            let (k, p) = (((1u32 << rest.len()) - 1) as __mmask16, rest.as_mut_ptr());
            // SAFETY: the `k` lanes lie inside `rest`
            unsafe {
                let $v = _mm512_maskz_loadu_epi32(k, p);
                _mm512_mask_storeu_epi32(p, k, $f)
            }
        }
    }};
}

/// [`composed_run`] 16 lanes at a time: the even lanes' and the odd lanes' (moved down by a shuffle)
/// 64-bit products by one `vpmuldq` each, with the rounding term added; a shift of 32 or more takes
/// both halves' high words into one register (`⌊t / 2^32⌋` is a 64-bit `t`'s high word) and shifts
/// them by the rest, a shorter one shifts each half and takes the low words (exact where the results
/// fit `i32`). The multiplies and shifts share one port: one shift instead of two where it can.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn composed_run_avx512(x: &mut [i32], w: i32, c: ComposedClamp) -> (i32, i32) {
    use std::arch::x86_64::*;
    let wv = _mm512_set1_epi64(w as i64);
    let half = _mm512_set1_epi64(c.half);
    let high = c.right >= 32;
    let count = _mm_cvtsi64_si128(if high { c.right - 32 } else { c.right } as i64);
    // lane 2i from the even products' word `2i + h`, lane 2i + 1 from the odd products' (h = 1: the
    // high words)
    let h = high as i32;
    let pick = _mm512_setr_epi32(
        h,
        16 + h,
        2 + h,
        18 + h,
        4 + h,
        20 + h,
        6 + h,
        22 + h,
        8 + h,
        24 + h,
        10 + h,
        26 + h,
        12 + h,
        28 + h,
        14 + h,
        30 + h,
    );
    // the bounds inside i32 (the clamp's own bounds are; a product alone has i32's)
    let (lo, hi) = (
        _mm512_set1_epi32(c.lo.max(i32::MIN as i64) as i32),
        _mm512_set1_epi32(c.hi.min(i32::MAX as i64) as i32),
    );
    let (mut mn, mut mx) = (_mm512_setzero_si512(), _mm512_setzero_si512());
    // 16 elements' results (masked-off lanes of a last part load as 0 and are not stored; a macro, as
    // a closure would not inherit this function's target features)
    macro_rules! sixteen {
        ($v:expr) => {{
            let v = $v;
            mn = _mm512_min_epi32(mn, v);
            mx = _mm512_max_epi32(mx, v);
            let even = _mm512_add_epi64(_mm512_mul_epi32(v, wv), half);
            // odd lanes moved down into the even ones (vpmuldq reads each word pair's low word)
            let odd = _mm512_shuffle_epi32::<0xF5>(v);
            let odd = _mm512_add_epi64(_mm512_mul_epi32(odd, wv), half);
            let r = if high {
                _mm512_sra_epi32(_mm512_permutex2var_epi32(even, pick, odd), count)
            } else {
                let (e, o) = (_mm512_sra_epi64(even, count), _mm512_sra_epi64(odd, count));
                _mm512_permutex2var_epi32(e, pick, o)
            };
            _mm512_min_epi32(_mm512_max_epi32(r, lo), hi)
        }};
    }
    sixteen_lanes!(x, |v| sixteen!(v));
    (_mm512_reduce_min_epi32(mn), _mm512_reduce_max_epi32(mx))
}

/// [`composed_run`] 8 lanes at a time on AVX2 (the scheme of [`composed_run_avx512`]): the even and
/// the odd lanes' 64-bit products by one `vpmuldq` each; a shift of 32 or more takes their high words
/// (blended into one register) and shifts those arithmetically by the rest; a shorter one shifts each
/// 64-bit half logically and takes the low words — the same bits as an arithmetic shift there (bits
/// `r .. r + 32` of the sum, below bit 63), exact where the results fit `i32`, which the caller checks.
/// The last `len mod 8` elements go element by element.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn composed_run_avx2(x: &mut [i32], w: i32, c: ComposedClamp) -> (i32, i32) {
    use std::arch::x86_64::*;
    let wv = _mm256_set1_epi64x(w as i64);
    let Rounding { half, high, count } = Rounding::new(c.half, c.right);
    let (lo, hi) = (
        _mm256_set1_epi32(c.lo.max(i32::MIN as i64) as i32),
        _mm256_set1_epi32(c.hi.min(i32::MAX as i64) as i32),
    );
    let (mut mn, mut mx) = (_mm256_setzero_si256(), _mm256_setzero_si256());
    let mut chunks = x.chunks_exact_mut(8);
    for ch in &mut chunks {
        let p = ch.as_mut_ptr() as *mut __m256i;
        let v = _mm256_loadu_si256(p);
        mn = _mm256_min_epi32(mn, v);
        mx = _mm256_max_epi32(mx, v);
        let even = _mm256_add_epi64(_mm256_mul_epi32(v, wv), half);
        let odd = _mm256_add_epi64(_mm256_mul_epi32(_mm256_srli_epi64::<32>(v), wv), half);
        let r = join_shifted(even, odd, high, count);
        _mm256_storeu_si256(p, _mm256_min_epi32(_mm256_max_epi32(r, lo), hi));
    }
    let (l, h) = composed_run_scalar(chunks.into_remainder(), w, c);
    let (mut a, mut b) = ([0i32; 8], [0i32; 8]);
    _mm256_storeu_si256(a.as_mut_ptr() as *mut __m256i, mn);
    _mm256_storeu_si256(b.as_mut_ptr() as *mut __m256i, mx);
    (
        a.into_iter().fold(l, i32::min),
        b.into_iter().fold(h, i32::max),
    )
}

/// `x[j] = (x[j] · w[j] + half) >> right` over the runs of a contiguous operand (`o.inner == 1`) on
/// AVX2 or AVX-512 ([`mul_pairs_avx2`]), when the largest magnitudes keep every result inside `i32`
/// (`(max|x| · max|w| + half) >> right ≤ i32::MAX`, and the floor of a negative sum is at most one
/// below its negation); `false`, with nothing written, where it does not apply.
#[inline(always)]
fn mul_pair_runs(x: &mut [i32], start: usize, other: &[i32], o: Operand, shift: Shift) -> bool {
    #[cfg(target_arch = "x86_64")]
    if crate::simd::Isa::detect() != crate::simd::Isa::Base {
        // SAFETY: AVX2 or AVX-512 is present and allowed (`Isa::detect`)
        return unsafe { pair_runs(x, start, other, o, shift) };
    }
    false
}

/// [`mul_pair_runs`] on a CPU known to have AVX2.
///
/// # Safety
/// The CPU must support AVX2.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn pair_runs(x: &mut [i32], start: usize, other: &[i32], o: Operand, shift: Shift) -> bool {
    if o.inner != 1 || shift.left != 0 || o.period == 0 {
        return false;
    }
    let max_abs = |v: &[i32]| v.iter().fold(0u32, |a, x| a.max(x.unsigned_abs())) as u64;
    // the run from element `j`: the operand from `at`, up to its end (it restarts every `period`)
    let n = x.len();
    let run_at = |j: usize| {
        let at = (start + j) % o.period;
        (at, (n - j).min(o.period - at))
    };
    let (mut j, mut mw) = (0, 0);
    while j < n {
        let (at, run) = run_at(j);
        mw = mw.max(max_abs(&other[at..at + run]));
        j += run;
    }
    // |x|, |w| ≤ 2^31: the product and the rounding term (below 2^62) fit u64
    if ((max_abs(x) * mw + shift.half as u64) >> shift.right) > i32::MAX as u64 {
        return false;
    }
    let mut j = 0;
    while j < n {
        let (at, run) = run_at(j);
        // SAFETY: the CPU has AVX2 (the caller's contract)
        mul_pairs_avx2(&mut x[j..j + run], &other[at..at + run], shift);
        j += run;
    }
    true
}

/// `x[j] = (x[j] · w[j] + half) >> right` 8 lanes at a time (the scheme of [`composed_run_avx2`], each
/// lane with its own multiplier): exact where every result fits `i32`, which the caller checked. The
/// last `len mod 8` elements go element by element.
///
/// # Safety
/// The CPU must support AVX2; `w` is at least as long as `x`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn mul_pairs_avx2(x: &mut [i32], w: &[i32], shift: Shift) {
    use std::arch::x86_64::*;
    assert!(w.len() >= x.len());
    let rounding = Rounding::new(shift.half, shift.right);
    let mut chunks = x.chunks_exact_mut(8);
    let mut k = 0;
    for ch in &mut chunks {
        let p = ch.as_mut_ptr() as *mut __m256i;
        let (v, wv) = (
            _mm256_loadu_si256(p),
            _mm256_loadu_si256(w.as_ptr().add(k) as *const __m256i),
        );
        _mm256_storeu_si256(p, rounding.products(v, wv));
        k += 8;
    }
    for (v, &m) in chunks.into_remainder().iter_mut().zip(&w[k..]) {
        *v = ((*v as i64 * m as i64 + shift.half) >> shift.right) as i32;
    }
}

/// A rounding right shift of 64-bit products as AVX2 registers: the rounding term in each 64-bit lane,
/// and the shift as [`join_shifted`] takes it (`high` for 32 or more, `count` the rest).
#[cfg(target_arch = "x86_64")]
#[derive(Clone, Copy)]
struct Rounding {
    half: std::arch::x86_64::__m256i,
    high: bool,
    count: std::arch::x86_64::__m128i,
}

#[cfg(target_arch = "x86_64")]
impl Rounding {
    /// `(p + half) >> right` for `right ≤ 62`.
    ///
    /// # Safety
    /// The CPU must support AVX2.
    #[target_feature(enable = "avx2")]
    #[inline]
    unsafe fn new(half: i64, right: u32) -> Rounding {
        use std::arch::x86_64::*;
        let high = right >= 32;
        Rounding {
            half: _mm256_set1_epi64x(half),
            high,
            count: _mm_cvtsi64_si128(if high { right - 32 } else { right } as i64),
        }
    }

    /// `(v[l]·w[l] + half) >> right` in each of 8 lanes: the even lanes' and the odd lanes' (moved
    /// down) 64-bit products by one `vpmuldq` each, the rounding term added, shifted and joined back —
    /// the arithmetic shift's low words, exact where the results fit `i32`.
    ///
    /// # Safety
    /// The CPU must support AVX2.
    #[target_feature(enable = "avx2")]
    #[inline]
    unsafe fn products(
        self,
        v: std::arch::x86_64::__m256i,
        w: std::arch::x86_64::__m256i,
    ) -> std::arch::x86_64::__m256i {
        use std::arch::x86_64::*;
        let even = _mm256_add_epi64(_mm256_mul_epi32(v, w), self.half);
        let odd = _mm256_add_epi64(
            _mm256_mul_epi32(_mm256_srli_epi64::<32>(v), _mm256_srli_epi64::<32>(w)),
            self.half,
        );
        join_shifted(even, odd, self.high, self.count)
    }
}

/// The even and odd lanes' 64-bit sums (`even`, and `odd` from the odd lanes) shifted right and joined
/// back into 8 `i32` lanes: a shift of 32 or more (`high`; `count` the rest) takes their high words
/// into one register and shifts those arithmetically; a shorter one shifts each 64-bit sum logically
/// and takes the low words — the arithmetic shift's low words wherever the results fit `i32`.
///
/// # Safety
/// The CPU must support AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
#[inline]
unsafe fn join_shifted(
    even: std::arch::x86_64::__m256i,
    odd: std::arch::x86_64::__m256i,
    high: bool,
    count: std::arch::x86_64::__m128i,
) -> std::arch::x86_64::__m256i {
    use std::arch::x86_64::*;
    if high {
        // even sums' high words down into the even lanes, the odd ones' stay in the odd
        let words = _mm256_blend_epi32::<0b1010_1010>(_mm256_srli_epi64::<32>(even), odd);
        _mm256_sra_epi32(words, count)
    } else {
        let (e, o) = (_mm256_srl_epi64(even, count), _mm256_srl_epi64(odd, count));
        _mm256_blend_epi32::<0b1010_1010>(e, _mm256_slli_epi64::<32>(o))
    }
}

/// One step over one block starting at flat index `start`; `false` if a result left `i32`.
#[inline(always)]
fn step(x: &mut [i32], start: usize, st: &Step, other: &[i32]) -> bool {
    match *st {
        // no rescale (the usual ReLU bounds): the clamp of an i32 by i32 bounds, in i32 lanes
        Step::Clamp { shift, lo, hi } if shift.right == 0 && shift.left == 0 => {
            let (lo, hi) = (lo as i32, hi as i32);
            for v in x.iter_mut() {
                *v = (*v).clamp(lo, hi);
            }
            true
        }
        // a rounding right shift by at most 31 in i32 lanes, as the unfused `Clamp` takes it (the
        // bounds are a Clamp's, i32)
        Step::Clamp { shift, lo, hi } if shift.left == 0 && shift.right <= 31 => {
            let (lo, hi) = (lo as i32, hi as i32);
            for v in x.iter_mut() {
                *v = crate::arith::rshift32(*v, shift.right).clamp(lo, hi);
            }
            true
        }
        Step::Clamp { shift, lo, hi } => {
            for v in x.iter_mut() {
                *v = shift.apply(*v as i64).clamp(lo, hi) as i32;
            }
            true
        }
        // a `Reshape` at its input's scale
        Step::Rescale { shift } if shift.right == 0 && shift.left == 0 => true,
        Step::Rescale { shift } => {
            let (mut l, mut h) = (0i64, 0i64);
            for v in x.iter_mut() {
                let r = shift.apply(*v as i64);
                l = l.min(r);
                h = h.max(r);
                *v = r as i32;
            }
            fits(l, h)
        }
        Step::Lookup {
            shift,
            lo,
            ref segments,
            ..
        } => {
            lookup(x, shift, lo, (other, segments.as_deref()));
            true
        }
        Step::LookupMul {
            shift,
            lo,
            mul,
            top,
            ref segments,
            ..
        } if lookup_mul_fast(shift, lo, other, mul) => lookup_mul_run(
            x,
            shift.right,
            lo as i32,
            (other, top, segments.as_deref()),
            mul,
        ),
        Step::LookupMul { shift, lo, mul, .. } => {
            // the looked-up values of a part of the block, then their products with the part
            const PART: usize = 256;
            let mut t = [0i32; PART];
            let (mut l, mut h) = (0i64, 0i64);
            for part in x.chunks_mut(PART) {
                let t = &mut t[..part.len()];
                t.copy_from_slice(part);
                lookup(t, shift, lo, (other, None));
                for (v, &w) in part.iter_mut().zip(t.iter()) {
                    let r = mul.apply(*v as i64 * w as i64);
                    l = l.min(r);
                    h = h.max(r);
                    *v = r as i32;
                }
            }
            fits(l, h)
        }
        Step::GateMul {
            la,
            c,
            add,
            shift,
            lo,
            hi,
            mul,
        } => gate_mul_run(x, (la, c, add), (shift, lo, hi), mul),
        Step::Binary {
            op,
            la,
            lb,
            shift,
            chain_is_a,
            other: o,
        } => {
            // an element-wise product (a gated unit's product) in 32-bit lanes where it can
            if op == BinOp::Mul && la == 0 && lb == 0 && mul_pair_runs(x, start, other, o, shift) {
                return true;
            }
            macro_rules! go {
                ($f:expr) => {
                    if la == 0 && lb == 0 && chain_is_a {
                        // operands as they are: a product of two sign-extended i32 lanes, which
                        // the compiler multiplies with the 32 × 32 → 64-bit instruction
                        binary(x, start, other, o, shift, |c, w| $f(c, w))
                    } else if la == 0 && lb == 0 {
                        binary(x, start, other, o, shift, |c, w| $f(w, c))
                    } else if chain_is_a {
                        binary(x, start, other, o, shift, |c, w| $f(c << la, w << lb))
                    } else {
                        binary(x, start, other, o, shift, |c, w| $f(w << la, c << lb))
                    }
                };
            }
            match op {
                BinOp::Add => go!(|a: i64, b: i64| a + b),
                BinOp::Sub => go!(|a: i64, b: i64| a - b),
                BinOp::Max => go!(|a: i64, b: i64| a.max(b)),
                BinOp::Min => go!(|a: i64, b: i64| a.min(b)),
                BinOp::Mul => go!(|a: i64, b: i64| a * b),
            }
        }
    }
}

/// A [`Step::GateMul`] over `x`: in 32-bit lanes on AVX2 where the sum and the clamp do not rescale and
/// the block's largest magnitude keeps every sum and every product's shifted result inside `i32`;
/// else element by element in `i64`. `false` if a sum or a product left `i32` (then `x` is partly
/// transformed, as a failed step leaves it).
#[inline(always)]
fn gate_mul_run(
    x: &mut [i32],
    (la, c, add): (u32, i64, Shift),
    (shift, lo, hi): (Shift, i64, i64),
    mul: Shift,
) -> bool {
    let right = |s: Shift| s.left == 0 && s.right <= 31;
    #[cfg(target_arch = "x86_64")]
    if crate::simd::Isa::detect() != crate::simd::Isa::Base
        && la == 0
        && right(add)
        && right(shift)
        && mul.left == 0
        && lo <= hi
    {
        let mx = x.iter().fold(0u32, |a, v| a.max(v.unsigned_abs())) as u128;
        let mg = lo.unsigned_abs().max(hi.unsigned_abs()) as u128;
        // |x + c + half| ≤ mx + |c| + half; the sum shifted and its rounding term added again, at
        // most that shifted plus the clamp's half; |x·g| ≤ mx·mg, whose shifted results (the floor
        // of a negative one at most one under its negation) stay inside i32 below i32::MAX
        let (ha, hs) = (add.half as u128, shift.half as u128);
        let sum = mx + c.unsigned_abs() as u128 + ha;
        let sums = sum <= i32::MAX as u128 && (sum >> add.right) + hs <= i32::MAX as u128;
        let products = (mx * mg + mul.half.unsigned_abs() as u128) >> mul.right < i32::MAX as u128;
        if sums && products {
            // SAFETY: AVX2 (or AVX-512, which includes it) is present and allowed (`Isa::detect`);
            // `c` and the halves lie inside i32 (the sums' bound), `lo`, `hi` are a clamp's (i32)
            unsafe {
                gate_mul_avx2(
                    x,
                    (c as i32 + add.half as i32, add.right),
                    (shift.half as i32, shift.right),
                    (lo as i32, hi as i32),
                    mul,
                )
            };
            return true;
        }
    }
    let (mut l, mut h) = (0i64, 0i64);
    for v in x.iter_mut() {
        let t = add.apply(((*v as i64) << la) + c);
        if t < i32::MIN as i64 || t > i32::MAX as i64 {
            return false;
        }
        let g = shift.apply(t).clamp(lo, hi);
        let r = mul.apply(*v as i64 * g);
        l = l.min(r);
        h = h.max(r);
        *v = r as i32;
    }
    fits(l, h)
}

/// `x[j] = mul(x[j] · clamp((((x[j] + c) >> ra) + hs) >> rs, lo, hi))` 8 lanes at a time (`c` with
/// the sum's rounding term, `hs` the clamp's): the sum, its shifts and the clamp in `i32` lanes, the
/// product as [`composed_run_avx2`] takes it (the even and the odd lanes' 64-bit products by one
/// `vpmuldq` each, shifted and joined); the last `len mod 8` elements one by one.
///
/// # Safety
/// The CPU must support AVX2; the caller has checked that no sum or shifted sum with its rounding
/// term leaves `i32`, that every product's shifted result fits `i32`, `ra, rs ≤ 31`, `mul.right ≤ 62`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn gate_mul_avx2(
    x: &mut [i32],
    (c, ra): (i32, u32),
    (hs, rs): (i32, u32),
    (lo, hi): (i32, i32),
    mul: Shift,
) {
    use std::arch::x86_64::*;
    let rounding = Rounding::new(mul.half, mul.right);
    let (cv, hsv, lv, hv) = (
        _mm256_set1_epi32(c),
        _mm256_set1_epi32(hs),
        _mm256_set1_epi32(lo),
        _mm256_set1_epi32(hi),
    );
    let (ca, cs) = (_mm_cvtsi32_si128(ra as i32), _mm_cvtsi32_si128(rs as i32));
    let mut chunks = x.chunks_exact_mut(8);
    for ch in &mut chunks {
        let p = ch.as_mut_ptr() as *mut __m256i;
        let v = _mm256_loadu_si256(p);
        let t = _mm256_sra_epi32(_mm256_add_epi32(v, cv), ca);
        let t = _mm256_sra_epi32(_mm256_add_epi32(t, hsv), cs);
        let g = _mm256_min_epi32(_mm256_max_epi32(t, lv), hv);
        _mm256_storeu_si256(p, rounding.products(v, g));
    }
    for v in chunks.into_remainder() {
        let g = ((((*v + c) >> ra) + hs) >> rs).clamp(lo, hi) as i64;
        *v = ((*v as i64 * g + mul.half) >> mul.right) as i32;
    }
}

/// Whether [`lookup_mul_run`] takes a `LookupMul` step: on AVX-512 or AVX2, an index shifted right by at most
/// 31 (in `i32` lanes, as [`lookup`] takes it), bounds and table positions inside `i32`, a product
/// shifted right (by at most 62: `|x·t| ≤ 2^62` plus the rounding term stays inside `i64`).
#[inline(always)]
fn lookup_mul_fast(shift: Shift, lo: i64, table: &[i32], mul: Shift) -> bool {
    cfg!(target_arch = "x86_64")
        && crate::simd::Isa::detect() != crate::simd::Isa::Base
        && shift.left == 0
        && shift.right <= 31
        && mul.left == 0
        && mul.right <= 62
        && !table.is_empty()
        && table.len() <= i32::MAX as usize / 4
        && i32::try_from(lo).is_ok()
        && i32::try_from(lo + table.len() as i64 - 1).is_ok()
}

/// `x[j] = mul(x[j] · table[clamp(rshift(x[j], k) − lo, 0, len − 1)])` in one pass (the conditions of
/// [`lookup_mul_fast`] hold): the elements are stored as their low 32 bits; `false` if a result left
/// `i32` (which the vector forms tell from the results' extremes, or from their high words).
#[inline(always)]
fn lookup_mul_run(
    x: &mut [i32],
    k: u32,
    lo: i32,
    (table, top, segments): (&[i32], Option<u32>, Option<&Segments>),
    mul: Shift,
) -> bool {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: `lookup_mul_fast` checked that the CPU has AVX-512 F and BW, or else AVX2; every
    // gathered index lies in `0..table.len()` (clamped to `lo..=hi`, then `lo` subtracted, all in
    // `i32`), and `segments` are `table`'s
    unsafe {
        if crate::simd::Isa::detect() == crate::simd::Isa::Avx512 {
            if let Some(sp) = top.and_then(|t| Split32::new(x, t, mul)) {
                lookup_mul_split512(x, k, lo, (table, segments), sp);
                return true;
            }
            let (l, h) = lookup_mul_avx512(x, k, lo, (table, segments), mul);
            fits(l, h)
        } else {
            lookup_mul_avx2(x, k, lo, (table, top), mul)
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (x, k, lo, table, top, segments, mul);
        unreachable!("lookup_mul_fast is false off x86-64")
    }
}

/// [`lookup_mul_run`] 16 lanes at a time: the index by the rounding shift of [`crate::arith::rshift32`],
/// the entries by one gather (or from the table's knots, [`crate::segments::SegmentLanes`]), then
/// the even and odd lanes' 64-bit products (the odd ones moved down by a shuffle) shifted and their
/// low words joined back, the results' extremes kept in 64-bit lanes.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn lookup_mul_avx512(
    x: &mut [i32],
    k: u32,
    lo: i32,
    (table, segments): (&[i32], Option<&Segments>),
    mul: Shift,
) -> (i64, i64) {
    use std::arch::x86_64::*;
    // SAFETY: the CPU has AVX-512 F (this function's features)
    let index = unsafe { crate::kernels::TableIndex::new(k, lo, lo + (table.len() - 1) as i32) };
    let (half, count) = (
        _mm512_set1_epi64(mul.half),
        _mm_cvtsi64_si128(mul.right as i64),
    );
    let pick = _mm512_setr_epi32(0, 16, 2, 18, 4, 20, 6, 22, 8, 24, 10, 26, 12, 28, 14, 30);
    let (mut mn, mut mx) = (_mm512_setzero_si512(), _mm512_setzero_si512());
    // (a macro, not a closure: a closure would not inherit this function's target features)
    macro_rules! sixteen {
        ($v:expr, $i:ident => $entries:expr) => {{
            let v = $v;
            let $i = index.of(v);
            let t = $entries;
            let even = _mm512_add_epi64(_mm512_mul_epi32(v, t), half);
            let odd = _mm512_mul_epi32(
                _mm512_shuffle_epi32::<0xF5>(v),
                _mm512_shuffle_epi32::<0xF5>(t),
            );
            let odd = _mm512_add_epi64(odd, half);
            let (e, o) = (_mm512_sra_epi64(even, count), _mm512_sra_epi64(odd, count));
            mn = _mm512_min_epi64(mn, _mm512_min_epi64(e, o));
            mx = _mm512_max_epi64(mx, _mm512_max_epi64(e, o));
            _mm512_permutex2var_epi32(e, pick, o)
        }};
    }
    // (the positions lie in the table, those of a last part's masked-off lanes too)
    match segments {
        Some(s) => {
            // SAFETY: the CPU has AVX-512 F and BW (this function's features)
            let lanes = unsafe { crate::segments::SegmentLanes::new(s) };
            sixteen_lanes!(x, |v| sixteen!(v, i => lanes.at(i)))
        }
        None => sixteen_lanes!(x, |v| sixteen!(v, i => _mm512_i32gather_epi32::<4>(
            i,
            table.as_ptr().cast()
        ))),
    }
    (_mm512_reduce_min_epi64(mn), _mm512_reduce_max_epi64(mx))
}

/// [`lookup_mul_avx512`] by [`Split32`] (a run whose bound keeps every partial result inside `i32`,
/// so every result fits): two 32-bit products (`vpmulld`) and shifts instead of the even and odd
/// lanes' 64-bit ones, no extremes kept.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn lookup_mul_split512(
    x: &mut [i32],
    k: u32,
    lo: i32,
    (table, segments): (&[i32], Option<&Segments>),
    sp: Split32,
) {
    use std::arch::x86_64::*;
    // SAFETY: the CPU has AVX-512 F (this function's features)
    let index = unsafe { crate::kernels::TableIndex::new(k, lo, lo + (table.len() - 1) as i32) };
    let (s, rest) = (
        _mm_cvtsi32_si128(sp.s as i32),
        _mm_cvtsi32_si128(sp.rest as i32),
    );
    let low = _mm512_set1_epi32(((1u32 << sp.s) - 1) as i32);
    let half = _mm512_set1_epi32(sp.half);
    // (a macro, not a closure: a closure would not inherit this function's target features)
    macro_rules! sixteen {
        ($v:expr, $i:ident => $entries:expr) => {{
            let v = $v;
            let $i = index.of(v);
            let t = $entries;
            let hi = _mm512_mullo_epi32(_mm512_sra_epi32(v, s), t);
            let lo = _mm512_mullo_epi32(_mm512_and_si512(v, low), t);
            if sp.rest == 0 {
                // r ≤ 15: xh·t + ((xl·t + 2^(r−1)) >> r)
                _mm512_add_epi32(hi, _mm512_sra_epi32(_mm512_add_epi32(lo, half), s))
            } else {
                // r > 15: (xh·t + (xl·t >> 15) + 2^(r−16)) >> (r − 15)
                let sum = _mm512_add_epi32(_mm512_add_epi32(hi, _mm512_sra_epi32(lo, s)), half);
                _mm512_sra_epi32(sum, rest)
            }
        }};
    }
    // (the positions lie in the table, those of a last part's masked-off lanes too)
    match segments {
        Some(sg) => {
            // SAFETY: the CPU has AVX-512 F and BW (this function's features)
            let lanes = unsafe { crate::segments::SegmentLanes::new(sg) };
            sixteen_lanes!(x, |v| sixteen!(v, i => lanes.at(i)))
        }
        None => sixteen_lanes!(x, |v| sixteen!(v, i => _mm512_i32gather_epi32::<4>(
            i,
            table.as_ptr().cast()
        ))),
    }
}

/// [`lookup_mul_run`] 8 lanes at a time on AVX2: the index and gather of
/// [`crate::kernels::lookup_in_place`], the even and odd lanes' 64-bit products (`vpmuldq`) with the
/// rounding term, shifted arithmetically (a logical shift of the sum with its sign folded in and out:
/// `⌊t / 2^r⌋ = !(!t >> r)` for `t < 0`); a result fits `i32` when its high word is its low word's
/// sign, and every mismatch is kept. The last `len mod 8` elements go one by one.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn lookup_mul_avx2(
    x: &mut [i32],
    k: u32,
    lo: i32,
    (table, top): (&[i32], Option<u32>),
    mul: Shift,
) -> bool {
    use std::arch::x86_64::*;
    // SAFETY: the CPU has AVX2 (this function's feature)
    let index = unsafe { crate::kernels::TableIndex8::new(k, lo, lo + (table.len() - 1) as i32) };
    if let Some(split) = top.and_then(|t| Split32::new(x, t, mul)) {
        // SAFETY: as above
        unsafe { lookup_mul_split(x, (index, k, lo), table, split) };
        return true;
    }
    let (half, count) = (
        _mm256_set1_epi64x(mul.half),
        _mm_cvtsi64_si128(mul.right as i64),
    );
    let zero = _mm256_setzero_si256();
    let mut bad = zero;
    let mut chunks = x.chunks_exact_mut(8);
    for c in &mut chunks {
        let p = c.as_mut_ptr() as *mut __m256i;
        let v = _mm256_loadu_si256(p);
        // SAFETY: as above; every index lies in 0..table.len() (clamped to lo..=hi, lo subtracted)
        let t = unsafe { _mm256_i32gather_epi32::<4>(table.as_ptr(), index.of(v)) };
        // (macros, not closures, so that the code takes this function's target features)
        macro_rules! shift {
            ($p:expr) => {{
                let p = $p;
                let sign = _mm256_cmpgt_epi64(zero, p);
                _mm256_xor_si256(_mm256_srl_epi64(_mm256_xor_si256(p, sign), count), sign)
            }};
        }
        let e = shift!(_mm256_add_epi64(_mm256_mul_epi32(v, t), half));
        let (vo, to) = (_mm256_srli_epi64::<32>(v), _mm256_srli_epi64::<32>(t));
        let o = shift!(_mm256_add_epi64(_mm256_mul_epi32(vo, to), half));
        let low = _mm256_blend_epi32::<0b1010_1010>(e, _mm256_slli_epi64::<32>(o));
        let high = _mm256_blend_epi32::<0b1010_1010>(_mm256_srli_epi64::<32>(e), o);
        bad = _mm256_or_si256(bad, _mm256_xor_si256(high, _mm256_srai_epi32::<31>(low)));
        _mm256_storeu_si256(p, low);
    }
    let last = table.len() as i64 - 1;
    let mut fit = _mm256_testz_si256(bad, bad) == 1;
    for v in chunks.into_remainder() {
        let t = table[(crate::arith::rshift32(*v, k) as i64 - lo as i64).clamp(0, last) as usize];
        let r = mul.apply(*v as i64 * t as i64);
        fit &= fits(r, r);
        *v = r as i32;
    }
    fit
}

/// The rounded product `(x·t + 2^(r−1)) >> r` of [`lookup_mul_avx2`] (and of [`lookup_mul_avx512`],
/// as [`lookup_mul_split512`]) in 32-bit lanes, for entries `|t| < 2^15` and a run whose largest
/// `|x|` keeps every partial result inside `i32`. With
/// `s = min(r, 15)`, `x = xh·2^s + xl` (`xh = x >> s`, `0 ≤ xl < 2^s`), so `|xl·t| < 2^30`:
/// - `r ≤ 15`: `x·t + 2^(r−1) = xh·t·2^r + (xl·t + 2^(r−1))`, whose floor by `2^r` is
///   `xh·t + ((xl·t + 2^(r−1)) >> r)` (`xh·t·2^r` is a multiple of `2^r`);
/// - `r > 15`: the rounding term `2^(r−1)` is a multiple of `2^15`, so `x·t + 2^(r−1)` is
///   `(xh·t + (xl·t >> 15) + 2^(r−16))·2^15 + (xl·t mod 2^15)`, and the last term (below `2^15`) never
///   reaches the next multiple of `2^r` of a multiple of `2^15`: the floor is
///   `(xh·t + (xl·t >> 15) + 2^(r−16)) >> (r − 15)`.
///
/// Both are the `i64` definition's integers; every result then fits `i32` (it is at most the
/// bounded sum in magnitude).
#[cfg(target_arch = "x86_64")]
#[derive(Clone, Copy, Debug)]
struct Split32 {
    /// `s`.
    s: u32,
    /// `r − s`.
    rest: u32,
    /// The rounding term in the low part (`r ≤ 15`) or the high one.
    half: i32,
}

#[cfg(target_arch = "x86_64")]
impl Split32 {
    /// The split for table entries of magnitude at most `top` and the product's shift `mul`, if the
    /// run `x` allows it: `|t| < 2^15`, a right shift of at most 45, and
    /// `(⌊max|x| / 2^s⌋ + 1)·top + top + 1 + 2^(r−16)` inside `i32`.
    fn new(x: &[i32], top: u32, mul: Shift) -> Option<Split32> {
        let r = mul.right;
        if top >= 1 << 15 || mul.left != 0 || r > 45 {
            return None;
        }
        let s = r.min(15);
        let m = x.iter().map(|v| v.unsigned_abs()).max().unwrap_or(0) as u64;
        let high = if r > 15 { 1u64 << (r - 16) } else { 0 };
        let bound = ((m >> s) + 1) * top as u64 + top as u64 + 1 + high;
        (bound <= i32::MAX as u64).then(|| Split32 {
            s,
            rest: r - s,
            half: match r {
                0 => 0,
                1..=15 => 1 << (r - 1),
                _ => high as i32,
            },
        })
    }
}

/// [`lookup_mul_avx2`]'s run by [`Split32`]: 8 lanes at a time, the gather as there, two 32-bit
/// products (`vpmulld`) and shifts instead of the even and odd lanes' 64-bit ones; the last
/// `len mod 8` elements one by one (by the definition).
///
/// # Safety
/// The CPU must have AVX2; `index` must bound every index inside `table`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn lookup_mul_split(
    x: &mut [i32],
    (index, k, lo): (crate::kernels::TableIndex8, u32, i32),
    table: &[i32],
    sp: Split32,
) {
    use std::arch::x86_64::*;
    let s = _mm_cvtsi32_si128(sp.s as i32);
    let rest = _mm_cvtsi32_si128(sp.rest as i32);
    let low = _mm256_set1_epi32(((1u32 << sp.s) - 1) as i32);
    let half = _mm256_set1_epi32(sp.half);
    let mut chunks = x.chunks_exact_mut(8);
    for c in &mut chunks {
        let p = c.as_mut_ptr() as *mut __m256i;
        // SAFETY: the chunk holds 8 elements; every index lies in 0..table.len()
        unsafe {
            let v = _mm256_loadu_si256(p);
            let t = _mm256_i32gather_epi32::<4>(table.as_ptr(), index.of(v));
            let hi = _mm256_mullo_epi32(_mm256_sra_epi32(v, s), t);
            let lo = _mm256_mullo_epi32(_mm256_and_si256(v, low), t);
            let r = if sp.rest == 0 {
                // r ≤ 15: xh·t + ((xl·t + 2^(r−1)) >> r)
                _mm256_add_epi32(hi, _mm256_sra_epi32(_mm256_add_epi32(lo, half), s))
            } else {
                // r > 15: (xh·t + (xl·t >> 15) + 2^(r−16)) >> (r − 15)
                let sum = _mm256_add_epi32(_mm256_add_epi32(hi, _mm256_sra_epi32(lo, s)), half);
                _mm256_sra_epi32(sum, rest)
            };
            _mm256_storeu_si256(p, r);
        }
    }
    let (last, r) = (table.len() as i64 - 1, sp.s + sp.rest);
    let mul = Shift::new(r as i32).expect("a right shift of at most 45");
    for v in chunks.into_remainder() {
        let t = table[(crate::arith::rshift32(*v, k) as i64 - lo as i64).clamp(0, last) as usize];
        *v = mul.apply(*v as i64 * t as i64) as i32;
    }
}

/// `x[j] = table[clamp(shift(x[j]) − lo, 0, len − 1)]` (`table` not empty; `segments` its knots, if
/// it has them).
#[inline(always)]
fn lookup(x: &mut [i32], shift: Shift, lo: i64, (table, segments): (&[i32], Option<&Segments>)) {
    if shift.left == 0 && shift.right <= 31 {
        // the index's rounding shift in i32 lanes, as the unfused `Lookup` takes it
        crate::kernels::lookup_in_place(x, (table, segments), shift.right, lo);
        return;
    }
    let last = table.len() as i64 - 1;
    for v in x.iter_mut() {
        *v = table[(shift.apply(*v as i64) - lo).clamp(0, last) as usize];
    }
}

fn fits(lo: i64, hi: i64) -> bool {
    lo >= i32::MIN as i64 && hi <= i32::MAX as i64
}

/// `x[j] = shift(x[j] · w)` for one run's multiplier `w`, a right shift (`shift.left == 0`): a run
/// whose largest magnitude `m` keeps every result inside `i32` (`|x·w + half| ≤ m·|w| + 2^right`, so
/// `(m·|w| + 2^right) >> right ≤ i32::MAX` bounds both signs) skips the range check of each element;
/// `false` if a result left `i32`.
#[inline(always)]
fn mul_run(x: &mut [i32], w: i32, shift: Shift) -> bool {
    let w = w as i64;
    let m = x.iter().map(|v| v.unsigned_abs()).max().unwrap_or(0) as u64;
    // m ≤ 2^31, |w| ≤ 2^31, right ≤ 62: no sum here leaves u64
    let bound = (m * w.unsigned_abs() + (1u64 << shift.right)) >> shift.right;
    if m * w.unsigned_abs() + shift.half as u64 <= i32::MAX as u64 {
        // every product and its rounding term inside i32 too: 32-bit lanes, twice as many
        let (w, half) = (w as i32, shift.half as i32);
        for v in x.iter_mut() {
            *v = v.wrapping_mul(w).wrapping_add(half) >> shift.right;
        }
    } else if bound <= i32::MAX as u64 {
        for v in x.iter_mut() {
            *v = ((*v as i64 * w + shift.half) >> shift.right) as i32;
        }
    } else {
        let (mut l, mut h) = (0i64, 0i64);
        for v in x.iter_mut() {
            let r = shift.apply(*v as i64 * w);
            l = l.min(r);
            h = h.max(r);
            *v = r as i32;
        }
        return fits(l, h);
    }
    true
}

/// `x[j] = shift(f(x[j], other[idx(start + j)]))` over runs where the operand is constant (`inner > 1`)
/// or contiguous (`inner == 1`).
#[inline(always)]
fn binary(
    x: &mut [i32],
    start: usize,
    other: &[i32],
    o: Operand,
    shift: Shift,
    f: impl Fn(i64, i64) -> i64 + Copy,
) -> bool {
    let (mut l, mut h) = (0i64, 0i64);
    let mut j = 0;
    while j < x.len() {
        let i = start + j;
        let at = (i / o.inner) % o.period;
        if o.inner == 1 {
            let run = (x.len() - j).min(o.period - at);
            for (v, &w) in x[j..j + run].iter_mut().zip(&other[at..at + run]) {
                let r = shift.apply(f(*v as i64, w as i64));
                l = l.min(r);
                h = h.max(r);
                *v = r as i32;
            }
            j += run;
        } else {
            let run = (x.len() - j).min(o.inner - i % o.inner);
            let w = other[at] as i64;
            for v in x[j..j + run].iter_mut() {
                let r = shift.apply(f(*v as i64, w));
                l = l.min(r);
                h = h.max(r);
                *v = r as i32;
            }
            j += run;
        }
    }
    fits(l, h)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::{Const, Input, InputKind, Output};

    fn node(name: &str, op: Op, inputs: Vec<ValueId>, scale: i8) -> Node {
        Node {
            name: name.into(),
            op,
            inputs,
            shape: vec![1, 3, 2],
            scale,
        }
    }

    /// The vector forms of a composed requantization (AVX2, AVX-512) give the element-by-element
    /// results and extremes wherever the caller keeps them (every product's own shifted result inside
    /// `i32`): shifts below, at and above 32, multipliers of either sign, clamps or none, every tail
    /// length.
    #[test]
    #[cfg(target_arch = "x86_64")]
    fn composed_requantization_lanes_equal_the_definition() {
        let mut next = crate::kernels::tests::xorshift(0x9e37_79b9_7f4a_7c15);
        let (mut compared, mut high) = (0, 0);
        for case in 0..3000 {
            let right = (next() % 63) as u32;
            let mag = 1i64 << (next() % 31);
            let w = ((1i64 << 16) + (next() % (1 << 30)) as i64) as i32;
            let w = if case % 2 == 0 { w } else { -w };
            let len = (next() % 40) as usize;
            let x: Vec<i32> = (0..len)
                .map(|_| ((next() % (2 * mag as u64 + 1)) as i64 - mag) as i32)
                .collect();
            let mul = Shift::new(right as i32).expect("in range");
            let c = match case % 3 {
                0 => ComposedClamp::alone(mul),
                _ => ComposedClamp {
                    lo: -128 * (case % 3 - 1) as i64,
                    hi: 127 + 128 * (case % 3 - 1) as i64,
                    ..ComposedClamp::alone(mul)
                },
            };
            let mut want = x.clone();
            let extremes = composed_run_scalar(&mut want, w, c);
            let at = |v: i32| (v as i128 * w as i128 + c.half as i128) >> right;
            let kept = |(l, h): (i32, i32)| {
                let r = i32::MIN as i128..=i32::MAX as i128;
                r.contains(&at(l)) && r.contains(&at(h))
            };
            let mut forms: Vec<Vec<i32>> = Vec::new();
            if std::arch::is_x86_feature_detected!("avx2") {
                let mut got = x.clone();
                // SAFETY: AVX2 is present (checked just above)
                assert_eq!(unsafe { composed_run_avx2(&mut got, w, c) }, extremes);
                forms.push(got);
            }
            if std::arch::is_x86_feature_detected!("avx512f") {
                let mut got = x.clone();
                // SAFETY: AVX-512 F is present (checked just above)
                assert_eq!(unsafe { composed_run_avx512(&mut got, w, c) }, extremes);
                forms.push(got);
            }
            if kept(extremes) {
                for got in forms {
                    assert_eq!(got, want, "w {w} right {right} clamp {} {}", c.lo, c.hi);
                    compared += 1;
                    high += (right >= 32 && len >= 8) as usize;
                }
            }
        }
        // most cases are kept, both shift forms among them (on a CPU with either vector form)
        if std::arch::is_x86_feature_detected!("avx2") {
            assert!(compared > 1000 && high > 100, "{compared} {high}");
        }
    }

    /// Element-wise products in 32-bit lanes give the definition's integers (shifts below, at and above
    /// 32, both signs, every tail length, operands restarting mid-block); where a result could leave
    /// `i32` the fast form declines and writes nothing.
    #[test]
    #[cfg(target_arch = "x86_64")]
    fn element_wise_products_in_lanes_equal_the_definition() {
        let mut next = crate::kernels::tests::xorshift(0x2545_f491_4f6c_dd1d);
        let mut taken = 0;
        for case in 0..2000 {
            let right = 1 + (next() % 62) as u32;
            let shift = Shift::new(right as i32).expect("in range");
            let (mx, mw) = (1i64 << (next() % 31), 1i64 << (next() % 31));
            let len = (next() % 40) as usize;
            let period = 1 + (next() % 24) as usize;
            let start = (next() % 100) as usize;
            let draw = |m: i64, r: u64| ((r % (2 * m as u64 + 1)) as i64 - m) as i32;
            let x: Vec<i32> = (0..len).map(|_| draw(mx, next())).collect();
            let w: Vec<i32> = (0..period).map(|_| draw(mw, next())).collect();
            let o = Operand {
                value: 0,
                inner: 1,
                period,
            };
            let want: Vec<i64> = x
                .iter()
                .enumerate()
                .map(|(j, &v)| shift.apply(v as i64 * w[(start + j) % period] as i64))
                .collect();
            let mut got = x.clone();
            if !std::arch::is_x86_feature_detected!("avx2") {
                // the lanes need AVX2; the loop in i64 serves elsewhere
                assert!(!mul_pair_runs(&mut got, start, &w, o, shift) && got == x);
                continue;
            }
            // SAFETY: AVX2 is present (checked just above)
            if unsafe { pair_runs(&mut got, start, &w, o, shift) } {
                let got: Vec<i64> = got.iter().map(|&v| v as i64).collect();
                assert_eq!(got, want, "case {case}: right {right}");
                taken += 1;
            } else {
                assert_eq!(got, x, "declined, nothing written");
                // only where the magnitudes allow a result past i32
                let m = (mx as u64 * mw as u64 + shift.half as u64) >> right;
                assert!(m > i32::MAX as u64, "case {case}");
            }
        }
        if std::arch::is_x86_feature_detected!("avx2") {
            assert!(taken > 500, "{taken}");
        }
    }

    /// Per-channel products over short runs (a 7×7 plane per channel), composed with a clamp or alone,
    /// with registers spanning two runs: the lanes give the product step's and then the clamp step's
    /// integers (blocks starting anywhere in a run, runs of 8 to 63 elements, channels restarting
    /// mid-block, multipliers of both signs below and above 2^16, shifts below, at and above 32, every
    /// tail length); where a product's result could leave `i32` they decline and write nothing.
    #[test]
    #[cfg(target_arch = "x86_64")]
    fn products_over_short_runs_in_lanes_equal_the_steps() {
        let mut next = crate::kernels::tests::xorshift(0x6a09_e667_f3bc_c908);
        let (mut taken, mut declined) = (0, 0);
        for case in 0..3000 {
            let right = 1 + (next() % 45) as u32;
            let mul = Shift::new(right as i32).expect("in range");
            let inner = 8 + (next() % 56) as usize;
            let period = 1 + (next() % 12) as usize;
            let start = (next() % 400) as usize;
            let len = (next() % 300) as usize;
            let (mx, mw) = (1i64 << (next() % 20), 1i64 << (next() % 28));
            let draw = |m: i64, r: u64| ((r % (2 * m as u64 + 1)) as i64 - m) as i32;
            let x: Vec<i32> = (0..len).map(|_| draw(mx, next())).collect();
            let w: Vec<i32> = (0..period).map(|_| draw(mw, next())).collect();
            let o = Operand {
                value: 0,
                inner,
                period,
            };
            // the clamp step after the product (a requantization to 8 bits, a ReLU) or none
            let clamp = match case % 3 {
                0 => None,
                1 => Some((
                    Shift::new((next() % 20) as i32).expect("in range"),
                    -128,
                    127,
                )),
                _ => Some((Shift::new(0).expect("in range"), 0, i32::MAX as i64)),
            };
            let c = match clamp {
                Some((s, lo, hi)) => match ComposedClamp::new(mul, s, lo, hi) {
                    Some(c) => c,
                    None => continue,
                },
                None => ComposedClamp::alone(mul),
            };
            let results: Vec<i64> = x
                .iter()
                .enumerate()
                .map(|(j, &v)| mul.apply(v as i64 * w[((start + j) / inner) % period] as i64))
                .collect();
            let fits = results
                .iter()
                .all(|r| (i32::MIN as i64..=i32::MAX as i64).contains(r));
            let want: Vec<i32> = results
                .iter()
                .map(|&r| match clamp {
                    Some((s, lo, hi)) => s.apply(r).clamp(lo, hi) as i32,
                    None => r as i32,
                })
                .collect();
            let mut got = x.clone();
            if mul_clamp_lanes(&mut got, start, &w, (o, mul), c) {
                assert!(fits, "case {case}: taken where a product leaves i32");
                assert_eq!(got, want, "case {case}: runs of {inner} from {start}");
                taken += 1;
            } else {
                assert_eq!(got, x, "declined, nothing written");
                declined += 1;
            }
        }
        if std::arch::is_x86_feature_detected!("avx2") {
            assert!(taken > 1000 && declined > 50, "{taken} {declined}");
        }
    }

    #[test]
    fn chains_stop_at_a_second_reader_and_at_later_operands() {
        let m = Model {
            inputs: vec![Input {
                name: "x".into(),
                shape: vec![1, 3, 2],
                scale: 4,
                kind: InputKind::Fixed,
            }],
            consts: vec![Const {
                shape: vec![1, 3, 1],
                scale: 8,
                data: vec![3, 5, 7].into(),
            }],
            nodes: vec![
                // 0: head; 1 and 2 fuse into it; 2's output is read twice (3 and 4), so it ends the chain
                node("acc", Op::Rescale, vec![0], 6),
                node("mul", Op::Mul, vec![2, 1], 10),
                node("relu", Op::Clamp { lo: 0, hi: 99 }, vec![3], 4),
                node("a", Op::Clamp { lo: -5, hi: 5 }, vec![4], 4),
                node("c", Op::Clamp { lo: -9, hi: 9 }, vec![4], 4),
                // reads "a" (its only reader) and "c", which is computed after "a": no step of "a"'s
                // chain, but a step of "c"'s
                node("b", Op::Add, vec![5, 6], 4),
            ],
            outputs: vec![Output {
                name: "y".into(),
                value: 7,
            }],
        };
        m.validate().expect("valid");
        let roles = plan(&m);
        let fused: Vec<usize> = match &roles[0] {
            Role::Head(c) => c.nodes.clone(),
            r => panic!("not a head: {r:?}"),
        };
        assert_eq!(fused, vec![1, 2]);
        assert_eq!(roles[1], Role::Absorbed);
        assert_eq!(roles[2], Role::Absorbed);
        assert_eq!(roles[3], Role::Alone);
        match &roles[4] {
            Role::Head(c) => {
                assert_eq!(c.nodes, vec![5])
            }
            r => panic!("not a head: {r:?}"),
        }
        assert_eq!(roles[5], Role::Absorbed);
    }

    /// The rescaling clamp in `i32` lanes (right shifts up to 31) and the identity rescale give the
    /// integers of the `i64` definition, at the extremes of `i32` and with the whole of `i32` as bounds.
    #[test]
    fn narrow_clamp_and_identity_rescale_follow_the_definition() {
        let mut x: Vec<i32> = vec![
            i32::MIN,
            i32::MIN + 1,
            -65537,
            -65536,
            -3,
            -2,
            -1,
            0,
            1,
            2,
            3,
        ];
        x.extend([65535, 65536, i32::MAX - 1, i32::MAX]);
        let mut r = 0x2545_f491_4f6c_dd1du64;
        x.extend((0..500).map(|_| {
            r ^= r << 13;
            r ^= r >> 7;
            r ^= r << 17;
            (r >> 16) as i32 >> (r % 31)
        }));
        for k in 0..=40 {
            for (lo, hi) in [
                (-128, 127),
                (0, 6 << 8),
                (i32::MIN as i64, i32::MAX as i64),
                (-5, -5),
            ] {
                let shift = Shift::new(k).expect("in range");
                let want: Vec<i32> = x
                    .iter()
                    .map(|&v| shift.apply(v as i64).clamp(lo, hi) as i32)
                    .collect();
                let mut got = x.clone();
                assert!(step(&mut got, 0, &Step::Clamp { shift, lo, hi }, &[]));
                assert_eq!(got, want, "shift {k}, bounds {lo}..={hi}");
            }
        }
        let mut same = x.clone();
        let identity = Step::Rescale {
            shift: Shift::new(0).expect("identity"),
        };
        assert!(step(&mut same, 0, &identity, &[]));
        assert_eq!(same, x);
    }

    /// Merged clamps and dropped identity rescales give the integers of the steps run one by one, on
    /// random chains of clamps (with and without right shifts, bounds inside and past each other) and
    /// `Reshape`s; the usual ReLU6-then-8-bit-requantization chain becomes one pass.
    #[test]
    fn simplified_chains_compute_the_same_integers() {
        let mut r = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            r ^= r << 13;
            r ^= r >> 7;
            r ^= r << 17;
            r
        };
        let x: Vec<i32> = (0..3000)
            .map(|_| {
                let v = next();
                (v >> 16) as i32 >> (v % 31)
            })
            .chain([i32::MIN, i32::MAX, -1, 0, 1])
            .collect();
        for trial in 0..400 {
            let len = 1 + (next() % 5) as usize;
            let steps: Vec<Fused> = (0..len)
                .map(|node| {
                    let step = if next() % 4 == 0 {
                        Step::Rescale {
                            shift: Shift::new(0).expect("identity"),
                        }
                    } else {
                        let k = if next() % 2 == 0 {
                            0
                        } else {
                            (next() % 33) as i32
                        };
                        let a = (next() as i32 >> (next() % 32)) as i64;
                        let b = (next() as i32 >> (next() % 32)) as i64;
                        Step::Clamp {
                            shift: Shift::new(k).expect("in range"),
                            lo: a.min(b),
                            hi: a.max(b),
                        }
                    };
                    Fused { node, step }
                })
                .collect();
            let mut want = x.clone();
            for f in &steps {
                assert!(step(&mut want, 0, &f.step, &[]));
            }
            let short = simplify(steps.clone());
            assert!(short.len() <= steps.len());
            let mut got = x.clone();
            let others = vec![&[][..]; short.len()];
            assert_eq!(apply(&mut got, 0, &short, &others), Ok(()));
            assert_eq!(got, want, "trial {trial}: {steps:?} -> {short:?}");
        }
        // Clip.min, Clip.max (no rescale), a Reshape, the next layer's 8-bit Clamp (right shift 8)
        let clamp = |k: i32, lo: i64, hi: i64| Step::Clamp {
            shift: Shift::new(k).expect("in range"),
            lo,
            hi,
        };
        let relu6 = [
            clamp(0, 0, i32::MAX as i64),
            clamp(0, i32::MIN as i64, 6 << 16),
            Step::Rescale {
                shift: Shift::new(0).expect("identity"),
            },
            clamp(8, -128, 127),
        ];
        let steps: Vec<Fused> = relu6
            .into_iter()
            .enumerate()
            .map(|(node, step)| Fused { node, step })
            .collect();
        assert_eq!(
            simplify(steps),
            vec![Fused {
                node: 3,
                step: clamp(8, 0, 127)
            }]
        );
    }

    /// The 32-bit split products of a looked-up value ([`Split32`]) equal the definition
    /// `mul(x · table[index])` on every element: tables of entries up to `±(2^15 − 1)` (and wider ones,
    /// which decline the split), every right shift up to 50, runs of small and of large magnitudes
    /// (those whose products could leave `i32` decline it), lengths across the 8 lanes; a run the split
    /// takes never leaves `i32`.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn split_lookup_products_equal_the_definition() {
        use crate::simd::Isa;
        // each vector form the CPU has: AVX-512's 64-bit products and AVX2's (split or not)
        for isa in [Isa::Avx512, Isa::Avx2] {
            Isa::cap(isa);
            if Isa::detect() == isa {
                split_lookup_products_at_the_detected_level();
            }
            Isa::cap(Isa::Avx512);
        }
    }

    #[cfg(target_arch = "x86_64")]
    fn split_lookup_products_at_the_detected_level() {
        let mut r = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            r ^= r << 13;
            r ^= r >> 7;
            r ^= r << 17;
            r
        };
        let (mut split, mut knotted) = (0, 0);
        for case in 0..3000 {
            let len = 1 + (next() % 70) as usize;
            let bits = [8, 14, 15, 16][(next() % 4) as usize];
            let n = 1 + (next() % 300) as usize;
            let mut entry = || (next() % (1 << bits)) as i32 - (1 << (bits - 1));
            // every third table interpolated between knots (read from them where they fit i16)
            let table: Vec<i32> = if case % 3 == 0 {
                let (k, g) = (2 + n % 63, 1 + (case / 3) % 6);
                let knots: Vec<i32> = (0..k).map(|_| entry()).collect();
                let mut t: Vec<i32> = knots
                    .windows(2)
                    .flat_map(|w| {
                        (0..1 << g).map(move |l| w[0] + (((w[1] - w[0]) * l + (1 << (g - 1))) >> g))
                    })
                    .collect();
                t.push(knots[k - 1]);
                t
            } else {
                (0..n).map(|_| entry()).collect()
            };
            let segments = Segments::of(&table);
            knotted += segments.is_some() as usize;
            let top = table.iter().map(|v| v.unsigned_abs()).max();
            let (k, lo) = ((next() % 12) as u32, (next() % 200) as i32 - 100);
            let mul = Shift::new((next() % 51) as i32).expect("a right shift");
            let xbits = 4 + (next() % 28) as u32;
            let x: Vec<i32> = (0..len)
                .map(|_| ((next() >> 32) as i32) >> (32 - xbits))
                .collect();
            let last = table.len() as i64 - 1;
            let want: Vec<i64> = x
                .iter()
                .map(|&v| {
                    let i = (crate::arith::rshift32(v, k) as i64 - lo as i64).clamp(0, last);
                    mul.apply(v as i64 * table[i as usize] as i64)
                })
                .collect();
            let fits = want.iter().all(|&v| i32::try_from(v).is_ok());
            if top.is_some_and(|t| Split32::new(&x, t, mul).is_some()) {
                split += 1;
                assert!(fits, "case {case}: the split took a run that leaves i32");
            }
            let mut got = x.clone();
            let ok = lookup_mul_run(&mut got, k, lo, (&table, top, segments.as_ref()), mul);
            assert_eq!(ok, fits, "case {case}");
            if fits {
                let got: Vec<i64> = got.iter().map(|&v| v as i64).collect();
                assert_eq!(
                    got, want,
                    "case {case}: k {k}, lo {lo}, {mul:?}, x bits {xbits}"
                );
            }
        }
        assert!(split > 600, "only {split} runs took the split");
        assert!(knotted > 500, "only {knotted} tables had knots");
        // runs at the edge of i32: one entry ±(2^15 − 1), elements whose high part times it is just
        // below or past 2^31, with low parts that push the sum over
        for r in 0..=20 {
            let mul = Shift::new(r).expect("a right shift");
            for t in [32767, -32767] {
                let table = vec![t];
                let edge = (i32::MAX as i64 / 32767) << r.min(15);
                for d in -3i64..=3 {
                    for low in [0, (1i64 << r.min(15)) - 1] {
                        let v =
                            (edge + (d << r.min(15)) + low).clamp(i32::MIN as i64, i32::MAX as i64);
                        let x = vec![v as i32; 9];
                        let want = mul.apply(v * t as i64);
                        let mut got = x.clone();
                        let ok = lookup_mul_run(&mut got, 0, 0, (&table, Some(32767), None), mul);
                        assert_eq!(ok, i32::try_from(want).is_ok(), "r {r}, t {t}, x {v}");
                        if ok {
                            assert!(got.iter().all(|&g| g as i64 == want), "r {r}, t {t}, x {v}");
                        }
                    }
                }
            }
        }
    }

    /// `x · sigmoid(x)` as the compiler writes it (a `Lookup` of `x` and a `Mul` of `x` by it, `x` read by
    /// both) joins the chain of the node that computes `x` as one step, with the nodes after it; the
    /// fused run gives the reference's integers and, where a product leaves `i32`, its error at the `Mul`.
    /// The chain of node 0 of `m`, which must be a chain's head.
    fn head_chain(m: &Model) -> Chain {
        match &plan(m)[0] {
            Role::Head(c) => c.clone(),
            r => panic!("not a head: {r:?}"),
        }
    }

    /// `m` run on `x` in `mode`, an error as its message.
    fn run_on(m: &Model, x: &[i32], mode: crate::exec::Mode) -> Result<Vec<Vec<i32>>, String> {
        crate::exec::Executor::new(m, mode)
            .run(vec![x.to_vec()])
            .map_err(|e| e.to_string())
    }

    /// `n` values `f(r)` of the successive states `r` of a xorshift generator from `seed`.
    fn draws(seed: u64, n: usize, f: impl Fn(u64) -> i32) -> Vec<i32> {
        let mut r = seed;
        (0..n)
            .map(|_| {
                r ^= r << 13;
                r ^= r >> 7;
                r ^= r << 17;
                f(r)
            })
            .collect()
    }

    /// A table of `65` entries interpolated between 9 knots of a sigmoid (entries up to `top`) every
    /// 8 entries, as a compiler builds the tables of saturating functions: a table with
    /// [`Segments`].
    fn knotted_table(top: f64) -> Vec<i32> {
        let knots: Vec<i32> = (0..9)
            .map(|j| (top / (1.0 + (-(j as f64 - 4.0)).exp())).round() as i32)
            .collect();
        let mut t: Vec<i32> = knots
            .windows(2)
            .flat_map(|w| (0..8).map(move |l| w[0] + (((w[1] - w[0]) * l + 4) >> 3)))
            .collect();
        t.push(knots[8]);
        t
    }

    /// A model of one input `x` of `n` elements at scale 4, one constant `table` at `scale` (value 1),
    /// and `nodes` of `n` elements each (`(name, op, inputs, scale)`), the last one its output.
    fn table_model(
        n: u32,
        (table, scale): (&[i32], i8),
        nodes: &[(&str, Op, &[ValueId], i8)],
    ) -> Model {
        let m = Model {
            inputs: vec![Input {
                name: "x".into(),
                shape: vec![n],
                scale: 4,
                kind: InputKind::Fixed,
            }],
            consts: vec![Const {
                shape: vec![table.len() as u32],
                scale,
                data: table.to_vec().into(),
            }],
            nodes: nodes
                .iter()
                .map(|(name, op, inputs, scale)| Node {
                    name: (*name).into(),
                    op: op.clone(),
                    inputs: inputs.to_vec(),
                    shape: vec![n],
                    scale: *scale,
                })
                .collect(),
            outputs: vec![Output {
                name: "y".into(),
                value: 1 + nodes.len() as ValueId,
            }],
        };
        m.validate().expect("valid");
        m
    }

    /// A `Lookup` alone in a chain reads the same entries from a table's knots as by a gather.
    #[test]
    fn a_lookup_reads_a_knotted_table_as_its_entries() {
        let table = knotted_table(8192.0);
        let n = 4099u32;
        let m = table_model(
            n,
            (&table, 13),
            &[
                ("acc", Op::Rescale, &[0], 3),
                ("sigmoid", Op::Lookup { shift: 5, lo: -40 }, &[2, 1], 13),
                ("q", Op::Clamp { lo: 100, hi: 8000 }, &[3], 13),
            ],
        );
        let c = head_chain(&m);
        let Step::Lookup { segments, .. } = &c.steps[0].step else {
            panic!("{c:?}")
        };
        assert!(segments.is_some(), "the table's knots are found");
        // positions before, across and past the table
        let x = draws(0x9e37_79b9_7f4a_7c15, n as usize, |r| {
            ((r >> 48) as i32 - (1 << 15)) >> (r % 4)
        });
        let want = run_on(&m, &x, crate::exec::Mode::Reference).expect("runs");
        let distinct: std::collections::BTreeSet<i32> = want[0].iter().copied().collect();
        assert!(distinct.len() > 50, "{} distinct results", distinct.len());
        use crate::simd::Isa;
        for isa in [Isa::Avx512, Isa::Avx2, Isa::Base] {
            Isa::cap(isa);
            let got = run_on(&m, &x, crate::exec::Mode::Fast { threads: 1 });
            Isa::cap(Isa::Avx512);
            assert_eq!(got.expect("runs"), want, "{isa:?}");
        }
    }

    #[test]
    fn a_lookup_times_its_own_input_is_one_step_of_the_chain() {
        let knotted = knotted_table(1000.0);
        let table: Vec<i32> = (0..64).map(|i| (i * i * 37) % 1000 - 300).collect();
        // (a length past whole vector registers: the last elements go one by one)
        let n = 6003u32;
        // the table as it is (its largest entries positive) and negated, whose products leave i32
        // on the other side; a table interpolated between knots (read from them, not gathered)
        for (table_first, sign, knots) in [
            (false, 1, false),
            (true, 1, false),
            (false, -1, false),
            (false, 1, true),
        ] {
            let table: Vec<i32> = match knots {
                true => knotted.clone(),
                false => table.iter().map(|&t| sign * t).collect(),
            };
            let mul_inputs: &[ValueId] = if table_first { &[3, 2] } else { &[2, 3] };
            let clip = Op::Clamp {
                lo: -(1 << 28),
                hi: 1 << 28,
            };
            let m = table_model(
                n,
                (&table, 5),
                &[
                    ("acc", Op::Rescale, &[0], 3),
                    ("sigmoid", Op::Lookup { shift: 2, lo: -30 }, &[2, 1], 5),
                    ("silu", Op::Mul, mul_inputs, 6),
                    ("clip", clip, &[4], 6),
                ],
            );
            let c = head_chain(&m);
            assert_eq!(c.nodes, vec![1, 2, 3]);
            let Step::LookupMul { segments, .. } = &c.steps[0].step else {
                panic!("{c:?}")
            };
            assert_eq!(segments.is_some(), knots, "{c:?}");
            let run = |x: &[i32], mode| run_on(&m, x, mode);
            let x = draws(0x2545_f491_4f6c_dd1d, n as usize, |r| {
                ((r >> 40) as i32 - (1 << 23)) >> (r % 16)
            });
            let want = run(&x, crate::exec::Mode::Reference).expect("runs");
            // products of every sign, some clipped, most not
            let y = &want[0];
            assert!(y.iter().any(|&v| v < -99) && y.iter().any(|&v| v > 99));
            assert!(y.iter().filter(|v| v.abs() < 1 << 28).count() > y.len() / 2);
            // the vector forms of each instruction set and the plain loop
            use crate::simd::Isa;
            for isa in [Isa::Avx512, Isa::Avx2, Isa::Base] {
                Isa::cap(isa);
                let got = run(&x, crate::exec::Mode::Fast { threads: 1 });
                Isa::cap(Isa::Avx512);
                let got = got.expect("runs");
                let wrong = y.iter().zip(&got[0]).filter(|(a, b)| a != b).count();
                assert_eq!(wrong, 0, "{wrong} of {} elements differ ({isa:?})", y.len());
                // a product past i32 (the largest input times the largest entry), in an odd lane,
                // an even one and the last one
                for at in [4321, 4322, n as usize - 1] {
                    let mut x = x.clone();
                    x[at] = i32::MAX;
                    let want = run(&x, crate::exec::Mode::Reference);
                    assert!(want.as_ref().is_err_and(|e| e.contains("silu")), "{want:?}");
                    Isa::cap(isa);
                    let got = run(&x, crate::exec::Mode::Fast { threads: 1 });
                    Isa::cap(Isa::Avx512);
                    assert_eq!(got, want, "{isa:?}");
                }
            }
        }
    }

    /// A hard swish's `x · clamp(x + 3, 0, 6)` (the sum, the clamp and the product, `x` read twice) is
    /// one step of the chain of the node that makes `x`: the same integers as node by node on every
    /// instruction set, with the sum rescaled or not, the constant at a finer scale than `x` (the
    /// loop in `i64`), the product's operands in either order; a sum or a product past `i32` is the
    /// reference's error.
    #[test]
    fn a_hard_swish_is_one_step_of_the_chain() {
        // (a length past whole vector registers: the last elements go one by one)
        let n = 5003u32;
        let node = |name: &str, op: Op, inputs: Vec<ValueId>, scale: i8| Node {
            name: name.into(),
            op,
            inputs,
            shape: vec![n],
            scale,
        };
        let mut errors = 0;
        // (scale of x, of the constant, of the sum, of the clamp, of the product; the product's
        // operands swapped): as a compiled hard swish has them, all at one scale, the constant finer
        // than x, the clamp rescaling the sum, the sum rescaled far enough that a product of the
        // largest x fits where the sum does not
        for (sx, sc, sa, sr, sg, swap) in [
            (20, 20, 16, 16, 19, false),
            (16, 16, 16, 16, 16, true),
            (12, 16, 14, 14, 13, false),
            (20, 20, 18, 15, 17, false),
            (20, 20, 4, 4, 0, false),
        ] {
            let m = Model {
                inputs: vec![Input {
                    name: "x".into(),
                    shape: vec![n],
                    scale: sx,
                    kind: InputKind::Fixed,
                }],
                consts: vec![Const {
                    shape: vec![],
                    scale: sc,
                    data: vec![3 << sc].into(),
                }],
                nodes: vec![
                    node("acc", Op::Rescale, vec![0], sx),
                    node("shift", Op::Add, vec![2, 1], sa),
                    node("relu6", Op::Clamp { lo: 0, hi: 6 << sr }, vec![3], sr),
                    node(
                        "gate",
                        Op::Mul,
                        if swap { vec![4, 2] } else { vec![2, 4] },
                        sg,
                    ),
                    node(
                        "clip",
                        Op::Clamp {
                            lo: -(1 << 28),
                            hi: 1 << 28,
                        },
                        vec![5],
                        sg,
                    ),
                ],
                outputs: vec![Output {
                    name: "y".into(),
                    value: 6,
                }],
            };
            m.validate().expect("valid");
            let c = head_chain(&m);
            assert_eq!(c.nodes, vec![1, 2, 3, 4]);
            assert!(matches!(c.steps[0].step, Step::GateMul { .. }), "{c:?}");
            let run = |x: &[i32], mode| run_on(&m, x, mode);
            // values from −8 to 8, at the input's scale
            let x = draws(0x9e37_79b9_7f4a_7c15, n as usize, |r| {
                ((r >> 40) as i32 - (1 << 23)) >> (20 - sx)
            });
            let want = run(&x, crate::exec::Mode::Reference).expect("runs");
            // gated below −3, passed above 3, a curve between: all three met
            let one = 1 << sg;
            let y = &want[0];
            assert!(y.contains(&0) && y.iter().any(|&v| v > 4 * one));
            assert!(y.iter().any(|&v| v < 0));
            use crate::simd::Isa;
            for isa in [Isa::Avx512, Isa::Avx2, Isa::Base] {
                Isa::cap(isa);
                let got = run(&x, crate::exec::Mode::Fast { threads: 1 });
                Isa::cap(Isa::Avx512);
                let got = got.expect("runs");
                let wrong = y.iter().zip(&got[0]).filter(|(a, b)| a != b).count();
                assert_eq!(
                    wrong,
                    0,
                    "{wrong} of {} elements differ ({isa:?}, x at {sx})",
                    y.len()
                );
                // a sum or a product past i32 (a sum past it gated to 0 too), in an odd lane, an
                // even one and the last one
                for (at, v) in [4321, 4322, n as usize - 1]
                    .into_iter()
                    .flat_map(|at| [(at, i32::MAX - 1), (at, i32::MIN + 1)])
                {
                    let mut x = x.clone();
                    x[at] = v;
                    let want = run(&x, crate::exec::Mode::Reference);
                    errors += want.is_err() as usize;
                    Isa::cap(isa);
                    let got = run(&x, crate::exec::Mode::Fast { threads: 1 });
                    Isa::cap(Isa::Avx512);
                    assert!(
                        got == want,
                        "{isa:?}, x at {sx}, {v} at {at}: {:?}",
                        got.err()
                    );
                }
            }
        }
        // the largest x leaves i32 in its sum or its product but where the sum is rescaled far
        // (the large negative one is gated to 0): on every instruction set
        assert_eq!(errors, 4 * 3 * 3);
    }

    /// The gate's lanes against its definition over short blocks (every tail length), sums and clamps
    /// rescaled or not, clamps of either sign, products shifted below, at and above 32.
    #[test]
    fn gate_lanes_equal_the_definition() {
        let mut next = crate::kernels::tests::xorshift(0xbb67_ae85_84ca_a73b);
        let mut compared = 0;
        for case in 0..4000 {
            let len = (next() % 40) as usize;
            let mx = 1i64 << (8 + next() % 16);
            let x: Vec<i32> = (0..len)
                .map(|_| ((next() % (2 * mx as u64 + 1)) as i64 - mx) as i32)
                .collect();
            let sh = |k: u64| Shift::new(k as i32).expect("in range");
            let (add, shift, mul) = (sh(next() % 6), sh(next() % 4), sh(next() % 40));
            let c = (next() % (1 << 20)) as i64 - (1 << 19);
            let lo = -((next() % (1 << 12)) as i64) * (case % 2);
            let hi = lo + (next() % (1 << 14)) as i64;
            let want: Option<Vec<i32>> = x
                .iter()
                .map(|&v| {
                    let t = add.apply(v as i64 + c);
                    let g = shift.apply(t).clamp(lo, hi);
                    i32::try_from(mul.apply(v as i64 * g)).ok()
                })
                .collect();
            let mut got = x.clone();
            let ok = gate_mul_run(&mut got, (0, c, add), (shift, lo, hi), mul);
            match want {
                Some(want) => {
                    assert!(ok, "case {case}");
                    assert_eq!(got, want, "case {case}");
                    compared += 1;
                }
                None => assert!(!ok, "case {case}"),
            }
        }
        assert!(compared > 2000, "{compared}");
    }

    #[test]
    fn operands_index_as_broadcasting_does() {
        let o = operand(0, &[1, 3, 1, 1], &[2, 3, 4, 5]).expect("per channel");
        assert_eq!((o.inner, o.period), (20, 3));
        let o = operand(0, &[5], &[2, 3, 4, 5]).expect("last axis");
        assert_eq!((o.inner, o.period), (1, 5));
        let o = operand(0, &[], &[2, 3]).expect("scalar");
        assert_eq!((o.inner, o.period), (6, 1));
        let o = operand(0, &[2, 3], &[2, 3]).expect("same shape");
        assert_eq!((o.inner, o.period), (1, 6));
        // two separate varying runs, or a broadcast axis inside the run: not one (inner, period)
        assert!(operand(0, &[2, 1, 4], &[2, 3, 4]).is_none());
        assert!(operand(0, &[3, 1], &[3, 4]).is_some());
        assert!(operand(0, &[4, 3], &[2, 3]).is_none());
    }
}
