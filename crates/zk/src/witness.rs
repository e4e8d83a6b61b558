//! The prover's side of the circuit: every committed tensor computed from the operands with the canonical
//! rules (and checked against the executor's outputs), then split into limbs to fill the trace table.

use verity_engine::exec::{broadcast_strides, for_each_index, label_strides, strides};
use verity_engine::{Executor, Mode};

use crate::circuit::{Bound, Bounded, Cand, Circuit, Lin, Post, ProvingKey, Src, Step};
use crate::field::F;
use crate::ZkError;
use p3_field::PrimeCharacteristicRing;

/// Everything the prover computed.
pub struct Witness {
    /// Row-major values of every committed tensor.
    pub vals: Vec<Vec<i128>>,
    /// The trace table.
    pub t: Vec<F>,
    /// The model outputs.
    pub outputs: Vec<Vec<i32>>,
}

pub(crate) fn src_shape(pk: &ProvingKey, s: Src) -> Vec<usize> {
    match s {
        Src::Input(i) => pk.circuit.inputs[i].dims.clone(),
        Src::Weight(c) => pk.circuit.weights[c].0.dims.clone(),
        Src::Num(n) => pk.circuit.nums[n].dims.dims.clone(),
    }
}

pub(crate) fn src_dense(
    pk: &ProvingKey,
    inputs: &[Vec<i32>],
    vals: &[Vec<i128>],
    s: Src,
) -> Vec<i128> {
    match s {
        Src::Input(i) => inputs[i].iter().map(|&v| v as i128).collect(),
        Src::Weight(c) => pk.model.consts[c].data.iter().map(|&v| v as i128).collect(),
        Src::Num(n) => vals[n].clone(),
    }
}

fn broadcast(x: &[i128], from: &[usize], to: &[usize]) -> Vec<i128> {
    let st = broadcast_strides(to, from);
    let mut out = Vec::with_capacity(to.iter().product());
    for_each_index(to, &[st], |_, o| out.push(x[o[0]]));
    out
}

fn rshift(x: i128, k: i32) -> i128 {
    if k > 0 {
        (x + (1i128 << (k - 1))) >> k
    } else {
        x << -k
    }
}

struct Ctx<'a> {
    pk: &'a ProvingKey,
    inputs: &'a [Vec<i32>],
    vals: Vec<Vec<i128>>,
}

