"""CAV-MAE: the weighted sum of its terms, the one-way contrastive term by hand, the
reconstruction counting the masked patches only, the masking ratio, the decoder's shapes."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from avssl.config import load_recipe
from avssl.data.views import AUDIO, INDEX, VIDEO
from avssl.losses.cav_mae import normalised_targets
from avssl.tasks.pretext.cav_mae import CAVMAE

RECIPES = Path(__file__).resolve().parents[2] / "recipes"


def _cav_mae(*overrides: str) -> CAVMAE:
    config = load_recipe(RECIPES / "synth" / "cav_mae_small.yaml", list(overrides))
    return CAVMAE(OmegaConf.to_container(config, resolve=True))


def _batch(size: int = 4) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {VIDEO: torch.randn(size, 3, 1, 64, 64, generator=g), AUDIO: torch.randn(size, 1, 64, 101, generator=g),
            INDEX: torch.arange(size)}


def test_masked_forward_keeps_a_quarter_and_predicts_every_patch() -> None:
    task = _cav_mae()
    out = task.masked_forward(_batch(), torch.Generator().manual_seed(0))
    # video: 8×8 = 64 patches of 8·8·3 values; audio: 8×10 = 80 patches of 8·10 values
    assert out["encoded"]["video"].shape == (4, 16, 64) and out["encoded"]["audio"].shape == (4, 20, 64)
    assert out["predictions"]["video"].shape == out["patches"]["video"].shape == (4, 64, 192)
    assert out["predictions"]["audio"].shape == out["patches"]["audio"].shape == (4, 80, 80)
    assert out["masked"]["video"].mask.sum(1).tolist() == [48.0] * 4
    assert out["pooled"]["audio"].shape == (4, 64)


def test_total_is_the_papers_weighted_sum() -> None:
    task = _cav_mae()
    terms = {"reconstruction_audio": torch.tensor(0.8), "reconstruction_video": torch.tensor(0.6),
             "contrastive": torch.tensor(4.0)}
    assert task.total(terms).item() == pytest.approx(1.0 * (0.8 + 0.6) + 0.01 * 4.0)


def test_contrastive_term_by_hand() -> None:
    """One direction at τ 0.05: video 0 = (1, 0) against audio (1, 0), (1, 1)/√2 gives logits
    (20, 20/√2); video 1 = (0, 1) against the same gives (0, 20/√2), its own audio second."""
    task = _cav_mae()
    out = task.masked_forward(_batch(), torch.Generator().manual_seed(0))
    out["pooled"] = {"video": torch.tensor([[1.0, 0.0], [0.0, 1.0]]), "audio": torch.tensor([[2.0, 0.0], [1.0, 1.0]])}
    r = 20 / math.sqrt(2)
    expected = 0.5 * (math.log(1 + math.exp(r - 20)) + math.log(1 + math.exp(-r)))
    assert task.losses(out)["contrastive"].item() == pytest.approx(expected, abs=1e-5)
    task.task_config.bidirectional = True  # audio 0 against videos: (20, 0); audio 1: (r, r)
    both = 0.5 * (expected + 0.5 * (math.log(1 + math.exp(-20)) + math.log(2)))
    assert task.losses(out)["contrastive"].item() == pytest.approx(both, abs=1e-5)


def test_reconstruction_counts_the_masked_patches_only() -> None:
    """Predicting the normalised targets on the masked patches scores 0 whatever is predicted
    on the kept ones; predicting each patch's mean (0 after normalisation) scores (P − 1)/P,
    the unbiased variance of P values."""
    task = _cav_mae()
    out = task.masked_forward(_batch(), torch.Generator().manual_seed(0))
    for m, values in (("video", 192), ("audio", 80)):
        target = normalised_targets(out["patches"][m])
        mask = out["masked"][m].mask[..., None]
        out["predictions"][m] = target * mask + 100.0 * (1 - mask)
    terms = task.losses(out)
    assert terms["reconstruction_video"].item() == pytest.approx(0.0, abs=1e-6)
    for m, values in (("video", 192), ("audio", 80)):
        out["predictions"][m] = torch.zeros_like(out["patches"][m])
    terms = task.losses(out)
    assert terms["reconstruction_video"].item() == pytest.approx(191 / 192, rel=1e-4)
    assert terms["reconstruction_audio"].item() == pytest.approx(79 / 80, rel=1e-4)


def test_training_and_validation_steps_log_the_ratio() -> None:
    task = _cav_mae()
    logged: dict[str, float] = {}
    task.log = lambda name, value, **k: logged.__setitem__(name, float(value.detach()))
    out = task.training_step(_batch(), 0)
    out["loss"].backward()
    assert task.decoder.heads["video"].weight.grad is not None and task.joint[0].attn.qkv.weight.grad is not None
    task.eval()
    with torch.no_grad():
        task.validation_step(_batch(), 0)
    ratio = (logged["val/reconstruction_audio"] + logged["val/reconstruction_video"]) / (
        logged["val/patch_mean_audio"] + logged["val/patch_mean_video"])
    assert logged["val/reconstruction_ratio"] == pytest.approx(ratio, rel=1e-5)
    assert logged["val/patch_mean_video"] == pytest.approx(191 / 192, rel=1e-3)


def test_encoders_of_one_width() -> None:
    with pytest.raises(ValueError, match="joint layers need encoders of one width"):
        _cav_mae("model.audio_encoder={name: ast_small}")


@pytest.mark.parametrize("pooling", ["avg", "max"])
def test_contrastive_latent_pools_the_joint_layers_tokens(pooling: str) -> None:
    """The latent of each modality is its kept tokens through the joint layer and that
    modality's norm, averaged (the paper) or max-pooled (``task.contrastive_pooling``)."""
    task = _cav_mae(f"task.contrastive_pooling={pooling}")
    out = task.masked_forward(_batch(), torch.Generator().manual_seed(0))
    for m in ("audio", "video"):
        tokens = task.joint_norms[m](task.joint(out["encoded"][m]))
        expected = tokens.mean(dim=1) if pooling == "avg" else tokens.max(dim=1).values
        torch.testing.assert_close(out["pooled"][m], expected)


def test_contrastive_pooling_names_its_choices() -> None:
    with pytest.raises(ValueError, match=r"task.contrastive_pooling must be 'avg' or 'max', got 'mean'"):
        _cav_mae("task.contrastive_pooling=mean")
