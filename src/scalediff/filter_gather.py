"""filter gather: apply the model-based verdicts while streaming the candidates into the released
ScaleDiff-Math layout -> ``dataset/{original,generated}.parquet``, ``dataset/README.md``,
``rejects.parquet`` and ``funnel.{json,csv,png}`` (built by ``filter_report``) (``python -m
scalediff.filter gather``). It checks that every generated candidate has exactly one verdict.
"""

from __future__ import annotations

import contextlib
import logging
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from scalediff.filter_report import build_funnel, plot_funnel, write_card, write_funnel_csv
from scalediff.filter_rules import with_defaults
from scalediff.filter_rules_pass import DATASET_SCHEMA, FILTER_REJECT_SCHEMA, distinct_ids
from scalediff.records import atomic_path, iter_batches, read_json, write_json

log = logging.getLogger(__name__)


def _iter_verdicts(paths: list[str]) -> Iterator[dict[str, Any]]:
    for path in paths:
        for batch in iter_batches(path):
            yield from batch.to_pylist()


def _model_reject(r: dict[str, Any], v: dict[str, Any]) -> dict[str, Any]:
    return {
        "stage": "filter",
        "id": r["id"],
        "sample": r["sample"],
        "origin": r["origin"],
        "source": r["source"],
        "file": r["file"],
        "row": r["row"],
        "status": "rejected",
        "filter": "model_based",
        "reason": "student_solved",
        "reasons": "student_solved",
        "detail": f"{v['agree']}/{v['k']} student answers {v['student_answers']} agree with teacher {r['answer']!r}",
        "field": None,
        "raw": None,
    }


def _verify_reject(r: dict[str, Any], reason: str, a: dict[str, Any]) -> dict[str, Any]:
    return {
        **_model_reject(r, {"agree": 0, "k": 0, "student_answers": []}),
        "filter": "verification",
        "reason": reason,
        "reasons": reason,
        "detail": f"agreement {a['agreement']:.2f} of {a['samples']} teacher samples, majority answer "
        f"{a['majority_answer']!r}, this sample's {r['answer']!r}",
    }


def read_agreement(path: str | None) -> dict[str, dict[str, Any]]:
    """Generated problems' teacher agreement (``scalediff.verify``): id -> agreement row."""
    if not path:
        return {}
    columns = ["id", "origin", "samples", "majority_answer", "agreement", "majority_samples"]
    out = {}
    for batch in iter_batches(path, columns=columns):
        for row in batch.to_pylist():
            if row["origin"] == "generated":
                out[row["id"]] = row
    return out


def verification(r: dict[str, Any], agreement: dict[str, dict[str, Any]], cfg: dict[str, Any]) -> str | None:
    """Why verification removes a generated row (``low_agreement``, ``minority_answer``), or None."""
    a = agreement.get(r["id"])
    if a is None:
        raise RuntimeError(f"verification: no agreement row for generated candidate {r['id']}")
    if a["agreement"] < cfg.get("min_agreement", 0.0):
        return "low_agreement"
    if cfg.get("majority_only", True) and r["sample"] not in a["majority_samples"]:
        return "minority_answer"
    return None


def run_gather(
    candidates: str,
    rules_rejects: str,
    rules_stats: str,
    verdict_paths: list[str],
    raw_cfg: dict[str, Any],
    out: dict[str, str],
    agreement_path: str | None = None,
    verify_cfg: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Apply verification (with ``agreement_path``: the teacher's self-agreement) and the model-based
    verdicts while streaming the candidates into the dataset splits.

    Verdict shards hold whole problems in candidate order, so they are consumed alongside the
    candidates; a verdict that arrives early waits in a small buffer until its row comes.
    """
    cfg = with_defaults(raw_cfg)
    agreement = read_agreement(agreement_path)
    verify_cfg = verify_cfg or {}
    verified: dict[str, Counter] = {"generated": Counter()}
    stats = read_json(rules_stats)
    pending: dict[tuple[str, int], dict[str, Any]] = {}
    stream = _iter_verdicts(verdict_paths)
    model = {"rows": 0, "checked": 0, "dropped": 0}

    def verdict_for(key: tuple[str, int]) -> dict[str, Any]:
        while key not in pending:
            v = next(stream, None)
            if v is None:
                raise RuntimeError(f"no model-based verdict for generated candidate {key[0]}#{key[1]}")
            vkey = (v["id"], v["sample"])
            if vkey in pending:
                raise RuntimeError(f"model-based verdict for {vkey} appears twice")
            pending[vkey] = v
        return pending.pop(key)

    kept = {"original": 0, "generated": 0}
    token_sum = token_rows = 0
    with contextlib.ExitStack() as stack:
        paths = {name: stack.enter_context(atomic_path(out[name])) for name in ("original", "generated", "rejects")}
        writers = {
            "original": stack.enter_context(pq.ParquetWriter(paths["original"], DATASET_SCHEMA)),
            "generated": stack.enter_context(pq.ParquetWriter(paths["generated"], DATASET_SCHEMA)),
            "rejects": stack.enter_context(pq.ParquetWriter(paths["rejects"], FILTER_REJECT_SCHEMA)),
        }
        for batch in iter_batches(rules_rejects):
            writers["rejects"].write_table(pa.Table.from_batches([batch]).cast(FILTER_REJECT_SCHEMA))
        for batch in iter_batches(candidates, 256):
            parts: dict[str, list[dict[str, Any]]] = {"original": [], "generated": [], "rejects": []}
            for r in batch.to_pylist():
                if r["origin"] == "generated":
                    v = verdict_for((r["id"], r["sample"]))
                    if agreement_path and (why := verification(r, agreement, verify_cfg)):
                        verified["generated"][why] += 1
                        parts["rejects"].append(_verify_reject(r, why, agreement[r["id"]]))
                        continue
                    model["rows"] += 1
                    model["checked"] += bool(v["checked"])
                    if v["drop"]:
                        model["dropped"] += 1
                        parts["rejects"].append(_model_reject(r, v))
                        continue
                parts[r["origin"]].append({k: r[k] for k in DATASET_SCHEMA.names})
                kept[r["origin"]] += 1
                if r["solution_tokens"] is not None:
                    token_sum += r["solution_tokens"]
                    token_rows += 1
            for name, rows in parts.items():
                if rows:
                    schema = FILTER_REJECT_SCHEMA if name == "rejects" else DATASET_SCHEMA
                    writers[name].write_table(pa.Table.from_pylist(rows, schema=schema))
        leftover = len(pending) + sum(1 for _ in stream)
        if leftover:
            raise RuntimeError(f"{leftover} model-based verdicts match no generated candidate")

    problems_kept = {o: distinct_ids(out[o]).get(o, 0) for o in ("original", "generated")}
    funnel = build_funnel(stats, model, kept, problems_kept, cfg, verified)
    funnel["verification"] = {
        "enabled": bool(agreement_path),
        **{k: verify_cfg.get(k) for k in ("min_agreement", "majority_only")},
        "removed": dict(verified["generated"]),
    }
    write_json(funnel, out["funnel"])
    write_funnel_csv(funnel, out["funnel_csv"])
    write_card(funnel, cfg, token_sum / token_rows if token_rows else None, out["card"])
    plot_funnel(funnel, out["plot"])
    log.info(
        "filter gather: kept %s, generated removed fraction %s",
        kept,
        funnel["by_origin"]["generated"]["removed_fraction"],
    )
    return funnel
