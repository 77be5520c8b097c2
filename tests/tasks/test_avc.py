"""AVC: the fusion heads, the embedding norm, choices checked where the recipe is read."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from avssl.errors import RecipeError
from avssl.tasks.pretext.avc import PairwiseFusion

RECIPES = Path(__file__).resolve().parents[2] / "recipes"


def test_all_pairs_matches_concatenated_mlp() -> None:
    torch.manual_seed(0)
    fusion = PairwiseFusion(5, 4, 7)
    video, audio = torch.randn(3, 5), torch.randn(3, 4)
    grid = fusion.all_pairs(video, audio)
    weight = torch.cat([fusion.video_proj.weight, fusion.audio_proj.weight], dim=1)
    for i in range(3):
        for j in range(3):
            hidden = torch.relu(weight @ torch.cat([video[i], audio[j]]) + fusion.video_proj.bias)
            assert grid[i, j].item() == pytest.approx((fusion.out.weight @ hidden + fusion.out.bias).item(), abs=1e-5)
    torch.testing.assert_close(fusion(video, audio), grid.diagonal())


def _avc(**task: object) -> torch.nn.Module:
    from omegaconf import OmegaConf

    from avssl.config import load_recipe
    from avssl.tasks.pretext.avc import AVC

    overrides = [f"task.{key}={value}" for key, value in task.items()]
    config = load_recipe(RECIPES / "synth" / "avc_small.yaml", overrides)
    return AVC(OmegaConf.to_container(config, resolve=True))


def test_embedding_batchnorm_makes_the_loss_blind_to_embedding_offset_and_scale() -> None:
    torch.manual_seed(0)
    model = _avc(embedding_norm="batchnorm").train()
    d = model.video_encoder.embedding_dim
    video, audio, index = torch.rand(8, d), torch.rand(8, d), torch.arange(8)
    loss, _ = model.correspondence(video, audio, index, "in_batch")
    shifted, _ = model.correspondence(3 * video + 5, 0.5 * audio - 2, index, "in_batch")
    assert shifted.item() == pytest.approx(loss.item(), rel=1e-4)
    plain = _avc(embedding_norm="none").train()
    plain.load_state_dict(model.state_dict(), strict=False)
    base, _ = plain.correspondence(video, audio, index, "in_batch")
    moved, _ = plain.correspondence(3 * video + 5, 0.5 * audio - 2, index, "in_batch")
    assert moved.item() != pytest.approx(base.item(), rel=1e-2)


def test_unknown_embedding_norm_is_an_error() -> None:
    with pytest.raises(RecipeError) as caught:
        _avc(embedding_norm="layernorm")
    assert str(caught.value) == "task.embedding_norm must be one of 'batchnorm', 'none', got 'layernorm'"


def test_a_checkpoint_whose_recipe_has_a_retired_key_still_loads_and_exports(tmp_path: Path) -> None:
    """``data.eval_clips_per_video`` was removed from the schema (never used): a recipe naming
    it is refused, but checkpoints written before carry it in their saved recipe."""
    from avssl.export import export_checkpoint, load_pretrained
    from avssl.tasks.pretext import load_pretext_task

    trained = _avc()
    old_recipe = dict(trained.hparams["config"])
    old_recipe["data"] = {**old_recipe["data"], "eval_clips_per_video": 3}
    path = tmp_path / "old.ckpt"
    torch.save({"state_dict": trained.state_dict(), "hyper_parameters": {"config": old_recipe}, "global_step": 0},
               path)
    loaded = load_pretext_task(path)
    torch.testing.assert_close(loaded.state_dict(), trained.state_dict())
    exported = load_pretrained(export_checkpoint(path, tmp_path / "export"))
    assert "eval_clips_per_video" not in exported.spec["recipe"]["data"]
