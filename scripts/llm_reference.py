"""Reference results of llama.cpp (through llama-cpp-python) for verity-llm's agreement test.

Writes crates/llm/tests/fixtures/smollm2_llama_cpp.json: for a few prompts, llama.cpp's token IDs, its
greedy continuation, and its ten largest logits at every position of prompt + continuation (teacher
forced on its own tokens); and the token IDs llama.cpp's tokenizer gives for varied texts.

llama.cpp is not part of the test suite (it takes minutes to build); run this by hand after changing
the prompts or the model:
    python scripts/llm_reference.py --model .models/SmolLM2-135M-Instruct.Q4_1.gguf
(llama-cpp-python 0.3.36 built as docs/llm.md describes.)
"""
import argparse
import hashlib
import json
import os

import jinja2
import numpy as np
import llama_cpp
import gguf

PROMPTS = [
    ("plain", "The capital of France is", False),
    ("code", "def fibonacci(n):\n    ", False),
    ("chat", "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
             "<|im_start|>user\nWhat is 12 times 7?<|im_end|>\n<|im_start|>assistant\n", True),
]
CHATS = [
    [{"role": "user", "content": "What is 12 times 7?"}],
    [{"role": "system", "content": "Answer in French."}, {"role": "user", "content": "Hi!"},
     {"role": "assistant", "content": "Bonjour !"}, {"role": "user", "content": "Ça va ?"}],
]
TEXTS = [
    "Hello, world!",
    "1234567890 and 3.14159",
    "line one\r\nline two\n\ttabbed",
    "naïve café — “quotes” and emoji 🙂",
    "  leading spaces and trailing  ",
    "<|im_start|>user\nhi<|im_end|>",
]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--new", type=int, default=24)
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "..", "crates", "llm", "tests",
                                                  "fixtures", "smollm2_llama_cpp.json"))
    a = ap.parse_args()
    sha = hashlib.sha256(open(a.model, "rb").read()).hexdigest()
    m = llama_cpp.Llama(a.model, n_ctx=512, logits_all=True, n_threads=1, verbose=False, seed=0)
    cases = []
    for name, text, special in PROMPTS:
        toks = m.tokenize(text.encode(), add_bos=False, special=special)
        m.reset()
        m.eval(toks)
        greedy = []
        for _ in range(a.new):
            nxt = int(np.argmax(m.scores[m.n_tokens - 1]))
            greedy.append(nxt)
            m.eval([nxt])
        seq = toks + greedy
        scores = np.array(m.scores[: len(seq)], dtype=np.float64)
        top = []
        for row in scores:
            idx = np.argsort(-row, kind="stable")[:10]
            top.append([[int(i), round(float(row[i]), 5)] for i in idx])
        cases.append({"name": name, "text": text, "tokens": toks, "greedy": greedy, "top": top})
    texts = [{"text": t, "tokens": m.tokenize(t.encode(), add_bos=False, special=True)} for t in TEXTS]
    template = gguf.GGUFReader(a.model).fields["tokenizer.chat_template"].contents()
    chats = []
    for msgs in CHATS:
        for gen in (True, False):
            text = jinja2.Environment().from_string(template).render(messages=msgs, add_generation_prompt=gen)
            chats.append({"messages": msgs, "add_generation_prompt": gen, "rendered": text,
                          "tokens": m.tokenize(text.encode(), add_bos=False, special=True)})
    out = {
        "model": {"file": os.path.basename(a.model), "sha256": sha},
        "llama_cpp_python": llama_cpp.__version__,
        "threads": 1,
        "cases": cases,
        "tokenizer": texts,
        "chats": chats,
    }
    with open(a.out, "w") as f:
        json.dump(out, f, indent=1, ensure_ascii=False)
        f.write("\n")
    print("wrote", a.out)


if __name__ == "__main__":
    main()
