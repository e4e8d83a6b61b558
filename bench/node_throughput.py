#!/usr/bin/env python3
"""Node throughput next to the raw engine, on the same model and input, in one run.

For each fixture: the engine's single-thread latency from `verity run --bench` (plain run, and run plus
the trace commitments a receipt needs), scaled to the machine's cores as the raw throughput; then a real
node (`verity node`, all cores) under a closed-loop loopback load (`loadgen`, keep-alive connections),
giving requests/s and p50/p99 latency. Prints a table and the ratio node / raw engine.

    python bench/node_throughput.py [--secs 10] [--conns 4]
"""
import argparse
import json
import os
import subprocess
import tempfile

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
VERITY = os.path.join(ROOT, "target", "release", "verity")
LOADGEN = os.path.join(ROOT, "target", "release", "examples", "loadgen")


def sh(cmd, **kw):
    return subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True, text=True, **kw).stdout


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--secs", type=int, default=10)
    ap.add_argument("--conns", type=int, default=4)
    ap.add_argument("--runs", type=int, default=2000)
    a = ap.parse_args()
    sh(["cargo", "build", "--release", "-p", "verity-cli"])
    sh(["cargo", "build", "--release", "-p", "verity-node", "--example", "loadgen"])
    cores = os.cpu_count() or 1
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        node = subprocess.Popen([VERITY, "node", "--listen", "127.0.0.1:0", "--data-dir", os.path.join(tmp, "n")],
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=ROOT,
                                env={**os.environ, "VERITY_LOG": "warn"})
        try:
            url = next(w for w in node.stdout.readline().split() if w.startswith("http://"))
            env = {**os.environ, "VERITY_NODE": url, "VERITY_KEY_FILE": os.path.join(tmp, "k")}
            sh([VERITY, "key", "new"], env=env)
            for name in ["mlp", "cnn"]:
                vty = os.path.join(tmp, f"{name}.vty")
                sh([VERITY, "model", "compile", f"fixtures/{name}.onnx", "-o", vty, "--input-range", "0:1"])
                sh([VERITY, "model", "publish", vty, "--name", name, "--version", "1"], env=env)
                inp = os.path.join(ROOT, "fixtures", f"{name}.input.json")
                bench = json.loads(sh([VERITY, "run", vty, "--input", inp, "--bench", str(a.runs)]))["latency"]
                body = os.path.join(tmp, f"{name}.body.json")
                with open(body, "w") as f:
                    f.write(json.dumps({"inputs": json.load(open(inp))}))
                sh([LOADGEN, url[len("http://"):], f"/v1/models/{name}/infer", body, str(a.conns), "2"])  # warm-up
                load = json.loads(sh([LOADGEN, url[len("http://"):], f"/v1/models/{name}/infer", body,
                                      str(a.conns), str(a.secs)]))
                raw = cores * 1e6 / bench["median_us"]
                raw_commit = cores * 1e6 / bench["with_trace_commit_median_us"]
                rows.append((name, bench["median_us"], raw, bench["with_trace_commit_median_us"], raw_commit,
                             load["rps"], load["p50_us"], load["p99_us"], load["errors"], load["requests"]))
        finally:
            node.terminate()
            node.wait(timeout=20)
    print(f"cores={cores} conns={a.conns} secs={a.secs}")
    print("| model | engine run µs | raw engine req/s | run+trace commit µs | raw engine+commit req/s "
          "| node req/s | node p50 µs | node p99 µs | node / raw | node / raw+commit | errors |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for (n, us, raw, cus, rawc, rps, p50, p99, err, reqs) in rows:
        print(f"| {n} | {us:.1f} | {raw:.0f} | {cus:.1f} | {rawc:.0f} | {rps:.0f} | {p50} | {p99} "
              f"| {rps / raw:.2f} | {rps / rawc:.2f} | {err}/{reqs} |")


if __name__ == "__main__":
    main()
