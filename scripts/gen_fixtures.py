#!/usr/bin/env python3
"""Generate Verity's bundled ONNX fixtures, their sample inputs and onnxruntime reference outputs.

Every model is built with onnx.helper from seeded NumPy weights (the digits classifier is trained with
scikit-learn on its bundled digits data), so the files are reproducible. Usage:

    python scripts/gen_fixtures.py [out_dir]        # default: fixtures/
"""
import json
import os
import sys

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17


def init(name, arr):
    return numpy_helper.from_array(np.asarray(arr), name=name)


def save(model, path):
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, path)


def mlp(rng):
    """784-128-64-10 MLP (109k parameters), Gemm + Relu."""
    dims = [784, 128, 64, 10]
    inits, nodes = [], []
    x = "input"
    for i in range(3):
        w = rng.normal(0, np.sqrt(2.0 / dims[i]), size=(dims[i + 1], dims[i])).astype(np.float32)
        b = rng.normal(0, 0.05, size=(dims[i + 1],)).astype(np.float32)
        inits += [init(f"fc{i}.weight", w), init(f"fc{i}.bias", b)]
        out = f"fc{i}" if i < 2 else "logits"
        nodes.append(helper.make_node("Gemm", [x, f"fc{i}.weight", f"fc{i}.bias"], [out], transB=1, name=f"fc{i}"))
        if i < 2:
            nodes.append(helper.make_node("Relu", [out], [f"relu{i}"], name=f"relu{i}"))
            x = f"relu{i}"
    g = helper.make_graph(
        nodes, "mlp",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 784])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 10])],
        inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", OPSET)]), {
        "input": rng.uniform(0, 1, size=(1, 784)).astype(np.float32)}


def bn(prefix, c, rng, inits):
    inits += [
        init(f"{prefix}.scale", rng.uniform(0.5, 1.5, c).astype(np.float32)),
        init(f"{prefix}.bias", rng.normal(0, 0.1, c).astype(np.float32)),
        init(f"{prefix}.mean", rng.normal(0, 0.1, c).astype(np.float32)),
        init(f"{prefix}.var", rng.uniform(0.5, 1.5, c).astype(np.float32)),
    ]
    return [f"{prefix}.scale", f"{prefix}.bias", f"{prefix}.mean", f"{prefix}.var"]


def cnn(rng):
    """Small CNN: conv/batchnorm/relu/maxpool, grouped and dilated conv, average pools, Gemm head."""
    inits = []
    def conv_w(name, o, i, k):
        w = rng.normal(0, np.sqrt(2.0 / (i * k * k)), size=(o, i, k, k)).astype(np.float32)
        inits.append(init(name, w))
        inits.append(init(name + "_b", rng.normal(0, 0.05, o).astype(np.float32)))
        return [name, name + "_b"]
    nodes = [
        helper.make_node("Conv", ["input"] + conv_w("c1", 8, 1, 3), ["c1o"], pads=[1, 1, 1, 1], name="conv1"),
        helper.make_node("BatchNormalization", ["c1o"] + bn("bn1", 8, rng, inits), ["b1"], name="bn1"),
        helper.make_node("Relu", ["b1"], ["r1"], name="relu1"),
        helper.make_node("MaxPool", ["r1"], ["p1"], kernel_shape=[2, 2], strides=[2, 2], name="pool1"),
        # grouped conv, stride 1, padding 1
        helper.make_node("Conv", ["p1"] + conv_w("c2", 16, 4, 3), ["c2o"], pads=[1, 1, 1, 1], group=2, name="conv2"),
        helper.make_node("BatchNormalization", ["c2o"] + bn("bn2", 16, rng, inits), ["b2"], name="bn2"),
        helper.make_node("Relu", ["b2"], ["r2"], name="relu2"),
        helper.make_node("AveragePool", ["r2"], ["p2"], kernel_shape=[2, 2], strides=[2, 2], name="pool2"),
        # dilated, strided conv with asymmetric padding
        helper.make_node("Conv", ["p2"] + conv_w("c3", 16, 16, 3), ["c3o"], pads=[2, 1, 2, 2], dilations=[2, 2], strides=[2, 2], name="conv3"),
        helper.make_node("Relu", ["c3o"], ["r3"], name="relu3"),
        helper.make_node("GlobalAveragePool", ["r3"], ["gap"], name="gap"),
        helper.make_node("Flatten", ["gap"], ["flat"], axis=1, name="flatten"),
        helper.make_node("Gemm", ["flat", "fc.w", "fc.b"], ["logits"], transB=1, name="fc"),
    ]
    inits += [init("fc.w", rng.normal(0, 0.3, size=(10, 16)).astype(np.float32)),
              init("fc.b", rng.normal(0, 0.05, 10).astype(np.float32))]
    g = helper.make_graph(
        nodes, "cnn",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 1, 28, 28])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 10])],
        inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", OPSET)]), {
        "input": rng.uniform(0, 1, size=(1, 1, 28, 28)).astype(np.float32)}


