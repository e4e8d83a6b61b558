//! `verity devnet`: a local Verity network (anvil, the contracts, N node processes, the demo models) and
//! `--demo`, the publish → on-chain request → result → verify → fee story.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use alloy::providers::Provider;
use anyhow::{anyhow, bail, Context, Result};
use clap::Args;
use serde_json::{json, Value};
use verity_chain::bindings::ModelRegistry;
use verity_chain::evm::{deploy, DeployParams};
use verity_chain::{from_b256, to_b256, Chain, Deployment, EvmChain, Mode, Status, U256};
use verity_core::{Hash, SecretKey};

/// Anvil's well-known development keys (accounts #0–#3): deployer, model publisher, client, SDK user.
const DEV_KEYS: [&str; 4] = [
    "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80",
    "0x59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d",
    "0x5de4111afa1a4b94908f83103eb1f1706367c2e68ca870fc3fb9a804cdab365a",
    "0x7c852118294e51e653712a81e05800f419141751be58f605c371e15141b007a6",
];

/// `verity devnet` arguments.
#[derive(Args, Debug)]
pub struct DevnetArgs {
    /// Number of nodes.
    #[arg(long, default_value_t = 3)]
    nodes: usize,
    /// State directory (chain state, contracts file, node data, logs).
    #[arg(long, default_value = ".verity-devnet")]
    dir: PathBuf,
    /// Start clean (delete the state directory first). Without it an existing devnet resumes.
    #[arg(long)]
    fresh: bool,
    /// Anvil's port; nodes listen on the following ports.
    #[arg(long, default_value_t = 8545)]
    port: u16,
    /// Run the demo story once the network is up.
    #[arg(long)]
    demo: bool,
    /// Stop after starting up (and the demo) instead of running until Ctrl-C.
    #[arg(long)]
    once: bool,
    /// Directory with the demo models (`mlp.onnx`, `cnn.onnx` and their `.input.json`).
    #[arg(long, default_value = "fixtures")]
    models: PathBuf,
    /// The anvil binary (default: `.tools/node_modules/.bin/anvil` as set up by `scripts/setup-chain`, else
    /// `anvil` on PATH).
    #[arg(long, env = "VERITY_ANVIL")]
    anvil: Option<PathBuf>,
    /// A GGUF language model every node serves through the OpenAI API (`[NAME=]FILE`, e.g.
    /// `.models/SmolLM2-135M-Instruct.Q4_1.gguf` from `scripts/setup-models`); the demo then asks it a
    /// question, checks the receipt, and gets a quorum-certified answer.
    #[arg(long)]
    llm: Option<String>,
    /// Positions each generation of --llm holds.
    #[arg(long, default_value_t = 512)]
    llm_context: usize,
    /// A sentence encoder every node serves through `POST /v1/embeddings` (`[NAME=]DIR`, an encoder
    /// directory in the sentence-transformers layout); `none` for none. The demo embeds two sentences
    /// and re-executes their receipts.
    #[arg(long, default_value = "fixtures/embed-mini")]
    embedding: String,
}

struct Procs(Vec<(String, Child)>);

impl Drop for Procs {
    fn drop(&mut self) {
        // Nodes first (SIGTERM: they drain and flush), then anvil (SIGINT: it saves its state).
        for (name, c) in self.0.iter_mut().rev() {
            let sig = if name == "anvil" { "-INT" } else { "-TERM" };
            let _ = Command::new("kill")
                .arg(sig)
                .arg(c.id().to_string())
                .status();
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                match c.try_wait() {
                    Ok(Some(_)) => break,
                    _ if Instant::now() > deadline => {
                        let _ = c.kill();
                        let _ = c.wait();
                        break;
                    }
                    _ => std::thread::sleep(Duration::from_millis(50)),
                }
            }
        }
    }
}

fn anvil_path(a: &DevnetArgs) -> PathBuf {
    if let Some(p) = &a.anvil {
        return p.clone();
    }
    let local = PathBuf::from(".tools/node_modules/.bin/anvil");
    if local.exists() {
        return local;
    }
    PathBuf::from("anvil")
}

