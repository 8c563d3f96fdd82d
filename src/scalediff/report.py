"""report: the paper's main table rebuilt beside the published rows, plus the stage figures.

Two averages are always shown and labelled: the paper's weighted AVG
((AIME24 + 2·AIME25 + HMMT + BRUMO + MATH500) / 6, which reproduces every published AVG) and the
plain mean of the five benchmarks.
"""

from __future__ import annotations

import argparse
import csv
import logging
import math
import os
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from scalediff import cli
from scalediff.plots import Binned, Tally
from scalediff.records import atomic_path, iter_batches, read_json, write_json

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
        rows.append(
            {
                "model": r["model"],
                "origin": "paper",
                "scores": r["scores"],
                "avg_weighted": weighted_avg(means, weights),
                "avg_published": r.get("avg"),
                "mean": plain_mean(means, benchmarks),
            }
        )
    by_model: dict[str, dict[str, list[float]]] = {}
    seeds: dict[str, dict[str, int]] = {}
    subsets: dict[str, dict[str, list[int | None]]] = {}
    for s in ours:
        by_model.setdefault(s["model"], {})[s["benchmark"]] = [s["mean"], s["std"]]
        seeds.setdefault(s["model"], {})[s["benchmark"]] = len(s["per_seed"])
        subsets.setdefault(s["model"], {})[s["benchmark"]] = [s.get("n_problems"), s.get("n_available")]
    for model, scores in by_model.items():
        means = {b: scores[b][0] for b in benchmarks if b in scores}
        rows.append(
            {
                "model": model,
                "origin": "this run",
                "scores": scores,
                "seeds": seeds[model],
                "subsets": subsets[model],
                "avg_weighted": weighted_avg(means, weights),
                "avg_published": None,
                "mean": plain_mean(means, benchmarks),
            }
        )
    return rows


def _fmt(v: float | None, nd: int = 1) -> str:
    return "–" if v is None else f"{v:.{nd}f}"


def score_cell(score: list[float] | None, seeds: int | None) -> str:
    """``mean ± std`` over seeds; a single seed has no spread to show, so no ± (not ± 0.0)."""
    if score is None:
        return "–"
    return f"{score[0]:.1f}" if seeds == 1 else f"{score[0]:.1f} ± {score[1]:.1f}"


def model_label(row: dict[str, Any]) -> str:
    """A row's model with what it stands for: the paper row it reproduces and whether it is a tiny demo model
    (or the twin of a Hub model, in the rehearsal)."""
    if row["origin"] != "this run":
        return row["model"]
    tiny = f"twin of {row['twin']}" if row.get("twin") else "tiny demo model" if row.get("demo") else ""
    notes = [n for n in (tiny, row.get("reproduces") or "") if n]
    if row.get("reproduces"):
        notes[-1] = f"reproduces {row['reproduces']}"
    return f"{row['model']} ({'; '.join(notes)})" if notes else row["model"]


def benchmarks_used(rows: list[dict[str, Any]], cols: dict[str, str]) -> str:
    """The subset of each benchmark this run scored and its seed count, e.g. "MATH500 100 of 500, 1 seed"."""
    parts = []
    ours = [r for r in rows if r["origin"] == "this run"]
    for b, label in cols.items():
        used = {tuple(r["subsets"][b]) for r in ours if b in r.get("subsets", {})}
        seeds = {r["seeds"][b] for r in ours if b in r.get("seeds", {})}
        if not used:
            continue
        n, total = sorted(used, key=str)[0]
        of = f"{n} of {total}" if total and total != n else f"all {n}"
        k = "/".join(str(x) for x in sorted(seeds))
        parts.append(f"{label} {of} problems, {k} seed{'s' if seeds != {1} else ''}")
    return "; ".join(parts)


