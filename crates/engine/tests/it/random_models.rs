//! Random single-node models with random parameters, scales and extreme values: whatever passes
//! validation runs without panicking, and the fast and reference executors agree.

use proptest::prelude::*;
use verity_engine::ir::*;
use verity_engine::simd::Isa;
use verity_engine::{Executor, Mode};

use crate::{gen, input};

fn check(m: &Model, inputs: Vec<Vec<i32>>) -> Result<(), TestCaseError> {
    if m.validate().is_err() {
        return Ok(());
    }
    crate::onestep::agrees(m, inputs.clone());
    let r = Executor::new(m, Mode::Reference).run(inputs.clone());
    for mode in [Mode::Fast { threads: 1 }, Mode::Fast { threads: 2 }] {
        let f = Executor::new(m, mode).run(inputs.clone());
        match (&r, &f) {
            (Ok(a), Ok(b)) => prop_assert_eq!(a, b),
            (Err(_), Err(_)) => {}
            _ => prop_assert!(
                false,
                "reference {r:?} vs fast {f:?} for {:?}",
                m.nodes[0].op
            ),
        }
    }
    Ok(())
}

fn unary_op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (any::<i32>(), any::<i32>()).prop_map(|(a, b)| Op::Clamp {
            lo: a.min(b),
            hi: a.max(b)
        }),
        (any::<i32>(), -20i8..40).prop_map(|(alpha_q, alpha_scale)| Op::LeakyRelu {
            alpha_q,
            alpha_scale
        }),
        Just(Op::Rescale),
        Just(Op::Sqrt),
        Just(Op::Rsqrt),
        Just(Op::Recip),
        Just(Op::Reshape),
        Just(Op::Transpose { perm: vec![1, 0] }),
        (0u32..2, 0u32..3, 1u32..4).prop_map(|(axis, start, step)| Op::Slice {
            axis,
            start,
            end: 2,
            step
        }),
        prop::sample::subsequence(vec![0u32, 1], 1..=2).prop_flat_map(|axes| {
            prop_oneof![
                Just(ReduceKind::Sum),
                Just(ReduceKind::Mean),
                Just(ReduceKind::Max),
                Just(ReduceKind::Min)
            ]
            .prop_map(move |kind| Op::Reduce {
                kind,
                axes: axes.clone(),
            })
        }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn unary_ops(op in unary_op(), si in -40i8..45, so in -40i8..45, seed in any::<u64>(), mag in prop::sample::select(vec![16, 1 << 16, i32::MAX])) {
        let shape = match &op {
            Op::Reshape => vec![3, 2],
            Op::Transpose { .. } => vec![3, 2],
            Op::Slice { axis, start, step, .. } => {
                let mut s = vec![2, 3];
                s[*axis as usize] = (2 - (*start).min(2)).div_ceil(*step);
                s
            }
            Op::Reduce { axes, .. } => (0..2).map(|i| if axes.contains(&i) { 1 } else { [2, 3][i as usize] }).collect(),
            _ => vec![2, 3],
        };
        let m = Model::one_node(vec![input("x", vec![2, 3], si)], vec![], op, vec![0], shape, so);
        check(&m, vec![gen(seed, mag)(6)])?;
    }

    #[test]
    fn binary_ops(k in 0usize..6, bshape in prop::sample::select(vec![vec![3u32], vec![1], vec![2, 3], vec![2, 1]]),
                  sa in -40i8..45, sb in -40i8..45, so in -40i8..45, seed in any::<u64>(),
                  mag in prop::sample::select(vec![16, 1 << 16, i32::MAX])) {
        let op = [Op::Add, Op::Sub, Op::Mul, Op::Div, Op::Max, Op::Min][k].clone();
        let nb = bshape.iter().product::<u32>() as usize;
        let m = Model::one_node(vec![input("a", vec![2, 3], sa), input("b", bshape, sb)], vec![], op, vec![0, 1], vec![2, 3], so);
        let mut g = gen(seed, mag);
        check(&m, vec![g(6), g(nb)])?;
    }

    #[test]
    fn table_ops(len in 1usize..40, shift in -70i32..70, lo in any::<i32>(), si in -40i8..45, so in 0i8..31,
                 axis in 0u32..2, seed in any::<u64>(), mag in prop::sample::select(vec![16, 1 << 16, i32::MAX])) {
        let mut g = gen(seed, mag);
        let table: Vec<i32> = g(len);
        let x = g(6);
        let m = Model::one_node(vec![input("x", vec![2, 3], si)], vec![Const { shape: vec![len as u32], scale: so, data: table.clone().into() }],
            Op::Lookup { shift, lo }, vec![0, 1], vec![2, 3], so);
        check(&m, vec![x.clone()])?;
        let positive: Vec<i32> = table.iter().map(|v| v.saturating_abs()).collect();
        let m = Model::one_node(vec![input("x", vec![2, 3], si)], vec![Const { shape: vec![len as u32], scale: 30, data: positive.into() }],
            Op::Softmax { axis, shift, lo }, vec![0, 1], vec![2, 3], so);
        check(&m, vec![x])?;
    }

    #[test]
    fn pools_and_shape_ops(k in [1u32..4, 1u32..4], s in [1u32..3, 1u32..3], d in [1u32..3, 1u32..3], p in [0u32..4, 0u32..4, 0u32..4, 0u32..4],
                           cip in any::<bool>(), si in -10i8..30, so in -10i8..30, seed in any::<u64>(),
                           mag in prop::sample::select(vec![16, 1 << 16, i32::MAX])) {
        let window = Window { kernel: k, stride: s, dilation: d, pads: p };
        let mut g = gen(seed, mag);
        let x = g(2 * 2 * 5 * 5);
        if let Some((oh, ow)) = window.output_hw(5, 5) {
            for op in [Op::MaxPool2d { window }, Op::AvgPool2d { window, count_include_pad: cip }] {
                let m = Model::one_node(vec![input("x", vec![2, 2, 5, 5], si)], vec![], op, vec![0], vec![2, 2, oh, ow], so);
                check(&m, vec![x.clone()])?;
            }
        }
        // concat, broadcast and gather with integer indices (some out of range)
        let m = Model {
            inputs: vec![input("a", vec![2, 3], si), input("b", vec![2, 2], so)],
            consts: vec![],
            nodes: vec![Node { name: "c".into(), op: Op::Concat { axis: 1 }, inputs: vec![0, 1], shape: vec![2, 5], scale: so }],
            outputs: vec![Output { name: "y".into(), value: 2 }],
        };
        check(&m, vec![g(6), g(4)])?;
        let m = Model::one_node(vec![input("a", vec![1, 3], si)], vec![], Op::Broadcast, vec![0], vec![4, 2, 3], so);
        check(&m, vec![g(3)])?;
        let idx = Input { name: "i".into(), shape: vec![3], scale: 0, kind: InputKind::Int };
        let m = Model::one_node(vec![idx], vec![Const { shape: vec![4, 2], scale: si, data: g(8).into() }], Op::Gather { axis: 0 }, vec![1, 0], vec![3, 2], so);
        check(&m, vec![gen(seed, 5)(3)])?;
    }
}

