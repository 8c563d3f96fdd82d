"""filter at scale: the rules pass streams (memory flat in the number of rows), its worker processes
change nothing, and gather pairs verdict shards with candidates however samples are ordered."""

from __future__ import annotations

import json
import os
import tracemalloc
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from test_filter import GOOD, _bench_problems, _benchmarks, _disabled, _outputs, _pool, sol

from scalediff import filter as flt

WORDS = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron pi rho sigma tau".split()


def _solutions(path: Path, n: int, reasoning_words: int = 300, write: bool = True) -> Path | pa.Table:
    """``n`` distinct generated rows; every 7th truncated, every 11th without a box, every 13th a loop."""
    rows = []
    for i in range(n):
        a, b = i % 997 + 2, i // 997 + 3
        words = " ".join(f"{WORDS[(i * 7 + j * j) % len(WORDS)]}{(i + j) % 101}" for j in range(reasoning_words))
        completion = f"<think>\nWe combine {a} and {b}. {words}\n</think>\n\nSo the answer is $\\boxed{{{a + b}}}$."
        if i % 13 == 0:
            completion = "<think>\n" + "wait let me recompute the same sum again " * 60 + "</think> $\\boxed{1}$"
        if i % 11 == 0:
            completion = completion.replace("\\boxed", "")
        rows.append(
            sol(
                f"g-{i:06d}",
                f"A crate holds {a} apples and {b} pears; case {i}. How many fruits are in the crate?",
                completion,
                finish_reason="length" if i % 7 == 0 else "stop",
                completion_tokens=reasoning_words * 2,
            )
        )
    if not write:
        return pa.Table.from_pylist(rows)
    pq.write_table(pa.Table.from_pylist(rows), path, row_group_size=256)
    return path


def _rules(tmp: Path, solutions: Path, cfg: dict, tag: str, workers: int = 1) -> dict:
    return flt.run_rules(
        str(solutions),
        str(_pool(tmp)),
        _benchmarks(),
        cfg,
        str(tmp / f"cand-{tag}.parquet"),
        str(tmp / f"rej-{tag}.parquet"),
        str(tmp / f"stats-{tag}.json"),
        workers=workers,
    )


def test_worker_processes_change_nothing(tmp_path):
    solutions = _solutions(tmp_path / "s.parquet", 700, reasoning_words=60)
    one = _rules(tmp_path, solutions, _disabled(), "one", workers=1)
    two = _rules(tmp_path, solutions, _disabled(), "two", workers=2)
    assert one == two
    assert one["rows"]["generated"]["rejected"]["truncated"] == 100  # every 7th of 700
    for name in ("cand", "rej"):
        a, b = pq.read_table(tmp_path / f"{name}-one.parquet"), pq.read_table(tmp_path / f"{name}-two.parquet")
        assert a.num_rows and a.equals(b)


