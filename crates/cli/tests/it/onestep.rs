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
                    let words: usize = w
                        .operands
                        .iter()
                        .map(|o| o.words.len() + o.proof.len())
                        .sum();
                    eprintln!(
                        "{name} node {k} {}: {} operand words+siblings ({:?})",
                        node.op.name(),
                        words,
                        w.operands
                            .iter()
                            .map(|o| (o.words.len(), o.proof.len()))
                            .collect::<Vec<_>>()
                    );
                }
            }
        }
        eprintln!("{name}: {n} elements checked alone");
    }
}

/// A bare anvil on a free port, killed when dropped.
pub struct Anvil {
    child: std::process::Child,
    /// Its RPC URL.
    pub url: String,
}

impl Anvil {
    pub fn start() -> Anvil {
        let bin = root().join(".tools/node_modules/.bin/anvil");
        assert!(bin.exists(), "anvil is missing: run scripts/setup-chain");
        let port = crate::devnet::free_base(1);
        let child = std::process::Command::new(bin)
            .args([
                "--port",
                &port.to_string(),
                "--host",
                "127.0.0.1",
                "--silent",
            ])
            .spawn()
            .expect("start anvil");
        let url = format!("http://127.0.0.1:{port}");
        crate::devnet::wait_for("anvil", 30, || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        Anvil { child, url }
    }
}

impl Drop for Anvil {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// anvil's first development key.
pub const ANVIL_KEY: &str = "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80";

fn fixed(name: &str, shape: Vec<u32>, scale: i8) -> verity_engine::ir::Input {
    verity_engine::ir::Input {
        name: name.into(),
        shape,
        scale,
        kind: verity_engine::ir::InputKind::Fixed,
    }
}

/// Small models for the ops and outcomes the fixtures do not reach (Div, Min, Rescale, Broadcast, Mean,
/// grouped and padded convolution, an erroring element), with their inputs.
fn extra_cases() -> Vec<(String, verity_engine::Model, Vec<Vec<i32>>)> {
    use verity_engine::ir::*;
    let a: Vec<i32> = vec![3 << 12, -(5 << 12), 7 << 12, 0, 11 << 12, -(1 << 12)];
    let b: Vec<i32> = vec![2 << 12, -(3 << 12), 1 << 10];
    let mut v = Vec::new();
    for (name, op) in [("div", Op::Div), ("min", Op::Min)] {
        v.push((
            name.to_string(),
            verity_engine::Model::one_node(
                vec![fixed("a", vec![2, 3], 12), fixed("b", vec![3], 12)],
                vec![],
                op,
                vec![0, 1],
                vec![2, 3],
                10,
            ),
            vec![a.clone(), b.clone()],
        ));
    }
    v.push((
        "rescale".into(),
        verity_engine::Model::one_node(
            vec![fixed("a", vec![2, 3], 12)],
            vec![],
            Op::Rescale,
            vec![0],
            vec![2, 3],
            5,
        ),
        vec![a.clone()],
    ));
    v.push((
        "broadcast".into(),
        verity_engine::Model::one_node(
            vec![fixed("b", vec![3], 12)],
            vec![],
            Op::Broadcast,
            vec![0],
            vec![4, 2, 3],
            14,
        ),
        vec![b.clone()],
    ));
    v.push((
        "mean".into(),
        verity_engine::Model::one_node(
            vec![fixed("a", vec![2, 3], 12)],
            vec![],
            Op::Reduce {
                kind: ReduceKind::Mean,
                axes: vec![1],
            },
            vec![0],
            vec![2, 1],
            12,
        ),
        vec![a.clone()],
    ));
    let window = Window {
        kernel: [3, 2],
        stride: [2, 1],
        dilation: [1, 2],
        pads: [1, 0, 1, 1],
    };
    let x: Vec<i32> = (0..2 * 4 * 5 * 5)
        .map(|i| ((i * 7919) % 301 - 150) << 6)
        .collect();
    let (oh, ow) = window.output_hw(5, 5).unwrap();
    v.push((
        "grouped-conv".into(),
        verity_engine::Model::one_node(
            vec![fixed("x", vec![2, 4, 5, 5], 8)],
            vec![
                Const {
                    shape: vec![6, 2, 3, 2],
                    scale: 9,
                    data: (0..72)
                        .map(|i| (i * 37) % 41 - 20)
                        .collect::<Vec<_>>()
                        .into(),
                },
                Const {
                    shape: vec![6],
                    scale: 10,
                    data: vec![5, -3, 8, 0, 1, -9].into(),
                },
            ],
            Op::Conv2d { window, groups: 2 },
            vec![0, 1, 2],
            vec![2, 6, oh, ow],
            7,
        ),
        vec![x.clone()],
    ));
    v.push((
        "avgpool-excluding-pads".into(),
        verity_engine::Model::one_node(
            vec![fixed("x", vec![2, 4, 5, 5], 8)],
            vec![],
            Op::AvgPool2d {
                window,
                count_include_pad: false,
            },
            vec![0],
            vec![2, 4, oh, ow],
            9,
        ),
        vec![x],
    ));
    v
}

#[test]
fn solidity_one_step_equals_the_rust_engine_on_every_op() {
    let anvil = Anvil::start();
    let key = verity_core::SecretKey::from_hex(ANVIL_KEY).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let at = rt
        .block_on(verity_chain::dispute::deploy_onestep(&anvil.url, &key))
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut cases: Vec<(String, verity_engine::Model, verity_engine::Trace)> = Vec::new();
    for (name, flags, _) in manifest() {
        let (m, t) = traced(dir.path(), &name, &flags);
        cases.push((name, m, t));
    }
    for (name, m, inputs) in extra_cases() {
        m.validate().unwrap_or_else(|e| panic!("{name}: {e}"));
        let (_, t) = Executor::new(&m, Mode::Reference)
            .run_trace(inputs)
            .unwrap();
        cases.push((name, m, t));
    }
    let mut gas: std::collections::BTreeMap<&'static str, (u64, String)> = Default::default();
    let mut calls = 0;
    for (name, m, trace) in &cases {
        let id = verity_engine::vty::model_id(m);
        let root = trace_root(trace);
        for (k, node) in m.nodes.iter().enumerate() {
            let len = trace.tensors[m.inputs.len() + k].len() as u64;
            let mut picks = vec![0, len / 2, len - 1, (len * 7) / 11];
            picks.dedup();
            for e in picks {
                let (w, v) = prove_step(m, trace, k, e).unwrap();
                let got = rt
                    .block_on(verity_chain::dispute::evaluate_step(
                        &anvil.url, &at, &id, &root, &w,
                    ))
                    .unwrap_or_else(|err| {
                        panic!("{name} node {k} ({}) element {e}: {err}", node.op.name())
                    });
                assert_eq!(
                    got.value,
                    v.ok(),
                    "{name} node {k} ({}) element {e}",
                    node.op.name()
                );
                assert_eq!(got.len, len);
                calls += 1;
                let entry = gas.entry(node.op.name()).or_insert((0, String::new()));
                if got.gas > entry.0 {
                    *entry = (got.gas, format!("{name} node {k}"));
                }
            }
            // a tampered word or a witness for another trace is refused (reverts)
            let (mut w, _) = prove_step(m, trace, k, 0).unwrap();
            let bad_root = verity_core::keccak256(b"another trace");
            assert!(rt
                .block_on(verity_chain::dispute::evaluate_step(
                    &anvil.url, &at, &id, &bad_root, &w
                ))
                .is_err());
            if let Some(o) = w.operands.iter_mut().find(|o| !o.words.is_empty()) {
                o.words[0].0[0] ^= 0x80;
                assert!(rt
                    .block_on(verity_chain::dispute::evaluate_step(
                        &anvil.url, &at, &id, &root, &w
                    ))
                    .is_err());
            }
        }
    }
    // an element whose canonical result is an error (division by zero) evaluates to "no result"
    let m = verity_engine::Model::one_node(
        vec![fixed("a", vec![2], 4), fixed("b", vec![2], 4)],
        vec![],
        verity_engine::ir::Op::Div,
        vec![0, 1],
        vec![2],
        4,
    );
    let trace = verity_engine::Trace {
        tensors: vec![vec![16, 32], vec![0, 16], vec![0, 32]],
    };
    let (w, v) = prove_step(&m, &trace, 0, 0).unwrap();
    assert!(v.is_err());
    let got = rt
        .block_on(verity_chain::dispute::evaluate_step(
            &anvil.url,
            &at,
            &verity_engine::vty::model_id(&m),
            &trace_root(&trace),
            &w,
        ))
        .unwrap();
    assert_eq!(got.value, None);
    eprintln!("{calls} one-step calls on anvil equal the Rust engine; most gas per op kind:");
    for (op, (g, at)) in &gas {
        eprintln!("  {op:<10} {g:>9} gas  ({at})");
    }
    assert_eq!(
        gas.len(),
        25,
        "every op kind exercised: {:?}",
        gas.keys().collect::<Vec<_>>()
    );
}
