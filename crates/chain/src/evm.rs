//! [`Chain`] over JSON-RPC with alloy: deployment, calls with retries, transactions with serialized nonces.

use std::path::Path;
use std::time::Duration;

use alloy::network::EthereumWallet;
use alloy::primitives::{Address as A, Bytes, U256};
use alloy::providers::{DynProvider, Provider, ProviderBuilder};
use alloy::rpc::types::{BlockNumberOrTag, Filter};
use alloy::signers::local::PrivateKeySigner;
use alloy::sol_types::{SolEvent, SolValue};
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;
use verity_core::{Hash, SecretKey, SignedReceipt};

use crate::bindings::{
    revert_sentence, InferenceHub, ModelRegistry, NodeRegistry, OpenGradientEvents,
    OpenGradientInference, VerityDeployer, OPENGRADIENT_EVENTS,
};
use crate::{
    from_b256, from_evm, to_b256, to_evm, Assignment, BlockRef, Chain, ChainError, HubEvent,
    HubEventKind, Mode, NodeInfo, RequestInfo, Status,
};

/// Where Verity's contracts live on a chain; written by `deploy`, read by nodes and clients
/// (`--contracts <file>`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Deployment {
    /// Chain ID the contracts are on.
    pub chain_id: u64,
    /// ModelRegistry.
    pub models: verity_core::Address,
    /// NodeRegistry.
    pub nodes: verity_core::Address,
    /// InferenceHub (receipts are signed for this verifying contract).
    pub hub: verity_core::Address,
    /// The OpenGradient-compatible front door (`run`), if deployed.
    pub opengradient: Option<verity_core::Address>,
    /// OptimisticHub (optimistic mode: commitments, challenges, bisection games).
    #[serde(default)]
    pub optimistic: Option<verity_core::Address>,
    /// The stateless OneStep judge the OptimisticHub calls.
    #[serde(default)]
    pub one_step: Option<verity_core::Address>,
    /// ReceiptCourt: where any receipt can be disputed; off-chain receipts (HTTP API, off-chain quorum
    /// certificates) are signed for this verifying contract, never for the hub.
    #[serde(default)]
    pub court: Option<verity_core::Address>,
    /// Block of the deployment (watchers start here).
    pub deploy_block: u64,
}

/// A model as the ModelRegistry holds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegisteredModel {
    /// Model ID.
    pub model_id: Hash,
    /// The account that registered it (owner of its name).
    pub owner: verity_core::Address,
    /// Name.
    pub name: String,
    /// Version.
    pub version: String,
    /// The EIP-712 digest of the owner's signed manifest (zero if none was given).
    pub manifest_hash: Hash,
    /// Price per inference, in wei.
    pub price: U256,
    /// Block timestamp of the registration.
    pub registered_at: u64,
}

impl Deployment {
    /// Read a deployment file.
    pub fn load(path: &Path) -> Result<Deployment, ChainError> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            ChainError::Other(format!(
                "cannot read the contracts file {}: {e}",
                path.display()
            ))
        })?;
        serde_json::from_str(&text).map_err(|e| {
            ChainError::Other(format!(
                "the contracts file {} is not valid: {e}",
                path.display()
            ))
        })
    }

    /// Write it (pretty JSON).
    pub fn save(&self, path: &Path) -> Result<(), ChainError> {
        let text =
            serde_json::to_string_pretty(self).map_err(|e| ChainError::Other(e.to_string()))?;
        std::fs::write(path, text + "\n")
            .map_err(|e| ChainError::Other(format!("cannot write {}: {e}", path.display())))
    }
}

/// Deployment parameters.
#[derive(Debug, Clone)]
pub struct DeployParams {
    /// Minimum node stake, wei.
    pub min_stake: U256,
    /// Unbonding delay, seconds.
    pub unbonding_delay: u64,
    /// How long nodes have to answer a request, seconds.
    pub response_window: u64,
    /// Stake taken from an assigned node that never answers, wei.
    pub timeout_penalty: U256,
    /// Quorum size the OpenGradient front door uses for its non-VANILLA modes (0: no front door).
    pub opengradient_quorum: u8,
    /// Optimistic mode: blocks the assigned node has to commit.
    pub response_blocks: u64,
    /// Optimistic mode: blocks a commitment can be challenged (the challenge window).
    pub challenge_blocks: u64,
    /// Optimistic mode: blocks each side has for each move of a dispute.
    pub move_blocks: u64,
    /// Optimistic mode: bond posted with a commitment, wei.
    pub commit_bond: U256,
    /// Optimistic mode: bond posted with a challenge, wei.
    pub challenge_bond: U256,
    /// Optimistic mode: stake slashed (and burned) from an assigned node that neither commits nor
    /// declines; a node whose answer is proven wrong loses its whole stake. Wei.
    pub slash_amount: U256,
}

impl Default for DeployParams {
    fn default() -> Self {
        DeployParams {
            min_stake: crate::ether(1),
            unbonding_delay: 7 * 24 * 3600,
            response_window: 600,
            timeout_penalty: crate::ether(1) / U256::from(10),
            opengradient_quorum: 2,
            response_blocks: 100,
            challenge_blocks: 50,
            move_blocks: 25,
            commit_bond: crate::ether(1) / U256::from(10),
            challenge_bond: crate::ether(1) / U256::from(10),
            slash_amount: crate::ether(1) / U256::from(2),
        }
    }
}

