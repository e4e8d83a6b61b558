//! A generation: canonical decode steps chained through their key/value outputs.

use verity_engine::{Executor, Mode, Model};

use crate::arch::LlmError;
use crate::step::Step;

/// A running generation on one compiled step.
pub struct Session<'a> {
    step: &'a Step,
    exec: Executor<&'a Model>,
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
    pub fn feed(&mut self, token: u32) -> Result<Vec<i32>, LlmError> {
        let hp = &self.step.hp;
        if token as usize >= hp.vocab {
            return Err(LlmError::Request(format!(
                "token {token} is outside the vocabulary of {}",
                hp.vocab
            )));
        }
        if self.pos >= self.step.context {
            return Err(LlmError::Request(format!(
                "the context of {} positions is full",
                self.step.context
            )));
        }
        let mut outs = self.exec.run(self.inputs(token))?.into_iter();
        let logits = outs.next().unwrap_or_default();
        let (t, d) = (self.step.context - 1, hp.head_dim);
        if self.pos < t {
            for (cache, new) in self.caches.iter_mut().zip(outs) {
                for h in 0..hp.kv_heads {
                    let at = (h * t + self.pos) * d;
                    cache[at..at + d].copy_from_slice(&new[h * d..(h + 1) * d]);
                }
            }
        }
        self.pos += 1;
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
