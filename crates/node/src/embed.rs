//! Sentence-embedding models a node serves through `POST /v1/embeddings`: a BERT-family encoder as
//! sentence-transformers lays one out (an ONNX file, its WordPiece tokenizer, its pooling and
//! normalization), compiled once into a canonical model whose graph ends in the pooling
//! ([`verity_compiler::pooling`]) — so the embedding a client receives is the output its receipt binds,
//! and anyone holding the same directory recompiles the same model ID and re-executes it.
//!
//! A text becomes the model's inputs as `docs/spec/embeddings.md` fixes them: the tokenizer's IDs with
//! its special tokens (`[CLS] … [SEP]`), padded with the pad token to the compiled sequence length;
//! the attention mask 1 over the tokens and 0 over the padding; token types all 0.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::Value;
use verity_compiler::pooling::{PoolMode, Pooling};
use verity_compiler::{CompileOptions, Precision};
use verity_core::hash::{keccak256, Hash};
use verity_engine::io::FloatTensor;
use verity_engine::ir::Model;

use crate::state::Loaded;

/// Sequence length compiled when neither the configuration nor the model says one.
pub const DEFAULT_SEQUENCE: usize = 256;
/// The longest sequence a served encoder is compiled for.
pub const MAX_SEQUENCE: usize = 8192;

/// How an embedding model is compiled.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct EmbedOptions {
    /// Compiled sequence length (default: the model's `max_seq_length`, else the smaller of its
    /// position count and [`DEFAULT_SEQUENCE`]).
    pub sequence: Option<usize>,
    /// Width of contractions (default `i32`: embeddings within about 1e-3 of the float model).
    pub precision: Option<Precision>,
    /// Pooling when the directory does not define it (`cls`, `mean`, `max`, `mean_sqrt_len`).
    pub pooling: Option<PoolMode>,
    /// Normalize when the directory does not say.
    pub normalize: Option<bool>,
}

/// An encoder directory, read and checked.
pub struct EncoderDir {
    /// The ONNX file.
    pub onnx: PathBuf,
    /// The tokenizer (padding and truncation off: both are done here, by the rules above).
    pub tokenizer: tokenizers::Tokenizer,
    /// keccak256 of the tokenizer file (`tokenizer.json`, or `vocab.txt` with its settings).
    pub tokenizer_hash: Hash,
    /// The pooling to append, or None when the graph already outputs `sentence_embedding`.
    pub pooling: Option<Pooling>,
    /// Compiled sequence length.
    pub sequence: usize,
    /// The graph's inputs in order (`input_ids`, `attention_mask`, and optionally `token_type_ids`).
    pub inputs: Vec<String>,
    /// The pad token.
    pub pad_id: u32,
    /// Tokens in the vocabulary.
    pub vocab: usize,
    pub precision: Precision,
}

