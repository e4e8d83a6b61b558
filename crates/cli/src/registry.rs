//! The on-chain side of a model: `verity model register` (a published model into the ModelRegistry, with
//! its price and signed-manifest digest, and its inputs stated at the OpenGradient front door), and
//! `verity model ls|show --chain` (what the registry holds, and which nodes announce each model).

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use clap::Args;
use serde_json::{json, Value};
use verity_chain::{Chain, Deployment, EvmChain, RegisteredModel, U256};
use verity_core::{Hash, SignedManifest};

use crate::net::{KeyArgs, NodeUrl};

/// Where the chain and the contracts are.
#[derive(Args, Debug, Clone)]
pub struct ChainArgs {
    /// JSON-RPC URL of the chain.
    #[arg(long = "chain", env = "VERITY_CHAIN")]
    pub rpc: String,
    /// Deployment file (contract addresses), e.g. `<devnet dir>/contracts.json`.
    #[arg(long, env = "VERITY_CONTRACTS")]
    pub contracts: PathBuf,
}

impl ChainArgs {
    /// Connect (with `key` signing transactions, if given) and a runtime to drive the calls.
    fn connect(
        &self,
        key: Option<&verity_core::SecretKey>,
    ) -> Result<(tokio::runtime::Runtime, EvmChain)> {
        let dep = Deployment::load(&self.contracts).map_err(|e| anyhow!("{e}"))?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let chain = rt
            .block_on(EvmChain::connect(&self.rpc, dep, key))
            .map_err(|e| anyhow!("{e}"))?;
        Ok((rt, chain))
    }
}

/// Parse an amount of ether: wei as a whole number (`1000000000000000`), or a decimal with a unit
/// (`0.001eth`, `0.001 ETH`, `5gwei`, `42wei`).
pub fn parse_amount(s: &str) -> Result<U256> {
    let t = s.trim().to_ascii_lowercase();
    let (num, decimals) = if let Some(n) = t.strip_suffix("gwei") {
        (n, 9)
    } else if let Some(n) = t.strip_suffix("wei") {
        (n, 0)
    } else if let Some(n) = t.strip_suffix("ether").or_else(|| t.strip_suffix("eth")) {
        (n, 18)
    } else {
        (t.as_str(), 0)
    };
    let num = num.trim();
    let bad =
        || anyhow!("'{s}' is not an amount (write wei as a whole number, or e.g. 0.001eth, 5gwei)");
    let (whole, frac) = num.split_once('.').unwrap_or((num, ""));
    if whole.is_empty() && frac.is_empty()
        || !whole.chars().all(|c| c.is_ascii_digit())
        || !frac.chars().all(|c| c.is_ascii_digit())
    {
        return Err(bad());
    }
    if frac.len() > decimals {
        bail!("'{s}' has more decimals than the unit allows (the smallest amount is 1 wei)");
    }
    let digits = format!("{whole}{frac:0<decimals$}");
    U256::from_str_radix(if digits.is_empty() { "0" } else { &digits }, 10).map_err(|_| bad())
}

/// `verity model register` arguments.
#[derive(Args, Debug)]
pub struct RegisterArgs {
    /// The model: `0x<model id>`, `name@version` or `name` (latest) as published on --node, or its `.vty`
    /// file (then published on --node already, under the name it is registered with).
    model: String,
    /// Price per inference per node: wei, or e.g. `0.001eth`.
    #[arg(long)]
    price: String,
    #[command(flatten)]
    chain: ChainArgs,
    #[command(flatten)]
    key: KeyArgs,
    #[command(flatten)]
    node: NodeUrl,
}

