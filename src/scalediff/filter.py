"""filter: turn teacher solutions into the SFT dataset (the stage the paper never published).

Three entry points, one per Snakemake rule:

``rules``        rule-based checks (``filter_rules``), decontamination (``decontam``) and dedup
                 (``dedup``) over ``distill/solutions.parquet`` plus the pool's originals that
                 ship a solution -> ``candidates.parquet``, rejects and counts.
``model-shard``  the student base answers one shard of the surviving *generated* problems
                 (k samples); a row is dropped when the student's answer agrees with the
                 teacher's (``any`` or ``majority`` of the k). Resumable via ``engine.run_shard``.
``gather``       joins the shards -> ``dataset/{original,generated}.parquet`` (the released
                 ScaleDiff-Math layout), ``dataset/README.md``, ``rejects.parquet``,
                 ``funnel.{json,csv,png}``.

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
import json
import logging
from collections import Counter, defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from scalediff import cli
from scalediff.decontam import BenchmarkIndex
from scalediff.dedup import dedup_problems
from scalediff.filter_rules import (
    FILTER_OF_REASON,
    FILTER_ORDER,
    REQUIRED_POOL_FIELDS,
    REQUIRED_SOLUTION_FIELDS,
    gold_mismatch,
    problem_reasons,
    solution_reasons,
    validate_row,
    with_defaults,
)
from scalediff.records import (
    ShardCheckpoint,
    atomic_path,
    parse_scatteritem,
    read_json,
    shard_slice,
    write_json,
    write_rows,
)

log = logging.getLogger(__name__)

PAPER_REMOVED_FRACTION = 0.43  # ~43% of generated pairs removed by the paper's (unpublished) filters
REASON_ORDER = tuple(FILTER_OF_REASON)  # quarantine < superseded < problem < solution < ... < model
_RANK = {r: i for i, r in enumerate(REASON_ORDER)}

DATASET_SCHEMA = pa.schema(
    [
        pa.field("problem", pa.string(), nullable=False),
        pa.field("solution", pa.string(), nullable=False),
        pa.field("answer", pa.string()),
        pa.field("id", pa.string(), nullable=False),
        pa.field("origin", pa.string(), nullable=False),
        pa.field("source", pa.string(), nullable=False),
        pa.field("sample", pa.int32()),  # teacher sample index; null for pool-provided solutions
        pa.field("solution_tokens", pa.int32()),  # teacher completion tokens; null for pool solutions
    ]
)
CANDIDATE_SCHEMA = pa.schema([*DATASET_SCHEMA, pa.field("file", pa.string()), pa.field("row", pa.int64())])

FILTER_REJECT_SCHEMA = pa.schema(
    [
        pa.field("stage", pa.string()),
        pa.field("id", pa.string()),
        pa.field("sample", pa.int64()),
        pa.field("origin", pa.string()),
        pa.field("source", pa.string()),
        pa.field("file", pa.string()),
        pa.field("row", pa.int64()),
        pa.field("status", pa.string()),  # rejected | quarantined
        pa.field("filter", pa.string()),  # quarantine | superseded | problem | solution | decontamination | ...
        pa.field("reason", pa.string()),  # the first reason code in funnel order
        pa.field("reasons", pa.string()),  # every reason code the row hit, comma-separated
        pa.field("field", pa.string()),
        pa.field("detail", pa.string()),
        pa.field("raw", pa.string()),
    ]
)

VERDICT_SCHEMA = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),
        pa.field("sample", pa.int64()),
        pa.field("checked", pa.bool_(), nullable=False),
        pa.field("k", pa.int32()),
        pa.field("agree", pa.int32()),
        pa.field("drop", pa.bool_(), nullable=False),
        pa.field("student_answers", pa.string()),  # JSON list of the student's final answers
        pa.field("note", pa.string()),
    ]
)


# ============================================================================ robust reading
def iter_rows(path: str | Path, batch_size: int = 512) -> Iterator[dict[str, Any]]:
    """Rows of a Parquet file as dicts, batch by batch, never failing on a bad value.

    Each row carries ``_row`` (its index in the file); a string cell whose bytes are not UTF-8
    becomes None and its column is listed in ``_invalid`` so validation can quarantine it.
    """
    pf = pq.ParquetFile(path)
    offset = 0
    for batch in pf.iter_batches(batch_size=batch_size):
        columns: dict[str, list[Any]] = {}
        invalid: dict[int, list[str]] = defaultdict(list)
        for name in batch.schema.names:
            col = batch.column(name)
            try:
                columns[name] = col.to_pylist()
            except (UnicodeDecodeError, pa.ArrowException):
                values = []
                for j, raw in enumerate(col.cast(pa.binary()).to_pylist()):
                    try:
                        values.append(None if raw is None else raw.decode("utf-8"))
                    except UnicodeDecodeError:
                        values.append(None)
                        invalid[j].append(name)
                columns[name] = values
        for j in range(batch.num_rows):
            row = {name: values[j] for name, values in columns.items()}
            row["_row"] = offset + j
            if invalid.get(j):
                row["_invalid"] = invalid[j]
            yield row
        offset += batch.num_rows


def _raw(row: dict[str, Any], limit: int = 300) -> str:
    return json.dumps(
        {k: (v[:limit] if isinstance(v, str) else v) for k, v in row.items() if not k.startswith("_")},
        default=repr,
        ensure_ascii=False,
    )[: 4 * limit]


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _int(value: Any) -> int | None:
    return int(value) if isinstance(value, int | float) and not isinstance(value, bool) and value == value else None


class _Verdict:
    """What happened to one input row (kept unless ``reasons`` is non-empty)."""

    __slots__ = (
        "file",
        "row",
        "id",
        "sample",
        "origin",
        "source",
        "status",
        "reasons",
        "field",
        "detail",
        "raw",
        "answer",
    )

    def __init__(self, file: str, row: dict[str, Any]):
        self.file, self.row = file, row["_row"]
        self.id, self.sample = _text(row.get("id")), _int(row.get("sample"))
        origin = row.get("origin")
        self.origin = origin if origin in ("original", "generated") else "unknown"
        self.source = _text(row.get("source"))
        self.status = "kept"
        self.reasons: list[str] = []
        self.field: str | None = None
        self.detail: dict[str, str] = {}
        self.raw: str | None = None
        self.answer: str | None = None

    def quarantine(self, problems: list[tuple[str, str]], row: dict[str, Any]) -> None:
        self.status = "quarantined"
        self.reasons = [r for r, _ in problems]
        self.field = ",".join(f for _, f in problems)
        self.raw = _raw(row)

    def reject(self, reason: str, detail: str | None = None) -> None:
        self.status = "rejected"
        if reason not in self.reasons:
            self.reasons.append(reason)
        if detail:
            self.detail[reason] = detail

    @property
    def reason(self) -> str | None:
        return min(self.reasons, key=_RANK.__getitem__) if self.reasons else None

    def reject_row(self) -> dict[str, Any]:
        reason = self.reason
        return {
            "stage": "filter",
            "id": self.id,
            "sample": self.sample,
            "origin": self.origin,
            "source": self.source,
            "file": self.file,
            "row": self.row,
            "status": self.status,
            "filter": FILTER_OF_REASON[reason],
            "reason": reason,
            "reasons": ",".join(sorted(self.reasons, key=_RANK.__getitem__)),
            "field": self.field,
            "detail": "; ".join(f"{k}: {v}" for k, v in self.detail.items()) or None,
            "raw": self.raw,
        }


# ============================================================================ benchmarks
def load_benchmarks(benchmarks: dict[str, dict[str, Any]], cfg: dict[str, Any]) -> BenchmarkIndex:
    """Index every configured benchmark (local JSONL ``path``, else the Hub/local ``hf_repo``)."""
    index = BenchmarkIndex.from_config(cfg)
    for name, spec in sorted(benchmarks.items()):
        if spec.get("path"):
            index.add_jsonl(name, spec["path"])
            continue
        repo = spec["hf_repo"]
        local = Path(repo) / "test.jsonl"
        if local.exists():
            index.add_jsonl(name, local)
            continue
        import datasets

        ds = datasets.load_dataset(repo, spec.get("hf_subset"), split=spec.get("split", "test"))
        index.sizes.setdefault(name, 0)
        for row in ds:
            if isinstance(row.get("problem"), str) and row["problem"].strip():
                index.add(name, row["problem"])
    if not any(index.sizes.values()):
        raise SystemExit("decontamination: no benchmark problems were loaded")
    return index


# ============================================================================ rules
def run_rules(
    solutions: str,
    pool: str,
    benchmarks: dict[str, dict[str, Any]],
    raw_cfg: dict[str, Any],
    candidates_path: str,
    rejects_path: str,
    stats_path: str,
) -> dict[str, Any]:
    cfg = with_defaults(raw_cfg)
    ocfg = cfg["original"]
    max_chars = cfg["max_field_chars"]
    bench = load_benchmarks(benchmarks, cfg["decontamination"])
    log.info("benchmarks indexed: %s", bench.sizes)

    # --- pass 1a: pool rows (gold answers, texts for dedup; rows with a solution are inputs)
    pool_verdicts: list[_Verdict] = []
    pool_problems: list[tuple[str, str]] = []
    gold: dict[str, str | None] = {}
    pool_without_solution = 0
    for row in iter_rows(pool):
        pid, problem = _text(row.get("id")), _text(row.get("problem"))
        if pid and problem and problem.strip():
            pool_problems.append((pid, problem))
            gold[pid] = _text(row.get("answer"))
        solution = row.get("solution")
        if solution is None or (isinstance(solution, str) and not solution.strip()):
            pool_without_solution += 1  # the distill stage solves these; they are not inputs here
            continue
        v = _Verdict("pool", row)
        problems = validate_row(row, REQUIRED_POOL_FIELDS, max_chars)
        if problems:
            v.quarantine(problems, row)
        pool_verdicts.append(v)

    # --- pass 1b: teacher solutions, row-local checks
    sol_verdicts: list[_Verdict] = []
    problem_text: dict[str, str] = {}
    seen: set[tuple[str, int]] = set()
    for row in iter_rows(solutions):
        v = _Verdict("solutions", row)
        sol_verdicts.append(v)
        problems = validate_row(row, REQUIRED_SOLUTION_FIELDS, max_chars)
        if problems:
            v.quarantine(problems, row)
            continue
        key = (row["id"], int(row["sample"]))
        if key in seen:
            v.quarantine([("duplicate_key", "id,sample")], row)
            continue
        seen.add(key)
        problem_text.setdefault(row["id"], row["problem"])
        generated = v.origin == "generated"
        if generated:
            for reason in problem_reasons(row["problem"], cfg):
                v.reject(reason)
        reasons, v.answer = solution_reasons(row, cfg)
        if generated or ocfg["solution_rules"]:
            for reason in reasons:
                v.reject(reason)
        if not generated and ocfg["check_gold"] and gold_mismatch(v.answer, gold.get(row["id"])):
            v.reject("gold_mismatch", f"gold {gold[row['id']]!r}, teacher {v.answer!r}")

    # --- pool rows whose problem the teacher re-solved are replaced by the teacher's solutions
    distilled = {v.id for v in sol_verdicts if v.status != "quarantined" and v.origin == "original"}
    for v in pool_verdicts:
        if v.status == "kept" and v.id in distilled:
            v.reject("superseded_by_distilled")

    # --- decontamination (per problem text, independent of the other filters)
    contamination = _decontaminate(bench, sol_verdicts, pool_verdicts, problem_text, pool_problems, ocfg)

    # --- dedup of surviving generated problems, against the pool and each other
    survivors = list(dict.fromkeys(v.id for v in sol_verdicts if v.status == "kept" and v.origin == "generated"))
    dropped = dedup_problems([(pid, problem_text[pid]) for pid in survivors], pool_problems, cfg["dedup"])
    for v in sol_verdicts:
        if v.status == "kept" and v.id in dropped:
            reason, other = dropped[v.id]
            v.reject(reason, f"of {other}")

    # --- pass 2: stream kept rows to candidates, rejected/quarantined rows to rejects
    verdicts = pool_verdicts + sol_verdicts
    kept = _write_candidates(candidates_path, pool, pool_verdicts, solutions, sol_verdicts)
    write_rows([v.reject_row() for v in verdicts if v.status != "kept"], rejects_path, FILTER_REJECT_SCHEMA)
    stats = {
        "inputs": {
            "solutions": len(sol_verdicts),
            "pool_with_solution": len(pool_verdicts),
            "pool_without_solution": pool_without_solution,
        },
        "rows": _row_counts(verdicts),
        "hits": _hit_counts(verdicts),
        "problems_kept": dict(Counter(o for o, _ in {(v.origin, v.id) for v in verdicts if v.status == "kept"})),
        "decontamination": contamination,
        "candidates": kept,
    }
    if kept != sum(1 for v in verdicts if v.status == "kept"):
        raise RuntimeError(f"accounting: wrote {kept} candidates for {len(verdicts)} verdicts")
    write_json(stats, stats_path)
    log.info("filter rules: %d inputs -> %d candidates", len(verdicts), kept)
    return stats


def _decontaminate(
    bench: BenchmarkIndex,
    sol: list[_Verdict],
    pool_v: list[_Verdict],
    problem_text: dict[str, str],
    pool_problems: list[tuple[str, str]],
    ocfg: dict[str, Any],
) -> dict[str, Any]:
    texts = dict(pool_problems) | problem_text
    origin_of: dict[str, str] = {}
    for v in pool_v + sol:
        if v.status != "quarantined" and v.id in texts:
            origin_of.setdefault(v.id, v.origin)
    hits = {pid: bench.check(texts[pid]) for pid in origin_of}
    n = bench.ngram
    per_bench: dict[str, dict[str, dict[str, int]]] = {
        name: {o: Counter() for o in ("generated", "original")} for name in bench.sizes
    }
    counts = per_bench
    for pid, hit in hits.items():
        for name in hit["exact"]:
            counts[name][origin_of[pid]]["exact"] += 1
        for name in hit["ngram"]:
            counts[name][origin_of[pid]][f"{n}gram"] += 1
        for m, names in hit["report"].items():
            for name in names:
                counts[name][origin_of[pid]][f"{m}gram"] += 1
        for name in hit["exact"] | hit["ngram"]:
            counts[name][origin_of[pid]]["problems_flagged"] += 1
    for v in pool_v + sol:
        if v.status == "quarantined" or v.id not in hits:
            continue
        verdict = BenchmarkIndex.verdict(hits[v.id])
        if verdict and (v.origin == "generated" or ocfg["decontaminate"] == "remove"):
            v.reject(verdict[0], verdict[1])
    for v in pool_v + sol:
        if v.status == "rejected" and v.reason in ("contaminated", "contaminated_exact"):
            for name in v.detail[v.reason].split(","):
                per_bench[name][v.origin]["rows_removed"] += 1
    keys = ["exact", f"{n}gram", *(f"{m}gram" for m in bench.report_ngrams), "problems_flagged", "rows_removed"]
    return {
        "ngram": n,
        "report_ngrams": bench.report_ngrams,
        "original_policy": ocfg["decontaminate"],
        "benchmark_sizes": bench.sizes,
        "benchmark_rows_skipped": bench.skipped,
        "benchmarks": {
            name: {o: {k: c.get(k, 0) for k in keys} for o, c in by.items()} for name, by in per_bench.items()
        },
    }


def _write_candidates(path: str, pool: str, pool_v: list[_Verdict], solutions: str, sol_v: list[_Verdict]) -> int:
    written = 0
    with atomic_path(path) as tmp, pq.ParquetWriter(tmp, CANDIDATE_SCHEMA) as writer:
        buffer: list[dict[str, Any]] = []

        def flush() -> None:
            if buffer:
                writer.write_table(pa.Table.from_pylist(buffer, schema=CANDIDATE_SCHEMA))
                buffer.clear()

        for file, verdicts, src in (("pool", pool_v, pool), ("solutions", sol_v, solutions)):
            by_row = {v.row: v for v in verdicts if v.status == "kept"}
            for row in iter_rows(src):
                v = by_row.get(row["_row"])
                if v is None:
                    continue
                if file == "pool":
                    rec = {
                        "solution": row["solution"],
                        "answer": _text(row.get("answer")),
                        "sample": None,
                        "solution_tokens": None,
                    }
                else:
                    rec = {
                        "solution": row["completion"],
                        "answer": v.answer,
                        "sample": int(row["sample"]),
                        "solution_tokens": int(row["completion_tokens"]),
                    }
                buffer.append(
                    {
                        **rec,
                        "problem": row["problem"],
                        "id": row["id"],
                        "origin": row["origin"],
                        "source": row["source"],
                        "file": file,
                        "row": row["_row"],
                    }
                )
                written += 1
                if len(buffer) >= 256:
                    flush()
        flush()
    return written


def _row_counts(verdicts: list[_Verdict]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for origin in sorted({v.origin for v in verdicts} | {"generated", "original"}):
        mine = [v for v in verdicts if v.origin == origin]
        out[origin] = {
            "in": len(mine),
            "kept": sum(v.status == "kept" for v in mine),
            "rejected": dict(Counter(v.reason for v in mine if v.status == "rejected")),
            "quarantined": dict(Counter(v.reason for v in mine if v.status == "quarantined")),
        }
    return out


def _hit_counts(verdicts: list[_Verdict]) -> dict[str, dict[str, int]]:
    """Independent hits: how many valid rows each (row-local) reason flags, regardless of order."""
    out: dict[str, Counter] = defaultdict(Counter)
    for v in verdicts:
        if v.status != "quarantined":
            out[v.origin].update(
                r for r in v.reasons if FILTER_OF_REASON[r] in ("problem", "solution", "decontamination")
            )
    return {o: dict(c) for o, c in out.items()}


# ============================================================================ model-based
def student_drops(agree: int, k: int, rule: str) -> bool:
    """``any``: one of the k student answers matches the teacher's; ``majority``: more than half do."""
    return agree >= 1 if rule == "any" else agree * 2 > k