pub(crate) fn rpc_err(e: impl std::fmt::Display) -> ChainError {
    ChainError::Rpc(e.to_string())
}

/// Turn a contract call error into a [`ChainError`], decoding custom errors.
pub(crate) fn contract_err(e: alloy::contract::Error) -> ChainError {
    if let Some(data) = e.as_revert_data() {
        if let Some(s) = revert_sentence(&data) {
            return ChainError::Reverted(s);
        }
        return ChainError::Reverted(format!("the contract reverted (data 0x{})", hex(&data)));
    }
    let msg = e.to_string();
    if msg.contains("revert") {
        return ChainError::Reverted(msg);
    }
    ChainError::Rpc(msg)
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The first event of type `E` that contract `at` emitted in a mined transaction.
pub(crate) fn event_in<E: alloy::sol_types::SolEvent>(
    receipt: &alloy::rpc::types::TransactionReceipt,
    at: &A,
) -> Option<E> {
    receipt
        .inner
        .logs()
        .iter()
        .filter(|l| l.address() == *at)
        .find_map(|l| E::decode_log(&l.inner).ok().map(|e| e.data))
}

/// An RPC connection to a chain with Verity's contracts, optionally with a key for transactions.
pub struct EvmChain {
    provider: DynProvider,
    deployment: Deployment,
    sender: Option<A>,
    send_lock: Mutex<()>,
    /// How many times transient RPC failures are retried.
    pub retries: u32,
}

/// Connect a provider (wallet optional) to `rpc`.
pub(crate) fn provider(
    rpc: &str,
    key: Option<&SecretKey>,
) -> Result<(DynProvider, Option<A>), ChainError> {
    use alloy::transports::http::reqwest;
    let url: reqwest::Url = rpc
        .parse()
        .map_err(|e| ChainError::Other(format!("bad RPC URL '{rpc}': {e}")))?;
    // No RPC call may hang forever (a stalled endpoint becomes a transient error and is retried).
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .connect_timeout(Duration::from_secs(5))
        .build()
        .map_err(|e| ChainError::Other(format!("cannot build the HTTP client: {e}")))?;
    match key {
        Some(k) => {
            let signer = PrivateKeySigner::from_bytes(&alloy::primitives::B256::from(k.to_bytes()))
                .map_err(|e| ChainError::Other(format!("bad key: {e}")))?;
            let addr = signer.address();
            // The nonce is read from the chain (pending count) for every transaction. A cached
            // counter reserves a nonce even when gas estimation then refuses the transaction (e.g. a
            // receipt for a request that just finalized), which leaves a gap that blocks every later
            // transaction from this key. Sends are serialized per client (`send_lock`), so the chain's
            // count is always right.
            let p = ProviderBuilder::new()
                .disable_recommended_fillers()
                .with_gas_estimation()
                .with_simple_nonce_management()
                .fetch_chain_id()
                .wallet(EthereumWallet::from(signer))
                .connect_reqwest(http, url)
                .erased();
            Ok((p, Some(addr)))
        }
        None => Ok((
            ProviderBuilder::new().connect_reqwest(http, url).erased(),
            None,
        )),
    }
}

/// A request placed on the hub.
#[derive(Clone, Debug)]
pub struct Placed {
    /// Hub request ID.
    pub id: u64,
    /// Transaction.
    pub tx: Hash,
    /// Gas it used.
    pub gas: u64,
    /// Block it was mined in.
    pub block: u64,
}

/// Deploy Verity's contracts with `key`; on anvil also place the OpenGradient event source at 0x…F4.
pub async fn deploy(
    rpc: &str,
    key: &SecretKey,
    params: &DeployParams,
) -> Result<Deployment, ChainError> {
    let (p, _) = provider(rpc, Some(key))?;
    let chain_id = p.get_chain_id().await.map_err(rpc_err)?;
    // OneStep and the OptimisticHub's factory go first and on their own: inside the deployer the init
    // code would pass the EVM's limit.
    let one_step = crate::bindings::OneStep::deploy(p.clone())
        .await
        .map_err(contract_err)?;
    let factory = crate::bindings::OptimisticFactory::deploy(p.clone())
        .await
        .map_err(contract_err)?;
    let d = VerityDeployer::deploy(
        p.clone(),
        params.min_stake,
        params.unbonding_delay,
        params.response_window,
        params.timeout_penalty,
        VerityDeployer::Optimistic {
            oneStep: *one_step.address(),
            responseBlocks: params.response_blocks,
            challengeBlocks: params.challenge_blocks,
            moveBlocks: params.move_blocks,
            commitBond: params.commit_bond,
            challengeBond: params.challenge_bond,
            slashAmount: params.slash_amount,
        },
        *factory.address(),
    )
    .await
    .map_err(contract_err)?;
    let optimistic = d.optimistic().call().await.map_err(contract_err)?;
    let models = d.models().call().await.map_err(contract_err)?;
    let nodes = d.nodes().call().await.map_err(contract_err)?;
    let hub = d.hub().call().await.map_err(contract_err)?;
    let court = d.court().call().await.map_err(contract_err)?;
    let mut opengradient = None;
    if params.opengradient_quorum > 0 {
        let og = OpenGradientInference::deploy(p.clone(), hub, params.opengradient_quorum)
            .await
            .map_err(contract_err)?;
        let code = OpenGradientEvents::DEPLOYED_BYTECODE.clone();
        let r: Result<(), _> = p
            .raw_request::<_, ()>("anvil_setCode".into(), (OPENGRADIENT_EVENTS, code))
            .await;
        if let Err(e) = r {
            tracing::warn!("could not place the OpenGradient event source at 0x…F4 ({e}); SDK clients that wait for node results will not find their inference IDs");
        }
        opengradient = Some(from_evm(og.address()));
    }
    let deploy_block = p.get_block_number().await.map_err(rpc_err)?;
    Ok(Deployment {
        chain_id,
        models: from_evm(&models),
        nodes: from_evm(&nodes),
        hub: from_evm(&hub),
        opengradient,
        optimistic: Some(from_evm(&optimistic)),
        one_step: Some(from_evm(one_step.address())),
        court: Some(from_evm(&court)),
        deploy_block,
    })
}

impl EvmChain {
    /// Connect to `rpc` for the contracts in `deployment`; `key` signs transactions.
    pub async fn connect(
        rpc: &str,
        deployment: Deployment,
        key: Option<&SecretKey>,
    ) -> Result<EvmChain, ChainError> {
        let (provider, sender) = provider(rpc, key)?;
        let chain = EvmChain {
            provider,
            deployment,
            sender,
            send_lock: Mutex::new(()),
            retries: 5,
        };
        let id = chain
            .retry(|| async { chain.provider.get_chain_id().await.map_err(rpc_err) })
            .await?;
        if id != chain.deployment.chain_id {
            return Err(ChainError::Other(format!(
                "the RPC endpoint is chain {id} but the contracts file is for chain {}",
                chain.deployment.chain_id
            )));
        }
        let code = chain
            .retry(|| async {
                chain
                    .provider
                    .get_code_at(to_evm(&chain.deployment.hub))
                    .await
                    .map_err(rpc_err)
            })
            .await?;
        if code.is_empty() {
            return Err(ChainError::Other(format!(
                "there is no InferenceHub at {} on this chain (stale contracts file?)",
                chain.deployment.hub
            )));
        }
        Ok(chain)
    }

    /// The deployment.
    pub fn deployment(&self) -> &Deployment {
        &self.deployment
    }

    /// The raw provider.
    pub fn provider(&self) -> &DynProvider {
        &self.provider
    }

    /// The sender's address, if a key was given.
    pub fn sender(&self) -> Option<verity_core::Address> {
        self.sender.as_ref().map(from_evm)
    }

    /// A model named as `0x<model id>`, `name@version` or `name` (its latest version), checked to be
    /// registered.
    pub async fn resolve_model(&self, name: &str) -> Result<Hash, ChainError> {
        let reg = self.models_contract();
        let id = if let Ok(h) = name.parse::<Hash>() {
            to_b256(&h)
        } else if let Some((n, v)) = name.split_once('@') {
            self.retry(|| async {
                reg.resolve(n.to_string(), v.to_string())
                    .call()
                    .await
                    .map_err(contract_err)
            })
            .await?
        } else {
            self.retry(|| async {
                reg.latest(name.to_string())
                    .call()
                    .await
                    .map_err(contract_err)
            })
            .await?
        };
        let known = !id.is_zero()
            && self
                .retry(|| async { reg.exists(id).call().await.map_err(contract_err) })
                .await?;
        if !known {
            return Err(ChainError::Other(format!(
                "no model '{name}' is registered in the ModelRegistry at {}",
                self.deployment.models
            )));
        }
        Ok(from_b256(&id))
    }

    /// The NodeRegistry's active nodes as of block `block` (read at that block), for quorum selection.
    pub async fn registry_at(
        &self,
        block: u64,
    ) -> Result<crate::cert::RegistrySnapshot, ChainError> {
        use alloy::eips::BlockId;
        let at = BlockId::number(block);
        let reg = self.nodes_contract();
        let hash = self
            .block_hash(block)
            .await?
            .ok_or_else(|| ChainError::Other(format!("block {block} is not on the chain")))?;
        let all = self
            .retry(|| async { reg.allNodes().call().block(at).await.map_err(contract_err) })
            .await?;
        let mut nodes = Vec::new();
        for a in all {
            let active = self
                .retry(|| async { reg.isActive(a).call().block(at).await.map_err(contract_err) })
                .await?;
            if !active {
                continue;
            }
            let n = self
                .retry(|| async { reg.node(a).call().block(at).await.map_err(contract_err) })
                .await?;
            nodes.push(crate::cert::SnapshotNode {
                address: from_evm(&a),
                stake: n.stake.to_string(),
                endpoint: n.endpoint,
            });
        }
        Ok(crate::cert::RegistrySnapshot {
            chain_id: self.deployment.chain_id,
            block,
            block_hash: hash,
            nodes,
        })
    }

    /// Submit a quorum certificate's receipts for hub request `id` in one transaction (`submitAll`);
    /// returns (tx, gas).
    pub async fn submit_certificate(
        &self,
        id: u64,
        cert: &crate::cert::QuorumCertificate,
    ) -> Result<(Hash, u64), ChainError> {
        let hub = self.hub_contract();
        let recs: Vec<crate::bindings::VerityReceipts::Receipt> = cert
            .receipts
            .iter()
            .map(|s| receipt_struct(&s.receipt))
            .collect();
        let sigs: Vec<Bytes> = cert
            .receipts
            .iter()
            .map(|s| Bytes::from(s.signature.0.to_vec()))
            .collect();
        self.send("submitting the certificate", || {
            hub.submitAll(U256::from(id), recs.clone(), sigs.clone())
                .into_transaction_request()
        })
        .await
    }

    /// Add `amount` wei to this account's stake in the NodeRegistry; returns the transaction.
    pub async fn add_stake(&self, amount: U256) -> Result<Hash, ChainError> {
        let reg = self.nodes_contract();
        Ok(self
            .send("adding stake", || {
                reg.addStake().value(amount).into_transaction_request()
            })
            .await?
            .0)
    }

    /// Start unbonding `amount` wei of this account's stake (withdrawable after the unbonding delay);
    /// returns the transaction.
    pub async fn request_unbond(&self, amount: U256) -> Result<Hash, ChainError> {
        let reg = self.nodes_contract();
        Ok(self
            .send("unbonding stake", || {
                reg.requestUnbond(amount).into_transaction_request()
            })
            .await?
            .0)
    }

    /// The quantized input of OptimisticHub dispute `id` opened by the ReceiptCourt (from its
    /// `ReceiptDisputed` event), or None if the court opened no such dispute.
    pub async fn dispute_input(&self, id: u64) -> Result<Option<Vec<Vec<i32>>>, ChainError> {
        let Some(court) = self.deployment.court else {
            return Ok(None);
        };
        let filter = Filter::new()
            .address(to_evm(&court))
            .event_signature(crate::bindings::ReceiptCourt::ReceiptDisputed::SIGNATURE_HASH)
            .topic1(alloy::primitives::B256::from(U256::from(id)))
            .from_block(self.deployment.deploy_block);
        let logs = self
            .retry(|| async { self.provider.get_logs(&filter).await.map_err(rpc_err) })
            .await?;
        for l in logs.iter().rev().filter(|l| !l.removed) {
            if let Ok(e) = crate::bindings::ReceiptCourt::ReceiptDisputed::decode_log(&l.inner) {
                return Ok(crate::court::tensors_of(&e.lens, &e.words));
            }
        }
        Ok(None)
    }

    /// The price per inference of a model, in wei.
    pub async fn price_of(&self, model: &Hash) -> Result<U256, ChainError> {
        let reg = self.models_contract();
        self.retry(|| async {
            reg.priceOf(to_b256(model))
                .call()
                .await
                .map_err(contract_err)
        })
        .await
    }

    /// Ask the hub for an inference; the request ID is read from the `Requested` event of the
    /// transaction itself.
    pub async fn request_inference(
        &self,
        model: &Hash,
        input_hash: &Hash,
        input_uri: &str,
        mode: Mode,
        k: u8,
        fee: U256,
    ) -> Result<Placed, ChainError> {
        let hub = self.hub_contract();
        let m = match mode {
            Mode::Signed => 0u8,
            Mode::Quorum => 1u8,
        };
        let receipt = self
            .send_receipt("requesting the inference", || {
                hub.request(
                    to_b256(model),
                    to_b256(input_hash),
                    input_uri.to_string(),
                    m,
                    k,
                )
                .value(fee)
                .into_transaction_request()
            })
            .await?;
        let tx = from_b256(&receipt.transaction_hash);
        let id = event_in::<InferenceHub::Requested>(&receipt, &to_evm(&self.deployment.hub))
            .ok_or_else(|| ChainError::Other(format!("tx {tx} has no Requested event")))?
            .requestId;
        let id = u64::try_from(id)
            .map_err(|_| ChainError::Other(format!("request ID {id} is out of range")))?;
        Ok(Placed {
            id,
            tx,
            gas: receipt.gas_used,
            block: receipt.block_number.unwrap_or_default(),
        })
    }

    fn hub_contract(&self) -> InferenceHub::InferenceHubInstance<DynProvider> {
        InferenceHub::new(to_evm(&self.deployment.hub), self.provider.clone())
    }

    fn nodes_contract(&self) -> NodeRegistry::NodeRegistryInstance<DynProvider> {
        NodeRegistry::new(to_evm(&self.deployment.nodes), self.provider.clone())
    }

    /// Register a model (this key becomes its owner) unless it is registered already; the transaction
    /// and its gas, or `None` when it was there.
    pub async fn register_model(
        &self,
        id: &Hash,
        name: &str,
        version: &str,
        manifest: &Hash,
        price: U256,
    ) -> Result<Option<(Hash, u64)>, ChainError> {
        let reg = self.models_contract();
        let exists = self
            .retry(|| async { reg.exists(to_b256(id)).call().await.map_err(contract_err) })
            .await?;
        if exists {
            return Ok(None);
        }
        self.send("registering the model", || {
            reg.register(
                to_b256(id),
                name.to_string(),
                version.to_string(),
                to_b256(manifest),
                price,
            )
            .into_transaction_request()
        })
        .await
        .map(Some)
    }

    /// Change the price of model `id` (its owner's call); the transaction and its gas.
    pub async fn set_model_price(&self, id: &Hash, price: U256) -> Result<(Hash, u64), ChainError> {
        let reg = self.models_contract();
        self.send("changing the model's price", || {
            reg.setPrice(to_b256(id), price).into_transaction_request()
        })
        .await
    }

    /// Model `id` as the ModelRegistry holds it now, or `None` if it is not registered.
    pub async fn registered_model(&self, id: &Hash) -> Result<Option<RegisteredModel>, ChainError> {
        let reg = self.models_contract();
        let m = self
            .retry(|| async { reg.model(to_b256(id)).call().await.map_err(contract_err) })
            .await?;
        if m.owner.is_zero() {
            return Ok(None);
        }
        Ok(Some(RegisteredModel {
            model_id: *id,
            owner: from_evm(&m.owner),
            name: m.name,
            version: m.version,
            manifest_hash: from_b256(&m.manifestHash),
            price: m.pricePerInference,
            registered_at: m.registeredAt,
        }))
    }

    /// Every model registered since the deployment, in registration order, each as the registry holds it
    /// now (its current price). The `ModelRegistered` logs are read `LOG_SPAN` blocks at a time, within
    /// what public RPC endpoints allow per query.
    pub async fn registered_models(&self) -> Result<Vec<RegisteredModel>, ChainError> {
        const LOG_SPAN: u64 = 10_000;
        let head = self
            .retry(|| async { self.provider.get_block_number().await.map_err(rpc_err) })
            .await?;
        let mut ids = Vec::new();
        let mut from = self.deployment.deploy_block;
        while from <= head {
            let to = head.min(from + LOG_SPAN - 1);
            let filter = Filter::new()
                .address(to_evm(&self.deployment.models))
                .event_signature(ModelRegistry::ModelRegistered::SIGNATURE_HASH)
                .from_block(from)
                .to_block(to);
            let logs = self
                .retry(|| async { self.provider.get_logs(&filter).await.map_err(rpc_err) })
                .await?;
            for l in logs.iter().filter(|l| !l.removed) {
                if let Ok(e) = ModelRegistry::ModelRegistered::decode_log(&l.inner) {
                    ids.push(from_b256(&e.data.modelId));
                }
            }
            from = to + 1;
        }
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            if out.iter().any(|m: &RegisteredModel| m.model_id == id) {
                continue;
            }
            if let Some(m) = self.registered_model(&id).await? {
                out.push(m);
            }
        }
        Ok(out)
    }

    /// The model registry.
    pub fn models_contract(&self) -> ModelRegistry::ModelRegistryInstance<DynProvider> {
        ModelRegistry::new(to_evm(&self.deployment.models), self.provider.clone())
    }

    /// The OpenGradient front door, if deployed.
    pub fn opengradient_contract(
        &self,
    ) -> Option<OpenGradientInference::OpenGradientInferenceInstance<DynProvider>> {
        self.deployment
            .opengradient
            .map(|a| OpenGradientInference::new(to_evm(&a), self.provider.clone()))
    }

    /// State model `model_id`'s inputs (`m`'s names, element counts, scales, kinds) at the OpenGradient
    /// front door — the model owner's call — so that its front-door requests get their canonical input
    /// hash fixed on-chain. Nothing is sent if the front door already has exactly this spec. Returns the
    /// transaction, or None if nothing was sent (or there is no front door).
    pub async fn set_input_spec(
        &self,
        model_id: &Hash,
        m: &verity_engine::Model,
    ) -> Result<Option<Hash>, ChainError> {
        let Some(og) = self.opengradient_contract() else {
            return Ok(None);
        };
        let names: Vec<String> = m.inputs.iter().map(|i| i.name.clone()).collect();
        let counts: Vec<u64> = m
            .inputs
            .iter()
            .map(|i| verity_engine::ir::numel(&i.shape))
            .collect();
        let scales: Vec<i8> = m.inputs.iter().map(|i| i.scale).collect();
        let ints: Vec<bool> = m
            .inputs
            .iter()
            .map(|i| i.kind == verity_engine::ir::InputKind::Int)
            .collect();
        let id = to_b256(model_id);
        let have = self
            .retry(|| async { og.inputSpec(id).call().await.map_err(contract_err) })
            .await?;
        if have._0 == names && have._1 == counts && have._2 == scales && have._3 == ints {
            return Ok(None);
        }
        let (tx, _) = self
            .send(
                "stating the model's inputs at the OpenGradient front door",
                || {
                    og.setInputSpec(
                        id,
                        names.clone(),
                        counts.clone(),
                        scales.clone(),
                        ints.clone(),
                    )
                    .into_transaction_request()
                },
            )
            .await?;
        Ok(Some(tx))
    }

    /// Run `f` until it succeeds, fails for good, or transient failures exhaust the retries
    /// (backoff 200 ms doubling to 3.2 s).
    pub async fn retry<T, F, Fut>(&self, mut f: F) -> Result<T, ChainError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, ChainError>>,
    {
        let mut delay = Duration::from_millis(200);
        let mut attempt = 0;
        loop {
            match f().await {
                Err(e) if e.is_transient() && attempt < self.retries => {
                    tracing::debug!("retrying after a transient chain error: {e}");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_millis(3200));
                    attempt += 1;
                }
                other => return other,
            }
        }
    }

    /// Send a transaction built by `build` from this client's key (one at a time per chain client, so
    /// nonces never collide) and wait for it to be mined; a mined revert or a gas-estimation revert is
    /// decoded into a sentence.
    pub async fn send<F>(&self, what: &str, build: F) -> Result<(Hash, u64), ChainError>
    where
        F: Fn() -> alloy::rpc::types::TransactionRequest,
    {
        let r = self.send_receipt(what, build).await?;
        Ok((from_b256(&r.transaction_hash), r.gas_used))
    }

    /// Like [`EvmChain::send`], returning the whole (successful) transaction receipt with its logs.
    pub async fn send_receipt<F>(
        &self,
        what: &str,
        build: F,
    ) -> Result<alloy::rpc::types::TransactionReceipt, ChainError>
    where
        F: Fn() -> alloy::rpc::types::TransactionRequest,
    {
        if self.sender.is_none() {
            return Err(ChainError::Other(format!("{what} needs a key")));
        }
        let build = || {
            let mut t = build();
            t.from = self.sender;
            t
        };
        let mut attempt = 0;
        loop {
            let pending = {
                let _g = self.send_lock.lock().await;
                self.provider.send_transaction(build()).await
            };
            let pending = match pending {
                Ok(p) => p,
                Err(e) => {
                    let err = transport_err(e);
                    let msg = err.to_string();
                    let nonce = msg.contains("nonce") || msg.contains("replacement transaction");
                    if (err.is_transient() || nonce) && attempt < self.retries {
                        attempt += 1;
                        tokio::time::sleep(Duration::from_millis(200 << attempt.min(4))).await;
                        continue;
                    }
                    return Err(match err {
                        ChainError::Reverted(m) => ChainError::Reverted(format!("{what}: {m}")),
                        other => other,
                    });
                }
            };
            let receipt = pending
                .with_timeout(Some(Duration::from_secs(120)))
                .get_receipt()
                .await
                .map_err(|e| {
                    ChainError::Rpc(format!("{what}: waiting for the transaction failed: {e}"))
                })?;
            let tx = from_b256(&receipt.transaction_hash);
            if !receipt.status() {
                // Replay at the mined block for the reason.
                let reason = match self
                    .provider
                    .call(build())
                    .block(receipt.block_number.unwrap_or_default().into())
                    .await
                {
                    Err(e) => transport_err(e).to_string(),
                    Ok(_) => "reverted".into(),
                };
                return Err(ChainError::Reverted(format!(
                    "{what} (tx {tx}) failed: {reason}"
                )));
            }
            return Ok(receipt);
        }
    }
}

