//! The one-step evaluator of fraud proofs on the bundled fixtures: every element of every node, computed
//! alone from its operands, equals the run; witnesses verify against the golden model ID and trace root.

use verity_engine::commit::trace_root;
use verity_engine::onestep::{check_every_element, prove_step, verify_step};
use verity_engine::{Executor, Mode};

use crate::{compile_fixture, json_file, manifest, root};

/// A compiled fixture, its quantized input and its trace.
pub fn traced(
    dir: &std::path::Path,
    name: &str,
    flags: &[String],
) -> (verity_engine::Model, verity_engine::Trace) {
    let vty = compile_fixture(dir, name, flags);
    let (model, _) = verity_engine::vty::decode(&std::fs::read(vty).unwrap()).unwrap();
    let text = std::fs::read_to_string(root().join(format!("fixtures/{name}.input.json"))).unwrap();
    let floats = verity_engine::io::inputs_from_json(&model, &text).unwrap();
    let q = verity_engine::io::quantize_inputs(&model, &floats).unwrap();
    let (_, trace) = Executor::new(&model, Mode::default()).run_trace(q).unwrap();
    (model, trace)
}

#[test]
fn every_fixture_element_one_step_equals_the_run() {
    let dir = tempfile::tempdir().unwrap();
    let golden = json_file(&root().join("fixtures/golden.json"));
    for (name, flags, _) in manifest() {
        let (model, trace) = traced(dir.path(), &name, &flags);
        let n = check_every_element(&model, &trace).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(n > 0);
        let id = verity_engine::vty::model_id(&model);
        let root = trace_root(&trace);
        assert_eq!(
            golden[&name]["trace_root"].as_str(),
            Some(root.to_hex().as_str())
        );
        for (k, node) in model.nodes.iter().enumerate() {
            let len = trace.tensors[model.inputs.len() + k].len() as u64;
            for e in [0, len / 3, len - 1] {
                let (w, v) = prove_step(&model, &trace, k, e).unwrap();
                let again = verify_step(id, root, &w).unwrap_or_else(|err| {
                    panic!("{name} node {k} ({}) element {e}: {err}", node.op.name())
                });
                assert_eq!(again, v);
                if std::env::var_os("VERITY_STEP_SIZES").is_some() && e == 0 {
                    let words: usize = w.operands.iter().map(|o| o.words.len() + o.proof.len()).sum();
                    eprintln!("{name} node {k} {}: {} operand words+siblings ({:?})", node.op.name(), words,
                        w.operands.iter().map(|o| (o.words.len(), o.proof.len())).collect::<Vec<_>>());
                }
            }
        }
        eprintln!("{name}: {n} elements checked alone");
    }
}
