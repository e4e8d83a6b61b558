//! Optimistic mode on the OptimisticHub (`docs/spec/disputes.md`). A serving node commits the output
//! hash and trace root of its canonical execution for every request it is assigned, and defends its
//! claims in the dispute game. A watcher (`verity watch`, or a node with `optimistic.watch_rate` > 0)
//! re-executes claims — every one, or a secret random sample — challenges any claim that differs from its
//! own execution, and plays the game to the end. Either side claims the other's missed moves and
//! finalizes its own claims once their window closes.
//!
//! A watcher also audits the InferenceHub: it re-executes the receipts the hub accepts (all, or the same
//! secret sample) from the request's input and disputes at the ReceiptCourt any receipt whose output (or
//! trace, unless the receipt defers it) differs from its own execution; the game that follows is played
//! here like any other.
//!
//! Every action is decided from the contract's current state (request, claim, game), never from memory
//! alone, so a restarted node or watcher resumes where it stopped and nothing is sent twice on purpose;
//! what it has seen and done is kept in the store.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use verity_chain::dispute::{OptEventKind, OptRequest, Stage};
use verity_chain::{Chain, ChainError, EvmChain};
use verity_core::receipt::claim_agrees;
use verity_core::{keccak256, Address, Hash};
use verity_engine::dispute::Side;
use verity_engine::Trace;

use crate::config::OptimisticConfig;
use crate::state::{Loaded, Node};

/// What this node knows of one optimistic request and what it did about it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct OptJob {
    /// Request ID.
    pub id: u64,
    /// `open` until the request is finalized or refunded, then `done`.
    pub state: String,
    /// The last claim examined (keccak of owner ‖ output hash ‖ trace root): each claim is checked once.
    pub checked: Option<Hash>,
    /// Whether this node committed its answer.
    pub committed: bool,
    /// Games this node plays: (game ID, as defender).
    pub games: Vec<(u64, bool)>,
    /// Games that are over.
    pub over: Vec<u64>,
    /// What happened, oldest first.
    pub log: Vec<String>,
}

/// One receipt the InferenceHub accepted, as a watcher audits it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Audit {
    /// Hub request ID.
    pub request: u64,
    /// The node that signed the receipt.
    pub node: Address,
    /// The receipt's input hash.
    pub input_hash: Hash,
    /// The receipt's output hash.
    pub output_hash: Hash,
    /// The receipt's trace root.
    pub trace_root: Hash,
    /// The receipt's timestamp.
    pub timestamp: u64,
    /// The receipt's signature (hub domain).
    pub signature: verity_core::Signature,
    /// `open`; then `agreed` (re-executed, same output and trace), `disputed` (a game is on at the
    /// ReceiptCourt) or `skipped` (see `note`).
    pub state: String,
    /// What was found.
    pub note: String,
    /// Attempts that could not re-execute yet (the input or the model unreachable for now).
    pub tries: u32,
}

/// Polls an audit is retried while its input or model cannot be had, before it is given up.
const AUDIT_TRIES: u32 = 40;

/// The audits of hub receipts, with an index of the open ones; keyed by (request, node).
const AUDITS: crate::jobs::JobTable = crate::jobs::JobTable {
    records: "audit.jobs",
    open: "audit.open",
};

fn audit_key(request: u64, node: &Address) -> u64 {
    let mut b = Vec::with_capacity(28);
    b.extend_from_slice(&request.to_be_bytes());
    b.extend_from_slice(&node.0);
    u64::from_be_bytes(keccak256(&b).0[..8].try_into().unwrap_or([0; 8]))
}

/// Every audit of a node, newest first.
pub fn audits(node: &Node) -> Vec<Audit> {
    let mut v: Vec<Audit> = AUDITS.all(&node.store);
    v.sort_by_key(|a| std::cmp::Reverse(a.request));
    v
}

const JOBS: &str = "opt.jobs";
/// IDs of the jobs still `open` (written with each job, so a poll reads only these).
const OPEN: &str = "opt.open";
const CURSOR: &str = "opt.cursor";
const SALT: &str = "opt.salt";
/// Blocks read again on every poll, so that events moved by a short reorganisation are seen again
/// (acting on an event twice is harmless: every action checks the contract first).
const REREAD: u64 = 12;
/// Most blocks per log query.
const SPAN: u64 = 2000;

