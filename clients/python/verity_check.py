"""Check a Verity node's OpenAI-compatible answers from Python, offline.

A completion from a Verity node carries `verity` fields (prompt and output token IDs, sampling
parameters) and an EIP-712 `receipt` signed by the node; a streamed completion carries, in every
chunk with text, the chunk's token IDs and a running hash signed by the node (docs/spec/llm.md §7).
This module checks both with `eth_account` and `eth_hash` alone:

    from verity_check import check_completion, StreamChecker

    r = client.chat.completions.create(model=..., messages=...)
    check_completion(r, node="0x...")          # raises VerityError if anything does not match

    checker = StreamChecker(node="0x...")
    for chunk in client.chat.completions.create(..., stream=True):
        text = checker.feed(chunk)             # raises at the first altered, dropped or forged chunk
    checker.finish()                           # every choice ended with a receipt for its tokens

An embeddings response carries, for every input, its token IDs and a receipt whose input hash is
the tokens made into the encoder's inputs and whose output hash is the embedding (docs/spec/embeddings.md):

    from verity_check import check_embeddings

    r = client.embeddings.create(model=..., input=[...])
    check_embeddings(r, node="0x...")          # raises VerityError if any vector is not the signed one

`node` is the address the client trusts (from the chain's registry or the node's own
`GET /v1/models`); without it the checks prove only that one key signed everything consistently.
Re-executing the generation itself is `verity verify response.json --model FILE.gguf`; an embeddings
response, `verity verify response.json --model ENCODER_DIR`.
"""
from eth_account import Account
from eth_account.messages import encode_defunct, encode_typed_data
from eth_hash.auto import keccak

__all__ = ["VerityError", "tokens_hash", "input_hash", "receipt_signer", "check_completion",
           "StreamChecker", "tensors_hash", "check_embeddings"]


class VerityError(Exception):
    """An answer that does not match its evidence."""


def _dict(x):
    """An `openai` response object or a plain dict, as a dict."""
    return x.model_dump() if hasattr(x, "model_dump") else x


def _b32(h):
    return bytes.fromhex(h[2:] if h.startswith("0x") else h)


def tokens_hash(ids):
    """keccak256 of token IDs, each 4 bytes big-endian (what a receipt binds as its output)."""
    return "0x" + keccak(b"".join(int(t).to_bytes(4, "big") for t in ids)).hex()


def input_hash(v):
    """The input hash a completion's receipt binds, from its `verity` fields: the prompt's tokens, the
    sampler's fixed-point parameters and seed, the token budget, the stop texts and the JSON format."""
    s, fp = v["sampling"], v["sampling"]["fixed_point"]
    b = b"verity.completion.v1" + _b32(tokens_hash(v["prompt_tokens"]))
    for x in (fp["temperature"], s["top_k"], fp["top_p"], fp["repetition_penalty"]):
        b += int(x).to_bytes(4, "big")
    b += int(s["seed"]).to_bytes(8, "big") + int(v["max_tokens"]).to_bytes(8, "big")
    stops = b"".join(len(x.encode()).to_bytes(4, "big") + x.encode() for x in v["stop"])
    b += keccak(stops)
    if v.get("response_format") == "json_object":
        b += b"json_object"
    return "0x" + keccak(b).hex()


def receipt_signer(signed):
    """The address that signed a Verity receipt (EIP-712, docs/spec/receipts.md)."""
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


def _merkle_root(leaves):
    """The binary keccak tree's root: an unpaired node at the end of a level is paired with zero."""
    if not leaves:
        return bytes(32)
    level = list(leaves)
    while len(level) > 1:
        if len(level) % 2:
            level.append(bytes(32))
        level = [keccak(level[i] + level[i + 1]) for i in range(0, len(level), 2)]
    return level[0]


def _elements_root(values):
    """A tensor's elements root: 8 elements (32-bit big-endian two's complement) per leaf word, the
    last word zero-padded, and the element count bound in."""
    packed = b"".join(int(x).to_bytes(4, "big", signed=True) for x in values)
    packed += bytes(-len(packed) % 32)
    leaves = [keccak(packed[i:i + 32]) for i in range(0, len(packed), 32)]
    return keccak(len(values).to_bytes(8, "big") + _merkle_root(leaves))


def tensors_hash(tensors):
    """The hash a receipt binds for a list of integer tensors (its input or its output)."""
    roots = [_elements_root(t) for t in tensors]
    return "0x" + keccak(len(roots).to_bytes(8, "big") + _merkle_root(roots)).hex()


def _embedding_ints(values, scale):
    ints = []
    for f in values:
        x = float(f) * 2.0 ** scale
        if x != int(x):
            raise VerityError(f"an embedding value {f} is not a multiple of 2^-{scale}")
        ints.append(int(x))
    return ints