/// A receipt as the `VerityReceipts.Receipt` struct of the binding module `$m` (each contract's ABI
/// carries its own copy of the type: the hub's, the ReceiptCourt's).
macro_rules! receipt_in {
    ($m:path, $r:expr) => {{
        use $m as vr;
        let r: &verity_core::Receipt = $r;
        vr::Receipt {
            requestId: $crate::to_b256(&r.request_id),
            modelId: $crate::to_b256(&r.model_id),
            inputHash: $crate::to_b256(&r.input_hash),
            outputHash: $crate::to_b256(&r.output_hash),
            traceRoot: $crate::to_b256(&r.trace_root),
            node: $crate::to_evm(&r.node),
            timestamp: r.timestamp,
        }
    }};
}
pub(crate) use receipt_in;

/// A receipt as the hub's `Receipt` struct.
fn receipt_struct(r: &verity_core::Receipt) -> crate::bindings::VerityReceipts::Receipt {
    receipt_in!(crate::bindings::VerityReceipts, r)
}

/// Transport errors from eth_call / eth_estimateGas / eth_sendTransaction, decoding revert data.
fn transport_err(e: alloy::transports::TransportError) -> ChainError {
    if let Some(resp) = e.as_error_resp() {
        if let Some(data) = resp.as_revert_data() {
            if let Some(s) = revert_sentence(&data) {
                return ChainError::Reverted(s);
            }
            return ChainError::Reverted(format!("reverted (data 0x{})", hex(&data)));
        }
        return ChainError::Reverted(resp.message.to_string());
    }
    ChainError::Rpc(e.to_string())
}