/// One execution of a request: the model and trace a claim is made from (and defended with).
struct Run {
    loaded: Arc<Loaded>,
    trace: Trace,
    output_hash: Hash,
    trace_root: Hash,
}

/// The optimistic participant of a node.
pub struct Optimistic {
    node: Arc<Node>,
    chain: Arc<EvmChain>,
    cfg: OptimisticConfig,
    watch_only: bool,
    salt: Hash,
    runs: Mutex<HashMap<u64, Arc<Run>>>,
}

/// The optimistic jobs, with an index of the `open` ones.
const TABLE: crate::jobs::JobTable = crate::jobs::JobTable {
    records: JOBS,
    open: OPEN,
};

/// Every optimistic job of a node, newest first.
pub fn jobs(node: &Node) -> Vec<OptJob> {
    let mut v: Vec<OptJob> = TABLE.all(&node.store);
    v.reverse();
    v
}

/// Whether a claim falls in the sample of a watcher with secret `salt` checking `rate` of all claims.
pub fn sampled(salt: &Hash, id: u64, claim: &Hash, rate: f64) -> bool {
    if rate >= 1.0 {
        return true;
    }
    let mut b = Vec::with_capacity(72);
    b.extend_from_slice(&salt.0);
    b.extend_from_slice(&id.to_be_bytes());
    b.extend_from_slice(&claim.0);
    let h = keccak256(&b);
    let x = u64::from_be_bytes(h.0[..8].try_into().unwrap_or([0; 8]));
    (x as f64) < rate * (u64::MAX as f64)
}

fn claim_key(owner: &Address, output: &Hash, trace: &Hash) -> Hash {
    let mut b = Vec::with_capacity(84);
    b.extend_from_slice(&owner.0);
    b.extend_from_slice(&output.0);
    b.extend_from_slice(&trace.0);
    keccak256(&b)
}

impl Optimistic {
    /// The participant for `node` on `chain` (which must have an OptimisticHub).
    pub fn new(
        node: Arc<Node>,
        chain: Arc<EvmChain>,
        cfg: OptimisticConfig,
        watch_only: bool,
    ) -> Optimistic {
        let salt = match node.store.kv_get(SALT, b"salt").ok().flatten() {
            Some(v) if v.len() == 32 => Hash(v.try_into().unwrap_or([0; 32])),
            _ => {
                let mut b = [0u8; 32];
                if let Err(e) = getrandom::getrandom(&mut b) {
                    tracing::error!("no system randomness for the sampling seed: {e}");
                }
                let s = Hash(b);
                if let Err(e) = node.store.kv_put(SALT, b"salt", &s.0) {
                    tracing::error!("cannot persist the watcher's sampling seed: {e}");
                }
                s
            }
        };
        Optimistic {
            node,
            chain,
            cfg,
            watch_only,
            salt,
            runs: Mutex::new(HashMap::new()),
        }
    }

    fn me(&self) -> Address {
        self.node.address()
    }

    fn load(&self, id: u64) -> Option<OptJob> {
        TABLE.get(&self.node.store, id)
    }

    /// Write a job and its entry in the open index in one transaction; a finished job's run is dropped.
    fn save(&self, job: &OptJob) {
        let open = job.state == "open";
        TABLE.put(&self.node.store, job.id, job, open);
        if !open {
            if let Ok(mut r) = self.runs.lock() {
                r.remove(&job.id);
            }
        }
    }

    /// The jobs still open, oldest first.
    fn open_jobs(&self) -> Vec<OptJob> {
        TABLE
            .open::<OptJob>(&self.node.store)
            .into_iter()
            .filter(|j| j.state == "open")
            .collect()
    }

    fn job(&self, id: u64) -> OptJob {
        self.load(id).unwrap_or_else(|| OptJob {
            id,
            state: "open".into(),
            ..OptJob::default()
        })
    }

    fn note(job: &mut OptJob, msg: String) {
        tracing::info!(request = job.id, "optimistic: {msg}");
        job.log.push(msg);
        if job.log.len() > 64 {
            job.log.remove(0);
        }
    }

