"""Cross-rank helpers that are no-ops on a single process.

Gathers that a loss differentiates through use ``torch.distributed.nn.functional``
(its backward returns each rank the gradient of its own slice from every rank's loss);
``torch.distributed.all_gather`` would silently drop the other ranks' gradients.
"""
from __future__ import annotations

import torch
import torch.distributed as dist


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` from every rank along dim 0 (rank order), keeping gradients."""
    if world_size() == 1:
        return x
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(x), dim=0)


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


def all_reduce_sum(x: torch.Tensor) -> torch.Tensor:
    return all_reduce(x, "sum")


def all_reduce_max(x: torch.Tensor) -> torch.Tensor:
    return all_reduce(x, "max")
