"""report: the paper's main table rebuilt beside the published rows, plus the stage figures.

Two averages are always shown and labelled: the paper's weighted AVG
((AIME24 + 2·AIME25 + HMMT + BRUMO + MATH500) / 6, which reproduces every published AVG) and the
plain mean of the five benchmarks.
"""

from __future__ import annotations

import argparse
import csv
import logging
import statistics
from pathlib import Path
from typing import Any

import yaml

from scalediff import cli
from scalediff.records import atomic_path, read_json, read_rows, write_json

log = logging.getLogger(__name__)


def weighted_avg(scores: dict[str, float], weights: dict[str, float]) -> float | None:
    if any(scores.get(b) is None for b in weights):
        return None
    return sum(scores[b] * w for b, w in weights.items()) / sum(weights.values())


def plain_mean(scores: dict[str, float], benchmarks: list[str]) -> float | None:
    vals = [scores.get(b) for b in benchmarks]
    return None if any(v is None for v in vals) else statistics.fmean(vals)


def build_table(ours: list[dict[str, Any]], paper: dict[str, Any]) -> list[dict[str, Any]]:
    """Rows: the paper's (published), then this run's models; both averages on every row."""
    benchmarks = list(paper["columns"])
    weights = paper["weights"]
    rows = []
    for r in paper["rows"]:
        means = {b: r["scores"][b][0] for b in benchmarks}
        rows.append({"model": r["model"], "origin": "paper", "scores": r["scores"],
                     "avg_weighted": weighted_avg(means, weights), "avg_published": r.get("avg"),
                     "mean": plain_mean(means, benchmarks)})
    by_model: dict[str, dict[str, list[float]]] = {}
    for s in ours:
        by_model.setdefault(s["model"], {})[s["benchmark"]] = [s["mean"], s["std"]]
    for model, scores in by_model.items():
        means = {b: scores[b][0] for b in benchmarks if b in scores}
        rows.append({"model": model, "origin": "this run", "scores": scores,
                     "avg_weighted": weighted_avg(means, weights), "avg_published": None,
                     "mean": plain_mean(means, benchmarks)})
    return rows


def _fmt(v: float | None, nd: int = 1) -> str:
    return "–" if v is None else f"{v:.{nd}f}"


def render_markdown(rows: list[dict[str, Any]], paper: dict[str, Any], gains: dict[str, Any]) -> str:
    cols = paper["columns"]
    head = ["model", "source", *cols.values(), "AVG (paper's weighted)", "mean (plain)", "AVG (published)"]
    lines = [
        "# ScaleDiff main table: this run beside the paper",
        "",
        "Scores are pass@1 in %, mean ± std over seeds. **AVG (paper's weighted)** = "
        "(AIME24 + 2·AIME25 + HMMT + BRUMO + MATH500) / 6, the formula that reproduces every AVG the "
        "paper publishes; **mean (plain)** = the unweighted mean of the five benchmarks.",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for r in rows:
        cells = [r["model"], r["origin"]]
        for b in cols:
            s = r["scores"].get(b)
            cells.append("–" if s is None else f"{s[0]:.1f} ± {s[1]:.1f}")
        cells += [_fmt(r["avg_weighted"]), _fmt(r["mean"]), _fmt(r["avg_published"])]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "## Relative gains (weighted AVG)", ""]
    for name, g in gains.items():
        lines.append(f"- {name}: {_fmt(g['avg'])} vs {_fmt(g['baseline_avg'])} ({g['baseline']}) → "
                     f"{'–' if g['relative'] is None else f'{100 * g['relative']:+.1f}%'}")
    return "\n".join(lines) + "\n"


def relative_gains(rows: list[dict[str, Any]], paper: dict[str, Any], our_baseline: str | None) -> dict[str, Any]:
    def gain(row, base):
        rel = None
        if row["avg_weighted"] is not None and base["avg_weighted"]:
            rel = row["avg_weighted"] / base["avg_weighted"] - 1
        return {"avg": row["avg_weighted"], "baseline": base["model"], "baseline_avg": base["avg_weighted"],
                "relative": rel}

    by_name = {(r["origin"], r["model"]): r for r in rows}
    gains = {}
    paper_base = by_name.get(("paper", paper["baseline"]))
    if paper_base and ("paper", "ScaleDiff-7B") in by_name:
        gains["ScaleDiff-7B (paper)"] = gain(by_name[("paper", "ScaleDiff-7B")], paper_base)
    ours = [r for r in rows if r["origin"] == "this run"]
    base = by_name.get(("this run", our_baseline)) if our_baseline else None
    for r in ours:
        if base and r is not base:
            gains[f"{r['model']} (this run)"] = gain(r, base)
    return gains


