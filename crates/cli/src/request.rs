//! `verity request`: an on-chain inference from the command line. The input is hashed under the model's
//! canonical quantization (so the request binds it), hosted on a node, requested from the InferenceHub
//! with the fee the model's price asks for, and — unless `--no-wait` — followed to finalization; the
//! result is then read from a node that re-executes it and checks it against the finalized hashes.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use clap::Args;
use serde_json::{json, Value};
use verity_chain::{
    Chain, Deployment, EvmChain, HubEvent, HubEventKind, Mode, RequestInfo, Status, U256,
};
use verity_core::Hash;
use verity_engine::ir::Model;
use verity_engine::vty;

use crate::net::{KeyArgs, NodeUrl};

#[derive(Args, Debug)]
pub struct RequestArgs {
    /// `0x<model id>`, `name@version` or `name` (latest), as registered in the ModelRegistry.
    pub model: String,
    /// Input: JSON (`{"name": tensor}` or one tensor) or `.npy`; `name=file.npy` per input.
    #[arg(long, required = true)]
    pub input: Vec<String>,
    /// JSON-RPC URL of the chain.
    #[arg(long, env = "VERITY_CHAIN")]
    pub chain: String,
    /// Deployment file (contract addresses), e.g. `<devnet dir>/contracts.json`.
    #[arg(long, env = "VERITY_CONTRACTS")]
    pub contracts: PathBuf,
    /// Quorum size k (2–7); without it the request is `signed` (one node's receipt).
    #[arg(long, conflicts_with = "optimistic")]
    pub quorum: Option<u8>,
    /// Optimistic mode (OptimisticHub): one assigned node commits its output hash and trace root with a
    /// bond; the result is final after the challenge window unless a watcher proves it wrong. The output
    /// is then computed here and checked against the final hash.
    #[arg(long)]
    pub optimistic: bool,
    /// Fee in wei (default: the model's price times the receipts needed).
    #[arg(long)]
    pub fee: Option<String>,
    /// The model file (default: downloaded from the node and checked against its ID).
    #[arg(long)]
    pub model_file: Option<PathBuf>,
    /// Print the request ID and return without waiting for the result.
    #[arg(long)]
    pub no_wait: bool,
    /// Seconds to wait for finalization.
    #[arg(long, default_value_t = 180)]
    pub wait: u64,
    /// Write the verified result here.
    #[arg(long, short = 'o')]
    pub output: Option<PathBuf>,
    #[command(flatten)]
    pub node: NodeUrl,
    #[command(flatten)]
    pub key: KeyArgs,
}

/// Send `req` to `url`: the status and the JSON body (`null` if there is none).
fn send_json(
    req: reqwest::blocking::RequestBuilder,
    url: &str,
) -> Result<(reqwest::StatusCode, Value)> {
    let r = req.send().with_context(|| format!("cannot reach {url}"))?;
    let status = r.status();
    Ok((status, r.json().unwrap_or(Value::Null)))
}

/// The hub events of request `id` from block `from` to the newest block, in chain order.
pub fn request_events(
    rt: &tokio::runtime::Runtime,
    chain: &EvmChain,
    from: u64,
    id: u64,
) -> Result<Vec<HubEvent>> {
    let head = rt
        .block_on(chain.head())
        .map_err(|e| anyhow!("{e}"))?
        .number;
    let events = rt
        .block_on(chain.hub_events(from, head))
        .map_err(|e| anyhow!("{e}"))?;
    Ok(events
        .into_iter()
        .filter(|e| match &e.kind {
            HubEventKind::Requested { id: r, .. }
            | HubEventKind::ReceiptAccepted { id: r, .. }
            | HubEventKind::Conflict { id: r, .. }
            | HubEventKind::Declined { id: r, .. }
            | HubEventKind::Finalized { id: r, .. }
            | HubEventKind::Refunded { id: r } => *r == id,
            HubEventKind::ModelRegistered { .. } => false,
        })
        .collect())
}

/// An input ready for an on-chain request: its canonical hash and where nodes fetch it.
pub struct HostedInput {
    pub input_hash: Hash,
    pub uri: String,
}

