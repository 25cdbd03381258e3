"""Gradients and optimizer states, and the optimizer step's temporaries."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from modelmem.dtypes import DTYPE_BYTES
from modelmem.job import Job
from modelmem.units import FP32_BYTES

if TYPE_CHECKING:
    from modelmem.model import PreparedModel
    from modelmem.parallel import Shares
from modelmem.runtimes.profiles import profile_for

# bitsandbytes 8-bit optimizers: uint8 state + one fp32 absmax per 256-value block (bnb optim Optimizer8bit,
# blockwise quantization, Dettmers et al. 2022 "8-bit Optimizers via Block-wise Quantization").
_BNB8_BYTES_PER_STATE = 1 + FP32_BYTES / 256


@dataclass(frozen=True)
class TrainableShapes:
    """What Adafactor reads of the trainable tensors' shapes; tensors of unknown shape count as vectors."""

    params: int  # every trainable parameter
    matrices: int  # parameters in tensors of two or more dimensions
    factored: int  # Σ over those tensors of rows + columns (Adafactor's row and column statistics)
    largest: int  # elements of the largest trainable tensor

    @property
    def vectors(self) -> int:
        return self.params - self.matrices


def trainable_shapes(m: PreparedModel, job: Job) -> TrainableShapes:
    """The trainable tensors as the modules hold them: a Linear's weight is out × in, an embedding V × width, a
    transformers-5 expert stack one E × out × in Parameter per layer (factored over its last two dimensions); LoRA
    trains A (r × in) and B (out × r) per targeted module (peft/tuners/lora/layer.py LoraLayer.update_layer)."""
    spec, c = m.spec, m.counts
    mats: list[tuple[int, int, int, int]] = []  # (rows, columns, tensors, elements of one tensor)
    if job.uses_lora:
        r = job.lora_rank
        for lin in m.linears:
            if lin.name in m.targets and not lin.expert:
                mats += [(r, lin.in_features, lin.count, r * lin.in_features),
                         (lin.out_features, r, lin.count, lin.out_features * r)]
    elif m.trainable:
        for lin in m.linears:
            if lin.name == "lm_head" and spec.tie_word_embeddings:
                continue  # the head is the embedding table, counted below
            one = lin.in_features * lin.out_features
            if lin.expert and spec.moe is not None:
                one *= spec.moe.num_experts  # one Parameter holds every expert of a layer
            mats.append((lin.out_features, lin.in_features, lin.count, one))
        width = c.embeddings // max(1, spec.vocab_size)
        if c.embeddings:
            mats.append((spec.vocab_size, width, 1, c.embeddings))
        if c.position_embeddings:
            mats.append((c.position_embeddings // max(1, spec.hidden_size), spec.hidden_size, 1, c.position_embeddings))
    matrices = min(m.trainable, sum(rows * cols * n for rows, cols, n, _ in mats))
    factored = sum((rows + cols) * n for rows, cols, n, _ in mats)
    largest = max([one for *_, one in mats] + [0])
    return TrainableShapes(m.trainable, matrices, factored, largest)


def master_dtype_bytes(job: Job) -> int:
    return FP32_BYTES if job.precision == "mixed" else DTYPE_BYTES[job.dtype]


def gradient_bytes(job: Job, trainable: int) -> int:
    # Gradients take the dtype of the parameter they belong to (autograd accumulates into param.grad's dtype).
    return trainable * master_dtype_bytes(job)


def optimizer_state_bytes(job: Job, shapes: TrainableShapes) -> int:
    """States resident on the GPU from the first step on (torch keeps AdamW states in the parameter's dtype)."""
    p = master_dtype_bytes(job)
    trainable = shapes.params
    opt = job.optimizer
    if opt == "adamw":
        return 2 * trainable * p  # exp_avg + exp_avg_sq (Loshchilov & Hutter 2019)
    if opt == "adamw-8bit":
        return int(2 * trainable * _BNB8_BYTES_PER_STATE)
    if opt in ("paged-adamw", "paged-adamw-8bit"):
        # Paged states live in CUDA unified memory and page out under pressure: torch's allocator never sees them.
        return 0
    if opt == "sgd":
        return 0
    if opt in ("sgd-momentum", "lion"):
        return trainable * p  # one momentum buffer (Chen et al. 2023, Lion Algorithm 2)
    if opt == "adafactor":
        return adafactor_state_bytes(job, shapes)
    raise ValueError(opt)


def adafactor_state_bytes(job: Job, shapes: TrainableShapes) -> int:
    """The factored second moment (Shazeer & Stern 2018 §3): a row and a column statistic per matrix, the full
    second moment per vector; no first moment (beta1 None, the default of both implementations)."""
    statistics = shapes.factored + shapes.vectors
    if profile_for(job).adafactor == "transformers":
        # transformers/optimization.py Adafactor.step: states are created `.to(grad)` after grad.float(): fp32.
        return statistics * FP32_BYTES
    # torch/optim/_adafactor.py Adafactor._init_group: row_var/col_var/variance are p.grad.new_zeros: grad's dtype.
    return statistics * master_dtype_bytes(job)


def optimizer_step_temporary_bytes(job: Job, shapes: TrainableShapes) -> int:
    """Extra memory the step itself allocates: torch's foreach AdamW materializes one state-sized temporary
    (torch.optim.adamw._multi_tensor_adamw: _foreach_sqrt); the fused kernel (profile.fused_adamw) none."""
    if job.optimizer_in_backward:
        return 0
    if job.optimizer == "adafactor":
        return adafactor_step_bytes(job, shapes)
    if job.optimizer != "adamw" or profile_for(job).fused_adamw:
        return 0
    return shapes.params * master_dtype_bytes(job)


def adafactor_step_bytes(job: Job, shapes: TrainableShapes) -> int:
    """The step's temporaries, read from each implementation's step."""
    p = master_dtype_bytes(job)
    if profile_for(job).adafactor == "transformers":
        # transformers/optimization.py Adafactor.step, one parameter at a time: a bf16/fp16 parameter gets fp32
        # copies of its gradient and of itself (grad.float(), p.float()), then the update (grad**2 + eps) and its
        # replacement (_approx_sq_grad, or -update at p.add_) coexist: 4 fp32 tensors of the largest parameter; an
        # fp32 parameter needs no copies: 2. (The previous parameter's update, still bound when the next step
        # starts, is the final norm's before lm_head.)
        return shapes.largest * FP32_BYTES * (2 if p == FP32_BYTES else 4)
    # torch/optim/_adafactor.py _multi_tensor_adafactor (foreach, CUDA's default): var_estimates for every matrix,
    # then the vectors' clones while the matrices' list is still bound: one parameter-sized copy in the parameter's
    # dtype (its docstring: "~ sizeof(params) more peak memory").
    return shapes.params * p


def paged_state_bytes(job: Job, trainable: int) -> int:
    """Paged optimizers' states (unified memory): reported in notes, not in allocated memory."""
    p = master_dtype_bytes(job)
    if job.optimizer == "paged-adamw":
        return 2 * trainable * p
    if job.optimizer == "paged-adamw-8bit":
        return int(2 * trainable * _BNB8_BYTES_PER_STATE)
    return 0


def offloaded(job: Job) -> bool:
    """ZeRO-Offload: fp32 masters, optimizer states and the partitioned gradients live in CPU memory."""
    return job.offload in ("optimizer", "params")


def resident_state_bytes(m: PreparedModel, job: Job, sh: Shares, notes: list[str]) -> tuple[int, int]:
    """(optimizer states, the step's temporaries) on one GPU, after sharding and offload."""
    if offloaded(job):
        notes.append("optimizer states, fp32 masters and gradients offloaded to CPU")
        states = step = 0
    else:
        shapes = trainable_shapes(m, job)
        states = int(optimizer_state_bytes(job, shapes) * sh.states)
        step = int(optimizer_step_temporary_bytes(job, shapes) * sh.states)
    paged = paged_state_bytes(job, m.trainable)
    if paged:
        notes.append(f"paged optimizer: {paged} bytes of states in CUDA unified memory, not in torch's allocated count")
    return states, step


def training_gradient_bytes(m: PreparedModel, job: Job, n: int, sh: Shares, notes: list[str]) -> tuple[int, int]:
    """(gradients alive after backward, gradients already alive when backward starts) on one GPU."""
    spec = m.spec
    grads = 0 if offloaded(job) else int(gradient_bytes(job, m.trainable) * sh.grads)
    accumulated = 0
    # From 1 GPU on (FSDP1 runs NO_SHARD on one rank, still one FlatParameter per Block), and not when gradients
    # are offloaded to the CPU (issue 9: gemma-2-27b went from 4.74 GB on 1 GPU to 57.95 GB on 2 with offload).
    if (profile_for(job).fsdp_lora_unsharded_block_grads and job.strategy == "fsdp" and job.uses_lora
            and not offloaded(job)):
        # LitGPT wraps each Block with FSDP1 (use_orig_params=True): a FlatParameter holding any adapter requires
        # grad as a whole, so frozen weights get gradients too; its default gradient accumulation runs under
        # no_sync(), which keeps them unsharded until the last micro-batch (lit-gpt finetune/lora.py, Fabric
        # no_backward_sync; pytorch/pytorch#91167; Lightning-AI/litgpt#676). Plus one Block's gradient in flight.
        c = m.counts
        block_grads = (c.total - c.embeddings - c.position_embeddings - c.lm_head) * master_dtype_bytes(job)
        grads = block_grads + block_grads // max(1, spec.num_layers)
        accumulated = block_grads  # alive from the previous micro-batch while the next one runs forward
        notes.append("LitGPT FSDP LoRA: whole-Block gradients, unsharded under no_sync during gradient accumulation")
    if job.optimizer_in_backward:
        # Each parameter steps as soon as its gradient is ready; at most one layer's gradients exist at once —
        # except a tied embedding, whose gradient lives from the output layer's backward to the very end.
        grads = int(grads / max(1, spec.num_layers))
        if spec.tie_word_embeddings and job.mode == "train":
            grads += int(m.counts.embeddings * master_dtype_bytes(job) * sh.grads)
    return grads, accumulated


def gradients_before_first_layer(m: PreparedModel, job: Job, grads: int, accumulated: int) -> int:
    """Gradients alive while the first decoder layer's backward runs: all of them but that layer's and the
    embeddings' (computed after it), unless an earlier micro-batch left every gradient in place or each layer's
    are stepped and freed as they come (optimizer_in_backward: `grads` is already one layer's)."""
    if accumulated or job.optimizer_in_backward or not m.trainable:
        return grads
    c, spec = m.counts, m.spec
    later = c.position_embeddings + (0 if spec.tie_word_embeddings else c.embeddings) if job.mode == "train" else 0
    one_layer = (m.per_layer_params if job.mode == "train" else m.trainable // max(1, spec.num_layers))
    return int(grads * max(0, m.trainable - later - one_layer) / m.trainable)
