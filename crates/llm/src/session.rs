//! A generation: canonical decode steps chained through their key/value outputs.

use verity_engine::exec::SharedPacks;
use verity_engine::{ExecError, Executor, Mode, Model};

use crate::arch::LlmError;
use crate::step::{cache_buckets, Step};

/// A generation's state apart from the executors: per layer, keys then values, and the next position.
#[derive(Default)]
pub struct Kv {
    caches: Vec<Vec<i32>>,
    pos: usize,
}

impl Kv {
    /// An empty state for `step` (position 0).
    pub fn new(step: &Step) -> Kv {
        Kv {
            caches: vec![Vec::new(); 2 * step.hp.layers],
            pos: 0,
        }
    }

    /// The next position.
    pub fn pos(&self) -> usize {
        self.pos
    }

    /// Goes back to position `pos` (see [`Session::rewind`]).
    pub fn rewind(&mut self, pos: usize) {
        self.pos = self.pos.min(pos);
    }

    /// Bytes the caches hold.
    pub fn bytes(&self) -> usize {
        self.caches.iter().map(|c| c.capacity() * 4).sum()
    }
}

/// A running generation on one compiled step.
pub struct Session<'a> {
    step: &'a Step,
    exec: Executor<&'a Model>,
    /// The step's variants' executors: `(rows, cache rows, executor)`, fewest cache rows first.
    variants: Vec<(usize, usize, Executor<&'a Model>)>,
    /// Per layer, keys then values, `[rows, kv_heads, head_dim]` each: the rows of the positions so
    /// far, grown (with zeros) to the cache length of the model that runs next.
    caches: Vec<Vec<i32>>,
    pos: usize,
}

impl<'a> Session<'a> {
    /// A new generation (position 0) on `threads` threads.
    pub fn new(step: &'a Step, threads: usize) -> Session<'a> {
        Session::build(step, threads, &SharedPacks::default())
    }

    /// A second session on the same step that shares this one's packed weights (its own executors,
    /// buffers and caches): sessions that run at the same time on different threads.
    pub fn beside(&self, threads: usize) -> Session<'a> {
        Session::build(self.step, threads, self.exec.shared_packs())
    }

