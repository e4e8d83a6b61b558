//! The Verity node daemon: hosts canonical models (content-addressed, chunked, with signed manifests),
//! serves inference over a native JSON API and the KServe v2 / Open Inference Protocol, and signs an
//! EIP-712 receipt for every result.
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

// The layout, from the bottom up: settings and shared pieces (`config`, `clock`, `key`, `error`, `metrics`,
// `tensors`, `jobs`, `compile`), the served language models (`llm`), the node's shared state (`state`),
// the roles it plays (`roles`: chain participant, replicator, quorum coordinator, optimistic player and
// watcher), and on top the HTTP surfaces (`api`: native and KServe v2, OpenAI, OpenGradient, chain
// endpoints). Each layer imports only those below it.
pub mod api;
pub mod clock;
pub mod compile;
pub mod config;
pub mod embed;
pub mod error;
pub mod jobs;
pub mod key;
pub mod llm;
pub mod metrics;
pub mod roles;
pub mod state;
pub mod tensors;

pub use config::NodeConfig;
pub use error::ApiError;
pub use state::Node;

/// Open the store and key for `config`, bind the listener, and serve until `shutdown` resolves.
/// `on_ready` is called with the bound address and the node's address once accepting.
pub async fn run(
    mut config: NodeConfig,
    env_key: Option<String>,
    shutdown: impl std::future::Future<Output = ()>,
    on_ready: impl FnOnce(std::net::SocketAddr, verity_core::Address),
) -> Result<(), String> {
    config.validate()?;
    std::fs::create_dir_all(&config.data_dir)
        .map_err(|e| format!("cannot create data dir {}: {e}", config.data_dir.display()))?;
    // uploads left by a process that stopped while receiving them
    let _ = std::fs::remove_dir_all(config.data_dir.join("uploads"));
    let (key, created) = key::load_or_create(&config.key_path(), env_key.as_deref())?;
    if created {
        tracing::info!(path = %config.key_path().display(), address = %key.address(), "created node key");
    }
    let deployment = deployment(&mut config)?;
    let store = verity_store::Store::open(&config.data_dir).map_err(|e| {
        format!(
            "cannot open the store in {}: {e}",
            config.data_dir.display()
        )
    })?;
    let listener = tokio::net::TcpListener::bind(&config.listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", config.listen))?;
    let addr = listener
        .local_addr()
        .map_err(|e| format!("cannot read the bound address: {e}"))?;
    let chain_cfg = config.chain.clone();
    let node = Node::new(config, store, key);
    load_served_models(&node).await?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let tasks = match (chain_cfg, deployment) {
        (Some(cfg), Some(dep)) => start_roles(&node, &cfg, &dep, addr, stop_rx).await?,
        _ => Vec::new(),
    };
    tracing::info!(listen = %addr, address = %node.address(), "node started");
    on_ready(addr, node.address());
    let served = api::server::serve(node, listener, shutdown).await;
    let _ = stop_tx.send(true);
    for t in tasks {
        // a chain loop in the middle of an RPC call is not waited for long
        if tokio::time::timeout(std::time::Duration::from_secs(1), t)
            .await
            .is_err()
        {
            tracing::warn!("a chain task did not stop within 1 s; leaving it");
        }
    }
    served.map_err(|e| format!("server error: {e}"))?;
    tracing::info!("node stopped");
    Ok(())
}

/// The contracts a chain-connected node uses. In chain mode the receipts this node gives over HTTP are
/// signed for the ReceiptCourt (where they can be disputed; no hub accepts them), so `config`'s receipt
/// domain becomes the court's; receipts for hub requests are signed for the hub, per request.
fn deployment(config: &mut NodeConfig) -> Result<Option<verity_chain::Deployment>, String> {
    let Some(c) = &config.chain else {
        return Ok(None);
    };
    let d = verity_chain::Deployment::load(&c.contracts).map_err(|e| e.to_string())?;
    config.chain_id = d.chain_id;
    config.verifying_contract = d.court.ok_or_else(|| {
        format!(
            "the contracts file {} names no ReceiptCourt (deployed by an older Verity): redeploy the contracts",
            c.contracts.display()
        )
    })?;
    Ok(Some(d))
}

/// Load the language and embedding models the configuration serves (on a blocking thread: imports and
/// compiles take seconds).
async fn load_served_models(node: &std::sync::Arc<Node>) -> Result<(), String> {
    let c = &node.config;
    if !c.llm.is_empty() {
        let (configs, threads) = (c.llm.clone(), c.workers.max(1));
        let llms = tokio::task::spawn_blocking(move || llm::load_all(&configs, threads))
            .await
            .map_err(|e| format!("loading the language models failed: {e}"))??;
        let _ = node.llms.set(llms);
    }
    if !c.embedding.is_empty() {
        let (configs, data_dir) = (c.embedding.clone(), c.data_dir.clone());
        let models = tokio::task::spawn_blocking(move || embed::load_all(&configs, &data_dir))
            .await
            .map_err(|e| format!("loading the embedding models failed: {e}"))??;
        let _ = node.embeddings.set(models);
    }
    Ok(())
}

/// Connect to the chain and start the roles the configuration asks for: the InferenceHub participant
/// (registered with its stake first) unless watch-only, and the optimistic player or watcher. Their
/// tasks stop when `stop` turns true.
async fn start_roles(
    node: &std::sync::Arc<Node>,
    cfg: &config::ChainConfig,
    dep: &verity_chain::Deployment,
    addr: std::net::SocketAddr,
    stop: tokio::sync::watch::Receiver<bool>,
) -> Result<Vec<tokio::task::JoinHandle<()>>, String> {
    let mut tasks = Vec::new();
    let chain = std::sync::Arc::new(roles::chain::connect(cfg, &node.key).await?);
    let _ = node.chain.set(chain.clone());
    let poll = std::time::Duration::from_millis(cfg.poll_ms.max(50));
    if !cfg.watch_only {
        let endpoint = cfg
            .endpoint
            .clone()
            .unwrap_or_else(|| format!("http://{addr}"));
        roles::chain::ensure_registered(chain.as_ref(), node, &endpoint, &cfg.stake).await?;
        tracing::info!(hub = %dep.hub, chain_id = dep.chain_id, "watching the InferenceHub");
        tasks.push(tokio::spawn(roles::chain::run_loop(
            node.clone(),
            chain.clone(),
            dep.deploy_block,
            poll,
            stop.clone(),
        )));
    }
    let o = &cfg.optimistic;
    // A staked node always takes part: any receipt it signs can be disputed through the
    // OptimisticHub's game, which it must defend (committing answers is `serve`).
    let active = !cfg.watch_only || o.watch_rate > 0.0;
    match dep.optimistic {
        Some(hub) if active => {
            tracing::info!(%hub, serve = o.serve && !cfg.watch_only, watch_rate = o.watch_rate, "taking part in optimistic mode");
            let p =
                roles::optimistic::Optimistic::new(node.clone(), chain, o.clone(), cfg.watch_only);
            tasks.push(tokio::spawn(p.run_loop(dep.deploy_block, poll, stop)));
        }
        None if cfg.watch_only => {
            return Err(format!(
                "{} has no OptimisticHub: nothing to watch",
                cfg.contracts.display()
            ))
        }
        _ => {}
    }
    Ok(tasks)
}
