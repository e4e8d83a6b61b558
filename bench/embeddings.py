#!/usr/bin/env python3
"""Sentence embeddings: a node's `POST /v1/embeddings` against onnxruntime on the same encoder.

The encoder has the shape of all-MiniLM-L6-v2 (BERT, 6 layers, width 384, 12 heads, feed-forward 1536,
vocabulary 30522, 512 positions; mean pooling and normalization), exported here by torch with random
weights, and uses fixtures/embed-mini's WordPiece tokenizer. Verity compiles it at the sequence length
asked (`--sequence`, default 128: every input is padded to it, as the compiled model's shapes are fixed);
onnxruntime (one thread, like one node worker) runs each text at its own length, which is how a user runs it.
Printed: compile time, per-text latency through HTTP for both (median over the texts, several rounds),
their ratio, the engine's own time at 32 positions with and without the trace commitment (receipts defer
it; a node computes it only to defend a disputed receipt),
and accuracy (worst cosine, largest difference) against onnxruntime.

Needs torch and transformers beside the repository's Python packages (a benchmark, never part of the test
suite). Usage:

    python bench/embeddings.py --verity target/release/verity [--sequence 128] [--precision i32]
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, os.path.join(ROOT, "scripts"))
FIXTURE = os.path.join(ROOT, "fixtures", "embed-mini")
CACHE = os.path.join(ROOT, "bench", ".models", "minilm-l6-shape")

TEXTS = [
    "How do I check that a model's answer was computed correctly?",
    "The quick brown fox jumps over the lazy dog.",
    "Search engines rank documents by the cosine similarity of their embeddings to the query, and a "
    "retrieval system built this way returns passages whose meaning is close to the question even when "
    "they share few words with it.",
    "Le café est très chaud ce matin, mais le croissant est déjà froid.",
    "Invoice #4521: 3 items, total $1,299.99 (tax included).",
    "yes",
]


def build():
    if os.path.exists(os.path.join(CACHE, "model.onnx")):
        return
    import torch
    from gen_embedding_fixture import export
    from transformers import BertConfig, BertModel
    os.makedirs(CACHE, exist_ok=True)
    for f in ["tokenizer.json", "vocab.txt", "tokenizer_config.json", "modules.json"]:
        shutil.copy(os.path.join(FIXTURE, f), CACHE)
    shutil.copytree(os.path.join(FIXTURE, "1_Pooling"), os.path.join(CACHE, "1_Pooling"), dirs_exist_ok=True)
    with open(os.path.join(CACHE, "1_Pooling", "config.json"), "w") as f:
        json.dump({"word_embedding_dimension": 384, "pooling_mode_mean_tokens": True}, f)
    torch.manual_seed(1)
    cfg = BertConfig(vocab_size=30522, hidden_size=384, num_hidden_layers=6, num_attention_heads=12,
                     intermediate_size=1536, max_position_embeddings=512, attn_implementation="eager")
    model = BertModel(cfg, add_pooling_layer=False).eval()
    cfg.save_pretrained(CACHE)

    export(model, torch.tensor([[2, 100, 200, 3]]), os.path.join(CACHE, "model.onnx"))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--verity", required=True)
    ap.add_argument("--sequence", type=int, default=128)
    ap.add_argument("--precision", default="i32")
    ap.add_argument("--rounds", type=int, default=5)
    a = ap.parse_args()
    build()
    tok = Tokenizer.from_file(os.path.join(CACHE, "tokenizer.json"))
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(os.path.join(CACHE, "model.onnx"), opts, providers=["CPUExecutionProvider"])

    def reference(text):
        x = np.array([tok.encode(text).ids], np.int64)
        h = sess.run(None, {"input_ids": x, "attention_mask": np.ones_like(x),
                            "token_type_ids": np.zeros_like(x)})[0][0].mean(axis=0)
        return h / np.linalg.norm(h)

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.time()
        c = subprocess.run([os.path.abspath(a.verity), "model", "compile", CACHE, "-o", os.path.join(tmp, "e.vty"),
                            "--sequence", str(a.sequence), "--precision", a.precision],
                           capture_output=True, text=True)
        compile_s = time.time() - t0
        if c.returncode:
            sys.exit(f"compile failed: {c.stderr}")
        cfg = os.path.join(tmp, "node.toml")
        with open(cfg, "w") as f:
            f.write(f'data_dir = "{tmp}/node"\nlisten = "127.0.0.1:0"\nworkers = 1\n'
                    f'[[embedding]]\npath = "{CACHE}"\nname = "minilm"\nsequence = {a.sequence}\n'
                    f'precision = "{a.precision}"\n')
        node = subprocess.Popen([os.path.abspath(a.verity), "node", "--config", cfg],
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        try:
            url = next(w for w in node.stdout.readline().split() if w.startswith("http://"))

            def embed(text):
                req = urllib.request.Request(url + "/v1/embeddings", data=json.dumps(
                    {"model": "minilm", "input": text, "encoding_format": "float"}).encode(),
                    headers={"Content-Type": "application/json"})
                return np.array(json.loads(urllib.request.urlopen(req, timeout=300).read())["data"][0]["embedding"])

            ours, theirs = [], []
            worst_cos, worst_diff = 1.0, 0.0
            for _ in range(a.rounds):
                for t in TEXTS:
                    s = time.perf_counter()
                    got = embed(t)
                    ours.append(time.perf_counter() - s)
                    s = time.perf_counter()
                    want = reference(t)
                    theirs.append(time.perf_counter() - s)
                    worst_cos = min(worst_cos, float(got @ want / np.linalg.norm(got)))
                    worst_diff = max(worst_diff, float(np.abs(got - want).max()))
        finally:
            node.terminate()
            node.wait(timeout=30)
        # The engine alone at 32 positions (where these texts run), and with the receipt's commitment
        # to every intermediate tensor, on the same padded input.
        short = os.path.join(tmp, "e32.vty")
        subprocess.run([os.path.abspath(a.verity), "model", "compile", CACHE, "-o", short, "--sequence", "32",
                        "--precision", a.precision], capture_output=True, check=True)
        ids = tok.encode(TEXTS[0]).ids[:32]
        pad = lambda v, fill: v + [fill] * (32 - len(v))  # noqa: E731
        inp = os.path.join(tmp, "in.json")
        with open(inp, "w") as f:
            json.dump({"input_ids": {"shape": [1, 32], "data": pad(ids, 0)},
                       "attention_mask": {"shape": [1, 32], "data": pad([1] * len(ids), 0)},
                       "token_type_ids": {"shape": [1, 32], "data": [0] * 32}}, f)
        run = subprocess.run([os.path.abspath(a.verity), "run", short, "--input", inp, "--bench", "10"],
                             capture_output=True, text=True, check=True)
        lat = json.loads(run.stdout)["latency"]
    mo, mt = np.median(ours) * 1e3, np.median(theirs) * 1e3
    print(f"encoder      MiniLM-L6 shape (6 layers, width 384), sequence {a.sequence}, precision {a.precision}")
    print(f"compile      {compile_s:.1f} s (verity model compile DIR)")
    print(f"latency      Verity over HTTP {mo:.1f} ms, onnxruntime 1 thread {mt:.1f} ms per text "
          f"(median of {len(ours)}): {mo / mt:.2f}x")
    print(f"engine       at 32 positions: {lat['median_us'] / 1e3:.1f} ms to run, "
          f"{lat['with_trace_commit_median_us'] / 1e3:.1f} ms with the commitment to every intermediate "
          f"tensor (deferred by receipts; computed to defend a dispute)")
    print(f"accuracy     worst cosine {worst_cos:.6f}, largest difference {worst_diff:.2e}")


if __name__ == "__main__":
    main()
