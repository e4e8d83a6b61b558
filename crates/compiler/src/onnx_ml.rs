//! The classical-ML operators scikit-learn exporters write (the `ai.onnx.ml` domain), rewritten into
//! standard ONNX before the front end reads the graph: `Scaler`, `Normalizer`, `LinearClassifier`,
//! `LinearRegressor`, `ArrayFeatureExtractor`, and `Cast`-free label lookups. A classifier's label output
//! (the class label at the arg-max of its scores) stays an integer output. `ZipMap` (a list of maps),
//! string labels and the other `ai.onnx.ml` operators are refused with a sentence saying what to change.

use tract_onnx::pb::{self, AttributeProto, NodeProto};

use crate::onnx_edit::{int_attr, Out};
use crate::CompileError;

const ML: &str = "ai.onnx.ml";

fn refuse(node: &NodeProto, why: impl std::fmt::Display) -> CompileError {
    CompileError::Unsupported {
        op: node.op_type.clone(),
        node: node.name.clone(),
        why: why.to_string(),
    }
}

fn attr<'a>(node: &'a NodeProto, name: &str) -> Option<&'a AttributeProto> {
    node.attribute.iter().find(|a| a.name == name)
}

fn attr_str(node: &NodeProto, name: &str) -> Option<String> {
    attr(node, name).map(|a| String::from_utf8_lossy(&a.s).into_owned())
}

/// Rewrite every `ai.onnx.ml` node of the main graph into standard ONNX (a model without any is left
/// untouched).
pub fn rewrite(model: &mut pb::ModelProto) -> Result<(), CompileError> {
    let opset = model
        .opset_import
        .iter()
        .find(|o| o.domain.is_empty() || o.domain == "ai.onnx")
        .map_or(0, |o| o.version);
    let Some(graph) = model.graph.as_mut() else {
        return Ok(());
    };
    if !graph.node.iter().any(|n| n.domain == ML) {
        return Ok(());
    }
    if opset < 13 {
        return Err(CompileError::Onnx(format!(
            "scikit-learn operators need a default opset of at least 13 (the model imports {opset}); \
             export with target_opset=13 or later"
        )));
    }
    let nodes = std::mem::take(&mut graph.node);
    let mut out_nodes = Vec::with_capacity(nodes.len());
    for node in nodes {
        if node.domain != ML {
            out_nodes.push(node);
            continue;
        }
        let base = if node.name.is_empty() {
            node.output.first().cloned().unwrap_or_default()
        } else {
            node.name.clone()
        };
        let mut out = Out::new(format!("{base}/ml."), &mut graph.initializer, opset);
        lower(&node, &mut out)?;
        out_nodes.extend(out.nodes);
    }
    graph.node = out_nodes;
    Ok(())
}

