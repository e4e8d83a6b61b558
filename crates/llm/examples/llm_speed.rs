//! Decode speed of a GGUF model's canonical step: `llm_speed model.gguf [context] [tokens] [threads]`
//! compiles the step, feeds `tokens` greedy tokens and prints the median and mean step time.
use std::time::Instant;

fn main() {
    let a: Vec<String> = std::env::args().collect();
    let context: usize = a.get(2).map_or(256, |s| s.parse().expect("context"));
    let tokens: usize = a.get(3).map_or(32, |s| s.parse().expect("tokens"));
    let threads: usize = a.get(4).map_or(1, |s| s.parse().expect("threads"));
    let g = verity_llm::gguf::Gguf::open(std::path::Path::new(&a[1])).expect("gguf");
    let t0 = Instant::now();
    let step = verity_llm::compile(&g, context).expect("compile");
    println!(
        "compiled in {:.1} s ({} nodes)",
        t0.elapsed().as_secs_f64(),
        step.model.nodes.len()
    );
    let mut s = verity_llm::Session::new(&step, threads);
    let mut tok = 1;
    let mut times = Vec::new();
    for _ in 0..tokens.min(context) {
        let t = Instant::now();
        let l = s.feed(tok).expect("step");
        times.push(t.elapsed().as_secs_f64() * 1e3);
        tok = verity_llm::session::argmax(&l);
    }
    let mean = times.iter().sum::<f64>() / times.len() as f64;
    times.sort_by(|a, b| a.total_cmp(b));
    println!(
        "{} steps at context {context}, {threads} thread(s): median {:.1} ms, mean {mean:.1} ms ({:.1} tokens/s)",
        times.len(),
        times[times.len() / 2],
        1e3 / mean
    );
}
