//! The generations of one served language model: a thread that owns the model's executors and runs
//! every admitted generation a unit at a time in turn (a prompt chunk of 32 positions, or one output
//! token), so a new request starts while others are still generating. The generations are split among
//! sessions that run side by side, one per thread; each session runs its generations' next tokens in
//! one step (a several-generation variant: the weights are read once for all of them) when their
//! caches are short enough, else one by one. Key/value caches are kept after a generation within a
//! memory budget, so a request whose prompt begins like an earlier context (a chat's next turn, a
//! shared system prompt) computes only the rest. Every generation gives the bits it would alone
//! (`docs/spec/llm.md` §3, §7.3).

use std::sync::mpsc::{Receiver, SyncSender, TryRecvError, TrySendError};
use std::sync::Arc;

use verity_llm::generate::{Decoder, Next, Outcome, Rules};
use verity_llm::sample::Sampler;
use verity_llm::step::PREFILL_ROWS;
use verity_llm::{Kv, LlmError, Session, Step, Tokenizer};

/// What a generation reports its text to: the text that became final and the tokens since the last
/// call; false stops the generation.
pub type OnText = Box<dyn FnMut(&str, &[u32]) -> bool + Send>;

/// A generation asked for.
pub struct Job {
    /// The prompt's tokens.
    pub prompt: Vec<u32>,
    /// How each token is chosen.
    pub sampler: Sampler,
    /// Budget, stop texts, format.
    pub rules: Rules,
    /// Receives the text.
    pub on_text: OnText,
    /// False once the requester has gone (checked before each unit of work).
    pub alive: Box<dyn Fn() -> bool + Send>,
    /// Receives the outcome.
    pub done: tokio::sync::oneshot::Sender<Result<Outcome, LlmError>>,
}

/// How much a model's scheduler takes on.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Generations running at once (each a unit at a time, in turn).
    pub sequences: usize,
    /// Requests waiting beyond those; more are refused.
    pub queue: usize,
    /// Bytes of key/value caches, running and kept; kept ones are dropped (least recently used
    /// first) to stay under it, and waiting requests start only while it holds.
    pub kv_bytes: usize,
}

/// Counters a scheduler keeps.
#[derive(Debug, Default)]
pub struct Stats {
    /// Prompt positions computed.
    pub prompt_computed: std::sync::atomic::AtomicU64,
    /// Prompt positions taken from a kept cache.
    pub prompt_reused: std::sync::atomic::AtomicU64,
    /// Output tokens run in a several-generation step.
    pub tokens_batched: std::sync::atomic::AtomicU64,
    /// Output tokens run in a step of their own.
    pub tokens_alone: std::sync::atomic::AtomicU64,
}

/// The handle requests are submitted through.
pub struct Scheduler {
    tx: SyncSender<Job>,
    /// Counters.
    pub stats: Arc<Stats>,
}

impl Scheduler {
    /// Starts the thread that runs `step`'s generations on `threads` threads.
    pub fn start(
        name: &str,
        step: Step,
        tokenizer: Arc<Tokenizer>,
        threads: usize,
        limits: Limits,
    ) -> Scheduler {
        let (tx, rx) = std::sync::mpsc::sync_channel(limits.queue.max(1));
        let stats = Arc::new(Stats::default());
        let st = stats.clone();
        let name = name.to_string();
        let spawned = std::thread::Builder::new()
            .name(format!("llm-{name}"))
            .spawn(move || run(&step, &tokenizer, threads, limits, rx, &st));
        if let Err(e) = spawned {
            tracing::error!(model = %name, "cannot start the generation thread: {e}");
        }
        Scheduler { tx, stats }
    }

    /// Queues a generation; gives it back if the queue is full (or the thread is gone).
    #[allow(clippy::result_large_err)]
    pub fn submit(&self, job: Job) -> Result<(), Job> {
        self.tx.try_send(job).map_err(|e| match e {
            TrySendError::Full(j) | TrySendError::Disconnected(j) => j,
        })
    }
}