fn lower(node: &NodeProto, out: &mut Out<'_>) -> Result<(), CompileError> {
    let x = node
        .input
        .first()
        .cloned()
        .ok_or_else(|| refuse(node, "no input"))?;
    let y = node.output.first().map(String::as_str);
    let floats = |name: &str| {
        attr(node, name)
            .map(|a| a.floats.clone())
            .unwrap_or_default()
    };
    let post = attr_str(node, "post_transform").unwrap_or_else(|| "NONE".into());
    match node.op_type.as_str() {
        "Scaler" => {
            // (x − offset) · scale
            let (offset, scale) = (floats("offset"), floats("scale"));
            let dims = |v: &Vec<f32>| vec![v.len() as i64];
            let o = out.floats(dims(&offset), offset.clone());
            let s = out.floats(dims(&scale), scale.clone());
            let d = out.node("Sub", vec![x, o], None, vec![]);
            out.node("Mul", vec![d, s], y, vec![]);
        }
        "Normalizer" => {
            let norm = attr_str(node, "norm").unwrap_or_else(|| "MAX".into());
            let by = match norm.as_str() {
                "MAX" => out.reduce("ReduceMax", x.clone()),
                "L1" => {
                    let a = out.node("Abs", vec![x.clone()], None, vec![]);
                    out.reduce("ReduceSum", a)
                }
                "L2" => out.l2_norm(x.clone()),
                other => return Err(refuse(node, format!("norm {other}"))),
            };
            out.node("Div", vec![x, by], y, vec![]);
        }
        "LinearRegressor" | "LinearClassifier" => {
            let coef = floats("coefficients");
            let intercepts = floats("intercepts");
            let classifier = node.op_type == "LinearClassifier";
            let n_out = if classifier {
                let labels = attr(node, "classlabels_ints")
                    .map(|a| a.ints.len())
                    .unwrap_or(0);
                if labels == 0 {
                    return Err(refuse(
                        node,
                        "string class labels are not numbers: export the classifier with integer \
                         labels (e.g. fit on label indices)",
                    ));
                }
                labels
            } else {
                attr(node, "targets").map_or(1, |a| a.i.max(1) as usize)
            };
            let rows = coef.len().checked_div(n_out).unwrap_or(0);
            if rows == 0 || rows * n_out != coef.len() {
                return Err(refuse(
                    node,
                    format!(
                        "{} coefficients for {n_out} outputs (only one coefficient row per class \
                         is supported)",
                        coef.len()
                    ),
                ));
            }
            let w = out.floats(vec![n_out as i64, rows as i64], coef.clone());
            let mut ins = vec![x, w];
            if !intercepts.is_empty() {
                if intercepts.len() != n_out {
                    return Err(refuse(node, "one intercept per output is needed"));
                }
                ins.push(out.floats(vec![n_out as i64], intercepts.clone()));
            }
            let scores_name = if classifier {
                node.output.get(1).map(String::as_str)
            } else {
                y
            };
            let transform = match post.as_str() {
                "NONE" => None,
                "SOFTMAX" => Some("Softmax"),
                "LOGISTIC" => Some("Sigmoid"),
                other => return Err(refuse(node, format!("post_transform {other}"))),
            };
            let raw = out.node(
                "Gemm",
                ins,
                if transform.is_none() {
                    scores_name
                } else {
                    None
                },
                vec![int_attr("transB", 1)],
            );
            let scores = match transform {
                Some("Softmax") => {
                    out.node("Softmax", vec![raw], scores_name, vec![int_attr("axis", 1)])
                }
                Some(op) => out.node(op, vec![raw], scores_name, vec![]),
                None => raw,
            };
            if classifier {
                // label = classlabels[argmax(scores)]
                let labels: Vec<i64> = attr(node, "classlabels_ints")
                    .map(|a| a.ints.clone())
                    .unwrap_or_default();
                let best = out.node(
                    "ArgMax",
                    vec![scores],
                    None,
                    vec![int_attr("axis", 1), int_attr("keepdims", 0)],
                );
                let table = out.ints(vec![labels.len() as i64], labels);
                out.node("Gather", vec![table, best], y, vec![int_attr("axis", 0)]);
            }
        }
        "ArrayFeatureExtractor" => {
            // the elements of x's last axis at the given indices
            let idx = node
                .input
                .get(1)
                .cloned()
                .ok_or_else(|| refuse(node, "no indices"))?;
            out.node("Gather", vec![x, idx], y, vec![int_attr("axis", -1)]);
        }
        "ZipMap" => {
            return Err(refuse(
                node,
                "ZipMap outputs a list of maps, which is not a tensor: export with \
                 options={'zipmap': False}",
            ))
        }
        other => {
            return Err(refuse(
                node,
                format!("the scikit-learn operator {other} has no canonical lowering"),
            ))
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::onnx_edit::INT64;

    fn model(node: NodeProto, opset: i64) -> pb::ModelProto {
        pb::ModelProto {
            opset_import: vec![pb::OperatorSetIdProto {
                domain: String::new(),
                version: opset,
            }],
            graph: Some(pb::GraphProto {
                node: vec![node],
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn ml(op: &str, attribute: Vec<AttributeProto>) -> NodeProto {
        NodeProto {
            input: vec!["x".into()],
            output: vec!["y".into(), "z".into()],
            name: "n".into(),
            op_type: op.into(),
            domain: ML.into(),
            attribute,
            ..Default::default()
        }
    }

    fn refusal(m: &mut pb::ModelProto) -> String {
        match rewrite(m) {
            Err(CompileError::Unsupported { why, .. }) => why,
            Err(CompileError::Onnx(why)) => why,
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn standard_models_are_untouched() {
        let relu = NodeProto {
            op_type: "Relu".into(),
            ..Default::default()
        };
        let mut m = model(relu, 17);
        let before = m.clone();
        rewrite(&mut m).unwrap();
        assert_eq!(m, before);
    }

    #[test]
    fn what_cannot_be_a_tensor_is_refused_with_the_fix() {
        let why = refusal(&mut model(ml("ZipMap", vec![]), 17));
        assert!(why.contains("zipmap"), "{why}");
        let strings = AttributeProto {
            name: "classlabels_strings".into(),
            strings: vec![b"a".to_vec(), b"b".to_vec()],
            ..Default::default()
        };
        let coef = AttributeProto {
            name: "coefficients".into(),
            floats: vec![1.0, 2.0],
            ..Default::default()
        };
        let why = refusal(&mut model(ml("LinearClassifier", vec![strings, coef]), 17));
        assert!(why.contains("integer labels"), "{why}");
        let why = refusal(&mut model(ml("TreeEnsembleClassifier", vec![]), 17));
        assert!(why.contains("TreeEnsembleClassifier"), "{why}");
        let why = refusal(&mut model(ml("Scaler", vec![]), 11));
        assert!(why.contains("opset"), "{why}");
    }

    #[test]
    fn a_linear_classifier_becomes_gemm_softmax_argmax_gather() {
        let f = |name: &str, v: Vec<f32>| AttributeProto {
            name: name.into(),
            floats: v,
            ..Default::default()
        };
        let labels = AttributeProto {
            name: "classlabels_ints".into(),
            ints: vec![3, 5],
            ..Default::default()
        };
        let post = AttributeProto {
            name: "post_transform".into(),
            s: b"SOFTMAX".to_vec(),
            ..Default::default()
        };
        let node = ml(
            "LinearClassifier",
            vec![
                f("coefficients", vec![1.0, 0.0, 0.0, 1.0]),
                f("intercepts", vec![0.5, -0.5]),
                labels,
                post,
            ],
        );
        let mut m = model(node, 17);
        rewrite(&mut m).unwrap();
        let g = m.graph.unwrap();
        let ops: Vec<&str> = g.node.iter().map(|n| n.op_type.as_str()).collect();
        assert_eq!(ops, ["Gemm", "Softmax", "ArgMax", "Gather"]);
        assert_eq!(g.node[1].output, ["z"]);
        assert_eq!(g.node[3].output, ["y"]);
        let table = g.initializer.iter().find(|t| t.data_type == INT64).unwrap();
        assert_eq!(table.int64_data, [3, 5]);
    }
}
