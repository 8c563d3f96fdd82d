"""Preflight planner (scalediff.plan, rules/plan.smk): what cannot fit a GPU, a node or a time limit
fails the plan, naming the rule, the need and the limit; the same config passes once fixed."""

import copy
import json
import re
from pathlib import Path

import pytest
import yaml
from test_config import REPO, _dry_run, _snakemake, _workdir

from scalediff import plan

FACTS = yaml.safe_load((REPO / "config" / "model_facts.yaml").read_text())
PAPER = yaml.safe_load((REPO / "config" / "paper.yaml").read_text())


def _profile(tmp_path: Path, **mem_mb: int) -> Path:
    """A workflow profile as profiles/slurm/config.yaml renders it: per-rule GPUs, memory, runtime."""
    rules = {
        "select_shard": 1,
        "select_generated_shard": 1,
        "diffgen_sample": 1,
        "distill_shard": 1,
        "filter_model_shard": 1,
        "eval_benchmark": 1,
        "diffgen_train": None,  # training rules declare nodes and GPUs per node themselves
        "sft_train": None,
        "filter_rules": None,  # a CPU rule
    }
    resources = {}
    for rule, gpus in rules.items():
        res = {"mem_mb": f"{mem_mb.get(rule, 200000)} * attempt", "runtime": "2880 * attempt", "cpus_per_gpu": 8}
        if gpus:
            res["gpu"] = gpus
        resources[rule] = res
    path = tmp_path / "profile.yaml"
    path.write_text(yaml.safe_dump({"retries": 1, "set-resources": resources}))
    return path


def _fitting_paper(tmp_path: Path) -> dict:
    """config/paper.yaml on 80 GB GPUs, 8 per node, SFT on 2 nodes, with what would stop a job fixed
    and counts small enough that every job ends within its time limit."""
    cfg = copy.deepcopy(PAPER)
    cfg["results"] = str(tmp_path / "results")
    cfg["cluster"] = {"gpu_type": "a100-80gb", "gpus_per_node": 8, "node_memory_gb": 1024}
    cfg["plan"] = {**cfg.get("plan", {}), "counts": {"pool_rows": 20000}}
    cfg["diffgen"]["sample"]["n_problems"] = 40000
    cfg["engine"]["models"] = {"teacher": {"max_model_len": 40960}, "student_base": {"max_model_len": 4096}}
    for section in (cfg["sft"], cfg["diffgen"]["train"]):
        section.update(gradient_checkpointing=True, attn_implementation="flash_attention_2", liger_kernel=True)
    cfg["sft"]["launch"] = {"nodes": 2, "gpus_per_node": 8}
    return cfg


def _plan(tmp_path: Path, cfg: dict, profile: Path) -> tuple[int, dict]:
    """The planner's CLI on a config written here; (exit code, plan.json)."""
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(cfg))
    out = tmp_path / "plan.json"
    out.unlink(missing_ok=True)
    rc = plan.main(
        [
            "--configfile",
            str(config),
            "--schema",
            str(REPO / "config" / "schema.yaml"),
            "--profile",
            str(profile),
            "--cluster-profile",
            "",
            "--facts",
            str(REPO / "config" / "model_facts.yaml"),
            "--json",
            str(out),
            "--markdown",
            str(tmp_path / "plan.md"),
        ]
    )
    return rc, json.loads(out.read_text())


@pytest.fixture
def fitting(tmp_path):
    cfg = _fitting_paper(tmp_path)
    rc, result = _plan(tmp_path, cfg, _profile(tmp_path))
    assert rc == 0 and result["ok"], result["errors"]
    return cfg


def test_the_fixed_paper_config_passes(fitting, tmp_path):
    text = (tmp_path / "plan.md").read_text()
    assert "Every GPU rule fits" in text and "GPU-hours" in text
    result = json.loads((tmp_path / "plan.json").read_text())
    stages = {s["stage"] for s in result["stages"]}
    assert {"select", "diffgen_train", "diffgen_sample", "distill", "filter_model", "sft_scalediff", "eval"} <= stages
    assert result["totals"]["gpu_hours"] > 0


def test_32k_sft_without_gradient_checkpointing_does_not_fit_80gb(fitting, tmp_path):
    cfg = copy.deepcopy(fitting)
    cfg["sft"]["gradient_checkpointing"] = False
    rc, result = _plan(tmp_path, cfg, _profile(tmp_path))
    assert rc == 1
    [error] = [e for e in result["errors"] if e.startswith("sft_train[scalediff]: GPU memory")]
    assert "without gradient checkpointing" in error and "65536 tokens per micro-batch" in error
    assert "> 79.3 GiB (a100-80gb)" in error
    need = float(re.search(r"needs (\d+) GiB per GPU", error).group(1))
    assert need > 200  # activations of 2 x 32K tokens through 28 layers


