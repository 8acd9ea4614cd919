"""A tiny NemotronH (the hybrid Mamba-2 / attention / MLP architecture of Nemotron-H and Nemotron Nano 2) and what
transformers computes with it, for test/models/nemotron-h.test.ts.

Layers "M*M-": Mamba-2, attention, Mamba-2, MLP (relu²); 4 Mamba heads of 8 in 2 groups, state 8, chunk 4 (so a
10-token prompt runs in 3 chunks). Records logits of a left-padded batch, the loss with labels, greedy generation with
transformers' cache (its recurrent Mamba step and the attention KV cache), and the gradients of a few weights.

    .venv-ref/bin/python scripts/reference/nemotron_h_fixtures.py
"""
import json
import os

import torch
from transformers import NemotronHConfig, NemotronHForCausalLM

OUT = os.path.join(os.path.dirname(__file__), "..", "..", "test", "fixtures", "nemotron-h")

config = NemotronHConfig(
    vocab_size=96, hidden_size=32, hybrid_override_pattern="M*M-", num_hidden_layers=4, mamba_num_heads=4, mamba_head_dim=8,
    n_groups=2, ssm_state_size=8, conv_kernel=4, chunk_size=4, num_attention_heads=4, num_key_value_heads=2, head_dim=8,
    intermediate_size=64, max_position_embeddings=64, eos_token_id=2, pad_token_id=0, bos_token_id=1,
)
torch.manual_seed(0)
model = NemotronHForCausalLM(config).eval()
with torch.no_grad():
    # Default init leaves D, dt_bias at one and norms at one: move every weight off its init so that each one counts.
    for name, p in model.named_parameters():
        p.add_(torch.randn_like(p) * (0.3 if p.dim() == 1 else 0.15))
model.save_pretrained(os.path.join(OUT, "model"))

prompt = [[5, 17, 33, 8, 41, 62, 9, 27, 70, 12], [0, 0, 0, 44, 3, 19, 55, 61, 7, 30]]
mask = [[1] * 10, [0, 0, 0] + [1] * 7]
with torch.no_grad():
    logits = model(torch.tensor(prompt), attention_mask=torch.tensor(mask)).logits
    loss = model(torch.tensor(prompt[:1]), labels=torch.tensor(prompt[:1])).loss.item()
    generated = model.generate(torch.tensor(prompt[:1]), max_new_tokens=12, do_sample=False, eos_token_id=None, pad_token_id=0)
    alone = model(torch.tensor([prompt[1][3:]])).logits
    penalized = model.generate(torch.tensor(prompt[:1]), max_new_tokens=12, do_sample=False, eos_token_id=None, pad_token_id=0, repetition_penalty=1.3)

model.zero_grad()
model(torch.tensor(prompt[:1]), labels=torch.tensor(prompt[:1])).loss.backward()
grads = {n: p.grad.flatten()[:16].tolist() for n, p in model.named_parameters()
         if n in ("model.layers.0.mixer.A_log", "model.layers.0.mixer.D", "model.layers.0.mixer.dt_bias", "model.layers.0.mixer.conv1d.weight",
                  "model.layers.0.mixer.in_proj.weight", "model.layers.0.mixer.norm.weight", "model.layers.1.mixer.q_proj.weight",
                  "model.layers.3.mixer.up_proj.weight", "model.embeddings.weight")}