    fn build(step: &'a Step, threads: usize, packs: &SharedPacks) -> Session<'a> {
        let mode = Mode::Fast {
            threads: threads.max(1),
        };
        let exec = Executor::new_sharing(&step.model, mode, packs);
        let variants = step
            .variants
            .iter()
            .map(|v| {
                let e = Executor::new_sharing(&v.model, mode, exec.shared_packs());
                (v.rows, v.cache_rows, e)
            })
            .collect();
        Session {
            step,
            exec,
            variants,
            caches: vec![Vec::new(); 2 * step.hp.layers],
            pos: 0,
        }
    }

    /// Runs the next steps on `threads` threads (the same bits on any count).
    pub fn set_threads(&mut self, threads: usize) {
        self.exec.set_threads(threads);
        for (_, _, e) in &mut self.variants {
            e.set_threads(threads);
        }
    }

    /// Exchanges this session's generation state (its caches and position) with `kv`: the executors
    /// stay, so one session can carry many generations in turn (a scheduler's sequences).
    pub fn swap_kv(&mut self, kv: &mut Kv) {
        std::mem::swap(&mut self.caches, &mut kv.caches);
        std::mem::swap(&mut self.pos, &mut kv.pos);
    }

    /// Goes back to position `pos` (no further than the current one): the cache rows before it stay
    /// and are what steps from `pos` on read, so a generation can continue from a shared prefix of
    /// an earlier one with the same bits as from scratch.
    pub fn rewind(&mut self, pos: usize) {
        self.pos = self.pos.min(pos);
    }

    /// Fractional bits of the step's logits.
    pub fn logit_scale(&self) -> i8 {
        let m = &self.step.model;
        m.outputs
            .first()
            .and_then(|o| m.value(o.value))
            .map_or(0, |v| v.scale)
    }

    /// Positions a generation can hold.
    pub fn context(&self) -> usize {
        self.step.context
    }

    /// The next position.
    pub fn pos(&self) -> usize {
        self.pos
    }

    /// Values per cache row.
    fn row_len(&self) -> usize {
        self.step.hp.kv_heads * self.step.hp.head_dim
    }

    /// The canonical step's inputs for `token` at the next position (token, position, then every
    /// cache, `[context − 1, kv_heads, head_dim]`).
    pub fn inputs(&self, token: u32) -> Vec<Vec<i32>> {
        let full = (self.step.context - 1) * self.row_len();
        let mut inputs = Vec::with_capacity(2 + self.caches.len());
        inputs.push(vec![token as i32]);
        inputs.push(vec![self.pos as i32]);
        inputs.extend(self.caches.iter().map(|c| {
            let mut c = c.clone();
            c.resize(full, 0);
            c
        }));
        inputs
    }

    /// Runs `token` at the next position; returns the logits (integers at the step's logit scale).
    /// After an error (a refused token, a full context, a failed run) nothing changed, except that a
    /// run that failed inside the model restarts the generation at position 0.
    pub fn feed(&mut self, token: u32) -> Result<Vec<i32>, LlmError> {
        self.check(&[token])?;
        let t = self.step.context - 1;
        // the model with the fewest cache rows that still holds every earlier position
        let (exec, c) = match self
            .variants
            .iter()
            .find(|(rows, c, _)| *rows == 1 && *c >= self.pos)
        {
            Some((_, c, e)) => (e, *c),
            None => (&self.exec, t),
        };
        let inputs = vec![vec![token as i32], vec![self.pos as i32]];
        let len = c * self.row_len();
        let run = run_on(exec, inputs, &mut self.caches, len);
        self.take_back(run, 1)
    }

    /// Runs `tokens` at the next positions and returns the last one's logits: the same bits as
    /// [`Session::feed`] on each in turn, a prefill chunk's rows at once (the rest, if fewer than a
    /// quarter chunk, step by step).
    pub fn prefill(&mut self, tokens: &[u32]) -> Result<Vec<i32>, LlmError> {
        self.check(tokens)?;
        let mut logits = Vec::new();
        let mut rest = tokens;
        while !rest.is_empty() {
            let chunk = self
                .variants
                .iter()
                .find(|(rows, c, _)| *rows > 1 && *c >= self.pos && rest.len() * 4 >= *rows);
            let Some((rows, c, exec)) = chunk else {
                logits = self.feed(rest[0])?;
                rest = &rest[1..];
                continue;
            };
            let n = rest.len().min(*rows);
            // padding rows (token 0) come after the real ones, which never attend to them
            let mut ids: Vec<i32> = rest[..n].iter().map(|&t| t as i32).collect();
            ids.resize(*rows, 0);
            let inputs = vec![ids, vec![self.pos as i32], vec![n as i32 - 1]];
            let len = c * self.row_len();
            let run = run_on(exec, inputs, &mut self.caches, len);
            logits = self.take_back(run, n)?;
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

    /// Takes a run's outputs, writes the first `n` rows of keys and values it output at the next
    /// positions, and returns its logits.
    fn take_back(
        &mut self,
        run: Result<Vec<Vec<i32>>, ExecError>,
        n: usize,
    ) -> Result<Vec<i32>, LlmError> {
        let outs = match run {
            Ok(r) => r,
            Err(e) => {
                // the run consumed the caches: the generation starts over at position 0
                self.caches = vec![Vec::new(); 2 * self.step.hp.layers];
                self.pos = 0;
                return Err(e.into());
            }
        };
        let mut outs = outs.into_iter();
        let logits = outs.next().unwrap_or_default();
        let (t, kd) = (self.step.context - 1, self.row_len());
        // rows past the context's last cache row are never read
        let end = (self.pos + n).min(t);
        if end > self.pos {
            let grow = cache_buckets(t)
                .into_iter()
                .find(|&c| c >= end)
                .unwrap_or(t);
            for (cache, new) in self.caches.iter_mut().zip(outs) {
                if cache.len() < end * kd {
                    cache.resize(grow * kd, 0);
                }
                cache[self.pos * kd..end * kd].copy_from_slice(&new[..(end - self.pos) * kd]);
            }
        }
        self.pos += n;
        Ok(logits)
    }
}

/// Runs `exec` on `inputs` followed by the caches, each cut or grown (with zeros) to `len` values
/// first (rows past the position are never read), and puts the caches back.
fn run_on(
    exec: &Executor<&Model>,
    mut inputs: Vec<Vec<i32>>,
    caches: &mut Vec<Vec<i32>>,
    len: usize,
) -> Result<Vec<Vec<i32>>, ExecError> {
    let lead = inputs.len();
    for mut c in caches.drain(..) {
        c.resize(len, 0);
        inputs.push(c);
    }
    let (outs, inputs) = exec.run_keeping_inputs(inputs)?;
    caches.extend(inputs.into_iter().skip(lead));
    Ok(outs)
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
