"""Token masking for transformer pretext methods: MAE-style per-sample random masking (CAV-MAE
masks 75 % of each modality's patches) and VATT's DropToken (half the tokens dropped, one
random choice for the whole batch), with the indices that put the kept tokens back in
place for a decoder."""
from __future__ import annotations

from typing import NamedTuple

import torch

#: "Contrastive Audio-Visual Masked Autoencoder" (Gong et al., ICLR 2023): 75 % of the patches of
#: each modality masked (official code: masking_ratio=0.75 in its pretraining scripts).
CAV_MAE_MASK_RATIO = 0.75
#: "VATT: Transformers for Multimodal Self-Supervised Learning" (Akbari et al., NeurIPS 2021),
#: DropToken; official configs: patch_sampling_rate=0.5.
DROP_TOKEN_RATE = 0.5


class MaskedTokens(NamedTuple):
    """What masking kept, and how to put it back."""

    kept: torch.Tensor  # B×K×D, in the order of ids_keep
    ids_keep: torch.Tensor  # B×K token indices (long) of the kept tokens
    ids_restore: torch.Tensor  # B×N: position of token n in cat([kept, removed]); see restore_tokens
    mask: torch.Tensor  # B×N float, 1 where the token was removed, 0 where kept (the loss weights)


def num_kept(num_tokens: int, ratio: float) -> int:
    """Tokens left when a share ``ratio`` is removed: ⌊N·(1 − ratio)⌋, as MAE and CAV-MAE."""
    if not 0.0 <= ratio < 1.0:
        raise ValueError(f"the masking ratio must lie in [0, 1), got {ratio}")
    return int(num_tokens * (1 - ratio))


def gather_tokens(tokens: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Row ``ids[b, i]`` of sample b's B×N×D tokens for each (b, i): B×len×D."""
    return torch.gather(tokens, 1, ids.unsqueeze(-1).expand(-1, -1, tokens.shape[-1]))


def mask_from_noise(tokens: torch.Tensor, noise: torch.Tensor, ratio: float) -> MaskedTokens:
    """Keep each sample's ⌊N·(1 − ratio)⌋ tokens of lowest ``noise`` (B×N, or N shared by the
    batch): the masking step with its randomness supplied, for tests and custom schemes."""
    b, n, _ = tokens.shape
    noise = noise.expand(b, n)
    ids_shuffle = torch.argsort(noise, dim=1)
    ids_restore = torch.argsort(ids_shuffle, dim=1)
    keep = num_kept(n, ratio)
    ids_keep = ids_shuffle[:, :keep]
    mask = torch.ones(b, n, device=tokens.device, dtype=tokens.dtype)
    mask[:, :keep] = 0
    return MaskedTokens(gather_tokens(tokens, ids_keep), ids_keep, ids_restore, torch.gather(mask, 1, ids_restore))


def random_masking(tokens: torch.Tensor, ratio: float = CAV_MAE_MASK_RATIO,
                   generator: torch.Generator | None = None) -> MaskedTokens:
    """MAE/CAV-MAE masking: an independent random subset of ⌊N·(1 − ratio)⌋ tokens kept per sample."""
    noise = torch.rand(tokens.shape[:2], device=tokens.device, generator=generator)
    return mask_from_noise(tokens, noise, ratio)


def drop_tokens(tokens: torch.Tensor, rate: float = DROP_TOKEN_RATE,
                generator: torch.Generator | None = None) -> MaskedTokens:
    """VATT's DropToken: ⌊N·(1 − rate)⌋ tokens kept, the same positions for every sample of
    the batch (the official code shuffles one index list and tiles it over the batch).
    Training only: VATT feeds every token at evaluation."""
    noise = torch.rand(tokens.shape[1], device=tokens.device, generator=generator)
    return mask_from_noise(tokens, noise, rate)


def restore_tokens(kept: torch.Tensor, ids_restore: torch.Tensor, fill: torch.Tensor) -> torch.Tensor:
    """B×K×D' tokens (the encoder's output for the kept ones, in ``ids_keep`` order) → B×N×D'
    in the original token order, the removed places holding ``fill`` (a decoder's mask token,
    broadcast from 1×1×D' or given per place as B×(N−K)×D')."""
    b, k, d = kept.shape
    removed = fill.expand(b, ids_restore.shape[1] - k, d).to(kept.dtype)
    return gather_tokens(torch.cat([kept, removed], dim=1), ids_restore)
