"""Experiments: overrides are checked before any job, a variant reruns only what it changes, the SFT
data mix draws what it says, and the report's gain interval behaves."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from test_config import REPO, _dry_run, _workdir

from scalediff import experiments as xp
from scalediff.experiments_report import bootstrap_gain
from scalediff.records import PROBLEM_SCHEMA
from scalediff.sft import mix_selection

DEFAULT = yaml.safe_load((REPO / "config" / "config.yaml").read_text())


def _with(name: str, overrides: dict) -> dict:
    cfg = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    cfg["experiments"] = {name: {"group": "g", "overrides": overrides}}
    return cfg


def test_a_variant_reruns_only_the_stages_its_overrides_change():
    plan = xp.stage_prefixes(DEFAULT)
    changed = {name: [s for s, p in stages.items() if p] for name, stages in plan.items()}
    assert changed["generated_half"] == ["sft_scalediff"]  # SFT data only: nothing upstream, not the baseline
    assert changed["diffgen_temperature_1"] == [
        "diffgen",
        "select_generated",
        "distill",
        "filter",
        "sft_original",
        "sft_scalediff",
    ]  # DiffGen training is reused: only sampling changed
    train = xp.stage_prefixes(_with("lr", {"diffgen.train.lr": 1e-3}))["lr"]
    assert train["diffgen_train"] and not train["select"]
    difficult = xp.stage_prefixes(_with("d", {"sft_mix.original": "difficult"}))["d"]
    assert difficult["sft_original"] and difficult["sft_scalediff"] and not difficult["filter"]
    verified = xp.stage_prefixes(_with("v", {"distill.n": 4, "verify.enabled": True}))["v"]
    assert verified["distill"] and verified["verify"] and verified["filter"] and not verified["diffgen"]
    evals = xp.stage_prefixes(_with("e", {"eval.temperature": 1.0}))["e"]
    assert evals["eval"] and not any(evals[s] for s in xp.STAGES)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"sft.lrr": 1.0}, "experiments.bad.overrides.sft.lrr: no such key"),
        ({"nosuch.lr": 1.0}, "'nosuch' is not a section"),
        ({"pool.sources": []}, "'pool' is shared by every variant"),
        ({"distill.shards": 4}, "'distill.shards' is shared"),
        ({"report.baseline_model": "student_base"}, "change nothing the workflow computes"),
    ],
)
def test_a_bad_override_is_named(overrides, message):
    with pytest.raises(xp.ExperimentError, match=re.escape(message)):
        xp.stage_prefixes(_with("bad", overrides))


def test_a_bad_override_fails_the_dry_run_before_any_job(tmp_path):
    (tmp_path / "typo").mkdir()
    (tmp_path / "type").mkdir()

    def typo(cfg):
        cfg["experiments"]["generated_half"]["overrides"] = {"sft_mix.generated_ratoi": 0.5}

    res = _dry_run(_workdir(tmp_path / "typo", "config.yaml", typo), "experiments")
    out = res.stdout + res.stderr
    assert res.returncode != 0 and "experiments.generated_half.overrides.sft_mix.generated_ratoi" in out

    def wrong_type(cfg):
        cfg["experiments"]["generated_half"]["overrides"] = {"diffgen.sample.temperature": "hot"}

    res = _dry_run(_workdir(tmp_path / "type", "config.yaml", wrong_type), "experiments")
    out = res.stdout + res.stderr
    assert res.returncode != 0 and "config experiments.generated_half" in out and "hot" in out

    def one_sample(cfg):  # verification with one teacher sample per problem has nothing to agree on
        cfg["experiments"]["generated_half"]["overrides"] = {"verify.enabled": True}

    (tmp_path / "verify").mkdir()
    res = _dry_run(_workdir(tmp_path / "verify", "config.yaml", one_sample), "experiments")
    assert (
        res.returncode != 0
        and "verify.enabled: the teacher's agreement needs distill.n >= 2" in res.stdout + res.stderr
    )


@pytest.mark.slow
def test_experiments_plan_reuses_the_main_runs_outputs(tmp_path):
    """`snakemake -n experiments`: every job of the SFT-data variant writes under its own folder and
    is SFT, its evaluation or its summary; everything else it reads is the main run's."""
    res = _dry_run(_workdir(tmp_path, "config.yaml"), "experiments")
    assert res.returncode == 0, res.stderr[-3000:]
    jobs = re.findall(r"^rule (\w+):\n(?:    .*\n)*?    output: (.*)$", res.stdout, flags=re.M)
    mine = sorted({rule for rule, out in jobs if "results/experiments/generated_half/" in out})
    assert mine == ["eval_benchmark", "experiment_run", "sft_data", "sft_train"]
    evals = [out for rule, out in jobs if rule == "eval_benchmark" and "generated_half" in out]
    assert all("/eval/scalediff_student/" in out for out in evals) and len(evals) == len(DEFAULT["benchmarks"])
    upstream = {rule for rule, out in jobs if "results/experiments/diffgen_temperature_1/" in out}
    assert "diffgen_sample" in upstream and "diffgen_train" not in upstream and "select_shard" not in upstream
    # each main-run job is planned once, not once per variant
    main = [(rule, out) for rule, out in jobs if "results/experiments/" not in out]
    assert len(main) == len(set(main))


