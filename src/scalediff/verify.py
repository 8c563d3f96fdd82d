"""verify: majority answers of the teacher's k samples per problem (the paper's first open question).

    python -m scalediff.verify --solutions distill/solutions.parquet --output verify/agreement.parquet \
        --summary verify/summary.json --plot verify/agreement.png

With ``distill.n = k`` the teacher solves every problem k times. Here the k final answers are grouped
by mathematical equality (math-verify, ``answers.answers_agree``); the largest group is the majority
answer and its share of the k samples the agreement (a sample without an answer counts against it).
The filter then drops problems below ``verify.min_agreement`` and, with ``verify.majority_only``, the
samples outside the majority (``filter_gather``).
"""

from __future__ import annotations

import argparse
import logging
from collections import defaultdict
from typing import Any

import numpy as np
import pyarrow as pa

from scalediff import cli
from scalediff.answers import answers_agree
from scalediff.records import iter_batches, write_json, write_rows

log = logging.getLogger(__name__)

AGREEMENT_SCHEMA = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),
        pa.field("origin", pa.string(), nullable=False),
        pa.field("samples", pa.int32(), nullable=False),
        pa.field("majority_answer", pa.string()),
        pa.field("agreement", pa.float64(), nullable=False),
        pa.field("majority_samples", pa.list_(pa.int32()), nullable=False),
    ]
)


def majority(answers: list[tuple[int, str | None]]) -> tuple[str | None, list[int]]:
    """The majority answer of ``(sample, answer)`` pairs and the samples that gave it: answers are
    grouped by equality (the first answer of each group represents it); ties go to the group found
    first, i.e. the one holding the lowest sample index."""
    groups: list[tuple[str, list[int]]] = []
    for sample, answer in sorted(answers, key=lambda a: a[0]):
        if answer is None or not answer.strip():
            continue
        for head, members in groups:
            if answer.strip() == head.strip() or answers_agree(answer, head):
                members.append(sample)
                break
        else:
            groups.append((answer, [sample]))
    if not groups:
        return None, []
    head, members = max(groups, key=lambda g: len(g[1]))  # max keeps the first of equal sizes
    return head, members


def agreement_rows(solutions: str) -> list[dict[str, Any]]:
    """One row per problem: its samples, majority answer and agreement."""
    by_id: dict[str, list[tuple[int, str | None]]] = defaultdict(list)
    origin: dict[str, str] = {}
    for batch in iter_batches(solutions, columns=["id", "sample", "origin", "answer"]):
        for row in batch.to_pylist():
            by_id[row["id"]].append((row["sample"], row["answer"]))
            origin[row["id"]] = row["origin"]
    rows = []
    for pid in sorted(by_id):
        samples = by_id[pid]
        answer, members = majority(samples)
        rows.append(
            {
                "id": pid,
                "origin": origin[pid],
                "samples": len(samples),
                "majority_answer": answer,
                "agreement": len(members) / len(samples),
                "majority_samples": members,
            }
        )
    return rows


def summarize(rows: list[dict[str, Any]], min_agreement: float | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for origin in sorted({r["origin"] for r in rows}):
        values = np.array([r["agreement"] for r in rows if r["origin"] == origin])
        k = sorted({r["samples"] for r in rows if r["origin"] == origin})
        out[origin] = {
            "problems": int(values.size),
            "samples_per_problem": k,
            "mean_agreement": float(values.mean()),
            "unanimous": int((values == 1.0).sum()),
            "no_answer": int((values == 0.0).sum()),
            "below_min_agreement": int((values < min_agreement).sum()) if min_agreement is not None else None,
            # agreement -> problems (k + 1 possible values for k samples)
            "distribution": {f"{v:.3f}": int(n) for v, n in zip(*np.unique(values, return_counts=True), strict=True)},
        }
    return {"min_agreement": min_agreement, "by_origin": out}


def plot(rows: list[dict[str, Any]], path: str) -> None:
    from scalediff.plots import plt, save

    fig, ax = plt.subplots(figsize=(6, 3.8))
    for origin in sorted({r["origin"] for r in rows}):
        values = [r["agreement"] for r in rows if r["origin"] == origin]
        ax.hist(values, bins=np.linspace(0, 1, 11), alpha=0.6, label=f"{origin} ({len(values)})")
    ax.set_xlabel("agreement (share of the teacher's samples with the majority answer)")
    ax.set_ylabel("problems")
    ax.set_title("Teacher self-agreement per problem")
    ax.legend(fontsize=8)
    save(fig, path)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="Majority answer and agreement of the teacher's samples per problem.")
    ap.add_argument("--solutions", required=True)
    ap.add_argument("--output", required=True)
    ap.add_argument("--summary", required=True)
    ap.add_argument("--plot", required=True)
    cli.add_settings_argument(ap)
    args = ap.parse_args(argv)
    cli.setup_logging()
    settings = cli.load_settings(args)
    rows = agreement_rows(args.solutions)
    write_rows(rows, args.output, AGREEMENT_SCHEMA)
    summary = summarize(rows, settings["verify"].get("min_agreement"))
    write_json(summary, args.summary)
    plot(rows, args.plot)
    log.info(
        "verify: %s", {o: {k: v for k, v in s.items() if k != "distribution"} for o, s in summary["by_origin"].items()}
    )


if __name__ == "__main__":
    main()
