"""Fail fast when a job that must run on a GPU finds none (instead of crawling along on the CPU).

The embedded default runs every stage on CPU on purpose; the paper configuration sets
``require_cuda`` (engine and training settings), so a GPU job that lands on a node without a usable
CUDA device (CPU-only torch wheel, driver older than the wheel's CUDA, no GPU allocated) stops at
once with what it found, rather than spending its time limit on a 7B model on the CPU.
"""

from __future__ import annotations

import os


def cuda_problem() -> str | None:
    """Why no CUDA device is usable here, or None when one is."""
    import torch

    if torch.cuda.is_available():
        return None
    built = torch.version.cuda
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    slurm = os.environ.get("SLURM_JOB_GPUS") or os.environ.get("SLURM_STEP_GPUS")
    if built is None:
        why = f"torch {torch.__version__} is a CPU-only build (install the GPU stack: envs/setup-gpu.sh)"
    else:
        why = f"torch {torch.__version__} (CUDA {built}) sees no device (driver too old for it, or no GPU here)"
    return f"{why}; CUDA_VISIBLE_DEVICES={visible!r}, SLURM GPUs={slurm!r}"


def require_cuda(what: str, settings: dict) -> None:
    """Raise ``SystemExit`` naming ``what`` when ``settings['require_cuda']`` and no GPU is usable."""
    if not settings.get("require_cuda"):
        return
    if problem := cuda_problem():
        raise SystemExit(f"{what}: require_cuda is set but no CUDA device is usable: {problem}")
