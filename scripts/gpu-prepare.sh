#!/usr/bin/env bash
# Prepares .device/ for a WebGPU run on the lent GPU machine: bundles benchmarks/gpu-entry.ts with Node.js, Dawn
# and the Vulkan loader (../shared/gpu/prepare-carry.sh), and copies the HF fixtures beside the bundle.
# Then, with the device tool:  run  command "bash .device/run.sh"  carry [".device"]  timeout_s 420
# Results come back as gpu-results.json (everything) and gpu-results.md (the summary table). Needs the optional packages webgpu and @tensorflow/tfjs-backend-webgpu.
set -euo pipefail
root=$(git rev-parse --show-toplevel)
cd "$root"
shared=${SHARED:-$root/../shared}
for pkg in webgpu @tensorflow/tfjs-backend-webgpu esbuild; do
  [ -d "node_modules/$pkg" ] || { echo "gpu-prepare: node_modules/$pkg is missing: npm install" >&2; exit 2; }
done
# The wasm backend cannot travel in the bundle (it loads .wasm files); the entry never asks for it. --keep-names: the
# report names WebGPU programs by their class names, which esbuild would otherwise rename (_FewRowsLinearProgram).
bash "$shared/gpu/prepare-carry.sh" benchmarks/gpu-entry.ts --keep-names --external:@tensorflow/tfjs-backend-wasm --external:@tensorflow/tfjs-node --external:@tensorflow/tfjs-node-gpu

mkdir -p .device/fixtures
for config in tiny-gqa tiny-mha-bias; do
  mkdir -p ".device/fixtures/$config"
  cp "test/fixtures/hf-reference/$config/expected.json" "test/fixtures/hf-reference/$config/expected.safetensors" ".device/fixtures/$config/"
  for sub in causal-lm seqcls-single seqcls-multi seqcls-regression qa tokcls; do
    cp -r "test/fixtures/hf-reference/$config/$sub" ".device/fixtures/$config/"
  done
  mkdir -p .device/fixtures/peft-lora
  cp -r "test/fixtures/peft-lora/$config" .device/fixtures/peft-lora/
done
# NemotronH: its fixture checkpoint ("M*M-") and what transformers computes with it.
mkdir -p .device/fixtures/nemotron-h
cp -r test/fixtures/nemotron-h/model test/fixtures/nemotron-h/expected.json test/fixtures/nemotron-h/beams.json .device/fixtures/nemotron-h/
du -sh .device
