//! The float pass's and the canonical step's logits of chosen tokens at one position:
//! `ref_logits model.gguf pos id,id,… token token …`.
fn main() {
    let a: Vec<String> = std::env::args().collect();
    let g = verity_llm::gguf::Gguf::open(std::path::Path::new(&a[1])).expect("gguf");
    let pos: usize = a[2].parse().expect("pos");
    let ids: Vec<usize> = a[3].split(',').map(|s| s.parse().expect("id")).collect();
    let toks: Vec<u32> = a[4..].iter().map(|s| s.parse().expect("token")).collect();
    let w = verity_llm::Weights::load(&g).expect("weights");
    let mut r = verity_llm::reference::Reference::new(&w);
    let step = verity_llm::compile(&g, 64).expect("compile");
    let ls = step
        .model
        .value(step.model.outputs[0].value)
        .expect("logits")
        .scale as f64;
    let mut s = verity_llm::Session::new(&step, 1);
    for (p, &t) in toks.iter().enumerate() {
        let f = r.step(t as usize);
        let q = s.feed(t).expect("step");
        if p == pos {
            for &i in &ids {
                println!(
                    "id {i}: f64 {:.3}  canonical {:.3}",
                    f[i],
                    q[i] as f64 * (-ls).exp2()
                );
            }
        }
    }
}
