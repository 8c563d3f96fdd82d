"""Experiments report: one table per experiment group, each variant beside the main run.

    python -m scalediff.experiments_report run --name NAME --scores ... --sft ... --output JSON
    python -m scalediff.experiments_report --runs MAIN.json VARIANT.json ... --paper-table YAML \
        --table MD --plot PNG --summary JSON --settings JSON

``run`` writes one run's summary (``main`` or a variant: the scores it reads, wherever they live).
The figure compared is the ScaleDiff student's weighted AVG (the paper's); a variant's gain over the
main run comes with a paired bootstrap interval over problems and seeds (the same problems, resampled
together; seeds resampled per run). Untrained models get no gain: nothing was trained to differ.
"""

from __future__ import annotations

import argparse
import json
import logging
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import yaml

from scalediff import cli
from scalediff.records import atomic_path, read_json, write_json
from scalediff.report import weighted_avg

log = logging.getLogger(__name__)
STUDENT = "student"  # eval.models entry trained on original + generated data (`trained: student`)


def correctness(details: str) -> tuple[list[str], np.ndarray]:
    """Problem ids and a seeds x problems matrix of 0/1 from an evaluation's details file."""
    table = pq.read_table(details, columns=["id", "seed", "correct"]).to_pylist()
    ids = sorted({r["id"] for r in table})
    seeds = sorted({r["seed"] for r in table})
    col, row = {i: k for k, i in enumerate(ids)}, {s: k for k, s in enumerate(seeds)}
    m = np.zeros((len(seeds), len(ids)))
    for r in table:
        m[row[r["seed"]], col[r["id"]]] = float(r["correct"])
    return ids, m


def bootstrap_gain(
    a: dict[str, tuple[list[str], np.ndarray]],
    b: dict[str, tuple[list[str], np.ndarray]],
    weights: dict[str, float],
    n: int = 2000,
    seed: int = 0,
) -> dict[str, float]:
    """Weighted-AVG gain of ``b`` over ``a`` (points) with a 95% paired bootstrap interval."""
    rng = np.random.default_rng(seed)
    point = weighted_avg({k: 100 * b[k][1].mean() for k in weights}, weights) - weighted_avg(
        {k: 100 * a[k][1].mean() for k in weights}, weights
    )
    draws = np.zeros(n)
    for k, w in weights.items():
        ids_a, ma = a[k]
        ids_b, mb = b[k]
        if ids_a != ids_b:
            raise ValueError(f"{k}: the two runs were scored on different problems")
        cols = rng.integers(0, ma.shape[1], size=(n, ma.shape[1]))
        ra = rng.integers(0, ma.shape[0], size=(n, ma.shape[0]))
        rb = rng.integers(0, mb.shape[0], size=(n, mb.shape[0]))
        for i in range(n):
            da = ma[np.ix_(ra[i], cols[i])].mean()
            db = mb[np.ix_(rb[i], cols[i])].mean()
            draws[i] += 100 * (db - da) * w
    draws /= sum(weights.values())
    lo, hi = np.percentile(draws, [2.5, 97.5])
    return {"gain": float(point), "ci_low": float(lo), "ci_high": float(hi), "resamples": n}


def selection_cost(select_summary: str | None, benchmarks_dir: str | None) -> float | None:
    """Measured selector wall seconds per scored pool problem (the rules' benchmark files of
    ``select_shard``), or None before any were written."""
    if not (select_summary and benchmarks_dir):
        return None
    from scalediff.plan import read_benchmarks

    shard = read_benchmarks(benchmarks_dir).get("select", {}).get("select_shard")
    scored = read_json(select_summary).get("scored")
    return shard["wall_s"] / scored if shard and scored else None


def run_summary(
    name: str,
    scores: list[str],
    sft: list[str],
    funnel: str | None,
    generated: str | None,
    select_summary: str | None = None,
    select_benchmarks: str | None = None,
) -> dict:
    """What the table shows of one run: per model and benchmark mean and seed count, SFT data size,
    the generated problems' difficult and kept shares, the selector's measured cost per problem."""
    models: dict[str, dict[str, Any]] = defaultdict(dict)
    for path in scores:
        s = read_json(path)
        models[s["model"]][s["benchmark"]] = {
            "mean": s["mean"],
            "seeds": len(s["per_seed"]),
            "n_problems": s["n_problems"],
            "n_available": s.get("n_available"),
            "scores": path,
            "details": str(Path(path).with_suffix("")) + ".details.parquet",
        }
    out: dict[str, Any] = {"name": name, "models": dict(models)}
    for path in sft:
        s = read_json(path)
        out.setdefault("sft", {})[Path(path).parent.name] = {"rows": s.get("rows"), "by_origin": s.get("by_origin")}
    if funnel:
        out["funnel"] = {k: v for k, v in read_json(funnel).items() if not isinstance(v, list | dict)}
    if generated:
        out["generated_difficult"] = read_json(generated).get("difficult_ratio")
    out["select_s_per_problem"] = selection_cost(select_summary, select_benchmarks)
    return out


