"""OpenAI's presence and frequency penalties, and logit_bias, run by transformers, for test/generation/penalties.test.ts.

transformers has no presence/frequency penalty; OpenAI's API (and vLLM) define them as
    logits[j] -= frequency_penalty * count[j] + presence_penalty * (count[j] > 0)
over the tokens generated so far (the prompt not counted), before the sampling warpers. This writes that rule as a
LogitsProcessor and lets transformers' generate() run it (greedy, on each tiny fixture model's left-padded prompt batch,
alone and with repetition_penalty and sequence_bias — OpenAI's logit_bias is sequence_bias of one-token sequences).

    .venv-ref/bin/python scripts/reference/penalty_fixtures.py
"""
import json
import os

import torch
from transformers import LogitsProcessor, LogitsProcessorList

from fixture_models import FIXTURES as ROOT, tiny_causal_lm


class PresenceFrequencyPenalty(LogitsProcessor):
    def __init__(self, prompt_width, presence, frequency):
        self.prompt_width, self.presence, self.frequency = prompt_width, presence, frequency

    def __call__(self, input_ids, scores):
        generated = input_ids[:, self.prompt_width:]
        counts = torch.zeros_like(scores).scatter_add_(1, generated, torch.ones_like(generated, dtype=scores.dtype))
        return scores - self.frequency * counts - self.presence * (counts > 0).to(scores.dtype)


out = {}
for name in ("tiny-gqa", "tiny-mha-bias"):
    model, expected = tiny_causal_lm(name)
    prompt, mask = expected["gen_batch_prompt"], expected["gen_batch_mask"]
    width = len(prompt[0])
    cases = []
    for presence, frequency, extra in [(0.0, 0.0, {}), (0.8, 0.0, {}), (0.0, 0.6, {}), (1.5, 1.5, {}), (-1.0, 0.5, {}),
                                       (0.5, 0.5, {"repetition_penalty": 1.3}), (0.7, 0.3, {"sequence_bias": {(5,): 4.0, (7,): -2.5}})]:
        with torch.no_grad():
            o = model.generate(torch.tensor(prompt), attention_mask=torch.tensor(mask), do_sample=False, pad_token_id=0, eos_token_id=None,
                               max_new_tokens=16, logits_processor=LogitsProcessorList([PresenceFrequencyPenalty(width, presence, frequency)]), **extra)
        setting = {"presence_penalty": presence, "frequency_penalty": frequency, **extra}
        if "sequence_bias" in setting:
            setting["sequence_bias"] = [[list(k), v] for k, v in setting["sequence_bias"].items()]
        cases.append({"setting": setting, "sequences": o.tolist()})
    out[name] = {"prompt": prompt, "attention_mask": mask, "cases": cases}

path = os.path.join(ROOT, "generation-processors", "penalties.json")
with open(path, "w") as f:
    json.dump(out, f)
print(f"{sum(len(v['cases']) for v in out.values())} cases -> {path}")