def transformer(rng):
    """One pre-norm transformer encoder block over token ids: embedding Gather, LayerNorm, 2-head attention
    with Softmax, GELU (erf form) MLP, residuals, mean pooling and a classification head."""
    T, D, H, F, V, C = 16, 32, 2, 64, 50, 4
    dh = D // H
    inits = [
        init("emb", rng.normal(0, 1.0, size=(V, D)).astype(np.float32)),
        init("pos", rng.normal(0, 0.1, size=(1, T, D)).astype(np.float32)),
        init("ln1.g", rng.uniform(0.8, 1.2, D).astype(np.float32)), init("ln1.b", rng.normal(0, 0.05, D).astype(np.float32)),
        init("ln2.g", rng.uniform(0.8, 1.2, D).astype(np.float32)), init("ln2.b", rng.normal(0, 0.05, D).astype(np.float32)),
        init("wq", rng.normal(0, D ** -0.5, size=(D, D)).astype(np.float32)),
        init("wk", rng.normal(0, D ** -0.5, size=(D, D)).astype(np.float32)),
        init("wv", rng.normal(0, D ** -0.5, size=(D, D)).astype(np.float32)),
        init("wo", rng.normal(0, D ** -0.5, size=(D, D)).astype(np.float32)),
        init("bo", rng.normal(0, 0.02, D).astype(np.float32)),
        init("w1", rng.normal(0, D ** -0.5, size=(D, F)).astype(np.float32)),
        init("b1", rng.normal(0, 0.02, F).astype(np.float32)),
        init("w2", rng.normal(0, F ** -0.5, size=(F, D)).astype(np.float32)),
        init("b2", rng.normal(0, 0.02, D).astype(np.float32)),
        init("wc", rng.normal(0, D ** -0.5, size=(D, C)).astype(np.float32)),
        init("heads_shape", np.array([1, T, H, dh], dtype=np.int64)),
        init("merge_shape", np.array([1, T, D], dtype=np.int64)),
        init("scale", np.array(np.sqrt(dh), dtype=np.float32)),
        init("half", np.array(0.5, dtype=np.float32)),
        init("one", np.array(1.0, dtype=np.float32)),
        init("rsqrt2", np.array(1 / np.sqrt(2), dtype=np.float32)),
    ]
    n = helper.make_node
    nodes = [
        n("Gather", ["emb", "tokens"], ["tok"], axis=0, name="embed"),
        n("Add", ["tok", "pos"], ["x0"], name="add_pos"),
        n("LayerNormalization", ["x0", "ln1.g", "ln1.b"], ["h"], axis=-1, epsilon=1e-5, name="ln1"),
        n("MatMul", ["h", "wq"], ["q"], name="q"), n("MatMul", ["h", "wk"], ["k"], name="k"),
        n("MatMul", ["h", "wv"], ["v"], name="v"),
        n("Reshape", ["q", "heads_shape"], ["q4"], name="q_split"),
        n("Reshape", ["k", "heads_shape"], ["k4"], name="k_split"),
        n("Reshape", ["v", "heads_shape"], ["v4"], name="v_split"),
        n("Transpose", ["q4"], ["qh"], perm=[0, 2, 1, 3], name="q_t"),
        n("Transpose", ["k4"], ["kh"], perm=[0, 2, 3, 1], name="k_t"),
        n("Transpose", ["v4"], ["vh"], perm=[0, 2, 1, 3], name="v_t"),
        n("MatMul", ["qh", "kh"], ["att_raw"], name="qk"),
        n("Div", ["att_raw", "scale"], ["att_s"], name="att_scale"),
        n("Softmax", ["att_s"], ["att"], axis=-1, name="softmax"),
        n("MatMul", ["att", "vh"], ["ctx"], name="att_v"),
        n("Transpose", ["ctx"], ["ctx_t"], perm=[0, 2, 1, 3], name="ctx_t"),
        n("Reshape", ["ctx_t", "merge_shape"], ["ctx_m"], name="merge"),
        n("MatMul", ["ctx_m", "wo"], ["o"], name="o_proj"),
        n("Add", ["o", "bo"], ["o_b"], name="o_bias"),
        n("Add", ["x0", "o_b"], ["x1"], name="res1"),
        n("LayerNormalization", ["x1", "ln2.g", "ln2.b"], ["h2"], axis=-1, epsilon=1e-5, name="ln2"),
        n("MatMul", ["h2", "w1"], ["f1"], name="ff1"), n("Add", ["f1", "b1"], ["f1b"], name="ff1_bias"),
        # GELU, erf form: 0.5 * x * (1 + erf(x / sqrt(2)))
        n("Mul", ["f1b", "rsqrt2"], ["g0"], name="gelu_scale"), n("Erf", ["g0"], ["g1"], name="gelu_erf"),
        n("Add", ["g1", "one"], ["g2"], name="gelu_add"), n("Mul", ["f1b", "g2"], ["g3"], name="gelu_mul"),
        n("Mul", ["g3", "half"], ["g4"], name="gelu_half"),
        n("MatMul", ["g4", "w2"], ["f2"], name="ff2"), n("Add", ["f2", "b2"], ["f2b"], name="ff2_bias"),
        n("Add", ["x1", "f2b"], ["x2"], name="res2"),
        n("ReduceMean", ["x2"], ["pooled"], axes=[1], keepdims=0, name="pool"),
        n("MatMul", ["pooled", "wc"], ["logits"], name="head"),
    ]
    g = helper.make_graph(
        nodes, "transformer_block",
        [helper.make_tensor_value_info("tokens", TensorProto.INT64, [1, T])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, C])],
        inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", OPSET)]), {
        "tokens": rng.integers(0, V, size=(1, T)).astype(np.int64)}


