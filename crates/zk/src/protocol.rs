//! The protocol, written once for both sides: the prover passes its witness and every exchange computes
//! and sends; the verifier passes none and every exchange reads. Order of the proof:
//!
//! 1. the statement (model ID, `W` root, input hash, output hash) is absorbed; the prover commits `T`;
//! 2. per node and step, a random point over the step's output and the reduction of its relation to
//!    claims on committed tensors (limbs in `T`), constants (`W`) and public inputs;
//! 3. each model output is compared with the public output at a random point;
//! 4. `T` vanishes off its real entries (a zero-check), and every entry of `T` outside the multiplicity
//!    slot is below 2¹⁶ (logUp with the fractional-sum protocol);
//! 5. all claims on `T` are batched into one point by a sumcheck and opened; the same for `W`.

use p3_field::{Field, PrimeCharacteristicRing};
use verity_core::Hash;
use verity_engine::commit::tensors_hash;
use verity_engine::Model;

use crate::channel::{ext_i, Channel};
use crate::circuit::{
    self, Bound, Bounded, Cand, Circuit, Lin, Post, ProvingKey, Src, Step, TableRef, VerifyingKey,
};
use crate::dims::{bits_point, eq_at, Dims};
use crate::field::{lift, Ext, F};
use crate::logup::fraction_sum;
use crate::mle::{eq_table, eval};
use crate::pcs::{self, Committed};
use crate::sumcheck::{self, Poly};
use crate::witness::{bound_values, gather_map, src_dense, src_shape, Witness};
use crate::ZkError;

/// Protocol name and version (the transcript's domain).
pub const DOMAIN: &[u8] = b"verity-zk v1";

type Claim = (usize, usize, Vec<Ext>, Ext);

struct Run<'a> {
    ch: Channel,
    c: &'a Circuit,
    model: &'a Model,
    inputs: &'a [Vec<i32>],
    outputs: &'a [Vec<i32>],
    input_tabs: Vec<Vec<Ext>>,
    pk: Option<&'a ProvingKey>,
    wit: Option<&'a Witness>,
    t_ext: Vec<Ext>,
    tclaims: Vec<Claim>,
    wclaims: Vec<Claim>,
}

fn pow2(k: u32) -> Ext {
    Ext::from(F::from_u64(1u64 << k))
}

fn exts(v: &[i128]) -> Vec<Ext> {
    v.iter().map(|&x| crate::channel::ext_i128(x)).collect()
}

enum Role<'a> {
    Fixed(&'a [Ext]),
    Var(usize),
}

/// A table over variable groups from a tensor table: each axis is fixed at a point (summed against eq)
/// or becomes a group's variables; groups no axis maps to are constant (replicated).
fn restrict(vals: &[Ext], dims: &Dims, roles: &[Role], groups: &[usize]) -> Vec<Ext> {
    let total: usize = groups.iter().sum();
    let mut gshift = vec![0usize; groups.len()];
    let mut acc = total;
    for (g, &b) in groups.iter().enumerate() {
        acc -= b;
        gshift[g] = acc;
    }
    let eqs: Vec<Option<Vec<Ext>>> = roles
        .iter()
        .map(|r| match r {
            Role::Fixed(p) => Some(eq_table(p)),
            Role::Var(_) => None,
        })
        .collect();
    let mut out = vec![Ext::ZERO; 1 << total];
    let rank = dims.bits.len();
    let mut idx = vec![0usize; rank];
    for (flat, &v) in vals.iter().enumerate() {
        let mut rest = flat;
        for ax in (0..rank).rev() {
            idx[ax] = rest & ((1 << dims.bits[ax]) - 1);
            rest >>= dims.bits[ax];
        }
        let mut w = v;
        let mut dest = 0usize;
        for ax in 0..rank {
            match (&roles[ax], &eqs[ax]) {
                (_, Some(e)) => w *= e[idx[ax]],
                (Role::Var(g), None) => dest |= idx[ax] << gshift[*g],
                _ => {}
            }
        }
        out[dest] += w;
    }
    for (g, &b) in groups.iter().enumerate() {
        let mapped = roles.iter().any(|r| matches!(r, Role::Var(x) if *x == g));
        if !mapped && b > 0 {
            let mask = ((1usize << b) - 1) << gshift[g];
            for d in 0..out.len() {
                if d & mask != 0 {
                    out[d] = out[d & !mask];
                }
            }
        }
    }
    out
}

impl<'a> Run<'a> {
    fn check(&self, ok: bool, what: &str) -> Result<(), ZkError> {
        if ok {
            Ok(())
        } else {
            self.ch.reject(what)
        }
    }

    fn proving(&self) -> bool {
        self.wit.is_some()
    }

    fn dims(&self, s: Src) -> Dims {
        match s {
            Src::Input(i) => self.c.inputs[i].clone(),
            Src::Weight(w) => self.c.weights[w].0.clone(),
            Src::Num(n) => self.c.nums[n].dims.clone(),
        }
    }

