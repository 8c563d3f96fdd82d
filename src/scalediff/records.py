"""The one record schema that flows between stages, and how records are stored.

Every stage reads and writes Parquet. Writes are atomic (temp file in the same folder, then
``os.replace``) so a killed job never leaves a half-written output that Snakemake would trust.
Rows that cannot be used are never dropped silently: they go to a rejects/quarantine file with
the file, row and reason.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import unicodedata
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

log = logging.getLogger(__name__)

# The problem record: one row per problem, original or generated.
PROBLEM_SCHEMA = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),
        pa.field("problem", pa.string(), nullable=False),
        pa.field("solution", pa.string()),
        pa.field("answer", pa.string()),
        pa.field("origin", pa.string(), nullable=False),  # "original" | "generated"
        pa.field("source", pa.string(), nullable=False),  # pool file name or generator shard/seed
    ]
)

# Rows that a stage refused, with enough context to find and fix them.
REJECT_SCHEMA = pa.schema(
    [
        pa.field("stage", pa.string()),
        pa.field("id", pa.string()),
        pa.field("file", pa.string()),
        pa.field("row", pa.int64()),
        pa.field("field", pa.string()),
        pa.field("reason", pa.string()),
        pa.field("raw", pa.string()),
    ]
)


def normalize_text(text: str) -> str:
    """Canonical form used for ids and exact dedup: NFKC, collapsed whitespace, stripped."""
    return " ".join(unicodedata.normalize("NFKC", text).split())


def text_defect(value: Any) -> str | None:
    """Why ``value`` cannot be used as a prompt text (missing, not a string, empty), or None."""
    if value is None or (isinstance(value, float) and value != value):
        return "missing problem"
    if not isinstance(value, str):
        return f"problem is not a string ({type(value).__name__})"
    if not value.strip():
        return "empty problem"
    return None


def problem_id(text: str, prefix: str = "p") -> str:
    """Stable content-hash id: the same problem text always gets the same id."""
    digest = hashlib.sha256(normalize_text(text).encode("utf-8")).hexdigest()[:16]
    return f"{prefix}-{digest}"


def seeded_rank(seed: int, row_id: str) -> str:
    """A seeded sort key for a row id: the first k rows by it are a random draw that does not depend
    on file or row order (the same ids and seed always give the same subset)."""
    return hashlib.sha256(f"{seed}:{row_id}".encode()).hexdigest()


def current_umask() -> int:
    """The process umask (read without changing it where /proc allows)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temp path beside ``path``; move it into place only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    # mkstemp creates 0600; give the file the mode a plain open() would (0666 minus the umask) so
    # colleagues and jobs running as another user can read datasets, models and reports.
    os.fchmod(fd, 0o666 & ~current_umask())
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# Rows per Parquet row group: readers stream a file one row group at a time, so this bounds their
# memory (1,024 teacher solutions of 10-30K tokens are ~100 MB) whatever the file's length.
ROW_GROUP_ROWS = 1024


def write_table(table: pa.Table, path: str | os.PathLike) -> None:
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, row_group_size=ROW_GROUP_ROWS)


def iter_batches(
    path: str | os.PathLike, batch_size: int = ROW_GROUP_ROWS, columns: list[str] | None = None
) -> Iterator[pa.RecordBatch]:
    """Record batches of a Parquet file, read one row group at a time in bounded memory.

    ``pre_buffer=False``: pyarrow's default pre-buffering caches every row group it has read until the
    reader is closed, so a pass over a file grows by the file's compressed size (measured: +15 MB per
    1,024 paper-length rows); without it memory stays flat whatever the length.
    """
    yield from pq.ParquetFile(path, pre_buffer=False).iter_batches(batch_size=batch_size, columns=columns)


