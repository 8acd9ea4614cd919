"""Fixtures for the rest of llama-quantize (test/io/gguf-requantize.test.ts): its legacy and float file types (Q4_0,
Q4_1, Q5_0, Q5_1, Q8_0, F16, BF16, F32 — its own, not the converter's), COPY, --prune-layers, --tensor-type-file and
--allow-requantize (inputs that are themselves llama-quantize's files).

Build llama.cpp as scripts/reference/gguf_kquant_fixtures.py says, then, after `npm run build`:
LLAMA_CPP=that/llama.cpp python scripts/reference/gguf_requantize_fixtures.py

It writes test/fixtures/gguf-requantize/expected.json: for each case the SHA-256 of llama-quantize's file and of each
tensor, and for a requantizing case the same of its input (which llama-quantize made from the F32 file), for the models
of test/io/gguf-quantize-models.ts. llama-cpp-python 0.3.36 (llama.cpp of 2026-11) made the committed ones.
"""
import json
import os
import shutil
import subprocess
import tempfile

from gguf import GGUFReader

from gguf_kquant_fixtures import LLAMA_CPP, ROOT, sha

OUT = os.path.join(ROOT, "test", "fixtures", "gguf-requantize")
# A --tensor-type-file: patterns separated by spaces and newlines, in any case.
TENSOR_TYPE_FILE = "attn_v=q8_0 blk\\.[0-3]\\.ffn_down=q5_k\nATTN_Q=iq4_nl\n"
# (key, model, source, mix, options): source None is the F32 file, else (mix, options) llama-quantize made from it.
CASES = [
    # The legacy and float file types from the F32 file.
    ("nemotron Q4_0", "nemotron", None, "Q4_0", []),
    ("nemotron Q4_1", "nemotron", None, "Q4_1", []),
    ("nemotron Q5_0", "nemotron", None, "Q5_0", []),
    ("nemotron Q5_1", "nemotron", None, "Q5_1", []),
    ("nemotron Q8_0", "nemotron", None, "Q8_0", []),
    ("nemotron F16", "nemotron", None, "F16", []),
    ("nemotron BF16", "nemotron", None, "BF16", []),
    ("nemotron F32", "nemotron", None, "F32", []),
    ("nemotron-tied Q4_0", "nemotron-tied", None, "Q4_0", []),
    ("nemotron-h Q8_0", "nemotron-h", None, "Q8_0", []),
    ("nemotron-h Q5_1", "nemotron-h", None, "Q5_1", []),
    # A float type takes the output and embedding types, and ignores --tensor-type and --pure (llama_tensor_get_type).
    ("nemotron-h BF16 output q8_0 embedding q4_0", "nemotron-h", None, "BF16",
     ["--output-tensor-type", "q8_0", "--token-embedding-type", "q4_0", "--tensor-type", "attn_v=q8_0", "--pure"]),
    # With an importance matrix: the weighted quantizers, and Q4_0 / Q5_0's first ffn_down layers in Q4_1 / Q5_1.
    ("nemotron Q4_0 imatrix", "nemotron", None, "Q4_0", ["--imatrix", "imatrix.gguf"]),
    ("nemotron Q4_1 imatrix", "nemotron", None, "Q4_1", ["--imatrix", "imatrix.gguf"]),
    ("nemotron Q5_0 imatrix", "nemotron", None, "Q5_0", ["--imatrix", "imatrix.gguf"]),
    ("nemotron-h Q5_1 imatrix", "nemotron-h", None, "Q5_1", ["--imatrix", "imatrix.gguf"]),
    # COPY, --prune-layers, --tensor-type-file.
    ("nemotron COPY override kv", "nemotron", None, "COPY", ["--override-kv", "general.name=str:copied"]),
    ("nemotron COPY prune 1,6", "nemotron", None, "COPY", ["--prune-layers", "1,6"]),
    # The mix's layer rules still count the input's 8 layers (use_more_bits over n_layer), over the kept tensors.
    ("nemotron Q4_K_M prune 0,3,7", "nemotron", None, "Q4_K_M", ["--prune-layers", "7,0,3"]),
    # Kept layers find their importance under their old names.
    ("nemotron Q4_K_M prune 2,5 imatrix", "nemotron", None, "Q4_K_M", ["--prune-layers", "2,5", "--imatrix", "imatrix.gguf"]),
    ("nemotron Q4_K_M tensor type file", "nemotron", None, "Q4_K_M", ["--tensor-type-file", "types.txt"]),
    # Requantizing: BF16 and F16 inputs need no flag; quantized ones --allow-requantize; a tensor already in its
    # target type is copied as it is (so Q4_K_M to Q4_K_M needs no flag).
    ("nemotron BF16 to Q4_K_M", "nemotron", ("BF16", []), "Q4_K_M", []),
    ("nemotron F16 to Q6_K", "nemotron", ("F16", []), "Q6_K", []),
    ("nemotron Q4_K_M to Q4_K_M", "nemotron", ("Q4_K_M", []), "Q4_K_M", []),
    ("nemotron Q8_0 to Q4_K_M", "nemotron", ("Q8_0", []), "Q4_K_M", ["--allow-requantize"]),
    ("nemotron Q4_K_M to Q3_K_S", "nemotron", ("Q4_K_M", []), "Q3_K_S", ["--allow-requantize"]),
    ("nemotron Q2_K to Q8_0", "nemotron", ("Q2_K", []), "Q8_0", ["--allow-requantize"]),
    ("nemotron IQ4_XS to Q5_K_M", "nemotron", ("IQ4_XS", []), "Q5_K_M", ["--allow-requantize"]),
    ("nemotron Q4_1 to Q5_1 leave output", "nemotron", ("Q4_1", []), "Q5_1", ["--allow-requantize", "--leave-output-tensor"]),
    ("nemotron-h MXFP4_MOE to Q4_K_M", "nemotron-h", ("MXFP4_MOE", []), "Q4_K_M", ["--allow-requantize"]),
    ("nemotron-h Q5_1 to IQ4_NL imatrix", "nemotron-h", ("Q5_1", []), "IQ4_NL", ["--allow-requantize", "--imatrix", "imatrix.gguf"]),
]