def _kept(run: dict) -> float | None:
    removed = run.get("funnel", {}).get("removed_fraction_generated")
    return None if removed is None else 1 - removed


def _pct(v: float | None) -> str:
    return "–" if v is None else f"{100 * v:.0f}%"


def _fmt(v: float | None, nd: int = 1) -> str:
    return "–" if v is None else f"{v:.{nd}f}"


def build(runs: dict[str, dict], experiments: dict[str, dict], paper: dict, eval_models: dict) -> dict:
    """Rows per group: the main run then each variant; the student's AVG, gain with its interval."""
    weights = paper["weights"]
    student = next((m for m, ref in eval_models.items() if ref.get("trained") == STUDENT), None)
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)

    def avg(run: dict, model: str) -> float | None:
        scores = run["models"].get(model, {})
        if any(b not in scores for b in weights):
            return None
        return weighted_avg({b: scores[b]["mean"] for b in weights}, weights)

    def matrices(run: dict, model: str) -> dict[str, tuple[list[str], np.ndarray]]:
        return {b: correctness(run["models"][model][b]["details"]) for b in weights}

    main = runs["main"]
    default_model = student
    for name, spec in experiments.items():
        run = runs[name]
        student = spec.get("model") or default_model  # the model this experiment is about
        row = {
            "model": student,
            "experiment": name,
            "overrides": spec["overrides"],
            "description": spec.get("description", ""),
            "paper_avg": spec.get("paper_avg"),
            "student_avg": avg(run, student) if student else None,
            "main_avg": avg(main, student) if student else None,
            "generated_rows": (run.get("sft", {}).get("scalediff", {}).get("by_origin") or {}).get("generated"),
            "seeds": {b: run["models"].get(student, {}).get(b, {}).get("seeds") for b in weights},
            "problems": {b: run["models"].get(student, {}).get(b, {}).get("n_problems") for b in weights},
            "rerun": spec.get("rerun", []),
            "generated_difficult": run.get("generated_difficult"),
            "generated_kept": _kept(run),
            "select_s_per_problem": run.get("select_s_per_problem"),
        }
        if student and row["student_avg"] is not None and row["main_avg"] is not None:
            row["gain"] = bootstrap_gain(matrices(main, student), matrices(run, student), weights)
        groups[spec["group"]].append(row)
    student = default_model
    main_row = {
        "avg": avg(main, student) if student else None,
        "generated_rows": (main.get("sft", {}).get("scalediff", {}).get("by_origin") or {}).get("generated"),
        "generated_difficult": main.get("generated_difficult"),
        "generated_kept": _kept(main),
        "select_s_per_problem": main.get("select_s_per_problem"),
    }
    main_row["benchmarks"] = benchmark_subsets(main, student)
    return {"student_model": student, "main": main_row, "groups": dict(groups)}


def benchmark_subsets(run: dict, model: str | None) -> str:
    """What one run actually scored per benchmark, e.g. "math_500 (100 of 500 problems, 1 seed)"."""
    parts = []
    for b, s in sorted(run["models"].get(model, {}).items()):
        n, total = s["n_problems"], s.get("n_available")
        of = f"{n} of {total}" if total and total != n else f"all {n}"
        parts.append(f"{b} ({of} problems, {s['seeds']} seed{'s' if s['seeds'] != 1 else ''})")
    return ", ".join(parts)


