#!/usr/bin/env python3
"""The OpenAI-compatible API of a node serving a GGUF language model, tested with the real `openai`
SDK and plain HTTP against a real node (SmolLM2-135M-Instruct, fetched by scripts/setup-models).

Checks: the model list; a greedy chat completion (llama.cpp's own greedy answer on the same file,
token for token with `verity generate`); its receipt (EIP-712, recovered with eth_account to the
node's address; output hash = keccak of the token IDs); the same completion streamed (text, receipt
and usage in the last frames, every chunk's signed running hash checked by clients/python/verity_check.py);
a proxy that alters one streamed chunk, caught at that chunk; a seeded sample (the same twice, equal to `verity generate` with the
same parameters, another seed another text); n = 2 (seeds s and s + 1, a receipt each, streamed
too); 4 concurrent streams (interleaved, sharing several-generation steps, each with its tokens alone); response_format json_object (one JSON object, re-executed by `verity verify`); `verity verify` re-executing a saved completion (a
changed token or seed fails); legacy completions; and errors in OpenAI's shape for an
unsupported parameter, an unknown model and a body that is not JSON; a streaming client that goes
away stopping its generation; a burst past a node's queue refused 503 `overloaded`; a node refusing to start on a
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

import http.server
import threading

import openai

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
sys.path.insert(0, os.path.join(ROOT, "clients", "python"))
from verity_check import StreamChecker, VerityError, check_completion, receipt_signer, tokens_hash  # noqa: E402
MODEL_FILE = ".models/SmolLM2-135M-Instruct.Q4_1.gguf"
NAME = "smollm2"
QUESTION = "What is 12 times 7?"


def start_altering_proxy(upstream, alter_chunk):
    """A proxy in front of the node that appends '!' to the text of the alter_chunk-th (0-based) SSE
    chunk of every streamed answer: what a tampering middlebox would do."""
    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_POST(self):
            body = self.rfile.read(int(self.headers["Content-Length"]))
            req = urllib.request.Request(upstream + self.path, data=body,
                                         headers={"Content-Type": "application/json"})
            with urllib.request.urlopen(req, timeout=300) as up:
                self.send_response(up.status)
                self.send_header("Content-Type", up.headers["Content-Type"])
                self.end_headers()
                n = 0
                for line in up:
                    if line.startswith(b"data: {"):
                        if n == alter_chunk:
                            d = json.loads(line[6:])
                            d["choices"][0]["delta"]["content"] += "!"
                            line = b"data: " + json.dumps(d).encode() + b"\n"
                        n += 1
                    self.wfile.write(line)
                    self.wfile.flush()

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv, f"http://127.0.0.1:{srv.server_address[1]}"


def overload_checks(verity, tmp, check):
    """A node that runs one generation at a time and queues 4: a burst of 12 requests gets 503
    `overloaded` for what does not fit (never a hang), the admitted ones their full answers, and the node
    serves again afterwards."""
    node = subprocess.Popen(
        [verity, "node", "--listen", "127.0.0.1:0", "--data-dir", os.path.join(tmp, "small"), "--llm",
         f"{NAME}={MODEL_FILE}", "--llm-context", "128", "--llm-sequences", "1"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=ROOT)
    try:
        url = next(w for w in node.stdout.readline().split() if w.startswith("http://"))
        body = json.dumps({"model": NAME, "prompt": "Once upon a time", "max_tokens": 24,
                           "temperature": 0}).encode()
        codes = []

        def one():
            req = urllib.request.Request(url + "/v1/completions", data=body,
                                         headers={"Content-Type": "application/json"})
            try:
                d = json.loads(urllib.request.urlopen(req, timeout=300).read())
                codes.append((200, d["usage"]["completion_tokens"]))
            except urllib.error.HTTPError as e:
                codes.append((e.code, json.loads(e.read())["error"]["code"]))
        burst = [threading.Thread(target=one) for _ in range(12)]
        for t in burst:
            t.start()
        for t in burst:
            t.join(timeout=300)
        ok = [c for c in codes if c[0] == 200]
        refused = [c for c in codes if c[0] == 503]
        check(len(codes) == 12 and ok and refused and all(c[1] == "overloaded" for c in refused)
              and all(c[1] == 24 for c in ok) and len(ok) + len(refused) == 12,
              f"a burst past the queue: {len(ok)} answered in full, {len(refused)} refused 503 overloaded")
        one()
        check(codes[-1] == (200, 24), "the node serves again after the burst")
    finally:
        node.terminate()
        node.wait(timeout=30)


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
            check(receipt_signer(rec).lower() == node_address.lower() == rec["receipt"]["node"].lower(),
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

            # the helper: the completion and every streamed chunk check against the node's address
            check(check_completion(c, node=node_address).lower() == node_address.lower(),
                  "verity_check.check_completion accepts the completion")
            checker = StreamChecker(node=node_address)
            try:
                for ch in chunks:
                    checker.feed(ch)
                checker.finish()
                check(True, "verity_check.StreamChecker accepts every streamed chunk and the receipt")
            except VerityError as e:
                check(False, f"StreamChecker refused an untouched stream: {e}")
            try:
                check_completion(c, node="0x" + "11" * 20)
                check(False, "a completion checked against another node's address fails")
            except VerityError as e:
                check("not by" in str(e), f"another node's address: {e}")

            # a proxy that alters one chunk's text: the client's checker stops at that very chunk
            proxy, proxy_url = start_altering_proxy(url, alter_chunk=3)
            try:
                via = openai.OpenAI(base_url=proxy_url + "/v1", api_key="x", max_retries=0, timeout=300)
                checker, seen, caught = StreamChecker(node=node_address), 0, None
                for ch in via.chat.completions.create(model=NAME, messages=msgs, temperature=0, max_tokens=24,
                                                      stream=True):
                    try:
                        checker.feed(ch)
                    except VerityError as e:
                        caught = (seen, str(e))
                        break
                    seen += 1
                check(caught is not None and caught[0] == 3,
                      f"an altered chunk is detected at once (chunk {caught and caught[0]}): {caught and caught[1]}")
            finally:
                proxy.shutdown()

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

            # n choices: choice i draws with seed + i, each with its own receipt
            many = client.chat.completions.create(model=NAME, messages=msgs, temperature=1.0, top_p=0.95,
                                                  seed=7, max_tokens=24, n=2)
            got = [ch.model_extra["verity"]["output_tokens"] for ch in many.choices]
            check(got == [s7[0], s8[0]], "n=2: the choices are the samples of seeds 7 and 8")
            check(many.usage.completion_tokens == len(got[0]) + len(got[1]), "n=2: usage counts both choices")
            check(check_completion(many, node=node_address).lower() == node_address.lower(),
                  "n=2: each choice's receipt checks")
            checker = StreamChecker(node=node_address)
            texts = {}
            for ch in client.chat.completions.create(model=NAME, messages=msgs, temperature=1.0, top_p=0.95,
                                                     seed=7, max_tokens=24, n=2, stream=True):
                t = checker.feed(ch)
                for c in ch.choices:
                    texts[c.index] = texts.get(c.index, "") + t
            check(len(checker.finish()) == 2 and texts == {0: s7[1], 1: s8[1]},
                  "n=2 streamed: both choices' text, each chunk and receipt checked")

            # concurrent clients: their generations interleave on the node, each with the tokens it has alone
            alone = {sd: sample(sd)[0] for sd in (11, 12, 13, 14)}
            results, spans = {}, {}

            def stream_one(sd):
                chk, first, toks = StreamChecker(node=node_address), None, []
                for ch in client.chat.completions.create(model=NAME, messages=msgs, temperature=1.0, top_p=0.95,
                                                         seed=sd, max_tokens=24, stream=True):
                    chk.feed(ch)
                    if first is None and ch.choices and ch.choices[0].delta.content:
                        first = time.monotonic()
                results[sd] = chk.finish()[0]["receipt"]["output_hash"]
                spans[sd] = (first, time.monotonic())
            workers = [threading.Thread(target=stream_one, args=(sd,)) for sd in alone]
            for w in workers:
                w.start()
            for w in workers:
                w.join(timeout=300)
            check(results == {sd: tokens_hash(t) for sd, t in alone.items()},
                  "4 concurrent streams: each gives the tokens it gives alone (checked chunk by chunk)")
            overlap = any(spans[x][0] < spans[y][1] and spans[y][0] < spans[x][1]
                          for x in spans for y in spans if x < y and None not in spans[x] + spans[y])
            check(overlap, "concurrent generations run interleaved (one started before another ended)")
            metrics = urllib.request.urlopen(url + "/metrics", timeout=30).read().decode()
            batched = next((float(l.split()[-1]) for l in metrics.splitlines()
                            if l.startswith(f'verity_llm_tokens_total{{model="{NAME}",step="batched"}}')), 0)
            check(batched > 0, f"concurrent generations share steps ({batched:.0f} tokens run in "
                  "several-generation steps, each generation with its tokens alone)")

            # JSON mode: the output is one JSON object (the same request without it is not JSON)
            ask = [{"role": "user", "content": "Describe a cat as JSON with a name and an age."}]
            plain = client.chat.completions.create(model=NAME, messages=ask, temperature=0, max_tokens=60)
            js = client.chat.completions.create(model=NAME, messages=ask, temperature=0, max_tokens=60,
                                                response_format={"type": "json_object"})
            try:
                obj = json.loads(js.choices[0].message.content)
            except ValueError:
                obj = None
            check(isinstance(obj, dict) and js.choices[0].finish_reason == "stop",
                  f"response_format json_object gives one JSON object: {js.choices[0].message.content!r}")
            try:
                json.loads(plain.choices[0].message.content)
                check(False, "without json_object the model's answer is not bare JSON (the test would prove nothing)")
            except ValueError:
                check(True, f"without json_object the answer is not bare JSON: {plain.choices[0].message.content[:40]!r}")
            check(js.model_extra["verity"]["response_format"] == "json_object" and
                  check_completion(js, node=node_address) is not None, "the JSON-mode receipt binds the format")
            gen_js = json.loads(subprocess.run(
                [verity, "generate", MODEL_FILE, "--chat", "--prompt", ask[0]["content"], "--max-tokens", "60",
                 "--context", "256", "--json-object", "--json"], cwd=ROOT, capture_output=True, text=True,
                check=True).stdout)
            check(gen_js["output_tokens"] == js.model_extra["verity"]["output_tokens"] and
                  gen_js["input_hash"] == js.model_extra["receipt"]["receipt"]["input_hash"],
                  "verity generate --json-object gives the same tokens and input hash")
            try:
                client.chat.completions.create(model=NAME, messages=ask, response_format={"type": "json_schema"})
                check(False, "json_schema refused")
            except openai.BadRequestError as e:
                check("json_schema" in str(e), f"an unsupported response_format is refused: {e}")

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
            p = verify(many.model_dump(), model=False)
            check(p.returncode == 0 and "each of the 2 choices" in p.stdout, f"verity verify on n=2: {p.stdout.strip()}")
            p = verify(js.model_dump())
            check(p.returncode == 0 and "re-execution gives the same" in p.stdout,
                  f"verity verify re-executes the JSON-mode completion: {p.stdout.strip()}")

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
        overload_checks(verity, tmp, check)
    if failures:
        print(f"{len(failures)} check(s) failed")
        sys.exit(1)
    print("openai client: all checks passed")


if __name__ == "__main__":
    main()