/// One element-wise node of a random chain: `(kind, operand, chain on the left, clamp bounds)`.
type ChainStep = (usize, usize, bool, (i32, i32));

fn chain_step() -> impl Strategy<Value = ChainStep> {
    (
        0usize..9,
        0usize..6,
        any::<bool>(),
        (any::<i32>(), any::<i32>()),
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Chains of element-wise nodes (which the fast executor runs fused, in place, block by block) give
    /// the reference's integers, and the same error at the same node when a step leaves `i32`; among
    /// them a value's table lookup followed by its product with the value (one fused step).
    #[test]
    fn fused_chains_equal_reference(steps in prop::collection::vec((chain_step(), -12i8..40), 1..7),
                                    head in 0usize..4,
                                    si in -8i8..30, sr in -8i8..30, s0 in -8i8..30, seed in any::<u64>(),
                                    extra_output in prop::option::of(0usize..6),
                                    mag in prop::sample::select(vec![16, 300, 1 << 16, i32::MAX])) {
        let mut g = gen(seed, mag);
        // 8-bit weights, so that 8-bit inputs (mag 16) take the 8-bit kernels, which run the chain row by row
        let mut gw = gen(seed ^ 1, 100);
        let shape = vec![2u32, 3, 4, 1];
        let consts = vec![
            Const { shape: shape.clone(), scale: 6, data: g(24).into() },
            Const { shape: vec![1, 3, 1, 1], scale: 20, data: g(3).into() },
            Const { shape: vec![4, 1], scale: 2, data: g(4).into() },
            Const { shape: vec![1], scale: 0, data: g(1).into() },
            Const { shape: vec![17], scale: 5, data: g(17).into() },
            Const { shape: vec![4, 4], scale: 3, data: gw(16).into() },
            Const { shape: vec![3, 3, 3, 1], scale: 3, data: gw(27).into() },
            Const { shape: vec![3, 1, 3, 1], scale: 3, data: gw(9).into() },
        ];
        let window = Window { kernel: [3, 1], stride: [1, 1], dilation: [1, 1], pads: [1, 0, 1, 0] };
        // values: 0 x, 1 r, 2..=9 constants, then nodes; the head is an Add, an EinSum, a convolution or a
        // depthwise convolution
        let (op, inputs) = match head {
            0 => (Op::Add, vec![0, 1]),
            1 => (Op::EinSum { a: vec![0, 1, 2, 3], b: vec![2, 4], out: vec![0, 1, 4, 3] }, vec![0, 7]),
            2 => (Op::Conv2d { window, groups: 1 }, vec![0, 8]),
            _ => (Op::Conv2d { window, groups: 3 }, vec![0, 9]),
        };
        let mut nodes = vec![Node { name: "head".into(), op, inputs, shape: shape.clone(), scale: s0 }];
        for (i, ((kind, operand, left, (a, b)), so)) in steps.iter().enumerate() {
            // the value the step reads: the last node's
            let v = 9 + nodes.len() as u32;
            let w = [0u32, 1, 2, 3, 4, 5][*operand];
            if *kind == 4 && *left {
                // a table of the value, then the value times it (x · sigmoid(x)): the value's two readers
                let lookup = Op::Lookup { shift: (*a % 20), lo: *b % 1000 };
                nodes.push(Node { name: format!("step{i}.table"), op: lookup, inputs: vec![v, 6], shape: shape.clone(), scale: 5 });
                let inputs = if *operand % 2 == 0 { vec![v, v + 1] } else { vec![v + 1, v] };
                nodes.push(Node { name: format!("step{i}"), op: Op::Mul, inputs, shape: shape.clone(), scale: *so });
                continue;
            }
            let (op, inputs) = match kind {
                0 => (Op::Clamp { lo: (*a).min(*b), hi: (*a).max(*b) }, vec![v]),
                1 => (Op::Clamp { lo: 0, hi: 255 }, vec![v]),
                2 => (Op::Rescale, vec![v]),
                3 => (Op::Reshape, vec![v]),
                4 => (Op::Lookup { shift: (*a % 20), lo: *b % 1000 }, vec![v, 6]),
                k => {
                    let op = [Op::Add, Op::Sub, Op::Mul, Op::Max, Op::Min, Op::Mul][(k - 5 + *operand) % 6].clone();
                    (op, if *left { vec![v, w] } else { vec![w, v] })
                }
            };
            let scale = if *kind == 4 { 5 } else { *so };
            nodes.push(Node { name: format!("step{i}"), op, inputs, shape: shape.clone(), scale });
        }
        let last = 9 + nodes.len() as u32;
        let mut outputs = vec![Output { name: "y".into(), value: last }];
        if let Some(e) = extra_output.filter(|&e| 10 + (e as u32) < last) {
            outputs.push(Output { name: "mid".into(), value: 10 + e as u32 });
        }
        let m = Model { inputs: vec![input("x", shape.clone(), si), input("r", shape.clone(), sr)], consts, nodes, outputs };
        if m.validate().is_err() {
            return Ok(());
        }
        let xs = vec![g(24), g(24)];
        let r = Executor::new(&m, Mode::Reference).run(xs.clone());
        // each instruction-set level of the fused loops (a cap of this thread's, carried into the
        // threads its runs split across: other tests running meanwhile keep theirs)
        for (threads, isa) in [(1, Isa::Base), (1, Isa::Avx2), (1, Isa::Avx512), (2, Isa::Avx512)] {
            Isa::cap(isa);
            let f = Executor::new(&m, Mode::Fast { threads }).run(xs.clone());
            Isa::cap(Isa::Avx512);
            match (&r, &f) {
                (Ok(a), Ok(b)) => prop_assert_eq!(a, b),
                (Err(a), Err(b)) => prop_assert_eq!(a.to_string(), b.to_string()),
                _ => prop_assert!(false, "reference {r:?} vs fast {f:?}"),
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]
    /// `Div` whose numerator is scaled up by 21 to 30 bits (RMSNorm's `x / max|x|` at scale 30): the
    /// fast path's f64 quotient of a numerator past 2^53, corrected once, equals the exact division,
    /// and quotients that leave `i32` are the same error.
    #[test]
    fn divisions_scaled_up_by_up_to_30_bits(e in 21i8..=30, sb in -10i8..20, seed in any::<u64>(),
                                           mag in prop::sample::select(vec![1 << 8, 1 << 20, i32::MAX]),
                                           small in any::<bool>()) {
        let (sa, so) = (sb, sb + e);
        let m = Model::one_node(vec![input("a", vec![4, 8], sa), input("b", vec![4, 1], sb)], vec![],
                                Op::Div, vec![0, 1], vec![4, 8], so);
        prop_assert!(m.validate().is_ok());
        let mut g = gen(seed, mag);
        let a = g(32);
        // divisors at least as large as the numerators (quotients in range), or anything
        let b: Vec<i32> = g(4).into_iter().map(|v| if small { v } else { v.saturating_abs().max(1) | (1 << 30) }).collect();
        check(&m, vec![a, b])?;
    }
}
