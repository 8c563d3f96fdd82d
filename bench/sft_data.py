"""Benchmark: the SFT data path at scale (load, token lengths, packing, batches drawn on access).

Prints figures and ratios (not a test). Usage:
    .venv/bin/python bench/sft_data.py --rows 2000 20000 --solution-tokens 15000

For each row count it writes a final-dataset Parquet (``problem``, ``solution``, ``origin``) from the
filter benchmark's synthetic paper-shaped solutions, then, in a fresh process, runs what ``scalediff.sft``
and ``train.train`` do before the first optimizer step:

- ``load``:    ``sft.DatasetExamples`` (Parquet -> memory-mapped Arrow cache, rows with text indexed);
- ``lengths``: ``train.token_lengths`` over every example (the one tokenization pass);
- ``pack``:    ``train.pack_groups`` at the paper's 32,768-token cutoff;
- ``draw``:    the first 64 packed rows of ``train.TokenizedExamples`` (tokenized on access).

with the peak anonymous memory of that process (RssAnon, sampled) beside its file-backed pages (the
memory-mapped Arrow cache: page cache, shared by every rank on a node, reclaimable). The tokenizer
is a byte-level BPE trained here on the shipped pool (Qwen's special tokens; fewer characters per
token than Qwen's 151K vocabulary, so token counts run high). Separately, ``pack_groups`` on 1.7M
log-normal lengths (the paper's dataset size) is timed. Goal: peak anonymous memory does not grow
with the number of rows beyond the per-example indices and lengths (a few bytes per row).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO / "bench"))

from filter_scale import _rss_mb, write_shards  # noqa: E402

from scalediff.records import PROBLEM_SCHEMA, atomic_path, iter_batches  # noqa: E402

CUTOFF = 32768
POOL = REPO / "config" / "data" / "pool" / "math_train.jsonl"


def write_dataset(folder: Path, rows: int, mean_tokens: int) -> Path:
    """The final dataset's layout from synthetic teacher solutions (streamed, one row group at a time)."""
    path = folder / "generated.parquet"
    if path.exists():
        return path
    shards = write_shards(folder / "solutions", rows, 10_000, mean_tokens)
    with atomic_path(path) as tmp, pq.ParquetWriter(tmp, PROBLEM_SCHEMA) as writer:
        for shard in shards:
            for b in iter_batches(shard, columns=["id", "problem", "completion", "answer", "origin", "source"]):
                table = pa.table(
                    {
                        "id": b["id"],
                        "problem": b["problem"],
                        "solution": b["completion"],
                        "answer": b["answer"],
                        "origin": b["origin"],
                        "source": b["source"],
                    }
                )
                writer.write_table(table.cast(PROBLEM_SCHEMA))
    shutil.rmtree(folder / "solutions")
    return path


def tokenizer(folder: Path):
    from transformers import AutoTokenizer

    from scalediff.tiny import build_tokenizer, read_corpus

    path = folder / "tokenizer"
    if not path.exists():
        build_tokenizer(read_corpus([str(POOL)]), 8192, "qwen3").save_pretrained(path)
    return AutoTokenizer.from_pretrained(path)


class AnonPeak:
    """Peak anonymous resident memory (RssAnon, sampled every 50 ms). VmHWM would also count the
    memory-mapped Arrow cache's pages, which are the page cache: shared by the ranks, reclaimable."""

    def __init__(self) -> None:
        self.peak = _rss_mb("RssAnon")
        threading.Thread(target=self._sample, daemon=True).start()

    def _sample(self) -> None:
        while True:
            self.peak = max(self.peak, _rss_mb("RssAnon"))
            time.sleep(0.05)


