//! HTTP endpoints of a chain-mode node: input documents, on-chain request results (re-executed and checked
//! against the finalized hashes), the node's jobs, and the OpenGradient SDK's result endpoint.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use verity_chain::Chain;
use verity_chain::RequestInfo;
use verity_core::Hash;

use crate::api::server::OutputTensor;
use crate::error::ApiError;
use crate::roles::chain::{jobs, request_hash, verified_result};
use crate::state::Node;
use crate::tensors::decode_native;

const INPUTS: &str = "inputs";

fn chain_of(node: &Node) -> Result<Arc<verity_chain::EvmChain>, ApiError> {
    node.chain.get().cloned().ok_or_else(|| {
        ApiError::not_found(
            "no_chain",
            "this node is not connected to a chain (start it with --chain and --contracts)",
        )
    })
}

fn parse_id(s: &str) -> Result<u64, ApiError> {
    s.parse().map_err(|_| {
        ApiError::bad_request(
            "bad_request_id",
            format!("'{s}' is not an on-chain request ID (a decimal number)"),
        )
    })
}

/// `POST /v1/inputs`: keep an input document (a native inference body) and answer its keccak256 and a URI
/// to put in an on-chain request.
/// `POST /v1/inputs`' answer.
#[derive(Serialize)]
pub struct InputStored {
    /// keccak256 of the document.
    pub hash: Hash,
    /// Where nodes fetch it.
    pub uri: String,
    /// Its size.
    pub bytes: usize,
}

/// `GET /v1/requests/{id}`' answer: a finalized request with its outputs re-executed here, or a pending
/// one as the chain shows it.
#[derive(Serialize)]
#[serde(untagged)]
pub enum RequestState {
    /// Finalized, and its outputs agree with the finalized hashes.
    Verified {
        /// The request.
        request: RequestInfo,
        /// `true`.
        verified: bool,
        /// Its outputs.
        outputs: Vec<OutputTensor>,
        /// This node's receipt for it, if it answered.
        receipt: Option<Box<verity_core::SignedReceipt>>,
        /// The hub.
        hub: verity_core::Address,
        /// The chain.
        chain_id: u64,
    },
    /// Not finalized yet.
    Pending {
        /// The request, if the chain has it.
        request: Option<RequestInfo>,
        /// `false`.
        verified: bool,
    },
}

pub async fn post_input(
    State(node): State<Arc<Node>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<InputStored>, ApiError> {
    decode_native(&body, node.config.limits.max_tensor_elements)?;
    let hash = verity_core::keccak256(&body);
    let store = node.store.clone();
    let b = body.to_vec();
    node.blocking(move || store.kv_put(INPUTS, &hash.0, &b))
        .await??;
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_string)
        .unwrap_or_else(|| node.config.listen.clone());
    Ok(Json(InputStored {
        hash,
        uri: format!("http://{host}/v1/inputs/{hash}"),
        bytes: body.len(),
    }))
}

/// `GET /v1/inputs/{hash}`.
pub async fn get_input(
    State(node): State<Arc<Node>>,
    Path(hash): Path<String>,
) -> Result<Response, ApiError> {
    let h: Hash = hash.parse().map_err(|_| {
        ApiError::bad_request("bad_hash", "input hash must be 32 bytes as 0x-prefixed hex")
    })?;
    let store = node.store.clone();
    let v = node.blocking(move || store.kv_get(INPUTS, &h.0)).await??;
    let v =
        v.ok_or_else(|| ApiError::not_found("input_not_found", format!("no input document {h}")))?;
    Ok(([(header::CONTENT_TYPE, "application/json")], v).into_response())
}

/// Query of the result endpoints.
#[derive(Deserialize)]
pub struct WaitQuery {
    /// Seconds to wait for finalization (default 0, at most 60).
    #[serde(default)]
    pub wait: Option<u64>,
}

