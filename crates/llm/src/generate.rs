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

impl Format {
    /// Its name in OpenAI's `response_format.type` and in a completion's `verity` fields.
    pub fn name(self) -> &'static str {
        match self {
            Format::Text => "text",
            Format::JsonObject => "json_object",
        }
    }

    /// The format named `name` ([`Format::name`]), if Verity knows it.
    pub fn from_name(name: &str) -> Option<Format> {
        [Format::Text, Format::JsonObject]
            .into_iter()
            .find(|f| f.name() == name)
    }
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

/// What a generation does next (see [`Decoder::choose`]).
pub enum Next {
    /// Run this token (its logits choose the one after).
    Feed(u32),
    /// The generation has ended.
    Done(Outcome),
}

/// A generation after its prompt, one token at a time ([`Decoder::advance`], or [`Decoder::choose`]
/// and [`Decoder::fed`] around a step that runs several generations at once), so a scheduler can
/// interleave several; [`decode`] runs one to its end.
pub struct Decoder<'t, F: FnMut(&str, &[u32]) -> bool> {
    tk: &'t Tokenizer,
    sampler: Sampler,
    rules: Rules,
    on_text: F,
    scale: i8,
    budget: usize,
    hold: usize,
    /// JSON mode: the text of every token that can be part of one (control tokens cannot), and the
    /// recognizer's state.
    json: Option<(Vec<Vec<u8>>, crate::json::JsonState)>,
    logits: Vec<i32>,
    context: Vec<u32>,
    tokens: Vec<u32>,
    bytes: Vec<u8>,
    sent: usize,
    tokens_sent: usize,
    steps: Vec<u8>,
}

