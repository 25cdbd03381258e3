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


# --- the estimator under composite layouts: a tiny Llama-shaped decoder whose per-layer inventory is worked out in
# tests/test_first_principles.py (h 256, 8 heads of 32, 2 KV heads, SwiGLU 704; pure bf16 training saves
# 2·(4h + 4 + 2·2h) + 2·(q + 2kv) + 2q + 4·heads + 4·2·i = 11,048 bytes per token per layer: each RMSNorm's fp32
# input, rstd and two bf16 tensors; SDPA's q, k, v, output and log-sum-exp; SwiGLU's four i-wide tensors).
H, HEADS, KV_HEADS, HD, I, TINY_V = 256, 8, 2, 32, 704, 256  # a small vocabulary: the loss stays below the first stage
PER_TOKEN = 2 * (4 * H + 4 + 2 * 2 * H) + 2 * (HEADS * HD + 2 * KV_HEADS * HD) + 2 * HEADS * HD + 4 * HEADS + 4 * 2 * I
TOKENS = 8 * 1024
# what the norm before the output layer saves per token in full training: fp32 input and rstd (traced:
# benchmarks/results/torchtune_traces.jsonl) and, its weight training, the bf16 normed tensor (as each layer's norm)
FINAL_NORM = 4 * H + 4 + 2 * H
TRAIN = dict(mode="train", precision="pure", batch_size=8, seq_len=1024, gpu="h100-80gb")


def _tiny(layers):
    return {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_size": H, "intermediate_size": I,
            "num_hidden_layers": layers, "num_attention_heads": HEADS, "num_key_value_heads": KV_HEADS, "head_dim": HD,
            "vocab_size": TINY_V, "max_position_embeddings": 65536, "tie_word_embeddings": False, "hidden_act": "silu",
            "rms_norm_eps": 1e-5, "torch_dtype": "bfloat16"}


@pytest.fixture
def tiny(tmp_path):
    import json

    def make(layers=4):
        path = tmp_path / f"l{layers}" / "config.json"
        path.parent.mkdir(exist_ok=True)
        path.write_text(json.dumps(_tiny(layers)))
        return str(path)

    return make


def test_per_token_inventory_is_the_first_principles_one():
    assert PER_TOKEN == 11_048


def test_1f1b_first_stage_holds_pp_microbatches(tiny):
    # pp 2 over 4 layers, 4 micro-batches: the first stage holds min(pp, m) = 2 micro-batches of its 2 layers.
    e = modelmem.estimate(tiny(4), num_gpus=2, strategy="ddp", pp=2, grad_accum=4, **TRAIN).per_gpu.components
    assert e["activations"] == 2 * 2 * PER_TOKEN * TOKENS
    few = modelmem.estimate(tiny(4), num_gpus=2, strategy="ddp", pp=2, grad_accum=1, **TRAIN).per_gpu.components
    # one micro-batch: only one in flight, so the last stage, which also holds the loss, is the larger: its final
    # RMSNorm keeps its fp32 input and rstd (traced: benchmarks/results/torchtune_traces.jsonl) and, its weight
    # training, its bf16 normed output (as each layer's norm)
    assert few["activations"] == 2 * 1 * PER_TOKEN * TOKENS + FINAL_NORM * TOKENS
    gpipe = modelmem.estimate(tiny(4), num_gpus=2, strategy="ddp", pp=2, grad_accum=4, pp_schedule="gpipe", **TRAIN)
    assert gpipe.per_gpu.components["activations"] == 2 * 4 * PER_TOKEN * TOKENS  # GPipe: all m micro-batches


def test_interleaved_adds_megatrons_factor(tiny):
    # pp 2, v 2: (1 + (2 − 1)/(2·2)) = 1.25 × the 1F1B first stage.
    e = modelmem.estimate(tiny(4), num_gpus=2, strategy="ddp", pp=2, grad_accum=4, pp_schedule="interleaved",
                          pp_virtual=2, **TRAIN).per_gpu.components
    assert e["activations"] == pytest.approx(1.25 * 2 * 2 * PER_TOKEN * TOKENS, rel=1e-9)


def test_sequence_and_context_parallel_divide_every_activation(tiny):
    # Korthikanti Table 2: with SP everything divides by t; context parallelism splits the sequence over cp ranks.
    sp = modelmem.estimate(tiny(4), num_gpus=2, strategy="ddp", tp=2, sequence_parallel=True, **TRAIN).per_gpu.components
    assert sp["activations"] == pytest.approx((4 * PER_TOKEN + FINAL_NORM) * TOKENS / 2, rel=1e-9)
    cp = modelmem.estimate(tiny(4), num_gpus=4, strategy="fsdp", cp=4, **TRAIN).per_gpu.components
    assert cp["activations"] == pytest.approx((4 * PER_TOKEN + FINAL_NORM) * TOKENS / 4, rel=1e-9)


def test_expert_parallel_splits_experts(tmp_path):
    # Mixtral-8x7B: 32 layers × 8 experts × 3 × 4096 × 14336 expert parameters; ep 8 leaves one expert per layer.
    job = dict(mode="inference", gpu="h100-80gb", strategy="none")
    full = modelmem.estimate("mistralai/Mixtral-8x7B-v0.1", num_gpus=1, **job).per_gpu.components["weights"]
    ep8 = modelmem.estimate("mistralai/Mixtral-8x7B-v0.1", num_gpus=8, ep=8, **job).per_gpu.components["weights"]
    experts = 32 * 8 * 3 * 4096 * 14336 * 2
    assert ep8 == pytest.approx(full - experts * 7 / 8, rel=1e-6)


def test_bad_layouts_are_exit_2_errors(tiny):
    from modelmem.errors import InvalidJobError

    with pytest.raises(InvalidJobError, match="num_gpus"):
        modelmem.estimate(tiny(4), num_gpus=3, strategy="fsdp", tp=2, **TRAIN)  # 3 is no multiple of tp
    with pytest.raises(InvalidJobError, match="num_gpus"):
        modelmem.estimate(tiny(4), num_gpus=3, strategy="ddp", tp=3, **TRAIN)  # 3 does not divide 8 heads
    with pytest.raises(InvalidJobError, match="pp_virtual"):
        modelmem.estimate(tiny(4), num_gpus=2, strategy="ddp", pp=2, pp_schedule="interleaved", **TRAIN)
    with pytest.raises(InvalidJobError, match="sequence_parallel"):
        modelmem.estimate(tiny(4), num_gpus=2, strategy="fsdp", sequence_parallel=True, **TRAIN)
