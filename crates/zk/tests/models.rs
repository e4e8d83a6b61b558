//! Proofs of the bundled fixtures end to end: compile the ONNX model, make its keys, prove the canonical
//! execution on the fixture's input, verify, and check that tampering with any part fails.

use std::path::PathBuf;

use verity_compiler::{compile_path, CompileOptions, Precision};
use verity_engine::io::{inputs_from_json, quantize_inputs};
use verity_engine::vty::model_id;
use verity_engine::Model;
use verity_zk::{keygen, prove, verify, ZkError};

fn fixture(name: &str) -> (Model, Vec<Vec<i32>>) {
    fixture_at(name, Precision::I32)
}

fn fixture_at(name: &str, precision: Precision) -> (Model, Vec<Vec<i32>>) {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures");
    let opts = CompileOptions {
        precision,
        ..Default::default()
    };
    let (model, _) = compile_path(&dir.join(format!("{name}.onnx")), &opts).expect("compiles");
    let text = std::fs::read_to_string(dir.join(format!("{name}.input.json"))).expect("input");
    let ins = inputs_from_json(&model, &text).expect("input json");
    let q = quantize_inputs(&model, &ins).expect("quantize");
    (model, q)
}

fn round_trip(name: &str) {
    round_trip_at(name, Precision::I32)
}

fn round_trip_at(name: &str, precision: Precision) {
    let (model, x) = fixture_at(name, precision);
    let id = model_id(&model);
    let t = std::time::Instant::now();
    let pk = keygen(&model, id).expect("keygen");
    let tk = t.elapsed();
    let t = std::time::Instant::now();
    let (y, proof) = prove(&pk, &x).expect("prove");
    let tp = t.elapsed();
    let vk = pk.verifying_key();
    let t = std::time::Instant::now();
    verify(&model, &vk, &x, &y, &proof).expect("verify");
    let tv = t.elapsed();
    eprintln!(
        "{name}: keygen {tk:?} prove {tp:?} verify {tv:?} proof {} bytes (trace 2^{}, {}-bit limbs, constants 2^{})",
        proof.len(),
        pk.circuit.t_bits,
        pk.circuit.limb_bits,
        pk.circuit.w_bits
    );
    // a changed output
    let mut y2 = y.clone();
    y2[0][0] += 1;
    assert!(matches!(
        verify(&model, &vk, &x, &y2, &proof),
        Err(ZkError::Rejected(_))
    ));
    // a changed input
    let mut x2 = x.clone();
    x2[0][0] += 1;
    assert!(matches!(
        verify(&model, &vk, &x2, &y, &proof),
        Err(ZkError::Rejected(_))
    ));
    // flipped proof bytes at several places
    for at in [0, proof.len() / 3, proof.len() / 2, proof.len() - 1] {
        let mut p = proof.clone();
        p[at] ^= 4;
        assert!(verify(&model, &vk, &x, &y, &p).is_err(), "flip at {at}");
    }
    // truncated and extended
    assert!(verify(&model, &vk, &x, &y, &proof[..proof.len() - 1]).is_err());
    let mut longer = proof.clone();
    longer.push(0);
    assert!(verify(&model, &vk, &x, &y, &longer).is_err());
    // a changed weight: another model (another ID and weights root)
    let mut m2 = model.clone();
    if let Some(c) = m2.consts.iter_mut().find(|c| !c.data.is_empty()) {
        let mut changed = c.data.to_vec();
        changed[0] += 1;
        c.data = changed.into();
    }
    let pk2 = keygen(&m2, model_id(&m2)).expect("keygen");
    assert!(verify(&m2, &pk2.verifying_key(), &x, &y, &proof).is_err());
    // the right model with the other weights root
    let mut vk3 = vk.clone();
    vk3.w_root = pk2.verifying_key().w_root;
    assert!(verify(&model, &vk3, &x, &y, &proof).is_err());
}

#[test]
fn int8_models_prove_and_verify() {
    // 8-bit weights with per-channel multipliers and requantized 8-bit activations are v1 ops
    for name in ["mlp", "cnn", "transformer", "digits"] {
        round_trip_at(name, Precision::INT8);
    }
}