fn request_info(id: u64, r: InferenceHub::Request) -> RequestInfo {
    RequestInfo {
        id,
        client: from_evm(&r.client),
        mode: Mode::from_u8(r.mode).unwrap_or(Mode::Signed),
        k: r.k,
        status: Status::from_u8(r.status),
        seed_block: r.seedBlock,
        deadline: r.deadline,
        model_id: from_b256(&r.modelId),
        input_hash: from_b256(&r.inputHash),
        output_hash: from_b256(&r.outputHash),
        fee: r.fee.to_string(),
        input_uri: r.inputUri,
    }
}

fn u64_of(v: U256) -> u64 {
    u64::try_from(v).unwrap_or(u64::MAX)
}

/// Hub logs → events.
pub fn decode_hub_log(log: &alloy::rpc::types::Log) -> Option<HubEvent> {
    let kind = if let Ok(e) = InferenceHub::Requested::decode_log(&log.inner) {
        HubEventKind::Requested {
            id: u64_of(e.requestId),
            model_id: from_b256(&e.modelId),
            input_hash: from_b256(&e.inputHash),
            input_uri: e.inputUri.clone(),
            mode: Mode::from_u8(e.mode)?,
            k: e.k,
            seed_block: e.seedBlock,
            deadline: e.deadline,
        }
    } else if let Ok(e) = InferenceHub::ReceiptAccepted::decode_log(&log.inner) {
        HubEventKind::ReceiptAccepted {
            id: u64_of(e.requestId),
            node: from_evm(&e.node),
            output_hash: from_b256(&e.outputHash),
            trace_root: from_b256(&e.traceRoot),
            input_hash: from_b256(&e.inputHash),
            timestamp: e.timestamp,
            signature: verity_core::Signature(e.signature.as_ref().try_into().ok()?),
        }
    } else if let Ok(e) = InferenceHub::Conflict::decode_log(&log.inner) {
        HubEventKind::Conflict {
            id: u64_of(e.requestId),
            node_a: from_evm(&e.nodeA),
            node_b: from_evm(&e.nodeB),
        }
    } else if let Ok(e) = InferenceHub::Finalized::decode_log(&log.inner) {
        HubEventKind::Finalized {
            id: u64_of(e.requestId),
            input_hash: from_b256(&e.inputHash),
            output_hash: from_b256(&e.outputHash),
        }
    } else if let Ok(e) = InferenceHub::Declined::decode_log(&log.inner) {
        HubEventKind::Declined {
            id: u64_of(e.requestId),
            node: from_evm(&e.node),
            reason: e.reason.clone(),
        }
    } else if let Ok(e) = InferenceHub::Refunded::decode_log(&log.inner) {
        HubEventKind::Refunded {
            id: u64_of(e.requestId),
        }
    } else if let Ok(e) = ModelRegistry::ModelRegistered::decode_log(&log.inner) {
        HubEventKind::ModelRegistered {
            model_id: from_b256(&e.modelId),
            name: e.name.clone(),
            version: e.version.clone(),
        }
    } else {
        return None;
    };
    Some(HubEvent {
        block: log.block_number?,
        block_hash: from_b256(&log.block_hash?),
        tx: from_b256(&log.transaction_hash?),
        log_index: log.log_index.unwrap_or(0),
        kind,
    })
}