fn read_json(p: &Path) -> Result<Option<Value>, String> {
    match std::fs::read(p) {
        Ok(b) => serde_json::from_slice(&b)
            .map(Some)
            .map_err(|e| format!("{} is not JSON: {e}", p.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("cannot read {}: {e}", p.display())),
    }
}

/// The pooling sentence-transformers modules define (`modules.json` and the pooling module's
/// `config.json`): None when the directory has no modules file.
fn st_pooling(dir: &Path) -> Result<Option<(PoolMode, bool)>, String> {
    let Some(modules) = read_json(&dir.join("modules.json"))? else {
        return Ok(None);
    };
    let list = modules
        .as_array()
        .ok_or("modules.json is not a list of modules")?;
    let mut mode = None;
    let mut normalize = false;
    for m in list {
        let ty = m.get("type").and_then(Value::as_str).unwrap_or("");
        let path = m.get("path").and_then(Value::as_str).unwrap_or("");
        let kind = ty.rsplit('.').next().unwrap_or("");
        match kind {
            "Transformer" => {}
            "Normalize" => normalize = true,
            "Pooling" => {
                let cfg = read_json(&dir.join(path).join("config.json"))?
                    .ok_or_else(|| format!("the pooling module has no {path}/config.json"))?;
                let on = |k: &str| cfg.get(k).and_then(Value::as_bool).unwrap_or(false);
                let modes: Vec<PoolMode> = [
                    ("pooling_mode_cls_token", PoolMode::Cls),
                    ("pooling_mode_mean_tokens", PoolMode::Mean),
                    ("pooling_mode_max_tokens", PoolMode::Max),
                    ("pooling_mode_mean_sqrt_len_tokens", PoolMode::MeanSqrtLen),
                ]
                .into_iter()
                .filter(|(k, _)| on(k))
                .map(|(_, m)| m)
                .collect();
                for k in ["pooling_mode_weightedmean_tokens", "pooling_mode_lasttoken"] {
                    if on(k) {
                        return Err(format!(
                            "{path}/config.json asks for {k}, which is not supported (cls, mean, max, \
                             mean_sqrt_len)"
                        ));
                    }
                }
                if modes.len() != 1 {
                    return Err(format!(
                        "{path}/config.json turns on {} pooling modes; exactly one is supported",
                        modes.len()
                    ));
                }
                mode = Some(modes[0]);
            }
            other => {
                return Err(format!(
                    "modules.json has a {other} module ({ty}), which is not part of the ONNX graph \
                     and not supported (Transformer, Pooling, Normalize)"
                ))
            }
        }
    }
    let mode = mode.ok_or("modules.json has no Pooling module")?;
    Ok(Some((mode, normalize)))
}

/// The tokenizer: `tokenizer.json`, or a BERT WordPiece tokenizer over `vocab.txt` (lower-cased
/// unless `tokenizer_config.json` says `do_lower_case: false`).
fn load_tokenizer(dir: &Path) -> Result<(tokenizers::Tokenizer, Hash), String> {
    use tokenizers::models::wordpiece::WordPiece;
    use tokenizers::normalizers::BertNormalizer;
    use tokenizers::pre_tokenizers::bert::BertPreTokenizer;
    use tokenizers::processors::bert::BertProcessing;
    let json = dir.join("tokenizer.json");
    let mut t = if json.exists() {
        let bytes =
            std::fs::read(&json).map_err(|e| format!("cannot read {}: {e}", json.display()))?;
        let t = tokenizers::Tokenizer::from_bytes(&bytes)
            .map_err(|e| format!("{} is not a tokenizer: {e}", json.display()))?;
        (t, keccak256(&bytes))
    } else {
        let vocab = dir.join("vocab.txt");
        let bytes = std::fs::read(&vocab)
            .map_err(|_| format!("{} has neither tokenizer.json nor vocab.txt", dir.display()))?;
        let lower = read_json(&dir.join("tokenizer_config.json"))?
            .and_then(|c| c.get("do_lower_case").and_then(Value::as_bool))
            .unwrap_or(true);
        let wp = WordPiece::from_file(&vocab.to_string_lossy())
            .unk_token("[UNK]".into())
            .build()
            .map_err(|e| format!("{}: {e}", vocab.display()))?;
        let id = |tok: &str| {
            tokenizers::Model::token_to_id(&wp, tok)
                .ok_or_else(|| format!("{} has no {tok} token", vocab.display()))
        };
        let (cls, sep) = (id("[CLS]")?, id("[SEP]")?);
        let mut t = tokenizers::Tokenizer::new(wp);
        t.with_normalizer(Some(BertNormalizer::new(true, true, None, lower)))
            .map_err(|e| format!("the tokenizer: {e}"))?
            .with_pre_tokenizer(Some(BertPreTokenizer))
            .with_post_processor(Some(BertProcessing::new(
                ("[SEP]".into(), sep),
                ("[CLS]".into(), cls),
            )));
        let mut b = bytes;
        b.push(lower as u8);
        (t, keccak256(&b))
    };
    t.0.with_truncation(None)
        .map_err(|e| format!("the tokenizer: {e}"))?;
    t.0.with_padding(None);
    Ok(t)
}

/// Read an encoder directory: the ONNX file (`model.onnx` or `onnx/model.onnx`), the tokenizer, the
/// pooling, the sequence length.
pub fn read_dir(dir: &Path, opts: &EmbedOptions) -> Result<EncoderDir, String> {
    let onnx = ["model.onnx", "onnx/model.onnx"]
        .iter()
        .map(|f| dir.join(f))
        .find(|p| p.exists())
        .ok_or_else(|| format!("{} has no model.onnx (nor onnx/model.onnx)", dir.display()))?;
    let (tokenizer, tokenizer_hash) = load_tokenizer(dir)?;
    let (inputs, outputs) = verity_compiler::import::onnx_io_names(&onnx)
        .map_err(|e| format!("{}: {e}", onnx.display()))?;
    for i in &inputs {
        if !["input_ids", "attention_mask", "token_type_ids"].contains(&i.as_str()) {
            return Err(format!(
                "{} has an input '{i}'; an encoder takes input_ids, attention_mask and optionally \
                 token_type_ids",
                onnx.display()
            ));
        }
    }
    for need in ["input_ids", "attention_mask"] {
        if !inputs.iter().any(|i| i == need) {
            return Err(format!("{} has no input '{need}'", onnx.display()));
        }
    }
    let pooling = if outputs
        .iter()
        .any(|o| o == verity_compiler::pooling::OUTPUT)
    {
        // exported with its pooling (and normalization) in the graph
        None
    } else {
        let (mode, normalize) = match (st_pooling(dir)?, opts.pooling) {
            (_, Some(m)) => (m, opts.normalize.unwrap_or(false)),
            (Some((m, n)), None) => (m, opts.normalize.unwrap_or(n)),
            (None, None) => {
                return Err(format!(
                    "{} says no pooling (no modules.json, and the graph has no sentence_embedding \
                     output): configure one (pooling = \"mean\", \"cls\", \"max\" or \"mean_sqrt_len\")",
                    dir.display()
                ))
            }
        };
        let hidden = ["last_hidden_state", "token_embeddings"]
            .iter()
            .find(|n| outputs.iter().any(|o| o == *n))
            .map(|n| n.to_string());
        Some(Pooling {
            hidden,
            ..Pooling::new(mode, normalize)
        })
    };
    let config = read_json(&dir.join("config.json"))?;
    let positions = config
        .as_ref()
        .and_then(|c| c.get("max_position_embeddings"))
        .and_then(Value::as_u64)
        .map(|n| n as usize);
    let st_max = read_json(&dir.join("sentence_bert_config.json"))?
        .and_then(|c| c.get("max_seq_length").and_then(Value::as_u64))
        .map(|n| n as usize);
    let sequence = opts
        .sequence
        .or(st_max)
        .unwrap_or_else(|| positions.unwrap_or(DEFAULT_SEQUENCE).min(DEFAULT_SEQUENCE));
    if !(2..=MAX_SEQUENCE).contains(&sequence) {
        return Err(format!(
            "a sequence length of {sequence} is out of range (2 … {MAX_SEQUENCE})"
        ));
    }
    if let Some(p) = positions {
        if sequence > p {
            return Err(format!(
                "a sequence length of {sequence} is more than the model's {p} positions"
            ));
        }
    }
    let pad_id = tokenizer
        .token_to_id("[PAD]")
        .or_else(|| tokenizer.token_to_id("<pad>"))
        .unwrap_or(0);
    let vocab = tokenizer.get_vocab_size(true);
    Ok(EncoderDir {
        onnx,
        tokenizer,
        tokenizer_hash,
        pooling,
        sequence,
        inputs,
        pad_id,
        vocab,
        precision: opts.precision.unwrap_or(Precision::I32),
    })
}

/// Texts the calibration runs over: several languages, scripts and lengths, and one that fills the
/// sequence.
const CALIBRATION: &[&str] = &[
    "The quick brown fox jumps over the lazy dog.",
    "How do I verify that a model's answer was computed correctly?",
    "Embeddings place similar sentences close together in a vector space.",
    "Le modèle renvoie un vecteur pour chaque phrase.",
    "Die Straßenbahn fährt um halb neun über die Brücke.",
    "今天天气很好，我们去公园散步吧。",
    "Привет, как дела?",
    "Invoice #4521: 3 items, total $1,299.99 (tax included).",
    "fn main() { println!(\"hello\"); }",
    "yes",
    "",
    "A patient with a blood pressure of 120/80 mmHg and a heart rate of 72 bpm was discharged.",
];

impl EncoderDir {
    /// The same directory compiled at `sequence` positions (at most its own).
    pub fn at(&self, sequence: usize) -> EncoderDir {
        EncoderDir {
            onnx: self.onnx.clone(),
            tokenizer: self.tokenizer.clone(),
            tokenizer_hash: self.tokenizer_hash,
            pooling: self.pooling.clone(),
            sequence: sequence.min(self.sequence),
            inputs: self.inputs.clone(),
            pad_id: self.pad_id,
            vocab: self.vocab,
            precision: self.precision,
        }
    }

    /// The token IDs of `text` with the special tokens; with `max`, the text's tokens are cut so that
    /// the whole fits in `max` (the special tokens kept, as the tokenizer's own truncation does).
    pub fn tokens(&self, text: &str, max: Option<usize>) -> Result<Vec<u32>, String> {
        let err = |e: tokenizers::Error| format!("the text cannot be tokenized: {e}");
        let Some(max) = max else {
            return self
                .tokenizer
                .encode(text, true)
                .map(|e| e.get_ids().to_vec())
                .map_err(err);
        };
        let mut enc = self.tokenizer.encode(text, false).map_err(err)?;
        let added = self
            .tokenizer
            .get_post_processor()
            .map_or(0, |p| tokenizers::PostProcessor::added_tokens(p, false));
        enc.truncate(
            max.saturating_sub(added),
            0,
            tokenizers::TruncationDirection::Right,
        );
        self.tokenizer
            .post_process(enc, None, true)
            .map(|e| e.get_ids().to_vec())
            .map_err(err)
    }

    /// The model's inputs for `tokens` (at most the sequence length), in the graph's input order, as
    /// real numbers (integers).
    pub fn input_tensors(&self, tokens: &[u32]) -> Vec<(String, FloatTensor)> {
        let ints = input_ints(&self.inputs, self.sequence, self.pad_id, tokens);
        self.inputs
            .iter()
            .zip(ints)
            .map(|(name, v)| {
                let t = FloatTensor {
                    shape: vec![1, self.sequence],
                    data: v.into_iter().map(f64::from).collect(),
                };
                (name.clone(), t)
            })
            .collect()
    }

    /// The compiler's options: fixed shapes, the pooling, calibration over [`CALIBRATION`].
    pub fn compile_options(&self) -> Result<CompileOptions, String> {
        let mut samples = Vec::new();
        let mut long = Vec::new();
        for t in CALIBRATION {
            let ids = self.tokens(t, Some(self.sequence))?;
            long.extend_from_slice(&ids);
            samples.push(ids);
        }
        long.truncate(self.sequence);
        samples.push(long);
        let calibration: Vec<Vec<FloatTensor>> = samples
            .iter()
            .map(|ids| {
                self.input_tensors(ids)
                    .into_iter()
                    .map(|(_, t)| t)
                    .collect()
            })
            .collect();
        let mut o = CompileOptions {
            calibration: Some(calibration),
            precision: self.precision,
            ..Default::default()
        };
        o.import.input_shapes = self
            .inputs
            .iter()
            .map(|n| (n.clone(), vec![1, self.sequence]))
            .collect();
        o.import.pooling = self.pooling.clone();
        if self.pooling.is_none() {
            o.import.outputs = vec![verity_compiler::pooling::OUTPUT.into()];
        }
        Ok(o)
    }

    /// Compile the encoder with its pooling into a canonical model, with the compiler's accuracy
    /// report over the calibration texts.
    pub fn compile(&self) -> Result<(Model, verity_compiler::report::CompileReport), String> {
        let opts = self.compile_options()?;
        verity_compiler::compile_path(&self.onnx, &opts)
            .map_err(|e| format!("cannot compile {}: {e}", self.onnx.display()))
    }

    /// keccak256 of the ONNX file (part of the compile cache's key; read once for all lengths).
    pub fn onnx_hash(&self) -> Result<Hash, String> {
        std::fs::read(&self.onnx)
            .map(|b| keccak256(&b))
            .map_err(|e| format!("cannot read {}: {e}", self.onnx.display()))
    }

    /// What the compiled model depends on, for the compile cache's key: the ONNX file (its hash), the
    /// tokenizer and the options.
    fn cache_key(&self, onnx_hash: &Hash) -> Hash {
        let mut k = verity_core::hash::Keccak::new();
        k.update(&onnx_hash.0);
        k.update(&self.tokenizer_hash.0);
        k.update(
            format!(
                "{}|{}|{:?}|{}|{:?}",
                env!("CARGO_PKG_VERSION"),
                self.sequence,
                self.pooling,
                self.precision,
                self.inputs
            )
            .as_bytes(),
        );
        k.finalize()
    }

    /// The compiled model, from `cache` (a directory) when it was compiled before with the same files
    /// (the ONNX file's hash `onnx_hash`) and options, else compiled and written there.
    pub fn compile_cached(&self, cache: &Path, onnx_hash: &Hash) -> Result<Model, String> {
        let path = cache.join(format!("{}.vty", self.cache_key(onnx_hash)));
        if let Ok(bytes) = std::fs::read(&path) {
            if let Ok((m, _)) = verity_engine::vty::decode(&bytes) {
                return Ok(m);
            }
        }
        let (m, _) = self.compile()?;
        std::fs::create_dir_all(cache)
            .map_err(|e| format!("cannot create {}: {e}", cache.display()))?;
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, verity_engine::vty::encode(&m))
            .and_then(|()| std::fs::rename(&tmp, &path))
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        Ok(m)
    }
}

