//! The `.vty` codec: round trips, a pinned encoding, corruption detection, weight proofs.

use proptest::prelude::*;
use verity_core::Hash;
use verity_engine::ir::*;
use verity_engine::vty::{self, prove_const_element, verify_const_element};
use verity_engine::ModelError;

use crate::input;

/// A small model touching several op encodings.
pub fn sample_model() -> Model {
    let mut m = Model::one_node(
        vec![input("x", vec![1, 4], 8)],
        vec![
            Const {
                shape: vec![4, 3],
                scale: 10,
                data: (0..12).map(|i| i * 37 - 200).collect(),
            },
            Const {
                shape: vec![3],
                scale: 12,
                data: vec![5, -6, 7],
            },
        ],
        Op::EinSum {
            a: vec![0, 1],
            b: vec![1, 2],
            out: vec![0, 2],
        },
        vec![0, 1, 2],
        vec![1, 3],
        9,
    );
    m.nodes.push(Node {
        name: "relu".into(),
        op: Op::Clamp {
            lo: 0,
            hi: i32::MAX,
        },
        inputs: vec![3],
        shape: vec![1, 3],
        scale: 9,
    });
    m.nodes.push(Node {
        name: "t".into(),
        op: Op::Transpose { perm: vec![1, 0] },
        inputs: vec![4],
        shape: vec![3, 1],
        scale: 9,
    });
    m.outputs = vec![Output {
        name: "y".into(),
        value: 5,
    }];
    m.validate().unwrap();
    m
}

#[test]
fn round_trip_and_pinned_id() {
    let m = sample_model();
    let bytes = vty::encode(&m);
    let (back, id) = vty::decode(&bytes).unwrap();
    assert_eq!(back, m);
    assert_eq!(id, vty::model_id(&m));
    // Golden vector: changing this value changes every model ID; it is a reviewed format decision.
    assert_eq!(
        id.to_hex(),
        include_str!("../golden/sample_model_id.txt").trim()
    );
}

#[test]
fn every_truncation_is_an_error() {
    let bytes = vty::encode(&sample_model());
    for n in 0..bytes.len() {
        assert!(
            vty::decode(&bytes[..n]).is_err(),
            "prefix of {n} bytes decoded"
        );
    }
}

#[test]
fn any_changed_byte_is_detected() {
    let bytes = vty::encode(&sample_model());
    for i in 0..bytes.len() {
        let mut b = bytes.clone();
        b[i] ^= 0x01;
        assert!(vty::decode(&b).is_err(), "flip at byte {i} went unnoticed");
    }
}

#[test]
fn corrupted_weights_report_an_id_mismatch() {
    let m = sample_model();
    let mut bytes = vty::encode(&m);
    // the last constant's data sits just before the 32-byte ID
    let at = bytes.len() - 33;
    bytes[at] ^= 0x40;
    match vty::decode(&bytes) {
        Err(ModelError::IdMismatch { .. }) => {}
        other => panic!("expected an ID mismatch, got {other:?}"),
    }
    assert!(matches!(
        vty::decode(b"ONNX...."),
        Err(ModelError::BadMagic)
    ));
}

#[test]
fn weight_proofs_verify_against_the_id() {
    let m = sample_model();
    let id = vty::model_id(&m);
    for c in 0..m.consts.len() {
        for i in 0..m.consts[c].data.len() {
            let p = prove_const_element(&m, c, i).unwrap();
            assert_eq!(verify_const_element(id, &p), Some(m.consts[c].data[i]));
            // a proof against another model fails
            assert_eq!(verify_const_element(Hash::ZERO, &p), None);
            let mut bad = p.clone();
            bad.element.word.0[(i % 8) * 4] ^= 0x80;
            assert_eq!(verify_const_element(id, &bad), None);
            let mut bad = p.clone();
            bad.descriptor.push(0);
            assert_eq!(verify_const_element(id, &bad), None);
        }
    }
    assert!(prove_const_element(&m, 9, 0).is_none());
}

proptest! {
    #[test]
    fn decoding_garbage_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = vty::decode(&bytes);
        let mut with_magic = b"VTY\x01".to_vec();
        with_magic.extend_from_slice(&bytes);
        let _ = vty::decode(&with_magic);
    }

    #[test]
    fn mutated_models_never_panic(pos in any::<prop::sample::Index>(), val in any::<u8>()) {
        let mut bytes = vty::encode(&sample_model());
        let i = pos.index(bytes.len());
        bytes[i] = val;
        // the encoding is canonical: whatever decodes re-encodes to the same bytes
        if let Ok((m, _)) = vty::decode(&bytes) {
            prop_assert_eq!(vty::encode(&m), bytes);
        }
    }
}