fn wait_http(url: &str, what: &str, child: &mut Child, log: &Path) -> Result<()> {
    let client = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()?;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            let tail = std::fs::read_to_string(log).unwrap_or_default();
            let tail: Vec<&str> = tail.lines().rev().take(8).collect();
            bail!(
                "{what} exited ({status}) during startup; last log lines:\n{}",
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
        let ok = if url.ends_with("/rpc") {
            client
                .post(url.trim_end_matches("/rpc"))
                .json(&json!({"jsonrpc":"2.0","id":1,"method":"eth_chainId","params":[]}))
                .send()
                .is_ok_and(|r| r.status().is_success())
        } else {
            client
                .get(url)
                .send()
                .is_ok_and(|r| r.status().is_success())
        };
        if ok {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "{what} did not come up within 60 s (log: {})",
                log.display()
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn spawn_logged(name: &str, cmd: &mut Command, log: &Path) -> Result<Child> {
    let f =
        std::fs::File::create(log).with_context(|| format!("cannot create {}", log.display()))?;
    let f2 = f.try_clone()?;
    cmd.stdin(Stdio::null())
        .stdout(Stdio::from(f))
        .stderr(Stdio::from(f2))
        .spawn()
        .with_context(|| format!("cannot start {name} ({:?})", cmd.get_program()))
}

fn verity(args: &[&str], envs: &[(&str, &str)]) -> Result<String> {
    let exe = std::env::current_exe().context("cannot find the verity binary")?;
    let mut c = Command::new(exe);
    c.args(args);
    for (k, v) in envs {
        c.env(k, v);
    }
    let out = c.output().context("cannot run verity")?;
    if !out.status.success() {
        bail!(
            "verity {} failed: {}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim(),
            String::from_utf8_lossy(&out.stdout).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).to_string())
}

/// An RPC connection to the devnet's contracts that sends as `key`.
fn connect(
    rt: &tokio::runtime::Runtime,
    rpc: &str,
    dep: &Deployment,
    key: &SecretKey,
) -> Result<EvmChain> {
    rt.block_on(EvmChain::connect(rpc, dep.clone(), Some(key)))
        .map_err(|e| anyhow!("{e}"))
}

pub(crate) fn eth(wei: U256) -> String {
    let e = verity_chain::ether(1);
    let whole = wei / e;
    let frac = (wei % e) / U256::from(10u64).pow(U256::from(12));
    format!("{whole}.{frac:06} ETH")
}

/// Start `verity node` (or, with `port` 0, `verity watch`) as a process with its own key and data directory
/// `nd`, its account funded; wait until it serves. Returns its URL and address.
#[allow(clippy::too_many_arguments)]
fn start_node(
    rt: &tokio::runtime::Runtime,
    admin: &EvmChain,
    procs: &mut Procs,
    name: &str,
    nd: &Path,
    port: u16,
    rpc: &str,
    contracts: &Path,
    extra: &[&str],
) -> Result<(String, verity_core::Address)> {
    std::fs::create_dir_all(nd)?;
    let (key, _) =
        verity_node::key::load_or_create(&nd.join("node.key"), None).map_err(|e| anyhow!(e))?;
    let addr = key.address();
    rt.block_on(async {
        admin
            .provider()
            .raw_request::<_, ()>(
                "anvil_setBalance".into(),
                (verity_chain::to_evm(&addr), verity_chain::ether(10_000)),
            )
            .await
    })
    .map_err(|e| anyhow!("cannot fund {name}: {e}"))?;
    let exe = std::env::current_exe()?;
    let mut cmd = Command::new(exe);
    if port == 0 {
        cmd.arg("watch").arg("--data-dir").arg(nd);
    } else {
        cmd.arg("node")
            .arg("--data-dir")
            .arg(nd)
            .args(["--listen", &format!("127.0.0.1:{port}")]);
    }
    cmd.args(["--chain", rpc])
        .arg("--contracts")
        .arg(contracts)
        .args(extra)
        .env(
            "VERITY_LOG",
            std::env::var("VERITY_LOG").unwrap_or_else(|_| "info".into()),
        );
    let log = nd.join("node.log");
    let child = spawn_logged(name, &mut cmd, &log)?;
    procs.0.push((name.to_string(), child));
    let last = procs.0.len() - 1;
    // the listen address: given, or the watcher's `--listen` among `extra`
    let listen = if port == 0 {
        extra
            .iter()
            .position(|a| *a == "--listen")
            .and_then(|i| extra.get(i + 1))
            .map(|s| s.to_string())
            .ok_or_else(|| anyhow!("{name}: no --listen"))?
    } else {
        format!("127.0.0.1:{port}")
    };
    let url = format!("http://{listen}");
    wait_http(
        &format!("{url}/v2/health/ready"),
        name,
        &mut procs.0[last].1,
        &log,
    )?;
    Ok((url, addr))
}

/// Run the devnet.
pub fn cmd_devnet(a: DevnetArgs) -> Result<()> {
    if a.nodes == 0 || a.nodes > 16 {
        bail!("--nodes must be between 1 and 16");
    }
    if a.fresh && a.dir.exists() {
        std::fs::remove_dir_all(&a.dir)
            .with_context(|| format!("cannot remove {}", a.dir.display()))?;
    }
    std::fs::create_dir_all(&a.dir)
        .with_context(|| format!("cannot create {}", a.dir.display()))?;
    let dir = a.dir.canonicalize()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    // SIGTERM and SIGINT are handled from here on (a process manager's stop, `timeout`, Ctrl-C): the
    // devnet then returns normally and stops every child it started, instead of dying and leaving them.
    let stop = crate::net::stop_signals(&rt);
    let mut procs = Procs(Vec::new());
    let rpc = format!("http://127.0.0.1:{}", a.port);

    // 1. anvil, with its state saved in the devnet directory (a second run resumes from it).
    let state = dir.join("anvil-state.json");
    let resuming = state.exists() && dir.join("contracts.json").exists();
    let anvil = anvil_path(&a);
    let mut cmd = Command::new(&anvil);
    cmd.args([
        "--host",
        "127.0.0.1",
        "--port",
        &a.port.to_string(),
        "--block-time",
        "1",
        "--silent",
    ])
    .arg("--state")
    .arg(&state)
    .args(["--state-interval", "5"]);
    let log = dir.join("anvil.log");
    let child = spawn_logged("anvil", &mut cmd, &log).map_err(|e| {
        anyhow!(
            "{e:#}; run scripts/setup-chain first (it installs anvil into .tools/) or pass --anvil"
        )
    })?;
    procs.0.push(("anvil".into(), child));
    wait_http(&format!("{rpc}/rpc"), "anvil", &mut procs.0[0].1, &log)?;
    println!(
        "chain      anvil at {rpc} (chain 31337, 1 s blocks){}",
        if resuming { ", resumed" } else { "" }
    );

    // 2. contracts.
    let deployer = SecretKey::from_hex(DEV_KEYS[0])?;
    let contracts = dir.join("contracts.json");
    let dep = match Deployment::load(&contracts) {
        Ok(d) if resuming => d,
        _ => {
            let params = DeployParams {
                unbonding_delay: 24 * 3600,
                response_window: 120,
                // optimistic mode on 1 s blocks: commit within 30 s, challenge within 12 s, 10 s per move
                response_blocks: 30,
                challenge_blocks: 12,
                move_blocks: 10,
                ..DeployParams::default()
            };
            let d = rt
                .block_on(deploy(&rpc, &deployer, &params))
                .map_err(|e| anyhow!("deploying: {e}"))?;
            d.save(&contracts)?;
            d
        }
    };
    println!("contracts  {}", contracts.display());
    println!("           ModelRegistry  {}", dep.models);
    println!("           NodeRegistry   {}", dep.nodes);
    println!("           InferenceHub   {}", dep.hub);
    if let Some(og) = dep.opengradient {
        println!(
            "           OpenGradient   {og} (events at 0x00000000000000000000000000000000000000F4)"
        );
    }

    // 3. nodes: own keys and data dirs, funded, started as processes; they register and stake themselves.
    let admin = connect(&rt, &rpc, &dep, &deployer)?;
    let encoder = embedding(&a);
    let mut endpoints = Vec::new();
    for i in 0..a.nodes {
        let nd = dir.join(format!("node-{i}"));
        let port = a.port + 1 + i as u16;
        let stake = verity_chain::ether(2 + i as u64).to_string();
        let llm_context = a.llm_context.to_string();
        let mut args = vec!["--stake", stake.as_str()];
        if let Some(l) = &a.llm {
            args.extend(["--llm", l.as_str(), "--llm-context", llm_context.as_str()]);
        }
        if let Some(e) = &encoder {
            args.extend(["--embedding", e.as_str()]);
        }
        let (url, addr) = start_node(
            &rt,
            &admin,
            &mut procs,
            &format!("node-{i}"),
            &nd,
            port,
            &rpc,
            &contracts,
            &args,
        )?;
        println!(
            "node {i}     {url}  {addr}  (data {}, log {})",
            nd.display(),
            nd.join("node.log").display()
        );
        endpoints.push((url, addr));
    }
    // A watcher: re-executes every optimistic claim and challenges wrong ones.
    let wd = dir.join("watcher");
    let watch_port = (a.port + 1 + a.nodes as u16).to_string();
    let (wurl, waddr) = start_node(
        &rt,
        &admin,
        &mut procs,
        "watcher",
        &wd,
        0,
        &rpc,
        &contracts,
        &[
            "--listen",
            &format!("127.0.0.1:{watch_port}"),
            "--peer",
            &endpoints[0].0,
        ],
    )?;
    println!(
        "watcher    {wurl}  {waddr}  re-executes every optimistic claim (verity watch; log {})",
        wd.join("node.log").display()
    );

    // 4. demo models on every node and in the ModelRegistry (publisher: anvil account #1).
    let publisher = SecretKey::from_hex(DEV_KEYS[1])?;
    let pub_chain = connect(&rt, &rpc, &dep, &publisher)?;
    let key_file = dir.join("publisher.key");
    std::fs::write(&key_file, DEV_KEYS[1])?;
    let mdir = dir.join("models");
    std::fs::create_dir_all(&mdir)?;
    let mut models = Vec::new();
    for name in ["mlp", "cnn"] {
        let onnx = a.models.join(format!("{name}.onnx"));
        if !onnx.exists() {
            println!("model      {name}: {} not found, skipped", onnx.display());
            continue;
        }
        let vty = mdir.join(format!("{name}.vty"));
        if !vty.exists() {
            verity(
                &[
                    "model",
                    "compile",
                    onnx.to_str().unwrap_or_default(),
                    "-o",
                    vty.to_str().unwrap_or_default(),
                ],
                &[],
            )?;
        }
        let (m, id) = crate::load_model(&vty)?;
        // Published on node 0 only: the others replicate it once it is registered on-chain.
        verity(
            &[
                "model",
                "publish",
                vty.to_str().unwrap_or_default(),
                "--name",
                name,
                "--version",
                "1.0.0",
                "--node",
                &endpoints[0].0,
            ],
            &[("VERITY_KEY_FILE", key_file.to_str().unwrap_or_default())],
        )?;
        let price = verity_chain::ether(1) / U256::from(1000);
        let tx = match rt
            .block_on(pub_chain.register_model(&id, name, "1.0.0", &Hash::ZERO, price))
            .map_err(|e| anyhow!("{e}"))?
        {
            Some((tx, gas)) => format!("tx {tx}, gas {gas}"),
            None => "already registered".to_string(),
        };
        // Its inputs at the OpenGradient front door, which then fixes each request's input hash.
        rt.block_on(pub_chain.set_input_spec(&id, &m))
            .map_err(|e| anyhow!("{e}"))?;
        println!(
            "model      {name}@1.0.0  {id}  price {} per node  (published on node 0; registered: {tx})",
            eth(price)
        );
        models.push((name, id, vty));
    }
    // Every node hosts every model (policy `all`): wait until all announce them in the NodeRegistry.
    let start = Instant::now();
    for (name, id, _) in &models {
        loop {
            let hosts = rt
                .block_on(pub_chain.hosts_of(*id))
                .map_err(|e| anyhow!("{e}"))?;
            if endpoints.iter().all(|e| hosts.contains(&e.1)) {
                println!(
                    "replicated {name} on all {} nodes, announced in the NodeRegistry ({:.1} s)",
                    endpoints.len(),
                    start.elapsed().as_secs_f64()
                );
                break;
            }
            if start.elapsed() > Duration::from_secs(120) {
                bail!(
                    "{name} was not replicated to every node within 120 s (hosts: {hosts:?}; see the node logs in {})",
                    dir.display()
                );
            }
            std::thread::sleep(Duration::from_millis(300));
        }
    }
    // Deposits in the OpenGradient front door for the client and SDK accounts (#2, #3).
    if let Some(og) = dep.opengradient {
        for k in &DEV_KEYS[2..] {
            let key = SecretKey::from_hex(k)?;
            let c = connect(&rt, &rpc, &dep, &key)?;
            let front = verity_chain::bindings::OpenGradientInference::new(
                verity_chain::to_evm(&og),
                c.provider().clone(),
            );
            let have = rt
                .block_on(async {
                    front
                        .deposits(verity_chain::to_evm(&key.address()))
                        .call()
                        .await
                })
                .unwrap_or_default();
            if have < verity_chain::ether(1) / U256::from(10) {
                rt.block_on(c.send("depositing", || {
                    front
                        .deposit()
                        .value(verity_chain::ether(1))
                        .into_transaction_request()
                }))
                .map_err(|e| anyhow!("{e}"))?;
            }
        }
        println!("opengradient  accounts #2 and #3 have 1 ETH deposited; SDK: opengradient.Alpha(private_key, rpc_url=\"{rpc}\", inference_contract_address=\"{og}\", api_url=\"{}\")", endpoints[0].0);
    }
    let summary = json!({
        "rpc": rpc,
        "contracts": dep,
        "nodes": endpoints.iter().map(|(u, a)| json!({"url": u, "address": a})).collect::<Vec<_>>(),
        "watcher": {"url": wurl, "address": waddr},
        "models": models.iter().map(|(n, id, _)| json!({"name": n, "version": "1.0.0", "model_id": id})).collect::<Vec<_>>(),
        "llm": a.llm.as_ref().map(|l| json!({"model": llm_name(l), "openai_base_url": format!("{}/v1", endpoints[0].0)})),
        "embedding": encoder.as_ref().map(|e| json!({"model": embedding_name(e), "openai_base_url": format!("{}/v1", endpoints[0].0)})),
        "client_key": DEV_KEYS[2],
        "sdk_key": DEV_KEYS[3],
    });
    std::fs::write(
        dir.join("devnet.json"),
        serde_json::to_string_pretty(&summary)? + "\n",
    )?;
    println!(
        "devnet     ready; summary in {}",
        dir.join("devnet.json").display()
    );

    if a.demo {
        let (name, id, vty) = models
            .first()
            .cloned()
            .ok_or_else(|| anyhow!("no demo model was published"))?;
        let input = a.models.join(format!("{name}.input.json"));
        demo(&rt, &rpc, &dep, &endpoints, name, id, &vty, &input, &dir)?;
        if dep.optimistic.is_some() {
            demo_dispute(
                &rt,
                &rpc,
                &dep,
                &admin,
                &mut procs,
                &endpoints,
                (name, id, &vty),
                &input,
                &dir,
                a.port + 2 + a.nodes as u16,
                waddr,
            )?;
        }
        demo_zk(&endpoints, name, id, &vty, &input, &dir)?;
        if let Some(l) = &a.llm {
            demo_llm(&rpc, &endpoints, l, &dir)?;
        }
        if let Some(e) = &encoder {
            demo_embeddings(&endpoints, e, &dir)?;
        }
    }
    if a.once {
        println!("stopping (--once)");
        return Ok(());
    }
    println!(
        "running; Ctrl-C or SIGTERM stops every process (state is kept in {} for the next run)",
        dir.display()
    );
    rt.block_on(stop);
    println!("stopping");
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn demo(
    rt: &tokio::runtime::Runtime,
    rpc: &str,
    dep: &Deployment,
    endpoints: &[(String, verity_core::Address)],
    name: &str,
    model_id: Hash,
    vty: &Path,
    input: &Path,
    dir: &Path,
) -> Result<()> {
    println!("\n== demo: an on-chain inference, verified ==");
    let client_key = SecretKey::from_hex(DEV_KEYS[2])?;
    let client = connect(rt, rpc, dep, &client_key)?;
    let http = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(90))
        .build()?;
    // 1. The input, hashed locally under the model's canonical quantization, and hosted on node 0.
    let (m, _) = crate::load_model(vty)?;
    let spec = input.to_str().unwrap_or_default().to_string();
    let hosted =
        crate::request::host_input(&http, &endpoints[0].0, &m, std::slice::from_ref(&spec))?;
    println!(
        "1. input    {} → canonical input hash {}, hosted at {}",
        input.display(),
        hosted.input_hash,
        hosted.uri
    );
    // 2. The request: quorum of 2, fee = price × 2.
    let reg = ModelRegistry::new(verity_chain::to_evm(&dep.models), client.provider().clone());
    let price = rt
        .block_on(client.price_of(&model_id))
        .map_err(|e| anyhow!("{e}"))?;
    let owner = rt
        .block_on(async { reg.model(to_b256(&model_id)).call().await })
        .map_err(|e| anyhow!("{e}"))?
        .owner;
    let k = 2u8.min(endpoints.len().max(1) as u8);
    let mode = if k >= 2 { Mode::Quorum } else { Mode::Signed };
    let fee = price * U256::from(k);
    let p = client.provider();
    let balances = |addrs: &[verity_chain::EvmAddress]| -> Vec<U256> {
        addrs
            .iter()
            .map(|a| {
                rt.block_on(async { p.get_balance(*a).await })
                    .unwrap_or_default()
            })
            .collect()
    };
    let mut watch: Vec<verity_chain::EvmAddress> = vec![owner];
    watch.extend(endpoints.iter().map(|e| verity_chain::to_evm(&e.1)));
    let before = balances(&watch);
    let placed = rt
        .block_on(client.request_inference(
            &model_id,
            &hosted.input_hash,
            &hosted.uri,
            mode,
            k,
            fee,
        ))
        .map_err(|e| anyhow!("{e}"))?;
    let id = placed.id;
    println!(
        "2. request  #{id} for {name} ({}, k = {k}), fee {} — tx {}, gas {}",
        verity_node::roles::chain::mode_name(mode),
        eth(fee),
        placed.tx,
        placed.gas
    );
    // 3. Wait for the nodes' receipts and finalization.
    let start = Instant::now();
    let req = crate::request::wait_settled(rt, &client, id, Duration::from_secs(100))
        .with_context(|| format!("see the node logs in {}", dir.display()))?;
    if req.status != Status::Finalized {
        bail!("request {id} ended {:?}", req.status);
    }
    let mut signers = Vec::new();
    for e in crate::request::request_events(rt, &client, placed.block, id)? {
        match &e.kind {
            verity_chain::HubEventKind::ReceiptAccepted {
                node, output_hash, ..
            } => {
                println!("3. receipt  node {node} output {output_hash} — tx {}", e.tx);
                signers.push(*node);
            }
            verity_chain::HubEventKind::Finalized { output_hash, .. } => {
                println!(
                    "   final    output hash {output_hash} after {:.1} s — tx {}",
                    start.elapsed().as_secs_f64(),
                    e.tx
                );
            }
            _ => {}
        }
    }
    // 4. The result from a node that re-executes and checks it against the finalized hashes.
    let reader = &endpoints[endpoints.len() - 1].0;
    let res = crate::request::verified_result(&http, reader, id)?;
    let out = &res["outputs"][0];
    let data: Vec<f64> = serde_json::from_value(out["data"].clone()).unwrap_or_default();
    let top = data
        .iter()
        .enumerate()
        .fold((0, f64::MIN), |b, (i, &v)| if v > b.1 { (i, v) } else { b });
    println!(
        "4. result   from {reader}: output '{}' shape {} — argmax {} ({:.4})",
        out["name"].as_str().unwrap_or(""),
        out["shape"],
        top.0,
        top.1
    );
    // 5. Verify a signer's receipt offline: signature, hub domain, model, input, output, re-execution.
    let signer = signers
        .first()
        .ok_or_else(|| anyhow!("no receipt was accepted"))?;
    let signer_url = &endpoints
        .iter()
        .find(|e| e.1 == *signer)
        .ok_or_else(|| anyhow!("signer is not a devnet node"))?
        .0;
    let rid = verity_node::roles::chain::request_hash(id);
    let receipt: Value = http
        .get(format!("{signer_url}/v1/receipts/{rid}"))
        .send()?
        .error_for_status()?
        .json()?;
    let ddir = dir.join("demo");
    std::fs::create_dir_all(&ddir)?;
    let rpath = ddir.join(format!("receipt-{id}.json"));
    let opath = ddir.join(format!("result-{id}.json"));
    std::fs::write(&rpath, serde_json::to_vec_pretty(&receipt)?)?;
    std::fs::write(&opath, serde_json::to_vec_pretty(&res)?)?;
    let verdict = verity(
        &[
            "verify",
            rpath.to_str().unwrap_or_default(),
            "--input",
            &spec,
            "--output",
            opath.to_str().unwrap_or_default(),
            "--model",
            vty.to_str().unwrap_or_default(),
            "--signer",
            &signer.to_string(),
        ],
        &[],
    )?;
    let onchain_out = from_b256(&to_b256(&req.output_hash));
    let r_out: Hash =
        serde_json::from_value(receipt["receipt"]["output_hash"].clone()).unwrap_or(Hash::ZERO);
    if r_out != onchain_out {
        bail!("the receipt's output hash {r_out} is not the finalized {onchain_out}");
    }
    println!(
        "5. verify   verity verify {} → {}",
        rpath.display(),
        verdict.trim()
    );
    // 6. Fees.
    let after = balances(&watch);
    println!(
        "6. fees     model owner {owner} +{}",
        eth(after[0] - before[0])
    );
    for (i, e) in endpoints.iter().enumerate() {
        let d = after[i + 1].saturating_sub(before[i + 1]);
        if !d.is_zero() || signers.contains(&e.1) {
            println!(
                "           node {} {} +{} (receipt gas paid by the node is netted in)",
                i,
                e.1,
                eth(d)
            );
        }
    }
    // 7. Off-chain: a quorum of nodes drawn from the registry, certified, checked offline.
    let k = endpoints.len().min(3);
    let cpath = ddir.join(format!("certificate-{id}.json"));
    let coordinator = &endpoints[endpoints.len() - 1].0;
    let t0 = Instant::now();
    verity(
        &[
            "infer",
            name,
            "--input",
            &spec,
            "--quorum",
            &k.to_string(),
            "--node",
            coordinator,
            "--certificate",
            cpath.to_str().unwrap_or_default(),
        ],
        &[],
    )?;
    let ms = t0.elapsed().as_millis();
    let verdict = verity(
        &[
            "verify",
            cpath.to_str().unwrap_or_default(),
            "--chain",
            rpc,
            "--contracts",
            dir.join("contracts.json").to_str().unwrap_or_default(),
            "--model",
            vty.to_str().unwrap_or_default(),
            "--input",
            &spec,
        ],
        &[],
    )?;
    println!(
        "7. quorum   off-chain: {k} nodes drawn from the registry agree ({ms} ms via {coordinator}); certificate {}",
        cpath.display()
    );
    println!(
        "           verity verify {} --chain … --model … --input … → {}",
        cpath.display(),
        verdict.trim().split(';').next().unwrap_or_default()
    );
    println!("== demo done ==\n");
    Ok(())
}

/// The name a `[NAME=]FILE` model is served under.
/// The encoder the nodes serve as `NAME=DIR` with an absolute directory (a node restarted from another
/// working directory finds it), unless `--embedding none`.
fn embedding(a: &DevnetArgs) -> Option<String> {
    if a.embedding == "none" {
        return None;
    }
    let c = verity_node::config::EmbeddingConfig::from_arg(&a.embedding);
    let dir = std::fs::canonicalize(&c.path).unwrap_or(c.path.clone());
    Some(format!("{}={}", c.model_name(), dir.display()))
}

fn embedding_name(spec: &str) -> String {
    verity_node::config::EmbeddingConfig::from_arg(spec).model_name()
}

/// Sentence embeddings: two sentences embedded by node 0 over the OpenAI API, the response saved and its
/// receipts re-executed offline by `verity verify` with the encoder directory.
fn demo_embeddings(
    endpoints: &[(String, verity_core::Address)],
    spec: &str,
    dir: &Path,
) -> Result<()> {
    println!("\n== demo: sentence embeddings over the OpenAI API, every vector verifiable ==");
    let cfg = verity_node::config::EmbeddingConfig::from_arg(spec);
    let model = cfg.model_name();
    let body = json!({"model": model, "input": ["Verity checks every answer.", "Every answer is checked."],
                      "encoding_format": "float"});
    let url = format!("{}/v1/embeddings", endpoints[0].0);
    let r = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(120))
        .build()?
        .post(&url)
        .json(&body)
        .send()?;
    let status = r.status();
    let v: Value = r.json()?;
    if !status.is_success() {
        bail!("{url}: HTTP {status}: {}", v["error"]["message"]);
    }
    let saved = dir.join("embeddings.json");
    std::fs::write(&saved, serde_json::to_vec_pretty(&v)?)?;
    let vecs: Vec<Vec<f64>> = v["data"]
        .as_array()
        .map(|d| {
            d.iter()
                .map(|e| serde_json::from_value(e["embedding"].clone()).unwrap_or_default())
                .collect()
        })
        .unwrap_or_default();
    let cos = match vecs.as_slice() {
        [x, y] => {
            let dot: f64 = x.iter().zip(y).map(|(a, b)| a * b).sum();
            let n = |v: &[f64]| v.iter().map(|a| a * a).sum::<f64>().sqrt();
            dot / (n(x) * n(y)).max(1e-12)
        }
        _ => bail!("{url}: expected two embeddings"),
    };
    println!(
        "12. embed   {url} (model {model}): 2 vectors of {} dimensions, cosine {cos:.4}, {} tokens, a \
         receipt each",
        vecs[0].len(),
        v["usage"]["prompt_tokens"]
    );
    let path = cfg.path.to_string_lossy().to_string();
    let verdict = verity(
        &[
            "verify",
            saved.to_str().unwrap_or_default(),
            "--model",
            path.as_str(),
        ],
        &[],
    )?;
    println!(
        "            verity verify {} --model {path} → {}",
        saved.display(),
        verdict.trim().split(';').next().unwrap_or_default()
    );
    println!("== embeddings demo done ==\n");
    Ok(())
}

fn llm_name(spec: &str) -> String {
    verity_node::config::LlmConfig::from_arg(spec).model_name()
}

/// The language model: a chat completion from node 0 with its receipt checked offline, then the same
/// question answered by a quorum of 3 nodes drawn from the registry, its certificate checked against the
/// chain.
fn demo_llm(
    rpc: &str,
    endpoints: &[(String, verity_core::Address)],
    llm: &str,
    dir: &Path,
) -> Result<()> {
    println!("\n== demo: a language model over the OpenAI API, every answer verifiable ==");
    let model = llm_name(llm);
    let http = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(300))
        .build()?;
    let body = json!({
        "model": model,
        "messages": [{"role": "user", "content": "What is 12 times 7?"}],
        "temperature": 0,
        "max_tokens": 32,
    });
    let post = |url: String| -> Result<Value> {
        let r = http.post(&url).json(&body).send()?;
        let status = r.status();
        let v: Value = r.json()?;
        if !status.is_success() {
            bail!("{url}: HTTP {status}: {}", v["error"]["message"]);
        }
        Ok(v)
    };
    let c = post(format!("{}/v1/chat/completions", endpoints[0].0))?;
    let saved = dir.join("chat.json");
    std::fs::write(&saved, serde_json::to_vec_pretty(&c)?)?;
    println!(
        "10. chat    {}/v1/chat/completions (model {model}): {:?}",
        endpoints[0].0,
        c["choices"][0]["message"]["content"]
            .as_str()
            .unwrap_or_default()
    );
    println!(
        "            {} output tokens, receipt signed by {}; any OpenAI client works: base_url {}/v1",
        c["usage"]["completion_tokens"],
        c["receipt"]["receipt"]["node"].as_str().unwrap_or_default(),
        endpoints[0].0
    );
    let verdict = verity(&["verify", saved.to_str().unwrap_or_default()], &[])?;
    println!(
        "            verity verify {} → {}",
        saved.display(),
        verdict.trim().split(';').next().unwrap_or_default()
    );
    let gguf = verity_node::config::LlmConfig::from_arg(llm).path;
    stream_with_openai_sdk(&endpoints[0].0, &model, &endpoints[0].1, &gguf, dir)?;
    let t0 = Instant::now();
    let q = post(format!(
        "{}/v1/chat/completions?quorum=3",
        endpoints[endpoints.len() - 1].0
    ))?;
    let qpath = dir.join("chat-quorum.json");
    std::fs::write(&qpath, serde_json::to_vec_pretty(&q)?)?;
    let same = q["verity"]["output_tokens"] == c["verity"]["output_tokens"];
    println!(
        "11. quorum  ?quorum=3: 3 nodes drawn from the registry generate the same {} tokens{} ({} ms)",
        q["usage"]["completion_tokens"],
        if same { ", the answer above" } else { "" },
        t0.elapsed().as_millis()
    );
    let verdict = verity(
        &[
            "verify",
            qpath.to_str().unwrap_or_default(),
            "--chain",
            rpc,
            "--contracts",
            dir.join("contracts.json").to_str().unwrap_or_default(),
        ],
        &[],
    )?;
    println!(
        "            verity verify {} --chain … → {}",
        qpath.display(),
        verdict.trim().split(';').next().unwrap_or_default()
    );
    println!("== language-model demo done ==\n");
    Ok(())
}

/// The Python client that streams a chat through the `openai` SDK and checks each chunk, run with the
/// interpreter named by `VERITY_DEMO_PYTHON` (one with `openai` and `eth_account`; `scripts/demo` makes
/// one); without it the step is skipped, said once. Its saved answer is then re-executed by `verity verify`
/// with the GGUF.
const CHAT_CLIENT: &str = "clients/python/chat_demo.py";

fn stream_with_openai_sdk(
    base: &str,
    model: &str,
    node: &verity_core::Address,
    gguf: &Path,
    dir: &Path,
) -> Result<()> {
    let Some(python) = std::env::var_os("VERITY_DEMO_PYTHON") else {
        println!("            (set VERITY_DEMO_PYTHON to a Python with openai and eth_account to stream a chat through the openai SDK, each chunk checked)");
        return Ok(());
    };
    if !Path::new(CHAT_CLIENT).exists() {
        println!("            ({CHAT_CLIENT} is not under the current directory: the streamed chat is skipped)");
        return Ok(());
    }
    let saved = dir.join("chat-stream.json");
    let out = Command::new(&python)
        .arg(CHAT_CLIENT)
        .args(["--base-url", &format!("{base}/v1"), "--model", model])
        .args(["--node", &node.to_string()])
        .arg("--save")
        .arg(&saved)
        .output()
        .with_context(|| format!("cannot run {}", Path::new(&python).display()))?;
    if !out.status.success() {
        bail!(
            "{CHAT_CLIENT} failed: {}{}",
            String::from_utf8_lossy(&out.stderr).trim(),
            String::from_utf8_lossy(&out.stdout).trim()
        );
    }
    println!("10b. openai  the openai SDK streams a chat from {base}/v1, checking every chunk as it comes:");
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        println!("            {line}");
    }
    let verdict = verity(
        &[
            "verify",
            saved.to_str().unwrap_or_default(),
            "--model",
            gguf.to_str().unwrap_or_default(),
        ],
        &[],
    )?;
    println!(
        "            verity verify {} --model {} → {}",
        saved.display(),
        gguf.display(),
        verdict.trim()
    );
    Ok(())
}

