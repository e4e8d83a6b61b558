//! One-node models for the op paths the fixtures do not reach (broadcasts, shape ops, pads, both clamp
//! bounds, max/min, gathers by constant indices, mean and max reductions, rescales in both directions):
//! each proves and verifies against the canonical executor's output on several random inputs, and a
//! changed output is refused.

use verity_engine::ir::{Const, Input, InputKind, Model, Op, ReduceKind, Window};
use verity_engine::vty::model_id;
use verity_engine::{Executor, Mode};
use verity_zk::{keygen, prove, verify};

fn input(shape: Vec<u32>, scale: i8) -> Input {
    Input {
        name: "x".into(),
        shape,
        scale,
        kind: InputKind::Fixed,
    }
}

fn konst(shape: Vec<u32>, scale: i8, data: Vec<i32>) -> Const {
    Const {
        shape,
        scale,
        data: data.into(),
    }
}

/// Deterministic pseudo-random values in [-amp, amp].
fn values(n: usize, seed: u64, amp: i64) -> Vec<i32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s % (2 * amp as u64 + 1)) as i64 - amp) as i32
        })
        .collect()
}

fn check(model: Model, amp: i64) {
    model.validate().expect("valid model");
    let id = model_id(&model);
    let pk = keygen(&model, id).expect("keygen");
    let vk = pk.verifying_key();
    let exec = Executor::new(&model, Mode::Reference);
    for seed in 1..=3u64 {
        let x: Vec<Vec<i32>> = model
            .inputs
            .iter()
            .enumerate()
            .map(|(i, inp)| {
                let n: usize = inp.shape.iter().map(|&d| d as usize).product();
                values(n, seed * 7 + i as u64, amp)
            })
            .collect();
        let want = exec.run(x.clone()).expect("runs");
        let (y, proof) = prove(&pk, &x).expect("prove");
        assert_eq!(y, want, "{:?}", model.nodes[0].op);
        verify(&model, &vk, &x, &y, &proof).expect("verifies");
        let mut bad = y.clone();
        let at = seed as usize % bad[0].len();
        bad[0][at] -= 1;
        assert!(verify(&model, &vk, &x, &bad, &proof).is_err());
    }
}

#[test]
fn broadcast_arithmetic_with_rescales() {
    for (op, scale) in [(Op::Add, 8), (Op::Sub, 6), (Op::Mul, 8), (Op::Add, 10)] {
        let m = Model::one_node(
            vec![input(vec![2, 3, 4], 8)],
            vec![konst(vec![3, 1], 4, values(3, 9, 100))],
            op,
            vec![0, 1],
            vec![2, 3, 4],
            scale,
        );
        check(m, 3000);
    }
}

#[test]
fn extremes_and_clamps() {
    for op in [Op::Max, Op::Min] {
        let m = Model::one_node(
            vec![input(vec![3, 5], 8)],
            vec![konst(vec![5], 8, values(5, 4, 500))],
            op,
            vec![0, 1],
            vec![3, 5],
            8,
        );
        check(m, 1000);
    }
    for (lo, hi, out_scale) in [(-200, 300, 8), (0, i32::MAX, 6), (i32::MIN, 50, 8)] {
        let m = Model::one_node(
            vec![input(vec![4, 6], 8)],
            vec![],
            Op::Clamp { lo, hi },
            vec![0],
            vec![4, 6],
            out_scale,
        );
        check(m, 1000);
    }
}

