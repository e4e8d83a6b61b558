//! KServe v2 (the Open Inference Protocol, as `tritonclient` speaks it): server and model metadata,
//! health, and inference with JSON or binary tensor data. The receipt rides in the response's
//! `parameters` (`verity_receipt`), so a KServe client gets the same evidence as a native one.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::Response;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Serialize;
use serde_json::Value;

use crate::api::server::{read_request, run_inference, BINARY_HEADER};
use crate::error::ApiError;
use crate::state::Node;

/// The `/v2` routes.
pub fn routes() -> Router<Arc<Node>> {
    Router::new()
        .route("/v2", get(v2_server))
        .route("/v2/health/live", get(v2_live))
        .route("/v2/health/ready", get(v2_ready))
        .route("/v2/models/{model}", get(v2_model))
        .route("/v2/models/{model}/ready", get(v2_model_ready))
        .route("/v2/models/{model}/infer", post(v2_infer))
        .route(
            "/v2/models/{model}/versions/{version}",
            get(v2_model_version),
        )
        .route(
            "/v2/models/{model}/versions/{version}/ready",
            get(v2_model_version_ready),
        )
        .route(
            "/v2/models/{model}/versions/{version}/infer",
            post(v2_infer_version),
        )
}

/// KServe v2 clients expect `{"error": "<message>"}`; keep the stable code beside it.
pub async fn kserve_error(resp: Response) -> Response {
    let (mut parts, body) = resp.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, 1 << 16).await else {
        return Response::from_parts(parts, Body::empty());
    };
    let v: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    let (code, message) = match &v["error"] {
        Value::Object(e) => (
            e.get("code").cloned().unwrap_or(Value::Null),
            e.get("message").cloned().unwrap_or(Value::Null),
        ),
        _ => return Response::from_parts(parts, Body::from(bytes)),
    };
    let out = serde_json::to_string(&KserveError {
        error: message,
        code,
    })
    .unwrap_or_default();
    parts.headers.remove(header::CONTENT_LENGTH);
    Response::from_parts(parts, Body::from(out))
}

/// A KServe error body.
#[derive(Serialize)]
struct KserveError {
    error: Value,
    code: Value,
}

/// `GET /v2`.
#[derive(Serialize)]
struct ServerMetadata {
    name: &'static str,
    version: &'static str,
    extensions: [&'static str; 2],
}

/// `GET /v2/health/live`.
#[derive(Serialize)]
struct Live {
    live: bool,
}

/// Readiness of the server or of a model (with its name and, when asked for one, its version).
#[derive(Serialize)]
struct Ready {
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    version: Option<String>,
    ready: bool,
}

/// One input or output in a model's metadata.
#[derive(Serialize)]
struct TensorMetadata {
    name: String,
    datatype: &'static str,
    shape: Vec<u64>,
}

/// `GET /v2/models/{model}[/versions/{version}]`.
#[derive(Serialize)]
struct ModelMetadata {
    name: String,
    versions: Vec<String>,
    platform: &'static str,
    inputs: Vec<TensorMetadata>,
    outputs: Vec<TensorMetadata>,
    parameters: ModelParameters,
}

/// The model's Verity ID in its metadata.
#[derive(Serialize)]
struct ModelParameters {
    model_id: String,
}

/// An output tensor's parameters: its fixed-point scale, and its byte count when sent as binary data.
#[derive(Serialize)]
struct OutputParameters {
    scale: i8,
    #[serde(skip_serializing_if = "Option::is_none")]
    binary_data_size: Option<usize>,
}

/// The values of an output sent as JSON (integers for integer outputs).
#[derive(Serialize)]
#[serde(untagged)]
enum OutputData {
    Int(Vec<i64>),
    Float(Vec<f64>),
}

/// One output of an inference response.
#[derive(Serialize)]
struct OutputTensor<'a> {
    name: &'a str,
    datatype: &'static str,
    shape: &'a [u64],
    parameters: OutputParameters,
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<OutputData>,
}