def run_model_shard(
    candidates: str, model: str, shard: int, n_shards: int, settings: dict[str, Any], output: str
) -> dict[str, Any]:
    """Student verdicts for one shard of the generated candidates (whole problems per shard)."""

    mb = with_defaults(settings["filter"])["model_based"]
    table = pq.read_table(candidates, columns=["id", "sample", "problem", "answer", "origin"])
    rows = [r for r in table.to_pylist() if r["origin"] == "generated"]
    ids = list(dict.fromkeys(r["id"] for r in rows))
    mine = set(ids[shard_slice(len(ids), shard, n_shards)])
    rows = [r for r in rows if r["id"] in mine]
    k, rule = int(mb["k"]), mb["rule"]

    def verdict(
        r: dict[str, Any], checked: bool, agree: int = 0, answers: list | None = None, note: str | None = None
    ) -> dict[str, Any]:
        return {
            "id": r["id"],
            "sample": r["sample"],
            "checked": checked,
            "k": k if checked else 0,
            "agree": agree,
            "drop": checked and student_drops(agree, k, rule),
            "student_answers": json.dumps(answers, ensure_ascii=False) if answers is not None else None,
            "note": note,
        }

    if not mb["enabled"] or not rows:
        out = [verdict(r, False, note="model-based filter disabled" if not mb["enabled"] else None) for r in rows]
        write_rows(out, output, VERDICT_SCHEMA)
        return {"rows": len(out), "checked": 0, "dropped": 0}

    from scalediff.answers import final_answer, score_prediction
    from scalediff.engine import Engine, ShardJob, run_shard

    engine = Engine(model, settings["engine"], seed=settings["seed"])
    teacher: dict[str, dict[int, str | None]] = defaultdict(dict)
    problem: dict[str, str] = {}
    for r in rows:
        teacher[r["id"]][r["sample"]] = r["answer"]
        problem.setdefault(r["id"], r["problem"])
    jobs, too_long = [], set()
    for pid, text in problem.items():
        prompt = engine.chat_prompt([{"role": "user", "content": mb["instruction"] + text}])
        if engine.fits(prompt, 1):
            jobs.append(ShardJob(key=pid, prompt=prompt, payload={"teacher": teacher[pid]}))
        else:
            too_long.add(pid)
    longest = max((len(j.prompt) for j in jobs), default=0)
    # vLLM refuses n > 1 with greedy decoding; greedy samples are identical, so one stands for all k.
    greedy = float(mb["temperature"]) == 0.0
    sampling = {
        "temperature": mb["temperature"],
        "top_p": mb["top_p"],
        "n": 1 if greedy else k,
        "max_tokens": max(1, min(mb["max_tokens"], engine.max_model_len - longest)),
    }

    def to_rows(job: ShardJob, comps: list) -> list[dict[str, Any]]:
        # Compare here (main thread, math-verify timeouts work) so the checkpoint stays small.
        comps = comps * k if greedy else comps
        agree = {
            str(s): sum(score_prediction(c.text, ans) for c in comps) if ans else 0
            for s, ans in job.payload["teacher"].items()
        }
        return [
            {
                "answers": [final_answer(c.text) for c in comps],
                "finish": [c.finish_reason for c in comps],
                "agree": agree,
            }
        ]

    done = {
        r["key"]: r
        for r in run_shard(
            engine,
            jobs,
            sampling,
            to_rows,
            output,
            base_seed=settings["seed"],
            batch_size=settings["engine"]["batch_size"],
        )
    }
    out = []
    for r in rows:
        if r["id"] in too_long:
            out.append(verdict(r, False, note=f"prompt exceeds max_model_len {engine.max_model_len}: kept unchecked"))
        else:
            res = done[r["id"]]
            out.append(
                verdict(
                    r,
                    True,
                    int(res["agree"][str(r["sample"])]),
                    res["answers"],
                    note=None if r["answer"] else "no teacher answer",
                )
            )
    write_rows(out, output, VERDICT_SCHEMA)
    ShardCheckpoint(output).discard()
    stats = {"rows": len(out), "checked": sum(v["checked"] for v in out), "dropped": sum(v["drop"] for v in out)}
    log.info("filter model shard %d/%d: %s", shard + 1, n_shards, stats)
    return stats


