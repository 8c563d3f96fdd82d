"""Eval stage: lighteval tasks and metric, generation through the project's engine (SPEC §6).

One process evaluates one (model, benchmark): the engine is loaded once and every seed runs a
lighteval ``Pipeline`` over it. lighteval provides the task plumbing, reasoning-tag removal (config
``eval.remove_reasoning_tags``) and the extractive-match metric; generation goes through
``scalediff.engine.Engine`` because lighteval's own vLLM backend pins an old vllm. The benchmark
JSONL is copied to a temp dir as ``test.jsonl`` since lighteval only reads local data from a directory.

    python -m scalediff.evaluate --model PATH --model-name NAME --benchmark NAME --data JSONL \\
        --seeds N [--limit L] --output JSON --details PARQUET --settings JSON
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import logging
import tempfile
import time
import types
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from lighteval.logging.evaluation_tracker import EvaluationTracker
from lighteval.metrics.dynamic_metrics import MultilingualExtractiveMatchMetric
from lighteval.metrics.utils.extractive_match_utils import ExprExtractionConfig, LatexExtractionConfig
from lighteval.metrics.utils.metric_utils import SampleLevelMetric
from lighteval.models.abstract_model import LightevalModel
from lighteval.models.custom.custom_model import CustomModelConfig
from lighteval.models.model_input import GenerationParameters
from lighteval.models.model_output import ModelResponse
from lighteval.pipeline import ParallelismManager, Pipeline, PipelineParameters
from lighteval.tasks.lighteval_task import LightevalTaskConfig
from lighteval.tasks.registry import Registry
from lighteval.tasks.requests import Doc, SamplingMethod
from lighteval.utils.language import Language
from lighteval.utils.utils import remove_reasoning_tags

from scalediff import answers, cli
from scalediff.engine import Engine, row_seed
from scalediff.records import write_json, write_rows

log = logging.getLogger(__name__)

TASK_SUFFIX = "_sd"  # custom task names must not collide with lighteval's built-ins
METRIC_NAME = "extractive_match"
# --remove-reasoning-tags: lighteval strips a block only when both tags are in the output. On by
# default (config eval.remove_reasoning_tags): a box drafted inside the reasoning is not the answer.
REASONING_TAGS = [("<think>", "</think>")]


def extractive_match() -> SampleLevelMetric:
    """lighteval's extractive match, set up as SPEC §6 asks.

    Predictions: expressions and LaTeX with ``\\boxed{}`` first; precision 5. Golds arrive wrapped
    as ``$...$`` and are read with LaTeX extraction too: lighteval's stock ``expr_gold_metric``
    reads golds as plain expressions only, which turns ``$2^{99}$`` into ``2``.
    """
    return SampleLevelMetric(
        metric_name=METRIC_NAME,
        sample_level_fn=MultilingualExtractiveMatchMetric(
            language=Language.ENGLISH,
            fallback_mode="first_match",
            precision=5,
            gold_extraction_target=(LatexExtractionConfig(), ExprExtractionConfig()),
            pred_extraction_target=(ExprExtractionConfig(), LatexExtractionConfig(boxed_match_priority=0)),
            aggregation_function=max,
        ),
        category=SamplingMethod.GENERATIVE,
        corpus_level_fn=np.mean,
        higher_is_better=True,
    )


def make_doc(line: dict[str, Any], task_name: str, instruction: str) -> Doc:
    """One benchmark row as a lighteval Doc: instruction + problem, gold wrapped as ``$...$``."""
    return Doc(
        task_name=task_name,
        query=instruction + line["problem"],
        choices=[answers.wrap_gold(line["answer"])],
        gold_index=0,
        specific={"id": line["id"], "answer": line["answer"], "index": line["__index"]},
    )


def task_config(benchmark: str, data_dir: str, instruction: str, max_new_tokens: int) -> LightevalTaskConfig:
    return LightevalTaskConfig(
        name=f"{benchmark}{TASK_SUFFIX}",
        prompt_function=functools.partial(make_doc, instruction=instruction),
        hf_repo=data_dir,
        hf_subset="default",
        hf_avail_splits=["test"],
        evaluation_splits=["test"],
        few_shots_split=None,
        few_shots_select=None,
        generation_size=max_new_tokens,
        metrics=[extractive_match()],
    )


def score_with_metric(completion: str, gold: str, remove_reasoning: bool = True) -> bool:
    """Score one completion exactly as the pipeline does: tag removal (if on), then the task's metric."""
    doc = make_doc({"id": "x", "problem": "", "answer": gold, "__index": 0}, "score", "")
    text = remove_reasoning_tags(completion, REASONING_TAGS) if remove_reasoning else None
    response = ModelResponse(text=[completion], text_post_processed=[text] if remove_reasoning else None)
    return bool(extractive_match().sample_level_fn.compute(doc, response))


