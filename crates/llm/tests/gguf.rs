//! The GGUF reader against files written by the `gguf` Python package (tests/python/make_gguf_fixtures.py):
//! every supported tensor type decodes to exact values that, rounded to `f32`, are the package's own
//! dequantization; metadata of every value type; malformed files are errors, never panics.

use std::path::PathBuf;

use verity_llm::gguf::{decode, f16_exact, Decoded, Dyadic, GgmlType, Gguf, GgufError, Value};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// `x` rounded to the nearest `f32`, ties to even (for values in the normal `f32` range).
fn round_f32(x: Dyadic) -> f32 {
    if x.m == 0 {
        return 0.0;
    }
    let mag = x.m.unsigned_abs();
    let len = 64 - mag.leading_zeros() as i32;
    let (kept, e) = if len <= 24 {
        (mag, x.e)
    } else {
        let s = (len - 24) as u32;
        let kept = mag >> s;
        let rem = mag & ((1u64 << s) - 1);
        let half = 1u64 << (s - 1);
        let up = rem > half || (rem == half && kept & 1 == 1);
        (kept + up as u64, x.e + s as i32)
    };
    let v = kept as f64 * (e as f64).exp2();
    (if x.m < 0 { -v } else { v }) as f32
}

#[test]
fn every_supported_type_decodes_to_the_exact_weights() {
    let g = Gguf::open(&fixture("quants.gguf")).unwrap();
    let raw = std::fs::read(fixture("quants.ref.bin")).unwrap();
    let reference: Vec<f32> = raw
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    let mut at = 0;
    let mut seen = Vec::new();
    for t in &g.tensors {
        assert_eq!(t.dims, vec![512, 2], "{}", t.name);
        let n = t.elements() as usize;
        let want = &reference[at..at + n];
        at += n;
        let exact: Vec<Dyadic> = match g.decode(t).unwrap() {
            Decoded::Blocks(b) => {
                let lo = -(1i32 << (b.bits - 1));
                let hi = (1i32 << (b.bits - 1)) - 1;
                assert!(
                    b.q.iter().all(|&q| (lo..=hi).contains(&q.into())),
                    "{}",
                    t.name
                );
                assert_eq!(b.mult.len(), n / b.block);
                // the random bytes use the whole range of q
                assert!(
                    b.q.contains(&(lo as i8)) && b.q.contains(&(hi as i8)),
                    "{}",
                    t.name
                );
                (0..n).map(|i| b.value(i)).collect()
            }
            Decoded::Exact(v) => v,
        };
        for (i, (&x, &r)) in exact.iter().zip(want).enumerate() {
            assert_eq!(round_f32(x), r, "{} element {i}: exact {x:?}", t.name);
        }
        seen.push(t.ty);
    }
    assert_eq!(at, reference.len());
    use GgmlType::*;
    let all = [
        Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2K, Q3K, Q4K, Q5K, Q6K, F32, F16, BF16,
    ];
    assert_eq!(seen, all);
}

#[test]
fn the_decoding_keeps_more_than_f32_can_hold() {
    // a Q4_1 block whose minimum and scale are far apart: d·q + m needs more than 24 bits, so the
    // f32 dequantization rounds and the exact form does not
    let d = 0x3c00u16; // 1.0
    let m = 0x0001u16; // 2^-24
    let mut block = Vec::new();
    block.extend(d.to_le_bytes());
    block.extend(m.to_le_bytes());
    block.extend([0x21u8; 16]); // v = 1 and 2
    let t = verity_llm::gguf::TensorInfo {
        name: "w".into(),
        dims: vec![32],
        ty: GgmlType::Q4_1,
        start: 0,
        len: block.len(),
    };
    let Decoded::Blocks(b) = decode(&t, &block).unwrap() else {
        panic!("blocks")
    };
    // element 0 is the low nibble (v = 1): 1 + 2^-24
    assert_eq!(b.value(0), Dyadic::new((1 << 24) + 1, -24));
    assert_eq!(b.value(16), Dyadic::new((2 << 24) + 1, -24));
    assert_eq!(round_f32(b.value(0)), 1.0);
}

#[test]
fn f16_values_are_exact() {
    assert_eq!(f16_exact(0x3c00), Some(Dyadic::new(1, 0)));
    assert_eq!(f16_exact(0xc000), Some(Dyadic::new(-2, 0)));
    assert_eq!(f16_exact(0x0001), Some(Dyadic::new(1, -24)));
    assert_eq!(f16_exact(0x7bff), Some(Dyadic::new(65504, 0)));
    assert_eq!(f16_exact(0x8000), Some(Dyadic::new(0, 0)));
    assert_eq!(f16_exact(0x7c00), None);
    assert_eq!(f16_exact(0x7e00), None);
}

