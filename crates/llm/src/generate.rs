//! A generation after its prompt: each next token chosen canonically from the step's logits, until an
//! end token, a stop text or the token budget; the text streamed in whole characters, holding back
//! what could begin a stop text.

use verity_core::hash::{keccak256, Hash};

use crate::arch::LlmError;
use crate::sample::Sampler;
use crate::session::Session;
use crate::step::Step;
use crate::tokenizer::Tokenizer;

/// keccak256 of token IDs, each a 4-byte big-endian integer (what a receipt binds).
pub fn tokens_hash(ids: &[u32]) -> Hash {
    let bytes: Vec<u8> = ids.iter().flat_map(|t| t.to_be_bytes()).collect();
    keccak256(&bytes)
}

/// keccak256 of a step's logits, each a 4-byte big-endian integer.
pub fn logits_hash(logits: &[i32]) -> Hash {
    let bytes: Vec<u8> = logits.iter().flat_map(|t| t.to_be_bytes()).collect();
    keccak256(&bytes)
}

/// Why a generation ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Finish {
    /// An end token or a stop text.
    Stop,
    /// The token budget (or the context) ran out.
    Length,
    /// The receiver of the text went away.
    Cancelled,
}

impl Finish {
    /// OpenAI's `finish_reason` spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Finish::Stop => "stop",
            Finish::Length => "length",
            Finish::Cancelled => "cancelled",
        }
    }
}

/// What a generation produced.
#[derive(Clone, Debug, PartialEq)]
pub struct Outcome {
    /// Every chosen token (an end token included).
    pub tokens: Vec<u32>,
    /// The output text, up to a stop text.
    pub text: String,
    /// Why it ended.
    pub finish: Finish,
    /// keccak256 of the hashes of the logits each chosen token came from, in order
    /// ([`logits_hash`], 32 bytes each): one commitment to every step's result.
    pub steps_root: Hash,
}

/// Where `needle` first occurs in `hay`.
fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Generates after a prompt whose last position gave `logits`, at most `max_tokens` tokens (and no
/// more than the context holds). `on_text` receives the text as it becomes final (whole characters,
/// never the start of a stop text) and returns false to stop the generation; `before_step` sees the
/// session and the token before each step is fed.
#[allow(clippy::too_many_arguments)]
pub fn decode(
    s: &mut Session,
    tk: &Tokenizer,
    sampler: &Sampler,
    prompt: &[u32],
    mut logits: Vec<i32>,
    max_tokens: usize,
    stop: &[String],
    mut on_text: impl FnMut(&str) -> bool,
    mut before_step: impl FnMut(&Session, u32) -> Result<(), LlmError>,
) -> Result<Outcome, LlmError> {
    if stop.iter().any(String::is_empty) {
        return Err(LlmError::Request("a stop text is empty".into()));
    }
    let scale = s.logit_scale();
    let budget = max_tokens.min(s.context().saturating_sub(prompt.len()));
    let hold = stop.iter().map(String::len).max().unwrap_or(1) - 1;
    let mut context = prompt.to_vec();
    let mut tokens = Vec::new();
    let mut bytes: Vec<u8> = Vec::new();
    let mut sent = 0;
    let mut steps = Vec::new();
    let mut finish = Finish::Length;
    let mut cut = None;
    while tokens.len() < budget {
        let t = sampler.choose(&logits, scale, &context, context.len() as u64);
        steps.extend_from_slice(&logits_hash(&logits).0);
        tokens.push(t);
        context.push(t);
        if tk.stops.contains(&t) {
            finish = Finish::Stop;
            break;
        }
        bytes.extend(tk.token_bytes(t));
        if let Some(at) = stop.iter().filter_map(|x| find(&bytes, x.as_bytes())).min() {
            finish = Finish::Stop;
            cut = Some(at);
            break;
        }
        // whole characters, holding back what could begin a stop text
        let end = bytes.len().saturating_sub(hold).max(sent);
        let valid = match std::str::from_utf8(&bytes[sent..end]) {
            Ok(v) => v.len(),
            Err(e) => e.valid_up_to(),
        };
        if valid > 0 {
            let piece = std::str::from_utf8(&bytes[sent..sent + valid]).unwrap_or_default();
            sent += valid;
            if !on_text(piece) {
                finish = Finish::Cancelled;
                break;
            }
        }
        if tokens.len() == budget {
            break;
        }
        before_step(s, t)?;
        logits = s.feed(t)?;
    }
    let end = cut.unwrap_or(bytes.len());
    if finish != Finish::Cancelled && sent < end {
        on_text(&String::from_utf8_lossy(&bytes[sent..end]));
    }
    Ok(Outcome {
        tokens,
        text: String::from_utf8_lossy(&bytes[..end]).into_owned(),
        finish,
        steps_root: keccak256(&steps),
    })
}

/// A whole generation on `step`: a new session on `threads` threads, the prompt prefilled, then
/// [`decode`] (no per-step hook).
#[allow(clippy::too_many_arguments)]
pub fn complete(
    step: &Step,
    tk: &Tokenizer,
    threads: usize,
    sampler: &Sampler,
    prompt: &[u32],
    max_tokens: usize,
    stop: &[String],
    on_text: impl FnMut(&str) -> bool,
) -> Result<Outcome, LlmError> {
    let mut s = Session::new(step, threads);
    let logits = s.prefill(prompt)?;
    decode(
        &mut s,
        tk,
        sampler,
        prompt,
        logits,
        max_tokens,
        stop,
        on_text,
        |_, _| Ok(()),
    )
}
