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
                 ``funnel.{json,csv,png}`` (built by ``filter_report``).

Scale (paper: ~2M rows of 10-30K-token solutions, tens of GB): ``rules`` streams its inputs batch
by batch, writing candidates and rejects as it goes; what it keeps grows only with the dedup
signatures (per problem) and 8 bytes per row for the duplicate-key check. Its per-row text and
math-verify checks run in ``--workers`` processes (the rule's threads). ``gather`` streams the
candidates and consumes the verdict shards alongside them. ``bench/filter_scale.py`` measures it.

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
import contextlib
import json
import logging
import multiprocessing
import time
from collections import Counter, defaultdict, deque
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from scalediff import cli
from scalediff.decontam import BenchmarkIndex
from scalediff.dedup import ProblemDeduper
from scalediff.filter_report import build_funnel, plot_funnel, write_card, write_funnel_csv
from scalediff.filter_rules import (
    DECONTAM_REASONS,
    FILTER_OF_REASON,
    POOL_ORIGINS,
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
    iter_batches,
    parse_scatteritem,
    read_json,
    shard_slice,
    write_json,
    write_rows,
)

log = logging.getLogger(__name__)

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
def iter_row_batches(
    path: str | Path, batch_size: int = 256, columns: list[str] | None = None
) -> Iterator[list[dict[str, Any]]]:
    """Rows of a Parquet file as lists of dicts, one record batch at a time, never failing on a bad value.

    Only ``columns`` are read when given (absent ones are simply missing from the dicts). Each row
    carries ``_row`` (its index in the file); a string cell whose bytes are not UTF-8 becomes None
    and its column is listed in ``_invalid`` so validation can quarantine it.
    """
    if columns is not None:
        names = pq.read_schema(path).names
        columns = [c for c in columns if c in names]
    offset = 0
    for batch in iter_batches(path, batch_size, columns):
        values: dict[str, list[Any]] = {}
        invalid: dict[int, list[str]] = defaultdict(list)
        for name in batch.schema.names:
            col = batch.column(name)
            try:
                values[name] = col.to_pylist()
            except (UnicodeDecodeError, pa.ArrowException):
                decoded = []
                for j, raw in enumerate(col.cast(pa.binary()).to_pylist()):
                    try:
                        decoded.append(None if raw is None else raw.decode("utf-8"))
                    except UnicodeDecodeError:
                        decoded.append(None)
                        invalid[j].append(name)
                values[name] = decoded
        rows = []
        for j in range(batch.num_rows):
            row = {name: vals[j] for name, vals in values.items()}
            row["_row"] = offset + j
            if invalid.get(j):
                row["_invalid"] = invalid[j]
            rows.append(row)
        offset += batch.num_rows
        yield rows


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
class _Sink:
    """Streams candidate and reject rows to their Parquet files in small batches (atomic on success)."""

    def __init__(self, candidates: str, rejects: str, batch: int = 256):
        self.paths = {"candidates": candidates, "rejects": rejects}
        self.schemas = {"candidates": CANDIDATE_SCHEMA, "rejects": FILTER_REJECT_SCHEMA}
        self.buffers: dict[str, list[dict[str, Any]]] = {"candidates": [], "rejects": []}
        self.written = {"candidates": 0, "rejects": 0}
        self.batch = batch

    def __enter__(self) -> _Sink:
        self._stack = contextlib.ExitStack()
        self.writers = {}
        for name, path in self.paths.items():
            tmp = self._stack.enter_context(atomic_path(path))
            self.writers[name] = self._stack.enter_context(pq.ParquetWriter(tmp, self.schemas[name]))
        return self

    def add(self, name: str, row: dict[str, Any]) -> None:
        self.buffers[name].append(row)
        if len(self.buffers[name]) >= self.batch:
            self.flush(name)

    def flush(self, name: str) -> None:
        rows = self.buffers[name]
        if rows:
            self.writers[name].write_table(pa.Table.from_pylist(rows, schema=self.schemas[name]))
            self.written[name] += len(rows)
            rows.clear()

    def __exit__(self, *exc: object) -> bool | None:
        if exc[0] is None:
            for name in self.buffers:
                self.flush(name)
        return self._stack.__exit__(*exc)


CONTAM_KEYS = ("exact", "overlap", "partial")  # per benchmark: problems matched exactly / by share / below it
LISTED_FLAGGED = 1000


class _Tally:
    """Counts of one streaming pass: rows per origin and outcome, independent hits, contamination."""

    def __init__(self, bench: BenchmarkIndex):
        self.rows: dict[str, dict[str, Any]] = {}
        self.hits: dict[str, Counter] = defaultdict(Counter)
        self.bench = bench
        self.contam: dict[str, dict[str, Counter]] = {
            name: {o: Counter() for o in ("generated", "original")} for name in bench.sizes
        }
        # Problems with any benchmark hit (rare) -> the benchmarks that flag them, so each is counted
        # once however many samples it has; the first few flagged ones with their matches for the funnel.
        self.flagged: dict[str, frozenset[str]] = {}
        self.listed: list[dict[str, Any]] = []

    def row(self, v: _Verdict) -> None:
        counts = self.rows.setdefault(v.origin, {"in": 0, "kept": 0, "rejected": Counter(), "quarantined": Counter()})
        counts["in"] += 1
        if v.status == "kept":
            counts["kept"] += 1
            return
        counts[v.status][v.reason] += 1
        if v.status == "rejected":
            self.hits[v.origin].update(
                r for r in v.reasons if FILTER_OF_REASON[r] in ("problem", "solution", "decontamination")
            )
            if v.reason in DECONTAM_REASONS:
                for name in self.flagged[v.id]:
                    self.contam[name][v.origin]["rows_removed"] += 1

    def problem_hit(self, pid: str, origin: str, hit: dict[str, Any]) -> None:
        if pid in self.flagged or not (hit["exact"] or hit["overlap"] or hit["partial"]):
            return
        names = self.flagged[pid] = frozenset(BenchmarkIndex.names(hit))  # most are empty: one shared object
        for key in CONTAM_KEYS:
            for name in hit[key]:
                self.contam[name][origin][key] += 1
        for name in names:
            self.contam[name][origin]["problems_flagged"] += 1
        if names and len(self.listed) < LISTED_FLAGGED:
            self.listed.append({"id": pid, "origin": origin, "matches": hit["matches"]})

    def row_counts(self) -> dict[str, dict[str, Any]]:
        out = {}
        for origin in sorted(set(self.rows) | {"generated", "original"}):
            c = self.rows.get(origin, {"in": 0, "kept": 0, "rejected": {}, "quarantined": {}})
            out[origin] = {**c, "rejected": dict(c["rejected"]), "quarantined": dict(c["quarantined"])}
        return out

    def decontamination(self, policy: str) -> dict[str, Any]:
        keys = [*CONTAM_KEYS, "problems_flagged", "rows_removed"]
        b = self.bench
        return {
            "ngram": b.ngram,
            "min_share": b.min_share,
            "min_contained": b.min_contained,
            "boilerplate_df": b.boilerplate_df,
            "boilerplate_ngrams": b.n_boilerplate,
            "original_policy": policy,
            "benchmark_sizes": self.bench.sizes,
            "benchmark_rows_skipped": self.bench.skipped,
            "benchmarks": {
                name: {o: {k: c.get(k, 0) for k in keys} for o, c in by.items()} for name, by in self.contam.items()
            },
            "problems_flagged": sum(bool(names) for names in self.flagged.values()),
            "flagged": self.listed,  # the first LISTED_FLAGGED: matched benchmark problem and overlapping text
        }


def _scan_keys(solutions: str) -> tuple[set[int], set[str]]:
    """Pre-pass over the id/sample/origin columns only: hashes of (id, sample) keys seen more than
    once, and the ids of original problems the teacher solved (bounded by the pool).

    Keeps 8 bytes per row (a numpy array of key hashes) instead of a set of every key.
    """
    hashes: list[np.ndarray] = []
    originals: set[str] = set()
    for batch in iter_row_batches(solutions, columns=["id", "sample", "origin"]):
        hashes.append(np.fromiter((hash((r.get("id"), r.get("sample"))) for r in batch), np.int64, len(batch)))
        originals.update(r["id"] for r in batch if r.get("origin") == "original" and isinstance(r.get("id"), str))
    if not hashes:
        return set(), originals
    values, counts = np.unique(np.concatenate(hashes), return_counts=True)
    return set(values[counts > 1].tolist()), originals


def row_checks(rows: list[dict[str, Any]], cfg: dict[str, Any]) -> list[tuple[list, list[str], str | None]]:
    """Row-local checks of teacher solution rows: ``(quarantine problems, reject reasons, answer)`` each.

    Pure per-row text and math-verify work with no shared state, so batches can go to worker
    processes; the stateful checks (duplicate keys, gold, decontamination, dedup) stay in the caller.
    """
    out = []
    for row in rows:
        problems = validate_row(row, REQUIRED_SOLUTION_FIELDS, cfg["max_field_chars"])
        if problems:
            out.append((problems, [], None))
            continue
        generated = row["origin"] == "generated"
        reasons = problem_reasons(row["problem"], cfg) if generated else []
        solution, answer = solution_reasons(row, cfg)
        if generated or cfg["original"]["solution_rules"]:
            reasons += solution
        out.append(([], reasons, answer))
    return out


def _ordered_map(fn: Any, items: Iterator[Any], workers: int) -> Iterator[tuple[Any, Any]]:
    """``(item, fn(item))`` in input order, ``workers`` processes at a time, at most 2 batches queued
    per worker (the input is never read ahead further, so memory stays bounded)."""
    if workers <= 1:
        for item in items:
            yield item, fn(item)
        return
    # spawn, not fork: the parent has Arrow's thread pools running, and forking threads is unsafe
    with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        window: deque = deque()
        for item in items:
            window.append((item, pool.submit(fn, item)))
            if len(window) >= 2 * workers:
                head, future = window.popleft()
                yield head, future.result()
        while window:
            head, future = window.popleft()
            yield head, future.result()


def run_rules(
    solutions: str,
    pool: str,
    benchmarks: dict[str, dict[str, Any]],
    raw_cfg: dict[str, Any],
    candidates_path: str,
    rejects_path: str,
    stats_path: str,
    workers: int = 1,
) -> dict[str, Any]:
    """Rule-based checks, decontamination and dedup in one streaming pass over the teacher solutions.

    Memory holds one batch of rows, the benchmark index, the dedup signatures (one per kept
    generated problem and per pool problem), the pool's gold answers of distilled originals and
    8 bytes per row for duplicate keys; never the solutions themselves.
    """
    cfg = with_defaults(raw_cfg)
    ocfg = cfg["original"]
    max_chars = cfg["max_field_chars"]
    bench = load_benchmarks(benchmarks, cfg["decontamination"])
    log.info("benchmarks indexed: %s", bench.sizes)
    tally = _Tally(bench)

    # pass 0: key hashes and distilled originals (id columns only)
    dup_hashes, distilled_ids = _scan_keys(solutions)

    # pass 1: the pool's problems (no solutions read) -> dedup reference, gold answers
    dedup = ProblemDeduper(cfg["dedup"])
    gold: dict[str, str | None] = {}
    need_gold = bool(distilled_ids) and ocfg["check_gold"]
    for batch in iter_row_batches(pool, columns=["id", "problem", "answer"]):
        for row in batch:
            pid, problem = _text(row.get("id")), _text(row.get("problem"))
            if pid and problem and problem.strip():
                dedup.add_original(pid, problem)
                if need_gold and pid in distilled_ids:
                    gold[pid] = _text(row.get("answer"))
    log.info("pool indexed for dedup: %d problems", dedup.n_originals)

    seen_dup_keys: set[tuple[str, int]] = set()
    distilled: set[str] = set()
    pool_without_solution = 0
    last_hit: tuple[str | None, dict[str, Any] | None] = (None, None)

    def decontaminate(v: _Verdict, problem: str) -> None:
        nonlocal last_hit
        if last_hit[0] != v.id:  # samples of one problem are adjacent: check each problem once
            last_hit = (v.id, bench.check(problem))
        hit = last_hit[1]
        tally.problem_hit(v.id, v.origin, hit)
        verdict = BenchmarkIndex.verdict(hit)
        if verdict and (v.origin == "generated" or ocfg["decontaminate"] == "remove"):
            v.reject(*verdict)

    n_solutions = n_pool = 0
    with _Sink(candidates_path, rejects_path) as sink:
        # pass 2: teacher solutions, every check, streamed; the row-local checks run in `workers` processes
        checked = _ordered_map(partial(row_checks, cfg=cfg), iter_row_batches(solutions), workers)
        started = last_log = time.monotonic()
        for batch, results in checked:
            for row, (problems, row_reasons, v_answer) in zip(batch, results, strict=True):
                n_solutions += 1
                v = _Verdict("solutions", row)
                if not problems and hash((row["id"], row["sample"])) in dup_hashes:
                    key = (row["id"], int(row["sample"]))
                    if key in seen_dup_keys:
                        problems = [("duplicate_key", "id,sample")]
                    seen_dup_keys.add(key)
                if problems:
                    v.quarantine(problems, row)
                else:
                    generated = v.origin == "generated"
                    v.answer = v_answer
                    for reason in row_reasons:
                        v.reject(reason)
                    if not generated and ocfg["check_gold"] and gold_mismatch(v.answer, gold.get(v.id)):
                        v.reject("gold_mismatch", f"gold {gold[v.id]!r}, teacher {v.answer!r}")
                    decontaminate(v, row["problem"])
                    if not generated and v.status == "kept":
                        # only a teacher solution that passed supersedes the pool's own one
                        distilled.add(v.id)
                    if generated and v.status == "kept":
                        dropped = dedup.check_generated(v.id, row["problem"])
                        if dropped:
                            v.reject(dropped[0], f"of {dropped[1]}")
                _emit(sink, tally, v, row)
            if time.monotonic() - last_log > 30:  # progress for long runs, not a line per batch
                last_log = time.monotonic()
                rate = n_solutions / (last_log - started)
                log.info("filter rules: %d solution rows checked (%.0f rows/s)", n_solutions, rate)

        # pass 3: pool rows that ship their own solution (used as-is unless superseded/contaminated)
        for batch in iter_row_batches(pool):
            for row in batch:
                solution = row.get("solution")
                undecodable = "solution" in row.get("_invalid", ())  # read as None, but a solution is there
                if (solution is None and not undecodable) or (isinstance(solution, str) and not solution.strip()):
                    pool_without_solution += 1  # the distill stage solves these; they are not inputs here
                    continue
                n_pool += 1
                v = _Verdict("pool", row)
                problems = validate_row(row, REQUIRED_POOL_FIELDS, max_chars, POOL_ORIGINS)
                if problems:
                    v.quarantine(problems, row)
                else:
                    if v.id in distilled:
                        v.reject("superseded_by_distilled")
                    decontaminate(v, row["problem"])
                _emit(sink, tally, v, row)
    kept = sink.written["candidates"]
    rows = tally.row_counts()
    stats = {
        "inputs": {
            "solutions": n_solutions,
            "pool_with_solution": n_pool,
            "pool_without_solution": pool_without_solution,
        },
        "rows": rows,
        "hits": {o: dict(c) for o, c in tally.hits.items()},
        "problems_kept": distinct_ids(candidates_path),
        "decontamination": tally.decontamination(ocfg["decontaminate"]),
        "candidates": kept,
        "dedup": {"pool_problems": dedup.n_originals, "generated_problems_kept": dedup.n_generated},
    }
    if kept != sum(c["kept"] for c in rows.values()) or n_solutions + n_pool != sum(c["in"] for c in rows.values()):
        raise RuntimeError(f"accounting: wrote {kept} candidates for {n_solutions + n_pool} input rows")
    write_json(stats, stats_path)
    for origin, c in rows.items():
        log.info(
            "filter rules, %s rows: in %d, kept %d, rejected %s, quarantined %s",
            origin,
            c["in"],
            c["kept"],
            c["rejected"],
            c["quarantined"],
        )
    log.info(
        "filter rules: %d inputs (%d solutions, %d pool rows with a solution) -> %d candidates",
        n_solutions + n_pool,
        n_solutions,
        n_pool,
        kept,
    )
    return stats


def _emit(sink: _Sink, tally: _Tally, v: _Verdict, row: dict[str, Any]) -> None:
    """Write one row's outcome: the candidate row when kept, its reject row otherwise."""
    tally.row(v)
    if v.status != "kept":
        sink.add("rejects", v.reject_row())
        return
    if v.file == "pool":
        rec = {"solution": row["solution"], "answer": _text(row.get("answer")), "sample": None, "solution_tokens": None}
    else:
        rec = {
            "solution": row["completion"],
            "answer": v.answer,
            "sample": int(row["sample"]),
            "solution_tokens": int(row["completion_tokens"]),
        }
    sink.add(
        "candidates",
        {
            **rec,
            "problem": row["problem"],
            "id": row["id"],
            "origin": row["origin"],
            "source": row["source"],
            "file": v.file,
            "row": v.row,
        },
    )


def distinct_ids(path: str) -> dict[str, int]:
    """Distinct ``id`` per ``origin`` of a Parquet file, counted in Arrow (ids only, never the texts)."""
    table = pq.read_table(path, columns=["id", "origin"])
    if not table.num_rows:
        return {}
    grouped = table.group_by("origin").aggregate([("id", "count_distinct")])
    return dict(zip(grouped["origin"].to_pylist(), grouped["id_count_distinct"].to_pylist(), strict=True))


# ============================================================================ model-based
def student_drops(agree: int, k: int, rule: str) -> bool:
    """``any``: one of the k student answers matches the teacher's; ``majority``: more than half do."""
    return agree >= 1 if rule == "any" else agree * 2 > k


def run_model_shard(
    candidates: str, model: str, shard: int, n_shards: int, settings: dict[str, Any], output: str
) -> dict[str, Any]:
    """Student verdicts for one shard of the generated candidates (whole problems per shard)."""

    mb = with_defaults(settings["filter"])["model_based"]
    # Whole problems per shard, chosen in Arrow: only this shard's rows become Python objects.
    ids = pq.read_table(candidates, columns=["id"], filters=[("origin", "=", "generated")])["id"].unique()
    part = shard_slice(len(ids), shard, n_shards)
    mine = ids.slice(part.start, part.stop - part.start)
    table = pq.read_table(candidates, columns=["id", "sample", "problem", "answer", "origin"])
    rows = table.filter(pc.and_(pc.equal(table["origin"], "generated"), pc.is_in(table["id"], mine))).to_pylist()
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
            identity={"k": k},  # greedy rows repeat one sample k times
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


def run_gather(
    candidates: str,
    rules_rejects: str,
    rules_stats: str,
    verdict_paths: list[str],
    raw_cfg: dict[str, Any],
    out: dict[str, str],
) -> dict[str, Any]:
    """Apply the model-based verdicts while streaming the candidates into the dataset splits.

    Verdict shards hold whole problems in candidate order, so they are consumed alongside the
    candidates; a verdict that arrives early waits in a small buffer until its row comes.
    """
    cfg = with_defaults(raw_cfg)
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
    funnel = build_funnel(stats, model, kept, problems_kept, cfg)
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
        run_gather(args.candidates, args.rules_rejects, args.rules_stats, args.verdicts, settings["filter"], outputs)


if __name__ == "__main__":
    main()