/// A generation being run.
struct Seq<'t> {
    kv: Kv,
    prompt: Vec<u32>,
    /// Prompt positions already in the cache.
    at: usize,
    sampler: Sampler,
    rules: Rules,
    alive: Box<dyn Fn() -> bool + Send>,
    done: Option<tokio::sync::oneshot::Sender<Result<Outcome, LlmError>>>,
    on_text: Option<OnText>,
    decoder: Option<Decoder<'t, OnText>>,
}

/// A cache kept after its generation: the tokens its rows hold, and when it was last used.
struct Kept {
    tokens: Vec<u32>,
    kv: Kv,
    used: u64,
}

fn common_prefix(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

fn run(
    step: &Step,
    tk: &Tokenizer,
    threads: usize,
    limits: Limits,
    rx: Receiver<Job>,
    stats: &Stats,
) {
    // one session per thread, sharing the packed weights: with several generations running, each
    // session runs its share of them on a thread of its own; a generation alone runs on every thread
    let threads = threads.max(1);
    let first = Session::new(step, threads);
    let mut sessions: Vec<Session> = (1..threads).map(|_| first.beside(1)).collect();
    sessions.insert(0, first);
    let mut gens = Generations {
        active: Vec::new(),
        kept: Vec::new(),
        clock: 0,
    };
    loop {
        // admit requests while there is room (waiting ones stay in the bounded queue; when nothing
        // runs, wait for one)
        while gens.active.len() < limits.sequences.max(1) {
            let in_use: usize = gens.active.iter().map(|q| q.kv.bytes()).sum();
            if !gens.active.is_empty() && in_use >= limits.kv_bytes {
                break;
            }
            let job = if gens.active.is_empty() {
                match rx.recv() {
                    Ok(j) => j,
                    Err(_) => return,
                }
            } else {
                match rx.try_recv() {
                    Ok(j) => j,
                    Err(TryRecvError::Empty) | Err(TryRecvError::Disconnected) => break,
                }
            };
            gens.admit(step, job, stats);
        }
        let results = round(step, &mut sessions, &mut gens.active, threads, tk, stats);
        gens.retire(results);
        gens.trim(limits.kv_bytes);
    }
}

/// The generations a scheduler runs, and the caches it keeps after them.
struct Generations<'t> {
    active: Vec<Seq<'t>>,
    kept: Vec<Kept>,
    /// Counts retirements (when a kept cache was last used).
    clock: u64,
}

impl<'t> Generations<'t> {
    /// Starts `job`, from the kept cache sharing the longest prefix with its prompt.
    fn admit(&mut self, step: &Step, job: Job, stats: &Stats) {
        let kept = &mut self.kept;
        let best = kept
            .iter()
            .enumerate()
            .max_by_key(|(_, k)| (common_prefix(&k.tokens, &job.prompt), k.used))
            .map(|(i, k)| (i, common_prefix(&k.tokens, &job.prompt)));
        let (mut kv, reuse) = match best {
            Some((i, n)) if n > 0 => (kept.swap_remove(i).kv, n),
            _ => (Kv::new(step), 0),
        };
        // the last prompt position always runs: its logits choose the first token
        let reuse = reuse.min(job.prompt.len().saturating_sub(1));
        kv.rewind(reuse);
        stats
            .prompt_reused
            .fetch_add(reuse as u64, std::sync::atomic::Ordering::Relaxed);
        self.active.push(Seq {
            kv,
            at: reuse,
            prompt: job.prompt,
            sampler: job.sampler,
            rules: job.rules,
            alive: job.alive,
            done: Some(job.done),
            on_text: Some(job.on_text),
            decoder: None,
        });
    }

