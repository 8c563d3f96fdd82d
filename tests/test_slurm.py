"""Run the repo's SLURM profiles against a real scheduler.

Needs a running SLURM with partitions `cpu` (default) and `gpu` and (fake) GPUs in `gres gpu:N`, i.e.
`bash tests/slurm/start_slurm.sh` (root) before `pytest -m slurm`. Skipped when `sbatch` is not on
PATH.

Helpers for other tests (e.g. the real workflow through the profile):
  run_snakemake_slurm(workdir, targets, extra_args)   -> subprocess.CompletedProcess
  slurm_jobs(workdir)                                  -> {rule: [SlurmJob, ...]} from the run's logs
  sacct_job(jobid)                                     -> dict of sacct fields (allocation + steps)
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CLUSTER_PROFILE = REPO / "profiles" / "slurm-cluster"
WORKFLOW_PROFILE = REPO / "profiles" / "slurm"
INSTALLER = REPO / "profiles" / "install-slurm-profile.sh"
SNAKEMAKE = Path(sys.executable).with_name("snakemake")

pytestmark = [
    pytest.mark.slurm,
    pytest.mark.slow,  # every test here runs the workflow
    # CI sets SCALEDIFF_REQUIRE_SLURM=1 after starting a scheduler: there a missing sbatch fails.
    pytest.mark.skipif(
        shutil.which("sbatch") is None and not os.environ.get("SCALEDIFF_REQUIRE_SLURM"),
        reason="no SLURM here (sbatch not on PATH); start one with `bash tests/slurm/start_slurm.sh`",
    ),
]

# Faster polling than a real cluster needs; harmless on the single-node test scheduler.
FAST_ARGS = ["--latency-wait", "5", "--slurm-init-seconds-before-status-checks", "5"]
# Sizes of the per-rule resources that fit the single-node test cluster (profiles/slurm, PRESET).
CI_ENV = {"SCALEDIFF_SLURM_PRESET": "ci"}


# ----------------------------------------------------------------------------------------- helpers
def _env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env.update(CI_ENV)
    env.setdefault("HF_HUB_OFFLINE", "1")
    if extra:
        env.update(extra)
    return env


def slurm_command(
    workdir: Path,
    targets: list[str] | tuple[str, ...] = (),
    extra_args: list[str] | tuple[str, ...] = (),
    *,
    snakefile: Path | None = None,
    profile_args: list[str] | None = None,
    env: dict[str, str] | None = None,
) -> tuple[list[str], dict[str, str]]:
    """(command, environment) of a snakemake run on SLURM with the repo's profiles.

    By default: `--profile profiles/slurm-cluster --workflow-profile profiles/slurm` (absolute
    paths, so nothing is read from ~/.config), `--directory workdir`, the `ci` resource preset and
    fast status polling. SLURM logs of successful jobs are kept so slurm_jobs() can find the job ids.
    `snakefile` defaults to the repo's Snakefile; pass `profile_args` to replace the profile options.
    """
    if profile_args is None:
        profile_args = ["--profile", str(CLUSTER_PROFILE), "--workflow-profile", str(WORKFLOW_PROFILE)]
    cmd = [
        str(SNAKEMAKE),
        *profile_args,
        "--snakefile",
        str(snakefile or REPO / "Snakefile"),
        "--directory",
        str(Path(workdir)),
        "--slurm-keep-successful-logs",
        *FAST_ARGS,
        *extra_args,
        *targets,
    ]
    return cmd, _env(env)


def run_snakemake_slurm(
    workdir: Path,
    targets: list[str] | tuple[str, ...] = (),
    extra_args: list[str] | tuple[str, ...] = (),
    *,
    snakefile: Path | None = None,
    profile_args: list[str] | None = None,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
    timeout: float = 1800,
    check: bool = True,
) -> subprocess.CompletedProcess:
    """Run snakemake on SLURM with the repo's profiles (see slurm_command); output is returned
    (and printed on failure when check=True)."""
    cmd, full_env = slurm_command(workdir, targets, extra_args, snakefile=snakefile, profile_args=profile_args, env=env)
    proc = subprocess.run(cmd, cwd=cwd or workdir, env=full_env, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        pytest.fail(
            f"snakemake failed (rc={proc.returncode}): {' '.join(cmd)}\n"
            f"--- stdout ---\n{proc.stdout[-5000:]}\n--- stderr ---\n{proc.stderr[-15000:]}"
        )
    return proc


@dataclass
class SlurmJob:
    rule: str
    jobid: str
    log: Path
    sacct: dict = field(default_factory=dict)


def slurm_jobs(workdir: Path, logdir: Path | None = None) -> dict[str, list[SlurmJob]]:
    """Jobs submitted by a run in `workdir`, from the plugin's log files
    (<workdir>/.snakemake/slurm_logs/rule_<rule>/[<wildcards>/]<jobid>.log; needs
    --slurm-keep-successful-logs, which run_snakemake_slurm passes), with their sacct records."""
    logdir = logdir or Path(workdir) / ".snakemake" / "slurm_logs"
    jobs: dict[str, list[SlurmJob]] = {}
    for log in sorted(logdir.glob("rule_*/**/*.log")):
        if not re.fullmatch(r"\d+\.log", log.name):
            continue
        rule = log.relative_to(logdir).parts[0].removeprefix("rule_")
        jobid = log.stem
        jobs.setdefault(rule, []).append(SlurmJob(rule, jobid, log, sacct_job(jobid)))
    return jobs


SACCT_FIELDS = "JobID,JobName,Partition,State,ExitCode,NTasks,ReqTRES,AllocTRES,WorkDir,Start,End"


def sacct_job(jobid: str, retries: int = 20) -> dict:
    """sacct record of a job: {'job': {...allocation...}, 'steps': {'batch': {...}, '0': {...}}}.
    Retries a little: the accounting daemon can lag behind the controller."""
    names = SACCT_FIELDS.split(",")
    rec: dict = {}
    for _ in range(retries):
        out = subprocess.run(
            ["sacct", "-P", "-n", "-j", str(jobid), "--format", SACCT_FIELDS],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        rec = {"job": {}, "steps": {}}
        for line in out.splitlines():
            row = dict(zip(names, line.split("|"), strict=False))
            if row["JobID"] == str(jobid):
                rec["job"] = row
            elif row["JobID"].startswith(f"{jobid}."):
                rec["steps"][row["JobID"].split(".", 1)[1]] = row
        if rec["job"].get("State") == "COMPLETED" and "0" in rec["steps"]:
            break
        time.sleep(1)
    return rec


def tres(tres_str: str) -> dict[str, str]:
    """'cpu=2,mem=500M,gres/gpu=1' -> {'cpu': '2', 'mem': '500M', 'gres/gpu': '1'}"""
    return dict(kv.split("=", 1) for kv in tres_str.split(",") if "=" in kv)


# ------------------------------------------------------------------------------- tiny workflow
# Rule names come from the real workflow so that the repo's profiles/slurm applies unchanged:
# `diffgen_sample` is a GPU rule, `ingest` a CPU rule. The GPU rule APPENDS one line per execution.
TINY_SNAKEFILE = textwrap.dedent(
    r"""
    rule all:
        input: "gpu.done"

    rule ingest:
        output: "cpu.txt"
        shell: "echo \"cpu job=$SLURM_JOB_ID\" > {output}"

    rule diffgen_sample:
        input: "cpu.txt"
        output: touch("gpu.done")
        shell:
            "echo \"gpu job=$SLURM_JOB_ID ntasks=${{SLURM_NTASKS:-}} "
            "cuda=${{CUDA_VISIBLE_DEVICES:-}} threads={threads}\" >> gpu_runs.txt"
    """
)


def _write_tiny(tmp_path: Path) -> Path:
    workdir = tmp_path / "wf"
    workdir.mkdir()
    snakefile = workdir / "Snakefile"
    snakefile.write_text(TINY_SNAKEFILE)
    return snakefile


def _check_tiny_run(workdir: Path, proc: subprocess.CompletedProcess) -> None:
    log = proc.stdout + proc.stderr
    jobs = slurm_jobs(workdir)
    assert set(jobs) == {"ingest", "diffgen_sample"}, (jobs, log[-3000:])

    # (1) really submitted through sbatch: each rule has exactly one SLURM job id, the plugin
    # reports the submission, and slurmdbd knows the job as COMPLETED in this workdir.
    for rule, js in jobs.items():
        assert len(js) == 1, (rule, js)
        job = js[0]
        assert re.search(rf"submitted with SLURM jobid {job.jobid}\b", log), log[-3000:]
        assert job.sacct["job"]["State"] == "COMPLETED", job.sacct
        assert Path(job.sacct["job"]["WorkDir"]).resolve() == workdir.resolve(), job.sacct

    # (3) CPU rule on the cpu partition, without GPUs
    cpu = jobs["ingest"][0]
    assert cpu.sacct["job"]["Partition"] == "cpu", cpu.sacct
    assert "gres/gpu" not in tres(cpu.sacct["job"]["AllocTRES"]), cpu.sacct
    assert (workdir / "cpu.txt").read_text().strip() == f"cpu job={cpu.jobid}"

    # (2) GPU rule on the gpu partition with one GPU, and executed exactly ONCE
    gpu = jobs["diffgen_sample"][0]
    assert gpu.sacct["job"]["Partition"] == "gpu", gpu.sacct
    assert tres(gpu.sacct["job"]["AllocTRES"]).get("gres/gpu") == "1", gpu.sacct
    lines = (workdir / "gpu_runs.txt").read_text().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"gpu job={gpu.jobid} ntasks=1 cuda=0 "), lines
    # one job step (besides the batch script) with a single task
    steps = {k: v for k, v in gpu.sacct["steps"].items() if k not in ("batch", "extern")}
    assert list(steps) == ["0"] and steps["0"]["NTasks"] == "1", gpu.sacct
    # the spelling in profiles/slurm must not produce the implicit --ntasks-per-gpu
    sbatch_lines = [ln for ln in log.splitlines() if "sbatch call:" in ln and "rule_diffgen_sample" in ln]
    assert sbatch_lines, "no sbatch call logged (needs --verbose)"
    assert "--ntasks-per-gpu" not in sbatch_lines[0], sbatch_lines[0]
    assert "--gpus=1" in sbatch_lines[0] and "-p gpu" in sbatch_lines[0], sbatch_lines[0]


# ----------------------------------------------------------------------------------------- tests
def test_tiny_workflow_through_profiles(tmp_path):
    """repo profiles given explicitly (cluster profile + workflow profile)."""
    snakefile = _write_tiny(tmp_path)
    proc = run_snakemake_slurm(snakefile.parent, snakefile=snakefile, extra_args=["--verbose"])
    _check_tiny_run(snakefile.parent, proc)


def test_literal_profile_slurm_from_repo_root(tmp_path):
    """`snakemake --profile slurm` from the repo root, after install-slurm-profile.sh into a
    temporary XDG_CONFIG_HOME: the user-level profile is found by name and pulls in the per-rule
    resources of profiles/slurm (the automatic workflow profile being profiles/default)."""
    xdg = tmp_path / "xdg"
    env = {"XDG_CONFIG_HOME": str(xdg)}
    subprocess.run(["bash", str(INSTALLER), "--link"], env=_env(env), check=True, capture_output=True)
    assert (xdg / "snakemake" / "slurm" / "config.yaml").resolve() == CLUSTER_PROFILE / "config.yaml"
    # idempotent
    subprocess.run(["bash", str(INSTALLER), "--link"], env=_env(env), check=True, capture_output=True)

    snakefile = _write_tiny(tmp_path)
    proc = run_snakemake_slurm(
        snakefile.parent,
        snakefile=snakefile,
        profile_args=["--profile", "slurm"],
        cwd=REPO,
        env=env,
        extra_args=["--verbose"],
    )
    # (Snakemake 9.27.1 prints "Using profiles slurm and workflow specific profile profiles/default")
    assert re.search(r"Using profiles? slurm and workflow specific profile profiles/default\b", proc.stderr), (
        proc.stderr[:2000]
    )
    _check_tiny_run(snakefile.parent, proc)


# A CPU rule of the real workflow's name (so profiles/slurm's escalating resources apply) that fails
# on its first attempt only: the marker file survives the failed job, the output does not.
FLAKY_SNAKEFILE = textwrap.dedent(
    r"""
    rule ingest:
        output: "cpu.txt"
        shell:
            "if [ ! -e first_attempt.done ]; then touch first_attempt.done; exit 3; fi; "
            "echo \"mem={resources.mem_mb}\" > {output}"
    """
)


def test_failed_job_is_resubmitted_with_escalated_memory(tmp_path):
    """`retries` + `mem_mb: "<base> * attempt"` in profiles/slurm: the second submission asks SLURM
    for twice the memory, and the accounting database shows both jobs."""
    workdir = tmp_path / "wf"
    workdir.mkdir()
    snakefile = workdir / "Snakefile"
    snakefile.write_text(FLAKY_SNAKEFILE)
    proc = run_snakemake_slurm(workdir, snakefile=snakefile, extra_args=["--verbose"])
    log = proc.stdout + proc.stderr
    jobids = re.findall(r"submitted with SLURM jobid (\d+)", log)
    assert len(jobids) == 2, log[-3000:]
    first, second = (sacct_job(j, retries=5)["job"] for j in jobids)
    assert first["State"] == "FAILED" and first["ExitCode"] != "0:0", first  # the rule exits 3 in attempt 1
    assert second["State"] == "COMPLETED", second
    base = int(tres(first["ReqTRES"])["mem"].removesuffix("M"))
    assert tres(second["ReqTRES"])["mem"] == f"{2 * base}M", (first, second)
    assert (workdir / "cpu.txt").read_text().strip() == f"mem={2 * base}"