def _dataset(path: Path, rows: list[tuple[str, str]]) -> str:
    table = pa.Table.from_pylist(
        [{"id": i, "origin": origin, "problem": f"p {i}", "solution": f"s {i}", "source": "t"} for i, origin in rows]
    )
    table = table.cast(pa.schema([PROBLEM_SCHEMA.field(c) for c in table.column_names]))
    pq.write_table(table, path)
    return str(path)


def test_sft_mix_draws_the_ratio_and_the_difficult_subset(tmp_path):
    original = _dataset(tmp_path / "original.parquet", [(f"o{i}", "original") for i in range(40)])
    generated = _dataset(tmp_path / "generated.parquet", [(f"g{i}", "generated") for i in range(100)])
    paths = [original, generated]
    assert mix_selection(paths, {"original": "all", "generated_ratio": None}, None) is None

    half = mix_selection(paths, {"generated_ratio": 0.5, "seed": 0}, None)
    assert sum(i.startswith("o") for i in half) == 40 and sum(i.startswith("g") for i in half) == 20
    assert half == mix_selection(paths[::-1], {"generated_ratio": 0.5, "seed": 0}, None)  # order-free
    assert half != mix_selection(paths, {"generated_ratio": 0.5, "seed": 1}, None)  # the seed draws
    # asking for more than exists takes all of them
    assert sum(i.startswith("g") for i in mix_selection(paths, {"generated_ratio": 4.0}, None)) == 100

    labels = tmp_path / "difficulty.parquet"
    pq.write_table(pa.table({"id": [f"o{i}" for i in range(40)], "difficult": [i % 4 == 0 for i in range(40)]}), labels)
    hard = mix_selection(paths, {"original": "difficult", "generated_ratio": 1.0}, str(labels))
    assert sorted(i for i in hard if i.startswith("o")) == sorted(f"o{i}" for i in range(0, 40, 4))
    assert sum(i.startswith("g") for i in hard) == 10  # 1x the 10 kept originals
    with pytest.raises(ValueError, match="difficult"):
        mix_selection(paths, {"original": "difficult"}, None)


def test_bootstrap_gain_is_zero_for_equal_runs_and_the_difference_otherwise():
    ids = [f"q{i}" for i in range(30)]
    rng = np.random.default_rng(0)
    weights = {"a": 1, "b": 2}
    same = {k: (ids, (rng.random((2, 30)) < 0.5).astype(float)) for k in weights}
    g = bootstrap_gain(same, same, weights, n=300)
    assert g["gain"] == 0 and g["ci_low"] <= 0 <= g["ci_high"]
    zeros = {k: (ids, np.zeros((2, 30))) for k in weights}
    ones = {k: (ids, np.ones((2, 30))) for k in weights}
    assert bootstrap_gain(zeros, ones, weights, n=100) == {
        "gain": 100.0,
        "ci_low": 100.0,
        "ci_high": 100.0,
        "resamples": 100,
    }
    half = {k: (ids, np.tile(np.arange(30) % 2, (2, 1)).astype(float)) for k in weights}
    g = bootstrap_gain(zeros, half, weights, n=500)
    assert g["gain"] == pytest.approx(50.0) and 25 < g["ci_low"] < 50 < g["ci_high"] < 75
    with pytest.raises(ValueError, match="different problems"):
        bootstrap_gain(zeros, {k: (ids[::-1], m) for k, (_, m) in ones.items()}, weights, n=10)


