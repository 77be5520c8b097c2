"""Cross-rank helpers that are no-ops on a single process. All of them are without
gradient: no loss here differentiates through another rank's tensors (memory banks and
label banks hold constants). A loss that needs to must gather with
``torch.distributed.nn.functional.all_gather``, whose backward returns each rank the
gradient of its own slice; ``torch.distributed.all_gather`` drops it silently.
"""
from __future__ import annotations

import torch
import torch.distributed as dist


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


@torch.no_grad()
def gather(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` from every rank along dim 0, without gradients (bank updates)."""
    if world_size() == 1:
        return x
    parts = [torch.empty_like(x) for _ in range(world_size())]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts, dim=0)


def all_reduce(x: torch.Tensor, op: str = "sum") -> torch.Tensor:
    """``x`` reduced over ranks (``op``: sum or max), as a new tensor; no gradient."""
    if world_size() == 1:
        return x
    x = x.clone()
    dist.all_reduce(x, op={"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX}[op])
    return x


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` from every rank along dim 0, keeping the gradient path to each rank's
    own slice (in-batch contrastive losses over the global batch, as VATT and CAV-MAE compute
    them). Every rank then computes the same loss; DDP's gradient average makes the step
    equal to one process's step on the whole batch."""
    if world_size() == 1:
        return x
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(x.contiguous()), dim=0)
