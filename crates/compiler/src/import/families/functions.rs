//! Functions: logarithms and their stable patterns (log-softmax, log-sum-exp, softplus), and the
//! recognized `Celu` expansion.

use tract_onnx::prelude::*;
use verity_engine::ir::{Op, ReduceKind};

use crate::fgraph::{FOp, Func};
use crate::import::{Builder, Ref};

impl Builder<'_> {
    /// `ln(x)`, with the two patterns whose logarithm a table over the result would hold poorly:
    /// `ln(softmax(x))` becomes `(x − max) − ln Σ e^(x − max)` (a log-softmax; a table of `ln` over
    /// probabilities near 0 would lose the small ones), `ln Σ e^x` becomes `max + ln Σ e^(x − max)`, and
    /// `ln(e^x + 1)` becomes one softplus table on `x`.
    pub(in crate::import) fn ln(&mut self, node: &TypedNode, x: Ref, out_shape: Vec<u32>) -> Ref {
        let origin = node.op.name().to_string();
        let name = &node.name;
        if let Ref::N(i) = x {
            let (n, ins) = self.nodes[i].clone();
            if let FOp::Softmax { axis } = n.op {
                let (d, l, _) = self.log_sum_exp_parts(name, &origin, ins[0], vec![axis]);
                return self.op(
                    name.clone(),
                    &origin,
                    FOp::Canon(Op::Sub),
                    vec![d, l],
                    out_shape,
                );
            }
            // ln Σ e^x
            if let FOp::Canon(Op::Reduce {
                kind: ReduceKind::Sum,
                axes,
            }) = &n.op
            {
                if let Ref::N(j) = ins[0] {
                    let (en, eins) = self.nodes[j].clone();
                    if en.op == FOp::Func(Func::Exp) {
                        let (_, l, m) =
                            self.log_sum_exp_parts(name, &origin, eins[0], axes.clone());
                        return self.op(
                            name.clone(),
                            &origin,
                            FOp::Canon(Op::Add),
                            vec![l, m],
                            out_shape,
                        );
                    }
                }
            }
            if let (FOp::Canon(Op::Add), [a, b]) = (&n.op, &ins[..]) {
                let one = |r: Ref| {
                    self.fold(r)
                        .is_some_and(|c| c.data.iter().all(|v| v == 1.0))
                };
                for (e, c) in [(*a, *b), (*b, *a)] {
                    if let (Ref::N(j), true) = (e, one(c)) {
                        let (en, eins) = self.nodes[j].clone();
                        if en.op == FOp::Func(Func::Exp) && en.shape == out_shape {
                            return self.op(
                                name.clone(),
                                &origin,
                                FOp::Func(Func::Softplus),
                                vec![eins[0]],
                                out_shape,
                            );
                        }
                    }
                }
            }
        }
        self.op(
            name.clone(),
            &origin,
            FOp::Func(Func::Ln),
            vec![x],
            out_shape,
        )
    }

    /// `x − max` and `ln Σ e^(x − max)` over `axes` (each sum of exponentials is then at least 1, and
    /// no exponential overflows), and the maximum.
    fn log_sum_exp_parts(
        &mut self,
        name: &str,
        origin: &str,
        x: Ref,
        axes: Vec<u32>,
    ) -> (Ref, Ref, Ref) {
        let shape = self.shape_of(x);
        let mut red = shape.clone();
        for &a in &axes {
            red[a as usize] = 1;
        }
        let m = self.op(
            format!("{name}.max"),
            origin,
            FOp::Canon(Op::Reduce {
                kind: ReduceKind::Max,
                axes: axes.clone(),
            }),
            vec![x],
            red.clone(),
        );
        let d = self.op(
            format!("{name}.shifted"),
            origin,
            FOp::Canon(Op::Sub),
            vec![x, m],
            shape.clone(),
        );
        let e = self.op(
            format!("{name}.exp"),
            origin,
            FOp::Func(Func::ExpShifted),
            vec![d],
            shape,
        );
        let s = self.op(
            format!("{name}.sum"),
            origin,
            FOp::Canon(Op::Reduce {
                kind: ReduceKind::Sum,
                axes,
            }),
            vec![e],
            red.clone(),
        );
        let l = self.op(
            format!("{name}.log_sum"),
            origin,
            FOp::Func(Func::Ln),
            vec![s],
            red,
        );
        (d, l, m)
    }

    /// tract expands ONNX `Celu` as `max(0, x) + min(0, e^(x/α) − 1)`, without the factor α of the
    /// negative part (`α · (e^(x/α) − 1)`); the expansion is recognized by its node names
    /// (`….x_over_alpha` → `….exp` → `….minus_one`) and α ≠ 1 is returned, so the op can be refused
    /// rather than compiled wrong.
    pub(in crate::import) fn celu_alpha(&self, node: &TypedNode, x: Ref) -> Option<f64> {
        let base = node.name.strip_suffix(".minus_one")?;
        let Ref::N(e) = x else { return None };
        let (en, eins) = &self.nodes[e];
        if en.op != FOp::Func(Func::Exp) || en.name != format!("{base}.exp") {
            return None;
        }
        let Ref::N(d) = eins[0] else { return None };
        let (dn, dins) = &self.nodes[d];
        if dn.name != format!("{base}.x_over_alpha") || dn.op != FOp::Canon(Op::Mul) {
            return None;
        }
        let c = self.fold(*dins.get(1)?)?;
        let inv = c.data.first()?;
        let alpha = 1.0 / inv;
        (c.data.iter().all(|v| v == inv) && inv != 0.0 && alpha != 1.0).then_some(alpha)
    }
}