    fn pk(&self) -> &'a ProvingKey {
        self.pk.expect("prover")
    }

    fn dense(&self, s: Src) -> Vec<i128> {
        let w = self.wit.expect("prover");
        src_dense(self.pk(), self.inputs, &w.vals, s)
    }

    /// The padded table of a source (prover; inputs on both sides).
    fn table(&self, s: Src) -> Vec<Ext> {
        match s {
            Src::Input(i) => self.input_tabs[i].clone(),
            _ => self.dims(s).pad(&exts(&self.dense(s))),
        }
    }

    fn num_table(&self, n: usize) -> Vec<Ext> {
        self.table(Src::Num(n))
    }

    fn slot_ext(&self, slot: usize) -> &[Ext] {
        let s = self.c.slots[slot];
        &self.t_ext[s.offset..s.offset + (1 << s.bits)]
    }

    fn num_at(&mut self, n: usize, point: &[Ext]) -> Result<Ext, ZkError> {
        let spec = &self.c.nums[n];
        let limbs = spec.limbs.clone();
        let vals = {
            let me = &*self;
            let pt = point.to_vec();
            let ls = limbs.clone();
            let proving = me.proving();
            let computed: Vec<Ext> = if proving {
                ls.iter().map(|&l| eval(me.slot_ext(l), &pt)).collect()
            } else {
                Vec::new()
            };
            self.ch.ext(b"limbs", limbs.len(), || computed)?
        };
        let mut v = ext_i(self.c.nums[n].offset) * self.c.nums[n].dims.ind_at(point);
        for (i, (&l, &x)) in limbs.iter().zip(&vals).enumerate() {
            let s = self.c.slots[l];
            self.tclaims.push((s.offset, s.bits, point.to_vec(), x));
            v += x * pow2(self.c.limb_bits * i as u32);
        }
        Ok(v)
    }

    fn src_at(&mut self, s: Src, point: &[Ext]) -> Result<Ext, ZkError> {
        match s {
            Src::Input(i) => Ok(eval(&self.input_tabs[i], point)),
            Src::Weight(w) => {
                let v = if self.proving() {
                    eval(&self.table(s), point)
                } else {
                    Ext::ZERO
                };
                let v = self.ch.ext1(b"weight", || v)?;
                let (d, off) = &self.c.weights[w];
                self.wclaims.push((*off, d.nvars(), point.to_vec(), v));
                Ok(v)
            }
            Src::Num(n) => self.num_at(n, point),
        }
    }

    /// A source broadcast (numpy rules) to `to`, at `r`.
    fn view_at(&mut self, s: Src, to: &Dims, r: &[Ext]) -> Result<Ext, ZkError> {
        let from = self.dims(s);
        let rs = to.split(r);
        let off = to.dims.len() - from.dims.len();
        let mut pt = Vec::new();
        let mut factor = Ext::ONE;
        for (ax, &d) in to.dims.iter().enumerate() {
            if ax < off || from.dims[ax - off] != d {
                factor *= crate::dims::prefix_ind(d, rs[ax]);
            } else {
                pt.extend_from_slice(rs[ax]);
            }
        }
        Ok(self.src_at(s, &pt)? * factor)
    }

    fn view_table(&self, s: Src, to: &Dims) -> Vec<Ext> {
        let from = src_shape(self.pk(), s);
        let st = verity_engine::exec::broadcast_strides(&to.dims, &from);
        let x = self.dense(s);
        let mut out = Vec::with_capacity(to.len());
        verity_engine::exec::for_each_index(&to.dims, &[st], |_, o| out.push(x[o[0]]));
        to.pad(&exts(&out))
    }

    fn bound_table(&self, b: &Bound, d: &Dims) -> Vec<Ext> {
        d.pad(
            &bound_values(b, d.len())
                .iter()
                .map(|&v| Ext::from(F::from_u64(v)))
                .collect::<Vec<_>>(),
        )
    }

    fn bounded_at(&mut self, b: &Bounded, d: &Dims, r: &[Ext]) -> Result<Ext, ZkError> {
        let v = self.num_at(b.num, r)?;
        if let Some(comp) = b.comp {
            let c = self.num_at(comp, r)?;
            let bound = match &b.bound {
                Bound::Const(x) => Ext::from(F::from_u64(*x)) * d.ind_at(r),
                t => eval(&self.bound_table(t, d), r),
            };
            let off = ext_i(self.c.nums[b.num].offset) * d.ind_at(r);
            self.check(
                v - off + c == bound - d.ind_at(r),
                "a value and its complement do not add up to its bound",
            )?;
        }
        Ok(v)
    }

    /// Prove `claim = Σ_v src[v]·m[v]`.
    fn wiring(&mut self, s: Src, claim: Ext, m: Vec<Ext>) -> Result<(), ZkError> {
        let d = self.dims(s);
        let poly = self
            .proving()
            .then(|| Poly::new(vec![self.table(s), m.clone()]).term(Ext::ONE, &[0, 1]));
        let (pt, end, _) = sumcheck::run(&mut self.ch, d.nvars(), 2, claim, poly)?;
        let v = self.src_at(s, &pt)?;
        self.check(v * eval(&m, &pt) == end, "a wiring sum does not hold")
    }

    fn wire_weights(
        &self,
        out: &Dims,
        r: &[Ext],
        src: &Dims,
        pairs: &[(u32, u32)],
        scale: Ext,
    ) -> Vec<Ext> {
        let eq = eq_table(r);
        let opos = out.positions();
        let spos = src.positions();
        let mut m = vec![Ext::ZERO; src.padded()];
        for &(o, s) in pairs {
            m[spos[s as usize]] += scale * eq[opos[o as usize]];
        }
        m
    }

    fn step(&mut self, step: &Step) -> Result<(), ZkError> {
        match step {
            Step::Lin { out, lin, post } => {
                let od = self.c.nums[*out].dims.clone();
                let r = self.ch.challenges(od.nvars());
                let y = self.num_at(*out, &r)?;
                let ind = od.ind_at(&r);
                let pre = match post {
                    Post::Resc { k, rem } => {
                        if *k > 0 {
                            let rem = rem.as_ref().ok_or(ZkError::rejected("no remainder"))?;
                            let rv = self.bounded_at(rem, &od, &r)?;
                            pow2(*k as u32) * y + rv - pow2(*k as u32 - 1) * ind
                        } else {
                            y * pow2((-*k) as u32).inverse()
                        }
                    }
                    Post::Div { e, den, rem } => {
                        let rv = self.bounded_at(rem, &od, &r)?;
                        let (s, den_r) = match den {
                            Bound::Const(d) => {
                                let d = Ext::from(F::from_u64(*d));
                                (d * y, d * ind)
                            }
                            t => {
                                let dt = self.bound_table(t, &od);
                                let eqr = eq_table(&r);
                                let yt = if self.proving() {
                                    self.num_table(*out)
                                } else {
                                    Vec::new()
                                };
                                let s = self.ch.ext1(b"divisor times output", || {
                                    (0..dt.len()).map(|i| eqr[i] * dt[i] * yt[i]).sum()
                                })?;
                                let poly = self.proving().then(|| {
                                    Poly::new(vec![eqr.clone(), dt.clone(), yt.clone()])
                                        .term(Ext::ONE, &[0, 1, 2])
                                });
                                let (pt, end, _) =
                                    sumcheck::run(&mut self.ch, od.nvars(), 3, s, poly)?;
                                let yv = self.num_at(*out, &pt)?;
                                self.check(
                                    eq_at(&r, &pt) * eval(&dt, &pt) * yv == end,
                                    "a division's divisor-output sum does not hold",
                                )?;
                                (s, eval(&dt, &r))
                            }
                        };
                        let two = Ext::from(F::from_u64(2));
                        let num = (two * s + rv - den_r) * two.inverse();
                        num * pow2(*e).inverse()
                    }
                };
                self.lin(lin, &od, &r, pre)
            }
            Step::Rsqrt {
                v,
                y,
                e,
                ybits,
                idx: _,
                p,
                q,
                dlo,
                dhi,
                r,
                d1,
                d2,
            } => {
                let od = self.c.nums[*y].dims.clone();
                let rr = self.ch.challenges(od.nvars());
                let vv = self.src_at(*v, &rr)?;
                self.bit_length_at(vv, (*p, *dlo, *dhi), &rr, "an Rsqrt operand")?;
                let _ = self.bounded_at(d1, &od, &rr)?;
                let _ = self.bounded_at(d2, &od, &rr)?;
                let lambda = self.ch.challenge();
                let l2 = lambda * lambda;
                let r2 = self.ch.challenges(od.nvars());
                let ye = pow2(*ybits) - Ext::ONE;
                let ee = pow2(*e);
                let poly = self.proving().then(|| {
                    Poly::new(vec![
                        eq_table(&r2),
                        self.num_table(*r),
                        self.num_table(*y),
                        self.num_table(*q),
                        od.ind_table(),
                        self.num_table(d1.num),
                        self.table(*v),
                        self.num_table(d2.num),
                    ])
                    .term(Ext::ONE, &[0, 1])
                    .term(Ext::ONE, &[0, 2, 3])
                    .term(-ye, &[0, 4])
                    .term(lambda, &[0, 5])
                    .term(lambda - l2, &[0, 6, 2, 2])
                    .term(-lambda - l2, &[0, 6, 2])
                    .term(lambda - l2, &[0, 6])
                    .term(-ee * lambda + (ee + Ext::ONE) * l2, &[0, 4])
                    .term(l2, &[0, 7])
                });
                let (pt, end, _) = sumcheck::run(&mut self.ch, od.nvars(), 4, Ext::ZERO, poly)?;
                let ri = od.ind_at(&pt);
                let rv = self.num_at(*r, &pt)?;
                let yv = self.num_at(*y, &pt)?;
                let qv = self.num_at(*q, &pt)?;
                let a1 = self.num_at(d1.num, &pt)?;
                let vv = self.src_at(*v, &pt)?;
                let a2 = self.num_at(d2.num, &pt)?;
                let f1 = rv + yv * qv - ye * ri;
                let f2 = a1 + vv * yv * yv - vv * yv + vv - ee * ri;
                let f3 = a2 - vv * yv * yv - vv * yv - vv + (ee + Ext::ONE) * ri;
                self.check(
                    eq_at(&r2, &pt) * (f1 + lambda * f2 + l2 * f3) == end,
                    "an Rsqrt does not hold",
                )
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
                n,
                kn,
                rem_n,
                alpha,
            } => {
                let od = self.c.nums[*y].dims.clone();
                let r = self.ch.challenges(od.nvars());
                let ind = od.ind_at(&r);
                let xv = self.src_at(*x, &r)?;
                let yv = self.num_at(*y, &r)?;
                let bv = self.bounded_at(b, &od, &r)?;
                let bxv = self.num_at(*bx, &r)?;
                let av = self.num_at(*a, &r)?;
                let pv = self.num_at(*p, &r)?;
                let nv = self.num_at(*n, &r)?;
                let two = Ext::from(F::from_u64(2));
                self.check(
                    av == xv - two * bxv - bv,
                    "a sign bit does not match its input",
                )?;
                self.check(yv == pv + nv, "a leaky ReLU is not the sum of its parts")?;
                for (rem, k, out, pre) in [
                    (rem_p, *kp, pv, xv - bxv),
                    (rem_n, *kn, nv, ext_i(*alpha) * bxv),
                ] {
                    let want = match rem {
                        Some(rb) => {
                            let rv = self.bounded_at(rb, &od, &r)?;
                            pow2(k as u32) * out + rv - pow2(k as u32 - 1) * ind
                        }
                        None => out * pow2((-k) as u32).inverse(),
                    };
                    self.check(want == pre, "a leaky ReLU part is not its rescaled input")?;
                }
                // bx = b·x everywhere
                let r2 = self.ch.challenges(od.nvars());
                let poly = self.proving().then(|| {
                    Poly::new(vec![
                        eq_table(&r2),
                        self.num_table(*bx),
                        self.num_table(b.num),
                        self.table(*x),
                    ])
                    .term(Ext::ONE, &[0, 1])
                    .term(-Ext::ONE, &[0, 2, 3])
                });
                let (pt, end, _) = sumcheck::run(&mut self.ch, od.nvars(), 3, Ext::ZERO, poly)?;
                let bxv = self.num_at(*bx, &pt)?;
                let bv = self.num_at(b.num, &pt)?;
                let xv = self.src_at(*x, &pt)?;
                self.check(
                    eq_at(&r2, &pt) * (bxv - bv * xv) == end,
                    "a sign bit times the input is wrong",
                )
            }
            Step::Recip {
                v,
                y,
                ne,
                s: sd,
                b,
                bv,
                av,
                idx: _,
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
                let od = self.c.nums[*y].dims.clone();
                let rr = self.ch.challenges(od.nvars());
                let ind = od.ind_at(&rr);
                let two = Ext::from(F::from_u64(2));
                let vv = self.src_at(*v, &rr)?;
                let _sign = self.bounded_at(b, &od, &rr)?;
                let bvv = self.num_at(*bv, &rr)?;
                let avv = self.num_at(*av, &rr)?;
                self.bit_length_at(avv, (*p, *dlo, *dhi), &rr, "a Recip operand")?;
                let yv = self.num_at(*y, &rr)?;
                let yav = self.num_at(*ya, &rr)?;
                let byv = self.num_at(*by, &rr)?;
                let remv = self.num_at(*rem, &rr)?;
                let compv = self.num_at(*comp, &rr)?;
                self.check(
                    avv == vv - two * bvv,
                    "a Recip operand's magnitude is wrong",
                )?;
                self.check(yv == yav - two * byv, "a Recip output's sign is wrong")?;
                self.check(
                    remv + compv == two * pow2(*sd) * avv - ind,
                    "a Recip remainder is out of range",
                )?;
                // products: bv = b·v, by = b·|y|, r = 2^(ne+1) − 1 − |y|·p, and the division
                let lambda = self.ch.challenge();
                let (l2, l3) = (lambda * lambda, lambda * lambda * lambda);
                let r2 = self.ch.challenges(od.nvars());
                let big = pow2(*rbits) - Ext::ONE;
                let n0 = pow2(*ne);
                let d = pow2(*sd);
                let poly = self.proving().then(|| {
                    Poly::new(vec![
                        eq_table(&r2),
                        self.num_table(*bv),
                        self.num_table(b.num),
                        self.table(*v),
                        self.num_table(*by),
                        self.num_table(*ya),
                        self.num_table(*r),
                        self.num_table(*p),
                        od.ind_table(),
                        self.num_table(*av),
                        self.num_table(*y),
                        self.num_table(*rem),
                    ])
                    // bv − b·v
                    .term(Ext::ONE, &[0, 1])
                    .term(-Ext::ONE, &[0, 2, 3])
                    // λ(by − b·ya)
                    .term(lambda, &[0, 4])
                    .term(-lambda, &[0, 2, 5])
                    // λ²(r + ya·p − big)
                    .term(l2, &[0, 6])
                    .term(l2, &[0, 5, 7])
                    .term(-l2 * big, &[0, 8])
                    // λ³(2·n0·(ind − 2b) + D − 2·D·y − rem), D = 2^s·av
                    .term(l3 * two * n0, &[0, 8])
                    .term(-l3 * two * two * n0, &[0, 2])
                    .term(l3 * d, &[0, 9])
                    .term(-l3 * two * d, &[0, 9, 10])
                    .term(-l3, &[0, 11])
                });
                let (pt, end, _) = sumcheck::run(&mut self.ch, od.nvars(), 3, Ext::ZERO, poly)?;
                let pi = od.ind_at(&pt);
                let bvv = self.num_at(*bv, &pt)?;
                let bb = self.num_at(b.num, &pt)?;
                let vv = self.src_at(*v, &pt)?;
                let byv = self.num_at(*by, &pt)?;
                let yav = self.num_at(*ya, &pt)?;
                let rv = self.num_at(*r, &pt)?;
                let pv = self.num_at(*p, &pt)?;
                let avv = self.num_at(*av, &pt)?;
                let yv = self.num_at(*y, &pt)?;
                let remv = self.num_at(*rem, &pt)?;
                let f = (bvv - bb * vv)
                    + lambda * (byv - bb * yav)
                    + l2 * (rv + yav * pv - big * pi)
                    + l3 * (two * n0 * (pi - two * bb) + d * avv - two * d * avv * yv - remv);
                self.check(eq_at(&r2, &pt) * f == end, "a Recip does not hold")
            }
            Step::Sqrt {
                n,
                shift,
                y,
                z,
                d1,
                d2,
            } => {
                let od = self.c.nums[y.num].dims.clone();
                let r = self.ch.challenges(od.nvars());
                for bd in [y, z, d1, d2] {
                    let _ = self.bounded_at(bd, &od, &r)?;
                }
                let lambda = self.ch.challenge();
                let l2 = lambda * lambda;
                let r2 = self.ch.challenges(od.nvars());
                let sh = pow2(*shift);
                let poly = self.proving().then(|| {
                    Poly::new(vec![
                        eq_table(&r2),
                        self.num_table(z.num),
                        self.num_table(y.num),
                        self.num_table(d1.num),
                        self.table(*n),
                        od.ind_table(),
                        self.num_table(d2.num),
                    ])
                    // z·y
                    .term(Ext::ONE, &[0, 1, 2])
                    // λ(d1 − n·2^s + y² − y + ind − z)
                    .term(lambda, &[0, 3])
                    .term(-lambda * sh, &[0, 4])
                    .term(lambda, &[0, 2, 2])
                    .term(-lambda, &[0, 2])
                    .term(lambda, &[0, 5])
                    .term(-lambda, &[0, 1])
                    // λ²(d2 − y² − y + n·2^s)
                    .term(l2, &[0, 6])
                    .term(-l2, &[0, 2, 2])
                    .term(-l2, &[0, 2])
                    .term(l2 * sh, &[0, 4])
                });
                let (pt, end, _) = sumcheck::run(&mut self.ch, od.nvars(), 3, Ext::ZERO, poly)?;
                let pi = od.ind_at(&pt);
                let zv = self.num_at(z.num, &pt)?;
                let yv = self.num_at(y.num, &pt)?;
                let a1 = self.num_at(d1.num, &pt)?;
                let nv = self.src_at(*n, &pt)?;
                let a2 = self.num_at(d2.num, &pt)?;
                let f = zv * yv
                    + lambda * (a1 - nv * sh + yv * yv - yv + pi - zv)
                    + l2 * (a2 - yv * yv - yv + nv * sh);
                self.check(eq_at(&r2, &pt) * f == end, "a square root does not hold")
            }
            Step::Narrow { out, src } => {
                let od = self.c.nums[out.num].dims.clone();
                let r = self.ch.challenges(od.nvars());
                let y = self.bounded_at(out, &od, &r)?;
                let v = self.src_at(*src, &r)?;
                self.check(y == v, "a tensor is outside the range its uses assume")
            }
            Step::Table {
                idx,
                lo,
                out,
                table,
                mult,
            } => self.table_step(*idx, *lo, *out, table, *mult),
            Step::DivBy {
                out,
                num,
                shift,
                den,
                rem,
                comp,
            } => self.div_by(out, *num, *shift, *den, *rem, *comp),
            Step::Extreme {
                out,
                cands,
                min,
                diffs,
            } => {
                let od = self.c.nums[*out].dims.clone();
                let r = self.ch.challenges(od.nvars());
                let y = self.num_at(*out, &r)?;
                let mut cv = Vec::with_capacity(diffs.len());
                for &d in diffs {
                    let dv = self.num_at(d, &r)?;
                    cv.push(if *min { y + dv } else { y - dv });
                }
                let rho = self.ch.challenge();
                let mut tap_claim = Ext::ZERO;
                let mut tap_m: Option<(Src, Vec<Ext>)> = None;
                let mut rp = Ext::ONE;
                for (cand, &c) in cands.iter().zip(&cv) {
                    match cand {
                        Cand::View(s, sh) => {
                            let v = self.view_at(*s, &od, &r)?;
                            self.check(
                                v * pow2(*sh) == c,
                                "a candidate does not match its difference",
                            )?;
                        }
                        Cand::Const(k) => {
                            self.check(
                                ext_i(*k) * od.ind_at(&r) == c,
                                "a constant candidate does not match its difference",
                            )?;
                        }
                        Cand::Tap(s, pairs) => {
                            let sd = self.dims(*s);
                            let m = self.wire_weights(&od, &r, &sd, pairs, rp);
                            tap_claim += rp * c;
                            match &mut tap_m {
                                Some((_, acc)) => {
                                    for (a, b) in acc.iter_mut().zip(m) {
                                        *a += b;
                                    }
                                }
                                None => tap_m = Some((*s, m)),
                            }
                            rp *= rho;
                        }
                    }
                }
                if let Some((s, m)) = tap_m {
                    self.wiring(s, tap_claim, m)?;
                }
                // ∏ dᵢ = 0 everywhere
                let r2 = self.ch.challenges(od.nvars());
                let k = diffs.len();
                let poly = self.proving().then(|| {
                    let mut tabs = vec![eq_table(&r2)];
                    for &d in diffs {
                        tabs.push(self.num_table(d));
                    }
                    let all: Vec<usize> = (0..=k).collect();
                    Poly::new(tabs).term(Ext::ONE, &all)
                });
                let (pt, end, _) = sumcheck::run(&mut self.ch, od.nvars(), k + 1, Ext::ZERO, poly)?;
                let mut prod = eq_at(&r2, &pt);
                for &d in diffs {
                    prod *= self.num_at(d, &pt)?;
                }
                self.check(prod == end, "a maximum is not attained by any candidate")
            }
        }
    }

    /// `v ∈ [p, 2p)` for the committed power of two `p` (found by lookup): the committed `v − p` and
    /// `2p − 1 − v` are non-negative. Exchanges `p`, `v − p`, `2p − 1 − v` at `r`.
    fn bit_length_at(
        &mut self,
        v: Ext,
        (p, dlo, dhi): (usize, usize, usize),
        r: &[Ext],
        what: &str,
    ) -> Result<(), ZkError> {
        let ind = self.c.nums[p].dims.ind_at(r);
        let pv = self.num_at(p, r)?;
        let lo = self.num_at(dlo, r)?;
        let hi = self.num_at(dhi, r)?;
        let two = Ext::from(F::from_u64(2));
        self.check(
            v - pv == lo && two * pv - ind - v == hi,
            &format!("{what} is not within its bit length"),
        )
    }

    fn table_step(
        &mut self,
        idx: usize,
        lo: i64,
        out: usize,
        table: &TableRef,
        mult: usize,
    ) -> Result<(), ZkError> {
        let od = self.c.nums[out].dims.clone();
        let beta = self.ch.challenge();
        let gamma = self.ch.challenge();
        let leaves = self.proving().then(|| {
            let ind = od.ind_table();
            let ti = self.num_table(idx);
            let te = self.num_table(out);
            let q: Vec<Ext> = (0..ind.len())
                .map(|x| beta - (ti[x] - ext_i(lo) * ind[x]) - gamma * te[x])
                .collect();
            (ind, q)
        });
        let fw = fraction_sum(&mut self.ch, od.nvars(), leaves)?;
        self.check(
            fw.p_at == od.ind_at(&fw.point),
            "a lookup's numerators are wrong",
        )?;
        let iv = self.num_at(idx, &fw.point)?;
        let ev = self.num_at(out, &fw.point)?;
        self.check(
            fw.q_at == beta - (iv - ext_i(lo) * od.ind_at(&fw.point)) - gamma * ev,
            "a lookup's denominators are wrong",
        )?;
        let ms = self.c.slots[mult];
        let public: Option<Vec<Ext>> = match table {
            TableRef::Public(v) => {
                let mut t: Vec<Ext> = v.iter().map(|&x| ext_i(x)).collect();
                t.resize(1 << crate::mle::vars(v.len()), Ext::ZERO);
                Some(t)
            }
            TableRef::Const(_) => None,
        };
        let tlen = match table {
            TableRef::Const(k) => self.c.weights[*k].0.len(),
            TableRef::Public(v) => v.len(),
        };
        let tbits = crate::mle::vars(tlen);
        let tab_leaves = self.proving().then(|| {
            let m = self.slot_ext(mult)[..1 << tbits].to_vec();
            let tab = match (table, &public) {
                (TableRef::Const(k), _) => self.table(Src::Weight(*k)),
                (_, Some(t)) => t.clone(),
                _ => Vec::new(),
            };
            let q: Vec<Ext> = (0..1usize << tbits)
                .map(|i| beta - Ext::from(F::from_u64(i as u64)) - gamma * tab[i])
                .collect();
            (m, q)
        });
        let ft = fraction_sum(&mut self.ch, tbits, tab_leaves)?;
        let ival: Ext = ft
            .point
            .iter()
            .enumerate()
            .map(|(i, z)| *z * pow2((tbits - 1 - i) as u32))
            .sum();
        let tv = match (table, &public) {
            (TableRef::Const(k), _) => self.src_at(Src::Weight(*k), &ft.point)?,
            (_, Some(t)) => eval(t, &ft.point),
            _ => Ext::ZERO,
        };
        self.check(
            ft.q_at == beta - ival - gamma * tv,
            "the lookup table side is wrong",
        )?;
        self.tclaims
            .push((ms.offset, ms.bits, ft.point.clone(), ft.p_at));
        self.check(
            fw.root_q != Ext::ZERO
                && ft.root_q != Ext::ZERO
                && fw.root_p * ft.root_q == ft.root_p * fw.root_q,
            "a looked-up pair is not in its table",
        )
    }

    #[allow(clippy::too_many_arguments)]
    fn div_by(
        &mut self,
        out: &Bounded,
        num: usize,
        shift: u32,
        den: usize,
        rem: usize,
        comp: usize,
    ) -> Result<(), ZkError> {
        let od = self.c.nums[out.num].dims.clone();
        let r = self.ch.challenges(od.nvars());
        let _ = self.bounded_at(out, &od, &r)?;
        let rv = self.num_at(rem, &r)?;
        let cv = self.num_at(comp, &r)?;
        let dv = self.view_at(Src::Num(den), &od, &r)?;
        let two = Ext::from(F::from_u64(2));
        self.check(
            rv + cv == two * dv - od.ind_at(&r),
            "a division remainder is out of range",
        )?;
        let r2 = self.ch.challenges(od.nvars());
        let poly = self.proving().then(|| {
            Poly::new(vec![
                eq_table(&r2),
                self.num_table(num),
                self.view_table(Src::Num(den), &od),
                self.num_table(out.num),
                self.num_table(rem),
            ])
            .term(pow2(shift + 1), &[0, 1])
            .term(Ext::ONE, &[0, 2])
            .term(-two, &[0, 2, 3])
            .term(-Ext::ONE, &[0, 4])
        });
        let (pt, end, _) = sumcheck::run(&mut self.ch, od.nvars(), 3, Ext::ZERO, poly)?;
        let ev = self.num_at(num, &pt)?;
        let dv = self.view_at(Src::Num(den), &od, &pt)?;
        let ov = self.num_at(out.num, &pt)?;
        let rv = self.num_at(rem, &pt)?;
        self.check(
            eq_at(&r2, &pt) * (pow2(shift + 1) * ev + dv - two * dv * ov - rv) == end,
            "a division does not hold",
        )
    }

    fn lin(&mut self, lin: &Lin, od: &Dims, r: &[Ext], pre: Ext) -> Result<(), ZkError> {
        match lin {
            Lin::Copy(s) => {
                let v = self.src_at(*s, r)?;
                self.check(v == pre, "a copied tensor differs from its source")
            }
            Lin::AddSub { a, b, la, lb, sub } => {
                let va = self.view_at(*a, od, r)?;
                let vb = self.view_at(*b, od, r)?;
                let (x, y) = (va * pow2(*la), vb * pow2(*lb));
                self.check(
                    pre == if *sub { x - y } else { x + y },
                    "a sum or difference does not hold",
                )
            }
            Lin::Mul { a, b } => {
                let poly = self.proving().then(|| {
                    Poly::new(vec![
                        eq_table(r),
                        self.view_table(*a, od),
                        self.view_table(*b, od),
                    ])
                    .term(Ext::ONE, &[0, 1, 2])
                });
                let (pt, end, _) = sumcheck::run(&mut self.ch, od.nvars(), 3, pre, poly)?;
                let va = self.view_at(*a, od, &pt)?;
                let vb = self.view_at(*b, od, &pt)?;
                self.check(eq_at(r, &pt) * va * vb == end, "a product does not hold")
            }
            Lin::EinSum {
                a,
                b,
                bias,
                la,
                lb,
                lo,
            } => {
                let mut acc = pre;
                if let Some((bs, sh)) = bias {
                    let v = self.view_at(*bs, od, r)?;
                    acc -= v * pow2(*sh);
                }
                let (da, db) = (self.dims(*a), self.dims(*b));
                let rs = od.split(r);
                let out_pt =
                    |l: u8| -> Option<&[Ext]> { lo.iter().position(|&x| x == l).map(|p| rs[p]) };
                let size = |l: u8| -> usize {
                    la.iter()
                        .position(|&x| x == l)
                        .map(|p| da.dims[p])
                        .or_else(|| lb.iter().position(|&x| x == l).map(|p| db.dims[p]))
                        .unwrap_or(1)
                };
                // sumcheck groups: batch labels (in a, b and out), then summed labels
                let mut groups: Vec<u8> = lo
                    .iter()
                    .copied()
                    .filter(|l| la.contains(l) && lb.contains(l))
                    .collect();
                let nbatch = groups.len();
                for &l in la.iter().chain(lb.iter()) {
                    if !lo.contains(&l) && !groups.contains(&l) {
                        groups.push(l);
                    }
                }
                let gbits: Vec<usize> = groups.iter().map(|&l| crate::mle::vars(size(l))).collect();
                let total: usize = gbits.iter().sum();
                let bbits: usize = gbits[..nbatch].iter().sum();
                let r_batch: Vec<Ext> = groups[..nbatch]
                    .iter()
                    .flat_map(|&l| out_pt(l).unwrap_or(&[]).to_vec())
                    .collect();
                let roles = |labels: &[u8]| -> Vec<Role> {
                    labels
                        .iter()
                        .map(|&l| match groups.iter().position(|&g| g == l) {
                            Some(g) => Role::Var(g),
                            None => Role::Fixed(out_pt(l).unwrap_or(&[])),
                        })
                        .collect()
                };
                let poly = self.proving().then(|| {
                    let ta = restrict(&self.table(*a), &da, &roles(la), &gbits);
                    let tb = restrict(&self.table(*b), &db, &roles(lb), &gbits);
                    let eb = eq_table(&r_batch);
                    let te: Vec<Ext> = (0..1usize << total)
                        .map(|i| eb[i >> (total - bbits)])
                        .collect();
                    Poly::new(vec![te, ta, tb]).term(Ext::ONE, &[0, 1, 2])
                });
                let (pt, end, _) = sumcheck::run(&mut self.ch, total, 3, acc, poly)?;
                let mut gstart = vec![0usize; groups.len()];
                let mut at = 0;
                for (g, &bts) in gbits.iter().enumerate() {
                    gstart[g] = at;
                    at += bts;
                }
                let point_for = |labels: &[u8]| -> Vec<Ext> {
                    labels
                        .iter()
                        .flat_map(|&l| match groups.iter().position(|&g| g == l) {
                            Some(g) => pt[gstart[g]..gstart[g] + gbits[g]].to_vec(),
                            None => out_pt(l).unwrap_or(&[]).to_vec(),
                        })
                        .collect()
                };
                let (pa, pb) = (point_for(la), point_for(lb));
                let va = self.src_at(*a, &pa)?;
                let vb = self.src_at(*b, &pb)?;
                self.check(
                    eq_at(&r_batch, &pt[..bbits]) * va * vb == end,
                    "a contraction does not hold",
                )
            }
            Lin::Conv {
                x,
                w,
                bias,
                window,
                groups,
            } => {
                let (dx, dw) = (self.dims(*x), self.dims(*w));
                let rs = od.split(r);
                let (rn, ro, ry, rx) = (rs[0], rs[1], rs[2], rs[3]);
                let mut acc = pre;
                if let Some((bs, sh)) = bias {
                    let v = self.src_at(*bs, ro)?;
                    let f = crate::dims::prefix_ind(od.dims[0], rn)
                        * crate::dims::prefix_ind(od.dims[2], ry)
                        * crate::dims::prefix_ind(od.dims[3], rx);
                    acc -= v * f * pow2(*sh);
                }
                let (o_all, cg, kh, kw) = (dw.dims[0], dw.dims[1], dw.dims[2], dw.dims[3]);
                let og = o_all / groups;
                let (h, wd) = (dx.dims[2] as i64, dx.dims[3] as i64);
                let (en, ey, ex) = (eq_table(rn), eq_table(ry), eq_table(rx));
                let tap = |oy: usize, ky: usize, ox: usize, kx: usize| -> Option<(usize, usize)> {
                    let iy = (oy * window.stride[0] as usize + ky * window.dilation[0] as usize)
                        as i64
                        - window.pads[0] as i64;
                    let ix = (ox * window.stride[1] as usize + kx * window.dilation[1] as usize)
                        as i64
                        - window.pads[1] as i64;
                    (iy >= 0 && iy < h && ix >= 0 && ix < wd).then_some((iy as usize, ix as usize))
                };
                // every (n, oy, ox, ky, kx) with a real input position, and its eq weight
                let mut taps: Vec<(usize, usize, usize, usize, usize, Ext)> = Vec::new();
                for (n, &e_n) in en.iter().enumerate().take(od.dims[0]) {
                    for (oy, &e_y) in ey.iter().enumerate().take(od.dims[2]) {
                        for (ox, &e_x) in ex.iter().enumerate().take(od.dims[3]) {
                            for ky in 0..kh {
                                for kx in 0..kw {
                                    if let Some((iy, ix)) = tap(oy, ky, ox, kx) {
                                        taps.push((n, iy, ix, ky, kx, e_n * e_y * e_x));
                                    }
                                }
                            }
                        }
                    }
                }
                let poly = self.proving().then(|| {
                    let xt = self.table(*x);
                    // per group: Σ over (n, oy, ox) of eq·x at (ci, ky, kx)
                    let mut xg = vec![vec![Ext::ZERO; dw.padded() >> dw.bits[0]]; *groups];
                    let sub = Dims::new(&[cg, kh, kw]);
                    for (g, t) in xg.iter_mut().enumerate() {
                        for &(n, iy, ix, ky, kx, e) in &taps {
                            for ci in 0..cg {
                                t[sub.at(&[ci, ky, kx])] +=
                                    e * xt[dx.at(&[n, g * cg + ci, iy, ix])];
                            }
                        }
                    }
                    let eo = eq_table(ro);
                    let per = dw.padded() >> dw.bits[0];
                    let mut te = vec![Ext::ZERO; dw.padded()];
                    let mut tx = vec![Ext::ZERO; dw.padded()];
                    // eq over every (padded) output channel, as the verifier evaluates it; the
                    // patches only for real ones (the weights are zero on the others)
                    for (o, &e) in eo.iter().enumerate() {
                        for i in 0..per {
                            te[(o * per) + i] = e;
                            if o < o_all {
                                tx[(o * per) + i] = xg[o / og][i];
                            }
                        }
                    }
                    Poly::new(vec![te, tx, self.table(*w)]).term(Ext::ONE, &[0, 1, 2])
                });
                let (pt, end, finals) = sumcheck::run(&mut self.ch, dw.nvars(), 3, acc, poly)?;
                let xv = self
                    .ch
                    .ext1(b"patches", || finals.get(1).copied().unwrap_or(Ext::ZERO))?;
                let wv = self.src_at(*w, &pt)?;
                let ps = dw.split(&pt);
                self.check(
                    eq_at(ro, ps[0]) * xv * wv == end,
                    "a convolution does not hold",
                )?;
                let eo = eq_table(ps[0]);
                let e_g: Vec<Ext> = (0..*groups)
                    .map(|g| (g * og..(g + 1) * og).map(|o| eo[o]).sum())
                    .collect();
                let (ec, eky, ekx) = (eq_table(ps[1]), eq_table(ps[2]), eq_table(ps[3]));
                let mut m = vec![Ext::ZERO; dx.padded()];
                for &(n, iy, ix, ky, kx, e) in &taps {
                    let e2 = e * eky[ky] * ekx[kx];
                    for (g, &eg) in e_g.iter().enumerate() {
                        let e3 = e2 * eg;
                        for (ci, &c) in ec.iter().enumerate().take(cg) {
                            m[dx.at(&[n, g * cg + ci, iy, ix])] += e3 * c;
                        }
                    }
                }
                self.wiring(*x, xv, m)
            }
            Lin::Reduce { x, axes } => {
                let dx = self.dims(*x);
                let rs = od.split(r);
                let mut groups = Vec::new();
                let mut roles = Vec::new();
                for ax in 0..dx.dims.len() {
                    if axes.contains(&ax) {
                        roles.push(Role::Var(groups.len()));
                        groups.push(dx.bits[ax]);
                    } else {
                        roles.push(Role::Fixed(rs[ax]));
                    }
                }
                let total: usize = groups.iter().sum();
                let poly = self.proving().then(|| {
                    Poly::new(vec![restrict(&self.table(*x), &dx, &roles, &groups)])
                        .term(Ext::ONE, &[0])
                });
                let (pt, end, _) = sumcheck::run(&mut self.ch, total, 1, pre, poly)?;
                let mut full = Vec::new();
                let mut at = 0;
                for ax in 0..dx.dims.len() {
                    if axes.contains(&ax) {
                        full.extend_from_slice(&pt[at..at + dx.bits[ax]]);
                        at += dx.bits[ax];
                    } else {
                        full.extend_from_slice(rs[ax]);
                    }
                }
                let v = self.src_at(*x, &full)?;
                self.check(v == end, "a reduction does not hold")
            }
            Lin::Wire { parts, map } => self.wires(parts, map, od, r, pre),
            Lin::Gather {
                data,
                indices,
                axis,
            } => {
                let idx: Vec<i128> = match indices {
                    Src::Input(i) => self.inputs[*i].iter().map(|&v| v as i128).collect(),
                    Src::Weight(c) => self.model.consts[*c]
                        .data
                        .iter()
                        .map(|&v| v as i128)
                        .collect(),
                    Src::Num(_) => return Err(ZkError::rejected("computed gather indices")),
                };
                let m = gather_map(&self.dims(*data).dims, &idx, *axis)
                    .map_err(|e| ZkError::rejected(e.to_string()))?;
                self.wires(&[*data], &[m], od, r, pre)
            }
        }
    }

    fn wires(
        &mut self,
        parts: &[Src],
        map: &[Vec<(u32, u32)>],
        od: &Dims,
        r: &[Ext],
        pre: Ext,
    ) -> Result<(), ZkError> {
        let ms: Vec<Vec<Ext>> = parts
            .iter()
            .zip(map)
            .map(|(p, m)| self.wire_weights(od, r, &self.dims(*p), m, Ext::ONE))
            .collect();
        let vals = if parts.len() == 1 {
            vec![pre]
        } else {
            let computed: Vec<Ext> = if self.proving() {
                parts
                    .iter()
                    .zip(&ms)
                    .map(|(p, m)| self.table(*p).iter().zip(m).map(|(a, b)| *a * *b).sum())
                    .collect()
            } else {
                Vec::new()
            };
            let v = self.ch.ext(b"parts", parts.len(), || computed)?;
            self.check(
                v.iter().copied().sum::<Ext>() == pre,
                "the parts do not add up",
            )?;
            v
        };
        for ((p, m), v) in parts.iter().zip(ms).zip(vals) {
            self.wiring(*p, v, m)?;
        }
        Ok(())
    }

    /// Batch claims on a committed table into one opening.
    fn open_batch(
        &mut self,
        label: &[u8],
        claims: Vec<Claim>,
        (bits, len): (usize, usize),
        tab: Option<(&[Ext], &Committed)>,
        root: &Hash,
    ) -> Result<(), ZkError> {
        if claims.is_empty() {
            return Ok(());
        }
        let rho = self.ch.challenge();
        let mut claim = Ext::ZERO;
        let mut rp = Ext::ONE;
        let mut coefs = Vec::with_capacity(claims.len());
        for c in &claims {
            claim += rp * c.3;
            coefs.push(rp);
            rp *= rho;
        }
        let poly = tab.map(|(t, _)| {
            let mut g = vec![Ext::ZERO; 1 << bits];
            for (c, &k) in claims.iter().zip(&coefs) {
                for (i, e) in eq_table(&c.2).into_iter().enumerate() {
                    g[c.0 + i] += k * e;
                }
            }
            let mut t = t.to_vec();
            t.resize(1 << bits, Ext::ZERO);
            Poly::new(vec![t, g]).term(Ext::ONE, &[0, 1])
        });
        let (z, end, finals) = sumcheck::run(&mut self.ch, bits, 2, claim, poly)?;
        let tz = self
            .ch
            .ext1(label, || finals.first().copied().unwrap_or(Ext::ZERO))?;
        let mut gz = Ext::ZERO;
        for (c, &k) in claims.iter().zip(&coefs) {
            let hi = bits - c.1;
            gz += k * eq_at(&bits_point(c.0 >> c.1, hi), &z[..hi]) * eq_at(&c.2, &z[hi..]);
        }
        self.check(tz * gz == end, "the batched claims do not hold")?;
        pcs::open(&mut self.ch, tab.map(|(_, c)| c), root, (bits, len), &z, tz)
    }

    fn valid_at(&self, z: &[Ext]) -> Ext {
        let n = self.c.t_bits;
        let mut v = Ext::ZERO;
        for (i, s) in self.c.slots.iter().enumerate() {
            let hi = n - s.bits;
            let e = eq_at(&bits_point(s.offset >> s.bits, hi), &z[..hi]);
            let _ = i;
            v += e * match s.num {
                None => crate::dims::prefix_ind(s.len, &z[hi..]),
                Some(n) => self.c.nums[n].dims.ind_at(&z[hi..]),
            };
        }
        v
    }

    fn run(
        &mut self,
        t_root: &Hash,
        w_root: &Hash,
        tcom: Option<&Committed>,
        wcom: Option<&Committed>,
    ) -> Result<(), ZkError> {
        let c = self.c;
        for steps in &c.nodes {
            for s in steps {
                self.step(s)?;
            }
        }
        for (j, src) in c.outputs.iter().enumerate() {
            if let Src::Num(n) = src {
                let d = c.nums[*n].dims.clone();
                let r = self.ch.challenges(d.nvars());
                let want = self.output_tabs_at(j, &d, &r);
                let got = self.num_at(*n, &r)?;
                self.check(got == want, "the committed output is not the stated output")?;
            }
        }
        // T vanishes off its real entries
        let n = c.t_bits;
        let r = self.ch.challenges(n);
        let poly = self.proving().then(|| {
            let mut inv = vec![Ext::ONE; 1 << n];
            for s in &c.slots {
                match s.num {
                    None => {
                        for x in &mut inv[s.offset..s.offset + s.len] {
                            *x = Ext::ZERO;
                        }
                    }
                    Some(n) => {
                        for p in c.nums[n].dims.positions() {
                            inv[s.offset + p] = Ext::ZERO;
                        }
                    }
                }
            }
            Poly::new(vec![eq_table(&r), inv, self.t_ext.clone()]).term(Ext::ONE, &[0, 1, 2])
        });
        let (pt, end, finals) = sumcheck::run(&mut self.ch, n, 3, Ext::ZERO, poly)?;
        let tv = self.ch.ext1(b"trace at the padding point", || {
            finals.get(2).copied().unwrap_or(Ext::ZERO)
        })?;
        self.tclaims.push((0, n, pt.clone(), tv));
        self.check(
            eq_at(&r, &pt) * (Ext::ONE - self.valid_at(&pt)) * tv == end,
            "the trace is not zero off its tensors",
        )?;
        // every entry outside the multiplicities is a 16-bit limb (logUp)
        let alpha = self.ch.challenge();
        let ms = c.slots[c.mult];
        let leaves = self.proving().then(|| {
            let mut p = vec![Ext::ONE; 1 << n];
            for s in c.slots.iter().filter(|s| s.num.is_none()) {
                for x in &mut p[s.offset..s.offset + (1 << s.bits)] {
                    *x = Ext::ZERO;
                }
            }
            let q: Vec<Ext> = self.t_ext.iter().map(|t| alpha - *t).collect();
            (p, q)
        });
        let fw = fraction_sum(&mut self.ch, n, leaves)?;
        let mut in_m = Ext::ZERO;
        for s in c.slots.iter().filter(|s| s.num.is_none()) {
            let hi = n - s.bits;
            in_m += eq_at(&bits_point(s.offset >> s.bits, hi), &fw.point[..hi]);
        }
        self.check(
            fw.p_at == Ext::ONE - in_m,
            "the range argument's numerators are wrong",
        )?;
        self.tclaims.push((0, n, fw.point.clone(), alpha - fw.q_at));
        let table_leaves = self.proving().then(|| {
            let m = self.t_ext[ms.offset..ms.offset + (1 << ms.bits)].to_vec();
            let q: Vec<Ext> = (0..1u64 << c.limb_bits)
                .map(|t| alpha - Ext::from(F::from_u64(t)))
                .collect();
            (m, q)
        });
        let ft = fraction_sum(&mut self.ch, c.limb_bits as usize, table_leaves)?;
        let tval: Ext = ft
            .point
            .iter()
            .enumerate()
            .map(|(i, z)| *z * pow2(c.limb_bits - 1 - i as u32))
            .sum();
        self.check(ft.q_at == alpha - tval, "the range table is wrong")?;
        self.tclaims
            .push((ms.offset, ms.bits, ft.point.clone(), ft.p_at));
        self.check(
            fw.root_q != Ext::ZERO
                && ft.root_q != Ext::ZERO
                && fw.root_p * ft.root_q == ft.root_p * fw.root_q,
            "a trace entry is outside the 16-bit range",
        )?;
        // openings
        let tclaims = std::mem::take(&mut self.tclaims);
        let t_ext = std::mem::take(&mut self.t_ext);
        self.open_batch(
            b"trace at the opening point",
            tclaims,
            (n, c.t_len),
            tcom.map(|c| (t_ext.as_slice(), c)),
            t_root,
        )?;
        let wclaims = std::mem::take(&mut self.wclaims);
        let w_ext: Vec<Ext> = match wcom {
            Some(_) => circuit::w_table(self.model, c)
                .into_iter()
                .map(lift)
                .collect(),
            None => Vec::new(),
        };
        self.open_batch(
            b"weights at the opening point",
            wclaims,
            (c.w_bits, c.w_len),
            wcom.map(|c| (w_ext.as_slice(), c)),
            w_root,
        )?;
        Ok(())
    }

    fn output_tabs_at(&self, j: usize, d: &Dims, r: &[Ext]) -> Ext {
        let vals: Vec<Ext> = self.outputs[j].iter().map(|&v| ext_i(v as i64)).collect();
        eval(&d.pad(&vals), r)
    }
}