def ops(rng):
    """A graph touching the remaining element-wise, reduction and shape ops."""
    n = helper.make_node
    inits = [
        init("w", rng.normal(0, 0.5, size=(6, 8)).astype(np.float32)),
        init("c", rng.normal(0, 0.5, size=(1, 8)).astype(np.float32)),
        init("d", rng.uniform(1.0, 2.0, size=(1, 8)).astype(np.float32)),
        init("lo", np.array(-0.5, dtype=np.float32)), init("hi", np.array(0.75, dtype=np.float32)),
        init("starts", np.array([1], dtype=np.int64)), init("ends", np.array([7], dtype=np.int64)),
        init("axes", np.array([1], dtype=np.int64)), init("steps", np.array([2], dtype=np.int64)),
        init("sq_axes", np.array([0], dtype=np.int64)), init("rs_axes", np.array([1], dtype=np.int64)),
        init("flat_shape", np.array([4, -1], dtype=np.int64)),
    ]
    nodes = [
        n("Identity", ["x"], ["xi"], name="identity"),
        n("MatMul", ["xi", "w"], ["m"], name="matmul"),
        n("Sub", ["m", "c"], ["s"], name="sub"),
        n("Sigmoid", ["s"], ["sg"], name="sigmoid"),
        n("Tanh", ["s"], ["th"], name="tanh"),
        n("LeakyRelu", ["s"], ["lr"], alpha=0.1, name="leaky"),
        n("Clip", ["s", "lo", "hi"], ["cl"], name="clip"),
        n("Exp", ["cl"], ["ex"], name="exp"),
        n("Div", ["ex", "d"], ["dv"], name="div_const"),
        n("Div", ["th", "ex"], ["dt"], name="div_tensor"),
        n("Mul", ["sg", "lr"], ["ml"], name="mul"),
        n("Concat", ["ml", "dv", "dt"], ["cat"], axis=1, name="concat"),
        n("Slice", ["cat", "starts", "ends", "axes", "steps"], ["sl"], name="slice"),
        n("Unsqueeze", ["sl", "sq_axes"], ["us"], name="unsqueeze"),
        n("Transpose", ["us"], ["tr"], perm=[0, 2, 1], name="transpose"),
        n("Squeeze", ["tr", "sq_axes"], ["sqz"], name="squeeze"),
        n("ReduceSum", ["sqz", "rs_axes"], ["rsum"], keepdims=1, name="reduce_sum"),
        n("Add", ["sqz", "rsum"], ["ad"], name="add"),
        n("Reshape", ["ad", "flat_shape"], ["out"], name="reshape"),
    ]
    g = helper.make_graph(
        nodes, "ops",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 6])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [4, 3])],
        inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", OPSET)]), {
        "x": rng.uniform(-1, 1, size=(4, 6)).astype(np.float32)}


