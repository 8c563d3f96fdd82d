"""A GPU job that finds no usable CUDA device stops at once, naming what it found."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from scalediff.records import write_rows


def _select_shard(tmp_path, engine: dict) -> subprocess.CompletedProcess:
    problems = tmp_path / "pool.parquet"
    write_rows([{"id": "p-1", "problem": "What is 1+1?"}], problems)
    settings = {"seed": 0, "engine": engine, "select": {"logprobs": 20, "threshold": None}}
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "scalediff.select",
            "shard",
            "--problems",
            str(problems),
            "--model",
            str(tmp_path / "no-model-needed"),
            "--shard",
            "1-of-1",
            "--output",
            str(tmp_path / "out.parquet"),
            "--rejects",
            str(tmp_path / "rej.parquet"),
            "--settings",
            json.dumps(settings),
        ],  # fmt: skip
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_engine_with_require_cuda_fails_before_loading_anything_on_a_cpu_machine(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    res = _select_shard(tmp_path, {"dtype": "bfloat16", "max_model_len": 4096, "batch_size": 8, "require_cuda": True})
    assert res.returncode != 0
    assert "require_cuda is set but no CUDA device is usable" in res.stderr, res.stderr[-2000:]
    assert "CPU-only build" in res.stderr  # says what it found
    assert not (tmp_path / "out.parquet").exists()


def test_training_with_require_cuda_fails_on_a_cpu_machine(tmp_path):
    import torch

    from scalediff.train import train

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    with pytest.raises(SystemExit, match="require_cuda is set"):
        train(str(tmp_path / "base"), [], str(tmp_path / "out"), {"cutoff": 16, "require_cuda": True})
    assert not (tmp_path / "out").exists()