/// The evidence beside the outputs: model and request IDs and the signed receipt (as a JSON string,
/// KServe parameters being scalars).
#[derive(Serialize)]
struct InferParameters {
    verity_model_id: String,
    verity_request_id: String,
    verity_receipt: String,
}

/// An inference response (the JSON part, before any binary data).
#[derive(Serialize)]
struct InferResponse<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<String>,
    model_name: String,
    model_version: String,
    outputs: Vec<OutputTensor<'a>>,
    parameters: InferParameters,
}

async fn v2_server() -> Json<ServerMetadata> {
    Json(ServerMetadata {
        name: "verity",
        version: env!("CARGO_PKG_VERSION"),
        extensions: ["binary_tensor_data", "verity_receipts"],
    })
}

async fn v2_live() -> Json<Live> {
    Json(Live { live: true })
}

async fn v2_ready() -> Json<Ready> {
    Json(Ready {
        name: None,
        version: None,
        ready: true,
    })
}

/// An output at scale ≤ 0 holds integers (arg-max labels, indices): `INT64`; others `FP64`.
fn v2_output_datatype(scale: i8) -> &'static str {
    if scale <= 0 {
        "INT64"
    } else {
        "FP64"
    }
}

fn v2_datatype(kind: &str) -> &'static str {
    if kind == "int" {
        "INT64"
    } else {
        "FP32"
    }
}

async fn v2_metadata(node: &Arc<Node>, reference: &str) -> Result<Json<ModelMetadata>, ApiError> {
    let (rec, version) = crate::roles::replicate::resolve(node, reference).await?;
    // One read of the index: the versions under the resolved name, or those naming the model for an ID.
    let store = node.store.clone();
    let all = node.blocking(move || store.versions()).await??;
    let name = version
        .as_ref()
        .map(|v| v.manifest.manifest.name.clone())
        .unwrap_or_else(|| reference.to_string());
    let versions: Vec<String> = all
        .iter()
        .map(|x| &x.manifest.manifest)
        .filter(|m| match &version {
            Some(v) => m.name == v.manifest.manifest.name,
            None => m.model_id == rec.id,
        })
        .map(|m| m.version.clone())
        .collect();
    let doc = ModelMetadata {
        name,
        versions,
        platform: "verity_canonical",
        inputs: rec
            .inputs
            .iter()
            .map(|t| TensorMetadata {
                name: t.name.clone(),
                datatype: v2_datatype(&t.kind),
                shape: t.shape.clone(),
            })
            .collect(),
        outputs: rec
            .outputs
            .iter()
            .map(|t| TensorMetadata {
                name: t.name.clone(),
                datatype: v2_output_datatype(t.scale),
                shape: t.shape.clone(),
            })
            .collect(),
        parameters: ModelParameters {
            model_id: rec.id.to_hex(),
        },
    };
    Ok(Json(doc))
}

async fn v2_model(
    State(node): State<Arc<Node>>,
    Path(model): Path<String>,
) -> Result<Json<ModelMetadata>, ApiError> {
    v2_metadata(&node, &model).await
}

async fn v2_model_version(
    State(node): State<Arc<Node>>,
    Path((model, version)): Path<(String, String)>,
) -> Result<Json<ModelMetadata>, ApiError> {
    v2_metadata(&node, &format!("{model}@{version}")).await
}

async fn v2_model_ready(
    State(node): State<Arc<Node>>,
    Path(model): Path<String>,
) -> Result<Json<Ready>, ApiError> {
    let (rec, _) = crate::roles::replicate::resolve(&node, &model).await?;
    node.load(&rec).await?;
    Ok(Json(Ready {
        name: Some(model),
        version: None,
        ready: true,
    }))
}

async fn v2_model_version_ready(
    State(node): State<Arc<Node>>,
    Path((model, version)): Path<(String, String)>,
) -> Result<Json<Ready>, ApiError> {
    let (rec, _) = crate::roles::replicate::resolve(&node, &format!("{model}@{version}")).await?;
    node.load(&rec).await?;
    Ok(Json(Ready {
        name: Some(model),
        version: Some(version),
        ready: true,
    }))
}

