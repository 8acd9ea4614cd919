"""transformers' text-classification and token-classification pipelines on the tiny fixture heads, for
test/inference/pipelines.test.ts.

Each tiny-gqa head (sequence classification: single-label, multi-label, regression; token classification) with the
SentencePiece-style tokenizer over its vocabulary (test/fixtures/generation-processors/tiny-gqa-tokenizer), on a few
texts: the default output (the best label), top_k=None (every label, sorted), a forced function_to_apply, pairs of
texts ({"text", "text_pair"}, and the pair encoding of two tokenizers), and token classification with aggregation
"none" and "simple" (BIO labels grouped; entities without character offsets, which need the Rust tokenizer's offset
mapping).

    .venv-ref/bin/python scripts/reference/pipeline_fixtures.py
"""
import json
import os
import shutil
import tempfile

import torch
from transformers import AutoTokenizer, NemotronForSequenceClassification, NemotronForTokenClassification, pipeline

ROOT = os.path.join(os.path.dirname(__file__), "..", "..", "test", "fixtures")
TEXTS = ["the stopped stone", "a tin of it", "stop it and stop"]
PAIRS = [("the stone", "it stopped"), ("a tin", "the tin of it")]


def main():
    base = os.path.join(ROOT, "hf-reference", "tiny-gqa")
    tokenizer = AutoTokenizer.from_pretrained(os.path.join(ROOT, "generation-processors", "tiny-gqa-tokenizer"))
    out = {"texts": TEXTS, "text_classification": {}, "token_classification": {}}
    for head in ("seqcls-single", "seqcls-multi", "seqcls-regression"):
        model = NemotronForSequenceClassification.from_pretrained(os.path.join(base, head), dtype=torch.float32).eval()
        classify = pipeline("text-classification", model=model, tokenizer=tokenizer, device="cpu")
        out["text_classification"][head] = {
            "default": [classify(t)[0] for t in TEXTS],
            "top_k_none": [classify(t, top_k=None) for t in TEXTS],
            "top_k_2_softmax": [classify(t, top_k=2, function_to_apply="softmax") for t in TEXTS],
            "none": [classify(t, top_k=None, function_to_apply="none") for t in TEXTS],
        }
    # Pairs of texts: the tokenizers' pair encoding (the fixture tokenizer's BOS template, and none), and the
    # classification of {"text", "text_pair"} inputs.
    model = NemotronForSequenceClassification.from_pretrained(os.path.join(base, "seqcls-single"), dtype=torch.float32).eval()
    classify = pipeline("text-classification", model=model, tokenizer=tokenizer, device="cpu")
    out["pair_classification"] = {
        "pairs": PAIRS,
        "default": [classify({"text": a, "text_pair": b}) for a, b in PAIRS],
        "top_k_none": [classify({"text": a, "text_pair": b}, top_k=None) for a, b in PAIRS],
    }
    out["pair_encoding"] = {}
    with tempfile.TemporaryDirectory() as tmp:
        templated = os.path.join(tmp, "tokenizer")
        shutil.copytree(os.path.join(ROOT, "tokenizer"), templated)
        config = json.load(open(os.path.join(templated, "tokenizer_config.json")))
        json.dump({**config, "tokenizer_class": "PreTrainedTokenizerFast"}, open(os.path.join(templated, "tokenizer_config.json"), "w"))
        for name, t in [("tokenizer", AutoTokenizer.from_pretrained(templated)), ("generation-processors/tiny-gqa-tokenizer", tokenizer)]:
            encoded = [t(a, b, return_special_tokens_mask=True) for a, b in PAIRS]
            out["pair_encoding"][name] = [{"ids": e["input_ids"], "special_tokens_mask": e["special_tokens_mask"],
                                           "sequence_ids": e.sequence_ids()} for e in encoded]
    model = NemotronForTokenClassification.from_pretrained(os.path.join(base, "tokcls"), dtype=torch.float32).eval()
    tag = pipeline("token-classification", model=model, tokenizer=tokenizer, device="cpu")
    strip = lambda entities: [{k: (float(v) if k == "score" else v) for k, v in e.items() if k not in ("start", "end")} for e in entities]
    out["token_classification"] = {
        "default": [strip(tag(t)) for t in TEXTS],
        "ignore_label_0": [strip(tag(t, ignore_labels=["LABEL_0"])) for t in TEXTS],
    }
    # Aggregation "simple": the same head with BIO labels, adjacent tokens of one entity grouped; two label maps, one
    # where the frequent class continues an entity (I-PER), one where it begins one (B-PER), so both rules bite.
    groups = lambda found: [{k: (float(v) if k == "score" else v) for k, v in e.items() if k not in ("start", "end")} for e in found]
    out["token_classification"]["bio"] = []
    for labels in ({0: "O", 1: "B-PER", 2: "I-PER", 3: "B-LOC", 4: "I-LOC"}, {0: "O", 1: "I-PER", 2: "B-PER", 3: "B-LOC", 4: "I-LOC"}):
        model = NemotronForTokenClassification.from_pretrained(os.path.join(base, "tokcls"), dtype=torch.float32, id2label=labels,
                                                               label2id={v: k for k, v in labels.items()}).eval()
        tag = pipeline("token-classification", model=model, tokenizer=tokenizer, device="cpu")
        out["token_classification"]["bio"].append({
            "labels": labels,
            "none": [strip(tag(t)) for t in TEXTS],
            "simple": [groups(tag(t, aggregation_strategy="simple")) for t in TEXTS],
            "simple_keep_o": [groups(tag(t, aggregation_strategy="simple", ignore_labels=[])) for t in TEXTS],
        })
    os.makedirs(os.path.join(ROOT, "pipelines"), exist_ok=True)
    json.dump(out, open(os.path.join(ROOT, "pipelines", "pipelines.json"), "w"), indent=1)
    print(json.dumps(out)[:1500])


if __name__ == "__main__":
    main()
