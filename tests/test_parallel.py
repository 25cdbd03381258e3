"""parallel.py: the papers' activation formulas on the papers' own configurations, and the estimator's shares.

Expected values are worked out by hand from the formulas as printed (Korthikanti et al. 2022, "Reducing Activation
Recomputation in Large Transformer Models", Table 2 and §4.2.3; Narayanan et al. 2021, "Efficient Large-Scale
Language Model Training on GPU Clusters Using Megatron-LM", §2.2), on the model configurations of Korthikanti et
al.'s Table 3 (s = 2048, v = 51200).
"""

import pytest

import modelmem
from modelmem.job import make_job
from modelmem.parallel import (
    first_stage_activation_bytes, in_flight_microbatches, interleaved_memory_factor, korthikanti_layer_activation_bytes,
    layout_problem, stage_shares,
)

# Korthikanti et al. 2022, Table 3: name, attention heads a, hidden h, layers L, tensor t, pipeline p, micro-batch b.
TABLE3 = {
    "22B": (64, 6144, 48, 8, 1, 4),
    "175B": (96, 12288, 96, 8, 8, 1),
    "530B": (128, 20480, 105, 8, 35, 1),
    "1T": (160, 25600, 128, 8, 64, 1),
}
S, V = 2048, 51200

# Per layer, bytes: (TP only: sbh(10 + 24/t + 5as/(ht)), TP+SP: sbh/t(34 + 5as/h), selective+SP: 34sbh/t, full: 2sbh).
# 22B:  sbh = 2048·4·6144 = 50,331,648;  5as/h = 5·64·2048/6144 = 106⅔  → 50,331,648·(13 + 13⅓) = 1,325,400,064;
#       SP: 6,291,456·140⅔ = 884,998,144;  selective: 6,291,456·34 = 213,909,504;  full: 100,663,296.
# 175B: sbh = 25,165,824;  5as/h = 80  → 25,165,824·(13 + 10) = 578,813,952;  SP: 3,145,728·114 = 358,612,992;
#       selective 106,954,752;  full 50,331,648.
# 530B: sbh = 41,943,040;  5as/h = 64  → 41,943,040·21 = 880,803,840;  SP: 5,242,880·98 = 513,802,240;
#       selective 178,257,920;  full 83,886,080.
# 1T:   sbh = 52,428,800;  5as/h = 64  → 52,428,800·21 = 1,101,004,800;  SP: 6,553,600·98 = 642,252,800;
#       selective 222,822,400;  full 104,857,600.
TABLE2 = {
    "22B": (1_325_400_064, 884_998_144, 213_909_504, 100_663_296),
    "175B": (578_813_952, 358_612_992, 106_954_752, 50_331_648),
    "530B": (880_803_840, 513_802_240, 178_257_920, 83_886_080),
    "1T": (1_101_004_800, 642_252_800, 222_822_400, 104_857_600),
}


@pytest.mark.parametrize("name", TABLE3)
def test_table2_per_layer_activations(name):
    a, h, L, t, p, b = TABLE3[name]
    tp_only, tp_sp, selective_sp, full = TABLE2[name]
    assert korthikanti_layer_activation_bytes(S, b, h, a, t) == pytest.approx(tp_only, rel=1e-12)
    assert korthikanti_layer_activation_bytes(S, b, h, a, t, sequence_parallel=True) == pytest.approx(tp_sp, rel=1e-12)
    assert korthikanti_layer_activation_bytes(S, b, h, a, t, True, "selective") == pytest.approx(selective_sp, rel=1e-12)
    assert korthikanti_layer_activation_bytes(S, b, h, a, t, True, "full") == full


def test_no_parallelism_is_34_plus_5as_over_h():
    # Table 2, first row: sbh(34 + 5as/h); 175B at t = 1: 25,165,824 · (34 + 80) = 2,868,903,936.
    assert korthikanti_layer_activation_bytes(S, 1, 12288, 96) == 2_868_903_936


def test_pipeline_schedules():
    # 1F1B: p micro-batches in flight at most (Narayanan et al. §2.2); GPipe keeps all m.
    assert in_flight_microbatches(8, 64) == 8
    assert in_flight_microbatches(8, 3) == 3
    assert in_flight_microbatches(8, 64, "gpipe") == 64
    assert in_flight_microbatches(1, 64) == 1
    # Interleaved: 1 + (p − 1)/(p·v); p = 8, v = 2: 1 + 7/16.
    assert interleaved_memory_factor(8, 2) == 1.4375
    assert interleaved_memory_factor(64, 1) == 1 + 63 / 64


