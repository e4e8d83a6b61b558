"""Language-model speed: Verity (`verity generate`) and llama.cpp (llama-cpp-python) on the same GGUF,
the same prompt and thread count, in one run. Prints load time, prefill and decode tokens/s, peak memory,
and Verity's share of llama.cpp's tokens/s.

    python bench/llm.py --model .models/SmolLM2-135M-Instruct.Q4_1.gguf --threads 1,2
(needs llama-cpp-python 0.3.36, built as docs/spec/llm.md says; not part of the test suite)
"""
import argparse
import json
import os
import resource
import statistics
import subprocess
import time

import numpy as np
import llama_cpp

ROOT = os.path.join(os.path.dirname(__file__), "..")
# about 128 tokens of plain English prose
PROMPT = (
    "The old lighthouse stood at the edge of the cliff, its white paint worn grey by a century of salt "
    "and wind. Every evening the keeper climbed the narrow stairs, counted the steps out of habit, and lit "
    "the lamp before the first ships rounded the headland. Fishermen said the light had never failed, not "
    "once, not even in the great storm that took the harbour wall. The keeper kept a logbook of every "
    "night: the weather, the ships, the birds that rested on the gallery rail. When the lamp was finally "
    "replaced by an automatic beacon, the logbooks filled three shelves, and the keeper"
)


def llama_cpp_run(model, threads, new, rounds):
    t0 = time.perf_counter()
    m = llama_cpp.Llama(model, n_ctx=512, n_threads=threads, n_threads_batch=threads, verbose=False)
    load = time.perf_counter() - t0
    toks = m.tokenize(PROMPT.encode(), add_bos=False)
    pre, dec = [], []
    for _ in range(rounds):
        m.reset()
        t0 = time.perf_counter()
        m.eval(toks)
        pre.append(len(toks) / (time.perf_counter() - t0))
        t0 = time.perf_counter()
        for _ in range(new):
            m.eval([int(np.argmax(m.scores[m.n_tokens - 1]))])
        dec.append(new / (time.perf_counter() - t0))
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return len(toks), load, statistics.median(pre), statistics.median(dec), rss


def verity_run(binary, model, threads, new, rounds):
    pre, dec, load, peak = [], [], [], 0
    for _ in range(rounds):
        p = subprocess.Popen(
            [binary, "generate", model, "--prompt", PROMPT, "--max-tokens", str(new + 1), "--context", "256",
             "--threads", str(threads), "--json"],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        out = p.stdout.read()
        # this process's own peak (the children's total would include the build run before)
        _, status, usage = os.wait4(p.pid, 0)
        if status != 0:
            raise SystemExit(f"verity generate failed ({status})")
        peak = max(peak, usage.ru_maxrss / 1024)
        d = json.loads(out)
        t = d["timings"]
        n = len(d["output_tokens"])
        pre.append(len(d["prompt_tokens"]) / t["prefill_s"])
        dec.append((n - 1) / t["decode_s"] if n > 1 else 0)
        load.append(t["compile_s"])
    return statistics.median(load), statistics.median(pre), statistics.median(dec), peak


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--new", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args()
    subprocess.run(["cargo", "build", "--release", "-q", "-p", "verity-cli"], cwd=ROOT, check=True)
    binary = os.path.join(ROOT, "target", "release", "verity")
    print(f"{'threads':>7} {'':>10} {'load s':>7} {'prefill tok/s':>14} {'decode tok/s':>13} {'peak MB':>8}")
    for t in [int(x) for x in a.threads.split(",")]:
        n, l_load, l_pre, l_dec, l_rss = llama_cpp_run(a.model, t, a.new, a.rounds)
        v_load, v_pre, v_dec, v_rss = verity_run(binary, a.model, t, a.new, a.rounds)
        print(f"{t:>7} {'llama.cpp':>10} {l_load:>7.2f} {l_pre:>14.1f} {l_dec:>13.1f} {l_rss:>8.0f}")
        print(f"{t:>7} {'Verity':>10} {v_load:>7.2f} {v_pre:>14.1f} {v_dec:>13.1f} {v_rss:>8.0f}")
        print(f"{t:>7} {'share':>10} {'':>7} {100 * v_pre / l_pre:>13.0f}% {100 * v_dec / l_dec:>12.0f}%")
    print(f"prompt {n} tokens, {a.new} generated, greedy; Verity's load time includes compiling the step")


if __name__ == "__main__":
    main()
