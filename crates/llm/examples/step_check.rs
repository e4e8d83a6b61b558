//! Compiles a GGUF model's decode step and compares it, token by token, with the float forward pass:
//! `cargo run --release -p verity-llm --example step_check -- model.gguf [context] [steps] [threads]`.
use std::time::Instant;

use verity_llm::gguf::Gguf;
use verity_llm::reference::Reference;
use verity_llm::session::argmax;
use verity_llm::{Session, Weights};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let path = std::path::Path::new(&args[1]);
    let context: usize = args.get(2).map_or(64, |s| s.parse().expect("context"));
    let steps: usize = args.get(3).map_or(16, |s| s.parse().expect("steps"));
    let threads: usize = args.get(4).map_or(1, |s| s.parse().expect("threads"));
    let t0 = Instant::now();
    let g = Gguf::open(path).expect("gguf");
    let step = verity_llm::compile(&g, context).expect("compile");
    println!(
        "compiled in {:.1} s: {} nodes, {} constants; {:?}",
        t0.elapsed().as_secs_f64(),
        step.model.nodes.len(),
        step.model.consts.len(),
        step.report
    );
    let w = Weights::load(&g).expect("weights");
    let mut r = Reference::new(&w);
    if std::env::var("Q8").is_ok() {
        verity_llm::reference::set_q8_activations(true);
    }
    let mut s = Session::new(&step, threads);
    let ls = step
        .model
        .value(step.model.outputs[0].value)
        .expect("logits")
        .scale;
    let mut tok = g.get_u64("tokenizer.ggml.bos_token_id").unwrap_or(1) as u32;
    let mut times = Vec::new();
    let mut agree = 0;
    for i in 0..steps {
        let want = r.step(tok as usize);
        let t = Instant::now();
        let got = s.feed(tok).expect("step");
        times.push(t.elapsed().as_secs_f64());
        let got: Vec<f64> = got
            .iter()
            .map(|&v| v as f64 * (-(ls as f64)).exp2())
            .collect();
        let max = want.iter().fold(0f64, |m, v| m.max(v.abs()));
        let err = got
            .iter()
            .zip(&want)
            .fold(0f64, |m, (a, b)| m.max((a - b).abs()));
        let ga = argmax(&got) as usize;
        let wa = argmax(&want) as usize;
        agree += (ga == wa) as usize;
        println!(
            "pos {i}: token {tok}, max err {err:.4} of max |logit| {max:.2} ({:.2}%), argmax {ga} vs {wa}, {:.1} ms",
            100.0 * err / max,
            times[i] * 1e3
        );
        // follow the reference's greedy choice so both see the same tokens
        tok = wa as u32;
    }
    times.sort_by(|a, b| a.partial_cmp(b).expect("times"));
    println!(
        "argmax agreement {agree}/{steps}; median step {:.1} ms",
        times[times.len() / 2] * 1e3
    );
}