/// The model's inputs (by name, in order) for `tokens` padded with `pad` to `seq`, as integers: the
/// token IDs, the attention mask, and token types (all 0).
pub fn input_ints(names: &[String], seq: usize, pad: u32, tokens: &[u32]) -> Vec<Vec<i32>> {
    names
        .iter()
        .map(|name| {
            (0..seq)
                .map(|i| match (name.as_str(), tokens.get(i)) {
                    ("input_ids", Some(&t)) => t as i32,
                    ("input_ids", None) => pad as i32,
                    ("attention_mask", t) => t.is_some() as i32,
                    _ => 0,
                })
                .collect()
        })
        .collect()
}

/// An embedding as a response carries it: a list of numbers, or base64 of little-endian `f32`s.
pub fn embedding_floats(v: &Value) -> Result<Vec<f32>, String> {
    match v {
        Value::Array(a) => a
            .iter()
            .map(|x| x.as_f64().map(|f| f as f32))
            .collect::<Option<_>>()
            .ok_or_else(|| "the embedding has an element that is not a number".into()),
        Value::String(s) => {
            use base64::Engine as _;
            let b = base64::engine::general_purpose::STANDARD
                .decode(s)
                .map_err(|e| format!("the embedding is not base64: {e}"))?;
            if b.len() % 4 != 0 {
                return Err("the embedding's bytes are not whole f32s".into());
            }
            Ok(b.chunks(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect())
        }
        _ => Err("the embedding is neither a list nor base64".into()),
    }
}

/// The integers at `scale` fractional bits an embedding's values are (None unless each is one exactly).
pub fn embedding_ints(floats: &[f32], scale: i8) -> Option<Vec<i32>> {
    let k = (scale as f64).exp2();
    floats
        .iter()
        .map(|&f| {
            let x = f as f64 * k;
            (x.fract() == 0.0 && x.abs() <= i32::MAX as f64).then_some(x as i32)
        })
        .collect()
}

/// One compiled length of an embedding model.
pub struct Variant {
    /// The directory at this sequence length (`dir.sequence`), its inputs as the compiled model takes
    /// them (what a receipt's input hash covers).
    pub dir: EncoderDir,
    /// The compiled model, ready to run.
    pub loaded: Arc<Loaded>,
    /// Fractional bits of the embedding's elements.
    pub scale: i8,
}

/// An embedding model being served: compiled at several sequence lengths, each input run at the
/// shortest that holds it.
pub struct EmbedModel {
    /// The name requests give as `model`.
    pub name: String,
    /// Shortest first; the last one is the longest input served.
    pub variants: Vec<Variant>,
    /// Width of the embedding.
    pub dimensions: usize,
    /// Unix time the model was loaded.
    pub created: u64,
}

impl EmbedModel {
    /// The longest sequence, which every other setting of the directory shares.
    pub fn largest(&self) -> &Variant {
        &self.variants[self.variants.len() - 1]
    }

    /// The index of the shortest variant that holds `n` tokens (the largest if none does).
    pub fn fitting(&self, n: usize) -> usize {
        self.variants
            .iter()
            .position(|v| v.dir.sequence >= n)
            .unwrap_or(self.variants.len() - 1)
    }
}

/// The lengths compiled for a longest sequence `s` when none are configured: 32, 128 and 512 below it,
/// and `s`.
pub fn default_lengths(s: usize) -> Vec<usize> {
    let mut v: Vec<usize> = [32, 128, 512].into_iter().filter(|&l| l < s).collect();
    v.push(s);
    v
}

fn compile_variant(
    dir: EncoderDir,
    cache: &Path,
    onnx_hash: &Hash,
    name: &str,
) -> Result<(Variant, usize), String> {
    let mut dir = dir;
    let model = dir
        .compile_cached(cache, onnx_hash)
        .map_err(|e| format!("embedding model '{name}': {e}"))?;
    dir.inputs = model.inputs.iter().map(|i| i.name.clone()).collect();
    let info = model.outputs.first().and_then(|o| model.value(o.value));
    let out_shape = info.map(|v| v.shape.to_vec()).unwrap_or_default();
    let scale = info.map_or(0, |v| v.scale);
    if model.outputs.len() != 1 || out_shape.len() != 2 || out_shape[0] != 1 {
        return Err(format!(
            "embedding model '{name}': the compiled model's output is {out_shape:?}, not one \
             [1, width] vector"
        ));
    }
    let id = verity_engine::vty::model_id(&model);
    tracing::info!(name, model_id = %id, sequence = dir.sequence, dimensions = out_shape[1],
                   pooling = ?dir.pooling.as_ref().map(|p| p.mode.name()), "serving embedding model");
    let cost = verity_engine::Cost::of(&model);
    let loaded = Loaded {
        id,
        exec: verity_engine::Executor::new(
            Arc::new(model),
            verity_engine::Mode::Fast { threads: 1 },
        ),
        cost_us: Default::default(),
        zk: std::sync::OnceLock::new(),
        cost,
    };
    let v = Variant {
        dir,
        loaded: Arc::new(loaded),
        scale,
    };
    Ok((v, out_shape[1] as usize))
}

/// Loads (compiles, or reads from the compile cache under `data_dir`) every configured model at each
/// of its lengths; names must be distinct.
pub fn load_all(
    configs: &[crate::config::EmbeddingConfig],
    data_dir: &Path,
) -> Result<std::collections::BTreeMap<String, Arc<EmbedModel>>, String> {
    let mut out = std::collections::BTreeMap::new();
    let cache = data_dir.join("embeddings");
    for c in configs {
        let name = c.model_name();
        if out.contains_key(&name) {
            return Err(format!("two embedding models are named '{name}'"));
        }
        let dir = read_dir(&c.path, &c.options()?)
            .map_err(|e| format!("embedding model '{name}': {e}"))?;
        let lengths = match &c.lengths {
            Some(l) => {
                let mut l = l.clone();
                l.sort_unstable();
                l.dedup();
                if l.is_empty() || l.iter().any(|&x| x < 2 || x > dir.sequence) {
                    return Err(format!(
                        "embedding model '{name}': lengths {l:?} must be 2 … {} (the sequence)",
                        dir.sequence
                    ));
                }
                if l.last() != Some(&dir.sequence) {
                    l.push(dir.sequence);
                }
                l
            }
            None => default_lengths(dir.sequence),
        };
        let onnx_hash = dir
            .onnx_hash()
            .map_err(|e| format!("embedding model '{name}': {e}"))?;
        let mut variants = Vec::new();
        let mut dimensions = 0;
        for l in lengths {
            let (v, d) = compile_variant(dir.at(l), &cache, &onnx_hash, &name)?;
            dimensions = d;
            variants.push(v);
        }
        out.insert(
            name.clone(),
            Arc::new(EmbedModel {
                name,
                variants,
                dimensions,
                created: crate::clock::unix_now(),
            }),
        );
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/embed-mini")
    }

    /// A copy of the fixture with `edit` applied to its files.
    fn variant(edit: impl FnOnce(&Path)) -> tempfile::TempDir {
        let t = tempfile::tempdir().unwrap();
        for f in [
            "model.onnx",
            "tokenizer.json",
            "vocab.txt",
            "tokenizer_config.json",
            "config.json",
            "modules.json",
            "sentence_bert_config.json",
        ] {
            std::fs::copy(fixture().join(f), t.path().join(f)).unwrap();
        }
        std::fs::create_dir(t.path().join("1_Pooling")).unwrap();
        std::fs::copy(
            fixture().join("1_Pooling/config.json"),
            t.path().join("1_Pooling/config.json"),
        )
        .unwrap();
        edit(t.path());
        t
    }

    const TEXTS: &[&str] = &[
        "The quick brown fox, ÉCOLE naïve!",
        "今天天气很好 Привет  tabs\tand\nlines",
        "zero\u{200b}width control\u{7} emoji 🙂 e\u{301}",
        "",
    ];

    #[test]
    fn a_vocab_file_tokenizes_as_the_tokenizer_file() {
        let d = EmbedOptions::default();
        let full = read_dir(&fixture(), &d).unwrap();
        let bare = variant(|p| std::fs::remove_file(p.join("tokenizer.json")).unwrap());
        let vocab = read_dir(bare.path(), &d).unwrap();
        for t in TEXTS {
            assert_eq!(
                full.tokens(t, None).unwrap(),
                vocab.tokens(t, None).unwrap(),
                "{t:?}"
            );
        }
        assert_ne!(full.tokenizer_hash, vocab.tokenizer_hash);
        assert_eq!((full.sequence, full.pad_id), (64, 0));
        let p = full.pooling.as_ref().unwrap();
        assert_eq!((p.mode, p.normalize), (PoolMode::Mean, true));
    }

    #[test]
    fn truncation_keeps_the_closing_token_and_the_inputs_are_padded() {
        let d = read_dir(&fixture(), &EmbedOptions::default()).unwrap();
        let long = "the quick brown fox jumps over the lazy dog ".repeat(20);
        let all = d.tokens(&long, None).unwrap();
        let cut = d.tokens(&long, Some(10)).unwrap();
        assert!(all.len() > 10);
        assert_eq!(cut.len(), 10);
        assert_eq!(cut[..9], all[..9]);
        assert_eq!(cut[9], *all.last().unwrap());
        let names = vec![
            "input_ids".to_string(),
            "attention_mask".into(),
            "token_type_ids".into(),
        ];
        let q = input_ints(&names, 5, 7, &[2, 40, 3]);
        assert_eq!(
            q,
            vec![vec![2, 40, 3, 7, 7], vec![1, 1, 1, 0, 0], vec![0; 5]]
        );
    }

    #[test]
    fn embeddings_are_exact_multiples_or_refused() {
        assert_eq!(embedding_ints(&[0.5, -0.25, 3.0], 4), Some(vec![8, -4, 48]));
        assert_eq!(embedding_ints(&[0.1], 4), None);
        let b64 = serde_json::json!("AAAAPwAAgL4=");
        assert_eq!(embedding_floats(&b64).unwrap(), vec![0.5, -0.25]);
        assert!(embedding_floats(&serde_json::json!("AAA=")).is_err());
        assert!(embedding_floats(&serde_json::json!([1, "x"])).is_err());
    }

    #[test]
    fn directories_that_cannot_be_served_say_why() {
        let d = EmbedOptions::default();
        let err = |edit: fn(&Path)| read_dir(variant(edit).path(), &d).err().unwrap();
        let e = err(|p| std::fs::remove_file(p.join("model.onnx")).unwrap());
        assert!(e.contains("no model.onnx"), "{e}");
        let e = err(|p| {
            std::fs::remove_file(p.join("tokenizer.json")).unwrap();
            std::fs::remove_file(p.join("vocab.txt")).unwrap();
        });
        assert!(e.contains("neither tokenizer.json nor vocab.txt"), "{e}");
        let e = err(|p| {
            std::fs::write(
                p.join("1_Pooling/config.json"),
                r#"{"pooling_mode_cls_token": true, "pooling_mode_mean_tokens": true}"#,
            )
            .unwrap()
        });
        assert!(e.contains("2 pooling modes"), "{e}");
        let e = err(|p| {
            std::fs::write(
                p.join("1_Pooling/config.json"),
                r#"{"pooling_mode_lasttoken": true}"#,
            )
            .unwrap()
        });
        assert!(e.contains("pooling_mode_lasttoken"), "{e}");
        let e = err(|p| {
            std::fs::write(
                p.join("modules.json"),
                r#"[{"path": "", "type": "sentence_transformers.models.Transformer"},
                    {"path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
                    {"path": "2_Dense", "type": "sentence_transformers.models.Dense"}]"#,
            )
            .unwrap()
        });
        assert!(e.contains("Dense"), "{e}");
        let e = err(|p| std::fs::remove_file(p.join("modules.json")).unwrap());
        assert!(e.contains("configure one"), "{e}");
        let long = EmbedOptions {
            sequence: Some(100),
            ..Default::default()
        };
        let e = read_dir(&fixture(), &long).err().unwrap();
        assert!(e.contains("more than the model's 64 positions"), "{e}");
    }

    #[test]
    fn every_pooling_mode_compiles_close_to_the_float_graph() {
        for mode in [
            PoolMode::Cls,
            PoolMode::Mean,
            PoolMode::Max,
            PoolMode::MeanSqrtLen,
        ] {
            for normalize in [false, true] {
                let opts = EmbedOptions {
                    sequence: Some(16),
                    pooling: Some(mode),
                    normalize: Some(normalize),
                    ..Default::default()
                };
                let d = read_dir(&fixture(), &opts).unwrap();
                let (m, report) = d.compile().unwrap();
                assert_eq!(m.outputs.len(), 1);
                let out = &report.outputs[0];
                assert!(
                    out.max_abs_error < 2e-3,
                    "{mode:?} normalize={normalize}: {}",
                    out.max_abs_error
                );
                assert!(report.import_check_max_abs_diff < 1e-4, "{mode:?}");
            }
        }
    }
}
