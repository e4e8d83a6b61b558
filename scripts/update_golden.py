#!/usr/bin/env python3
"""Recompute fixtures/golden.json (model ID, input hash, output hash, trace root per fixture).

Golden vectors pin the canonical format: run this only for a deliberate, reviewed format change or a
new fixture, and say so in the commit message.

    python scripts/update_golden.py [--verity target/release/verity]
"""
import argparse
import json
import os
import subprocess
import tempfile

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--verity", default=os.path.join(ROOT, "target", "release", "verity"))
    args = ap.parse_args()
    manifest = json.load(open(os.path.join(ROOT, "fixtures", "manifest.json")))
    golden = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, spec in manifest.items():
            vty = os.path.join(tmp, f"{name}.vty")
            subprocess.run([args.verity, "model", "compile", f"fixtures/{name}.onnx", "-o", vty] + spec["flags"],
                           check=True, capture_output=True, cwd=ROOT)
            out = subprocess.run([args.verity, "run", vty, "--input", f"fixtures/{name}.input.json",
                                  "--trace", os.path.join(tmp, "trace.json")],
                                 check=True, capture_output=True, cwd=ROOT)
            r = json.loads(out.stdout)
            golden[name] = {k: r[k] for k in ("model_id", "input_hash", "output_hash", "trace_root")}
    with open(os.path.join(ROOT, "fixtures", "golden.json"), "w") as f:
        json.dump(golden, f, indent=2)
        f.write("\n")
    print(json.dumps(golden, indent=2))


if __name__ == "__main__":
    main()
