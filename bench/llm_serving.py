"""Serving a language model over HTTP: a Verity node (`verity node --llm`) and llama.cpp's server
(`llama_cpp.server` from llama-cpp-python) on the same GGUF and thread count, in one run. For 1, 4 and 16
concurrent clients (each streaming chat completions with a different seed), prints aggregate output
tokens/s, median time to first token, and Verity's share of the server's throughput; and single-stream
decode through the API next to `verity generate`'s on the same prompt.

    python bench/llm_serving.py --model .models/SmolLM2-135M-Instruct.Q4_1.gguf --threads 2
(needs llama-cpp-python 0.3.36 with its server extras: uvicorn, fastapi, sse-starlette,
starlette-context, pydantic-settings; not part of the test suite)
"""
import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
QUESTIONS = [
    "Write a short story about a lighthouse keeper.",
    "Explain how a bicycle stays upright.",
    "Describe the water cycle to a child.",
    "What are the benefits of reading every day?",
]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(url, proc, timeout=300):
    t0 = time.time()
    while time.time() - t0 < timeout:
        if proc.poll() is not None:
            raise SystemExit(f"server exited: {proc.returncode}")
        try:
            urllib.request.urlopen(url + "/v1/models", timeout=5).read()
            return
        except OSError:
            time.sleep(0.5)
    raise SystemExit("server did not start")


def stream(url, model, question, seed, max_tokens):
    """One streamed chat completion: (time to first token, output tokens, seconds)."""
    body = {"model": model, "messages": [{"role": "user", "content": question}], "temperature": 1.0,
            "top_p": 0.95, "seed": seed, "max_tokens": max_tokens, "stream": True,
            "stream_options": {"include_usage": True}}
    req = urllib.request.Request(url + "/v1/chat/completions", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    t0 = time.perf_counter()
    first, pieces, usage = None, 0, None
    with urllib.request.urlopen(req, timeout=900) as r:
        for line in r:
            if not line.startswith(b"data: {"):
                continue
            d = json.loads(line[6:])
            if d.get("usage"):
                usage = d["usage"]["completion_tokens"]
            for c in d.get("choices") or []:
                if (c.get("delta") or {}).get("content"):
                    pieces += 1
                    if first is None:
                        first = time.perf_counter() - t0
    return first or 0.0, usage if usage is not None else pieces, time.perf_counter() - t0


def load(url, model, clients, max_tokens, per_client):
    """`clients` threads, each `per_client` completions in a row: aggregate tokens/s, median TTFT."""
    ttft, tokens = [], []
    lock = threading.Lock()

    def worker(k):
        for j in range(per_client):
            f, n, _ = stream(url, model, QUESTIONS[(k + j) % len(QUESTIONS)], 1000 * k + j, max_tokens)
            with lock:
                ttft.append(f)
                tokens.append(n)
    t0 = time.perf_counter()
    ts = [threading.Thread(target=worker, args=(k,)) for k in range(clients)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    wall = time.perf_counter() - t0
    return sum(tokens) / wall, statistics.median(ttft), sum(tokens)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--clients", default="1,4,16")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--context", type=int, default=2048)
    ap.add_argument("--verity", default=os.path.join(ROOT, "target", "release", "verity"))
    ap.add_argument("--llama-python", default=sys.executable,
                    help="the Python that has llama_cpp.server")
    a = ap.parse_args()
    model = os.path.abspath(a.model)
    clients = [int(c) for c in a.clients.split(",")]
    # verity generate first, alone on the machine: the single-stream reference
    n = a.max_tokens
    gen = json.loads(subprocess.run(
        [a.verity, "generate", model, "--chat", "--prompt", QUESTIONS[0], "--temperature", "1.0",
         "--top-p", "0.95", "--seed", "0", "--max-tokens", str(n), "--context", str(a.context),
         "--threads", str(a.threads), "--json"], capture_output=True, text=True, check=True).stdout)
    local = (len(gen["output_tokens"]) - 1) / gen["timings"]["decode_s"]
    with tempfile.TemporaryDirectory() as tmp:
        vport, lport = free_port(), free_port()
        verity = subprocess.Popen(
            [a.verity, "node", "--listen", f"127.0.0.1:{vport}", "--data-dir", os.path.join(tmp, "node"),
             "--workers", str(a.threads), "--llm", f"m={model}", "--llm-context", str(a.context),
             "--llm-sequences", str(max(clients))],
            stdout=subprocess.DEVNULL, stderr=open(os.path.join(tmp, "verity.log"), "w"))
        llama = subprocess.Popen(
            [a.llama_python, "-m", "llama_cpp.server", "--model", model, "--model_alias", "m", "--host",
             "127.0.0.1", "--port", str(lport), "--n_threads", str(a.threads), "--n_threads_batch",
             str(a.threads), "--n_ctx", str(a.context), "--interrupt_requests", "False"],
            stdout=subprocess.DEVNULL, stderr=open(os.path.join(tmp, "llama.log"), "w"))
        try:
            vurl, lurl = f"http://127.0.0.1:{vport}", f"http://127.0.0.1:{lport}"
            wait_ready(vurl, verity)
            wait_ready(lurl, llama)
            for url in (vurl, lurl):
                stream(url, "m", QUESTIONS[0], 1, 8)  # warm up
            # single stream: the seeded completion verity generate ran, through the API
            f, got, secs = stream(vurl, "m", QUESTIONS[0], 0, n)
            api = (got - 1) / max(secs - f, 1e-9)
            print(f"model {os.path.basename(model)}, {a.threads} threads, {a.max_tokens} tokens per completion")
            print("| clients | server | tokens/s | median time to first token | Verity / llama.cpp |")
            print("|---|---|---|---|---|")
            for c in clients:
                per = max(1, 16 // c) if c < 16 else 1
                rows = {}
                for name, url in (("llama.cpp", lurl), ("Verity", vurl)):
                    tps, ttft, _ = load(url, "m", c, a.max_tokens, per)
                    rows[name] = (tps, ttft)
                for name in ("llama.cpp", "Verity"):
                    tps, ttft = rows[name]
                    ratio = f"{100 * rows['Verity'][0] / rows['llama.cpp'][0]:.0f}%" if name == "Verity" else ""
                    print(f"| {c} | {name} | {tps:.1f} | {1000 * ttft:.0f} ms | {ratio} |")
            print(f"single-stream decode: API {api:.1f} tokens/s, verity generate {local:.1f} tokens/s "
                  f"({100 * api / local:.0f}%)")
        finally:
            for p in (verity, llama):
                p.terminate()
                p.wait(timeout=30)


if __name__ == "__main__":
    main()
