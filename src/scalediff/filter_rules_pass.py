"""filter rules pass: rule-based checks, decontamination and dedup over the teacher solutions and the
pool's own solutions -> ``candidates.parquet``, ``rejects`` and ``stats`` (``python -m scalediff.filter rules``).

Scale (paper: ~2M rows of 10-30K-token solutions, tens of GB): one streaming pass. Every row-local step
runs in ``workers`` processes that read their own row groups -- the text and math-verify rules
(``filter_rules``), the gold-answer check, the benchmark lookup (``decontam``) and what dedup looks up
(``dedup``'s probe) -- and hand back their verdicts plus the rows that passed as an Arrow file. The main
process takes only the decisions that depend on earlier rows (duplicate keys, the LSH query/insert,
superseded pool rows, contamination counts) and copies the kept rows into the candidates in Arrow; what it
keeps grows with the dedup index (per problem) and 8 bytes per row for the duplicate-key check.
``bench/filter_scale.py`` and ``bench/paper_scale.py`` measure it.

Accounting: every input row (a teacher sample ``(id, sample)``, or a pool row with its own solution) ends
in exactly one of kept / rejected(reason) / quarantined(reason); the pass checks this identity and fails
loudly if it does not hold.
"""

from __future__ import annotations

import contextlib
import json
import logging
import multiprocessing
import os
import queue
import tempfile
import threading
import time
from collections import Counter, defaultdict, deque
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from scalediff.decontam import BenchmarkIndex
from scalediff.dedup import ProblemDeduper
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
from scalediff.records import ROW_GROUP_ROWS, atomic_path, iter_batches, write_json

log = logging.getLogger(__name__)

REASON_ORDER = tuple(FILTER_OF_REASON)  # quarantine < superseded < problem < solution < ... < model
_RANK = {r: i for i, r in enumerate(REASON_ORDER)}

# The released dataset layout (filter_gather writes it); a candidate also says where its row came from.
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
        yield _batch_rows(batch, offset)
        offset += batch.num_rows


def _batch_rows(batch: pa.RecordBatch, offset: int) -> list[dict[str, Any]]:
    """One record batch as dict rows (``_row`` from ``offset``; non-UTF-8 cells None, listed in ``_invalid``)."""
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
    return rows


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

    def quarantine(self, problems: list[tuple[str, str]], raw: str) -> None:
        self.status = "quarantined"
        self.reasons = [r for r, _ in problems]
        self.field = ",".join(f for _, f in problems)
        self.raw = raw

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
    """Streams candidates (Arrow tables, row groups of about ``ROW_GROUP_ROWS``) and reject rows (dicts)
    to their Parquet files, atomically on success.

    Candidates are encoded and compressed in a writer thread (Arrow releases the GIL there, ~0.1 ms per
    paper-length row), so the main thread goes on deciding rows meanwhile.
    """

    def __init__(self, candidates: str, rejects: str, batch: int = 256):
        self.paths = {"candidates": candidates, "rejects": rejects}
        self.written = {"candidates": 0, "rejects": 0}
        self._tables: list[pa.Table] = []
        self._buffered = 0
        self._rejects: list[dict[str, Any]] = []
        self.batch = batch
        self._queue: queue.Queue[pa.Table | None] = queue.Queue(maxsize=2)
        self._error: BaseException | None = None

    def __enter__(self) -> _Sink:
        self._stack = contextlib.ExitStack()
        schemas = {"candidates": CANDIDATE_SCHEMA, "rejects": FILTER_REJECT_SCHEMA}
        # no dictionary attempt on the long texts (distinct per row): ~20% less encoding time
        dictionary = {"candidates": [n for n in CANDIDATE_SCHEMA.names if n not in ("problem", "solution")]}
        self.writers = {}
        for name, path in self.paths.items():
            tmp = self._stack.enter_context(atomic_path(path))
            writer = pq.ParquetWriter(tmp, schemas[name], use_dictionary=dictionary.get(name, True))
            self.writers[name] = self._stack.enter_context(writer)
        self._thread = threading.Thread(target=self._write_candidates, name="filter-candidates", daemon=True)
        self._thread.start()
        return self

    def candidates(self, table: pa.Table, rows: list[int]) -> None:
        """Add ``rows`` (ascending) of ``table``: zero-copy slices, copied once, by the Parquet writer."""
        for a, b in _runs(rows):
            self._tables.append(table.slice(a, b - a))
        self._buffered += len(rows)
        if self._buffered >= ROW_GROUP_ROWS:
            self._flush_candidates()

    def reject(self, row: dict[str, Any]) -> None:
        self._rejects.append(row)
        if len(self._rejects) >= self.batch:
            self._flush_rejects()

    def _write_candidates(self) -> None:
        while (table := self._queue.get()) is not None:
            if self._error is None:
                try:
                    self.writers["candidates"].write_table(table)
                except BaseException as exc:  # re-raised in the main thread
                    self._error = exc

    def _flush_candidates(self) -> None:
        if self._error is not None:
            raise self._error
        if self._tables:
            self._queue.put(pa.concat_tables(self._tables))
            self.written["candidates"] += self._buffered
            self._tables, self._buffered = [], 0

    def _flush_rejects(self) -> None:
        if self._rejects:
            self.writers["rejects"].write_table(pa.Table.from_pylist(self._rejects, schema=FILTER_REJECT_SCHEMA))
            self.written["rejects"] += len(self._rejects)
            self._rejects = []

    def __exit__(self, *exc: object) -> bool | None:
        error = exc[1] if exc[0] is not None else None
        if error is None:
            try:
                self._flush_candidates()
                self._flush_rejects()
            except BaseException as flush_error:
                error = flush_error
        self._queue.put(None)
        self._thread.join()
        error = error or self._error
        if error is None:
            return self._stack.__exit__(None, None, None)
        self._stack.__exit__(type(error), error, error.__traceback__)  # discards both files
        if error is exc[1]:
            return None  # the caller's exception propagates
        raise error