impl Chain for EvmChain {
    fn chain_id(&self) -> u64 {
        self.deployment.chain_id
    }

    fn hub(&self) -> verity_core::Address {
        self.deployment.hub
    }

    async fn head(&self) -> Result<BlockRef, ChainError> {
        self.retry(|| async {
            let b = self
                .provider
                .get_block_by_number(BlockNumberOrTag::Latest)
                .await
                .map_err(rpc_err)?
                .ok_or_else(|| ChainError::Rpc("no latest block".into()))?;
            Ok(BlockRef {
                number: b.header.number,
                hash: from_b256(&b.header.hash),
                timestamp: b.header.timestamp,
            })
        })
        .await
    }

    async fn block_hash(&self, n: u64) -> Result<Option<Hash>, ChainError> {
        self.retry(|| async {
            let b = self
                .provider
                .get_block_by_number(BlockNumberOrTag::Number(n))
                .await
                .map_err(rpc_err)?;
            Ok(b.map(|b| from_b256(&b.header.hash)))
        })
        .await
    }

    async fn hub_events(&self, from: u64, to: u64) -> Result<Vec<HubEvent>, ChainError> {
        let filter = Filter::new()
            .address(vec![
                to_evm(&self.deployment.hub),
                to_evm(&self.deployment.models),
            ])
            .from_block(from)
            .to_block(to);
        let logs = self
            .retry(|| async { self.provider.get_logs(&filter).await.map_err(rpc_err) })
            .await?;
        Ok(logs
            .iter()
            .filter(|l| !l.removed)
            .filter_map(decode_hub_log)
            .collect())
    }