fn statement(ch: &mut Channel, vk: &VerifyingKey, inputs: &[Vec<i32>], outputs: &[Vec<i32>]) {
    ch.absorb_public(b"model id", &vk.model_id.0);
    ch.absorb_public(b"weights root", &vk.w_root.0);
    ch.absorb_public(b"input hash", &tensors_hash(inputs).0);
    ch.absorb_public(b"output hash", &tensors_hash(outputs).0);
}

fn check_io(c: &Circuit, inputs: &[Vec<i32>], outputs: &[Vec<i32>]) -> Result<(), ZkError> {
    if inputs.len() != c.inputs.len() || outputs.len() != c.outputs.len() {
        return Err(ZkError::rejected(
            "the number of inputs or outputs does not match the model",
        ));
    }
    for (x, d) in inputs.iter().zip(&c.inputs) {
        if x.len() != d.len() {
            return Err(ZkError::rejected(
                "an input has the wrong number of elements",
            ));
        }
    }
    for (j, src) in c.outputs.iter().enumerate() {
        let want = match src {
            Src::Num(n) => c.nums[*n].dims.len(),
            Src::Input(i) => c.inputs[*i].len(),
            Src::Weight(w) => c.weights[*w].0.len(),
        };
        if outputs[j].len() != want {
            return Err(ZkError::rejected(
                "an output has the wrong number of elements",
            ));
        }
        if let Src::Input(i) = src {
            if outputs[j] != inputs[*i] {
                return Err(ZkError::rejected(
                    "an output that is an input differs from it",
                ));
            }
        }
    }
    Ok(())
}