# per benchmark: problems matched exactly / by share / as its words with other numbers / below the shares
CONTAM_KEYS = ("exact", "overlap", "numbers", "partial")
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
        if pid in self.flagged or not any(hit[key] for key in CONTAM_KEYS):
            return
        names = self.flagged[pid] = frozenset(BenchmarkIndex.names(hit))  # most are empty: one shared object
        for key in CONTAM_KEYS:
            for name in hit[key]:
                self.contam[name][origin][key] += 1
        for name in names:
            self.contam[name][origin]["problems_flagged"] += 1
        if (names or hit["numbers"]) and len(self.listed) < LISTED_FLAGGED:  # reported-only matches too
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
            "numbers_changed": b.numbers_changed,
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


# ---------------------------------------------------------------------------- worker side
# Every row-local check runs in worker processes that read their own rows from the Parquet file: the
# text and math-verify rules, the gold-answer check, the benchmark lookup (decontamination) and the
# MinHash signature dedup needs. The main process only makes the decisions that depend on earlier
# rows (duplicate keys, the LSH insert/query, superseded pool rows, contamination counts) and copies
# the kept rows' Arrow columns into the candidates, so it never turns a solution text into Python.

TASK_ROWS = ROW_GROUP_ROWS  # rows per worker task: one row group of the pipeline's files


class _Task(NamedTuple):
    """A slice ``lo:hi`` of one row group of ``path``, checked by one worker."""

    kind: str  # pool_problems | solutions | pool
    path: str
    group: int
    offset: int  # file row of the group's first row
    lo: int
    hi: int
    gold: dict[str, Any] | None = None  # solutions: the pool's answers of this slice's distilled originals


class _Checked(NamedTuple):
    """What a worker found for one row."""

    meta: dict[str, Any]  # id, sample, origin, source and _row: what _Verdict reads
    problems: list[tuple[str, str]]  # quarantine reasons (reason, field)
    raw: str  # the row, shortened, for a quarantine record
    reasons: list[str]  # row-local reject reasons (problem, solution, gold)
    detail: dict[str, str]
    answer: str | None
    hit: dict[str, Any] | None  # BenchmarkIndex.check of the row's problem; None when quarantined
    problem: str | None  # generated rows kept so far: the text dedup keys on
    probe: Any  # ... and what dedup looks up (exact key, MinHash signature, band keys)
    candidate: int  # the row in the task's candidate table, -1 when rejected here


