"""VATT: the in-batch NCE by hand, DropToken in training only, the heads, the encoders it needs."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from avssl.config import load_recipe
from avssl.data.views import AUDIO, INDEX, VIDEO
from avssl.tasks.pretext import build_pretext_task
from avssl.tasks.pretext.vatt import VATT

RECIPES = Path(__file__).resolve().parents[2] / "recipes"


def _vatt(*overrides: str) -> VATT:
    config = load_recipe(RECIPES / "synth" / "vatt_small.yaml", list(overrides))
    return VATT(OmegaConf.to_container(config, resolve=True))


def _batch(size: int = 4) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {VIDEO: torch.randn(size, 3, 1, 64, 64, generator=g), AUDIO: torch.randn(size, 1, 64, 101, generator=g),
            INDEX: torch.arange(size)}


def test_nce_by_hand() -> None:
    """Two clips whose projections are orthonormal and aligned: logits 1/τ on the diagonal, 0
    off it, so each direction's loss is log(1 + e^(−1/τ)); the rows are L2-normalised first."""
    task = _vatt("task.temperature=0.5")
    eye = torch.eye(2)
    assert task.nce(3 * eye, eye).item() == pytest.approx(math.log(1 + math.exp(-2)), abs=1e-6)
    swapped = eye.flip(0)  # each video now sits on the other clip's audio
    assert task.nce(eye, swapped).item() == pytest.approx(math.log(1 + math.exp(2)), abs=1e-6)


def test_drop_token_keeps_half_the_tokens_in_training_and_all_in_evaluation() -> None:
    task = _vatt("task.drop_token_rate=0.5")  # the paper's rate (the CPU recipe's is 0.25)
    seen: list[int] = []
    handle = task.video_encoder.blocks[0].register_forward_hook(lambda m, i, o: seen.append(i[0].shape[1]))
    task.log = lambda *a, **k: None
    task.training_step(_batch(), 0)
    task.eval()
    with torch.no_grad():
        task.validation_step(_batch(), 0)
    handle.remove()
    assert seen == [32, 64], "64 patches of 64×64 frames: 32 kept in training (rate 0.5), all 64 in validation"
    assert task.task_config.drop_token_rate == 0.5
    assert _vatt().task_config.drop_token_rate == 0.25


def test_drop_token_rate_zero_is_the_plain_forward() -> None:
    task = _vatt("task.drop_token_rate=0").eval()
    batch = _batch()
    with torch.no_grad():
        dropped = task.pooled_dropped(task.video_encoder, batch[VIDEO], torch.Generator())
        torch.testing.assert_close(dropped, task.video_encoder(batch[VIDEO]))


def test_heads_map_into_the_common_space_and_score_pairs() -> None:
    task = _vatt("task.projection_norm=none", "task.projection_hidden=0", "task.embedding_dim=512")
    assert isinstance(task.video_head, torch.nn.Linear) and task.video_head.out_features == 512, "the paper's"
    v, a = torch.randn(3, 64), torch.randn(3, 64)
    expected = torch.nn.functional.cosine_similarity(task.video_head(v), task.audio_head(a), dim=-1)
    torch.testing.assert_close(task.pair_scores(v, a), expected)


def test_needs_transformer_encoders() -> None:
    config = load_recipe(RECIPES / "synth" / "vatt_small.yaml", ["model.video_encoder={name: small3d}"])
    with pytest.raises(ValueError, match="VATT needs a transformer model.video_encoder"):
        build_pretext_task(OmegaConf.to_container(config, resolve=True))
    with pytest.raises(ValueError, match="drop_token_rate"):
        _vatt("task.drop_token_rate=1.0")


def test_a_waveform_encoder_keeps_its_layout_under_channels_last() -> None:
    """``model.channels_last`` on a waveform transformer (B×1×N, 1-D patches) is a no-op, not an error."""
    task = _vatt("model.audio_encoder={name: wat_tiny}")
    wave = torch.randn(2, 1, 16000)
    before = task.audio_encoder.eval()(wave)
    assert task.audio_encoder.use_channels_last() is task.audio_encoder
    assert task.audio_encoder.memory_format == torch.contiguous_format
    torch.testing.assert_close(task.audio_encoder(wave), before)


@pytest.mark.parametrize("method", ["vatt", "cav_mae"])
def test_probe_recipe_random_init_is_the_methods_transformers(method: str) -> None:
    """recipes/eval/synth_probe_<method>.yaml: ``probe.encoders=random`` builds the method's
    own encoders (the tiny transformers with its pooling), the baseline its probe gain is
    measured against, not avc_small's CNNs as synth_probe.yaml would."""
    from avssl.evaluation.encoders import load_encoders
    from avssl.models.vit import VisionTransformer

    probe = load_recipe(RECIPES / "eval" / f"synth_probe_{method}.yaml")
    pretrain = load_recipe(RECIPES / "synth" / f"{method}_small.yaml")
    assert probe.probe.encoders == "random" and OmegaConf.to_container(probe.model) == OmegaConf.to_container(
        pretrain.model)
    encoders = load_encoders(probe, "random", Path("unused")).encoders
    for modality, spec in (("video", pretrain.model.video_encoder), ("audio", pretrain.model.audio_encoder)):
        assert isinstance(encoders[modality], VisionTransformer)
        assert encoders[modality].pooling == spec.get("pooling", "avg")
