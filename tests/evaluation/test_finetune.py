"""Fine-tuning: the encoder trains at a lower rate than the head; clip- and video-level
accuracy by hand; the verb end to end."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from avssl.cli import main
from avssl.evaluation.finetune import FinetuneConfig, FineTuner, accuracy_report
from tests.conftest import make_synth_shards

RECIPES = Path(__file__).resolve().parents[2] / "recipes"


class _Encoder(nn.Module):
    embedding_dim = 4

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(3, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x.mean(dim=(2, 3, 4)))


def test_encoder_rate_is_the_head_rate_times_the_scale() -> None:
    model = FineTuner(_Encoder(), 5, FinetuneConfig(lr=0.01, encoder_lr_scale=0.1, milestones=[]))
    model.trainer = type("T", (), {"estimated_stepping_batches": 10})()  # what configure_optimizers reads
    groups = model.configure_optimizers()["optimizer"].param_groups
    assert [g["lr"] for g in groups] == pytest.approx([0.001, 0.01])
    assert sum(p.numel() for p in groups[0]["params"]) == 3 * 4 + 4  # the encoder's
    assert sum(p.numel() for p in groups[1]["params"]) == 4 * 5 + 5  # the head's


def test_unlabelled_batch_is_refused() -> None:
    model = FineTuner(_Encoder(), 3, FinetuneConfig())
    batch = {"video": torch.zeros(2, 3, 1, 4, 4), "label": torch.tensor([-1, -1]), "index": torch.tensor([0, 1])}
    with pytest.raises(ValueError, match="labelled shards"):
        model.training_step(batch, 0)


def test_accuracy_report_by_hand() -> None:
    # video 0: clips say class 1 (0.6) and class 0 (0.9) → average favours 0 (label 0)
    # video 1: both clips say class 2 (label 2); video 2: wrong at clip and video level (label 1)
    rows = torch.tensor([[0.4, 0.6, 0.0, 0, 0], [0.9, 0.1, 0.0, 0, 0],
                         [0.1, 0.1, 0.8, 2, 1], [0.0, 0.3, 0.7, 2, 1],
                         [0.7, 0.2, 0.1, 1, 2]])
    report = accuracy_report([rows[:2], rows[2:]])
    assert report["clip_top1"] == pytest.approx(300 / 5)  # clips 2, 3, 4 right
    assert report["video_top1"] == pytest.approx(200 / 3)
    assert report["video_top5"] == 100.0 and report["num_videos"] == 3


@pytest.fixture(scope="module")
def tiny_shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_synth_shards(tmp_path_factory.mktemp("ft"))


@pytest.mark.slow
def test_finetune_verb_writes_clip_and_video_accuracy(tiny_shards: Path, tmp_path: Path) -> None:
    assert main(["finetune", str(RECIPES / "eval" / "synth_finetune.yaml"), f"data.shards={tiny_shards}",
                 "data.num_workers=0", "data.batch_size=4", "data.video.size=32", "model.video_encoder.widths=[8,16]",
                 "finetune.epochs=2", f"run_dir={tmp_path}", "finetune.eval_clips_per_video=2"]) == 0
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    counts = {k: v["num_samples"] for k, v in json.loads((tiny_shards / "manifest.json").read_text())["splits"].items()}
    assert metrics["test"]["num_videos"] == counts["test"] and metrics["test"]["num_clips"] == 2 * counts["test"]
    assert 0 <= metrics["test"]["video_top1"] <= 100 and metrics["encoder_lr"] == pytest.approx(3e-3 * 0.3)
    assert "val/video_top1" in metrics["val"]