def digest(path):
    return {"sha256": sha(open(path, "rb").read()),
            "tensors": [[t.name, t.tensor_type.name, sha(t.data.tobytes())] for t in GGUFReader(path).tensors]}


def main():
    os.makedirs(OUT, exist_ok=True)
    work = tempfile.mkdtemp()
    subprocess.run(["node", os.path.join(ROOT, "dist", "test", "io", "gguf-quantize-models.js"), work], check=True)
    with open(os.path.join(work, "types.txt"), "w") as f:
        f.write(TENSOR_TYPE_FILE)
    quantize = os.path.join(LLAMA_CPP, "build", "bin", "llama-quantize")
    run = lambda args: subprocess.run([quantize, *args, "1"], cwd=work, check=True, capture_output=True)
    files = {}
    for key, model, source, mix, options in CASES:
        if "--imatrix" in options:
            shutil.copy(os.path.join(ROOT, "test", "fixtures", "gguf-imatrix", f"{model}.imatrix.gguf"), os.path.join(work, "imatrix.gguf"))
        base = key.replace(" ", "-")
        entry = {"model": model, "mix": mix, "options": options}
        inp = os.path.join(work, f"{model}-f32.gguf")
        if source is not None:
            inp = os.path.join(work, base + "-input.gguf")
            run([*source[1], os.path.join(work, f"{model}-f32.gguf"), inp, source[0]])
            entry["source"] = {"mix": source[0], "options": source[1], **digest(inp)}
        out = os.path.join(work, base + ".gguf")
        run([*options, inp, out, mix])
        files[key] = {**entry, **digest(out)}
    json.dump({"llama_cpp": "llama-cpp-python 0.3.36 (vendor/llama.cpp), GGML_NATIVE=OFF", "tensor_type_file": TENSOR_TYPE_FILE, "files": files},
              open(os.path.join(OUT, "expected.json"), "w"), indent=1)


if __name__ == "__main__":
    main()