class _NoCache:
    """lighteval's disk cache is keyed on model+task, not seed: it would replay seed 0 for every seed."""

    def _init_registry(self, registry: Registry) -> None:
        pass


class EngineModel(LightevalModel):
    """A lighteval model that generates through ``scalediff.engine.Engine``; set ``seed`` per run.

    lighteval runs one pipeline per seed. Generating per seed would leave the GPU idle on each
    seed's long tail (a few 32K-token completions), ten times over; so the first run generates
    every seed's completions in ONE engine call (per-request seeds ``row_seed(seed, id)``, as a
    per-seed call would use) and each seed's run then reads its own from that set.
    """

    def __init__(self, engine: Engine, config: CustomModelConfig, seeds: Sequence[int] = (0,)):
        self.engine = engine
        self.config = config
        self.seeds = list(seeds)
        self.seed = 0
        self._cache = _NoCache()
        self.last_run: dict[str, dict[str, Any]] = {}  # problem id -> prompt text and finish reason
        self._generated: dict[tuple[int, str], Any] = {}  # (seed, problem id) -> Completion
        self.generate_calls = 0

    @property
    def tokenizer(self) -> Any:
        return self.engine.tokenizer

    @property
    def add_special_tokens(self) -> bool:
        return False  # the chat template already holds every special token

    @property
    def max_length(self) -> int:
        return self.engine.max_model_len

    def _generate(self, seeds: list[int], docs: list[Doc], prompts: list[list[int]], sampling: dict) -> None:
        """One engine call for ``seeds`` x ``docs``; completions kept by (seed, problem id)."""
        keys = [(seed, d.specific["id"]) for seed in seeds for d in docs]
        t0 = time.time()
        outputs = self.engine.generate(
            [p for _ in seeds for p in prompts], sampling, seeds=[row_seed(seed, pid) for seed, pid in keys]
        )
        self.generate_calls += 1
        self._generated.update((key, comps[0]) for key, comps in zip(keys, outputs, strict=True))
        log.info(
            "generated %d completions (%d problems x seeds %s) in one call (%.1fs)",
            len(keys),
            len(docs),
            seeds,
            time.time() - t0,
        )

    def greedy_until(self, docs: list[Doc]) -> list[ModelResponse]:
        gen = self.config.generation_parameters
        prompts = [self.engine.chat_prompt([{"role": "user", "content": d.query}]) for d in docs]
        # Never truncate a problem: cap generation so the longest prompt still fits (SPEC runs
        # 32768 new tokens in a 32768 context). One cap for the whole set keeps results
        # independent of batching.
        max_tokens = min(gen.max_new_tokens, self.max_length - max(map(len, prompts), default=0))
        if max_tokens < 1:
            raise ValueError(f"a prompt fills the whole context ({self.max_length} tokens)")
        if max_tokens < gen.max_new_tokens:
            log.warning("max_new_tokens capped to %d so the longest prompt fits the context", max_tokens)
        sampling = {"n": 1, "temperature": gen.temperature, "top_p": gen.top_p, "max_tokens": max_tokens}
        if any((self.seed, d.specific["id"]) not in self._generated for d in docs):
            # first run: every seed not run yet (from this one on); a seed outside the list: its own call
            pending = self.seeds[self.seeds.index(self.seed) :] if self.seed in self.seeds else [self.seed]
            self._generate(pending, docs, prompts, sampling)
        responses: list[ModelResponse] = []
        self.last_run = {}
        for doc, prompt in zip(docs, prompts, strict=True):
            comp = self._generated.pop((self.seed, doc.specific["id"]))
            self.last_run[doc.specific["id"]] = {
                "prompt": self.engine.tokenizer.decode(prompt),
                "finish_reason": comp.finish_reason,
                "completion_tokens": comp.completion_tokens,
            }
            responses.append(
                ModelResponse(input=doc.query, input_tokens=prompt, text=[comp.text], output_tokens=[comp.token_ids])
            )
        return responses

    def loglikelihood(self, docs: list[Doc]) -> list[ModelResponse]:
        raise NotImplementedError("generative math tasks only")

    def loglikelihood_rolling(self, docs: list[Doc]) -> list[ModelResponse]:
        raise NotImplementedError("generative math tasks only")


