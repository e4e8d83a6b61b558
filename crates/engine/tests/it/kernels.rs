//! The fast executor equals the reference executor bit for bit, errors included.

use proptest::prelude::*;
use verity_engine::ir::*;
use verity_engine::simd::Isa;
use verity_engine::{Executor, Mode};

use crate::input;

/// A window of stride 1 without dilation.
fn stride_one(kernel: [u32; 2], pads: [u32; 4]) -> Window {
    Window {
        kernel,
        stride: [1, 1],
        dilation: [1, 1],
        pads,
    }
}

fn run_all(
    m: &Model,
    inputs: Vec<Vec<i32>>,
) -> Vec<Result<Vec<Vec<i32>>, verity_engine::ExecError>> {
    m.validate().expect("test model is valid");
    crate::onestep::agrees(m, inputs.clone());
    let mut runs: Vec<_> = [
        Mode::Reference,
        Mode::Fast { threads: 1 },
        Mode::Fast { threads: 3 },
    ]
    .into_iter()
    .map(|mode| Executor::new(m, mode).run(inputs.clone()))
    .collect();
    // the plain loops compiled for AVX2 and for the baseline (a cap of this thread's, carried into
    // the threads its runs split across: other tests running meanwhile keep theirs)
    for isa in [Isa::Avx2, Isa::Base] {
        Isa::cap(isa);
        runs.push(Executor::new(m, Mode::Fast { threads: 1 }).run(inputs.clone()));
        Isa::cap(Isa::Avx512);
    }
    runs
}

fn values(n: usize, mag: i32) -> impl Strategy<Value = Vec<i32>> {
    prop::collection::vec(-mag..=mag, n)
}

#[derive(Debug, Clone)]
struct EinCase {
    a: Vec<u8>,
    b: Vec<u8>,
    out: Vec<u8>,
    sizes: [u32; 5],
    a_bcast: bool,
    bias: u8,
}

