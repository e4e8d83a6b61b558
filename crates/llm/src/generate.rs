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

/// What the output must be.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Format {
    /// Any text.
    #[default]
    Text,
    /// One JSON object (spec: `docs/spec/llm.md` §4.3): each step may only choose a token that keeps
    /// the output a prefix of one, and the generation ends when the object closes.
    JsonObject,
}

/// How a generation ends besides its end tokens, and what its output must be.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Rules {
    /// At most this many tokens (and no more than the context holds).
    pub max_tokens: usize,
    /// Texts that end the output before them.
    pub stop: Vec<String>,
    /// The output's format.
    pub format: Format,
}

impl Rules {
    /// `max_tokens` tokens of any text, no stop texts.
    pub fn tokens(max_tokens: usize) -> Rules {
        Rules {
            max_tokens,
            ..Rules::default()
        }
    }
}

/// The hash a completion receipt binds as its input: the prompt's tokens and everything that decides
/// the output — the sampler's fixed-point parameters and seed, the token budget, the stop texts and, in
/// JSON mode only, the format (spec: `docs/spec/llm.md` §7).
pub fn input_hash(prompt: &[u32], s: &Sampler, rules: &Rules) -> Hash {
    let mut b = b"verity.completion.v1".to_vec();
    b.extend_from_slice(&tokens_hash(prompt).0);
    for x in [s.temperature_q, s.top_k, s.top_p_q, s.repetition_q] {
        b.extend_from_slice(&x.to_be_bytes());
    }
    b.extend_from_slice(&s.seed.to_be_bytes());
    b.extend_from_slice(&(rules.max_tokens as u64).to_be_bytes());
    let mut stops = Vec::new();
    for x in &rules.stop {
        stops.extend_from_slice(&(x.len() as u32).to_be_bytes());
        stops.extend_from_slice(x.as_bytes());
    }
    b.extend_from_slice(&keccak256(&stops).0);
    if rules.format == Format::JsonObject {
        b.extend_from_slice(b"json_object");
    }
    keccak256(&b)
}

/// Where `needle` first occurs in `hay`.
fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// The JSON-mode limit on a step's choice: every token whose text would leave the language gets the
/// lowest logit. Errors if no token is left.
fn constrain(
    logits: &mut [i32],
    table: &[Vec<u8>],
    state: &crate::json::JsonState,
) -> Result<(), LlmError> {
    let mut any = false;
    for (t, v) in logits.iter_mut().enumerate() {
        let ok = table
            .get(t)
            .is_some_and(|b| !b.is_empty() && state.accepts(b));
        if ok {
            any = true;
        } else {
            *v = i32::MIN;
        }
    }
    if any {
        Ok(())
    } else {
        Err(LlmError::Request(
            "JSON mode: no token of the vocabulary continues the output".into(),
        ))
    }
}

/// Generates after a prompt whose last position gave `logits`, under `rules`. `on_text` receives the
/// text as it becomes final (whole characters, never the start of a stop text) with the tokens chosen
/// since its last call, and returns false to stop the generation; its last call may have empty text
/// (tokens that added none). `before_step` sees the session and the token before each step is fed.
#[allow(clippy::too_many_arguments)]
pub fn decode(
    s: &mut Session,
    tk: &Tokenizer,
    sampler: &Sampler,
    prompt: &[u32],
    mut logits: Vec<i32>,
    rules: &Rules,
    mut on_text: impl FnMut(&str, &[u32]) -> bool,
    mut before_step: impl FnMut(&Session, u32) -> Result<(), LlmError>,
) -> Result<Outcome, LlmError> {
    let stop = &rules.stop;
    if stop.iter().any(String::is_empty) {
        return Err(LlmError::Request("a stop text is empty".into()));
    }
    let scale = s.logit_scale();
    let budget = rules
        .max_tokens
        .min(s.context().saturating_sub(prompt.len()));
    let hold = stop.iter().map(String::len).max().unwrap_or(1) - 1;
    // JSON mode: the text of every token that can be part of one (control tokens cannot)
    let mut json = (rules.format == Format::JsonObject).then(|| {
        let table: Vec<Vec<u8>> = (0..tk.len() as u32)
            .map(|t| {
                if tk.is_text(t) {
                    tk.token_bytes(t)
                } else {
                    Vec::new()
                }
            })
            .collect();
        (table, crate::json::JsonState::new())
    });
    let mut context = prompt.to_vec();
    let mut tokens = Vec::new();
    let mut bytes: Vec<u8> = Vec::new();
    let mut sent = 0;
    let mut tokens_sent = 0;
    let mut steps = Vec::new();
    let mut finish = Finish::Length;
    let mut cut = None;
    while tokens.len() < budget {
        let t = match &json {
            Some((table, state)) => {
                let mut allowed = logits.clone();
                constrain(&mut allowed, table, state)?;
                sampler.choose(&allowed, scale, &context, context.len() as u64)
            }
            None => sampler.choose(&logits, scale, &context, context.len() as u64),
        };
        steps.extend_from_slice(&logits_hash(&logits).0);
        tokens.push(t);
        context.push(t);
        if tk.stops.contains(&t) {
            finish = Finish::Stop;
            break;
        }
        let piece = tk.token_bytes(t);
        let mut complete = false;
        if let Some((_, state)) = &mut json {
            if !state.push(&piece) {
                // only a token the limit let through is chosen (the sampler never takes a lowest logit
                // while another is higher; this guards against a tie at the bottom)
                return Err(LlmError::Request(
                    "JSON mode: the chosen token leaves the JSON text".into(),
                ));
            }
            complete = state.is_complete();
        }
        bytes.extend(piece);
        if let Some(at) = stop.iter().filter_map(|x| find(&bytes, x.as_bytes())).min() {
            finish = Finish::Stop;
            cut = Some(at);
            break;
        }
        if complete {
            finish = Finish::Stop;
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
            let fresh = &tokens[tokens_sent..];
            tokens_sent = tokens.len();
            if !on_text(piece, fresh) {
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
    if finish != Finish::Cancelled && (sent < end || tokens_sent < tokens.len()) {
        on_text(
            &String::from_utf8_lossy(&bytes[sent.min(end)..end]),
            &tokens[tokens_sent..],
        );
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
pub fn complete(
    step: &Step,
    tk: &Tokenizer,
    threads: usize,
    sampler: &Sampler,
    prompt: &[u32],
    rules: &Rules,
    on_text: impl FnMut(&str, &[u32]) -> bool,
) -> Result<Outcome, LlmError> {
    let mut s = Session::new(step, threads);
    let logits = s.prefill(prompt)?;
    decode(
        &mut s,
        tk,
        sampler,
        prompt,
        logits,
        rules,
        on_text,
        |_, _| Ok(()),
    )
}
