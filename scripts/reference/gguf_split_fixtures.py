"""Fixtures for split GGUF files (test/io/gguf-split.test.ts): what llama.cpp's llama-gguf-split and llama-quantize write.

Build llama.cpp as scripts/reference/gguf_kquant_fixtures.py says, with one more target:

    cmake --build build --target llama-gguf-split

then, after `npm run build`: LLAMA_CPP=that/llama.cpp python scripts/reference/gguf_split_fixtures.py

It writes test/fixtures/gguf-split/expected.json: for the F32 files of test/io/gguf-quantize-models.ts, the SHA-256 of
each shard of `llama-gguf-split --split` by tensor count (nemotron-h, 10 a shard) and by size (nemotron at 2M,
nemotron-h at 1M), the SHA-256 of llama-quantize's Q4_K_M file from the first shard of the nemotron-h split and of
`llama-gguf-split --merge`'s file from it, and of each shard of `llama-quantize --keep-split`'s Q4_K_M from it. llama-cpp-python 0.3.36 (llama.cpp of 2026-11) made the committed ones.
"""
import glob
import json
import os
import subprocess
import tempfile

from gguf_kquant_fixtures import LLAMA_CPP, ROOT, sha

OUT = os.path.join(ROOT, "test", "fixtures", "gguf-split")
# By size, a tensor larger than the limit gets a shard of its own (nemotron-h's stacked experts, 2 MB, at 1M).
CASES = [("nemotron-h tensors 10", "nemotron-h", ["--split-max-tensors", "10"]), ("nemotron size 2M", "nemotron", ["--split-max-size", "2M"]),
         ("nemotron-h size 1M", "nemotron-h", ["--split-max-size", "1M"])]


def main():
    os.makedirs(OUT, exist_ok=True)
    work = tempfile.mkdtemp()
    subprocess.run(["node", os.path.join(ROOT, "dist", "test", "io", "gguf-quantize-models.js"), work], check=True)
    bin_dir = os.path.join(LLAMA_CPP, "build", "bin")
    splits = {}
    for key, model, options in CASES:
        prefix = os.path.join(work, key.replace(" ", "-"))
        subprocess.run([os.path.join(bin_dir, "llama-gguf-split"), "--split", *options, os.path.join(work, f"{model}-f32.gguf"), prefix],
                       check=True, capture_output=True)
        shards = sorted(glob.glob(prefix + "-*-of-*.gguf"))
        splits[key] = {"model": model, "options": options, "shards": [[os.path.basename(s)[len(os.path.basename(prefix)):], sha(open(s, "rb").read())] for s in shards]}
    first = sorted(glob.glob(os.path.join(work, "nemotron-h-tensors-10-*-of-*.gguf")))[0]
    out = os.path.join(work, "from-split-Q4_K_M.gguf")
    subprocess.run([os.path.join(bin_dir, "llama-quantize"), first, out, "Q4_K_M", "1"], check=True, capture_output=True)
    kept = os.path.join(work, "kept.gguf")
    subprocess.run([os.path.join(bin_dir, "llama-quantize"), "--keep-split", first, kept, "Q4_K_M", "1"], check=True, capture_output=True)
    kept_shards = sorted(glob.glob(os.path.join(work, "kept-*-of-*.gguf")))
    merged = os.path.join(work, "merged.gguf")
    subprocess.run([os.path.join(bin_dir, "llama-gguf-split"), "--merge", first, merged], check=True, capture_output=True)
    json.dump({"llama_cpp": "llama-cpp-python 0.3.36 (vendor/llama.cpp), GGML_NATIVE=OFF", "splits": splits,
               "merged": {"source": "nemotron-h tensors 10", "sha256": sha(open(merged, "rb").read())},
               "keep split": {"source": "nemotron-h tensors 10", "mix": "Q4_K_M",
                              "shards": [[os.path.basename(s)[len("kept"):], sha(open(s, "rb").read())] for s in kept_shards]},
               "quantized from split": {"source": "nemotron-h tensors 10", "mix": "Q4_K_M", "sha256": sha(open(out, "rb").read())}},
              open(os.path.join(OUT, "expected.json"), "w"), indent=1)


if __name__ == "__main__":
    main()
