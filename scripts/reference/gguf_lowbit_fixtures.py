"""Fixtures for the lowest-bit GGUF writers (test/io/gguf-lowbit.test.ts): what llama.cpp's own code writes.

Build llama.cpp as scripts/reference/gguf_kquant_fixtures.py says (targets llama-quantize and llama-imatrix), make the
importance-matrix fixtures first (scripts/reference/gguf_imatrix_fixtures.py: this script reuses its importance vectors
and llama-imatrix files), then, after `npm run build`: LLAMA_CPP=that/llama.cpp python scripts/reference/gguf_lowbit_fixtures.py

It writes test/fixtures/gguf-lowbit/expected.json:
- "blocks": ggml_quantize_chunk's bytes for test/fixtures/gguf-kquants/blocks.f32: IQ1_S (which requires importance
  weights) and IQ1_M with test/fixtures/gguf-imatrix/importance-{256,1024}.f32, IQ1_M without, and TQ1_0, TQ2_0, Q1_0,
  Q2_0, MXFP4, NVFP4 (whose quantizers take no weights);
- "dequantized": ggml's to_float of the Q1_0 and Q2_0 blocks (gguf-py cannot read these two);
- "files": the SHA-256 of llama-quantize's file (and of each tensor) for nemotron and nemotron-h of
  test/io/gguf-quantize-models.ts with their imatrix for IQ1_S and IQ1_M, and for all three models without one for
  TQ1_0, TQ2_0, Q1_0, Q2_0 and MXFP4_MOE; "errors": what llama-quantize says where it refuses (nemotron-tied's rows of
  48 are not whole Q1_0 blocks of 128, and llama.cpp defines no fallback for Q1_0).
llama-cpp-python 0.3.36 (llama.cpp of 2026-11) made the committed ones.
"""
import base64
import json
import os
import shutil
import subprocess
import sys
import tempfile

import numpy as np

# The gguf-py of this llama.cpp, ahead of the installed one (which predates Q2_0).
sys.path.insert(0, os.path.join(os.environ["LLAMA_CPP"], "gguf-py"))
from gguf import GGUFReader  # noqa: E402

from gguf_kquant_fixtures import LLAMA_CPP, ROOT, compile_quant_harness, sha  # noqa: E402

OUT = os.path.join(ROOT, "test", "fixtures", "gguf-lowbit")
IMATRIX = os.path.join(ROOT, "test", "fixtures", "gguf-imatrix")
WEIGHTED = {"IQ1_S": 19, "IQ1_M": 29}
PLAIN = {"IQ1_M": 29, "TQ1_0": 34, "TQ2_0": 35, "MXFP4": 39, "NVFP4": 40, "Q1_0": 41, "Q2_0": 42}
IMATRIX_MIXES = ["IQ1_S", "IQ1_M"]
PLAIN_MIXES = ["TQ1_0", "TQ2_0", "Q1_0", "Q2_0", "MXFP4_MOE"]

DEQUANT = r"""
#include <stdio.h>
#include <stdlib.h>
#include "ggml.h"
/* dequant TYPE N < blocks > N float32 values (ggml's to_float) */
int main(int argc, char **argv) {
  int type = atoi(argv[1]); long n = atol(argv[2]);
  size_t bytes = ggml_row_size(type, n); void *q = malloc(bytes); float *y = malloc(n * sizeof(float));
  if (fread(q, 1, bytes, stdin) != bytes) return 1;
  ggml_get_type_traits(type)->to_float(q, y, n);
  fwrite(y, sizeof(float), n, stdout);
  return 0;
}
"""


def tensor_hashes(path):
    return [[t.name, t.tensor_type.name, sha(t.data.tobytes())] for t in GGUFReader(path).tensors]


def main():
    os.makedirs(OUT, exist_ok=True)
    work = tempfile.mkdtemp()
    quant = compile_quant_harness(work)
    dequant = os.path.join(work, "dequant")
    with open(dequant + ".c", "w") as f:
        f.write(DEQUANT)
    subprocess.run(["gcc", "-O2", dequant + ".c", "-I", os.path.join(LLAMA_CPP, "ggml", "include"),
                    os.path.join(LLAMA_CPP, "build", "ggml", "src", "libggml-base.a"), "-lm", "-lpthread", "-lstdc++", "-o", dequant], check=True)
    values = np.fromfile(os.path.join(ROOT, "test", "fixtures", "gguf-kquants", "blocks.f32"), dtype="<f4")
    blocks, dequantized = {}, {}
    for n in (256, 1024):
        for name, type_id in WEIGHTED.items():
            out = subprocess.run([quant, str(type_id), str(n), os.path.join(IMATRIX, f"importance-{n}.f32")],
                                 input=values.tobytes(), capture_output=True, check=True).stdout
            blocks[f"{name} {n}"] = base64.b64encode(out).decode()
    for name, type_id in PLAIN.items():
        out = subprocess.run([quant, str(type_id), "256"], input=values.tobytes(), capture_output=True, check=True).stdout
        blocks[f"{name} none"] = base64.b64encode(out).decode()
        if name in ("Q1_0", "Q2_0"):
            floats = subprocess.run([dequant, str(type_id), str(values.size)], input=out, capture_output=True, check=True).stdout
            dequantized[name] = base64.b64encode(floats).decode()

    subprocess.run(["node", os.path.join(ROOT, "dist", "test", "io", "gguf-quantize-models.js"), work], check=True)
    quantize = os.path.join(LLAMA_CPP, "build", "bin", "llama-quantize")
    files, errors = {}, {}

    def run(key, args):
        result = subprocess.run([quantize, *args], cwd=work, capture_output=True, text=True, errors="replace")
        if result.returncode != 0:
            said = [line.split("failed to quantize: ")[1] for line in (result.stdout + result.stderr).splitlines() if "failed to quantize: " in line]
            errors[key] = said[0] if said else result.stderr[-500:]
            return
        files[key] = {"sha256": sha(open(os.path.join(work, args[-3]), "rb").read()), "tensors": tensor_hashes(os.path.join(work, args[-3]))}

    for model in ("nemotron", "nemotron-h"):
        # Given as a relative path, as the tests give it: llama-quantize records it in quantize.imatrix.file.
        shutil.copy(os.path.join(IMATRIX, f"{model}.imatrix.gguf"), os.path.join(work, "imatrix.gguf"))
        for mix in IMATRIX_MIXES:
            run(f"{model} imatrix {mix}", ["--imatrix", "imatrix.gguf", f"{model}-f32.gguf",
                                           f"{model}-imatrix-{mix}.gguf", mix, "1"])
    for model in ("nemotron", "nemotron-tied", "nemotron-h"):
        for mix in PLAIN_MIXES:
            run(f"{model} {mix}", [f"{model}-f32.gguf", f"{model}-{mix}.gguf", mix, "1"])
    json.dump({"llama_cpp": "llama-cpp-python 0.3.36 (vendor/llama.cpp), GGML_NATIVE=OFF", "blocks": blocks,
               "dequantized": dequantized, "files": files, "errors": errors}, open(os.path.join(OUT, "expected.json"), "w"), indent=1)


if __name__ == "__main__":
    main()