# ============================================================================ gather
def run_gather(
    candidates: str,
    rules_rejects: str,
    rules_stats: str,
    verdict_paths: list[str],
    raw_cfg: dict[str, Any],
    out: dict[str, str],
) -> dict[str, Any]:
    cfg = with_defaults(raw_cfg)
    stats = read_json(rules_stats)
    verdicts: dict[tuple[str, int], dict[str, Any]] = {}
    for path in verdict_paths:
        for v in pq.read_table(path).to_pylist():
            key = (v["id"], v["sample"])
            if key in verdicts:
                raise RuntimeError(f"model-based verdict for {key} appears in two shards")
            verdicts[key] = v

    model_rejects: list[dict[str, Any]] = []
    kept = {"original": 0, "generated": 0}
    kept_ids: dict[str, set[str]] = {"original": set(), "generated": set()}
    tokens: list[int] = []
    seen_generated = 0
    with (
        atomic_path(out["original"]) as tmp_o,
        atomic_path(out["generated"]) as tmp_g,
        pq.ParquetWriter(tmp_o, DATASET_SCHEMA) as w_orig,
        pq.ParquetWriter(tmp_g, DATASET_SCHEMA) as w_gen,
    ):
        writers = {"original": w_orig, "generated": w_gen}
        for batch in pq.ParquetFile(candidates).iter_batches(batch_size=256):
            parts: dict[str, list[dict[str, Any]]] = {"original": [], "generated": []}
            for r in batch.to_pylist():
                if r["origin"] == "generated":
                    seen_generated += 1
                    v = verdicts.get((r["id"], r["sample"]))
                    if v is None:
                        raise RuntimeError(f"no model-based verdict for generated candidate {r['id']}#{r['sample']}")
                    if v["drop"]:
                        model_rejects.append(
                            {
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
                                "detail": f"{v['agree']}/{v['k']} student answers {v['student_answers']} agree with "
                                f"teacher {r['answer']!r}",
                                "field": None,
                                "raw": None,
                            }
                        )
                        continue
                parts[r["origin"]].append({k: r[k] for k in DATASET_SCHEMA.names})
                kept[r["origin"]] += 1
                kept_ids[r["origin"]].add(r["id"])
                if r["solution_tokens"] is not None:
                    tokens.append(r["solution_tokens"])
            for origin, rows in parts.items():
                if rows:
                    writers[origin].write_table(pa.Table.from_pylist(rows, schema=DATASET_SCHEMA))
    if seen_generated != len(verdicts):
        raise RuntimeError(f"{len(verdicts)} model-based verdicts for {seen_generated} generated candidates")

    rejects = pq.read_table(rules_rejects)
    if model_rejects:
        rejects = pa.concat_tables([rejects, pa.Table.from_pylist(model_rejects, schema=FILTER_REJECT_SCHEMA)])
    with atomic_path(out["rejects"]) as tmp:
        pq.write_table(rejects, tmp)

    funnel = build_funnel(stats, model_rejects, verdicts, kept, kept_ids, cfg)
    write_json(funnel, out["funnel"])
    _write_funnel_csv(funnel, out["funnel_csv"])
    _write_card(funnel, cfg, tokens, out["card"])
    plot_funnel(funnel, out["plot"])
    log.info(
        "filter gather: kept %s, generated removed fraction %s",
        kept,
        funnel["by_origin"]["generated"]["removed_fraction"],
    )
    return funnel


