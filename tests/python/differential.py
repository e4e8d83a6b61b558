#!/usr/bin/env python3
"""Differential test: Verity's canonical outputs against onnxruntime's float outputs on fresh random
inputs for every bundled fixture, within the quantization tolerance, with top-1 agreement for
classifiers. Also shows that onnxruntime itself changes its bits with graph optimisations, which is why
Verity defines its own canonical semantics. Exit status 1 on any disagreement.

    python tests/python/differential.py --verity target/release/verity [--samples 8]
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

import numpy as np
import onnxruntime as ort

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
REL_TOL = 2e-3


def session(path, optimized):
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimized
                                   else ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    return ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])


def input_range(flags):
    if "--input-range" in flags:
        lo, hi = flags[flags.index("--input-range") + 1].split(":")
        return float(lo), float(hi)
    return -1.0, 1.0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--verity", required=True)
    ap.add_argument("--samples", type=int, default=8)
    args = ap.parse_args()
    manifest = json.load(open(os.path.join(ROOT, "fixtures", "manifest.json")))
    rng = np.random.default_rng(1234)
    failures = 0
    ort_bit_changes = 0
    with tempfile.TemporaryDirectory() as tmp:
        for name, spec in manifest.items():
            onnx_path = os.path.join(ROOT, "fixtures", f"{name}.onnx")
            vty = os.path.join(tmp, f"{name}.vty")
            subprocess.run([args.verity, "model", "compile", onnx_path, "-o", vty] + spec["flags"],
                           check=True, capture_output=True, cwd=ROOT)
            plain, opt = session(onnx_path, False), session(onnx_path, True)
            lo, hi = input_range(spec["flags"])
            eval_set = (np.load(os.path.join(ROOT, "fixtures", "digits.eval.npy"))
                        if name == "digits" else None)
            worst, agree, rows = 0.0, 0, 0
            for s in range(args.samples):
                feeds = {}
                for i in plain.get_inputs():
                    shape = [d if isinstance(d, int) else 1 for d in i.shape]
                    if "int64" in i.type:
                        feeds[i.name] = rng.integers(0, 50, size=shape).astype(np.int64)
                    elif eval_set is not None:
                        feeds[i.name] = eval_set[s % len(eval_set)].reshape(shape).astype(np.float32)
                    else:
                        feeds[i.name] = rng.uniform(lo, hi, size=shape).astype(np.float32)
                ref = plain.run(None, feeds)
                ref_opt = opt.run(None, feeds)
                ort_bit_changes += sum(int(not np.array_equal(a, b)) for a, b in zip(ref, ref_opt))
                inp = os.path.join(tmp, "in.json")
                with open(inp, "w") as f:
                    json.dump({k: {"shape": list(v.shape), "data": v.reshape(-1).tolist()} for k, v in feeds.items()}, f)
                out = json.loads(subprocess.run([args.verity, "run", vty, "--input", inp], check=True,
                                                capture_output=True, cwd=ROOT).stdout)
                for o, r in zip(plain.get_outputs(), ref):
                    got = np.array(out["outputs"][o.name]["data"]).reshape(r.shape)
                    err = float(np.max(np.abs(got - r)))
                    tol = REL_TOL * max(1.0, float(np.max(np.abs(r))))
                    worst = max(worst, err / tol)
                    if err > tol:
                        print(f"FAIL {name}/{o.name} sample {s}: max error {err:.3e} > {tol:.3e}")
                        failures += 1
                    if spec["classifier"]:
                        g2, r2 = got.reshape(-1, r.shape[-1]), r.reshape(-1, r.shape[-1])
                        agree += int(np.sum(np.argmax(g2, -1) == np.argmax(r2, -1)))
                        rows += g2.shape[0]
            top1 = f"{agree}/{rows}" if rows else "n/a"
            print(f"{name:<12} worst error {worst * 100:5.1f}% of tolerance, top-1 agreement {top1}")
            if rows and agree != rows:
                print(f"FAIL {name}: top-1 disagreement")
                failures += 1
    print(f"onnxruntime changed its own output bits with graph optimisations in {ort_bit_changes} outputs")
    if failures:
        print(f"{failures} failures")
        return 1
    print("differential test passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