def concat_parquet(
    paths: Iterable[str | os.PathLike],
    path: str | os.PathLike,
    schema: pa.Schema,
    keep: Callable[[pa.RecordBatch], list[int]] | None = None,
) -> int:
    """Stream several Parquet files into one (columns selected and cast to ``schema``); returns rows read.

    ``keep`` picks the indices of each batch's rows to write (all when None), so a gather can drop
    rows (e.g. duplicates) without ever holding more than one batch.
    """
    rows = 0
    with atomic_path(path) as tmp, pq.ParquetWriter(tmp, schema) as writer:
        for src in paths:
            for batch in iter_batches(src, columns=schema.names):
                table = pa.Table.from_batches([batch])
                if keep is not None:
                    table = table.take(keep(batch))
                writer.write_table(table.select(schema.names).cast(schema))
                rows += batch.num_rows
    return rows


def write_rows(rows: list[dict[str, Any]], path: str | os.PathLike, schema: pa.Schema | None = None) -> None:
    """Write dict rows atomically; with ``schema`` the columns and types are enforced."""
    if schema is not None:
        table = pa.Table.from_pylist(rows, schema=schema)
    elif rows:
        table = pa.Table.from_pylist(rows)
    else:
        table = pa.table({})
    write_table(table, path)


def read_rows(path: str | os.PathLike, columns: list[str] | None = None) -> list[dict[str, Any]]:
    return pq.read_table(path, columns=columns).to_pylist()


def iter_rows(
    path: str | os.PathLike, columns: list[str] | None = None, batch_size: int = ROW_GROUP_ROWS
) -> Iterator[dict[str, Any]]:
    """Rows of a Parquet file as dicts, one row group in memory at a time (``iter_batches``)."""
    for batch in iter_batches(path, batch_size, columns):
        yield from batch.to_pylist()


def num_rows(path: str | os.PathLike) -> int:
    """Rows of a Parquet file, from its footer (nothing else is read)."""
    return pq.ParquetFile(path).metadata.num_rows


def read_range(path: str | os.PathLike, start: int, stop: int, columns: list[str] | None = None) -> pa.Table:
    """Rows ``start:stop`` of a Parquet file; only the row groups that overlap them are read, and only
    ``columns`` (all when None), so memory follows the range, not the file."""
    pf = pq.ParquetFile(path, pre_buffer=False)
    groups, first, offset = [], 0, 0
    for g in range(pf.metadata.num_row_groups):
        n = pf.metadata.row_group(g).num_rows
        if offset < stop and offset + n > start:
            if not groups:
                first = offset  # the table read starts at this row
            groups.append(g)
        offset += n
    if not groups:
        schema = pf.schema_arrow
        return schema.empty_table().select(columns) if columns is not None else schema.empty_table()
    table = pf.read_row_groups(groups, columns=columns)
    return table.slice(start - first, stop - start)


def read_shard(
    table: pa.Table | str | os.PathLike, shard: int, n_shards: int, columns: list[str] | None = None
) -> list[dict[str, Any]]:
    """Rows of one contiguous shard, only ``columns`` (all when None). From a file only the shard's
    row groups are read, and only its rows are converted to Python, not the whole table (558K pool
    rows with paper-length solutions, ~2M generated problems at paper scale)."""
    if not isinstance(table, pa.Table):
        part = shard_slice(num_rows(table), shard, n_shards)
        return read_range(table, part.start, part.stop, columns).to_pylist()
    part = shard_slice(table.num_rows, shard, n_shards)
    table = table.select(columns) if columns is not None else table
    return table.slice(part.start, part.stop - part.start).to_pylist()


def read_many(paths: Iterable[str | os.PathLike]) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for p in paths:
        rows.extend(read_rows(p))
    return rows


def write_rejects(rows: list[dict[str, Any]], path: str | os.PathLike) -> None:
    """Rejects always exist (possibly empty) so downstream rules can depend on them."""
    write_rows([{k: r.get(k) for k in REJECT_SCHEMA.names} for r in rows], path, REJECT_SCHEMA)


def write_json(obj: Any, path: str | os.PathLike) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    return json.loads(Path(path).read_text())


