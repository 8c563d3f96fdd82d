"""ingest: read the problem pool into the record schema with stable content-hash ids.

Accepts AM-Qwen3-Distilled chat records (``messages: [{role, content}]`` or
``conversations: [{from, value}]``; the problem is the first user turn, the solution the first
assistant turn) and flat records whose fields a config mapping names. Every unreadable row goes
to the rejects file with file, line, field and reason; nothing is skipped silently.
"""

from __future__ import annotations

import argparse
import json
import logging
import random
from collections import Counter
from pathlib import Path
from typing import Any

from scalediff import cli
from scalediff.records import PROBLEM_SCHEMA, problem_id, write_json, write_rejects, write_rows

log = logging.getLogger(__name__)


class RowError(ValueError):
    def __init__(self, field: str, reason: str):
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


def _text(value: Any, field: str, required: bool) -> str | None:
    if value is None or (isinstance(value, float) and value != value):  # None or NaN
        if required:
            raise RowError(field, "missing")
        return None
    if not isinstance(value, str):
        if required or not isinstance(value, (int, float)):
            raise RowError(field, f"not a string ({type(value).__name__})")
        return str(value)
    if required and not value.strip():
        raise RowError(field, "empty")
    return value


def _chat_turns(record: dict[str, Any]) -> list[tuple[str, str]]:
    """(role, text) turns from either chat layout."""
    if isinstance(record.get("messages"), list):
        return [(str(m.get("role")), m.get("content")) for m in record["messages"] if isinstance(m, dict)]
    if isinstance(record.get("conversations"), list):
        roles = {"human": "user", "gpt": "assistant"}
        return [
            (roles.get(str(m.get("from")), str(m.get("from"))), m.get("value"))
            for m in record["conversations"]
            if isinstance(m, dict)
        ]
    raise RowError("messages", "neither `messages` nor `conversations` is a list")


def _reference_answer(record: dict[str, Any]) -> Any:
    for m in record.get("messages") or []:
        info = m.get("info") if isinstance(m, dict) else None
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
        users = [t for r, t in turns if r == "user"]
        if not users:
            raise RowError("messages", "no user turn")
        problem = _text(users[0], "messages[0].content", True)
        assistants = [t for r, t in turns if r == "assistant"]
        solution = _text(assistants[0], "assistant.content", False) if assistants else None
        answer = _text(_reference_answer(raw), "answer", False)
    else:
        problem = _text(raw.get(cols["problem"]), cols["problem"], True)
        solution = _text(raw.get(cols["solution"]), cols["solution"], False)
        answer = _text(raw.get(cols["answer"]), cols["answer"], False)
    return {
        "id": problem_id(problem),
        "problem": problem,
        "solution": solution,
        "answer": answer,
        "origin": "original",
        "source": source["name"],
    }


def read_hub_source(source: dict[str, Any]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(records, rejects) of a Hub dataset, streamed with `datasets` (paper runs)."""
    from datasets import load_dataset

    name = source["hf_dataset"]
    rows = load_dataset(
        name, data_files=source.get("hf_data_files"), split=source.get("split", "train"), streaming=True
    )
    records, rejects = [], []
    for i, raw in enumerate(rows):
        try:
            records.append(to_record(raw, source))
        except RowError as exc:
            rejects.append(
                {
                    "stage": "ingest",
                    "file": name,
                    "row": i,
                    "field": exc.field,
                    "reason": exc.reason,
                    "raw": json.dumps(raw, default=str)[:2000],
                }
            )
    return records, rejects


def read_source(source: dict[str, Any]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(records, rejects) of one JSONL source; rejects carry file, 1-based line and reason."""
    if source.get("hf_dataset"):
        return read_hub_source(source)
    records, rejects = [], []
    path = Path(source["path"])
    with open(path, "rb") as fh:
        for line_no, raw_line in enumerate(fh, start=1):
            if not raw_line.strip():
                continue
            reject = {
                "stage": "ingest",
                "file": str(path),
                "row": line_no,
                "raw": raw_line[:2000].decode("utf-8", "replace"),
            }
            try:
                text = raw_line.decode("utf-8")
            except UnicodeDecodeError as exc:
                rejects.append({**reject, "field": "<row>", "reason": f"invalid UTF-8 at byte {exc.start}"})
                continue
            try:
                records.append(to_record(json.loads(text), source))
            except json.JSONDecodeError as exc:
                rejects.append({**reject, "field": "<row>", "reason": f"invalid JSON: {exc.msg} (col {exc.colno})"})
            except RowError as exc:
                rejects.append({**reject, "field": exc.field, "reason": exc.reason})
    return records, rejects


def ingest(config: dict[str, Any]) -> tuple[list[dict[str, Any]], list[dict[str, Any]], dict[str, Any]]:
    rng = random.Random(config["seed"])
    pool: list[dict[str, Any]] = []
    rejects: list[dict[str, Any]] = []
    seen: dict[str, str] = {}
    summary: dict[str, Any] = {"sources": {}}
    for source in config["pool"]["sources"]:
        records, bad = read_source(source)
        unique = []
        for rec in records:
            if rec["id"] in seen:
                bad.append(
                    {
                        "stage": "ingest",
                        "id": rec["id"],
                        "file": source.get("path") or source["hf_dataset"],
                        "field": "problem",
                        "reason": f"duplicate of a problem in {seen[rec['id']]}",
                        "raw": rec["problem"][:2000],
                    }
                )
            else:
                seen[rec["id"]] = source["name"]
                unique.append(rec)
        chosen = unique
        if source.get("sample") and source["sample"] < len(unique):
            chosen = rng.sample(unique, source["sample"])  # not rejects: the rest stays in the source file
        pool.extend(chosen)
        rejects.extend(bad)
        summary["sources"][source["name"]] = {
            "read": len(records) + sum(1 for b in bad if not str(b["reason"]).startswith("duplicate")),
            "rejected": dict(Counter(_reason_code(b["reason"]) for b in bad)),
            "unique": len(unique),
            "kept": len(chosen),
        }
        log.info("ingest %s: %s", source["name"], summary["sources"][source["name"]])
    summary["kept"] = len(pool)
    summary["rejected"] = len(rejects)
    return pool, rejects, summary


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
    pool, rejects, summary = ingest(cli.load_settings(args))
    write_rows(pool, args.pool, PROBLEM_SCHEMA)
    write_rejects(rejects, args.rejects)
    write_json(summary, args.summary)
    log.info("ingest: %d problems kept, %d rows rejected", len(pool), len(rejects))


if __name__ == "__main__":
    main()
