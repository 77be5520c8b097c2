"""AVE-Net / AVOL-Net task: the paired correspondence loss by hand, the variant a typed
choice, and ``avssl localize`` drawing AVOL's own map."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from avssl.config import load_recipe
from avssl.errors import RecipeError
from avssl.evaluation.localization import heatmaps
from avssl.tasks.pretext.avenet import AVENet

RECIPES = Path(__file__).resolve().parents[2] / "recipes"


def _task(*overrides: str) -> AVENet:
    config = load_recipe(RECIPES / "synth" / "avenet_small.yaml", list(overrides))
    return AVENet(OmegaConf.to_container(config, resolve=True))


def _bare(task: AVENet) -> AVENet:
    """The projections as identities (the encoders' 64-d features compared directly)."""
    task.video_proj, task.audio_proj = nn.Identity(), nn.Identity()
    return task


# two clips, a 1×2 grid of 2-d features each; index 0, 1: each clip's negative is the other's audio
VIDEO_MAP = torch.tensor([[[[1.0, 0.0], [0.0, 1.0]]], [[[0.6, 0.8], [-1.0, 0.0]]]])  # B×h×w×C
AUDIO = torch.tensor([[2.0, 0.0], [0.0, 5.0]])
INDEX = torch.tensor([0, 1])


def test_avol_loss_by_hand() -> None:
    task = _bare(_task("task.variant=avol", "task.calibration_scale=2.0", "task.calibration_bias=-1.0"))
    loss, accuracy = task.correspondence(VIDEO_MAP, AUDIO, INDEX)
    # cosines: clip 0 with audio 0 → [1, 0], with audio 1 → [0, 1]; clip 1 with audio 1 → [0.8, 0],
    # with audio 0 → [0.6, −1]; max-pooled, calibrated 2s − 1
    positives, negatives = [2 * 1.0 - 1, 2 * 0.8 - 1], [2 * 1.0 - 1, 2 * 0.6 - 1]
    by_hand = (sum(math.log(1 + math.exp(-x)) for x in positives)
               + sum(math.log(1 + math.exp(x)) for x in negatives)) / 4
    assert loss.item() == pytest.approx(by_hand, rel=1e-5)
    assert accuracy.item() == pytest.approx(0.5)  # positives (1, 0.6) right; negatives (1, 0.2) both wrong


def test_ave_loss_by_hand() -> None:
    task = _bare(_task("task.variant=ave"))
    with torch.no_grad():
        task.head.fc.weight.copy_(torch.tensor([[1.0], [-2.0]]))
        task.head.fc.bias.copy_(torch.tensor([0.0, 1.0]))
    loss, _ = task.correspondence(VIDEO_MAP, AUDIO, INDEX)
    # pooled then compared: clip 0 → [0.5, 0.5], clip 1 → [−0.2, 0.4]; distances of the unit vectors
    unit = [torch.tensor([1.0, 1.0]) / math.sqrt(2), torch.tensor([-0.2, 0.4]) / math.sqrt(0.2)]
    audio = [torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])]
    rows = [((unit[0] - audio[0]).norm(), 1), ((unit[1] - audio[1]).norm(), 1),
            ((unit[0] - audio[1]).norm(), 0), ((unit[1] - audio[0]).norm(), 0)]
    by_hand = 0.0
    for d, target in rows:
        logits = [float(d), 1.0 - 2.0 * float(d)]
        by_hand += math.log(sum(math.exp(x) for x in logits)) - logits[target]
    assert loss.item() == pytest.approx(by_hand / 4, rel=1e-5)
    # the score localization uses is the log-odds of "corresponds"
    score = task.pair_scores(torch.tensor([[0.5, 0.5]]), AUDIO[:1])
    d = float((unit[0] - audio[0]).norm())
    assert score.item() == pytest.approx(1.0 - 3.0 * d, rel=1e-5)


