"""Fixtures for llama-quantize's per-tensor options (test/io/gguf-quantize-options.test.ts): --pure,
--output-tensor-type, --token-embedding-type, --tensor-type PATTERN=TYPE and --leave-output-tensor; --override-kv;
and --include-weights / --exclude-weights with test/fixtures/gguf-imatrix's importance matrices.

Build llama.cpp as scripts/reference/gguf_kquant_fixtures.py says, then, after `npm run build`:
LLAMA_CPP=that/llama.cpp python scripts/reference/gguf_quantize_options_fixtures.py

It writes test/fixtures/gguf-quantize-options/expected.json: for each case (model, mix, options), the SHA-256 of
llama-quantize's file and of each tensor, for the models of test/io/gguf-quantize-models.ts.
llama-cpp-python 0.3.36 (llama.cpp of 2026-11) made the committed ones.
"""
import json
import os
import shutil
import subprocess
import tempfile

from gguf import GGUFReader

from gguf_kquant_fixtures import LLAMA_CPP, ROOT, sha

OUT = os.path.join(ROOT, "test", "fixtures", "gguf-quantize-options")
# (key, model, mix, options): the test passes the same options through saveGGUF and the CLI.
CASES = [
    ("nemotron Q4_K_M pure", "nemotron", "Q4_K_M", ["--pure"]),
    ("nemotron Q4_K_M output q8_0 embedding q8_0", "nemotron", "Q4_K_M", ["--output-tensor-type", "q8_0", "--token-embedding-type", "q8_0"]),
    ("nemotron Q4_K_M leave output", "nemotron", "Q4_K_M", ["--leave-output-tensor"]),
    # A manual attn_v for layer 0 skips the mix's rules there, so Q3_K_M's count of attn_v tensors starts at layer 1.
    ("nemotron Q3_K_M blk.0 attn_v q8_0", "nemotron", "Q3_K_M", ["--tensor-type", "blk\\.0\\.attn_v=q8_0"]),
    ("nemotron Q2_K pure", "nemotron", "Q2_K", ["--pure"]),
    ("nemotron-tied Q4_K_M output q8_0", "nemotron-tied", "Q4_K_M", ["--output-tensor-type", "q8_0"]),
    ("nemotron-tied Q4_K_M embedding f16", "nemotron-tied", "Q4_K_M", ["--token-embedding-type", "f16"]),
    ("nemotron-h Q4_K_M tensor types", "nemotron-h", "Q4_K_M", ["--tensor-type", "ATTN_V=q8_0", "--tensor-type", "ffn_down_exps=q5_k",
                                                                 "--tensor-type", "blk\\.[0-2]\\.ssm_in=q6_k", "--tensor-type", "ssm=q4_0"]),
    ("nemotron-h MXFP4_MOE pure", "nemotron-h", "MXFP4_MOE", ["--pure"]),
    # Metadata: a string replaced, a bool replaced, an int (stored as u32 of its magnitude) and a new float key.
    # The importance matrix (test/fixtures/gguf-imatrix's, as imatrix.gguf) for some tensors only.
    ("nemotron Q4_K_M imatrix exclude", "nemotron", "Q4_K_M", ["--imatrix", "imatrix.gguf", "--exclude-weights", "ffn_down", "--exclude-weights", "attn_v"]),
    ("nemotron-h IQ4_XS imatrix include", "nemotron-h", "IQ4_XS", ["--imatrix", "imatrix.gguf", "--include-weights", "attn_q", "--include-weights", "ssm_in"]),
    ("nemotron Q4_K_M imatrix include nothing", "nemotron", "Q4_K_M", ["--imatrix", "imatrix.gguf", "--include-weights", "no_such_tensor"]),
    ("nemotron Q4_K_M override kv", "nemotron", "Q4_K_M", ["--override-kv", "general.name=str:renamed", "--override-kv", "tokenizer.ggml.add_bos_token=bool:false",
                                                           "--override-kv", "nemotron.context_length=int:-2048", "--override-kv", "custom.scale=float:0.1"]),
]


def main():
    os.makedirs(OUT, exist_ok=True)
    work = tempfile.mkdtemp()
    subprocess.run(["node", os.path.join(ROOT, "dist", "test", "io", "gguf-quantize-models.js"), work], check=True)
    quantize = os.path.join(LLAMA_CPP, "build", "bin", "llama-quantize")
    files = {}
    for key, model, mix, options in CASES:
        out = os.path.join(work, key.replace(" ", "-") + ".gguf")
        if "--imatrix" in options:
            shutil.copy(os.path.join(ROOT, "test", "fixtures", "gguf-imatrix", f"{model}.imatrix.gguf"), os.path.join(work, "imatrix.gguf"))
        subprocess.run([quantize, *options, os.path.join(work, f"{model}-f32.gguf"), out, mix, "1"], cwd=work, check=True, capture_output=True)
        files[key] = {"model": model, "mix": mix, "options": options, "sha256": sha(open(out, "rb").read()),
                      "tensors": [[t.name, t.tensor_type.name, sha(t.data.tobytes())] for t in GGUFReader(out).tensors]}
    json.dump({"llama_cpp": "llama-cpp-python 0.3.36 (vendor/llama.cpp), GGML_NATIVE=OFF", "files": files},
              open(os.path.join(OUT, "expected.json"), "w"), indent=1)


if __name__ == "__main__":
    main()
