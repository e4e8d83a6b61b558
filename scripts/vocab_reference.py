#!/usr/bin/env python3
"""Token IDs llama.cpp gives prompts that contain special tokens (special-token parsing on, no BOS
added), on the real vocabularies `scripts/setup-models` extracts into .models/vocab/: the fixture
`crates/llm/tests/fixtures/vocab_special.json` that `tests/vocab.rs` checks the tokenizers against.

Needs llama-cpp-python (0.3.36); run: python scripts/vocab_reference.py [--out FILE]."""
import argparse
import json
import os

import llama_cpp

CASES = {
    "llama-spm": [
        "<s>[INST] What is 2+2? [/INST]",
        "<s> Hello</s><s>again </s>",
        "Text with </s> in the middle and <unk> too",
        "  leading spaces<s>   and after",
    ],
    "phi-3": [
        "<|user|>\nWhat is 2+2?<|end|>\n<|assistant|>\n",
        "<|system|>\nBe brief.<|end|>\n<|user|>\nHi<|end|>\n<|assistant|>",
        "<s><|user|> spaced <|end|>  <|assistant|>",
    ],
    "llama-bpe": [
        "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHi there<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n",
        "x<|eot_id|>y <|eot_id|> z",
    ],
    "qwen2": [
        "<|im_start|>system\nYou are helpful.<|im_end|>\n<|im_start|>user\n123 tokens<|im_end|>\n"
        "<|im_start|>assistant\n",
        "<|endoftext|>a<|im_end|><|im_start|>",
    ],
}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--vocab-dir", default=".models/vocab")
    ap.add_argument("--out", default="crates/llm/tests/fixtures/vocab_special.json")
    a = ap.parse_args()
    out = {"llama_cpp_python": llama_cpp.__version__, "vocabularies": {}}
    for name, texts in CASES.items():
        path = os.path.join(a.vocab_dir, f"ggml-vocab-{name}.gguf")
        llm = llama_cpp.Llama(model_path=path, vocab_only=True, verbose=False)
        out["vocabularies"][name] = [
            {"text": t, "ids": llm.tokenize(t.encode(), add_bos=False, special=True)}
            for t in texts
        ]
    with open(a.out, "w") as f:
        json.dump(out, f, indent=1, ensure_ascii=False)
        f.write("\n")


if __name__ == "__main__":
    main()
