//! Lowerings of the op families real exports use beyond arithmetic and contractions — comparisons and
//! boolean masks, `Where`, arg-max/min, padding, tiling, cumulative sums, element gathers, resizing,
//! transposed convolutions, local response normalization, triangular masks — each written with ops the
//! canonical format already has, so no new canonical op (and no new case in the executors, `onestep` or
//! the prover) is needed. Booleans are integers 0/1 at scale 0. One file per family: `logic` (tests,
//! `Where`, arg-max, top-k, one-hot gathers), `layout`, `windows`, `functions`. Spec: `docs/spec/canonical.md` §5.1.

use super::{Builder, Ref};
use crate::fgraph::FOp;

mod functions;
mod layout;
mod logic;
mod windows;

/// Float constants at least this large (or infinite) are the "minus infinity" of attention masks
/// (`finfo(float32).min`, `-inf`); they are clamped to [`MASK_FILL`] at import.
pub const MASK_MAGNITUDE: f64 = 1e30;
/// What a mask fill is clamped to: far below any attention logit (a softmax's table ends 24 below the
/// row's maximum), small enough that a sum of it and a logit keeps 12 fractional bits. A `Max`/`Min`
/// against a fill (a clip at `finfo.min`) is no bound at all.
pub const MASK_FILL: f64 = 1024.0;

/// Clamp a float constant's mask fills (see [`MASK_MAGNITUDE`]); whether it held any.
pub fn clamp_mask_fills(data: &mut [f64]) -> bool {
    let mut any = false;
    for v in data {
        if !v.is_nan() && v.abs() >= MASK_MAGNITUDE {
            *v = MASK_FILL.copysign(*v);
            any = true;
        }
    }
    any
}

/// Row-major strides of a shape.
pub(super) fn strides_of(shape: &[u32]) -> Vec<u64> {
    let mut st = vec![1u64; shape.len()];
    for i in (0..shape.len().saturating_sub(1)).rev() {
        st[i] = st[i + 1] * shape[i + 1] as u64;
    }
    st
}

/// A shape of ones except `n` at `axis`.
pub(super) fn along(rank: usize, axis: usize, n: u32) -> Vec<u32> {
    let mut s = vec![1; rank];
    s[axis] = n;
    s
}
impl Builder<'_> {
    pub(super) fn int_const(&mut self, shape: Vec<u32>, data: Vec<f64>) -> Ref {
        self.konst(shape, data, true)
    }

    pub(super) fn op(
        &mut self,
        name: String,
        origin: &str,
        op: FOp,
        ins: Vec<Ref>,
        shape: Vec<u32>,
    ) -> Ref {
        self.push(name, origin, op, ins, shape)
    }
}