/// Hash `specs` under `m`'s canonical quantization and host the input document on the node at `base`.
pub fn host_input(
    http: &reqwest::blocking::Client,
    base: &str,
    m: &Model,
    specs: &[String],
) -> Result<HostedInput> {
    let inputs = crate::load_inputs(m, specs)?;
    let q = verity_engine::io::quantize_inputs(m, &inputs)?;
    let input_hash = verity_engine::commit::tensors_hash(&q);
    let mut doc = serde_json::Map::new();
    for (t, i) in inputs.iter().zip(&m.inputs) {
        doc.insert(i.name.clone(), json!({"shape": t.shape, "data": t.data}));
    }
    let doc = json!({ "inputs": doc });
    let url = format!("{base}/v1/inputs");
    let (status, v) = send_json(http.post(&url).json(&doc), &url)?;
    if !status.is_success() {
        bail!(
            "the node refused the input (HTTP {status}): {}",
            v["error"]["message"].as_str().unwrap_or("no message")
        );
    }
    let uri = v["uri"]
        .as_str()
        .ok_or_else(|| anyhow!("the node gave no input URI"))?
        .to_string();
    Ok(HostedInput { input_hash, uri })
}

/// Download model `id` from the node at `base`, refusing bytes whose content address differs.
pub fn download_model(http: &reqwest::blocking::Client, base: &str, id: &Hash) -> Result<Model> {
    let url = format!("{base}/v1/models/{id}/download");
    let r = http
        .get(&url)
        .send()
        .with_context(|| format!("cannot reach {url}"))?;
    if !r.status().is_success() {
        bail!(
            "the node at {base} cannot serve model {id} (HTTP {})",
            r.status()
        );
    }
    let bytes = r.bytes().context("model download interrupted")?;
    let (m, got) = vty::decode(&bytes).context("the downloaded model does not decode")?;
    if got != *id {
        bail!("the node served model {got}, not {id}: refusing it");
    }
    Ok(m)
}

