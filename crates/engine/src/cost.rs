//! The cost of one inference, computed from a model's structure alone (shapes are static), before any
//! input is seen: how much arithmetic it does and how much memory the executor holds at its peak. A node
//! refuses models over its limits with these figures, so a tiny file that describes a huge computation
//! is turned away when it is published instead of when it is run.
//!
//! Every figure is an upper bound of what the fast executor does, in exact integers (saturating at
//! `u64::MAX`), and the same on every machine.

use serde::{Deserialize, Serialize};

use crate::ir::{numel, Model, Op, ReduceKind};

/// Bytes of one element of an intermediate tensor (the executor holds values as `i32`).
const ELEM: u64 = 4;

/// What one inference of a model costs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cost {
    /// Multiply-accumulates of the contractions (`EinSum`, `Conv2d`).
    pub macs: u64,
    /// Element operations of every other op (one per output element, times the window or reduced
    /// extent where an output element reads many inputs).
    pub element_ops: u64,
    /// Bytes of the constants as the executor holds them (`i32` each).
    pub const_bytes: u64,
    /// Peak bytes of live intermediates (inputs included) when no trace is kept: each value is freed
    /// after its last reader, plus the largest per-node working buffer (packed operands, patches).
    pub peak_bytes: u64,
    /// Peak bytes when the full trace is kept (every input and node output, for a receipt's trace root or
    /// a dispute), plus the largest working buffer.
    pub traced_peak_bytes: u64,
    /// Bytes of the trace itself (inputs and node outputs).
    pub trace_bytes: u64,
    /// Elements of the largest single tensor.
    pub largest_tensor: u64,
}

