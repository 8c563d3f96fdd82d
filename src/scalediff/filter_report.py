"""filter's report: the funnel (rows in -> out per filter and reason), its CSV, the dataset card
and the funnel plot, built from the counts ``filter rules`` and ``filter gather`` collect."""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

from scalediff.decontam import NUMBERS_LABEL
from scalediff.filter_rules import FILTER_OF_REASON, FILTER_ORDER
from scalediff.records import atomic_path

PAPER_REMOVED_FRACTION = 0.43  # ~43% of generated pairs removed by the paper's (unpublished) filters


def build_funnel(
    stats: dict[str, Any],
    model: dict[str, int],
    kept: dict[str, int],
    problems_kept: dict[str, int],
    cfg: dict[str, Any],
    verified: dict[str, Counter] | None = None,
) -> dict[str, Any]:
    """The funnel from the rules stats, the model-based counts (rows, checked, dropped), the rows
    verification removed in gather (origin -> reason -> rows) and what was kept."""
    solved = model["dropped"]
    verified = verified or {}
    by_origin: dict[str, Any] = {}
    for origin, counts in stats["rows"].items():
        removed_by = Counter(counts["rejected"]) + Counter(counts["quarantined"])
        removed_by += verified.get(origin, Counter())
        if origin == "generated" and solved:
            removed_by["student_solved"] += solved
        steps, remaining = [], counts["in"]
        for name in FILTER_ORDER:
            reasons = {r: n for r, n in removed_by.items() if FILTER_OF_REASON[r] == name}
            removed = sum(reasons.values())
            steps.append(
                {"filter": name, "in": remaining, "removed": removed, "out": remaining - removed, "reasons": reasons}
            )
            remaining -= removed
        final = kept.get(origin, 0)
        n_quarantined = sum(counts["quarantined"].values())
        n_rejected = sum(counts["rejected"].values()) + (solved if origin == "generated" else 0)
        n_rejected += sum(verified.get(origin, Counter()).values())
        if remaining != final or counts["in"] != final + n_quarantined + n_rejected:
            raise RuntimeError(
                f"accounting identity broken for {origin}: in {counts['in']}, kept {final}, "
                f"rejected {n_rejected}, quarantined {n_quarantined}, funnel end {remaining}"
            )
        by_origin[origin] = {
            "in": counts["in"],
            "kept": final,
            "rejected": n_rejected,
            "quarantined": n_quarantined,
            "removed_fraction": round(1 - final / counts["in"], 4) if counts["in"] else None,
            "problems_kept": problems_kept.get(origin, 0),
            "steps": steps,
        }
    mb = cfg["model_based"]
    return {
        "unit": "row = one (problem id, teacher sample), or one pool row with its own solution",
        "inputs": stats["inputs"],
        "by_origin": by_origin,
        "hits": stats["hits"],
        "decontamination": stats["decontamination"],
        "model_based": {
            "enabled": mb["enabled"],
            "k": mb["k"],
            "rule": mb["rule"],
            "rows": model["rows"],
            "checked": model["checked"],
            "unchecked": model["rows"] - model["checked"],
            "solved_by_student": solved,
        },
        "paper": {"removed_fraction_generated": PAPER_REMOVED_FRACTION},
        "removed_fraction_generated": by_origin.get("generated", {}).get("removed_fraction"),
        "thresholds": {k: v for k, v in cfg.items() if k != "model_based"} | {"model_based": mb},
    }


def write_funnel_csv(funnel: dict[str, Any], path: str) -> None:
    lines = ["origin,filter,reason,in,removed,out"]
    for origin, data in funnel["by_origin"].items():
        for step in data["steps"]:
            lines.append(f"{origin},{step['filter']},,{step['in']},{step['removed']},{step['out']}")
            for reason, n in sorted(step["reasons"].items()):
                lines.append(f"{origin},{step['filter']},{reason},,{n},")
    with atomic_path(path) as tmp:
        tmp.write_text("\n".join(lines) + "\n")


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1%}"


