"""Generating stages resume inside a shard: SIGKILL mid-shard, rerun, no row lost or duplicated."""

import json
import signal
import subprocess
import sys
import time

import pytest
from conftest import ENGINE, build_tiny

from scalediff.records import PROBLEM_SCHEMA, ShardCheckpoint, problem_id, read_rows, write_rows

N = 48


def _inputs(tmp_path):
    gen = [
        {
            "id": problem_id(f"Problem number {i}: find x.", "g"),
            "problem": f"Problem number {i}: find x.",
            "solution": None,
            "answer": None,
            "origin": "generated",
            "source": f"test/{i}",
        }
        for i in range(N)
    ]
    write_rows(gen, tmp_path / "generated.parquet", PROBLEM_SCHEMA)
    write_rows([], tmp_path / "pool.parquet", PROBLEM_SCHEMA)
    return gen


def _cmd(model, tmp_path, out):
    settings = {
        "seed": 7,
        "engine": {**ENGINE, "batch_size": 4},  # a checkpoint every 4 problems
        "distill": {
            "instruction": "Solve: ",
            "enable_thinking": True,
            "temperature": 0.8,
            "top_p": 0.95,
            "top_k": 20,
            "max_tokens": 48,
            "n": 2,
            "include_original": "none",
        },
    }
    return [
        sys.executable,
        "-m",
        "scalediff.distill",
        "shard",
        "--generated",
        str(tmp_path / "generated.parquet"),
        "--pool",
        str(tmp_path / "pool.parquet"),
        "--model",
        str(model),
        "--shard",
        "1-of-1",
        "--output",
        str(out),
        "--rejects",
        str(tmp_path / f"{out.stem}.rejects.parquet"),
        "--settings",
        json.dumps(settings),
    ]


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    return build_tiny(tmp_path_factory.mktemp("teacher") / "m")


@pytest.mark.slow
def test_sigkill_mid_shard_then_rerun_loses_and_duplicates_nothing(teacher, tmp_path):
    gen = _inputs(tmp_path)
    out = tmp_path / "killed.parquet"
    ckpt = ShardCheckpoint(out)
    proc = subprocess.Popen(_cmd(teacher, tmp_path, out), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if ckpt.path.exists() and len(ckpt.done_keys()) >= 8:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the shard finished before it could be killed; make it longer"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_before = ckpt.done_keys()
    assert 8 <= len(done_before) < N and not out.exists()  # no half-written output

    subprocess.run(_cmd(teacher, tmp_path, out), check=True, capture_output=True)
    rows = read_rows(out)
    keys = [(r["id"], r["sample"]) for r in rows]
    assert len(keys) == len(set(keys)) == 2 * N
    assert {r["id"] for r in rows} == {g["id"] for g in gen}
    assert not ckpt.path.exists()

    # Per-row seeds: the resumed shard equals an uninterrupted run with the same config.
    clean = tmp_path / "clean.parquet"
    subprocess.run(_cmd(teacher, tmp_path, clean), check=True, capture_output=True)
    assert [r["completion"] for r in read_rows(clean)] == [r["completion"] for r in rows]
