#!/usr/bin/env python3
"""POST /v1/embeddings of a node serving a sentence encoder (fixtures/embed-mini: a BERT encoder exported
by torch, its WordPiece tokenizer, mean pooling and normalization as its sentence-transformers modules say),
tested with the real `openai` SDK and plain HTTP against a real node.

Checks: the model list (kind, width, sequence, model ID, the lengths compiled: 32 and 64, each input run at the
shortest that holds it); embeddings through the SDK (its default base64
and explicit floats, the same bits) against the float model — the same ONNX file run by onnxruntime on
the tokens of the `tokenizers` library, pooled and normalized in numpy — cosine ≥ 0.9999 and the
largest difference ≤ 2e-3; the node's tokens equal the `tokenizers` library's on texts in many scripts,
with accents, control and zero-width characters, emoji and over-long words; token-ID inputs (a list,
a list of lists) embed like their text; every item's receipt checked by clients/python/verity_check.py
(signer, input hash from the tokens, output hash from the vector), a changed vector caught; `verity
verify` re-executing the saved response with the encoder directory (compiled by the verifier: the same
model ID), and refusing an altered one; a text longer than the compiled sequence refused
(context_length_exceeded) or, with `truncate`, cut with its closing [SEP] kept; errors in OpenAI's shape
for an unknown model, an unsupported parameter, other dimensions, a token outside the vocabulary, an
empty input list and a body that is not JSON; a node refusing to start on a directory without a model.
Exit status 1 on any failure.

    python tests/python/embeddings_client.py --verity target/release/verity
"""
import argparse
import base64
import json
import os
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request

import numpy as np
import onnxruntime as ort
import openai
from tokenizers import Tokenizer

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
sys.path.insert(0, os.path.join(ROOT, "clients", "python"))
from verity_check import VerityError, check_embeddings  # noqa: E402

DIR = os.path.join(ROOT, "fixtures", "embed-mini")
NAME = "embed-mini"

TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "A sentence embedding maps text to a vector.",
    "Le café est très chaud ce matin.",
    "Die Straßenbahn fährt über die Brücke.",
    "今天天气很好，我们去公园散步吧。",
    "Привет, как дела?",
    "",
]

# Texts the tokenizer must split exactly as the tokenizers library does.
TRICKY = TEXTS + [
    "ÉCOLE Naïve RÉSUMÉ façade",
    "tabs\tand\nnewlines\r\nand   many    spaces",
    "zero\u200bwidth and\u00a0no-break and\u3000ideographic spaces",
    "control\u0000chars\u0007here\u001f",
    "emoji 🙂👍🏽 and symbols ©®™ ∑∫√",
    "combining: e\u0301 a\u0308 n\u0303",
    "ΑΒΓ αβγ Ελληνικά",
    "नमस्ते दुनिया",
    "مرحبا بالعالم",
    "東京の桜は四月に咲きます",
    "https://example.org/path?q=1&x=2 alice@example.com",
    "don't won't can't hyphen-separated",
    "x" * 150,
    "supercalifragilisticexpialidocious antidisestablishmentarianism",
    "3.14159 2,718 1e-9 $42 20°C",
    "!!!???...,,,;;;",
]