def _mixed_rows(n: int) -> tuple[list[dict], list[dict]]:
    """Teacher rows and a pool that reach every decision the main process takes after the workers' checks:
    exact and near duplicates, benchmark copies, originals with a gold answer (agreeing or not, two
    adjacent samples each), duplicate keys, pool rows superseded by a passing teacher solution."""
    rows = _solutions(Path(os.devnull), n, reasoning_words=30, write=False).to_pylist()
    aime = _bench_problems("aime24.jsonl")
    pool = []
    for i in range(0, n, 50):
        rows[i + 1]["problem"] = rows[i]["problem"].upper().replace(" ", "  ")  # exact duplicate
        rows[i + 2]["problem"] = rows[i]["problem"] + " Explain briefly."  # near duplicate
        rows[i + 3]["problem"] = aime[i // 50 % len(aime)]  # benchmark copy
        pid = f"p-{i}"
        problem = f"What is the remainder when {i + 100} is divided by 7? Give the remainder only."
        for j, sample in ((5, 0), (6, 1)):  # two samples of one original: gold agrees for i % 100 == 0
            rows[i + j].update(id=pid, problem=problem, origin="original", sample=sample, source="math_train")
        pool.append(
            {
                "id": pid,
                "problem": problem,
                "solution": f"100 + {i} leaves a remainder. $\\boxed{{{(i + 100) % 7}}}$" if i % 150 else None,
                "answer": str(rows[i + 5]["completion"].rsplit("boxed{", 1)[-1].split("}")[0] if i % 100 == 0 else -1),
                "origin": "original",
                "source": "math_train",
            }
        )
        rows[i + 7] = dict(rows[i + 8])  # duplicate (id, sample) key: the second is quarantined
    return rows, pool


def test_worker_decisions_match_in_process_whatever_the_row_groups(tmp_path):
    """Decontamination, the gold check, MinHash probes and the candidate copies run in the workers; the
    ordered decisions stay in the main process. Two workers over row groups of 100 rows give exactly
    what one process gives over one 2,600-row group (read as slices of up to 1,024 rows)."""
    rows, pool_rows = _mixed_rows(2_600)
    cfg = _disabled(original={"solution_rules": True, "check_gold": True, "decontaminate": "remove"})
    pool = tmp_path / "pool.parquet"
    pq.write_table(pa.Table.from_pylist(pool_rows), pool, row_group_size=7)
    stats = {}
    for tag, group, workers in (("big", 1_000_000, 1), ("small", 100, 2)):
        solutions = tmp_path / f"s-{tag}.parquet"
        pq.write_table(pa.Table.from_pylist(rows), solutions, row_group_size=group)
        stats[tag] = flt.run_rules(
            str(solutions),
            str(pool),
            _benchmarks(),
            cfg,
            str(tmp_path / f"cand-{tag}.parquet"),
            str(tmp_path / f"rej-{tag}.parquet"),
            str(tmp_path / f"stats-{tag}.json"),
            workers=workers,
        )
    assert pq.ParquetFile(tmp_path / "s-big.parquet").metadata.num_row_groups == 1
    assert stats["big"] == stats["small"]
    for name in ("cand", "rej"):
        a, b = pq.read_table(tmp_path / f"{name}-big.parquet"), pq.read_table(tmp_path / f"{name}-small.parquet")
        assert a.num_rows and a.equals(b), name
    gen, orig = stats["big"]["rows"]["generated"], stats["big"]["rows"]["original"]
    for reason in ("duplicate", "near_duplicate", "contaminated_exact", "truncated"):
        assert gen["rejected"].get(reason), (reason, gen)
    assert gen["quarantined"] == {"duplicate_key": 52}
    assert orig["rejected"].get("gold_mismatch") and orig["kept"] and orig["rejected"].get("superseded_by_distilled")
    kept = pq.read_table(tmp_path / "cand-big.parquet").to_pylist()
    assert [r["row"] for r in kept if r["file"] == "solutions"] == sorted(
        r["row"] for r in kept if r["file"] == "solutions"
    )
    assert all(r["solution"] == rows[r["row"]]["completion"] for r in kept if r["file"] == "solutions")


def test_rules_memory_stays_flat_as_rows_grow(tmp_path):
    """Peak Python memory of the rules pass over 12,000 rows stays within 2 MB of that over 1,500 rows
    (holding per-row state, as a whole-table pass does, costs ~0.5 KB per row: +5 MB here).
    Dedup is off: its signatures are per-problem state by design."""
    cfg = _disabled(dedup={"enabled": False})
    peaks = {}
    for n in (1_500, 12_000):
        solutions = _solutions(tmp_path / f"s{n}.parquet", n, reasoning_words=40)
        tracemalloc.start()
        stats = _rules(tmp_path, solutions, cfg, str(n))
        peaks[n] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert stats["inputs"]["solutions"] == n
    growth = peaks[12_000] - peaks[1_500]
    print(f"peak traced memory: {peaks} -> growth {growth / 1e6:.2f} MB")
    assert growth < 2_000_000, peaks


def _verdicts(tmp: Path, cand: Path, cfg: dict, shards: int) -> list[str]:
    paths = []
    for i in range(shards):
        out = tmp / f"v{i}.parquet"
        flt.run_model_shard(str(cand), "unused", i, shards, {"filter": cfg, "seed": 0, "engine": {}}, str(out))
        paths.append(str(out))
    return paths


def test_gather_pairs_verdicts_with_interleaved_samples(tmp_path):
    problem = "A box holds {} red and 4 blue balls. How many balls are in the box altogether?"
    rows = [
        sol("g-a", problem.format(3), GOOD.replace("{5}", "{7}"), sample=0),
        sol("g-b", problem.format(5), GOOD.replace("{5}", "{9}"), sample=0),
        sol("g-a", problem.format(3), GOOD.replace("{5}", "{7}"), sample=1),  # g-a's samples are not adjacent
    ]
    solutions = tmp_path / "s.parquet"
    pq.write_table(pa.Table.from_pylist(rows), solutions)
    cfg = _disabled()
    _rules(tmp_path, solutions, cfg, "x")
    cand = tmp_path / "cand-x.parquet"
    verdicts = _verdicts(tmp_path, cand, cfg, shards=2)
    assert [pq.read_table(v)["id"].to_pylist() for v in verdicts] == [["g-a", "g-a"], ["g-b"]]
    args = (str(cand), str(tmp_path / "rej-x.parquet"), str(tmp_path / "stats-x.json"))
    funnel = flt.run_gather(*args, verdicts, cfg, _outputs(tmp_path))
    assert funnel["by_origin"]["generated"]["kept"] == 3
    out = pq.read_table(_outputs(tmp_path)["generated"])
    assert list(zip(out["id"].to_pylist(), out["sample"].to_pylist(), strict=True)) == [
        ("g-a", 0),
        ("g-b", 0),
        ("g-a", 1),
    ]

    # a verdict with no candidate, or a candidate with no verdict, is an error and writes nothing
    stray = pq.read_table(verdicts[1]).to_pylist()
    pq.write_table(
        pa.Table.from_pylist([*stray, {**stray[0], "id": "g-z"}], flt.VERDICT_SCHEMA), tmp_path / "stray.parquet"
    )
    outputs = {k: str(tmp_path / "o2" / Path(v).name) for k, v in _outputs(tmp_path).items()}
    with pytest.raises(RuntimeError, match="match no generated candidate"):
        flt.run_gather(*args, [verdicts[0], str(tmp_path / "stray.parquet")], cfg, outputs)
    with pytest.raises(RuntimeError, match="no model-based verdict for generated candidate g-b#0"):
        flt.run_gather(*args, [verdicts[0]], cfg, outputs)
    assert not Path(outputs["generated"]).exists() and not Path(outputs["rejects"]).exists()
    assert json.loads(Path(_outputs(tmp_path)["funnel"]).read_text())["by_origin"]["generated"]["kept"] == 3