    /// The finished ones leave (`results[i]` is generation `i`'s outcome if it ended), their caches
    /// kept with the tokens their rows hold.
    fn retire(&mut self, mut results: Vec<Option<Result<Outcome, LlmError>>>) {
        // from the back (a removal moves the last, already seen, into place)
        for i in (0..self.active.len()).rev() {
            let Some(res) = results[i].take() else {
                continue;
            };
            let mut q = self.active.swap_remove(i);
            // keep the cache: its rows hold the context's first `pos` tokens
            let tokens: Vec<u32> = match &q.decoder {
                Some(d) => d.context().to_vec(),
                None => q.prompt.clone(),
            };
            let pos = q.kv.pos().min(tokens.len());
            if pos > 0 {
                self.clock += 1;
                self.kept.push(Kept {
                    tokens: tokens[..pos].to_vec(),
                    kv: std::mem::take(&mut q.kv),
                    used: self.clock,
                });
            }
            if let Some(done) = q.done.take() {
                let _ = done.send(res);
            }
        }
    }

    /// The budget: drop kept caches, least recently used first.
    fn trim(&mut self, kv_bytes: usize) {
        let kept = &mut self.kept;
        let running: usize = self.active.iter().map(|q| q.kv.bytes()).sum();
        let mut total = running + kept.iter().map(|k| k.kv.bytes()).sum::<usize>();
        kept.sort_by_key(|k| std::cmp::Reverse(k.used));
        while total > kv_bytes {
            match kept.pop() {
                Some(k) => total -= k.kv.bytes(),
                None => break,
            }
        }
    }
}

/// One unit of work for each running generation: the generations split among the sessions (lane k
/// takes k, k + lanes, …), each lane on a thread of its own, or one lane on every thread; a lane runs
/// its generations' next tokens in one step where it can. Per generation, its outcome if it ended.
fn round<'t>(
    step: &Step,
    sessions: &mut [Session],
    active: &mut [Seq<'t>],
    threads: usize,
    tk: &'t Tokenizer,
    stats: &Stats,
) -> Vec<Option<Result<Outcome, LlmError>>> {
    let lanes = sessions.len().min(active.len()).max(1);
    let mut groups: Vec<Vec<&mut Seq>> = (0..lanes).map(|_| Vec::new()).collect();
    for (i, q) in active.iter_mut().enumerate() {
        groups[i % lanes].push(q);
    }
    let outcomes: Vec<Vec<Option<Result<Outcome, LlmError>>>> = if lanes == 1 {
        sessions[0].set_threads(threads);
        vec![lane(&mut sessions[0], &mut groups[0], tk, stats)]
    } else {
        let joined: Vec<_> = std::thread::scope(|sc| {
            let running: Vec<_> = groups
                .iter_mut()
                .zip(sessions.iter_mut())
                .map(|(g, s)| {
                    s.set_threads(1);
                    sc.spawn(move || lane(s, g, tk, stats))
                })
                .collect();
            running.into_iter().map(|h| h.join().ok()).collect()
        });
        joined
            .into_iter()
            .enumerate()
            .map(|(k, r)| {
                r.unwrap_or_else(|| {
                    // a lane that panicked may have left a cache in its session and the
                    // session's in a generation: both are dropped (its generations fail,
                    // nothing of them is kept)
                    let mut fresh = Kv::new(step);
                    sessions[k].swap_kv(&mut fresh);
                    for q in groups[k].iter_mut() {
                        q.kv = Kv::new(step);
                    }
                    let failed = || Some(Err(LlmError::Request("the generation failed".into())));
                    (0..groups[k].len()).map(|_| failed()).collect()
                })
            })
            .collect()
    };
    drop(groups);
    let mut results: Vec<Option<Result<Outcome, LlmError>>> =
        (0..active.len()).map(|_| None).collect();
    for (k, outs) in outcomes.into_iter().enumerate() {
        for (p, o) in outs.into_iter().enumerate() {
            results[k + p * lanes] = o;
        }
    }
    results
}

