//! Tokenizers and chat templates from a GGUF file's own metadata: the token IDs a prompt becomes are
//! what a generation (and its receipt) binds, so they must be the IDs the model's authors meant —
//! checked against llama.cpp's tokenizer on real vocabularies (`tests/vocab.rs`).
//!
//! Two vocabulary kinds:
//! - byte-level BPE (`tokenizer.ggml.model = "gpt2"`: GPT-2, SmolLM, Qwen2, Llama 3, StarCoder, …):
//!   the text is split by the pre-tokenizer preset `tokenizer.ggml.pre` names (a sequence of
//!   regular expressions) and each piece BPE-merged by the `tokenizers` crate;
//! - SentencePiece BPE (`"llama"`: Llama 2, Mistral, Phi-3, TinyLlama, …): spaces become `▁` (with
//!   one prefixed at the start of the text and after each special token), the characters are merged
//!   pairwise, highest vocabulary score first (leftmost among equals), and characters no token
//!   covers fall back to byte tokens `<0xXX>`.
//!
//! Before either, control, unknown and user-defined tokens written in the text are cut out as the
//! tokens themselves, longest first (user-defined tokens always; the others when special-token
//! parsing is on, as for prompts). Chat templates (`tokenizer.chat_template`) are rendered with
//! `minijinja`.

use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap};

use tokenizers::models::bpe::BPE;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::SplitDelimiterBehavior;

use crate::arch::LlmError;
use crate::gguf::{Gguf, Value};

/// Vocabulary kinds (`tokenizer.ggml.model`) this tokenizer knows.
pub const SUPPORTED_MODELS: &str = "gpt2 (byte-level BPE), llama (SentencePiece BPE)";

/// Pre-tokenizer presets (`tokenizer.ggml.pre`) of byte-level BPE vocabularies this tokenizer knows.
pub const SUPPORTED_PRE: &str = "default, gpt-2, phi-2, mpt, olmo, jais, smollm, starcoder, refact, \
command-r, codeshell, exaone, qwen2, stablelm2, deepseek-r1-qwen, megrez, qwen35, llama-bpe, llama3, \
llama-v3, falcon3, dbrx, smaug-bpe, falcon";

/// GPT-2's split pattern.
const GPT2: &str = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)";
/// Qwen2's split pattern (digits one by one).
const QWEN2: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Qwen3.5's split pattern (Qwen2's with combining marks inside words).
const QWEN35: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Llama 3's split pattern (digits in runs of up to three).
const LLAMA3: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// The split patterns (applied in sequence, matches and the text between them kept as pieces) of a
/// byte-level BPE preset, and whether a piece that is itself a token skips the merges.
fn preset(pre: &str) -> Option<(Vec<&'static str>, bool)> {
    Some(match pre {
        "gpt-2" | "gpt2" | "phi-2" | "mpt" | "olmo" | "jais" => (vec![GPT2], false),
        "smollm" | "starcoder" | "refact" | "command-r" | "codeshell" | "exaone" => {
            (vec![r"\p{N}", GPT2], false)
        }
        "qwen2" | "stablelm2" | "deepseek-r1-qwen" | "megrez" => (vec![QWEN2], false),
        "qwen35" => (vec![QWEN35], false),
        "llama-bpe" | "llama3" | "llama-v3" | "falcon3" => (vec![LLAMA3], true),
        "dbrx" | "smaug-bpe" => (vec![LLAMA3], false),
        "falcon" => (
            vec![r"[\p{P}\$\+<=>\^~\|`]+", GPT2, "[0-9][0-9][0-9]"],
            false,
        ),
        "default" => (
            vec![r"[\p{P}\$\+<=>\^~\|]+", GPT2, r"\p{N}+", "[0-9][0-9][0-9]"],
            false,
        ),
        _ => return None,
    })
}

/// GGUF token types.
const TYPE_NORMAL: i64 = 1;
const TYPE_UNKNOWN: i64 = 2;
const TYPE_CONTROL: i64 = 3;
const TYPE_USER_DEFINED: i64 = 4;
const TYPE_BYTE: i64 = 6;

