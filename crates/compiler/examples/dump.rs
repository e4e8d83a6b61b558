//! Print the decluttered tract graph of an ONNX model as the importer sees it (a debugging aid).
use tract_onnx::prelude::*;

fn main() -> TractResult<()> {
    let path = std::env::args().nth(1).expect("usage: dump model.onnx");
    let mut model = tract_onnx::onnx().model_for_path(&path)?.into_typed()?;
    verity_compiler::import::declutter(&mut model)?;
    for id in model.eval_order()? {
        let node = model.node(id);
        let facts: Vec<String> = model
            .node_output_facts(id)?
            .iter()
            .map(|f| format!("{f:?}"))
            .collect();
        println!(
            "{:>3} {:<28} {:<20} in={:?} {:?} out={:?}",
            id,
            node.name,
            node.op.name(),
            node.inputs,
            node.op,
            facts
        );
    }
    Ok(())
}