    async fn request(&self, id: u64) -> Result<Option<RequestInfo>, ChainError> {
        let hub = self.hub_contract();
        let r = self
            .retry(|| async {
                hub.getRequest(U256::from(id))
                    .call()
                    .await
                    .map_err(contract_err)
            })
            .await?;
        if r.status == 0 {
            return Ok(None);
        }
        Ok(Some(request_info(id, r)))
    }

    async fn assignment(&self, id: u64) -> Result<Assignment, ChainError> {
        let hub = self.hub_contract();
        match self
            .retry(|| async {
                hub.assignment(U256::from(id))
                    .call()
                    .await
                    .map_err(contract_err)
            })
            .await
        {
            Ok(v) => Ok(Assignment::Nodes(v.iter().map(from_evm).collect())),
            Err(ChainError::Reverted(m)) if m.contains("not mined yet") => Ok(Assignment::NotReady),
            Err(ChainError::Reverted(m)) if m.contains("older than 256") => Ok(Assignment::Expired),
            Err(e) => Err(e),
        }
    }

    async fn submitted(
        &self,
        id: u64,
        node: verity_core::Address,
    ) -> Result<Option<Hash>, ChainError> {
        let hub = self.hub_contract();
        let h = self
            .retry(|| async {
                hub.submitted(U256::from(id), to_evm(&node))
                    .call()
                    .await
                    .map_err(contract_err)
            })
            .await?;
        Ok(if h.is_zero() {
            None
        } else {
            Some(from_b256(&h))
        })
    }

