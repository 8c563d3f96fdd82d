"""Benchmark: the filter stage's components at scale, beside a bare pyarrow scan of the same shards.

Prints figures and ratios (not a test). Usage:
    .venv/bin/python bench/filter_scale.py --rows 10000 100000 --solution-tokens 15000
    .venv/bin/python bench/filter_scale.py --rows 1000000 --solution-tokens 1500 --components text decontam

For each row count it writes synthetic paper-shaped teacher outputs (the distill stage's schema, in
shards of ``--shard-rows``; solutions of ~``--solution-tokens`` tokens on average, log-normal, with
planted truncations, loops, missing boxes, foreign script, exact/near duplicate and benchmark
problems), then runs each component in a fresh process over every shard, through the filter's own
reader and checks:

- ``text``:     the rule filters on the text (truncation, boxes, length, repetition, script, problem
                structure): ``filter_rules.text_reasons`` + ``problem_reasons``.
- ``answers``:  math-verify parsing/agreement of the final boxed answers (``answer_reasons``).
- ``dedup``:    exact + MinHash/LSH decisions (``dedup.ProblemDeduper``) over the problems.
- ``decontam``: benchmark n-gram/exact checks (``decontam.BenchmarkIndex``) over the problems.
- ``stage``:    the whole ``filter rules`` entry point (all of the above, writing candidates/rejects).

Each line: rows/s (one process, so per core, except ``stage`` with ``--workers`` processes for its
row checks; one ``stage`` line per worker count), peak RSS of that process (VmHWM), RSS after
imports, and the time of a bare pyarrow scan of the columns that component reads (same shards, same
process, measured first). ``stage`` lines add the CPU seconds per row of the main process and of its
workers, and the peak RSS of the whole process tree (main + workers, sampled every 0.2 s).
Goals (issue 4): text rule filters >= 20k rows/s per core; peak RSS at the largest row count
<= 1.5x that at the smallest (the dedup index grows with the problems by design, ~0.2 KB each in
memory, the signatures in a temporary file: its RSS is reported as bytes per problem instead).
Goal (issue 13): the stage >= 4k paper-length rows/s with 16 workers, projected from CPU time per
row: the main process's (serial; the marginal cost between the two largest row counts, so start-up
and the pool index do not count) and the workers' (parallel): min(1 / main, 16 / workers). Wall
rows/s at each worker count shows the scaling on this machine (noisy when it is shared).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import threading
import time
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from scalediff.distill import SOLUTION_SCHEMA  # noqa: E402
from scalediff.records import ROW_GROUP_ROWS, iter_batches  # noqa: E402

CONFIG = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
BENCHMARK_DIR = REPO / "config" / "data" / "benchmarks"
POOL_DIR = REPO / "config" / "data" / "pool"
CHARS_PER_TOKEN = 3.6  # Qwen tokenizers on English + LaTeX reasoning
COLUMNS = {
    "text": ["problem", "completion", "finish_reason", "completion_tokens"],
    "answers": ["answer"],
    "dedup": ["id", "problem"],
    "decontam": ["id", "problem"],
    "stage": [f.name for f in SOLUTION_SCHEMA],
}

# ---------------------------------------------------------------------------- synthetic data
_SENTENCES = [
    "Let me compute {a} \\times {b} = {ab}.",
    "So the sum becomes $\\sum_{{k=1}}^{{{a}}} k = {s}$, which I should double-check.",
    "Wait, maybe I should reconsider the case $n = {a}$ separately.",
    "If $x = {a}$ then $x^2 - {b}x = {q}$, hence the discriminant is ${d}$.",
    "Consider the triangle with sides {a}, {b} and {c}; by the law of cosines $\\cos C = \\frac{{{n}}}{{{m}}}$.",
    "Modulo {p}, the residues repeat with period {a}, so I only need the first {b} terms.",
    "Hmm, that gives {ab}, but the constraint says the answer is less than {m}.",
    "Alternatively, substitute $y = x + {a}$ to get $y^2 = {s}$.",
    "Therefore $f({a}) = {q}$ and $f({b}) = {d}$, and the difference is {c}.",
    "Let me verify: {a} + {b} + {c} = {s}, which matches.",
]
_PROBLEMS = [
    "Let $f(x) = {a}x^2 + {b}x + {c}$. Find the number of integers $n$ with $1 \\le n \\le {m}$ such that "
    "$f(n)$ is divisible by ${p}$.",
    "A bag contains {a} red marbles, {b} blue marbles and {c} green marbles. Two marbles are drawn without "
    "replacement. The probability that they have the same colour is $\\frac{{m}}{{n}}$ in lowest terms. Find $m+n$.",
    "Triangle $ABC$ has $AB = {a}$, $BC = {b}$ and $CA = {c}$. Point $D$ lies on $BC$ with $BD:DC = {p}:{q}$. "
    "Find $AD^2$.",
    "Find the remainder when ${a}^{{{m}}} + {b}^{{{n}}}$ is divided by ${p}$.",
    "How many ordered pairs of positive integers $(x, y)$ satisfy $x y = {ab}$ and $x + y \\le {m}$?",
    "The sequence $a_1 = {a}$, $a_{{k+1}} = a_k^2 - {b} a_k + {c}$ is defined for $k \\ge 1$. Compute "
    "$a_{{{q}}} \\bmod {p}$.",
]
_ANSWERS = [
    "{a}",
    "\\frac{{{a}}}{{{p}}}",
    "{a}\\sqrt{{{q}}}",
    "\\frac{{{a}\\pi}}{{{p}}}",
    "({a}, {b})",
    "[{a}, {m})",
    "{a}^{{{q}}} - {b}",
    "x^2 + {a}x - {b}",
]
_FOREIGN = "因此我们得到这个答案是正确的。让我们再检查一次计算过程。"


def _values(rng: np.random.Generator) -> dict[str, int]:
    a, b, c = (int(x) for x in rng.integers(2, 999, 3))
    p, q, m, n = (int(x) for x in rng.integers(2, 97, 4))
    return {
        "a": a,
        "b": b,
        "c": c,
        "p": p,
        "q": q,
        "m": m * 10,
        "n": n,
        "ab": a * b,
        "s": a + b + c,
        "d": b * b - 4 * c,
    }


def _corpus(rng: np.random.Generator, chars: int) -> str:
    parts, size = [], 0
    while size < chars:
        s = _SENTENCES[int(rng.integers(len(_SENTENCES)))].format(**_values(rng))
        parts.append(s)
        size += len(s) + 1
    return " ".join(parts)


def _problems(folder: Path) -> list[str]:
    """Every ``problem`` of the JSONL files shipped in ``folder`` (benchmarks or pool)."""
    out = []
    for path in sorted(folder.glob("*.jsonl")):
        out += [json.loads(line)["problem"] for line in path.read_text().splitlines() if line.strip()]
    return out


def write_shards(
    folder: Path, rows: int, shard_rows: int, mean_tokens: int, seed: int = 0, corpus_chars: int = 32_000_000
) -> list[Path]:
    """Synthetic distill outputs: ``rows`` rows in shards of ``shard_rows`` (idempotent per folder); the
    reasoning is cut from a ``corpus_chars`` text (large, so rows share no text within a Parquet page)."""
    done = folder / "done.json"
    if done.exists():
        return sorted(folder.glob("shard-*.parquet"))
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    longest = 32768 * CHARS_PER_TOKEN
    corpus = _corpus(rng, max(corpus_chars, 2 * int(longest)))
    bench = _problems(BENCHMARK_DIR)
    sigma = 0.6
    mu = np.log(mean_tokens) - sigma**2 / 2  # log-normal with mean ``mean_tokens``
    recent: list[str] = []
    paths = []
    for start in range(0, rows, shard_rows):
        cols: dict[str, list] = {f.name: [] for f in SOLUTION_SCHEMA}
        for i in range(start, min(rows, start + shard_rows)):
            v = _values(rng)
            u = float(rng.random())
            problem = _PROBLEMS[i % len(_PROBLEMS)].format(**v)
            if u < 0.02 and recent:  # exact duplicate (spacing/case changed)
                problem = "  " + recent[int(rng.integers(len(recent)))].upper()
            elif u < 0.03 and recent:  # near duplicate: one number changed
                problem = recent[int(rng.integers(len(recent)))].replace("$", "$ ", 1) + " Justify."
            elif u < 0.032:
                problem = bench[int(rng.integers(len(bench)))]
            recent = (recent + [problem])[-256:]
            tokens = int(np.clip(rng.lognormal(mu, sigma), 256, 32768))
            off = int(rng.integers(0, len(corpus) - int(longest) - 1))
            reasoning = corpus[off : off + int(tokens * CHARS_PER_TOKEN)]
            # competition answers are mostly integers; the rest exercise math-verify's parser
            answer = (_ANSWERS[0] if rng.random() < 0.6 else _ANSWERS[1 + i % (len(_ANSWERS) - 1)]).format(**v)
            finish = "stop"
            w = float(rng.random())
            if w < 0.03:  # truncated at the length limit: no </think>, no box
                completion, finish, answer = "<think>\n" + reasoning, "length", None
            else:
                if w < 0.05:  # reasoning loop
                    loop = reasoning[:400] + " "
                    reasoning = loop * max(2, len(reasoning) // len(loop))
                elif w < 0.06:
                    reasoning = reasoning[: len(reasoning) // 2] + _FOREIGN * 20 + reasoning[len(reasoning) // 2 :]
                final = f"Therefore the answer is $\\boxed{{{answer}}}$." if w >= 0.07 else "I am not sure."
                if w < 0.07:
                    answer = None
                completion = f"<think>\n{reasoning}\n</think>\n\nSumming up the steps above.\n\n{final}"
            row = {
                "id": f"g-{i:09d}",
                "sample": 0,
                "problem": problem,
                "origin": "generated",
                "source": "bench",
                "completion": completion,
                "finish_reason": finish,
                "prompt_tokens": len(problem) // 4,
                "completion_tokens": tokens,
                "answer": answer,
            }
            for k, val in row.items():
                cols[k].append(val)
        path = folder / f"shard-{start // shard_rows:05d}.parquet"
        pq.write_table(pa.table(cols, schema=SOLUTION_SCHEMA), path, row_group_size=ROW_GROUP_ROWS)
        paths.append(path)
    done.write_text(json.dumps({"rows": rows, "mean_tokens": mean_tokens}))
    return paths


# ---------------------------------------------------------------------------- components (child process)
def _scan(paths: list[Path], columns: list[str]) -> tuple[int, float]:
    t0, rows = time.perf_counter(), 0
    for p in paths:
        for batch in iter_batches(p, 256, columns):
            rows += batch.num_rows
    return rows, time.perf_counter() - t0


def run_component(name: str, paths: list[Path], workdir: Path, workers: int = 1) -> dict:
    from scalediff import filter as flt
    from scalediff.decontam import BenchmarkIndex
    from scalediff.dedup import ProblemDeduper
    from scalediff.filter_rules import answer_reasons, problem_reasons, text_reasons, with_defaults

    cfg = with_defaults(CONFIG["filter"])
    base_mb = _rss_mb()
    scanned, scan_s = _scan(paths, COLUMNS[name])
    benchmarks = {p.stem: {"path": str(p)} for p in sorted(BENCHMARK_DIR.glob("*.jsonl"))}
    flagged = 0
    t0 = time.perf_counter()
    if name == "stage":
        # the real entry point over the shards joined the way distill's gather joins them
        from scalediff.records import concat_parquet

        joined, pool = workdir / "solutions.parquet", workdir / "pool.parquet"
        concat_parquet(paths, joined, SOLUTION_SCHEMA)
        _pool(pool)
        sampler = TreeRss(os.getpid(), threads=True)
        sampler.sample()
        threads0 = sampler.thread_cpu()  # the preparation above ran on the main thread
        children0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0, cpu0 = time.perf_counter(), time.process_time()
        stats = flt.run_rules(
            str(joined),
            str(pool),
            benchmarks,
            CONFIG["filter"],
            str(workdir / "candidates.parquet"),
            str(workdir / "rejects.parquet"),
            str(workdir / "stats.json"),
            workers=workers,
        )
        main_cpu = time.process_time() - cpu0
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        extra = {
            "main_cpu_s": main_cpu,
            "workers_cpu_s": (children.ru_utime + children.ru_stime) - (children0.ru_utime + children0.ru_stime),
            "tree_peak_rss_mb": sampler.stop(),
            "thread_cpu_s": {k: v - threads0.get(k, 0.0) for k, v in sampler.thread_cpu().items()},
        }
        rows = stats["inputs"]["solutions"]
        flagged = rows - stats["rows"]["generated"]["kept"]
    else:
        index = deduper = None
        extra = {}
        if name == "decontam":
            index = flt.load_benchmarks(benchmarks, cfg["decontamination"])
        if name == "dedup":
            deduper = ProblemDeduper(cfg["dedup"])
            for i, text in enumerate(_problems(POOL_DIR)):  # the shipped pool as the originals
                deduper.add_original(f"p-{i}", text)
        rows = 0
        for p in paths:
            for batch in flt.iter_row_batches(p, columns=COLUMNS[name]):
                for row in batch:
                    rows += 1
                    if name == "text":
                        reasons, _ = text_reasons(row, cfg)
                        flagged += bool(reasons + problem_reasons(row["problem"], cfg))
                    elif name == "answers":
                        flagged += bool(answer_reasons([row["answer"]] if row["answer"] else []))
                    elif name == "dedup":
                        flagged += deduper.check_generated(row["id"], row["problem"]) is not None
                    else:
                        flagged += BenchmarkIndex.verdict(index.check(row["problem"])) is not None
    seconds = time.perf_counter() - t0
    assert rows == scanned, (rows, scanned)
    return {
        "rows": rows,
        "seconds": seconds,
        "scan_seconds": scan_s,
        "flagged": flagged,
        "peak_rss_mb": _rss_mb("VmHWM"),
        "rss_after_imports_mb": base_mb,
        "workers": workers if name == "stage" else 1,
        **extra,
    }


def _rss_mb(field: str = "VmRSS") -> float:
    """Current (VmRSS) or peak (VmHWM) resident memory of this process image. Not ru_maxrss: Linux
    carries that over fork+exec, so a child would report its parent's peak."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