/// Place requests (`place`) until one is drawn for `liar`, printing who each was drawn for; at most 12.
/// `drawn(id)` is the request's first assigned node, `Ok(Err(why))` while it cannot be read yet (retried
/// for 20 s), or an error that ends the demo.
fn until_drawn(
    model: &str,
    mode: &str,
    fee: String,
    liar: verity_core::Address,
    name_of: &dyn Fn(verity_core::Address) -> String,
    mut place: impl FnMut() -> Result<verity_chain::evm::Placed>,
    mut drawn: impl FnMut(u64) -> Result<std::result::Result<verity_core::Address, String>>,
) -> Result<verity_chain::evm::Placed> {
    for _ in 0..12 {
        let placed = place()?;
        let start = Instant::now();
        let who = loop {
            match drawn(placed.id)? {
                Ok(a) => break a,
                Err(_) if start.elapsed() < Duration::from_secs(20) => {
                    std::thread::sleep(Duration::from_millis(250))
                }
                Err(e) => bail!("no assignment for {mode} request {}: {e}", placed.id),
            }
        };
        println!(
            "   request  #{} for {model} ({mode}, fee {fee}) drawn: {}",
            placed.id,
            name_of(who)
        );
        if who == liar {
            return Ok(placed);
        }
    }
    bail!("the liar was not drawn in 12 {mode} requests")
}

