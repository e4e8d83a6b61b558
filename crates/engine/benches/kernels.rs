//! Kernel benchmarks: the fast executor against the reference on the heavy ops.
use criterion::{criterion_group, criterion_main, Criterion};
use std::hint::black_box;
use verity_engine::ir::*;
use verity_engine::{Executor, Mode};

fn values(n: usize, seed: u64, mag: i32) -> Vec<i32> {
    let mut s = seed;
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 33) as i64 % (2 * mag as i64 + 1) - mag as i64) as i32
        })
        .collect()
}

fn one_node(x_shape: Vec<u32>, w: Const, op: Op, out: Vec<u32>) -> Model {
    Model {
        inputs: vec![Input {
            name: "x".into(),
            shape: x_shape,
            scale: 16,
            kind: InputKind::Fixed,
        }],
        consts: vec![w],
        nodes: vec![Node {
            name: "n".into(),
            op,
            inputs: vec![0, 1],
            shape: out,
            scale: 16,
        }],
        outputs: vec![Output {
            name: "y".into(),
            value: 2,
        }],
    }
}

fn bench(c: &mut Criterion) {
    let gemv = one_node(
        vec![1, 784],
        Const {
            shape: vec![128, 784],
            scale: 16,
            data: values(128 * 784, 1, 1 << 15).into(),
        },
        Op::EinSum {
            a: vec![0, 1],
            b: vec![2, 1],
            out: vec![0, 2],
        },
        vec![1, 128],
    );
    let gemm = one_node(
        vec![64, 256],
        Const {
            shape: vec![256, 256],
            scale: 16,
            data: values(256 * 256, 2, 1 << 15).into(),
        },
        Op::EinSum {
            a: vec![0, 1],
            b: vec![1, 2],
            out: vec![0, 2],
        },
        vec![64, 256],
    );
    let window = Window {
        kernel: [3, 3],
        stride: [1, 1],
        dilation: [1, 1],
        pads: [1, 1, 1, 1],
    };
    let conv = one_node(
        vec![1, 16, 28, 28],
        Const {
            shape: vec![32, 16, 3, 3],
            scale: 16,
            data: values(32 * 16 * 9, 3, 1 << 15).into(),
        },
        Op::Conv2d { window, groups: 1 },
        vec![1, 32, 28, 28],
    );
    for (name, m) in [
        ("kernels::einsum/m=1,k=784,n=128", &gemv),
        ("kernels::einsum/m=64,k=256,n=256", &gemm),
        ("kernels::conv2d/c=16,o=32,hw=28,k=3", &conv),
    ] {
        m.validate().expect("valid bench model");
        let n = m.inputs[0].shape.iter().product::<u32>() as usize;
        let x = values(n, 9, 1 << 16);
        for (mode, label) in [
            (Mode::Fast { threads: 1 }, "fast"),
            (Mode::Fast { threads: 2 }, "fast2"),
            (Mode::Reference, "reference"),
        ] {
            let exec = Executor::new(m, mode);
            c.bench_function(&format!("{name},exec={label}"), |b| {
                b.iter(|| black_box(exec.run(vec![x.clone()]).unwrap()))
            });
        }
    }
}