class TreeRss:
    """Peak of the summed VmRSS (and RssAnon) of a process and all its descendants, sampled every
    ``interval`` s in a thread (a cgroup, e.g. a SLURM job's memory limit, charges the whole tree), with
    the CPU seconds each process and each thread of the root process used (last value seen)."""

    def __init__(self, pid: int, interval: float = 0.2, threads: bool = False):
        self.pid, self.interval, self.peak_kb, self.peak_anon_kb = pid, interval, 0, 0
        self.procs: dict[int, float] = {}  # pid -> CPU seconds
        self.proc_peak_kb: dict[int, int] = {}  # pid -> its own peak (VmHWM)
        self._threads: dict[int, tuple[str, float]] | None = {} if threads else None
        self._ticks = os.sysconf("SC_CLK_TCK")
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    @staticmethod
    def tree(pid: int) -> list[int]:
        out, todo = [], [pid]
        while todo:
            p = todo.pop()
            out.append(p)
            try:
                for task in os.listdir(f"/proc/{p}/task"):
                    with open(f"/proc/{p}/task/{task}/children") as fh:
                        todo += [int(c) for c in fh.read().split()]
            except OSError:
                continue  # exited meanwhile
        return out

    @staticmethod
    def status_kb(pid: int, *fields: str) -> list[int]:
        out = dict.fromkeys(fields, 0)
        try:
            with open(f"/proc/{pid}/status") as fh:
                for line in fh:
                    key = line.split(":", 1)[0]
                    if key in out:
                        out[key] = int(line.split()[1])
        except OSError:
            pass
        return [out[f] for f in fields]

    @staticmethod
    def rss_kb(pid: int, field: str = "VmRSS") -> int:
        return TreeRss.status_kb(pid, field)[0]

    def _cpu(self, path: str) -> float | None:
        try:
            with open(path) as fh:
                stat = fh.read()
        except OSError:
            return None
        fields = stat[stat.rindex(")") + 2 :].split()
        return (int(fields[11]) + int(fields[12])) / self._ticks  # utime + stime

    def sample(self) -> None:
        rss = anon = 0
        for p in self.tree(self.pid):
            vm, an, hwm = self.status_kb(p, "VmRSS", "RssAnon", "VmHWM")
            rss, anon = rss + vm, anon + an
            self.proc_peak_kb[p] = max(self.proc_peak_kb.get(p, 0), hwm)
            cpu = self._cpu(f"/proc/{p}/stat")
            if cpu is not None:
                self.procs[p] = cpu
        self.peak_kb, self.peak_anon_kb = max(self.peak_kb, rss), max(self.peak_anon_kb, anon)
        if self._threads is not None:
            # Python thread names are known for this process only
            names = {t.native_id: t.name for t in threading.enumerate()} if self.pid == os.getpid() else {}
            for tid in os.listdir(f"/proc/{self.pid}/task"):
                cpu = self._cpu(f"/proc/{self.pid}/task/{tid}/stat")
                if cpu is not None:
                    name = names.get(int(tid)) or self._threads.get(int(tid), ("native",))[0]
                    self._threads[int(tid)] = (name, cpu)

    def thread_cpu(self) -> dict[str, float]:
        """CPU seconds per thread of the root process: ``main``, Python threads by name (numbers dropped;
        in this process only), ``native`` for the rest (e.g. Arrow's thread pools)."""
        out: dict[str, float] = {}
        for tid, (name, cpu) in (self._threads or {}).items():
            key = "main" if tid == self.pid else name.split("-")[0] if name.startswith("Thread-") else name
            out[key] = out.get(key, 0.0) + cpu
        return out

    def _run(self) -> None:
        while not self._done.wait(self.interval):
            self.sample()

    def stop(self, final_sample: bool = True) -> float:
        """Stop sampling (one last sample unless the process is gone); the peak in MB."""
        self._done.set()
        self._thread.join()
        if final_sample:
            self.sample()
        return self.peak_kb / 1024