def run_child(data: Path, work: Path) -> dict:
    from scalediff.sft import DatasetExamples
    from scalediff.train import TokenizedExamples, pack_groups, token_lengths

    tok = tokenizer(work.parent)
    anon = AnonPeak()
    out: dict = {"anon_after_imports_mb": _rss_mb("RssAnon")}
    t0 = time.perf_counter()
    examples = DatasetExamples([str(data)], cache_dir=str(work / "datasets"))
    out["load_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    prompt, response = token_lengths(tok, examples)
    out["lengths_s"] = time.perf_counter() - t0
    out["tokens"] = int(prompt.sum() + response.sum())
    out["rows"] = len(examples)
    lengths = np.minimum(prompt + response, CUTOFF)
    t0 = time.perf_counter()
    groups = pack_groups(lengths.tolist(), CUTOFF)
    out["pack_s"] = time.perf_counter() - t0
    out["packed_rows"] = len(groups)
    out["fill"] = float(lengths.sum() / (len(groups) * CUTOFF))
    dataset = TokenizedExamples(examples, tok, CUTOFF, groups, [int(lengths[g].sum()) for g in groups], packed=True)
    t0, drawn = time.perf_counter(), 0
    for i in range(min(64, len(dataset))):
        drawn += len(dataset[i]["input_ids"])
    out["draw_tokens_per_s"] = drawn / (time.perf_counter() - t0)
    out["peak_anon_mb"] = max(anon.peak, _rss_mb("RssAnon"))
    out["mapped_mb"] = _rss_mb("RssFile")
    return out


def pack_paper_scale(n: int = 1_700_000, mean_tokens: int = 15_000) -> tuple[float, int, float]:
    from scalediff.train import pack_groups

    rng = np.random.default_rng(0)
    sigma = 0.6
    lengths = np.clip(rng.lognormal(np.log(mean_tokens) - sigma**2 / 2, sigma, n), 64, CUTOFF).astype(int)
    t0 = time.perf_counter()
    groups = pack_groups(lengths.tolist(), CUTOFF)
    return time.perf_counter() - t0, len(groups), float(lengths.sum() / (len(groups) * CUTOFF))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, nargs="+", default=[2_000, 20_000])
    ap.add_argument("--solution-tokens", type=int, default=15_000, help="mean solution length (paper: 10-30K)")
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/scalediff-sft-bench"))
    ap.add_argument("--pack-rows", type=int, default=1_700_000, help="examples for the packing-only timing")
    ap.add_argument("--keep", action="store_true", help="keep the synthetic data for the next run")
    ap.add_argument("--child", nargs=2, metavar=("DATA", "WORK"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(run_child(Path(args.child[0]), Path(args.child[1]))))
        return

    args.workdir.mkdir(parents=True, exist_ok=True)
    tokenizer(args.workdir)  # built once, outside the measured processes
    print(
        f"{'rows':>8} {'GB':>6} {'load s':>7} {'Mtok':>7} {'tok/s':>10} {'pack s':>7} {'fill':>5} "
        f"{'draw tok/s':>11} {'peak anon MB':>13} {'mapped MB':>10}"
    )
    peaks = {}
    for n in args.rows:
        folder = args.workdir / f"rows-{n}-tok-{args.solution_tokens}"
        data = write_dataset(folder, n, args.solution_tokens)
        work = folder / "work"
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir()
        proc = subprocess.run(
            [sys.executable, __file__, "--child", str(data), str(work)], capture_output=True, text=True, check=False
        )
        if proc.returncode:
            print(f"{n:>8} failed:\n{proc.stderr[-2000:]}")
            continue
        r = json.loads(proc.stdout.strip().splitlines()[-1])
        peaks[n] = r["peak_anon_mb"]
        print(
            f"{r['rows']:>8,} {data.stat().st_size / 1e9:>6.2f} {r['load_s']:>7.1f} {r['tokens'] / 1e6:>7.1f} "
            f"{r['tokens'] / r['lengths_s']:>10,.0f} {r['pack_s']:>7.2f} {r['fill']:>5.2f} "
            f"{r['draw_tokens_per_s']:>11,.0f} {r['peak_anon_mb']:>13.0f} {r['mapped_mb']:>10.0f}"
        )
        shutil.rmtree(work)
        if not args.keep:
            shutil.rmtree(folder)
    if len(peaks) > 1:
        lo, hi = min(peaks), max(peaks)
        print(f"\npeak anonymous memory at {hi:,} rows / at {lo:,} rows: {peaks[hi] / peaks[lo]:.2f}")
    if args.pack_rows:
        seconds, rows, fill = pack_paper_scale(args.pack_rows)
        print(
            f"pack_groups, {args.pack_rows:,} examples (mean 15K tokens, cutoff 32,768): {seconds:.1f} s, "
            f"{rows:,} packed rows, {fill:.3f} filled"
        )
    if not args.keep:
        shutil.rmtree(args.workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
