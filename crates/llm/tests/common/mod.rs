//! Tiny llama-family GGUF files with random weights, written here byte by byte (the reader itself is
//! checked against the `gguf` Python package in `tests/gguf.rs`).
#![allow(dead_code)]

/// The deterministic generator of the tiny models' bytes.
pub use verity_engine::calib::SplitMix64 as Rng;

/// `x` as IEEE binary16 bits (round to nearest; normal and subnormal range).
pub fn f16_bits(x: f64) -> u16 {
    let sign = if x < 0.0 { 0x8000 } else { 0 };
    let a = x.abs();
    let e = if a == 0.0 {
        -15
    } else {
        a.log2().floor() as i32
    };
    if e < -14 {
        // subnormal: a multiple of 2^-24
        return sign | (a * (24f64).exp2()).round() as u16;
    }
    let (mut e, mut m) = (e, (a / (e as f64).exp2() * 1024.0).round() as u32);
    if m >= 2048 {
        m /= 2;
        e += 1;
    }
    assert!(e <= 15, "{x} is outside the f16 range");
    sign | (((e + 15) as u16) << 10) | (m as u16 & 0x3ff)
}

pub enum Meta {
    U32(u32),
    F32(f32),
    Str(String),
}

pub struct Tensor {
    pub name: String,
    pub dims: Vec<u64>,
    pub ty: u32,
    pub data: Vec<u8>,
}

fn put_str(b: &mut Vec<u8>, s: &str) {
    b.extend((s.len() as u64).to_le_bytes());
    b.extend(s.as_bytes());
}

/// A GGUF v3 file.
pub fn write_gguf(meta: &[(&str, Meta)], tensors: &[Tensor]) -> Vec<u8> {
    let mut b = b"GGUF".to_vec();
    b.extend(3u32.to_le_bytes());
    b.extend((tensors.len() as u64).to_le_bytes());
    b.extend((meta.len() as u64).to_le_bytes());
    for (k, v) in meta {
        put_str(&mut b, k);
        match v {
            Meta::U32(x) => {
                b.extend(4u32.to_le_bytes());
                b.extend(x.to_le_bytes());
            }
            Meta::F32(x) => {
                b.extend(6u32.to_le_bytes());
                b.extend(x.to_le_bytes());
            }
            Meta::Str(s) => {
                b.extend(8u32.to_le_bytes());
                put_str(&mut b, s);
            }
        }
    }
    let mut offset = 0u64;
    for t in tensors {
        put_str(&mut b, &t.name);
        b.extend((t.dims.len() as u32).to_le_bytes());
        for d in &t.dims {
            b.extend(d.to_le_bytes());
        }
        b.extend(t.ty.to_le_bytes());
        b.extend(offset.to_le_bytes());
        offset += (t.data.len() as u64).div_ceil(32) * 32;
    }
    while !b.len().is_multiple_of(32) {
        b.push(0);
    }
    for t in tensors {
        b.extend(&t.data);
        while !b.len().is_multiple_of(32) {
            b.push(0);
        }
    }
    b
}

/// ggml type codes used here.
pub const F32: u32 = 0;
pub const Q4_0: u32 = 2;
pub const Q4_1: u32 = 3;
pub const Q5_0: u32 = 6;
pub const Q5_1: u32 = 7;
pub const Q8_0: u32 = 8;
pub const Q2_K: u32 = 10;
pub const Q3_K: u32 = 11;
pub const Q4_K: u32 = 12;
pub const Q5_K: u32 = 13;
pub const Q6_K: u32 = 14;

/// A random `[rows, cols]` weight of type `ty` whose values have a magnitude near `size`.
pub fn random_matrix(
    rng: &mut Rng,
    name: &str,
    rows: usize,
    cols: usize,
    ty: u32,
    size: f64,
) -> Tensor {
    let (block, bytes, scales): (usize, usize, &[(usize, f64)]) = match ty {
        // block scales (and minimums) that give weights a spread near 0.06 · size
        Q4_0 => (32, 18, &[(0, 0.013)]),
        Q4_1 => (32, 20, &[(0, 0.013), (2, -0.1)]),
        Q5_0 => (32, 22, &[(0, 0.0065)]),
        Q5_1 => (32, 24, &[(0, 0.0065), (2, -0.1)]),
        Q8_0 => (32, 34, &[(0, 0.0008)]),
        Q2_K => (256, 84, &[(80, 0.007), (82, 0.01)]),
        Q3_K => (256, 110, &[(108, 0.0015)]),
        Q4_K => (256, 144, &[(0, 0.0004), (2, 0.003)]),
        Q5_K => (256, 176, &[(0, 0.0002), (2, 0.003)]),
        Q6_K => (256, 210, &[(208, 0.00007)]),
        _ => panic!("type {ty}"),
    };
    assert_eq!(cols % block, 0, "{name}");
    let n = rows * cols / block;
    let mut data = vec![0u8; n * bytes];
    for blk in data.chunks_mut(bytes) {
        for v in blk.iter_mut() {
            *v = rng.next_u64() as u8;
        }
        for &(at, s) in scales {
            let v = s * size * (0.5 + rng.uniform(0.0, 1.0));
            blk[at..at + 2].copy_from_slice(&f16_bits(v).to_le_bytes());
        }
    }
    Tensor {
        name: name.into(),
        dims: vec![cols as u64, rows as u64],
        ty,
        data,
    }
}

