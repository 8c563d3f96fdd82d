"""dedup: the compact LSH index decides exactly as the datasketch-based index it replaced, in bounded memory."""

from __future__ import annotations

import hashlib
import random
import sys
import tracemalloc

import numpy as np
import pytest
from datasketch import MinHash, MinHashLSH

from scalediff import dedup
from scalediff.dedup import ProblemDeduper, exact_key, shingles
from scalediff.records import problem_id

CFG = {"enabled": True, "ngram": 3, "num_perm": 128, "threshold": 0.8, "seed": 1}


# ----------------------------------------------------------------------------- reference (the index before)
class _RefIndex:
    """The datasketch-backed index this module shipped before the compact one (per-band Python sets),
    unchanged except that it returns every candidate tied at the best similarity (its set order is
    arbitrary) and records each candidate's similarity, to show which cases the input exercised."""

    def __init__(self, cfg: dict, sims: list[float]):
        self.ngram, self.num_perm, self.threshold, self.seed = (
            cfg["ngram"],
            cfg["num_perm"],
            cfg["threshold"],
            cfg["seed"],
        )
        digest = lambda data: hashlib.blake2b(data, digest_size=16).digest()  # noqa: E731
        self.lsh = MinHashLSH(threshold=self.threshold, num_perm=self.num_perm, hashfunc=digest)
        self.exact: dict[str, str] = {}
        self.signatures: dict[str, np.ndarray] = {}
        self.sims = sims

    def minhash(self, text: str) -> MinHash:
        m = MinHash(num_perm=self.num_perm, seed=self.seed)
        m.update_batch(shingles(text, self.ngram))
        return m

    def find(self, text: str, m: MinHash) -> tuple[str, set[str]] | None:
        hit = self.exact.get(exact_key(text))
        if hit is not None:
            return "exact", {hit}
        if not self.signatures:
            return None
        best: set[str] = set()
        best_sim = self.threshold
        for key in self.lsh.query(m):
            sim = float(np.mean(self.signatures[key] == m.hashvalues))
            self.sims.append(sim)
            if sim > best_sim:
                best, best_sim = set(), sim
            if sim >= best_sim:
                best.add(key)
        return ("near", best) if best else None

    def add(self, key: str, text: str, m: MinHash) -> None:
        if key in self.signatures:
            return
        self.exact.setdefault(exact_key(text), key)
        self.lsh.insert(key, m)
        self.signatures[key] = np.asarray(m.hashvalues, dtype=np.uint32).copy()


class _RefDeduper:
    def __init__(self, cfg: dict):
        self.sims: list[float] = []
        self.orig, self.gen = _RefIndex(cfg, self.sims), _RefIndex(cfg, self.sims)
        self.dropped: dict[str, tuple[str, set[str]]] = {}

    def add_original(self, key: str, text: str) -> None:
        self.orig.add(key, text, self.orig.minhash(text))

    def check_generated(self, key: str, text: str) -> tuple[str, set[str]] | None:
        if key in self.gen.signatures:
            return None
        if key in self.dropped:
            return self.dropped[key]
        m = self.gen.minhash(text)
        hit = self.orig.find(text, m)
        if hit:
            self.dropped[key] = ("duplicate_of_original" if hit[0] == "exact" else "near_duplicate_of_original", hit[1])
            return self.dropped[key]
        hit = self.gen.find(text, m)
        if hit:
            self.dropped[key] = ("duplicate" if hit[0] == "exact" else "near_duplicate", hit[1])
            return self.dropped[key]
        self.gen.add(key, text, m)
        return None


# ----------------------------------------------------------------------------- synthetic problems
_VOCAB = [f"{a}{b}" for a in ("x", "n", "k", "find", "let", "sum", "area", "prime", "root", "mod") for b in range(300)]


def _text(rng: random.Random, lo: int = 12, hi: int = 60) -> str:
    return " ".join(rng.choice(_VOCAB) for _ in range(rng.randint(lo, hi)))


def _variant(rng: random.Random, text: str) -> str:
    """Edits whose word-3-gram Jaccard with ``text`` spans ~0.6-1.0, so estimates land on both sides
    of the threshold; or a copy that only differs after normalisation (case, spacing, math delimiters)."""
    toks = text.split()
    kind = rng.random()
    if kind < 0.15:
        return "  " + text.upper().replace(" ", "  ", 3) + " ."
    if kind < 0.25:
        return "$" + " ".join(toks[:3]) + "$ " + " ".join(toks[3:]) + "."
    for _ in range(rng.choice((1, 1, 2, 2, 3, 4))):
        i = rng.randrange(len(toks))
        edit = rng.random()
        if edit < 0.6:
            toks[i] = rng.choice(_VOCAB)
        elif edit < 0.8 or len(toks) < 8:
            toks.insert(i, rng.choice(_VOCAB))
        else:
            del toks[i]
    return " ".join(toks)


def _workload(seed: int, n_orig: int, n_gen: int) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """Originals (with near-duplicate clusters among them) and generated rows in arrival order: fresh
    problems, variants of originals and of earlier generated problems (chains), and repeated ids (the
    samples of a problem) both adjacent and far apart."""
    rng = random.Random(seed)
    originals: list[tuple[str, str]] = []
    for i in range(n_orig):
        text = _variant(rng, originals[rng.randrange(i)][1]) if i > 10 and rng.random() < 0.1 else _text(rng)
        originals.append((f"p-{i}", text))
    generated: list[tuple[str, str]] = []
    while len(generated) < n_gen:
        r = rng.random()
        if r < 0.3:
            text = _text(rng)
        elif r < 0.5:
            text = _variant(rng, rng.choice(originals)[1])
        elif r < 0.85 and generated:
            text = _variant(rng, rng.choice(generated)[1])
        elif generated:  # a sample of a problem seen before
            generated.append(rng.choice(generated))
            continue
        else:
            text = _text(rng)
        generated += [(problem_id(text, "g"), text)] * rng.choice((1, 1, 2))
    return originals, generated[:n_gen]