/// A transformer's attention at ViT-B/16's size (12 heads, 197 tokens of 64): the scores' product of
/// two activations at 16 fractional bits (wide operands: the exact `f64` product), the softmax along
/// the last axis, and max pooling at GoogLeNet's stem and inception sizes — on one thread.
fn bench_attention_and_pools(c: &mut Criterion) {
    let input = |name: &str, shape: Vec<u32>| Input {
        name: name.into(),
        shape,
        scale: 16,
        kind: InputKind::Fixed,
    };
    let node = |op: Op, inputs: Vec<u32>, shape: Vec<u32>, scale: i8| Node {
        name: "n".into(),
        op,
        inputs,
        shape,
        scale,
    };
    let scores = Model {
        inputs: vec![input("q", vec![197, 12, 64]), input("k", vec![197, 12, 64])],
        consts: vec![],
        nodes: vec![node(
            Op::EinSum {
                a: vec![0, 1, 2],
                b: vec![3, 1, 2],
                out: vec![1, 0, 3],
            },
            vec![0, 1],
            vec![12, 197, 197],
            16,
        )],
        outputs: vec![Output {
            name: "y".into(),
            value: 2,
        }],
    };
    let table: Vec<i32> = (-12288..=0)
        .map(|i| ((i as f64 / 512.0).exp() * (1u64 << 30) as f64).round() as i32)
        .collect();
    let softmax = Model {
        inputs: vec![input("x", vec![12, 197, 197])],
        consts: vec![Const {
            shape: vec![table.len() as u32],
            scale: 30,
            data: table.into(),
        }],
        nodes: vec![node(
            Op::Softmax {
                axis: 2,
                shift: 7,
                lo: -12288,
            },
            vec![0, 1],
            vec![12, 197, 197],
            16,
        )],
        outputs: vec![Output {
            name: "y".into(),
            value: 2,
        }],
    };
    let pool = |c: u32, hw: u32, k: u32, stride: u32, pad: u32, avg: bool| {
        let window = Window {
            kernel: [k, k],
            stride: [stride, stride],
            dilation: [1, 1],
            pads: [pad; 4],
        };
        let (oh, ow) = window.output_hw(hw, hw).expect("a valid window");
        Model {
            inputs: vec![input("x", vec![1, c, hw, hw])],
            consts: vec![],
            nodes: vec![node(
                match avg {
                    true => Op::AvgPool2d {
                        window,
                        count_include_pad: true,
                    },
                    false => Op::MaxPool2d { window },
                },
                vec![0],
                vec![1, c, oh, ow],
                16,
            )],
            outputs: vec![Output {
                name: "y".into(),
                value: 1,
            }],
        }
    };
    // (with Inception-v3's 3×3 "same" average pools over 17×17 and 8×8 planes)
    let pools = [
        pool(64, 112, 3, 2, 0, false),
        pool(256, 28, 3, 1, 1, false),
        pool(768, 17, 3, 1, 1, true),
        pool(2048, 8, 3, 1, 1, true),
    ];
    let models = [
        (
            "kernels::einsum/attention-scores,h=12,t=197,d=64",
            &scores,
            1 << 19,
        ),
        ("kernels::softmax/12x197x197", &softmax, 1 << 20),
        ("kernels::max_pool/c=64,hw=112,k=3,s=2", &pools[0], 1 << 20),
        ("kernels::max_pool/c=256,hw=28,k=3,s=1", &pools[1], 1 << 20),
        ("kernels::avg_pool/c=768,hw=17,k=3,s=1", &pools[2], 1 << 20),
        ("kernels::avg_pool/c=2048,hw=8,k=3,s=1", &pools[3], 1 << 20),
    ];
    one_thread(c, &models, 11);
}

