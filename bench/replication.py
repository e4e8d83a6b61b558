#!/usr/bin/env python3
"""Model replication next to a plain file copy over loopback, on the same ~116 MB model, in one run.

The model is a real ONNX MLP (784-5000-5000-10, 29M float weights, random) compiled by `verity model
compile` (cached under target/bench-replication/). One source node stores it; four fresh nodes then pull
it at the same time (`POST /v1/models/{id}/pull`: chunk list, 1 MiB chunks fetched in parallel, each
checked against its hash and written durably, the whole decoded and its model ID checked, indexed). The
plain copy is the same file fetched by four concurrent `curl` processes from a static HTTP server on
loopback, written to disk. Prints both times, throughput, and the ratio (goal: replication at >= 50% of
the copy's speed).

    python bench/replication.py
"""
import concurrent.futures as cf
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
VERITY = os.path.join(ROOT, "target", "release", "verity")
CACHE = os.path.join(ROOT, "target", "bench-replication")
KEY = "0x" + "42" * 32


def sh(cmd, **kw):
    return subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True, text=True, **kw).stdout


def build_model():
    os.makedirs(CACHE, exist_ok=True)
    vty = os.path.join(CACHE, "big.vty")
    if os.path.exists(vty):
        return vty
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    rng = np.random.default_rng(0)
    dims = [784, 5000, 5000, 10]
    nodes, inits, x = [], [], "x"
    for i in range(3):
        w = (rng.standard_normal((dims[i], dims[i + 1])) / np.sqrt(dims[i])).astype(np.float32)
        inits += [numpy_helper.from_array(w, f"W{i}"), numpy_helper.from_array(np.zeros(dims[i + 1], np.float32), f"b{i}")]
        out = "y" if i == 2 else f"g{i}"
        nodes.append(helper.make_node("Gemm", [x, f"W{i}", f"b{i}"], [out]))
        if i < 2:
            nodes.append(helper.make_node("Relu", [out], [f"h{i}"]))
            x = f"h{i}"
    g = helper.make_graph(nodes, "big", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 784])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 10])], inits)
    onnx_path = os.path.join(CACHE, "big.onnx")
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)]), onnx_path)
    sh([VERITY, "model", "compile", onnx_path, "-o", vty])
    return vty


def start_node(d, extra):
    p = subprocess.Popen([VERITY, "node", "--listen", "127.0.0.1:0", "--data-dir", d] + extra, cwd=ROOT,
                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                         env={**os.environ, "VERITY_LOG": "warn"})
    line = p.stdout.readline()
    url = next(w for w in line.split() if w.startswith("http://"))
    return p, url


def post(url, timeout=600):
    req = urllib.request.Request(url, data=b"", method="POST")
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return json.load(r)


class Quiet(SimpleHTTPRequestHandler):
    def log_message(self, *a):
        pass


def plain_copy(vty, tmp, n):
    srv = ThreadingHTTPServer(("127.0.0.1", 0), lambda *a, **k: Quiet(*a, directory=os.path.dirname(vty), **k))
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{srv.server_address[1]}/{os.path.basename(vty)}"
    t0 = time.time()
    procs = [subprocess.Popen(["curl", "-s", "-o", os.path.join(tmp, f"copy{i}.vty"), url]) for i in range(n)]
    for p in procs:
        p.wait()
    dt = time.time() - t0
    srv.shutdown()
    for i in range(n):
        assert os.path.getsize(os.path.join(tmp, f"copy{i}.vty")) == os.path.getsize(vty)
        os.remove(os.path.join(tmp, f"copy{i}.vty"))
    return dt


def replicate(src_url, model_id, tmp, n, tag):
    nodes = [start_node(os.path.join(tmp, f"{tag}{i}"), ["--hosting", "none", "--peer", src_url]) for i in range(n)]
    try:
        t0 = time.time()
        with cf.ThreadPoolExecutor(n) as ex:
            reports = list(ex.map(lambda nu: post(f"{nu[1]}/v1/models/{model_id}/pull"), nodes))
        dt = time.time() - t0
        for r in reports:
            assert r["fetched"] == r["chunks"] and not r["refused"], r
        return dt, reports[0]["chunks"]
    finally:
        for p, _ in nodes:
            p.kill()
            p.wait()


def main():
    sh(["cargo", "build", "--release", "-p", "verity-cli"])
    vty = build_model()
    size = os.path.getsize(vty)
    mb = size / 1e6
    with tempfile.TemporaryDirectory(dir=os.path.join(ROOT, "target")) as tmp:
        src, src_url = start_node(os.path.join(tmp, "src"), [])
        try:
            env = {**os.environ, "VERITY_KEY": KEY}
            out = subprocess.run([VERITY, "model", "publish", vty, "--name", "big", "--version", "1.0.0", "--node", src_url],
                                 cwd=ROOT, check=True, capture_output=True, text=True, env=env).stdout
            model_id = json.loads(urllib.request.urlopen(f"{src_url}/v1/models/big@1.0.0").read())["model_id"]
            rows = []
            for n in (1, 4):
                copy = plain_copy(vty, tmp, n)
                rep, chunks = replicate(src_url, model_id, tmp, n, f"r{n}_")
                rows.append((n, copy, rep, chunks))
        finally:
            src.kill()
            src.wait()
    print(f"model {mb:.1f} MB ({rows[0][3]} chunks of 1 MiB), loopback, {os.cpu_count()} cores")
    print(f"{'destinations':>12s} {'plain copy s':>13s} {'MB/s':>8s} {'replication s':>14s} {'MB/s':>8s} {'replication / copy speed':>25s}")
    for n, copy, rep, _ in rows:
        print(f"{n:12d} {copy:13.2f} {n * mb / copy:8.0f} {rep:14.2f} {n * mb / rep:8.0f} {copy / rep:24.0%}")


if __name__ == "__main__":
    main()