def test_4096_position_model_asked_for_32768_is_refused(fitting, tmp_path):
    cfg = copy.deepcopy(fitting)
    del cfg["engine"]["models"]["student_base"]  # back to the global max_model_len 32768
    rc, result = _plan(tmp_path, cfg, _profile(tmp_path))
    assert rc == 1
    assert any(
        e.startswith("filter_model_shard: engine.max_model_len 32768 > Qwen/Qwen2.5-Math-7B-Instruct's 4096 positions")
        for e in result["errors"]
    ), result["errors"]
    assert any(e.startswith("eval_benchmark[student_base]: engine.max_model_len 32768") for e in result["errors"])
    # the rope extension is the other fix: the base then has 32,768 positions
    rope = {"max_model_len": 32768, "hf_overrides": {"rope_theta": 300000, "max_position_embeddings": 32768}}
    cfg["engine"]["models"]["student_base"] = rope
    rc, result = _plan(tmp_path, cfg, _profile(tmp_path))
    assert rc == 0, result["errors"]


def test_eight_8b_ranks_do_not_fit_a_64gb_node(fitting, tmp_path):
    rc, result = _plan(tmp_path, fitting, _profile(tmp_path, diffgen_train=64000))
    assert rc == 1
    [error] = [e for e in result["errors"] if e.startswith("diffgen_train: host memory")]
    # 8 ranks x (8.19B x 2 bytes + 4 GiB) = 153 GiB
    assert "needs 154 GiB per node" in error and "mem_mb 64000 MiB" in error
    assert result["rules"]["diffgen_train"]["memory"]["gpus_per_node"] == 8


def test_a_job_longer_than_its_time_limit_fails(fitting, tmp_path):
    cfg = copy.deepcopy(fitting)
    cfg["plan"]["counts"]["pool_rows"] = 558129
    cfg["diffgen"]["sample"]["n_problems"] = 2000000
    cfg["sft"]["segment_minutes"] = None  # one job for the whole run
    rc, result = _plan(tmp_path, cfg, _profile(tmp_path))
    assert rc == 1
    assert any(e.startswith("sft_train[scalediff]: runtime: a job needs") for e in result["errors"]), result["errors"]


def test_a_run_in_segments_is_checked_segment_by_segment(fitting, tmp_path):
    """Days of SFT fit a 2-day limit in segments (paper.yaml's segment_minutes), each checked against
    the runtime asked and each paying its start-up; a segment longer than the limit fails."""
    cfg = copy.deepcopy(fitting)
    cfg["plan"]["counts"]["pool_rows"] = 558129
    cfg["diffgen"]["sample"]["n_problems"] = 2000000
    cfg["sft"]["segment_minutes"] = 660
    rc, result = _plan(tmp_path, cfg, _profile(tmp_path))
    assert not [e for e in result["errors"] if "runtime" in e], result["errors"]
    [stage] = [s for s in result["stages"] if s["stage"] == "sft_scalediff"]
    assert stage["segments"] > 2 and stage["segment_job_s"] <= stage["runtime_min"] * 60 < stage["job_s"]
    assert "per segment" in (tmp_path / "plan.md").read_text()
    cfg["sft"]["segment_minutes"] = 2880  # + start-up and the final save: past the 2880 min asked
    rc, result = _plan(tmp_path, cfg, _profile(tmp_path))
    assert rc == 1
    assert any(e.startswith("sft_train[scalediff]: runtime: a job needs") for e in result["errors"]), result["errors"]


def test_measured_rss_raises_the_host_memory_need(fitting, tmp_path):
    """A benchmark file of an earlier job calibrates host memory: 40 GB measured > 32 GB asked."""
    bench = Path(fitting["results"]) / "benchmarks" / "distill" / "distill_shard"
    bench.mkdir(parents=True)
    header = "s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time\n"
    (bench / "1-of-512.tsv").write_text(header + "3600.5\t1:00:00\t40000.0\t1\t1\t1\t0\t0\t90.0\t3000.0\n")
    (bench / "2-of-512.tsv").write_text(header + "1800.0\t0:30:00\t20000.0\t1\t1\t1\t0\t0\t90.0\t1500.0\n")
    measured = plan.read_benchmarks(Path(fitting["results"]) / "benchmarks")
    stats = measured["distill"]["distill_shard"]
    assert stats["jobs"] == 2 and stats["max_rss_mb"] == 40000.0 and stats["wall_s"] == 5400.5
    row = "| distill | distill_shard | 2 | 90 min | 60 min | 39.06 GiB | 75 min |"
    assert row in plan.benchmarks_markdown(measured)
    cpu = Path(fitting["results"]) / "benchmarks" / "filter" / "filter_rules.tsv"
    cpu.parent.mkdir()
    cpu.write_text(header + "600.0\t0:10:00\t50000.0\t1\t1\t1\t0\t0\t90.0\t500.0\n")
    rc, result = _plan(tmp_path, fitting, _profile(tmp_path, distill_shard=32000, filter_rules=32000))
    assert rc == 1
    [error] = [e for e in result["errors"] if e.startswith("distill_shard: host memory")]
    assert "measured max RSS 39.1 GiB" in error
    assert "filter_rules: measured max RSS 48.8 GiB > mem_mb 32000 MiB it requests" in result["warnings"]


