"""The report: table values from known per-seed results, the paper's AVG formula, the CLI end to end,
and that every report() caption of the workflow resolves and renders in `snakemake --report`."""

from __future__ import annotations

import csv
import json
import re
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from scalediff.records import PROBLEM_SCHEMA, read_json, write_json, write_rows
from scalediff.report import (
    build_table,
    describe_models,
    plain_mean,
    relative_gains,
    render_html,
    render_markdown,
    weighted_avg,
)

REPO = Path(__file__).resolve().parents[1]
PAPER = yaml.safe_load((REPO / "config" / "paper_table.yaml").read_text())
BENCHMARKS = list(PAPER["columns"])

# this run's per-seed pass@1 (%), as evaluate.py writes them
PER_SEED = {
    "scalediff_student": {
        "aime24": [10.0, 20.0],
        "aime25": [0.0, 10.0],
        "hmmt_feb_2025": [5.0, 5.0],
        "brumo_2025": [30.0, 10.0],
        "math_500": [40.0],
    },
    "student_base": {
        "aime24": [0.0, 10.0],
        "aime25": [0.0, 0.0],
        "hmmt_feb_2025": [0.0, 10.0],
        "brumo_2025": [10.0, 10.0],
        "math_500": [30.0],
    },
}


SETTINGS = {
    "eval_models": {"scalediff_student": {"trained": "student"}, "student_base": {"tiny": "student_base"}},
    "reproduces": {"scalediff_student": "ScaleDiff-7B", "student_base": "Qwen2.5-Math-7B-Instruct"},
    "demo": True,
}


def eval_json(model: str, benchmark: str, per_seed: list[float]) -> dict:
    return {
        "model": model,
        "benchmark": benchmark,
        "n_problems": 10,
        "n_available": 500 if benchmark == "math_500" else 10,
        "seeds": list(range(len(per_seed))),
        "per_seed": per_seed,
        "mean": statistics.fmean(per_seed),
        "std": statistics.pstdev(per_seed),
        "std_kind": "population",
    }


def ours() -> list[dict]:
    return [eval_json(m, b, v) for m, bs in PER_SEED.items() for b, v in bs.items()]


def test_weighted_avg_reproduces_every_published_avg():
    assert PAPER["weights"] == {"aime24": 1, "aime25": 2, "hmmt_feb_2025": 1, "brumo_2025": 1, "math_500": 1}
    for row in PAPER["rows"]:
        means = {b: row["scores"][b][0] for b in BENCHMARKS}
        assert weighted_avg(means, PAPER["weights"]) == pytest.approx(row["avg"], abs=0.05), row["model"]
    scalediff = next(r for r in build_table([], PAPER) if r["model"] == "ScaleDiff-7B")
    assert round(scalediff["avg_weighted"], 1) == 65.9
    assert scalediff["mean"] == pytest.approx((73.0 + 58.7 + 43.3 + 66.7 + 95.2) / 5)
    assert weighted_avg({"aime24": 1.0}, PAPER["weights"]) is None  # a missing benchmark: no average
    assert plain_mean({"aime24": 1.0}, BENCHMARKS) is None


def test_table_values_and_gains():
    rows = build_table(ours(), PAPER)
    assert [r["origin"] for r in rows] == ["paper"] * len(PAPER["rows"]) + ["this run"] * 2
    student = next(r for r in rows if r["model"] == "scalediff_student")
    assert student["scores"]["aime24"] == [15.0, 5.0]
    assert student["scores"]["brumo_2025"] == [20.0, 10.0]
    assert student["scores"]["math_500"] == [40.0, 0.0]
    assert student["seeds"] == {"aime24": 2, "aime25": 2, "hmmt_feb_2025": 2, "brumo_2025": 2, "math_500": 1}
    assert student["avg_weighted"] == pytest.approx((15 + 2 * 5 + 5 + 20 + 40) / 6)
    assert student["mean"] == pytest.approx((15 + 5 + 5 + 20 + 40) / 5)
    assert student["avg_published"] is None

    describe_models(rows, SETTINGS, PAPER)
    gains = relative_gains(rows, PAPER, "student_base")
    paper_gain = gains["ScaleDiff-7B (paper)"]
    assert f"{100 * paper_gain['relative']:+.1f}%" == "+11.3%"  # 65.9 / 59.2 - 1, as published
    base_avg = (5 + 0 + 5 + 10 + 30) / 6
    label = "scalediff_student (tiny demo model; reproduces ScaleDiff-7B) (this run)"
    assert gains[label]["relative"] == pytest.approx(student["avg_weighted"] / base_avg - 1)
    assert [k for k in gains if "student_base" in k] == []

    # an untrained model gets no gain, even against another baseline
    untrained = relative_gains(rows, PAPER, "scalediff_student")
    assert list(untrained) == ["ScaleDiff-7B (paper)"]
    with pytest.raises(ValueError, match="report.reproduces.x"):
        describe_models(rows, {"reproduces": {"x": "no such row"}}, PAPER)

    md = render_markdown(rows, PAPER, gains)
    for label in (
        "AVG (paper's weighted)",
        "mean (plain)",
        "AVG (published)",
        "2·AIME25",
        "+11.3%",
        *PAPER["columns"].values(),
    ):
        assert label in md, label
    line = next(x for x in md.splitlines() if x.startswith("| scalediff_student (tiny demo model; reproduces"))
    # MATH500 has one seed: its mean alone, no "± 0.0"; HMMT's two equal seeds keep theirs
    assert "| 15.0 ± 5.0 | 5.0 ± 5.0 | 5.0 ± 0.0 | 20.0 ± 10.0 | 40.0 | 15.0 | 17.0 | – |" in line
    assert "| ScaleDiff-7B | paper | 73.0 ± 5.0 |" in md and "| 65.9 |" in md
    assert "MATH500 10 of 500 problems, 1 seed" in md and "AIME24 all 10 problems, 2 seeds" in md
    assert "no gain for student_base (tiny demo model; reproduces Qwen2.5-Math-7B-Instruct)" in md
    page = render_html(md)
    assert "<table>" in page and "<td>40.0</td>" in page and "<h2>Gains (paper&#x27;s weighted AVG)</h2>" in page