/// Products whose rows are finished outside the 8-bit kernels, on one thread: a transformer's linear
/// layer with 12-bit activations and weights and a bias per output column (ViT-B/16's MLP input, 197
/// tokens of 768 into 768; `i64` sums from one pass of 16-bit products), and windowed attention scores
/// with a bias per head and position (MaxViT-T's first stage: 64 windows of 49 tokens, 2 heads of 32;
/// the exact `f64` product).
fn bench_widened(c: &mut Criterion) {
    let input = |name: &str, shape: Vec<u32>| Input {
        name: name.into(),
        shape,
        scale: 8,
        kind: InputKind::Fixed,
    };
    let model = |inputs: Vec<Input>, consts: Vec<Const>, op: Op, shape: Vec<u32>| {
        let values = (0..(inputs.len() + consts.len()) as u32).collect();
        Model::one_node(inputs, consts, op, values, shape, 10)
    };
    let constant = |shape: Vec<u32>, scale: i8, seed: u64, mag: i32| Const {
        data: values(shape.iter().product::<u32>() as usize, seed, mag).into(),
        shape,
        scale,
    };
    let linear = model(
        vec![input("x", vec![197, 768])],
        vec![
            constant(vec![768, 768], 8, 21, 2047),
            constant(vec![768], 16, 22, 1 << 20),
        ],
        Op::EinSum {
            a: vec![0, 1],
            b: vec![1, 2],
            out: vec![0, 2],
        },
        vec![197, 768],
    );
    let scores = model(
        vec![
            input("q", vec![64, 2, 49, 32]),
            input("k", vec![64, 2, 49, 32]),
        ],
        vec![constant(vec![2, 49, 49], 16, 23, 1 << 20)],
        Op::EinSum {
            a: vec![0, 1, 2, 3],
            b: vec![0, 1, 4, 3],
            out: vec![0, 1, 2, 4],
        },
        vec![64, 2, 49, 49],
    );
    let models = [
        (
            "kernels::einsum/w12a12+bias,m=197,k=768,n=768",
            &linear,
            2047,
        ),
        (
            "kernels::einsum/window-scores+bias,b=64,h=2,t=49,d=32",
            &scores,
            1 << 12,
        ),
    ];
    one_thread(c, &models, 31);
}

/// Each model on one thread, its inputs drawn from `seed` on (`values` of the magnitude given).
fn one_thread(c: &mut Criterion, models: &[(&str, &Model, i32)], seed: u64) {
    for &(name, m, mag) in models {
        m.validate().expect("valid bench model");
        let xs: Vec<Vec<i32>> = m
            .inputs
            .iter()
            .enumerate()
            .map(|(i, x)| {
                values(
                    x.shape.iter().product::<u32>() as usize,
                    seed + i as u64,
                    mag,
                )
            })
            .collect();
        let exec = Executor::new(m, Mode::Fast { threads: 1 });
        c.bench_function(name, |b| {
            b.iter(|| black_box(exec.run(xs.clone()).unwrap()))
        });
    }
}