def write_csv(rows: list[dict[str, Any]], paper: dict[str, Any], path: str) -> None:
    cols = list(paper["columns"])
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["model", "source", *[f"{c}_{k}" for c in cols for k in ("mean", "std")],
                    "avg_weighted_paper", "mean_plain", "avg_published"])
        for r in rows:
            vals = []
            for c in cols:
                s = r["scores"].get(c)
                vals += [None, None] if s is None else [s[0], s[1]]
            w.writerow([r["model"], r["origin"], *vals, r["avg_weighted"], r["mean"], r["avg_published"]])


def plot_scores(rows: list[dict[str, Any]], paper: dict[str, Any], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = list(paper["columns"])
    fig, ax = plt.subplots(figsize=(9, 4))
    width = 0.8 / max(len(rows), 1)
    for i, r in enumerate(rows):
        xs = [j + i * width for j in range(len(cols))]
        means = [r["scores"].get(c, [0, 0])[0] for c in cols]
        stds = [r["scores"].get(c, [0, 0])[1] for c in cols]
        ax.bar(xs, means, width, yerr=stds, capsize=2, label=f"{r['model']} ({r['origin']})",
               hatch="//" if r["origin"] == "this run" else None)
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(cols))], [paper["columns"][c] for c in cols])
    ax.set_ylabel("pass@1 (%)")
    ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="Build the paper table and report figures.")
    ap.add_argument("--scores", nargs="+", required=True, help="per (model, benchmark) eval JSON files")
    ap.add_argument("--paper-table", required=True)
    ap.add_argument("--baseline-model", default=None, help="this run's model to compute relative gains against")
    ap.add_argument("--select-summary", required=True)
    ap.add_argument("--pool-difficulty", required=True)
    ap.add_argument("--generated-difficulty", required=True)
    ap.add_argument("--stage-summaries", nargs="*", default=[])
    ap.add_argument("--losses", nargs="*", default=[])
    ap.add_argument("--out-dir", required=True)
    args = ap.parse_args(argv)
    cli.setup_logging()
    from scalediff.plots import histogram, loss_curves

    out = Path(args.out_dir)
    paper = yaml.safe_load(Path(args.paper_table).read_text())
    ours = [read_json(p) for p in args.scores]
    rows = build_table(ours, paper)
    gains = relative_gains(rows, paper, args.baseline_model)
    with atomic_path(out / "paper_table.md") as tmp:
        tmp.write_text(render_markdown(rows, paper, gains))
    write_csv(rows, paper, str(out / "paper_table.csv"))
    plot_scores(rows, paper, str(out / "scores.png"))

    pool = read_rows(args.pool_difficulty)
    gen = read_rows(args.generated_difficulty)
    ratio = {name: (sum(r["difficult"] for r in rs) / len(rs) if rs else None) for name, rs in
             (("pool", pool), ("generated", gen))}
    histogram([], str(out / "difficulty.png"), xlabel="p_nothink",
              title=f"difficult: pool {_fmt(100 * ratio['pool'] if ratio['pool'] is not None else None)}% "
                    f"vs generated {_fmt(100 * ratio['generated'] if ratio['generated'] is not None else None)}% "
                    "(paper: ~34% vs ~88%)",
              series={"pool": [r["p_nothink"] for r in pool], "generated": [r["p_nothink"] for r in gen]})
    curves = {}
    for path in args.losses:
        with open(path) as fh:
            rs = list(csv.DictReader(fh))
        curves[Path(path).parent.name] = ([int(r["step"]) for r in rs], [float(r["loss"]) for r in rs])
    loss_curves(curves, str(out / "loss_curves.png"), "training loss")
    summary = {
        "difficult_ratio": ratio,
        "reference_difficult_ratio": {"pool": 0.34, "generated": 0.88},
        "gains": gains,
        "stages": {Path(p).parent.name + "/" + Path(p).stem: read_json(p) for p in args.stage_summaries},
        "table": rows,
    }
    write_json(summary, out / "summary.json")
    log.info("report written to %s", out)


if __name__ == "__main__":
    main()