/// zk mode: a node proves an inference; the proof is checked offline with the model alone.
fn demo_zk(
    endpoints: &[(String, verity_core::Address)],
    name: &str,
    id: Hash,
    vty: &Path,
    input: &Path,
    dir: &Path,
) -> Result<()> {
    println!("== demo, part 3: zk mode, a proof anyone can check offline ==");
    let spec = input.display().to_string();
    let ddir = dir.join("demo");
    std::fs::create_dir_all(&ddir)?;
    let zpath = ddir.join(format!("proof-{id}.zk"));
    let resp = verity(
        &[
            "infer",
            name,
            "--input",
            &spec,
            "--node",
            &endpoints[0].0,
            "--zk-proof",
            zpath.to_str().unwrap_or_default(),
        ],
        &[],
    )?;
    let resp: Value = serde_json::from_str(&resp).context("the zk inference response")?;
    let verdict = verity(
        &[
            "verify",
            zpath.to_str().unwrap_or_default(),
            "--model",
            vty.to_str().unwrap_or_default(),
        ],
        &[],
    )?;
    let v: Value = serde_json::from_str(&verdict).context("the proof verdict")?;
    if v["valid"] != json!(true) || v["output_hash"] != resp["zk"]["output_hash"] {
        bail!("the zk proof did not verify: {verdict}");
    }
    println!(
        "1. prove    node {} proved the inference in {:.0} ms ({} kB proof, statement: model {id}, output {})",
        endpoints[0].1,
        resp["zk"]["prove_ms"].as_f64().unwrap_or(0.0),
        resp["zk"]["proof_bytes"].as_u64().unwrap_or(0) / 1000,
        v["output_hash"].as_str().unwrap_or_default()
    );
    println!(
        "2. verify   verity verify {} --model … → valid, checked offline in {:.1} ms (no re-execution, no trust in the node)",
        zpath.display(),
        v["verify_ms"].as_f64().unwrap_or(0.0)
    );
    println!("== zk demo done ==\n");
    Ok(())
}