_WORKER: dict[str, Any] = {}  # per process: cfg, the benchmark index, the MinHash signer


def _init_worker(state: dict[str, Any]) -> None:
    _WORKER.clear()
    _WORKER.update(state)
    dcfg = state["cfg"]["dedup"]
    _WORKER["signer"] = ProblemDeduper(dcfg).gen if dcfg.get("enabled", True) else None


def _tasks(path: str, kind: str) -> Iterator[_Task]:
    meta = pq.ParquetFile(path).metadata
    offset = 0
    for g in range(meta.num_row_groups):
        n = meta.row_group(g).num_rows
        for lo in range(0, n, TASK_ROWS):
            yield _Task(kind, path, g, offset, lo, min(n, lo + TASK_ROWS))
        offset += n


def _solution_tasks(path: str, gold: dict[str, str | None]) -> Iterator[_Task]:
    """Tasks over the teacher solutions, each with the gold answers its original rows need (read from
    the slice's id column, so no worker holds the pool's answers)."""
    pf = pq.ParquetFile(path, pre_buffer=False)
    read_ids = bool(gold) and "id" in pf.schema_arrow.names
    for task in _tasks(path, "solutions"):
        if read_ids:
            ids = pf.read_row_group(task.group, columns=["id"]).column(0).slice(task.lo, task.hi - task.lo)
            try:
                values = ids.to_pylist()
            except (UnicodeDecodeError, pa.ArrowException):  # quarantined rows: no gold needed
                values = [
                    None if b is None else b.decode("utf-8", "replace") for b in ids.cast(pa.binary()).to_pylist()
                ]
            task = task._replace(gold={i: gold[i] for i in values if isinstance(i, str) and i in gold})
        yield task


def _task_rows(task: _Task, columns: list[str] | None = None) -> Iterator[tuple[pa.RecordBatch, list[dict[str, Any]]]]:
    """The task's rows, a record batch at a time, with the same dict rows as ``iter_row_batches``."""
    pf = pq.ParquetFile(task.path, pre_buffer=False)
    if columns is not None:
        columns = [c for c in columns if c in pf.schema_arrow.names]
    pos = 0
    for batch in pf.iter_batches(batch_size=256, row_groups=[task.group], columns=columns):
        lo, hi = max(task.lo - pos, 0), min(task.hi - pos, batch.num_rows)
        if lo < hi:
            part = batch.slice(lo, hi - lo)
            yield part, _batch_rows(part, task.offset + pos + lo)
        pos += batch.num_rows
        if pos >= task.hi:
            break


def _run_task(task: _Task) -> Any:
    return {"pool_problems": _pool_problems, "solutions": _check_solutions, "pool": _check_pool}[task.kind](task)


def _pool_problems(task: _Task) -> list[tuple[str, str, str | None, Any]]:
    """Pass 1: ``(id, problem, answer, dedup probe)`` of the pool's usable problems."""
    signer = _WORKER["signer"]
    out = []
    for _, rows in _task_rows(task, ["id", "problem", "answer"]):
        for row in rows:
            pid, problem = _text(row.get("id")), _text(row.get("problem"))
            if pid and problem and problem.strip():
                out.append(
                    (pid, problem, _text(row.get("answer")), signer.probe(problem) if signer is not None else None)
                )
    return out


