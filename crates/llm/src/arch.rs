//! The architectures Verity imports from GGUF, their hyper-parameters, and each weight in exact form.

use crate::gguf::{Blocks, Decoded, Dyadic, Gguf, GgufError, TensorInfo};

/// Why a language model could not be imported or run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LlmError {
    /// The GGUF file could not be read.
    #[error(transparent)]
    Gguf(#[from] GgufError),
    /// An architecture or a feature of one that Verity does not import.
    #[error("unsupported model: {0}")]
    Unsupported(String),
    /// A tensor that is missing or has the wrong shape.
    #[error("tensor '{name}': {why}")]
    Tensor {
        /// Tensor name.
        name: String,
        /// What is wrong.
        why: String,
    },
    /// The canonical step failed (an overflow, a bad input…).
    #[error("the canonical step failed: {0}")]
    Exec(#[from] verity_engine::ExecError),
    /// A request the model cannot serve (a token outside the vocabulary, a full context…).
    #[error("{0}")]
    Request(String),
}

/// The architectures imported, for messages.
pub const SUPPORTED_ARCHS: &str = "llama (and llama-format mistral), qwen2";

/// How RoPE pairs the components of a head.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RopeKind {
    /// Components `2i` and `2i + 1` (llama's GGUF layout).
    Adjacent,
    /// Components `i` and `i + d/2` (qwen2, "NeoX" style).
    Halves,
}

/// Hyper-parameters of a llama-family model, from the GGUF metadata.
#[derive(Clone, Debug, PartialEq)]
pub struct Hparams {
    /// `general.architecture`.
    pub arch: String,
    /// Transformer blocks.
    pub layers: usize,
    /// Embedding width.
    pub hidden: usize,
    /// Query heads.
    pub heads: usize,
    /// Key/value heads (grouped-query attention when fewer than `heads`).
    pub kv_heads: usize,
    /// Width of one head.
    pub head_dim: usize,
    /// Feed-forward width.
    pub ffn: usize,
    /// Vocabulary size.
    pub vocab: usize,
    /// RoPE frequency base.
    pub rope_base: f64,
    /// RoPE pairing.
    pub rope: RopeKind,
    /// RMSNorm epsilon.
    pub eps: f64,
    /// Context length the model was trained for.
    pub train_context: usize,
}

impl Hparams {
    /// Reads and checks the hyper-parameters.
    pub fn from_gguf(g: &Gguf) -> Result<Hparams, LlmError> {
        let arch = g.get_str("general.architecture")?.to_string();
        let rope = match arch.as_str() {
            "llama" | "mistral" => RopeKind::Adjacent,
            "qwen2" => RopeKind::Halves,
            other => {
                return Err(LlmError::Unsupported(format!(
                    "architecture '{other}' (supported: {SUPPORTED_ARCHS})"
                )))
            }
        };
        let prefix = arch.clone();
        let key = |k: &str| format!("{prefix}.{k}");
        let int = |k: &str| -> Result<usize, LlmError> {
            let v = g.get_u64(&key(k))?;
            usize::try_from(v)
                .ok()
                .filter(|&v| v > 0 && v <= 1 << 20)
                .ok_or_else(|| LlmError::Unsupported(format!("{} = {v}", key(k))))
        };
        let layers = int("block_count")?;
        let hidden = int("embedding_length")?;
        let heads = int("attention.head_count")?;
        let kv_heads = match g.get(&key("attention.head_count_kv")) {
            Some(_) => int("attention.head_count_kv")?,
            None => heads,
        };
        if hidden % heads != 0 || heads % kv_heads != 0 {
            return Err(LlmError::Unsupported(format!(
                "{heads} heads over a width of {hidden} with {kv_heads} key/value heads"
            )));
        }
        let head_dim = match g.get(&key("attention.key_length")) {
            Some(_) => int("attention.key_length")?,
            None => hidden / heads,
        };
        if head_dim % 2 != 0 {
            return Err(LlmError::Unsupported(format!("odd head width {head_dim}")));
        }
        if g.get(&key("rope.dimension_count")).is_some() {
            let d = int("rope.dimension_count")?;
            if d != head_dim {
                return Err(LlmError::Unsupported(format!(
                    "partial rotary embedding ({d} of {head_dim} components)"
                )));
            }
        }
        if let Some(v) = g.get(&key("rope.scaling.type")) {
            if v.as_str() != Some("none") {
                return Err(LlmError::Unsupported(format!("RoPE scaling {v:?}")));
            }
        }
        if g.tensor("rope_freqs.weight").is_some() {
            return Err(LlmError::Unsupported(
                "per-frequency RoPE factors (rope_freqs.weight, as in llama 3.1)".into(),
            ));
        }
        let rope_base = match g.get(&key("rope.freq_base")) {
            Some(_) => g.get_f64(&key("rope.freq_base"))?,
            None => 10000.0,
        };
        let eps = g.get_f64(&key("attention.layer_norm_rms_epsilon"))?;
        if !(rope_base > 1.0 && rope_base.is_finite() && eps > 0.0 && eps < 1.0) {
            return Err(LlmError::Unsupported(format!(
                "RoPE base {rope_base} or RMSNorm epsilon {eps}"
            )));
        }
        let train_context = int("context_length")?;
        let embd = g
            .tensor("token_embd.weight")
            .ok_or_else(|| LlmError::Tensor {
                name: "token_embd.weight".into(),
                why: "missing".into(),
            })?;
        if embd.dims.len() != 2 || embd.dims[0] != hidden as u64 {
            return Err(LlmError::Tensor {
                name: embd.name.clone(),
                why: format!("dimensions {:?}, expected [{hidden}, vocab]", embd.dims),
            });
        }
        let vocab = embd.dims[1] as usize;
        Ok(Hparams {
            arch,
            layers,
            hidden,
            heads,
            kv_heads,
            head_dim,
            ffn: int("feed_forward_length")?,
            vocab,
            rope_base,
            rope,
            eps,
            train_context,
        })
    }
}