/// The optimistic story: a node that lies (its answers are wrong at one element of the output node) joins
/// with a large stake; optimistic requests are placed until one is assigned to it; it commits its wrong
/// result, the devnet's watcher re-executes, challenges and wins the bisection game on-chain; the liar is
/// slashed and the honest result finalizes. Afterwards the liar is stopped and unbonds.
#[allow(clippy::too_many_arguments)]
fn demo_dispute(
    rt: &tokio::runtime::Runtime,
    rpc: &str,
    dep: &Deployment,
    admin: &EvmChain,
    procs: &mut Procs,
    endpoints: &[(String, verity_core::Address)],
    (name, model_id, vty): (&str, Hash, &Path),
    input: &Path,
    dir: &Path,
    port: u16,
    watcher: verity_core::Address,
) -> Result<()> {
    use verity_chain::dispute::OptEventKind;
    println!("== demo, part 2: optimistic mode, a lying node caught by a watcher ==");
    // A fresh liar every run (earlier ones unbonded), staking enough to be drawn most of the time.
    let ld = dir.join("node-liar");
    if ld.exists() {
        std::fs::remove_dir_all(&ld)?;
    }
    let stake = verity_chain::ether(50).to_string();
    let (lurl, liar) = start_node(
        rt,
        admin,
        procs,
        "node-liar",
        &ld,
        port,
        rpc,
        &dir.join("contracts.json"),
        &[
            "--stake",
            &stake,
            "--peer",
            &endpoints[0].0,
            "--fault",
            "corrupt-op=output",
        ],
    )?;
    println!(
        "8. liar     {lurl}  {liar}  stake {}; started with --fault corrupt-op=output (its answers flip one bit of the output: wrong, with a trace that leads to them)",
        eth(verity_chain::ether(50))
    );
    let client = connect(rt, rpc, dep, &SecretKey::from_hex(DEV_KEYS[2])?)?;
    let http = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()?;
    let (m, _) = crate::load_model(vty)?;
    let spec = input.to_str().unwrap_or_default().to_string();
    let hosted =
        crate::request::host_input(&http, &endpoints[0].0, &m, std::slice::from_ref(&spec))?;
    let price = rt
        .block_on(client.price_of(&model_id))
        .map_err(|e| anyhow!("{e}"))?;
    let stake_of = |a: verity_core::Address| -> Result<U256> {
        let info = rt
            .block_on(client.node_info(a))
            .map_err(|e| anyhow!("{e}"))?
            .ok_or_else(|| anyhow!("{a} is not registered"))?;
        info.stake.parse().map_err(|_| anyhow!("bad stake"))
    };
    let before = stake_of(liar)?;
    let name_of = |a: verity_core::Address| -> String {
        match endpoints.iter().position(|e| e.1 == a) {
            Some(i) => format!("node {i}"),
            None if a == liar => "the liar".into(),
            None if a == watcher => "the watcher".into(),
            None => a.to_string(),
        }
    };
    // Requests until one lands on the liar (each is drawn by stake from the request's seed block).
    let placed = until_drawn(
        name,
        "optimistic",
        eth(price),
        liar,
        &name_of,
        || {
            rt.block_on(client.request_optimistic(
                &model_id,
                &hosted.input_hash,
                &hosted.uri,
                price,
            ))
            .map_err(|e| anyhow!("{e}"))
        },
        // not drawn yet (the seed block is not mined) until it is
        |id| {
            Ok(rt
                .block_on(client.optimistic_assigned(id))
                .map_err(|e| e.to_string()))
        },
    )?;
    let id = placed.id;
    // Follow the request's events until the honest result is final.
    let times = std::cell::RefCell::new((None, None, None));
    let hint = format!("logs in {}", dir.display());
    let show = |e: &verity_chain::dispute::OptEvent, t: f64| -> Result<()> {
        match e.kind.clone() {
            OptEventKind::Claimed {
                owner,
                output_hash,
                trace_root,
                window_end,
                ..
            } => {
                times.borrow_mut().0.get_or_insert(t);
                println!(
                    "   claim    {} says output {output_hash}, trace {trace_root}; window until block {window_end} — tx {} ({t:.1} s)",
                    name_of(owner),
                    e.tx
                );
            }
            OptEventKind::Challenged {
                game, challenger, ..
            } => println!(
                "   watcher  {} re-executed, found another output, challenged: game {game} — tx {} ({t:.1} s)",
                name_of(challenger),
                e.tx
            ),
            OptEventKind::Resolved {
                game,
                winner,
                loser,
                moves,
                reason,
                ..
            } => {
                times.borrow_mut().1 = Some(t);
                let g = rt.block_on(client.game(game)).map_err(|e| anyhow!("{e}"))?;
                let node = g.leaf.saturating_sub(g.inputs);
                println!(
                    "   game {game}   won by {} against {} after {moves} moves ({reason}): bisected to node {node} ({}), element word {} — tx {} ({t:.1} s)",
                    name_of(winner),
                    name_of(loser),
                    m.nodes
                        .get(node as usize)
                        .map(|n| n.op.name())
                        .unwrap_or("?"),
                    g.index,
                    e.tx
                );
            }
            OptEventKind::Finalized {
                output_hash, owner, ..
            } => {
                times.borrow_mut().2 = Some(t);
                println!(
                    "   final    output {output_hash} (claim of {}) — tx {} ({t:.1} s)",
                    name_of(owner),
                    e.tx
                );
            }
            _ => {}
        }
        Ok(())
    };
    let (final_out, _) = crate::request::follow_optimistic(
        rt,
        &client,
        id,
        placed.block,
        Duration::from_secs(240),
        &hint,
        &show,
    )?;
    // The final output is the honest one: the canonical execution here gives the same hash.
    let (_, honest) = crate::request::run_here(&m, std::slice::from_ref(&spec))?;
    if final_out != honest {
        bail!("request {id} finalized {final_out}, not the honest output {honest}");
    }
    let after = stake_of(liar)?;
    println!(
        "   slashed  the liar's stake {} → {} (its whole stake and its bond: half to the watcher, half burned)",
        eth(before),
        eth(after)
    );
    if let (Some(c), Some(r), Some(f)) = *times.borrow() {
        println!(
            "   time     lie committed → liar slashed {:.1} s; → honest result final {:.1} s (1 s blocks)",
            r - c,
            f - c
        );
    }

    // Signed mode: the liar stakes again and answers hub requests from the same wrong trace. Its receipt
    // alone finalizes a request; the watcher audits every accepted receipt, disputes the wrong one at
    // the ReceiptCourt, and wins the same game: the liar loses its stake again.
    println!("== demo, part 2b: signed mode, a wrong receipt disputed at the ReceiptCourt ==");
    let lkey = verity_node::key::read_key_file(&ld.join("node.key")).map_err(|e| anyhow!(e))?;
    let lchain = connect(rt, rpc, dep, &lkey)?;
    rt.block_on(lchain.add_stake(verity_chain::ether(50)))
        .map_err(|e| anyhow!("{e}"))?;
    let before = stake_of(liar)?;
    println!("   restake  the liar stakes {} again", eth(before));
    let placed = until_drawn(
        name,
        "signed",
        eth(price),
        liar,
        &name_of,
        || {
            rt.block_on(client.request_inference(
                &model_id,
                &hosted.input_hash,
                &hosted.uri,
                Mode::Signed,
                1,
                price,
            ))
            .map_err(|e| anyhow!("{e}"))
        },
        |id| match rt.block_on(client.assignment(id)) {
            Ok(verity_chain::Assignment::Nodes(v)) if !v.is_empty() => Ok(Ok(v[0])),
            Ok(verity_chain::Assignment::Expired) => {
                bail!("the seed block of request {id} expired")
            }
            r => Ok(Err(format!("{r:?}"))),
        },
    )?;
    let req = crate::request::wait_settled(rt, &client, placed.id, Duration::from_secs(60))?;
    if req.status != Status::Finalized {
        bail!("request {} ended {:?}", placed.id, req.status);
    }
    println!(
        "   receipt  the liar signed output {} (the canonical output is {honest}); its receipt alone finalized request #{}",
        req.output_hash, placed.id
    );
    // The watcher's dispute: an OptimisticHub game against the liar's receipt.
    let start = Instant::now();
    let mut from = placed.block;
    let dispute = 'found: loop {
        if start.elapsed() > Duration::from_secs(90) {
            bail!("the watcher did not dispute the wrong receipt within 90 s ({hint})");
        }
        std::thread::sleep(Duration::from_millis(250));
        let head = rt
            .block_on(client.head())
            .map_err(|e| anyhow!("{e}"))?
            .number;
        if head < from {
            continue;
        }
        for e in rt
            .block_on(client.optimistic_events(from, head))
            .map_err(|e| anyhow!("{e}"))?
        {
            if let OptEventKind::Challenged { id, defender, .. } = e.kind {
                if defender == liar {
                    break 'found (id, e.block);
                }
            }
        }
        from = head + 1;
    };
    println!(
        "   court    the watcher re-executed the receipt, disputed it at the ReceiptCourt ({}): dispute #{}",
        dep.court.map(|c| c.to_string()).unwrap_or_default(),
        dispute.0
    );
    crate::request::follow_optimistic(
        rt,
        &client,
        dispute.0,
        dispute.1,
        Duration::from_secs(240),
        &hint,
        &show,
    )?;
    let slashed = stake_of(liar)?;
    println!(
        "   slashed  the liar's stake {} → {} (its whole stake: half to the watcher, half burned)",
        eth(before),
        eth(slashed)
    );
    // The liar leaves: its process stops, its remaining stake unbonds (it is no longer drawn).
    if let Some(i) = procs.0.iter().position(|p| p.0 == "node-liar") {
        let (_, mut child) = procs.0.remove(i);
        let _ = child.kill();
        let _ = child.wait();
    }
    if !slashed.is_zero() {
        rt.block_on(lchain.request_unbond(slashed))
            .map_err(|e| anyhow!("{e}"))?;
    }
    println!(
        "   the liar stopped; it is no longer drawn (stake {})",
        eth(slashed)
    );
    println!("== dispute demos done ==\n");
    Ok(())
}
