#!/usr/bin/env bash
# Create .venv/ at the repo root with the pinned CPU stack and this project (editable install).
# GPU clusters: envs/requirements-gpu.txt (or the conda env envs/scalediff.yaml with requirements-gpu.txt) instead.
set -euo pipefail
cd "$(dirname "$0")/.."
python="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$python" -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -r envs/requirements-cpu.txt -e .
# PyPI's CUDA builds of these come in as dependencies and break `import transformers` on a CPU-only
# torch (`operator torchvision::nms does not exist`); vLLM text models do not use them.
.venv/bin/python -m pip uninstall --quiet -y torchvision torchaudio torchcodec triton 2>/dev/null || true
.venv/bin/python -c "import vllm, transformers, lighteval, snakemake, scalediff; print('scalediff environment ready')"