def render_markdown(rows: list[dict[str, Any]], paper: dict[str, Any], gains: dict[str, Any]) -> str:
    cols = paper["columns"]
    head = ["model", "source", *cols.values(), "AVG (paper's weighted)", "mean (plain)", "AVG (published)"]
    lines = [
        "# ScaleDiff main table: this run beside the paper",
        "",
        "Scores are pass@1 in %, mean ± std over seeds (one seed: no ±). **AVG (paper's weighted)** = "
        "(AIME24 + 2·AIME25 + HMMT + BRUMO + MATH500) / 6, the formula that reproduces every AVG the "
        "paper publishes; **mean (plain)** = the unweighted mean of the five benchmarks.",
        "",
        f"This run's benchmarks: {benchmarks_used(rows, cols)}. The paper's rows use every problem.",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for r in rows:
        cells = [model_label(r), r["origin"]]
        for b in cols:
            cells.append(score_cell(r["scores"].get(b), r.get("seeds", {}).get(b)))
        cells += [_fmt(r["avg_weighted"]), _fmt(r["mean"]), _fmt(r["avg_published"])]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "This run's std is the population std over seeds."]
    lines += ["", "## Gains (paper's weighted AVG)", ""]
    for name, g in gains.items():
        rel = "–" if g["relative"] is None else f"{100 * g['relative']:+.1f}%"
        if g["basis"] == "avg_published":
            lines.append(
                f"- {name}: {_fmt(g['avg'])} vs {_fmt(g['baseline_avg'])} ({g['baseline']}) → {rel} (published AVG)"
            )
            continue
        ci = g.get("interval")
        points = (
            f"{ci['gain']:+.1f} points (95% CI {ci['ci_low']:+.1f} to {ci['ci_high']:+.1f}, paired bootstrap over"
            f" problems and seeds)"
            if ci
            else "–"
        )
        lines.append(f"- {name}: {_fmt(g['avg'])} vs {_fmt(g['baseline_avg'])} ({g['baseline']}) → {points}; {rel}")
    untrained = [model_label(r) for r in rows if r["origin"] == "this run" and not r.get("trained")]
    if untrained:
        lines.append(f"- no gain for {', '.join(untrained)}: not trained by this run")
    return "\n".join(lines) + "\n"


