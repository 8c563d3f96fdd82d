"""Student SFT in time-boxed segments, with its data prepared by a CPU job before the GPU job.

A segment ends on SIGUSR1 (SLURM's warning) or after ``segment_minutes``: the step in progress
finishes, a checkpoint is saved, the run exits with ``SEGMENT_EXIT`` (under SLURM it requeues its
job first), and the rerun resumes from that checkpoint.
"""

import csv
import json
import os
import signal
import subprocess
import sys
import time

import pytest
from conftest import build_tiny

SETTINGS = {
    "epochs": 1,
    "lr": 1e-3,
    "scheduler": "linear",
    "warmup_ratio": 0.0,
    "weight_decay": 0.0,
    "per_device_batch_size": 2,
    "grad_accum": 1,
    "cutoff": 128,
    "bf16": False,
    "seed": 0,
    "packing": False,
    "progress": False,
    "logging_steps": 1,
}


def _data(tmp_path, n=64):
    from scalediff.records import write_rows

    rows = [
        {
            "problem": f"What is {i}+{i}?",
            "solution": f"<think>\nadd\n</think>\n\n$\\boxed{{{2 * i}}}$",
            "answer": str(2 * i),
            "id": str(i),
            "origin": "original",
            "source": "t",
        }
        for i in range(n)
    ]
    write_rows(rows, tmp_path / "data.parquet")
    return str(tmp_path / "data.parquet")


def _sft_command(tmp_path, base, data, settings, prepared=None):
    cmd = [sys.executable, "-m", "scalediff.sft", "--data", data, "--base-model", str(base)]
    cmd += ["--prepared", str(prepared)] if prepared else []
    cmd += ["--output", str(tmp_path / "model"), "--loss-csv", str(tmp_path / "loss.csv")]
    return cmd + ["--summary", str(tmp_path / "summary.json"), "--settings", json.dumps({"sft": settings})]


@pytest.mark.slow
def test_training_maps_the_data_a_cpu_job_prepared(tmp_path):
    """`sft --prepare` (the `sft_data` rule) writes the Arrow file and token lengths; the training job
    maps them: no conversion or tokenization pass of its own in its run folder, the prepared files
    untouched."""
    base = build_tiny(tmp_path / "base")
    data = _data(tmp_path, n=16)
    prepared = tmp_path / "data-dir"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    settings = json.dumps({"sft": SETTINGS})
    subprocess.run(
        [sys.executable, "-m", "scalediff.sft", "--prepare", str(prepared), "--data", data, "--base-model", str(base)]
        + ["--settings", settings],
        check=True,
        env=env,
        timeout=300,
    )
    made = {p.name: p.stat().st_mtime_ns for p in prepared.iterdir()}
    assert {"examples.arrow", "examples.arrow.fingerprint.json", "token_lengths.npz"} <= set(made)
    subprocess.run(
        _sft_command(tmp_path, base, data, {**SETTINGS}, prepared=prepared) + [],
        check=True,
        env=env,
        timeout=300,
    )
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["examples_used"] == 16 and summary["steps"] == 8
    assert {p.name: p.stat().st_mtime_ns for p in prepared.iterdir() if p.name in made} == made
    assert not (tmp_path / "model.run").exists() or not list((tmp_path / "model.run").rglob("*.arrow"))


def _losses(path):
    with open(path) as fh:
        return [(int(r["step"]), float(r["loss"])) for r in csv.DictReader(fh)]


