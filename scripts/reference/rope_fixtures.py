"""RoPE scaling reference data from transformers, for test/models/rope-scaling.test.ts.

The tiny-gqa fixture model (head_dim 16, partial_rotary_factor 0.5: 4 rotary frequencies) with each rope type of
transformers' ROPE_INIT_FUNCTIONS that Nemotron reads (linear, dynamic, yarn, llama3, longrope), its parameters chosen
so that every branch bites (yarn's ramp has extrapolated, blended and interpolated frequencies; llama3 has kept,
smoothed and divided ones; longrope switches from its short to its long factors). For each case, in order on one model
(dynamic NTK is stateful in transformers: its frequencies follow the longest sequence seen, until a short one resets
them): forwards (logits of every position) and greedy generations with the KV cache, some crossing the original
context length.

    .venv-ref/bin/python scripts/reference/rope_fixtures.py
"""
import json
import math
import os

import torch
from transformers import NemotronConfig, NemotronForCausalLM

ROOT = os.path.join(os.path.dirname(__file__), "..", "..", "test", "fixtures")
SOURCE = os.path.join(ROOT, "hf-reference", "tiny-gqa", "causal-lm")
OUT = os.path.join(ROOT, "rope-scaling")

# (name, max_position_embeddings, rope_parameters without rope_theta / partial_rotary_factor, calls)
# A call: ("forward", length) or ("generate", prompt length, new tokens).
CASES = [
    ("linear", 64, dict(rope_type="linear", factor=2.5), [("forward", 40), ("generate", 8, 12)]),
    ("dynamic", 32, dict(rope_type="dynamic", factor=2.0),
     # Within the original length (nothing changes), beyond it (frequencies from the length), a generation that
     # crosses it (new frequencies each step), a shorter forward still beyond it (the longest one's frequencies stay),
     # a short one (reset), and beyond it again.
     [("forward", 24), ("forward", 40), ("generate", 26, 14), ("forward", 36), ("forward", 20), ("forward", 34)]),
    ("yarn", 16384, dict(rope_type="yarn", factor=4.0, original_max_position_embeddings=4096),
     [("forward", 40), ("generate", 8, 12)]),
    ("yarn-mscale", 8192, dict(rope_type="yarn", factor=8.0, original_max_position_embeddings=1024, beta_fast=16.0,
                               beta_slow=2.0, mscale=1.0, mscale_all_dim=0.5, truncate=False),
     [("forward", 40)]),
    ("yarn-attention-factor", 8192, dict(rope_type="yarn", factor=2.0, original_max_position_embeddings=4096,
                                         attention_factor=0.8), [("forward", 40)]),
    ("llama3", 32768, dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                           original_max_position_embeddings=2048), [("forward", 40), ("generate", 8, 12)]),
    ("longrope", 64, dict(rope_type="longrope", short_factor=[1.0, 1.2, 1.5, 2.0], long_factor=[1.5, 2.5, 4.0, 8.0],
                          original_max_position_embeddings=24),
     [("forward", 20), ("forward", 40), ("generate", 18, 14)]),
    ("longrope-factor", 64, dict(rope_type="longrope", short_factor=[1.0, 1.0, 1.1, 1.3], long_factor=[2.0, 3.0, 5.0, 9.0],
                                 original_max_position_embeddings=16, factor=3.0, attention_factor=1.1),
     [("forward", 12), ("forward", 30)]),
]


def ids(length, row=0):
    """Deterministic token ids in [4, 96): no pad, BOS or EOS."""
    return [4 + (row * 37 + i * 13 + (i * i) % 7) % 92 for i in range(length)]


def main():
    os.makedirs(OUT, exist_ok=True)
    base = json.load(open(os.path.join(SOURCE, "config.json")))
    theta = base["rope_parameters"]["rope_theta"]
    partial = base["partial_rotary_factor"]
    cases = []
    for name, max_positions, scaling, calls in CASES:
        config_json = {**base, "max_position_embeddings": max_positions,
                       "rope_parameters": {"rope_theta": theta, "partial_rotary_factor": partial, **scaling}}
        config = NemotronConfig(**{k: v for k, v in config_json.items() if k not in ("architectures", "transformers_version")})
        model = NemotronForCausalLM.from_pretrained(SOURCE, config=config, dtype=torch.float32, attn_implementation="eager")
        model.eval()
        rotary = model.model.rotary_emb
        results = []
        for call in calls:
            with torch.no_grad():
                if call[0] == "forward":
                    x = torch.tensor([ids(call[1])])
                    logits = model(x).logits[0]
                    results.append({"kind": "forward", "input_ids": x.tolist(), "logits": [[float(f"{v:.7g}") for v in row] for row in logits.tolist()]})
                else:
                    x = torch.tensor([ids(call[1], row=1)])
                    out = model.generate(x, attention_mask=torch.ones_like(x), do_sample=False, max_new_tokens=call[2],
                                         min_new_tokens=call[2], pad_token_id=0, eos_token_id=None)
                    results.append({"kind": "generate", "input_ids": x.tolist(), "max_new_tokens": call[2], "sequences": out.tolist()})
            results[-1]["inv_freq"] = rotary.inv_freq.tolist()
        cases.append({"name": name, "config": config_json, "attention_scaling": rotary.attention_scaling,
                      "calls": results})
        print(name, "attention scaling", rotary.attention_scaling, "inv_freq after", [f"{v:.4g}" for v in rotary.inv_freq.tolist()])
    check_branches(cases, theta)
    json.dump({"source": "hf-reference/tiny-gqa/causal-lm", "cases": cases}, open(os.path.join(OUT, "rope-scaling.json"), "w"))


def check_branches(cases, theta):
    """The parameters above make every branch of the scaled frequencies bite (asserted, so a change of them cannot
    quietly stop testing a branch)."""
    dim = 8
    plain = [1.0 / theta ** (i / dim) for i in range(0, dim, 2)]
    by_name = {c["name"]: c for c in cases}
    # llama3: wavelengths below high_freq_wavelen kept, above low_freq_wavelen divided, between smoothed.
    p = by_name["llama3"]["config"]["rope_parameters"]
    wavelengths = [2 * math.pi / f for f in plain]
    low, high = p["original_max_position_embeddings"] / p["low_freq_factor"], p["original_max_position_embeddings"] / p["high_freq_factor"]
    kinds = {"kept" if w < high else "divided" if w > low else "smoothed" for w in wavelengths}
    assert kinds == {"kept", "divided", "smoothed"}, kinds
    # yarn: the blend factor takes 1, 0 and a value between.
    ratios = [a / b for a, b in zip(by_name["yarn"]["calls"][0]["inv_freq"], plain)]
    assert any(abs(r - 1) < 1e-6 for r in ratios) and any(abs(r - 0.25) < 1e-6 for r in ratios), ratios
    assert any(0.26 < r < 0.99 for r in ratios), ratios
    # longrope: short factors, then long ones.
    calls = by_name["longrope"]["calls"]
    assert calls[0]["inv_freq"] != calls[1]["inv_freq"]
    # dynamic: unchanged within the original length, changed beyond, kept by a shorter call beyond it, reset by a short one.
    calls = by_name["dynamic"]["calls"]
    assert all(abs(a - b) < 1e-7 for a, b in zip(calls[0]["inv_freq"], plain))
    assert calls[1]["inv_freq"] != calls[0]["inv_freq"] and calls[3]["inv_freq"] == calls[2]["inv_freq"]
    assert calls[4]["inv_freq"] == calls[0]["inv_freq"]


if __name__ == "__main__":
    main()
