//! Writing standard ONNX nodes into a protobuf graph before the front end reads it: the rewrites of
//! scikit-learn operators ([`crate::onnx_ml`]) and the pooling appended to sentence encoders
//! ([`crate::pooling`]) both build on this.

use tract_onnx::pb::{AttributeProto, NodeProto, TensorProto};

pub(crate) const FLOAT: i32 = 1;
pub(crate) const INT64: i32 = 7;
pub(crate) const BOOL: i32 = 9;

pub(crate) fn int_attr(name: &str, v: i64) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: 2,
        i: v,
        ..Default::default()
    }
}

fn ints_attr(name: &str, v: Vec<i64>) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: 7,
        ints: v,
        ..Default::default()
    }
}

/// Writes standard nodes and initializers under fresh names that start with `prefix`.
pub(crate) struct Out<'a> {
    prefix: String,
    k: usize,
    pub nodes: Vec<NodeProto>,
    inits: &'a mut Vec<TensorProto>,
    /// Default-domain opset version (reductions and `Unsqueeze` take their axes as an input from 13,
    /// `ReduceMax` from 18).
    opset: i64,
}

impl<'a> Out<'a> {
    pub fn new(prefix: String, inits: &'a mut Vec<TensorProto>, opset: i64) -> Out<'a> {
        Out {
            prefix,
            k: 0,
            nodes: vec![],
            inits,
            opset,
        }
    }

    fn fresh(&mut self, what: &str) -> String {
        self.k += 1;
        format!("{}{what}{}", self.prefix, self.k)
    }

    pub fn floats(&mut self, dims: Vec<i64>, data: Vec<f32>) -> String {
        let name = self.fresh("c");
        self.inits.push(TensorProto {
            dims,
            data_type: FLOAT,
            float_data: data,
            name: name.clone(),
            ..Default::default()
        });
        name
    }

    pub fn ints(&mut self, dims: Vec<i64>, data: Vec<i64>) -> String {
        let name = self.fresh("c");
        self.inits.push(TensorProto {
            dims,
            data_type: INT64,
            int64_data: data,
            name: name.clone(),
            ..Default::default()
        });
        name
    }

    /// A node writing `out` (or a fresh name).
    pub fn node(
        &mut self,
        op: &str,
        inputs: Vec<String>,
        out: Option<&str>,
        attrs: Vec<AttributeProto>,
    ) -> String {
        let out = out.map_or_else(|| self.fresh(&op.to_lowercase()), str::to_string);
        let name = self.fresh(op);
        self.nodes.push(NodeProto {
            input: inputs,
            output: vec![out.clone()],
            name,
            op_type: op.into(),
            attribute: attrs,
            ..Default::default()
        });
        out
    }

    /// `op` (`ReduceSum`, `ReduceMax`) over `axis`, kept when `keep`, written to `out` (or a fresh name).
    pub fn reduce_axis(
        &mut self,
        op: &str,
        x: String,
        axis: i64,
        keep: bool,
        out: Option<&str>,
    ) -> String {
        let keep = int_attr("keepdims", keep as i64);
        if self.opset >= 18 || (op == "ReduceSum" && self.opset >= 13) {
            let axes = self.ints(vec![1], vec![axis]);
            self.node(op, vec![x, axes], out, vec![keep])
        } else {
            self.node(op, vec![x], out, vec![ints_attr("axes", vec![axis]), keep])
        }
    }

    /// `ReduceSum`/`ReduceMax` over axis 1, kept.
    pub fn reduce(&mut self, op: &str, x: String) -> String {
        self.reduce_axis(op, x, 1, true, None)
    }

    /// The Euclidean norm of `x` along axis 1, kept: `√Σ x²`.
    pub fn l2_norm(&mut self, x: String) -> String {
        let sq = self.node("Mul", vec![x.clone(), x], None, vec![]);
        let ss = self.reduce("ReduceSum", sq);
        self.node("Sqrt", vec![ss], None, vec![])
    }

    /// `x` with a new axis of size 1 at `axis`.
    pub fn unsqueeze(&mut self, x: String, axis: i64) -> String {
        if self.opset >= 13 {
            let axes = self.ints(vec![1], vec![axis]);
            self.node("Unsqueeze", vec![x, axes], None, vec![])
        } else {
            self.node(
                "Unsqueeze",
                vec![x],
                None,
                vec![ints_attr("axes", vec![axis])],
            )
        }
    }

    /// `x` converted to element type `to`.
    pub fn cast(&mut self, x: String, to: i32) -> String {
        self.node("Cast", vec![x], None, vec![int_attr("to", to as i64)])
    }
}