impl<'t, F: FnMut(&str, &[u32]) -> bool> Decoder<'t, F> {
    /// A generation after `prompt` whose last position gave `logits`, in a session of `context`
    /// positions whose logits have fractional bits `scale`. `on_text` receives the text as it becomes
    /// final (whole characters, never the start of a stop text) with the tokens chosen since its last
    /// call, and returns false to stop the generation; its last call may have empty text (tokens that
    /// added none).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        tk: &'t Tokenizer,
        sampler: &Sampler,
        prompt: &[u32],
        logits: Vec<i32>,
        rules: &Rules,
        context: usize,
        scale: i8,
        on_text: F,
    ) -> Result<Self, LlmError> {
        if rules.stop.iter().any(String::is_empty) {
            return Err(LlmError::Request("a stop text is empty".into()));
        }
        let json = (rules.format == Format::JsonObject).then(|| {
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
        Ok(Decoder {
            tk,
            sampler: *sampler,
            rules: rules.clone(),
            on_text,
            scale,
            budget: rules.max_tokens.min(context.saturating_sub(prompt.len())),
            hold: rules.stop.iter().map(String::len).max().unwrap_or(1) - 1,
            json,
            logits,
            context: prompt.to_vec(),
            tokens: Vec::new(),
            bytes: Vec::new(),
            sent: 0,
            tokens_sent: 0,
            steps: Vec::new(),
        })
    }

    /// The tokens so far: the prompt's, then the output's.
    pub fn context(&self) -> &[u32] {
        &self.context
    }

    /// Chooses the next token; unless the generation ends there, feeds it to the session (positioned
    /// after the context, as `before_step` sees it). Returns the outcome once the generation has ended.
    pub fn advance(
        &mut self,
        s: &mut Session,
        before_step: impl FnOnce(&Session, u32) -> Result<(), LlmError>,
    ) -> Result<Option<Outcome>, LlmError> {
        match self.choose()? {
            Next::Done(o) => Ok(Some(o)),
            Next::Feed(t) => {
                before_step(s, t)?;
                self.fed(s.feed(t)?);
                Ok(None)
            }
        }
    }

    /// The first half of [`Decoder::advance`]: chooses the next token and reports its text; the
    /// token to run next (whose logits go to [`Decoder::fed`]), or the outcome when the generation
    /// has ended.
    pub fn choose(&mut self) -> Result<Next, LlmError> {
        if self.tokens.len() >= self.budget {
            return Ok(Next::Done(self.end(Finish::Length, None)));
        }
        let t = match &self.json {
            Some((table, state)) => {
                let mut allowed = self.logits.clone();
                constrain(&mut allowed, table, state)?;
                self.sampler.choose(
                    &allowed,
                    self.scale,
                    &self.context,
                    self.context.len() as u64,
                )
            }
            None => self.sampler.choose(
                &self.logits,
                self.scale,
                &self.context,
                self.context.len() as u64,
            ),
        };
        self.steps.extend_from_slice(&logits_hash(&self.logits).0);
        self.tokens.push(t);
        self.context.push(t);
        if self.tk.stops.contains(&t) {
            return Ok(Next::Done(self.end(Finish::Stop, None)));
        }
        let piece = self.tk.token_bytes(t);
        let mut complete = false;
        if let Some((_, state)) = &mut self.json {
            if !state.push(&piece) {
                // only a token the limit let through is chosen (the sampler never takes a lowest logit
                // while another is higher; this guards against a tie at the bottom)
                return Err(LlmError::Request(
                    "JSON mode: the chosen token leaves the JSON text".into(),
                ));
            }
            complete = state.is_complete();
        }
        self.bytes.extend(piece);
        let found = self
            .rules
            .stop
            .iter()
            .filter_map(|x| find(&self.bytes, x.as_bytes()))
            .min();
        if let Some(at) = found {
            return Ok(Next::Done(self.end(Finish::Stop, Some(at))));
        }
        if complete {
            return Ok(Next::Done(self.end(Finish::Stop, None)));
        }
        // whole characters, holding back what could begin a stop text
        let end = self.bytes.len().saturating_sub(self.hold).max(self.sent);
        let valid = match std::str::from_utf8(&self.bytes[self.sent..end]) {
            Ok(v) => v.len(),
            Err(e) => e.valid_up_to(),
        };
        if valid > 0 {
            let piece =
                std::str::from_utf8(&self.bytes[self.sent..self.sent + valid]).unwrap_or_default();
            self.sent += valid;
            let fresh = &self.tokens[self.tokens_sent..];
            self.tokens_sent = self.tokens.len();
            if !(self.on_text)(piece, fresh) {
                return Ok(Next::Done(self.end(Finish::Cancelled, None)));
            }
        }
        if self.tokens.len() == self.budget {
            return Ok(Next::Done(self.end(Finish::Length, None)));
        }
        Ok(Next::Feed(t))
    }

    /// The second half of [`Decoder::advance`]: the logits of the token [`Decoder::choose`] gave.
    pub fn fed(&mut self, logits: Vec<i32>) {
        self.logits = logits;
    }

    /// The outcome, the text not yet given to `on_text` given (unless cancelled).
    fn end(&mut self, finish: Finish, cut: Option<usize>) -> Outcome {
        let end = cut.unwrap_or(self.bytes.len());
        if finish != Finish::Cancelled && (self.sent < end || self.tokens_sent < self.tokens.len())
        {
            (self.on_text)(
                &String::from_utf8_lossy(&self.bytes[self.sent.min(end)..end]),
                &self.tokens[self.tokens_sent..],
            );
            self.sent = end;
            self.tokens_sent = self.tokens.len();
        }
        Outcome {
            tokens: self.tokens.clone(),
            text: String::from_utf8_lossy(&self.bytes[..end]).into_owned(),
            finish,
            steps_root: keccak256(&self.steps),
        }
    }
}

/// Generates after a prompt whose last position gave `logits`, under `rules`: a [`Decoder`] run to its
/// end. `before_step` sees the session and the token before each step is fed.
#[allow(clippy::too_many_arguments)]
pub fn decode(
    s: &mut Session,
    tk: &Tokenizer,
    sampler: &Sampler,
    prompt: &[u32],
    logits: Vec<i32>,
    rules: &Rules,
    on_text: impl FnMut(&str, &[u32]) -> bool,
    mut before_step: impl FnMut(&Session, u32) -> Result<(), LlmError>,
) -> Result<Outcome, LlmError> {
    let mut d = Decoder::new(
        tk,
        sampler,
        prompt,
        logits,
        rules,
        s.context(),
        s.logit_scale(),
        on_text,
    )?;
    loop {
        if let Some(out) = d.advance(s, &mut before_step)? {
            return Ok(out);
        }
    }
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

/// The `verity` object a served completion carries beside OpenAI's fields (`docs/spec/llm.md` §7): what
/// its receipt binds, in the form a client re-checks. One type for the node that writes it and the
/// checkers that read it (`verity verify`, the quorum coordinator).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct CompletionFields {
    /// The step's model ID.
    pub model_id: Hash,
    /// Positions a generation can hold.
    pub context: usize,
    /// The prompt's token IDs.
    pub prompt_tokens: Vec<u32>,
    /// The output's token IDs.
    pub output_tokens: Vec<u32>,
    /// [`tokens_hash`] of the prompt.
    pub prompt_hash: Hash,
    /// [`tokens_hash`] of the output.
    pub output_hash: Hash,
    /// The root of the per-step logits commitments.
    pub steps_root: Hash,
    /// The token budget.
    pub max_tokens: usize,
    /// Texts that end the output before them.
    #[serde(default)]
    pub stop: Vec<String>,
    /// `text` or `json_object`.
    #[serde(default = "text_format")]
    pub response_format: String,
    /// How each token was chosen.
    pub sampling: SamplingFields,
}

/// The sampling parameters of a completion: as requested, and as the fixed-point integers the
/// canonical sampler uses (what the receipt's input hash binds).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SamplingFields {
    /// As requested.
    pub temperature: f64,
    /// As requested.
    pub top_k: u32,
    /// As requested.
    pub top_p: f64,
    /// As requested.
    pub repetition_penalty: f64,
    /// The generator's seed (for choice `i`, the request's plus `i`).
    pub seed: u64,
    /// The sampler's integers.
    pub fixed_point: FixedPoint,
}