def test_the_variant_is_a_typed_choice() -> None:
    with pytest.raises(RecipeError, match="task.variant"):
        _task("task.variant=avo")
    assert _task("task.variant=ave").localization_map == "contribution"
    assert _task().localization_map == "per_location" and _task().task_config.variant == "avol"


def test_localize_draws_avols_own_heatmap() -> None:
    """``map: auto`` scores every location with the head: AVOL's calibrated map, upsampled."""
    torch.manual_seed(0)
    task = _task().eval()
    video, audio = torch.randn(3, 3, 1, 64, 64), torch.randn(3, 1, 40, 100)
    with torch.no_grad():
        video_map = task.video_encoder.feature_map(video).mean(dim=2)
        own = task.head(task.video_proj(video_map.permute(0, 2, 3, 1)).permute(0, 3, 1, 2),
                        task.audio_proj(task.audio_encoder(audio))).heatmap
    expected = torch.nn.functional.interpolate(own[:, None], size=(64, 64), mode="bilinear", align_corners=False)[:, 0]
    torch.testing.assert_close(heatmaps(task, video, audio, kind="auto"), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("variant", ["ave", "avol"])
def test_in_batch_scores_every_pair_as_the_paired_head_does(variant: str) -> None:
    torch.manual_seed(0)
    task = _task(f"task.variant={variant}", "task.negatives=in_batch")
    video_map, audio = torch.randn(3, 2, 2, 64), torch.randn(3, 64)
    grid = task.all_pair_logits(video_map, audio)
    for j in range(3):
        torch.testing.assert_close(grid[:, j], task.pair_logits(video_map, audio[j].expand(3, -1)))
    # clips 1 and 2 of one video: neither is the other's negative
    loss, _ = task.correspondence(video_map, audio, torch.tensor([0, 4, 4]), "in_batch")
    negatives = grid[[0, 1, 2, 0], [1, 0, 0, 2]]
    by_hand = 0.5 * (torch.nn.functional.softplus(-grid.diagonal()).mean()
                     + torch.nn.functional.softplus(negatives).mean())
    assert loss.item() == pytest.approx(by_hand.item(), rel=1e-5)


def test_the_optional_info_nce_adds_to_the_correspondence_loss_by_hand() -> None:
    """``task.contrastive_weight``: w × the symmetric InfoNCE of the pooled features (through their
    own projections, identities here) beside the correspondence loss; weight 0 builds no projections."""
    assert not hasattr(_task("task.contrastive_weight=0.0"), "video_contrastive")
    with pytest.raises(RecipeError, match=r"task.contrastive_weight must be a number >= 0, got -1.0"):
        _task("task.contrastive_weight=-1.0")
    task = _bare(_task("task.contrastive_weight=2.0", "task.contrastive_temperature=0.5", "task.negatives=paired"))
    task.video_contrastive, task.audio_contrastive = nn.Identity(), nn.Identity()
    pooled = torch.tensor([[3.0, 0.0], [0.6, 0.8]])
    task.embed = lambda batch: (VIDEO_MAP, pooled, AUDIO)
    out = task.training_step({"index": INDEX}, 0)
    # cosines of the unit vectors [[1, 0], [0.6, 0.8]] with the audios [[1, 0], [0, 1]], over τ 0.5
    logits = [[2.0, 0.0], [1.2, 1.6]]
    rows = (-2.0 + math.log(math.exp(2.0) + 1.0)) + (-1.6 + math.log(math.exp(1.2) + math.exp(1.6)))
    cols = (-2.0 + math.log(math.exp(2.0) + math.exp(1.2))) + (-1.6 + math.log(1.0 + math.exp(1.6)))
    info_nce = 0.5 * (rows / 2 + cols / 2)
    correspondence, _ = task.correspondence(VIDEO_MAP, AUDIO, INDEX)
    assert logits[1][1] == 1.6 and out["terms"]["info_nce"].item() == pytest.approx(info_nce, rel=1e-5)
    assert out["loss"].item() == pytest.approx(correspondence.item() + 2.0 * info_nce, rel=1e-5)