/// A weight matrix `[rows, cols]` (`y = W x`, `x` of length `cols`) in exact block form.
#[derive(Clone, Debug)]
pub struct Matrix {
    /// Tensor name.
    pub name: String,
    /// Output width.
    pub rows: usize,
    /// Input width.
    pub cols: usize,
    /// The blocks (row-major: row `r` is elements `r·cols …`).
    pub blocks: Blocks,
    /// Whether the file stored it as floats and it was requantized to 8-bit blocks (not exact).
    pub requantized: bool,
}

/// Loads a 2-D weight `[cols (contiguous), rows]` from the file.
pub fn matrix(g: &Gguf, name: &str, rows: usize, cols: usize) -> Result<Matrix, LlmError> {
    let t = tensor(g, name, &[cols, rows])?;
    let (blocks, requantized) = match g.decode(t)? {
        Decoded::Blocks(b) => (b, false),
        Decoded::Exact(v) => (requantize(&v, cols, name)?, true),
    };
    Ok(Matrix {
        name: name.into(),
        rows,
        cols,
        blocks,
        requantized,
    })
}

/// Loads a vector (norm weights, biases) as exact values.
pub fn vector(g: &Gguf, name: &str, len: usize) -> Result<Vec<Dyadic>, LlmError> {
    let t = tensor(g, name, &[len])?;
    match g.decode(t)? {
        Decoded::Exact(v) => Ok(v),
        Decoded::Blocks(b) => Ok((0..len).map(|i| b.value(i)).collect()),
    }
}

fn tensor<'g>(g: &'g Gguf, name: &str, dims: &[usize]) -> Result<&'g TensorInfo, LlmError> {
    let t = g.tensor(name).ok_or_else(|| LlmError::Tensor {
        name: name.into(),
        why: "missing".into(),
    })?;
    let want: Vec<u64> = dims.iter().map(|&d| d as u64).collect();
    if t.dims != want {
        return Err(LlmError::Tensor {
            name: name.into(),
            why: format!("dimensions {:?}, expected {want:?}", t.dims),
        });
    }
    Ok(t)
}

/// A float matrix as 8-bit blocks of 32 (rows must divide into blocks): `d = max|w| / 127` rounded to
/// 24 bits, `q = round(w / d)`. Deterministic (exact dyadic arithmetic in `f64`).
fn requantize(v: &[Dyadic], cols: usize, name: &str) -> Result<Blocks, LlmError> {
    const B: usize = 32;
    if !cols.is_multiple_of(B) {
        return Err(LlmError::Tensor {
            name: name.into(),
            why: format!("a float matrix with rows of {cols}, not a multiple of {B}"),
        });
    }
    let mut q = Vec::with_capacity(v.len());
    let mut mult = Vec::with_capacity(v.len() / B);
    for blk in v.chunks(B) {
        let f: Vec<f64> = blk.iter().map(|d| d.to_f64()).collect();
        let max = f.iter().fold(0f64, |m, x| m.max(x.abs()));
        let d = if max == 0.0 {
            Dyadic::default()
        } else {
            dyadic24(max / 127.0)
        };
        let df = d.to_f64();
        for &x in &f {
            let r = if df == 0.0 {
                0.0
            } else {
                (x / df + 0.5).floor()
            };
            q.push(r.clamp(-127.0, 127.0) as i8);
        }
        mult.push(d);
    }
    let n = mult.len();
    Ok(Blocks {
        block: B,
        bits: 8,
        q,
        mult,
        offset: vec![Dyadic::default(); n],
    })
}