async fn v2_infer(
    State(node): State<Arc<Node>>,
    Path(model): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    v2_infer_ref(node, model, headers, body).await
}

async fn v2_infer_version(
    State(node): State<Arc<Node>>,
    Path((model, version)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    v2_infer_ref(node, format!("{model}@{version}"), headers, body).await
}

async fn v2_infer_ref(
    node: Arc<Node>,
    reference: String,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let req = read_request(&node, &headers, body, false).await?;
    let requested = req.outputs.clone();
    let binary_all = req.binary_output;
    let kserve_id = req.id.clone();
    let (rec, version, loaded, inf) = run_inference(&node, &reference, req).await?;
    let outs = Node::describe_outputs(loaded.exec.model(), &inf.outputs);
    // Which outputs to return, and how.
    let selection: Vec<(usize, bool)> = match &requested {
        None => (0..outs.len()).map(|i| (i, binary_all)).collect(),
        Some(list) => list
            .iter()
            .map(|r| {
                outs.iter()
                    .position(|o| o.0 == r.name)
                    .map(|i| (i, r.binary))
                    .ok_or_else(|| {
                        ApiError::bad_request(
                            "unknown_output",
                            format!("the model has no output named '{}'", r.name),
                        )
                    })
            })
            .collect::<Result<_, _>>()?,
    };
    let (outputs, binary) = encode_outputs(&outs, selection);
    let receipt_json =
        serde_json::to_string(&inf.receipt).map_err(|e| ApiError::internal(e.to_string()))?;
    let doc = InferResponse {
        id: kserve_id,
        model_name: version
            .as_ref()
            .map(|v| v.manifest.manifest.name.clone())
            .unwrap_or_else(|| reference.clone()),
        model_version: version
            .as_ref()
            .map(|v| v.manifest.manifest.version.clone())
            .unwrap_or_default(),
        outputs,
        parameters: InferParameters {
            verity_model_id: rec.id.to_hex(),
            verity_request_id: inf.receipt.receipt.request_id.to_hex(),
            verity_receipt: receipt_json,
        },
    };
    let header_bytes = serde_json::to_vec(&doc).map_err(|e| ApiError::internal(e.to_string()))?;
    if binary.is_empty() {
        let mut r = Response::new(Body::from(header_bytes));
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        return Ok(r);
    }
    let hlen = header_bytes.len();
    let mut all = header_bytes;
    all.extend_from_slice(&binary);
    let mut r = Response::new(Body::from(all));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    if let Ok(v) = HeaderValue::from_str(&hlen.to_string()) {
        r.headers_mut().insert(BINARY_HEADER, v);
    }
    Ok(r)
}

/// The selected outputs (index, as binary data or not) as response tensors, and the binary data that
/// follows the JSON header (little-endian `INT64` for integer outputs, `FP64` for others).
fn encode_outputs(
    outs: &[(String, Vec<u64>, i8, Vec<f64>)],
    selection: Vec<(usize, bool)>,
) -> (Vec<OutputTensor<'_>>, Vec<u8>) {
    let mut binary = Vec::new();
    let mut outputs = Vec::new();
    for (i, bin) in selection {
        let (name, shape, scale, data) = &outs[i];
        let datatype = v2_output_datatype(*scale);
        let int = datatype == "INT64";
        let mut o = OutputTensor {
            name,
            datatype,
            shape,
            parameters: OutputParameters {
                scale: *scale,
                binary_data_size: None,
            },
            data: None,
        };
        if bin {
            let before = binary.len();
            for v in data {
                if int {
                    binary.extend_from_slice(&(*v as i64).to_le_bytes());
                } else {
                    binary.extend_from_slice(&v.to_le_bytes());
                }
            }
            o.parameters.binary_data_size = Some(binary.len() - before);
        } else if int {
            o.data = Some(OutputData::Int(data.iter().map(|&v| v as i64).collect()));
        } else {
            o.data = Some(OutputData::Float(data.clone()));
        }
        outputs.push(o);
    }
    (outputs, binary)
}
