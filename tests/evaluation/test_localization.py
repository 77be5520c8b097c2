"""Sound-source localization: heatmaps from a method's pair score, cIoU against boxes,
the verb end to end (random init and a trained checkpoint), event localization."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from avssl.cli import main
from avssl.evaluation.localization import _gt_maps, heatmaps, localization_scores
from tests.conftest import make_synth_shards

RECIPES = Path(__file__).resolve().parents[2] / "recipes"


class _PixelEncoder(nn.Module):
    """Feature map = the frames themselves (B×3×T×H×W); embedding = channel means."""

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def pool(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(2, 3, 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(x)


class _RedScoreTask(nn.Module):
    """A fake method whose cross-modal score of a location is its red value."""

    def __init__(self) -> None:
        super().__init__()
        self.video_encoder = _PixelEncoder()
        self.audio_encoder = nn.Flatten()

    def pair_scores(self, video: torch.Tensor, audio: torch.Tensor) -> torch.Tensor:
        assert video.shape[0] == audio.shape[0]
        return video[:, 0]


def test_heatmap_is_the_pair_score_at_every_location() -> None:
    video = torch.zeros(2, 3, 3, 8, 8)
    video[0, 0, :, 2:4, 5:7] = 1.0  # a red patch in clip 0, every frame
    video[1, 0, 1, 0, 0] = 3.0  # one red pixel in one of three frames of clip 1: time-averaged
    maps = heatmaps(_RedScoreTask(), video, torch.zeros(2, 1, 4, 4), kind="per_location")
    assert maps.shape == (2, 8, 8)
    torch.testing.assert_close(maps[0], video[0, 0, 0])
    assert maps[1, 0, 0] == pytest.approx(1.0) and maps[1].sum() == pytest.approx(1.0)


class _DotTask(_RedScoreTask):
    """Score = ⟨pooled video, audio⟩: a location contributes ⟨A(x, y), audio⟩ / (T·h·w)."""

    def pair_scores(self, video: torch.Tensor, audio: torch.Tensor) -> torch.Tensor:
        return (video * audio).sum(-1)


def test_contribution_map_follows_the_sound_and_contrast_cancels_what_every_sound_likes() -> None:
    video = torch.zeros(2, 3, 1, 8, 8)
    video[0, 0, :, 1:3, 1:3] = 1.0  # clip 0: a red patch …
    video[1, 1, :, 5:7, 5:7] = 1.0  # clip 1: a green patch …
    video[:, :, :, 5:7, 0:2] = 0.6  # … and in both, a grey patch every sound scores
    audio = torch.tensor([[1.0, 0.0, 0.2], [0.0, 1.0, 0.2]])  # clip 0 sounds "red", clip 1 "green"
    task = _DotTask()
    task.audio_encoder = nn.Identity()
    plain = heatmaps(task, video, audio, contrast_audios=0)
    # own audio only: ⟨A(x, y), a⟩ / 64 at every pixel (nearest-equivalent: upsampling 8 → 8 is the identity)
    torch.testing.assert_close(plain[0], (video[0, :, 0] * audio[0, :, None, None]).sum(0) / 64)
    contrasted = heatmaps(task, video, audio, contrast_audios=1)
    for clip, (y, x) in ((0, (1, 1)), (1, (5, 5))):
        assert contrasted[clip, y, x] > 0 and contrasted[clip].argmax() == y * 8 + x
        assert contrasted[clip, 5, 0] == pytest.approx(0.0, abs=1e-6), "the grey patch cancels"


def test_gt_maps_union_of_valid_boxes_and_none_without_any() -> None:
    nan = float("nan")
    boxes = torch.tensor([[[0, 0, 2, 2], [1, 1, 3, 3], [nan] * 4, [nan] * 4],
                          [[nan] * 4] * 4])
    maps = _gt_maps(boxes, 4, 4)
    assert maps[0].sum() == 7 and maps[1] is None


def test_dataset_scores_by_hand() -> None:
    scores = localization_scores([1.0, 0.6, 0.2, 0.0], [0.1, 0.1, 0.2, 0.1])
    assert scores["ciou"] == 0.5 and scores["mean_ciou"] == pytest.approx(0.45)
    assert scores["whole_image_ciou"] == 0.0 and scores["num_clips"] == 4


@pytest.fixture(scope="module")
def tiny_shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_synth_shards(tmp_path_factory.mktemp("loc"))


SMALL = ["data.num_workers=0", "data.batch_size=6", "data.video.size=32",
         "model.video_encoder.widths=[8,8,16]", "model.audio_encoder.widths=[8,8,16]"]


@pytest.mark.slow
def test_localize_random_and_trained_checkpoint(tiny_shards: Path, tmp_path: Path) -> None:
    common = [f"data.shards={tiny_shards}", *SMALL, f"localization.cache_dir={tmp_path / 'cache'}",
              "localization.event_clips_per_video=2"]
    recipe = str(RECIPES / "eval" / "synth_localization.yaml")
    assert main(["localize", recipe, *common, f"run_dir={tmp_path / 'random'}"]) == 0
    metrics = json.loads((tmp_path / "random" / "metrics.json").read_text())
    counts = {k: v["num_samples"] for k, v in json.loads((tiny_shards / "manifest.json").read_text())["splits"].items()}
    assert metrics["num_clips"] + metrics["clips_without_box"] == counts["test"]
    assert set(metrics["by_rule"]) == {"gt_area", "median"}
    # whole-image baseline: the boxes cover well under half of a frame
    assert 0 < metrics["whole_image_mean_ciou"] < 0.5 and metrics["whole_image_ciou"] == 0.0
    assert (tmp_path / "random" / "localization.png").stat().st_size > 1000
    events = metrics["events"]
    assert events["segments"] == {k: 2 * counts[k] for k in ("train", "val", "test")}
    assert 0 <= events["segment_accuracy"] <= 100

    # a trained checkpoint: the verb rebuilds the task from the recipe the checkpoint carries
    pretrain_dir = tmp_path / "avc"
    assert main(["pretrain", str(RECIPES / "synth" / "avc_small.yaml"), f"data.shards={tiny_shards}", *SMALL,
                 f"run_dir={pretrain_dir}", "trainer.max_epochs=1", "logger.wandb=false",
                 "trainer.check_val_every_n_epoch=1"]) == 0
    ckpt = pretrain_dir / "checkpoints" / "last.ckpt"
    assert main(["localize", recipe, *common, f"run_dir={tmp_path / 'avc_loc'}", f"localization.checkpoint={ckpt}",
                 "localization.events=false"]) == 0
    trained = json.loads((tmp_path / "avc_loc" / "metrics.json").read_text())
    assert trained["num_clips"] == metrics["num_clips"] and "events" not in trained
    assert trained["mean_ciou"] != metrics["mean_ciou"]


def test_export_folder_is_refused_with_a_reason(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "manifest.json").write_text('{"splits": {}}')  # past the CLI's check of data.shards
    assert main(["localize", str(RECIPES / "eval" / "synth_localization.yaml"), f"run_dir={tmp_path}",
                 f"data.shards={tmp_path}", f"localization.checkpoint={tmp_path}"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("avssl localize: ") and err.count("\n") == 1 and "cross-modal head" in err


def test_unknown_localization_key_is_an_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["localize", str(RECIPES / "eval" / "synth_localization.yaml"), f"run_dir={tmp_path}",
                 "localization.thresh=0.5"]) == 2
    assert "localization.thresh" in capsys.readouterr().err