#[test]
fn shape_ops_and_gathers() {
    // (op, input shape, output shape, constants, node inputs)
    type Case = (Op, Vec<u32>, Vec<u32>, Vec<Const>, Vec<u32>);
    let cases: Vec<Case> = vec![
        (
            Op::Transpose {
                perm: vec![2, 0, 1],
            },
            vec![2, 3, 5],
            vec![5, 2, 3],
            vec![],
            vec![0],
        ),
        (Op::Reshape, vec![2, 3, 5], vec![6, 5], vec![], vec![0]),
        (
            Op::Slice {
                axis: 1,
                start: 1,
                end: 7,
                step: 2,
            },
            vec![2, 7],
            vec![2, 3],
            vec![],
            vec![0],
        ),
        (Op::Broadcast, vec![3, 1], vec![2, 3, 4], vec![], vec![0]),
        (
            Op::Concat { axis: 1 },
            vec![2, 3],
            vec![2, 5],
            vec![konst(vec![2, 2], 8, values(4, 3, 100))],
            vec![0, 1],
        ),
        (
            Op::Gather { axis: 0 },
            vec![5, 3],
            vec![4, 3],
            vec![konst(vec![4], 0, vec![4, 0, -1, 2])],
            vec![0, 1],
        ),
    ];
    for (op, ishape, oshape, consts, ins) in cases {
        let m = Model::one_node(vec![input(ishape, 8)], consts, op, ins, oshape, 8);
        check(m, 5000);
    }
}

#[test]
fn pooling_with_pads_and_reductions() {
    let w = Window {
        kernel: [3, 3],
        stride: [2, 2],
        dilation: [1, 1],
        pads: [1, 1, 1, 0],
    };
    for op in [
        Op::MaxPool2d { window: w },
        Op::AvgPool2d {
            window: w,
            count_include_pad: false,
        },
        Op::AvgPool2d {
            window: w,
            count_include_pad: true,
        },
    ] {
        let m = Model::one_node(
            vec![input(vec![1, 2, 5, 6], 8)],
            vec![],
            op,
            vec![0],
            vec![1, 2, 3, 3],
            8,
        );
        check(m, 2000);
    }
    for (kind, scale) in [
        (ReduceKind::Sum, 6),
        (ReduceKind::Mean, 8),
        (ReduceKind::Max, 8),
        (ReduceKind::Min, 7),
    ] {
        let m = Model::one_node(
            vec![input(vec![3, 4, 5], 8)],
            vec![],
            Op::Reduce {
                kind,
                axes: vec![0, 2],
            },
            vec![0],
            vec![1, 4, 1],
            scale,
        );
        check(m, 2000);
    }
}

#[test]
fn contractions_with_batch_and_bias() {
    // batched matrix product with a bias, and a convolution with groups, stride and dilation
    let m = Model::one_node(
        vec![input(vec![2, 3, 4], 8)],
        vec![
            konst(vec![2, 4, 5], 8, values(40, 5, 200)),
            konst(vec![5], 16, values(5, 6, 3000)),
        ],
        Op::EinSum {
            a: b"bik".to_vec(),
            b: b"bkj".to_vec(),
            out: b"bij".to_vec(),
        },
        vec![0, 1, 2],
        vec![2, 3, 5],
        8,
    );
    check(m, 500);
    let m = Model::one_node(
        vec![input(vec![1, 4, 7, 6], 8)],
        vec![konst(vec![6, 2, 3, 2], 8, values(72, 7, 100))],
        Op::Conv2d {
            window: Window {
                kernel: [3, 2],
                stride: [2, 1],
                dilation: [1, 2],
                pads: [1, 0, 0, 1],
            },
            groups: 2,
        },
        vec![0, 1],
        vec![1, 6, 3, 5],
        8,
    );
    check(m, 500);
}

#[test]
fn softmax_on_an_inner_axis_and_lookups_with_shifts() {
    let exp: Vec<i32> = (0..64).map(|i| (i * i + 3 * i + 1) * 16).collect();
    let m = Model::one_node(
        vec![input(vec![2, 5, 3], 8)],
        vec![konst(vec![64], 12, exp)],
        Op::Softmax {
            axis: 1,
            shift: 2,
            lo: -63,
        },
        vec![0, 1],
        vec![2, 5, 3],
        12,
    );
    check(m, 300);
    let table: Vec<i32> = (0..40).map(|i| 1000 - 37 * i).collect();
    let m = Model::one_node(
        vec![input(vec![3, 7], 8)],
        vec![konst(vec![40], 8, table)],
        Op::Lookup { shift: 3, lo: -20 },
        vec![0, 1],
        vec![3, 7],
        8,
    );
    check(m, 400);
}

