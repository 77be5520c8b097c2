"""Every full-scale pretraining recipe resolves, builds its model and trains 2 steps on the
CPU with ``smoke=true`` (batch 4, frames ≤ 32 px and ≤ 4 frames; the recipe's encoders,
method constants, audio window and spectrogram as written)."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from avssl.cli import main
from avssl.config import load_recipe

from tests.conftest import make_synth_shards

RECIPES = Path(__file__).resolve().parent.parent / "recipes"
FULL_SCALE = sorted((RECIPES / "pretrain").glob("*/*.yaml"))


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_synth_shards(tmp_path_factory.mktemp("smoke"), num_videos=24, size=48, split=(0.7, 0.15, 0.15),
                             seconds=4.0)  # AVTS: a hard negative needs room beside the window


def test_there_is_a_recipe_per_method() -> None:
    assert {p.parent.name for p in FULL_SCALE} >= {"avc", "avts", "avid_cma", "selavi"}


def test_smoke_shrinks_the_run_and_keeps_the_method() -> None:
    smoke, full = load_recipe(FULL_SCALE[0], ["smoke=true"]), load_recipe(FULL_SCALE[0])
    assert smoke.trainer.max_steps == 2 and smoke.trainer.accelerator == "cpu" and smoke.trainer.devices == 1
    assert smoke.data.batch_size == 4 and smoke.data.video.size <= 32 and smoke.data.video.num_frames <= 4
    assert smoke.model == full.model and smoke.data.audio == full.data.audio
    assert full.data.batch_size > 4 and full.trainer.get("max_steps", -1) == -1, "without smoke=true: as written"


@pytest.mark.slow
@pytest.mark.parametrize("recipe", FULL_SCALE, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_full_scale_recipe_smoke_run(recipe: Path, shards: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    assert main(["pretrain", str(recipe), "smoke=true", f"data.shards={shards}", f"run_dir={run_dir}",
                 "trainer.enable_progress_bar=false"]) == 0
    checkpoint = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)
    assert checkpoint["global_step"] == 2
    saved = load_recipe(run_dir / "config.yaml")
    full = load_recipe(recipe)
    assert saved.model == full.model and saved.task.name == full.task.name
