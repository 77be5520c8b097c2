"""LVS task: the loss of a batch by hand (clips of one video never each other's negative),
the thresholds checked where the recipe is read, ``avssl localize`` drawing the cosine map,
and the real-data localization recipes evaluating an LVS checkpoint."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from avssl.cli import main
from avssl.config import load_recipe
from avssl.errors import RecipeError
from avssl.evaluation.localization import heatmaps
from avssl.losses.lvs import lvs_logits, lvs_loss
from avssl.tasks.pretext.lvs import LVS
from tests.conftest import make_synth_shards

RECIPES = Path(__file__).resolve().parents[2] / "recipes"


def _task(*overrides: str) -> LVS:
    config = load_recipe(RECIPES / "synth" / "lvs_small.yaml", list(overrides))
    return LVS(OmegaConf.to_container(config, resolve=True))


def _sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def test_loss_by_hand_leaves_out_clips_of_the_same_video() -> None:
    # three clips of 1×2 locations; clips 1 and 2 come from the same video (index 5)
    video = torch.tensor([[[[1.0, 0.0]], [[0.0, 1.0]]]]).repeat(3, 1, 1, 1)  # B×C×h×w = 3×2×1×2
    audio = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 2.0]])
    index = torch.tensor([0, 5, 5])
    out = _task().lvs(video, audio, index)
    # every image: location 0 is [1, 0], location 1 is [0, 1]; S(image, audio 0) = [1, 0], audio 1 or 2 = [0, 1]
    pos = lambda s: [_sigmoid((x - 0.65) / 0.03) for x in s]  # noqa: E731
    neg = lambda s: [1 - _sigmoid((x - 0.4) / 0.03) for x in s]  # noqa: E731
    mean = lambda s, w: sum(a * b for a, b in zip(s, w)) / sum(w)  # noqa: E731
    maps = {0: [1.0, 0.0], 1: [0.0, 1.0], 2: [0.0, 1.0]}
    by_hand = 0.0
    for i in range(3):
        own = maps[i]
        logits = [mean(own, pos(own))]
        logits += [mean(maps[j], pos(maps[j])) for j in range(3) if j != i and index[j] != index[i]]
        logits.append(mean(own, neg(own)))
        logits = [x / 0.07 for x in logits]
        by_hand += math.log(sum(math.exp(x) for x in logits)) - logits[0]
    assert out.logits.shape == (3, 4) and torch.isinf(out.logits[1, 2]) and torch.isinf(out.logits[2, 2])
    assert lvs_loss(out.logits).item() == pytest.approx(by_hand / 3, rel=1e-5)
    # without duplicates the same call is the plain loss unit
    plain = lvs_logits(video, audio)
    torch.testing.assert_close(_task().lvs(video, audio, torch.tensor([0, 1, 2])).logits, plain.logits)


def test_thresholds_are_checked_where_the_recipe_is_read() -> None:
    with pytest.raises(RecipeError, match=r"task.epsilon_negative \(0.7\) must not exceed task.epsilon_positive"):
        _task("task.epsilon_negative=0.7")
    with pytest.raises(RecipeError, match=r"^task.positive_share and negative_share go together"):
        _task("task.positive_share=0.2")
    with pytest.raises(RecipeError, match=r"^task.positive_share must be in \(0, 1\), got 0.0"):
        _task("task.positive_share=0.0", "task.negative_share=0.5")
    task = _task("task.positive_share=0.2", "task.negative_share=0.6")
    video, audio = torch.randn(4, 3, 2, 2), torch.randn(4, 3)
    torch.testing.assert_close(task.lvs(video, audio, torch.arange(4)).logits,
                               lvs_logits(video, audio, positive_share=0.2, negative_share=0.6).logits)


@pytest.mark.parametrize("norm", ["none", "batchnorm"])
def test_pair_scores_and_the_localization_map_are_the_cosine(norm: str) -> None:
    """The map ``avssl localize`` draws is the loss's heat map S_ii (after the BatchNorms in
    eval mode with ``embedding_norm: batchnorm``), upsampled to the frame."""
    torch.manual_seed(0)
    task = _task(f"task.embedding_norm={norm}").eval()
    if norm == "batchnorm":  # running statistics away from the identity, so that the norm matters
        for bn in (task.video_norm, task.audio_norm):
            bn.running_mean.uniform_(0.5, 1.5)
            bn.running_var.uniform_(0.5, 2.0)
    video, audio = torch.randn(2, 3, 1, 64, 64), torch.randn(2, 1, 40, 100)
    assert task.localization_map == "per_location"
    with torch.no_grad():
        video_map, _, raw_audio, audio_embedding = task.embed({"video": video, "audio": audio})
        cosine = lvs_logits(video_map, audio_embedding).heatmap
        plain = lvs_logits(task.video_encoder.feature_map(video).mean(dim=2), raw_audio).heatmap
    assert torch.allclose(cosine, plain) == (norm == "none")
    expected = torch.nn.functional.interpolate(cosine[:, None], size=(64, 64), mode="bilinear",
                                               align_corners=False)[:, 0]
    torch.testing.assert_close(heatmaps(task, video, audio, kind="auto"), expected, atol=1e-5, rtol=1e-5)


def test_batchnorm_standardises_every_location_in_training() -> None:
    """``embedding_norm: batchnorm``: in training, each channel of the video map has zero mean
    and unit variance over the batch and its locations, and each audio channel over the batch."""
    torch.manual_seed(0)
    task = _task("task.embedding_norm=batchnorm", "model.video_encoder.spatial_strides=[2,2,2,1]").train()
    with torch.no_grad():
        batch = {"video": torch.randn(4, 3, 1, 64, 64), "audio": torch.randn(4, 1, 40, 100)}
        video_map, _, _, audio = task.embed(batch)
    assert video_map.shape[-2:] == (8, 8)
    torch.testing.assert_close(video_map.mean(dim=(0, 2, 3)), torch.zeros(video_map.shape[1]), atol=1e-4, rtol=0)
    torch.testing.assert_close(video_map.var(dim=(0, 2, 3), unbiased=False), torch.ones(video_map.shape[1]),
                               atol=1e-2, rtol=0)
    torch.testing.assert_close(audio.mean(dim=0), torch.zeros(audio.shape[1]), atol=1e-4, rtol=0)


@pytest.mark.slow
@pytest.mark.parametrize("recipe", ["vggss_localization.yaml", "flickr-soundnet_localization.yaml"])
def test_real_data_localization_recipes_evaluate_an_lvs_checkpoint(recipe: str, tmp_path: Path) -> None:
    shards = make_synth_shards(tmp_path / "data", size=32)
    small = ["data.num_workers=0", "data.batch_size=6", "data.video.size=32",
             "model.video_encoder.widths=[8,8,16]", "model.video_encoder.spatial_strides=[2,2,1]",
             "model.audio_encoder.widths=[8,8,16]"]
    assert main(["pretrain", str(RECIPES / "synth" / "lvs_small.yaml"), f"data.shards={shards}", *small,
                 f"run_dir={tmp_path / 'lvs'}", "trainer.max_epochs=1", "logger.wandb=false"]) == 0
    checkpoint = tmp_path / "lvs" / "checkpoints" / "last.ckpt"
    assert main(["localize", str(RECIPES / "eval" / recipe), f"data.shards={shards}", "data.num_workers=0",
                 "data.video.size=32", "data.batch_size=6", "localization.device=cpu",
                 f"localization.checkpoint={checkpoint}", f"run_dir={tmp_path / 'loc'}"]) == 0
    metrics = json.loads((tmp_path / "loc" / "metrics.json").read_text())
    assert metrics["rule"] == "median" and metrics["num_clips"] > 0 and 0.0 <= metrics["mean_ciou"] <= 1.0


@pytest.mark.parametrize("pool", ["max", "mean"])
def test_warmup_info_nce_on_the_pooled_map_by_hand(pool: str) -> None:
    # three images of 1×2 unit-norm locations; clips 1 and 2 come from the same video (index 5)
    locations = [[[1.0, 0.0], [0.0, 1.0]], [[0.6, 0.8], [1.0, 0.0]], [[0.0, 1.0], [0.8, 0.6]]]
    video = torch.tensor(locations).permute(0, 2, 1)[:, :, None, :]  # B×C×h×w = 3×2×1×2
    audio = torch.tensor([[1.0, 0.0], [0.0, 2.0], [0.6, 0.8]])
    unit = [[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]]
    index = torch.tensor([0, 5, 5])
    task = _task("task.contrastive_warmup_epochs=2", f"task.contrastive_pool={pool}",
                 "task.contrastive_temperature=0.5")
    cos = [[[sum(a * b for a, b in zip(loc, unit[j])) for loc in locations[i]] for j in range(3)] for i in range(3)]
    s = [[(max(c) if pool == "max" else sum(c) / 2) / 0.5 for c in row] for row in cos]
    lse = lambda xs: math.log(sum(math.exp(x) for x in xs))  # noqa: E731
    keep = lambda i, j: i == j or index[i] != index[j]  # noqa: E731
    video_to_audio = sum(lse([s[i][j] for j in range(3) if keep(i, j)]) - s[i][i] for i in range(3)) / 3
    audio_to_video = sum(lse([s[i][j] for i in range(3) if keep(i, j)]) - s[j][j] for j in range(3)) / 3
    loss = task.pooled_info_nce(video, audio, index)
    assert loss.item() == pytest.approx((video_to_audio + audio_to_video) / 2, rel=1e-5)


def test_contrastive_weight_needs_the_warmup() -> None:
    with pytest.raises(RecipeError, match="contrastive_weight > 0 needs task.contrastive_warmup_epochs"):
        _task("task.contrastive_warmup_epochs=0", "task.contrastive_weight=0.5")