def ops2(rng):
    """More ops, opset 20: padded max/average pooling, Abs, Sqrt, HardSwish, ReduceMax/ReduceMin,
    Flatten, a LayerNorm written out as ReduceMean/Sub/Pow/Sqrt/Div, tanh-approximate GELU,
    Reciprocal and Neg."""
    n = helper.make_node
    inits = [
        init("w", rng.normal(0, 0.4, size=(48, 6)).astype(np.float32)),
        init("hw_axes", np.array([2, 3], dtype=np.int64)),
        init("last", np.array([1], dtype=np.int64)),
        init("two", np.array(2.0, dtype=np.float32)),
        init("eps", np.array(1e-5, dtype=np.float32)),
        init("one", np.array(1.0, dtype=np.float32)),
    ]
    nodes = [
        n("MaxPool", ["x"], ["mp"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1], name="maxpool_pad"),
        n("AveragePool", ["x"], ["ap"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1],
          count_include_pad=1, name="avgpool_pad"),
        n("Sub", ["mp", "ap"], ["d"], name="pool_diff"),
        n("Abs", ["d"], ["ad"], name="abs"),
        n("Sqrt", ["ad"], ["sq"], name="sqrt"),
        n("HardSwish", ["ap"], ["hs"], name="hardswish"),
        n("Add", ["sq", "hs"], ["s"], name="add"),
        n("ReduceMax", ["s", "hw_axes"], ["rmax"], keepdims=1, name="reduce_max"),
        n("ReduceMin", ["s", "hw_axes"], ["rmin"], keepdims=1, name="reduce_min"),
        n("Sub", ["s", "rmin"], ["s0"], name="shift_min"),
        n("Add", ["s0", "rmax"], ["s1"], name="add_max"),
        n("Flatten", ["s1"], ["f"], axis=1, name="flatten"),
        n("MatMul", ["f", "w"], ["m"], name="matmul"),
        n("ReduceMean", ["m", "last"], ["mu"], keepdims=1, name="ln_mean"),
        n("Sub", ["m", "mu"], ["dc"], name="ln_center"),
        n("Pow", ["dc", "two"], ["dc2"], name="ln_square"),
        n("ReduceMean", ["dc2", "last"], ["var"], keepdims=1, name="ln_var"),
        n("Add", ["var", "eps"], ["ve"], name="ln_eps"),
        n("Sqrt", ["ve"], ["sd"], name="ln_std"),
        n("Div", ["dc", "sd"], ["ln"], name="ln_div"),
        n("Gelu", ["ln"], ["g"], approximate="tanh", name="gelu_tanh"),
        n("Abs", ["g"], ["ag"], name="abs2"),
        n("Add", ["ag", "one"], ["ag1"], name="add_one"),
        n("Reciprocal", ["ag1"], ["r"], name="reciprocal"),
        n("Neg", ["r"], ["nr"], name="neg"),
        n("Add", ["nr", "g"], ["out"], name="out"),
    ]
    g = helper.make_graph(
        nodes, "ops2",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 8, 8])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [2, 6])],
        inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 20)]), {
        "x": rng.uniform(-1, 1, size=(2, 3, 8, 8)).astype(np.float32)}


