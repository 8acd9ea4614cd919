"""GGUF reference data, for test/io/gguf.test.ts. Needs the `gguf` package (pip install gguf) beside transformers.

1. dequant.gguf: one tensor of each ggml type nemotron-tfjs reads, random blocks (finite scales), and what gguf-py's
   dequantize() makes of them (dequant.json).
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
    for name, dtype in [("F16", np.float16), ("F32", np.float32)]:
        values = rng.normal(size=(3, 8)).astype(dtype)
        writer.add_tensor(name, values)
        expected[name] = values.astype(np.float32).reshape(-1).tolist()
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    json.dump({"shape": [2, 512], "values": expected}, open(os.path.join(OUT, "dequant.json"), "w"))


if __name__ == "__main__":
    os.makedirs(OUT, exist_ok=True)
    dequant_fixture(np.random.default_rng(0))
