"""ingest: read the problem pool into the record schema with stable content-hash ids.

Accepts AM-Qwen3-Distilled chat records (``messages: [{role, content}]`` or
``conversations: [{from, value}]``; the problem is the first user turn, the solution the first
assistant turn) and flat records whose fields a config mapping names. Every unreadable row goes
to the rejects file with file, line, field and reason; nothing is skipped silently.

The pool streams: rows are read one line (or Hub row) at a time and written as Parquet row groups
as they come, so memory does not grow with the pool (558K paper-length rows). The duplicate check
keeps one 64-bit id digest per problem, never the text. A sampled source (``sample:``) is staged
to a temporary JSONL with one offset per row and read back in the sampled order, which reproduces
``random.Random(seed).sample`` over the whole source exactly. A pool file that cannot be read, or
that ends mid-line (truncated), stops the step with an error naming it; outputs are written to
temporary files and moved into place only when the whole pool has been read.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import random
import tempfile
from array import array
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from scalediff import cli
from scalediff.records import PROBLEM_SCHEMA, REJECT_SCHEMA, ROW_GROUP_ROWS, atomic_path, problem_id, write_json

log = logging.getLogger(__name__)

# Longest field accepted, in characters: a "problem" longer than this is not a competition problem
# (and would not fit any prompt); a solution is capped at ~250K tokens, far above the paper's 32K.
FIELD_LIMITS = {"problem": 65_536, "solution": 1_048_576, "answer": 65_536}
# Longest JSONL line read: longer lines are quarantined without ever being held in memory whole.
MAX_LINE_BYTES = 32 * 2**20
RAW_CHARS = 2000  # of a bad row kept in the rejects file
LOG_EVERY = 100_000


class RowError(ValueError):
    def __init__(self, field: str, reason: str):
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


class IngestError(RuntimeError):
    """A pool file as a whole cannot be used (unreadable, truncated): the step stops, no pool is written."""


def _text(value: Any, field: str, required: bool, kind: str) -> str | None:
    if value is None or (isinstance(value, float) and value != value):  # None or NaN
        if required:
            raise RowError(field, "missing")
        return None
    if not isinstance(value, str):
        if required or not isinstance(value, (int, float)):
            raise RowError(field, f"not a string ({type(value).__name__})")
        value = str(value)
    if required and not value.strip():
        raise RowError(field, "empty")
    if len(value) > FIELD_LIMITS[kind]:
        raise RowError(field, f"oversize: {len(value):,} characters, limit {FIELD_LIMITS[kind]:,}")
    if not value.isascii():  # JSON escapes can produce lone surrogates, which Parquet cannot store
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise RowError(field, f"invalid Unicode: lone surrogate at character {exc.start}") from None
    return value


def _chat_turns(record: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    """(role, text, info) turns from either chat layout (``info``: the turn's metadata dict, if any)."""
    if isinstance(record.get("messages"), list):
        return [
            (str(m.get("role")), m.get("content"), m.get("info")) for m in record["messages"] if isinstance(m, dict)
        ]
    if isinstance(record.get("conversations"), list):
        roles = {"human": "user", "gpt": "assistant"}
        return [
            (roles.get(str(m.get("from")), str(m.get("from"))), m.get("value"), m.get("info"))
            for m in record["conversations"]
            if isinstance(m, dict)
        ]
    raise RowError("messages", "neither `messages` nor `conversations` is a list")


def _reference_answer(record: dict[str, Any], turns: list[tuple[str, Any, Any]]) -> Any:
    """The first turn-level ``info.reference_answer`` (AM-Qwen3-Distilled keeps it in the user turn's
    ``info`` of its ``conversations``), else a top-level ``answer``."""
    for _, _, info in turns:
        if isinstance(info, dict) and info.get("reference_answer") is not None:
            return info["reference_answer"]
    return record.get("answer")


def to_record(raw: dict[str, Any], source: dict[str, Any]) -> dict[str, Any]:
    """Map one parsed JSON object to the problem schema; raises RowError naming the field."""
    if not isinstance(raw, dict):
        raise RowError("<row>", f"not a JSON object ({type(raw).__name__})")
    cols = {"problem": "problem", "solution": "solution", "answer": "answer", **(source.get("columns") or {})}
    if source["format"] == "chat":
        turns = _chat_turns(raw)
        users = [t for r, t, _ in turns if r == "user"]
        if not users:
            raise RowError("messages", "no user turn")
        problem = _text(users[0], "messages[0].content", True, "problem")
        assistants = [t for r, t, _ in turns if r == "assistant"]
        solution = _text(assistants[0], "assistant.content", False, "solution") if assistants else None
        answer = _text(_reference_answer(raw, turns), "answer", False, "answer")
    else:
        problem = _text(raw.get(cols["problem"]), cols["problem"], True, "problem")
        solution = _text(raw.get(cols["solution"]), cols["solution"], False, "solution")
        answer = _text(raw.get(cols["answer"]), cols["answer"], False, "answer")
    return {
        "id": problem_id(problem),
        "problem": problem,
        "solution": solution,
        "answer": answer,
        "origin": "original",
        "source": source["name"],
    }


# One row of a source: (its line or row number, the record or None, the reject or None).
Row = tuple[int, dict[str, Any] | None, dict[str, Any] | None]


def _source_file(source: dict[str, Any]) -> str:
    return str(source.get("path") or source["hf_dataset"])


def _iter_hub(source: dict[str, Any]) -> Iterator[Row]:
    """Rows of a Hub dataset, streamed with `datasets` (paper runs); row numbers are 0-based."""
    from datasets import load_dataset

    name = source["hf_dataset"]
    where = f"Hub dataset {name}" + (f" ({source['hf_data_files']})" if source.get("hf_data_files") else "")
    try:
        rows = iter(
            load_dataset(
                name, data_files=source.get("hf_data_files"), split=source.get("split", "train"), streaming=True
            )
        )
    except Exception as exc:
        raise IngestError(f"{where} cannot be opened: {exc}") from exc
    i = 0
    while True:
        try:
            raw = next(rows)
        except StopIteration:
            return
        except Exception as exc:  # a corrupt or truncated download: stop, never a partial pool
            raise IngestError(f"{where} cannot be read after row {i}: {exc}") from exc
        try:
            yield i, to_record(raw, source), None
        except RowError as exc:
            raw_text = json.dumps(raw, default=str)[:RAW_CHARS]
            yield (
                i,
                None,
                {"stage": "ingest", "file": name, "row": i, "field": exc.field, "reason": exc.reason, "raw": raw_text},
            )
        i += 1


def _iter_jsonl(source: dict[str, Any]) -> Iterator[Row]:
    """Rows of a local JSONL file, one line at a time; line numbers are 1-based, blank lines skipped."""
    path = Path(source["path"])
    try:
        fh = open(path, "rb")  # noqa: SIM115 - closed by the with below; open errors get a clear message
    except OSError as exc:
        raise IngestError(f"pool file {path} cannot be read: {exc.strerror or exc}") from exc
    with fh:
        line_no = 0
        while True:
            try:
                raw_line = fh.readline(MAX_LINE_BYTES + 1)
                line_no += 1
                oversize = len(raw_line) > MAX_LINE_BYTES and not raw_line.endswith(b"\n")
                if oversize:  # skip the rest of the line without holding it
                    size = len(raw_line)
                    while (chunk := fh.readline(MAX_LINE_BYTES)) and not chunk.endswith(b"\n"):
                        size += len(chunk)
                    size += len(chunk)
            except OSError as exc:
                raise IngestError(f"pool file {path} cannot be read at line {line_no}: {exc.strerror or exc}") from exc
            if not raw_line:
                return
            reject = {
                "stage": "ingest",
                "file": str(path),
                "row": line_no,
                "raw": raw_line[:RAW_CHARS].decode("utf-8", "replace"),
            }
            if oversize:
                yield (
                    line_no,
                    None,
                    {
                        **reject,
                        "field": "<row>",
                        "reason": f"oversize: line of {size:,} bytes, limit {MAX_LINE_BYTES:,}",
                    },
                )
                continue
            if not raw_line.strip():
                continue
            last = not raw_line.endswith(b"\n")
            try:
                raw = json.loads(raw_line.decode("utf-8"))
            except UnicodeDecodeError as exc:
                if last:
                    raise _truncated(path, line_no, f"invalid UTF-8 at byte {exc.start}") from exc
                yield line_no, None, {**reject, "field": "<row>", "reason": f"invalid UTF-8 at byte {exc.start}"}
                continue
            except json.JSONDecodeError as exc:
                if last:
                    raise _truncated(path, line_no, f"invalid JSON: {exc.msg}") from exc
                yield (
                    line_no,
                    None,
                    {**reject, "field": "<row>", "reason": f"invalid JSON: {exc.msg} (col {exc.colno})"},
                )
                continue
            try:
                yield line_no, to_record(raw, source), None
            except RowError as exc:
                yield line_no, None, {**reject, "field": exc.field, "reason": exc.reason}


def _truncated(path: Path, line_no: int, why: str) -> IngestError:
    return IngestError(
        f"pool file {path} ends mid-line: its last line ({line_no}) has no newline and is not a complete record"
        f" ({why}); the file looks truncated (an interrupted download or copy) - restore it and rerun"
    )


def iter_source(source: dict[str, Any]) -> Iterator[Row]:
    """(line/row number, record, reject) of every row of one source, streamed; exactly one of the two is set."""
    return _iter_hub(source) if source.get("hf_dataset") else _iter_jsonl(source)


class _ParquetRows:
    """Dict rows -> one Parquet file, a row group per ``ROW_GROUP_ROWS`` rows (as ``write_rows``);
    the file is moved into place when the surrounding ExitStack closes without an error."""

    def __init__(self, stack: contextlib.ExitStack, path: str | Path, schema: pa.Schema):
        tmp = stack.enter_context(atomic_path(path))
        self.writer = stack.enter_context(pq.ParquetWriter(tmp, schema))
        self.schema = schema
        self.rows: list[dict[str, Any]] = []
        self.written = 0

    def add(self, row: dict[str, Any]) -> None:
        self.rows.append(row)
        if len(self.rows) >= ROW_GROUP_ROWS:
            self.flush()

    def flush(self) -> None:
        if self.rows:
            self.writer.write_table(pa.Table.from_pylist(self.rows, schema=self.schema))
            self.written += len(self.rows)
            self.rows = []


class _Staging:
    """Records of one sampled source in a temporary JSONL, one 8-byte offset each, for a second
    pass in the sampled order (random access without holding the rows)."""

    def __init__(self, folder: Path):
        # Anonymous (unlinked) file beside the output: nothing is left behind, even after a kill.
        self.fh = tempfile.TemporaryFile(dir=folder)  # noqa: SIM115 - closed in close()
        self.offsets = array("q")

    def add(self, record: dict[str, Any]) -> None:
        self.offsets.append(self.fh.tell())
        self.fh.write(json.dumps(record).encode("ascii") + b"\n")

    def rows(self, order: Iterator[int] | range) -> Iterator[dict[str, Any]]:
        self.fh.flush()
        for i in order:
            self.fh.seek(self.offsets[i])
            yield json.loads(self.fh.readline())

    def close(self) -> None:
        self.fh.close()


def ingest(config: dict[str, Any], pool_path: str | Path, rejects_path: str | Path) -> dict[str, Any]:
    """Stream every source into ``pool_path`` and its bad rows into ``rejects_path``; returns the summary.

    Both files appear only if every source was read to the end (IngestError otherwise).
    """
    rng = random.Random(config["seed"])
    sources = config["pool"]["sources"]
    seen: dict[int, int] = {}  # 64-bit id digest -> index of the first source that had the problem
    keep_duplicates = config["pool"].get("duplicates", "drop") == "keep"
    repeats: dict[int, int] = {}  # digest -> occurrences so far, for kept repeats only
    summary: dict[str, Any] = {"sources": {}}
    with contextlib.ExitStack() as stack:
        pool = _ParquetRows(stack, pool_path, PROBLEM_SCHEMA)
        rejects = _ParquetRows(stack, rejects_path, REJECT_SCHEMA)
        for index, source in enumerate(sources):
            staged = _Staging(Path(pool_path).parent) if source.get("sample") else None
            reasons: Counter[str] = Counter()
            records = unique = repeats_kept = 0
            for n, (row, rec, bad) in enumerate(iter_source(source), start=1):
                if n % LOG_EVERY == 0:
                    log.info("ingest %s: %d rows read", source["name"], n)
                if rec is None:
                    reasons[_reason_code(bad["reason"])] += 1
                    rejects.add(bad)
                    continue
                records += 1
                digest = int(rec["id"][2:], 16)
                if digest in seen and keep_duplicates:
                    # The reference keeps every row: a repeat stays, with an id still unique.
                    repeats[digest] = repeats.get(digest, 1) + 1
                    rec["id"] = f"{rec['id']}-{repeats[digest]}"
                    repeats_kept += 1
                elif digest in seen:
                    reasons["duplicate"] += 1
                    rejects.add(
                        {
                            "stage": "ingest",
                            "id": rec["id"],
                            "file": _source_file(source),
                            "row": row,
                            "field": "problem",
                            "reason": f"duplicate of a problem in {sources[seen[digest]]['name']}",
                            "raw": rec["problem"][:RAW_CHARS],
                        }
                    )
                    continue
                seen.setdefault(digest, index)
                unique += 1
                if staged is None:
                    pool.add(rec)
                else:
                    staged.add(rec)
            kept = unique
            if staged is not None:
                # Same draws as rng.sample(unique_rows, k): sample() only looks at len() and indices.
                order = rng.sample(range(unique), source["sample"]) if source["sample"] < unique else range(unique)
                kept = len(order)
                for rec in staged.rows(order):
                    pool.add(rec)
                staged.close()
            summary["sources"][source["name"]] = {
                "read": records + sum(n for r, n in reasons.items() if r != "duplicate"),
                "rejected": dict(reasons),
                "unique": unique - repeats_kept,
                "kept": kept,
            }
            if keep_duplicates:  # pool.duplicates: keep (the reference keeps every row)
                summary["sources"][source["name"]]["duplicates_kept"] = repeats_kept
            log.info("ingest %s: %s", source["name"], summary["sources"][source["name"]])
        pool.flush()
        rejects.flush()
    summary["kept"] = pool.written
    summary["rejected"] = rejects.written
    return summary


def _reason_code(reason: str) -> str:
    return reason.split(":")[0].split(" (")[0].split(" at ")[0].split(" of ")[0]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="Read the problem pool into Parquet with stable ids.")
    ap.add_argument("--pool", required=True)
    ap.add_argument("--rejects", required=True)
    ap.add_argument("--summary", required=True)
    cli.add_settings_argument(ap)
    args = ap.parse_args(argv)
    cli.setup_logging()
    try:
        summary = ingest(cli.load_settings(args), args.pool, args.rejects)
    except IngestError as exc:
        log.error("ingest: %s", exc)
        raise SystemExit(f"ingest: {exc}") from exc
    write_json(summary, args.summary)
    log.info("ingest: %d problems kept, %d rows rejected", summary["kept"], summary["rejected"])


if __name__ == "__main__":
    main()
