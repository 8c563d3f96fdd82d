import json

import pyarrow as pa
import pytest

from scalediff.records import (
    PROBLEM_SCHEMA,
    ShardCheckpoint,
    atomic_path,
    problem_id,
    read_rows,
    shard_slice,
    write_rows,
)


def test_problem_id_is_stable_and_whitespace_insensitive():
    assert problem_id("Find  $x$.\n") == problem_id("Find $x$.")
    assert problem_id("Find $x$.") != problem_id("Find $y$.")
    assert problem_id("a", "g").startswith("g-")


@pytest.mark.parametrize("n,k", [(10, 3), (7, 7), (3, 5), (0, 2), (1000, 64)])
def test_shard_slices_partition_the_rows(n, k):
    covered = []
    for i in range(k):
        covered.extend(range(n)[shard_slice(n, i, k)])
    assert covered == list(range(n))


def test_shard_slice_rejects_bad_index():
    with pytest.raises(ValueError):
        shard_slice(10, 3, 3)


def test_atomic_path_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "out.parquet"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert not target.exists()
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("umask", [0o022, 0o002, 0o077])
def test_atomic_files_get_the_umask_mode_not_0600(tmp_path, umask):
    """Outputs must be readable by colleagues: the mode is what open() would give, 0666 & ~umask."""
    import os

    old = os.umask(umask)
    try:
        write_rows([{"id": "p-1", "problem": "1+1"}], tmp_path / "out.parquet")
    finally:
        os.umask(old)
    assert (tmp_path / "out.parquet").stat().st_mode & 0o777 == 0o666 & ~umask


def test_write_rows_enforces_schema(tmp_path):
    row = {"id": "p-1", "problem": "x", "solution": None, "answer": None, "origin": "original", "source": "s"}
    write_rows([row], tmp_path / "a.parquet", PROBLEM_SCHEMA)
    assert read_rows(tmp_path / "a.parquet") == [row]
    with pytest.raises((pa.ArrowInvalid, pa.ArrowTypeError, ValueError)):
        write_rows([{**row, "id": None}], tmp_path / "b.parquet", PROBLEM_SCHEMA)


def test_checkpoint_drops_a_torn_last_line(tmp_path):
    ckpt = ShardCheckpoint(tmp_path / "shard.parquet")
    ckpt.append([{"key": "a", "v": 1}, {"key": "b", "v": 2}])
    with open(ckpt.path, "ab") as fh:  # a kill in the middle of the next write
        fh.write(json.dumps({"key": "c"}).encode()[:5])
    size = ckpt.path.stat().st_size
    assert ckpt.done_keys() == {"a", "b"}
    assert ckpt.path.stat().st_size == size  # reading (e.g. while the job appends) changes nothing
    assert [r["key"] for r in ckpt.load()] == ["a", "b"]  # the writer's reload truncates the torn line
    assert ckpt.path.stat().st_size < size
    ckpt.append([{"key": "c", "v": 3}])
    assert [r["key"] for r in ckpt.rows_in_order(["c", "b", "a"])] == ["c", "b", "a"]
    ckpt.discard()
    assert not ckpt.path.exists()


def test_checkpoint_returns_only_rows_of_the_current_jobs(tmp_path):
    ckpt = ShardCheckpoint(tmp_path / "shard.parquet")
    ckpt.append([{"key": k, "v": i} for i, k in enumerate("abc")])
    assert [r["key"] for r in ckpt.rows_in_order(["d", "b"])] == ["b"]
    assert ckpt.done_keys(["d", "b"]) == {"b"}
    assert ckpt.rows_in_order([]) == []


def test_checkpoint_rows_of_a_changed_job_are_not_reused(tmp_path):
    """The same key with another prompt is another job: rows carry their job's digest."""
    job = ShardCheckpoint.JOB
    ckpt = ShardCheckpoint(tmp_path / "shard.parquet")
    ckpt.append([{"key": "a", job: "v1", "t": "old"}, {"key": "b", job: "v1", "t": "b"}])
    assert ckpt.done_keys({"a": "v2", "b": "v1"}) == {"b"}
    ckpt.append([{"key": "a", job: "v2", "t": "new"}])
    assert ckpt.rows_in_order({"a": "v2", "b": "v1"}) == [{"key": "a", "t": "new"}, {"key": "b", "t": "b"}]


def test_checkpoint_made_another_way_is_discarded_saying_why(tmp_path, caplog):
    from scalediff.records import Fingerprint

    out = tmp_path / "shard.parquet"
    old = ShardCheckpoint(out, fingerprint=Fingerprint(model="m", sampling={"temperature": 0.8}))
    old.append([{"key": "a", "v": 1}])
    same = ShardCheckpoint(out, fingerprint=Fingerprint(model="m", sampling={"temperature": 0.8}))
    assert same.rows_in_order(["a"]) == [{"key": "a", "v": 1}]
    new = ShardCheckpoint(out, fingerprint=Fingerprint(model="m", sampling={"temperature": 1.0}))
    assert new.rows() == [] and new.done_keys() == set() and old.path.exists()  # reading deletes nothing
    with caplog.at_level("INFO"):
        assert new.load() == []
    assert ": sampling changed" in caplog.text
    assert not new.path.exists()
    new.append([{"key": "a", "v": 2}])
    assert new.rows_in_order(["a"]) == [{"key": "a", "v": 2}] and same.rows() == []