/// Poll request `id` until it is no longer pending (or `timeout` passes).
pub fn wait_settled(
    rt: &tokio::runtime::Runtime,
    chain: &EvmChain,
    id: u64,
    timeout: Duration,
) -> Result<RequestInfo> {
    let start = Instant::now();
    loop {
        let r = rt
            .block_on(chain.request(id))
            .map_err(|e| anyhow!("{e}"))?
            .ok_or_else(|| anyhow!("request {id} is not on the hub"))?;
        if r.status != Status::Pending {
            return Ok(r);
        }
        if start.elapsed() > timeout {
            bail!(
                "request {id} was not finalized within {} s (it stays open until its deadline; ask again with `verity request --no-wait` or GET /v1/requests/{id} on a node)",
                timeout.as_secs()
            );
        }
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// The verified result of a finalized request from the node at `base` (re-executed there and checked
/// against the finalized hashes).
pub fn verified_result(http: &reqwest::blocking::Client, base: &str, id: u64) -> Result<Value> {
    let url = format!("{base}/v1/requests/{id}?wait=30");
    let (status, v) = send_json(http.get(&url), &url)?;
    if !status.is_success() || v["verified"] != json!(true) {
        bail!(
            "the node at {base} gave no verified result for request {id} (HTTP {status}): {}",
            v["error"]["message"].as_str().unwrap_or("no message")
        );
    }
    Ok(v)
}

pub fn cmd_request(a: RequestArgs) -> Result<()> {
    let key = a.key.load()?;
    let dep = Deployment::load(&a.contracts).map_err(|e| anyhow!("{e}"))?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let chain = rt
        .block_on(EvmChain::connect(&a.chain, dep.clone(), Some(&key)))
        .map_err(|e| anyhow!("{e}"))?;
    let (mode, k) = match a.quorum {
        None => (Mode::Signed, 1u8),
        Some(k) if (2..=7).contains(&k) => (Mode::Quorum, k),
        Some(k) => bail!("--quorum must be between 2 and 7 (got {k})"),
    };
    let model = rt
        .block_on(chain.resolve_model(&a.model))
        .map_err(|e| anyhow!("{e}"))?;
    let fee = match &a.fee {
        Some(f) => f
            .parse::<U256>()
            .map_err(|_| anyhow!("--fee must be a whole number of wei (got '{f}')"))?,
        None => {
            rt.block_on(chain.price_of(&model))
                .map_err(|e| anyhow!("{e}"))?
                * U256::from(if a.optimistic { 1 } else { k })
        }
    };
    let http = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(120))
        .build()?;
    let base = a.node.url.trim_end_matches('/').to_string();
    let m = match &a.model_file {
        Some(p) => {
            let (m, id) = crate::load_model(p)?;
            if id != model {
                bail!("{} is model {id}, not the requested {model}", p.display());
            }
            m
        }
        None => download_model(&http, &base, &model)?,
    };
    let hosted = host_input(&http, &base, &m, &a.input)?;
    eprintln!(
        "input    canonical hash {}, hosted at {}",
        hosted.input_hash, hosted.uri
    );
    if a.optimistic {
        return optimistic(&a, &rt, &chain, &m, model, &hosted);
    }
    let placed = rt
        .block_on(chain.request_inference(&model, &hosted.input_hash, &hosted.uri, mode, k, fee))
        .map_err(|e| anyhow!("{e}"))?;
    let (id, tx) = (placed.id, placed.tx);
    eprintln!(
        "request  #{id} model {model} ({}, k = {k}), fee {fee} wei — tx {tx}, gas {}",
        verity_node::roles::chain::mode_name(mode),
        placed.gas
    );
    if a.no_wait {
        println!(
            "{}",
            json!({"request": id, "tx": tx, "model_id": model, "input_hash": hosted.input_hash})
        );
        return Ok(());
    }
    let start = Instant::now();
    let req = wait_settled(&rt, &chain, id, Duration::from_secs(a.wait))?;
    if req.status != Status::Finalized {
        bail!("request {id} was refunded: no assigned node answered before the deadline");
    }
    let mut receipts = Vec::new();
    for e in request_events(&rt, &chain, placed.block, id)? {
        if let HubEventKind::ReceiptAccepted {
            node, output_hash, ..
        } = &e.kind
        {
            eprintln!("receipt  node {node} output {output_hash} — tx {}", e.tx);
            receipts.push(json!({"node": node, "output_hash": output_hash, "tx": e.tx}));
        }
    }
    eprintln!(
        "final    output hash {} after {:.1} s",
        req.output_hash,
        start.elapsed().as_secs_f64()
    );
    let mut v = verified_result(&http, &base, id)?;
    v["receipts"] = json!(receipts);
    v["tx"] = json!(tx);
    if let Some(p) = &a.output {
        std::fs::write(p, serde_json::to_vec_pretty(&v)?)
            .with_context(|| format!("cannot write {}", p.display()))?;
    }
    println!("{}", serde_json::to_string_pretty(&v)?);
    Ok(())
}

/// `verity request --optimistic`: place the request, follow its claims and games to the end, then compute
/// the output here and accept it only if its hash is the finalized one.
fn optimistic(
    a: &RequestArgs,
    rt: &tokio::runtime::Runtime,
    chain: &EvmChain,
    m: &Model,
    model: Hash,
    hosted: &HostedInput,
) -> Result<()> {
    use verity_chain::dispute::OptEventKind;
    let fee = match &a.fee {
        Some(f) => f
            .parse::<U256>()
            .map_err(|_| anyhow!("--fee must be a whole number of wei (got '{f}')"))?,
        None => rt
            .block_on(chain.price_of(&model))
            .map_err(|e| anyhow!("{e}"))?,
    };
    let placed = rt
        .block_on(chain.request_optimistic(&model, &hosted.input_hash, &hosted.uri, fee))
        .map_err(|e| anyhow!("{e}"))?;
    let id = placed.id;
    eprintln!(
        "request  #{id} model {model} (optimistic), fee {fee} wei — tx {}, gas {}",
        placed.tx, placed.gas
    );
    if a.no_wait {
        println!(
            "{}",
            json!({"request": id, "mode": "optimistic", "tx": placed.tx, "model_id": model, "input_hash": hosted.input_hash})
        );
        return Ok(());
    }
    let start = Instant::now();
    // the node is drawn from a block after the request's: wait for it, then say which one must answer
    let drawn = loop {
        match rt.block_on(chain.optimistic_assigned(id)) {
            Ok(node) if node != verity_core::Address::default() => break node,
            _ if start.elapsed() > Duration::from_secs(a.wait) => bail!(
                "optimistic request {id}: no node was drawn within {} s (is the chain producing blocks?)",
                a.wait
            ),
            _ => std::thread::sleep(Duration::from_millis(250)),
        }
    };
    eprintln!("drawn    node {drawn} must commit its result");
    let mut games = Vec::new();
    let hint = "its challenge window may still be open; ask again later";
    let (final_out, owner) = follow_optimistic(
        rt,
        chain,
        id,
        placed.block,
        Duration::from_secs(a.wait),
        hint,
        |e, _| {
            match &e.kind {
                OptEventKind::Claimed {
                    owner,
                    output_hash,
                    window_end,
                    ..
                } => eprintln!(
                    "claim    {owner} output {output_hash}, open to challenges until block {window_end} — tx {}",
                    e.tx
                ),
                OptEventKind::Challenged {
                    game, challenger, ..
                } => eprintln!("challenge  game {game} by {challenger} — tx {}", e.tx),
                OptEventKind::Resolved {
                    game,
                    winner,
                    loser,
                    moves,
                    reason,
                    ..
                } => {
                    eprintln!(
                        "game     {game}: {winner} beat {loser} after {moves} moves ({reason}) — tx {}",
                        e.tx
                    );
                    games.push(json!({"game": game, "winner": winner, "loser": loser, "moves": moves, "reason": reason}));
                }
                _ => {}
            }
            Ok(())
        },
    )?;
    eprintln!(
        "final    output hash {final_out} after {:.1} s",
        start.elapsed().as_secs_f64()
    );
    let (raw, here) = run_here(m, &a.input)?;
    if here != final_out {
        bail!("request {id} finalized output {final_out}, but the canonical execution here gives {here}");
    }
    let outputs: Vec<Value> = verity_node::Node::describe_outputs(m, &raw)
        .into_iter()
        .map(|(name, shape, scale, data)| json!({"name": name, "shape": shape, "scale": scale, "data": data}))
        .collect();
    let v = json!({
        "request": id,
        "mode": "optimistic",
        "tx": placed.tx,
        "model_id": model,
        "input_hash": hosted.input_hash,
        "output_hash": final_out,
        "drawn": drawn,
        "claim_owner": owner,
        "games": games,
        "verified": true,
        "outputs": outputs,
    });
    if let Some(p) = &a.output {
        std::fs::write(p, serde_json::to_vec_pretty(&v)?)
            .with_context(|| format!("cannot write {}", p.display()))?;
    }
    println!("{}", serde_json::to_string_pretty(&v)?);
    Ok(())
}

/// Follow optimistic request `id`'s events from block `from` until it is final, handing each (the final
/// one included) to `on` with the seconds since the start; returns the final output hash and the owner of
/// the claim that was finalized. A refund is an error, and so is `timeout` passing (the error ends with
/// `hint`).
pub fn follow_optimistic(
    rt: &tokio::runtime::Runtime,
    chain: &EvmChain,
    id: u64,
    mut from: u64,
    timeout: Duration,
    hint: &str,
    mut on: impl FnMut(&verity_chain::dispute::OptEvent, f64) -> Result<()>,
) -> Result<(Hash, verity_core::Address)> {
    use verity_chain::dispute::OptEventKind;
    let start = Instant::now();
    loop {
        if start.elapsed() > timeout {
            bail!(
                "optimistic request {id} was not final within {} s ({hint})",
                timeout.as_secs()
            );
        }
        std::thread::sleep(Duration::from_millis(250));
        let head = rt
            .block_on(chain.head())
            .map_err(|e| anyhow!("{e}"))?
            .number;
        if head < from {
            continue;
        }
        let events = rt
            .block_on(chain.optimistic_events(from, head))
            .map_err(|e| anyhow!("{e}"))?;
        from = head + 1;
        for e in events.iter().filter(|e| e.kind.request() == id) {
            on(e, start.elapsed().as_secs_f64())?;
            match e.kind {
                OptEventKind::Finalized {
                    output_hash, owner, ..
                } => return Ok((output_hash, owner)),
                OptEventKind::Refunded { .. } => bail!(
                    "request {id} was refunded: the assigned node did not commit before the deadline"
                ),
                _ => {}
            }
        }
    }
}

/// The canonical execution of `m` on the inputs `specs` here: the outputs and their hash.
pub fn run_here(m: &Model, specs: &[String]) -> Result<(Vec<Vec<i32>>, Hash)> {
    let inputs = crate::load_inputs(m, specs)?;
    let q = verity_engine::io::quantize_inputs(m, &inputs)?;
    let raw = verity_engine::Executor::new(m, verity_engine::Mode::default())
        .run(q)
        .map_err(|e| anyhow!("{e}"))?;
    let h = verity_engine::commit::tensors_hash(&raw);
    Ok((raw, h))
}
