//! A sentence embedding from a token encoder: the pooling (and normalization) sentence-embedding models
//! define outside their ONNX graph, appended to the graph so that it is part of the canonical model — the
//! embedding a node returns is then the output its receipt binds and anyone can re-execute.
//!
//! Over the hidden states `h` (`[batch, sequence, width]`) and the attention mask `m` (`[batch,
//! sequence]`, 1 for a token, 0 for padding), as sentence-transformers computes them:
//! - `mean`: `Σ h·m / max(Σ m, 1e-9)`; `mean_sqrt_len`: `Σ h·m / √max(Σ m, 1e-9)`;
//! - `cls`: the first position's state;
//! - `max`: the largest state over the unmasked positions;
//! - and when `normalize`: the result divided by `max(‖·‖₂, 1e-12)`.
//!
//! The result is the graph's only output, `sentence_embedding` (`[batch, width]`).

use tract_onnx::pb::{self, TypeProto, ValueInfoProto};

use crate::onnx_edit::{int_attr, Out, BOOL, FLOAT};
use crate::CompileError;

/// The output a pooled model has.
pub const OUTPUT: &str = "sentence_embedding";

/// How token states become one vector.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PoolMode {
    /// The first position (a `[CLS]` token).
    Cls,
    /// The mean over the unmasked positions.
    Mean,
    /// The element-wise maximum over the unmasked positions.
    Max,
    /// The sum over the unmasked positions divided by the square root of their count.
    MeanSqrtLen,
}

impl std::str::FromStr for PoolMode {
    type Err = String;
    fn from_str(s: &str) -> Result<PoolMode, String> {
        Ok(match s {
            "cls" => PoolMode::Cls,
            "mean" => PoolMode::Mean,
            "max" => PoolMode::Max,
            "mean_sqrt_len" => PoolMode::MeanSqrtLen,
            _ => {
                return Err(format!(
                    "unknown pooling '{s}' (cls, mean, max, mean_sqrt_len)"
                ))
            }
        })
    }
}

impl PoolMode {
    pub fn name(self) -> &'static str {
        match self {
            PoolMode::Cls => "cls",
            PoolMode::Mean => "mean",
            PoolMode::Max => "max",
            PoolMode::MeanSqrtLen => "mean_sqrt_len",
        }
    }
}

/// The pooling appended to an encoder.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pooling {
    pub mode: PoolMode,
    /// Divide by the Euclidean norm.
    pub normalize: bool,
    /// The token states: this graph output or tensor (default: the graph's first output).
    pub hidden: Option<String>,
    /// The attention-mask input.
    pub mask: String,
}

impl Pooling {
    pub fn new(mode: PoolMode, normalize: bool) -> Pooling {
        Pooling {
            mode,
            normalize,
            hidden: None,
            mask: "attention_mask".into(),
        }
    }
}

/// Append `p` to the main graph; its outputs become just [`OUTPUT`].
pub fn append(model: &mut pb::ModelProto, p: &Pooling) -> Result<(), CompileError> {
    let opset = model
        .opset_import
        .iter()
        .find(|o| o.domain.is_empty() || o.domain == "ai.onnx")
        .map_or(0, |o| o.version);
    let graph = model
        .graph
        .as_mut()
        .ok_or_else(|| CompileError::Onnx("the model has no graph".into()))?;
    let hidden = match &p.hidden {
        Some(h) => h.clone(),
        None => graph
            .output
            .first()
            .map(|o| o.name.clone())
            .ok_or_else(|| CompileError::Onnx("the model has no output to pool".into()))?,
    };
    let produced = graph.node.iter().any(|n| n.output.contains(&hidden))
        || graph.input.iter().any(|i| i.name == hidden);
    if !produced {
        return Err(CompileError::Onnx(format!(
            "pooling: no tensor named '{hidden}' in the model"
        )));
    }
    if !graph.input.iter().any(|i| i.name == p.mask) {
        return Err(CompileError::Onnx(format!(
            "pooling: the model has no input named '{}' (the attention mask; inputs: {})",
            p.mask,
            graph
                .input
                .iter()
                .map(|i| i.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    let mut out = Out::new("pooling/".into(), &mut graph.initializer, opset);
    let last = if p.normalize { None } else { Some(OUTPUT) };
    let mask = out.cast(p.mask.clone(), FLOAT);
    // [batch, sequence, 1]
    let m = out.unsqueeze(mask, 2);
    let pooled = match p.mode {
        PoolMode::Cls => {
            let first = out.ints(vec![], vec![0]);
            out.node(
                "Gather",
                vec![hidden, first],
                last,
                vec![int_attr("axis", 1)],
            )
        }
        PoolMode::Mean | PoolMode::MeanSqrtLen => {
            let masked = out.node("Mul", vec![hidden, m.clone()], None, vec![]);
            let sum = out.reduce_axis("ReduceSum", masked, 1, false, None);
            let count = out.reduce_axis("ReduceSum", m, 1, false, None);
            let tiny = out.floats(vec![], vec![1e-9]);
            let mut by = out.node("Max", vec![count, tiny], None, vec![]);
            if p.mode == PoolMode::MeanSqrtLen {
                by = out.node("Sqrt", vec![by], None, vec![]);
            }
            out.node("Div", vec![sum, by], last, vec![])
        }
        PoolMode::Max => {
            // padding positions take the lowest float, which the importer reads as a mask fill
            let keep = out.cast(m, BOOL);
            let low = out.floats(vec![], vec![f32::MIN]);
            let filled = out.node("Where", vec![keep, hidden, low], None, vec![]);
            out.reduce_axis("ReduceMax", filled, 1, false, last)
        }
    };
    if p.normalize {
        let norm = out.l2_norm(pooled.clone());
        let tiny = out.floats(vec![], vec![1e-12]);
        let by = out.node("Max", vec![norm, tiny], None, vec![]);
        out.node("Div", vec![pooled, by], Some(OUTPUT), vec![]);
    }
    let nodes = std::mem::take(&mut out.nodes);
    graph.node.extend(nodes);
    graph.output = vec![ValueInfoProto {
        name: OUTPUT.into(),
        r#type: Some(TypeProto {
            value: Some(pb::type_proto::Value::TensorType(pb::type_proto::Tensor {
                elem_type: FLOAT,
                shape: None,
            })),
            ..Default::default()
        }),
        ..Default::default()
    }];
    Ok(())
}
