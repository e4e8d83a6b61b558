"""A chat with a Verity node through the unmodified `openai` SDK, streamed and checked as it arrives.

    python clients/python/chat_demo.py --base-url http://127.0.0.1:8546/v1 --model smollm2 \
        --node 0xNODE --save chat-stream.json

Streams one chat completion, checking every chunk against the node's signed running hash
(`verity_check.StreamChecker`) and the receipt in the last chunk; then replays the same chunks with one
token's text changed, as a proxy between client and node could, and shows the check refusing it at that
chunk. `--save` writes the streamed answer (tokens, text, receipt) for `verity verify`. Needs `openai` and
`eth_account`; exits 1 if any check fails.
"""
import argparse
import copy
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from openai import OpenAI  # noqa: E402

from verity_check import StreamChecker, VerityError  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--base-url", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--node", help="the address the node signs with (default: whoever signs the first chunk)")
    ap.add_argument("--prompt", default="Name three colours of the rainbow.")
    ap.add_argument("--max-tokens", type=int, default=24)
    ap.add_argument("--save", help="write the streamed completion here (JSON)")
    a = ap.parse_args()

    client = OpenAI(base_url=a.base_url, api_key="-")
    chunks = []
    checker = StreamChecker(node=a.node)
    text = []
    stream = client.chat.completions.create(
        model=a.model,
        messages=[{"role": "user", "content": a.prompt}],
        temperature=0,
        max_tokens=a.max_tokens,
        stream=True,
    )
    for chunk in stream:
        chunks.append(chunk.model_dump())
        text.append(checker.feed(chunk))
    receipts = checker.finish()
    receipt = receipts[0]
    answer = "".join(text)
    print(f"streamed  {answer!r}")
    print(f"          {len(chunks)} chunks, each checked against the running hash signed by "
          f"{receipt['receipt']['node']}; the last one's receipt signs exactly these "
          f"{len(checker.tokens.get(0, []))} tokens")

    # A proxy that changes one streamed piece of text: the chunk no longer extends the signed hash.
    altered = copy.deepcopy(chunks)
    k = next(i for i, c in enumerate(altered) if c["choices"] and (c["choices"][0].get("delta") or {}).get("content"))
    altered[k]["choices"][0]["delta"]["content"] += " (edited)"
    tamper = StreamChecker(node=receipt["receipt"]["node"])
    try:
        for c in altered:
            tamper.feed(c)
        tamper.finish()
        print("altered   the altered stream was accepted: the check is broken", file=sys.stderr)
        return 1
    except VerityError as e:
        print(f"altered   a proxy's edit of chunk {k} is refused at that chunk: {e}")

    if a.save:
        last = chunks[-1]
        doc = {
            "object": "chat.completion",
            "model": a.model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": answer},
                         "finish_reason": last["choices"][0].get("finish_reason")}],
            "verity": last.get("verity"),
            "receipt": last.get("receipt"),
        }
        with open(a.save, "w") as f:
            json.dump(doc, f, indent=1)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except VerityError as e:
        print(f"verity check failed: {e}", file=sys.stderr)
        sys.exit(1)
