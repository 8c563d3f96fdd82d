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
    return _snakemake(workdir, "-n", "--cores", "2", *args)


def _snakemake(workdir: Path, *args: str) -> subprocess.CompletedProcess:
    """Snakemake in ``workdir``, offline, with a clean environment (nothing from the caller's)."""
    return subprocess.run(
        [*SNAKEMAKE, *args],
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


SCHEMA_ERROR = "Error validating config file."


@pytest.mark.parametrize(
    "edit,expected",
    [
        # misspelt keys, at the top level and nested: every object in config/schema.yaml is closed
        (
            lambda c: c.update(selct={}),
            [SCHEMA_ERROR, "Additional properties are not allowed ('selct' was unexpected)"],
        ),
        (
            lambda c: c["distill"].update(temprature=0.6),
            [
                SCHEMA_ERROR,
                "Additional properties are not allowed ('temprature' was unexpected)",
                "instance['distill']",
            ],
        ),
        (
            lambda c: c["filter"]["model_based"].update(instuction=""),
            [SCHEMA_ERROR, "('instuction' was unexpected)", "On instance['filter']['model_based']"],
        ),
        # a sampling key the stage never passes to the engine is an unknown key, not silently ignored
        (lambda c: c["eval"].update(top_k=20), [SCHEMA_ERROR, "('top_k' was unexpected)", "On instance['eval']"]),
        # out-of-range values: the message names the value, the bound and the key
        (
            lambda c: c["select"].update(shards=0),
            [SCHEMA_ERROR, "0 is less than the minimum of 1", "On instance['select']['shards']"],
        ),
        (
            lambda c: c["eval"].update(top_p=1.5),
            [SCHEMA_ERROR, "1.5 is greater than the maximum of 1", "On instance['eval']['top_p']"],
        ),
        # invalid enums
        (
            lambda c: c["filter"]["model_based"].update(rule="majorty"),
            [
                SCHEMA_ERROR,
                "'majorty' is not one of ['any', 'majority']",
                "On instance['filter']['model_based']['rule']",
            ],
        ),
        (
            lambda c: c["engine"].update(dtype="fp8"),
            [SCHEMA_ERROR, "'fp8' is not one of ['auto', 'float32', 'bfloat16', 'float16']", "['engine']['dtype']"],
        ),
        (
            lambda c: c["eval"].update(remove_reasoning_tags="yes"),
            [SCHEMA_ERROR, "'yes' is not of type 'boolean'", "On instance['eval']['remove_reasoning_tags']"],
        ),
        # cross-references the schema cannot express (rules/common.smk)
        (
            lambda c: c["report"].update(baseline_model="orignal_only"),
            ["config report.baseline_model: 'orignal_only' is not one of eval.models"],
        ),
        (
            lambda c: c["models"].update(selector={"tiny": "selectr"}),
            ["config models.selector: tiny model 'selectr' is not one of tiny.roles"],
        ),
    ],
    ids=[
        "misspelt-top-level",
        "misspelt-key",
        "misspelt-nested-key",
        "unused-sampling-key",
        "out-of-range",
        "out-of-range-sampling",
        "invalid-enum",
        "invalid-enum-dtype",
        "wrong-type",
        "unknown-baseline-model",
        "unknown-tiny-role",
    ],
)
def test_bad_config_fails_with_snakemakes_message_naming_the_key(tmp_path, edit, expected):
    res = _dry_run(_workdir(tmp_path, "config.yaml", edit))
    assert res.returncode != 0
    out = res.stderr + res.stdout
    for line in expected:
        assert line in out, out[-3000:]
    assert "Job stats" not in out  # nothing was planned


def test_bad_value_on_the_command_line_fails_naming_the_key(tmp_path):
    # --config merges into config.yaml; the merged config is validated the same way.
    res = _dry_run(_workdir(tmp_path, "config.yaml"), "--config", 'filter={"model_based": {"rule": "majorty"}}')
    assert res.returncode != 0
    out = res.stderr + res.stdout
    assert "'majorty' is not one of ['any', 'majority']" in out, out[-3000:]
    assert "On instance['filter']['model_based']['rule']" in out
