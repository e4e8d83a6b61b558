#!/usr/bin/env python3
"""The real OpenGradient SDK (PyPI `opengradient`) against a Verity devnet.

Starts `verity devnet` (anvil, contracts, 3 nodes, demo models), then calls
`opengradient.Alpha(private_key, rpc_url, inference_contract_address, api_url).infer(model, mode, inputs)`
exactly as an OpenGradient user would: VANILLA (a `signed` request) and ZKML/TEE (`quorum` requests).
Every output must equal `verity run` on the same model and input (as the SDK's float32), and the
request must be final on-chain with the output hash of that canonical execution. Also checks the SDK's
readable errors for an unknown model and a wrong-sized input. The devnet's nodes also serve the
development language model: the SDK's LLM client (`LLM.from_url`) chats with a node unmodified (plain
and streamed, the receipt's signature and time as its tee_signature and tee_timestamp), and a chat asked
with `?quorum=3` comes back with a quorum certificate that `verity verify --chain` accepts (and refuses
once a token is changed). Stops the devnet (SIGINT) at the end, whatever happens.
"""
import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

import numpy as np

LLM_FILE = ".models/SmolLM2-135M-Instruct.Q4_1.gguf"


def free_port_block(n):
    for base in range(21000, 60000, 97):
        ok = True
        for p in range(base, base + n):
            with socket.socket() as s:
                try:
                    s.bind(("127.0.0.1", p))
                except OSError:
                    ok = False
                    break
        if ok:
            return base
    raise RuntimeError("no free ports")


def post(url, body):
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    return json.loads(urllib.request.urlopen(req, timeout=600).read())