/// `x > 0` rounded to 24 significant bits.
pub(crate) fn dyadic24(x: f64) -> Dyadic {
    let e = x.log2().floor() as i32 - 23;
    let m = (x * (-e as f64).exp2() + 0.5).floor() as i64;
    Dyadic::new(m, e)
}

/// The weights of one transformer block.
#[derive(Clone, Debug)]
pub struct Layer {
    /// RMSNorm before attention.
    pub attn_norm: Vec<Dyadic>,
    /// Query, key, value and output projections.
    pub wq: Matrix,
    /// Keys.
    pub wk: Matrix,
    /// Values.
    pub wv: Matrix,
    /// Attention output.
    pub wo: Matrix,
    /// Query/key/value biases (qwen2).
    pub bias: Option<[Vec<Dyadic>; 3]>,
    /// RMSNorm before the feed-forward block.
    pub ffn_norm: Vec<Dyadic>,
    /// SwiGLU gate.
    pub gate: Matrix,
    /// SwiGLU up.
    pub up: Matrix,
    /// Down projection.
    pub down: Matrix,
}

/// Every weight of a llama-family model.
#[derive(Clone, Debug)]
pub struct Weights {
    /// Hyper-parameters.
    pub hp: Hparams,
    /// Token embeddings `[vocab, hidden]`.
    pub embd: Matrix,
    /// Blocks.
    pub layers: Vec<Layer>,
    /// Final RMSNorm.
    pub out_norm: Vec<Dyadic>,
    /// Output head `[vocab, hidden]`; `None` when tied to the embeddings.
    pub output: Option<Matrix>,
}

impl Weights {
    /// Reads every weight of the model.
    pub fn load(g: &Gguf) -> Result<Weights, LlmError> {
        let hp = Hparams::from_gguf(g)?;
        let (h, q, kv, f) = (
            hp.hidden,
            hp.heads * hp.head_dim,
            hp.kv_heads * hp.head_dim,
            hp.ffn,
        );
        let embd = matrix(g, "token_embd.weight", hp.vocab, h)?;
        let mut layers = Vec::with_capacity(hp.layers);
        for l in 0..hp.layers {
            let n = |s: &str| format!("blk.{l}.{s}");
            let bias = if g.tensor(&n("attn_q.bias")).is_some() {
                Some([
                    vector(g, &n("attn_q.bias"), q)?,
                    vector(g, &n("attn_k.bias"), kv)?,
                    vector(g, &n("attn_v.bias"), kv)?,
                ])
            } else {
                None
            };
            layers.push(Layer {
                attn_norm: vector(g, &n("attn_norm.weight"), h)?,
                wq: matrix(g, &n("attn_q.weight"), q, h)?,
                wk: matrix(g, &n("attn_k.weight"), kv, h)?,
                wv: matrix(g, &n("attn_v.weight"), kv, h)?,
                wo: matrix(g, &n("attn_output.weight"), h, q)?,
                bias,
                ffn_norm: vector(g, &n("ffn_norm.weight"), h)?,
                gate: matrix(g, &n("ffn_gate.weight"), f, h)?,
                up: matrix(g, &n("ffn_up.weight"), f, h)?,
                down: matrix(g, &n("ffn_down.weight"), h, f)?,
            });
        }
        let out_norm = vector(g, "output_norm.weight", h)?;
        let output = match g.tensor("output.weight") {
            Some(_) => Some(matrix(g, "output.weight", hp.vocab, h)?),
            None => None,
        };
        Ok(Weights {
            hp,
            embd,
            layers,
            out_norm,
            output,
        })
    }

    /// The output head (the embeddings when tied).
    pub fn head(&self) -> &Matrix {
        self.output.as_ref().unwrap_or(&self.embd)
    }
}
