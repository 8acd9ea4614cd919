"""Fixtures for GGUF k-quant writing (test/io/gguf-quantize.test.ts): what llama.cpp's own code writes.

llama.cpp is not on PyPI as a library, but llama-cpp-python's source distribution carries it whole. Build its
llama-quantize portably (no -march=native: the reference quantizers then round like plain float32 C, no FMA):

    pip download llama-cpp-python --no-deps --no-binary :all: && tar xzf llama_cpp_python-*.tar.gz
    cd llama_cpp_python-*/vendor/llama.cpp
    cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=OFF -DGGML_OPENMP=OFF -DLLAMA_CURL=OFF \
      -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_SERVER=OFF -DBUILD_SHARED_LIBS=OFF
    cmake --build build --target llama-quantize

then, after `npm run build`: LLAMA_CPP=that/llama.cpp python scripts/reference/gguf_kquant_fixtures.py

It writes test/fixtures/gguf-kquants/:
- blocks.f32 (little-endian float32 values: Gaussian blocks of several scales, all-positive, all-zero, constant, tiny,
  half-zero, outliers, bf16-rounded) and, in expected.json, ggml_quantize_chunk's bytes for each of Q5_0, Q5_1, Q2_K,
  Q3_K, Q4_K, Q5_K and Q6_K (a small C program linked to ggml-base, compiled here);
- for each model of test/io/gguf-quantize-models.ts (weights from a fixed seed): its F32 GGUF written by our writer
  (checked elsewhere against llama.cpp's converter), run through llama-quantize for Q2_K, Q3_K_S, Q3_K_M, Q3_K_L,
  Q4_K_S, Q4_K_M, Q5_K_S, Q5_K_M and Q6_K: the output file's SHA-256, and each tensor's name, type and SHA-256 (in
  llama-quantize's order); and from each model's F16 GGUF, Q2_K and Q4_K_M.
llama-cpp-python 0.3.36 (llama.cpp of 2026-11) made the committed ones.
"""
import base64
import hashlib
import json
import os
import subprocess
import tempfile

import numpy as np
from gguf import GGUFReader

ROOT = os.path.join(os.path.dirname(__file__), "..", "..")
OUT = os.path.join(ROOT, "test", "fixtures", "gguf-kquants")
LLAMA_CPP = os.environ["LLAMA_CPP"]
TYPES = {"Q5_0": 6, "Q5_1": 7, "Q2_K": 10, "Q3_K": 11, "Q4_K": 12, "Q5_K": 13, "Q6_K": 14}
MIXES = ["Q2_K", "Q3_K_S", "Q3_K_M", "Q3_K_L", "Q4_K_S", "Q4_K_M", "Q5_K_S", "Q5_K_M", "Q6_K"]
MODELS = ["nemotron", "nemotron-tied", "nemotron-h"]

HARNESS = r"""
#include <stdio.h>
#include <stdlib.h>
#include "ggml.h"
/* quant TYPE N_PER_ROW [IMPORTANCE] < float32 values > ggml_quantize_chunk's bytes (without an importance file: the
   _ref quantizers; with one, N_PER_ROW float32 weights, the _impl ones llama-quantize --imatrix runs) */
int main(int argc, char **argv) {
  int type = atoi(argv[1]); long n_per_row = atol(argv[2]);
  size_t cap = 1 << 20, n = 0, got; float *x = malloc(cap * sizeof(float));
  while ((got = fread(x + n, sizeof(float), cap - n, stdin)) > 0) { n += got; if (n == cap) { cap *= 2; x = realloc(x, cap * sizeof(float)); } }
  long nrows = n / n_per_row;
  float *imatrix = NULL;
  if (argc > 3) { FILE *f = fopen(argv[3], "rb"); imatrix = malloc(n_per_row * sizeof(float)); if (fread(imatrix, sizeof(float), n_per_row, f) != (size_t) n_per_row) return 1; fclose(f); }
  void *out = malloc(ggml_row_size(type, n_per_row) * nrows);
  ggml_quantize_init(type);
  fwrite(out, 1, ggml_quantize_chunk(type, x, out, 0, nrows, n_per_row, imatrix), stdout);
  return 0;
}
"""


