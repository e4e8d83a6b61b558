"""Decode speed of a GGUF model: Verity's canonical step (the llm_speed example) and llama.cpp
(llama-cpp-python) on the same file, same thread count, in one run; prints tokens/s and the ratio.

    python bench/llm_decode.py --model .models/SmolLM2-135M-Instruct.Q4_1.gguf --threads 1,2
(needs llama-cpp-python, built as docs/spec/llm.md's reference section says; not part of the tests)
"""
import argparse
import os
import re
import statistics
import subprocess
import time

import numpy as np
import llama_cpp

ROOT = os.path.join(os.path.dirname(__file__), "..")


def llama_cpp_decode(model, threads, tokens, rounds):
    m = llama_cpp.Llama(model, n_ctx=512, n_threads=threads, n_threads_batch=threads, verbose=False)
    rates = []
    for _ in range(rounds):
        m.reset()
        m.eval([1])
        t0 = time.perf_counter()
        for _ in range(tokens):
            m.eval([int(np.argmax(m.scores[m.n_tokens - 1]))])
        rates.append(tokens / (time.perf_counter() - t0))
    return statistics.median(rates)


def verity_decode(binary, model, threads, tokens, rounds):
    rates = []
    for _ in range(rounds):
        out = subprocess.run([binary, model, "256", str(tokens), str(threads)], check=True,
                             capture_output=True, text=True).stdout
        rates.append(float(re.search(r"\(([\d.]+) tokens/s\)", out).group(1)))
    return statistics.median(rates)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args()
    subprocess.run(["cargo", "build", "--release", "-q", "-p", "verity-llm", "--example", "llm_speed"],
                   cwd=ROOT, check=True)
    binary = os.path.join(ROOT, "target", "release", "examples", "llm_speed")
    print(f"{'threads':>7} {'llama.cpp tok/s':>16} {'Verity tok/s':>13} {'time ratio':>10}")
    for t in [int(x) for x in a.threads.split(",")]:
        ref = llama_cpp_decode(a.model, t, a.tokens, a.rounds)
        ver = verity_decode(binary, a.model, t, a.tokens, a.rounds)
        print(f"{t:>7} {ref:>16.1f} {ver:>13.1f} {ref / ver:>9.2f}×")


if __name__ == "__main__":
    main()
