"""Fixtures for importance matrices and IQ4 writing (test/io/gguf-imatrix.test.ts): what llama.cpp's own tools write.

Build llama.cpp as scripts/reference/gguf_kquant_fixtures.py says, with two more targets:

    cmake --build build --target llama-quantize llama-imatrix

then, after `npm run build`: LLAMA_CPP=that/llama.cpp python scripts/reference/gguf_imatrix_fixtures.py

It writes test/fixtures/gguf-imatrix/:
- importance-256.f32, importance-1024.f32: seeded importance vectors (log-normal, some zeros);
- expected.json "blocks": ggml_quantize_chunk's bytes for test/fixtures/gguf-kquants/blocks.f32 with those vectors as
  its quant_weights (rows of 256 and of 1024) for Q4_0, Q5_0, Q5_1, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, IQ4_NL, IQ4_XS,
  IQ3_XXS, IQ3_S, and IQ4_NL / IQ4_XS / IQ3_XXS / IQ3_S without;
- calibration.txt (lowercase words: tiny-gqa.gguf's 96-token vocabulary spells them without byte fallback) and the
  ids llama.cpp tokenizes it into for each model;
- for nemotron and nemotron-h of test/io/gguf-quantize-models.ts: `MODEL.imatrix.gguf`, llama-imatrix's output on
  calibration.txt (chunks of 32 tokens; an F32 KV cache without flash attention, so that its activations are
  float32 ones; for nemotron also in the legacy .dat format), and the SHA-256 of llama-quantize's file (and of each tensor) with that
  importance matrix for Q2_K_S, Q3_K_M, Q4_K_M, Q6_K, IQ4_NL, IQ4_XS, IQ3_XS, IQ3_S and IQ3_M; and, without one,
  IQ4_NL, IQ4_XS, IQ3_S and IQ3_M of all three models.
llama-cpp-python 0.3.36 (llama.cpp of 2026-11) made the committed ones.
"""
import base64
import json
import os
import shutil
import subprocess
import tempfile

import numpy as np
from gguf import GGUFReader

from gguf_kquant_fixtures import LLAMA_CPP, ROOT, compile_quant_harness, sha
from llama_cpp_fixtures import compile_llama_harness

OUT = os.path.join(ROOT, "test", "fixtures", "gguf-imatrix")
TYPES = {"Q4_0": 2, "Q5_0": 6, "Q5_1": 7, "Q2_K": 10, "Q3_K": 11, "Q4_K": 12, "Q5_K": 13, "Q6_K": 14, "IQ4_NL": 20, "IQ4_XS": 23,
         "IQ3_XXS": 18, "IQ3_S": 21, "IQ2_XXS": 16, "IQ2_XS": 17, "IQ2_S": 22}
IMATRIX_MIXES = ["Q2_K_S", "Q3_K_M", "Q4_K_M", "Q6_K", "IQ4_NL", "IQ4_XS", "IQ3_XXS", "IQ3_XS", "IQ3_S", "IQ3_M", "IQ2_XXS",
                 "IQ2_XS", "IQ2_S", "IQ2_M"]
PLAIN_MIXES = ["IQ4_NL", "IQ4_XS", "IQ3_S", "IQ3_M"]
CHUNK = 32
WORDS = ("the stop a in on to an and is it of stopped stopping store", "for car ring ten tea hat log cut mud fox big jam vex quiz", "the red ant and the old dog sat on a mat in the sun")


def calibration_text():
    rng = np.random.default_rng(7)
    words = " ".join(WORDS).split()
    return " ".join(words[i] for i in rng.integers(0, len(words), 260))


def importance(n, rng):
    v = np.exp(rng.standard_normal(n) * 1.5).astype(np.float32)
    v[rng.random(n) < 0.05] = 0
    return v.astype("<f4")


def tensor_hashes(path):
    return [[t.name, t.tensor_type.name, sha(t.data.tobytes())] for t in GGUFReader(path).tensors]