def test_published_parameter_counts_and_twin_facts_agree():
    for hub_id, entry in FACTS.items():
        model = plan.Model(hub_id, "facts", entry["config"])
        assert model.parameters() == entry["parameters"], hub_id
        # config/twins holds the same published config.json; the planner must not see other numbers
        twin = REPO / "config" / "twins" / hub_id.replace("/", "__") / "config.json"
        if twin.is_file():
            other = plan.Model(hub_id, "twin", json.loads(twin.read_text()))
            assert other.summary() | {"source": "facts"} == model.summary() | {"source": "facts"}, hub_id


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["qwen2", "qwen3"])
@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_activation_bytes_per_layer_match_what_autograd_keeps(arch, attn):
    """The planner's per-layer activation bytes against the tensors torch saves for backward in a real
    transformers decoder layer (one layer's difference between a 2- and a 1-layer model, bf16, a
    packed row of two examples)."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM, Qwen3Config, Qwen3ForCausalLM

    dims = dict(
        vocab_size=512,
        hidden_size=256,
        intermediate_size=704,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        tie_word_embeddings=False,
    )
    tokens = 384

    def saved_bytes(layers: int) -> int:
        torch.manual_seed(0)
        common = dict(dims, num_hidden_layers=layers, attn_implementation=attn)
        config = Qwen3Config(head_dim=64, **common) if arch == "qwen3" else Qwen2Config(**common)
        model = (Qwen3ForCausalLM if arch == "qwen3" else Qwen2ForCausalLM)(config).to(torch.bfloat16).train()
        params = {p.untyped_storage().data_ptr() for p in model.parameters()}
        seen: dict[int, int] = {}

        def pack(t):
            storage = t.untyped_storage()
            if storage.data_ptr() not in params:
                seen[storage.data_ptr()] = storage.nbytes()
            return t

        ids = torch.randint(0, dims["vocab_size"], (1, tokens))
        positions = torch.cat([torch.arange(tokens // 2), torch.arange(tokens - tokens // 2)])[None]
        # enable_grad: an in-process vLLM engine earlier in the session turns grad mode off globally
        with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            model(input_ids=ids, labels=ids, position_ids=positions, use_cache=False)
        return sum(seen.values())

    measured = saved_bytes(2) - saved_bytes(1)
    model = plan.Model("probe", "test", {**dims, "model_type": arch, "num_hidden_layers": 2, "head_dim": 64})
    expected = tokens * model.activation_bytes_per_token_layer(2)
    expected += tokens * tokens * (2 if attn == "sdpa" else model.heads * (2 + 4))  # as plan.train_memory counts
    assert abs(measured - expected) / measured < 0.05, (measured, expected)


def _rulegraph_roots(workdir: Path, *args: str) -> tuple[set[str], str]:
    res = _snakemake(workdir, "--rulegraph", *args)
    assert res.returncode == 0, res.stderr[-3000:]
    names = dict(re.findall(r'^\s*(\d+)\[label = "([^"]+)"', res.stdout, re.M))
    targets = {b for _, b in re.findall(r"^\s*(\d+) -> (\d+)", res.stdout, re.M)}
    return {names[n] for n in names if n not in targets}, res.stdout


@pytest.mark.slow
@pytest.mark.parametrize("config", ["config.yaml", "paper.yaml"])
def test_preflight_comes_first_in_the_dag(tmp_path, config):
    """Every job of the DAG waits for the preflight plan (downloads and twin builds need no plan)."""
    workdir = _workdir(tmp_path, config)
    args = ["--configfile", f"config/{config}"] if config != "config.yaml" else []
    roots, _ = _rulegraph_roots(workdir, *args)
    assert roots - {"download_model", "download_dataset", "twin_model"} == {"preflight"}
    res = _dry_run(workdir, *args)
    assert res.returncode == 0, res.stderr[-3000:]
    assert re.search(r"^(local)?checkpoint preflight:", res.stdout, re.M)
    assert re.search(r"^preflight\s+1$", res.stdout, re.M)  # in the job stats