def llm_checks(a, s, tmp, failures):
    """The SDK's LLM client pointed at a node (`LLM.from_url`), unmodified; and a quorum-certified chat
    answer from three nodes drawn from the registry, its certificate checked against the chain."""
    import asyncio
    import opengradient
    question = [{"role": "user", "content": "What is 12 times 7?"}]
    api = s["nodes"][0]["url"]

    async def sdk():
        llm = opengradient.LLM.from_url(private_key=s["sdk_key"], llm_server_url=api)
        try:
            r = await llm.chat(model="verity/smollm2", messages=question, max_tokens=24, temperature=0.0)
            chunks = [c async for c in await llm.chat(model="verity/smollm2", messages=question, max_tokens=24,
                                                       temperature=0.0, stream=True)]
            return r, chunks
        finally:
            await llm.close()
    r, chunks = asyncio.run(sdk())
    text = r.chat_output["content"]
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    final = [c for c in chunks if c.is_final]
    print(f"opengradient LLM.from_url chat: {text!r}, streamed {streamed!r}, tee_signature {str(r.tee_signature)[:18]}…")
    if text != "12 times 7 is 72." or streamed != text:
        failures.append(f"the SDK's chat: {text!r} / streamed {streamed!r} (llama.cpp's greedy answer expected)")
    for what, sig, ts in [("chat", r.tee_signature, r.tee_timestamp)] + \
            [("stream", c.tee_signature, c.tee_timestamp) for c in final]:
        if not (isinstance(sig, str) and len(sig) == 132 and isinstance(ts, int)):
            failures.append(f"the SDK's {what} has no receipt signature and time: {sig!r} {ts!r}")
    if len(final) != 1:
        failures.append("the SDK's stream has no final chunk")

    # a quorum of 3 through another node: the same tokens, with a certificate
    body = {"model": "smollm2", "messages": question, "temperature": 0, "max_tokens": 24}
    one = post(api + "/v1/chat/completions", body)
    q = post(s["nodes"][-1]["url"] + "/v1/chat/completions?quorum=3", body)
    cert = q.get("certificate") or {}
    agreed = sorted(r["receipt"]["node"].lower() for r in cert.get("receipts", []))
    nodes = sorted(n["address"].lower() for n in s["nodes"])
    print(f"quorum chat: {q['choices'][0]['message']['content']!r} from {len(agreed)} nodes, {q.get('latency_ms')} ms")
    if not q.get("verified") or agreed != nodes or q["verity"]["output_tokens"] != one["verity"]["output_tokens"]:
        failures.append(f"the quorum chat: verified={q.get('verified')}, signers {agreed}, tokens "
                        f"{q['verity']['output_tokens']} vs {one['verity']['output_tokens']}")
    saved = os.path.join(tmp, "quorum-chat.json")
    contracts = os.path.join(tmp, "dn", "contracts.json")

    def verify(doc):
        with open(saved, "w") as f:
            json.dump(doc, f)
        return subprocess.run([a.verity, "verify", saved, "--chain", s["rpc"], "--contracts", contracts],
                              capture_output=True, text=True, timeout=120)
    p = verify(q)
    print(f"verity verify quorum-chat.json --chain …: {p.stdout.strip()[:120]}")
    if p.returncode != 0 or "valid quorum certificate" not in p.stdout:
        failures.append(f"the quorum chat's certificate: {p.stdout.strip()} {p.stderr.strip()}")
    forged = json.loads(json.dumps(q))
    forged["verity"]["output_tokens"][0] += 1
    p = verify(forged)
    if p.returncode != 1 or "certificate says" not in p.stdout:
        failures.append(f"a quorum answer with a changed token was not refused: {p.stdout.strip()}")
    try:
        post(api + "/v1/chat/completions?quorum=9", body)
        failures.append("quorum=9 accepted")
    except urllib.error.HTTPError as e:
        if e.code != 400:
            failures.append(f"quorum=9: HTTP {e.code}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--verity", default="target/release/verity")
    ap.add_argument("--anvil", default=".tools/node_modules/.bin/anvil")
    a = ap.parse_args()
    import opengradient
    from opengradient.types import InferenceMode

    tmp = tempfile.mkdtemp(prefix="verity-og-")
    print(f"devnet directory (logs): {tmp}")
    port = free_port_block(6)
    log = open(os.path.join(tmp, "devnet.out"), "w")
    dn = subprocess.Popen([a.verity, "devnet", "--dir", os.path.join(tmp, "dn"), "--port", str(port),
                           "--anvil", a.anvil, "--models", "fixtures", "--llm", f"smollm2={LLM_FILE}",
                           "--llm-context", "256"], stdout=log, stderr=subprocess.STDOUT)
    failures = []
    try:
        summary_path = os.path.join(tmp, "dn", "devnet.json")
        deadline = time.time() + 240
        while not os.path.exists(summary_path):
            if dn.poll() is not None or time.time() > deadline:
                log.flush()
                print(open(log.name).read())
                raise SystemExit("devnet did not come up")
            time.sleep(0.5)
        time.sleep(0.5)
        s = json.load(open(summary_path))
        og_addr = s["contracts"]["opengradient"]
        api = s["nodes"][0]["url"]
        alpha = opengradient.Alpha(private_key=s["sdk_key"], rpc_url=s["rpc"],
                                   inference_contract_address=og_addr, api_url=api)
        from web3 import Web3
        w3 = Web3(Web3.HTTPProvider(s["rpc"]))
        for name in ["mlp", "cnn"]:
            model = next(m for m in s["models"] if m["name"] == name)
            vty = os.path.join(tmp, "dn", "models", f"{name}.vty")
            inp = json.load(open(f"fixtures/{name}.input.json"))
            run = json.loads(subprocess.check_output([a.verity, "run", vty, "--input", f"fixtures/{name}.input.json"]))
            expected = {k: np.array(o["data"], dtype=np.float64).reshape(o["shape"]) for k, o in run["outputs"].items()}
            # The SDK takes numpy arrays per input name.
            if isinstance(inp, dict) and all(isinstance(v, dict) and "data" in v for v in inp.values()):
                inputs = {k: np.array(v["data"], dtype=np.float32).reshape(v["shape"]) for k, v in inp.items()}
            else:
                raise SystemExit(f"unexpected input format in fixtures/{name}.input.json")
            for ref, mode in [(f"{name}@1.0.0", InferenceMode.VANILLA), (model["model_id"], InferenceMode.ZKML),
                              (name, InferenceMode.TEE)]:
                t0 = time.time()
                res = alpha.infer(ref, mode, inputs)
                dt = time.time() - t0
                out = res.model_output
                for oname, want in expected.items():
                    got = np.asarray(out.get(oname))
                    if got.shape != want.shape or not np.array_equal(got.astype(np.float32), want.astype(np.float32)):
                        failures.append(f"{name} {mode.name}: output {oname} differs: {got.ravel()[:4]} vs {want.ravel()[:4]}")
                gas = w3.eth.get_transaction_receipt(res.transaction_hash)["gasUsed"]
                print(f"{name:4s} {mode.name:8s} tx {res.transaction_hash[:18]}… {dt:5.1f} s  gas {gas:,}  outputs equal `verity run`"
                      if not failures else f"{name} {mode.name}: FAILED")
        # Chain state: every request final, its input hash fixed by the front door (receipts had to match it).
        hub_abi = json.load(open("contracts/artifacts/InferenceHub.json"))["abi"]
        hub = w3.eth.contract(address=Web3.to_checksum_address(s["contracts"]["hub"]), abi=hub_abi)
        n = hub.functions.requestCount().call()
        for rid in range(1, n + 1):
            r = hub.functions.getRequest(rid).call()
            if r[3] != 2:
                failures.append(f"request {rid} is not finalized (status {r[3]})")
            if r[7] == bytes(32):
                failures.append(f"request {rid} has no input hash: the front door must fix it")
        print(f"{n} requests on-chain, all finalized" if n >= 6 else f"only {n} requests")
        if n < 6:
            failures.append("expected 6 requests")
        # Mistakes are refused on-chain with a sentence the SDK user can read (not a custom error's hex).
        mlp_inputs = {k: np.array(v["data"], dtype=np.float32).reshape(v["shape"])
                      for k, v in json.load(open("fixtures/mlp.input.json")).items()}
        short = {k: v.ravel()[:3] for k, v in mlp_inputs.items()}
        for what, model, inputs, want in [
            ("an unknown model", "no-such-model", {"x": np.zeros(2, dtype=np.float32)},
             "OpenGradientInference: unknown model 'no-such-model'"),
            ("a wrong-sized input", "mlp", short,
             "OpenGradientInference: bad input: an input has the wrong number of elements"),
        ]:
            try:
                alpha.infer(model, InferenceMode.VANILLA, inputs)
                failures.append(f"{what} was accepted")
            except Exception as e:  # noqa: BLE001 - the SDK raises web3's ContractLogicError
                if want not in str(e):
                    failures.append(f"{what} gave an unreadable error: {e}")
                print(f"{what} refused: {str(e)[:160]}")
        llm_checks(a, s, tmp, failures)
    finally:
        dn.send_signal(signal.SIGINT)
        try:
            dn.wait(timeout=30)
        except subprocess.TimeoutExpired:
            dn.kill()
    if failures:
        print("FAILURES:\n" + "\n".join(failures))
        sys.exit(1)
    print("opengradient SDK: all checks passed")


if __name__ == "__main__":
    main()
