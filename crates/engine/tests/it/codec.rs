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
                data: (0..12).map(|i| i * 37 - 200).collect::<Vec<_>>().into(),
            },
            Const {
                shape: vec![3],
                scale: 12,
                data: vec![5, -6, 7].into(),
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
        for version in [1u8, 2] {
            let mut with_magic = b"VTY".to_vec();
            with_magic.push(version);
            with_magic.extend_from_slice(&bytes);
            let _ = vty::decode(&with_magic);
        }
    }

    #[test]
    fn element_widths_round_trip_at_the_narrowest(data in prop::collection::vec(prop_oneof![-8i32..=7, -128i32..=127, -40000i32..=40000, any::<i32>()], 0..40)) {
        let bytes = vty::encode_elements(&data);
        let w = vty::Width::of(&data);
        prop_assert_eq!(bytes[0], w as u8);
        prop_assert_eq!(bytes.len() as u64, 1 + w.bytes(data.len() as u64));
        prop_assert_eq!(vty::decode_elements(&bytes, data.len() as u64).unwrap(), data.clone());
        // the same values stored wider are refused: one encoding per constant
        if w != vty::Width::I32 {
            let mut wide = vec![vty::Width::I32 as u8];
            for v in &data { wide.extend_from_slice(&v.to_be_bytes()); }
            prop_assert!(vty::decode_elements(&wide, data.len() as u64).is_err());
        }
        prop_assert!(vty::decode_elements(&bytes, data.len() as u64 + 2).is_err());
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

#[test]
fn narrow_constants_shrink_the_file_and_keep_the_id() {
    // the same model stored with 8-bit and 4-bit weights: the file shrinks, the ID (which commits to
    // the values) is what a version-1 file of the model gives
    let big = Const {
        shape: vec![64, 64],
        scale: 0,
        data: (0..4096)
            .map(|i| (i * 37 % 255) - 127)
            .collect::<Vec<_>>()
            .into(),
    };
    let small = Const {
        shape: vec![3, 5],
        scale: 0,
        data: (0..15).map(|i| i % 16 - 8).collect::<Vec<_>>().into(),
    };
    let m = Model::one_node(
        vec![input("x", vec![1, 64], 4)],
        vec![big, small],
        Op::EinSum {
            a: vec![0, 1],
            b: vec![1, 2],
            out: vec![0, 2],
        },
        vec![0, 1],
        vec![1, 64],
        4,
    );
    m.validate().expect("valid");
    let bytes = vty::encode(&m);
    assert_eq!(&bytes[..4], b"VTY\x02");
    let (back, id) = vty::decode(&bytes).expect("decodes");
    assert_eq!(back, m);
    assert_eq!(id, vty::model_id(&m));
    let v1 = encode_v1(&m);
    assert!(
        bytes.len() + 3 * 4096 - 100 < v1.len(),
        "{} vs {}",
        bytes.len(),
        v1.len()
    );
    let (from_v1, id1) = vty::decode(&v1).expect("a version-1 file still decodes");
    assert_eq!((from_v1, id1), (m.clone(), id));
    // a non-zero padding nibble is refused (15 elements: the last byte's low nibble is padding)
    let mut packed = vty::encode_elements(&m.consts.last().unwrap().data);
    *packed.last_mut().unwrap() |= 1;
    assert!(vty::decode_elements(&packed, 15)
        .unwrap_err()
        .contains("padding"));
}

/// A version-1 file of `m`: every constant element a big-endian `i32`.
fn encode_v1(m: &Model) -> Vec<u8> {
    let mut out = b"VTY\x01".to_vec();
    out.extend_from_slice(&((1 + m.nodes.len() + m.consts.len()) as u64).to_be_bytes());
    let mut items = vec![vty::encode_header(m)];
    items.extend(m.nodes.iter().map(vty::encode_node));
    for c in &m.consts {
        let mut item = vty::encode_const_desc(c);
        for v in c.data.iter() {
            item.extend_from_slice(&v.to_be_bytes());
        }
        items.push(item);
    }
    for it in items {
        out.extend_from_slice(&(it.len() as u32).to_be_bytes());
        out.extend_from_slice(&it);
    }
    out.extend_from_slice(&vty::model_id(m).0);
    out
}
