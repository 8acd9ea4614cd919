"""transformers' sampling warpers on fixed logits, for test/generation/processors.test.ts.

Rows of random logits (several spreads) through the warpers generate() builds when sampling, in its order
(temperature, top-k, top-p, min-p, typical-p, epsilon, eta), one setting at a time and combined. Each case keeps the
indices set to -inf and the values of the others.

    .venv-ref/bin/python scripts/reference/warper_fixtures.py
"""
import json
import os

import torch
from transformers import GenerationConfig, NemotronConfig, NemotronForCausalLM

OUT = os.path.join(os.path.dirname(__file__), "..", "..", "test", "fixtures", "warpers", "warpers.json")
SETTINGS = [
    dict(temperature=0.7), dict(top_k=5), dict(top_p=0.8), dict(min_p=0.1), dict(typical_p=0.9), dict(typical_p=0.5),
    dict(epsilon_cutoff=0.02), dict(eta_cutoff=0.01), dict(eta_cutoff=0.2),
    dict(temperature=0.8, top_k=20, top_p=0.9, typical_p=0.95),
    dict(temperature=1.3, top_k=0, min_p=0.05, epsilon_cutoff=0.005, eta_cutoff=0.003),
    # Beam sampling keeps at least 2 tokens (min_tokens_to_keep = 1 + EOS ids, 2 without any).
    dict(num_beams=2, top_k=1), dict(num_beams=2, top_p=0.2), dict(num_beams=2, min_p=0.95), dict(num_beams=2, typical_p=0.05),
    dict(num_beams=2, epsilon_cutoff=0.5), dict(num_beams=2, eta_cutoff=0.5),
]

torch.manual_seed(0)
vocab = 50
logits = torch.cat([torch.randn(1, vocab) * s for s in (0.5, 1.0, 2.0, 4.0)])
# A tiny model only to reach generate()'s own processor list builder (_get_logits_processor).
model = NemotronForCausalLM(NemotronConfig(vocab_size=vocab, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                           num_attention_heads=2, num_key_value_heads=1, head_dim=8))
cases = []
for setting in SETTINGS:
    config = GenerationConfig(do_sample=True, **{"top_k": 0, **setting})
    config._eos_token_tensor = None  # what generate() sets from eos_token_id; none here
    processors = model._get_logits_processor(generation_config=config, input_ids_seq_length=1, encoder_input_ids=None,
                                             prefix_allowed_tokens_fn=None, logits_processor=None, device="cpu")
    out = processors(torch.zeros(logits.shape[0], 1, dtype=torch.long), logits.clone())
    rows = []
    for row in out:
        removed = torch.isinf(row).nonzero().flatten().tolist()
        rows.append({"removed": removed, "values": [None if torch.isinf(v) else float(v) for v in row]})
    keep = 2 if setting.get("num_beams", 1) > 1 else 1
    cases.append({"setting": setting, "min_tokens_to_keep": keep, "processors": [type(p).__name__ for p in processors], "rows": rows})
    print(setting, [len(r["removed"]) for r in rows])
json.dump({"logits": logits.tolist(), "cases": cases}, open(OUT, "w"), indent=1)
