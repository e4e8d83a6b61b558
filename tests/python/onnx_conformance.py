#!/usr/bin/env python3
"""Run Verity on the ONNX operator conformance cases (generated offline by the `onnx` package's own
test-case generators) for every op Verity claims to support, including the `_expanded` function
bodies (LayerNormalization, Gelu, … written out as primitive ops).

Each case is compiled with its own inputs as calibration data and run on them; outputs are compared
with the expected outputs the ONNX project computed. Outcomes:
  pass      within 2e-3 of the largest expected magnitude (at least 2e-3 absolute)
  rejected  a clean one-sentence error (unsupported attribute, integer-only op, NaN input, ...)
  MISMATCH  compiled and ran but disagrees: a wrong answer
  CRASH     anything else (a panic, a signal, a malformed error)
Exit status 1 on any MISMATCH or CRASH.

    python tests/python/onnx_conformance.py --verity target/release/verity [-v]
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import warnings

import numpy as np
import onnx
import onnx.numpy_helper

SUPPORTED = {
    "MatMul", "Gemm", "Conv", "Add", "Sub", "Mul", "Div", "Relu", "LeakyRelu", "Clip", "Sigmoid", "Tanh",
    "Erf", "Gelu", "Exp", "Softmax", "MaxPool", "AveragePool", "GlobalAveragePool", "BatchNormalization",
    "LayerNormalization", "ReduceMean", "ReduceSum", "Reshape", "Flatten", "Transpose", "Concat", "Slice",
    "Gather", "Squeeze", "Unsqueeze", "Identity", "Sqrt", "Reciprocal", "Pow", "Abs", "Neg", "HardSwish",
    "ReduceMax", "ReduceMin", "Max", "Min", "Sum", "Mean", "Expand",
    # comparisons, booleans and masks
    "Less", "LessOrEqual", "Greater", "GreaterOrEqual", "Equal", "Not", "And", "Or", "Xor", "Where", "Cast",
    "IsNaN", "IsInf", "Sign", "ArgMax", "ArgMin", "TopK", "Trilu",
    # functions by table and their compositions
    "Log", "LogSoftmax", "Softplus", "Softsign", "Elu", "Selu", "Celu", "PRelu", "Mish", "HardSigmoid",
    "ThresholdedRelu", "Floor", "Ceil", "Round", "Sin", "Cos", "LRN",
    # layout
    "Pad", "Tile", "Split", "CumSum", "GatherElements", "Resize", "Upsample", "ConvTranspose",
    "InstanceNormalization", "GroupNormalization",
}
REL_TOL = 2e-3
# Inputs at these positions are structural parameters (axes, shapes, slice bounds, exponents). The
# conformance cases feed them as graph inputs; real models carry them as constants, so they are turned
# into initializers holding the case's values.
PARAM_INPUTS = {
    "Reshape": {1}, "Squeeze": {1}, "Unsqueeze": {1}, "Expand": {1}, "Slice": {1, 2, 3, 4}, "Pow": {1},
    "ReduceMean": {1}, "ReduceSum": {1}, "ReduceMax": {1}, "ReduceMin": {1}, "ReduceL1": {1},
    "ReduceL2": {1}, "ReduceLogSum": {1}, "ReduceSumSquare": {1}, "Clip": {1, 2},
    "Pad": {1, 2, 3}, "Tile": {1}, "Split": {1}, "CumSum": {1}, "Resize": {1, 2, 3}, "Upsample": {1},
    "Trilu": {1}, "TopK": {1}, "ConvTranspose": {1},
}


def constant_params(model, names, values):
    """Move parameter inputs into initializers; returns the remaining (name, value) inputs."""
    params = set()
    for n in model.graph.node:
        for pos in PARAM_INPUTS.get(n.op_type, ()):
            if pos < len(n.input) and n.input[pos]:
                params.add(n.input[pos])
    keep = []
    for name, value in zip(names, values):
        if name in params:
            model.graph.initializer.append(onnx.numpy_helper.from_array(np.asarray(value), name))
        else:
            keep.append((name, value))
    kept = {k for k, _ in keep}
    inputs = [i for i in model.graph.input if i.name in kept or i.name not in names]
    del model.graph.input[:]
    model.graph.input.extend(inputs)
    return keep


def tensor_json(a):
    a = np.asarray(a)
    if a.dtype == np.bool_:
        a = a.astype(np.int64)
    return {"shape": list(a.shape), "data": [float(v) if np.isfinite(v) else str(v) for v in a.reshape(-1).tolist()]}


def one_line_error(stderr):
    lines = stderr.strip().splitlines()
    return len(lines) == 1 and lines[0].startswith("error: ") and "panicked" not in stderr


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--verity", required=True)
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from onnx.backend.test.case import node
        cases = node.collect_testcases()
    counts = {"pass": 0, "rejected": 0, "MISMATCH": 0, "CRASH": 0}
    bad = []
    with tempfile.TemporaryDirectory() as tmp:
        for tc in cases:
            if tc.model is None or not tc.model.graph.node or tc.model.graph.node[0].op_type not in SUPPORTED:
                continue
            if not tc.data_sets:
                continue
            inputs, expected = tc.data_sets[0]
            if any(np.asarray(v).dtype.kind not in "biuf" for v in list(inputs) + list(expected)):
                continue  # string tensors: not numbers
            model = onnx.ModelProto()
            model.CopyFrom(tc.model)
            names = [i.name for i in model.graph.input][: len(inputs)]
            feeds = constant_params(model, names, inputs)
            model_path = os.path.join(tmp, "m.onnx")
            onnx.save(model, model_path)
            doc_path = os.path.join(tmp, "in.json")
            with open(doc_path, "w") as f:
                json.dump({n: tensor_json(v) for n, v in feeds}, f)
            vty = os.path.join(tmp, "m.vty")
            c = subprocess.run([args.verity, "model", "compile", model_path, "-o", vty, "--calibration", doc_path, "--precision", "i32"],
                               capture_output=True, text=True, timeout=300)
            outcome, detail = None, ""
            if c.returncode != 0:
                outcome = "rejected" if c.returncode == 1 and one_line_error(c.stderr) else "CRASH"
                detail = c.stderr.strip()[:300]
            else:
                r = subprocess.run([args.verity, "run", vty, "--input", doc_path], capture_output=True, text=True,
                                   timeout=300)
                if r.returncode != 0:
                    outcome = "rejected" if r.returncode == 1 and one_line_error(r.stderr) else "CRASH"
                    detail = r.stderr.strip()[:300]
                else:
                    got = json.loads(r.stdout)["outputs"]
                    outcome = "pass"
                    for o, want in zip(tc.model.graph.output, expected):
                        want = np.asarray(want, dtype=np.float64)
                        g = np.array(got[o.name]["data"], dtype=np.float64).reshape(want.shape)
                        tol = REL_TOL * max(1.0, float(np.max(np.abs(want))) if want.size else 1.0)
                        err = float(np.max(np.abs(g - want))) if want.size else 0.0
                        if not err <= tol:
                            outcome, detail = "MISMATCH", f"{o.name}: max error {err:.3e} > {tol:.3e}"
            counts[outcome] += 1
            if outcome in ("MISMATCH", "CRASH"):
                bad.append((tc.name, outcome, detail))
            if args.verbose or outcome in ("MISMATCH", "CRASH"):
                print(f"{outcome:<9} {tc.name}  {detail}")
    total = sum(counts.values())
    print(f"ONNX conformance cases for supported ops: {total}; " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