@pytest.mark.slow
def test_sigusr1_ends_a_segment_and_the_rerun_resumes_from_it(tmp_path):
    """SIGUSR1 mid-run: a checkpoint at the step it arrived, exit status 75 (rerun to continue); the
    rerun says it resumes from that checkpoint and its loss curve continues the first segment's."""
    from scalediff.train import SEGMENT_EXIT

    base = build_tiny(tmp_path / "base")
    data = _data(tmp_path)
    settings = {**SETTINGS, "epochs": 8}  # 256 steps: long enough to signal mid-run
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    env.pop("SLURM_JOB_ID", None)
    log1 = tmp_path / "segment1.log"
    with open(log1, "w") as out:
        proc = subprocess.Popen(
            _sft_command(tmp_path, base, data, settings), stdout=out, stderr=subprocess.STDOUT, env=env
        )
        deadline = time.monotonic() + 300
        while log1.read_text().count("'loss'") < 5:
            assert proc.poll() is None, log1.read_text()[-3000:]
            assert time.monotonic() < deadline, "no training steps logged in 300 s"
            time.sleep(0.2)
        proc.send_signal(signal.SIGUSR1)
        assert proc.wait(timeout=300) == SEGMENT_EXIT, log1.read_text()[-3000:]
    text = log1.read_text()
    run_dir = tmp_path / "model.run"
    checkpoints = list(run_dir.glob("checkpoint-*"))
    assert len(checkpoints) == 1, checkpoints
    step = int(checkpoints[0].name.split("-")[1])
    assert 5 <= step < 256
    assert f"segment ended at step {step}: checkpoint saved in {run_dir}" in text
    assert not (tmp_path / "model").exists() and not (tmp_path / "summary.json").exists()
    state = json.loads((checkpoints[0] / "trainer_state.json").read_text())
    before = [h["loss"] for h in state["log_history"] if "loss" in h]

    done = subprocess.run(
        _sft_command(tmp_path, base, data, settings), capture_output=True, text=True, env=env, timeout=600
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert f"resuming from {checkpoints[0]}" in done.stdout + done.stderr
    curve = _losses(tmp_path / "loss.csv")
    assert [s for s, _ in curve] == list(range(1, 257))
    assert [loss for _, loss in curve[:step]] == pytest.approx(before, rel=1e-6)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["steps"] == 256 and summary["resumed_from"] == str(checkpoints[0])


@pytest.mark.slow
def test_segment_minutes_ends_a_segment_on_the_trainers_own_clock(tmp_path):
    """With ``segment_minutes`` the run ends its segment itself (no signal needed: torchrun does not
    pass SIGUSR1 on), saving a checkpoint and leaving with ``SEGMENT_EXIT``; time-based saves too."""
    from scalediff.train import SEGMENT_EXIT, train

    base = build_tiny(tmp_path / "base")
    examples = [{"prompt": "<|im_start|>user\n", "response": f"What is {i}+{i}?<|im_end|>\n"} for i in range(16)]
    settings = {**SETTINGS, "segment_minutes": 1e-4, "save_every_minutes": 1e-5}
    with pytest.raises(SystemExit) as ended:
        train(str(base), examples, str(tmp_path / "model"), settings, max_steps=8, save_steps=100)
    assert ended.value.code == SEGMENT_EXIT
    assert [p.name for p in (tmp_path / "model.run").glob("checkpoint-*")] == ["checkpoint-1"]
    stats = train(str(base), examples, str(tmp_path / "model"), {**settings, "segment_minutes": None}, max_steps=8)
    assert stats["resumed_from"] == str(tmp_path / "model.run" / "checkpoint-1") and stats["steps"] == 8


SEGMENT_SNAKEFILE = """
rule all:
    input: "model"

rule seg_train:
    output: directory("model")
    log: "train.log"
    resources: slurm_extra="--requeue"
    shell:
        "echo segment start $SLURM_JOB_ID >> segments.txt;"  # Snakemake empties {{log}} at each start
        " {python} -m scalediff.sft --data {data} --base-model {base} --output {{output}}"
        ' --loss-csv loss.csv --summary summary.json --settings "$(cat {settings})" >> {{log}} 2>&1'
"""


@pytest.mark.slurm
@pytest.mark.slow
@pytest.mark.skipif(__import__("shutil").which("sbatch") is None, reason="no SLURM here (sbatch not on PATH)")
def test_segments_requeue_the_same_slurm_job_until_done(tmp_path):
    """On the real scheduler: each segment ends after its first step, the job requeues itself
    (`scontrol requeue`, submitted with --requeue), the executor plugin keeps waiting on the PENDING
    job, and the same job, rerun, resumes; Snakemake sees one job that completed, sacct its two
    requeues. (SLURM holds a requeued job ~2 min before it starts again: ~6 min in all.)"""
    from test_slurm import run_snakemake_slurm, sacct_job

    base = build_tiny(tmp_path / "base")
    data = _data(tmp_path, n=6)  # 3 steps of 2 examples
    settings = {**SETTINGS, "segment_minutes": 1e-4}  # every segment ends after one step
    workdir = tmp_path / "wf"
    workdir.mkdir()
    (workdir / "settings.json").write_text(json.dumps({"sft": settings}))
    snakefile = workdir / "Snakefile"
    snakefile.write_text(
        SEGMENT_SNAKEFILE.format(python=sys.executable, data=data, base=base, settings=workdir / "settings.json")
    )
    proc = run_snakemake_slurm(workdir, snakefile=snakefile, extra_args=["--verbose"], timeout=1200)
    jobids = set(__import__("re").findall(r"submitted with SLURM jobid (\d+)", proc.stdout + proc.stderr))
    assert len(jobids) == 1, proc.stderr[-3000:]
    [jobid] = jobids
    assert sacct_job(jobid, retries=5)["job"]["State"] == "COMPLETED"
    runs = subprocess.run(
        ["sacct", "-D", "-X", "-n", "-P", "-j", jobid, "-o", "State"], capture_output=True, text=True, check=True
    ).stdout.split()
    assert runs == ["REQUEUED", "REQUEUED", "COMPLETED"], runs
    assert (workdir / "segments.txt").read_text().split("\n")[:-1] == [f"segment start {jobid}"] * 3
    log = (workdir / "train.log").read_text()  # the last segment's
    assert "resuming from model.run/checkpoint-2" in log, log[-3000:]
    assert [s for s, _ in _losses(workdir / "loss.csv")] == [1, 2, 3]
    assert json.loads((workdir / "summary.json").read_text())["steps"] == 3