fn ein_case() -> impl Strategy<Value = EinCase> {
    (
        Just(vec![0u8, 1, 2]).prop_shuffle(),
        Just(vec![0u8, 2, 3]).prop_shuffle(),
        Just(vec![0u8, 1, 3]).prop_shuffle(),
        [1u32..4, 1u32..10, 1u32..12, 1u32..20, 1u32..3],
        any::<bool>(),
        0u8..3,
        any::<bool>(),
    )
        .prop_map(|(mut a, b, out, sizes, a_bcast, bias, extra)| {
            // label 4 appears only in `a` and is summed: exercises the reference fallback
            if extra {
                a.push(4);
            }
            EinCase {
                a,
                b,
                out,
                sizes,
                a_bcast,
                bias,
            }
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn einsum_fast_equals_reference(c in ein_case(), seed in any::<u64>(), big in prop::bool::weighted(0.15), sa in 0i8..8, sb in 0i8..8, so in 0i8..10) {
        let shape = |ls: &[u8], bcast: bool| -> Vec<u32> {
            ls.iter().map(|&l| if bcast && l == 0 { 1 } else { c.sizes[l as usize] }).collect()
        };
        let (ash, bsh, osh) = (shape(&c.a, c.a_bcast), shape(&c.b, false), shape(&c.out, false));
        let mag = if big { i32::MAX } else { 1 << 12 };
        let mut gen = crate::gen(seed, mag);
        let mut gen = |n: u64| gen(n as usize);
        let a = gen(numel(&ash));
        let b = gen(numel(&bsh));
        let mut consts = vec![];
        let mut node_inputs = vec![0, 1];
        if c.bias > 0 {
            let bshape = if c.bias == 1 { vec![*osh.last().unwrap()] } else { osh.clone() };
            let data = gen(numel(&bshape)).into_iter().map(|v| v >> 8).collect::<Vec<_>>();
            consts.push(Const { shape: bshape, scale: (sa + sb).min(6), data: data.into() });
            node_inputs.push(2);
        }
        let m = Model::one_node(
            vec![input("a", ash, sa), input("b", bsh, sb)],
            consts,
            Op::EinSum { a: c.a.clone(), b: c.b.clone(), out: c.out.clone() },
            node_inputs,
            osh,
            so,
        );
        let r = run_all(&m, vec![a, b]);
        for x in &r[1..] {
            prop_assert_eq!(&r[0], x);
        }
    }

    #[test]
    fn conv_fast_equals_reference(
        n in 1u32..3, groups in 1u32..3, cg in 1u32..4, og in 1u32..7, h in 1u32..12, w in 1u32..12,
        k in [1u32..4, 1u32..4], s in [1u32..3, 1u32..3], d in [1u32..3, 1u32..3], p in [0u32..3, 0u32..3, 0u32..3, 0u32..3],
        bias in any::<bool>(), seed in any::<u64>(), big in prop::bool::weighted(0.1),
    ) {
        let window = Window { kernel: k, stride: s, dilation: d, pads: p };
        let Some((oh, ow)) = window.output_hw(h, w) else { return Ok(()) };
        let c = groups * cg;
        let o = groups * og;
        let mag = if big { i32::MAX } else { 1 << 14 };
        let mut gen = crate::gen(seed, mag);
        let mut gen = |n: u32| gen(n as usize);
        let x = gen(n * c * h * w);
        let mut consts = vec![Const { shape: vec![o, cg, k[0], k[1]], scale: 8, data: gen(o * cg * k[0] * k[1]).into() }];
        let mut ins = vec![0, 1];
        if bias {
            consts.push(Const { shape: vec![o], scale: 10, data: gen(o).into() });
            ins.push(2);
        }
        let m = Model::one_node(vec![input("x", vec![n, c, h, w], 6)], consts, Op::Conv2d { window, groups }, ins, vec![n, o, oh, ow], 7);
        let r = run_all(&m, vec![x]);
        for x in &r[1..] {
            prop_assert_eq!(&r[0], x);
        }
    }

    #[test]
    fn binary_ops_follow_the_definitions(a in values(6, 1 << 20), b in values(3, 1 << 20), sa in 0i8..12, sb in 0i8..12, so in 0i8..12) {
        for op in [Op::Add, Op::Sub, Op::Mul, Op::Max, Op::Min] {
            let m = Model::one_node(vec![input("a", vec![2, 3], sa), input("b", vec![3], sb)], vec![], op.clone(), vec![0, 1], vec![2, 3], so);
            let r = run_all(&m, vec![a.clone(), b.clone()]);
            for x in &r[1..] {
                prop_assert_eq!(&r[0], x);
            }
            if let Ok(out) = &r[0] {
                // exact check against the real numbers: the result is the rounded real result
                for i in 0..6 {
                    let x = a[i] as f64 / 2f64.powi(sa as i32);
                    let y = b[i % 3] as f64 / 2f64.powi(sb as i32);
                    let real = match op { Op::Add => x + y, Op::Sub => x - y, Op::Mul => x * y, Op::Max => x.max(y), _ => x.min(y) };
                    let got = out[0][i] as f64 / 2f64.powi(so as i32);
                    prop_assert!((got - real).abs() <= 0.5 / 2f64.powi(so as i32) + 1e-9, "{op:?}: {got} vs {real}");
                }
            }
        }
    }
}

#[test]
fn overflow_is_an_error_not_wraparound() {
    let m = Model::one_node(
        vec![input("a", vec![2], 0), input("b", vec![2], 0)],
        vec![],
        Op::Mul,
        vec![0, 1],
        vec![2],
        0,
    );
    let r = run_all(&m, vec![vec![1 << 20, 3], vec![1 << 20, 3]]);
    for x in &r {
        let e = x.as_ref().unwrap_err();
        assert!(e.to_string().contains("overflow"), "{e}");
    }
}

#[test]
fn division_by_zero_and_negative_sqrt_are_errors() {
    let m = Model::one_node(
        vec![input("a", vec![1], 4)],
        vec![],
        Op::Recip,
        vec![0],
        vec![1],
        4,
    );
    assert!(Executor::new(&m, Mode::default())
        .run(vec![vec![0]])
        .unwrap_err()
        .to_string()
        .contains("division by zero"));
    let m = Model::one_node(
        vec![input("a", vec![1], 4)],
        vec![],
        Op::Sqrt,
        vec![0],
        vec![1],
        4,
    );
    assert!(Executor::new(&m, Mode::default())
        .run(vec![vec![-1]])
        .unwrap_err()
        .to_string()
        .contains("negative"));
    // sqrt(2.25) = 1.5 exactly
    assert_eq!(
        Executor::new(&m, Mode::default())
            .run(vec![vec![36]])
            .unwrap(),
        vec![vec![24]]
    );
}

#[test]
fn softmax_rows_sum_to_one() {
    // exp table over [-8, 0] at 2 fractional index bits, entries at scale 16
    let lo = -32;
    let table: Vec<i32> = (lo..=0)
        .map(|i| ((i as f64 / 4.0).exp() * 65536.0).round() as i32)
        .collect();
    let n = table.len() as u32;
    let m = Model::one_node(
        vec![input("x", vec![2, 4], 4)],
        vec![Const {
            shape: vec![n],
            scale: 16,
            data: table.into(),
        }],
        Op::Softmax {
            axis: 1,
            shift: 2,
            lo,
        },
        vec![0, 1],
        vec![2, 4],
        12,
    );
    let out = &Executor::new(&m, Mode::default())
        .run(vec![vec![0, 16, 32, -16, 5, 5, 5, 5]])
        .unwrap()[0];
    for row in out.chunks(4) {
        let s: i32 = row.iter().sum();
        assert!((s - 4096).abs() <= 2, "{row:?}");
    }
    assert_eq!(&out[4..], &[1024, 1024, 1024, 1024]);
}

/// Softmax lanes along the last axis (the fast executor's vector form: exponents by table gathers,
/// quotients by an `f64` estimate corrected by its remainder) give the reference's integers: lanes of
/// 1 to 1,000 elements with the extremes of `i32` side by side, tables of realistic exponentials, of
/// entries up to `i32::MAX` (sums past `2^40`) and of constant ones whose quotients fall exactly on a
/// half (`1·2^(k−1) / 2^k`), shifts across their range (and past it, where the definition's own loop
/// runs), every output scale; an all-zero table is the same division error everywhere.
#[test]
fn softmax_lanes_equal_the_reference() {
    let mut g = crate::gen(0x50f7, i32::MAX);
    let exp: Vec<i32> = (-12288..=0)
        .map(|i| ((i as f64 / 512.0).exp() * (1u64 << 30) as f64).round() as i32)
        .collect();
    let big: Vec<i32> = g(300).iter().map(|v| v.saturating_abs()).collect();
    let run = |n: u32, table: &[i32], shift: i32, lo: i32, si: i8, so: i8, x: Vec<i32>| {
        let m = Model::one_node(
            vec![input("x", vec![2, 3, n], si)],
            vec![Const {
                shape: vec![table.len() as u32],
                scale: 30,
                data: table.to_vec().into(),
            }],
            Op::Softmax { axis: 2, shift, lo },
            vec![0, 1],
            vec![2, 3, n],
            so,
        );
        let r = run_all(&m, vec![x]);
        for y in &r[1..] {
            assert_eq!(
                format!("{:?}", r[0]),
                format!("{y:?}"),
                "n {n}, shift {shift}, lo {lo}, so {so}"
            );
        }
        r.into_iter().next().unwrap()
    };
    for n in [1u32, 7, 197, 1000] {
        let mut x = g(6 * n as usize);
        x[0] = i32::MIN;
        x[n as usize - 1] = i32::MAX;
        for so in [0i8, 12, 16, 30] {
            let y = run(n, &exp, 7, -12288, 16, so, x.clone()).expect("a softmax");
            // each lane sums to about one
            for lane in y[0].chunks(n as usize) {
                let s: i64 = lane.iter().map(|&v| v as i64).sum();
                assert!((s - (1i64 << so)).abs() <= n as i64, "{s} for 2^{so}");
            }
            for (shift, lo) in [(-31, -5), (-4, 100), (0, -150), (1, 0), (33, -2), (62, 7)] {
                run(n, &big, shift, lo, 0, so, x.clone()).expect("a softmax");
            }
            // shifts outside the vector form's range
            for shift in [-40, 63] {
                run(n, &big, shift, -3, 0, so, x.clone()).expect("a softmax");
            }
        }
    }
    // every quotient exactly on a half: constant entries, lanes of 2^k, output scale k − 1
    for k in [1u32, 3, 8] {
        let n = 1u32 << k;
        let y = run(n, &[1, 1], 0, 0, 0, k as i8 - 1, vec![5; 6 * n as usize]).unwrap();
        assert!(y[0].iter().all(|&v| v == 1), "½ rounds up");
    }
    // quotients just below a half whose f64 estimate lands on the half and rounds up to the even
    // integer above (`e·2^30/S = k + ½ − 1/2S`, k odd): the remainder must take it back down
    for (s, e) in [(1789569707i64, 894784856i64), (1994091959, 997045986)] {
        let table = [(s - e) as i32, e as i32];
        let y = run(2, &table, 0, -1, 0, 30, [0, -1].repeat(6)).unwrap();
        // ⌊(2e·2^30 + S) / 2S⌋, the odd k
        let want = (((2 * e as i128) << 30) + s as i128) / (2 * s as i128);
        assert_eq!((y[0][0] as i128, want % 2), (want, 1));
    }
    let zeros = run(5, &[0, 0, 0], 0, 0, 0, 8, g(30));
    assert!(zeros.is_err(), "a zero sum is an error");
}

/// Max pooling at one scale (the fast executor's kernel: rows combined element-wise, then the columns
/// whose taps are all valid tap by tap over the row's stride phases, the edge columns one by one)
/// gives the reference's integers over kernels, strides, dilations and paddings — ceil-mode-like end
/// padding, windows wider than the plane, extremes of `i32` — on planes of several sizes.
#[test]
fn max_pools_equal_the_reference() {
    let mut g = crate::gen(0x9001, i32::MAX);
    for (h, w) in [(23u32, 29u32), (7, 7), (1, 40), (56, 57)] {
        let mut x = g((2 * 3 * h * w) as usize);
        x[0] = i32::MIN;
        x[5] = i32::MAX;
        for (k, s, d, p) in [
            (3, 2, 1, [0, 0, 1, 1]),
            (3, 1, 1, [1, 1, 1, 1]),
            (2, 2, 1, [0, 0, 0, 0]),
            (5, 3, 2, [2, 1, 0, 2]),
            (1, 4, 1, [0, 0, 0, 0]),
            (4, 1, 3, [3, 3, 3, 3]),
            (9, 2, 1, [0, 0, 0, 0]),
            (13, 1, 1, [6, 6, 6, 6]),
        ] {
            let window = Window {
                kernel: [k, k],
                stride: [s, s],
                dilation: [d, d],
                pads: p,
            };
            let Some((oh, ow)) = window.output_hw(h, w) else {
                continue;
            };
            let m = Model::one_node(
                vec![input("x", vec![2, 3, h, w], 8)],
                vec![],
                Op::MaxPool2d { window },
                vec![0],
                vec![2, 3, oh, ow],
                8,
            );
            let r = run_all(&m, vec![x.clone()]);
            assert!(r[0].is_ok(), "{:?}", r[0]);
            for y in &r[1..] {
                assert_eq!(
                    &r[0], y,
                    "{h}×{w}, kernel {k}, stride {s}, dilation {d}, pads {p:?}"
                );
            }
        }
    }
}

/// Average pooling (the fast executor's kernel: sums along rows then down columns, the rounding
/// division by an `f64` estimate corrected by its remainder) gives the reference's integers — windows
/// counting their padding or only their valid taps, Inception's 3×3 at stride 1 with padding over
/// 35×35 and 17×17, strides, windows wider than the plane, a window wholly in the padding, rescales
/// up and down (`e` from −9 to 12), values near `i32`'s extremes (where a sum rescaled up leaves
/// `i32`: the reference's error), averages exactly halfway between two integers — on one and three
/// threads and every instruction-set level.
#[test]
fn average_pools_equal_the_reference() {
    let mut g = crate::gen(0xa7e, 1 << 12);
    // (40×37: enough planes' elements to split across threads)
    for (h, w) in [(35u32, 35u32), (17, 17), (8, 3), (1, 9), (40, 37)] {
        let small = g((2 * 3 * h * w) as usize);
        let mut large: Vec<i32> = small.iter().map(|v| v << 18).collect();
        large[1] = i32::MIN;
        large[7] = i32::MAX;
        // each plane one odd multiple of 2^11: rescaled down by 2^12, whole windows' averages lie
        // exactly halfway, the rounding's quotient an integer (its estimate on either side)
        let halves: Vec<i32> = (0..2 * 3 * h * w)
            .map(|i| [3, -5, 7, -1, 1, -9][(i / (h * w)) as usize] << 11)
            .collect();
        for (k, s, p) in [
            ([3, 3], [1, 1], [1, 1, 1, 1]),
            ([3, 3], [2, 2], [0, 0, 1, 1]),
            ([2, 5], [1, 2], [1, 2, 0, 2]),
            ([5, 5], [3, 3], [2, 2, 2, 2]),
            ([1, 1], [1, 1], [0, 0, 0, 0]),
            ([9, 9], [1, 1], [4, 4, 4, 4]),
            ([4, 4], [4, 4], [3, 3, 3, 3]),
        ] {
            let window = Window {
                kernel: k,
                stride: s,
                dilation: [1, 1],
                pads: p,
            };
            let Some((oh, ow)) = window.output_hw(h, w) else {
                continue;
            };
            for count_include_pad in [true, false] {
                for (si, so) in [(8, 8), (8, 17), (14, 2), (3, 12)] {
                    for x in [&small, &large, &halves] {
                        let m = Model::one_node(
                            vec![input("x", vec![2, 3, h, w], si)],
                            vec![],
                            Op::AvgPool2d {
                                window,
                                count_include_pad,
                            },
                            vec![0],
                            vec![2, 3, oh, ow],
                            so,
                        );
                        let r = run_all(&m, vec![x.clone()]);
                        let what = format!(
                            "{h}×{w}, kernel {k:?}, stride {s:?}, pads {p:?}, \
                             include pad {count_include_pad}, scales {si} → {so}"
                        );
                        for y in &r[1..] {
                            assert_eq!(&r[0], y, "{what}");
                        }
                    }
                }
            }
        }
    }
}

/// "Same" average pools (stride 1, the output as large as the input: the fast executor's kernel sums
/// whole blocks of planes as flat runs, then sums each edge column and row again from its valid taps)
/// give the reference's integers: square and oblong kernels, padding only before, only after or on
/// both sides, kernels taller or wider than the plane, one-row planes, planes spread over several
/// blocks (260 planes of 8×8) and threads, windows counting their padding or not, rescales both ways.
#[test]
fn same_average_pools_equal_the_reference() {
    let mut g = crate::gen(0x5a3e, 1 << 14);
    for shape in [
        [1u32, 260, 8, 8],
        [2, 5, 17, 17],
        [1, 2, 35, 35],
        [1, 40, 1, 5],
        [1, 9, 6, 2],
    ] {
        let x = g(shape.iter().product::<u32>() as usize);
        for (k, p) in [
            ([3, 3], [1, 1, 1, 1]),
            ([2, 2], [0, 0, 1, 1]),
            ([3, 3], [2, 2, 0, 0]),
            ([3, 5], [1, 2, 1, 2]),
            ([1, 3], [0, 1, 0, 1]),
            ([5, 5], [2, 2, 2, 2]),
            ([7, 1], [3, 0, 3, 0]),
            ([4, 3], [3, 0, 0, 2]),
        ] {
            let window = stride_one(k, p);
            assert_eq!(
                window.output_hw(shape[2], shape[3]),
                Some((shape[2], shape[3]))
            );
            for count_include_pad in [true, false] {
                for (si, so) in [(8, 11), (12, 4)] {
                    let m = Model::one_node(
                        vec![input("x", shape.to_vec(), si)],
                        vec![],
                        Op::AvgPool2d {
                            window,
                            count_include_pad,
                        },
                        vec![0],
                        shape.to_vec(),
                        so,
                    );
                    let r = run_all(&m, vec![x.clone()]);
                    assert!(r[0].is_ok(), "{:?}", r[0]);
                    for y in &r[1..] {
                        assert_eq!(
                            &r[0], y,
                            "{shape:?}, kernel {k:?}, pads {p:?}, include pad {count_include_pad}, \
                             scales {si} → {so}"
                        );
                    }
                }
            }
        }
    }
}

/// Reductions over a block of middle axes (a layer normalization's sums over the channels of
/// `[N, C, H, W]`, one output row of `H·W` folding `C` input rows), over leading, trailing and
/// scattered axes: sums, means (rescaled both ways) and extremes give the single-step evaluator's
/// integers in the reference and the fast executors, values near `i32`'s extremes included.
#[test]
fn reductions_over_middle_axes_equal_the_definition() {
    let mut g = crate::gen(0x5ed, i32::MAX);
    let shape = vec![2u32, 5, 3, 4];
    let x = g(120);
    for axes in [
        vec![1],
        vec![1, 2],
        vec![0],
        vec![2],
        vec![3],
        vec![0, 1],
        vec![0, 2],
        vec![1, 3],
    ] {
        let out: Vec<u32> = (0..4)
            .map(|i| {
                if axes.contains(&i) {
                    1
                } else {
                    shape[i as usize]
                }
            })
            .collect();
        for kind in [
            ReduceKind::Sum,
            ReduceKind::Mean,
            ReduceKind::Max,
            ReduceKind::Min,
        ] {
            for (si, so) in [(4, 4), (6, 2), (2, 9)] {
                let m = Model::one_node(
                    vec![input("x", shape.clone(), si)],
                    vec![],
                    Op::Reduce {
                        kind,
                        axes: axes.clone(),
                    },
                    vec![0],
                    out.clone(),
                    so,
                );
                let small: Vec<i32> = x.iter().map(|v| v >> 8).collect();
                for x in [&small, &x] {
                    let r = run_all(&m, vec![x.clone()]);
                    for y in &r[1..] {
                        assert_eq!(&r[0], y, "axes {axes:?}, {kind:?}, scales {si} → {so}");
                    }
                }
            }
        }
    }
}

#[test]
fn gather_rejects_out_of_range_indices() {
    let m = Model::one_node(
        vec![Input {
            name: "i".into(),
            shape: vec![2],
            scale: 0,
            kind: InputKind::Int,
        }],
        vec![Const {
            shape: vec![3, 2],
            scale: 0,
            data: vec![1, 2, 3, 4, 5, 6].into(),
        }],
        Op::Gather { axis: 0 },
        vec![1, 0],
        vec![2, 2],
        0,
    );
    let e = Executor::new(&m, Mode::default());
    assert_eq!(e.run(vec![vec![2, -3]]).unwrap(), vec![vec![5, 6, 1, 2]]);
    assert!(e
        .run(vec![vec![3, 0]])
        .unwrap_err()
        .to_string()
        .contains("out of range"));
}

#[test]
fn threaded_kernels_equal_reference() {
    // large enough (over 2^18 multiply-adds) for the fast executor to split work across threads
    let mut g = crate::gen(42, 1 << 15);
    let m = Model::one_node(
        vec![input("a", vec![2, 48, 96], 12)],
        vec![Const {
            shape: vec![96, 80],
            scale: 14,
            data: g(96 * 80).into(),
        }],
        Op::EinSum {
            a: vec![0, 1, 2],
            b: vec![2, 3],
            out: vec![0, 1, 3],
        },
        vec![0, 1],
        vec![2, 48, 80],
        11,
    );
    let r = run_all(&m, vec![g(2 * 48 * 96)]);
    assert!(r[0].is_ok());
    for x in &r[1..] {
        assert_eq!(&r[0], x);
    }
    let m = same_conv3x3([16, 32, 20], g(32 * 16 * 9), [10, 12, 9]);
    let x = g(16 * 400);
    let reference = Executor::new(&m, Mode::Reference)
        .run(vec![x.clone()])
        .unwrap();
    for threads in [1, 2, 4] {
        assert_eq!(
            Executor::new(&m, Mode::Fast { threads })
                .run(vec![x.clone()])
                .unwrap(),
            reference
        );
    }
}

/// Weights for the 8-bit kernels: `-128..=127`, or with `wide` 16-bit ones in `-32768..=32639`, which
/// they multiply as two `i8` parts, with `spill` (rarely) one of 32767, which must send the contraction
/// down the wide path with the same result.
fn weights(gen: &mut impl FnMut(usize) -> Vec<i32>, n: usize, wide: bool, spill: bool) -> Vec<i32> {
    let mut v = eight_bit(gen, n, false, false, wide);
    for x in &mut v {
        *x = (*x).min(32639);
    }
    if wide && spill && !v.is_empty() {
        v[n / 3] = 32767;
    }
    v
}

/// Values for the 8-bit kernels: unsigned activations `0..=255`, signed `-128..=127` (or with `wide`,
/// 16-bit ones, `0..=65535` or `-32768..=32767`, which the kernels multiply as two 8-bit halves), or
/// (rarely) one value just outside, which must send the contraction down the wide path with the same
/// result.
fn eight_bit(
    gen: &mut impl FnMut(usize) -> Vec<i32>,
    n: usize,
    unsigned: bool,
    spill: bool,
    wide: bool,
) -> Vec<i32> {
    let bits = if wide { 16 } else { 8 };
    let half = 1 << (bits - 1);
    let mut v: Vec<i32> = gen(n)
        .into_iter()
        .map(|x| {
            let r = x.rem_euclid(1 << bits);
            if unsigned {
                r
            } else {
                r - half
            }
        })
        .collect();
    if spill && !v.is_empty() {
        v[n / 2] = if unsigned { 1 << bits } else { -half - 1 };
    }
    v
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn einsum_8bit_fast_equals_reference(
        m in 1u32..20, k in 1u32..70, n in prop_oneof![1u32..40, Just(16), Just(32), Just(48)], batch in 1u32..3, const_b in any::<bool>(), const_a in any::<bool>(),
        unsigned in any::<bool>(), spill in prop::bool::weighted(0.1), bias in 0u8..3, seed in any::<u64>(),
        sa in 0i8..8, so in 0i8..10, wide in any::<bool>(), wide_w in any::<bool>(), wspill in prop::bool::weighted(0.1),
    ) {
        // bias: none, one per column (`[n]`), or one per row (`[m, 1]`, as a convolution's per channel)
        // a[z, i, k] · b[z, k, j] -> [z, i, j]; a constant operand is packed when the executor is built
        let mut gen = crate::gen(seed, i32::MAX);
        let (ash, bsh, osh) = (vec![batch, m, k], vec![batch, k, n], vec![batch, m, n]);
        let a = eight_bit(&mut gen, (batch * m * k) as usize, unsigned && !const_a, spill, wide);
        let b = weights(&mut gen, (batch * k * n) as usize, wide_w, wspill);
        let mut inputs = vec![];
        let mut consts = vec![];
        let mut run_inputs = vec![];
        for (name, shape, data, is_const, scale) in [("a", ash, a, const_a && !const_b, sa), ("b", bsh, b, const_b, 0)] {
            if is_const {
                consts.push(Const { shape, scale, data: data.into() });
            } else {
                inputs.push(input(name, shape, scale));
                run_inputs.push(data);
            }
        }
        if inputs.is_empty() {
            return Ok(());
        }
        let ni = inputs.len() as u32;
        // value ids: inputs first, then constants, each in a-then-b order
        let a_const = const_a && !const_b;
        let ia = if a_const { ni } else { 0 };
        let ib = match (a_const, const_b) {
            (_, true) => ni,
            (true, false) => 0,
            (false, false) => 1,
        };
        let mut node_inputs = vec![ia, ib];
        if bias > 0 {
            let shape = if bias == 1 { vec![n] } else { vec![m, 1] };
            let len = shape.iter().product::<u32>() as usize;
            consts.push(Const { shape, scale: sa, data: gen(len).into_iter().map(|v| v % 256).collect::<Vec<_>>().into() });
            node_inputs.push(ni + consts.len() as u32 - 1);
        }
        let model = Model::one_node(
            inputs,
            consts,
            Op::EinSum { a: vec![9, 0, 2], b: vec![9, 2, 1], out: vec![9, 0, 1] },
            node_inputs,
            osh,
            so,
        );
        let r = run_all(&model, run_inputs);
        for x in &r[1..] {
            prop_assert_eq!(&r[0], x);
        }
    }

    #[test]
    fn conv_8bit_fast_equals_reference(
        n in 1u32..3, groups in 1u32..3, cg in 1u32..5, og in 1u32..20, h in 1u32..10, w in 1u32..10,
        k in [1u32..4, 1u32..4], s in [1u32..3, 1u32..3], d in [1u32..3, 1u32..3], p in [0u32..3, 0u32..3, 0u32..3, 0u32..3],
        bias in any::<bool>(), unsigned in any::<bool>(), spill in prop::bool::weighted(0.1), seed in any::<u64>(),
        so in 0i8..10, wide in any::<bool>(), wide_w in any::<bool>(), wspill in prop::bool::weighted(0.1),
    ) {
        let window = Window { kernel: k, stride: s, dilation: d, pads: p };
        let Some((oh, ow)) = window.output_hw(h, w) else { return Ok(()) };
        let c = groups * cg;
        let o = groups * og;
        let mut gen = crate::gen(seed, i32::MAX);
        let x = eight_bit(&mut gen, (n * c * h * w) as usize, unsigned, spill, wide);
        let wts = weights(&mut gen, (o * cg * k[0] * k[1]) as usize, wide_w, wspill);
        let mut consts = vec![Const { shape: vec![o, cg, k[0], k[1]], scale: 0, data: wts.into() }];
        let mut ins = vec![0, 1];
        if bias {
            consts.push(Const { shape: vec![o], scale: 3, data: gen(o as usize).into_iter().map(|v| v % 256).collect::<Vec<_>>().into() });
            ins.push(2);
        }
        let m = Model::one_node(vec![input("x", vec![n, c, h, w], 6)], consts, Op::Conv2d { window, groups }, ins, vec![n, o, oh, ow], so);
        let r = run_all(&m, vec![x]);
        for x in &r[1..] {
            prop_assert_eq!(&r[0], x);
        }
    }
}

/// Convolutions and a 1×1 `EinSum` of 12-bit activations by 12-bit (split) weights over reductions
/// longer than one block of the single 16-bit pass (the activations packed straight into its pairs):
/// Inception's 1×7 and 7×1 convolutions (their patches gathered), a 3×3 one (read from the padded
/// image in panels), a 1×1 one read in place, 64-channel inputs (448 to 576 values of `k`), and a
/// 1×1 `EinSum` over 300 channels, signed and unsigned activations — the reference's integers on
/// every thread count and instruction-set level.
#[test]
fn widened_products_over_long_reductions_equal_the_reference() {
    let mut g = crate::gen(0x12ab, 1 << 11);
    let (c, o, h, w) = (64u32, 24u32, 9u32, 13u32);
    for signed in [true, false] {
        let x: Vec<i32> = g((c * h * w) as usize)
            .into_iter()
            .map(|v| if signed { v } else { v.abs() + 1500 })
            .collect();
        for (k, pads) in [
            ([1, 7], [0, 3, 0, 3]),
            ([7, 1], [3, 0, 3, 0]),
            ([3, 3], [1, 1, 1, 1]),
            ([1, 1], [0, 0, 0, 0]),
        ] {
            let window = stride_one(k, pads);
            let (oh, ow) = window.output_hw(h, w).expect("fits");
            let wts: Vec<i32> = g((o * c * k[0] * k[1]) as usize);
            let m = Model::one_node(
                vec![input("x", vec![1, c, h, w], 6)],
                vec![Const {
                    shape: vec![o, c, k[0], k[1]],
                    scale: 0,
                    data: wts.clone().into(),
                }],
                Op::Conv2d { window, groups: 1 },
                vec![0, 1],
                vec![1, o, oh, ow],
                0,
            );
            let r = run_all(&m, vec![x.clone()]);
            assert!(r[0].is_ok(), "{:?}", r[0]);
            for y in &r[1..] {
                assert_eq!(&r[0], y, "kernel {k:?}, signed {signed}");
            }
        }
        // a 1×1 convolution over 300 channels as a contraction over them (a short last block)
        let c = 300;
        let x: Vec<i32> = (0..c * h * w).map(|i| x[i as usize % x.len()]).collect();
        let wts = g((o * c) as usize);
        let m = Model::one_node(
            vec![input("x", vec![c, h * w], 6)],
            vec![Const {
                shape: vec![o, c],
                scale: 0,
                data: wts.into(),
            }],
            Op::EinSum {
                a: b"oc".to_vec(),
                b: b"cp".to_vec(),
                out: b"op".to_vec(),
            },
            vec![1, 0],
            vec![o, h * w],
            0,
        );
        let r = run_all(&m, vec![x.clone()]);
        assert!(r[0].is_ok(), "{:?}", r[0]);
        for y in &r[1..] {
            assert_eq!(&r[0], y, "EinSum, signed {signed}");
        }
    }
}

/// `a · b` for two `n × n` inputs.
fn square_matmul(n: u32) -> Model {
    Model::one_node(
        vec![
            super::input("a", vec![n, n], 0),
            super::input("b", vec![n, n], 0),
        ],
        vec![],
        Op::EinSum {
            a: b"ik".to_vec(),
            b: b"kj".to_vec(),
            out: b"ij".to_vec(),
        },
        vec![0, 1],
        vec![n, n],
        0,
    )
}

/// A run cancelled from another thread stops inside its one long product and reports `Cancelled`; a
/// run whose token is already cancelled does not start; the same executor then runs normally.
#[test]
fn runs_stop_when_cancelled() {
    use verity_engine::{Cancel, ExecError, Executor, Mode};
    // 4096³ multiply-accumulates on values too wide for the 8-bit kernels: seconds of work even on a
    // fast machine (2048³ finished within the 100 ms this test waits before cancelling, on one)
    let n = 4096u32;
    let m = std::sync::Arc::new(square_matmul(n));
    m.validate().unwrap();
    let inputs = |n: u32| {
        vec![
            vec![1000i32; (n * n) as usize],
            vec![-3i32; (n * n) as usize],
        ]
    };
    for threads in [1, 2] {
        let exec = std::sync::Arc::new(Executor::new(m.clone(), Mode::Fast { threads }));
        let token = Cancel::new();
        token.cancel();
        let r = verity_engine::cancel::scope(&token, || exec.run(inputs(n)));
        assert_eq!(r.unwrap_err(), ExecError::Cancelled);

        let token = Cancel::new();
        let (t2, e2, ins) = (token.clone(), exec.clone(), inputs(n));
        let run =
            std::thread::spawn(move || verity_engine::cancel::scope(&t2, || e2.run_trace(ins)));
        std::thread::sleep(std::time::Duration::from_millis(100));
        // meanwhile, another run under its own token on the same pool is not cancelled with it
        let other = square_matmul(256);
        let e = Executor::new(&other, Mode::Fast { threads });
        let own = Cancel::new();
        let ok = std::thread::scope(|s| {
            let h = s.spawn(|| verity_engine::cancel::scope(&own, || e.run(inputs(256))));
            token.cancel();
            h.join().unwrap()
        });
        assert_eq!(ok.unwrap()[0][0], 256 * 1000 * -3);
        assert_eq!(run.join().unwrap().unwrap_err(), ExecError::Cancelled);
    }

    // no token: a small run of the same kind completes
    let small = square_matmul(2);
    let e = Executor::new(&small, Mode::Fast { threads: 1 });
    assert_eq!(
        e.run(vec![vec![1000, 0, 0, 1000], vec![-3, 1, 2, 5]])
            .unwrap(),
        vec![vec![-3000, 1000, 2000, 5000]]
    );
}

/// A head node followed by the chain the fast executor fuses into it: `Mul` by per-channel multipliers
/// (rescaled by 12 bits), a ReLU `Clamp`, then the 8-bit requantization `Clamp`.
fn with_chain(
    head: Node,
    x: Input,
    w: Const,
    channels: u32,
    g: &mut impl FnMut(usize) -> Vec<i32>,
) -> Model {
    let shape = head.shape.clone();
    let mut per_channel = vec![1u32; shape.len()];
    per_channel[shape.len() - 3] = channels;
    let nodes = vec![
        head,
        Node {
            name: "mul".into(),
            op: Op::Mul,
            inputs: vec![3, 2],
            shape: shape.clone(),
            scale: 8,
        },
        Node {
            name: "relu".into(),
            op: Op::Clamp {
                lo: 0,
                hi: i32::MAX,
            },
            inputs: vec![4],
            shape: shape.clone(),
            scale: 8,
        },
        Node {
            name: "q8".into(),
            op: Op::Clamp { lo: 0, hi: 255 },
            inputs: vec![5],
            shape,
            scale: -4,
        },
    ];
    let multipliers = g(channels as usize)
        .into_iter()
        .map(|v| v.rem_euclid(1 << 12) + 1)
        .collect::<Vec<i32>>();
    Model {
        inputs: vec![x],
        consts: vec![
            w,
            Const {
                shape: per_channel,
                scale: 12,
                data: multipliers.into(),
            },
        ],
        nodes,
        outputs: vec![Output {
            name: "y".into(),
            value: 6,
        }],
    }
}

/// Models of each 8-bit kernel (a convolution with stride 1 and with stride 2, a depthwise one on
/// large and on small planes, a 1×1 convolution as `EinSum`) with
/// the chain the fast executor fuses into it, big enough for every kernel to split its output (and
/// run the chain) across threads; 8-bit weights, then the same kernels with 16-bit ones (two parts).
fn chained_eight_bit_models(g: &mut impl FnMut(usize) -> Vec<i32>) -> Vec<Model> {
    let window = stride_one([3, 3], [1, 1, 1, 1]);
    let node = |op: Op, shape: Vec<u32>| Node {
        name: "head".into(),
        op,
        inputs: vec![0, 1],
        shape,
        scale: 8,
    };
    // (the head, the input's shape, the weights' shape, the channels)
    let conv1x1 = |ci: u32, co: u32, h: u32, w: u32| {
        let op = Op::EinSum {
            a: vec![0, 1, 2],
            b: vec![3, 0],
            out: vec![3, 1, 2],
        };
        (node(op, vec![co, h, w]), vec![ci, h, w], vec![co, ci], co)
    };
    let cases = [
        // convolution: 64 output channels × 16·9 × 32·32
        (
            node(Op::Conv2d { window, groups: 1 }, vec![1, 64, 32, 32]),
            vec![1, 16, 32, 32],
            vec![64, 16, 3, 3],
            64,
        ),
        // depthwise: 64 planes of 48·48, 9 taps
        (
            node(Op::Conv2d { window, groups: 64 }, vec![1, 64, 48, 48]),
            vec![1, 64, 48, 48],
            vec![64, 1, 3, 3],
            64,
        ),
        // convolution with stride 2 (patches gathered): 64 output channels × 32·9 × 24·24
        (
            node(
                Op::Conv2d {
                    window: Window {
                        stride: [2, 2],
                        ..window
                    },
                    groups: 1,
                },
                vec![1, 64, 24, 24],
            ),
            vec![1, 32, 48, 48],
            vec![64, 32, 3, 3],
            64,
        ),
        // depthwise on small planes (sixteen channels per register): 400 planes of 7·7
        (
            node(
                Op::Conv2d {
                    window,
                    groups: 400,
                },
                vec![1, 400, 7, 7],
            ),
            vec![1, 400, 7, 7],
            vec![400, 1, 3, 3],
            400,
        ),
        // a 1×1 convolution as EinSum over CHW (weights first), 64 × 32 × 1024
        conv1x1(32, 64, 32, 32),
        // the same over maps whose rows the product pads (7·7 of 64 columns, 14·14 of 208, 50·50
        // of 2512): the rows moved together, then to the chain a part of several rows at a time;
        // rows too long for two to a part, one at a time
        conv1x1(32, 400, 7, 7),
        conv1x1(24, 96, 14, 14),
        conv1x1(24, 16, 50, 50),
    ];
    [false, true]
        .into_iter()
        .flat_map(|wide| cases.clone().into_iter().map(move |c| (c, wide)))
        .map(|((head, xs, ws, channels), wide)| {
            let nw = ws.iter().product::<u32>() as usize;
            let w = Const {
                shape: ws,
                scale: if wide { 12 } else { 4 },
                data: weights(&mut *g, nw, wide, false).into(),
            };
            let m = with_chain(head, input("x", xs, 4), w, channels, &mut *g);
            m.validate().expect("valid");
            m
        })
        .collect()
}

/// An input of `m`'s first input's size, 8-bit unsigned.
fn eight_bit_input(m: &Model, g: &mut impl FnMut(usize) -> Vec<i32>) -> Vec<i32> {
    let n = m.inputs[0].shape.iter().product::<u32>() as usize;
    eight_bit(g, n, true, false, false)
}

#[test]
fn eight_bit_kernels_split_across_threads_with_their_chains() {
    let mut g = crate::gen(7, 1 << 12);
    for m in chained_eight_bit_models(&mut g) {
        let x = eight_bit_input(&m, &mut g);
        let reference = Executor::new(&m, Mode::Reference)
            .run(vec![x.clone()])
            .unwrap();
        // not saturated: the chain's arithmetic shows in the bits compared
        let distinct: std::collections::BTreeSet<i32> = reference[0].iter().copied().collect();
        assert!(
            distinct.len() > 20,
            "{} distinct values for {:?}",
            distinct.len(),
            m.nodes[0].op
        );
        for threads in [1, 2, 3] {
            let fast = Executor::new(&m, Mode::Fast { threads })
                .run(vec![x.clone()])
                .unwrap();
            assert_eq!(fast, reference, "threads {threads}, {:?}", m.nodes[0].op);
        }
    }
}

/// A `Concat` heading a fused chain (the chain runs on each copied part while it is in the cache):
/// along the channels (two long runs, one of them a rescaled constant) and along the last axis (many
/// short runs), parts crossing from one input into the next, split across threads; and inputs whose
/// rescale leaves `i32` (the node's error): the reference's integers or error, traced and untraced.
#[test]
fn concatenations_with_their_chains_equal_reference() {
    let mut g = crate::gen(37, 1 << 12);
    // (input shape, constant shape, axis, output shape)
    for (xs, ws, axis, out) in [
        (
            vec![1u32, 24, 20, 20],
            vec![1u32, 40, 20, 20],
            1u32,
            vec![1u32, 64, 20, 20],
        ),
        (vec![1, 8, 20, 12], vec![1, 8, 20, 7], 3, vec![1, 8, 20, 19]),
    ] {
        let channels = out[1];
        let nw = ws.iter().product::<u32>() as usize;
        let head = Node {
            name: "head".into(),
            op: Op::Concat { axis },
            inputs: vec![0, 1],
            shape: out.clone(),
            scale: 8,
        };
        let w = Const {
            shape: ws,
            scale: 6,
            data: g(nw).into(),
        };
        let m = with_chain(head, input("x", xs.clone(), 4), w, channels, &mut g);
        m.validate().expect("valid");
        let n = xs.iter().product::<u32>() as usize;
        // one executor per thread count for every input: buffers an earlier run left change no bit
        let fast: Vec<_> = [1, 2, 3]
            .map(|threads| Executor::new(&m, Mode::Fast { threads }))
            .into();
        for big in [false, true, false] {
            // values past 2^27 leave i32 when rescaled from scale 4 to 8
            let x: Vec<i32> = g(n)
                .into_iter()
                .map(|v| if big { v | (1 << 28) } else { v })
                .collect();
            let want = Executor::new(&m, Mode::Reference)
                .run(vec![x.clone()])
                .map_err(|e| e.to_string());
            assert_eq!(want.is_err(), big, "{axis}: {want:?}");
            for (ex, threads) in fast.iter().zip(1..) {
                let got = ex.run(vec![x.clone()]).map_err(|e| e.to_string());
                assert_eq!(got, want, "axis {axis}, {threads} threads");
                let traced = ex.run_trace(vec![x.clone()]).map(|t| t.0);
                assert_eq!(
                    traced.map_err(|e| e.to_string()),
                    want,
                    "traced, axis {axis}"
                );
            }
        }
    }
}

/// A steady stream of runs takes its large buffers from the executor's pool: after the first run, a
/// run allocates nothing of 64 KB or more but the output it hands over, and buffers left by earlier
/// runs (on other inputs) change no bit.
#[test]
fn repeated_runs_reuse_their_buffers() {
    let mut g = crate::gen(11, 1 << 12);
    for m in chained_eight_bit_models(&mut g) {
        let fast = Executor::new(&m, Mode::Fast { threads: 1 });
        let reference = Executor::new(&m, Mode::Reference);
        for round in 0..3 {
            let x = eight_bit_input(&m, &mut g);
            let want = reference.run(vec![x.clone()]).unwrap();
            let before = crate::large_allocs();
            let got = fast.run(vec![x]).unwrap();
            let made = crate::large_allocs() - before;
            assert_eq!(got, want, "round {round}, {:?}", m.nodes[0].op);
            assert!(got[0].len() * 4 >= crate::LARGE);
            if round > 0 {
                assert!(
                    made <= 1,
                    "{made} large allocations in round {round}: {:?}",
                    m.nodes[0].op
                );
            }
        }
    }
}

/// Strided slices between kernels (a stride-2 1×1 convolution lowered as two slices and a product, as
/// in a residual network's downsampling branch) also draw their outputs from the pool, and a reshape
/// (with a rescale) of a value no later node reads takes that value's buffer: after the first run,
/// nothing of 64 KB or more is allocated, and the integers stay the reference's.
#[test]
fn strided_slices_and_reshapes_reuse_their_buffers() {
    let mut g = crate::gen(13, 1 << 12);
    let slice =
        |(axis, start, end, step): (u32, u32, u32, u32), input: u32, shape: Vec<u32>| Node {
            name: format!("slice{input}"),
            op: Op::Slice {
                axis,
                start,
                end,
                step,
            },
            inputs: vec![input],
            shape,
            scale: if input >= 4 { 3 } else { 4 },
        };
    // x (0) and w (1); the slice `a` (2) feeds a channel's slice (3) and, last, the reshape (4),
    // whose slice (5) feeds the convolution (6); the outputs (the convolution's and the channel) are
    // small, so that a steady run allocates nothing large at all
    let m = Model {
        inputs: vec![input("x", vec![1, 16, 64, 64], 4)],
        consts: vec![Const {
            shape: vec![2, 16, 1, 1],
            scale: 4,
            data: g(32)
                .into_iter()
                .map(|v| v % 128)
                .collect::<Vec<_>>()
                .into(),
        }],
        nodes: vec![
            slice((3, 1, 64, 2), 0, vec![1, 16, 64, 32]),
            slice((1, 1, 2, 1), 2, vec![1, 1, 64, 32]),
            Node {
                name: "reshape".into(),
                op: Op::Reshape,
                inputs: vec![2],
                shape: vec![1, 16, 32, 64],
                scale: 3,
            },
            slice((3, 1, 64, 2), 4, vec![1, 16, 32, 32]),
            Node {
                name: "conv".into(),
                op: Op::Conv2d {
                    window: stride_one([1, 1], [0; 4]),
                    groups: 1,
                },
                inputs: vec![5, 1],
                shape: vec![1, 2, 32, 32],
                scale: 8,
            },
        ],
        outputs: vec![
            Output {
                name: "y".into(),
                value: 6,
            },
            Output {
                name: "z".into(),
                value: 3,
            },
        ],
    };
    m.validate().expect("valid");
    for threads in [1, 2] {
        let fast = Executor::new(&m, Mode::Fast { threads });
        for round in 0..3 {
            let x = eight_bit_input(&m, &mut g);
            let want = Executor::new(&m, Mode::Reference)
                .run(vec![x.clone()])
                .unwrap();
            let before = crate::large_allocs();
            let got = fast.run(vec![x]).unwrap();
            let made = crate::large_allocs() - before;
            assert_eq!(got, want, "round {round}, {threads} threads");
            if round > 0 && threads == 1 {
                assert_eq!(made, 0, "large allocations in round {round}");
            }
        }
    }
}

/// A fused binary step whose chain value is the *second* operand (`c − chain`, not `chain − c`), at
/// equal scales (no alignment shift) and with the chain first, for every binary op: the fast executor
/// (which fuses them into the convolution) equals the reference.
#[test]
fn fused_binary_steps_keep_their_operand_order() {
    let mut g = crate::gen(11, 1 << 10);
    let window = stride_one([1, 1], [0; 4]);
    let shape = vec![1, 8, 16, 16];
    for op in [Op::Sub, Op::Add, Op::Mul, Op::Max, Op::Min] {
        for chain_first in [false, true] {
            let binary_inputs = if chain_first { vec![3, 2] } else { vec![2, 3] };
            let m = Model {
                inputs: vec![input("x", vec![1, 4, 16, 16], 4)],
                consts: vec![
                    Const {
                        shape: vec![8, 4, 1, 1],
                        scale: 4,
                        data: g(32)
                            .into_iter()
                            .map(|v| v % 128)
                            .collect::<Vec<_>>()
                            .into(),
                    },
                    Const {
                        shape: vec![1, 8, 1, 1],
                        scale: 8,
                        data: g(8).into(),
                    },
                ],
                nodes: vec![
                    Node {
                        name: "conv".into(),
                        op: Op::Conv2d { window, groups: 1 },
                        inputs: vec![0, 1],
                        shape: shape.clone(),
                        scale: 8,
                    },
                    Node {
                        name: "binary".into(),
                        op: op.clone(),
                        inputs: binary_inputs,
                        shape: shape.clone(),
                        scale: 8,
                    },
                ],
                outputs: vec![Output {
                    name: "y".into(),
                    value: 4,
                }],
            };
            m.validate().expect("valid");
            let x: Vec<i32> = g(4 * 16 * 16).into_iter().map(|v| v % 128).collect();
            let reference = Executor::new(&m, Mode::Reference)
                .run(vec![x.clone()])
                .unwrap();
            assert!(reference[0].iter().any(|&v| v != 0));
            for threads in [1, 2] {
                let fast = Executor::new(&m, Mode::Fast { threads })
                    .run(vec![x.clone()])
                    .unwrap();
                let first_diff = fast[0].iter().zip(&reference[0]).position(|(a, b)| a != b);
                assert_eq!(first_diff, None, "{op:?}, chain first: {chain_first}");
            }
        }
    }
}

/// The fast executor on `inputs` gives `want` (outputs, or the error's text) at every instruction-set
/// level (a cap of this thread's and its runs' threads: other tests running meanwhile keep theirs)
/// and at one and two threads.
fn fast_at_every_level_gives(
    m: &Model,
    inputs: &[Vec<i32>],
    want: Result<Vec<Vec<i32>>, String>,
    what: &str,
) {
    for (threads, isa) in [
        (1, Isa::Avx512),
        (2, Isa::Avx512),
        (1, Isa::Avx2),
        (1, Isa::Base),
    ] {
        Isa::cap(isa);
        let got = Executor::new(m, Mode::Fast { threads }).run(inputs.to_vec());
        Isa::cap(Isa::Avx512);
        let got = got.map_err(|e| e.to_string());
        assert_eq!(got, want, "{what}, {threads} threads, {isa:?}");
    }
}

/// A per-channel product by multipliers of 17 to 31 bits (a requantization's), alone or followed by a
/// `Clamp` that shifts again (the fast executor then takes both in one pass, with one composed shift),
/// for joined shifts under 32, at 32 and past it, elements whose results fit `i32` or leave it on
/// either side or both (the product's error at the product's node): the reference's integers, or its error, at every
/// instruction-set level and thread count.
#[test]
fn requantizing_products_with_their_clamps_equal_reference() {
    let shape = vec![1u32, 8, 7, 9];
    let n = 8 * 7 * 9;
    // multipliers of either sign from 2^16 up to near 2^31, one per channel
    let mult = vec![
        1 << 16,
        -(1 << 16) - 3,
        8_332_728,
        -9_667_180,
        (1 << 23) - 1,
        1_234_567_891,
        -2_000_000_011,
        65_537,
    ];
    // (product's shift, clamp's shift or none, clamp bounds)
    let cases: [(i8, Option<i8>, (i32, i32)); 7] = [
        (21, Some(5), (0, 255)),
        (26, Some(6), (-128, 127)),
        (24, Some(8), (-128, 127)),
        (31, Some(9), (-100_000, 100_000)),
        (40, Some(12), (0, 255)),
        (22, Some(0), (-7, 300)),
        (23, None, (0, 0)),
    ];
    let (mut fitted, mut errors) = (0, 0);
    for (r1, r2, (lo, hi)) in cases {
        // elements of both signs (0), only non-negative (1) or non-positive (-1) ones, whose products
        // leave `i32` on one side
        for (mag, sign) in [200, 1 << 12, 1 << 20, i32::MAX]
            .into_iter()
            .flat_map(|m| [(m, 0), (m, 1), (m, -1)])
        {
            let (s0, sm) = (10i8, 30i8);
            let s1 = s0 + sm - r1;
            let mut nodes = vec![
                Node {
                    name: "head".into(),
                    op: Op::Rescale,
                    inputs: vec![0],
                    shape: shape.clone(),
                    scale: s0,
                },
                Node {
                    name: "mul".into(),
                    op: Op::Mul,
                    inputs: vec![2, 1],
                    shape: shape.clone(),
                    scale: s1,
                },
            ];
            if let Some(r2) = r2 {
                nodes.push(Node {
                    name: "clamp".into(),
                    op: Op::Clamp { lo, hi },
                    inputs: vec![3],
                    shape: shape.clone(),
                    scale: s1 - r2,
                });
            }
            let m = Model {
                inputs: vec![input("x", shape.clone(), s0)],
                consts: vec![Const {
                    shape: vec![1, 8, 1, 1],
                    scale: sm,
                    data: mult.clone().into(),
                }],
                outputs: vec![Output {
                    name: "y".into(),
                    value: 1 + nodes.len() as u32,
                }],
                nodes,
            };
            m.validate().expect("valid");
            let x: Vec<i32> = crate::gen(mag as u64 ^ r1 as u64, mag)(n)
                .into_iter()
                .map(|v| {
                    if sign == 0 {
                        v
                    } else {
                        sign * v.saturating_abs()
                    }
                })
                .collect();
            let want = Executor::new(&m, Mode::Reference).run(vec![x.clone()]);
            match &want {
                Ok(y) if y[0].iter().any(|&v| v != lo && v != hi && v != 0) => fitted += 1,
                Ok(_) => {}
                Err(e) => {
                    assert!(e.to_string().contains("mul"), "{e}");
                    errors += 1
                }
            }
            let what = format!("shifts {r1}, {r2:?}, magnitude {mag} (sign {sign})");
            fast_at_every_level_gives(&m, &[x], want.map_err(|e| e.to_string()), &what);
        }
    }
    // both outcomes were exercised
    assert!(
        fitted >= 10 && errors >= 3,
        "{fitted} fitted, {errors} errors"
    );
}

/// A block-quantized product as GGUF models compile to: `acc = EinSum{gk, ogk → og}(x8, q)`, `Mul` by
/// the per-block multipliers, `Mul` by the blocks' scales, `Reduce Sum` over the blocks (the fused
/// block sum), then a residual `Add` so the sum has a reader. With `rows`, `m` activation rows at once
/// (`EinSum{mgk, ogk → mog}`, scales `[m, 1, g]`).
fn block_sum_model(
    o: u32,
    g: u32,
    k: u32,
    rows: Option<u32>,
    q: Vec<i32>,
    mult: Vec<i32>,
    scales: [i8; 4],
) -> Model {
    let [s_m, s_p, s_pm, s_sum] = scales;
    let lead = |s: &[u32], l: &[u8]| match rows {
        Some(m) => ([&[m], s].concat(), [b"m", l].concat()),
        None => (s.to_vec(), l.to_vec()),
    };
    let (x_shape, a) = lead(&[g, k], b"gk");
    let (acc_shape, out) = lead(&[o, g], b"og");
    let (sum_shape, _) = lead(&[o, 1], b"");
    let scale_shape = match rows {
        Some(m) => vec![m, 1, g],
        None => vec![g],
    };
    let node = |name: &str, op: Op, inputs: Vec<ValueId>, shape: Vec<u32>, scale: i8| Node {
        name: name.into(),
        op,
        inputs,
        shape,
        scale,
    };
    // values: 0 x8 [g, k] (scale 7), 1 scales [g] (scale 10), 2 q, 3 mult, then nodes from 4
    Model {
        inputs: vec![
            Input {
                name: "x8".into(),
                shape: x_shape,
                scale: 7,
                kind: InputKind::Fixed,
            },
            Input {
                name: "scales".into(),
                shape: scale_shape,
                scale: 10,
                kind: InputKind::Fixed,
            },
        ],
        consts: vec![
            Const {
                shape: vec![o, g, k],
                scale: 0,
                data: q.into(),
            },
            Const {
                shape: vec![o, g],
                scale: s_m,
                data: mult.into(),
            },
        ],
        nodes: vec![
            node(
                "acc",
                Op::EinSum {
                    a,
                    b: b"ogk".to_vec(),
                    out,
                },
                vec![0, 2],
                acc_shape.clone(),
                7,
            ),
            node("blockscaled", Op::Mul, vec![4, 3], acc_shape.clone(), s_p),
            node("blockvalues", Op::Mul, vec![5, 1], acc_shape.clone(), s_pm),
            node(
                "blocksum",
                Op::Reduce {
                    kind: ReduceKind::Sum,
                    axes: vec![acc_shape.len() as u32 - 1],
                },
                vec![6],
                sum_shape,
                s_sum,
            ),
        ],
        outputs: vec![Output {
            name: "y".into(),
            value: 7,
        }],
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]
    #[test]
    fn fused_block_sums_equal_the_reference(
        o in 1u32..40,
        g in 1u32..6,
        kq in 1u32..5,
        four_bit in any::<bool>(),
        seed in any::<u64>(),
        s_p in 8i8..30,
        s_pm in 0i8..20,
        big in any::<bool>(),
        rows in 0u32..4,
    ) {
        // no leading axis, or 1 to 3 activation rows at once
        let (rows, m) = if rows == 0 { (None, 1) } else { (Some(rows), rows) };
        let k = kq * 8;
        let mut s = seed;
        let mut next = |lo: i64, hi: i64| {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (lo + ((s >> 33) % (hi - lo + 1) as u64) as i64) as i32
        };
        let wmax = if four_bit { 7 } else { 127 };
        let q: Vec<i32> = (0..o * g * k).map(|_| next(-wmax - 1, wmax)).collect();
        // large multipliers and scales drive some runs out of i32 (an error at the same node)
        let mmax = if big { 1 << 30 } else { 1 << 20 };
        let mult: Vec<i32> = (0..o * g).map(|_| next(-mmax, mmax)).collect();
        let x: Vec<i32> = (0..m * g * k).map(|_| next(-127, 127)).collect();
        let sc: Vec<i32> = (0..m * g).map(|_| next(1, if big { i32::MAX as i64 } else { 1 << 16 })).collect();
        let m = block_sum_model(o, g, k, rows, q, mult, [20, s_p, s_pm, s_pm]);
        let runs = run_all(&m, vec![x, sc]);
        for r in &runs[1..] {
            prop_assert_eq!(format!("{r:?}"), format!("{:?}", runs[0]));
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]
    /// A constant matrix times one vector or a few (`EinSum {og, g → o}`, `{og, mg → mo}`, the offset
    /// terms of block-quantized products): the fast path equals the reference, with sums inside 64
    /// bits and with sums that need 128 (large values), and an output that leaves `i32` is the same
    /// error.
    #[test]
    fn constant_matrix_vector_products_equal_the_reference(
        o in 1u32..150,
        g in prop_oneof![1u32..40, 500u32..1200],
        rows in 0u32..4,
        seed in any::<u64>(),
        wmag in 0usize..4,
        xmag in 0usize..4,
        shift in 0i8..40,
    ) {
        // weights of 32, 21, 8 and 4 bits (the last two take the 8-bit path: the constant's own bytes,
        // or a copy of its 4-bit elements), vectors of 32, 21, 16 and 8 bits (beyond 16: exact sums);
        // 16-bit vectors over long rows sum in several i32 runs
        let mut s = seed;
        let mut next = |mag: i64| {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((s >> 33) as i64 % (2 * mag + 1) - mag) as i32
        };
        let mags = [i32::MAX as i64, 1 << 20, 128, 8];
        let cap = [i32::MAX, i32::MAX, 127, 7][wmag];
        let w: Vec<i32> = (0..o * g).map(|_| next(mags[wmag]).min(cap)).collect();
        let xmags = [i32::MAX as i64, 1 << 20, 32767, 128];
        let (xshape, b, out, oshape) = match rows {
            0 => (vec![g], b"g".to_vec(), b"o".to_vec(), vec![o]),
            m => (vec![m, g], b"mg".to_vec(), b"mo".to_vec(), vec![m, o]),
        };
        let x: Vec<i32> = (0..xshape.iter().product::<u32>()).map(|_| next(xmags[xmag])).collect();
        let m = Model::one_node(
            vec![input("x", xshape, 0)],
            vec![Const { shape: vec![o, g], scale: 0, data: w.into() }],
            Op::EinSum { a: b"og".to_vec(), b, out },
            vec![1, 0],
            oshape,
            -shift,
        );
        let runs = run_all(&m, vec![x]);
        for r in &runs[1..] {
            prop_assert_eq!(format!("{r:?}"), format!("{:?}", runs[0]));
        }
    }
}

/// Element-wise kernels over outputs large enough to be split across threads (binary ops with
/// broadcast operands, the scaled-up division, LeakyReLU, softmax along the last axis, a fused chain's
/// tail), behind a leading axis of length one as a language model's rows are: every thread count gives
/// the reference's integers, and an overflow anywhere is the same error.
#[test]
fn large_element_wise_kernels_split_across_threads() {
    let mut g = crate::gen(7, 1 << 20);
    let shape = vec![1u32, 3, 40, 100];
    let n = 3 * 40 * 100;
    let x = g(n);
    let row_max: Vec<i32> = x
        .chunks(100)
        .map(|r| r.iter().map(|v| v.abs()).max().unwrap_or(1).max(1))
        .collect();
    // (op, the second operand's shape, its scale, the output's scale, its values)
    type Case = (Op, Vec<u32>, i8, i8, Vec<i32>);
    let cases: Vec<Case> = vec![
        (Op::Div, vec![1, 3, 40, 1], 0, 27, row_max.clone()),
        (Op::Add, vec![100], 4, 2, g(100)),
        (
            Op::Mul,
            vec![1, 3, 40, 1],
            8,
            0,
            (0..120).map(|i| i - 60).collect(),
        ),
        (Op::Max, vec![1, 1, 40, 100], 2, 0, g(4000)),
    ];
    for (op, bshape, sb, so, b) in cases {
        let m = Model::one_node(
            vec![input("a", shape.clone(), 0), input("b", bshape, sb)],
            vec![],
            op.clone(),
            vec![0, 1],
            shape.clone(),
            so,
        );
        let r = run_all(&m, vec![x.clone(), b]);
        assert!(r[0].is_ok(), "{op:?}: {:?}", r[0]);
        for y in &r[1..] {
            assert_eq!(&r[0], y, "{op:?}");
        }
    }
    // an overflow in the second half of the output: the same error from every executor
    let m = Model::one_node(
        vec![input("a", shape.clone(), 0), input("b", vec![1], 0)],
        vec![],
        Op::Mul,
        vec![0, 1],
        shape.clone(),
        0,
    );
    let mut big = x.clone();
    big[n - 5] = i32::MAX / 2;
    let r = run_all(&m, vec![big, vec![4]]);
    assert!(r[0].is_err());
    for y in &r[1..] {
        assert_eq!(format!("{:?}", r[0]), format!("{y:?}"), "errors differ");
    }
    let m = Model::one_node(
        vec![input("a", shape.clone(), 8)],
        vec![],
        Op::LeakyRelu {
            alpha_q: 13,
            alpha_scale: 7,
        },
        vec![0],
        shape.clone(),
        4,
    );
    let r = run_all(&m, vec![x.clone()]);
    assert!(r[0].is_ok());
    for y in &r[1..] {
        assert_eq!(&r[0], y);
    }
    let lo = -32;
    let table: Vec<i32> = (lo..=0)
        .map(|i| ((i as f64 / 4.0).exp() * 65536.0).round() as i32)
        .collect();
    let t = table.len() as u32;
    let m = Model::one_node(
        vec![input("x", shape.clone(), 14)],
        vec![Const {
            shape: vec![t],
            scale: 16,
            data: table.into(),
        }],
        Op::Softmax {
            axis: 3,
            shift: 2,
            lo,
        },
        vec![0, 1],
        shape.clone(),
        12,
    );
    let r = run_all(&m, vec![x.clone()]);
    assert!(r[0].is_ok());
    for y in &r[1..] {
        assert_eq!(&r[0], y);
    }
}

/// A 3×3 convolution with padding 1 over one `[c_in, hw, hw]` input: `[c_in, c_out, hw]`, the weights
/// and the `[input, weight, output]` scales.
fn same_conv3x3([c_in, c_out, hw]: [u32; 3], w: Vec<i32>, [sx, sw, so]: [i8; 3]) -> Model {
    let window = stride_one([3, 3], [1, 1, 1, 1]);
    Model::one_node(
        vec![input("x", vec![1, c_in, hw, hw], sx)],
        vec![Const {
            shape: vec![c_out, c_in, 3, 3],
            scale: sw,
            data: w.into(),
        }],
        Op::Conv2d { window, groups: 1 },
        vec![0, 1],
        vec![1, c_out, hw, hw],
        so,
    )
}

/// Constants stay at their width in memory: the fast executor reads 8-bit convolution and matrix weights
/// through their packed forms (widening none), the reference executor widens a constant for one node at a
/// time and keeps nothing; both give the same integers.
#[test]
fn narrow_constants_are_not_kept_widened() {
    let mut g = crate::gen(11, 127);
    let conv = same_conv3x3([8, 16, 12], g(16 * 8 * 9), [0, 0, -4]);
    let matvec = Model::one_node(
        vec![input("x", vec![300], 0)],
        vec![Const {
            shape: vec![40, 300],
            scale: 0,
            data: g(40 * 300).into(),
        }],
        Op::EinSum {
            a: b"og".to_vec(),
            b: b"g".to_vec(),
            out: b"o".to_vec(),
        },
        vec![1, 0],
        vec![40],
        -4,
    );
    for (m, n) in [(&conv, 8 * 144), (&matvec, 300)] {
        m.validate().expect("valid");
        let c = &m.consts[0].data;
        assert_eq!(c.width(), verity_engine::vty::Width::I8);
        let narrow = c.resident_bytes();
        assert_eq!(narrow, c.len());
        let x = g(n);
        let fast = Executor::new(m, Mode::Fast { threads: 1 })
            .run(vec![x.clone()])
            .expect("fast");
        assert_eq!(
            c.resident_bytes(),
            narrow,
            "the fast executor widened weights"
        );
        let reference = Executor::new(m, Mode::Reference)
            .run(vec![x])
            .expect("reference");
        assert_eq!(
            c.resident_bytes(),
            narrow,
            "the reference executor kept a copy"
        );
        assert_eq!(fast, reference);
    }
}

/// Kernels reading an activation a `Clamp` made take its magnitude and 8-bit form from the clamp's
/// bounds instead of scanning it; the integers are the reference's for 8-bit bounds (signed and
/// unsigned), 16-bit ones, bounds wider than the kernels take, and when the clamp rescales.
#[test]
fn clamped_activations_give_the_reference_integers() {
    let mut g = crate::gen(5, 1 << 12);
    let window = Window {
        kernel: [3, 3],
        stride: [2, 2],
        dilation: [1, 1],
        pads: [1, 1, 1, 1],
    };
    // (the op after the clamp, its weights' shape, its output shape)
    let ops = [
        (
            Op::Conv2d { window, groups: 1 },
            vec![12u32, 6, 3, 3],
            vec![1u32, 12, 5, 5],
        ),
        (
            Op::Conv2d { window, groups: 6 },
            vec![6, 1, 3, 3],
            vec![1, 6, 5, 5],
        ),
        (
            Op::EinSum {
                a: vec![0, 1, 2, 3],
                b: vec![4, 1],
                out: vec![0, 4, 2, 3],
            },
            vec![7, 6],
            vec![1, 7, 10, 10],
        ),
    ];
    // (clamp bounds, the clamp's rescale, the weights' magnitude, the input's): 16-bit weights and
    // inputs at the bounds make sums that leave i32, which a magnitude taken too small would overflow
    for (lo, hi, rescale, wmag, xmag) in [
        (-128, 127, 0, 128, 1 << 12),
        (0, 255, 0, 128, 1 << 12),
        (-128, 127, 3, 128, 1 << 12),
        (-3000, 3000, 0, 128, 1 << 12),
        (-30000, 30000, 0, 32768, 1 << 20),
        (i32::MIN, i32::MAX, 0, 128, 1 << 12),
    ] {
        for (op, wshape, oshape) in &ops {
            let wn = wshape.iter().product::<u32>() as usize;
            let w: Vec<i32> = crate::gen(wn as u64, wmag - 1)(wn);
            let m = Model {
                inputs: vec![input("x", vec![1, 6, 10, 10], 6)],
                consts: vec![Const {
                    shape: wshape.clone(),
                    scale: 0,
                    data: w.into(),
                }],
                nodes: vec![
                    Node {
                        name: "clamp".into(),
                        op: Op::Clamp { lo, hi },
                        inputs: vec![0],
                        shape: vec![1, 6, 10, 10],
                        scale: 6 - rescale,
                    },
                    Node {
                        name: "op".into(),
                        op: op.clone(),
                        inputs: vec![2, 1],
                        shape: oshape.clone(),
                        scale: 6 - rescale - 4,
                    },
                ],
                outputs: vec![Output {
                    name: "y".into(),
                    value: 3,
                }],
            };
            m.validate().expect("valid");
            let x: Vec<i32> = g(600).into_iter().map(|v| v * (xmag >> 12)).collect();
            let r = run_all(&m, vec![x]);
            assert!(r[0].is_ok(), "{lo}..{hi}: {:?}", r[0]);
            for other in &r[1..] {
                assert_eq!(&r[0], other, "{lo}..{hi} rescale {rescale} {op:?}");
            }
        }
    }
}

/// Depthwise convolutions over the geometries the 16-bit pair kernels take (stride 1 and 2, odd and
/// even kernels, asymmetric padding, widths around their 16- and 32-column blocks, channel
/// multipliers; dilations of rows, columns or both, for the pairs down a column, also with a row
/// stride of 2) and some they leave to the others (strides 3, a column stride 2 with dilation, values
/// past 16 bits), with 8- and 16-bit
/// inputs and weights, a bias, with and without a requantizing shift: the fast executor gives the
/// reference integers at every instruction-set level and thread count.
#[test]
fn depthwise_convolutions_equal_reference() {
    let mut g = crate::gen(23, 1 << 20);
    // (kernel, stride, dilation, pads [top, left, bottom, right], input h × w, channel multiplier)
    type Geometry = ([u32; 2], [u32; 2], [u32; 2], [u32; 4], [u32; 2], u32);
    let geometries: [Geometry; 21] = [
        ([3, 3], [1, 1], [1, 1], [1, 1, 1, 1], [9, 31], 1),
        ([3, 3], [1, 1], [1, 1], [1, 1, 1, 1], [5, 32], 1),
        ([3, 3], [1, 1], [1, 1], [0, 1, 2, 0], [7, 33], 2),
        ([3, 3], [2, 2], [1, 1], [1, 1, 1, 1], [11, 31], 1),
        ([3, 3], [2, 2], [1, 1], [0, 0, 1, 1], [8, 34], 1),
        ([5, 5], [1, 1], [1, 1], [2, 2, 2, 2], [6, 65], 1),
        ([5, 5], [2, 2], [1, 1], [2, 2, 2, 2], [9, 17], 2),
        ([2, 4], [1, 2], [1, 1], [0, 1, 1, 2], [4, 9], 1),
        ([1, 1], [1, 1], [1, 1], [0, 0, 0, 0], [3, 5], 1),
        ([7, 7], [1, 1], [1, 1], [3, 3, 3, 3], [8, 8], 1),
        ([3, 3], [1, 1], [2, 2], [2, 2, 2, 2], [6, 20], 1),
        ([3, 3], [3, 3], [1, 1], [1, 1, 1, 1], [10, 22], 1),
        ([5, 5], [1, 1], [2, 2], [4, 4, 4, 4], [14, 14], 1),
        ([3, 3], [2, 2], [2, 2], [1, 2, 2, 1], [13, 21], 2),
        ([4, 3], [1, 3], [3, 1], [2, 0, 1, 3], [11, 40], 1),
        // dilated (wide rows, odd widths, rows or columns only, stride 2)
        ([3, 3], [1, 1], [2, 2], [2, 2, 2, 2], [7, 70], 1),
        ([3, 3], [1, 1], [1, 2], [1, 2, 0, 3], [5, 33], 2),
        ([4, 5], [1, 1], [2, 2], [3, 4, 2, 3], [9, 12], 1),
        ([3, 3], [1, 1], [2, 1], [2, 1, 2, 1], [8, 35], 1),
        ([3, 3], [2, 2], [3, 1], [3, 1, 3, 1], [13, 37], 1),
        ([3, 3], [2, 1], [2, 3], [2, 3, 2, 3], [11, 19], 2),
    ];
    for (kernel, stride, dilation, pads, [h, w], mult) in geometries {
        let window = Window {
            kernel,
            stride,
            dilation,
            pads,
        };
        // (unsigned 8-bit, signed 8-bit, 16-bit, 16-bit with one value past it) × 8- or 16-bit weights
        let cases = [(0, false), (1, false), (2, false), (2, true), (3, false)];
        depthwise_equals_reference(&mut g, window, [1, 3, h, w], mult, &cases);
    }
}

/// A depthwise convolution (`groups` = `c`, `mult` outputs per channel) of `n × c` planes of `h × w`,
/// with a bias, with and without a requantizing shift, for each of `cases` (the input's kind —
/// unsigned 8-bit, signed 8-bit, 16-bit, 16-bit with one value past it — and whether the weights have
/// 16 bits): the fast executor gives the reference's integers at every instruction-set level and
/// thread count.
fn depthwise_equals_reference(
    g: &mut impl FnMut(usize) -> Vec<i32>,
    window: Window,
    [n, c, h, w]: [u32; 4],
    mult: u32,
    cases: &[(usize, bool)],
) {
    let (oh, ow) = window.output_hw(h, w).expect("fits");
    let (o, kernel) = (c * mult, window.kernel);
    let nw = (o * kernel[0] * kernel[1]) as usize;
    let len = (n * c * h * w) as usize;
    for (case, &(xk, wide_w)) in cases.iter().enumerate() {
        let x = match xk {
            0 => eight_bit(&mut *g, len, true, false, false),
            1 => eight_bit(&mut *g, len, false, false, false),
            2 => eight_bit(&mut *g, len, false, false, true),
            _ => eight_bit(&mut *g, len, false, true, true),
        };
        let wv = eight_bit(&mut *g, nw, false, false, wide_w);
        for out_scale in [8, 3] {
            let m = Model::one_node(
                vec![input("x", vec![n, c, h, w], 4)],
                vec![
                    Const {
                        shape: vec![o, 1, kernel[0], kernel[1]],
                        scale: 4,
                        data: wv.clone().into(),
                    },
                    Const {
                        shape: vec![o],
                        scale: 6,
                        data: g(o as usize).into(),
                    },
                ],
                Op::Conv2d { window, groups: c },
                vec![0, 1, 2],
                vec![n, o, oh, ow],
                out_scale,
            );
            m.validate().expect("valid");
            let want = Executor::new(&m, Mode::Reference).run(vec![x.clone()]);
            let what =
                format!("{window:?} {n}×{c}×{h}×{w} ×{mult}, case {case}, scale {out_scale}");
            fast_at_every_level_gives(
                &m,
                std::slice::from_ref(&x),
                want.map_err(|e| e.to_string()),
                &what,
            );
        }
    }
}

/// Depthwise convolutions on small planes, which the fast executor takes sixteen channels per register
/// (an AVX-512 register per image position): full and partial blocks of 16 channels, blocks that cross
/// from one batch element into the next, strides 1 and 2 (and 2 along rows only), kernels of 1×1 to
/// 7×7 (one larger than the image), asymmetric and missing padding (an image row and column no tap
/// reads), a dilation the pairs down a column
/// refuse (column stride 2), 8- and 16-bit inputs and weights, a value past 16 bits (another kernel),
/// a bias, with and without a requantizing shift, outputs large enough to split across threads: the
/// reference integers at every instruction-set level and thread count.
#[test]
fn small_plane_depthwise_convolutions_equal_reference() {
    let mut g = crate::gen(29, 1 << 20);
    // (kernel, stride, dilation, pads [top, left, bottom, right], input h × w)
    type Geometry = ([u32; 2], [u32; 2], [u32; 2], [u32; 4], [u32; 2]);
    let geometries: [Geometry; 11] = [
        ([3, 3], [1, 1], [1, 1], [1, 1, 1, 1], [7, 7]),
        // no padding at stride 2 over an even image: its last row and column are read by no tap
        ([3, 3], [2, 2], [1, 1], [0, 0, 0, 0], [8, 8]),
        ([3, 3], [1, 1], [1, 1], [1, 1, 1, 1], [16, 16]),
        ([3, 3], [2, 2], [1, 1], [1, 1, 1, 1], [14, 14]),
        ([5, 5], [1, 1], [1, 1], [2, 2, 2, 2], [14, 14]),
        ([5, 5], [2, 2], [1, 1], [2, 2, 2, 2], [13, 13]),
        ([7, 7], [1, 1], [1, 1], [3, 3, 3, 3], [5, 6]),
        ([2, 4], [2, 1], [1, 1], [0, 1, 2, 0], [9, 16]),
        ([1, 1], [1, 1], [1, 1], [0, 0, 0, 0], [1, 3]),
        ([3, 3], [2, 2], [2, 2], [2, 1, 0, 2], [11, 11]),
        ([3, 5], [1, 1], [1, 1], [0, 0, 0, 0], [4, 16]),
    ];
    for (kernel, stride, dilation, pads, [h, w]) in geometries {
        let window = Window {
            kernel,
            stride,
            dilation,
            pads,
        };
        // 16 channels (one block), 37 in two batch elements (blocks across them, a partial last one)
        for (n, c) in [(1u32, 16u32), (2, 37)] {
            let cases = [(0, false), (1, false), (2, true), (3, false)];
            depthwise_equals_reference(&mut g, window, [n, c, h, w], 1, &cases);
        }
    }
}

/// A constant matrix with a few nonzero weights per column applied along one axis (a linear resize's
/// interpolation, which the fast executor sums over those taps only), along each axis, followed by a
/// fused chain: the reference integers at every instruction-set level and thread count, with rows
/// held in registers (up to 32 elements) and gathered (longer), columns of 0 to 3 taps, and inputs
/// large enough that a sum leaves `i32` (the product's path and its error then).
#[test]
fn sparse_axis_products_equal_reference() {
    let mut g = crate::gen(31, 1 << 12);
    // (input shape, axis, output length)
    for (shape, axis, n) in [
        (vec![1u32, 3, 28, 28], 3usize, 224u32),
        (vec![1, 3, 28, 28], 2, 224),
        (vec![2, 2, 5, 40], 3, 90),
        (vec![1, 4, 9, 7], 3, 14),
        (vec![1, 2, 12, 6], 2, 5),
    ] {
        let k = shape[axis];
        let mut w = vec![0i32; (k * n) as usize];
        for o in 0..n {
            // 1 to 3 taps near the source position; every seventh column empty
            let taps = if o % 7 == 6 { 0 } else { 1 + o % 3 };
            let at = (o as u64 * k as u64 / n as u64) as u32;
            for t in 0..taps {
                let i = (at + t).min(k - 1);
                w[(i * n + o) as usize] += g(1)[0] >> 5;
            }
        }
        let mut out_shape = shape.clone();
        out_shape[axis] = n;
        let a: Vec<u8> = (0..4).collect();
        let mut out = a.clone();
        out[axis] = 4;
        for (xmag, scalar) in [(1 << 7, 3000), (1 << 12, 70_000), (i32::MAX, 1)] {
            let numel = |s: &[u32]| s.iter().product::<u32>() as usize;
            let m = Model {
                inputs: vec![input("x", shape.clone(), 7)],
                consts: vec![
                    Const {
                        shape: vec![k, n],
                        scale: 6,
                        data: w.clone().into(),
                    },
                    Const {
                        shape: vec![],
                        scale: 12,
                        data: vec![scalar].into(),
                    },
                ],
                nodes: vec![
                    Node {
                        name: "resize".into(),
                        op: Op::EinSum {
                            a: a.clone(),
                            b: vec![axis as u8, 4],
                            out: out.clone(),
                        },
                        inputs: vec![0, 1],
                        shape: out_shape.clone(),
                        scale: 9,
                    },
                    Node {
                        name: "mul".into(),
                        op: Op::Mul,
                        inputs: vec![3, 2],
                        shape: out_shape.clone(),
                        scale: 16,
                    },
                    Node {
                        name: "clamp".into(),
                        op: Op::Clamp {
                            lo: -(1 << 20),
                            hi: 1 << 20,
                        },
                        inputs: vec![4],
                        shape: out_shape.clone(),
                        scale: 16,
                    },
                ],
                outputs: vec![Output {
                    name: "y".into(),
                    value: 5,
                }],
            };
            m.validate().expect("valid");
            let x: Vec<i32> = crate::gen(xmag as u64, xmag)(numel(&shape));
            let r = run_all(&m, vec![x]);
            if xmag < 1 << 20 {
                assert!(r[0].is_ok(), "{shape:?} axis {axis}: {:?}", r[0]);
            }
            for other in &r[1..] {
                assert_eq!(&r[0], other, "{shape:?} axis {axis} → {n}, |x| ≤ {xmag}");
            }
        }
    }
}

/// A stride-2 8-bit convolution (the gathered-patch path, as a network's stem) whose output planes are
/// larger than the parts its requantization hands on, followed by a chain adding a full-size tensor:
/// every part reaches the chain at its own place (an element handed on at another index would add the
/// wrong element of the other tensor). The reference integers at every instruction-set level and
/// thread count.
#[test]
fn strided_convolutions_hand_every_part_of_their_planes_to_the_chain() {
    let mut g = crate::gen(41, 127);
    let window = Window {
        kernel: [3, 3],
        stride: [2, 2],
        dilation: [1, 1],
        pads: [1, 1, 1, 1],
    };
    let (c_in, c_out, hw, o) = (3u32, 4u32, 160u32, 80u32);
    let out = vec![1, c_out, o, o];
    let n = |s: &[u32]| s.iter().product::<u32>() as usize;
    let m = Model {
        inputs: vec![
            input("x", vec![1, c_in, hw, hw], 0),
            input("r", out.clone(), 6),
        ],
        consts: vec![Const {
            shape: vec![c_out, c_in, 3, 3],
            scale: 6,
            data: g(n(&[c_out, c_in, 3, 3])).into(),
        }],
        nodes: vec![
            Node {
                name: "conv".into(),
                op: Op::Conv2d { window, groups: 1 },
                inputs: vec![0, 2],
                shape: out.clone(),
                scale: 6,
            },
            Node {
                name: "residual".into(),
                op: Op::Add,
                inputs: vec![3, 1],
                shape: out.clone(),
                scale: 6,
            },
            Node {
                name: "q8".into(),
                op: Op::Clamp { lo: -128, hi: 127 },
                inputs: vec![4],
                shape: out.clone(),
                scale: 2,
            },
        ],
        outputs: vec![Output {
            name: "y".into(),
            value: 5,
        }],
    };
    m.validate().expect("valid");
    let x = g(n(&[1, c_in, hw, hw]));
    let r: Vec<i32> = crate::gen(43, 1 << 14)(n(&out));
    let runs = run_all(&m, vec![x, r]);
    assert!(runs[0].is_ok(), "{:?}", runs[0]);
    let y = &runs[0].as_ref().unwrap()[0];
    assert!(y.iter().any(|&v| v > 0) && y.iter().any(|&v| v < 0));
    for other in &runs[1..] {
        assert_eq!(&runs[0], other);
    }
}