/// How text pieces become tokens.
enum Model {
    /// Byte-level BPE (pre-tokenizer and merges).
    Bpe(Box<tokenizers::Tokenizer>),
    /// SentencePiece BPE.
    Spm(Spm),
}

/// A SentencePiece BPE vocabulary.
struct Spm {
    /// Token text → ID (the last ID when a text repeats, as llama.cpp).
    ids: HashMap<String, u32>,
    /// Each token's score: higher merges first.
    scores: Vec<f32>,
    /// Whether a space is prefixed to the text (and after each special token).
    add_space_prefix: bool,
}

/// A pending merge of two adjacent symbols: the highest score first, then the leftmost.
struct Bigram {
    score: f32,
    left: usize,
    right: usize,
    len: usize,
}

impl PartialEq for Bigram {
    fn eq(&self, o: &Self) -> bool {
        self.cmp(o) == Ordering::Equal
    }
}
impl Eq for Bigram {}
impl PartialOrd for Bigram {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Bigram {
    fn cmp(&self, o: &Self) -> Ordering {
        self.score
            .partial_cmp(&o.score)
            .unwrap_or(Ordering::Equal)
            .then(o.left.cmp(&self.left))
    }
}

impl Spm {
    /// Tokens of one text piece (spaces already `▁`).
    fn encode(&self, text: &str, out: &mut Vec<u32>) -> Result<(), LlmError> {
        // Symbols: (byte start, byte length, previous, next) — initially one per character.
        let starts: Vec<usize> = text.char_indices().map(|(i, _)| i).collect();
        let n = starts.len();
        let mut len: Vec<usize> = (0..n)
            .map(|i| starts.get(i + 1).copied().unwrap_or(text.len()) - starts[i])
            .collect();
        let mut prev: Vec<Option<usize>> = (0..n).map(|i| i.checked_sub(1)).collect();
        let mut next: Vec<Option<usize>> = (0..n).map(|i| (i + 1 < n).then_some(i + 1)).collect();
        let mut queue = BinaryHeap::new();
        let bigram = |l: usize, r: usize, len: &[usize]| -> Option<Bigram> {
            let piece = &text[starts[l]..starts[l] + len[l] + len[r]];
            let id = *self.ids.get(piece)?;
            Some(Bigram {
                score: self.scores[id as usize],
                left: l,
                right: r,
                len: piece.len(),
            })
        };
        for i in 1..n {
            queue.extend(bigram(i - 1, i, &len));
        }
        while let Some(b) = queue.pop() {
            if len[b.left] == 0 || len[b.right] == 0 || len[b.left] + len[b.right] != b.len {
                continue; // one side merged since
            }
            len[b.left] += len[b.right];
            len[b.right] = 0;
            next[b.left] = next[b.right];
            if let Some(r) = next[b.right] {
                prev[r] = Some(b.left);
            }
            if let Some(p) = prev[b.left] {
                queue.extend(bigram(p, b.left, &len));
            }
            if let Some(r) = next[b.left] {
                queue.extend(bigram(b.left, r, &len));
            }
        }
        let mut at = (n > 0).then_some(0);
        while let Some(i) = at {
            let piece = &text[starts[i]..starts[i] + len[i]];
            match self.ids.get(piece) {
                Some(&id) => out.push(id),
                None => {
                    for b in piece.bytes() {
                        let id = self
                            .ids
                            .get(&format!("<0x{b:02X}>"))
                            .or_else(|| self.ids.get(&char::from(b).to_string()))
                            .ok_or_else(|| {
                                LlmError::Request(format!(
                                    "cannot tokenize the prompt: the vocabulary has no token for \
                                     '{piece}' nor for its byte 0x{b:02X}"
                                ))
                            })?;
                        out.push(*id);
                    }
                }
            }
            at = next[i];
        }
        Ok(())
    }
}

/// A model's tokenizer.
pub struct Tokenizer {
    model: Model,
    /// Token strings by ID.
    tokens: Vec<String>,
    /// GGUF token type of each token (1 normal, 2 unknown, 3 control, 4 user-defined, 6 byte).
    types: Vec<i64>,
    /// Tokens cut out of the text before tokenizing it (control, unknown, user-defined), longest
    /// first, each with whether whitespace after it is dropped.
    specials: Vec<(u32, bool)>,
    /// The byte each byte-level character stands for.
    byte_of: HashMap<char, u8>,
    /// Beginning-of-sequence token.
    pub bos: Option<u32>,
    /// End-of-sequence token.
    pub eos: Option<u32>,
    /// End-of-generation tokens (EOS, EOT and the file's other stop tokens).
    pub stops: Vec<u32>,
    /// Whether the model expects a BOS token before a prompt.
    pub add_bos: bool,
    /// The chat template, if the file has one.
    pub chat_template: Option<String>,
}

fn strings(g: &Gguf, key: &str) -> Result<Vec<String>, LlmError> {
    match g.get(key) {
        Some(Value::Array(v)) => v
            .iter()
            .map(|s| {
                s.as_str()
                    .map(str::to_string)
                    .ok_or_else(|| LlmError::Unsupported(format!("{key} holds a non-string")))
            })
            .collect(),
        _ => Err(LlmError::Unsupported(format!("the tokenizer needs {key}"))),
    }
}

/// GPT-2's byte ↔ printable-character table: printable bytes stand for themselves, the others for
/// the characters from U+0100 on, in byte order.
fn byte_chars() -> HashMap<char, u8> {
    let printable = |b: u8| (b'!'..=b'~').contains(&b) || (0xa1..=0xac).contains(&b) || b >= 0xae;
    let mut next = 256u32;
    let mut map = HashMap::new();
    for b in 0..=255u8 {
        let c = if printable(b) {
            char::from(b)
        } else {
            let c = char::from_u32(next).expect("U+0100 … U+0143 are characters");
            next += 1;
            c
        };
        map.insert(c, b);
    }
    map
}

/// The byte-level BPE model of a `gpt2` vocabulary, and whether its preset adds BOS by default
/// (Llama 3's).
fn bpe(g: &Gguf, tokens: &[String]) -> Result<(tokenizers::Tokenizer, bool), LlmError> {
    let merges = strings(g, "tokenizer.ggml.merges")?;
    let vocab: tokenizers::models::bpe::Vocab = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.clone(), i as u32))
        .collect();
    let merges: Vec<(String, String)> = merges
        .iter()
        .map(|m| {
            m.split_once(' ')
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .ok_or_else(|| LlmError::Unsupported(format!("merge '{m}' has no space")))
        })
        .collect::<Result<_, _>>()?;
    let pre = g
        .get("tokenizer.ggml.pre")
        .and_then(|v| v.as_str())
        .unwrap_or("default");
    let (patterns, ignore_merges) = preset(pre).ok_or_else(|| {
        LlmError::Unsupported(format!(
            "pre-tokenizer '{pre}' of the tokenizer (supported: {SUPPORTED_PRE})"
        ))
    })?;
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .ignore_merges(ignore_merges)
        .build()
        .map_err(|e| LlmError::Unsupported(format!("the BPE vocabulary: {e}")))?;
    let mut steps = patterns
        .iter()
        .map(|p| {
            Split::new(
                SplitPattern::Regex(p.to_string()),
                SplitDelimiterBehavior::Isolated,
                false,
            )
            .map(PreTokenizerWrapper::Split)
            .map_err(|e| LlmError::Unsupported(format!("pre-tokenizer pattern: {e}")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    steps.push(PreTokenizerWrapper::ByteLevel(ByteLevel::new(
        false, true, false,
    )));
    let mut inner = tokenizers::Tokenizer::new(bpe);
    inner.with_pre_tokenizer(Some(PreTokenizerWrapper::Sequence(Sequence::new(steps))));
    Ok((inner, ignore_merges))
}

impl Tokenizer {
    /// The tokenizer described by the file's metadata.
    pub fn from_gguf(g: &Gguf) -> Result<Tokenizer, LlmError> {
        let kind = g.get_str("tokenizer.ggml.model")?;
        let tokens = strings(g, "tokenizer.ggml.tokens")?;
        let mut types: Vec<i64> = match g.get("tokenizer.ggml.token_type") {
            Some(Value::Array(v)) => v
                .iter()
                .map(|t| match t {
                    Value::I32(x) => *x as i64,
                    other => other.as_u64().map_or(1, |x| x as i64),
                })
                .collect(),
            _ => Vec::new(),
        };
        types.resize(tokens.len(), 1);
        let flag = |k: &str| match g.get(k) {
            Some(Value::Bool(b)) => Some(*b),
            _ => None,
        };
        let (model, add_bos_default) = match kind {
            "gpt2" => {
                let (t, add_bos) = bpe(g, &tokens)?;
                (Model::Bpe(Box::new(t)), add_bos)
            }
            "llama" => {
                let scores: Vec<f32> = match g.get("tokenizer.ggml.scores") {
                    Some(Value::Array(v)) => {
                        v.iter().map(|s| s.as_f64().unwrap_or(0.0) as f32).collect()
                    }
                    _ => {
                        return Err(LlmError::Unsupported(
                            "the tokenizer needs tokenizer.ggml.scores".into(),
                        ))
                    }
                };
                if scores.len() != tokens.len() {
                    return Err(LlmError::Unsupported(format!(
                        "the tokenizer has {} scores for {} tokens",
                        scores.len(),
                        tokens.len()
                    )));
                }
                let ids = tokens
                    .iter()
                    .enumerate()
                    .map(|(i, t)| (t.clone(), i as u32))
                    .collect();
                let add_space_prefix = flag("tokenizer.ggml.add_space_prefix").unwrap_or(true);
                (
                    Model::Spm(Spm {
                        ids,
                        scores,
                        add_space_prefix,
                    }),
                    true,
                )
            }
            other => {
                return Err(LlmError::Unsupported(format!(
                    "tokenizer model '{other}' (supported: {SUPPORTED_MODELS})"
                )))
            }
        };
        let mut specials: Vec<u32> = (0..tokens.len() as u32)
            .filter(|&i| {
                matches!(
                    types.get(i as usize),
                    Some(&TYPE_UNKNOWN) | Some(&TYPE_CONTROL) | Some(&TYPE_USER_DEFINED)
                ) && !tokens[i as usize].is_empty()
            })
            .collect();
        specials.sort_by(|&a, &b| {
            tokens[b as usize]
                .len()
                .cmp(&tokens[a as usize].len())
                .then(a.cmp(&b))
        });
        // Phi-3's special tokens swallow the whitespace after them (its tokenizer's `rstrip`),
        // BOS, unknown and end-of-text aside — recognised by the model's name, as llama.cpp does.
        let name = g
            .get("general.name")
            .and_then(|v| v.as_str())
            .unwrap_or("")
            .to_lowercase();
        let phi3 = name.contains("phi-3") || name.contains("phi3");
        let specials: Vec<(u32, bool)> = specials
            .into_iter()
            .map(|i| {
                let t = tokens[i as usize].as_str();
                (i, phi3 && !matches!(t, "<unk>" | "<s>" | "<|endoftext|>"))
            })
            .collect();
        let id = |k: &str| {
            g.get_u64(k)
                .ok()
                .map(|v| v as u32)
                .filter(|&v| (v as usize) < tokens.len())
        };
        let (bos, eos) = (
            id("tokenizer.ggml.bos_token_id"),
            id("tokenizer.ggml.eos_token_id"),
        );
        let mut stops: Vec<u32> = [
            eos,
            id("tokenizer.ggml.eot_token_id"),
            id("tokenizer.ggml.eom_token_id"),
        ]
        .into_iter()
        .flatten()
        .collect();
        stops.sort_unstable();
        stops.dedup();
        Ok(Tokenizer {
            model,
            tokens,
            types,
            specials,
            byte_of: byte_chars(),
            bos,
            eos,
            stops,
            add_bos: flag("tokenizer.ggml.add_bos_token").unwrap_or(add_bos_default),
            chat_template: g
                .get("tokenizer.chat_template")
                .and_then(|v| v.as_str())
                .map(str::to_string),
        })
    }

    /// Whether a SentencePiece vocabulary prefixes a space to the text (its decoded text then
    /// starts with that space).
    pub fn add_space_prefix(&self) -> bool {
        matches!(&self.model, Model::Spm(s) if s.add_space_prefix)
    }

    /// The text cut into pieces of plain text and special tokens written in it, as llama.cpp does:
    /// each special token in turn (longest first) is cut out of the remaining plain pieces.
    fn partition<'a>(&self, text: &'a str, parse_special: bool) -> Vec<Result<&'a str, u32>> {
        if text.is_empty() {
            return Vec::new();
        }
        let mut parts: Vec<Result<&str, u32>> = vec![Ok(text)];
        for &(id, rstrip) in &self.specials {
            let t = self.types[id as usize];
            if !parse_special && t != TYPE_USER_DEFINED {
                continue;
            }
            let needle = self.tokens[id as usize].as_str();
            if !parts
                .iter()
                .any(|p| matches!(p, Ok(s) if s.contains(needle)))
            {
                continue;
            }
            let mut out = Vec::with_capacity(parts.len() + 2);
            for p in parts {
                match p {
                    Ok(s) => {
                        let mut rest = s;
                        while let Some(at) = rest.find(needle) {
                            if at > 0 {
                                out.push(Ok(&rest[..at]));
                            }
                            out.push(Err(id));
                            rest = &rest[at + needle.len()..];
                            if rstrip {
                                rest = rest
                                    .trim_start_matches([' ', '\t', '\n', '\x0b', '\x0c', '\r']);
                            }
                        }
                        if !rest.is_empty() {
                            out.push(Ok(rest));
                        }
                    }
                    token => out.push(token),
                }
            }
            parts = out;
        }
        parts
    }

    fn encode_with(&self, text: &str, parse_special: bool) -> Result<Vec<u32>, LlmError> {
        let mut out = Vec::new();
        let mut after_special = true;
        for part in self.partition(text, parse_special) {
            match part {
                Err(id) => {
                    out.push(id);
                    after_special = true;
                }
                Ok(piece) => {
                    match &self.model {
                        Model::Bpe(t) => out.extend(
                            t.encode(piece, false)
                                .map_err(|e| {
                                    LlmError::Request(format!("cannot tokenize the prompt: {e}"))
                                })?
                                .get_ids(),
                        ),
                        Model::Spm(s) => {
                            let prefix = if s.add_space_prefix && after_special {
                                " "
                            } else {
                                ""
                            };
                            let escaped = format!("{prefix}{piece}").replace(' ', "\u{2581}");
                            s.encode(&escaped, &mut out)?;
                        }
                    }
                    after_special = false;
                }
            }
        }
        Ok(out)
    }

    /// Vocabulary size.
    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    /// Whether the vocabulary is empty.
    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    /// The token IDs of `text`, control tokens written in it (`<|im_start|>`…) matched as such, as
    /// llama.cpp tokenizes with special-token parsing on. No BOS is added.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, LlmError> {
        self.encode_with(text, true)
    }

    /// The token IDs of `text` with control tokens written in it taken as plain text (user-defined
    /// tokens are still matched), as llama.cpp tokenizes with special-token parsing off.
    pub fn encode_raw(&self, text: &str) -> Result<Vec<u32>, LlmError> {
        self.encode_with(text, false)
    }

    /// The prompt's token IDs: [`Tokenizer::encode`], with BOS first when the model asks for it and
    /// the text does not already start with it.
    pub fn prompt(&self, text: &str) -> Result<Vec<u32>, LlmError> {
        let mut ids = self.encode(text)?;
        if let (true, Some(b)) = (self.add_bos, self.bos) {
            if ids.first() != Some(&b) {
                ids.insert(0, b);
            }
        }
        Ok(ids)
    }

    /// Whether a token stands for text (a normal, byte or user-defined token), not for control.
    pub fn is_text(&self, id: u32) -> bool {
        matches!(
            self.types.get(id as usize),
            Some(&TYPE_NORMAL) | Some(&TYPE_BYTE) | Some(&TYPE_USER_DEFINED)
        )
    }

    /// The bytes token `id` stands for (a control token's own text; empty for an unknown ID).
    pub fn token_bytes(&self, id: u32) -> Vec<u8> {
        let Some(t) = self.tokens.get(id as usize) else {
            return Vec::new();
        };
        match self.types[id as usize] {
            TYPE_UNKNOWN | TYPE_CONTROL | TYPE_USER_DEFINED => return t.as_bytes().to_vec(),
            TYPE_BYTE => {
                if let Some(b) = t
                    .strip_prefix("<0x")
                    .and_then(|h| h.strip_suffix('>'))
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                {
                    return vec![b];
                }
            }
            _ => {}
        }
        if let Model::Spm(_) = self.model {
            return t.replace('\u{2581}', " ").into_bytes();
        }
        let mut out = Vec::with_capacity(t.len());
        for c in t.chars() {
            match self.byte_of.get(&c) {
                Some(&b) => out.push(b),
                None => out.extend(c.to_string().as_bytes()),
            }
        }
        out
    }

    /// The text of `ids` (invalid UTF-8, as a token boundary inside a character leaves, replaced).
    pub fn decode(&self, ids: &[u32]) -> String {
        let bytes: Vec<u8> = ids.iter().flat_map(|&i| self.token_bytes(i)).collect();
        String::from_utf8_lossy(&bytes).into_owned()
    }

    /// Renders the chat template for `messages` (role, content), with the assistant's turn opened when
    /// `add_generation_prompt`.
    pub fn render_chat(
        &self,
        messages: &[(String, String)],
        add_generation_prompt: bool,
    ) -> Result<String, LlmError> {
        let template = self
            .chat_template
            .as_deref()
            .ok_or_else(|| LlmError::Request("this model has no chat template".into()))?;
        render_chat(
            template,
            messages,
            add_generation_prompt,
            self.token_text(self.bos),
            self.token_text(self.eos),
        )
    }

    fn token_text(&self, id: Option<u32>) -> String {
        id.and_then(|i| self.tokens.get(i as usize))
            .cloned()
            .unwrap_or_default()
    }
}

/// Renders a Jinja chat template (as Hugging Face's `apply_chat_template` does: `messages`,
/// `add_generation_prompt`, `bos_token`, `eos_token`, `raise_exception`).
pub fn render_chat(
    template: &str,
    messages: &[(String, String)],
    add_generation_prompt: bool,
    bos_token: String,
    eos_token: String,
) -> Result<String, LlmError> {
    let mut env = minijinja::Environment::new();
    env.add_function(
        "raise_exception",
        |msg: String| -> Result<String, minijinja::Error> {
            Err(minijinja::Error::new(
                minijinja::ErrorKind::InvalidOperation,
                msg,
            ))
        },
    );
    env.add_template("chat", template)
        .map_err(|e| LlmError::Unsupported(format!("the chat template does not parse: {e}")))?;
    let msgs: Vec<minijinja::Value> = messages
        .iter()
        .map(|(r, c)| minijinja::context! { role => r, content => c })
        .collect();
    env.get_template("chat")
        .and_then(|t| {
            t.render(minijinja::context! {
                messages => msgs,
                add_generation_prompt => add_generation_prompt,
                bos_token => bos_token,
                eos_token => eos_token,
            })
        })
        .map_err(|e| LlmError::Request(format!("the chat template failed: {e}")))
}
