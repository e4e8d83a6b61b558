//! A floating-point forward pass of a llama-family model, written directly from the architecture (not
//! from the canonical graph): the yardstick the canonical step is measured against, and the source of
//! the calibration maxima that choose the step's scales. `f64` arithmetic on the exact weights.

use crate::arch::{Hparams, Matrix, RopeKind, Weights};
use crate::gguf::Dyadic;

/// Largest magnitudes seen at each site of the network (over every layer and position).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Maxima {
    /// The residual stream.
    pub residual: f64,
    /// Queries after RoPE.
    pub q: f64,
    /// Keys after RoPE.
    pub k: f64,
    /// Values.
    pub v: f64,
    /// Attention scores `q·k` (before the `1/√d` factor).
    pub scores: f64,
    /// Gate projections.
    pub gate: f64,
    /// Up projections.
    pub up: f64,
    /// `silu(gate) · up`.
    pub act: f64,
    /// Logits.
    pub logits: f64,
}

fn upd(m: &mut f64, v: &[f64]) {
    for x in v {
        *m = m.max(x.abs());
    }
}

struct Dense {
    rows: usize,
    cols: usize,
    block: usize,
    w: Vec<f32>,
}

impl Dense {
    fn of(m: &Matrix) -> Dense {
        let w = (0..m.rows * m.cols).map(|i| Dense::value(m, i)).collect();
        Dense {
            rows: m.rows,
            cols: m.cols,
            block: m.blocks.block,
            w,
        }
    }

    /// Element `i` of `m` as the float model holds it.
    fn value(m: &Matrix, i: usize) -> f32 {
        m.blocks.value(i).to_f64() as f32
    }

    fn apply(&self, x: &[f64]) -> Vec<f64> {
        let q;
        let x = if Q8.with(|c| c.get()) {
            // as ggml multiplies quantized weights: activations in 8-bit blocks, `round(127 x / max)`
            q = x
                .chunks(self.block)
                .flat_map(|b| {
                    let m = b.iter().fold(0f64, |m, v| m.max(v.abs()));
                    b.iter().map(move |v| {
                        if m == 0.0 {
                            0.0
                        } else {
                            (127.0 * v / m).round() * m / 127.0
                        }
                    })
                })
                .collect::<Vec<f64>>();
            &q[..]
        } else {
            x
        };
        (0..self.rows)
            .map(|r| {
                let row = &self.w[r * self.cols..(r + 1) * self.cols];
                row.iter().zip(x).map(|(&w, &x)| w as f64 * x).sum()
            })
            .collect()
    }
}

