"""`estimate --method both`: the seed's rule beside the detailed estimate, in one unit, on one GPU size."""

from __future__ import annotations

import ast
import json
import operator
import re

import pytest

import modelmem
from modelmem.cli import main
from modelmem.compare import compare
from modelmem.units import BYTES_IN_GIB

# meta-llama/Llama-2-7b-hf: the official count; PEFT r=8 on q,v: 32 layers × 2 × 8 × (4096 + 4096)
P_LLAMA2, T_QV_R8 = 6_738_415_616, 4_194_304


def _eval(formula: str) -> float:
    """Evaluate the printed formula (numbers, +, ×, parentheses) without eval()."""
    ops = {ast.Add: operator.add, ast.Mult: operator.mul}
    tree = ast.parse(formula.replace(",", "").replace("×", "*"), mode="eval")

    def walk(node):
        if isinstance(node, ast.Expression):
            return walk(node.body)
        if isinstance(node, ast.BinOp) and type(node.op) in ops:
            return ops[type(node.op)](walk(node.left), walk(node.right))
        if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)):
            return node.value
        raise ValueError(f"unexpected {ast.dump(node)}")

    return walk(tree)


def test_lora_formula_is_what_the_seed_computes():
    c = compare("meta-llama/Llama-2-7b-hf", mode="lora", lora_rank=8, lora_targets="q_proj,v_proj", gpu="a100-40gb")
    # the article: (P × 2 + T × 18) × 1.25 — the allowance applies to the base term too
    assert c.formula.startswith("(") and c.formula.endswith(") × 1.25")
    assert _eval(c.formula) == pytest.approx(P_LLAMA2 * 2 * 1.25 + T_QV_R8 * 18 * 1.25)
    assert c.seed.total_bytes == round(_eval(c.formula))


@pytest.mark.parametrize("job, per_param", [
    ({"mode": "train"}, 18), ({"mode": "train", "optimizer": "sgd-momentum"}, 14), ({}, 2), ({"dtype": "fp32"}, 4),
])
def test_other_formulas(job, per_param):
    c = compare("7B", **job)
    assert _eval(c.formula) == pytest.approx(7e9 * per_param * 1.25)


def test_seed_weights_split_into_copy_and_masters():
    c = compare("7B", mode="train", gpu="a100-80gb", num_gpus=2, strategy="fsdp")
    rows = {r.component: r for r in c.rows}
    # the seed's 6 bytes per parameter: a 2-byte 16-bit copy and a 4-byte fp32 master ("Model training anatomy")
    assert rows["weights"].seed == 7e9 * 2 / 2
    assert rows["master_weights"].seed == 7e9 * 4 / 2
    assert rows["gradients"].seed == 7e9 * 4 / 2 and rows["optimizer_states"].seed == 7e9 * 8 / 2
    assert rows["allowance"].seed == 7e9 * 18 * 0.25 / 2
    assert all(r.why for r in c.rows)
    assert "weights" in rows["weights"].why and rows["temporaries"].why.startswith("the seed ignores")


def test_json_has_both_estimates():
    import io
    import contextlib

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert main(["estimate", "llama-3.1-8b", "--mode", "lora", "--gpu", "rtx-4090", "--method", "both", "--json"]) == 0
    d = json.loads(buf.getvalue())
    assert set(d) == {"detailed", "seed"}
    detailed = modelmem.estimate("llama-3.1-8b", mode="lora", gpu="rtx-4090")
    assert d["detailed"] == detailed.to_dict()
    assert d["seed"] == modelmem.estimate("llama-3.1-8b", method="seed", mode="lora", gpu="rtx-4090",
                                          num_gpus=detailed.num_gpus).to_dict()


def test_table_one_unit_one_gpu_size(capsys):
    assert main(["estimate", "7B", "--mode", "train", "--gpu", "h100-80gb", "--method", "both"]) == 0
    out = capsys.readouterr().out
    device_gib = modelmem.estimate("7B", mode="train", gpu="h100-80gb").gpu.memory_bytes / BYTES_IN_GIB
    nominal_gib = 80e9 / BYTES_IN_GIB  # 74.51: the seed's 80 GB, which must not appear as a second GPU size
    assert f"{device_gib:.2f} GiB" in out and f"{nominal_gib:.1f}" not in out
    header = next(line for line in out.splitlines() if line.startswith("component"))
    assert header.split()[:3] == ["component", "detailed", "seed"]
    table = out.split("\n\n")[1].splitlines()[1:]
    names = [line.split()[0] for line in table if line.startswith("  ")]
    assert {"weights", "master_weights", "gradients", "optimizer_states", "allowance"} <= set(names)
    assert re.search(r"seed formula: 7,000,000,000 × \(6 \+ 4 \+ 8\) × 1\.25 bytes = 157\.50 GB = 146\.68 GiB", out)


def test_seed_method_names_both_units(capsys):
    assert main(["estimate", "7B", "--mode", "train", "--gpu", "a100-80gb", "--method", "seed"]) == 0
    out = capsys.readouterr().out
    assert "= 157.50 GB (146.68 GiB)" in out  # 7e9 × 18 × 1.25 bytes in both units
    assert "80 GB nominal" in out


def test_the_seeds_own_gpu_count_whatever_count_is_compared():
    # the article's example: 7B trained on A100 80GB needs ceil(157.5 GB / 80 GB) = 2 GPUs
    c = compare("7B", mode="train", gpu="a100-80gb", num_gpus=1)
    assert c.seed_gpus_needed == 2 and c.seed.num_gpus == c.detailed.num_gpus == 1
