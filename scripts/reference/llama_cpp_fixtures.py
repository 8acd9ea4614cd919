"""llama.cpp itself as a reference for GGUF files (test/io/gguf-llama-cpp.test.ts): what its CPU backend computes
from the GGUF files we write and read, and how its tokenizer encodes text with their vocabularies.

transformers reads no NemotronH GGUF and no byte-level Nemotron vocabulary, so until now our NemotronH files were
checked against gguf-py emulating llama.cpp's converter only. Build llama.cpp from llama-cpp-python's source
distribution as scripts/reference/gguf_kquant_fixtures.py says (it builds libllama too), then, after `npm run build`:

    LLAMA_CPP=that/llama.cpp python scripts/reference/llama_cpp_fixtures.py

A small C++ program linked to libllama (compiled here) loads each file on the CPU (K and V caches in F32, no flash
attention, one thread) and prints the logits of every position of one sequence; with `text` it prints
llama_tokenize's ids (special tokens added and parsed). Files:
- F32 GGUFs of the seeded models of test/io/gguf-quantize-models.ts (Nemotron; NemotronH with Mamba, attention and
  8 experts), written by our saveGGUF, which the test writes again;
- test/fixtures/nemotron-h-gguf/{hybrid,moe}-f32.gguf (the converter's layout; moe has latent expert projections);
- the seeded Nemotron and NemotronH with LoRA adapters on every linear module (seeded A and B), the adapters written
  by our LoraModel / NemotronHLoraModel.saveGGUF and applied by llama_set_adapters_lora;
- vocabularies: hybrid-f32.gguf (byte-level, tekken) and the byte-level vocab-{gpt-2,llama-bpe,qwen2}.gguf.
Also runs llama.cpp's convert_lora_to_gguf.py on the PEFT adapter fixtures (lora-*.gguf, F32 and F16).
Writes test/fixtures/gguf-llama-cpp/.
"""
import json
import os
import subprocess
import sys
import tempfile

ROOT = os.path.join(os.path.dirname(__file__), "..", "..")
FIXTURES = os.path.join(ROOT, "test", "fixtures")
OUT = os.path.join(FIXTURES, "gguf-llama-cpp")
LLAMA_CPP = os.environ["LLAMA_CPP"]
IDS = [1, 5, 17, 42, 8, 63, 21, 2, 30, 11, 77, 4]
TEXTS = ["The quick brown fox", "HelloWorld and NemotronH", "In 2025, 3456 tokens!", "naïve café\n\nnew  lines\r\n",
         "def f():\n    return 42\n", "日本語 and 🙂 emoji", "  leading and trailing  ", "</s> is special text", "x/y//z <> ++"]

HARNESS = r"""
#include "llama.h"
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>
// logits MODEL ids 1,2,3 [LORA] -> each position's logits, a line each (with a LoRA adapter's GGUF applied);
// logits MODEL text TEXT -> llama_tokenize's ids
int main(int argc, char **argv) {
  if (argc < 4) return 2;
  llama_backend_init();
  if (!getenv("LLAMA_LOG")) llama_log_set([](ggml_log_level, const char *, void *) {}, nullptr);
  llama_model_params mp = llama_model_default_params();
  mp.n_gpu_layers = 0;
  mp.vocab_only = strcmp(argv[2], "text") == 0;
  llama_model *model = llama_model_load_from_file(argv[1], mp);
  if (!model) { fprintf(stderr, "load failed\n"); return 1; }
  const llama_vocab *vocab = llama_model_get_vocab(model);
  if (mp.vocab_only) {
    std::string text = argv[3];
    int n = -llama_tokenize(vocab, text.c_str(), text.size(), NULL, 0, true, true);
    std::vector<llama_token> ids(n);
    llama_tokenize(vocab, text.c_str(), text.size(), ids.data(), n, true, true);
    for (int i = 0; i < n; i++) printf(i ? ",%d" : "%d", ids[i]);
    printf("\n");
    return 0;
  }
  std::vector<llama_token> ids;
  for (char *p = strtok(argv[3], ","); p; p = strtok(NULL, ",")) ids.push_back(atoi(p));
  llama_context_params cp = llama_context_default_params();
  cp.n_ctx = 64; cp.n_batch = 64; cp.n_ubatch = 64; cp.n_threads = 1; cp.n_threads_batch = 1;
  cp.type_k = GGML_TYPE_F32; cp.type_v = GGML_TYPE_F32;
  cp.flash_attn_type = LLAMA_FLASH_ATTN_TYPE_DISABLED;
  llama_context *ctx = llama_init_from_model(model, cp);
  if (!ctx) { fprintf(stderr, "context failed\n"); return 1; }
  if (argc > 4) {  // a LoRA adapter's GGUF, at scale 1
    llama_adapter_lora *adapter = llama_adapter_lora_init(model, argv[4]);
    if (!adapter) { fprintf(stderr, "adapter failed\n"); return 1; }
    float scale = 1.0f;
    if (llama_set_adapters_lora(ctx, &adapter, 1, &scale)) { fprintf(stderr, "set adapter failed\n"); return 1; }
  }
  llama_batch_ext *batch = llama_batch_ext_init(ctx);
  for (size_t i = 0; i < ids.size(); i++) {
    int idx = llama_batch_ext_add_token(batch, 0, ids[i]);
    llama_pos pos = i;
    llama_batch_ext_set_pos(batch, idx, &pos);
    llama_batch_ext_set_output_logits(batch, idx, true);
  }
  if (llama_process(ctx, LLAMA_PROCESS_TYPE_DECODE, batch)) { fprintf(stderr, "decode failed\n"); return 1; }
  int nv = llama_vocab_n_tokens(vocab);
  for (size_t i = 0; i < ids.size(); i++) {
    float *l = llama_get_logits_ith(ctx, i);
    for (int j = 0; j < nv; j++) printf(j ? " %.9g" : "%.9g", l[j]);
    printf("\n");
  }
  return 0;
}
"""


