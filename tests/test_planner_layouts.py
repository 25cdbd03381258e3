"""plan: layouts over strategies and degrees, each reproduced exactly by estimate, ranked, under the real rules."""

import json
import subprocess
import sys

import pytest

import modelmem
from modelmem.planner.layouts import cpu_ram_per_node, fewest_gpus_key, search


def run(*args):
    return subprocess.run([sys.executable, "-m", "modelmem", *args], capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def l70():
    return modelmem.resolve_model("meta-llama/Llama-3.1-70B")


@pytest.fixture(scope="module")
def plans70(l70):
    return search(l70, {"mode": "train"}, gpus=["h100-80gb"], max_gpus=256)


def test_every_plan_is_what_estimate_says(plans70):
    assert len(plans70) == 10
    for p in plans70:
        again = modelmem.estimate("meta-llama/Llama-3.1-70B", **p.fields)
        assert again.per_gpu.to_dict() == p.per_gpu.to_dict() and again.num_gpus == p.num_gpus and again.fits


def test_ranked_by_gpus_nodes_headroom(plans70):
    keys = [fewest_gpus_key(p) for p in plans70]
    assert keys == sorted(keys)


def test_divisibility_and_whole_nodes(plans70, l70):
    from modelmem.parallel import layout_of

    for p in plans70:
        lay = layout_of(p.job, p.num_gpus)
        assert l70.num_heads % lay.tp == 0 and l70.num_layers % lay.pp == 0 and lay.tp <= 8
        assert lay.dp * lay.tp * lay.pp * lay.cp == p.num_gpus
        assert p.num_gpus <= 8 or p.num_gpus % 8 == 0
        assert p.nodes == -(-p.num_gpus // 8)


def test_fewest_gpus_is_exact_for_the_best_plan(plans70):
    # The best plan's layout with one data-parallel rank fewer (whole nodes kept) does not fit.
    from modelmem.parallel import layout_of

    best = plans70[0]
    lay = layout_of(best.job, best.num_gpus)
    mp = lay.tp * lay.pp * lay.cp
    smaller = [d * mp for d in range(1, lay.dp) if d * mp <= 8 or (d * mp) % 8 == 0]
    for n in smaller:
        try:
            e = modelmem.estimate("meta-llama/Llama-3.1-70B", **{**best.fields, "num_gpus": n})
        except modelmem.ModelmemError:
            continue
        assert not e.fits


def test_without_savers_the_search_switches_them_on_only_when_needed(l70):
    # 70B full fine-tuning on 1024 H100s at most: with savers fixed off by the user, the plan still needs them
    # nowhere; FSDP over enough GPUs fits (Llama-3 70B trains on H100 nodes with FSDP + TP, Meta's recipe).
    plans = search(l70, {"mode": "train", "grad_checkpointing": "full", "offload": "none"}, gpus=["h100-80gb"], max_gpus=128)
    assert plans and all(p.job.grad_checkpointing == "full" and p.job.offload == "none" for p in plans)
    assert all(p.cpu_ram_per_node == 0 for p in plans)


def test_offload_plans_report_cpu_ram_per_node(plans70):
    offloaded = [p for p in plans70 if p.job.offload != "none"]
    assert offloaded
    for p in offloaded:
        # DeepSpeed's estimate (zero.Init): 16 bytes per parameter (18 with the parameters) × 1.5, over the nodes.
        per = 18 if p.job.offload == "params" else 16
        assert p.cpu_ram_per_node == int(70_553_706_496 * per * 1.5 / p.nodes)
        assert cpu_ram_per_node(p.estimate, p.nodes) == p.cpu_ram_per_node


def test_moe_uses_expert_parallel_degrees():
    spec = modelmem.resolve_model("mistralai/Mixtral-8x7B-v0.1")
    plans = search(spec, {"mode": "train", "grad_checkpointing": "full"}, gpus=["h100-80gb"], max_gpus=64, top=40)
    eps = {int(p.job.ep) for p in plans}
    assert eps <= {1, 2, 4, 8} and len(eps) > 1


def test_inference_plans_split_heads_or_layers():
    spec = modelmem.resolve_model("meta-llama/Llama-3.1-405B")
    plans = search(spec, {"mode": "inference", "seq_len": 8192, "batch_size": 8}, gpus=["h100-80gb"], max_gpus=64)
    assert plans
    for p in plans:
        assert p.job.tp * p.job.pp == p.num_gpus or p.job.strategy in ("tp", "pp")
    assert plans[0].num_gpus >= 810e9 / 85e9  # 405B bf16 weights alone need ≥ 10 H100s


def test_gpu_list_and_any(l70):
    plans = search(l70, {"mode": "qlora"}, gpus=["rtx-4090", "h100-80gb"], max_gpus=8)
    assert {p.gpu.name for p in plans} <= {"rtx-4090", "h100-80gb"}
    assert plans[0].num_gpus == 1


def test_cli_json_and_text():
    r = run("plan", "meta-llama/Llama-3.1-8B", "--mode", "train", "--gpu", "a100-40gb", "--max-gpus", "64", "--json")
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["plans"] and set(d["plans"][0]) >= {"job", "num_gpus", "nodes", "per_gpu", "cpu_ram_per_node"}
    r = run("plan", "meta-llama/Llama-3.1-8B", "--mode", "train", "--gpu", "a100-40gb", "--max-gpus", "64")
    assert r.returncode == 0 and "GPUs" in r.stdout and "layout" in r.stdout


@pytest.mark.parametrize("args, fragment", [
    (["--gpu", "h100,zz-top"], "gpu: 'zz-top'"),
    (["--max-gpus", "0"], "max_gpus"),
    (["--tp", "3"], None),  # no plan divides 32 heads by 3: an empty answer, not an error
])
def test_bad_input(args, fragment):
    r = run("plan", "meta-llama/Llama-3.1-8B", "--mode", "train", *args)
    if fragment is None:
        assert r.returncode == 0 and "no layout fits" in r.stdout
    else:
        assert r.returncode == 2 and fragment in r.stderr and "Traceback" not in r.stderr


def test_rank_by_time_and_by_cost():
    # Ranking re-orders the candidate plans by their own estimated figures: tokens/s descending for time; for cost,
    # USD per million tokens = price × GPUs / 3600 / (tokens/s) × 1e6, ascending, at the user's prices only.
    base = ["plan", "meta-llama/Llama-3.1-8B", "--mode", "lora", "--gpu", "rtx-4090,a100-80gb", "--max-gpus", "8",
            "--top", "4", "--json"]
    r = run(*base, "--rank", "time")
    assert r.returncode == 0, r.stderr
    plans = json.loads(r.stdout)["plans"]
    rates = [p["tokens_per_s"] for p in plans]
    assert len(plans) == 4 and all(rate > 0 for rate in rates) and rates == sorted(rates, reverse=True)
    prices = {"rtx-4090": 0.40, "a100-80gb": 1.20}
    r = run(*base, "--rank", "cost", "--price", "rtx-4090=0.40", "--price", "a100-80gb=1.20")
    assert r.returncode == 0, r.stderr
    plans = json.loads(r.stdout)["plans"]
    usd = [p["usd_per_million_tokens"] for p in plans]
    assert usd == sorted(usd)
    for p, cost in zip(plans, usd):
        expected = prices[p["job"]["gpu"]] * p["num_gpus"] / 3600 / p["tokens_per_s"] * 1e6
        assert cost == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize("args, fragment", [
    (["--rank", "cost"], "price: '(none given)'"),
    (["--rank", "speed"], "rank: 'speed'"),
    (["--rank", "cost", "--price", "h100=-1"], "price: 'h100=-1'"),
])
def test_bad_ranking(args, fragment):
    r = run("plan", "meta-llama/Llama-3.1-8B", "--mode", "lora", *args)
    assert r.returncode == 2 and fragment in r.stderr and "Traceback" not in r.stderr and len(r.stderr.splitlines()) == 1