fn input_tabs(c: &Circuit, inputs: &[Vec<i32>]) -> Vec<Vec<Ext>> {
    inputs
        .iter()
        .zip(&c.inputs)
        .map(|(x, d)| d.pad(&x.iter().map(|&v| ext_i(v as i64)).collect::<Vec<_>>()))
        .collect()
}

/// Prove the canonical execution of the key's model on `inputs` (quantized). Returns the outputs and the
/// proof bytes.
pub fn prove(pk: &ProvingKey, inputs: &[Vec<i32>]) -> Result<(Vec<Vec<i32>>, Vec<u8>), ZkError> {
    prove_inner(pk, inputs, |_| {}, false)
}

/// [`prove`] from committed values changed by `tamper` (a cheating prover, for soundness tests): the
/// outputs returned are the honest ones.
#[doc(hidden)]
pub fn prove_with(
    pk: &ProvingKey,
    inputs: &[Vec<i32>],
    tamper: impl FnOnce(&mut Vec<Vec<i128>>),
) -> Result<(Vec<Vec<i32>>, Vec<u8>), ZkError> {
    prove_inner(pk, inputs, tamper, true)
}

fn prove_inner(
    pk: &ProvingKey,
    inputs: &[Vec<i32>],
    tamper: impl FnOnce(&mut Vec<Vec<i128>>),
    cheating: bool,
) -> Result<(Vec<Vec<i32>>, Vec<u8>), ZkError> {
    let c = &pk.circuit;
    if inputs.len() != c.inputs.len()
        || inputs
            .iter()
            .zip(&c.inputs)
            .any(|(x, d)| x.len() != d.len())
    {
        return Err(ZkError::Execution(
            "the inputs do not match the model's input shapes".into(),
        ));
    }
    let wit = crate::witness::witness_with(pk, inputs, tamper)?;
    let outputs = wit.outputs.clone();
    let vk = pk.verifying_key();
    let mut ch = if cheating {
        Channel::cheating_prover(DOMAIN)
    } else {
        Channel::prover(DOMAIN)
    };
    statement(&mut ch, &vk, inputs, &outputs);
    let tcom = pcs::commit(wit.t[..c.t_len].to_vec(), c.t_bits);
    ch.hashes(b"trace commitment", 1, || vec![tcom.root])?;
    let mut run = Run {
        ch,
        c,
        model: &pk.model,
        inputs,
        outputs: &outputs,
        input_tabs: input_tabs(c, inputs),
        pk: Some(pk),
        wit: Some(&wit),
        t_ext: wit.t.iter().map(|x| lift(*x)).collect(),
        tclaims: Vec::new(),
        wclaims: Vec::new(),
    };
    run.run(&tcom.root, &vk.w_root, Some(&tcom), Some(&pk.w))?;
    let proof = run.ch.into_proof();
    Ok((outputs, proof))
}