impl Cost {
    /// The cost of one inference of `m`.
    pub fn of(m: &Model) -> Cost {
        let mut c = Cost {
            const_bytes: m.consts.iter().fold(0u64, |s, k| {
                s.saturating_add(numel(&k.shape).saturating_mul(ELEM))
            }),
            ..Cost::default()
        };
        let shape_of = |v: u32| m.value(v).map(|i| i.shape.to_vec()).unwrap_or_default();
        // last reader of every value (outputs live to the end)
        let last = m.last_uses();
        let first = m.first_node_value();
        let bytes = |v: u32| numel(&shape_of(v)).saturating_mul(ELEM);
        let inputs: u64 = (0..m.inputs.len() as u32).fold(0, |s, v| s.saturating_add(bytes(v)));
        let (mut live, mut all) = (inputs, inputs);
        let (mut peak, mut work_peak) = (inputs, 0u64);
        for v in 0..m.inputs.len() as u32 {
            c.largest_tensor = c.largest_tensor.max(numel(&shape_of(v)));
        }
        for (k, node) in m.nodes.iter().enumerate() {
            let out = numel(&node.shape);
            c.largest_tensor = c.largest_tensor.max(out);
            let in_elems = |i: usize| node.inputs.get(i).map_or(0, |&v| numel(&shape_of(v)));
            let is_const = |i: usize| {
                node.inputs
                    .get(i)
                    .is_some_and(|&v| (v as usize) >= m.inputs.len() && (v as usize) < first)
            };
            let (macs, ops, work) = match &node.op {
                Op::EinSum { a, b, out: o } => {
                    // every distinct label once: the product of all label sizes
                    let mut size = [0u64; 256];
                    for (labels, v) in [(a, node.inputs.first()), (b, node.inputs.get(1))] {
                        let s = v.map(|&v| shape_of(v)).unwrap_or_default();
                        for (&l, &d) in labels.iter().zip(&s) {
                            size[l as usize] = size[l as usize].max(d as u64);
                        }
                    }
                    for (&l, &d) in o.iter().zip(&node.shape) {
                        size[l as usize] = size[l as usize].max(d as u64);
                    }
                    let macs = size
                        .iter()
                        .filter(|&&d| d > 0)
                        .fold(1u64, |p, &d| p.saturating_mul(d));
                    // operands repacked (non-constant ones, as i32 or bytes) and the i64 accumulator
                    let packed = (0..2).filter(|&i| !is_const(i)).fold(0u64, |s, i| {
                        s.saturating_add(in_elems(i).saturating_mul(ELEM))
                    });
                    (macs, out, packed.saturating_add(out.saturating_mul(8)))
                }
                Op::Conv2d { .. } => {
                    let w = node.inputs.get(1).map(|&v| shape_of(v)).unwrap_or_default();
                    // per output element: C/groups · kh · kw
                    let per = w
                        .iter()
                        .skip(1)
                        .fold(1u64, |p, &d| p.saturating_mul(d as u64));
                    let hw = node
                        .shape
                        .iter()
                        .skip(2)
                        .fold(1u64, |p, &d| p.saturating_mul(d as u64));
                    // patches of one image and group (as i32) and the accumulator
                    let patches = per.saturating_mul(hw).saturating_mul(ELEM);
                    (
                        out.saturating_mul(per),
                        out,
                        patches.saturating_add(out.saturating_mul(8)),
                    )
                }
                Op::MaxPool2d { window } | Op::AvgPool2d { window, .. } => {
                    let k = window.kernel[0] as u64 * window.kernel[1] as u64;
                    (0, out.saturating_mul(k), 0)
                }
                Op::Reduce { kind, .. } => {
                    let n = in_elems(0);
                    let f = if *kind == ReduceKind::Sum { 1 } else { 2 };
                    (0, n.saturating_mul(f).max(out), 0)
                }
                Op::Softmax { .. } => (0, out.saturating_mul(4), out.saturating_mul(8)),
                _ => (0, out.max(in_elems(0)), 0),
            };
            c.macs = c.macs.saturating_add(macs);
            c.element_ops = c.element_ops.saturating_add(ops);
            work_peak = work_peak.max(work);
            let ob = out.saturating_mul(ELEM);
            live = live.saturating_add(ob);
            all = all.saturating_add(ob);
            peak = peak.max(live.saturating_add(work));
            for (j, &v) in node.inputs.iter().enumerate() {
                // a value read twice by its last reader is freed once
                let fresh = !node.inputs[..j].contains(&v);
                let u = v as usize;
                if fresh && (u < m.inputs.len() || u >= first) && last.get(u) == Some(&k) {
                    live = live.saturating_sub(bytes(v));
                }
            }
        }
        c.peak_bytes = peak;
        c.trace_bytes = all;
        c.traced_peak_bytes = all.saturating_add(work_peak);
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::{Const, Input, InputKind, Node, Output};

    fn input(shape: Vec<u32>) -> Input {
        Input {
            name: "x".into(),
            shape,
            scale: 0,
            kind: InputKind::Fixed,
        }
    }

    #[test]
    fn a_linear_layer_costs_its_products_and_its_live_tensors() {
        // x[1,64] · w[64,32] → h[1,32]; h + h → y
        let m = Model {
            inputs: vec![input(vec![1, 64])],
            consts: vec![Const {
                shape: vec![64, 32],
                scale: 0,
                data: vec![1; 64 * 32].into(),
            }],
            nodes: vec![
                Node {
                    name: "mm".into(),
                    op: Op::EinSum {
                        a: b"ik".to_vec(),
                        b: b"kj".to_vec(),
                        out: b"ij".to_vec(),
                    },
                    inputs: vec![0, 1],
                    shape: vec![1, 32],
                    scale: 0,
                },
                Node {
                    name: "add".into(),
                    op: Op::Add,
                    inputs: vec![2, 2],
                    shape: vec![1, 32],
                    scale: 0,
                },
            ],
            outputs: vec![Output {
                name: "y".into(),
                value: 3,
            }],
        };
        m.validate().unwrap();
        let c = Cost::of(&m);
        assert_eq!(c.macs, 64 * 32);
        assert_eq!(c.element_ops, 32 + 32);
        assert_eq!(c.const_bytes, 64 * 32 * 4);
        assert_eq!(c.trace_bytes, (64 + 32 + 32) * 4);
        assert_eq!(c.largest_tensor, 64);
        // untraced: x and h live while mm runs (plus its packed operand and accumulator); x is freed
        // after mm, h after add
        let mm_work = 64 * 4 + 32 * 8;
        assert_eq!(c.peak_bytes, (64 + 32) * 4 + mm_work);
        assert_eq!(c.traced_peak_bytes, c.trace_bytes + mm_work);
        assert!(c.peak_bytes <= c.traced_peak_bytes);
    }

    #[test]
    fn a_tiny_model_describing_a_huge_computation_shows_it() {
        // one element broadcast to 16384², then multiplied by itself: a few hundred bytes of model
        let n = 16384u32;
        let m = Model {
            inputs: vec![input(vec![1, 1])],
            consts: vec![],
            nodes: vec![
                Node {
                    name: "b".into(),
                    op: Op::Broadcast,
                    inputs: vec![0],
                    shape: vec![n, n],
                    scale: 0,
                },
                Node {
                    name: "mm".into(),
                    op: Op::EinSum {
                        a: b"ik".to_vec(),
                        b: b"kj".to_vec(),
                        out: b"ij".to_vec(),
                    },
                    inputs: vec![1, 1],
                    shape: vec![n, n],
                    scale: 0,
                },
            ],
            outputs: vec![Output {
                name: "y".into(),
                value: 2,
            }],
        };
        m.validate().unwrap();
        let c = Cost::of(&m);
        assert_eq!(c.macs, (n as u64).pow(3));
        assert_eq!(c.largest_tensor, (n as u64).pow(2));
        assert!(c.peak_bytes >= 2 * 4 * (n as u64).pow(2));
        assert!(crate::vty::encode(&m).len() < 300);
    }
}