def render_html(markdown: str) -> str:
    """The table as HTML for ``snakemake --report`` (which shows HTML inline and offers markdown only as a
    download): headings, paragraphs, list items and pipe tables of ``render_markdown``'s output."""
    import html

    out = [
        "<html><head><meta charset='utf-8'><style>table{border-collapse:collapse;font:13px sans-serif}"
        "td,th{border:1px solid #ccc;padding:2px 6px;text-align:right}td:first-child{text-align:left}"
        "</style></head><body>"
    ]
    table: list[list[str]] = []

    def flush() -> None:
        if table:
            head, *body = table
            out.append("<table><tr>" + "".join(f"<th>{c}</th>" for c in head) + "</tr>")
            out.extend("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in body)
            out.append("</table>")
            table.clear()

    for line in markdown.splitlines():
        text = html.escape(line.strip()).replace("**", "")
        if line.startswith("|"):
            cells = [c.strip() for c in text.strip("|").split("|")]
            if not all(set(c) <= {"-"} for c in cells):
                table.append(cells)
            continue
        flush()
        if line.startswith("#"):
            level = len(line) - len(line.lstrip("#"))
            out.append(f"<h{level}>{text.lstrip('#').strip()}</h{level}>")
        elif line.startswith("- "):
            out.append(f"<li>{text[2:]}</li>")
        elif text:
            out.append(f"<p>{text}</p>")
    flush()
    out.append("</body></html>")
    return "\n".join(out) + "\n"


def relative_gains(
    rows: list[dict[str, Any]],
    paper: dict[str, Any],
    our_baseline: str | None,
    details: dict[str, dict[str, str]] | None = None,
) -> dict[str, Any]:
    """Gain of the weighted AVG over a baseline row.

    Paper rows use the published (rounded) AVG, as the paper does: +11.3% = 65.9 / 59.2 - 1
    (the unrounded weighted AVGs give +11.4%). This run's rows use the computed weighted AVG, and only
    trained models get one (an untrained base model was not made to differ); with ``details`` (model ->
    benchmark -> details Parquet) each comes with a paired bootstrap interval over problems and seeds.
    """
    from scalediff.experiments_report import bootstrap_gain, correctness

    def gain(row, base, key):
        rel = None
        if row[key] is not None and base[key]:
            rel = row[key] / base[key] - 1
        return {"avg": row[key], "baseline": base["model"], "baseline_avg": base[key], "relative": rel, "basis": key}

    by_name = {(r["origin"], r["model"]): r for r in rows}
    gains = {}
    paper_base = by_name.get(("paper", paper["baseline"]))
    if paper_base and ("paper", "ScaleDiff-7B") in by_name:
        gains["ScaleDiff-7B (paper)"] = gain(by_name[("paper", "ScaleDiff-7B")], paper_base, "avg_published")
    ours = [r for r in rows if r["origin"] == "this run"]
    base = by_name.get(("this run", our_baseline)) if our_baseline else None
    weights = paper["weights"]
    for r in ours:
        if base and r is not base and r.get("trained"):
            g = gain(r, base, "avg_weighted")
            have = details and all(b in details.get(m, {}) for m in (r["model"], base["model"]) for b in weights)
            if have and g["avg"] is not None and g["baseline_avg"] is not None:
                a = {b: correctness(details[base["model"]][b]) for b in weights}
                g["interval"] = bootstrap_gain(a, {b: correctness(details[r["model"]][b]) for b in weights}, weights)
            gains[f"{model_label(r)} (this run)"] = g
    return gains


def describe_models(rows: list[dict[str, Any]], settings: dict[str, Any], paper: dict[str, Any]) -> None:
    """This run's rows get what they stand for: trained by this run or not, the paper row they reproduce
    (``report.reproduces``; checked against the paper table) and whether the run uses tiny demo models."""
    refs = settings.get("eval_models", {})
    reproduces = settings.get("reproduces", {})
    published = {r["model"] for r in paper["rows"]}
    for name, row in reproduces.items():
        if row not in published:
            raise ValueError(
                f"config report.reproduces.{name}: {row!r} is not a row of the paper table {sorted(published)}"
            )
    for r in rows:
        if r["origin"] == "this run":
            ref = refs.get(r["model"], {})
            r["trained"] = str(ref.get("trained", "")).startswith("student")
            r["reproduces"] = reproduces.get(r["model"])
            r["demo"] = bool(settings.get("demo")) and "path" not in ref
            r["twin"] = ref.get("twin")  # the rehearsal: a tiny model with this Hub model's published settings


def write_csv(rows: list[dict[str, Any]], paper: dict[str, Any], path: str) -> None:
    cols = list(paper["columns"])
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(
            [
                "model",
                "source",
                *[f"{c}_{k}" for c in cols for k in ("mean", "std")],
                "avg_weighted_paper",
                "mean_plain",
                "avg_published",
            ]
        )
        for r in rows:
            vals = []
            for c in cols:
                s = r["scores"].get(c)
                vals += [None, None] if s is None else [s[0], s[1]]
            w.writerow([r["model"], r["origin"], *vals, r["avg_weighted"], r["mean"], r["avg_published"]])


def plot_scores(rows: list[dict[str, Any]], paper: dict[str, Any], path: str) -> None:
    """Grouped bars per benchmark (mean, error bar = std over seeds), plus the weighted AVG group."""
    from scalediff.plots import plt, save  # headless backend set there

    cols = list(paper["columns"])
    labels = [paper["columns"][c] for c in cols] + ["AVG (weighted)"]
    fig, ax = plt.subplots(figsize=(11, 4.6))
    width = 0.85 / max(len(rows), 1)
    colors = plt.get_cmap("tab20").colors
    for i, r in enumerate(rows):
        xs = [j + (i - (len(rows) - 1) / 2) * width for j in range(len(labels))]
        scores = [r["scores"].get(c) or [0.0, 0.0] for c in cols]
        means = [s[0] for s in scores] + [r["avg_weighted"] or 0.0]
        stds = [s[1] for s in scores] + [0.0]
        ours = r["origin"] == "this run"
        ax.bar(
            xs,
            means,
            width,
            yerr=stds,
            capsize=1.5,
            error_kw={"elinewidth": 0.8},
            color=colors[i % len(colors)],
            edgecolor="black" if ours else "none",
            hatch="//" if ours else None,
            label=f"{r['model']} ({r['origin']})",
        )
    ax.set_xticks(range(len(labels)), labels)
    ax.axvline(len(cols) - 0.5, color="grey", linewidth=0.8, linestyle=":")
    ax.set_ylabel("pass@1 (%), mean ± std over seeds")
    ax.set_ylim(0, 100)
    ax.grid(axis="y", alpha=0.3)
    ax.set_title("Main table: the paper's published rows (plain) and this run's models (hatched)", fontsize=10)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    save(fig, path)


class _LengthCounts:
    """How many rows have each length (``np.bincount``): memory follows the longest length, not the rows."""

    def __init__(self) -> None:
        self.counts = np.zeros(0, dtype=np.int64)

    def add(self, lengths: Sequence[int] | np.ndarray) -> None:
        grown = np.bincount(np.asarray(lengths, dtype=np.int64), minlength=len(self.counts))
        grown[: len(self.counts)] += self.counts
        self.counts = grown

    def tally(self) -> Tally:
        values = np.flatnonzero(self.counts)
        return Tally(values, self.counts[values])


def token_lengths(generated: str | os.PathLike, solutions: str | os.PathLike) -> dict[str, dict[str, Tally]]:
    """Lengths of generated problems (words) and teacher solutions (completion tokens, by origin).

    Both Parquet files are streamed a batch at a time, only the columns used: at paper scale they hold 2M
    problems and ~1.9M solutions, and a list entry per row grew the step by ~0.7 KB a row."""
    words = _LengthCounts()
    for batch in iter_batches(generated, columns=["problem"]):
        words.add([len(p.split()) for p in batch.column("problem").to_pylist()])
    by_origin: dict[str, _LengthCounts] = {}
    for batch in iter_batches(solutions, columns=["origin", "completion_tokens"]):
        tokens = batch.column("completion_tokens").to_numpy(zero_copy_only=False).astype(np.int64)
        origins = np.array([o or "all" for o in batch.column("origin").to_pylist()], dtype=object)
        for origin in set(origins):
            by_origin.setdefault(origin, _LengthCounts()).add(tokens[origins == origin])
    return {
        "problem_words": {"generated": words.tally()},
        "solution_tokens": {k: v.tally() for k, v in sorted(by_origin.items())},
    }


def length_stats(lengths: Tally) -> dict[str, float | int | None]:
    """n, mean, median and max: those of ``statistics`` over the lengths repeated."""
    if not lengths.n:
        return {"n": 0, "mean": None, "median": None, "max": None}
    return {"n": lengths.n, "mean": lengths.mean(), "median": lengths.median(), "max": lengths.values[-1].item()}


def difficulty(path: str | os.PathLike, bins: int = 40) -> tuple[float | None, Binned]:
    """The share of rows flagged ``difficult`` and the ``p_nothink`` histogram, in two streamed passes: the
    values' range, then the counts in ``bins`` equal bins over it -- the edges ``ax.hist`` draws the raw
    values with, so the figure is unchanged while memory stays flat in the rows."""
    rows = difficult = 0
    lo, hi = math.inf, -math.inf
    for batch in iter_batches(path, columns=["difficult", "p_nothink"]):
        rows += batch.num_rows
        difficult += int(np.count_nonzero(batch.column("difficult").to_numpy(zero_copy_only=False)))
        p = batch.column("p_nothink").to_numpy(zero_copy_only=False).astype(np.float64)
        if len(p):
            lo, hi = min(lo, p.min()), max(hi, p.max())
    if not rows:
        return None, Binned(np.zeros(bins, dtype=np.int64), np.linspace(0.0, 1.0, bins + 1))
    edges = np.histogram_bin_edges(np.array([lo, hi]), bins=bins)
    counts = np.zeros(bins, dtype=np.int64)
    for batch in iter_batches(path, columns=["p_nothink"]):
        counts += np.histogram(batch.column("p_nothink").to_numpy(zero_copy_only=False), bins=edges)[0]
    return difficult / rows, Binned(counts, edges)


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
    ap.add_argument("--generated", required=True, help="diffgen/generated.parquet (column problem)")
    ap.add_argument("--solutions", required=True, help="distill/solutions.parquet (column completion_tokens)")
    ap.add_argument("--benchmarks-dir", default=None, help="Snakemake benchmark files: a per-stage table")
    ap.add_argument("--out-dir", required=True)
    cli.add_settings_argument(ap)  # eval_models (refs), reproduces (model -> paper row), demo
    args = ap.parse_args(argv)
    cli.setup_logging()
    settings = cli.load_settings(args)
    from scalediff.plots import histogram, histograms, loss_curves

    out = Path(args.out_dir)
    paper = yaml.safe_load(Path(args.paper_table).read_text())
    ours = [read_json(p) for p in args.scores]
    rows = build_table(ours, paper)
    describe_models(rows, settings, paper)
    details: dict[str, dict[str, str]] = {}
    for path, s in zip(args.scores, ours, strict=True):
        found = Path(str(Path(path).with_suffix("")) + ".details.parquet")
        if found.exists():
            details.setdefault(s["model"], {})[s["benchmark"]] = str(found)
    gains = relative_gains(rows, paper, args.baseline_model, details)
    markdown = render_markdown(rows, paper, gains)
    with atomic_path(out / "paper_table.md") as tmp:
        tmp.write_text(markdown)
    with atomic_path(out / "paper_table.html") as tmp:
        tmp.write_text(render_html(markdown))
    write_csv(rows, paper, str(out / "paper_table.csv"))
    plot_scores(rows, paper, str(out / "scores.png"))

    # streamed, only the columns used: the tables hold 558K pool rows and 2M generated problems
    ratio, p_nothink = {}, {}
    for name, path in (("pool", args.pool_difficulty), ("generated", args.generated_difficulty)):
        ratio[name], p_nothink[name] = difficulty(path)
    histogram(
        [],
        str(out / "difficulty.png"),
        xlabel="p_nothink",
        title=f"difficult: pool {_fmt(100 * ratio['pool'] if ratio['pool'] is not None else None)}% "
        f"vs generated {_fmt(100 * ratio['generated'] if ratio['generated'] is not None else None)}% "
        "(paper: ~34% vs ~88%)",
        series=p_nothink,
    )
    curves = {}
    for path in args.losses:
        with open(path) as fh:
            rs = list(csv.DictReader(fh))
        curves[Path(path).parent.name] = ([int(r["step"]) for r in rs], [float(r["loss"]) for r in rs])
    loss_curves(curves, str(out / "loss_curves.png"), "training loss")
    lengths = token_lengths(args.generated, args.solutions)
    histograms(
        [
            ("generated problems (DiffGen)", "problem length (words)", lengths["problem_words"]),
            ("teacher solutions (distill)", "solution length (completion tokens)", lengths["solution_tokens"]),
        ],
        str(out / "lengths.png"),
    )
    summary = {
        "difficult_ratio": ratio,
        "reference_difficult_ratio": {"pool": 0.34, "generated": 0.88},
        "gains": gains,
        "lengths": {kind: {k: length_stats(v) for k, v in d.items()} for kind, d in lengths.items()},
        "stages": {
            Path(p).parent.name + "/" + Path(p).stem: read_json(p) for p in [args.select_summary, *args.stage_summaries]
        },
        "table": rows,
    }
    if args.benchmarks_dir:
        # Wall time, max RSS and CPU time of every job so far, per stage (rules' `benchmark:` files).
        from scalediff.plan import benchmarks_markdown, read_benchmarks

        bench = read_benchmarks(args.benchmarks_dir)
        with atomic_path(out / "benchmarks.md") as tmp:
            tmp.write_text("# Measured per stage (Snakemake benchmark files)\n\n" + benchmarks_markdown(bench))
        summary["benchmarks"] = bench
    write_json(summary, out / "summary.json")
    log.info("report written to %s", out)


if __name__ == "__main__":
    main()