/// The 8-bit GEMM alone, on each instruction-set level this CPU has, and an 8-bit convolution through the
/// fast executor.
fn bench_qgemm(c: &mut Criterion) {
    use verity_engine::qgemm::{gemm, Level, PackedA, PackedB};
    for (m, k, n) in [
        (784usize, 1152usize, 128usize),
        (196, 4608, 512),
        (16, 384, 1536),
        // a short reduction (MobileNet-v2's expansion at 56×56)
        (144, 24, 3136),
    ] {
        let a: Vec<i32> = (0..m * k).map(|i| (i * 7 % 256) as i32).collect();
        let b: Vec<i32> = (0..k * n).map(|i| (i * 13 % 256) as i32 - 128).collect();
        let (pa, pb) = (
            PackedA::new(&a, m, k).expect("u8 activations"),
            PackedB::new(&b, k, n).expect("i8 weights"),
        );
        for level in [Level::Portable, Level::Avx2, Level::Avx512Vnni] {
            if !level.supported() {
                continue;
            }
            c.bench_function(
                &format!("qgemm::gemm/m={m},k={k},n={n},level={level:?}"),
                |bch| bch.iter(|| black_box(gemm(&pa, &pb, 1, level))),
            );
        }
    }
    let window = Window {
        kernel: [3, 3],
        stride: [1, 1],
        dilation: [1, 1],
        pads: [1, 1, 1, 1],
    };
    let mut m = one_node(
        vec![1, 64, 56, 56],
        Const {
            shape: vec![64, 64, 3, 3],
            scale: 0,
            data: values(64 * 64 * 9, 5, 127).into(),
        },
        Op::Conv2d { window, groups: 1 },
        vec![1, 64, 56, 56],
    );
    m.inputs[0].scale = 4;
    m.nodes[0].scale = 4;
    m.validate().expect("valid bench model");
    let x: Vec<i32> = values(64 * 56 * 56, 9, 127)
        .into_iter()
        .map(|v| v + 128)
        .collect();
    let exec = Executor::new(&m, Mode::Fast { threads: 1 });
    c.bench_function(
        "kernels::conv2d/c=64,o=64,hw=56,k=3,bits=8,exec=fast",
        |b| b.iter(|| black_box(exec.run(vec![x.clone()]).unwrap())),
    );

    // the same convolution on 16-bit inputs (a `w8a16` layer): on AVX2 the 16-bit side multiplied as
    // it is, with VNNI as two 8-bit halves (the output rescaled so its sums fit `i32`)
    let mut wide = m.clone();
    wide.nodes[0].scale = -8;
    wide.validate().expect("valid bench model");
    let x16: Vec<i32> = values(64 * 56 * 56, 9, 32767);
    let exec = Executor::new(&wide, Mode::Fast { threads: 1 });
    c.bench_function(
        "kernels::conv2d/c=64,o=64,hw=56,k=3,bits=16x8,exec=fast",
        |b| b.iter(|| black_box(exec.run(vec![x16.clone()]).unwrap())),
    );

    // a depthwise 3×3 convolution on 8-bit values (MobileNet-v2's 144-channel stage), the same on small
    // planes (its 960-channel stage: sixteen channels per register), and a dilated 5×5 one (LR-ASPP
    // MobileNet-v3's last stage: pairs of taps down a column)
    let dilated = Window {
        kernel: [5, 5],
        stride: [1, 1],
        dilation: [2, 2],
        pads: [4, 4, 4, 4],
    };
    // (channels, height and width, window, seeds of the weights and the input, name)
    for (channels, hw, window, (sw, sx), name) in [
        (144, 56, window, (6, 10), "c=144,hw=56,k=3"),
        (960, 7, window, (14, 15), "c=960,hw=7,k=3"),
        (960, 14, dilated, (12, 13), "c=960,hw=14,k=5,dilation=2"),
    ] {
        let taps = window.kernel[0] * window.kernel[1];
        let mut dw = one_node(
            vec![1, channels, hw, hw],
            Const {
                shape: vec![channels, 1, window.kernel[0], window.kernel[1]],
                scale: 0,
                data: values((channels * taps) as usize, sw, 127).into(),
            },
            Op::Conv2d {
                window,
                groups: channels,
            },
            vec![1, channels, hw, hw],
        );
        dw.inputs[0].scale = 4;
        dw.nodes[0].scale = 4;
        dw.validate().expect("valid bench model");
        let xd: Vec<i32> = values((channels * hw * hw) as usize, sx, 127);
        let exec = Executor::new(&dw, Mode::Fast { threads: 1 });
        c.bench_function(
            &format!("kernels::depthwise/{name},bits=8,exec=fast"),
            |b| b.iter(|| black_box(exec.run(vec![xd.clone()]).unwrap())),
        );
    }

    // the 8-bit convolution followed by its requantization chain (per-channel Mul, ReLU, 8-bit Clamp):
    // fused into the kernel in an untraced run, node by node in a traced one
    let mut chain = m.clone();
    let shape = chain.nodes[0].shape.clone();
    chain.consts.push(Const {
        shape: vec![1, 64, 1, 1],
        scale: 20,
        data: values(64, 11, 1 << 19)
            .into_iter()
            .map(|v| v.abs() + 1)
            .collect::<Vec<_>>()
            .into(),
    });
    for (name, op, inputs, scale) in [
        ("mul", Op::Mul, vec![3, 2], 4),
        (
            "relu",
            Op::Clamp {
                lo: 0,
                hi: i32::MAX,
            },
            vec![4],
            4,
        ),
        ("q8", Op::Clamp { lo: 0, hi: 255 }, vec![5], 0),
    ] {
        chain.nodes.push(Node {
            name: name.into(),
            op,
            inputs,
            shape: shape.clone(),
            scale,
        });
    }
    chain.outputs[0].value = 6;
    chain.validate().expect("valid bench model");
    let exec = Executor::new(&chain, Mode::Fast { threads: 1 });
    c.bench_function(
        "kernels::conv2d_chain/c=64,o=64,hw=56,k=3,bits=8,exec=fused",
        |b| b.iter(|| black_box(exec.run(vec![x.clone()]).unwrap())),
    );
    c.bench_function(
        "kernels::conv2d_chain/c=64,o=64,hw=56,k=3,bits=8,exec=traced",
        |b| b.iter(|| black_box(exec.run_trace(vec![x.clone()]).unwrap())),
    );
}