def blocks():
    """64 rows of 256 values, each row one kind of block the quantizers treat differently."""
    rng = np.random.default_rng(20261207)
    rows = []
    for kind in range(64):
        k = kind % 16
        g = rng.standard_normal(256)
        row = {0: g * 0.02, 1: g * 0.5, 2: np.abs(g), 3: np.zeros(256), 4: np.full(256, 0.37), 5: g * 1e-6,
               6: np.where(np.arange(256) % 32 < 16, 0, g), 7: g * np.where(rng.random(256) < 0.02, 50, 1),
               8: -np.abs(g) * 3, 9: g * 100, 10: np.round(g * 4) / 4, 11: g + 5, 12: np.where(np.arange(256) < 128, g, 0),
               13: g * 1e-30, 14: np.linspace(-1, 1, 256), 15: g * 0.02}[k]
        row = row.astype(np.float32)
        if kind >= 48:  # bf16-rounded values: exact ties in the level rounding happen more often there
            row = (row.view(np.uint32) & 0xFFFF0000).view(np.float32)
        rows.append(row)
    return np.concatenate(rows).astype("<f4")


def sha(data):
    return hashlib.sha256(bytes(data)).hexdigest()


def compile_quant_harness(work):
    """HARNESS compiled against llama.cpp's ggml-base, in `work`."""
    harness = os.path.join(work, "quant")
    with open(harness + ".c", "w") as f:
        f.write(HARNESS)
    subprocess.run(["gcc", "-O2", harness + ".c", "-I", os.path.join(LLAMA_CPP, "ggml", "include"),
                    os.path.join(LLAMA_CPP, "build", "ggml", "src", "libggml-base.a"), "-lm", "-lpthread", "-lstdc++", "-o", harness], check=True)
    return harness


def main():
    os.makedirs(OUT, exist_ok=True)
    build = os.path.join(LLAMA_CPP, "build")
    work = tempfile.mkdtemp()
    harness = compile_quant_harness(work)
    values = blocks()
    values.tofile(os.path.join(OUT, "blocks.f32"))
    quantized = {}
    for name, type_id in TYPES.items():
        out = subprocess.run([harness, str(type_id), "256"], input=values.tobytes(), capture_output=True, check=True).stdout
        quantized[name] = base64.b64encode(out).decode()

    subprocess.run(["node", os.path.join(ROOT, "dist", "test", "io", "gguf-quantize-models.js"), work], check=True)
    quantize = os.path.join(build, "bin", "llama-quantize")
    files = {}
    for model in MODELS:
        for mix in MIXES:
            path = os.path.join(work, f"{model}-{mix}.gguf")
            subprocess.run([quantize, os.path.join(work, f"{model}-f32.gguf"), path, mix, "1"], check=True, capture_output=True)
            reader = GGUFReader(path)
            files[f"{model} {mix}"] = {
                "sha256": sha(open(path, "rb").read()),
                "tensors": [[t.name, t.tensor_type.name, sha(t.data.tobytes())] for t in reader.tensors],
            }
    # From the F16 files (matrices F16, as the converter's --outtype f16 writes them): what quantizeGGUF must match.
    for model in MODELS:
        for mix in ("Q2_K", "Q4_K_M"):
            path = os.path.join(work, f"{model}-f16-{mix}.gguf")
            subprocess.run([quantize, os.path.join(work, f"{model}-f16.gguf"), path, mix, "1"], check=True, capture_output=True)
            files[f"{model} F16 {mix}"] = {"sha256": sha(open(path, "rb").read()),
                                          "tensors": [[t.name, t.tensor_type.name, sha(t.data.tobytes())] for t in GGUFReader(path).tensors]}
    json.dump({"llama_cpp": "llama-cpp-python 0.3.36 (vendor/llama.cpp), GGML_NATIVE=OFF", "blocks": quantized, "files": files},
              open(os.path.join(OUT, "expected.json"), "w"), indent=1)


if __name__ == "__main__":
    main()
