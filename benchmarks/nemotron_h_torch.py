"""PyTorch + transformers on the NemotronH shape of benchmarks/nemotron-h.ts (same figures, same machine), for its comparison.

    .venv-ref/bin/python benchmarks/nemotron_h_torch.py
"""
import time, torch
from transformers import NemotronHConfig, NemotronHForCausalLM
torch.set_num_threads(2)
c = NemotronHConfig(vocab_size=32000, hidden_size=1024, layers_block_type=['linear_attention','mlp','linear_attention','mlp','linear_attention','full_attention','mlp','linear_attention','mlp','linear_attention','mlp','linear_attention'],
    mamba_num_heads=32, mamba_head_dim=64, n_groups=8, ssm_state_size=128, conv_kernel=4, chunk_size=128, num_attention_heads=16, num_key_value_heads=4, head_dim=64,
    intermediate_size=4096, max_position_embeddings=4096)
m = NemotronHForCausalLM(c).eval()
print('params', sum(p.numel() for p in m.parameters())/1e6)
prompt = lambda n: torch.tensor([[(i * 7919 + 3) % 32000 for i in range(n)]])
with torch.no_grad():
    m(prompt(16))
    for n in (128, 512):
        for run in ('first', 'second'):
            t = time.time(); m(prompt(n)); s = time.time() - t
            print(f'prompt {n} ({run} at this length): {s:.2f} s = {n/s:.1f} tok/s')
    t = time.time(); m.generate(prompt(32), max_new_tokens=1, do_sample=False, eos_token_id=None, pad_token_id=0); first = time.time() - t
    t = time.time(); m.generate(prompt(32), max_new_tokens=65, do_sample=False, eos_token_id=None, pad_token_id=0); s = time.time() - t
    print(f'decode 64 after prefill: {(s-first):.2f} s = {64/(s-first):.1f} tok/s')
    # Rows decoded together: batch 4 and 8 of 32-token prompts (no padding), 64 new tokens each, prompt pass included.
    for rows in (4, 8):
        batch = torch.stack([(prompt(32)[0] + 101 * r) % 32000 for r in range(rows)])
        t = time.time(); m.generate(batch, max_new_tokens=64, min_new_tokens=64, do_sample=False, eos_token_id=None, pad_token_id=0); s = time.time() - t
        print(f'{rows} rows together, 64 new tokens each: {s:.2f} s = {rows*64/s:.1f} new tok/s')
    # The mixture-of-experts shape of benchmarks/nemotron-h.ts: decoding 64 tokens after a 32-token prompt.
    mc = NemotronHConfig(vocab_size=32000, hidden_size=1024, layers_block_type=['linear_attention','moe','linear_attention','moe','linear_attention','full_attention','moe','linear_attention','moe','linear_attention','moe','linear_attention'],
        mamba_num_heads=32, mamba_head_dim=64, n_groups=8, ssm_state_size=128, conv_kernel=4, chunk_size=128, num_attention_heads=16, num_key_value_heads=4, head_dim=64,
        max_position_embeddings=4096, n_routed_experts=32, num_experts_per_tok=4, n_group=1, topk_group=1, moe_intermediate_size=704,
        moe_shared_expert_intermediate_size=1408, routed_scaling_factor=2.5)
    moe = NemotronHForCausalLM(mc).eval()
    print('moe params', sum(p.numel() for p in moe.parameters())/1e6)
    moe.generate(prompt(32), max_new_tokens=3, do_sample=False, eos_token_id=None, pad_token_id=0)
    t = time.time(); moe.generate(prompt(32), max_new_tokens=1, do_sample=False, eos_token_id=None, pad_token_id=0); first = time.time() - t
    t = time.time(); moe.generate(prompt(32), max_new_tokens=65, do_sample=False, eos_token_id=None, pad_token_id=0); s = time.time() - t
    print(f'moe decode 64 after prefill: {(s-first):.2f} s = {64/(s-first):.1f} tok/s')
