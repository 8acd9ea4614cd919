"""Live reference for NemotronH: loads checkpoints that nemotron-tfjs saved (NemotronHForCausalLM.savePretrained),
with transformers, and records what it computes: the logits of a left-padded batch, the causal LM loss, the loss's
gradients (the first values of every parameter), and greedy generation through its cache.

    python live_parity_nemotron_h.py CASES.json OUT.json

CASES.json (written by test/reference/live-parity-nemotron-h.test.ts): {"cases": [{"dir", "input_ids",
"attention_mask", "labels", "prompt", "max_new_tokens"}]}.
"""
import json
import sys

import torch
import transformers
from transformers import NemotronHForCausalLM


def main():
    cases = json.load(open(sys.argv[1]))["cases"]
    results = []
    for case in cases:
        model = NemotronHForCausalLM.from_pretrained(case["dir"], dtype=torch.float32).eval()
        ids = torch.tensor(case["input_ids"])
        mask = torch.tensor(case["attention_mask"])
        with torch.no_grad():
            logits = model(ids, attention_mask=mask).logits
            greedy = model.generate(torch.tensor([case["prompt"]]), max_new_tokens=case["max_new_tokens"], do_sample=False,
                                    eos_token_id=None, pad_token_id=0)
        model.zero_grad()
        loss = model(torch.tensor([case["labels"]]), labels=torch.tensor([case["labels"]])).loss
        loss.backward()
        grads = {n: p.grad.flatten()[:8].tolist() for n, p in model.named_parameters() if p.grad is not None}
        results.append({"logits": logits.tolist(), "loss": loss.item(), "gradients": grads, "greedy": greedy[0].tolist()})
    json.dump({"results": results, "versions": {"torch": torch.__version__, "transformers": transformers.__version__}}, open(sys.argv[2], "w"))


if __name__ == "__main__":
    main()
