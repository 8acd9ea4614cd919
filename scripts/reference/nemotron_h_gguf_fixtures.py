"""NemotronH GGUF reference data, for test/io/gguf-nemotron-h.test.ts. Needs the `gguf` package (pip install gguf).

transformers cannot read a NemotronH GGUF, so the judge is the checkpoint the GGUF was made from: two tiny NemotronH
models (hybrid "M*M-", and mixture-of-experts "ME*E" with latent projections) with a tekken-style byte-level BPE
tokenizer (Nemotron-H's kind: llama.cpp calls its pre-tokenizer "tekken"), written here as llama.cpp's
convert_hf_to_gguf.py (NemotronHModel) writes such a checkpoint:

- architecture `nemotron_h` (or `nemotron_h_moe` with experts); per-layer `head_count_kv` and `feed_forward_length`
  arrays (zero where the layer has none), the `ssm.*` keys, context length 2**20 (no rope), the experts' keys;
- A_log stored as A = -exp(A_log) of shape [heads, 1], D as [heads, 1], conv1d squeezed to [channels, kernel], the gated
  norm as [groups, inner / groups], dt_bias as `ssm_dt.bias`, the router's correction bias as `exp_probs_b.bias`,
  experts stacked into `ffn_{up,down}_exps`, and the attention q/k rows permuted per head (Llama's undo_permute,
  which GraniteHybridModel turns on);
- the vocabulary as `tokenizer.ggml.model` "gpt2": the byte-level tokens in id order, token types (control for the
  special added tokens, user-defined for the others), merges, pre "tekken", BOS/EOS/UNK/PAD ids, add_bos_token.

Each model is written in F32 and as a mostly-Q8_0 file (llama.cpp's rules: 1-D tensors, norms, conv1d, the router and
anything not named .weight stay F32; rows that are not whole Q8_0 blocks fall back to F16). What transformers computes
with the original weights (the F32 file must give the same) and with the Q8_0 file's rounding applied to them (Q8_0
rounds within each row, so permuting or stacking rows does not change it); how the original tokenizer encodes texts.

    .venv-ref/bin/python scripts/reference/nemotron_h_gguf_fixtures.py
"""
import json
import os

import numpy as np
import torch
import gguf
from gguf import GGMLQuantizationType as Q, quants
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import NemotronHConfig, NemotronHForCausalLM, PreTrainedTokenizerFast

OUT = os.path.join(os.path.dirname(__file__), "..", "..", "test", "fixtures", "nemotron-h-gguf")
TEKKEN = (r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+"
          r"[\p{Ll}\p{Lm}\p{Lo}\p{M}]*|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+")
CORPUS = [
    "The quick brown fox jumps over the lazy dog. The dog sleeps; the fox runs on.",
    "NemotronH mixes Mamba layers with attention layers and MLP layers.",
    "In 2025, 12 models ran 3456 tokens per second on 8 GPUs.",
    "Hello World! HelloWorld and helloWorld are CamelCase words.",
    "naïve café: résumé, façade and Ärger über Öl.\n\nNew lines\r\nand tabs\there.",
    "def main():\n    return 42  # the answer\n",
    "日本語のテキストと中文文本。", "emoji 🙂 and symbols: <>/[]{} -- ++ == !=",
] * 4
TEXTS = ["The quick brown fox", "HelloWorld and NemotronH", "In 2025, 3456 tokens!", "naïve café\n\nnew  lines\r\n",
         "def f():\n    return 42\n", "日本語 and 🙂 emoji", "<think>reasoning</think> done", "  leading and trailing  ",
         "</s> is special text", "x/y//z <> ++"]


def tokenizer_fixture(out):
    tok = Tokenizer(models.BPE(unk_token=None, byte_fallback=False))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(TEKKEN), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False)])
    tok.decoder = decoders.ByteLevel(add_prefix_space=True, trim_offsets=True, use_regex=True)
    trainer = trainers.BpeTrainer(vocab_size=318, special_tokens=["<unk>", "<s>", "</s>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(CORPUS, trainer)
    tok.add_tokens(["<think>", "</think>"])
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", 1)])
    assert tok.get_vocab_size() == 320, tok.get_vocab_size()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<unk>")
    fast.chat_template = "{% for m in messages %}<s>{{ m['role'] }}\n{{ m['content'] }}</s>\n{% endfor %}{% if add_generation_prompt %}<s>assistant\n{% endif %}"
    fast.save_pretrained(out)
    config = json.load(open(os.path.join(out, "tokenizer_config.json")))
    config["add_bos_token"] = True
    json.dump(config, open(os.path.join(out, "tokenizer_config.json"), "w"), indent=2)
    return fast


# The other byte-level pre-tokenizers llama.cpp names, as the original tokenizer.json files define them.
LLAMA3 = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
QWEN2 = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
OTHER_PRE = {
    "gpt-2": (pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True), False),
    "llama-bpe": (pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(LLAMA3), behavior="isolated", invert=False),
                                           pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False)]), True),
    "qwen2": (pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(QWEN2), behavior="isolated", invert=False),
                                       pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)]), False),
}