def shard_slice(n_rows: int, shard: int, n_shards: int) -> slice:
    """Contiguous, balanced slice of ``n_rows`` for ``shard`` (0-based) of ``n_shards``."""
    if not 0 <= shard < n_shards:
        raise ValueError(f"shard {shard} outside 0..{n_shards - 1}")
    base, extra = divmod(n_rows, n_shards)
    start = shard * base + min(shard, extra)
    return slice(start, start + base + (1 if shard < extra else 0))


def parse_scatteritem(item: str) -> tuple[int, int]:
    """Snakemake's scatter item ``3-of-8`` -> (2, 8): 0-based shard index and shard count."""
    i, _, n = item.partition("-of-")
    return int(i) - 1, int(n)


def digest(value: Any) -> str:
    """Short sha256 of ``value``'s canonical JSON: the identity of settings, prompts, payloads."""
    text = json.dumps(value, sort_keys=True, ensure_ascii=False, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]


# Files up to this size are known by their content (configs, tokenizers, small data); larger ones
# (weights, datasets of GBs) by size and modification time, so a fingerprint never reads GBs at start-up.
CONTENT_DIGEST_BYTES = 4 << 20


def _file_identity(path: Path) -> str | list[int]:
    st = path.stat()
    if st.st_size > CONTENT_DIGEST_BYTES:
        return [st.st_size, st.st_mtime_ns]
    return hashlib.sha256(path.read_bytes()).hexdigest()[:32]


def _hub_snapshot(name: str) -> Path | None:
    """The local snapshot folder of a Hub model id (its path names the commit), if it is cached."""
    try:
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(name, "config.json")
    except Exception:  # not a valid repo id, no hub client: the name is all there is
        return None
    return Path(found).parent if isinstance(found, str) else None


def source_identity(source: str | os.PathLike) -> dict[str, Any]:
    """What a model (directory or cached Hub id) or data file is, for a ``Fingerprint``: its name and
    the identity of each of its files (top level; hidden files skipped)."""
    path = Path(source)
    if not path.exists():
        snapshot = _hub_snapshot(str(source))
        if snapshot is None:
            return {"name": str(source)}
        path = snapshot
    files = [path] if path.is_file() else sorted(f for f in path.iterdir() if f.is_file() and f.name[0] != ".")
    return {"name": str(source), "files": {f.name: _file_identity(f) for f in files}}


class Fingerprint:
    """What produced a piece of resumable state (model, settings, inputs): one digest per named part.

    Every resumable state (shard checkpoints, the SFT Arrow cache, token lengths, training
    checkpoints) is stored with one; state whose fingerprint differs is discarded, and the log names
    the parts that changed.
    """

    def __init__(self, **parts: Any) -> None:
        self.parts = {name: digest(value) for name, value in sorted(parts.items())}

    @property
    def digest(self) -> str:
        return digest(self.parts)

    def stale(self, saved: Any) -> str | None:
        """Why state stamped with ``saved`` cannot be reused, or None when it can."""
        if not isinstance(saved, dict):
            return "it has no fingerprint"
        changed = sorted(k for k in self.parts.keys() | saved.keys() if self.parts.get(k) != saved.get(k))
        return f"{', '.join(changed)} changed" if changed else None

    def reusable(self, saved: Any, what: str) -> bool:
        """``stale`` that logs why ``what`` is discarded."""
        reason = self.stale(saved)
        if reason:
            log.info("discarding %s: %s", what, reason)
        return reason is None

    def save(self, path: str | os.PathLike) -> None:
        """Write as a sidecar JSON file (after the state it describes is complete)."""
        write_json(self.parts, path)

    def matches(self, path: str | os.PathLike, what: str) -> bool:
        """Whether the sidecar at ``path`` is this fingerprint; logs why not."""
        try:
            saved = read_json(path)
        except (OSError, ValueError):
            saved = None
        return self.reusable(saved, what)


