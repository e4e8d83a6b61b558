//! The Verity node daemon: hosts canonical models (content-addressed, chunked, with signed manifests),
//! serves inference over a native JSON API and the KServe v2 / Open Inference Protocol, and signs an
//! EIP-712 receipt for every result.
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

pub mod config;
pub mod error;
pub mod key;
pub mod metrics;
pub mod server;
pub mod state;
pub mod tensors;

pub use config::NodeConfig;
pub use error::ApiError;
pub use state::Node;

/// Open the store and key for `config`, bind the listener, and serve until `shutdown` resolves.
/// `on_ready` is called with the bound address and the node's address once accepting.
pub async fn run(
    config: NodeConfig,
    env_key: Option<String>,
    shutdown: impl std::future::Future<Output = ()>,
    on_ready: impl FnOnce(std::net::SocketAddr, verity_core::Address),
) -> Result<(), String> {
    config.validate()?;
    std::fs::create_dir_all(&config.data_dir)
        .map_err(|e| format!("cannot create data dir {}: {e}", config.data_dir.display()))?;
    let (key, created) = key::load_or_create(&config.key_path(), env_key.as_deref())?;
    if created {
        tracing::info!(path = %config.key_path().display(), address = %key.address(), "created node key");
    }
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
    let node = Node::new(config, store, key);
    tracing::info!(listen = %addr, address = %node.address(), "node started");
    on_ready(addr, node.address());
    server::serve(node, listener, shutdown)
        .await
        .map_err(|e| format!("server error: {e}"))?;
    tracing::info!("node stopped");
    Ok(())
}
