"""LoRA reference data from PEFT, for test/models/lora.test.ts.

For each tiny fixture configuration: PEFT's LoRA on transformers' NemotronForCausalLM (float32, eager attention), with
random A and B (B is zero at PEFT's init, which would test nothing), saved by PEFT's save_pretrained; then the causal
batch's logits and loss, the gradient of every adapter parameter, and the logits after merge_and_unload().

    .venv-ref/bin/pip install peft      # not in the CI venv: the outputs are committed
    .venv-ref/bin/python scripts/reference/peft_lora_fixtures.py
"""
import json
import os

import torch
from peft import LoraConfig, get_peft_model
from safetensors.torch import save_file
from transformers import NemotronForCausalLM, NemotronForSequenceClassification

ROOT = os.path.join(os.path.dirname(__file__), "..", "..", "test", "fixtures")
CASES = {
    # Attention and MLP projections in every layer, scaling alpha / r.
    "tiny-gqa": dict(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"]),
    # Every linear projection (biases in the base), rank-stabilised scaling alpha / sqrt(r), layers 0 and 2 only.
    "tiny-mha-bias": dict(r=3, lora_alpha=6, target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "up_proj", "down_proj"],
                          use_rslora=True, layers_to_transform=[0, 2]),
}

def fixture(model, lora_config, out_dir, inputs, labels, merge, note):
    """PEFT's LoRA on `model` with random adapters (and perturbed modules to save), saved by PEFT; the batch's logits and
    loss, every trainable parameter's gradient (PEFT's saved names), and with `merge` the logits after merge_and_unload()."""
    model.eval()
    peft_model = get_peft_model(model, lora_config)
    with torch.no_grad():
        for param_name, param in peft_model.named_parameters():
            if "lora_" in param_name:
                param.copy_(torch.randn_like(param) * 0.2)
            elif "modules_to_save" in param_name:
                param.add_(torch.randn_like(param) * 0.2)
    peft_model.save_pretrained(os.path.join(out_dir, "adapter"))
    os.remove(os.path.join(out_dir, "adapter", "README.md"))
    out = peft_model(**inputs, labels=labels)
    out.loss.backward()
    tensors = {"logits": out.logits.detach().contiguous()}
    for param_name, param in peft_model.named_parameters():
        if param.requires_grad:
            tensors["grad." + param_name.replace(".modules_to_save", "").replace(".default", "")] = param.grad.detach().contiguous()
    if merge:
        merged = peft_model.merge_and_unload()
        with torch.no_grad():
            tensors["merged.logits"] = merged(**inputs).logits.contiguous()
    save_file(tensors, os.path.join(out_dir, "expected.safetensors"))
    json.dump({"loss": out.loss.item(), **note}, open(os.path.join(out_dir, "expected.json"), "w"), indent=1)
    print(out_dir, "loss", out.loss.item(), "trainable", sum(1 for k in tensors if k.startswith("grad.")))


def load(cls, source, sub):
    return cls.from_pretrained(os.path.join(source, sub), torch_dtype=torch.float32, attn_implementation="eager")


torch.manual_seed(0)
for name, settings in CASES.items():
    source = os.path.join(ROOT, "hf-reference", name)
    expected = json.load(open(os.path.join(source, "expected.json")))
    inputs = dict(input_ids=torch.tensor(expected["input_ids"]), attention_mask=torch.tensor(expected["attention_mask"]))
    fixture(load(NemotronForCausalLM, source, "causal-lm"), LoraConfig(lora_dropout=0.0, task_type="CAUSAL_LM", **settings),
            os.path.join(ROOT, "peft-lora", name), inputs, torch.tensor(expected["causal_labels"]), True, {"settings": settings})

# Sequence classification: PEFT's SEQ_CLS task type also trains the score head whole (modules_to_save); its copy is
# perturbed too, so that loading it matters.
source = os.path.join(ROOT, "hf-reference", "tiny-gqa")
expected = json.load(open(os.path.join(source, "expected.json")))
inputs = dict(input_ids=torch.tensor(expected["input_ids"]), attention_mask=torch.tensor(expected["attention_mask"]))
fixture(load(NemotronForSequenceClassification, source, "seqcls-single"),
        LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], lora_dropout=0.0, task_type="SEQ_CLS"),
        os.path.join(ROOT, "peft-lora", "tiny-gqa-seqcls"), inputs, torch.tensor(expected["seqcls_single_labels"]), False,
        {"labels": expected["seqcls_single_labels"]})
