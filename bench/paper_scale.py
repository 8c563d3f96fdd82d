"""Benchmark: every CPU step of the workflow on paper-shaped inputs, beside what its SLURM rule requests.

Prints one table (not a test). Usage:
    .venv/bin/python bench/paper_scale.py                     # --scale 0.0005 0.002: a few minutes
    .venv/bin/python bench/paper_scale.py --scale 0.002 0.008 --workers 2

For each ``--scale`` (a fraction of the paper's row counts) it writes synthetic inputs shaped like the
paper's -- the pool: 558,129 AM-Qwen3-Distilled ``conversations`` rows with ~4,000-word solutions
(a JSONL file, as downloaded); generated problems: 2M (DiffGen sample shards, 1% repeats); teacher
solutions: 1.9M at ~12K tokens (distill shards, filter_scale's synthetic traces with planted
rejects), fewer where the disk cannot hold them (``df`` decides; the table says so); selector scores
for the pool and the generated problems -- and runs each CPU step through its real entry point
(``python -m scalediff.<stage> ...``, the rule's command line) in its own process tree:

ingest, select gather (pool), diffgen gather, select gather (generated), distill gather, filter rules
(``--workers``), filter gather (verdicts from ``filter model-shard`` with the model-based filter
off: that step is a GPU rule), sft data (``scalediff.sft --prepare``: the Arrow file and token
lengths; a BPE trained on the shipped pool stands in for the student's tokenizer) and report.

Measured per step and scale: wall time, rows/s, peak RSS of the process tree (main process plus
workers, summed, sampled every 0.2 s; file-backed pages included, e.g. the SFT Arrow file's) and
CPU seconds. Paper scale is extrapolated -- and only where the table says so -- through the two
largest scales: runtime and peak RSS linearly in the step's rows (the marginal cost, so start-up
is counted once); ``filter_rules`` runtime from its CPU time per row split into the main thread,
the main process's other threads and the workers, at the profile's 16 workers (the slowest of
1 / main thread, 1 / other threads, 16 / workers), and its memory with 16 workers' peaks instead
of ``--workers``. Requests are the PRESET=full ``mem_mb`` / ``runtime`` of profiles/slurm/config.yaml
(CPU_RULES; other rules get profiles/slurm-cluster/config.yaml's default-resources).

Goals (issue 13): every step within its request at paper scale; peak RSS at the largest scale
<= 1.3x that at a scale 4x smaller, except where per-problem state is by design (the dedup index in
filter rules; the ids seen in diffgen gather), reported as bytes per row instead.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO / "bench"))

from filter_scale import _PROBLEMS, CHARS_PER_TOKEN, TreeRss, _corpus, _values, write_shards  # noqa: E402

from scalediff.records import PROBLEM_SCHEMA, REJECT_SCHEMA, ROW_GROUP_ROWS, problem_id  # noqa: E402
from scalediff.select import SCORE_SCHEMA  # noqa: E402

PAPER = {"pool": 558_129, "generated": 2_000_000, "solutions": 1_900_000}
PAPER_CFG = yaml.safe_load((REPO / "config" / "paper.yaml").read_text())
# shard counts of config/paper.yaml: rows per shard are kept near the paper's (at least two shards)
PAPER_SHARDS = {
    "select": PAPER_CFG["select"]["shards"],
    "select_generated": PAPER_CFG["select"]["generated_shards"],
    "diffgen": PAPER_CFG["diffgen"]["sample"]["shards"],
    "distill": PAPER_CFG["distill"]["shards"],
}
PAPER_WORKERS = int(PAPER_CFG["filter"]["threads"])  # filter_rules' processes (the rule's threads)
POOL_SOLUTION_WORDS = 4_000
PROFILE = REPO / "profiles" / "slurm" / "config.yaml"
CLUSTER_PROFILE = REPO / "profiles" / "slurm-cluster" / "config.yaml"


# ---------------------------------------------------------------------------- requests
def requests() -> tuple[dict[str, tuple[int, int]], tuple[int, int]]:
    """``{rule: (mem_mb, runtime minutes)}`` of the profile's CPU_RULES at PRESET=full (first attempt),
    and the cluster profile's default-resources for every other rule."""
    return {rule: (mem, minutes) for rule, (_, mem, minutes) in _cpu_rules().items()}, _default_request()


