"""Beam-search reference data from transformers, for test/generation/beam-search.test.ts.

On each tiny fixture model (test/fixtures/hf-reference/<config>/causal-lm) and its left-padded prompt batch:
generate(num_beams=...) under several settings, with an EOS id the beams meet (the second token greedy decoding
chooses for row 0), and the sequences_scores.

    .venv-ref/bin/python scripts/reference/beam_fixtures.py
"""
import json
import os

import torch
from transformers import NemotronForCausalLM

ROOT = os.path.join(os.path.dirname(__file__), "..", "..", "test", "fixtures")
SETTINGS = [
    dict(num_beams=3, num_return_sequences=2, length_penalty=1.0, early_stopping=False, max_new_tokens=6),
    dict(num_beams=4, num_return_sequences=4, length_penalty=0.5, early_stopping=True, max_new_tokens=5),
    dict(num_beams=2, num_return_sequences=1, length_penalty=2.0, early_stopping="never", max_new_tokens=7),
    dict(num_beams=3, num_return_sequences=3, length_penalty=1.0, early_stopping=False, max_new_tokens=6, repetition_penalty=1.3, min_new_tokens=3),
]

for name in ("tiny-gqa", "tiny-mha-bias"):
    source = os.path.join(ROOT, "hf-reference", name)
    expected = json.load(open(os.path.join(source, "expected.json")))
    model = NemotronForCausalLM.from_pretrained(os.path.join(source, "causal-lm"), torch_dtype=torch.float32, attn_implementation="eager")
    model.eval()
    prompt, mask = expected["gen_batch_prompt"], expected["gen_batch_mask"]
    eos = expected["gen_batch_output"][0][len(prompt[0]) + 1]
    cases = []
    for setting in SETTINGS:
        with torch.no_grad():
            o = model.generate(torch.tensor(prompt), attention_mask=torch.tensor(mask), do_sample=False, pad_token_id=0, eos_token_id=eos,
                               return_dict_in_generate=True, output_scores=True, **setting)
        cases.append({"setting": setting, "sequences": o.sequences.tolist(), "scores": o.sequences_scores.tolist()})
    json.dump({"prompt": prompt, "attention_mask": mask, "eos_token_id": eos, "cases": cases},
              open(os.path.join(ROOT, "beam-search", f"{name}.json"), "w"), indent=1)
    print(name, "eos", eos, [c["sequences"][0] for c in cases])
