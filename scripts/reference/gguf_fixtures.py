"""GGUF reference data, for test/io/gguf.test.ts. Needs the `gguf` package (pip install gguf) beside transformers.

1. dequant.gguf: one tensor of each ggml type nemotron-tfjs reads, random blocks (finite scales), and what gguf-py's
   dequantize() makes of them (dequant.json); iquants.gguf / iquants.json the same for the i-quants, TQ and FP4 types.
2. tiny-gqa.gguf: the tiny-gqa causal LM as llama.cpp's convert_hf_to_gguf.py writes a Nemotron checkpoint (llama.cpp
   names, LayerNorm1P weights + 1, `nemotron.*` keys, a SentencePiece vocabulary), its tensors in several types; what
   transformers computes from it (NemotronForCausalLM.from_pretrained(gguf_file=...)) and how its tokenizer encodes
   (tiny-gqa-gguf.json).

    .venv-ref/bin/python scripts/reference/gguf_fixtures.py
"""
import json
import os

import numpy as np
import torch
import gguf
from gguf import GGMLQuantizationType as Q, quants

ROOT = os.path.join(os.path.dirname(__file__), "..", "..", "test", "fixtures")
OUT = os.path.join(ROOT, "gguf")


def random_blocks(qtype, rows, cols, rng):
    """Random bytes for `rows` × `cols` values of qtype, with every f16 scale a finite value of moderate size."""
    block_values, block_bytes = gguf.GGML_QUANT_SIZES[qtype]
    blocks = rows * cols // block_values
    data = rng.integers(0, 256, size=(blocks, block_bytes), dtype=np.uint8)
    # Where each type keeps its f16 scales (d, and dmin / m where it has them).
    half_at = {Q.Q4_0: [0], Q.Q4_1: [0, 2], Q.Q5_0: [0], Q.Q5_1: [0, 2], Q.Q8_0: [0], Q.Q2_K: [80, 82], Q.Q3_K: [108],
               Q.Q4_K: [0, 2], Q.Q5_K: [0, 2], Q.Q6_K: [208]}[qtype]
    for at in half_at:
        scales = rng.uniform(-0.05, 0.05, size=blocks).astype(np.float16)
        data[:, at:at + 2] = scales.view(np.uint8).reshape(blocks, 2)
    return data.reshape(rows, cols // block_values * block_bytes)


def dequant_fixture(rng):
    writer = gguf.GGUFWriter(os.path.join(OUT, "dequant.gguf"), "nemotron")
    expected = {}
    for qtype in [Q.Q4_0, Q.Q4_1, Q.Q5_0, Q.Q5_1, Q.Q8_0, Q.Q2_K, Q.Q3_K, Q.Q4_K, Q.Q5_K, Q.Q6_K]:
        raw = random_blocks(qtype, 2, 512, rng)
        writer.add_tensor(qtype.name, raw, raw_shape=raw.shape, raw_dtype=qtype)
        expected[qtype.name] = quants.dequantize(raw, qtype).astype(np.float32).reshape(-1).tolist()
    # Q8_0 and Q4_0 as gguf-py quantizes (llama.cpp's quantize_row_q*_ref), with ties and zero blocks, for the writer.
    source = (rng.normal(size=(4, 64)) * 3).astype(np.float32)
    source[0, :32] = 0
    source[1, :32] = np.arange(32, dtype=np.float32) - 12.7
    writer.add_tensor("Q8_0_SOURCE", source)
    raw = quants.quantize(source, Q.Q8_0)
    writer.add_tensor("Q8_0_OF_SOURCE", raw, raw_shape=raw.shape, raw_dtype=Q.Q8_0)
    raw = quants.quantize(source, Q.Q4_0)
    writer.add_tensor("Q4_0_OF_SOURCE", raw, raw_shape=raw.shape, raw_dtype=Q.Q4_0)
    values = rng.normal(size=(3, 8)).astype(np.float32)
    raw = quants.quantize(values, Q.BF16)
    writer.add_tensor("BF16", raw, raw_shape=raw.shape, raw_dtype=Q.BF16)
    expected["BF16"] = quants.dequantize(raw, Q.BF16).astype(np.float32).reshape(-1).tolist()
    for name, dtype in [("F16", np.float16), ("F32", np.float32)]:
        values = rng.normal(size=(3, 8)).astype(dtype)
        writer.add_tensor(name, values)
        expected[name] = values.astype(np.float32).reshape(-1).tolist()
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    json.dump({"shape": [2, 512], "values": expected}, open(os.path.join(OUT, "dequant.json"), "w"))


def iquant_fixture(rng):
    """iquants.gguf: random blocks of each of llama.cpp's newer types (the i-quants, ternary, FP4), scales kept finite
    and moderate, and what gguf-py's dequantize() makes of them (iquants.json)."""
    writer = gguf.GGUFWriter(os.path.join(OUT, "iquants.gguf"), "nemotron")
    expected = {}
    half_at = {Q.IQ2_XXS: 0, Q.IQ2_XS: 0, Q.IQ2_S: 0, Q.IQ3_XXS: 0, Q.IQ3_S: 0, Q.IQ1_S: 0, Q.IQ4_NL: 0, Q.IQ4_XS: 0, Q.TQ1_0: 52, Q.TQ2_0: 64}
    for qtype in [Q.IQ2_XXS, Q.IQ2_XS, Q.IQ2_S, Q.IQ3_XXS, Q.IQ3_S, Q.IQ1_S, Q.IQ1_M, Q.IQ4_NL, Q.IQ4_XS, Q.TQ1_0, Q.TQ2_0, Q.MXFP4, Q.NVFP4]:
        block_values, block_bytes = gguf.GGML_QUANT_SIZES[qtype]
        rows, cols = 2, 512
        blocks = rows * cols // block_values
        data = rng.integers(0, 256, size=(blocks, block_bytes), dtype=np.uint8)
        scales = rng.uniform(-0.05, 0.05, size=blocks).astype(np.float16)
        if qtype in half_at:
            data[:, half_at[qtype]:half_at[qtype] + 2] = scales.view(np.uint8).reshape(blocks, 2)
        elif qtype == Q.IQ1_M:
            # The f16 scale in the top nibbles of the last four u16 (bits 0-3 in the first, … 12-15 in the fourth).
            words = data[:, 48:56].copy().view(np.uint16)
            bits = scales.view(np.uint16)
            for i in range(4):
                words[:, i] = (words[:, i] & 0x0FFF) | (((bits >> (4 * i)) & 0xF) << 12)
            data[:, 48:56] = words.view(np.uint8)
        elif qtype == Q.MXFP4:
            data[:, 0] = rng.integers(100, 150, size=blocks)  # e8m0 exponents that keep every value finite
        raw = data.reshape(rows, cols // block_values * block_bytes)
        writer.add_tensor(qtype.name, raw, raw_shape=raw.shape, raw_dtype=qtype)
        expected[qtype.name] = quants.dequantize(raw, qtype).astype(np.float32).reshape(-1).tolist()
        assert np.isfinite(expected[qtype.name]).all(), qtype.name
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    json.dump({"shape": [2, 512], "values": expected}, open(os.path.join(OUT, "iquants.json"), "w"))


# llama.cpp's names for a Nemotron checkpoint's tensors (gguf-py's TensorNameMap for MODEL_ARCH.NEMOTRON).
def gguf_name(hf):
    rename = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
              "model.norm.bias": "output_norm.bias", "lm_head.weight": "output.weight"}
    if hf in rename:
        return rename[hf]
    parts = hf.split(".")  # model.layers.N.<module>.<proj>.<weight|bias>
    layer, rest = parts[2], ".".join(parts[3:])
    for hf_part, g in [("input_layernorm", "attn_norm"), ("post_attention_layernorm", "ffn_norm"), ("self_attn.q_proj", "attn_q"),
                       ("self_attn.k_proj", "attn_k"), ("self_attn.v_proj", "attn_v"), ("self_attn.o_proj", "attn_output"),
                       ("mlp.up_proj", "ffn_up"), ("mlp.down_proj", "ffn_down")]:
        if rest.startswith(hf_part + "."):
            return f"blk.{layer}.{g}.{rest[len(hf_part) + 1:]}"
    raise KeyError(hf)


def model_fixture():
    from safetensors.numpy import load_file
    from transformers import AutoTokenizer, NemotronForCausalLM

    source = os.path.join(ROOT, "hf-reference", "tiny-gqa", "causal-lm")
    config = json.load(open(os.path.join(source, "config.json")))
    weights = load_file(os.path.join(source, "model.safetensors"))
    tok = json.load(open(os.path.join(ROOT, "generation-processors", "tiny-gqa-tokenizer", "tokenizer.json")))
    vocab = sorted(tok["model"]["vocab"].items(), key=lambda kv: kv[1])
    path = os.path.join(OUT, "tiny-gqa.gguf")
    writer = gguf.GGUFWriter(path, "nemotron")
    # What convert_hf_to_gguf.py writes for Nemotron (TextModel.set_gguf_parameters + NemotronModel's own keys).
    writer.add_name("tiny-gqa")
    writer.add_context_length(config["max_position_embeddings"])
    writer.add_embedding_length(config["hidden_size"])
    writer.add_block_count(config["num_hidden_layers"])
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_head_count(config["num_attention_heads"])
    writer.add_head_count_kv(config["num_key_value_heads"])
    writer.add_rope_freq_base(config["rope_parameters"]["rope_theta"])
    writer.add_vocab_size(config["vocab_size"])
    writer.add_layer_norm_eps(config["norm_eps"])
    writer.add_rope_dimension_count(int(config["partial_rotary_factor"] * config["hidden_size"]) // config["num_attention_heads"])
    writer.add_rope_scaling_type(gguf.RopeScalingType.NONE)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_Q8_0)
    # A SentencePiece vocabulary: the tokens in id order, scores that rank longer pieces first, specials as control.
    writer.add_tokenizer_model("llama")
    writer.add_token_list([t for t, _ in vocab])
    # Scores in no simple relation to the ids, so that the recovered merge order matters.
    writer.add_token_scores([0.0 if i < 4 else -float((i * 37) % 89) - len(t) / 10 for t, i in vocab])
    writer.add_token_types([2 if t == "<unk>" else 3 if i < 4 else 1 for t, i in vocab])
    writer.add_bos_token_id(2)
    writer.add_eos_token_id(3)
    writer.add_unk_token_id(1)
    writer.add_pad_token_id(0)
    writer.add_add_bos_token(True)
    types = {}
    matrices = 0
    for name, value in sorted(weights.items()):
        value = value.astype(np.float32)
        if name.endswith("norm.weight"):
            value = value + 1  # llama.cpp stores LayerNorm1P's weight with its +1
        # 2-D weights in turn as Q8_0, Q4_0, Q5_1, F16 and F32; 1-D ones as F32.
        qtype = [Q.Q8_0, Q.Q4_0, Q.Q5_1, Q.F16, Q.Q5_0, Q.F32, Q.Q4_1][matrices % 7] if value.ndim == 2 else Q.F32
        matrices += value.ndim == 2
        types[gguf_name(name)] = qtype.name
        if qtype == Q.F32:
            writer.add_tensor(gguf_name(name), value)
        elif qtype == Q.F16:
            writer.add_tensor(gguf_name(name), value.astype(np.float16))
        else:
            raw = quants.quantize(value, qtype)
            writer.add_tensor(gguf_name(name), raw, raw_shape=raw.shape, raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()

    expected = json.load(open(os.path.join(ROOT, "hf-reference", "tiny-gqa", "expected.json")))
    ids = expected["input_ids"]
    model = NemotronForCausalLM.from_pretrained(OUT, gguf_file="tiny-gqa.gguf", dtype=torch.float32).eval()
    with torch.no_grad():
        logits = model(torch.tensor(ids)).logits
        generated = model.generate(torch.tensor(expected["gen_single_prompt"]), max_new_tokens=8, do_sample=False,
                                   eos_token_id=None, pad_token_id=0)
    tokenizer = AutoTokenizer.from_pretrained(OUT, gguf_file="tiny-gqa.gguf")
    texts = ["the stopped stone", "a tin of it", "stop it and stop", "x y z", "stopping is on the stone in an ion",
             "the rest of it is all at once", "no, it stopped: 'ed' ing!", " two  spaces and tabs\tend"]
    json.dump({
        "types": types, "config": {k: getattr(model.config, k) for k in ("vocab_size", "hidden_size", "num_hidden_layers",
            "num_attention_heads", "num_key_value_heads", "intermediate_size", "max_position_embeddings", "norm_eps")},
        "input_ids": ids, "logits": [[[float(f"{v:.7g}") for v in row] for row in seq] for seq in logits.tolist()],
        "generated": generated.tolist(), "gen_prompt": expected["gen_single_prompt"],
        "texts": texts, "encoded": [tokenizer.encode(t) for t in texts],
        "decoded": [tokenizer.decode(tokenizer.encode(t), skip_special_tokens=True) for t in texts],
    }, open(os.path.join(OUT, "tiny-gqa-gguf.json"), "w"))
    print("types", types)


if __name__ == "__main__":
    os.makedirs(OUT, exist_ok=True)
    dequant_fixture(np.random.default_rng(0))
    iquant_fixture(np.random.default_rng(1))
    model_fixture()
