"""filter model pass: the student base answers one shard of the surviving *generated* problems (k samples);
a row is dropped when the student's answer agrees with the teacher's (``any`` or ``majority`` of the k).
Resumable via ``engine.run_shard`` (``python -m scalediff.filter model-shard``, a GPU rule).
"""

from __future__ import annotations

import json
import logging
from collections import defaultdict
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from scalediff.filter_rules import with_defaults
from scalediff.records import ShardCheckpoint, shard_slice, write_rows

log = logging.getLogger(__name__)

VERDICT_SCHEMA = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),
        pa.field("sample", pa.int64()),
        pa.field("checked", pa.bool_(), nullable=False),
        pa.field("k", pa.int32()),
        pa.field("agree", pa.int32()),
        pa.field("drop", pa.bool_(), nullable=False),
        pa.field("student_answers", pa.string()),  # JSON list of the student's final answers
        pa.field("note", pa.string()),
    ]
)


# ============================================================================ model-based
def student_drops(agree: int, k: int, rule: str) -> bool:
    """``any``: one of the k student answers matches the teacher's; ``majority``: more than half do."""
    if rule == "any":
        return agree >= 1
    if rule == "majority":
        return agree * 2 > k
    raise ValueError(f"filter.model_based.rule: {rule!r} is not 'any' or 'majority'")


def run_model_shard(
    candidates: str, model: str, shard: int, n_shards: int, settings: dict[str, Any], output: str
) -> dict[str, Any]:
    """Student verdicts for one shard of the generated candidates (whole problems per shard)."""

    mb = with_defaults(settings["filter"])["model_based"]
    # Whole problems per shard, chosen in Arrow: only this shard's rows become Python objects.
    ids = pq.read_table(candidates, columns=["id"], filters=[("origin", "=", "generated")])["id"].unique()
    part = shard_slice(len(ids), shard, n_shards)
    mine = ids.slice(part.start, part.stop - part.start)
    table = pq.read_table(candidates, columns=["id", "sample", "problem", "answer", "origin"])
    rows = table.filter(pc.and_(pc.equal(table["origin"], "generated"), pc.is_in(table["id"], mine))).to_pylist()
    k, rule = int(mb["k"]), mb["rule"]

    def verdict(
        r: dict[str, Any], checked: bool, agree: int = 0, answers: list | None = None, note: str | None = None
    ) -> dict[str, Any]:
        return {
            "id": r["id"],
            "sample": r["sample"],
            "checked": checked,
            "k": k if checked else 0,
            "agree": agree,
            "drop": checked and student_drops(agree, k, rule),
            "student_answers": json.dumps(answers, ensure_ascii=False) if answers is not None else None,
            "note": note,
        }

    if not mb["enabled"] or not rows:
        out = [verdict(r, False, note="model-based filter disabled" if not mb["enabled"] else None) for r in rows]
        write_rows(out, output, VERDICT_SCHEMA)
        return {"rows": len(out), "checked": 0, "dropped": 0}

    from scalediff.answers import final_answer, score_prediction
    from scalediff.engine import Engine, ShardJob, run_shard

    engine = Engine(model, settings["engine"], seed=settings["seed"])
    teacher: dict[str, dict[int, str | None]] = defaultdict(dict)
    problem: dict[str, str] = {}
    for r in rows:
        teacher[r["id"]][r["sample"]] = r["answer"]
        problem.setdefault(r["id"], r["problem"])
    jobs, too_long = [], set()
    for pid, text in problem.items():
        prompt = engine.chat_prompt([{"role": "user", "content": mb["instruction"] + text}])
        if engine.fits(prompt, 1):
            jobs.append(ShardJob(key=pid, prompt=prompt, payload={"teacher": teacher[pid]}))
        else:
            too_long.add(pid)
    longest = max((len(j.prompt) for j in jobs), default=0)
    # vLLM refuses n > 1 with greedy decoding; greedy samples are identical, so one stands for all k.
    greedy = float(mb["temperature"]) == 0.0
    sampling = {
        "temperature": mb["temperature"],
        "top_p": mb["top_p"],
        "n": 1 if greedy else k,
        "max_tokens": max(1, min(mb["max_tokens"], engine.max_model_len - longest)),
    }

    def to_rows(job: ShardJob, comps: list) -> list[dict[str, Any]]:
        # Compare here (main thread, math-verify timeouts work) so the checkpoint stays small.
        comps = comps * k if greedy else comps
        agree = {
            str(s): sum(score_prediction(c.text, ans) for c in comps) if ans else 0
            for s, ans in job.payload["teacher"].items()
        }
        return [
            {
                "answers": [final_answer(c.text) for c in comps],
                "finish": [c.finish_reason for c in comps],
                "agree": agree,
            }
        ]

    done = {
        r["key"]: r
        for r in run_shard(
            engine,
            jobs,
            sampling,
            to_rows,
            output,
            base_seed=settings["seed"],
            batch_size=settings["engine"]["batch_size"],
            identity={"k": k},  # greedy rows repeat one sample k times
        )
    }
    out = []
    for r in rows:
        if r["id"] in too_long:
            out.append(verdict(r, False, note=f"prompt exceeds max_model_len {engine.max_model_len}: kept unchecked"))
        else:
            res = done[r["id"]]
            out.append(
                verdict(
                    r,
                    True,
                    int(res["agree"][str(r["sample"])]),
                    res["answers"],
                    note=None if r["answer"] else "no teacher answer",
                )
            )
    write_rows(out, output, VERDICT_SCHEMA)
    ShardCheckpoint(output).discard()
    stats = {"rows": len(out), "checked": sum(v["checked"] for v in out), "dropped": sum(v["drop"] for v in out)}
    log.info("filter model shard %d/%d: %s", shard + 1, n_shards, stats)
    return stats