#[test]
fn leaky_relu_on_both_signs_with_rescales() {
    for (alpha_q, alpha_scale, out_scale) in [(13, 7, 8), (-3, 2, 6), (200, 10, 9)] {
        let m = Model::one_node(
            vec![input(vec![5, 6], 8)],
            vec![],
            Op::LeakyRelu {
                alpha_q,
                alpha_scale,
            },
            vec![0],
            vec![5, 6],
            out_scale,
        );
        check(m, 3000);
    }
}

#[test]
fn reciprocals_of_both_signs() {
    // e = so + s_in: 16 (small outputs), 32 (the usual 16/16 scales), −2 (a shifted divisor)
    for (in_scale, out_scale) in [(8, 8), (16, 16), (4, -6)] {
        let m = Model::one_node(
            vec![input(vec![4, 5], in_scale)],
            vec![],
            Op::Recip,
            vec![0],
            vec![4, 5],
            out_scale,
        );
        model_check_nonzero(m);
    }
}

/// [`check`] with inputs that are never zero and whose reciprocals fit.
fn model_check_nonzero(model: Model) {
    model.validate().expect("valid model");
    let pk = keygen(&model, model_id(&model)).expect("keygen");
    let exec = Executor::new(&model, Mode::Reference);
    for seed in 1..=3u64 {
        let x: Vec<Vec<i32>> = vec![values(20, seed, 40000)
            .into_iter()
            .map(|v| match v {
                -299..=-1 => -300,
                0..=299 => 300,
                _ => v,
            })
            .collect()];
        let want = exec.run(x.clone()).expect("runs");
        let (y, proof) = prove(&pk, &x).expect("prove");
        assert_eq!(y, want);
        verify(&model, &pk.verifying_key(), &x, &y, &proof).expect("verifies");
        let mut bad = y.clone();
        bad[0][1] += 1;
        assert!(verify(&model, &pk.verifying_key(), &x, &bad, &proof).is_err());
    }
}

#[test]
fn square_roots_with_both_shift_directions() {
    // e = 2·so − s_in: 8 (left shift), −4 (rounded right shift), 0
    for (in_scale, out_scale) in [(8, 8), (12, 4), (8, 4)] {
        let model = Model::one_node(
            vec![input(vec![3, 7], in_scale)],
            vec![],
            Op::Sqrt,
            vec![0],
            vec![3, 7],
            out_scale,
        );
        model.validate().expect("valid model");
        let pk = keygen(&model, model_id(&model)).expect("keygen");
        let exec = Executor::new(&model, Mode::Reference);
        for seed in 1..=3u64 {
            let mut x: Vec<i32> = values(21, seed, 1 << 20).iter().map(|v| v.abs()).collect();
            x[0] = 0;
            x[1] = 1;
            let x = vec![x];
            let want = exec.run(x.clone()).expect("runs");
            let (y, proof) = prove(&pk, &x).expect("prove");
            assert_eq!(y, want);
            verify(&model, &pk.verifying_key(), &x, &y, &proof).expect("verifies");
            for at in [0, 1, 5] {
                let mut bad = y.clone();
                bad[0][at] += 1;
                assert!(verify(&model, &pk.verifying_key(), &x, &bad, &proof).is_err());
            }
        }
        // a negative operand has no proof
        let mut neg = vec![values(21, 9, 1000)
            .iter()
            .map(|v| v.abs())
            .collect::<Vec<i32>>()];
        neg[0][3] = -5;
        assert!(prove(&pk, &neg).is_err());
    }
}

#[test]
fn an_op_the_prover_cannot_handle_is_refused_at_key_time_naming_the_node() {
    let m = Model::one_node(
        vec![input(vec![2, 3], 8)],
        vec![konst(vec![3], 8, vec![3, -4, 5])],
        Op::Div,
        vec![0, 1],
        vec![2, 3],
        8,
    );
    match keygen(&m, model_id(&m)) {
        Err(verity_zk::ZkError::Unsupported(msg)) => {
            assert!(msg.contains("node \"n\" (Div)"), "{msg}")
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
}
