"""The tiny fixture models of test/fixtures/hf-reference, loaded as the reference scripts run them."""
import json
import os

import torch
from transformers import NemotronForCausalLM

FIXTURES = os.path.join(os.path.dirname(__file__), "..", "..", "test", "fixtures")


def tiny_causal_lm(name):
    """(model, expected.json) of a tiny fixture configuration: float32, eager attention, in eval mode."""
    source = os.path.join(FIXTURES, "hf-reference", name)
    with open(os.path.join(source, "expected.json")) as f:
        expected = json.load(f)
    model = NemotronForCausalLM.from_pretrained(os.path.join(source, "causal-lm"), torch_dtype=torch.float32, attn_implementation="eager")
    return model.eval(), expected