/// One unit of work for each generation of a lane on session `s`: a prompt chunk for those still
/// in their prompt, then the next token of every one past it — several generations' tokens in one
/// run of a several-generation step (the same bits as alone), else one by one. Per generation, its
/// outcome when it has ended (cancelled at once if its requester has gone).
fn lane<'t>(
    s: &mut Session,
    group: &mut [&mut Seq<'t>],
    tk: &'t Tokenizer,
    stats: &Stats,
) -> Vec<Option<Result<Outcome, LlmError>>> {
    let mut out: Vec<Option<Result<Outcome, LlmError>>> = (0..group.len()).map(|_| None).collect();
    let mut feed: Vec<(usize, u32)> = Vec::new();
    for (i, q) in group.iter_mut().enumerate() {
        if !(q.alive)() {
            out[i] = Some(Ok(Outcome {
                tokens: Vec::new(),
                text: String::new(),
                finish: verity_llm::generate::Finish::Cancelled,
                steps_root: Default::default(),
            }));
            continue;
        }
        if q.decoder.is_none() {
            s.swap_kv(&mut q.kv);
            let r = prompt_chunk(s, q, tk, stats);
            s.swap_kv(&mut q.kv);
            if let Err(e) = r {
                out[i] = Some(Err(e));
                continue;
            }
        }
        // past its prompt (possibly from this very chunk): its next token
        let Some(d) = &mut q.decoder else {
            continue;
        };
        match d.choose() {
            Ok(Next::Feed(t)) => feed.push((i, t)),
            Ok(Next::Done(o)) => out[i] = Some(Ok(o)),
            Err(e) => out[i] = Some(Err(e)),
        }
    }
    let most = s.batch_rows();
    let mut alone: Vec<(usize, u32)> = Vec::new();
    for part in feed.chunks(most.max(1)) {
        if part.len() < 2 {
            alone.extend_from_slice(part);
            continue;
        }
        let tokens: Vec<u32> = part.iter().map(|&(_, t)| t).collect();
        // the part's caches, in its order (`feed` is in group order)
        let mut kvs: Vec<&mut Kv> = group
            .iter_mut()
            .enumerate()
            .filter(|(i, _)| part.iter().any(|&(j, _)| j == *i))
            .map(|(_, q)| &mut q.kv)
            .collect();
        match s.feed_many(&mut kvs, &tokens) {
            Some(Ok(logits)) => {
                stats
                    .tokens_batched
                    .fetch_add(part.len() as u64, std::sync::atomic::Ordering::Relaxed);
                for (&(i, _), l) in part.iter().zip(logits) {
                    if let Some(d) = &mut group[i].decoder {
                        d.fed(l);
                    }
                }
            }
            // no variant takes them, or the run failed (nothing changed): one by one, so that
            // each generation gets its own outcome
            _ => alone.extend_from_slice(part),
        }
    }
    for (i, t) in alone {
        let q = &mut group[i];
        s.swap_kv(&mut q.kv);
        let r = s.feed(t);
        s.swap_kv(&mut q.kv);
        if r.is_ok() {
            stats
                .tokens_alone
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        match (r, &mut q.decoder) {
            (Ok(l), Some(d)) => d.fed(l),
            (Ok(_), None) => {}
            (Err(e), _) => out[i] = Some(Err(e)),
        }
    }
    out
}

/// The next chunk of a generation's prompt on the session (its cache swapped in); after the last
/// one, the generation's decoder, from the last position's logits.
fn prompt_chunk<'t>(
    s: &mut Session,
    q: &mut Seq<'t>,
    tk: &'t Tokenizer,
    stats: &Stats,
) -> Result<(), LlmError> {
    let n = (q.prompt.len() - q.at).min(PREFILL_ROWS);
    let logits = s.prefill(&q.prompt[q.at..q.at + n])?;
    stats
        .prompt_computed
        .fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
    q.at += n;
    if q.at < q.prompt.len() {
        return Ok(());
    }
    let on_text = q
        .on_text
        .take()
        .ok_or_else(|| LlmError::Request("a generation started twice".into()))?;
    q.decoder = Some(Decoder::new(
        tk,
        &q.sampler,
        &q.prompt,
        logits,
        &q.rules,
        s.context(),
        s.logit_scale(),
        on_text,
    )?);
    Ok(())
}
