"""Config validation and DAG planning through Snakemake itself (no network, no jobs run)."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
SNAKEMAKE = [sys.executable, "-m", "snakemake"]


def _workdir(tmp_path: Path, config_name: str, edit=None) -> Path:
    """A copy of the workflow (not of results) so tests never touch the repo's results/."""
    for name in ("Snakefile", "rules", "config", "profiles", "envs"):
        src = REPO / name
        (shutil.copytree if src.is_dir() else shutil.copy)(src, tmp_path / name)
    if edit:
        cfg = yaml.safe_load((tmp_path / "config" / config_name).read_text())
        edit(cfg)
        (tmp_path / "config" / config_name).write_text(yaml.safe_dump(cfg))
    return tmp_path


def _dry_run(workdir: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*SNAKEMAKE, "-n", "--cores", "2", *args],
        cwd=workdir,
        capture_output=True,
        text=True,
        env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin", "HOME": str(workdir)},
        timeout=300,
    )


def test_default_config_plans_every_stage(tmp_path):
    res = _dry_run(_workdir(tmp_path, "config.yaml"))
    assert res.returncode == 0, res.stderr
    for rule in (
        "ingest",
        "tiny_model",
        "select_shard",
        "diffgen_train",
        "diffgen_sample",
        "distill_shard",
        "sft_train",
        "eval_benchmark",
        "report",
    ):
        assert rule in res.stdout, rule


def test_paper_config_plans_the_full_dag_offline(tmp_path):
    res = _dry_run(_workdir(tmp_path, "paper.yaml"), "--configfile", "config/paper.yaml")
    assert res.returncode == 0, res.stderr
    assert "tiny_model" not in res.stdout  # real models: nothing to build
    assert "select_shard" in res.stdout and "64" in res.stdout


@pytest.mark.parametrize(
    "edit,needle",
    [
        (lambda c: c["select"].update(shards=0), "shards"),
        (lambda c: c["distill"].update(temprature=0.6), "temprature"),
        (lambda c: c["engine"].update(dtype="fp8"), "fp8"),
        (lambda c: c.update(selct={}), "selct"),
    ],
)
def test_bad_config_fails_naming_the_key(tmp_path, edit, needle):
    res = _dry_run(_workdir(tmp_path, "config.yaml", edit))
    assert res.returncode != 0
    assert needle in res.stderr + res.stdout