class _Checker:
    """Row-local checks of one task: benchmark lookups shared by adjacent rows of one problem, and the
    candidate table of the rows that passed (their big text column copied in Arrow)."""

    def __init__(self, file: str, text_column: str):
        self.file, self.text_column = file, text_column
        self.cfg, self.bench, self.signer = _WORKER["cfg"], _WORKER["bench"], _WORKER["signer"]
        self.entries: list[_Checked] = []
        self.tables: list[pa.Table] = []
        self._last: tuple[str | None, dict[str, Any] | None] = (None, None)
        self._picked: list[int] = []
        self._cand: dict[str, list[Any]] = defaultdict(list)
        self._n_cand = 0

    def hit(self, problem: str) -> dict[str, Any]:
        if self._last[0] != problem:  # samples of one problem are adjacent
            self._last = (problem, self.bench.check(problem))
        return self._last[1]

    def add(self, row: dict[str, Any], problems: list, reasons: list[str] | None = None, **found: Any) -> None:
        meta = {k: row.get(k) for k in ("id", "sample", "origin", "source", "_row")}
        raw = _raw(row)
        if problems:
            self.entries.append(_Checked(meta, problems, raw, [], {}, None, None, None, None, -1))
            return
        reasons = reasons or []
        hit = self.hit(row["problem"])
        candidate, problem, probe = -1, None, None
        if not reasons:
            candidate, self._n_cand = self._n_cand, self._n_cand + 1
            self._picked.append(row["_row"])
            for k, v in found.pop("columns").items():
                self._cand[k].append(v)
            if row["origin"] == "generated" and self.signer is not None:
                problem, probe = row["problem"], self.signer.probe(row["problem"])
        self.entries.append(
            _Checked(
                meta, [], raw, reasons, found.get("detail", {}), found.get("answer"), hit, problem, probe, candidate
            )
        )

    def end_batch(self, batch: pa.RecordBatch, first_row: int) -> None:
        """The candidate rows of this batch as a table (the text column taken from ``batch``)."""
        if not self._picked:
            return
        column = batch.column(self.text_column)
        # copied run by run (Arrow's take is slow on long strings; a slice would pickle the whole batch)
        texts = pa.concat_arrays([column.slice(a - first_row, b - a) for a, b in _runs(self._picked)])
        if texts.type != pa.string():
            texts = texts.cast(pa.string())
        cols = {**self._cand, "solution": texts, "file": [self.file] * len(self._picked), "row": self._picked}
        self.tables.append(pa.Table.from_pydict(cols, schema=CANDIDATE_SCHEMA))
        self._picked, self._cand = [], defaultdict(list)

    def result(self, task: _Task) -> tuple[list[_Checked], str]:
        """The entries, and the candidate table as an Arrow file in the spill folder: the main process
        maps it instead of unpickling ~50 KB per paper-length row."""
        path = os.path.join(_WORKER["spill"], f"{task.kind}-{task.group}-{task.lo}.arrow")
        with pa.OSFile(path, "wb") as out, pa.ipc.new_file(out, CANDIDATE_SCHEMA) as writer:
            for table in self.tables:
                writer.write_table(table)
        return self.entries, path


def _check_solutions(task: _Task) -> tuple[list[_Checked], str]:
    """Pass 2: every row-local check of teacher solution rows."""
    checker = _Checker("solutions", "completion")
    cfg, gold = checker.cfg, task.gold or {}
    ocfg = cfg["original"]
    for batch, rows in _task_rows(task):
        for row in rows:
            problems = validate_row(row, REQUIRED_SOLUTION_FIELDS, cfg["max_field_chars"])
            if problems:
                checker.add(row, problems)
                continue
            generated = row["origin"] == "generated"
            reasons = problem_reasons(row["problem"], cfg) if generated else []
            solution, answer = solution_reasons(row, cfg)
            if generated or ocfg["solution_rules"]:
                reasons += solution
            detail = {}
            if not generated and ocfg["check_gold"] and gold_mismatch(answer, gold.get(row["id"])):
                reasons.append("gold_mismatch")
                detail["gold_mismatch"] = f"gold {gold[row['id']]!r}, teacher {answer!r}"
            columns = {
                "problem": row["problem"],
                "answer": answer,
                "id": row["id"],
                "origin": row["origin"],
                "source": row["source"],
                "sample": int(row["sample"]),
                "solution_tokens": int(row["completion_tokens"]),
            }
            checker.add(row, [], reasons, detail=detail, answer=answer, columns=columns)
        checker.end_batch(batch, rows[0]["_row"])
    return checker.result(task)