#[test]
fn metadata_of_every_value_type() {
    let g = Gguf::open(&fixture("quants.gguf")).unwrap();
    assert_eq!(g.version, 3);
    assert_eq!(g.get_str("general.architecture").unwrap(), "llama");
    assert_eq!(g.get("test.u8"), Some(&Value::U8(200)));
    assert_eq!(g.get("test.i8"), Some(&Value::I8(-100)));
    assert_eq!(g.get("test.u16"), Some(&Value::U16(60000)));
    assert_eq!(g.get("test.i16"), Some(&Value::I16(-30000)));
    assert_eq!(g.get_u64("test.u32").unwrap(), 4_000_000_000);
    assert_eq!(g.get("test.i32"), Some(&Value::I32(-2_000_000_000)));
    assert_eq!(g.get("test.f32"), Some(&Value::F32(0.1)));
    assert_eq!(g.get("test.bool"), Some(&Value::Bool(true)));
    assert_eq!(g.get_str("test.str").unwrap(), "héllo");
    assert_eq!(
        g.get("test.strs"),
        Some(&Value::Array(vec![
            Value::Str("a".into()),
            Value::Str("bc".into()),
            Value::Str("".into())
        ]))
    );
    assert_eq!(
        g.get("test.ints"),
        Some(&Value::Array(vec![
            Value::I32(1),
            Value::I32(-2),
            Value::I32(3)
        ]))
    );
    assert_eq!(g.get_u64("test.u64").unwrap(), (1 << 63) + 5);
    assert_eq!(g.get("test.i64"), Some(&Value::I64(-(1 << 62))));
    assert_eq!(g.get_f64("test.f64").unwrap(), -1.5);
    // typed getters say what is wrong
    let e = g.get_u64("test.str").unwrap_err();
    assert!(
        e.to_string().contains("test.str") && e.to_string().contains("integer"),
        "{e}"
    );
    let e = g.get_str("no.such.key").unwrap_err();
    assert!(e.to_string().contains("missing"), "{e}");
}

#[test]
fn every_truncation_is_an_error_not_a_panic() {
    let bytes = std::fs::read(fixture("quants.gguf")).unwrap();
    let data_start = Gguf::parse(bytes.clone()).unwrap().tensors[0].start;
    // every cut inside the header, metadata and tensor table, then a sample through the data
    let cuts = (0..data_start + 64).chain((data_start..bytes.len()).step_by(97));
    for cut in cuts {
        let r = Gguf::parse(bytes[..cut].to_vec());
        assert!(
            r.is_err(),
            "a file cut at byte {cut} of {} was accepted",
            bytes.len()
        );
    }
}

#[test]
fn hostile_headers_are_refused_with_a_reason() {
    let good = std::fs::read(fixture("quants.gguf")).unwrap();
    let err = |b: Vec<u8>| Gguf::parse(b).unwrap_err();
    assert!(matches!(err(b"ONNX....".to_vec()), GgufError::NotGguf(_)));
    let mut v = good.clone();
    v[4..8].copy_from_slice(&1u32.to_le_bytes());
    assert!(err(v).to_string().contains("version 1"));
    let mut v = good.clone();
    v[4..8].copy_from_slice(&3u32.to_be_bytes());
    assert!(err(v).to_string().contains("big-endian"));
    // a tensor count no file of this size could hold: refused before any allocation
    let mut v = good.clone();
    v[8..16].copy_from_slice(&u64::MAX.to_le_bytes());
    assert!(matches!(err(v), GgufError::Truncated(_)));
    let mut v = good.clone();
    v[16..24].copy_from_slice(&(1u64 << 40).to_le_bytes());
    assert!(matches!(err(v), GgufError::Truncated(_)));
    // a string length past the end
    let mut v = good.clone();
    v[24..32].copy_from_slice(&(u64::MAX / 2).to_le_bytes());
    assert!(matches!(err(v), GgufError::Truncated(_)));
}

#[test]
fn a_tensor_of_an_unsupported_type_is_named() {
    let t = verity_llm::gguf::TensorInfo {
        name: "blk.0.attn_q.weight".into(),
        dims: vec![256],
        ty: GgmlType::Other(18),
        start: 0,
        len: 0,
    };
    let e = decode(&t, &[]).unwrap_err().to_string();
    assert!(
        e.contains("blk.0.attn_q.weight") && e.contains("IQ") && e.contains("Q4_K"),
        "{e}"
    );
}

#[test]
fn an_infinite_block_scale_is_an_error() {
    let mut block = vec![0u8; 18];
    block[0..2].copy_from_slice(&0x7c00u16.to_le_bytes());
    let t = verity_llm::gguf::TensorInfo {
        name: "w".into(),
        dims: vec![32],
        ty: GgmlType::Q4_0,
        start: 0,
        len: 18,
    };
    let e = decode(&t, &block).unwrap_err().to_string();
    assert!(e.contains("infinite or NaN") && e.contains('w'), "{e}");
}