# One training step as the Trainer takes it: a right-padded batch (labels -100 at the padding), the mean loss over its
# tokens, gradients clipped to norm 1, AdamW (lr 1e-2, no weight decay).
train_batch = [prompt[0], prompt[1][3:] + [0, 0, 0]]
train_mask = [[1] * 10, [1] * 7 + [0, 0, 0]]
train_labels = [prompt[0], prompt[1][3:] + [-100, -100, -100]]
step_model = NemotronHForCausalLM.from_pretrained(os.path.join(OUT, "model")).train()
step_model.config.use_cache = False
optimizer = torch.optim.AdamW(step_model.parameters(), lr=1e-2, weight_decay=0.0)
step_loss = step_model(torch.tensor(train_batch), attention_mask=torch.tensor(train_mask), labels=torch.tensor(train_labels)).loss
step_loss.backward()
torch.nn.utils.clip_grad_norm_(step_model.parameters(), 1.0)
optimizer.step()
after_step = {n: p.detach().flatten()[:8].tolist() for n, p in step_model.named_parameters()
              if n in ("model.layers.0.mixer.A_log", "model.layers.0.mixer.in_proj.weight", "model.layers.1.mixer.k_proj.weight", "lm_head.weight")}
training = {"batch": train_batch, "mask": train_mask, "labels": train_labels, "loss": step_loss.item(), "after_step": after_step}

# A mixture-of-experts variant (Nemotron 3 Nano's "E" layers): 8 relu² experts in 2 groups, 2 a token from the best
# group, a shared expert, sigmoid router scores with a correction bias; and one with the latent projections.
moe_cases = {}
for name, latent in (("moe", None), ("moe-latent", 16)):
    moe_config = NemotronHConfig(
        vocab_size=96, hidden_size=32, hybrid_override_pattern="ME*E", num_hidden_layers=4, mamba_num_heads=4, mamba_head_dim=8,
        n_groups=2, ssm_state_size=8, conv_kernel=4, chunk_size=4, num_attention_heads=4, num_key_value_heads=2, head_dim=8,
        intermediate_size=64, max_position_embeddings=64, eos_token_id=2, pad_token_id=0, bos_token_id=1,
        n_routed_experts=8, num_experts_per_tok=2, n_group=2, topk_group=1, moe_intermediate_size=16,
        moe_shared_expert_intermediate_size=24, routed_scaling_factor=2.5, norm_topk_prob=True, moe_latent_size=latent,
    )
    torch.manual_seed(1)
    moe = NemotronHForCausalLM(moe_config).eval()
    with torch.no_grad():
        for _, p in moe.named_parameters():
            p.add_(torch.randn_like(p) * (0.3 if p.dim() == 1 else 0.15))
        for layer in moe.model.layers:
            if hasattr(layer.mixer, "gate"):
                layer.mixer.gate.e_score_correction_bias.copy_(torch.randn(8) * 0.1)
    moe.save_pretrained(os.path.join(OUT, name))
    with torch.no_grad():
        moe_logits = moe(torch.tensor(prompt), attention_mask=torch.tensor(mask)).logits
        moe_greedy = moe.generate(torch.tensor(prompt[:1]), max_new_tokens=12, do_sample=False, eos_token_id=None, pad_token_id=0)
    moe.zero_grad()
    moe(torch.tensor(prompt[:1]), labels=torch.tensor(prompt[:1])).loss.backward()
    moe_grads = {n: p.grad.flatten()[:16].tolist() for n, p in moe.named_parameters()
                 if n.startswith("model.layers.1.mixer.") and p.grad is not None}
    moe_cases[name] = {"logits": moe_logits.tolist(), "greedy": moe_greedy[0].tolist(), "gradients": moe_grads}
    print(name, "greedy", moe_greedy[0].tolist()[10:], sorted(moe_grads))

with open(os.path.join(OUT, "expected.json"), "w") as f:
    json.dump({
        "prompt": prompt, "attention_mask": mask, "logits": logits.tolist(), "loss": loss, "greedy": generated[0].tolist(), "greedy_repetition_penalty_1_3": penalized[0].tolist(),
        "row1_alone_logits": alone[0].tolist(), "gradients": grads, "moe": moe_cases, "training": training,
    }, f)
print("loss", loss, "greedy", generated[0].tolist()[10:])
print("row 1 padded vs alone:", (logits[1, 3:] - alone[0]).abs().max().item())