def _scores(path: Path, ids: list[str], difficult: list[bool]) -> str:
    from scalediff.select import SCORE_SCHEMA

    table = pa.table(
        {
            "id": ids,
            "difficult": difficult,
            "p_nothink": [0.1] * len(ids),
            "first_token": ["x"] * len(ids),
            "top_tokens": ["{}"] * len(ids),
        },
        schema=SCORE_SCHEMA,
    )
    pq.write_table(table, path)
    return str(path)


def test_random_subset_keeps_the_selectors_count_and_draws_the_rest(tmp_path):
    """The selection ablation's control: as many difficult problems as the selector marked (the
    first quarter here), a seeded draw that does not depend on row order."""
    from scalediff.select import random_subset

    ids = [f"p-{i:03d}" for i in range(200)]
    labels = [i < 50 for i in range(200)]
    a = _scores(tmp_path / "a.parquet", ids, labels)
    b = _scores(tmp_path / "b.parquet", ids[::-1], labels[::-1])
    assert random_subset(a, seed=3) == 50 and random_subset(b, seed=3) == 50
    drawn_a = {r["id"] for r in pq.read_table(a).to_pylist() if r["difficult"]}
    drawn_b = {r["id"] for r in pq.read_table(b).to_pylist() if r["difficult"]}
    assert len(drawn_a) == 50 and drawn_a == drawn_b
    assert len(drawn_a & {f"p-{i:03d}" for i in range(50)}) < 30  # not the selector's labels
    c = _scores(tmp_path / "c.parquet", ids, labels)
    random_subset(c, seed=4)
    assert {r["id"] for r in pq.read_table(c).to_pylist() if r["difficult"]} != drawn_a


def test_run_summary_reports_shares_and_the_selectors_measured_cost(tmp_path):
    """A run's summary: generated problems judged difficult and kept by the filters, and the selector's
    wall seconds per pool problem from the rules' benchmark files (absent files: no figure, no error)."""
    import json

    from scalediff.experiments_report import run_summary

    score = tmp_path / "eval" / "m" / "aime24.json"
    score.parent.mkdir(parents=True)
    score.write_text(json.dumps({"model": "m", "benchmark": "aime24", "mean": 10.0, "per_seed": [10.0],
                                 "n_problems": 30, "n_available": 30}))  # fmt: skip
    funnel, generated, select = tmp_path / "funnel.json", tmp_path / "gen.json", tmp_path / "select.json"
    funnel.write_text(json.dumps({"removed_fraction_generated": 0.25, "by_origin": {}}))
    generated.write_text(json.dumps({"difficult_ratio": 0.875}))
    select.write_text(json.dumps({"scored": 200}))
    shards = tmp_path / "benchmarks" / "select" / "select_shard"
    shards.mkdir(parents=True)
    for i, wall in enumerate((30.0, 50.0)):
        (shards / f"{i + 1}-of-2.tsv").write_text(f"s\th:m:s\tmax_rss\tcpu_time\n{wall}\t0:00:30\t100\t20\n")
    got = run_summary("main", [str(score)], [], str(funnel), str(generated), str(select), str(tmp_path / "benchmarks"))
    assert got["generated_difficult"] == 0.875 and got["funnel"]["removed_fraction_generated"] == 0.25
    assert got["select_s_per_problem"] == pytest.approx(80.0 / 200)
    assert got["models"]["m"]["aime24"]["seeds"] == 1
    none = run_summary("v", [str(score)], [], None, None, str(select), str(tmp_path / "nothing"))
    assert none["select_s_per_problem"] is None
