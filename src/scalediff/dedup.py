"""Problem deduplication: exact after normalisation, then near-duplicates with MinHash/LSH.

``exact_key`` folds case, Unicode compatibility forms, whitespace, LaTeX spacing and sizing
commands and math delimiters, so ``Find $x + y$.`` and ``find \\(x+y\\) .`` share a key while
``x+y`` and ``x-y`` do not. Near-duplicates are pairs whose word-n-gram sets have an estimated
Jaccard similarity of at least ``threshold``; LSH proposes candidates, the stored signatures
confirm them (so LSH false positives never remove a row). The index keeps ~0.2 KB per problem in
memory (compact numpy buckets; the signatures in a temporary file), see ``NearDupIndex``.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
import unicodedata
from typing import NamedTuple

import numpy as np
from datasketch import MinHash, MinHashLSH

from scalediff.filter_rules import words

_LATEX_NOISE = re.compile(
    r"\\(?:left|right|displaystyle|textstyle|big|Big|bigg|Bigg|quad|qquad)(?![A-Za-z])|\\[,;:! ()\[\]]|\$|~"
)
_FRAC = re.compile(r"\\[dt]frac(?![A-Za-z])")
_SPACE = re.compile(r"\s+")


def normalize_for_match(text: str) -> str:
    """Case-, width- and LaTeX-spacing-insensitive form with single spaces."""
    text = unicodedata.normalize("NFKC", text).lower()
    text = _FRAC.sub(r"\\frac", text)
    text = _LATEX_NOISE.sub(" ", text)
    return _SPACE.sub(" ", text).strip().rstrip(".").strip()


def exact_key(text: str) -> str:
    """Key for exact dedup: the normalised text with all whitespace removed."""
    return _SPACE.sub("", normalize_for_match(text))


def shingles(text: str, n: int) -> list[bytes]:
    toks = words(text)
    if len(toks) < n:
        return [" ".join(toks).encode()] if toks else [b""]
    return [" ".join(toks[i : i + n]).encode() for i in range(len(toks) - n + 1)]


def _hash64(data: bytes) -> int:
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little")


class _Column:
    """Append-only numpy column grown in fixed chunks: no copy on growth, at most one chunk of slack."""

    _SHIFT = 14

    def __init__(self, dtype: type) -> None:
        self._dtype, self._chunks, self._n = dtype, [], 0

    def __len__(self) -> int:
        return self._n

    def append(self, value: int) -> None:
        pos = self._n & ((1 << self._SHIFT) - 1)
        if pos == 0:
            self._chunks.append(np.empty(1 << self._SHIFT, self._dtype))
        self._chunks[-1][pos] = value
        self._n += 1

    def __getitem__(self, i: int) -> int:
        return int(self._chunks[i >> self._SHIFT][i & ((1 << self._SHIFT) - 1)])


class _KeyTable:
    """Multimap from 64-bit keys to row numbers at 12 bytes per entry: sorted uint64 keys with their int32
    rows, plus a dict of recent inserts merged into the arrays once it holds 1/16 of them (so merges cost
    O(1) amortised per entry and the dict, ~100 bytes per entry, stays a small fraction)."""

    _MIN_DELTA = 4096

    def __init__(self) -> None:
        self._keys = np.empty(0, np.uint64)
        self._rows = np.empty(0, np.int32)
        self._delta: dict[int, int | list[int]] = {}
        self._n_delta = 0

    def __len__(self) -> int:
        return len(self._keys) + self._n_delta

    def add(self, keys: list[int], row: int) -> None:
        """Store ``row`` under each of ``keys``."""
        delta = self._delta
        for key in keys:
            old = delta.get(key)
            if old is None:
                delta[key] = row
            elif isinstance(old, list):
                old.append(row)
            else:
                delta[key] = [old, row]
        self._n_delta += len(keys)
        if self._n_delta >= max(self._MIN_DELTA, len(self._keys) >> 4):
            self._merge()

    def get(self, keys: list[int]) -> list[int]:
        """Rows stored under any of ``keys``, in insertion order within a key."""
        out: list[int] = []
        n = len(self._keys)
        if n and len(keys) == 1:  # ids and exact keys: skip the vector path's overhead
            key = np.uint64(keys[0])
            j = int(self._keys.searchsorted(key))
            while j < n and self._keys[j] == key:
                out.append(int(self._rows[j]))
                j += 1
        elif n:
            q = np.array(keys, dtype=np.uint64)
            lo = self._keys.searchsorted(q)
            found = self._keys[np.minimum(lo, n - 1)] == q
            if found.any():
                for i in np.flatnonzero(found).tolist():
                    j = int(lo[i])
                    while j < n and self._keys[j] == q[i]:
                        out.append(int(self._rows[j]))
                        j += 1
        delta = self._delta
        for key in keys:
            rows = delta.get(key)
            if rows is not None:
                out += rows if isinstance(rows, list) else [rows]
        return out

    def _merge(self) -> None:
        delta = self._delta
        if self._n_delta == len(delta):  # one row per key (the common case)
            dk = np.fromiter(delta.keys(), np.uint64, len(delta))
            dr = np.fromiter(delta.values(), np.int32, len(delta))
        else:
            keys, rows = [], []
            for key, r in delta.items():
                many = r if isinstance(r, list) else [r]
                keys += [key] * len(many)
                rows += many
            dk, dr = np.array(keys, dtype=np.uint64), np.array(rows, dtype=np.int32)
        order = np.argsort(dk, kind="stable")  # equal keys keep insertion order
        dk, dr = dk[order], dr[order]
        # after the equal keys already stored (older rows first); np.insert keeps equal positions in order
        pos = self._keys.searchsorted(dk, side="right")
        self._keys = np.insert(self._keys, pos, dk)
        self._rows = np.insert(self._rows, pos, dr)
        self._delta, self._n_delta = {}, 0


class _Ids:
    """Strings by row number, as one UTF-8 blob plus end offsets, found by a 64-bit hash that is confirmed
    against the stored string (a hash collision costs a comparison, never a wrong answer)."""

    def __init__(self) -> None:
        self._blob = bytearray()
        self._ends = _Column(np.int64)
        self._table = _KeyTable()

    def __len__(self) -> int:
        return len(self._ends)

    def __getitem__(self, row: int) -> str:
        start = self._ends[row - 1] if row else 0
        return self._blob[start : self._ends[row]].decode()

    def index(self, key: str) -> int:
        """Row of ``key``, or -1."""
        for row in self._table.get([_hash64(key.encode())]):
            if self[row] == key:
                return row
        return -1

    def append(self, key: str) -> int:
        data = key.encode()
        row = len(self._ends)
        self._blob += data
        self._ends.append(len(self._blob))
        self._table.add([_hash64(data)], row)
        return row


class _Signatures:
    """MinHash signatures by row number: the newest ``_BUFFER`` in memory, older ones in an unlinked
    temporary file under ``spill_dir`` (default: $TMPDIR), read back with ``pread`` only for LSH
    candidates, which are rare except for real near-duplicates. Keeps 512 bytes per problem (at
    ``num_perm: 128``) out of memory, and exact verification possible."""

    _BUFFER = 1024

    def __init__(self, num_perm: int, dtype: np.dtype, spill_dir: str | None) -> None:
        self._buf = np.empty((self._BUFFER, num_perm), dtype)
        self._row_bytes = self._buf.strides[0]
        self._n_buf = self._n_file = 0
        self._spill_dir = spill_dir
        self._file = None

    def __len__(self) -> int:
        return self._n_file + self._n_buf

    def append(self, sig: np.ndarray) -> None:
        if self._n_buf == self._BUFFER:
            if self._file is None:
                self._file = tempfile.TemporaryFile(prefix="scalediff-dedup-", dir=self._spill_dir)  # noqa: SIM115
            self._file.write(memoryview(self._buf))
            self._file.flush()
            self._n_file += self._n_buf
            self._n_buf = 0
        self._buf[self._n_buf] = sig
        self._n_buf += 1

    def __getitem__(self, row: int) -> np.ndarray:
        if row >= self._n_file:
            return self._buf[row - self._n_file]
        data = os.pread(self._file.fileno(), self._row_bytes, row * self._row_bytes)
        if len(data) != self._row_bytes:
            raise OSError(f"dedup signature file {self._file.name}: short read at row {row}")
        return np.frombuffer(data, self._buf.dtype)


class _Probe(NamedTuple):
    """What a lookup needs from one text, computed once for both indexes."""

    exact: tuple[int, int]  # 128-bit digest of exact_key(text) as (key, check)
    sig: np.ndarray
    bands: list[int]


class NearDupIndex:
    """Exact keys plus a MinHash-LSH index over word n-gram shingles of problem texts.

    MinHash signatures come from datasketch (``MinHash``, one permutation draw per index) and the band
    layout from its ``MinHashLSH`` (9 bands x 13 rows at the defaults); the buckets are compact: per
    problem one 64-bit key per band (9 x 12 bytes in ``_KeyTable``), a 128-bit exact-key digest (20
    bytes) and the id (~10 bytes + 20), ~0.2 KB in memory (measured; was ~3.6 KB with datasketch's
    per-band Python sets), the signature in a temporary file. A band-key collision only adds a candidate,
    which is dropped unless its stored signature really shares a band with the query (datasketch's
    candidate set) and reaches ``threshold``, so decisions equal the datasketch index's. Among
    candidates of equal similarity the earliest indexed wins (datasketch's order was arbitrary).
    """

    def __init__(
        self,
        ngram: int = 3,
        num_perm: int = 128,
        threshold: float = 0.8,
        seed: int = 1,
        spill_dir: str | None = None,
    ) -> None:
        self.ngram, self.num_perm, self.threshold, self.seed = ngram, num_perm, threshold, seed
        self.bands: list[tuple[int, int]] = MinHashLSH(threshold=threshold, num_perm=num_perm).hashranges
        # datasketch's bands are equal-width runs from 0: a candidate's bands are then checked in one
        # numpy call (a row of a (bands x width) grid), not one array_equal per band
        width = self.bands[0][1] - self.bands[0][0]
        uniform = all((a, b) == (i * width, (i + 1) * width) for i, (a, b) in enumerate(self.bands))
        self._band_grid = (len(self.bands), width) if uniform else None
        # MinHash() draws its permutations on every construction (~0.2 ms); draw them once and share
        self._template = MinHash(num_perm=num_perm, seed=seed)
        self._ids = _Ids()
        self._exact = _KeyTable()
        self._exact_check = _Column(np.uint64)
        self._buckets = _KeyTable()
        self._sigs = _Signatures(num_perm, self._template.hashvalues.dtype, spill_dir)

    def __len__(self) -> int:
        return len(self._ids)

    def __contains__(self, key: str) -> bool:
        return self._ids.index(key) >= 0

    def signature(self, text: str) -> np.ndarray:
        """The MinHash signature of ``text``'s word n-grams (datasketch), as a numpy array."""
        t = self._template
        m = MinHash(num_perm=self.num_perm, seed=self.seed, permutations=t.permutations, scheme=t.scheme)
        m.update_batch(shingles(text, self.ngram))
        return m.hashvalues

    def find(self, text: str, signature: np.ndarray | None = None) -> tuple[str, str] | None:
        """``("exact"|"near", id)`` of an indexed problem that ``text`` duplicates, else None."""
        hit = self._find(self._probe(text, signature))
        return (hit[0], self._ids[hit[1]]) if hit else None

    def add(self, key: str, text: str, signature: np.ndarray | None = None) -> None:
        self._add(key, self._probe(text, signature))

    def probe(self, text: str) -> _Probe:
        """What a lookup or an insert needs from ``text`` (row-local, so it may run in a worker process;
        every index with the same parameters gives the same probe)."""
        return self._probe(text)

    def _probe(self, text: str, sig: np.ndarray | None = None) -> _Probe:
        digest = hashlib.blake2b(exact_key(text).encode(), digest_size=16).digest()
        exact = (int.from_bytes(digest[:8], "little"), int.from_bytes(digest[8:], "little"))
        sig = self.signature(text) if sig is None else np.asarray(sig, dtype=self._sigs._buf.dtype)
        bands = [_hash64(i.to_bytes(4, "little") + sig[a:b].tobytes()) for i, (a, b) in enumerate(self.bands)]
        return _Probe(exact, sig, bands)

    def _exact_rows(self, exact: tuple[int, int]) -> list[int]:
        return [r for r in self._exact.get([exact[0]]) if self._exact_check[r] == exact[1]]

    def _find(self, p: _Probe) -> tuple[str, int] | None:
        rows = self._exact_rows(p.exact)
        if rows:
            return "exact", rows[0]
        best, best_sim = None, self.threshold
        grid = self._band_grid
        for row in sorted(set(self._buckets.get(p.bands))):
            equal = self._sigs[row] == p.sig
            if grid is not None:
                shared = bool(equal[: grid[0] * grid[1]].reshape(grid).all(axis=1).any())
            else:
                shared = any(equal[a:b].all() for a, b in self.bands)
            if not shared:
                continue  # band keys collided, no band is shared: not an LSH candidate
            sim = float(equal.mean())
            if sim > best_sim or (best is None and sim >= best_sim):
                best, best_sim = row, sim
        return ("near", best) if best is not None else None

    def _add(self, key: str, p: _Probe) -> None:
        if key in self:
            return
        row = self._ids.append(key)
        if not self._exact_rows(p.exact):  # the first problem with a key answers for it
            self._exact.add([p.exact[0]], row)
        self._exact_check.append(p.exact[1])
        self._buckets.add(p.bands, row)
        self._sigs.append(p.sig)


_DROP_REASONS = ("duplicate_of_original", "near_duplicate_of_original", "duplicate", "near_duplicate")


class ProblemDeduper:
    """Streaming dedup decisions for generated problems, against the originals and each other.

    Originals are indexed first (``add_original``), so a generated copy of a pool problem is always
    the one dropped; generated problems are decided in arrival order (the first of a cluster is
    kept) and each id is decided once, so every sample of a problem shares its problem's fate.
    State per problem (indexed or dropped) is bounded and compact (see ``NearDupIndex``); signatures
    spill to a temporary file in ``spill_dir``.
    """

    def __init__(self, cfg: dict, spill_dir: str | None = None) -> None:
        self.enabled = bool(cfg.get("enabled", True))
        params = {k: cfg[k] for k in ("ngram", "num_perm", "threshold", "seed") if k in cfg}
        self.orig = NearDupIndex(**params, spill_dir=spill_dir)
        self.gen = NearDupIndex(**params, spill_dir=spill_dir)
        self._dropped_ids = _Ids()
        self._dropped_reason = _Column(np.uint8)
        self._dropped_of = _Column(np.int32)

    @property
    def n_originals(self) -> int:
        return len(self.orig)

    @property
    def n_generated(self) -> int:
        return len(self.gen)

    @property
    def dropped(self) -> dict[str, tuple[str, str]]:
        """Every decision to drop so far: ``{id: (reason, id it duplicates)}`` (built on each access)."""
        return {self._dropped_ids[i]: self._decision(i) for i in range(len(self._dropped_ids))}

    def _decision(self, i: int) -> tuple[str, str]:
        code = self._dropped_reason[i]
        index = self.orig if code < 2 else self.gen
        return _DROP_REASONS[code], index._ids[self._dropped_of[i]]

    def add_original(self, key: str, text: str, probe: _Probe | None = None) -> None:
        """Index pool problem ``key``; ``probe`` as in ``check_generated``."""
        if self.enabled:
            self.orig._add(key, self.orig._probe(text) if probe is None else probe)

    def check_generated(
        self, key: str, text: str, signature: np.ndarray | None = None, probe: _Probe | None = None
    ) -> tuple[str, str] | None:
        """``(reason, id it duplicates)`` when generated problem ``key`` is dropped, else None (kept).

        ``signature`` (``self.gen.signature(text)``) or the whole ``probe`` (``self.gen.probe(text)``) may
        be computed elsewhere, e.g. in a worker process.
        """
        if not self.enabled or key in self.gen:
            return None
        i = self._dropped_ids.index(key)
        if i >= 0:
            return self._decision(i)
        if probe is None:
            probe = self.gen._probe(text, signature)
        hit, code = self.orig._find(probe), 0
        if not hit:
            hit, code = self.gen._find(probe), 2
        if not hit:
            self.gen._add(key, probe)
            return None
        self._dropped_ids.append(key)
        self._dropped_reason.append(code + (hit[0] == "near"))
        self._dropped_of.append(hit[1])
        return self._decision(len(self._dropped_ids) - 1)


def dedup_problems(
    generated: list[tuple[str, str]], originals: list[tuple[str, str]], cfg: dict
) -> dict[str, tuple[str, str]]:
    """Which generated problems to drop: ``{id: (reason, id of the problem it duplicates)}``.

    ``generated`` is ``[(id, text), ...]`` in priority order (the first of a cluster is kept).
    """
    deduper = ProblemDeduper(cfg)
    for key, text in originals:
        deduper.add_original(key, text)
    for key, text in generated:
        deduper.check_generated(key, text)
    return deduper.dropped
