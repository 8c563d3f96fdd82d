"""Decontamination against the evaluation benchmarks: word n-gram overlap plus exact match.

A problem is contaminated by benchmark B when it shares at least one word n-gram with a B
problem (n = ``ngram``, 13 by default, as in GPT-3/Tulu decontamination) or when both
normalise to the same text (``dedup.exact_key``). Words are lower-cased alphanumeric runs, so
whitespace, LaTeX spacing, ``$`` and punctuation changes do not hide an overlap. A benchmark
problem shorter than n words counts as one n-gram of its own length (matched as a contiguous
word run) when it has at least ``min_words`` words; shorter ones only match exactly. Extra
n-gram sizes (``report_ngrams``, default 8) are counted for the report but never remove rows.
"""

from __future__ import annotations

import json
import logging
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from scalediff.dedup import exact_key
from scalediff.filter_rules import words

log = logging.getLogger(__name__)


class _GramIndex:
    """Word n-grams of n words (plus shorter whole texts) -> benchmark names."""

    def __init__(self, n: int, min_words: int):
        self.n, self.min_words = n, min_words
        self.grams: dict[str, set[str]] = defaultdict(set)
        self.short_lengths: set[int] = set()

    def add(self, name: str, toks: list[str]) -> None:
        if len(toks) >= self.n:
            for i in range(len(toks) - self.n + 1):
                self.grams[" ".join(toks[i : i + self.n])].add(name)
        elif len(toks) >= self.min_words:
            self.grams[" ".join(toks)].add(name)
            self.short_lengths.add(len(toks))

    def hits(self, toks: list[str]) -> set[str]:
        found: set[str] = set()
        for k in sorted({self.n} | self.short_lengths):
            for i in range(len(toks) - k + 1):
                names = self.grams.get(" ".join(toks[i : i + k]))
                if names:
                    found |= names
        return found


class BenchmarkIndex:
    def __init__(self, ngram: int = 13, report_ngrams: Iterable[int] = (8,), min_words: int = 5):
        self.ngram = ngram
        self.report_ngrams = sorted({int(n) for n in report_ngrams} - {ngram})
        self.indexes = {n: _GramIndex(n, min_words) for n in [ngram, *self.report_ngrams]}
        self.exact: dict[str, set[str]] = defaultdict(set)
        self.sizes: dict[str, int] = {}
        self.skipped: dict[str, int] = {}

    @classmethod
    def from_config(cls, cfg: dict[str, Any]) -> BenchmarkIndex:
        return cls(cfg.get("ngram", 13), cfg.get("report_ngrams", [8]), cfg.get("min_words", 5))

    def add(self, name: str, problem: str) -> None:
        toks = words(problem)
        for index in self.indexes.values():
            index.add(name, toks)
        key = exact_key(problem)
        if key:
            self.exact[key].add(name)
        self.sizes[name] = self.sizes.get(name, 0) + 1

    def add_jsonl(self, name: str, path: str | Path) -> None:
        """Every benchmark row with a non-empty string ``problem``; other lines are counted and skipped."""
        self.sizes.setdefault(name, 0)
        skipped = 0
        with open(path, encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if not line.strip():
                    continue
                try:
                    problem = json.loads(line).get("problem")
                except (json.JSONDecodeError, AttributeError):
                    problem = None
                if isinstance(problem, str) and problem.strip():
                    self.add(name, problem)
                else:
                    skipped += 1
        self.skipped[name] = skipped
        if skipped:
            log.warning("benchmark %s: %d rows without a usable problem were skipped", name, skipped)

    def check(self, text: str) -> dict[str, Any]:
        """``{"exact": {names}, "ngram": {names}, "report": {n: {names}}}`` for one problem text."""
        toks = words(text)
        return {
            "exact": set(self.exact.get(exact_key(text), ())),
            "ngram": self.indexes[self.ngram].hits(toks),
            "report": {n: self.indexes[n].hits(toks) for n in self.report_ngrams},
        }

    @staticmethod
    def verdict(hit: dict[str, Any]) -> tuple[str, str] | None:
        """``(reason, benchmarks)`` when the hit removes the row."""
        if hit["exact"]:
            return "contaminated_exact", ",".join(sorted(hit["exact"] | hit["ngram"]))
        if hit["ngram"]:
            return "contaminated", ",".join(sorted(hit["ngram"]))
        return None