#[test]
fn mlp_proves_and_verifies() {
    round_trip("mlp");
}

#[test]
fn cnn_proves_and_verifies() {
    round_trip("cnn");
}

#[test]
fn digits_with_softmax_proves_and_verifies() {
    round_trip("digits");
}

#[test]
fn transformer_block_proves_and_verifies() {
    round_trip("transformer");
}

#[test]
fn op_coverage_fixture_proves_and_verifies() {
    round_trip("ops");
}

#[test]
fn second_op_coverage_fixture_proves_and_verifies() {
    round_trip("ops2");
}

/// The prover is deterministic and the encoding canonical: the same model and input give these exact
/// proof bytes on every machine (a changed protocol must change this pin on purpose; so does a change of
/// the compiled model — the pin moved when the importer began dropping constants nothing reads, which
/// removed one from the digits model, and when tensors below magnitude 1 began keeping `B` bits below
/// their leading one, which refined the digits model's scales).
#[test]
fn proofs_are_byte_for_byte_reproducible() {
    let (model, x) = fixture("digits");
    let pk = keygen(&model, model_id(&model)).expect("keygen");
    let (y, p1) = prove(&pk, &x).expect("prove");
    let (_, p2) = prove(&pk, &x).expect("prove");
    assert_eq!(p1, p2);
    let file = verity_zk::ProofFile {
        model_id: model_id(&model),
        w_root: pk.w.root,
        inputs: x.clone(),
        outputs: y.clone(),
        proof: p1,
    };
    let bytes = file.to_bytes();
    // a proof read back from its file verifies
    let back = verity_zk::ProofFile::from_bytes(&bytes).expect("parse");
    verify(
        &model,
        &pk.verifying_key(),
        &back.inputs,
        &back.outputs,
        &back.proof,
    )
    .expect("verifies");
    assert_eq!(
        verity_core::keccak256(&bytes).to_string(),
        GOLDEN_DIGITS_PROOF,
        "the digits proof file changed"
    );
}

const GOLDEN_DIGITS_PROOF: &str =
    "0x11ba55ca78766e8536b2272a256959cdafc28d2a7373b6c77292a9f2018deef5";

/// A cheating prover: every committed tensor of the model (node outputs, remainders, complements,
/// differences, lookup values, …) changed at one element (first, middle or last), and the proof made
/// from those values anyway, must not verify against the honest statement.
fn tampering_any_committed_value_fails(name: &str) {
    let (model, x) = fixture(name);
    let pk = keygen(&model, model_id(&model)).expect("keygen");
    let (y, honest) = prove(&pk, &x).expect("prove");
    verify(&model, &pk.verifying_key(), &x, &y, &honest).expect("honest proof");
    let n = pk.circuit.nums.len();
    let mut tried = 0;
    for id in 0..n {
        let len = pk.circuit.nums[id].dims.len();
        for (k, at) in [0, len / 2, len.saturating_sub(1)].into_iter().enumerate() {
            let delta = if k == 1 { -1 } else { 1 };
            match verity_zk::protocol::prove_with(&pk, &x, |vals| {
                if let Some(v) = vals[id].get_mut(at) {
                    *v += delta;
                }
            }) {
                // the changed value left its committed range: no proof at all
                Err(ZkError::Execution(_)) => continue,
                Err(e) => panic!("tensor {id}: {e}"),
                Ok((_, bad)) => {
                    tried += 1;
                    assert!(
                        verify(&model, &pk.verifying_key(), &x, &y, &bad).is_err(),
                        "{name}: a proof with tensor {id} changed at {at} verified"
                    );
                }
            }
        }
    }
    assert!(tried > n, "{name}: only {tried} tampered proofs were made");
}

#[test]
fn a_cheating_prover_is_caught_on_the_mlp() {
    tampering_any_committed_value_fails("mlp");
}

#[test]
fn a_cheating_prover_is_caught_on_the_digits_classifier() {
    tampering_any_committed_value_fails("digits");
}