def vocab_only(pre, out):
    """A vocabulary-only GGUF (as llama.cpp's ggml-vocab-*.gguf) of a tokenizer trained with `pre`; its encodings."""
    pre_tokenizer, ignore_merges = OTHER_PRE[pre]
    tok = Tokenizer(models.BPE(unk_token=None, byte_fallback=False, ignore_merges=ignore_merges))
    tok.pre_tokenizer = pre_tokenizer
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(CORPUS, trainers.BpeTrainer(vocab_size=340, special_tokens=["<unk>", "<s>", "</s>"],
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", 1)])
    vocab = tok.get_vocab()
    tokens = [t for t, _ in sorted(vocab.items(), key=lambda kv: kv[1])]
    writer = gguf.GGUFWriter(out, "nemotron_h")
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_types([gguf.TokenType.CONTROL if i < 3 else gguf.TokenType.NORMAL for i in range(len(tokens))])
    merges = json.loads(tok.to_str())["model"]["merges"]
    writer.add_token_merges([" ".join(m) if isinstance(m, list) else m for m in merges])
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_add_bos_token(True)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return {"encoded": [tok.encode(t).ids for t in TEXTS], "decoded": [tok.decode(tok.encode(t).ids) for t in TEXTS]}


def permute(w, n_head, n_head_kv):
    """llama.cpp's LlamaModel.permute: each head's rows from halves [first, second] to interleaved pairs."""
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def convert(src, path, qtype, moe, tokenizer):
    """The checkpoint in `src` as convert_hf_to_gguf.py's NemotronHModel writes it (mostly `qtype`); the types used."""
    from safetensors.numpy import load_file
    hp = json.load(open(os.path.join(src, "config.json")))
    weights = load_file(os.path.join(src, "model.safetensors"))
    arch = gguf.MODEL_ARCH.NEMOTRON_H_MOE if moe else gguf.MODEL_ARCH.NEMOTRON_H
    # The pattern the original config spells out (hybrid_override_pattern); transformers 5 saves it as names.
    kinds = {"linear_attention": "M", "mamba": "M", "full_attention": "*", "attention": "*", "mlp": "-", "moe": "E"}
    layers = [kinds[t] for t in hp["layers_block_type"]]
    n = len(layers)
    names = gguf.get_tensor_name_map(arch, n)
    writer = gguf.GGUFWriter(path, gguf.MODEL_ARCH_NAMES[arch])
    writer.add_name("tiny-nemotron-h")
    # GraniteMoe/Llama's keys, then GraniteHybrid's and NemotronH's.
    writer.add_block_count(n)
    writer.add_embedding_length(hp["hidden_size"])
    writer.add_head_count(hp["num_attention_heads"])
    writer.add_layer_norm_rms_eps(hp["layer_norm_epsilon"])
    writer.add_layer_norm_eps(hp["layer_norm_epsilon"])  # TextModel.set_gguf_parameters; llama.cpp requires it
    writer.add_vocab_size(hp["vocab_size"])
    writer.add_ssm_conv_kernel(hp["conv_kernel"])
    writer.add_ssm_state_size(hp["ssm_state_size"])
    writer.add_ssm_group_count(hp["n_groups"])
    writer.add_ssm_inner_size(hp["mamba_num_heads"] * hp["mamba_head_dim"])
    writer.add_ssm_time_step_rank(hp["mamba_num_heads"])
    writer.add_head_count_kv([hp["num_key_value_heads"] if t == "*" else 0 for t in layers])
    writer.add_rope_scaling_finetuned(False)
    writer.add_context_length(2 ** 20)
    writer.add_key_length(hp["head_dim"])
    writer.add_value_length(hp["head_dim"])
    ffn_kind = "E" if moe else "-"
    ffn = hp["moe_intermediate_size"] if moe else hp["intermediate_size"]
    writer.add_feed_forward_length([ffn if t == ffn_kind else 0 for t in layers])
    if moe:
        writer.add_expert_used_count(hp["num_experts_per_tok"])
        writer.add_expert_feed_forward_length(hp["moe_intermediate_size"])
        writer.add_expert_shared_feed_forward_length(hp["moe_shared_expert_intermediate_size"])
        writer.add_expert_count(hp["n_routed_experts"])
        writer.add_expert_shared_count(hp["n_shared_experts"])
        writer.add_expert_weights_norm(hp["norm_topk_prob"])
        writer.add_expert_weights_scale(hp["routed_scaling_factor"])
        writer.add_expert_group_count(hp["n_group"])
        if hp.get("moe_latent_size") is not None:
            writer.add_moe_latent_size(hp["moe_latent_size"])
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_Q8_0 if qtype == Q.Q8_0 else gguf.LlamaFileType.ALL_F32)
    # The vocabulary (NemotronHModel.set_vocab: the tokens by id, control / user-defined types, then SpecialVocab).
    vocab = tokenizer.get_vocab()
    reverse = {i: t for t, i in vocab.items()}
    added = tokenizer.added_tokens_decoder
    tokens, types = [], []
    for i in range(hp["vocab_size"]):
        if i not in reverse:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
        else:
            tokens.append(reverse[i])
            types.append(gguf.TokenType.NORMAL if i not in added else gguf.TokenType.CONTROL if added[i].special else gguf.TokenType.USER_DEFINED)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("tekken")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    gguf.SpecialVocab(src, load_merges=True).add_to_gguf(writer)

    # The tensors: NemotronHModel.modify_tensors (and Mamba2Model's), then the type each gets.
    stored = {}
    experts = {}
    for name, value in sorted(weights.items()):
        value = torch.from_numpy(value.astype(np.float32))
        m = name.split(".")
        bid = int(m[2]) if m[1] == "layers" else None
        if name.endswith(".dt_bias"):
            name = name[: -len("dt_bias")] + "dt.bias"
        if name.endswith("gate.e_score_correction_bias"):
            name = name[: -len("e_score_correction_bias")] + "e_score_correction.bias"
        if name.endswith("mixer.conv1d.weight"):
            value = value.squeeze()
        if name.endswith("mixer.A_log"):
            value = (-torch.exp(value)).reshape(-1, 1)
        if name.endswith("mixer.D"):
            value = value.reshape(-1, 1)
        if name.endswith("mixer.norm.weight"):
            value = value.reshape(hp["n_groups"], -1)
        if name.endswith("q_proj.weight"):
            value = permute(value, hp["num_attention_heads"], hp["num_attention_heads"])
        if name.endswith("k_proj.weight"):
            value = permute(value, hp["num_attention_heads"], hp["num_key_value_heads"])
        if ".mixer.experts." in name:
            kind = m[-2]
            experts.setdefault((bid, kind), {})[int(m[5])] = value
            continue
        base = name.rsplit(".", 1)
        gname = names.get_name(base[0]) if base[1] in ("weight", "bias") else names.get_name(name)
        assert gname is not None, name
        stored[gname + ("." + base[1] if base[1] in ("weight", "bias") else "")] = value
    for (bid, kind), per in sorted(experts.items()):
        gname = names.get_name(f"model.layers.{bid}.mlp.experts.{kind}")
        stored[gname + ".weight"] = torch.stack([per[e] for e in range(len(per))])

    used = {}
    force_f32 = ("ssm_conv1d", "ffn_gate_inp")
    for gname, value in stored.items():
        data = value.numpy()
        kind = Q.F32
        if qtype != Q.F32 and data.ndim > 1 and gname.endswith(".weight") and not gname.endswith("_norm.weight") and not any(f in gname for f in force_f32):
            kind = qtype if data.shape[-1] % 32 == 0 else Q.F16
        used[gname] = kind.name
        if kind == Q.F32:
            writer.add_tensor(gname, data)
        elif kind == Q.F16:
            writer.add_tensor(gname, data.astype(np.float16))
        else:
            raw = quants.quantize(data, kind)
            writer.add_tensor(gname, raw, raw_shape=raw.shape, raw_dtype=kind)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return used


def rounded_like_q8_0(model, used):
    """The model's weights with the rounding the mostly-Q8_0 file applies (row-wise, so in the HF layout too)."""
    rounded = NemotronHForCausalLM(model.config).eval()
    rounded.load_state_dict(model.state_dict())
    kinds = {"embeddings": "token_embd", "lm_head": "output"}
    with torch.no_grad():
        for name, p in rounded.named_parameters():
            if p.dim() < 2 or name.endswith(("conv1d.weight", "gate.weight")):
                continue
            # Which stored tensor this weight went to, by its role (in_proj → ssm_in, experts.up_proj → ffn_up_exps …).
            key = next((g for g, k in used.items() if role_matches(name, g)), None)
            assert key is not None, name
            data = p.detach().numpy().astype(np.float32)
            if used[key] == "Q8_0":
                p.copy_(torch.from_numpy(quants.dequantize(quants.quantize(data, Q.Q8_0), Q.Q8_0).reshape(data.shape)))
            elif used[key] == "F16":
                p.copy_(torch.from_numpy(data.astype(np.float16).astype(np.float32)))
    return rounded


ROLES = {"in_proj": "ssm_in", "out_proj": "ssm_out", "q_proj": "attn_q", "k_proj": "attn_k", "v_proj": "attn_v", "o_proj": "attn_output",
         "up_proj": "ffn_up", "down_proj": "ffn_down", "fc1_latent_proj": "ffn_latent_down", "fc2_latent_proj": "ffn_latent_up"}


def role_matches(hf, gname):
    if hf.startswith("model.embeddings"):
        return gname == "token_embd.weight"
    if hf.startswith("lm_head"):
        return gname == "output.weight"
    parts = hf.split(".")
    layer = parts[2]
    module = parts[-2] if parts[-1] == "weight" else parts[-1]
    suffix = "_exps" if ".experts." in hf else "_shexp" if ".shared_experts." in hf else ""
    return gname == f"blk.{layer}.{ROLES[module]}{suffix}.weight"


def sig7(values):
    return [sig7(v) for v in values] if isinstance(values, list) else float(f"{values:.7g}")


def main():
    os.makedirs(OUT, exist_ok=True)
    tokenizer = tokenizer_fixture(os.path.join(OUT, "tokenizer"))
    common = dict(vocab_size=320, hidden_size=32, num_hidden_layers=4, mamba_num_heads=4, mamba_head_dim=8, n_groups=2, ssm_state_size=8,
                  conv_kernel=4, chunk_size=4, num_attention_heads=4, num_key_value_heads=2, head_dim=8, intermediate_size=64,
                  max_position_embeddings=64, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    cases = {
        "hybrid": NemotronHConfig(hybrid_override_pattern="M*M-", **common),
        # Nemotron 3 Nano's kind: one expert group, a shared expert, sigmoid scores with a correction bias; latent projections.
        "moe": NemotronHConfig(hybrid_override_pattern="ME*E", n_routed_experts=8, num_experts_per_tok=2, n_group=1, topk_group=1,
                               moe_intermediate_size=32, moe_shared_expert_intermediate_size=32, routed_scaling_factor=2.5,
                               norm_topk_prob=True, moe_latent_size=16, **common),
    }
    ids = [tokenizer.encode("The quick brown fox jumps over the lazy dog."), tokenizer.encode("HelloWorld: 2025 models!")]
    width = max(len(r) for r in ids)
    mask = [[0] * (width - len(r)) + [1] * len(r) for r in ids]
    ids = [[0] * (width - len(r)) + r for r in ids]
    expected = {"input_ids": ids, "attention_mask": mask, "models": {}}
    for seed, (name, config) in enumerate(cases.items()):
        torch.manual_seed(seed)
        model = NemotronHForCausalLM(config).eval()
        with torch.no_grad():
            for _, p in model.named_parameters():
                p.add_(torch.randn_like(p) * (0.3 if p.dim() == 1 else 0.15))
            for layer in model.model.layers:
                if hasattr(layer.mixer, "gate"):
                    layer.mixer.gate.e_score_correction_bias.copy_(torch.randn(config.n_routed_experts) * 0.1)
        src = os.path.join(OUT, name)
        model.save_pretrained(src)
        tokenizer.save_pretrained(src)
        config_json = json.load(open(os.path.join(src, "tokenizer_config.json")))
        config_json["add_bos_token"] = True
        json.dump(config_json, open(os.path.join(src, "tokenizer_config.json"), "w"), indent=2)
        convert(src, os.path.join(OUT, f"{name}-f32.gguf"), Q.F32, name == "moe", tokenizer)
        used = convert(src, os.path.join(OUT, f"{name}-q8_0.gguf"), Q.Q8_0, name == "moe", tokenizer)
        rounded = rounded_like_q8_0(model, used)
        with torch.no_grad():
            logits = model(torch.tensor(ids), attention_mask=torch.tensor(mask)).logits
            q8_logits = rounded(torch.tensor(ids), attention_mask=torch.tensor(mask)).logits
            greedy = model.generate(torch.tensor(ids[:1]), max_new_tokens=8, do_sample=False, eos_token_id=None, pad_token_id=0)
        print(name, "q8_0 vs f32 logits:", (logits - q8_logits).abs().max().item(), "types:", sorted(set(used.values())))
        expected["models"][name] = {
            "logits": sig7(logits.tolist()), "q8_0_logits": sig7(q8_logits.tolist()), "greedy": greedy[0].tolist(), "q8_0_types": used,
        }
    expected["texts"] = TEXTS
    expected["encoded"] = [tokenizer.encode(t) for t in TEXTS]
    expected["decoded"] = [tokenizer.decode(tokenizer.encode(t), skip_special_tokens=True) for t in TEXTS]
    expected["vocab_only"] = {pre: vocab_only(pre, os.path.join(OUT, f"vocab-{pre}.gguf")) for pre in OTHER_PRE}
    json.dump(expected, open(os.path.join(OUT, "expected.json"), "w"))


if __name__ == "__main__":
    main()