class ShardCheckpoint:
    """Append-only JSONL of finished rows inside a long shard, so a killed job resumes.

    The first line is the ``Fingerprint`` of what makes the rows (model, sampling, seeds); every
    row carries its job's digest under ``JOB`` (prompt and payload). A checkpoint with another
    fingerprint is discarded whole, a row made for another version of a job is not reused, and only
    rows of the jobs asked for are returned. Each batch is appended and fsynced as one write; a torn
    last line (killed mid-write) is ignored on reload. The final Parquet is written from it
    atomically, then it is removed.
    """

    JOB = "_job"
    HEADER = "fingerprint"

    def __init__(self, final_path: str | os.PathLike, key: str = "key", fingerprint: Fingerprint | None = None):
        self.final_path = Path(final_path)
        self.path = self.final_path.with_name(self.final_path.name + ".partial.jsonl")
        self.key = key
        self.fingerprint = fingerprint or Fingerprint()

    def _read(self) -> tuple[Any, list[dict[str, Any]], int]:
        """(saved fingerprint or None, rows, bytes of complete lines), without changing the file."""
        header, rows, good_bytes = None, [], 0
        if not self.path.exists():
            return header, rows, good_bytes
        with open(self.path, "rb") as fh:
            for n, line in enumerate(fh):
                if not line.endswith(b"\n"):
                    break  # torn write from a kill
                try:
                    value = json.loads(line)
                except json.JSONDecodeError:
                    break
                good_bytes += len(line)
                if n == 0 and isinstance(value, dict) and set(value) == {self.HEADER}:
                    header = value[self.HEADER]
                else:
                    rows.append(value)
        return header, rows, good_bytes

    def rows(self) -> list[dict[str, Any]]:
        """The rows made under this fingerprint (none if it differs); read-only, safe while a job appends."""
        header, rows, _ = self._read()
        return rows if self.fingerprint.stale(header) is None else []

    def load(self) -> list[dict[str, Any]]:
        """``rows`` for the job that appends next: a checkpoint with another fingerprint is deleted
        (the log says what changed) and a torn last line is truncated."""
        header, rows, good_bytes = self._read()
        if not self.path.exists():
            return []
        if good_bytes and not self.fingerprint.reusable(header, f"checkpoint {self.path}"):
            self.path.unlink()
            return []
        if not good_bytes:  # killed while writing its first line: nothing to keep
            self.path.unlink()
        elif good_bytes != self.path.stat().st_size:
            with open(self.path, "r+b") as fh:
                fh.truncate(good_bytes)
        return rows

    def _current(self, jobs: Iterable[str] | Mapping[str, str] | None) -> list[dict[str, Any]]:
        """Rows of ``jobs`` (all when None); given a mapping key -> job digest, only rows made for
        that digest (the same key with another prompt is another job)."""
        if jobs is None:
            return self.rows()
        digests = jobs if isinstance(jobs, Mapping) else dict.fromkeys(jobs)
        return [
            r
            for r in self.rows()
            if r.get(self.key) in digests and (digests[r[self.key]] is None or r.get(self.JOB) == digests[r[self.key]])
        ]

    def done_keys(self, jobs: Iterable[str] | Mapping[str, str] | None = None) -> set[str]:
        return {r[self.key] for r in self._current(jobs)}

    def append(self, rows: list[dict[str, Any]]) -> None:
        if not rows:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        lines = [json.dumps(r, ensure_ascii=False) + "\n" for r in rows]
        if not self.path.exists() or self.path.stat().st_size == 0:
            lines.insert(0, json.dumps({self.HEADER: self.fingerprint.parts}) + "\n")
        with open(self.path, "ab") as fh:
            fh.write("".join(lines).encode("utf-8"))
            fh.flush()
            os.fsync(fh.fileno())

    def rows_in_order(self, jobs: Sequence[str] | Mapping[str, str]) -> list[dict[str, Any]]:
        """The checkpoint rows of ``jobs`` only (see ``_current``), in job order, without ``JOB``."""
        rank = {k: i for i, k in enumerate(jobs)}
        rows = sorted(self._current(jobs), key=lambda r: rank[r[self.key]])
        return [{k: v for k, v in r.items() if k != self.JOB} for r in rows]

    def discard(self) -> None:
        """Call after the final output is in place."""
        self.path.unlink(missing_ok=True)
