//! A generation: canonical decode steps chained through their key/value outputs.

use verity_engine::{Executor, Mode, Model};

use crate::arch::LlmError;
use crate::step::Step;

/// A running generation on one compiled step.
pub struct Session<'a> {
    step: &'a Step,
    exec: Executor<&'a Model>,
    /// The prefill chunk's executor, when the step has one.
    chunk: Option<(Executor<&'a Model>, usize)>,
    /// Per layer, keys then values, `[kv_heads, context − 1, head_dim]` each.
    caches: Vec<Vec<i32>>,
    pos: usize,
}

impl<'a> Session<'a> {
    /// A new generation (position 0) on `threads` threads.
    pub fn new(step: &'a Step, threads: usize) -> Session<'a> {
        let hp = &step.hp;
        let rows = hp.kv_heads * (step.context - 1) * hp.head_dim;
        Session {
            step,
            exec: Executor::new(
                &step.model,
                Mode::Fast {
                    threads: threads.max(1),
                },
            ),
            chunk: step.prefill.as_ref().map(|m| {
                let rows = m.inputs[0].shape[0] as usize;
                let exec = Executor::new(
                    m,
                    Mode::Fast {
                        threads: threads.max(1),
                    },
                );
                (exec, rows)
            }),
            caches: vec![vec![0; rows]; 2 * hp.layers],
            pos: 0,
        }
    }

    /// The next position.
    pub fn pos(&self) -> usize {
        self.pos
    }

    /// The step's inputs for `token` at the next position (token, position, then every cache).
    pub fn inputs(&self, token: u32) -> Vec<Vec<i32>> {
        let mut inputs = Vec::with_capacity(2 + self.caches.len());
        inputs.push(vec![token as i32]);
        inputs.push(vec![self.pos as i32]);
        inputs.extend(self.caches.iter().cloned());
        inputs
    }

    /// Runs `token` at the next position; returns the logits (integers at the step's logit scale).
    /// After an error (a refused token, a full context, a failed run) nothing changed, except that a
    /// run that failed inside the model restarts the generation at position 0.
    pub fn feed(&mut self, token: u32) -> Result<Vec<i32>, LlmError> {
        self.check(&[token])?;
        let mut inputs = Vec::with_capacity(2 + self.caches.len());
        inputs.push(vec![token as i32]);
        inputs.push(vec![self.pos as i32]);
        inputs.append(&mut self.caches);
        let run = self.exec.run_keeping_inputs(inputs);
        self.take_back(run, 2, 1)
    }

    /// Runs `tokens` at the next positions and returns the last one's logits: the same bits as
    /// [`Session::feed`] on each in turn, runs of [`crate::step::PREFILL_ROWS`] positions at once on
    /// the step's prefill chunk (the rest, if fewer than a quarter chunk, step by step).
    pub fn prefill(&mut self, tokens: &[u32]) -> Result<Vec<i32>, LlmError> {
        self.check(tokens)?;
        let mut logits = Vec::new();
        let mut rest = tokens;
        while !rest.is_empty() {
            let rows = match &self.chunk {
                Some((_, rows)) if rest.len() * 4 >= *rows => *rows,
                _ => {
                    logits = self.feed(rest[0])?;
                    rest = &rest[1..];
                    continue;
                }
            };
            let n = rest.len().min(rows);
            // padding rows (token 0) come after the real ones, which never attend to them
            let mut ids: Vec<i32> = rest[..n].iter().map(|&t| t as i32).collect();
            ids.resize(rows, 0);
            let mut inputs = Vec::with_capacity(3 + self.caches.len());
            inputs.push(ids);
            inputs.push(vec![self.pos as i32]);
            inputs.push(vec![n as i32 - 1]);
            inputs.append(&mut self.caches);
            let run = match &self.chunk {
                Some((exec, _)) => exec.run_keeping_inputs(inputs),
                None => unreachable!("a chunk was chosen"),
            };
            logits = self.take_back(run, 3, n)?;
            rest = &rest[n..];
        }
        Ok(logits)
    }

    /// Refuses tokens outside the vocabulary or past the context, before anything runs.
    fn check(&self, tokens: &[u32]) -> Result<(), LlmError> {
        let hp = &self.step.hp;
        if let Some(t) = tokens.iter().find(|&&t| t as usize >= hp.vocab) {
            return Err(LlmError::Request(format!(
                "token {t} is outside the vocabulary of {}",
                hp.vocab
            )));
        }
        if self.pos + tokens.len() > self.step.context {
            return Err(LlmError::Request(format!(
                "the context of {} positions is full",
                self.step.context
            )));
        }
        Ok(())
    }

    /// Takes the caches back from a run's inputs (after `lead` other inputs), writes the first `n`
    /// rows of keys and values it output at the next positions, and returns its logits.
    #[allow(clippy::type_complexity)]
    fn take_back(
        &mut self,
        run: Result<(Vec<Vec<i32>>, Vec<Vec<i32>>), verity_engine::ExecError>,
        lead: usize,
        n: usize,
    ) -> Result<Vec<i32>, LlmError> {
        let hp = &self.step.hp;
        let rows = hp.kv_heads * (self.step.context - 1) * hp.head_dim;
        let (outs, inputs) = match run {
            Ok(r) => r,
            Err(e) => {
                // the run consumed the caches: the generation starts over at position 0
                self.caches = vec![vec![0; rows]; 2 * hp.layers];
                self.pos = 0;
                return Err(e.into());
            }
        };
        self.caches = inputs.into_iter().skip(lead).collect();
        let mut outs = outs.into_iter();
        let logits = outs.next().unwrap_or_default();
        let (t, d, kd) = (self.step.context - 1, hp.head_dim, hp.kv_heads * hp.head_dim);
        for (cache, new) in self.caches.iter_mut().zip(outs) {
            for r in 0..n {
                let p = self.pos + r;
                if p >= t {
                    break;
                }
                for h in 0..hp.kv_heads {
                    let at = (h * t + p) * d;
                    cache[at..at + d].copy_from_slice(&new[r * kd + h * d..][..d]);
                }
            }
        }
        self.pos += n;
        Ok(logits)
    }
}

/// The index of the largest logit (the lowest index among equals): greedy decoding.
pub fn argmax<T: PartialOrd>(logits: &[T]) -> u32 {
    let mut best = 0;
    for (i, v) in logits.iter().enumerate() {
        if *v > logits[best] {
            best = i;
        }
    }
    best as u32
}
