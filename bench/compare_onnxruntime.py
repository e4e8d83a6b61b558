#!/usr/bin/env python3
"""Latency of Verity's canonical executor against onnxruntime (f32, one thread) on the same inputs.

For each bundled fixture: compile it (flags from fixtures/manifest.json), time onnxruntime on the fixture
input (one intra-op thread, full graph optimisation, the peer's best single-thread setting), time
`verity run --bench N --threads 1` on the same input (in-process timing, no process start-up), and print
the median latencies and their ratio. The two engines alternate for several rounds and each keeps its
best median, which damps interference from other work on the machine. Usage:

    python bench/compare_onnxruntime.py [--runs 2000] [--verity target/release/verity]

Real architectures (exported here from torchvision and a BERT-family encoder; onnxruntime f32 and its own
int8, one thread and all threads, ratios printed) are `bench/real_models.py`; `--real MODELS` runs it on
those models, every other argument passed through:

    python bench/compare_onnxruntime.py --real resnet50,mobilenet_v2,densenet121,vgg19,encoder,vit_b_16 --precision auto
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np
import onnxruntime as ort

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")


def ort_median_us(path, feeds, runs):
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    sess.run(None, feeds)
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        sess.run(None, feeds)
        times.append((time.perf_counter() - t) * 1e6)
    times.sort()
    return times[len(times) // 2]


def main():
    if "--real" in sys.argv:
        # the real architectures: bench/real_models.py with the remaining arguments
        i = sys.argv.index("--real")
        if i + 1 >= len(sys.argv):
            sys.exit("--real needs a comma-separated list of models (bench/real_models.py)")
        rest = sys.argv[1:i] + sys.argv[i + 2:]
        sys.argv = [os.path.join(ROOT, "bench", "real_models.py"), "--models", sys.argv[i + 1]] + rest
        sys.path.insert(0, os.path.join(ROOT, "bench"))
        import real_models
        return real_models.main()
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=5,
                    help="alternate the two engines this many times; report each one's best median")
    ap.add_argument("--verity", default=os.path.join(ROOT, "target", "release", "verity"))
    args = ap.parse_args()
    manifest = json.load(open(os.path.join(ROOT, "fixtures", "manifest.json")))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, spec in manifest.items():
            onnx_path = os.path.join(ROOT, "fixtures", f"{name}.onnx")
            vty = os.path.join(tmp, f"{name}.vty")
            subprocess.run([args.verity, "model", "compile", onnx_path, "-o", vty] + spec["flags"],
                           check=True, capture_output=True, cwd=ROOT)
            inp_path = os.path.join(ROOT, "fixtures", f"{name}.input.json")
            doc = json.load(open(inp_path))
            sess_inputs = ort.InferenceSession(onnx_path, providers=["CPUExecutionProvider"]).get_inputs()
            feeds = {}
            for i in sess_inputs:
                dt = np.int64 if "int64" in i.type else np.float32
                feeds[i.name] = np.array(doc[i.name]["data"], dtype=dt).reshape(doc[i.name]["shape"])
            # shared machines are noisy: alternate the engines and keep each one's best median
            ort_us, v_us = float("inf"), float("inf")
            for _ in range(args.rounds):
                ort_us = min(ort_us, ort_median_us(onnx_path, feeds, args.runs))
                out = subprocess.run([args.verity, "run", vty, "--input", inp_path, "--threads", "1",
                                      "--bench", str(args.runs)], check=True, capture_output=True, cwd=ROOT)
                v_us = min(v_us, json.loads(out.stdout)["latency"]["median_us"])
            rows.append((name, ort_us, v_us, v_us / ort_us))
    print(f"{'fixture':<12} {'onnxruntime f32 (us)':>22} {'verity canonical (us)':>22} {'ratio':>8}")
    for name, o, v, r in rows:
        print(f"{name:<12} {o:>22.1f} {v:>22.1f} {r:>7.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
