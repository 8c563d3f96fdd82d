"""filter: turn teacher solutions into the SFT dataset (the stage the paper never published).

Three entry points, one per Snakemake rule, each in its own module (this one is the command line):

``rules``        ``filter_rules_pass``: rule-based checks (``filter_rules``), decontamination
                 (``decontam``) and dedup (``dedup``) over ``distill/solutions.parquet`` plus the pool's
                 originals that ship a solution -> ``candidates.parquet``, rejects and counts; the
                 row-local work in ``--workers`` processes (the rule's threads).
``model-shard``  ``filter_model``: the student base answers one shard of the surviving *generated*
                 problems (k samples); a row is dropped when the student's answer agrees with the
                 teacher's (``any`` or ``majority`` of the k). Resumable via ``engine.run_shard``.
``gather``       ``filter_gather``: joins the shards -> ``dataset/{original,generated}.parquet`` (the
                 released ScaleDiff-Math layout), ``dataset/README.md``, ``rejects.parquet``,
                 ``funnel.{json,csv,png}`` (built by ``filter_report``).

Scale (paper: ~2M rows of 10-30K-token solutions, tens of GB): ``rules`` streams its inputs row group
by row group, writing candidates and rejects as it goes; ``gather`` streams the candidates and consumes
the verdict shards alongside them. ``bench/filter_scale.py`` and ``bench/paper_scale.py`` measure them.

Accounting: every input row (a teacher sample ``(id, sample)``, or a pool row with its own
solution) ends in exactly one of kept / rejected(reason) / quarantined(reason). Both
``rules`` and ``gather`` check this identity and fail loudly if it does not hold.

Scope (the paper filters generated data only): problem checks, dedup and the model-based
filter apply to generated problems; teacher solutions of original problems get the solution
checks (``original.solution_rules``) and a gold-answer check (``original.check_gold``); pool rows
with their own solution are used as-is. Originals are checked for contamination and either
reported or removed (``original.decontaminate: report|remove``).
"""

from __future__ import annotations

import argparse

from scalediff import cli
from scalediff.filter_gather import run_gather
from scalediff.filter_model import VERDICT_SCHEMA, run_model_shard, student_drops
from scalediff.filter_rules_pass import (
    CANDIDATE_SCHEMA,
    DATASET_SCHEMA,
    FILTER_REJECT_SCHEMA,
    distinct_ids,
    iter_row_batches,
    load_benchmarks,
    run_rules,
)
from scalediff.records import parse_scatteritem

__all__ = [
    "CANDIDATE_SCHEMA",
    "DATASET_SCHEMA",
    "FILTER_REJECT_SCHEMA",
    "VERDICT_SCHEMA",
    "distinct_ids",
    "iter_row_batches",
    "load_benchmarks",
    "main",
    "run_gather",
    "run_model_shard",
    "run_rules",
    "student_drops",
]


# ============================================================================ CLI
def main(argv: list[str] | None = None) -> None:

    ap = argparse.ArgumentParser(description="Rule-based, dedup, decontamination and model-based filtering.")
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("rules", help="rule-based checks, decontamination and dedup -> candidates")
    r.add_argument("--solutions", required=True)
    r.add_argument("--pool", required=True)
    r.add_argument("--candidates", required=True)
    r.add_argument("--rejects", required=True)
    r.add_argument("--stats", required=True)
    r.add_argument("--workers", type=int, default=1, help="processes for the row-local checks (the rule's threads)")
    cli.add_settings_argument(r)
    m = sub.add_parser("model-shard", help="student-base verdicts for one shard of generated candidates")
    m.add_argument("--candidates", required=True)
    m.add_argument("--model", required=True)
    m.add_argument("--shard", required=True, help="Snakemake scatteritem, e.g. 1-of-4")
    m.add_argument("--output", required=True)
    cli.add_settings_argument(m)
    g = sub.add_parser("gather", help="apply verdicts, write the dataset, rejects, funnel, card and plot")
    g.add_argument("--candidates", required=True)
    g.add_argument("--rules-rejects", required=True)
    g.add_argument("--rules-stats", required=True)
    g.add_argument("--verdicts", nargs="+", required=True)
    g.add_argument("--agreement", help="verify/agreement.parquet: apply verification (settings `verify`)")
    for name in ("original", "generated", "card", "rejects", "funnel", "funnel-csv", "plot"):
        g.add_argument(f"--{name}", required=True)
    cli.add_settings_argument(g)
    args = ap.parse_args(argv)
    cli.setup_logging()
    settings = cli.load_settings(args)
    if args.cmd == "rules":
        run_rules(
            args.solutions,
            args.pool,
            settings["benchmarks"],
            settings["filter"],
            args.candidates,
            args.rejects,
            args.stats,
            workers=args.workers,
        )
    elif args.cmd == "model-shard":
        shard, n_shards = parse_scatteritem(args.shard)
        run_model_shard(args.candidates, args.model, shard, n_shards, settings, args.output)
    else:
        outputs = {
            "original": args.original,
            "generated": args.generated,
            "card": args.card,
            "rejects": args.rejects,
            "funnel": args.funnel,
            "funnel_csv": args.funnel_csv,
            "plot": args.plot,
        }
        run_gather(
            args.candidates,
            args.rules_rejects,
            args.rules_stats,
            args.verdicts,
            settings["filter"],
            outputs,
            agreement_path=args.agreement,
            verify_cfg=settings.get("verify"),
        )


if __name__ == "__main__":
    main()