    /// [`Optimistic::note`], unless it is the last thing noted (a retried failure is said once).
    fn note_once(job: &mut OptJob, msg: String) {
        if job.log.last() != Some(&msg) {
            Self::note(job, msg);
        }
    }

    /// Poll until `stop` fires.
    pub async fn run_loop(
        self,
        start_block: u64,
        poll: Duration,
        mut stop: tokio::sync::watch::Receiver<bool>,
    ) {
        let mut was_down = false;
        loop {
            let r = tokio::select! {
                r = self.step(start_block) => r,
                _ = stop.changed() => return,
            };
            let busy = match r {
                Ok(busy) => {
                    if was_down {
                        tracing::info!("optimistic hub reachable again");
                        was_down = false;
                    }
                    busy
                }
                Err(e) if e.is_transient() => {
                    if !was_down {
                        tracing::warn!("chain unreachable, retrying: {e}");
                    }
                    was_down = true;
                    false
                }
                Err(e) => {
                    tracing::error!("optimistic step failed: {e}");
                    false
                }
            };
            // A game moves one transaction at a time: poll faster while one is on.
            let wait = if busy {
                (poll / 4).max(Duration::from_millis(50))
            } else {
                poll
            };
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = stop.changed() => return,
            }
        }
    }

    /// One round: read new events, then act on every open request. Returns whether a game is on.
    pub async fn step(&self, start_block: u64) -> Result<bool, ChainError> {
        let head = self.chain.head().await?.number;
        let cursor: u64 = self
            .node
            .store
            .kv_get(CURSOR, b"hub")
            .ok()
            .flatten()
            .and_then(|v| v.try_into().ok().map(u64::from_be_bytes))
            .unwrap_or(start_block);
        let mut from = cursor.saturating_sub(REREAD).max(start_block);
        while from <= head {
            let to = head.min(from + SPAN - 1);
            for e in self.chain.optimistic_events(from, to).await? {
                self.apply(e.kind);
            }
            if self.audits() {
                for e in self.chain.hub_events(from, to).await? {
                    self.record_receipt(e.kind);
                }
            }
            from = to + 1;
        }
        let _ = self
            .node
            .store
            .kv_put(CURSOR, b"hub", &(head + 1).to_be_bytes());
        let mut busy = false;
        for job in self.open_jobs() {
            busy |= self.act(job, head).await?;
        }
        for a in AUDITS.open::<Audit>(&self.node.store) {
            let before = a.clone();
            let mut a = a;
            let r = self.audit(&mut a).await;
            if a != before {
                let open = a.state == "open";
                AUDITS.put(&self.node.store, audit_key(a.request, &a.node), &a, open);
            }
            r?;
        }
        Ok(busy)
    }

    /// Whether this participant audits hub receipts: it watches, and the deployment has a court.
    fn audits(&self) -> bool {
        self.cfg.watch_rate > 0.0 && self.chain.deployment().court.is_some()
    }

    /// Record a receipt the hub accepted for audit (once; another node's, in this watcher's sample).
    fn record_receipt(&self, e: verity_chain::HubEventKind) {
        let verity_chain::HubEventKind::ReceiptAccepted {
            id,
            node,
            output_hash,
            trace_root,
            input_hash,
            timestamp,
            signature,
        } = e
        else {
            return;
        };
        let key = audit_key(id, &node);
        if node == self.me()
            || AUDITS.get::<Audit>(&self.node.store, key).is_some()
            || !sampled(
                &self.salt,
                id,
                &claim_key(&node, &output_hash, &trace_root),
                self.cfg.watch_rate,
            )
        {
            return;
        }
        let a = Audit {
            request: id,
            node,
            input_hash,
            output_hash,
            trace_root,
            timestamp,
            signature,
            state: "open".into(),
            note: String::new(),
            tries: 0,
        };
        AUDITS.put(&self.node.store, key, &a, true);
    }

    /// Re-execute an accepted receipt from its request's input and dispute it at the ReceiptCourt if
    /// this node's execution differs.
    async fn audit(&self, a: &mut Audit) -> Result<(), ChainError> {
        let done = |a: &mut Audit, state: &str, note: String| {
            tracing::info!(request = a.request, node = %a.node, state, "audit: {note}");
            a.state = state.into();
            a.note = note;
        };
        let Some(req) = self.chain.request(a.request).await? else {
            done(a, "skipped", "the request is no longer on the chain".into());
            return Ok(());
        };
        let receipt = verity_core::SignedReceipt {
            receipt: verity_core::Receipt {
                request_id: crate::roles::chain::request_hash(a.request),
                model_id: req.model_id,
                input_hash: a.input_hash,
                output_hash: a.output_hash,
                trace_root: a.trace_root,
                node: a.node,
                timestamp: a.timestamp,
            },
            domain: verity_core::receipt::receipt_domain(self.chain.chain_id(), self.chain.hub()),
            signature: a.signature,
        };
        let run = match self.audit_run(&req, &a.input_hash).await {
            Ok(run) => run,
            Err((m, retry)) => {
                a.tries += 1;
                if retry && a.tries < AUDIT_TRIES {
                    a.note = format!("cannot re-execute yet: {m}");
                } else {
                    done(a, "skipped", format!("cannot re-execute: {m}"));
                }
                return Ok(());
            }
        };
        if claim_agrees(
            &a.output_hash,
            &a.trace_root,
            &run.output_hash,
            &run.trace_root,
        ) {
            done(
                a,
                "agreed",
                format!("re-executed: output {} agrees", a.output_hash),
            );
            return Ok(());
        }
        let ni = run.loaded.exec.model().inputs.len();
        match self
            .chain
            .dispute_receipt(
                &receipt,
                true,
                &run.output_hash,
                &run.trace_root,
                &run.trace.tensors[..ni],
            )
            .await
        {
            Ok((d, g, gas)) => done(
                a,
                "disputed",
                format!(
                    "the receipt says output {}, trace {}; this execution gives output {}, trace {}: disputed at the ReceiptCourt (dispute {d}, game {g}, gas {gas})",
                    a.output_hash, a.trace_root, run.output_hash, run.trace_root
                ),
            ),
            Err(ChainError::Reverted(m)) => done(a, "skipped", format!("dispute refused: {m}")),
            Err(e) => return Err(e),
        }
        Ok(())
    }

    /// This node's traced execution of hub request `req` on its input; the error says whether trying
    /// again later may help.
    async fn audit_run(
        &self,
        req: &verity_chain::RequestInfo,
        input_hash: &Hash,
    ) -> Result<Run, (String, bool)> {
        let node = &self.node;
        let (inputs, _) = crate::roles::chain::fetch_input_and_mode(
            node,
            self.chain.as_ref(),
            req.id,
            &req.input_uri,
        )
        .await
        .map_err(|e| (e.message, true))?;
        let loaded = crate::roles::chain::load_model(node, &req.model_id)
            .await
            .map_err(|e| (e.message, true))?;
        let n2 = node.clone();
        let want = *input_hash;
        node.on_worker(false, move || -> Result<Run, (String, bool)> {
            let model = loaded.exec.model();
            let q = crate::state::bind_inputs(model, inputs).map_err(|e| (e.message, false))?;
            // A receipt whose input is not its request's cannot be settled by a game over that input;
            // the hub refuses it for every request whose input hash is fixed.
            traced(&n2, loaded.clone(), q, &want).map_err(|m| (m, false))
        })
        .await
        .map_err(|e| (e.message, true))?
    }

    fn apply(&self, e: OptEventKind) {
        let me = self.me();
        let id = e.request();
        let mut job = self.job(id);
        let before = job.clone();
        match e {
            OptEventKind::Challenged {
                game,
                challenger,
                defender,
                ..
            } => {
                for (mine, as_defender) in [(defender == me, true), (challenger == me, false)] {
                    if mine && !job.games.iter().any(|g| g.0 == game) {
                        job.games.push((game, as_defender));
                        if as_defender {
                            Self::note(
                                &mut job,
                                format!("{challenger} challenged this node's claim (game {game})"),
                            );
                        }
                    }
                }
            }
            OptEventKind::Resolved {
                game,
                winner,
                loser,
                moves,
                reason,
                ..
            } if job.games.iter().any(|g| g.0 == game) && !job.over.contains(&game) => {
                job.over.push(game);
                let verdict = if winner == me {
                    "won"
                } else if loser == me {
                    "lost"
                } else {
                    "ended"
                };
                Self::note(
                    &mut job,
                    format!("game {game} {verdict} after {moves} moves: {reason}"),
                );
            }
            OptEventKind::Finalized {
                output_hash, owner, ..
            } if job.state == "open" => {
                job.state = "done".into();
                Self::note(
                    &mut job,
                    format!("finalized: output {output_hash} (claim of {owner})"),
                );
            }
            OptEventKind::Refunded { .. } if job.state == "open" => {
                job.state = "done".into();
                Self::note(&mut job, "refunded: nobody committed in time".into());
            }
            _ => {}
        }
        if self.load(id).is_none() || job != before {
            self.save(&job);
        }
    }

    /// Act on one open request; returns whether a game of this node is on.
    async fn act(&self, mut job: OptJob, head: u64) -> Result<bool, ChainError> {
        let before = job.clone();
        let r = self.act_inner(&mut job, head).await;
        if job != before {
            self.save(&job);
        }
        r
    }

    async fn act_inner(&self, job: &mut OptJob, head: u64) -> Result<bool, ChainError> {
        let me = self.me();
        let id = job.id;
        let r = self.chain.optimistic_request(id).await?;
        tracing::debug!(
            request = id,
            status = r.status,
            head,
            deadline = r.deadline,
            window_end = r.window_end,
            "optimistic request"
        );
        match r.status {
            0 | 3 | 4 => {
                job.state = "done".into();
                return Ok(false);
            }
            1 if self.cfg.serve && !self.watch_only && !job.committed && head <= r.deadline => {
                match self.chain.optimistic_assigned(id).await {
                    Ok(a) if a == me => self.commit(job, &r).await?,
                    Ok(a) => tracing::debug!(request = id, assigned = %a, "not assigned here"),
                    // the seed block is not mined yet (or too old to draw from)
                    Err(ChainError::Reverted(m)) => {
                        tracing::debug!(request = id, "no assignment yet: {m}")
                    }
                    Err(e) => return Err(e),
                }
            }
            2 => {
                let claim = self.chain.claim(id).await?;
                if claim.owner == me {
                    if self.cfg.finalize && head > r.window_end && r.open_games == 0 {
                        match self.chain.finalize_optimistic(id).await {
                            Ok(_) => Self::note(job, "finalized this node's claim".into()),
                            Err(ChainError::Reverted(m)) => {
                                tracing::debug!(request = id, "finalize refused: {m}")
                            }
                            Err(e) => return Err(e),
                        }
                    }
                } else if self.cfg.watch_rate > 0.0 && head <= r.window_end {
                    let key = claim_key(&claim.owner, &claim.output_hash, &claim.trace_root);
                    if job.checked != Some(key) {
                        let done = !sampled(&self.salt, id, &key, self.cfg.watch_rate)
                            || self.check(job, &r, &claim).await?;
                        if done {
                            job.checked = Some(key);
                        }
                    }
                }
            }
            _ => {}
        }
        let mut busy = false;
        for (g, defender) in job.games.clone() {
            if !job.over.contains(&g) {
                busy |= self.play(job, &r, g, defender, head).await?;
            }
        }
        Ok(busy)
    }

    /// Execute request `id` (once; the run is kept while the request is open).
    async fn execute(&self, id: u64, r: &OptRequest) -> Result<Arc<Run>, String> {
        if let Some(run) = self.runs.lock().ok().and_then(|m| m.get(&id).cloned()) {
            return Ok(run);
        }
        let node = &self.node;
        // A dispute over a receipt (opened by the ReceiptCourt) carries its quantized input in the
        // court's event; a request carries an input URI.
        let (inputs, given) = if r.input_uri == "dispute" {
            let q = self
                .chain
                .dispute_input(id)
                .await
                .map_err(|e| e.to_string())?
                .ok_or_else(|| format!("no input published for dispute {id}"))?;
            (Vec::new(), Some(q))
        } else {
            let (inputs, _) = crate::roles::chain::fetch_input_and_mode(
                node,
                self.chain.as_ref(),
                id,
                &r.input_uri,
            )
            .await
            .map_err(|e| e.message)?;
            (inputs, None)
        };
        let loaded = crate::roles::chain::load_model(node, &r.model_id)
            .await
            .map_err(|e| e.message)?;
        let l2 = loaded.clone();
        let n2 = node.clone();
        let want_input = r.input_hash;
        let run = node
            .on_worker(false, move || -> Result<Run, String> {
                let model = l2.exec.model();
                let q = match given {
                    Some(q) => {
                        check_shapes(model, &q)?;
                        q
                    }
                    None => crate::state::bind_inputs(model, inputs).map_err(|e| e.message)?,
                };
                traced(&n2, l2.clone(), q, &want_input)
            })
            .await
            .map_err(|e| e.message)??;
        let run = Arc::new(run);
        if let Ok(mut m) = self.runs.lock() {
            m.insert(id, run.clone());
        }
        Ok(run)
    }

    async fn commit(&self, job: &mut OptJob, r: &OptRequest) -> Result<(), ChainError> {
        let id = job.id;
        let run = match self.execute(id, r).await {
            Ok(run) => run,
            Err(m) => {
                // Tried again on the next poll until the deadline (the input or the model may be
                // unreachable for a moment); said once.
                Self::note_once(job, format!("cannot run the request yet: {m}"));
                return Ok(());
            }
        };
        match self
            .chain
            .commit(id, &run.output_hash, &run.trace_root)
            .await
        {
            Ok(gas) => {
                job.committed = true;
                Self::note(
                    job,
                    format!(
                        "committed output {} trace {} (gas {gas})",
                        run.output_hash, run.trace_root
                    ),
                );
            }
            Err(ChainError::Reverted(m)) => {
                job.committed = true;
                Self::note(job, format!("commit refused: {m}"));
            }
            Err(e) => return Err(e),
        }
        Ok(())
    }

    /// Re-execute a claim and challenge it if it differs from this node's own execution. Returns
    /// whether the claim is dealt with (false: it could not be re-executed yet, e.g. the model or the
    /// input is unreachable for now; tried again on the next poll while the window is open).
    async fn check(
        &self,
        job: &mut OptJob,
        r: &OptRequest,
        claim: &verity_chain::dispute::Claim,
    ) -> Result<bool, ChainError> {
        let id = job.id;
        let run = match self.execute(id, r).await {
            Ok(run) => run,
            Err(m) => {
                Self::note_once(job, format!("cannot re-execute the claim yet: {m}"));
                return Ok(false);
            }
        };
        if claim_agrees(
            &claim.output_hash,
            &claim.trace_root,
            &run.output_hash,
            &run.trace_root,
        ) {
            Self::note(
                job,
                format!(
                    "re-executed: agrees with {}'s claim (output {})",
                    claim.owner, claim.output_hash
                ),
            );
            return Ok(true);
        }
        match self
            .chain
            .challenge(id, &run.output_hash, &run.trace_root)
            .await
        {
            Ok((g, gas)) => {
                if !job.games.iter().any(|x| x.0 == g) {
                    job.games.push((g, false));
                }
                Self::note(
                    job,
                    format!(
                        "re-executed: {}'s claim (output {}, trace {}) differs from output {}, trace {}; challenged (game {g}, gas {gas})",
                        claim.owner, claim.output_hash, claim.trace_root, run.output_hash, run.trace_root
                    ),
                );
            }
            Err(ChainError::Reverted(m)) => {
                Self::note(job, format!("challenge refused: {m}"));
            }
            Err(e) => return Err(e),
        }
        Ok(true)
    }

    /// Make this node's move in game `g` (not yet over in `job`) if it is its turn, or claim the other
    /// side's missed move. Returns whether the game is still on.
    async fn play(
        &self,
        job: &mut OptJob,
        r: &OptRequest,
        g: u64,
        defender: bool,
        head: u64,
    ) -> Result<bool, ChainError> {
        let gm = self.chain.game(g).await?;
        if matches!(gm.stage, Stage::Done | Stage::None) {
            job.over.push(g);
            return Ok(false);
        }
        if gm.stage.defender_moves() != defender {
            if head > gm.deadline {
                match self.chain.timeout_game(g).await {
                    Ok(_) => Self::note(
                        job,
                        format!("game {g}: the other side missed its move; claimed"),
                    ),
                    Err(ChainError::Reverted(m)) => {
                        tracing::debug!(game = g, "timeout refused: {m}")
                    }
                    Err(e) => return Err(e),
                }
            }
            return Ok(true);
        }
        let run = match self.execute(job.id, r).await {
            Ok(run) => run,
            Err(m) => {
                Self::note(job, format!("game {g}: cannot rebuild the trace: {m}"));
                return Ok(true);
            }
        };
        let side = match Side::new(run.loaded.exec.model(), &run.trace) {
            Ok(s) => s,
            Err(e) => {
                Self::note(job, format!("game {g}: {e}"));
                return Ok(true);
            }
        };
        match self.chain.play_move(g, &side, defender).await {
            Ok(Some(m)) => {
                tracing::debug!(game = g, r#move = m.name, gas = m.gas, "played");
                if m.name == "step" {
                    Self::note(
                        job,
                        format!(
                            "game {g}: proved the disputed element wrong on-chain (gas {})",
                            m.gas
                        ),
                    );
                }
            }
            Ok(None) => {
                if gm.stage == Stage::Step {
                    job.over.push(g);
                    Self::note(
                        job,
                        format!("game {g}: the revealed element agrees with this node's execution; conceding"),
                    );
                }
            }
            Err(ChainError::Reverted(m)) => {
                Self::note(job, format!("game {g}: move refused: {m}"));
                if !defender && gm.stage == Stage::Step {
                    job.over.push(g);
                }
            }
            Err(e) => return Err(e),
        }
        Ok(true)
    }
}

