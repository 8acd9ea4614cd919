#!/usr/bin/env bash
# Creates (or reuses) the Python venv with transformers + CPU PyTorch (and, for the serve tests, the openai client and lm-evaluation-harness) that the reference
# comparisons and benchmarks/torch_bench.py use.
#   bash scripts/reference-venv.sh [VENV_DIR]     (default: .venv-ref at the repository root)
# Idempotent: returns at once when the venv already imports torch, transformers, safetensors and numpy.
# torch is pinned to the CPU build (2.13.0+cpu): a plain `pip install torch` would pull the CUDA
# build and several GB of nvidia-* wheels. A local wheel in /opt/wheels (or $TORCH_WHEEL_DIR) is used when present.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${1:-$ROOT/.venv-ref}"
TORCH_VERSION="${TORCH_VERSION:-2.13.0}"
# The judge's version: the fixtures were made with it (5.25 changed NemotronH's prompt-pass Δt clamp), so the live
# checks compare against the same transformers.
TRANSFORMERS_VERSION="${TRANSFORMERS_VERSION:-5.25.0}"
PY="${PYTHON:-python3}"
WHEEL_DIR="${TORCH_WHEEL_DIR:-/opt/wheels}"

check() {
  [ -x "$VENV/bin/python" ] && "$VENV/bin/python" - "$TORCH_VERSION" "$TRANSFORMERS_VERSION" <<'PYEOF' >/dev/null 2>&1
import sys, torch, transformers, safetensors, numpy
assert torch.__version__.split('+')[0] == sys.argv[1], torch.__version__
assert transformers.__version__ == sys.argv[2], transformers.__version__
PYEOF
}

if check; then
  echo "reference venv ready: $VENV ($("$VENV/bin/python" -c 'import torch, transformers; print("torch", torch.__version__, "transformers", transformers.__version__)'))"
  exit 0
fi

[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip install --disable-pip-version-check)

# The CPU wheel: prefer a local file, else the version pin with the CPU local label.
TORCH_SPEC="torch==$TORCH_VERSION"
LOCAL_WHEEL="$(ls "$WHEEL_DIR"/torch-"$TORCH_VERSION"+cpu-*.whl 2>/dev/null | head -n1 || true)"
if [ -n "$LOCAL_WHEEL" ]; then
  TORCH_SPEC="$LOCAL_WHEEL"
fi
# Keep pip from replacing torch with a CUDA build while resolving the rest.
"${PIP[@]}" "$TORCH_SPEC"
# gguf (gguf-py, llama.cpp's Python package): the GGUF fixture scripts write their files with it.
"${PIP[@]}" "transformers==$TRANSFORMERS_VERSION" safetensors numpy openai gguf "torch==$TORCH_VERSION"

# lm-evaluation-harness (its API client, and its transformers backend on the same torch) for the serve suite's
# end-to-end check; optional: without it that check is skipped.
"${PIP[@]}" "lm_eval[api]" accelerate "torch==$TORCH_VERSION" || echo "lm_eval could not be installed: the lm-evaluation-harness check will be skipped" >&2

# PEFT for the benchmark's LoRA step on the PyTorch side (benchmarks/torch_bench.py); optional: without it that row
# says so.
"${PIP[@]}" peft "torch==$TORCH_VERSION" || echo "peft could not be installed: the benchmark's PyTorch LoRA step will be skipped" >&2

if ! check; then
  echo "reference venv at $VENV is incomplete" >&2
  exit 1
fi
echo "reference venv ready: $VENV ($("$VENV/bin/python" -c 'import torch, transformers; print("torch", torch.__version__, "transformers", transformers.__version__)'))"