/// `verity model register`.
pub fn cmd_register(a: RegisterArgs) -> Result<()> {
    let price = parse_amount(&a.price)?;
    let key = a.key.load()?;
    let base = a.node.base();
    let http = crate::net::client(Duration::from_secs(600))?;
    let wanted = if Path::new(&a.model).is_file() {
        let (_, id) = crate::load_model(Path::new(&a.model))?;
        id.to_string()
    } else {
        a.model.clone()
    };
    // The node must host it: other nodes replicate a registered model from the nodes that do.
    let url = format!("{base}/v1/models/{wanted}");
    let resp = http
        .get(&url)
        .send()
        .with_context(|| format!("cannot reach the node at {base}"))?;
    if resp.status().as_u16() == 404 {
        bail!(
            "the node at {base} does not host model {wanted}: publish it there first (`verity model publish`), so that other nodes can replicate it once it is registered"
        );
    }
    let info = crate::net::json_or_error(resp, "reading the model")?;
    let id: Hash = info["model_id"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| anyhow!("the node's answer has no model_id"))?;
    let signed: SignedManifest = serde_json::from_value(info["manifest"].clone())
        .map_err(|_| anyhow!("the node holds no signed manifest for model {id}"))?;
    signed
        .verify()
        .map_err(|e| anyhow!("the node's manifest for model {id} does not verify: {e}"))?;
    let man = &signed.manifest;
    if man.model_id != id {
        bail!(
            "the node's manifest is for model {}, not {id}",
            man.model_id
        );
    }
    if man.owner != key.address() {
        bail!(
            "model {id} ({}@{}) was published by {}, not by this key ({}): only its publisher registers it",
            man.name,
            man.version,
            man.owner,
            key.address()
        );
    }
    let model = crate::request::download_model(&http, &base, &id)?;
    let (rt, chain) = a.chain.connect(Some(&key))?;
    let digest = man.digest();
    let sent = rt
        .block_on(chain.register_model(&id, &man.name, &man.version, &digest, price))
        .map_err(|e| anyhow!("{e}"))?;
    let registered = rt
        .block_on(chain.registered_model(&id))
        .map_err(|e| anyhow!("{e}"))?
        .ok_or_else(|| anyhow!("model {id} is not in the registry after registering it"))?;
    let tx = match sent {
        Some((tx, gas)) => format!("registered: tx {tx}, gas {gas}"),
        // Registered before: fine if it is this publisher's same registration (the price is updated).
        None if registered.owner != key.address()
            || registered.name != man.name
            || registered.version != man.version =>
        {
            bail!(
                "model {id} is already registered by {} as {}@{}",
                registered.owner,
                registered.name,
                registered.version
            );
        }
        None if registered.price != price => {
            let (tx, _) = rt
                .block_on(chain.set_model_price(&id, price))
                .map_err(|e| anyhow!("{e}"))?;
            format!(
                "already registered; price changed from {} wei: tx {tx}",
                registered.price
            )
        }
        None => "already registered".to_string(),
    };
    // Its inputs at the OpenGradient front door, which then fixes each front-door request's input hash.
    let spec = rt
        .block_on(chain.set_input_spec(&id, &model))
        .map_err(|e| anyhow!("{e}"))?;
    println!(
        "model      {}@{}  {id}  price {price} wei ({}) per node  ({tx})",
        man.name,
        man.version,
        crate::devnet::eth(price)
    );
    match spec {
        Some(tx) => println!("inputs     stated at the OpenGradient front door (tx {tx})"),
        None if chain.deployment().opengradient.is_some() => {
            println!("inputs     already stated at the OpenGradient front door")
        }
        None => {}
    }
    eprintln!(
        "nodes that host by policy replicate it from {base}; `verity model show {id} --chain …` lists those that announce it"
    );
    Ok(())
}

/// One registered model as JSON, with the nodes that announce it.
fn model_json(m: &RegisteredModel, hosts: &[verity_core::Address]) -> Value {
    json!({
        "model_id": m.model_id, "name": m.name, "version": m.version, "owner": m.owner,
        "price_wei": m.price.to_string(), "manifest_hash": m.manifest_hash,
        "registered_at": m.registered_at, "hosts": hosts,
    })
}

/// `verity model ls --chain`: every registered model, with its hosts.
pub fn ls_chain(c: &ChainArgs, query: Option<&str>, json_out: bool) -> Result<()> {
    let (rt, chain) = c.connect(None)?;
    let all = rt
        .block_on(chain.registered_models())
        .map_err(|e| anyhow!("{e}"))?;
    let mut docs = Vec::new();
    for m in all
        .iter()
        .filter(|m| query.is_none_or(|q| m.name.contains(q)))
    {
        let hosts = rt
            .block_on(chain.hosts_of(m.model_id))
            .map_err(|e| anyhow!("{e}"))?;
        if json_out {
            docs.push(model_json(m, &hosts));
        } else {
            println!(
                "{}@{}  {}  price {} wei  owner {}  {} host{}",
                m.name,
                m.version,
                m.model_id,
                m.price,
                m.owner,
                hosts.len(),
                if hosts.len() == 1 { "" } else { "s" }
            );
        }
    }
    if json_out {
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({ "models": docs }))?
        );
    }
    Ok(())
}

/// `verity model show --chain`: one registered model (`0x<id>`, `name@version`, `name`).
pub fn show_chain(c: &ChainArgs, model: &str) -> Result<()> {
    let (rt, chain) = c.connect(None)?;
    let id = rt
        .block_on(chain.resolve_model(model))
        .map_err(|e| anyhow!("{e}"))?;
    let m = rt
        .block_on(chain.registered_model(&id))
        .map_err(|e| anyhow!("{e}"))?
        .ok_or_else(|| anyhow!("model {id} is not registered"))?;
    let hosts = rt
        .block_on(chain.hosts_of(id))
        .map_err(|e| anyhow!("{e}"))?;
    println!("{}", serde_json::to_string_pretty(&model_json(&m, &hosts))?);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amounts_parse_exactly_or_not_at_all() {
        let e15 = U256::from(10u64).pow(U256::from(15));
        assert_eq!(parse_amount("0.001eth").unwrap(), e15);
        assert_eq!(parse_amount("0.001 ETH").unwrap(), e15);
        assert_eq!(parse_amount(".001ether").unwrap(), e15);
        assert_eq!(parse_amount("1000000000000000").unwrap(), e15);
        assert_eq!(parse_amount("1000000gwei").unwrap(), e15);
        assert_eq!(parse_amount("42wei").unwrap(), U256::from(42u64));
        assert_eq!(parse_amount("0").unwrap(), U256::ZERO);
        assert_eq!(
            parse_amount("1.5eth").unwrap(),
            U256::from(15u64) * U256::from(10u64).pow(U256::from(17))
        );
        for bad in [
            "", "eth", "-1", "1e18", "0x10", "1.2.3eth", "1.5", "0.5wei", "1,000",
        ] {
            assert!(parse_amount(bad).is_err(), "{bad:?} is refused");
        }
        assert!(parse_amount("0.0000000000000000001eth")
            .unwrap_err()
            .to_string()
            .contains("1 wei"));
    }
}