@contextlib.contextmanager
def _only_custom_tasks() -> Iterator[None]:
    """Load only our task module: importing lighteval's built-in tasks downloads files (offline fails)."""
    original = Registry.load_all_task_configs

    def load(custom_tasks: Any = None, load_multilingual: bool = False) -> dict[str, LightevalTaskConfig]:
        return Registry._extract_configs(Registry.create_custom_tasks_module(custom_tasks))

    Registry.load_all_task_configs = staticmethod(load)
    try:
        yield
    finally:
        Registry.load_all_task_configs = original


def write_test_split(rows: list[dict[str, Any]], directory: str) -> None:
    with open(Path(directory) / "test.jsonl", "w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps({"id": str(row["id"]), "problem": row["problem"], "answer": str(row["answer"])}) + "\n")


def run_seed(
    model: EngineModel, config: LightevalTaskConfig, seed: int, workdir: str, remove_reasoning: bool = True
) -> list[dict[str, Any]]:
    """One lighteval pipeline run; returns one details row per problem."""
    model.seed = seed
    module = types.ModuleType("scalediff_eval_tasks")
    module.TASKS_TABLE = [config]
    params = PipelineParameters(
        launcher_type=ParallelismManager.CUSTOM,
        custom_tasks_directory=module,  # Registry accepts a module object here
        remove_reasoning_tags=remove_reasoning,
        reasoning_tags=REASONING_TAGS,
        bootstrap_iters=0,  # stderr over problems is not the seed std we report
    )
    tracker = EvaluationTracker(output_dir=str(Path(workdir) / "lighteval"), save_details=False)
    with _only_custom_tasks():
        pipeline = Pipeline(
            tasks=f"{config.name}|0", pipeline_parameters=params, evaluation_tracker=tracker, model=model
        )
    pipeline.evaluate()
    full_name = f"{config.name}|0"
    rows = []
    for detail in pipeline.get_details()[full_name]:
        spec = detail.doc.specific
        run = model.last_run[spec["id"]]
        boxed = answers.extract_boxed(detail.model_response.final_text[0])  # the text the metric read
        rows.append(
            {
                "id": spec["id"],
                "index": spec["index"],
                "seed": seed,
                "prompt": run["prompt"],
                "completion": detail.model_response.text[0],
                "finish_reason": run["finish_reason"],
                "completion_tokens": run["completion_tokens"],
                "gold": spec["answer"],
                "prediction": boxed[-1].strip() if boxed else None,
                "extracted": [str(p) for p in spec.get("extracted_predictions", [])],
                "correct": bool(detail.metric[METRIC_NAME]),
            }
        )
    rows.sort(key=lambda r: r["index"])
    lighteval_acc = tracker.metrics_logger.metric_aggregated[full_name][METRIC_NAME]
    if not np.isclose(lighteval_acc, np.mean([r["correct"] for r in rows])):
        raise RuntimeError(f"lighteval score {lighteval_acc} disagrees with its own details")
    return rows


def summarize(model_name: str, benchmark: str, seeds: list[int], rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Scores from the details rows alone, so anyone can recompute them from the Parquet."""
    per_seed = [100.0 * float(np.mean([r["correct"] for r in rows if r["seed"] == s])) for s in seeds]
    return {
        "model": model_name,
        "benchmark": benchmark,
        "metric": METRIC_NAME,
        "n_problems": len({r["id"] for r in rows}),
        "seeds": seeds,
        "per_seed": per_seed,
        "mean": float(np.mean(per_seed)),
        "std": float(np.std(per_seed)),
        "std_kind": "population",
    }


def evaluate(
    model_path: str,
    model_name: str,
    benchmark: str,
    data: str,
    n_seeds: int,
    settings: dict[str, Any],
    limit: int | None = None,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Evaluate one model on one benchmark over seeds ``0..n_seeds-1``; returns (summary, details)."""
    eval_cfg, engine_cfg = settings["eval"], settings["engine"]
    remove_reasoning = bool(eval_cfg.get("remove_reasoning_tags", True))
    with open(data, encoding="utf-8") as fh:
        problems = [json.loads(line) for line in fh if line.strip()]
    n_available = len(problems)
    if limit is not None:
        problems = problems[:limit]
    if len({str(p["id"]) for p in problems}) != len(problems):
        raise ValueError(f"{data}: duplicate ids (per-problem seeds and details are keyed by id)")
    seeds = list(range(n_seeds))
    engine = Engine(model_path, engine_cfg, seed=0)
    config = CustomModelConfig(
        model_name=model_name,
        model_definition_file_path=__file__,
        generation_parameters=GenerationParameters(
            temperature=eval_cfg["temperature"], top_p=eval_cfg["top_p"], max_new_tokens=eval_cfg["max_new_tokens"]
        ),
    )
    model = EngineModel(engine, config, seeds=seeds)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="scalediff-eval-") as workdir:
        data_dir = str(Path(workdir) / "data")
        Path(data_dir).mkdir()
        write_test_split(problems, data_dir)
        task = task_config(benchmark, data_dir, eval_cfg["instruction"], eval_cfg["max_new_tokens"])
        for seed in seeds:
            t0 = time.time()
            seed_rows = run_seed(model, task, seed, workdir, remove_reasoning)
            acc = 100.0 * float(np.mean([r["correct"] for r in seed_rows]))
            log.info("%s on %s, seed %d: %.2f%% (%.1fs)", model_name, benchmark, seed, acc, time.time() - t0)
            rows.extend(seed_rows)
    summary = summarize(model_name, benchmark, seeds, rows)
    summary["remove_reasoning_tags"] = remove_reasoning
    summary["n_available"] = n_available  # the benchmark's size: n_problems of it were scored (--limit)
    return summary, rows


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="local model directory")
    ap.add_argument("--model-name", required=True)
    ap.add_argument("--benchmark", required=True, help="benchmark name (task is <name>_sd)")
    ap.add_argument("--data", required=True, help="JSONL with id, problem, answer")
    ap.add_argument("--seeds", type=int, required=True, help="evaluate seeds 0..N-1")
    ap.add_argument("--limit", type=int, default=None, help="first L problems only")
    ap.add_argument("--output", required=True, help="summary JSON")
    ap.add_argument("--details", required=True, help="per (seed, problem) Parquet")
    cli.add_settings_argument(ap)
    args = ap.parse_args(argv)
    cli.setup_logging()
    settings = cli.load_settings(args)
    if args.seeds < 1:
        raise SystemExit("--seeds must be >= 1")
    summary, rows = evaluate(
        args.model, args.model_name, args.benchmark, args.data, args.seeds, settings, limit=args.limit
    )
    write_rows(rows, args.details)
    write_json(summary, args.output)
    log.info(
        "%s on %s: %.2f ± %.2f over %d seeds",
        args.model_name,
        args.benchmark,
        summary["mean"],
        summary["std"],
        len(summary["seeds"]),
    )


if __name__ == "__main__":
    main()