thread_local! {
    static Q8: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Whether this thread's reference runs quantize activations to 8-bit blocks before every matrix
/// product, as ggml does for quantized weights (off by default: plain `f64`).
pub fn set_q8_activations(on: bool) {
    Q8.with(|c| c.set(on));
}

fn f(v: &[Dyadic]) -> Vec<f64> {
    v.iter().map(|d| d.to_f64()).collect()
}

struct RefLayer {
    attn_norm: Vec<f64>,
    wq: Dense,
    wk: Dense,
    wv: Dense,
    wo: Dense,
    bias: Option<[Vec<f64>; 3]>,
    ffn_norm: Vec<f64>,
    gate: Dense,
    up: Dense,
    down: Dense,
}

impl RefLayer {
    fn of(l: &crate::arch::Layer) -> RefLayer {
        RefLayer {
            attn_norm: f(&l.attn_norm),
            wq: Dense::of(&l.wq),
            wk: Dense::of(&l.wk),
            wv: Dense::of(&l.wv),
            wo: Dense::of(&l.wo),
            bias: l.bias.as_ref().map(|[a, b, c]| [f(a), f(b), f(c)]),
            ffn_norm: f(&l.ffn_norm),
            gate: Dense::of(&l.gate),
            up: Dense::of(&l.up),
            down: Dense::of(&l.down),
        }
    }
}

/// One vector per position.
type Rows = Vec<Vec<f64>>;

/// The float model and its key/value cache.
pub struct Reference {
    hp: Hparams,
    embd: Dense,
    layers: Vec<RefLayer>,
    out_norm: Vec<f64>,
    head: Option<Dense>,
    /// Per layer: keys and values of every past position, `[pos][kv_heads · head_dim]`.
    cache: Vec<(Rows, Rows)>,
    /// Maxima over every step run so far.
    pub maxima: Maxima,
    /// When set, every named intermediate of the next steps is recorded here (names as the canonical
    /// step's nodes: `blk.L.q_rope`, `blk.L.attn`, …), for tracing where two runs part.
    pub probe: Option<Vec<(String, Vec<f64>)>>,
}

/// RMSNorm: `x / √(mean(x²) + ε) · w`.
pub fn rms_norm(x: &[f64], w: &[f64], eps: f64) -> Vec<f64> {
    let ms = x.iter().map(|v| v * v).sum::<f64>() / x.len() as f64;
    let r = 1.0 / (ms + eps).sqrt();
    x.iter().zip(w).map(|(a, b)| a * r * b).collect()
}

/// The rotation angle of pair `i` (of `d/2`) at position `pos`: `pos · base^(−2i/d)`.
pub fn rope_angle(pos: usize, i: usize, d: usize, base: f64) -> f64 {
    pos as f64 * libm::pow(base, -2.0 * i as f64 / d as f64)
}

fn rope(x: &mut [f64], heads: usize, d: usize, pos: usize, hp: &Hparams) {
    for h in 0..heads {
        let v = &mut x[h * d..(h + 1) * d];
        for i in 0..d / 2 {
            let a = rope_angle(pos, i, d, hp.rope_base);
            let (s, c) = (libm::sin(a), libm::cos(a));
            let (j, k) = match hp.rope {
                RopeKind::Adjacent => (2 * i, 2 * i + 1),
                RopeKind::Halves => (i, i + d / 2),
            };
            let (e, o) = (v[j], v[k]);
            v[j] = e * c - o * s;
            v[k] = e * s + o * c;
        }
    }
}

impl Reference {
    /// The float model of `w`.
    pub fn new(w: &Weights) -> Reference {
        let layers = w.layers.iter().map(RefLayer::of).collect();
        Reference {
            hp: w.hp.clone(),
            embd: Dense::of(&w.embd),
            layers,
            out_norm: f(&w.out_norm),
            head: w.output.as_ref().map(Dense::of),
            cache: (0..w.hp.layers).map(|_| (Vec::new(), Vec::new())).collect(),
            maxima: Maxima::default(),
            probe: None,
        }
    }

    /// Positions already in the cache.
    pub fn len(&self) -> usize {
        self.cache.first().map_or(0, |c| c.0.len())
    }

    /// Whether no position has run yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Runs one token at the next position; returns the logits.
    pub fn step(&mut self, token: usize) -> Vec<f64> {
        let hp = self.hp.clone();
        let pos = self.len();
        let e = &self.embd;
        let mut x: Vec<f64> = e.w[token * e.cols..(token + 1) * e.cols]
            .iter()
            .map(|&v| v as f64)
            .collect();
        let m = &mut self.maxima;
        let probe = &mut self.probe;
        let mut rec = |n: String, v: &[f64]| {
            if let Some(p) = probe.as_mut() {
                p.push((n, v.to_vec()));
            }
        };
        rec("embd".into(), &x);
        upd(&mut m.residual, &x);
        for (l, layer) in self.layers.iter().enumerate() {
            layer_step(layer, l, &mut x, pos, &hp, &mut self.cache[l], m, &mut rec);
        }
        let h = rms_norm(&x, &self.out_norm, hp.eps);
        rec("output_norm".into(), &h);
        let logits = self.head.as_ref().unwrap_or(&self.embd).apply(&h);
        upd(&mut m.logits, &logits);
        rec("logits".into(), &logits);
        logits
    }
}

/// Layer `l` at position `pos` (the cache holds the layer's earlier positions): `x` is the residual
/// stream, updated in place.
#[allow(clippy::too_many_arguments)]
fn layer_step(
    layer: &RefLayer,
    l: usize,
    x: &mut [f64],
    pos: usize,
    hp: &Hparams,
    cache: &mut (Rows, Rows),
    m: &mut Maxima,
    rec: &mut impl FnMut(String, &[f64]),
) {
    let (d, nh, nkv) = (hp.head_dim, hp.heads, hp.kv_heads);
    let h = rms_norm(x, &layer.attn_norm, hp.eps);
    rec(format!("blk.{l}.attn_norm"), &h);
    let (mut q, mut k, mut v) = (layer.wq.apply(&h), layer.wk.apply(&h), layer.wv.apply(&h));
    if let Some([bq, bk, bv]) = &layer.bias {
        for (t, b) in [(&mut q, bq), (&mut k, bk), (&mut v, bv)] {
            t.iter_mut().zip(b).for_each(|(a, b)| *a += b);
        }
    }
    rope(&mut q, nh, d, pos, hp);
    rope(&mut k, nkv, d, pos, hp);
    rec(format!("blk.{l}.q_rope"), &q);
    rec(format!("blk.{l}.k_rope"), &k);
    rec(format!("blk.{l}.v"), &v);
    upd(&mut m.q, &q);
    upd(&mut m.k, &k);
    upd(&mut m.v, &v);
    let (kc, vc) = cache;
    kc.push(k);
    vc.push(v);
    let mut o = vec![0f64; nh * d];
    for hq in 0..nh {
        let hk = hq / (nh / nkv);
        let qh = &q[hq * d..(hq + 1) * d];
        let s: Vec<f64> = kc
            .iter()
            .map(|kt| {
                qh.iter()
                    .zip(&kt[hk * d..(hk + 1) * d])
                    .map(|(a, b)| a * b)
                    .sum()
            })
            .collect();
        upd(&mut m.scores, &s);
        let scale = 1.0 / (d as f64).sqrt();
        let mx = s.iter().fold(f64::MIN, |a, &b| a.max(b));
        let p: Vec<f64> = s.iter().map(|&v| libm::exp((v - mx) * scale)).collect();
        let z: f64 = p.iter().sum();
        for (t, vt) in vc.iter().enumerate() {
            for j in 0..d {
                o[hq * d + j] += p[t] / z * vt[hk * d + j];
            }
        }
    }
    rec(format!("blk.{l}.attn_flat"), &o);
    let a = layer.wo.apply(&o);
    rec(format!("blk.{l}.attn_out"), &a);
    x.iter_mut().zip(&a).for_each(|(x, a)| *x += a);
    upd(&mut m.residual, x);
    rec(format!("blk.{l}.attn_residual"), x);
    let h = rms_norm(x, &layer.ffn_norm, hp.eps);
    rec(format!("blk.{l}.ffn_norm"), &h);
    let (g, u) = (layer.gate.apply(&h), layer.up.apply(&h));
    rec(format!("blk.{l}.gate"), &g);
    rec(format!("blk.{l}.up"), &u);
    upd(&mut m.gate, &g);
    upd(&mut m.up, &u);
    let act: Vec<f64> = g
        .iter()
        .zip(&u)
        .map(|(&g, &u)| g / (1.0 + libm::exp(-g)) * u)
        .collect();
    upd(&mut m.act, &act);
    rec(format!("blk.{l}.ffn_act"), &act);
    let dn = layer.down.apply(&act);
    rec(format!("blk.{l}.down"), &dn);
    x.iter_mut().zip(&dn).for_each(|(x, a)| *x += a);
    rec(format!("blk.{l}.ffn_residual"), x);
    upd(&mut m.residual, x);
}

/// The maxima of [`Reference::step`] run on `tokens` from position 0, computed a layer at a time over
/// every position (the same values in another order), so that only one layer's weights are held as
/// floats at once (and the output matrix at the end).
pub fn calibrate(w: &Weights, tokens: &[usize]) -> Maxima {
    let hp = &w.hp;
    let mut m = Maxima::default();
    let cols = w.embd.cols;
    // the embedding rows as `Dense` holds them (f32)
    let mut xs: Vec<Vec<f64>> = tokens
        .iter()
        .map(|&t| {
            (t * cols..(t + 1) * cols)
                .map(|i| Dense::value(&w.embd, i) as f64)
                .collect()
        })
        .collect();
    for x in &xs {
        upd(&mut m.residual, x);
    }
    for (l, lw) in w.layers.iter().enumerate() {
        let layer = RefLayer::of(lw);
        let mut cache = (Vec::new(), Vec::new());
        for (pos, x) in xs.iter_mut().enumerate() {
            layer_step(&layer, l, x, pos, hp, &mut cache, &mut m, &mut |_, _| {});
        }
    }
    let head = Dense::of(w.output.as_ref().unwrap_or(&w.embd));
    let out_norm = f(&w.out_norm);
    for x in &xs {
        let logits = head.apply(&rms_norm(x, &out_norm, hp.eps));
        upd(&mut m.logits, &logits);
    }
    m
}