def build_funnel(
    stats: dict[str, Any],
    model_rejects: list[dict[str, Any]],
    verdicts: dict,
    kept: dict[str, int],
    kept_ids: dict[str, set[str]],
    cfg: dict[str, Any],
) -> dict[str, Any]:
    by_origin: dict[str, Any] = {}
    for origin, counts in stats["rows"].items():
        removed_by = Counter(counts["rejected"]) + Counter(counts["quarantined"])
        if origin == "generated" and model_rejects:
            removed_by["student_solved"] += len(model_rejects)
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
        n_rejected = sum(counts["rejected"].values()) + (len(model_rejects) if origin == "generated" else 0)
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
            "problems_kept": len(kept_ids.get(origin, ())),
            "steps": steps,
        }
    mb = cfg["model_based"]
    checked = [v for v in verdicts.values() if v["checked"]]
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
            "rows": len(verdicts),
            "checked": len(checked),
            "unchecked": len(verdicts) - len(checked),
            "solved_by_student": len(model_rejects),
        },
        "paper": {"removed_fraction_generated": PAPER_REMOVED_FRACTION},
        "removed_fraction_generated": by_origin.get("generated", {}).get("removed_fraction"),
        "thresholds": {k: v for k, v in cfg.items() if k != "model_based"} | {"model_based": mb},
    }