def digits(out_dir):
    """scikit-learn MLPClassifier trained on the bundled digits data, exported by hand to ONNX
    (Gemm/Relu/Gemm/Softmax). Also writes a calibration set and a held-out evaluation set."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split
    from sklearn.neural_network import MLPClassifier

    X, y = load_digits(return_X_y=True)
    X = (X / 16.0).astype(np.float32)
    Xtr, Xte, ytr, yte = train_test_split(X, y, test_size=0.25, random_state=0)
    clf = MLPClassifier(hidden_layer_sizes=(32,), max_iter=600, random_state=0).fit(Xtr, ytr)
    acc = clf.score(Xte, yte)
    w0, w1 = clf.coefs_
    b0, b1 = clf.intercepts_
    n = helper.make_node
    g = helper.make_graph(
        [n("Gemm", ["input", "w0", "b0"], ["h"], name="hidden"),
         n("Relu", ["h"], ["hr"], name="relu"),
         n("Gemm", ["hr", "w1", "b1"], ["logits"], name="out"),
         n("Softmax", ["logits"], ["probs"], axis=-1, name="softmax")],
        "digits",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 64])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, [1, 10])],
        [init("w0", w0.astype(np.float32)), init("b0", b0.astype(np.float32)),
         init("w1", w1.astype(np.float32)), init("b1", b1.astype(np.float32))])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", OPSET)])
    np.save(os.path.join(out_dir, "digits.calibration.npy"), Xtr[:64])
    np.save(os.path.join(out_dir, "digits.eval.npy"), Xte)
    np.save(os.path.join(out_dir, "digits.eval_labels.npy"), yte.astype(np.int64))
    return model, {"input": Xte[:1]}, acc


def edge_cases(rng):
    """Models for error paths and shape handling: an op without a canonical lowering, a symbolic batch
    dimension, an input without a declared shape, and tiny files describing huge tensors (for a node's
    compile limits)."""
    n = helper.make_node
    w = init("w", rng.normal(0, 0.5, size=(8, 4)).astype(np.float32))
    unsupported = helper.make_graph(
        [n("MatMul", ["x", "w"], ["m"], name="matmul"), n("Atan", ["m"], ["y"], name="the_arctangent")],
        "unsupported", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4])], [w])
    dynamic = helper.make_graph(
        [n("MatMul", ["x", "w"], ["m"], name="matmul"), n("Relu", ["m"], ["y"], name="relu")],
        "dynamic_batch", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])], [w])
    no_shape = helper.make_graph(
        [n("Relu", ["x"], ["y"], name="relu")],
        "no_shape", [helper.make_tensor_value_info("x", TensorProto.FLOAT, None)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    # a few hundred bytes describing 2^28-element tensors: one expands its input, the other a constant
    big = init("shape", np.array([16384, 16384], dtype=np.int64))
    expand_bomb = helper.make_graph(
        [n("Expand", ["x", "shape"], ["e"], name="expand"), n("ReduceSum", ["e"], ["y"], name="sum", keepdims=0)],
        "expand_bomb", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [])], [big])
    one = init("one", np.ones((1, 1), dtype=np.float32))
    const_bomb = helper.make_graph(
        [n("Expand", ["one", "shape"], ["e"], name="expand"), n("Add", ["e", "x"], ["y"], name="add")],
        "const_expand_bomb", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [16384, 16384])], [big, one])
    mk = lambda g: helper.make_model(g, opset_imports=[helper.make_opsetid("", OPSET)])
    return {"unsupported_op": mk(unsupported), "dynamic_batch": mk(dynamic), "no_shape": mk(no_shape),
            "expand_bomb": mk(expand_bomb), "const_expand_bomb": mk(const_bomb)}


def write_inputs(path, inputs):
    doc = {k: {"shape": list(v.shape), "data": v.reshape(-1).tolist()} for k, v in inputs.items()}
    with open(path, "w") as f:
        json.dump(doc, f)


def main():
    out_dir = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "..", "fixtures")
    os.makedirs(out_dir, exist_ok=True)
    import onnxruntime as ort

    built = {}
    for name, fn, seed in [("mlp", mlp, 1), ("cnn", cnn, 2), ("transformer", transformer, 3), ("ops", ops, 4),
                           ("ops2", ops2, 6)]:
        built[name] = fn(np.random.default_rng(seed))
    m, inp, acc = digits(out_dir)
    built["digits"] = (m, inp)
    print(f"digits: scikit-learn test accuracy {acc:.4f}")
    # the digits model again, with its weights stored as external data next to the .onnx file
    ext = onnx.ModelProto()
    ext.CopyFrom(built["digits"][0])
    onnx.save(ext, os.path.join(out_dir, "digits_external.onnx"), save_as_external_data=True,
              all_tensors_to_one_file=True, location="digits_external.onnx.data", size_threshold=0)
    for name, model in edge_cases(np.random.default_rng(5)).items():
        model.producer_name = "verity-fixtures"
        onnx.save(model, os.path.join(out_dir, f"{name}.onnx"))  # no_shape fails the full checker on purpose
    for name, (model, inputs) in built.items():
        model.producer_name = "verity-fixtures"
        path = os.path.join(out_dir, f"{name}.onnx")
        save(model, path)
        write_inputs(os.path.join(out_dir, f"{name}.input.json"), inputs)
        so = ort.SessionOptions()
        so.intra_op_num_threads = 1
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
        outs = sess.run(None, inputs)
        expected = {o.name: {"shape": list(v.shape), "data": v.reshape(-1).astype(float).tolist()}
                    for o, v in zip(sess.get_outputs(), outs)}
        with open(os.path.join(out_dir, f"{name}.expected.json"), "w") as f:
            json.dump(expected, f)
        print(f"{name}: {os.path.getsize(path)} bytes")


if __name__ == "__main__":
    main()