def render(result: dict, benchmarks: str, demo: bool) -> str:
    subset = benchmarks
    lines = [
        "# Experiments",
        "",
        f"Model: the ScaleDiff student (`{result['student_model']}`)"
        + (" — a tiny demo model: the figures show the machinery, not the paper's effects." if demo else "."),
        f"Benchmarks: {subset}. AVG: the paper's weighted average (AIME25 counted twice).",
        "Gain: the variant's AVG minus the main run's, with a 95% paired bootstrap interval over problems and seeds.",
        "",
        "Generated problems: the share the selector judged difficult (the paper: ~88%) and the share the"
        " filters kept; selector cost: measured wall seconds per pool problem.",
        "",
        f"Main run: AVG {_fmt(result['main']['avg'])}, generated rows in SFT: {result['main']['generated_rows']},"
        f" generated difficult {_pct(result['main']['generated_difficult'])}, kept"
        f" {_pct(result['main']['generated_kept'])}, selector {_fmt(result['main']['select_s_per_problem'], 3)}"
        " s/problem.",
    ]
    for group, rows in result["groups"].items():
        lines += [
            "",
            f"## {group}",
            "",
            "| experiment | model | overrides | generated rows | generated difficult | generated kept"
            " | selector s/problem | AVG | gain (95% CI) | paper AVG | recomputed |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in rows:
            g = r.get("gain")
            gain = f"{g['gain']:+.1f} ({g['ci_low']:+.1f}, {g['ci_high']:+.1f})" if g else "–"
            over = "; ".join(f"`{k}: {json.dumps(v)}`" for k, v in r["overrides"].items())
            rows_used = "–" if r["generated_rows"] is None else r["generated_rows"]
            lines.append(
                f"| {r['experiment']} | {r['model']} | {over} | {rows_used} | {_pct(r['generated_difficult'])} "
                f"| {_pct(r['generated_kept'])} | {_fmt(r['select_s_per_problem'], 3)} "
                f"| {_fmt(r['student_avg'])} | {gain} | {_fmt(r['paper_avg'])} | {', '.join(r['rerun']) or '–'} |"
            )
    return "\n".join(lines) + "\n"


def plot_size(result: dict, path: str) -> None:
    """AVG against the generated rows the student trained on (the augmentation-size question)."""
    from scalediff.plots import plt, save  # headless backend set there

    points = [(result["main"]["generated_rows"], result["main"]["avg"], "main")]
    for rows in result["groups"].values():
        points += [(r["generated_rows"], r["student_avg"], r["experiment"]) for r in rows]
    points = [p for p in points if p[0] is not None and p[1] is not None]
    fig, ax = plt.subplots(figsize=(6, 4))
    for x, y, label in sorted(points):
        ax.scatter([x], [y])
        ax.annotate(label, (x, y), fontsize=7)
    ax.set_xlabel("generated rows in SFT data")
    ax.set_ylabel("student AVG (weighted)")
    ax.set_title("AVG against generated data size")
    save(fig, path)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="Tables and plot of every experiment beside the main run.")
    ap.add_argument("--runs", nargs="+", required=True, help="run summaries (JSON): main first")
    ap.add_argument("--paper-table", required=True)
    ap.add_argument("--table", required=True)
    ap.add_argument("--plot", required=True)
    ap.add_argument("--summary", required=True)
    cli.add_settings_argument(ap)
    args = ap.parse_args(argv)
    cli.setup_logging()
    settings = cli.load_settings(args)
    runs = {read_json(p)["name"]: read_json(p) for p in args.runs}
    paper = yaml.safe_load(Path(args.paper_table).read_text())
    result = build(runs, settings["experiments"], paper, settings["eval_models"])
    with atomic_path(args.table) as tmp:
        tmp.write_text(render(result, result["main"]["benchmarks"], settings.get("demo", False)))
    plot_size(result, args.plot)
    write_json(result, args.summary)
    log.info("experiments: %d groups, %d variants", len(result["groups"]), len(settings["experiments"]))


def summary_main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="One run's summary for the experiments table.")
    ap.add_argument("--name", required=True)
    ap.add_argument("--scores", nargs="+", required=True)
    ap.add_argument("--sft", nargs="*", default=[])
    ap.add_argument("--funnel")
    ap.add_argument("--generated-select")
    ap.add_argument("--select-summary", help="the pool selection's summary.json (problems scored)")
    ap.add_argument("--select-benchmarks", help="the benchmarks folder holding select/select_shard/*.tsv")
    ap.add_argument("--output", required=True)
    args = ap.parse_args(argv)
    cli.setup_logging()
    summary = run_summary(
        args.name,
        args.scores,
        args.sft,
        args.funnel,
        args.generated_select,
        args.select_summary,
        args.select_benchmarks,
    )
    write_json(summary, args.output)


if __name__ == "__main__":
    import sys

    if len(sys.argv) > 1 and sys.argv[1] == "run":
        summary_main(sys.argv[2:])
    else:
        main()
