//! Where the canonical step and the float pass part: `step_probe model.gguf [steps]` runs both on the
//! same greedy tokens and, at the last step, prints each named intermediate's largest difference.
use verity_engine::{Executor, Mode};
use verity_llm::gguf::Gguf;
use verity_llm::reference::Reference;
use verity_llm::session::argmax;
use verity_llm::{Session, Weights};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let g = Gguf::open(std::path::Path::new(&args[1])).expect("gguf");
    let steps: usize = args.get(2).map_or(1, |s| s.parse().expect("steps"));
    let step = verity_llm::compile(&g, 16).expect("compile");
    let w = Weights::load(&g).expect("weights");
    let mut r = Reference::new(&w);
    if std::env::var("Q8").is_ok() {
        verity_llm::reference::set_q8_activations(true);
    }
    let mut s = Session::new(&step, 1);
    let mut tok = 1u32;
    for _ in 0..steps - 1 {
        let l = r.step(tok as usize);
        s.feed(tok).expect("step");
        tok = argmax(&l);
    }
    r.probe = Some(Vec::new());
    r.step(tok as usize);
    let inputs = s.inputs(tok);
    let exec = Executor::new(&step.model, Mode::Fast { threads: 1 });
    let (_, trace) = exec.run_trace(inputs).expect("run");
    let m = &step.model;
    for (name, want) in r.probe.take().expect("probe") {
        let Some(k) = m.nodes.iter().position(|n| n.name == name) else {
            println!("{name}: no node");
            continue;
        };
        let node = &m.nodes[k];
        let got = &trace.tensors[m.inputs.len() + k];
        let unit = (-(node.scale as f64)).exp2();
        let max = want.iter().fold(0f64, |a, v| a.max(v.abs()));
        let err = got
            .iter()
            .zip(&want)
            .fold(0f64, |a, (&g, w)| a.max((g as f64 * unit - w).abs()));
        println!(
            "{name:24} max |ref| {max:10.4}  max err {err:10.6} ({:.3}%)",
            100.0 * err / max
        );
    }
}