/// `GET /v1/requests/{id}?wait=S`: the on-chain request; once finalized, its output re-executed here and
/// checked against the finalized hashes.
pub async fn get_request(
    State(node): State<Arc<Node>>,
    Path(id): Path<String>,
    Query(q): Query<WaitQuery>,
) -> Result<Json<RequestState>, ApiError> {
    let id = parse_id(&id)?;
    let chain = chain_of(&node)?;
    let wait = Duration::from_secs(q.wait.unwrap_or(0).min(60));
    match verified_result(&node, chain.as_ref(), id, wait).await {
        Ok(v) => {
            node.flush_receipts().await?;
            let mine = node.store.receipt(&request_hash(id)).ok().flatten();
            Ok(Json(RequestState::Verified {
                request: v.request,
                verified: true,
                outputs: v.outputs.into_iter().map(OutputTensor::from).collect(),
                receipt: mine.map(Box::new),
                hub: chain.hub(),
                chain_id: chain.chain_id(),
            }))
        }
        Err(e) if e.code == "pending" => {
            let r = chain.request(id).await.ok().flatten();
            Ok(Json(RequestState::Pending {
                request: r,
                verified: false,
            }))
        }
        Err(e) => Err(e),
    }
}

/// `GET /v1/jobs`: the on-chain requests this node has seen and what it did.
pub async fn get_jobs(State(node): State<Arc<Node>>) -> Result<Json<Jobs>, ApiError> {
    let n = node.clone();
    let jobs = node.blocking(move || jobs(&n)).await?;
    Ok(Json(Jobs { jobs }))
}

/// `GET /v1/jobs`' answer.
#[derive(Serialize)]
pub struct Jobs {
    /// Newest first.
    pub jobs: Vec<crate::roles::chain::Job>,
}

/// `GET /v1/optimistic`' answer.
#[derive(Serialize)]
pub struct Optimistic {
    /// Newest request first.
    pub requests: Vec<crate::roles::optimistic::OptJob>,
    /// Audits of hub receipts.
    pub audits: Vec<crate::roles::optimistic::Audit>,
}

/// `GET /v1/optimistic`: what this node saw and did in optimistic mode (commitments, re-executions,
/// challenges, games), newest request first, and its audits of hub receipts.
pub async fn get_optimistic(State(node): State<Arc<Node>>) -> Result<Json<Optimistic>, ApiError> {
    let n = node.clone();
    let (requests, audits) = node
        .blocking(move || {
            (
                crate::roles::optimistic::jobs(&n),
                crate::roles::optimistic::audits(&n),
            )
        })
        .await?;
    Ok(Json(Optimistic { requests, audits }))
}

/// `POST /v1/disputes` `{"receipt": <an off-chain receipt>, "inputs": {…}}`: this node re-executes the
/// receipt's model on the given input (which must hash to the receipt's input hash) and, if its output
/// differs (or its trace, for a receipt that commits one rather than deferring it), disputes the receipt
/// at the ReceiptCourt with its own bond and plays the game. Answers
/// `{"state": "agreed"}` or `{"state": "disputed", "dispute": …, "game": …}`.
pub async fn post_dispute(
    State(node): State<Arc<Node>>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let chain = chain_of(&node)?;
    let v: Value = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request("malformed_request", format!("not JSON: {e}")))?;
    let receipt: verity_core::SignedReceipt = serde_json::from_value(v["receipt"].clone())
        .map_err(|e| {
            ApiError::bad_request(
                "malformed_request",
                format!("\"receipt\" must be a signed receipt as nodes give them: {e}"),
            )
        })?;
    let inputs = decode_native(&body, node.config.limits.max_tensor_elements)?.inputs;
    let out = crate::roles::optimistic::dispute_offchain(&node, &chain, receipt, inputs).await?;
    Ok(Json(out))
}

/// `GET /artela-network/artela-rollkit/inference/tx/{id}`: the OpenGradient SDK's result endpoint. Waits up
/// to 25 s for finalization; answers only with an output whose hashes equal the finalized ones.
pub async fn opengradient_result(
    State(node): State<Arc<Node>>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let id = parse_id(&id)?;
    let chain = chain_of(&node)?;
    let v = verified_result(&node, chain.as_ref(), id, Duration::from_secs(25))
        .await
        .map_err(|e| {
            if e.code == "pending" {
                ApiError::new(
                    axum::http::StatusCode::GATEWAY_TIMEOUT,
                    "pending",
                    e.message,
                )
            } else {
                e
            }
        })?;
    let og_mode = v.opengradient_mode.unwrap_or(0);
    let outs: Vec<(String, Vec<u64>, i8, Vec<i32>)> = v
        .outputs
        .into_iter()
        .zip(v.raw)
        .map(|((name, shape, scale, _), q)| (name, shape, scale, q))
        .collect();
    Ok(Json(crate::api::opengradient::result_document(
        &outs, og_mode,
    )))
}
