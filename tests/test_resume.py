"""Generating stages resume inside a shard: SIGKILL mid-shard, rerun, no row lost or duplicated; and
only what was made the same way (model, sampling, seed, prompt) is ever resumed."""

import json
import os
import subprocess
import sys

import pytest
from conftest import ENGINE, build_tiny

from scalediff.engine import ShardJob, run_shard
from scalediff.records import PROBLEM_SCHEMA, ShardCheckpoint, problem_id, read_rows, write_rows

N = 24


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
        "engine": {**ENGINE, "batch_size": 4},  # a checkpoint and a progress line every 4 problems
        "distill": {
            "instruction": "Solve: ",
            "enable_thinking": True,
            "temperature": 0.8,
            "top_p": 0.95,
            "top_k": 20,
            "max_tokens": 32,
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


def _checkpoint_rows(out):
    """The complete row lines of ``out``'s checkpoint file as they are on disk (header skipped)."""
    path = ShardCheckpoint(out).path
    lines = path.read_bytes().split(b"\n")[:-1] if path.exists() else []  # the last piece: torn or empty
    return [r for r in map(json.loads, lines) if "key" in r]


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    return build_tiny(tmp_path_factory.mktemp("teacher") / "m")


# Runs the real stage CLI, with one more log handler: after the progress line of the 8th problem (its
# batch is checkpointed by then) the job tells the test and waits for an answer that never comes, so it
# is killed at a known point however slow or busy the machine; no clock involved.
PAUSE_AT_8 = r"""
import logging, os, re, runpy, sys
ready, hold = int(sys.argv[1]), int(sys.argv[2])
class PauseAt8(logging.Handler):
    def emit(self, record):
        done = re.search(r": (\d+)/\d+ jobs", record.getMessage())
        if done and int(done.group(1)) >= 8:
            os.write(ready, b"checkpointed")
            os.read(hold, 1)
logging.getLogger("scalediff.engine").addHandler(PauseAt8())
sys.argv = ["scalediff.distill", *sys.argv[3:]]
runpy.run_module("scalediff.distill", run_name="__main__")
"""


@pytest.mark.slow
def test_sigkill_mid_shard_then_rerun_resumes_and_loses_and_duplicates_nothing(teacher, tmp_path):
    gen = _inputs(tmp_path)
    out = tmp_path / "killed.parquet"
    (ready_r, ready_w), (hold_r, hold_w) = os.pipe(), os.pipe()
    with open(tmp_path / "killed.log", "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-c", PAUSE_AT_8, str(ready_w), str(hold_r), *_cmd(teacher, tmp_path, out)[3:]],
            stdout=subprocess.DEVNULL,
            stderr=log,
            pass_fds=(ready_w, hold_r),
        )
    os.close(ready_w)
    os.close(hold_r)
    try:
        said = os.read(ready_r, 64)  # EOF (b"") if the job ended without reaching the 8th problem
        assert said == b"checkpointed", (tmp_path / "killed.log").read_text()[-4000:]
        assert proc.poll() is None
        proc.kill()
        proc.wait(timeout=60)
    finally:
        proc.kill()
        os.close(ready_r)
        os.close(hold_w)
    before = _checkpoint_rows(out)
    done_before = {r["key"] for r in before}
    assert len(done_before) == 8 and not out.exists()  # no half-written output

    rerun = subprocess.run(_cmd(teacher, tmp_path, out), capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-4000:]
    # It resumed: the log says so, and the rows made before the kill are the final rows of those problems.
    assert f"{len(done_before)} of {N} jobs already done" in rerun.stderr
    rows = read_rows(out)
    by_id = {}
    for r in rows:
        by_id.setdefault(r["id"], []).append(r)
    for r in before:
        kept = {k: v for k, v in r.items() if k not in ("key", ShardCheckpoint.JOB)}
        assert kept in by_id[r["key"]]
    keys = [(r["id"], r["sample"]) for r in rows]
    assert len(keys) == len(set(keys)) == 2 * N
    assert {r["id"] for r in rows} == {g["id"] for g in gen}
    assert not ShardCheckpoint(out).path.exists()

    # Per-row seeds: the resumed shard equals an uninterrupted run with the same config.
    clean = tmp_path / "clean.parquet"
    subprocess.run(_cmd(teacher, tmp_path, clean), check=True, capture_output=True, timeout=600)
    assert read_rows(clean) == rows


