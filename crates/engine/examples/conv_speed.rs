//! Time one 8-bit convolution node through the fast executor: `cargo run --release -p verity-engine --example conv_speed [c o hw k stride [groups]]`.
use std::time::Instant;
use verity_engine::ir::{Const, Input, InputKind, Model, Op, Window};
use verity_engine::{Executor, Mode};

/// The allocator the `verity` binary uses, so timings match the node's.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    let a: Vec<u32> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let (c, o, hw, k, s, g) = match a[..] {
        [c, o, hw, k, s] => (c, o, hw, k, s, 1),
        [c, o, hw, k, s, g] => (c, o, hw, k, s, g),
        _ => (64, 64, 56, 3, 1, 1),
    };
    let window = Window {
        kernel: [k, k],
        stride: [s, s],
        dilation: [1, 1],
        pads: [k / 2; 4],
    };
    let (oh, ow) = window.output_hw(hw, hw).expect("fits");
    let w: Vec<i32> = (0..o * (c / g) * k * k)
        .map(|i| (i * 31 % 255) as i32 - 127)
        .collect();
    let m = Model::one_node(
        vec![Input {
            name: "x".into(),
            shape: vec![1, c, hw, hw],
            scale: 4,
            kind: InputKind::Fixed,
        }],
        vec![Const {
            shape: vec![o, c / g, k, k],
            scale: 0,
            data: w.into(),
        }],
        Op::Conv2d { window, groups: g },
        vec![0, 1],
        vec![1, o, oh, ow],
        4,
    );
    m.validate().expect("valid");
    let x: Vec<i32> = (0..c * hw * hw).map(|i| (i * 7 % 256) as i32).collect();
    let ex = Executor::new(&m, Mode::Fast { threads: 1 });
    ex.run(vec![x.clone()]).expect("runs");
    let reps = 200;
    let t = Instant::now();
    for _ in 0..reps {
        std::hint::black_box(ex.run(vec![x.clone()]).expect("runs"));
    }
    let sec = t.elapsed().as_secs_f64() / reps as f64;
    let macs = (o * (c / g) * k * k * oh * ow) as f64;
    println!(
        "conv c={c} o={o} hw={hw} k={k} s={s} groups={g}: {:.3} ms, {:.1} GMAC/s",
        sec * 1e3,
        macs / sec / 1e9
    );
}
