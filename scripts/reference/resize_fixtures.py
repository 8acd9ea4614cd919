"""resize_token_embeddings reference data from transformers, for test/models/resize-embeddings.test.ts.

On both tiny fixture models (tiny-gqa: untied LM head; tiny-mha-bias: tied): grow with mean resizing (the added rows
drawn around the old rows' mean with 1e-9 times their covariance: the rows are kept, to compare within that noise),
grow to a multiple (pad_to_multiple_of), and shrink (the logits of the kept vocabulary).

    .venv-ref/bin/python scripts/reference/resize_fixtures.py
"""
import json
import os

import torch
from transformers import NemotronForCausalLM

ROOT = os.path.join(os.path.dirname(__file__), "..", "..", "test", "fixtures")


def load(name):
    model = NemotronForCausalLM.from_pretrained(os.path.join(ROOT, "hf-reference", name, "causal-lm"), dtype=torch.float32,
                                                attn_implementation="eager")
    return model.eval()


def rows(t, start):
    return [[float(f"{v:.8g}") for v in r] for r in t[start:].tolist()]


def main():
    torch.manual_seed(0)
    out = {}
    for name in ("tiny-gqa", "tiny-mha-bias"):
        cases = []
        vocab = load(name).config.vocab_size
        for setting in [dict(new_num_tokens=vocab + 14), dict(new_num_tokens=vocab + 3, pad_to_multiple_of=16), dict(new_num_tokens=vocab - 9)]:
            model = load(name)
            model.resize_token_embeddings(**setting)
            size = model.config.vocab_size
            ids = [[5, 17, 3, 40, min(size, vocab) - 1, 9]]
            with torch.no_grad():
                logits = model(torch.tensor(ids)).logits[0]
            case = {"setting": setting, "vocab_size": size, "input_ids": ids, "logits": rows(logits, 0),
                    "embedding_shape": list(model.model.embed_tokens.weight.shape),
                    "lm_head_shape": list(model.lm_head.weight.shape),
                    "tied": model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()}
            if size > vocab:
                case["added_embedding_rows"] = rows(model.model.embed_tokens.weight.detach(), vocab)
                case["added_lm_head_rows"] = rows(model.lm_head.weight.detach(), vocab)
            cases.append(case)
            print(name, setting, "->", size, "tied", case["tied"])
        out[name] = {"vocab_size": vocab, "cases": cases}
    os.makedirs(os.path.join(ROOT, "resize-embeddings"), exist_ok=True)
    json.dump(out, open(os.path.join(ROOT, "resize-embeddings", "resize-embeddings.json"), "w"))


if __name__ == "__main__":
    main()