# --------------------------------------------------------------- engine level: what may be resumed
SAMPLING = {"temperature": 0.8, "top_p": 0.95, "max_tokens": 12, "n": 2}
JOBS = 12


@pytest.fixture(scope="module")
def engine(teacher, tmp_path_factory):
    from scalediff.engine import Engine

    return Engine(str(teacher), ENGINE, seed=0)


def _run(
    engine, out, keys=range(JOBS), sampling=SAMPLING, base_seed=7, instruction="Solve: ", payload=1, identity=None
):
    """One shard through ``run_shard``; its rows carry the payload and ``identity`` (as a caller's
    ``to_rows`` would apply a threshold), so a row made under other ones is visibly different."""
    jobs = [
        ShardJob(
            key=f"k{i}",
            prompt=engine.chat_prompt([{"role": "user", "content": f"{instruction}Problem number {i}: find x."}]),
            payload={"v": payload},
        )
        for i in keys
    ]

    def to_rows(job, comps):
        return [{"sample": s, "text": c.text, "v": job.payload["v"], "mark": identity} for s, c in enumerate(comps)]

    extra = {"identity": identity} if identity is not None else {}  # the callers' default: none
    return run_shard(engine, jobs, sampling, to_rows, str(out), base_seed=base_seed, batch_size=4, **extra)


CHANGES = {
    "sampling": ({"sampling": {**SAMPLING, "temperature": 1.3}}, "sampling changed"),
    "seed": ({"base_seed": 8}, "base_seed changed"),
    "rows": ({"identity": {"threshold": 0.9}}, "rows changed"),
    "prompt": ({"instruction": "Answer: "}, None),  # same fingerprint, other job digests
    "payload": ({"payload": 2}, None),
}


@pytest.mark.slow
@pytest.mark.parametrize("change", CHANGES)
def test_kill_change_a_setting_rerun_equals_a_clean_run_with_the_new_setting(engine, tmp_path, caplog, change):
    new, reason = CHANGES[change]
    out = tmp_path / "shard.parquet"
    _run(engine, out, keys=range(5))  # the killed run: 5 jobs checkpointed under the old setting
    assert len(_checkpoint_rows(out)) == 5 * SAMPLING["n"]
    with caplog.at_level("INFO", logger="scalediff"):
        rows = _run(engine, out, **new)
    assert rows == _run(engine, tmp_path / "clean.parquet", **new)
    assert "already done" not in caplog.text
    if reason:
        assert f"discarding checkpoint {ShardCheckpoint(out).path}: {reason}" in caplog.text


@pytest.mark.slow
def test_a_changed_model_file_discards_the_checkpoint(engine, tmp_path, caplog):
    """The engine's identity is read from the model's files at every shard: a model rewritten at the
    same path (a retrained generator) is a different model."""
    out = tmp_path / "shard.parquet"
    _run(engine, out, keys=range(5))
    marker = engine.model + "/README.md"
    try:
        with open(marker, "w") as fh:
            fh.write("retrained\n")
        with caplog.at_level("INFO", logger="scalediff"):
            _run(engine, out)
    finally:
        os.unlink(marker)
    assert "engine changed" in caplog.text and "already done" not in caplog.text


@pytest.mark.slow
def test_same_settings_resume_and_only_the_current_jobs_come_back(engine, tmp_path, caplog):
    out = tmp_path / "shard.parquet"
    _run(engine, out, keys=range(5))
    before = _checkpoint_rows(out)
    with caplog.at_level("INFO", logger="scalediff"):
        rows = _run(engine, out, keys=range(3, JOBS))  # jobs k0-k2 are no longer this shard's
    assert f"2 of {JOBS - 3} jobs already done" in caplog.text
    assert {r["key"] for r in rows} == {f"k{i}" for i in range(3, JOBS)}
    assert [{k: v for k, v in r.items() if k != ShardCheckpoint.JOB} for r in before[6:]] == rows[:4]
    assert rows == _run(engine, tmp_path / "clean.parquet", keys=range(3, JOBS))