impl Ctx<'_> {
    /// Store a bounded value and, if it has one, its complement `bound − 1 − (value − offset)`.
    fn set_bounded(&mut self, b: &Bounded, vals: Vec<i128>) {
        if let Some(k) = b.comp {
            let off = self.pk.circuit.nums[b.num].offset as i128;
            let bounds = bound_values(&b.bound, vals.len());
            self.vals[k] = vals
                .iter()
                .zip(&bounds)
                .map(|(&v, &bd)| bd as i128 - 1 - (v - off))
                .collect();
        }
        self.vals[b.num] = vals;
    }

    fn dense(&self, s: Src) -> Vec<i128> {
        src_dense(self.pk, self.inputs, &self.vals, s)
    }
    fn shape(&self, s: Src) -> Vec<usize> {
        src_shape(self.pk, s)
    }

    fn lin(&self, lin: &Lin, out: &[usize]) -> Result<Vec<i128>, ZkError> {
        let n: usize = out.iter().product();
        Ok(match lin {
            Lin::Copy(s) => self.dense(*s),
            Lin::AddSub { a, b, la, lb, sub } => {
                let x = broadcast(&self.dense(*a), &self.shape(*a), out);
                let y = broadcast(&self.dense(*b), &self.shape(*b), out);
                x.iter()
                    .zip(&y)
                    .map(|(&x, &y)| {
                        if *sub {
                            (x << la) - (y << lb)
                        } else {
                            (x << la) + (y << lb)
                        }
                    })
                    .collect()
            }
            Lin::Mul { a, b } => {
                let x = broadcast(&self.dense(*a), &self.shape(*a), out);
                let y = broadcast(&self.dense(*b), &self.shape(*b), out);
                x.iter().zip(&y).map(|(&x, &y)| x * y).collect()
            }
            Lin::EinSum {
                a,
                b,
                bias,
                la,
                lb,
                lo,
            } => {
                let (sa, sb) = (self.shape(*a), self.shape(*b));
                let (xa, xb) = (self.dense(*a), self.dense(*b));
                let mut sizes = [1usize; 256];
                for (ls, sh) in [(la, &sa), (lb, &sb)] {
                    for (&l, &d) in ls.iter().zip(sh.iter()) {
                        sizes[l as usize] = d;
                    }
                }
                let mut summed: Vec<u8> = Vec::new();
                for &l in la.iter().chain(lb.iter()) {
                    if !lo.contains(&l) && !summed.contains(&l) {
                        summed.push(l);
                    }
                }
                let sum_shape: Vec<usize> = summed.iter().map(|&l| sizes[l as usize]).collect();
                let a_out = label_strides(la, &sa, lo);
                let b_out = label_strides(lb, &sb, lo);
                let st = [
                    label_strides(la, &sa, &summed),
                    label_strides(lb, &sb, &summed),
                ];
                let mut acc = vec![0i128; n];
                for_each_index(out, &[a_out, b_out], |flat, o| {
                    let mut s = 0i128;
                    for_each_index(&sum_shape, &st, |_, k| {
                        s += xa[o[0] + k[0]] * xb[o[1] + k[1]];
                    });
                    acc[flat] = s;
                });
                if let Some((bs, sh)) = bias {
                    let bv = broadcast(&self.dense(*bs), &self.shape(*bs), out);
                    for (x, b) in acc.iter_mut().zip(bv) {
                        *x += b << sh;
                    }
                }
                acc
            }
            Lin::Conv {
                x,
                w,
                bias,
                window,
                groups,
            } => {
                let (xs, ws) = (self.shape(*x), self.shape(*w));
                let (xv, wv) = (self.dense(*x), self.dense(*w));
                let bv = bias.map(|(b, sh)| (self.dense(b), sh));
                let (cin, cg, h, wd) = (xs[1], ws[1], xs[2] as i64, xs[3] as i64);
                let og = out[1] / groups;
                let (kh, kw) = (ws[2], ws[3]);
                let mut acc = Vec::with_capacity(n);
                for bn in 0..out[0] {
                    for o in 0..out[1] {
                        for oy in 0..out[2] {
                            for ox in 0..out[3] {
                                let mut s = 0i128;
                                for ci in 0..cg {
                                    let ch = (o / og) * cg + ci;
                                    for ky in 0..kh {
                                        let iy = (oy * window.stride[0] as usize
                                            + ky * window.dilation[0] as usize)
                                            as i64
                                            - window.pads[0] as i64;
                                        if iy < 0 || iy >= h {
                                            continue;
                                        }
                                        for kx in 0..kw {
                                            let ix = (ox * window.stride[1] as usize
                                                + kx * window.dilation[1] as usize)
                                                as i64
                                                - window.pads[1] as i64;
                                            if ix < 0 || ix >= wd {
                                                continue;
                                            }
                                            s += xv[((bn * cin + ch) * xs[2] + iy as usize)
                                                * xs[3]
                                                + ix as usize]
                                                * wv[((o * cg + ci) * kh + ky) * kw + kx];
                                        }
                                    }
                                }
                                if let Some((b, sh)) = &bv {
                                    s += b[o] << sh;
                                }
                                acc.push(s);
                            }
                        }
                    }
                }
                acc
            }
            Lin::Reduce { x, axes } => {
                let xs = self.shape(*x);
                let xv = self.dense(*x);
                let ost = strides(out);
                let to: Vec<usize> = (0..xs.len())
                    .map(|i| if axes.contains(&i) { 0 } else { ost[i] })
                    .collect();
                let mut acc = vec![0i128; n];
                for_each_index(&xs, &[to], |flat, o| acc[o[0]] += xv[flat]);
                acc
            }
            Lin::Wire { parts, map } => {
                let mut acc = vec![0i128; n];
                for (p, m) in parts.iter().zip(map) {
                    let v = self.dense(*p);
                    for &(o, s) in m {
                        acc[o as usize] += v[s as usize];
                    }
                }
                acc
            }
            Lin::Gather {
                data,
                indices,
                axis,
            } => {
                let m = gather_map(&self.shape(*data), &self.dense(*indices), *axis)?;
                let v = self.dense(*data);
                let mut acc = vec![0i128; n];
                for (o, s) in m {
                    acc[o as usize] = v[s as usize];
                }
                acc
            }
        })
    }

    fn cand(&self, c: &Cand, out: &[usize]) -> Vec<i128> {
        let n: usize = out.iter().product();
        match c {
            Cand::View(s, sh) => broadcast(&self.dense(*s), &self.shape(*s), out)
                .into_iter()
                .map(|v| v << sh)
                .collect(),
            Cand::Const(v) => vec![*v as i128; n],
            Cand::Tap(s, m) => {
                let v = self.dense(*s);
                let mut o = vec![0i128; n];
                for &(i, j) in m {
                    o[i as usize] = v[j as usize];
                }
                o
            }
        }
    }
}

