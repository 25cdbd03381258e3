"""Sharded training (strategy fsdp / zero3 over N GPUs): PyTorch's FSDP2 (`fully_shard`) on one rank of a fake
process group (FakeStore, backend "fake": collectives return at once and move no data), so the rank's parameters,
gradients and optimizer states are the real shards, and the all-gather / reduce-scatter buffers are the real ones.
Each decoder layer is one FSDP unit, the root (embeddings, final norm, head) another, as torchtune and HF
Accelerate's transformer auto-wrap policy do. `reshard_after_forward=True` (ZeRO-3 / FULL_SHARD).
"""

from __future__ import annotations

from typing import Any

import torch

from modelmem.trace._workload import Hooks, Workload, _optimizer


def device_mesh(world: int) -> Any:
    """The fake process group and its mesh; built outside FakeTensorMode (the mesh reads real tensor values)."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.testing._internal.distributed.fake_pg import FakeStore

    if dist.is_initialized() and dist.get_world_size() != world:
        dist.destroy_process_group()
    if not dist.is_initialized():
        dist.init_process_group("fake", store=FakeStore(), rank=0, world_size=world)
    return init_device_mesh("cpu", (world,))


def shard(w: Workload, mesh: Any, hooks: Hooks) -> list[str]:
    from torch.distributed.fsdp import fully_shard
    from transformers.modeling_layers import GradientCheckpointingLayer

    world = mesh.size()
    base = w.base if w.base is not None else w.model
    for m in base.modules():
        if isinstance(m, GradientCheckpointingLayer):
            fully_shard(m, mesh=mesh)
    fully_shard(w.model, mesh=mesh)
    for p in w.model.parameters():
        hooks.tag(p, "weights")
    w.optimizer = _optimizer(w.model, w.job, [])
    return [f"FSDP2 fully_shard over a fake {world}-rank process group; one rank traced; one unit per decoder layer + root"]
