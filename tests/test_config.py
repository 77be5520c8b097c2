"""Recipes: inheritance, overrides, unknown keys named in the error."""
from __future__ import annotations

from pathlib import Path

import pytest

from avssl.cli import main
from avssl.config import RecipeError, check_section, load_recipe
from avssl.tasks.pretext.avc import AVCConfig

RECIPES = Path(__file__).resolve().parent.parent / "recipes"


def test_recipe_inherits_and_overrides() -> None:
    config = load_recipe(RECIPES / "synth" / "avc_small.yaml", ["trainer.max_epochs=3", "data.batch_size=8"])
    assert config.trainer.max_epochs == 3
    assert config.data.batch_size == 8
    assert config.data.mel.n_mels == 64, "inherited from pretrain/_base.yaml"
    assert config.model.video_encoder.name == "small3d", "the child recipe wins over its base"
    assert check_section(config, "task", AVCConfig).negatives == "in_batch"


@pytest.mark.parametrize("override, key", [
    ("data.batch_sise=8", "data.batch_sise"),
    ("data.video.frames=4", "data.video.frames"),
    ("trainer.max_epoch=3", "trainer.max_epoch"),
    ("nonsense=1", "nonsense"),
])
def test_unknown_keys_are_named(override: str, key: str) -> None:
    with pytest.raises(RecipeError, match=key.replace(".", r"\.")):
        load_recipe(RECIPES / "synth" / "avc_small.yaml", [override])


def test_unknown_task_key_is_named() -> None:
    config = load_recipe(RECIPES / "synth" / "avc_small.yaml", ["task.negativs=paired"])
    with pytest.raises(RecipeError, match=r"task\.negativs"):
        check_section(config, "task", AVCConfig)


def test_bad_value_type_is_reported() -> None:
    with pytest.raises(RecipeError, match=r"data\.batch_size"):
        load_recipe(RECIPES / "synth" / "avc_small.yaml", ["data.batch_size=many"])


def test_base_cycle_and_missing_base(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text("base: b.yaml\n")
    (tmp_path / "b.yaml").write_text("base: a.yaml\n")
    with pytest.raises(RecipeError, match="inherits from itself"):
        load_recipe(tmp_path / "a.yaml")
    (tmp_path / "c.yaml").write_text("base: nowhere.yaml\n")
    with pytest.raises(RecipeError, match="nowhere.yaml"):
        load_recipe(tmp_path / "c.yaml")


def test_cli_reports_unknown_key_and_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["pretrain", str(RECIPES / "synth" / "avc_small.yaml"), "data.bach_size=4"])
    assert code == 2
    assert "data.bach_size" in capsys.readouterr().err


def test_cli_reports_a_refused_data_value_and_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["pretrain", str(RECIPES / "synth" / "avc_small.yaml"), "data.audio_features=gpu",
                 f"run_dir={tmp_path}"])
    assert code == 2
    assert "data.audio_features must be 'device' or 'loader', got 'gpu'" in capsys.readouterr().err


@pytest.mark.parametrize("verb", ["synth", "shards", "pretrain", "probe", "export"])
def test_every_verb_has_help(verb: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main([verb, "--help"])
    assert exit_info.value.code == 0
    assert "usage: avssl " + verb in capsys.readouterr().out