/// Block-quantized products as a language model's decode step runs them (`o` outputs, blocks of 32,
/// 4-bit weights with per-block multipliers, the two scale products and the sum fused): one activation
/// row (a decode step), and several (a prefill chunk, or several sequences' steps at once).
fn bench_blockdot(c: &mut Criterion) {
    use verity_engine::blockdot::PackedBlocks;
    let (o, k, block) = (1536usize, 576usize, 32usize);
    let nb = k / block;
    let w = values(o * k, 11, 7);
    let mut p = PackedBlocks::new(&w, o, nb, block).expect("4-bit weights pack");
    assert!(p.set_multipliers(&values(o * nb, 12, 1 << 20)));
    for m in [1usize, 4, 16] {
        let x = values(m * k, 13, 127);
        let scale = values(m * nb, 14, 1 << 20)
            .iter()
            .map(|v| v.abs() + 1)
            .collect::<Vec<_>>();
        c.bench_function(
            &format!("kernels::blockdot/o={o},k={k},block={block},bits=4,m={m}"),
            |b| b.iter(|| black_box(p.run_sums(&x, &scale, [20, 24, 4], 1).expect("in range"))),
        );
    }
}

/// `x · sigmoid(x)` requantized to 8 bits over one EfficientNet-B0 expand output (96×112×112), one
/// thread: a table of the function's own values (gathered) against one interpolated between 128
/// knots (read from the knots in registers), both at 2^−8 steps over ±10.5 with 14-bit entries.
fn bench_silu(c: &mut Criterion) {
    let n = 96 * 112 * 112;
    let (t, lo) = (8, -(21 << 7));
    let len = 21 * 256 + 1;
    let sigmoid = |i: usize| {
        let x = (lo + i as i32) as f64 / (1 << t) as f64;
        (16384.0 / (1.0 + (-x).exp())).round() as i32
    };
    let exact: Vec<i32> = (0..len).map(sigmoid).collect();
    let g = 6;
    let knots: Vec<i32> = (0..=(len - 1) >> g).map(|j| sigmoid(j << g)).collect();
    let knotted = verity_engine::segments::interpolated(&knots, g, len);
    let x = values(n, 7, 1 << 21);
    for (label, table) in [("gathered", exact), ("knots", knotted)] {
        let node = |name: &str, op: Op, inputs: Vec<u32>, scale: i8| Node {
            name: name.into(),
            op,
            inputs,
            shape: vec![n as u32],
            scale,
        };
        let m = Model {
            inputs: vec![Input {
                name: "x".into(),
                shape: vec![n as u32],
                scale: 17,
                kind: InputKind::Fixed,
            }],
            consts: vec![Const {
                shape: vec![len as u32],
                scale: 14,
                data: table.into(),
            }],
            nodes: vec![
                node("acc", Op::Rescale, vec![0], 17),
                node("sigmoid", Op::Lookup { shift: 17 - t, lo }, vec![2, 1], 14),
                node("silu", Op::Mul, vec![2, 3], 18),
                node("q8", Op::Clamp { lo: -128, hi: 127 }, vec![4], 3),
            ],
            outputs: vec![Output {
                name: "y".into(),
                value: 5,
            }],
        };
        m.validate().expect("valid");
        let exec = Executor::new(&m, Mode::Fast { threads: 1 });
        c.bench_function(&format!("silu/n={n},table={label}"), |b| {
            b.iter(|| black_box(exec.run(vec![x.clone()]).unwrap()))
        });
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20);
    targets = bench, bench_qgemm, bench_blockdot, bench_attention_and_pools, bench_silu, bench_widened
}
criterion_main!(benches);