def _cpu_rules() -> dict[str, tuple[int, int, int]]:
    """The profile's CPU_RULES at PRESET=full: ``{rule: (CPUs, mem_mb, runtime minutes)}``."""
    defs = yaml.safe_load(PROFILE.read_text())["__definitions__"][0]
    scope: dict[str, Any] = {"PRESET": "full"}
    env = {k: os.environ.pop(k) for k in list(os.environ) if k.startswith("SCALEDIFF_SLURM_")}
    try:
        exec(defs, scope)  # the profile's own Python block: CPU_RULES as the workflow sees it
    finally:
        os.environ.update(env)
    return scope["CPU_RULES"]


def _default_request() -> tuple[int, int]:
    cluster = yaml.safe_load(CLUSTER_PROFILE.read_text())["default-resources"]
    return tuple(int(eval(str(cluster[k]), {"attempt": 1})) for k in ("mem_mb", "runtime"))


# ---------------------------------------------------------------------------- synthetic inputs
def counts(scale: float, solution_tokens: int, free_bytes: int) -> dict[str, int]:
    """Rows of each input at ``scale``; teacher solutions capped by the free disk (every copy the steps
    write: shards, gathered, candidates, dataset ~0.6 of the text each, the SFT Arrow file 1.0)."""
    out = {k: max(20, round(v * scale)) for k, v in PAPER.items()}
    per_solution = solution_tokens * CHARS_PER_TOKEN * (4 * 0.6 + 1.0)
    per_pool = POOL_SOLUTION_WORDS * 6 * (1.0 + 3 * 0.6 + 1.0)
    room = 0.5 * free_bytes - out["pool"] * per_pool
    out["solutions_wanted"] = out["solutions"]
    out["solutions"] = max(20, min(out["solutions"], int(room / per_solution)))
    return out


def _shards(rows: int, stage: str, paper_rows: int) -> int:
    per_shard = paper_rows / PAPER_SHARDS[stage]
    return max(2, min(PAPER_SHARDS[stage], math.ceil(rows / per_shard)))


def _split(rows: int, n: int) -> list[range]:
    bounds = np.linspace(0, rows, n + 1).astype(int)
    return [range(a, b) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]


def _write(rows: list[dict], path: Path, schema: pa.Schema) -> None:
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), path, row_group_size=ROW_GROUP_ROWS)