/// (output, source) pairs of a gather by `idx` along `axis` of a tensor of shape `s0`.
pub fn gather_map(s0: &[usize], idx: &[i128], axis: usize) -> Result<Vec<(u32, u32)>, ZkError> {
    let outer: usize = s0[..axis].iter().product();
    let inner: usize = s0[axis + 1..].iter().product();
    let dim = s0[axis] as i128;
    let mut m = Vec::with_capacity(outer * idx.len() * inner);
    let mut flat = 0u32;
    for o in 0..outer {
        for &i in idx {
            let j = if i < 0 { i + dim } else { i };
            if j < 0 || j >= dim {
                return Err(ZkError::Execution(format!(
                    "gather index {i} is out of range for an axis of {dim}"
                )));
            }
            let at = (o * dim as usize + j as usize) * inner;
            for k in 0..inner {
                m.push((flat, (at + k) as u32));
                flat += 1;
            }
        }
    }
    Ok(m)
}

/// The node whose steps commit tensor `id`.
fn owner(c: &Circuit, id: usize) -> Option<usize> {
    c.nodes.iter().position(|steps| {
        steps.iter().any(|s| {
            let mut ids = vec![s.out()];
            match s {
                Step::Lin { post, .. } => match post {
                    Post::Resc { rem: Some(b), .. } | Post::Div { rem: b, .. } => {
                        ids.push(b.num);
                        ids.extend(b.comp);
                    }
                    _ => {}
                },
                Step::Extreme { diffs, .. } => ids.extend(diffs),
                Step::DivBy { out, rem, comp, .. } => {
                    ids.extend([*rem, *comp]);
                    ids.extend(out.comp);
                }
                Step::Narrow { out, .. } => ids.extend(out.comp),
                Step::Sqrt { y, z, d1, d2, .. } => {
                    for bd in [y, z, d1, d2] {
                        ids.push(bd.num);
                        ids.extend(bd.comp);
                    }
                }
                Step::Recip {
                    b,
                    bv,
                    av,
                    idx,
                    p,
                    dlo,
                    dhi,
                    ya,
                    by,
                    r,
                    rem,
                    comp,
                    ..
                } => {
                    ids.extend([
                        b.num, *bv, *av, *idx, *p, *dlo, *dhi, *ya, *by, *r, *rem, *comp,
                    ]);
                    ids.extend(b.comp);
                }
                Step::LeakyRelu {
                    b,
                    bx,
                    a,
                    p,
                    rem_p,
                    n,
                    rem_n,
                    ..
                } => {
                    ids.extend([b.num, *bx, *a, *p, *n]);
                    ids.extend(b.comp);
                    for r in [rem_p, rem_n].into_iter().flatten() {
                        ids.push(r.num);
                        ids.extend(r.comp);
                    }
                }
                Step::Rsqrt {
                    idx,
                    p,
                    q,
                    dlo,
                    dhi,
                    r,
                    d1,
                    d2,
                    ..
                } => {
                    ids.extend([*idx, *p, *q, *dlo, *dhi, *r, d1.num, d2.num]);
                    ids.extend(d1.comp);
                    ids.extend(d2.comp);
                }
                Step::Table { .. } => {}
            }
            ids.contains(&id)
        })
    })
}

