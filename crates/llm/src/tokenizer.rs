//! Tokenizers and chat templates from a GGUF file's own metadata: the token IDs a prompt becomes are
//! what a generation (and its receipt) binds, so they must be the IDs the model's authors meant —
//! checked against llama.cpp's tokenizer on the development model.
//!
//! Byte-level BPE vocabularies (`tokenizer.ggml.model = "gpt2"`: GPT-2, SmolLM, Qwen2, Llama 3) are
//! tokenized with the `tokenizers` crate, configured from `tokenizer.ggml.pre` (the pre-tokenizer
//! preset llama.cpp names), with control and user-defined tokens matched as special tokens. Chat
//! templates (`tokenizer.chat_template`) are rendered with `minijinja`.

use std::collections::HashMap;

use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::BPE;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::{AddedToken, SplitDelimiterBehavior};

use crate::arch::LlmError;
use crate::gguf::{Gguf, Value};

/// Pre-tokenizer presets (`tokenizer.ggml.pre`) this tokenizer knows.
pub const SUPPORTED_PRE: &str = "gpt-2, default, smollm, qwen2, llama-bpe";

/// Qwen2's split pattern (digits one by one).
const QWEN2: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Llama 3's split pattern (digits in runs of up to three).
const LLAMA3: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// A model's tokenizer.
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    /// Token strings by ID.
    tokens: Vec<String>,
    /// Whether each token is a control or user-defined token (its text is itself, not bytes).
    special: Vec<bool>,
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

impl Tokenizer {
    /// The tokenizer described by the file's metadata.
    pub fn from_gguf(g: &Gguf) -> Result<Tokenizer, LlmError> {
        let model = g.get_str("tokenizer.ggml.model")?;
        if model != "gpt2" {
            return Err(LlmError::Unsupported(format!(
                "tokenizer model '{model}' (byte-level BPE, \"gpt2\", is supported)"
            )));
        }
        let tokens = strings(g, "tokenizer.ggml.tokens")?;
        let merges = strings(g, "tokenizer.ggml.merges")?;
        let types: Vec<i64> = match g.get("tokenizer.ggml.token_type") {
            Some(Value::Array(v)) => v
                .iter()
                .map(|t| match t {
                    Value::I32(x) => *x as i64,
                    other => other.as_u64().map_or(1, |x| x as i64),
                })
                .collect(),
            _ => vec![1; tokens.len()],
        };
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
        let bpe = BPE::builder()
            .vocab_and_merges(vocab, merges)
            .ignore_merges(false)
            .build()
            .map_err(|e| LlmError::Unsupported(format!("the BPE vocabulary: {e}")))?;
        let pre = g
            .get("tokenizer.ggml.pre")
            .and_then(|v| v.as_str())
            .unwrap_or("default")
            .to_string();
        let split = |pattern: &str| -> Result<PreTokenizerWrapper, LlmError> {
            Split::new(
                SplitPattern::Regex(pattern.into()),
                SplitDelimiterBehavior::Isolated,
                false,
            )
            .map(PreTokenizerWrapper::Split)
            .map_err(|e| LlmError::Unsupported(format!("pre-tokenizer pattern: {e}")))
        };
        let pre_tokenizer = match pre.as_str() {
            "gpt-2" | "gpt2" | "default" => {
                PreTokenizerWrapper::ByteLevel(ByteLevel::new(false, true, true))
            }
            "smollm" => PreTokenizerWrapper::Sequence(Sequence::new(vec![
                PreTokenizerWrapper::Digits(Digits::new(true)),
                PreTokenizerWrapper::ByteLevel(ByteLevel::new(false, true, true)),
            ])),
            "qwen2" => PreTokenizerWrapper::Sequence(Sequence::new(vec![
                split(QWEN2)?,
                PreTokenizerWrapper::ByteLevel(ByteLevel::new(false, true, false)),
            ])),
            "llama-bpe" | "llama3" => PreTokenizerWrapper::Sequence(Sequence::new(vec![
                split(LLAMA3)?,
                PreTokenizerWrapper::ByteLevel(ByteLevel::new(false, true, false)),
            ])),
            other => {
                return Err(LlmError::Unsupported(format!(
                    "pre-tokenizer '{other}' (supported: {SUPPORTED_PRE})"
                )))
            }
        };
        let mut inner = tokenizers::Tokenizer::new(bpe);
        inner.with_pre_tokenizer(Some(pre_tokenizer));
        inner.with_decoder(Some(ByteLevelDecoder::default()));
        let special: Vec<bool> = (0..tokens.len())
            .map(|i| matches!(types.get(i), Some(3) | Some(4)))
            .collect();
        let added: Vec<AddedToken> = tokens
            .iter()
            .zip(&special)
            .filter(|(_, &s)| s)
            .map(|(t, _)| AddedToken::from(t.clone(), true))
            .collect();
        inner
            .add_special_tokens(added)
            .map_err(|e| LlmError::Unsupported(format!("the special tokens: {e}")))?;
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
            inner,
            tokens,
            special,
            byte_of: byte_chars(),
            bos,
            eos,
            stops,
            add_bos: matches!(
                g.get("tokenizer.ggml.add_bos_token"),
                Some(Value::Bool(true))
            ),
            chat_template: g
                .get("tokenizer.chat_template")
                .and_then(|v| v.as_str())
                .map(str::to_string),
        })
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
        self.inner
            .encode(text, false)
            .map(|e| e.get_ids().to_vec())
            .map_err(|e| LlmError::Request(format!("cannot tokenize the prompt: {e}")))
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

    /// The bytes token `id` stands for (a control token's own text; empty for an unknown ID).
    pub fn token_bytes(&self, id: u32) -> Vec<u8> {
        let Some(t) = self.tokens.get(id as usize) else {
            return Vec::new();
        };
        if self.special[id as usize] {
            return t.as_bytes().to_vec();
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