    async fn submit(&self, id: u64, receipt: &SignedReceipt) -> Result<Hash, ChainError> {
        let hub = self.hub_contract();
        let rec = receipt_struct(&receipt.receipt);
        let sig = Bytes::from(receipt.signature.0.to_vec());
        let (tx, _) = self
            .send("submitting the receipt", || {
                hub.submit(U256::from(id), rec.clone(), sig.clone())
                    .into_transaction_request()
            })
            .await?;
        Ok(tx)
    }

    async fn decline(&self, id: u64, reason: &str) -> Result<Hash, ChainError> {
        let hub = self.hub_contract();
        let reason = reason.to_string();
        let (tx, _) = self
            .send("declining the request", || {
                hub.decline(U256::from(id), reason.clone())
                    .into_transaction_request()
            })
            .await?;
        Ok(tx)
    }

    async fn node_info(&self, node: verity_core::Address) -> Result<Option<NodeInfo>, ChainError> {
        let reg = self.nodes_contract();
        let n = self
            .retry(|| async { reg.node(to_evm(&node)).call().await.map_err(contract_err) })
            .await?;
        if n.endpoint.is_empty() {
            return Ok(None);
        }
        let active = self
            .retry(|| async {
                reg.isActive(to_evm(&node))
                    .call()
                    .await
                    .map_err(contract_err)
            })
            .await?;
        Ok(Some(NodeInfo {
            endpoint: n.endpoint,
            stake: n.stake.to_string(),
            active,
        }))
    }

