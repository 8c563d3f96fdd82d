"""The real workflow through `profiles/slurm` on a real scheduler: sharded model stage + training.

A reduced target of the embedded default (selector scoring over 2 shards, the generator base's
shaping run and the DiffGen training step) is submitted with sbatch; GPU rules must land on the
`gpu` partition with a GPU allocated, and the results must equal a local run with the same seeds.
"""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml
from test_config import _workdir
from test_slurm import pytestmark, run_snakemake_slurm, slurm_command, slurm_jobs  # noqa: F401  (marks: slurm, skip)

SELECT = "results/select/difficulty.parquet"


def _reduce(cfg: dict) -> None:
    """Shorter shaping runs: these tests check placement and equality, not model quality."""
    for role in cfg["tiny"]["roles"].values():
        role["steps"] = 20
    cfg["diffgen"]["train"]["epochs"] = 1


@pytest.fixture(scope="module")
def local_run(tmp_path_factory) -> Path:
    workdir = _workdir(tmp_path_factory.mktemp("local"), "config.yaml", _reduce)
    res = subprocess.run(
        [sys.executable, "-m", "snakemake", "--cores", "2", SELECT],
        cwd=workdir,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert res.returncode == 0, res.stderr[-5000:]
    return workdir


def _edit_config(workdir: Path, edit) -> None:
    path = workdir / "config" / "config.yaml"
    cfg = yaml.safe_load(path.read_text())
    edit(cfg)
    path.write_text(yaml.safe_dump(cfg))


def _copy_without_select(src: Path, dst: Path) -> Path:
    """The local run's workdir (tiny selector and pool included) with the selection removed."""
    shutil.copytree(src, dst, symlinks=True)
    shutil.rmtree(dst / "results" / "select")
    return dst


def _scores(workdir: Path) -> dict[str, tuple[bool, float]]:
    rows = pq.read_table(workdir / SELECT).to_pylist()
    assert len(rows) == len({r["id"] for r in rows}), "a problem scored twice"
    return {r["id"]: (r["difficult"], r["p_nothink"]) for r in rows}


def _assert_same_scores(local: dict, remote: dict) -> None:
    assert local.keys() == remote.keys()
    assert all(local[k][0] == remote[k][0] for k in local), "same selector, same greedy decision"
    assert all(abs(local[k][1] - remote[k][1]) < 1e-4 for k in local)


def test_sharded_select_and_training_on_slurm_match_a_local_run(local_run, tmp_path):
    workdir = _copy_without_select(local_run, tmp_path / "slurm")
    run_snakemake_slurm(workdir, [SELECT, "results/diffgen/model"])

    jobs = slurm_jobs(workdir)
    assert len(jobs["select_shard"]) == 2
    for rule in ("select_shard", "tiny_model", "diffgen_train"):
        for job in jobs[rule]:
            assert job.sacct["job"]["Partition"] == "gpu", (rule, job.sacct)
            assert "gres/gpu=1" in job.sacct["job"]["AllocTRES"], (rule, job.sacct)
    for job in jobs["select_gather"]:
        assert job.sacct["job"]["Partition"] == "cpu"

    _assert_same_scores(_scores(local_run), _scores(workdir))
    assert (workdir / "results/diffgen/model/config.json").exists()


def _default_sigint() -> None:
    """Ctrl-C reaches Snakemake as at a terminal. A test run started in the background by a
    non-interactive shell (`cmd &`) inherits SIGINT as ignored, and Python then never installs its
    KeyboardInterrupt handler: Snakemake would ignore the interrupt and hang (seen in CI)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _checkpoint_rows(path: Path) -> dict[str, float]:
    """Scores a shard had checkpointed: {problem id: p_nothink} from its `.partial.jsonl`."""
    rows = {}
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:  # a torn last line: not checkpointed
            continue
        if "p_nothink" in rec:
            rows[rec["id"]] = rec["p_nothink"]
    return rows


def _one_batch_per_problem(cfg: dict) -> None:
    """A checkpoint line per problem: a shard is mid-way for as long as it runs, not a clock."""
    _reduce(cfg)
    cfg["engine"]["batch_size"] = 1


def test_scancel_one_shard_then_rerun_loses_no_row(local_run, tmp_path):
    workdir = _copy_without_select(local_run, tmp_path / "cancel")
    _edit_config(workdir, _one_batch_per_problem)
    cmd, env = slurm_command(workdir, [SELECT], ["--retries", "0"])
    log = tmp_path / "snakemake.log"  # shown if the interrupted run misbehaves
    with open(log, "w") as out:
        proc = subprocess.Popen(
            cmd, cwd=workdir, env=env, stdout=out, stderr=subprocess.STDOUT, preexec_fn=_default_sigint
        )
    # Event, not clock: a shard job whose checkpoint holds finished rows is frozen at once
    # (`scontrol suspend`: SIGSTOP to its processes), so it cannot finish while the test reads its
    # checkpoint; then it is cancelled. A shard that completed before it was caught is skipped.
    shards = workdir / "results/select/shards"
    cancelled, before = None, {}
    deadline = time.time() + 900  # bounds a broken run only; nothing waits on it otherwise
    while cancelled is None and time.time() < deadline and proc.poll() is None:
        queue = subprocess.run(["squeue", "-h", "-o", "%i %T %k"], capture_output=True, text=True).stdout
        running = [ln.split()[0] for ln in queue.splitlines() if " RUNNING " in ln and "select_shard" in ln]
        for partial in shards.glob("*.parquet.partial.jsonl") if running else ():
            if not partial.stat().st_size:
                continue
            for jobid in running:
                subprocess.run(["scontrol", "suspend", jobid], capture_output=True)
            done = partial.with_name(partial.name.removesuffix(".partial.jsonl"))
            if partial.exists() and not done.exists():
                before = _checkpoint_rows(partial)
                # the job that owns this shard: its comment names the scatteritem
                owner = [ln.split()[0] for ln in queue.splitlines() if done.stem in ln]
                cancelled = (owner or running)[0]
            # Thaw and cancel at once: SIGTERM reaches a running job (as `scancel` by a user does),
            # so the job's own Snakemake cleans up; a cancelled frozen job would be killed outright.
            for jobid in running:
                subprocess.run(["scontrol", "resume", jobid], capture_output=True)
                if jobid == cancelled:
                    subprocess.run(["scancel", jobid], check=True)
            if cancelled:
                break
        time.sleep(0.05)
    assert cancelled, f"no select_shard job was caught mid-shard; snakemake log:\n{log.read_text()[-3000:]}"
    assert before, "the cancelled shard had checkpointed rows"
    # The pinned plugin (2.6.1) does not recognise sacct's "CANCELLED by <uid>" as a failure and
    # keeps waiting; a user interrupts it (Ctrl-C), which releases the lock, and reruns.
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=300)
        except subprocess.TimeoutExpired:
            proc.kill()
            pytest.fail(f"snakemake ignored the interrupt; its log ends:\n{log.read_text()[-3000:]}")
    assert not (workdir / SELECT).exists()

    # The rerun completes the missing shard; every pool problem is scored exactly once.
    run_snakemake_slurm(workdir, [SELECT], ["--rerun-incomplete"])
    # It resumed: the rerun of that shard says so, and the rows checkpointed before the kill are final.
    logs = "".join(p.read_text() for p in (workdir / "results/logs/select").glob("shard_*.log"))
    done = [(int(k), int(n)) for k, n in re.findall(r"(\d+) of (\d+) jobs already done", logs)]
    # (at most a batch or so more than was read: the job ran for an instant between thaw and cancel)
    assert len(done) == 1 and len(before) <= done[0][0] < done[0][1], (done, len(before), logs[-2000:])
    final = _scores(workdir)
    assert all(abs(final[k][1] - p) < 1e-9 for k, p in before.items())
    pool = pq.read_table(workdir / "results/ingest/pool.parquet").column("id").to_pylist()
    rejected = {r["id"] for r in pq.read_table(workdir / "results/select/rejects.parquet").to_pylist()}
    assert set(_scores(workdir)) == set(pool) - rejected
    _assert_same_scores(_scores(local_run), _scores(workdir))
