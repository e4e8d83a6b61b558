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
# prose written for this fixture (about 500 tokens), for perplexity
PERPLEXITY_TEXT = (
    "Every town has a place where people go when they want to think, and in ours it was the river path. "
    "It began behind the bakery, where the smell of bread followed you for the first hundred steps, and it "
    "ended at the old mill, whose wheel had not turned in forty years. In between, the path passed allotments "
    "and a small stone bridge, a bench donated by a family whose name had worn away, and a field where horses "
    "watched walkers with polite disinterest.\n\n"
    "My grandmother walked the path every morning until she was ninety. She said that the river taught patience: "
    "it never hurried, yet it had carved the whole valley. When I was small she would stop at the bridge and ask "
    "me to count the fish. I never saw any, and she always saw at least three. Years later I understood that the "
    "counting was not about fish. It was about standing still long enough to notice the light on the water, the "
    "moss on the stones, and the way the current folded around a branch.\n\n"
    "In winter the path flooded, and the town council argued each spring about whether to raise it. The engineers "
    "brought drawings, the farmers brought complaints, and the children brought boots. Nothing was ever decided, "
    "and the river went on doing what rivers do. By April the water withdrew, leaving a line of driftwood and "
    "plastic bottles that volunteers collected in bright green bags.\n\n"
    "The mill itself belongs now to a cooperative that restores old machines. On Saturdays they open the doors, "
    "and visitors can watch them clean gears, replace belts, and argue cheerfully about the correct shade of red "
    "for a water pump built in 1911. They hope to turn the wheel again next summer. If they succeed, the first "
    "flour will go to the bakery at the other end of the path, and the circle, as my grandmother would have said, "
    "will be closed.\n\n"
    "Some evenings I walk there after work. The horses are gone, replaced by a vegetable garden, and the bench has "
    "been repaired with new slats. But the river is the same, and when I stop at the bridge I still count the fish. "
    "Most days I see none. On good days I see three."
)
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
    m = llama_cpp.Llama(a.model, n_ctx=1024, logits_all=True, n_threads=1, verbose=False, seed=0)
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
    # perplexity of the text: token 0 given nothing is not scored; token i given tokens 0..i-1
    ptoks = m.tokenize(PERPLEXITY_TEXT.encode(), add_bos=False, special=False)
    m.reset()
    m.eval(ptoks)
    logits = np.array(m.scores[: len(ptoks)], dtype=np.float64)
    nll = 0.0
    for i in range(1, len(ptoks)):
        row = logits[i - 1]
        mx = row.max()
        nll -= row[ptoks[i]] - mx - np.log(np.exp(row - mx).sum())
    ppl = float(np.exp(nll / (len(ptoks) - 1)))
    perplexity = {"text": PERPLEXITY_TEXT, "tokens": ptoks, "perplexity": round(ppl, 4)}
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
        "perplexity": perplexity,
    }
    with open(a.out, "w") as f:
        json.dump(out, f, indent=1, ensure_ascii=False)
        f.write("\n")
    print("wrote", a.out)


if __name__ == "__main__":
    main()
