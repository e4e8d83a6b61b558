#!/usr/bin/env python3
"""Write fixtures/embed-mini/: a small sentence-embedding model laid out as sentence-transformers
publishes one (model.onnx, tokenizer.json, vocab.txt, tokenizer_config.json, config.json, modules.json,
1_Pooling/config.json, and a Normalize module) — a BERT encoder exported by torch's ONNX exporter with
dynamic batch and sequence axes, over a WordPiece vocabulary trained on a fixed multilingual text. The
weights are random (seeded): what the tests check is Verity against the float model on the same file.
The test suite reads the committed files; regenerating needs torch, transformers and tokenizers (not test
dependencies), and gives a different vocabulary from run to run (the WordPiece trainer breaks ties between
equally frequent pairs differently), so the tests' expectations come from the files, never from this script.

    pip install torch transformers==5.25.0 tokenizers==0.23.3 && python scripts/gen_embedding_fixture.py
"""
import json
import os

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import BertConfig, BertModel

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
OUT = os.path.join(ROOT, "fixtures", "embed-mini")

CORPUS = """
Verity runs models on independent nodes and every answer carries evidence anyone can check.
The quick brown fox jumps over the lazy dog while the cat sleeps in the warm afternoon sun.
A sentence embedding maps text to a vector; similar meanings land close together.
Search engines rank documents by the cosine similarity of their embeddings to the query.
Le café est très chaud ce matin, mais le croissant est déjà froid.
Die Straßenbahn fährt um halb neun über die Brücke in die Altstadt.
El niño comió una manzana y después jugó al fútbol con sus amigos.
Привет, как дела? Сегодня хорошая погода для прогулки.
Ελληνικά γράμματα και αριθμοί: άλφα, βήτα, γάμμα.
今天天气很好，我们去公园散步吧。机器学习模型需要验证。
東京の桜は四月に咲きます。
नमस्ते, आप कैसे हैं? यह एक परीक्षण वाक्य है।
مرحبا بالعالم، هذا اختبار للنص العربي.
Numbers like 3.14159, 2,718 and 1e-9 appear in scientific text, as do units: 5 km/h, 20°C, $42.
Emails such as alice@example.com and URLs like https://example.org/path?q=1 are split at punctuation.
Code: fn main() { println!("hello, world"); } // a comment
Don't, won't, can't: contractions split at the apostrophe; hyphen-separated words split too.
Question answering, summarization, translation, classification and retrieval all use encoders.
The patient's blood pressure was 120/80 mmHg and the heart rate 72 bpm.
Stocks fell 3% on Monday after the central bank raised interest rates by 0.25 percentage points.
""".strip().splitlines()

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def tokenizer():
    t = Tokenizer(models.WordPiece(unk_token="[UNK]", max_input_chars_per_word=100))
    t.normalizer = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True,
                                              strip_accents=None, lowercase=True)
    t.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    trainer = trainers.WordPieceTrainer(vocab_size=900, min_frequency=1, special_tokens=SPECIALS,
                                        continuing_subword_prefix="##")
    t.train_from_iterator(CORPUS * 3, trainer)
    cls, sep = t.token_to_id("[CLS]"), t.token_to_id("[SEP]")
    t.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls), ("[SEP]", sep)])
    t.decoder = decoders.WordPiece(prefix="##")
    return t


def export(bert, sample_ids, path):
    """Export a transformers BertModel as an encoder of input_ids, attention_mask and token_type_ids to
    last_hidden_state, batch and sequence axes dynamic (torch's TorchScript exporter, opset 14)."""
    import torch

    class Encoder(torch.nn.Module):
        def __init__(self, bert):
            super().__init__()
            self.bert = bert

        def forward(self, input_ids, attention_mask, token_type_ids):
            return self.bert(input_ids=input_ids, attention_mask=attention_mask,
                             token_type_ids=token_type_ids).last_hidden_state

    names = ["input_ids", "attention_mask", "token_type_ids"]
    with torch.no_grad():
        torch.onnx.export(Encoder(bert), (sample_ids, torch.ones_like(sample_ids), torch.zeros_like(sample_ids)),
                          path, input_names=names, output_names=["last_hidden_state"],
                          dynamic_axes={n: {0: "batch", 1: "sequence"} for n in names + ["last_hidden_state"]},
                          opset_version=14, dynamo=False)


def main():
    import torch
    os.makedirs(os.path.join(OUT, "1_Pooling"), exist_ok=True)
    os.makedirs(os.path.join(OUT, "2_Normalize"), exist_ok=True)
    tok = tokenizer()
    tok.save(os.path.join(OUT, "tokenizer.json"))
    vocab = sorted(tok.get_vocab().items(), key=lambda kv: kv[1])
    with open(os.path.join(OUT, "vocab.txt"), "w", encoding="utf-8") as f:
        f.write("".join(w + "\n" for w, _ in vocab))
    max_len = 64
    json.dump({"do_lower_case": True, "model_max_length": max_len, "tokenizer_class": "BertTokenizer",
               "cls_token": "[CLS]", "sep_token": "[SEP]", "pad_token": "[PAD]", "unk_token": "[UNK]",
               "mask_token": "[MASK]"},
              open(os.path.join(OUT, "tokenizer_config.json"), "w"), indent=2)
    torch.manual_seed(5)
    cfg = BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                     intermediate_size=64, max_position_embeddings=max_len, type_vocab_size=2,
                     attn_implementation="eager")
    model = BertModel(cfg, add_pooling_layer=False).eval()
    cfg.save_pretrained(OUT)
    export(model, torch.tensor([tok.encode(CORPUS[0]).ids]), os.path.join(OUT, "model.onnx"))
    json.dump([{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
               {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
               {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"}],
              open(os.path.join(OUT, "modules.json"), "w"), indent=2)
    json.dump({"word_embedding_dimension": 32, "pooling_mode_cls_token": False, "pooling_mode_mean_tokens": True,
               "pooling_mode_max_tokens": False, "pooling_mode_mean_sqrt_len_tokens": False},
              open(os.path.join(OUT, "1_Pooling", "config.json"), "w"), indent=2)
    json.dump({"max_seq_length": max_len, "do_lower_case": False},
              open(os.path.join(OUT, "sentence_bert_config.json"), "w"), indent=2)
    for f in sorted(os.listdir(OUT)):
        p = os.path.join(OUT, f)
        print(f, os.path.getsize(p) if os.path.isfile(p) else "dir")


if __name__ == "__main__":
    main()
