#!/usr/bin/env python3
"""The OpenAI-compatible API of a node serving a GGUF language model, tested with the real `openai`
SDK and plain HTTP against a real node (SmolLM2-135M-Instruct, fetched by scripts/setup-models).

Checks: the model list; a greedy chat completion (llama.cpp's own greedy answer on the same file,
token for token with `verity generate`); its receipt (EIP-712, recovered with eth_account to the
node's address; output hash = keccak of the token IDs); the same completion streamed (text, receipt
and usage in the last frames); a seeded sample (the same twice, equal to `verity generate` with the
same parameters, another seed another text); `verity verify` re-executing a saved completion (a
changed token or seed fails); legacy completions; and errors in OpenAI's shape for an
unsupported parameter, an unknown model and a body that is not JSON; a streaming client that goes
away stopping its generation; a node refusing to start on a
model file that is missing or not GGUF. Exit status 1 on any failure.

    python tests/python/openai_client.py --verity target/release/verity
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

import openai
from eth_account import Account
from eth_account.messages import encode_typed_data
from eth_hash.auto import keccak

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
MODEL_FILE = ".models/SmolLM2-135M-Instruct.Q4_1.gguf"
NAME = "smollm2"
QUESTION = "What is 12 times 7?"


def tokens_hash(ids):
    return "0x" + keccak(b"".join(int(t).to_bytes(4, "big") for t in ids)).hex()


def recover(signed):
    """The address that signed a Verity receipt (EIP-712, as docs/spec/receipts.md defines it)."""
    r, d = signed["receipt"], signed["domain"]
    typed = {
        "types": {
            "EIP712Domain": [
                {"name": "name", "type": "string"}, {"name": "version", "type": "string"},
                {"name": "chainId", "type": "uint256"}, {"name": "verifyingContract", "type": "address"},
            ],
            "Receipt": [
                {"name": "requestId", "type": "bytes32"}, {"name": "modelId", "type": "bytes32"},
                {"name": "inputHash", "type": "bytes32"}, {"name": "outputHash", "type": "bytes32"},
                {"name": "traceRoot", "type": "bytes32"}, {"name": "node", "type": "address"},
                {"name": "timestamp", "type": "uint64"},
            ],
        },
        "primaryType": "Receipt",
        "domain": {"name": d["name"], "version": d["version"], "chainId": d["chain_id"],
                   "verifyingContract": d["verifying_contract"]},
        "message": {"requestId": r["request_id"], "modelId": r["model_id"], "inputHash": r["input_hash"],
                    "outputHash": r["output_hash"], "traceRoot": r["trace_root"], "node": r["node"],
                    "timestamp": r["timestamp"]},
    }
    return Account.recover_message(encode_typed_data(full_message=typed), signature=signed["signature"])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--verity", required=True)
    a = ap.parse_args()
    verity = os.path.abspath(a.verity)
    if not os.path.exists(os.path.join(ROOT, MODEL_FILE)):
        raise SystemExit(f"{MODEL_FILE} is missing: run scripts/setup-models")
    failures = []

    def check(cond, what):
        print(("ok   " if cond else "FAIL ") + what)
        if not cond:
            failures.append(what)

    with tempfile.TemporaryDirectory() as tmp:
        # a model file that is missing or not GGUF: the node refuses to start, saying why
        for bad, says in [("missing.gguf", "cannot read the language model"),
                          ("fixtures/mlp.onnx", "is not a valid GGUF file")]:
            p = subprocess.run([verity, "node", "--listen", "127.0.0.1:0", "--data-dir",
                                os.path.join(tmp, "bad"), "--llm", bad], cwd=ROOT, capture_output=True,
                               text=True, timeout=60)
            check(p.returncode != 0 and says in p.stderr, f"--llm {bad}: {p.stderr.strip()[-80:]}")
        node = subprocess.Popen(
            [verity, "node", "--listen", "127.0.0.1:0", "--data-dir", os.path.join(tmp, "node"),
             "--llm", f"{NAME}={MODEL_FILE}", "--llm-context", "256"],
            stdout=subprocess.PIPE, stderr=open(os.path.join(tmp, "node.log"), "w"), text=True, cwd=ROOT,
            env={**os.environ, "VERITY_LOG": "info"})
        try:
            line = node.stdout.readline()
            url = next(w for w in line.split() if w.startswith("http://"))
            node_address = line.split()[-1]
            client = openai.OpenAI(base_url=url + "/v1", api_key="not-needed", max_retries=0, timeout=300)

            ids = [m.id for m in client.models.list().data]
            check(ids == [NAME], f"models.list: {ids}")

            msgs = [{"role": "user", "content": QUESTION}]
            c = client.chat.completions.create(model=NAME, messages=msgs, temperature=0, max_tokens=24)
            text = c.choices[0].message.content
            ver, rec = c.model_extra["verity"], c.model_extra["receipt"]
            # llama.cpp's greedy answer on the same file (crates/llm/tests/fixtures/smollm2_llama_cpp.json)
            check(ver["output_tokens"] == [33, 34, 1711, 216, 39, 314, 216, 39, 34, 30, 2],
                  f"greedy chat completion is llama.cpp's: {text!r}")
            check(c.choices[0].finish_reason == "stop", "finish_reason stop at the end token")
            check(c.usage.prompt_tokens == len(ver["prompt_tokens"]) and
                  c.usage.completion_tokens == len(ver["output_tokens"]), "usage counts the tokens")
            check(recover(rec).lower() == node_address.lower() == rec["receipt"]["node"].lower(),
                  "the receipt recovers to the node's address")
            check(rec["receipt"]["output_hash"] == tokens_hash(ver["output_tokens"]) == ver["output_hash"],
                  "the receipt's output hash is keccak of the output token IDs")
            check(rec["receipt"]["model_id"] == ver["model_id"], "the receipt names the model ID")
            gen = json.loads(subprocess.run(
                [verity, "generate", MODEL_FILE, "--chat", "--prompt", QUESTION, "--max-tokens", "24",
                 "--context", "256", "--json"], cwd=ROOT, capture_output=True, text=True, check=True).stdout)
            check(gen["prompt_tokens"] == ver["prompt_tokens"] and gen["output_tokens"] == ver["output_tokens"]
                  and gen["steps_root"] == rec["receipt"]["trace_root"],
                  "verity generate gives the same tokens and step commitments")

            # streamed: the same text, the receipt in the last chunk, usage after it
            chunks = list(client.chat.completions.create(
                model=NAME, messages=msgs, temperature=0, max_tokens=24, stream=True,
                stream_options={"include_usage": True}))
            streamed = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
            check(streamed == text, f"streamed text equals the completion: {streamed!r}")
            last = [ch for ch in chunks if ch.choices and ch.choices[0].finish_reason]
            check(len(last) == 1 and last[0].model_extra["receipt"]["receipt"]["output_hash"]
                  == rec["receipt"]["output_hash"], "the last chunk carries the same output's receipt")
            check(chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == c.usage.completion_tokens,
                  "include_usage: a final usage chunk")

            # seeded sampling: canonical, so the same on every run and in verity generate
            def sample(seed):
                r = client.chat.completions.create(model=NAME, messages=msgs, temperature=1.0, top_p=0.95,
                                                   seed=seed, max_tokens=24)
                return r.model_extra["verity"]["output_tokens"], r.choices[0].message.content
            s7, s7b, s8 = sample(7), sample(7), sample(8)
            check(s7 == s7b, f"a seeded sample is the same twice: {s7[1]!r}")
            check(s7 != s8, "another seed, another sample")
            gen7 = json.loads(subprocess.run(
                [verity, "generate", MODEL_FILE, "--chat", "--prompt", QUESTION, "--max-tokens", "24",
                 "--context", "256", "--temperature", "1.0", "--top-p", "0.95", "--seed", "7", "--json"],
                cwd=ROOT, capture_output=True, text=True, check=True).stdout)
            check(gen7["output_tokens"] == s7[0], "verity generate draws the same seeded sample")

            # verity verify re-executes a completion from its full response; a changed token or seed fails
            req = urllib.request.Request(url + "/v1/chat/completions", data=json.dumps(
                {"model": NAME, "messages": msgs, "temperature": 1.0, "top_p": 0.95, "seed": 7,
                 "max_tokens": 12}).encode(), headers={"Content-Type": "application/json"})
            doc = json.loads(urllib.request.urlopen(req, timeout=300).read())
            saved = os.path.join(tmp, "completion.json")

            def verify(d, model=True):
                with open(saved, "w") as f:
                    json.dump(d, f)
                cmd = [verity, "verify", saved] + (["--model", MODEL_FILE] if model else [])
                return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
            p = verify(doc)
            check(p.returncode == 0 and "re-execution gives the same" in p.stdout,
                  f"verity verify re-executes the completion: {p.stdout.strip()}")
            p = verify(doc, model=False)
            check(p.returncode == 0 and "not re-executed" in p.stdout, "without --model: hashes and signature only")
            forged = json.loads(json.dumps(doc))
            forged["verity"]["output_tokens"][0] += 1
            p = verify(forged, model=False)
            check(p.returncode == 1 and "output tokens hash" in p.stdout, f"a changed token fails: {p.stdout.strip()}")
            forged = json.loads(json.dumps(doc))
            forged["verity"]["sampling"]["seed"] = 8
            p = verify(forged)
            check(p.returncode == 1 and "parameters hash" in p.stdout, f"another seed fails: {p.stdout.strip()}")

            # a streaming client that goes away after two chunks stops its generation (the node says so)
            stream = client.chat.completions.create(model=NAME, messages=msgs, temperature=1.0, seed=3,
                                                    max_tokens=200, stream=True)
            for i, _ in enumerate(stream):
                if i == 1:
                    break
            stream.close()
            stopped = None
            for _ in range(600):
                with open(os.path.join(tmp, "node.log")) as f:
                    stopped = next((l for l in f if "the client went away" in l), None)
                if stopped:
                    break
                time.sleep(0.1)
            n = int(stopped.split("tokens=")[1].split()[0]) if stopped else None
            check(n is not None and n < 200, f"a disconnected stream stops its generation: {n} of 200 tokens")

            t = client.completions.create(model=NAME, prompt="The capital of France is", max_tokens=8,
                                          temperature=0)
            check(t.choices[0].text.startswith(" Paris"), f"legacy completion: {t.choices[0].text!r}")
            stop = client.completions.create(model=NAME, prompt="The capital of France is", max_tokens=8,
                                             temperature=0, stop=["."])
            check(stop.choices[0].text == " Paris" and stop.choices[0].finish_reason == "stop",
                  f"a stop text ends the output before it: {stop.choices[0].text!r}")

            try:
                client.chat.completions.create(model=NAME, messages=msgs, logprobs=True)
                check(False, "logprobs refused")
            except openai.BadRequestError as e:
                check("logprobs" in str(e), f"an unsupported parameter is refused by name: {e}")
            try:
                client.chat.completions.create(model="nope", messages=msgs)
                check(False, "unknown model refused")
            except openai.NotFoundError as e:
                check("nope" in str(e), "an unknown model is a 404 naming it")
            req = urllib.request.Request(url + "/v1/chat/completions", data=b"{not json",
                                         headers={"Content-Type": "application/json"})
            try:
                urllib.request.urlopen(req, timeout=30)
                check(False, "garbage body refused")
            except urllib.error.HTTPError as e:
                body = json.loads(e.read())
                check(e.code == 400 and body["error"]["type"] == "invalid_request_error",
                      f"a body that is not JSON: 400 {body['error']['message']}")
        finally:
            node.terminate()
            node.wait(timeout=30)
    if failures:
        print(f"{len(failures)} check(s) failed")
        sys.exit(1)
    print("openai client: all checks passed")


if __name__ == "__main__":
    main()