@pytest.fixture
def report_inputs(tmp_path):
    scores = []
    for s in ours():
        path = tmp_path / "eval" / s["model"] / f"{s['benchmark']}.json"
        write_json(s, path)
        scores.append(str(path))
        # details consistent with the scores: seed k gets its pass@1 from the first problems correct
        details = [
            {"id": f"q{i}", "seed": k, "correct": i < round(p / 5)}
            for k, p in enumerate(s["per_seed"])
            for i in range(20)  # every score here is a multiple of 5%
        ]
        write_rows(details, path.with_suffix(".details.parquet"))
    write_json({"difficult": 3, "total": 4}, tmp_path / "select" / "summary.json")
    write_json({"kept": 3}, tmp_path / "distill" / "summary.json")
    write_rows(
        [{"id": f"p{i}", "difficult": i % 3 == 0, "p_nothink": i / 10} for i in range(10)],
        tmp_path / "select" / "difficulty.parquet",
    )
    write_rows(
        [{"id": f"g{i}", "difficult": i != 0, "p_nothink": i / 20} for i in range(8)],
        tmp_path / "select" / "generated" / "difficulty.parquet",
    )
    for stage in ("diffgen", "sft"):
        (tmp_path / stage).mkdir(exist_ok=True)
        with open(tmp_path / stage / "loss.csv", "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["step", "epoch", "loss", "learning_rate", "grad_norm"])
            for step in range(1, 6):
                w.writerow([step * 5, step / 5, 5.0 / step, 2e-3, 0.9])
    problems = ["What is 2+3?", "Find all primes p such that p^2+2 is prime.", "Compute the sum of 1 to 100."]
    write_rows(
        [
            {"id": f"g{i}", "problem": p, "solution": None, "answer": None, "origin": "generated", "source": "s"}
            for i, p in enumerate(problems)
        ],
        tmp_path / "diffgen" / "generated.parquet",
        PROBLEM_SCHEMA,
    )
    write_rows(
        [
            {"id": f"x{i}", "origin": "generated" if i % 2 else "original", "completion_tokens": 50 + 10 * i}
            for i in range(7)
        ],
        tmp_path / "distill" / "solutions.parquet",
    )
    return tmp_path, scores


def report_cmd(d: Path, scores: list[str], out: Path) -> list[str]:
    """The report's command line on the inputs of ``report_inputs``."""
    return [
        sys.executable, "-m", "scalediff.report", "--scores", *scores,
        "--paper-table", str(REPO / "config" / "paper_table.yaml"), "--baseline-model", "student_base",
        "--select-summary", str(d / "select" / "summary.json"),
        "--pool-difficulty", str(d / "select" / "difficulty.parquet"),
        "--generated-difficulty", str(d / "select" / "generated" / "difficulty.parquet"),
        "--stage-summaries", str(d / "distill" / "summary.json"),
        "--losses", str(d / "diffgen" / "loss.csv"), str(d / "sft" / "loss.csv"),
        "--generated", str(d / "diffgen" / "generated.parquet"),
        "--solutions", str(d / "distill" / "solutions.parquet"),
        "--out-dir", str(out), "--settings", json.dumps(SETTINGS),
    ]  # fmt: skip


def test_rehearsal_rows_name_the_hub_model_their_twin_stands_for():
    from scalediff.report import describe_models, model_label

    rows = [{"model": m, "origin": "this run"} for m in ("student_base", "scalediff_student", "released")]
    settings = {
        "eval_models": {
            "student_base": {"twin": "Qwen/Qwen2.5-Math-7B-Instruct"},
            "scalediff_student": {"trained": "student"},
            "released": {"path": "QizhiPei/ScaleDiff-7B"},
        },
        "reproduces": {"student_base": "Qwen2.5-Math-7B-Instruct"},
        "demo": True,
    }
    describe_models(rows, settings, PAPER)
    assert [model_label(r) for r in rows] == [
        "student_base (twin of Qwen/Qwen2.5-Math-7B-Instruct; reproduces Qwen2.5-Math-7B-Instruct)",
        "scalediff_student (tiny demo model)",
        "released",
    ]


def test_cli_end_to_end(report_inputs):
    d, scores = report_inputs
    out = d / "report"
    bench = d / "benchmarks" / "distill" / "distill_shard"  # a Snakemake benchmark file of one shard job
    bench.mkdir(parents=True)
    (bench / "1-of-2.tsv").write_text("s\th:m:s\tmax_rss\tcpu_time\n754.2\t0:12:34\t2048.0\t1500.5\n")
    cmd = [*report_cmd(d, scores, out), "--benchmarks-dir", str(d / "benchmarks")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    for name in ("paper_table.md", "paper_table.csv", "summary.json", "scores.png", "difficulty.png",
                 "loss_curves.png", "lengths.png"):  # fmt: skip
        assert (out / name).stat().st_size > 0, name
    for png in out.glob("*.png"):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    with open(out / "paper_table.csv") as fh:
        table = list(csv.DictReader(fh))
    cols = [f"{b}_{k}" for b in BENCHMARKS for k in ("mean", "std")]
    assert list(table[0]) == ["model", "source", *cols, "avg_weighted_paper", "mean_plain", "avg_published"]
    assert len(table) == len(PAPER["rows"]) + 2
    student = next(r for r in table if r["model"] == "scalediff_student")
    assert student["source"] == "this run"
    assert float(student["aime24_mean"]) == 15.0 and float(student["aime24_std"]) == 5.0
    assert float(student["avg_weighted_paper"]) == pytest.approx(15.0) and student["avg_published"] == ""
    paper_row = next(r for r in table if r["model"] == "ScaleDiff-7B")
    assert float(paper_row["avg_published"]) == 65.9

    summary = read_json(out / "summary.json")
    assert summary["difficult_ratio"] == {"pool": pytest.approx(0.4), "generated": pytest.approx(7 / 8)}
    assert summary["lengths"]["solution_tokens"]["original"]["n"] == 4
    assert summary["lengths"]["problem_words"]["generated"]["max"] == 9
    assert set(summary["stages"]) == {"select/summary", "distill/summary"}
    assert "+11.3%" in (out / "paper_table.md").read_text()
    # this run's trained student against the baseline: the point gain with a bootstrap interval
    (gain,) = [g for k, g in summary["gains"].items() if k.startswith("scalediff_student")]
    assert gain["interval"]["gain"] == pytest.approx(gain["avg"] - gain["baseline_avg"])
    assert gain["interval"]["ci_low"] < gain["interval"]["gain"] < gain["interval"]["ci_high"]
    assert "<table>" in (out / "paper_table.html").read_text()
    # wall time, max RSS and CPU time per stage, from the rules' benchmark files
    row = "| distill | distill_shard | 1 | 13 min | 13 min | 2.00 GiB | 25 min |"
    assert row in (out / "benchmarks.md").read_text()
    assert summary["benchmarks"]["distill"]["distill_shard"]["max_rss_mb"] == 2048.0


def test_lengths_and_difficulty_match_the_whole_tables(report_inputs):
    """The report streams its Parquet inputs a batch at a time; on tables of several row groups (origins
    missing or empty, odd and even counts, unicode whitespace) its length statistics and difficult ratios
    equal pandas' over the whole tables, and its figures equal those drawn from every raw value."""
    import numpy as np
    import pandas as pd
    import pyarrow as pa
    import pyarrow.parquet as pq

    from scalediff.plots import histogram, histograms

    d, scores = report_inputs
    rng = np.random.default_rng(0)
    words = ["x", "y\u00a0z", "a\tb", "c\u2003d", "e\n"]
    problems = [" ".join(rng.choice(words, k)) + " " * (k % 3) for k in rng.integers(1, 300, 2_501)]
    tables = {
        "diffgen/generated.parquet": {"problem": problems},
        "distill/solutions.parquet": {
            "origin": [(None, "", "generated", "original", "generated")[i % 5] for i in range(3_000)],
            "completion_tokens": rng.integers(1, 20_000, 3_000),
        },
        "select/difficulty.parquet": {"difficult": rng.random(2_100) < 0.3, "p_nothink": rng.random(2_100).round(2)},
        "select/generated/difficulty.parquet": {
            "difficult": rng.random(1_500) < 0.9,
            "p_nothink": rng.beta(1, 3, 1_500),
        },
    }
    for name, columns in tables.items():
        pq.write_table(pa.table(columns), d / name, row_group_size=700)
    out = d / "report"
    proc = subprocess.run(report_cmd(d, scores, out), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    summary = read_json(out / "summary.json")

    def stats(s: pd.Series) -> dict:
        return {"n": len(s), "mean": pytest.approx(s.mean(), rel=1e-12), "median": s.median(), "max": s.max()}

    words_per_problem = pd.read_parquet(d / "diffgen/generated.parquet")["problem"].map(lambda p: len(p.split()))
    sol = pd.read_parquet(d / "distill/solutions.parquet")
    sol["origin"] = [o or "all" for o in sol["origin"]]
    tokens = {o: g for o, g in sol.groupby("origin")["completion_tokens"]}
    assert summary["lengths"] == {
        "problem_words": {"generated": stats(words_per_problem)},
        "solution_tokens": {o: stats(g) for o, g in tokens.items()},
    }
    assert summary["lengths"]["solution_tokens"]["all"]["n"] == 1_200  # None and "" both count as "all"
    p_nothink = {}
    for name, path in (("pool", "select/difficulty.parquet"), ("generated", "select/generated/difficulty.parquet")):
        df = pd.read_parquet(d / path)
        assert summary["difficult_ratio"][name] == pytest.approx(df["difficult"].mean(), rel=1e-12)
        p_nothink[name] = df["p_nothink"].tolist()

    ratio = summary["difficult_ratio"]
    title = (
        f"difficult: pool {100 * ratio['pool']:.1f}% vs generated {100 * ratio['generated']:.1f}% (paper: ~34% vs ~88%)"
    )
    histogram([], d / "difficulty.png", xlabel="p_nothink", title=title, series=p_nothink)
    histograms(
        [
            ("generated problems (DiffGen)", "problem length (words)", {"generated": words_per_problem.tolist()}),
            (
                "teacher solutions (distill)",
                "solution length (completion tokens)",
                {o: g.tolist() for o, g in tokens.items()},
            ),
        ],
        d / "lengths.png",
    )
    for png in ("difficulty.png", "lengths.png"):
        assert (out / png).read_bytes() == (d / png).read_bytes(), png


# ---------------------------------------------------------------- snakemake --report

CAPTION = re.compile(r"""caption\s*=\s*["']([^"']+)["']""")


def test_every_caption_resolves_relative_to_its_rule_file():
    """Snakemake resolves a caption relative to the file that defines the rule (rules/), not the Snakefile."""
    found = {}
    for smk in sorted((REPO / "rules").glob("*.smk")):
        for caption in CAPTION.findall(smk.read_text()):
            found[f"{smk.name}: {caption}"] = (smk.parent / caption).resolve()
    assert found, "no report() captions found"
    missing = [k for k, p in found.items() if not p.is_file()]
    assert not missing, f"caption files missing (paths are relative to rules/): {missing}"


def test_snakemake_report_renders_captions(tmp_path):
    """A minimal workflow laid out like ours (Snakefile including rules/*.smk, captions in rules/report/)
    with one report() output per caption file: `snakemake --report` renders all of them."""
    from scalediff.plots import plt, save

    fig, ax = plt.subplots(figsize=(1, 1))
    ax.plot([0, 1])
    save(fig, tmp_path / "fig.png")
    (tmp_path / "rules").mkdir()
    shutil.copytree(REPO / "rules" / "report", tmp_path / "rules" / "report")
    captions = sorted(p.stem for p in (tmp_path / "rules" / "report").glob("*.rst"))
    outputs = [f"out/{name}.{'md' if name == 'paper_table' else 'png'}" for name in captions]
    rules = []
    for i, (name, output) in enumerate(zip(captions, outputs, strict=True)):
        rules.append(
            f"rule r{i}:\n    input: 'fig.png'\n"
            f"    output: report('{output}', caption='report/{name}.rst', category='{i}. cat')\n"
            "    shell: 'cp {input} {output}'\n"
        )
    (tmp_path / "rules" / "figs.smk").write_text("\n".join(rules))
    (tmp_path / "Snakefile").write_text(
        f"include: 'rules/figs.smk'\n\nrule all:\n    default_target: True\n    input: {outputs}\n"
    )
    run = [sys.executable, "-m", "snakemake", "--cores", "1", "--quiet"]
    proc = subprocess.run(run, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    proc = subprocess.run([*run, "--report", "report.html"], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "report.html").stat().st_size > 0
