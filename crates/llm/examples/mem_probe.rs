//! Where a language model's memory goes: `mem_probe model.gguf [context]` prints the process's resident
//! size after opening the GGUF, compiling the step, creating a session, one step, and a second session
//! beside the first (what a node's second worker thread adds). Linux only (reads `/proc/self/status`).
use std::collections::BTreeSet;

fn rss_mb() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb / 1024)
}

fn main() {
    let a: Vec<String> = std::env::args().collect();
    let context: usize = a.get(2).map_or(1024, |s| s.parse().expect("context"));
    let g = verity_llm::gguf::Gguf::open(std::path::Path::new(&a[1])).expect("gguf");
    println!("GGUF open            {:>6} MB", rss_mb());
    let step = verity_llm::compile(&g, context).expect("compile");
    let consts = || {
        let mut seen = BTreeSet::new();
        let mut bytes = 0usize;
        for m in std::iter::once(&step.model).chain(step.variants.iter().map(|v| &v.model)) {
            for c in &m.consts {
                if seen.insert(c.data.identity()) {
                    bytes += c.data.resident_bytes();
                }
            }
        }
        bytes >> 20
    };
    println!(
        "step compiled        {:>6} MB ({} variants; their distinct constants {} MB)",
        rss_mb(),
        step.variants.len(),
        consts()
    );
    drop(g);
    println!("GGUF dropped         {:>6} MB", rss_mb());
    let mut s = verity_llm::Session::new(&step, 1);
    println!("session              {:>6} MB", rss_mb());
    s.feed(1).expect("step");
    println!(
        "one step             {:>6} MB (constants {} MB)",
        rss_mb(),
        consts()
    );
    let beside = s.beside(1);
    println!("a second session     {:>6} MB", rss_mb());
    drop(beside);
}