fn n_elems(v: &[i128]) -> usize {
    v.len().max(1)
}

pub(crate) fn bound_values(b: &Bound, n: usize) -> Vec<u64> {
    match b {
        Bound::Const(c) => vec![*c; n],
        Bound::Table(t) => t.clone(),
    }
}

/// Compute the witness for `inputs` (quantized) and fill the trace table.
pub fn witness(pk: &ProvingKey, inputs: &[Vec<i32>]) -> Result<Witness, ZkError> {
    witness_with(pk, inputs, |_| {})
}

/// [`witness`] with the committed values changed by `tamper` before they are committed (tests use it to
/// play a cheating prover).
pub fn witness_with(
    pk: &ProvingKey,
    inputs: &[Vec<i32>],
    tamper: impl FnOnce(&mut Vec<Vec<i128>>),
) -> Result<Witness, ZkError> {
    let c: &Circuit = &pk.circuit;
    let exec = Executor::new(&pk.model, Mode::Fast { threads: 1 });
    let (outputs, trace) = exec
        .run_trace(inputs.to_vec())
        .map_err(|e| ZkError::Execution(format!("the canonical execution failed: {e}")))?;
    let mut cx = Ctx {
        pk,
        inputs,
        vals: vec![Vec::new(); c.nums.len()],
    };
    let ni = inputs.len();
    let mut mults: Vec<(usize, usize)> = Vec::new();
    for (k, steps) in c.nodes.iter().enumerate() {
        for step in steps {
            let out_shape = c.nums[step.out()].dims.dims.clone();
            let n: usize = out_shape.iter().product();
            match step {
                Step::Lin { out, lin, post } => {
                    let pre = cx.lin(lin, &out_shape)?;
                    let (y, rem): (Vec<i128>, Option<(Vec<i128>, &crate::circuit::Bounded)>) =
                        match post {
                            Post::Resc { k, rem } => {
                                let y: Vec<i128> = pre.iter().map(|&p| rshift(p, *k)).collect();
                                let r = rem.as_ref().map(|b| {
                                    let r = pre
                                        .iter()
                                        .zip(&y)
                                        .map(|(&p, &y)| p + (1i128 << (k - 1)) - (y << k))
                                        .collect();
                                    (r, b)
                                });
                                (y, r)
                            }
                            Post::Div { e, den, rem } => {
                                let dens = bound_values(den, n);
                                let mut y = Vec::with_capacity(n);
                                let mut r = Vec::with_capacity(n);
                                for (&p, &d) in pre.iter().zip(&dens) {
                                    let (num, d) = (p << e, d as i128);
                                    let q = (2 * num + d).div_euclid(2 * d);
                                    y.push(q);
                                    r.push(2 * num + d - 2 * d * q);
                                }
                                (y, Some((r, rem)))
                            }
                        };
                    if let Some((r, b)) = rem {
                        cx.set_bounded(b, r);
                    }
                    cx.vals[*out] = y;
                }
                Step::Extreme {
                    out,
                    cands,
                    min,
                    diffs,
                } => {
                    let cv: Vec<Vec<i128>> = cands.iter().map(|c| cx.cand(c, &out_shape)).collect();
                    let y: Vec<i128> = (0..n)
                        .map(|i| {
                            let it = cv.iter().map(|c| c[i]);
                            if *min {
                                it.min().unwrap_or(0)
                            } else {
                                it.max().unwrap_or(0)
                            }
                        })
                        .collect();
                    for (d, c) in diffs.iter().zip(&cv) {
                        cx.vals[*d] = y
                            .iter()
                            .zip(c)
                            .map(|(&y, &c)| if *min { c - y } else { y - c })
                            .collect();
                    }
                    cx.vals[*out] = y;
                }
                Step::Rsqrt {
                    v,
                    y,
                    e,
                    ybits,
                    idx,
                    p,
                    q,
                    dlo,
                    dhi,
                    r,
                    d1,
                    d2,
                } => {
                    let vs = cx.dense(*v);
                    let mut cols: [Vec<i128>; 10] = Default::default();
                    for &x in &vs {
                        if x < 1 {
                            return Err(ZkError::Execution("Rsqrt of a value below 1".into()));
                        }
                        let i = 127 - x.leading_zeros() as i128;
                        let (pp, qq) = (1i128 << i, 1i128 << (i / 2));
                        let quo = (1i128 << e) / x;
                        let yy = verity_engine::arith::isqrt_round(quo as u128) as i128;
                        let row = [
                            yy,
                            i,
                            pp,
                            qq,
                            x - pp,
                            2 * pp - 1 - x,
                            (1i128 << ybits) - 1 - yy * qq,
                            (1i128 << e) - x * (yy * yy - yy + 1),
                            x * (yy * yy + yy + 1) - (1i128 << e) - 1,
                            0,
                        ];
                        if row[4..9].iter().any(|&d| d < 0) {
                            return Err(ZkError::Execution(
                                "an Rsqrt value is outside the provable range".into(),
                            ));
                        }
                        for (col, &val) in cols.iter_mut().zip(&row) {
                            col.push(val);
                        }
                    }
                    let [ys, is, ps, qs, los, his, rs, d1s, d2s, _] = cols;
                    cx.set_bounded(d1, d1s);
                    cx.set_bounded(d2, d2s);
                    cx.vals[*y] = ys;
                    cx.vals[*idx] = is;
                    cx.vals[*p] = ps;
                    cx.vals[*q] = qs;
                    cx.vals[*dlo] = los;
                    cx.vals[*dhi] = his;
                    cx.vals[*r] = rs;
                }
                Step::LeakyRelu {
                    x,
                    y,
                    b,
                    bx,
                    a,
                    p,
                    kp,
                    rem_p,
                    n: nn,
                    kn,
                    rem_n,
                    alpha,
                } => {
                    let xs = cx.dense(*x);
                    let sg: Vec<i128> = xs.iter().map(|&v| (v < 0) as i128).collect();
                    let bxs: Vec<i128> = xs.iter().zip(&sg).map(|(&v, &s)| v * s).collect();
                    let pos: Vec<i128> = xs.iter().zip(&bxs).map(|(&v, &q)| v - q).collect();
                    let neg: Vec<i128> = bxs.iter().map(|&q| q * *alpha as i128).collect();
                    let ps: Vec<i128> = pos.iter().map(|&v| rshift(v, *kp)).collect();
                    let ns: Vec<i128> = neg.iter().map(|&v| rshift(v, *kn)).collect();
                    for (rem, pre, out, k) in [(rem_p, &pos, &ps, *kp), (rem_n, &neg, &ns, *kn)] {
                        if let Some(r) = rem {
                            let rv: Vec<i128> = pre
                                .iter()
                                .zip(out)
                                .map(|(&q, &o)| q + (1i128 << (k - 1)) - (o << k))
                                .collect();
                            cx.set_bounded(r, rv);
                        }
                    }
                    cx.vals[*a] = xs
                        .iter()
                        .zip(&bxs)
                        .zip(&sg)
                        .map(|((&v, &q), &s)| v - 2 * q - s)
                        .collect();
                    cx.vals[*y] = ps.iter().zip(&ns).map(|(&u, &v)| u + v).collect();
                    cx.set_bounded(b, sg);
                    cx.vals[*bx] = bxs;
                    cx.vals[*p] = ps;
                    cx.vals[*nn] = ns;
                }
                Step::Recip {
                    v,
                    y,
                    ne,
                    s: sd,
                    b,
                    bv,
                    av,
                    idx,
                    p,
                    dlo,
                    dhi,
                    ya,
                    by,
                    r,
                    rbits,
                    rem,
                    comp,
                } => {
                    let vs = cx.dense(*v);
                    let mut cols: [Vec<i128>; 13] = Default::default();
                    for &x in &vs {
                        if x == 0 {
                            return Err(ZkError::Execution("Recip of zero".into()));
                        }
                        let sg = (x < 0) as i128;
                        let a = x.abs();
                        let i = 127 - a.leading_zeros() as i128;
                        let pp = 1i128 << i;
                        let d = a << sd;
                        let num = (1 - 2 * sg) << ne;
                        let q = (2 * num + d).div_euclid(2 * d);
                        let rr = 2 * num + d - 2 * d * q;
                        let qa = q.abs();
                        let row = [
                            q,
                            sg,
                            sg * x,
                            a,
                            i,
                            pp,
                            a - pp,
                            2 * pp - 1 - a,
                            qa,
                            sg * qa,
                            (1i128 << rbits) - 1 - qa * pp,
                            rr,
                            2 * d - 1 - rr,
                        ];
                        if row[6..8].iter().chain(&row[10..13]).any(|&t| t < 0)
                            || (q < 0) != (sg == 1 && q != 0)
                        {
                            return Err(ZkError::Execution(
                                "a Recip value is outside the provable range".into(),
                            ));
                        }
                        for (col, &val) in cols.iter_mut().zip(&row) {
                            col.push(val);
                        }
                    }
                    let [qs, sgs, bvs, avs, is, ps, los, his, yas, bys, rs, rems, comps] = cols;
                    cx.set_bounded(b, sgs);
                    cx.vals[*y] = qs;
                    cx.vals[*bv] = bvs;
                    cx.vals[*av] = avs;
                    cx.vals[*idx] = is;
                    cx.vals[*p] = ps;
                    cx.vals[*dlo] = los;
                    cx.vals[*dhi] = his;
                    cx.vals[*ya] = yas;
                    cx.vals[*by] = bys;
                    cx.vals[*r] = rs;
                    cx.vals[*rem] = rems;
                    cx.vals[*comp] = comps;
                }
                Step::Sqrt {
                    n,
                    shift,
                    y,
                    z,
                    d1,
                    d2,
                } => {
                    let ns = cx.dense(*n);
                    let mut cols: [Vec<i128>; 4] = Default::default();
                    for &v in &ns {
                        let nv = v << shift;
                        if nv < 0 {
                            return Err(ZkError::Execution("Sqrt of a negative value".into()));
                        }
                        let yy = verity_engine::arith::isqrt_round(nv as u128) as i128;
                        let zz = (yy == 0) as i128;
                        for (col, val) in cols.iter_mut().zip([
                            yy,
                            zz,
                            nv - yy * yy + yy - 1 + zz,
                            yy * yy + yy - nv,
                        ]) {
                            col.push(val);
                        }
                    }
                    for (bd, vals) in [(y, &cols[0]), (z, &cols[1]), (d1, &cols[2]), (d2, &cols[3])]
                    {
                        let cap = bound_values(&bd.bound, n_elems(vals))[0] as i128;
                        if vals.iter().any(|&v| v < 0 || v >= cap) {
                            return Err(ZkError::Execution(
                                "a Sqrt value is outside the provable range".into(),
                            ));
                        }
                        cx.set_bounded(bd, vals.clone());
                    }
                }
                Step::Narrow { out, src } => {
                    let v = cx.dense(*src);
                    cx.set_bounded(out, v);
                }
                Step::Table {
                    idx,
                    lo,
                    out,
                    table,
                    mult,
                } => {
                    let tab: Vec<i64> = match table {
                        crate::circuit::TableRef::Const(k) => {
                            pk.model.consts[*k].data.iter().map(|&v| v as i64).collect()
                        }
                        crate::circuit::TableRef::Public(v) => v.clone(),
                    };
                    let mut e = Vec::with_capacity(n);
                    for &i in &cx.vals[*idx] {
                        let j = usize::try_from(i - *lo as i128)
                            .ok()
                            .filter(|&j| j < tab.len())
                            .ok_or_else(|| {
                                ZkError::Execution("a table index is outside its table".into())
                            })?;
                        e.push(tab[j] as i128);
                        mults.push((*mult, j));
                    }
                    cx.vals[*out] = e;
                }
                Step::DivBy {
                    out,
                    num,
                    shift,
                    den,
                    rem,
                    comp,
                } => {
                    let dshape = c.nums[*den].dims.dims.clone();
                    let d = broadcast(&cx.vals[*den], &dshape, &out_shape);
                    let (mut y, mut r, mut cm) = (Vec::new(), Vec::new(), Vec::new());
                    for (&e, &d) in cx.vals[*num].iter().zip(&d) {
                        if d <= 0 {
                            return Err(ZkError::Execution("a softmax sum is not positive".into()));
                        }
                        let a = e << shift;
                        let q = (2 * a + d).div_euclid(2 * d);
                        let rr = 2 * a + d - 2 * d * q;
                        y.push(q);
                        r.push(rr);
                        cm.push(2 * d - 1 - rr);
                    }
                    cx.set_bounded(out, y);
                    cx.vals[*rem] = r;
                    cx.vals[*comp] = cm;
                }
            }
        }
        let got = &cx.vals[c.node_out[k]];
        let want = &trace.tensors[ni + k];
        if got.len() != want.len() || got.iter().zip(want).any(|(&g, &w)| g != w as i128) {
            return Err(ZkError::Execution(format!(
                "node {:?}: the circuit's values differ from the canonical executor's",
                pk.model.nodes[k].name
            )));
        }
    }
    tamper(&mut cx.vals);
    // limbs into the trace table
    let mut t = vec![F::ZERO; 1 << c.t_bits];
    let lb = c.limb_bits;
    let mut counts = vec![0u64; 1 << lb];
    for (id, spec) in c.nums.iter().enumerate() {
        let l = spec.limbs.len() as u32;
        let pos = spec.dims.positions();
        for (&p, &v) in pos.iter().zip(&cx.vals[id]) {
            let u = v - spec.offset as i128;
            if u < 0 || (u >> (lb * l)) != 0 {
                return Err(ZkError::Execution(format!(
                    "a committed value ({v}) is outside its provable range [{}, {}) (tensor #{id} of node {:?})",
                    spec.offset,
                    spec.offset as i128 + (1i128 << (lb * l)),
                    owner(c, id).map(|k| pk.model.nodes[k].name.as_str()).unwrap_or("?")
                )));
            }
            for (i, &slot) in spec.limbs.iter().enumerate() {
                let limb = ((u >> (lb * i as u32)) & ((1 << lb) - 1)) as u64;
                t[c.slots[slot].offset + p] = F::from_u64(limb);
            }
        }
    }
    let ms = c.slots[c.mult];
    let unchecked: Vec<(usize, usize)> = c
        .slots
        .iter()
        .filter(|s| s.num.is_none())
        .map(|s| (s.offset, s.offset + (1 << s.bits)))
        .collect();
    for (i, x) in t.iter().enumerate() {
        if !unchecked.iter().any(|&(a, b)| i >= a && i < b) {
            use p3_field::PrimeField64;
            counts[x.as_canonical_u64() as usize] += 1;
        }
    }
    for (slot, j) in mults {
        let at = c.slots[slot].offset + j;
        t[at] += F::ONE;
    }
    for (i, &m) in counts.iter().enumerate() {
        t[ms.offset + i] = F::from_u64(m);
    }
    Ok(Witness {
        vals: cx.vals,
        t,
        outputs,
    })
}
