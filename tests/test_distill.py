"""distill's shard reads: which problems a shard job gets, and what it reads to get them."""

import os

import pytest

from scalediff.distill import problems_to_solve
from scalediff.records import PROBLEM_SCHEMA, shard_slice, write_rows

BLANK = [None, "", "  "]  # what counts as no solution


def _bytes_read() -> int:
    with open("/proc/self/io") as fh:
        return int(next(line for line in fh if line.startswith("rchar")).split()[1])


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("distill")

    def row(pid, origin, solution):
        return {"id": pid, "problem": f"Problem {pid}?", "solution": solution, "answer": None, "origin": origin}

    generated = [{**row(f"g-{i}", "generated", None), "source": "gen"} for i in range(2500)]
    # Paper-length pool solutions (~16 KB, incompressible), except every fourth problem has none.
    pool = [
        {**row(f"p-{i}", "original", BLANK[i // 4 % 3] if i % 4 == 0 else os.urandom(8192).hex()), "source": "pool"}
        for i in range(3000)
    ]
    write_rows(generated, tmp_path / "generated.parquet", PROBLEM_SCHEMA)
    write_rows(pool, tmp_path / "pool.parquet", PROBLEM_SCHEMA)
    missing = [r for i, r in enumerate(pool) if i % 4 == 0]
    return tmp_path, generated, {"none": [], "all": pool, "missing": missing}


@pytest.mark.parametrize("include_original", ["none", "all", "missing"])
def test_shards_tile_generated_then_originals(inputs, include_original):
    folder, generated, originals = inputs
    expected = [
        {k: r[k] for k in ("id", "problem", "origin", "source")} for r in generated + originals[include_original]
    ]
    for n_shards in (1, 3, 8):
        shards = [
            problems_to_solve(folder / "generated.parquet", folder / "pool.parquet", include_original, k, n_shards)
            for k in range(n_shards)
        ]
        assert [r for s in shards for r in s] == expected
        assert max(map(len, shards)) - min(map(len, shards)) <= 1


def test_a_shard_reads_its_rows_problem_columns_not_the_pool_solutions(inputs):
    folder, _, _ = inputs
    pool_mb = os.path.getsize(folder / "pool.parquet") / 2**20
    before = _bytes_read()
    rows = problems_to_solve(folder / "generated.parquet", folder / "pool.parquet", "all", 7, 8)
    read_mb = (_bytes_read() - before) / 2**20
    part = shard_slice(2500 + 3000, 7, 8)
    assert [r["id"] for r in rows] == [f"p-{i - 2500}" for i in range(part.start, part.stop)]
    assert pool_mb > 30 and read_mb < 2, f"read {read_mb:.1f} MB of a {pool_mb:.0f} MB pool"
