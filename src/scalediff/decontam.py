"""Decontamination against the evaluation benchmarks: distinctive word n-gram share plus exact match.

A problem P is contaminated by a benchmark problem B when

- both normalise to the same text (``dedup.exact_key``) or the same word sequence (so whitespace,
  LaTeX spacing/delimiters, ``\\dfrac`` vs ``\\frac`` and punctuation changes never hide a copy), or
- they share a large *share* of their distinctive word n-grams (n = ``ngram``): at least
  ``min_share`` of P's distinctive n-grams occur in B (P is mostly B), or at least
  ``min_contained`` of B's distinctive n-grams occur in P (B sits inside a longer P), or
- ``numbers_changed: remove`` and P is B's word sequence with other numbers (every run of digits
  masked). With ``report`` (the default) such a P is counted and named but kept: MATH train holds 55
  such siblings of MATH-500 problems, so removing them costs ~0.7% of clean older problems (measured by
  ``bench/decontam_quality.py``); a run that must not train on a benchmark's templates removes them.

*Distinctive* is derived from the benchmarks themselves: an n-gram found in ``boilerplate_df`` or
more distinct benchmark problems is competition boilerplate ("m and n are relatively prime positive
integers find m" is in nine) and counts for nothing, neither as overlap nor in the denominators.
Shares are taken against one benchmark problem at a time, never against the union of a benchmark.
Words are lower-case alphanumeric runs of the ``normalize_for_match`` text. A benchmark problem
shorter than n words (but at least ``min_words``) counts as one word run of its own length that P
must contain; shorter ones only match exactly.

Why no reference corpus of older problems: measured on the repo's data (``bench/decontam_quality.py``),
marking the n-grams of MATH train as boilerplate changed the AIME 1983-2023 false positives by one
problem, and a reference corpus that overlaps a benchmark (MATH-500 contains AIME problems) silently
blinds the index to those benchmark problems. The pool cannot serve either: it is what gets checked.

``check`` is once per problem, in the filter's worker processes (the built index is pickled to each
once, ~1.4 MB for the five benchmarks): one normalisation, the problem's n-grams looked up in a dict
of the benchmarks' distinctive n-grams (a few tens of thousands), and a count per benchmark problem
they hit. The matched benchmark problem and the longest overlapping word span are computed only for
problems that are flagged.
"""

from __future__ import annotations

import json
import logging
import re
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from scalediff.dedup import normalize_for_match
from scalediff.filter_rules import words

log = logging.getLogger(__name__)

SPAN_CHARS = 160  # longest overlapping text kept per match (the rejects' detail, the funnel)
NUMBERS_CHANGED = ("report", "remove")
NUMBERS_LABEL = "the same words, other numbers"  # how a ``numbers`` match is described (rejects, card)
_DIGITS = re.compile(r"\d+")


def match_words(text: str) -> list[str]:
    """The word sequence decontamination compares: words of the normalised text."""
    return words(normalize_for_match(text))


def numbers_masked(word_sequence: str) -> str | None:
    """The word sequence with every run of digits as ``0``; None when it has no digits (nothing to mask)."""
    masked, n = _DIGITS.subn("0", word_sequence)
    return masked if n else None


class _Problem:
    """One distinct benchmark problem (word-identical rows of several benchmarks share one)."""

    __slots__ = ("refs", "toks", "distinct")

    def __init__(self, toks: list[str]):
        self.refs: list[tuple[str, str]] = []  # (benchmark, problem id)
        self.toks = toks
        self.distinct = 0  # its distinctive n-grams (or 1 for a short whole-text run)