/// Re-execute an off-chain receipt (signed for the ReceiptCourt) on `inputs` and dispute it there if this
/// node's execution differs; the game is then played by this node's optimistic participant (the
/// `Challenged` event names it). What `POST /v1/disputes` answers.
pub async fn dispute_offchain(
    node: &Arc<Node>,
    chain: &EvmChain,
    receipt: verity_core::SignedReceipt,
    inputs: Vec<crate::tensors::NamedTensor>,
) -> Result<serde_json::Value, crate::error::ApiError> {
    use crate::error::ApiError;
    let court = chain.deployment().court.ok_or_else(|| {
        ApiError::unprocessable("no_court", "this deployment has no ReceiptCourt")
    })?;
    let want = verity_core::receipt::receipt_domain(chain.chain_id(), court);
    if receipt.domain != want {
        return Err(ApiError::unprocessable(
            "wrong_domain",
            format!(
                "the receipt is signed for chain {:?}, contract {:?}; off-chain receipts of this deployment are signed for chain {}, the ReceiptCourt {court} (a hub receipt is audited from the hub's events)",
                receipt.domain.chain_id, receipt.domain.verifying_contract, chain.chain_id()
            ),
        ));
    }
    match receipt.verify() {
        Ok(signer) if signer == receipt.receipt.node => {}
        Ok(signer) => {
            return Err(ApiError::unprocessable(
                "bad_signature",
                format!(
                    "the receipt is signed by {signer}, not its node {}",
                    receipt.receipt.node
                ),
            ))
        }
        Err(e) => return Err(ApiError::unprocessable("bad_signature", e.to_string())),
    }
    let loaded = crate::roles::chain::load_model(node, &receipt.receipt.model_id).await?;
    let n2 = node.clone();
    let want_input = receipt.receipt.input_hash;
    let run = node
        .on_worker(false, move || -> Result<Run, ApiError> {
            let q = crate::state::bind_inputs(loaded.exec.model(), inputs)?;
            traced(&n2, loaded.clone(), q, &want_input)
                .map_err(|m| ApiError::unprocessable("input_mismatch", m))
        })
        .await??;
    let r = &receipt.receipt;
    if claim_agrees(
        &r.output_hash,
        &r.trace_root,
        &run.output_hash,
        &run.trace_root,
    ) {
        return Ok(serde_json::json!({
            "state": "agreed",
            "output_hash": r.output_hash,
            // this execution's: the receipt's own, or the one its node must reveal if its trace is deferred
            "trace_root": run.trace_root,
        }));
    }
    let ni = run.loaded.exec.model().inputs.len();
    let (d, g, gas) = chain
        .dispute_receipt(
            &receipt,
            false,
            &run.output_hash,
            &run.trace_root,
            &run.trace.tensors[..ni],
        )
        .await
        .map_err(|e| match e {
            ChainError::Reverted(m) => ApiError::unprocessable("dispute_refused", m),
            e => crate::roles::chain::api(e),
        })?;
    tracing::info!(node = %r.node, dispute = d, game = g, "disputed an off-chain receipt at the ReceiptCourt");
    Ok(serde_json::json!({
        "state": "disputed",
        "dispute": d,
        "game": g,
        "gas": gas,
        "claimed": {"output_hash": r.output_hash, "trace_root": r.trace_root},
        "executed": {"output_hash": run.output_hash, "trace_root": run.trace_root},
    }))
}

