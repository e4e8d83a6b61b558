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
    /// The several-generation variants' executors, the same way.
    batches: Vec<(usize, usize, Executor<&'a Model>)>,
    /// Every executor's prepared constants, for sessions beside this one.
    packs: SharedPacks,
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
        Session::build(self.step, threads, &self.packs)
    }

    fn build(step: &'a Step, threads: usize, packs: &SharedPacks) -> Session<'a> {
        let mode = Mode::Fast {
            threads: threads.max(1),
        };
        // every executor takes what an earlier one (of this session or the one it is beside) prepared
        let mut packs = packs.clone();
        let exec = Executor::new_sharing(&step.model, mode, &packs);
        packs.extend(exec.shared_packs());
        let (mut variants, mut batches) = (Vec::new(), Vec::new());
        for v in &step.variants {
            let e = Executor::new_sharing(&v.model, mode, &packs);
            packs.extend(e.shared_packs());
            let list = if v.sequences {
                &mut batches
            } else {
                &mut variants
            };
            list.push((v.rows, v.cache_rows, e));
        }
        Session {
            step,
            exec,
            variants,
            batches,
            packs,
            caches: vec![Vec::new(); 2 * step.hp.layers],
            pos: 0,
        }
    }

    /// Runs the next steps on `threads` threads (the same bits on any count).
    pub fn set_threads(&mut self, threads: usize) {
        self.exec.set_threads(threads);
        for (_, _, e) in self.variants.iter_mut().chain(&mut self.batches) {
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
        self.check_at(self.pos, tokens)
    }

    /// [`Session::check`] for a generation at position `pos`.
    fn check_at(&self, pos: usize, tokens: &[u32]) -> Result<(), LlmError> {
        let hp = &self.step.hp;
        if let Some(t) = tokens.iter().find(|&&t| t as usize >= hp.vocab) {
            return Err(LlmError::Request(format!(
                "token {t} is outside the vocabulary of {}",
                hp.vocab
            )));
        }
        if pos + tokens.len() > self.step.context {
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
        let news: Vec<&[i32]> = outs.as_slice().iter().map(|v| v.as_slice()).collect();
        let (t, kd) = (self.step.context - 1, self.row_len());
        write_rows(&mut self.caches, self.pos, n, &news, t, kd);
        self.pos += n;
        Ok(logits)
    }

    /// Generations one [`Session::feed_many`] run computes at most (0: none).
    pub fn batch_rows(&self) -> usize {
        self.batches.iter().map(|(r, _, _)| *r).max().unwrap_or(0)
    }

    /// Runs one token for each of several generations (`kvs[i]` takes `tokens[i]` at its next
    /// position) in one run of a several-generation variant, and returns each one's logits: the same
    /// bits as [`Session::feed`] on each in turn. The session's own generation is not touched. `None`
    /// when no variant takes them (more than [`Session::batch_rows`], or a cache longer than those
    /// variants read): the caller then feeds them one by one. After an error nothing changed.
    pub fn feed_many(
        &self,
        kvs: &mut [&mut Kv],
        tokens: &[u32],
    ) -> Option<Result<Vec<Vec<i32>>, LlmError>> {
        let n = kvs.len();
        if n != tokens.len() || n == 0 {
            return None;
        }
        let need = kvs.iter().map(|k| k.pos).max().unwrap_or(0);
        let (rows, c, exec) = self
            .batches
            .iter()
            .filter(|(r, c, _)| *r >= n && *c >= need)
            .min_by_key(|(r, c, _)| (*c, *r))?;
        for (k, &t) in kvs.iter().zip(tokens) {
            if let Err(e) = self.check_at(k.pos, &[t]) {
                return Some(Err(e));
            }
        }
        let (hp, kd) = (&self.step.hp, self.row_len());
        let len = c * kd;
        // padding rows: token 0 at position 0 over a zero cache (their outputs are dropped)
        let mut ids: Vec<i32> = tokens.iter().map(|&t| t as i32).collect();
        ids.resize(*rows, 0);
        let mut pos: Vec<i32> = kvs.iter().map(|k| k.pos as i32).collect();
        pos.resize(*rows, 0);
        let mut inputs = vec![ids, pos];
        for l in 0..2 * hp.layers {
            let mut all = vec![0i32; rows * len];
            for (k, dst) in kvs.iter().zip(all.chunks_exact_mut(len)) {
                let cache = k.caches.get(l).map_or(&[][..], |c| c.as_slice());
                let have = (k.pos * kd).min(len).min(cache.len());
                dst[..have].copy_from_slice(&cache[..have]);
            }
            inputs.push(all);
        }
        let outs = match exec.run(inputs) {
            Ok(o) => o,
            Err(e) => return Some(Err(e.into())),
        };
        let mut outs = outs.into_iter();
        let logits = outs.next().unwrap_or_default();
        let news: Vec<Vec<i32>> = outs.collect();
        let vocab = logits.len() / rows;
        let t = self.step.context - 1;
        let mut each = Vec::with_capacity(n);
        for (i, k) in kvs.iter_mut().enumerate() {
            let mine: Vec<&[i32]> = news.iter().map(|v| &v[i * kd..(i + 1) * kd]).collect();
            write_rows(&mut k.caches, k.pos, 1, &mine, t, kd);
            k.pos += 1;
            each.push(logits[i * vocab..(i + 1) * vocab].to_vec());
        }
        Some(Ok(each))
    }
}

/// Writes the first `n` rows of `news` (per cache, keys or values of the positions from `pos`) into
/// `caches`, grown to the cache length that holds them; rows past the context's last cache row (`t`)
/// are never read and not kept.
fn write_rows(caches: &mut [Vec<i32>], pos: usize, n: usize, news: &[&[i32]], t: usize, kd: usize) {
    let end = (pos + n).min(t);
    if end <= pos {
        return;
    }
    let grow = cache_buckets(t)
        .into_iter()
        .find(|&c| c >= end)
        .unwrap_or(t);
    for (cache, new) in caches.iter_mut().zip(news) {
        if cache.len() < end * kd {
            cache.resize(grow * kd, 0);
        }
        cache[pos * kd..end * kd].copy_from_slice(&new[..(end - pos) * kd]);
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
