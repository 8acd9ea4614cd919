"""Beam search with transformers' NemotronH (its hybrid cache reordered to the beams), on the tiny checkpoints of
nemotron_h_fixtures.py, for test/models/nemotron-h.test.ts: test/fixtures/nemotron-h/beams.json.

    .venv-ref/bin/python scripts/reference/nemotron_h_beam_fixtures.py
"""
import json
import os

import torch
from transformers import NemotronHForCausalLM

DIR = os.path.join(os.path.dirname(__file__), "..", "..", "test", "fixtures", "nemotron-h")
prompt = [[5, 17, 33, 8, 41, 62, 9, 27, 70, 12], [0, 0, 0, 44, 3, 19, 55, 61, 7, 30]]
mask = [[1] * 10, [0, 0, 0] + [1] * 7]

cases = []
for variant, rows, settings in [
    # One prompt, no EOS: every hypothesis runs to the length limit; the two best returned.
    ("model", [0], dict(num_beams=3, max_new_tokens=8, num_return_sequences=2, eos_token_id=None)),
    # A left-padded batch, an EOS id the beams meet early (hypotheses finish at different lengths), a length penalty.
    ("model", [0, 1], dict(num_beams=2, max_new_tokens=7, length_penalty=0.7, eos_token_id="frequent")),
    # early_stopping=True with the same EOS id, three beams.
    ("model", [0], dict(num_beams=3, max_new_tokens=7, early_stopping=True, eos_token_id="frequent")),
    # Mixture-of-experts layers.
    ("moe", [0], dict(num_beams=2, max_new_tokens=6, eos_token_id=None)),
]:
    model = NemotronHForCausalLM.from_pretrained(os.path.join(DIR, variant)).eval()
    ids = torch.tensor([prompt[r] for r in rows])
    attention = torch.tensor([mask[r] for r in rows])
    with torch.no_grad():
        if settings.get("eos_token_id") == "frequent":
            # The token greedy decoding of the first prompt writes third: reachable for the beams.
            greedy = model.generate(ids[:1], attention_mask=attention[:1], max_new_tokens=3, do_sample=False, eos_token_id=None, pad_token_id=0)
            settings = {**settings, "eos_token_id": int(greedy[0, -1])}
        out = model.generate(ids, attention_mask=attention, do_sample=False, pad_token_id=0, return_dict_in_generate=True, output_scores=True, **settings)
    cases.append({"variant": variant, "rows": rows, "settings": settings, "sequences": out.sequences.tolist(), "sequences_scores": out.sequences_scores.tolist()})
    print(variant, settings, out.sequences[:, 10:].tolist(), [round(s, 4) for s in out.sequences_scores.tolist()])

with open(os.path.join(DIR, "beams.json"), "w") as f:
    json.dump({"prompt": prompt, "attention_mask": mask, "cases": cases}, f)