/// This node's traced execution of `model` on `q`, which must hash to `want_input`.
fn traced(
    node: &Node,
    loaded: Arc<Loaded>,
    q: Vec<Vec<i32>>,
    want_input: &Hash,
) -> Result<Run, String> {
    let model = loaded.exec.model();
    let input_hash = verity_engine::commit::tensors_hash(&q);
    if input_hash != *want_input {
        return Err(format!(
            "the input hashes to {input_hash}, not the requested {want_input}"
        ));
    }
    let (_, trace) = loaded
        .exec
        .run_trace_tampered(q, node.tamper(model))
        .map_err(|e| format!("execution failed: {e}"))?;
    let side = Side::new(model, &trace).map_err(|e| e.to_string())?;
    let (output_hash, trace_root) = (side.output_hash(), side.trace_root());
    drop(side);
    Ok(Run {
        loaded: loaded.clone(),
        trace,
        output_hash,
        trace_root,
    })
}

/// A dispute's input must be one tensor per model input with that input's element count.
fn check_shapes(model: &verity_engine::Model, q: &[Vec<i32>]) -> Result<(), String> {
    if q.len() != model.inputs.len() {
        return Err(format!(
            "the disputed input has {} tensors, the model {}",
            q.len(),
            model.inputs.len()
        ));
    }
    for (t, i) in q.iter().zip(&model.inputs) {
        let n = verity_engine::ir::numel(&i.shape) as usize;
        if t.len() != n {
            return Err(format!(
                "disputed input '{}' has {} elements, the model's {n}",
                i.name,
                t.len()
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sampling_follows_the_rate_and_depends_on_the_secret_seed() {
        let claim = |i: u64| keccak256(&i.to_be_bytes());
        let (a, b) = (Hash([1; 32]), Hash([2; 32]));
        let n = 4000u64;
        for rate in [0.1, 0.25, 0.5] {
            let hits = (0..n).filter(|&i| sampled(&a, i, &claim(i), rate)).count() as f64;
            let want = rate * n as f64;
            assert!(
                (hits - want).abs() < 4.0 * (want * (1.0 - rate)).sqrt(),
                "rate {rate}: {hits} of {n}"
            );
        }
        assert!((0..n).all(|i| sampled(&a, i, &claim(i), 1.0)));
        assert!(!(0..n).any(|i| sampled(&a, i, &claim(i), 0.0)));
        // the same seed decides the same way; another seed picks other claims
        let pick =
            |s: &Hash| -> Vec<bool> { (0..200).map(|i| sampled(s, i, &claim(i), 0.5)).collect() };
        assert_eq!(pick(&a), pick(&a));
        assert_ne!(pick(&a), pick(&b));
    }

    #[test]
    fn bad_optimistic_settings_are_refused() {
        let mut c = crate::NodeConfig::default();
        c.faults.corrupt_op = Some("Relu".into());
        let e = c.validate().unwrap_err();
        assert!(e.contains("'Relu' is not `output` or an op"), "{e}");
        c.faults.corrupt_op = Some("EinSum".into());
        assert!(c.validate().is_ok());
        c.faults.corrupt_op = Some("output".into());
        assert!(c.validate().is_ok());
        let mut chain = crate::config::ChainConfig::default();
        chain.optimistic.watch_rate = 1.5;
        c.chain = Some(chain);
        let e = c.validate().unwrap_err();
        assert!(e.contains("watch_rate must be between 0 and 1"), "{e}");
    }
}
