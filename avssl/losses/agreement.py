"""Cross-modal agreement (CMA, "Audio-Visual Instance Discrimination with Cross-Modal
Agreement", CVPR 2021, §3.3): each instance's positive set is the instances that are close
to it in both the video and the audio memory bank."""
from __future__ import annotations

from typing import Any

import torch
from torch import nn


def agreement_positives(video_bank: torch.Tensor, audio_bank: torch.Tensor, k: int, chunk: int = 1024
                        ) -> torch.Tensor:
    """N×k indices: for each slot, the k others with the highest min(video cos, audio cos)
    (CMA's "consensus" agreement), sorted ascending by index. Exhaustive, in blocks."""
    n = video_bank.shape[0]
    if not 0 < k < n:
        raise ValueError(f"cma_positives must lie in (0, {n}), got {k}")
    out = torch.empty(n, k, dtype=torch.long, device=video_bank.device)
    for start in range(0, n, chunk):
        rows = torch.arange(start, min(start + chunk, n), device=video_bank.device)
        rho = torch.minimum(video_bank[rows] @ video_bank.T, audio_bank[rows] @ audio_bank.T)
        rho[torch.arange(rows.numel()), rows] = -float("inf")  # never yourself
        out[rows] = rho.topk(k, dim=1).indices.sort(dim=1).values
    return out


def excluded_from_negatives(positives: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """B×(k+1), sorted: each query's positive set and itself, which its within-modal
    negatives must avoid (the sorted form :func:`avssl.losses.nce.sample_excluding` takes)."""
    return torch.sort(torch.cat([positives, index[:, None]], dim=1), dim=1).values


class PositiveSets(nn.Module):
    """Every instance's CMA positive set (N×k indices in ``indices``; empty until CMA starts),
    solved from the memory banks by :func:`agreement_positives`. The sets appear when CMA
    starts, so a checkpoint's load whatever this module's shape is."""

    def __init__(self, k: int, chunk: int = 1024) -> None:
        super().__init__()
        self.register_buffer("indices", torch.zeros(0, k, dtype=torch.long))
        self.k, self.chunk = k, chunk
        self.register_load_state_dict_pre_hook(self._take_stored_shape)

    @staticmethod
    def _take_stored_shape(module: PositiveSets, state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
        stored = state_dict.get(prefix + "indices")
        if stored is not None:
            module.indices = torch.zeros_like(stored)

    @property
    def solved(self) -> bool:
        return self.indices.numel() > 0

    def solve(self, video_bank: torch.Tensor, audio_bank: torch.Tensor) -> None:
        self.indices = agreement_positives(video_bank, audio_bank, self.k, self.chunk)