def _write_funnel_csv(funnel: dict[str, Any], path: str) -> None:
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


def _write_card(funnel: dict[str, Any], cfg: dict[str, Any], tokens: list[int], path: str) -> None:
    g, o = funnel["by_origin"]["generated"], funnel["by_origin"]["original"]
    frac = g["removed_fraction"]
    mb = funnel["model_based"]
    dc = funnel["decontamination"]
    ngram = f"{dc['ngram']}gram"
    lines = [
        "---",
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
        f"Mean teacher solution length: {sum(tokens) / len(tokens):.0f} tokens." if tokens else "",
        "",
        "## Filters (in funnel order; every removed row is in `rejects.parquet` with its reason codes)",
        "",
        "| filter | reason | generated rows removed |",
        "|---|---|---|",
        *(f"| {s['filter']} | {r} | {n} |" for s in g["steps"] for r, n in sorted(s["reasons"].items())),
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
        f"- decontamination: word {dc['ngram']}-gram overlap or normalised exact match with any benchmark "
        f"(originals: {dc['original_policy']}); {'/'.join(map(str, dc['report_ngrams'])) or 'no other'}-gram overlap "
        f"reported only",
        f"- model-based ({'on' if mb['enabled'] else 'off'}): the student base answers each generated problem "
        f"k={mb['k']} times; drop when `{mb['rule']}` agree with the teacher (math-verify). "
        f"Checked {mb['checked']} rows, dropped {mb['solved_by_student']}.",
        "",
        "## Decontamination hits (problems)",
        "",
        "| benchmark | size | generated exact | generated n-gram | original exact | original n-gram |",
        "|---|---|---|---|---|---|",
        *(
            f"| {b} | {dc['benchmark_sizes'].get(b, 0)} | {d['generated']['exact']} | {d['generated'][ngram]} | "
            f"{d['original']['exact']} | {d['original'][ngram]} |"
            for b, d in sorted(dc["benchmarks"].items())
        ),
        "",
    ]
    with atomic_path(path) as tmp:
        tmp.write_text("\n".join(lines))


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
        run_gather(args.candidates, args.rules_rejects, args.rules_stats, args.verdicts, settings["filter"], outputs)


if __name__ == "__main__":
    main()