def _check_pool(task: _Task) -> tuple[list[_Checked], str, int]:
    """Pass 3: pool rows that ship a solution (``+ count`` of those without one, which are no inputs)."""
    checker = _Checker("pool", "solution")
    without_solution = 0
    for batch, rows in _task_rows(task):
        for row in rows:
            solution = row.get("solution")
            undecodable = "solution" in row.get("_invalid", ())  # read as None, but a solution is there
            if (solution is None and not undecodable) or (isinstance(solution, str) and not solution.strip()):
                without_solution += 1  # the distill stage solves these
                continue
            problems = validate_row(row, REQUIRED_POOL_FIELDS, checker.cfg["max_field_chars"], POOL_ORIGINS)
            if problems:
                checker.add(row, problems)
                continue
            columns = {
                "problem": row["problem"],
                "answer": _text(row.get("answer")),
                "id": row["id"],
                "origin": row["origin"],
                "source": row["source"],
                "sample": None,
                "solution_tokens": None,
            }
            checker.add(row, [], columns=columns)
        checker.end_batch(batch, rows[0]["_row"])
    entries, path = checker.result(task)
    return entries, path, without_solution


def _mapped(path: str) -> pa.Table:
    """A worker's candidate file, memory-mapped (zero-copy) and unlinked at once (the mapping stays)."""
    with pa.memory_map(path) as source:
        table = pa.ipc.open_file(source).read_all()
    os.unlink(path)
    return table


def _runs(rows: list[int]) -> Iterator[tuple[int, int]]:
    """``[start, stop)`` of each run of consecutive numbers in ascending ``rows``."""
    start = prev = None
    for r in rows:
        if start is None:
            start = r
        elif r != prev + 1:
            yield start, prev + 1
            start = r
        prev = r
    if start is not None:
        yield start, prev + 1


def _ordered_map(pool: ProcessPoolExecutor | None, items: Iterator[_Task], window: int) -> Iterator[Any]:
    """``_run_task(item)`` in input order; with a pool at most ``window`` tasks queued or done and not yet
    consumed (the input is never read ahead further, so memory stays bounded)."""
    if pool is None:
        for item in items:
            yield _run_task(item)
        return
    queued: deque = deque()
    for item in items:
        queued.append(pool.submit(_run_task, item))
        if len(queued) >= window:
            yield queued.popleft().result()
    while queued:
        yield queued.popleft().result()


@contextlib.contextmanager
def _worker_pool(workers: int, state: dict[str, Any]) -> Iterator[ProcessPoolExecutor | None]:
    """``workers`` processes each holding ``state`` (built once per process), or None: run in-process."""
    if workers <= 1:
        _init_worker(state)
        try:
            yield None
        finally:
            _WORKER.clear()
        return
    # spawn, not fork: the parent has Arrow's thread pools running, and forking threads is unsafe
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_worker, initargs=(state,)) as pool:
        yield pool