    async fn register_node(&self, endpoint: &str, stake: U256) -> Result<Hash, ChainError> {
        let reg = self.nodes_contract();
        let (tx, _) = self
            .send("registering the node", || {
                reg.register(endpoint.to_string())
                    .value(stake)
                    .into_transaction_request()
            })
            .await?;
        Ok(tx)
    }

    async fn set_endpoint(&self, endpoint: &str) -> Result<Hash, ChainError> {
        let reg = self.nodes_contract();
        let (tx, _) = self
            .send("updating the node's endpoint", || {
                reg.setEndpoint(endpoint.to_string())
                    .into_transaction_request()
            })
            .await?;
        Ok(tx)
    }

    async fn nodes(&self) -> Result<Vec<(verity_core::Address, NodeInfo)>, ChainError> {
        let reg = self.nodes_contract();
        let all = self
            .retry(|| async { reg.allNodes().call().await.map_err(contract_err) })
            .await?;
        let mut out = Vec::with_capacity(all.len());
        for a in all {
            let a = from_evm(&a);
            if let Some(info) = self.node_info(a).await? {
                out.push((a, info));
            }
        }
        Ok(out)
    }

    async fn hosts_of(&self, model: Hash) -> Result<Vec<verity_core::Address>, ChainError> {
        let reg = self.nodes_contract();
        let hosts = self
            .retry(|| async {
                reg.hostsOf(to_b256(&model))
                    .call()
                    .await
                    .map_err(contract_err)
            })
            .await?;
        Ok(hosts.iter().map(from_evm).collect())
    }

    async fn set_hosting(&self, model: Hash, on: bool) -> Result<Hash, ChainError> {
        let reg = self.nodes_contract();
        let (tx, _) = self
            .send("announcing hosting", || {
                reg.setHosting(to_b256(&model), on)
                    .into_transaction_request()
            })
            .await?;
        Ok(tx)
    }

    async fn opengradient_request(
        &self,
        id: u64,
    ) -> Result<Option<OpenGradientEvents::ModelInferenceRequest>, ChainError> {
        // The request's transaction, from its Requested event.
        let topic = alloy::primitives::B256::from(U256::from(id));
        let filter = Filter::new()
            .address(to_evm(&self.deployment.hub))
            .event_signature(InferenceHub::Requested::SIGNATURE_HASH)
            .topic1(topic)
            .from_block(self.deployment.deploy_block);
        let logs = self
            .retry(|| async { self.provider.get_logs(&filter).await.map_err(rpc_err) })
            .await?;
        let Some(tx) = logs
            .iter()
            .rev()
            .find(|l| !l.removed)
            .and_then(|l| l.transaction_hash)
        else {
            return Ok(None);
        };
        let receipt = self
            .retry(|| async {
                self.provider
                    .get_transaction_receipt(tx)
                    .await
                    .map_err(rpc_err)
            })
            .await?;
        let Some(receipt) = receipt else {
            return Ok(None);
        };
        let want = id.to_string();
        for log in receipt.inner.logs() {
            if log.address() != OPENGRADIENT_EVENTS {
                continue;
            }
            if let Ok(e) = OpenGradientEvents::ModelInferenceEvent::decode_log(&log.inner) {
                if e.inferenceID == want {
                    return Ok(Some(e.data.request.clone()));
                }
            }
        }
        Ok(None)
    }
}

/// ABI-encode a value (re-export for tests).
pub fn abi_encode<T: SolValue>(v: &T) -> Vec<u8> {
    v.abi_encode()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// HTTPS endpoints get a TLS client: a closed port is a connection error, never a panic for want of
    /// a TLS backend or crypto provider.
    #[test]
    fn https_endpoints_get_a_tls_client() {
        let (p, _) = provider("https://127.0.0.1:9", None).expect("an HTTPS client builds");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let err = rt.block_on(p.get_chain_id()).unwrap_err().to_string();
        assert!(
            err.contains("error sending request") || err.contains("onnect"),
            "{err}"
        );
    }
}
