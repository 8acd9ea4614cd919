"""Sliding-window perplexity (transformers' "Perplexity of fixed-length models" recipe) on the tiny fixture models, for
test/training/perplexity.test.ts.

A long sequence of token ids, windows of max_length tokens every `stride` tokens, each window's labels -100 on the
tokens an earlier window already predicted (target_ids[:, :-trg_len] = -100); the total negative log-likelihood is
each window's mean loss times the labels it counts after the shift (the recipe's own count, num_valid - 1, is one short
for every window after the first), over the tokens predicted.

    .venv-ref/bin/python scripts/reference/perplexity_fixtures.py
"""
import json
import math
import os

import torch
import transformers
from transformers import NemotronForCausalLM

ROOT = os.path.join(os.path.dirname(__file__), "..", "..", "test", "fixtures")
SETTINGS = [(32, 16), (32, 32), (64, 64), (48, 5), (20, 7)]


def windows(model, ids, max_length, stride):
    seq_len = ids.size(1)
    nll, count, prev_end, runs = 0.0, 0, 0, []
    for begin in range(0, seq_len, stride):
        end = min(begin + max_length, seq_len)
        trg_len = end - prev_end
        input_ids = ids[:, begin:end]
        target = input_ids.clone()
        target[:, :-trg_len] = -100
        with torch.no_grad():
            loss = model(input_ids, labels=target).loss.item()
        counted = int((target[:, 1:] != -100).sum().item())
        nll += loss * counted
        count += counted
        runs.append({"begin": begin, "end": end, "loss": loss, "counted": counted})
        prev_end = end
        if end == seq_len:
            break
    return {"max_length": max_length, "stride": stride, "nll": nll, "tokens": count, "perplexity": math.exp(nll / count), "windows": runs}


def main():
    out = {"transformers": transformers.__version__, "models": {}}
    generator = torch.Generator().manual_seed(7)
    for name in ("tiny-gqa", "tiny-mha-bias"):
        model = NemotronForCausalLM.from_pretrained(os.path.join(ROOT, "hf-reference", name, "causal-lm"), dtype=torch.float32).eval()
        ids = torch.randint(4, model.config.vocab_size, (1, 150), generator=generator)
        out["models"][name] = {"ids": ids[0].tolist(), "cases": [windows(model, ids, m, s) for m, s in SETTINGS]}
    json.dump(out, open(os.path.join(ROOT, "perplexity", "cases.json"), "w"), indent=1)
    print({k: [(c["max_length"], c["stride"], round(c["perplexity"], 4), c["tokens"]) for c in v["cases"]] for k, v in out["models"].items()})


if __name__ == "__main__":
    main()
