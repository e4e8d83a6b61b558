//! Prints the step model's nodes whose names contain a pattern: `nodes model.gguf pattern`.
fn main() {
    let a: Vec<String> = std::env::args().collect();
    let g = verity_llm::gguf::Gguf::open(std::path::Path::new(&a[1])).expect("gguf");
    let s = verity_llm::compile(&g, 8).expect("compile");
    let m = &s.model;
    for n in &m.nodes {
        if n.name.contains(&a[2]) {
            let ins: Vec<String> = n
                .inputs
                .iter()
                .map(|&v| {
                    let i = m.value(v).expect("value");
                    format!("{:?}@{}", i.shape, i.scale)
                })
                .collect();
            println!(
                "{:30} {:10} {:?}@{} <- {}",
                n.name,
                n.op.name(),
                n.shape,
                n.scale,
                ins.join(", ")
            );
        }
    }
}