class BenchmarkIndex:
    """Benchmark problems indexed for ``check``: distinctive n-gram -> benchmark problems, exact keys."""

    def __init__(
        self,
        ngram: int = 8,
        min_share: float = 0.4,
        min_contained: float = 0.6,
        boilerplate_df: int = 2,
        min_words: int = 5,
        numbers_changed: str = "report",
    ):
        if numbers_changed not in NUMBERS_CHANGED:
            raise ValueError(f"numbers_changed must be one of {NUMBERS_CHANGED}, not {numbers_changed!r}")
        self.ngram, self.min_share, self.min_contained = ngram, min_share, min_contained
        self.boilerplate_df, self.min_words = boilerplate_df, min_words
        self.numbers_changed = numbers_changed
        self.templates: dict[str, set[int]] = defaultdict(set)  # numbers-masked word sequence -> problems
        self.problems: list[_Problem] = []
        self.exact: dict[str, set[int]] = defaultdict(set)  # exact_key and word sequence -> problems
        self.sizes: dict[str, int] = {}
        self.skipped: dict[str, int] = {}
        self._by_words: dict[str, int] = {}
        self._ready = False

    @classmethod
    def from_config(cls, cfg: dict[str, Any]) -> BenchmarkIndex:
        keys = ("ngram", "min_share", "min_contained", "boilerplate_df", "min_words", "numbers_changed")
        return cls(**{k: cfg[k] for k in keys if k in cfg})

    # ------------------------------------------------------------------ building
    def add(self, name: str, problem: str, pid: str | None = None) -> None:
        """One benchmark problem; ``pid`` names it in verdicts (default: its position in ``name``)."""
        norm = normalize_for_match(problem)
        toks = words(norm)
        pid = pid or str(self.sizes.get(name, 0))
        key = " ".join(toks)
        j = self._by_words.get(key)
        if j is None:
            j = self._by_words[key] = len(self.problems)
            self.problems.append(_Problem(toks))
            if toks:
                self.exact[key].add(j)
            template = numbers_masked(key)
            if template is not None:
                self.templates[template].add(j)
        self.problems[j].refs.append((name, pid))
        exact = "".join(norm.split())
        if exact:
            self.exact[exact].add(j)
        self.sizes[name] = self.sizes.get(name, 0) + 1
        self._ready = False

    def add_jsonl(self, name: str, path: str | Path) -> None:
        """Every benchmark row with a non-empty string ``problem``; other lines are counted and skipped."""
        self.sizes.setdefault(name, 0)
        skipped = 0
        with open(path, encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                    problem = row.get("problem")
                except (json.JSONDecodeError, AttributeError):
                    row, problem = {}, None
                if isinstance(problem, str) and problem.strip():
                    pid = row.get("id")
                    self.add(name, problem, pid if isinstance(pid, str) and pid else None)
                else:
                    skipped += 1
        self.skipped[name] = skipped
        if skipped:
            log.warning("benchmark %s: %d rows without a usable problem were skipped", name, skipped)

    def _build(self) -> None:
        """Document frequencies over the distinct benchmark problems -> boilerplate and the index."""
        n = self.ngram
        postings: dict[str, list[int]] = defaultdict(list)
        short: dict[int, dict[str, int]] = defaultdict(dict)  # length -> whole text -> problem
        for j, p in enumerate(self.problems):
            for g in {" ".join(p.toks[i : i + n]) for i in range(len(p.toks) - n + 1)}:
                postings[g].append(j)
            if self.min_words <= len(p.toks) < n:
                short[len(p.toks)][" ".join(p.toks)] = j
        self.boilerplate = {g for g, js in postings.items() if len(js) >= self.boilerplate_df}
        self.grams = {g: tuple(js) for g, js in postings.items() if len(js) < self.boilerplate_df}
        for p in self.problems:
            p.distinct = 0
        for js in self.grams.values():
            for j in js:
                self.problems[j].distinct += 1
        # a short problem is one whole-text run; boilerplate when it occurs in enough other problems
        self.short: dict[int, dict[str, int]] = {}
        for length, texts in short.items():
            df = Counter(
                g
                for p in self.problems
                for g in {" ".join(p.toks[i : i + length]) for i in range(len(p.toks) - length + 1)}
                if g in texts
            )
            kept = {g: j for g, j in texts.items() if df[g] < self.boilerplate_df}
            if kept:
                self.short[length] = kept
                for j in kept.values():
                    self.problems[j].distinct = 1
        self._ready = True
        log.info(
            "benchmark index: %d distinct problems, %d distinctive %d-grams, %d boilerplate (in >= %d problems)",
            len(self.problems),
            len(self.grams),
            n,
            len(self.boilerplate),
            self.boilerplate_df,
        )

    @property
    def n_boilerplate(self) -> int:
        if not self._ready:
            self._build()
        return len(self.boilerplate)

    # ------------------------------------------------------------------ checking
    def check(self, text: str) -> dict[str, Any]:
        """Benchmark names per kind for one problem text, and the flagged matches.

        ``{"exact", "overlap", "numbers", "partial", "remove": {names}, "matches": [...]}``: ``exact`` and
        ``overlap`` remove the problem; ``numbers`` (a benchmark problem's words with other numbers)
        removes it under ``numbers_changed: remove``; ``remove`` holds the benchmarks that do;
        ``partial`` (some distinctive overlap below both shares) is reported only. ``matches`` holds one
        entry per benchmark of ``remove`` or ``numbers``: ``benchmark``, ``problem`` (its id), ``kind``,
        ``share`` (of the problem's distinctive n-grams), ``contained`` (of the benchmark problem's) and
        ``span`` (the longest overlapping word run, shortened).
        """
        if not self._ready:
            self._build()
        norm = normalize_for_match(text)
        toks = words(norm)
        n = self.ngram
        sequence = " ".join(toks)
        exact = self.exact.get("".join(norm.split()), set()) | self.exact.get(sequence, set())
        counts: Counter[int] = Counter()
        distinct = 0
        seen: set[str] = set()
        for i in range(len(toks) - n + 1):
            g = " ".join(toks[i : i + n])
            if g in seen or g in self.boilerplate:
                continue
            seen.add(g)
            distinct += 1
            js = self.grams.get(g)
            if js:
                counts.update(js)
        short_hits: set[int] = set()
        for length, texts in self.short.items():
            for i in range(len(toks) - length + 1):
                j = texts.get(" ".join(toks[i : i + length]))
                if j is not None:
                    short_hits.add(j)
        hit: dict[str, Any] = {"exact": set(), "overlap": set(), "numbers": set(), "partial": set(), "matches": []}
        flagged: dict[int, tuple[str, float, float]] = {j: ("exact", 1.0, 1.0) for j in exact}
        for j in short_hits - exact:
            flagged[j] = ("overlap", 1 / max(distinct, 1), 1.0)
        for j, k in counts.items():
            if j not in flagged:
                share, contained = k / distinct, k / self.problems[j].distinct
                if share >= self.min_share or contained >= self.min_contained:
                    flagged[j] = ("overlap", share, contained)
                else:
                    hit["partial"].update(name for name, _ in self.problems[j].refs)
        for j in self.templates.get(numbers_masked(sequence), ()):  # None is never a key
            if j not in flagged:
                k = counts.get(j, 0)
                flagged[j] = ("numbers", k / max(distinct, 1), k / max(self.problems[j].distinct, 1))
        # per benchmark, its strongest match: exact, then by share, then other numbers; larger shares first
        best: dict[str, tuple[tuple[bool, bool, float], int, str]] = {}
        for j, (kind, share, contained) in flagged.items():
            rank = (kind == "exact", kind == "overlap", share + contained)
            for name, pid in self.problems[j].refs:
                hit[kind].add(name)
                if name not in best or rank > best[name][0]:
                    best[name] = (rank, j, pid)
        hit["overlap"] -= hit["exact"]
        hit["numbers"] -= hit["exact"] | hit["overlap"]
        hit["partial"] -= hit["exact"] | hit["overlap"] | hit["numbers"]
        hit["remove"] = hit["exact"] | hit["overlap"] | (hit["numbers"] if self.numbers_changed == "remove" else set())
        for name in sorted(best):
            _, j, pid = best[name]
            kind, share, contained = flagged[j]
            hit["matches"].append(
                {
                    "benchmark": name,
                    "problem": pid,
                    "kind": kind,
                    "share": round(share, 3),
                    "contained": round(contained, 3),
                    "span": self._span(toks, j, kind),
                }
            )
        return hit

    def _span(self, toks: list[str], j: int, kind: str) -> str:
        """The longest run of the problem's words covered by distinctive n-grams it shares with problem j."""
        n, p = self.ngram, self.problems[j]
        if kind in ("exact", "numbers"):
            run = toks
        elif len(p.toks) < n:
            run = p.toks
        else:
            lo = hi = start = 0
            for i in range(len(toks) - n + 2):
                g = " ".join(toks[i : i + n]) if i <= len(toks) - n else None
                if g is not None and j in self.grams.get(g, ()):
                    continue
                if i - start > hi - lo:
                    lo, hi = start, i
                start = i + 1
            run = toks[lo : hi - 1 + n] if hi > lo else []
        text = " ".join(run)
        return text if len(text) <= SPAN_CHARS else text[: SPAN_CHARS - 4].rsplit(" ", 1)[0] + " ..."

    @staticmethod
    def names(hit: dict[str, Any]) -> set[str]:
        """The benchmarks whose match removes the problem."""
        return hit["remove"]

    @staticmethod
    def verdict(hit: dict[str, Any]) -> tuple[str, str] | None:
        """``(reason, detail)`` when the hit removes the row; the detail names each matched benchmark
        problem, the shares and the overlapping text."""
        if not hit["remove"]:
            return None
        reason = "contaminated_exact" if hit["exact"] else "contaminated" if hit["overlap"] else "contaminated_numbers"
        return reason, " | ".join(describe(m) for m in hit["matches"] if m["benchmark"] in hit["remove"])


def describe(match: dict[str, Any]) -> str:
    """One match as text: ``aime24 aime2024-I-1 (exact): "every morning aya ..."``."""
    how = {"exact": "exact", "numbers": NUMBERS_LABEL}.get(match["kind"])
    how = how or f"share {match['share']:.2f}, contained {match['contained']:.2f}"
    return f'{match["benchmark"]} {match["problem"]} ({how}): "{match["span"]}"'
