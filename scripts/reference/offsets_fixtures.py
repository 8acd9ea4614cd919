"""Character offsets of tokens (the Rust tokenizer's offset mapping) and the token-classification pipeline's
entities with their offsets and word aggregation, for test/inference/offsets.test.ts.

Two SentencePiece-style tokenizers: test/fixtures/tokenizer (Prepend + Replace normalizer, byte fallback, BOS
template; read as PreTrainedTokenizerFast, as Nemotron checkpoints name it) and the pipelines' tiny-gqa tokenizer
(Metaspace, no byte fallback): ids, offsets and special tokens masks of texts with leading, doubled and trailing
spaces, punctuation, multi-byte characters and emoji (offsets count Python characters: code points). Then
pipeline("token-classification") on the tiny-gqa head with BIO labels: aggregation none, simple, first, average, max,
start and end included.

    .venv-ref/bin/python scripts/reference/offsets_fixtures.py
"""
import json
import os
import shutil
import tempfile
import warnings

import torch
import transformers
from transformers import AutoTokenizer, NemotronForTokenClassification, pipeline

ROOT = os.path.join(os.path.dirname(__file__), "..", "..", "test", "fixtures")
BYTE_TEXTS = ["Hello world", "Hello, the world!", "  two spaces  in", "é and 日本 then 😀!", "the\tend", "Wörld", "Hello</s> world", "<s>the end</s>"]
TINY_TEXTS = ["the stopped stone", "a tin of it", "stop it and stop", " stone  it ", "tin,stone.it"]


def offsets(tokenizer, texts):
    out = []
    for text in texts:
        e = tokenizer(text, return_offsets_mapping=True, return_special_tokens_mask=True)
        out.append({"text": text, "ids": e["input_ids"], "offsets": [list(o) for o in e["offset_mapping"]],
                    "special_tokens_mask": e["special_tokens_mask"]})
    return out


def main():
    warnings.simplefilter("ignore")
    out = {"transformers": transformers.__version__}
    with tempfile.TemporaryDirectory() as tmp:
        source = os.path.join(tmp, "tokenizer")
        shutil.copytree(os.path.join(ROOT, "tokenizer"), source)
        config = json.load(open(os.path.join(source, "tokenizer_config.json")))
        json.dump({**config, "tokenizer_class": "PreTrainedTokenizerFast"}, open(os.path.join(source, "tokenizer_config.json"), "w"))
        out["tokenizer"] = offsets(AutoTokenizer.from_pretrained(source), BYTE_TEXTS)
    tiny = AutoTokenizer.from_pretrained(os.path.join(ROOT, "generation-processors", "tiny-gqa-tokenizer"))
    out["tiny-gqa-tokenizer"] = offsets(tiny, TINY_TEXTS)
    base = os.path.join(ROOT, "hf-reference", "tiny-gqa", "tokcls")
    out["token_classification"] = []
    plain = lambda found: [{k: (float(v) if k == "score" else v) for k, v in e.items()} for e in found]
    for labels in ({0: "O", 1: "B-PER", 2: "I-PER", 3: "B-LOC", 4: "I-LOC"}, {0: "O", 1: "I-PER", 2: "B-PER", 3: "B-LOC", 4: "I-LOC"}):
        model = NemotronForTokenClassification.from_pretrained(base, dtype=torch.float32, id2label=labels,
                                                               label2id={v: k for k, v in labels.items()}).eval()
        tag = pipeline("token-classification", model=model, tokenizer=tiny, device="cpu")
        entry = {"labels": labels}
        for strategy in ("none", "simple", "first", "average", "max"):
            entry[strategy] = [plain(tag(t, aggregation_strategy=strategy)) for t in TINY_TEXTS]
            entry[f"{strategy}_keep_o"] = [plain(tag(t, aggregation_strategy=strategy, ignore_labels=[])) for t in TINY_TEXTS]
        out["token_classification"].append(entry)
    json.dump(out, open(os.path.join(ROOT, "pipelines", "offsets.json"), "w"), indent=1)
    print(json.dumps(out["tokenizer"])[:1500])


if __name__ == "__main__":
    main()