def check_embeddings(response, node=None):
    """Checks an embeddings response: each item's receipt signature (by `node` if given), its input
    hash against the item's tokens padded into the encoder's inputs, and its output hash against the
    item's vector. Returns the signer's address; raises VerityError."""
    d = _dict(response)
    info = d.get("verity") or {}
    for k in ("inputs", "sequence", "pad_id", "scale", "model_id"):
        if k not in info:
            raise VerityError(f"the response carries no verity.{k}")
    pad = int(info["pad_id"])
    variants = {x["model_id"]: x for x in info.get("variants", [])}
    signer = node
    for item in d["data"]:
        what = f"embedding {item['index']}"
        v = item.get("verity") or {}
        if "receipt" not in v:
            raise VerityError(f"{what} has no receipt")
        r = v["receipt"]["receipt"]
        s = receipt_signer(v["receipt"])
        if s.lower() != r["node"].lower():
            raise VerityError(f"{what}: the receipt names {r['node']} but {s} signed it")
        if signer is not None and s.lower() != signer.lower():
            raise VerityError(f"{what}: signed by {s}, not by {signer}")
        signer = s
        # the compiled length the item ran at (each has its model ID, output scale and inputs)
        variant = variants.get(v.get("model_id"), info)
        if r["model_id"] != variant["model_id"]:
            raise VerityError(f"{what}: the model is not the one the receipt signs")
        seq, scale = int(variant["sequence"]), int(variant["scale"])
        tokens = [int(t) for t in v["tokens"]]
        if len(tokens) > seq:
            raise VerityError(f"{what}: {len(tokens)} tokens, more than the sequence of {seq}")
        inputs = []
        for name in variant["inputs"]:
            if name == "input_ids":
                inputs.append(tokens + [pad] * (seq - len(tokens)))
            elif name == "attention_mask":
                inputs.append([1] * len(tokens) + [0] * (seq - len(tokens)))
            else:
                inputs.append([0] * seq)
        if tensors_hash(inputs) != r["input_hash"]:
            raise VerityError(f"{what}: its tokens are not the input the receipt signs")
        if tensors_hash([_embedding_ints(item["embedding"], scale)]) != r["output_hash"]:
            raise VerityError(f"{what}: the vector is not the output the receipt signs")
    return signer


def _check_one(v, signed, node, what):
    signer = receipt_signer(signed)
    r = signed["receipt"]
    if signer.lower() != r["node"].lower():
        raise VerityError(f"{what}: the receipt names {r['node']} but {signer} signed it")
    if node is not None and signer.lower() != node.lower():
        raise VerityError(f"{what}: signed by {signer}, not by {node}")
    if tokens_hash(v["output_tokens"]) != r["output_hash"]:
        raise VerityError(f"{what}: the output tokens are not the ones the receipt signs")
    if input_hash(v) != r["input_hash"]:
        raise VerityError(f"{what}: the prompt and parameters are not the ones the receipt signs")
    if v["model_id"] != r["model_id"]:
        raise VerityError(f"{what}: the model is not the one the receipt signs")
    return signer


def check_completion(response, node=None):
    """Checks a (non-streamed) completion: each receipt's signature (by `node` if given), its output
    tokens and its prompt and parameters. Returns the signer's address; raises VerityError."""
    d = _dict(response)
    signer = _check_one(d["verity"], d["receipt"], node, "the completion")
    for c in d["choices"]:
        if c.get("receipt") is not None:
            _check_one(c["verity"], c["receipt"], signer, f"choice {c['index']}")
    return signer


def _stream_start(request_id, index):
    return keccak(b"verity.stream.v1" + _b32(request_id) + int(index).to_bytes(4, "big"))


def _stream_next(prev, tokens, text):
    body = len(tokens).to_bytes(4, "big") + b"".join(int(t).to_bytes(4, "big") for t in tokens)
    return keccak(prev + body + text.encode())


class StreamChecker:
    """Checks a streamed completion chunk by chunk: each chunk's text and tokens extend a running
    hash that the node signs, so an altered, inserted, dropped or reordered chunk fails at once."""

    def __init__(self, node=None):
        self.node = node
        self.request_id = None
        self.chains = {}   # choice index -> running hash
        self.tokens = {}   # choice index -> tokens so far
        self.done = {}     # choice index -> receipt checked

    def feed(self, chunk):
        """Checks one chunk (an `openai` chunk object or a dict); returns its text."""
        d = _dict(chunk)
        if d.get("error"):
            raise VerityError(f"the stream reports an error: {d['error']}")
        texts = []
        for c in d.get("choices") or []:
            i = c["index"]
            delta = c.get("delta") or {}
            text = delta.get("content") if "delta" in c else c.get("text")
            text = text or ""
            v = d.get("verity") or {}
            if c.get("finish_reason"):
                self._finish_choice(i, v, d.get("receipt"))
            elif "stream_hash" in v:
                self._chunk(i, v, text)
            elif text:
                raise VerityError(f"choice {i}: a chunk with text and no signed hash")
            texts.append(text)
        return "".join(texts)

    def _chunk(self, i, v, text):
        if v["index"] != i:
            raise VerityError(f"choice {i}: the signed chunk is for choice {v['index']}")
        if self.request_id is None:
            self.request_id = v["request_id"]
        elif v["request_id"] != self.request_id:
            raise VerityError("a chunk of another request")
        prev = self.chains.get(i) or _stream_start(self.request_id, i)
        h = _stream_next(prev, v["tokens"], text)
        signer = Account.recover_message(encode_defunct(primitive=h), signature=v["signature"])
        if self.node is None:
            self.node = signer
        if signer.lower() != self.node.lower():
            raise VerityError(f"choice {i}: a chunk that the node did not send this way "
                              f"(its running hash recovers to {signer})")
        self.chains[i] = h
        self.tokens.setdefault(i, []).extend(v["tokens"])

    def _finish_choice(self, i, v, signed):
        if signed is None or not v:
            raise VerityError(f"choice {i}: the last chunk carries no receipt")
        if self.request_id is not None and signed["receipt"]["request_id"] != self.request_id:
            raise VerityError(f"choice {i}: the receipt is for another request")
        if self.tokens.get(i, []) != v["output_tokens"]:
            raise VerityError(f"choice {i}: the streamed tokens are not the ones the receipt signs")
        self.node = _check_one(v, signed, self.node, f"choice {i}")
        self.done[i] = signed

    def finish(self):
        """After the stream: every choice that streamed ended with its receipt. Returns the receipts."""
        missing = sorted(set(self.tokens) - set(self.done))
        if missing or not self.done:
            raise VerityError(f"the stream ended without the receipt of choice(s) {missing or [0]}")
        return [self.done[i] for i in sorted(self.done)]