def _pool(path: Path) -> None:
    """The shipped pool's problems as originals without solutions (the dedup reference)."""
    from scalediff.records import PROBLEM_SCHEMA

    rows = [
        {"id": f"p-{i}", "problem": t, "solution": None, "answer": None, "origin": "original", "source": "bench"}
        for i, t in enumerate(_problems(POOL_DIR))
    ]
    pq.write_table(pa.Table.from_pylist(rows, schema=PROBLEM_SCHEMA), path)


# ---------------------------------------------------------------------------- driver
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    ap.add_argument("--solution-tokens", type=int, default=15_000, help="mean teacher solution length (paper: 10-30K)")
    ap.add_argument("--shard-rows", type=int, default=10_000)
    ap.add_argument("--components", nargs="+", default=["text", "answers", "dedup", "decontam"], choices=list(COLUMNS))
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/scalediff-filter-bench"))
    ap.add_argument(
        "--workers", type=int, nargs="+", default=[1], help="processes for the stage's row-local checks (one run each)"
    )
    ap.add_argument("--project-workers", type=int, default=16, help="worker count the stage's rows/s is projected to")
    ap.add_argument("--keep", action="store_true", help="keep the synthetic shards for the next run")
    ap.add_argument("--child", nargs=2, metavar=("COMPONENT", "FOLDER"), help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.child:
        name, folder = args.child
        paths = sorted(Path(folder).glob("shard-*.parquet"))
        work = Path(folder) / f"work-{name}"
        work.mkdir(exist_ok=True)
        print(json.dumps(run_component(name, paths, work, args.workers[0])))
        return

    results: dict[int, dict[str, dict]] = {}
    for n in args.rows:
        folder = args.workdir / f"rows-{n}-tok-{args.solution_tokens}"
        need = n * args.solution_tokens * CHARS_PER_TOKEN * 0.6  # snappy on this text: ~0.6 of raw
        free = shutil.disk_usage(args.workdir.parent if not args.workdir.exists() else args.workdir).free
        if not (folder / "done.json").exists() and need > 0.8 * free:
            print(f"{n} rows x {args.solution_tokens} tokens needs ~{need / 1e9:.0f} GB; only {free / 1e9:.0f} GB free")
            continue
        t0 = time.perf_counter()
        paths = write_shards(folder, n, args.shard_rows, args.solution_tokens)
        size = sum(p.stat().st_size for p in paths)
        print(
            f"\n== {n:,} rows, mean {args.solution_tokens:,} solution tokens: {len(paths)} shards, "
            f"{size / 1e9:.2f} GB on disk (written in {time.perf_counter() - t0:.0f} s)"
        )
        print(
            f"{'component':<10} {'rows/s':>12} {'seconds':>9} {'scan s':>8} {'x scan':>7} "
            f"{'peak RSS MB':>12} {'imports MB':>11} {'flagged':>8} {'workers':>8} {'main ms/row':>12} "
            f"{'workers ms/row':>15} {'tree RSS MB':>12}"
        )
        results[n] = {}
        runs = [(name, w) for name in args.components for w in (args.workers if name == "stage" else [1])]
        for name, w in runs:
            out = subprocess.run(
                [sys.executable, __file__, "--child", name, str(folder), "--workers", str(w)],
                capture_output=True,
                text=True,
                check=False,
            )
            if out.returncode:
                print(f"{name:<10} failed:\n{out.stderr[-2000:]}")
                continue
            r = json.loads(out.stdout.strip().splitlines()[-1])
            results[n][name if name != "stage" else f"stage/{w}"] = r
            rate = r["rows"] / r["seconds"]
            line = (
                f"{name:<10} {rate:>12,.0f} {r['seconds']:>9.1f} {r['scan_seconds']:>8.1f} "
                f"{r['seconds'] / max(r['scan_seconds'], 1e-9):>7.1f} {r['peak_rss_mb']:>12.0f} "
                f"{r['rss_after_imports_mb']:>11.0f} {r['flagged']:>8,} {r['workers']:>8}"
            )
            if name == "stage":
                per_row = 1000 / r["rows"]
                line += (
                    f" {r['main_cpu_s'] * per_row:>12.3f} {r['workers_cpu_s'] * per_row:>15.3f}"
                    f" {r['tree_peak_rss_mb']:>12.0f}"
                )
            print(line)
        if not args.keep:
            shutil.rmtree(folder)

    if len(results) > 1:
        lo, hi = min(results), max(results)
        print(f"\npeak RSS at {hi:,} rows / at {lo:,} rows (goal <= 1.5):")
        for name in results[hi]:
            if name in results[lo]:
                a, b = results[lo][name]["peak_rss_mb"], results[hi][name]["peak_rss_mb"]
                extra = f"  ({(b - a) * 2**20 / (hi - lo):,.0f} bytes per extra row)" if name == "dedup" else ""
                print(f"  {name:<10} {b / a:.2f}{extra}")
    _project(results, args.project_workers)
    if "text" in args.components:
        rates = [r["text"]["rows"] / r["text"]["seconds"] for r in results.values() if "text" in r]
        if rates:
            print(f"text rule filters: {min(rates):,.0f} rows/s per core at the slowest (goal >= 20,000)")


def _per_row(hi: dict, lo: dict | None, get: Any) -> float:
    """ms of CPU per row: marginal between two sizes (start-up cancels), else over the one run."""
    if lo is None:
        return 1000 * get(hi) / hi["rows"]
    return 1000 * (get(hi) - get(lo)) / (hi["rows"] - lo["rows"])


def _project(results: dict[int, dict[str, dict]], workers: int) -> None:
    """The stage's rows/s with ``workers`` processes, from the CPU time per row of its main process and
    of its workers (marginal between the two largest row counts when there are two)."""
    sizes = sorted(results)
    for key in sorted({k for r in results.values() for k in r if k.startswith("stage/")}):
        have = [n for n in sizes if key in results[n]]
        if not have or results[have[-1]][key]["workers"] < 2:
            continue  # one process: the checks run in the main process, nothing to separate
        hi = results[have[-1]][key]
        lo = results[have[-2]][key] if len(have) > 1 else None
        per_row = partial(_per_row, hi, lo)
        how = f"marginal, {have[-2]:,} -> {have[-1]:,} rows" if lo else f"{have[-1]:,} rows, start-up included"
        main_ms, work_ms = per_row(lambda r: r["main_cpu_s"]), per_row(lambda r: r["workers_cpu_s"])
        threads = {t: per_row(lambda r, t=t: r["thread_cpu_s"].get(t, 0.0)) for t in hi["thread_cpu_s"]}
        # Python threads share the GIL (main: decisions; the pool's result reader); the candidate writer
        # encodes and compresses without it, as do Arrow's own (native) threads.
        gil_ms = sum(ms for t, ms in threads.items() if t not in ("filter-candidates", "native"))
        bounds = {
            "GIL threads": 1000 / max(gil_ms, 1e-9),
            "candidate writer": 1000 / max(threads.get("filter-candidates", 0.0), 1e-9),
            "workers": workers * 1000 / max(work_ms, 1e-9),
        }
        print(
            f"\nstage with {hi['workers']} workers ({how}): main process {main_ms:.3f} ms CPU/row "
            f"({', '.join(f'{t} {ms:.3f}' for t, ms in sorted(threads.items()))}), workers {work_ms:.3f} ms CPU/row"
        )
        print(
            f"  projected with {workers} workers: {min(bounds.values()):,.0f} rows/s ("
            + ", ".join(f"{name} bound {rate:,.0f}" for name, rate in bounds.items())
            + "; goal >= 4,000)"
        )


if __name__ == "__main__":
    main()
