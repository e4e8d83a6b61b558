#!/usr/bin/env python3
"""Differential test of the op families real exports use beyond arithmetic and contractions: scikit-learn
pipelines as skl2onnx exports them (fixtures/sklearn_*.onnx, label outputs included), and models built
here with random weights (activations by table, comparisons and boolean masks, arg-max labels,
padding, tiling, cumulative sums, element gathers, resizing, transposed convolution, local response
normalization, and BERT-style encoders over a padded batch with both attention-mask styles exporters
write), compiled by Verity, run on fresh inputs beside onnxruntime. Exit status 1 on any disagreement.

    python tests/python/op_families.py --verity target/release/verity [-k NAME]
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto as T
from onnx import helper as h
from onnx import numpy_helper as nh

FMIN = float(np.finfo(np.float32).min)


class G:
    """A small graph builder: nodes, initializers, fresh names."""

    def __init__(self, rng):
        self.rng, self.nodes, self.inits, self.k = rng, [], [], 0

    def name(self, p):
        self.k += 1
        return f"{p}{self.k}"

    def const(self, a, p="c"):
        n = self.name(p)
        self.inits.append(nh.from_array(np.asarray(a), n))
        return n

    def w(self, *shape, s=0.3):
        return self.const((self.rng.standard_normal(shape) * s).astype(np.float32), "w")

    def op(self, op_type, ins, n_out=1, **attrs):
        outs = [self.name(op_type.lower()) for _ in range(n_out)]
        self.nodes.append(h.make_node(op_type, ins, outs, **attrs))
        return outs[0] if n_out == 1 else outs

    def model(self, inputs, outputs, opset=18):
        g = h.make_graph(self.nodes, "family", inputs, [], self.inits)
        m = h.make_model(g, opset_imports=[h.make_opsetid("", opset)])
        m.ir_version = 8
        # output types from ONNX shape inference
        inferred = {v.name: v for v in onnx.shape_inference.infer_shapes(m).graph.value_info}
        m.graph.output.extend([inferred[o] for o in outputs])
        return m


def fin(name, shape, t=T.FLOAT):
    return h.make_tensor_value_info(name, t, shape)


def activations(rng):
    g = G(rng)
    outs = [g.op("Elu", ["x"], alpha=0.7), g.op("Selu", ["x"]), g.op("PRelu", ["x", g.w(3, 1, 1)]),
            g.op("HardSigmoid", ["x"], alpha=0.25, beta=0.4), g.op("Softplus", ["x"]), g.op("Mish", ["x"]),
            g.op("Sign", ["x"]), g.op("ThresholdedRelu", ["x"], alpha=0.5), g.op("LogSoftmax", ["x"], axis=1),
            g.op("Floor", ["x"]), g.op("Softsign", ["x"]), g.op("Log", [g.op("Add", [g.op("Abs", ["x"]), g.const(np.float32(0.5))])]),
            g.op("Cos", ["x"])]
    return g.model([fin("x", [2, 3, 4, 5])], outs), {"x": ("uniform", -3, 3)}


def vision(rng):
    g = G(rng)
    c = g.op("Conv", ["x", g.w(6, 3, 3, 3), g.w(6)], pads=[1, 1, 1, 1])
    c = g.op("Relu", [c])
    c = g.op("LRN", [c], size=3, alpha=1e-3, beta=0.75, bias=1.0)
    c = g.op("MaxPool", [c], kernel_shape=[2, 2], strides=[2, 2])
    d = g.op("ConvTranspose", [c, g.w(6, 4, 3, 3), g.w(4)], strides=[2, 2], pads=[1, 1, 1, 1],
             output_padding=[1, 1])
    r = g.op("Resize", [d, "", g.const(np.array([1, 1, 2, 2], np.float32))], mode="linear")
    n = g.op("Resize", [c, "", g.const(np.array([1, 1, 2, 2], np.float32))], mode="nearest")
    p = g.op("Pad", [d, g.const(np.array([0, 0, 1, 2, 0, 0, 2, 1], np.int64))], mode="reflect")
    e = g.op("Pad", [d, g.const(np.array([0, 0, 0, 1, 0, 0, 3, 0], np.int64))], mode="edge")
    i = g.op("InstanceNormalization", [d, g.w(4), g.w(4)])
    return g.model([fin("x", [1, 3, 8, 8])], [r, n, p, e, i]), {"x": ("uniform", -1, 1)}


def volumes(rng):
    """3-D convolutions (grouped, strided, dilated, padded, with bias) and 3-D pooling."""
    g = G(rng)
    c = g.op("Conv", ["x", g.w(6, 2, 3, 2, 3), g.w(6)], pads=[1, 0, 1, 1, 0, 1], strides=[2, 1, 2],
             dilations=[1, 2, 1], group=2)
    m = g.op("MaxPool", [g.op("Relu", [c])], kernel_shape=[2, 2, 2], strides=[1, 2, 2])
    a = g.op("AveragePool", ["x"], kernel_shape=[2, 3, 3], strides=[1, 2, 2], pads=[0, 1, 1, 0, 1, 1])
    return g.model([fin("x", [1, 4, 6, 5, 6])], [c, m, a]), {"x": ("uniform", -1, 1)}


def indexing(rng):
    g = G(rng)
    logits = g.op("MatMul", ["x", g.w(6, 5)])
    label = g.op("ArgMax", [logits], axis=1, keepdims=0)
    last = g.op("ArgMin", [logits], axis=1, keepdims=1, select_last_index=1)
    # indices through integer casts, as exporters write them
    recast = g.op("Cast", [g.op("Cast", [label], to=T.INT32)], to=T.INT64)
    picked = g.op("Gather", [g.w(5, 3), recast], axis=0)
    idx = g.op("ArgMax", [g.op("Reshape", [logits, g.const(np.array([4, 5, 1], np.int64))])], axis=1)
    ge = g.op("GatherElements", [g.op("Reshape", [logits, g.const(np.array([4, 5, 1], np.int64))]), idx],
              axis=1)
    cs = g.op("CumSum", [logits, g.const(np.array(1, np.int64))], exclusive=1)
    tl = g.op("Tile", [logits, g.const(np.array([1, 2], np.int64))])
    tri = g.op("Trilu", [g.op("MatMul", [logits, g.op("Transpose", [logits], perm=[1, 0])])], upper=0)
    big = g.op("Greater", [logits, g.const(np.float32(0.1))])
    small = g.op("LessOrEqual", [logits, g.const(np.float32(-0.2))])
    either = g.op("Or", [big, small])
    sel = g.op("Where", [g.op("Not", [either]), logits, g.op("Neg", [logits])])
    eq = g.op("Cast", [g.op("Equal", [label, g.const(np.array(2, np.int64))])], to=T.FLOAT)
    top_v, top_i = g.op("TopK", [logits, g.const(np.array([3], np.int64))], n_out=2, axis=1)
    low_v, low_i = g.op("TopK", [logits, g.const(np.array([2], np.int64))], n_out=2, axis=0, largest=0)
    return (g.model([fin("x", [4, 6])], [label, last, picked, ge, cs, tl, tri, sel, eq, top_v, top_i, low_v, low_i]),
            {"x": ("uniform", -2, 2)})


def encoder(rng, mask_style):
    """A two-head BERT-style layer over a padded batch: embeddings, masked self-attention, GELU
    feed-forward, layer norms, and the masked mean of the last hidden states (a sentence embedding)."""
    g = G(rng)
    b, s, d, heads, vocab = 2, 8, 16, 2, 50
    dh = d // heads
    emb = g.op("Add", [g.op("Gather", [g.w(vocab, d, s=1.0), "input_ids"], axis=0), g.w(s, d, s=0.5)])
    x = g.op("LayerNormalization", [emb, g.const(np.ones(d, np.float32)), g.const(np.zeros(d, np.float32))],
             axis=-1)

    def heads_of(t):
        t = g.op("Reshape", [t, g.const(np.array([b, s, heads, dh], np.int64))])
        return g.op("Transpose", [t], perm=[0, 2, 1, 3])

    q, k, v = (heads_of(g.op("Add", [g.op("MatMul", [x, g.w(d, d)]), g.w(d)])) for _ in range(3))
    scores = g.op("Mul", [g.op("MatMul", [q, g.op("Transpose", [k], perm=[0, 1, 3, 2])]),
                          g.const(np.float32(1 / np.sqrt(dh)))])
    m4 = g.op("Unsqueeze", ["attention_mask", g.const(np.array([1, 2], np.int64))])
    if mask_style == "float_min":
        # older exports: (1 - mask) * finfo.min added to the scores
        inv = g.op("Sub", [g.const(np.float32(1.0)), g.op("Cast", [m4], to=T.FLOAT)])
        scores = g.op("Add", [scores, g.op("Mul", [inv, g.const(np.float32(FMIN))])])
        # and the clip at finfo.min some models apply after it (no bound at all)
        scores = g.op("Max", [scores, g.const(np.float32(FMIN))])
    else:
        # current exports: boolean logic and Where
        keep = g.op("Cast", [m4], to=T.BOOL)
        scores = g.op("Where", [keep, scores, g.const(np.float32(FMIN))])
    probs = g.op("Softmax", [scores], axis=-1)
    ctx = g.op("Reshape", [g.op("Transpose", [g.op("MatMul", [probs, v])], perm=[0, 2, 1, 3]),
                           g.const(np.array([b, s, d], np.int64))])
    att = g.op("Add", [g.op("Add", [g.op("MatMul", [ctx, g.w(d, d)]), g.w(d)]), x])
    x2 = g.op("LayerNormalization", [att, g.const(np.ones(d, np.float32)), g.const(np.zeros(d, np.float32))],
              axis=-1)
    pre = g.op("Add", [g.op("MatMul", [x2, g.w(d, 4 * d)]), g.w(4 * d)])
    # GELU as exporters write it: x · (1 + erf(x / √2)) / 2
    erf = g.op("Erf", [g.op("Div", [pre, g.const(np.float32(np.sqrt(2.0)))])])
    ff = g.op("Mul", [g.op("Mul", [pre, g.op("Add", [erf, g.const(np.float32(1.0))])]), g.const(np.float32(0.5))])
    ff = g.op("Add", [g.op("Add", [g.op("MatMul", [ff, g.w(4 * d, d)]), g.w(d)]), x2])
    hidden = g.op("LayerNormalization", [ff, g.const(np.ones(d, np.float32)), g.const(np.zeros(d, np.float32))],
                  axis=-1)
    mf = g.op("Unsqueeze", [g.op("Cast", ["attention_mask"], to=T.FLOAT), g.const(np.array([2], np.int64))])
    summed = g.op("ReduceSum", [g.op("Mul", [hidden, mf]), g.const(np.array([1], np.int64))], keepdims=0)
    count = g.op("ReduceSum", [mf, g.const(np.array([1], np.int64))], keepdims=0)
    pooled = g.op("Div", [summed, count])
    model = g.model([fin("input_ids", [b, s], T.INT64), fin("attention_mask", [b, s], T.INT64)],
                    [hidden, pooled])
    return model, {"input_ids": ("ids", vocab), "attention_mask": ("padding",)}


ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")


def fixture(name):
    """A scikit-learn model as skl2onnx exports it (scripts/gen_sklearn_fixtures.py)."""
    return lambda rng: (onnx.load(os.path.join(ROOT, "fixtures", f"{name}.onnx")), {"X": ("uniform", 0, 8)})


# Proved in zero knowledge and the proof verified (every lowering is made of provable canonical ops);
# "indexing" gathers at indices computed from non-constant data, which the prover refuses by name.
PROVE = {"sklearn_mlp", "sklearn_logreg", "activations", "vision", "volumes", "encoder_bool"}
REFUSED_BY_PROVER = {"indexing": "not provable"}

# name: (builder, extra compile flags, tolerance relative to the largest reference magnitude)
FAMILIES = {
    "sklearn_mlp": (fixture("sklearn_mlp"), ["--precision", "i32", "--input-range=0:8"], 2e-3),
    "sklearn_logreg": (fixture("sklearn_logreg"), ["--precision", "i32", "--input-range=0:8"], 2e-3),
    "sklearn_logreg_l2": (fixture("sklearn_logreg_l2"), ["--precision", "i32", "--input-range=0:8"], 2e-3),
    "sklearn_linreg": (fixture("sklearn_linreg"), ["--precision", "i32", "--input-range=0:8"], 2e-3),
    "activations": (activations, ["--precision", "i32", "--input-range=-3:3"], 2e-3),
    "vision": (vision, ["--precision", "i32"], 2e-3),
    "vision_int8": (vision, [], 6e-2),
    "volumes": (volumes, ["--precision", "i32"], 2e-3),
    "indexing": (indexing, ["--precision", "i32", "--input-range=-2:2"], 2e-3),
    "encoder_float_min": (lambda r: encoder(r, "float_min"), ["--precision", "i32"], 2e-3),
    "encoder_bool": (lambda r: encoder(r, "bool"), ["--precision", "i32"], 2e-3),
    "encoder_bool_w8a8d": (lambda r: encoder(r, "bool"), ["--precision", "w8a8d"], 5e-2),
}


def hostile():
    """Small files that ask for huge lowerings: each must be refused at once with one sentence."""
    out = {}
    for name, node, inits in [
        ("pad_reflect_wide", ("Pad", {"mode": "reflect"}), [np.array([0, 0, 0, 5000, 0, 0, 0, 0], np.int64)]),
        ("pad_constant_huge", ("Pad", {"mode": "constant"}), [np.array([0, 0, 0, 1 << 28, 0, 0, 0, 0], np.int64)]),
        ("pad_edge_huge", ("Pad", {"mode": "edge"}), [np.array([0, 0, 0, 1 << 28, 0, 0, 0, 0], np.int64)]),
        ("deconv_stride_huge", ("ConvTranspose", {"strides": [60000, 60000]}),
         [np.ones((4, 4, 1, 1), np.float32)]),
    ]:
        g = G(np.random.default_rng(0))
        ins = ["x"] + [g.const(a) for a in inits]
        y = g.op(node[0], ins, **node[1])
        out[name] = g.model([fin("x", [1, 4, 8, 8])], [y])
    return out


def sample(spec, shape, rng):
    kind = spec[0]
    if kind == "uniform":
        return rng.uniform(spec[1], spec[2], size=shape).astype(np.float32)
    if kind == "ids":
        return rng.integers(0, spec[1], size=shape).astype(np.int64)
    # a padded batch: row i keeps a random prefix (at least one position)
    m = np.zeros(shape, np.int64)
    for i in range(shape[0]):
        m[i, : rng.integers(1, shape[1] + 1)] = 1
    m[0, :] = 1
    return m


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--verity", required=True)
    ap.add_argument("--samples", type=int, default=3)
    ap.add_argument("-k", help="only this family")
    args = ap.parse_args()
    failures = 0
    with tempfile.TemporaryDirectory() as tmp:
        for name, (build, flags, tol_rel) in FAMILIES.items():
            if args.k and name != args.k:
                continue
            rng = np.random.default_rng(7)
            model, specs = build(rng)
            path = os.path.join(tmp, f"{name}.onnx")
            onnx.save(model, path)
            sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
            vty = os.path.join(tmp, f"{name}.vty")
            c = subprocess.run([args.verity, "model", "compile", path, "-o", vty] + flags,
                               capture_output=True, text=True)
            if c.returncode != 0:
                print(f"FAIL {name}: compile: {c.stderr.strip()}")
                failures += 1
                continue
            worst = 0.0
            for s in range(args.samples):
                feeds = {i.name: sample(specs[i.name], i.shape, rng) for i in sess.get_inputs()}
                ref = sess.run(None, feeds)
                inp = os.path.join(tmp, "in.json")
                with open(inp, "w") as f:
                    json.dump({k: {"shape": list(v.shape), "data": v.reshape(-1).tolist()} for k, v in feeds.items()}, f)
                r = subprocess.run([args.verity, "run", vty, "--input", inp], capture_output=True, text=True)
                if r.returncode != 0:
                    print(f"FAIL {name}: run: {r.stderr.strip()}")
                    failures += 1
                    break
                out = json.loads(r.stdout)["outputs"]
                for o, want in zip(sess.get_outputs(), ref):
                    want = np.asarray(want)
                    got = np.array(out[o.name]["data"], dtype=np.float64).reshape(want.shape)
                    if want.dtype.kind in "iub":
                        # integer outputs (labels, indices, tests) must be exact
                        if not np.array_equal(got, want.astype(np.float64)):
                            print(f"FAIL {name}/{o.name} sample {s}: integers differ: {got.ravel()[:8]} vs {want.ravel()[:8]}")
                            failures += 1
                        continue
                    want = want.astype(np.float64)
                    err = float(np.max(np.abs(got - want))) if want.size else 0.0
                    tol = tol_rel * max(1.0, float(np.max(np.abs(want))))
                    worst = max(worst, err / tol)
                    if not err <= tol:
                        print(f"FAIL {name}/{o.name} sample {s}: max error {err:.3e} > {tol:.3e}")
                        failures += 1
            proof = os.path.join(tmp, f"{name}.proof")
            zk = ""
            if name in PROVE or name in REFUSED_BY_PROVER:
                p = subprocess.run([args.verity, "prove", vty, "--input", inp, "-o", proof],
                                   capture_output=True, text=True)
                if name in PROVE:
                    v = subprocess.run([args.verity, "verify", proof, "--model", vty], capture_output=True,
                                       text=True) if p.returncode == 0 else p
                    zk = ", proved and verified" if v.returncode == 0 else ""
                    if v.returncode != 0:
                        print(f"FAIL {name}: zk proof: {v.stderr.strip()[-300:]}")
                        failures += 1
                else:
                    want = REFUSED_BY_PROVER[name]
                    zk = ", refused by the prover by name"
                    if p.returncode != 1 or want not in p.stderr or "node" not in p.stderr:
                        print(f"FAIL {name}: expected a clean prover refusal, got {p.returncode}: {p.stderr[-300:]}")
                        failures += 1
            print(f"{name:<18} {len(sess.get_outputs())} outputs, worst error {worst * 100:5.1f}% of tolerance{zk}")
        for name, model in hostile().items():
            path = os.path.join(tmp, f"{name}.onnx")
            onnx.save(model, path)
            c = subprocess.run([args.verity, "model", "compile", path, "-o", os.path.join(tmp, "h.vty")],
                               capture_output=True, text=True, timeout=60)
            lines = c.stderr.strip().splitlines()
            if c.returncode != 1 or len(lines) != 1 or not lines[0].startswith("error: "):
                print(f"FAIL {name}: expected a one-sentence refusal, got {c.returncode}: {c.stderr[-300:]}")
                failures += 1
            else:
                print(f"{name:<18} refused: {lines[0][:110]}")
    if failures:
        print(f"{failures} failures")
        return 1
    print("op-family differential test passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