def write_card(funnel: dict[str, Any], cfg: dict[str, Any], mean_tokens: float | None, path: str) -> None:
    g, o = funnel["by_origin"]["generated"], funnel["by_origin"]["original"]
    frac = g["removed_fraction"]
    mb = funnel["model_based"]
    dc = funnel["decontamination"]
    card = cfg["card"]
    rows = sum(d["kept"] for d in (o, g))
    lines = [
        "---",
        f"license: {card['license']}",
        f"pretty_name: {json.dumps(card['pretty_name'])}",
        "language:",
        "- en",
        "task_categories:",
        "- text-generation",
        "- question-answering",
        "size_categories:",
        f"- {size_category(rows)}",
        "tags:",
        *(f"- {t}" for t in card["tags"]),
        "configs:",
        "- config_name: default",
        "  data_files:",
        "  - split: original",
        "    path: original.parquet",
        "  - split: generated",
        "    path: generated.parquet",
        "---",
        "",
        "# ScaleDiff-Math (this run)",
        "",
        "Columns: `problem`, `solution` (teacher completion with `<think>` reasoning and a `\\boxed{}` answer, or the",
        "pool's own solution), `answer`, `id`, `origin`, `source`, `sample`, `solution_tokens`.",
        "",
        "| split | rows in | kept | rejected | quarantined | removed | problems kept |",
        "|---|---|---|---|---|---|---|",
        *(
            f"| {name} | {d['in']} | {d['kept']} | {d['rejected']} | {d['quarantined']} | "
            f"{_pct(d['removed_fraction'])} | {d['problems_kept']} |"
            for name, d in (("original", o), ("generated", g))
        ),
        "",
        f"Generated pairs removed: {_pct(frac)} (paper: ~{PAPER_REMOVED_FRACTION:.0%}).",
        f"Mean teacher solution length: {mean_tokens:.0f} tokens." if mean_tokens is not None else "",
        "",
        "## Filters (in funnel order; every removed row is in `rejects.parquet` with its reason codes)",
        "",
        "| filter | reason | generated rows removed | original rows removed |",
        "|---|---|---|---|",
        *_removed_rows(g, o),
        "",
        f"Original rows: {o['in']} in, {o['kept']} kept; the table above accounts for every one removed "
        f"({o['in'] - o['kept']}), with the generated ones ({g['in'] - g['kept']}).",
        "",
        "## Thresholds",
        "",
        f"- solution tokens: {cfg['min_solution_tokens']}..{cfg['max_solution_tokens']}; truncated = finish_reason "
        f"`length`{' or no `</think>`' if cfg['require_think_close'] else ''}",
        f"- repetition: repeated word {cfg['repetition']['ngram']}-grams > {cfg['repetition']['max_ratio']} "
        f"(at least {cfg['repetition']['min_ngrams']} n-grams)",
        f"- non-English: letters outside Latin/Greek/math > {cfg['max_foreign_letter_fraction']}",
        f"- problem: at least {cfg['problem']['min_chars']} characters, no solution marker ("
        f"{', '.join(f'`{m}`' for m in cfg['problem']['solution_markers'])}), "
        f"at most {cfg['problem']['max_questions']} question(s) and "
        f"{cfg['problem']['max_parts']} part(s)",
        f"- dedup: exact after normalisation, then MinHash/LSH Jaccard >= {cfg['dedup']['threshold']} over word "
        f"{cfg['dedup']['ngram']}-grams ({cfg['dedup']['num_perm']} permutations), against the pool and within "
        f"generated",
        f"- decontamination (originals: {dc['original_policy']}): normalised exact match with a benchmark problem, "
        f"or >= {dc['min_share']:.0%} of the problem's distinctive word {dc['ngram']}-grams in one benchmark problem, "
        f"or >= {dc['min_contained']:.0%} of that benchmark problem's; {dc['boilerplate_ngrams']} {dc['ngram']}-grams "
        f"found in >= {dc['boilerplate_df']} benchmark problems are boilerplate and never count; a benchmark "
        f"problem's words with other numbers: {dc.get('numbers_changed', 'report')}",
        f"- model-based ({'on' if mb['enabled'] else 'off'}): the student base answers each generated problem "
        f"k={mb['k']} times; drop when `{mb['rule']}` agree with the teacher (math-verify). "
        f"Checked {mb['checked']} rows, dropped {mb['solved_by_student']}.",
        "",
        "## Decontamination hits (problems)",
        "",
        "| benchmark | size | generated exact | generated overlap | generated other numbers | original exact "
        "| original overlap | original other numbers |",
        "|---|---|---|---|---|---|---|---|",
        *(
            f"| {b} | {dc['benchmark_sizes'].get(b, 0)} | "
            + " | ".join(
                str(d[o].get(k, 0)) for o in ("generated", "original") for k in ("exact", "overlap", "numbers")
            )
            + " |"
            for b, d in sorted(dc["benchmarks"].items())
        ),
        "",
        *_flagged_table(dc),
    ]
    with atomic_path(path) as tmp:
        tmp.write_text("\n".join(lines))