@pytest.mark.parametrize("name, expected", [
    # First stage, selective recomputation + SP, m ≥ p (Korthikanti §4.2.3): L/p layers × p micro-batches = L layers
    # of 34sbh/t, plus the embedding dropout sbh·p/t; p = 1 adds 4sbh(1 + v/h)/t for the output layer and loss.
    # 175B: 96·106,954,752 + 25,165,824·8/8 = 10,292,822,016.
    ("175B", 10_292_822_016),
    # 530B: 105·178,257,920 + 41,943,040·35/8 = 18,900,582,400.
    ("530B", 18_900_582_400),
    # 1T: 128·222,822,400 + 52,428,800·64/8 = 28,940,697,600.
    ("1T", 28_940_697_600),
    # 22B (p = 1): 48·213,909,504 + 50,331,648/8 + 4·50,331,648·(1 + 51200/6144)/8 = 10,508,828,672.
    ("22B", 10_508_828_672),
])
def test_first_stage_whole_step(name, expected):
    a, h, L, t, p, b = TABLE3[name]
    got = first_stage_activation_bytes(S, b, h, a, L, V, t, p, m=64, sequence_parallel=True, recompute="selective")
    assert got == pytest.approx(expected, rel=1e-12)


def test_interleaving_multiplies_the_first_stage():
    a, h, L, t, p, b = TABLE3["175B"]
    plain = first_stage_activation_bytes(S, b, h, a, L, V, t, p, 64, True, "selective")
    inter = first_stage_activation_bytes(S, b, h, a, L, V, t, p, 64, True, "selective", "interleaved", virtual=2)
    assert inter == pytest.approx(plain * (1 + 7 / 16), rel=1e-12)


# Llama-3.1-8B from its config (h 4096, 32 layers, 32 heads, 8 KV heads, MLP 14336, vocab 128256, untied head):
ATTN = 32 * (4096 * 4096 * 2 + 4096 * 1024 * 2)  # q, o: h×h; k, v: h×1024
MLP = 32 * 3 * 4096 * 14336
NORMS = 32 * 2 * 4096 + 4096
EMB = 128256 * 4096
TOTAL = ATTN + MLP + NORMS + 2 * EMB  # 8,030,261,248


@pytest.fixture(scope="module")
def llama8b():
    return modelmem.resolve_model("meta-llama/Llama-3.1-8B")


def test_tensor_parallel_splits_matrices_not_norms(llama8b):
    from modelmem.counts import count_params

    job = make_job(mode="train", strategy="tp", num_gpus=8)
    (sh,) = stage_shares(llama8b, job, 8, count_params(llama8b))
    assert sh.weights == pytest.approx(((ATTN + MLP + 2 * EMB) / 8 + NORMS) / TOTAL, rel=1e-12)
    assert sh.kv == 1 / 8  # 8 KV heads, one per rank


def test_pipeline_stages_hold_their_layers_and_the_ends(llama8b):
    from modelmem.counts import count_params

    job = make_job(mode="train", strategy="pp", num_gpus=4)
    first, last = stage_shares(llama8b, job, 4, count_params(llama8b))
    body = (ATTN + MLP + NORMS) / 4  # 8 of 32 layers (the final norm counted with the layers' norms)
    assert first.weights == pytest.approx((body + EMB) / TOTAL, rel=1e-12)
    assert last.weights == pytest.approx((body + EMB) / TOTAL, rel=1e-12)  # the untied head is as large
    assert first.layers == last.layers == 8 / 32
    assert not first.holds_embeddings and last.holds_embeddings  # only the last stage computes the loss


@pytest.mark.parametrize("strategy, n, problem", [
    ("tp", 3, "divides the 32 attention heads"),
    ("tp", 16, None),  # 32 heads split; 8 KV heads replicated twice (16 is a multiple of 8)
    ("tp", 64, "divides the 32 attention heads"),
    ("pp", 33, "at most 32 pipeline stages"),
])
def test_divisibility(llama8b, strategy, n, problem):
    got = layout_problem(llama8b, make_job(mode="inference" if strategy == "tp" else "train", strategy=strategy, num_gpus=n), n)
    assert (got is None) if problem is None else (problem in got)