/// A random F32 vector near `centre`.
pub fn random_vector(rng: &mut Rng, name: &str, len: usize, centre: f64, spread: f64) -> Tensor {
    let data = (0..len)
        .flat_map(|_| ((centre + spread * (rng.uniform(0.0, 1.0) - 0.5)) as f32).to_le_bytes())
        .collect();
    Tensor {
        name: name.into(),
        dims: vec![len as u64],
        ty: F32,
        data,
    }
}

/// Shape of a tiny model.
pub struct Tiny {
    pub arch: &'static str,
    pub layers: usize,
    pub hidden: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub ffn: usize,
    pub vocab: usize,
    /// Types of (attention q/k/v/o, gate/up, down, embeddings); `None` output = tied.
    pub types: [u32; 4],
    pub output: Option<u32>,
    pub qkv_bias: bool,
}

/// A tiny model's GGUF bytes.
pub fn tiny_model(t: &Tiny, seed: u64) -> Vec<u8> {
    let mut rng = Rng(seed);
    let hd = t.hidden / t.heads;
    let a = t.arch;
    let meta = vec![
        ("general.architecture", Meta::Str(a.into())),
        ("general.name", Meta::Str("tiny".into())),
        (leak(format!("{a}.block_count")), Meta::U32(t.layers as u32)),
        (leak(format!("{a}.context_length")), Meta::U32(256)),
        (
            leak(format!("{a}.embedding_length")),
            Meta::U32(t.hidden as u32),
        ),
        (
            leak(format!("{a}.feed_forward_length")),
            Meta::U32(t.ffn as u32),
        ),
        (
            leak(format!("{a}.attention.head_count")),
            Meta::U32(t.heads as u32),
        ),
        (
            leak(format!("{a}.attention.head_count_kv")),
            Meta::U32(t.kv_heads as u32),
        ),
        (leak(format!("{a}.rope.freq_base")), Meta::F32(10000.0)),
        (
            leak(format!("{a}.attention.layer_norm_rms_epsilon")),
            Meta::F32(1e-5),
        ),
        ("tokenizer.ggml.bos_token_id", Meta::U32(1)),
    ];
    let [ta, tf, td, te] = t.types;
    let mut ts = vec![random_matrix(
        &mut rng,
        "token_embd.weight",
        t.vocab,
        t.hidden,
        te,
        1.0,
    )];
    for l in 0..t.layers {
        let n = |s: &str| format!("blk.{l}.{s}");
        ts.push(random_vector(
            &mut rng,
            &n("attn_norm.weight"),
            t.hidden,
            1.0,
            0.4,
        ));
        ts.push(random_matrix(
            &mut rng,
            &n("attn_q.weight"),
            t.heads * hd,
            t.hidden,
            ta,
            1.0,
        ));
        ts.push(random_matrix(
            &mut rng,
            &n("attn_k.weight"),
            t.kv_heads * hd,
            t.hidden,
            ta,
            1.0,
        ));
        ts.push(random_matrix(
            &mut rng,
            &n("attn_v.weight"),
            t.kv_heads * hd,
            t.hidden,
            ta,
            1.0,
        ));
        if t.qkv_bias {
            ts.push(random_vector(
                &mut rng,
                &n("attn_q.bias"),
                t.heads * hd,
                0.0,
                0.5,
            ));
            ts.push(random_vector(
                &mut rng,
                &n("attn_k.bias"),
                t.kv_heads * hd,
                0.0,
                0.5,
            ));
            ts.push(random_vector(
                &mut rng,
                &n("attn_v.bias"),
                t.kv_heads * hd,
                0.0,
                0.5,
            ));
        }
        ts.push(random_matrix(
            &mut rng,
            &n("attn_output.weight"),
            t.hidden,
            t.heads * hd,
            ta,
            1.0,
        ));
        ts.push(random_vector(
            &mut rng,
            &n("ffn_norm.weight"),
            t.hidden,
            1.0,
            0.4,
        ));
        ts.push(random_matrix(
            &mut rng,
            &n("ffn_gate.weight"),
            t.ffn,
            t.hidden,
            tf,
            1.0,
        ));
        ts.push(random_matrix(
            &mut rng,
            &n("ffn_up.weight"),
            t.ffn,
            t.hidden,
            tf,
            1.0,
        ));
        ts.push(random_matrix(
            &mut rng,
            &n("ffn_down.weight"),
            t.hidden,
            t.ffn,
            td,
            1.0,
        ));
    }
    ts.push(random_vector(
        &mut rng,
        "output_norm.weight",
        t.hidden,
        1.0,
        0.4,
    ));
    if let Some(to) = t.output {
        ts.push(random_matrix(
            &mut rng,
            "output.weight",
            t.vocab,
            t.hidden,
            to,
            1.0,
        ));
    }
    write_gguf(&meta, &ts)
}

fn leak(s: String) -> &'static str {
    Box::leak(s.into_boxed_str())
}