def _compare(cfg: dict, originals: list[tuple[str, str]], generated: list[tuple[str, str]]) -> list[float]:
    """Run both indexes on the same input; every decision must match. Returns the reference's candidate
    similarities."""
    new, ref = ProblemDeduper(cfg), _RefDeduper(cfg)
    for key, text in originals:
        new.add_original(key, text)
        ref.add_original(key, text)
    assert new.n_originals == len(ref.orig.signatures)
    for n, (key, text) in enumerate(generated):
        got, want = new.check_generated(key, text), ref.check_generated(key, text)
        if want is None:
            assert got is None, (n, key, got)
        else:
            assert got is not None and got[0] == want[0] and got[1] in want[1], (n, key, got, want)
    assert new.n_generated == len(ref.gen.signatures)
    assert new.dropped.keys() == ref.dropped.keys()
    return ref.sims


# ----------------------------------------------------------------------------- tests
@pytest.mark.parametrize("threshold", [0.8, 0.75])  # 0.75 = 96/128: a similarity can equal it exactly
def test_compact_index_decides_as_datasketch_index(threshold):
    cfg = {**CFG, "threshold": threshold}
    # enough rows that bucket tables merge many times and signatures spill to the temporary file
    originals, generated = _workload(seed=int(threshold * 100), n_orig=1500, n_gen=4000)
    sims = _compare(cfg, originals, generated)
    # the input straddles the threshold: candidates one matching slot above, at and below it
    slots = {round(s * 128) for s in sims}
    at = threshold * 128
    assert {int(at) - 1, int(at) + 1} <= slots, sorted(slots)
    if at.is_integer():
        assert int(at) in slots


def test_band_key_collisions_change_no_decision(monkeypatch):
    """With an 8-bit stand-in for the 64-bit band/id hashes, most candidates and id matches are hash
    collisions; the stored signatures and strings must still give the same decisions."""
    real = dedup._hash64
    monkeypatch.setattr(dedup, "_hash64", lambda data: real(data) & 0xFF)
    originals, generated = _workload(seed=7, n_orig=400, n_gen=1200)
    _compare(CFG, originals, generated)


def test_exact_duplicates_after_normalisation_and_repeated_ids():
    d = ProblemDeduper(CFG)
    d.add_original("p-1", "Find $x + y$ if $x = 2$ and $y = 3$.")
    d.add_original("p-2", "find \\(x+y\\) if x=2 and y=3")  # same exact key: p-1 answers for it
    assert d.check_generated("g-1", "FIND  $x\\,+\\;y$ if $x=2$ and $y=3$ .") == ("duplicate_of_original", "p-1")
    assert d.check_generated("g-2", "Compute the area of a circle of radius 7, in terms of pi.") is None
    assert d.check_generated("g-3", "compute the area of a circle of radius 7 in terms of $\\pi$") is not None
    assert d.check_generated("g-2", "(a later sample: same id, same fate)") is None
    assert d.check_generated("g-1", "(a later sample)") == ("duplicate_of_original", "p-1")
    assert d.dropped.keys() == {"g-1", "g-3"} and d.n_generated == 1 and d.n_originals == 2


def _deep_size(obj: object, seen: set[int] | None = None) -> int:
    """Bytes held by ``obj`` and everything it references (numpy arrays by their buffers)."""
    seen = set() if seen is None else seen
    if id(obj) in seen or isinstance(obj, type):
        return 0
    seen.add(id(obj))
    if isinstance(obj, np.ndarray):  # getsizeof counts the buffer of an array that owns it
        return sys.getsizeof(obj) + (0 if obj.base is None else _deep_size(obj.base, seen))
    size = sys.getsizeof(obj)
    if isinstance(obj, dict):
        size += sum(_deep_size(k, seen) + _deep_size(v, seen) for k, v in obj.items())
    elif isinstance(obj, (list, tuple, set, frozenset)):
        size += sum(_deep_size(v, seen) for v in obj)
    elif hasattr(obj, "__dict__") and not callable(obj):
        size += _deep_size(vars(obj), seen)
    return size


def _problems(n: int) -> list[tuple[str, str, np.ndarray]]:
    rng = random.Random(3)
    index = dedup.NearDupIndex()
    out = []
    for _ in range(n):
        text = _text(rng, 6, 14)  # short: the signature's cost, not the index's, grows with length
        out.append((problem_id(text, "g"), text, index.signature(text)))
    return out


def test_index_memory_per_problem():
    """Everything the deduper holds after 20k distinct generated problems (paper-shaped ids), counted
    object by object: <= 0.5 KB per problem (the datasketch index held ~3.6 KB)."""
    n = 20_000
    d = ProblemDeduper(CFG)
    for key, text, sig in _problems(n):
        d.check_generated(key, text, sig)
    assert d.n_generated > 0.99 * n
    per_problem = _deep_size(d) / n
    assert per_problem <= 512, per_problem


@pytest.mark.slow
def test_index_memory_per_problem_traced():
    """The same at 50k through tracemalloc, which also sees the peak (a bucket-table merge copies its
    arrays) and allocator overheads."""
    n = 50_000
    problems = _problems(n)
    tracemalloc.start()
    try:
        d = ProblemDeduper(CFG)
        for key, text, sig in problems:
            d.check_generated(key, text, sig)
        current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert current / n <= 512 and peak / n <= 512, (current / n, peak / n)