def main():
    os.makedirs(OUT, exist_ok=True)
    work = tempfile.mkdtemp()
    quant = compile_quant_harness(work)
    llama = compile_llama_harness(work)
    values = np.fromfile(os.path.join(ROOT, "test", "fixtures", "gguf-kquants", "blocks.f32"), dtype="<f4")
    rng = np.random.default_rng(20261208)
    blocks = {}
    for n in (256, 1024):
        path = os.path.join(OUT, f"importance-{n}.f32")
        importance(n, rng).tofile(path)
        for name, type_id in TYPES.items():
            out = subprocess.run([quant, str(type_id), str(n), path], input=values.tobytes(), capture_output=True, check=True).stdout
            blocks[f"{name} {n}"] = base64.b64encode(out).decode()
    for name in ("IQ4_NL", "IQ4_XS", "IQ3_XXS", "IQ3_S", "IQ2_S"):  # IQ2_XXS and IQ2_XS require one
        out = subprocess.run([quant, str(TYPES[name]), "256"], input=values.tobytes(), capture_output=True, check=True).stdout
        blocks[f"{name} none"] = base64.b64encode(out).decode()

    subprocess.run(["node", os.path.join(ROOT, "dist", "test", "io", "gguf-quantize-models.js"), work], check=True)
    text = calibration_text()
    with open(os.path.join(work, "calibration.txt"), "w") as f:
        f.write(text)  # no newline: tiny-gqa.gguf's vocabulary has no byte tokens for it
    shutil.copy(os.path.join(work, "calibration.txt"), OUT)
    bin_dir = os.path.join(LLAMA_CPP, "build", "bin")
    tokens, files = {}, {}
    for model in ("nemotron", "nemotron-h"):
        gguf = os.path.join(work, f"{model}-f32.gguf")
        ids = subprocess.run([llama, gguf, "text", text], capture_output=True, text=True, check=True).stdout.strip()
        tokens[model] = [int(v) for v in ids.split(",")]
        subprocess.run([os.path.join(bin_dir, "llama-imatrix"), "-m", gguf, "-f", "calibration.txt", "-o", "imatrix.gguf",
                        "-c", str(CHUNK), "-b", str(CHUNK), "-ub", str(CHUNK), "-t", "1", "--no-ppl",
                        "-ctk", "f32", "-ctv", "f32", "-fa", "off"], cwd=work, check=True, capture_output=True)
        shutil.copy(os.path.join(work, "imatrix.gguf"), os.path.join(OUT, f"{model}.imatrix.gguf"))
        if model == "nemotron":  # the same in the legacy format
            subprocess.run([os.path.join(bin_dir, "llama-imatrix"), "-m", gguf, "-f", "calibration.txt", "-o", "imatrix.dat",
                            "--output-format", "dat", "-c", str(CHUNK), "-b", str(CHUNK), "-ub", str(CHUNK), "-t", "1", "--no-ppl",
                            "-ctk", "f32", "-ctv", "f32", "-fa", "off"], cwd=work, check=True, capture_output=True)
            shutil.copy(os.path.join(work, "imatrix.dat"), os.path.join(OUT, "nemotron.imatrix.dat"))
        for mix in IMATRIX_MIXES:
            out = os.path.join(work, f"{model}-imatrix-{mix}.gguf")
            subprocess.run([os.path.join(bin_dir, "llama-quantize"), "--imatrix", "imatrix.gguf", gguf, out, mix, "1"],
                           cwd=work, check=True, capture_output=True)
            files[f"{model} imatrix {mix}"] = {"sha256": sha(open(out, "rb").read()), "tensors": tensor_hashes(out)}
    for model in ("nemotron", "nemotron-tied", "nemotron-h"):
        for mix in PLAIN_MIXES:
            out = os.path.join(work, f"{model}-{mix}.gguf")
            subprocess.run([os.path.join(bin_dir, "llama-quantize"), os.path.join(work, f"{model}-f32.gguf"), out, mix, "1"],
                           check=True, capture_output=True)
            files[f"{model} {mix}"] = {"sha256": sha(open(out, "rb").read()), "tensors": tensor_hashes(out)}
    json.dump({"llama_cpp": "llama-cpp-python 0.3.36 (vendor/llama.cpp), GGML_NATIVE=OFF", "chunk": CHUNK, "blocks": blocks,
               "tokens": tokens, "files": files}, open(os.path.join(OUT, "expected.json"), "w"), indent=1)


if __name__ == "__main__":
    main()