def write_inputs(folder: Path, n: dict[str, int], solution_tokens: int, seed: int = 0) -> dict[str, Any]:
    """The steps' inputs: pool JSONL, shard outputs of select/diffgen/distill (idempotent per folder)."""
    done = folder / "inputs.json"
    if done.exists():
        return json.loads(done.read_text())
    shutil.rmtree(folder, ignore_errors=True)
    (folder / "in").mkdir(parents=True)
    rng = np.random.default_rng(seed)
    corpus_chars = 32_000_000 if solution_tokens >= 4_000 else 1_000_000  # small: a quick test run
    corpus = _corpus(rng, corpus_chars // 4)
    words = POOL_SOLUTION_WORDS * 6  # characters: ~6 per word of this text
    pool_ids = []
    with open(folder / "in" / "pool.jsonl", "w") as fh:
        for i in range(n["pool"]):
            problem = _PROBLEMS[i % len(_PROBLEMS)].format(**_values(rng)) + f" (Problem {i}.)"
            off = int(rng.integers(0, len(corpus) - words - 1))
            answer = int(rng.integers(1, 999))
            solution = f"<think>\n{corpus[off : off + words]}\n</think>\n\nSo the answer is $\\boxed{{{answer}}}$."
            record = {"conversations": [{"from": "human", "value": problem}, {"from": "gpt", "value": solution}]}
            line = json.dumps(record, ensure_ascii=False)
            if i % 1000 == 999:
                line = line[: len(line) // 2]  # a broken line: quarantined by ingest
            fh.write(line + "\n")
            pool_ids.append(problem_id(problem))
    paths: dict[str, Any] = {"pool_jsonl": str(folder / "in" / "pool.jsonl")}

    def scores(stage: str, ids: list[str], paper_rows: int) -> None:
        paths[stage] = {"shards": [], "rejects": []}
        for k, part in enumerate(_split(len(ids), _shards(len(ids), stage, paper_rows))):
            p = rng.beta(0.5, 1.5, len(part))
            rows = [
                {
                    "id": ids[i],
                    "difficult": bool(p[j] < 0.5),
                    "p_nothink": float(p[j]),
                    "first_token": "</think>" if p[j] >= 0.5 else "Okay",
                    "top_tokens": json.dumps({"</think>": math.log(max(p[j], 1e-9)), "Okay": -0.3, "Let": -2.1}),
                }
                for j, i in enumerate(part)
            ]
            paths[stage]["shards"].append(_shard_pair(folder / stage, k, rows, SCORE_SCHEMA))
            paths[stage]["rejects"].append(str(folder / stage / f"{k}.rejects.parquet"))

    scores("select", pool_ids, PAPER["pool"])
    generated, gen_ids = [], []
    paths["diffgen"] = {"shards": [], "rejects": []}
    for k, part in enumerate(_split(n["generated"], _shards(n["generated"], "diffgen", PAPER["generated"]))):
        rows = []
        for i in part:
            if generated and rng.random() < 0.01:  # the generator repeats itself: dropped at gather
                problem = generated[int(rng.integers(len(generated)))]
            else:
                problem = _PROBLEMS[i % len(_PROBLEMS)].format(**_values(rng)) + f" Case {i}."
                generated.append(problem)
            pid = problem_id(problem, "g")
            gen_ids.append(pid)
            source = f"diffgen/shard{k}/seed{42 + k}/{i}"
            rows.append(
                {
                    "id": pid,
                    "problem": problem,
                    "solution": None,
                    "answer": None,
                    "origin": "generated",
                    "source": source,
                }
            )
        paths["diffgen"]["shards"].append(_shard_pair(folder / "diffgen", k, rows, PROBLEM_SCHEMA))
        paths["diffgen"]["rejects"].append(str(folder / "diffgen" / f"{k}.rejects.parquet"))
    del generated
    scores("select_generated", list(dict.fromkeys(gen_ids)), PAPER["generated"])
    shard_rows = math.ceil(n["solutions"] / _shards(n["solutions"], "distill", PAPER["solutions"]))
    distill = write_shards(folder / "distill", n["solutions"], shard_rows, solution_tokens, seed, corpus_chars)
    for k, _ in enumerate(distill):
        _write([], folder / "distill" / f"{k}.rejects.parquet", REJECT_SCHEMA)
    paths["distill"] = {
        "shards": [str(p) for p in distill],
        "rejects": [str(folder / "distill" / f"{k}.rejects.parquet") for k in range(len(distill))],
    }
    done.write_text(json.dumps(paths))
    return paths


def _shard_pair(folder: Path, k: int, rows: list[dict], schema: pa.Schema) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    _write(rows, folder / f"{k}.parquet", schema)
    _write([], folder / f"{k}.rejects.parquet", REJECT_SCHEMA)
    return str(folder / f"{k}.parquet")


# ---------------------------------------------------------------------------- steps
def _settings(**sections: Any) -> str:
    return json.dumps(sections, sort_keys=True)


def steps(folder: Path, inputs: dict[str, Any], workers: int, tokenizer: Path) -> list[tuple[str, str, list[str]]]:
    """``(label, rule, command)`` of every step, as the rules run them (rules/*.smk)."""
    o = folder / "out"
    for sub in ("ingest", "select", "select_generated", "diffgen", "distill", "filter/dataset", "report", "sft"):
        (o / sub).mkdir(parents=True, exist_ok=True)
    py = [sys.executable, "-m"]
    pool_cfg = {"sources": [{"name": "am_qwen3_distilled_math", "path": inputs["pool_jsonl"], "format": "chat"}]}
    filter_cfg = {k: v for k, v in PAPER_CFG["filter"].items() if k not in ("model_based", "threads")}

    def gather(stage: str, module: str, out: str, extra: list[str] = (), **settings: Any) -> list[str]:
        return [
            *py,
            f"scalediff.{module}",
            "gather",
            "--shards",
            *inputs[stage]["shards"],
            "--shard-rejects",
            *inputs[stage]["rejects"],
            "--output",
            str(o / out),
            "--rejects",
            str(o / stage / "rejects.parquet"),
            "--summary",
            str(o / stage / "summary.json"),
            *extra,
            *(["--settings", _settings(**settings)] if settings else []),
        ]

    f = o / "filter"
    scores = []
    for b in PAPER_CFG["benchmarks"]:
        path = o / "report" / f"scores-{b}.json"
        path.write_text(
            json.dumps({"model": "scalediff", "benchmark": b, "mean": 50.0, "std": 1.0, "per_seed": [50.0]})
        )
        scores.append(str(path))
    return [
        (
            "ingest",
            "ingest",
            [
                *py,
                "scalediff.ingest",
                *("--pool", str(o / "ingest/pool.parquet"), "--rejects", str(o / "ingest/rejects.parquet")),
                *("--summary", str(o / "ingest/summary.json")),
                *("--settings", _settings(seed=42, pool=pool_cfg)),
            ],
        ),
        (
            "select gather (pool)",
            "select_gather",
            gather(
                "select",
                "select",
                "select/difficulty.parquet",
                ["--plot", str(o / "select/p_nothink.png")],
                select=PAPER_CFG["select"],
            ),
        ),
        ("diffgen gather", "diffgen_gather", gather("diffgen", "diffgen", "diffgen/generated.parquet")),
        (
            "select gather (generated)",
            "select_generated_gather",
            gather(
                "select_generated",
                "select",
                "select_generated/difficulty.parquet",
                ["--plot", str(o / "select_generated/p_nothink.png")],
                select=PAPER_CFG["select"],
            ),
        ),
        ("distill gather", "distill_gather", gather("distill", "distill", "distill/solutions.parquet")),
        (
            "filter rules",
            "filter_rules",
            [
                *py,
                *("scalediff.filter", "rules", "--solutions", str(o / "distill/solutions.parquet")),
                *("--pool", str(o / "ingest/pool.parquet"), "--candidates", str(f / "candidates.parquet")),
                *("--rejects", str(f / "rules-rejects.parquet"), "--stats", str(f / "stats.json")),
                *("--workers", str(workers)),
                *("--settings", _settings(filter=filter_cfg, benchmarks=PAPER_CFG["benchmarks"])),
            ],
        ),
        (
            "(filter model-shard, model-based off: a GPU rule, not measured)",
            "",
            [
                *py,
                *("scalediff.filter", "model-shard", "--candidates", str(f / "candidates.parquet")),
                *("--model", "unused", "--shard", "1-of-1", "--output", str(f / "verdicts.parquet")),
                "--settings",
                _settings(filter={**PAPER_CFG["filter"], "model_based": {"enabled": False}}, seed=42, engine={}),
            ],
        ),
        (
            "filter gather",
            "filter_gather",
            [
                *py,
                *("scalediff.filter", "gather", "--candidates", str(f / "candidates.parquet")),
                *("--rules-rejects", str(f / "rules-rejects.parquet"), "--rules-stats", str(f / "stats.json")),
                *("--verdicts", str(f / "verdicts.parquet"), "--original", str(f / "dataset/original.parquet")),
                *("--generated", str(f / "dataset/generated.parquet"), "--card", str(f / "dataset/README.md")),
                *("--rejects", str(f / "rejects.parquet"), "--funnel", str(f / "funnel.json")),
                *("--funnel-csv", str(f / "funnel.csv"), "--plot", str(f / "funnel.png")),
                *("--settings", _settings(filter=PAPER_CFG["filter"])),
            ],
        ),
        (
            "sft data",
            "sft_data",
            [
                *py,
                *("scalediff.sft", "--prepare", str(o / "sft/data"), "--data", str(f / "dataset/original.parquet")),
                *(
                    str(f / "dataset/generated.parquet"),
                    "--base-model",
                    str(tokenizer),
                    "--settings",
                    _settings(sft={}),
                ),
            ],
        ),
        (
            "report",
            "report",
            [
                *py,
                *("scalediff.report", "--scores", *scores, "--paper-table", str(REPO / "config/paper_table.yaml")),
                *("--select-summary", str(o / "select/summary.json")),
                *("--pool-difficulty", str(o / "select/difficulty.parquet")),
                *("--generated-difficulty", str(o / "select_generated/difficulty.parquet")),
                *("--stage-summaries", str(o / "diffgen/summary.json"), str(o / "distill/summary.json")),
                *("--generated", str(o / "diffgen/generated.parquet")),
                *("--solutions", str(o / "distill/solutions.parquet"), "--out-dir", str(o / "report")),
                *("--settings", _settings(eval_models={}, reproduces={}, demo=False)),
            ],
        ),
    ]


def step_rows(label: str, out: Path, n: dict[str, int]) -> tuple[int, float]:
    """(rows the step handled, its paper-scale count): the count its runtime and memory grow with."""
    f = out / "filter"
    if label == "ingest" or label.startswith("select gather (pool"):
        return n["pool"], PAPER["pool"]
    if label.startswith("diffgen") or label.startswith("select gather (gen"):
        return n["generated"], PAPER["generated"]
    if label.startswith("distill"):
        return n["solutions"], PAPER["solutions"]
    if label == "report":  # the generated problems' and the solutions' columns
        return n["solutions"] + n["generated"], PAPER["solutions"] + PAPER["generated"]
    stats = json.loads((f / "stats.json").read_text())
    inputs = stats["inputs"]["solutions"] + stats["inputs"]["pool_with_solution"]
    per_input = (PAPER["solutions"] + PAPER["pool"]) / inputs  # the same mix of teacher and pool rows
    if label == "filter rules":
        return inputs, PAPER["solutions"] + PAPER["pool"]
    if label == "filter gather":
        return stats["candidates"], stats["candidates"] * per_input
    if label == "sft data":
        kept = sum(pq.ParquetFile(f / "dataset" / f"{s}.parquet").metadata.num_rows for s in ("original", "generated"))
        return kept, kept * per_input
    raise ValueError(label)


def measure(cmd: list[str], log: Path, env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run one step in its own process; wall time, CPU, peak RSS of its process tree."""
    t0 = time.perf_counter()
    with open(log, "w") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, cwd=REPO, env=env)
    sampler = TreeRss(proc.pid, threads=True)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    sampler.stop(final_sample=False)
    if proc.returncode:
        raise RuntimeError(f"{' '.join(cmd[:4])} failed ({proc.returncode}):\n{log.read_text()[-3000:]}")
    main_cpu = sampler.procs.get(proc.pid, 0.0)
    threads = sampler.thread_cpu()
    children = [kb for pid, kb in sampler.proc_peak_kb.items() if pid != proc.pid]
    return {
        "wall_s": wall,
        "cpu_s": usage.ru_utime + usage.ru_stime,  # the step and every process it waited for
        "main_cpu_s": main_cpu,
        "main_thread_cpu_s": threads.get("main", main_cpu),
        "peak_rss_mb": sampler.peak_kb / 1024,
        "peak_anon_mb": sampler.peak_anon_kb / 1024,
        "worker_peak_mb": max(children, default=0) / 1024,
    }


# ---------------------------------------------------------------------------- paper-scale estimates
def _linear(lo: dict | None, hi: dict, key: str, n: float) -> float:
    """``key`` at ``n`` rows through the two largest scales (never below the largest measured)."""
    if lo is None or hi["rows"] == lo["rows"]:
        return hi[key]
    slope = (hi[key] - lo[key]) / (hi["rows"] - lo["rows"])
    return hi[key] + max(slope, 0.0) * (n - hi["rows"])


def paper_estimate(label: str, lo: dict | None, hi: dict, workers: int) -> dict[str, Any]:
    """Runtime and peak RSS at paper scale. The two multi-core steps are projected to the CPUs their rule
    gets from CPU time per row (marginal between the scales), not from wall time on this machine:
    ``filter rules``: the main thread and the main process's other threads each bound the rate, the
    workers share theirs over ``filter.threads`` processes; ``sft data``: its main thread (Arrow cache)
    plus its tokenizer threads' CPU shared over the rule's CPUs."""
    n = hi["paper_rows"]
    # runtime: at the largest scale's rows/s, start-up included (the marginal time of these quick steps
    # is within the noise of a shared machine); memory: linear through the two largest scales
    est = {"runtime_min": hi["wall_s"] * n / hi["rows"] / 60, "rss_mb": _linear(lo, hi, "peak_rss_mb", n)}
    if label not in ("filter rules", "sft data") or lo is None:
        return est
    rows = hi["rows"] - lo["rows"]
    per_row = {k: (hi[k] - lo[k]) / rows for k in ("cpu_s", "main_cpu_s", "main_thread_cpu_s")}
    main_s = max(per_row["main_thread_cpu_s"], 1e-9)
    other_s = max(per_row["main_cpu_s"] - per_row["main_thread_cpu_s"], 1e-9)  # the root's other threads
    children_s = max(per_row["cpu_s"] - per_row["main_cpu_s"], 1e-9)  # worker processes
    if label == "filter rules":
        parallel = PAPER_WORKERS
        rate = min(1 / main_s, 1 / other_s, parallel / children_s)
        est["rss_mb"] += (parallel - workers) * hi["worker_peak_mb"]
        what = (
            f"main thread {1000 * main_s:.3f} ms, its other threads {1000 * other_s:.3f} ms, workers "
            f"{1000 * children_s:.3f} ms -> {rate:,.0f} rows/s with {parallel} workers; RSS + "
            f"{parallel - workers} x {hi['worker_peak_mb']:.0f} MB workers"
        )
    else:
        parallel = _cpu_rules().get(hi["rule"], (1,))[0]
        rate = 1 / (main_s + other_s / parallel)
        # the Arrow cache is memory-mapped: its pages are the page cache (shared, reclaimable), so the
        # anonymous memory is what grows the job's footprint
        est["rss_mb"] = _linear(lo, hi, "peak_anon_mb", n)
        what = (
            f"main thread {1000 * main_s:.3f} ms + tokenizer threads {1000 * other_s:.3f} ms / {parallel} CPUs "
            f"-> {rate:,.0f} rows/s; RSS: anonymous memory only (the mapped Arrow cache is page cache)"
        )
    # start-up (imports, benchmark index, pool pass ...): the intercept of wall time over rows
    start = max(lo["wall_s"] - lo["rows"] * (hi["wall_s"] - lo["wall_s"]) / rows, 0.0)
    est["runtime_min"] = (start + n / rate) / 60
    est["rows_per_s"] = rate
    est["how"] = f"CPU per row: {what}"
    return est


# ---------------------------------------------------------------------------- driver
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--scale", type=float, nargs="+", default=[0.0005, 0.002], help="fractions of the paper's rows")
    ap.add_argument("--solution-tokens", type=int, default=12_000, help="mean teacher solution length")
    ap.add_argument("--workers", type=int, default=2, help="filter_rules' worker processes (the rule's threads)")
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/scalediff-paper-bench"))
    ap.add_argument("--keep", action="store_true", help="keep inputs and outputs for the next run")
    ap.add_argument(
        "--steps",
        nargs="+",
        metavar="RULE",
        help="run only these rules (with the ones they read from), e.g. to take the slow sft_data out of a larger run",
    )
    args = ap.parse_args()

    from sft_data import tokenizer

    args.workdir.mkdir(parents=True, exist_ok=True)
    tokenizer(args.workdir)  # built once, outside the measured processes
    env = {**os.environ, "RAYON_NUM_THREADS": str(args.workers), "PYTHONPATH": str(REPO / "src")}
    requested, default = requests()
    results: dict[str, dict[float, dict]] = {}
    for scale in sorted(args.scale):
        n = counts(scale, args.solution_tokens, shutil.disk_usage(args.workdir).free)
        folder = args.workdir / f"scale-{scale:g}-tok-{args.solution_tokens}"
        t0 = time.perf_counter()
        inputs = write_inputs(folder, n, args.solution_tokens)
        capped = "" if n["solutions"] == n["solutions_wanted"] else f" (disk: {n['solutions_wanted']:,} wanted)"
        print(
            f"scale {scale:g}: pool {n['pool']:,}, generated {n['generated']:,}, solutions {n['solutions']:,}"
            f"{capped} at ~{args.solution_tokens:,} tokens; inputs written in {time.perf_counter() - t0:.0f} s",
            flush=True,
        )
        for label, rule, cmd in steps(folder, inputs, args.workers, args.workdir / "tokenizer"):
            if args.steps and (rule or "filter_gather") not in args.steps:  # model-shard feeds filter_gather
                continue
            log = folder / "out" / f"{rule or 'model_shard'}.log"
            r = measure(cmd, log, env)
            if not rule:
                continue
            r["rows"], r["paper_rows"] = step_rows(label, folder / "out", n)
            r["rule"] = rule
            results.setdefault(label, {})[scale] = r
        if not args.keep:
            shutil.rmtree(folder)
    print_table(results, requested, default, args.workers)


def print_table(
    results: dict[str, dict[float, dict]], requested: dict[str, tuple[int, int]], default: tuple[int, int], workers: int
) -> None:
    scales = sorted({s for r in results.values() for s in r})
    print(
        f"\n{'step':<26} {'rule':<24} {'rows':>16} {'wall s':>8} {'rows/s':>9} {'peak RSS MB':>13} {'x':>5} "
        f"{'B/row':>7} | {'paper rows':>10} {'est. min':>9} {'est. RSS MB':>11} | {'req. MB':>8} {'req. min':>8} ok"
    )
    notes = []
    for label, by_scale in results.items():
        have = [s for s in scales if s in by_scale]
        hi = by_scale[have[-1]]
        lo = by_scale[have[-2]] if len(have) > 1 else None
        small = by_scale[have[0]]
        ratio = hi["peak_rss_mb"] / small["peak_rss_mb"]
        growth = (hi["peak_rss_mb"] - small["peak_rss_mb"]) * 2**20 / max(hi["rows"] - small["rows"], 1)
        est = paper_estimate(label, lo, hi, workers)
        mem, minutes = requested.get(hi["rule"], default)
        ok = est["rss_mb"] <= mem and est["runtime_min"] <= minutes
        rows = "/".join(f"{by_scale[s]['rows']:,}" for s in have)
        rss = "/".join(f"{by_scale[s]['peak_rss_mb']:.0f}" for s in have)
        print(
            f"{label:<26} {hi['rule']:<24} {rows:>16} {hi['wall_s']:>8.1f} {hi['rows'] / hi['wall_s']:>9,.0f} "
            f"{rss:>13} {ratio:>5.2f} {growth:>7,.0f} | {hi['paper_rows']:>10,.0f} {est['runtime_min']:>9,.1f} "
            f"{est['rss_mb']:>11,.0f} | {mem:>8,} {minutes:>8,} {'yes' if ok else 'NO'}"
        )
        if "rows_per_s" in est:
            notes.append(f"{label}: {est['how']}")
    print(
        f"\nrows: at each scale; wall s, rows/s: at the largest (2 shared cores, filter rules with {workers} workers);"
        f" peak RSS: process tree, each scale; x: largest / smallest (goal <= 1.3 for 4x the rows); B/row: RSS"
        f" growth per extra row. est.: paper scale; runtime at the largest scale's rows/s, RSS linear through the"
        f" two largest scales (an upper bound where the growth is buffers filling or allocator noise);"
        f" filter rules and sft data from CPU per row at the rule's CPUs:"
    )
    for note in notes:
        print(note)


if __name__ == "__main__":
    main()
