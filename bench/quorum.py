#!/usr/bin/env python3
"""Quorum inference latency and throughput on a 5-node devnet over loopback, next to a plain single-node
inference, on the MLP fixture, in one run.

A coordinator node draws k nodes from the on-chain registry, sends them the request, checks every receipt
and the outputs, and answers with a quorum certificate. `loadgen` (closed loop, keep-alive) drives
`POST /v1/models/mlp/quorum?k=K` for k = 1, 3, 5 and `POST /v1/models/mlp/infer` for comparison. All
five nodes and the load generator share this machine's cores, so a quorum of k costs about k times the
work of one inference.

    python bench/quorum.py [--secs 10] [--conns 4]
"""
import argparse
import json
import os
import signal
import subprocess
import tempfile
import time

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
VERITY = os.path.join(ROOT, "target", "release", "verity")
LOADGEN = os.path.join(ROOT, "target", "release", "examples", "loadgen")
ANVIL = os.path.join(ROOT, ".tools", "node_modules", ".bin", "anvil")


def sh(cmd):
    return subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True, text=True).stdout


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--secs", type=int, default=10)
    ap.add_argument("--conns", type=int, default=4)
    ap.add_argument("--port", type=int, default=24100)
    a = ap.parse_args()
    sh(["cargo", "build", "--release", "-p", "verity-cli"])
    sh(["cargo", "build", "--release", "-p", "verity-node", "--example", "loadgen"])
    with tempfile.TemporaryDirectory() as tmp:
        d = os.path.join(tmp, "dn")
        log = open(os.path.join(tmp, "devnet.out"), "w")
        dn = subprocess.Popen([VERITY, "devnet", "--nodes", "5", "--dir", d, "--port", str(a.port), "--anvil", ANVIL],
                              cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "VERITY_LOG": "warn"})
        try:
            t0 = time.time()
            while not os.path.exists(os.path.join(d, "devnet.json")):
                if dn.poll() is not None or time.time() - t0 > 300:
                    raise SystemExit("the devnet did not come up: " + open(log.name).read())
                time.sleep(0.5)
            s = json.load(open(os.path.join(d, "devnet.json")))
            host = s["nodes"][0]["url"].replace("http://", "")
            body = os.path.join(tmp, "body.json")
            json.dump({"inputs": json.load(open(os.path.join(ROOT, "fixtures", "mlp.input.json")))}, open(body, "w"))
            rows = []
            for label, path in [("single node, no quorum", "/v1/models/mlp/infer")] + [
                    (f"quorum k={k}", f"/v1/models/mlp/quorum?k={k}") for k in (1, 3, 5)]:
                out = sh([LOADGEN, host, path, body, str(a.conns), str(a.secs)])
                r = json.loads(out)
                rows.append((label, r))
            print(f"MLP fixture, 5 nodes on one {os.cpu_count()}-core machine, {a.conns} connections, {a.secs} s each")
            print(f"{'':24s} {'req/s':>9s} {'p50 ms':>8s} {'p99 ms':>8s} {'errors':>7s}")
            for label, r in rows:
                print(f"{label:24s} {r['rps']:9.1f} {r['p50_us'] / 1000:8.2f} {r['p99_us'] / 1000:8.2f} {r.get('errors', 0):7d}")
        finally:
            dn.send_signal(signal.SIGINT)
            try:
                dn.wait(timeout=30)
            except subprocess.TimeoutExpired:
                dn.kill()


if __name__ == "__main__":
    main()
