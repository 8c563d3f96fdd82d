"""Decontamination quality on the repo's data (bench/decontam_quality.py) and the verdict's evidence."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from scalediff.decontam import BenchmarkIndex

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "config" / "data" / "benchmarks"


def _quality_module():
    spec = importlib.util.spec_from_file_location("decontam_quality", REPO / "bench" / "decontam_quality.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def quality():
    return _quality_module()


@pytest.fixture(scope="module")
def figures(quality):
    return quality.measure()


@pytest.mark.parametrize("corpus", ["AIME 1983-2023", "MATH train"])
def test_false_positives_on_older_problems_at_most_one_percent(figures, corpus):
    """AIME 1983-2023 and MATH train predate the benchmarks; the only flags allowed are ~1%, which
    includes the AIME problems MATH-500 reprints (counted in ``exact``)."""
    fp = figures["false_positives"][corpus]
    assert fp["rate"] <= 0.01, fp


@pytest.mark.parametrize("kind", ["verbatim", "whitespace", "latex", "punctuation"])
def test_every_verbatim_and_lightly_edited_plant_is_caught(figures, kind):
    r = figures["recall"][kind]
    assert r["caught"] == r["plants"] == 620, r


def test_edited_plants_are_caught_by_shared_ngrams(figures):
    """Not goals but floors measured on this data: they fail when the n-gram share stops working and
    only the exact match is left (it catches none of these)."""
    assert figures["recall"]["embedded"]["rate"] >= 0.99
    assert figures["recall"]["reworded (2+ sentences)"]["rate"] >= 0.6
    assert figures["recall"]["numbers"]["rate"] >= 0.35


def test_every_renumbered_plant_is_named_and_kept_unless_removal_is_asked(figures, quality):
    """A benchmark problem with every number changed is named as the benchmark's words with other numbers
    (reported, not removed, by default: MATH train has such siblings of MATH-500 problems, and the share
    rule alone keeps most of them); ``numbers_changed: remove`` removes every one."""
    assert figures["recall"]["numbers, named"]["caught"] == 620
    assert figures["recall"]["numbers"]["rate"] < 0.9  # the default keeps most of them
    assert figures["false_positives"]["MATH train"]["other_numbers"] > 0
    removed = quality.measure({"numbers_changed": "remove"})
    assert removed["recall"]["numbers"]["caught"] == 620
    assert removed["false_positives"]["MATH train"]["other_numbers"] == 0  # all now flagged


def test_competition_boilerplate_is_not_evidence(quality):
    """The issue's marble problem ends in the AIME boilerplate shared by nine benchmark problems."""
    index, _, _ = quality.build_index()
    assert quality.MARBLE.endswith("where $m$ and $n$ are relatively prime positive integers. Find $m+n$.")
    assert BenchmarkIndex.verdict(index.check(quality.MARBLE)) is None


def test_boilerplate_comes_from_document_frequency():
    ending = "The answer can be written as $\\frac{m}{n}$ where $m$ and $n$ are coprime positive integers. Find $m+n$."
    bench = [
        "A regular hexagon has side length 3 and a point is chosen uniformly inside it. " + ending,
        "Two fair dice with faces numbered one to eight are rolled and the product is recorded. " + ending,
    ]
    new = "Seven cards are dealt from a shuffled deck and the number of hearts is counted. " + ending
    for df, flagged in ((2, False), (3, True)):  # in 2 of 2 problems: boilerplate unless df > 2
        index = BenchmarkIndex(boilerplate_df=df)
        for i, p in enumerate(bench):
            index.add("b", p, f"b-{i}")
        assert (BenchmarkIndex.verdict(index.check(new)) is not None) is flagged, df
    # a problem that is in two benchmarks (word-identical) keeps its n-grams distinctive
    index = BenchmarkIndex()
    index.add("x", bench[0], "x-0")
    index.add("y", bench[0].replace("$", ""), "y-0")
    edited = bench[0].replace("regular hexagon", "hexagon, regular,").replace("3", "three")
    reason, detail = BenchmarkIndex.verdict(index.check(edited))
    assert reason == "contaminated" and "x x-0" in detail and "y y-0" in detail


def test_verdict_names_the_benchmark_problem_and_the_overlapping_text():
    from scalediff.decontam import match_words

    index = BenchmarkIndex()
    index.add_jsonl("aime24", BENCH / "aime24.jsonl")
    rows = [json.loads(line) for line in (BENCH / "aime24.jsonl").read_text().splitlines()]
    target = rows[3]
    # a new first sentence; the rest of the benchmark problem follows, lightly edited
    text = "Jen plays a game with her friends on Saturday evenings." + target["problem"].split(".", 1)[1]
    text = text.replace("$", "").replace(",", ";")
    hit = index.check(text)
    reason, detail = BenchmarkIndex.verdict(hit)
    assert reason == "contaminated"
    (match,) = hit["matches"]
    assert (match["benchmark"], match["problem"], match["kind"]) == ("aime24", target["id"], "overlap")
    assert match["share"] >= index.min_share
    span = match["span"].removesuffix(" ...")
    assert len(span.split()) >= 20 and span in " ".join(match_words(target["problem"]))  # its words, in order
    assert detail.startswith(f"aime24 {target['id']} (share ") and match["span"] in detail