/// [`Sampler`]'s fixed-point parameters.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct FixedPoint {
    /// `round(temperature · 2^16)`.
    pub temperature: u32,
    /// `round(top_p · 2^16)`.
    pub top_p: u32,
    /// `round(penalty · 2^16)`.
    pub repetition_penalty: u32,
}

fn text_format() -> String {
    "text".into()
}

impl CompletionFields {
    /// The fields of a completion of `prompt` by `step`'s model (ID `model_id`) under `sampler` and
    /// `rules` (`params` as requested), with outcome `out`.
    pub fn new(
        model_id: Hash,
        context: usize,
        prompt: &[u32],
        params: &crate::sample::Params,
        sampler: &Sampler,
        rules: &Rules,
        out: &Outcome,
    ) -> CompletionFields {
        CompletionFields {
            model_id,
            context,
            prompt_tokens: prompt.to_vec(),
            output_tokens: out.tokens.clone(),
            prompt_hash: tokens_hash(prompt),
            output_hash: tokens_hash(&out.tokens),
            steps_root: out.steps_root,
            max_tokens: rules.max_tokens,
            stop: rules.stop.clone(),
            response_format: rules.format.name().into(),
            sampling: SamplingFields {
                temperature: params.temperature,
                top_k: params.top_k as u32,
                top_p: params.top_p,
                repetition_penalty: params.repetition_penalty,
                seed: sampler.seed,
                fixed_point: FixedPoint {
                    temperature: sampler.temperature_q,
                    top_p: sampler.top_p_q,
                    repetition_penalty: sampler.repetition_q,
                },
            },
        }
    }

    /// The sampler and rules these fields say the completion ran under (what its input hash binds);
    /// an error names a response format Verity does not know.
    pub fn sampler_and_rules(&self) -> Result<(Sampler, Rules), LlmError> {
        let format = Format::from_name(&self.response_format).ok_or_else(|| {
            LlmError::Request(format!(
                "the response format '{}' is not one Verity knows",
                self.response_format
            ))
        })?;
        let fp = &self.sampling.fixed_point;
        let sampler = Sampler {
            temperature_q: fp.temperature,
            top_k: self.sampling.top_k,
            top_p_q: fp.top_p,
            repetition_q: fp.repetition_penalty,
            seed: self.sampling.seed,
        };
        let rules = Rules {
            max_tokens: self.max_tokens,
            stop: self.stop.clone(),
            format,
        };
        Ok((sampler, rules))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sample::Params;

    #[test]
    fn completion_fields_read_back_as_written_and_give_the_sampler_and_rules() {
        let params = Params {
            temperature: 0.7,
            top_k: 40,
            top_p: 0.9,
            repetition_penalty: 1.1,
            seed: 9,
        };
        let sampler = Sampler::new(&params).unwrap();
        let rules = Rules {
            max_tokens: 12,
            stop: vec!["\n\n".into()],
            format: Format::JsonObject,
        };
        let out = Outcome {
            tokens: vec![5, 6, 7],
            text: "abc".into(),
            finish: Finish::Length,
            steps_root: keccak256(b"steps"),
        };
        let f = CompletionFields::new(
            keccak256(b"m"),
            256,
            &[1, 2],
            &params,
            &sampler,
            &rules,
            &out,
        );
        let json = serde_json::to_value(&f).unwrap();
        assert_eq!(
            json["output_hash"],
            serde_json::json!(tokens_hash(&[5, 6, 7]))
        );
        assert_eq!(json["sampling"]["fixed_point"]["top_p"], sampler.top_p_q);
        let back: CompletionFields = serde_json::from_value(json.clone()).unwrap();
        assert_eq!(back, f);
        let (s, r) = back.sampler_and_rules().unwrap();
        assert_eq!(
            (s, r.max_tokens, r.stop, r.format),
            (sampler, 12, rules.stop, Format::JsonObject)
        );
        // a format no one knows, and a field missing: errors, not a guess
        let mut odd = json.clone();
        odd["response_format"] = "yaml".into();
        let odd: CompletionFields = serde_json::from_value(odd).unwrap();
        assert!(odd
            .sampler_and_rules()
            .unwrap_err()
            .to_string()
            .contains("'yaml'"));
        let mut short = json;
        short.as_object_mut().unwrap().remove("output_tokens");
        assert!(serde_json::from_value::<CompletionFields>(short).is_err());
    }
}
