"""Random masking and DropToken: kept sets, masks and restore indices by hand; unmasking
restores the input, token by token and pixel by pixel."""
from __future__ import annotations

import pytest
import torch

from avssl.losses.masking import (
    CAV_MAE_MASK_RATIO,
    DROP_TOKEN_RATE,
    drop_tokens,
    gather_tokens,
    mask_from_noise,
    num_kept,
    random_masking,
    restore_tokens,
)
from avssl.models.transformer import patchify, unpatchify


def _tokens(b: int = 2, n: int = 4, d: int = 3) -> torch.Tensor:
    return torch.arange(float(b * n * d)).reshape(b, n, d)


def test_constants_are_the_papers():
    assert CAV_MAE_MASK_RATIO == 0.75 and DROP_TOKEN_RATE == 0.5


def test_num_kept_rounds_down_as_mae():
    assert num_kept(196, 0.75) == 49
    assert num_kept(10, 0.75) == 2  # ⌊2.5⌋
    assert num_kept(5, 0.0) == 5
    with pytest.raises(ValueError, match=r"masking ratio must lie in \[0, 1\), got 1.0"):
        num_kept(4, 1.0)


def test_mask_from_noise_by_hand():
    tokens = _tokens()
    noise = torch.tensor([[0.3, 0.1, 0.4, 0.2], [0.9, 0.8, 0.7, 0.6]])
    out = mask_from_noise(tokens, noise, 0.5)
    assert out.ids_keep.tolist() == [[1, 3], [3, 2]]  # lowest noise first
    assert out.mask.tolist() == [[1, 0, 1, 0], [1, 1, 0, 0]]
    # sample 0 shuffled order [1, 3, 0, 2] → token n sits at place [2, 0, 3, 1]
    assert out.ids_restore.tolist() == [[2, 0, 3, 1], [3, 2, 1, 0]]
    assert out.kept.tolist() == [[tokens[0, 1].tolist(), tokens[0, 3].tolist()],
                                 [tokens[1, 3].tolist(), tokens[1, 2].tolist()]]


def test_restore_puts_kept_tokens_back_and_fills_the_rest():
    tokens = _tokens()
    out = mask_from_noise(tokens, torch.tensor([[0.3, 0.1, 0.4, 0.2], [0.9, 0.8, 0.7, 0.6]]), 0.5)
    fill = torch.full((1, 1, 3), -1.0)
    restored = restore_tokens(out.kept, out.ids_restore, fill)
    expected = torch.where(out.mask.bool()[..., None], fill, tokens)
    assert torch.equal(restored, expected)
    # the removed tokens as the fill: the input comes back exactly
    removed_ids = torch.argsort(out.ids_restore, dim=1)[:, 2:]
    assert torch.equal(restore_tokens(out.kept, out.ids_restore, gather_tokens(tokens, removed_ids)), tokens)


def test_random_masking_is_per_sample():
    tokens = torch.randn(8, 16, 4)
    out = random_masking(tokens, 0.75, generator=torch.Generator().manual_seed(0))
    assert out.kept.shape == (8, 4, 4) and out.mask.shape == (8, 16)
    assert out.mask.sum(dim=1).tolist() == [12.0] * 8
    assert torch.equal(out.kept, gather_tokens(tokens, out.ids_keep))
    assert torch.equal(out.mask.gather(1, out.ids_keep), torch.zeros(8, 4))
    assert len({tuple(sorted(row.tolist())) for row in out.ids_keep}) > 1
    again = random_masking(tokens, 0.75, generator=torch.Generator().manual_seed(0))
    assert torch.equal(again.ids_keep, out.ids_keep)


def test_drop_token_keeps_the_same_places_in_every_sample():
    tokens = torch.randn(4, 10, 2)
    out = drop_tokens(tokens, generator=torch.Generator().manual_seed(1))
    assert out.kept.shape == (4, 5, 2)
    assert all(torch.equal(row, out.ids_keep[0]) for row in out.ids_keep)
    assert torch.equal(out.mask, out.mask[:1].expand(4, -1)) and out.mask[0].sum() == 5


def test_unmasking_restores_the_input_pixels():
    """Video → patches → mask → (encoder stand-in: identity) → restore with the removed
    patches → unpatchify: the input, bit for bit."""
    x = torch.randn(2, 3, 4, 16, 16)
    patch = (2, 8, 8)
    patches = patchify(x, patch)
    out = random_masking(patches, 0.75, generator=torch.Generator().manual_seed(2))
    removed = gather_tokens(patches, torch.argsort(out.ids_restore, dim=1)[:, out.kept.shape[1]:])
    restored = unpatchify(restore_tokens(out.kept, out.ids_restore, removed), (2, 2, 2), patch)
    assert torch.equal(restored, x)
    masked_pixels = unpatchify(restore_tokens(out.kept, out.ids_restore, torch.zeros(1, 1, patches.shape[-1])),
                               (2, 2, 2), patch)
    pixel_mask = unpatchify(out.mask[..., None].expand_as(patches), (2, 2, 2), patch).bool()
    assert torch.equal(masked_pixels, x.masked_fill(pixel_mask, 0.0))