# ---------------------------------------------------------------------------- main process
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

    Memory holds a window of task results (two per worker; their candidate rows wait as Arrow files in
    $TMPDIR, ~50 MB per 1,024 paper-length rows, mapped when written), the benchmark index, the dedup
    index (compact, per kept generated problem and per pool problem), the pool's gold answers of
    distilled originals and 8 bytes per row for duplicate keys; never the whole solutions.
    """
    cfg = with_defaults(raw_cfg)
    ocfg = cfg["original"]
    bench = load_benchmarks(benchmarks, cfg["decontamination"])
    bench.n_boilerplate  # noqa: B018 -- build the index once here, not in every worker
    log.info("benchmarks indexed: %s", bench.sizes)
    tally = _Tally(bench)

    # pass 0: key hashes and distilled originals (id columns only)
    dup_hashes, distilled_ids = _scan_keys(solutions)

    dedup = ProblemDeduper(cfg["dedup"])
    gold: dict[str, str | None] = {}
    need_gold = bool(distilled_ids) and ocfg["check_gold"]
    seen_dup_keys: set[tuple[str, int]] = set()
    distilled: set[str] = set()
    pool_without_solution = 0
    last_hit: tuple[str | None, dict[str, Any] | None] = (None, None)

    def decontaminate(v: _Verdict, hit: dict[str, Any]) -> None:
        nonlocal last_hit
        if last_hit[0] != v.id:  # samples of one problem are adjacent: the first decides for all
            last_hit = (v.id, hit)
        hit = last_hit[1]
        tally.problem_hit(v.id, v.origin, hit)
        verdict = BenchmarkIndex.verdict(hit)
        if verdict and (v.origin == "generated" or ocfg["decontaminate"] == "remove"):
            v.reject(*verdict)

    def emit(v: _Verdict, e: _Checked, keep: list[int]) -> None:
        tally.row(v)
        if v.status == "kept":
            keep.append(e.candidate)
        else:
            sink.reject(v.reject_row())

    n_solutions = n_pool = 0
    window = 2 * workers  # tasks in flight: two per worker
    with (
        tempfile.TemporaryDirectory(prefix="scalediff-filter-") as spill,
        _worker_pool(workers, {"cfg": cfg, "bench": bench, "spill": spill}) as procs,
        _Sink(candidates_path, rejects_path) as sink,
    ):
        # pass 1: the pool's problems (no solutions read) -> dedup reference, gold answers
        for found in _ordered_map(procs, _tasks(pool, "pool_problems"), window):
            for pid, problem, answer, probe in found:
                dedup.add_original(pid, problem, probe)
                if need_gold and pid in distilled_ids:
                    gold[pid] = answer
        log.info("pool indexed for dedup: %d problems", dedup.n_originals)

        # pass 2: teacher solutions, every check, streamed
        started = last_log = time.monotonic()
        for entries, path in _ordered_map(procs, _solution_tasks(solutions, gold), window):
            table = _mapped(path)
            keep: list[int] = []
            for e in entries:
                n_solutions += 1
                v = _Verdict("solutions", e.meta)
                problems = e.problems
                if not problems and hash((v.id, e.meta["sample"])) in dup_hashes:
                    key = (v.id, int(e.meta["sample"]))
                    if key in seen_dup_keys:
                        problems = [("duplicate_key", "id,sample")]
                    seen_dup_keys.add(key)
                if problems:
                    v.quarantine(problems, e.raw)
                else:
                    generated = v.origin == "generated"
                    v.answer = e.answer
                    for reason in e.reasons:
                        v.reject(reason, e.detail.get(reason))
                    decontaminate(v, e.hit)
                    if not generated and v.status == "kept":
                        # only a teacher solution that passed supersedes the pool's own one
                        distilled.add(v.id)
                    if generated and v.status == "kept":
                        dropped = dedup.check_generated(v.id, e.problem, probe=e.probe)
                        if dropped:
                            v.reject(dropped[0], f"of {dropped[1]}")
                emit(v, e, keep)
            sink.candidates(table, keep)
            if time.monotonic() - last_log > 30:  # progress for long runs, not a line per batch
                last_log = time.monotonic()
                rate = n_solutions / (last_log - started)
                log.info("filter rules: %d solution rows checked (%.0f rows/s)", n_solutions, rate)

        # pass 3: pool rows that ship their own solution (used as-is unless superseded/contaminated)
        for entries, path, without_solution in _ordered_map(procs, _tasks(pool, "pool"), window):
            table = _mapped(path)
            pool_without_solution += without_solution
            keep = []
            for e in entries:
                n_pool += 1
                v = _Verdict("pool", e.meta)
                if e.problems:
                    v.quarantine(e.problems, e.raw)
                else:
                    if v.id in distilled:
                        v.reject("superseded_by_distilled")
                    decontaminate(v, e.hit)
                emit(v, e, keep)
            sink.candidates(table, keep)
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


def distinct_ids(path: str) -> dict[str, int]:
    """Distinct ``id`` per ``origin`` of a Parquet file, counted in Arrow (ids only, never the texts)."""
    table = pq.read_table(path, columns=["id", "origin"])
    if not table.num_rows:
        return {}
    grouped = table.group_by("origin").aggregate([("id", "count_distinct")])
    return dict(zip(grouped["origin"].to_pylist(), grouped["id_count_distinct"].to_pylist(), strict=True))