def post(url, body, raw=False):
    data = body if raw else json.dumps(body).encode()
    req = urllib.request.Request(url + "/v1/embeddings", data=data,
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


class Reference:
    """The float model: the same ONNX file on the library tokenizer's IDs, pooled as the modules say."""

    def __init__(self):
        self.tok = Tokenizer.from_file(os.path.join(DIR, "tokenizer.json"))
        self.sess = ort.InferenceSession(os.path.join(DIR, "model.onnx"), providers=["CPUExecutionProvider"])

    def ids(self, text):
        return self.tok.encode(text).ids

    def embed(self, ids):
        x = np.array([ids], np.int64)
        h = self.sess.run(None, {"input_ids": x, "attention_mask": np.ones_like(x),
                                 "token_type_ids": np.zeros_like(x)})[0][0]
        v = h.mean(axis=0)
        return v / max(np.linalg.norm(v), 1e-12)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--verity", required=True)
    a = ap.parse_args()
    verity = os.path.abspath(a.verity)
    failures = []

    def check(ok, what):
        print(("ok   " if ok else "FAIL ") + what)
        if not ok:
            failures.append(what)

    ref = Reference()
    with tempfile.TemporaryDirectory() as tmp:
        node = subprocess.Popen(
            [verity, "node", "--listen", "127.0.0.1:0", "--data-dir", os.path.join(tmp, "node"),
             "--embedding", f"{NAME}={DIR}"],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=ROOT)
        try:
            url = next(w for w in node.stdout.readline().split() if w.startswith("http://"))
            client = openai.OpenAI(base_url=url + "/v1", api_key="unused")

            models = {m.id: m for m in client.models.list().data}
            info = (models.get(NAME).model_extra or {}).get("verity", {}) if NAME in models else {}
            check(info.get("kind") == "embedding" and info.get("dimensions") == 32
                  and info.get("sequence") == 64 and info.get("pooling") == "mean"
                  and info.get("normalize") is True,
                  f"GET /v1/models lists the encoder: {json.dumps(info)[:160]}")
            node_addr = json.loads(urllib.request.urlopen(url + "/v1/node").read())["address"]

            def inferences():
                text = urllib.request.urlopen(url + "/metrics").read().decode()
                return int(next(l.split()[-1] for l in text.splitlines()
                                if l.startswith("verity_inferences_total")))

            # The SDK's default (base64) and explicit floats: the same bits, close to the float model.
            before = inferences()
            r64 = client.embeddings.create(model=NAME, input=TEXTS)
            rf = client.embeddings.create(model=NAME, input=TEXTS, encoding_format="float")
            check(inferences() - before == 2 * len(TEXTS), "/metrics counts one inference per embedded input")
            traces = {d.model_extra["verity"]["receipt"]["receipt"]["trace_root"] for d in rf.data}
            check(traces == {"0x" + "00" * 32}, f"the receipts defer the trace (trace roots {sorted(traces)[:2]})")
            check(len(r64.data) == len(TEXTS) and all(d.index == i for i, d in enumerate(r64.data)),
                  f"{len(TEXTS)} embeddings in order")
            check(all(x.embedding == y.embedding for x, y in zip(r64.data, rf.data)),
                  "base64 and float encodings carry the same values")
            worst_cos, worst_diff = 1.0, 0.0
            for text, d in zip(TEXTS, rf.data):
                got = np.array(d.embedding)
                want = ref.embed(ref.ids(text))
                worst_cos = min(worst_cos, float(got @ want / np.linalg.norm(got) / np.linalg.norm(want)))
                worst_diff = max(worst_diff, float(np.abs(got - want).max()))
            check(worst_cos >= 0.9999 and worst_diff <= 2e-3,
                  f"against onnxruntime on the same file: worst cosine {worst_cos:.6f}, largest difference "
                  f"{worst_diff:.2e}")
            used = sum(len(ref.ids(t)) for t in TEXTS)
            check(rf.usage.prompt_tokens == used and rf.usage.total_tokens == used,
                  f"usage counts the {used} tokens")

            # Tokens as the tokenizers library makes them.
            s, body = post(url, {"model": NAME, "input": TRICKY, "truncate": True})
            mism = [t for t, d in zip(TRICKY, body.get("data", [])) if d["verity"]["tokens"] != ref.ids(t)[:64]]
            check(s == 200 and not mism and len(body["data"]) == len(TRICKY),
                  f"tokens equal the tokenizers library's on {len(TRICKY)} texts (mismatches: {mism[:2]})")

            # Token-ID inputs embed like their text.
            ids = [ref.ids(t) for t in TEXTS[:3]]
            one = client.embeddings.create(model=NAME, input=ids[0], encoding_format="float")
            many = client.embeddings.create(model=NAME, input=ids, encoding_format="float")
            check(one.data[0].embedding == rf.data[0].embedding
                  and [d.embedding for d in many.data] == [d.embedding for d in rf.data[:3]],
                  "token-ID inputs (a list, a list of lists) embed like their texts")

            # Receipts, checked offline from the SDK's response.
            try:
                signer = check_embeddings(r64, node=node_addr)
                check(signer.lower() == node_addr.lower(), "every receipt checks out (verity_check.check_embeddings)")
            except VerityError as e:
                check(False, f"receipts: {e}")
            altered = rf.model_dump()
            altered["data"][2]["embedding"][5] += 2.0 ** -16
            try:
                check_embeddings(altered, node=node_addr)
                check(False, "a changed vector is caught")
            except VerityError as e:
                check("embedding 2" in str(e), f"a changed vector is caught: {e}")

            # verity verify re-executes the saved response with the encoder directory.
            saved = os.path.join(tmp, "embeddings.json")
            with open(saved, "w") as f:
                json.dump(rf.model_dump(), f)
            v = subprocess.run([verity, "verify", saved, "--model", DIR, "--signer", node_addr],
                               capture_output=True, text=True, cwd=ROOT)
            check(v.returncode == 0 and "re-execution" in v.stdout,
                  f"verity verify --model DIR: {v.stdout.strip()[:160]}")
            bad = os.path.join(tmp, "altered.json")
            with open(bad, "w") as f:
                json.dump(altered, f)
            v = subprocess.run([verity, "verify", bad, "--model", DIR], capture_output=True, text=True, cwd=ROOT)
            check(v.returncode == 1, f"verity verify refuses the altered response: {v.stdout.strip()[:120]}")

            # Longer than the compiled sequence: refused, or truncated on request.
            long_text = " ".join(TEXTS[:4] * 4)
            s, body = post(url, {"model": NAME, "input": long_text})
            check(s == 400 and body["error"]["code"] == "context_length_exceeded",
                  f"a text past 64 tokens is refused: {body.get('error', {}).get('message', '')[:90]}")
            s, body = post(url, {"model": NAME, "input": long_text, "truncate": True})
            toks = body["data"][0]["verity"]["tokens"] if s == 200 else []
            want = ref.tok.encode(long_text)
            check(s == 200 and len(toks) == 64 and toks[0] == want.ids[0] and toks[-1] == want.ids[-1]
                  and toks[:63] == want.ids[:63],
                  "with truncate the first 63 tokens and the closing [SEP] are embedded")
            lengths = sorted(x["sequence"] for x in info.get("variants", []))
            ran = {(d.model_extra or {})["verity"]["sequence"] for d in rf.data}
            check(lengths == [32, 64] and ran == {32} and s == 200
                  and body["data"][0]["verity"]["sequence"] == 64
                  and body["data"][0]["verity"]["model_id"] != rf.data[0].model_extra["verity"]["model_id"],
                  f"compiled at {lengths}: short texts run at 32 positions, the truncated one at 64 (its own "
                  f"model ID)")

            for body, code, status, what in [
                ({"model": "nope", "input": "x"}, "model_not_found", 404, "an unknown model"),
                ({"model": NAME, "input": "x", "foo": 1}, "unsupported_parameter", 400, "an unsupported parameter"),
                ({"model": NAME, "input": "x", "dimensions": 16}, "unsupported_value", 400, "other dimensions"),
                ({"model": NAME, "input": [[1, 2, 99999]]}, "invalid_value", 400, "a token outside the vocabulary"),
                ({"model": NAME, "input": []}, "invalid_value", 400, "an empty input list"),
                ({"model": NAME, "input": {"a": 1}}, "invalid_value", 400, "an input of the wrong type"),
                ({"model": NAME, "input": "x", "encoding_format": "int8"}, "unsupported_value", 400,
                 "an unknown encoding"),
            ]:
                s, b = post(url, body)
                err = b.get("error", {})
                check(s == status and err.get("code") == code and err.get("message"),
                      f"{what}: {s} {err.get('code')} ({err.get('message', '')[:70]})")
            s, b = post(url, b"{not json", raw=True)
            check(s == 400 and b["error"]["code"] == "invalid_json", "a body that is not JSON: 400 invalid_json")
            try:
                client.embeddings.create(model="nope", input="x")
                check(False, "the SDK raises on an unknown model")
            except openai.NotFoundError as e:
                check("does not exist" in str(e), "the SDK raises NotFoundError on an unknown model")
        finally:
            node.terminate()
            node.wait(timeout=30)

        empty = os.path.join(tmp, "empty")
        os.makedirs(empty)
        p = subprocess.run([verity, "node", "--listen", "127.0.0.1:0", "--data-dir", os.path.join(tmp, "n2"),
                            "--embedding", empty], capture_output=True, text=True, cwd=ROOT, timeout=60)
        check(p.returncode != 0 and "model.onnx" in p.stderr,
              f"a directory without a model is refused at start: {p.stderr.strip()[-100:]}")

    if failures:
        print(f"{len(failures)} failures")
        sys.exit(1)
    print("all embedding checks passed")


if __name__ == "__main__":
    main()