/// Verify that `proof` shows the canonical execution of `model` (with ID and constants root in `vk`) on
/// `inputs` gives `outputs`.
pub fn verify(
    model: &Model,
    vk: &VerifyingKey,
    inputs: &[Vec<i32>],
    outputs: &[Vec<i32>],
    proof: &[u8],
) -> Result<(), ZkError> {
    let c = circuit::circuit(model, vk.model_id)?;
    verify_with(&c, model, vk, inputs, outputs, proof)
}

/// [`verify`] with the circuit already derived.
pub fn verify_with(
    c: &Circuit,
    model: &Model,
    vk: &VerifyingKey,
    inputs: &[Vec<i32>],
    outputs: &[Vec<i32>],
    proof: &[u8],
) -> Result<(), ZkError> {
    check_io(c, inputs, outputs)?;
    let mut ch = Channel::verifier(DOMAIN, proof.to_vec());
    statement(&mut ch, vk, inputs, outputs);
    let t_root = ch.hashes(b"trace commitment", 1, Vec::new)?[0];
    let mut run = Run {
        ch,
        c,
        model,
        inputs,
        outputs,
        input_tabs: input_tabs(c, inputs),
        pk: None,
        wit: None,
        t_ext: Vec::new(),
        tclaims: Vec::new(),
        wclaims: Vec::new(),
    };
    run.run(&t_root, &vk.w_root, None, None)?;
    run.ch.finish()
}