def size_category(rows: int) -> str:
    """The Hub's ``size_categories`` value for a row count."""
    for limit, name in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M")):
        if rows < limit:
            return name
    return "1M<n<10M" if rows < 10_000_000 else "10M<n<100M"


def _removed_rows(generated: dict[str, Any], original: dict[str, Any]) -> list[str]:
    """One line per (filter, reason) with the rows it removed of each origin (every removed row has
    exactly one reason code: ``build_funnel`` checks the accounting)."""
    counts: dict[tuple[str, str], list[int]] = {}
    for col, data in enumerate((generated, original)):
        for step in data["steps"]:
            for reason, n in step["reasons"].items():
                counts.setdefault((step["filter"], reason), [0, 0])[col] += n
    return [f"| {f} | {r} | {n[0]} | {n[1]} |" for (f, r), n in counts.items()]


def _flagged_table(dc: dict[str, Any], rows: int = 20) -> list[str]:
    """The first flagged problems: which benchmark problem each matched and the overlapping text (words only,
    so never a ``|``)."""
    if not dc["flagged"]:
        return []
    lines = [
        f"Matched problems ({min(rows, len(dc['flagged']))} shown; `funnel.json` lists {len(dc['flagged'])}, "
        f"other-numbers matches too; {dc['problems_flagged']} flagged as contaminated):",
        "",
        "| problem | origin | benchmark | benchmark problem | match | overlapping text |",
        "|---|---|---|---|---|---|",
    ]
    for f in dc["flagged"][:rows]:
        for m in f["matches"]:
            how = {"exact": "exact", "numbers": NUMBERS_LABEL}.get(m["kind"])
            how = how or f"{m['share']:.0%} / {m['contained']:.0%}"
            lines.append(f"| {f['id']} | {f['origin']} | {m['benchmark']} | {m['problem']} | {how} | {m['span']} |")
    return [*lines, ""]


def plot_funnel(funnel: dict[str, Any], path: str) -> None:
    """Rows remaining after each filter, generated and original side by side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, origin in zip(axes, ("generated", "original"), strict=True):
        data = funnel["by_origin"].get(origin, {"in": 0, "steps": []})
        labels = ["input", *(s["filter"] for s in data["steps"])]
        values = [data["in"], *(s["out"] for s in data["steps"])]
        ax.barh(range(len(values)), values, color="tab:blue" if origin == "generated" else "tab:gray")
        for i, (val, step) in enumerate(zip(values, [None, *data["steps"]], strict=True)):
            text = f"{val}" + (f"  (-{step['removed']})" if step and step["removed"] else "")
            ax.text(val, i, " " + text, va="center", fontsize=8)
        if origin == "generated" and data["in"]:
            ax.axvline(
                data["in"] * (1 - PAPER_REMOVED_FRACTION),
                color="crimson",
                linestyle="--",
                label=f"paper: ~{PAPER_REMOVED_FRACTION:.0%} removed",
            )
            ax.legend(fontsize=8, loc="lower right")
        ax.set_yticks(range(len(values)), labels)
        ax.invert_yaxis()
        frac = data.get("removed_fraction")
        ax.set_title(
            f"{origin}: {data['in']} -> {values[-1]} rows" + (f" ({frac:.0%} removed)" if frac is not None else ""),
            fontsize=10,
        )
        ax.set_xlabel("rows remaining")
        ax.set_xlim(0, max(values + [1]) * 1.35)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