def test_checkpoint_without_a_fingerprint_is_discarded(tmp_path, caplog):
    """What the previous version wrote (rows only) cannot say how it was made: never resumed."""
    ckpt = ShardCheckpoint(tmp_path / "shard.parquet")
    ckpt.path.write_text(json.dumps({"key": "a", "v": 1}) + "\n")
    with caplog.at_level("INFO"):
        assert ckpt.load() == []
    assert "no fingerprint" in caplog.text and not ckpt.path.exists()


def test_source_identity_follows_file_contents_and_large_file_stats(tmp_path):
    import os

    from scalediff.records import CONTENT_DIGEST_BYTES, source_identity

    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text('{"a": 1}')
    (model / "weights.bin").write_bytes(b"x" * (CONTENT_DIGEST_BYTES + 1))  # large: known by size and mtime
    first = source_identity(model)
    assert source_identity(model) == first
    (model / "config.json").write_text('{"a": 2}')  # same size, new content
    second = source_identity(model)
    assert second != first
    os.utime(model / "weights.bin", ns=(1, 1))  # rewritten in place: same size, other mtime
    assert source_identity(model) != second
    assert source_identity("org/not-a-local-model") == {"name": "org/not-a-local-model"}


@pytest.mark.parametrize(
    "value,reason",
    [
        (None, "missing problem"),
        (float("nan"), "missing problem"),
        (3, "problem is not a string (int)"),
        ("  \n", "empty problem"),
        ("Find x.", None),
    ],
)
def test_text_defect_names_the_problem(value, reason):
    from scalediff.records import text_defect

    assert text_defect(value) == reason


def test_iter_batches_holds_one_row_group_at_a_time(tmp_path):
    """A pass over a many-row-group file stays bounded (pyarrow's default pre-buffering would keep
    every row group read so far: +1 MB per group here, +15 MB per 1,024 paper-length solutions)."""
    import os

    import pyarrow.parquet as pq

    from scalediff.records import iter_batches

    path = tmp_path / "long.parquet"
    group = 64  # rows of 16 KB of incompressible text: ~1 MB per row group
    with pq.ParquetWriter(path, pa.schema([("text", pa.string())])) as writer:
        for _ in range(40):
            writer.write_table(pa.table({"text": [os.urandom(8192).hex() for _ in range(group)]}))
    before, peak, rows = pa.total_allocated_bytes(), 0, 0
    for batch in iter_batches(path, batch_size=16):
        rows += batch.num_rows
        peak = max(peak, pa.total_allocated_bytes() - before)
    assert rows == 40 * group
    assert peak < 8 * 2**20, f"reader held {peak / 2**20:.1f} MB of a 40 MB file"


def test_read_shard_reads_only_its_row_groups_and_the_columns_asked(tmp_path):
    """A shard job reads the ids of its own rows, not the whole file's solutions (bytes read from
    the file, /proc/self/io rchar: ~0.1 MB of a 42 MB file; the whole-table read took all 42 MB)."""
    import os

    import pyarrow.parquet as pq

    from scalediff.records import read_range, read_shard

    def bytes_read() -> int:
        with open("/proc/self/io") as fh:
            return int(next(line for line in fh if line.startswith("rchar")).split()[1])

    path = tmp_path / "pool.parquet"
    schema = pa.schema([("id", pa.string()), ("solution", pa.string())])
    with pq.ParquetWriter(path, schema) as writer:  # 40 row groups of 64 rows, ~1 MB of solutions each
        for g in range(40):
            ids = [f"p-{g}-{i}" for i in range(64)]
            writer.write_table(pa.table({"id": ids, "solution": [os.urandom(8192).hex() for _ in ids]}))
    before = bytes_read()
    rows = read_shard(path, 5, 40, columns=["id"])
    assert bytes_read() - before < 2**20
    assert rows == [{"id": f"p-5-{i}"} for i in range(64)]
    # Shards tile the file in order, whatever their count against the row groups; a table gives the same.
    table = pq.read_table(path, columns=["id"])
    for n_shards in (3, 7, 100):
        shards = [read_shard(path, k, n_shards, columns=["id"]) for k in range(n_shards)]
        assert sum(shards, []) == table.to_pylist()
        assert shards[1] == read_shard(table, 1, n_shards)
    assert read_range(path, 60, 70, ["id"]).column("id").to_pylist() == [f"p-0-{i}" for i in (60, 61, 62, 63)] + [
        f"p-1-{i}" for i in range(6)
    ]
    assert read_range(path, 5000, 6000, ["id"]).num_rows == 0