def compile_llama_harness(work):
    """HARNESS compiled against libllama, in `work`."""
    build = os.path.join(LLAMA_CPP, "build")
    harness = os.path.join(work, "logits")
    with open(harness + ".cpp", "w") as f:
        f.write(HARNESS)
    libs = [os.path.join(build, "src", "libllama.a")] + [os.path.join(build, "ggml", "src", f"lib{n}.a") for n in ("ggml", "ggml-cpu", "ggml-base")]
    subprocess.run(["g++", "-O2", "-std=c++17", harness + ".cpp", "-I", os.path.join(LLAMA_CPP, "include"),
                    "-I", os.path.join(LLAMA_CPP, "ggml", "include"), *libs, "-lpthread", "-lm", "-ldl", "-o", harness], check=True)
    return harness


def main():
    os.makedirs(OUT, exist_ok=True)
    work = tempfile.mkdtemp()
    harness = compile_llama_harness(work)
    subprocess.run(["node", os.path.join(ROOT, "dist", "test", "io", "gguf-quantize-models.js"), work], check=True)
    # Not nemotron-tied: llama.cpp's Nemotron requires output.weight, which a tied checkpoint (and so the converter's
    # file, and ours) lacks; Nemotron's published checkpoints are untied.
    files = {name: os.path.join(work, f"{name}-f32.gguf") for name in ("nemotron", "nemotron-h")}
    files.update({name: os.path.join(FIXTURES, "nemotron-h-gguf", f"{name}-f32.gguf") for name in ("hybrid", "moe")})
    runs = {name: [path] for name, path in files.items()}
    # Our LoRA adapters' GGUFs (rsLoRA on Nemotron: its alpha written as alpha·√r) on the same bases.
    runs.update({f"{name}+lora": [files[name], os.path.join(work, f"{name}-lora.gguf")] for name in ("nemotron", "nemotron-h")})
    logits = {}
    for name, (path, *adapter) in runs.items():
        out = subprocess.run([harness, path, "ids", ",".join(map(str, IDS)), *adapter], capture_output=True, text=True, check=True).stdout
        logits[name] = [[float(v) for v in line.split()] for line in out.strip().split("\n")]
    # Byte-level vocabularies only: llama.cpp's SentencePiece tokenizer looks up the 256 <0xXX> byte tokens a real
    # vocabulary has (and aborts without them), which tiny-gqa.gguf's 96-token test vocabulary lacks.
    vocabularies = {"tekken": files["hybrid"]}
    vocabularies.update({pre: os.path.join(FIXTURES, "nemotron-h-gguf", f"vocab-{pre}.gguf") for pre in ("gpt-2", "llama-bpe", "qwen2")})
    encodings = {}
    for name, path in vocabularies.items():
        encodings[name] = []
        for text in TEXTS:
            out = subprocess.run([harness, path, "text", text], capture_output=True, text=True, check=True).stdout.strip()
            encodings[name].append([int(v) for v in out.split(",")] if out else [])
    # llama.cpp's convert_lora_to_gguf.py on the PEFT adapter fixtures (tiny-mha-bias is rsLoRA: the converter writes
    # its lora_alpha as is, which llama.cpp then scales by alpha / r, not PEFT's alpha / √r).
    env = {**os.environ, "PYTHONPATH": os.path.join(LLAMA_CPP, "gguf-py")}
    for config in ("tiny-gqa", "tiny-mha-bias"):
        for outtype in ("f32", "f16"):
            subprocess.run([sys.executable, os.path.join(LLAMA_CPP, "convert_lora_to_gguf.py"), "--base",
                            os.path.join(FIXTURES, "hf-reference", config, "causal-lm"), "--outtype", outtype,
                            "--outfile", os.path.join(OUT, f"lora-{config}-{outtype}.gguf"),
                            os.path.join(FIXTURES, "peft-lora", config, "adapter")], check=True, env=env, capture_output=True)
    json.dump({"llama_cpp": "llama-cpp-python 0.3.36 (vendor/llama.cpp), CPU, GGML_NATIVE=OFF", "ids": IDS, "texts": TEXTS,
               "logits": logits, "encodings": encodings}, open(os.path.join(OUT, "expected.json"), "w"))


if __name__ == "__main__":
    main()
