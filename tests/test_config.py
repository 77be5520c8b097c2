"""Recipes: inheritance, overrides, unknown keys named in the error."""
from __future__ import annotations

from pathlib import Path

import pytest

from avssl.cli import main
from avssl.config import check_section, load_recipe
from avssl.errors import RecipeError
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


# -- kinds and ranges, checked where the recipe is read ------------------------------------------
@pytest.mark.parametrize("override, message", [
    ("trainer.max_epochs=two", "trainer.max_epochs: 'two' is not an integer"),
    ("trainer.max_epochs=true", "trainer.max_epochs: true is not an integer"),
    ("trainer.max_steps=0", "trainer.max_steps must be an integer >= 1, or -1 (no limit), got 0"),
    ("trainer.devices=0", ("trainer.devices must be a number of devices >= 1 (-1: all), a list of device indices, "
                           "a string like '0,1', or 'auto', got 0")),
    ("trainer.num_nodes=0", "trainer.num_nodes must be an integer >= 1, got 0"),
    ("trainer.accumulate_grad_batches=0.5", "trainer.accumulate_grad_batches: 0.5 is not an integer"),
    ("trainer.limit_val_batches=1.5", ("trainer.limit_val_batches must be a fraction in [0.0, 1.0] or a whole "
                                       "number of batches >= 0, got 1.5")),
    ("trainer.limit_train_batches=-1", ("trainer.limit_train_batches must be a fraction in [0.0, 1.0] or a whole "
                                        "number of batches >= 0, got -1")),
    ("data.video.size=1.5", "data.video.size: 1.5 is not an integer"),
    ("data.eval_batch_size=0", "data.eval_batch_size must be an integer >= 1, got 0"),
    ("logger.wandb=maybe", "logger.wandb: 'maybe' is not true or false"),
    ("monitors.knn_temperature=0", "monitors.knn_temperature must be a number > 0, got 0.0"),
    ("probe.batch_size=0", "probe.batch_size must be an integer >= 1, got 0"),
])
def test_values_name_the_key_and_what_it_accepts(override: str, message: str) -> None:
    with pytest.raises(RecipeError) as caught:
        load_recipe(RECIPES / "synth" / "avc_small.yaml", [override])
    assert str(caught.value) == message


@pytest.mark.parametrize("override", ["trainer.max_epochs=-1", "trainer.devices=auto", "trainer.devices=[0,1]",
                                      "trainer.devices=0,1", "trainer.precision=16", "trainer.precision=bf16-mixed",
                                      "trainer.limit_val_batches=3", "trainer.limit_val_batches=0.25",
                                      "data.eval_batch_size=null", "trainer.max_epochs=null"])
def test_accepted_values_pass(override: str) -> None:
    load_recipe(RECIPES / "synth" / "avc_small.yaml", [override])


def test_precision_lists_what_lightning_accepts() -> None:
    with pytest.raises(RecipeError, match=r"^trainer\.precision must be one of .*'bf16-mixed'.*, got 'bf32'$"):
        load_recipe(RECIPES / "synth" / "avc_small.yaml", ["trainer.precision=bf32"])


def test_unknown_keys_suggest_the_nearest() -> None:
    recipe = RECIPES / "synth" / "avc_small.yaml"
    with pytest.raises(RecipeError) as caught:
        load_recipe(recipe, ["trainer.max_epoch=3"])
    assert str(caught.value) == (f"{recipe}: unknown key 'trainer.max_epoch' (not a pytorch_lightning.Trainer "
                                 "argument) (did you mean 'trainer.max_epochs'?)")
    with pytest.raises(RecipeError) as caught:
        load_recipe(recipe, ["data.video.frames=4"])
    assert str(caught.value) == f"{recipe}: unknown key 'data.video.frames' (did you mean 'data.video.num_frames'?)"


def test_section_values_and_post_init_refusals_are_recipe_errors() -> None:
    from avssl.evaluation.separation import SeparationConfig

    config = load_recipe(RECIPES / "eval" / "synth_separation.yaml", ["separation.mask=fuzzy"])
    with pytest.raises(RecipeError, match=r"^separation\.mask must be one of"):
        check_section(config, "separation", SeparationConfig)
    with pytest.raises(RecipeError) as caught:
        load_recipe(RECIPES / "eval" / "synth_separation.yaml", ["separation.steps=many"])
    assert str(caught.value) == "separation.steps: 'many' is not an integer"
    config = load_recipe(RECIPES / "eval" / "synth_separation.yaml")
    config.separation.steps = 0
    with pytest.raises(RecipeError) as caught:
        check_section(config, "separation", SeparationConfig)
    assert str(caught.value) == "separation.steps must be an integer >= 1, got 0"


def test_task_choices_are_literal_fields_checked_where_the_recipe_is_read() -> None:
    from avssl.tasks.pretext import build_pretext_task

    config = load_recipe(RECIPES / "synth" / "avc_small.yaml", ["task.optimizer=rmsprop"])
    with pytest.raises(RecipeError) as caught:
        check_section(config, "task", AVCConfig)
    assert str(caught.value) == "task.optimizer must be one of 'adam', 'adamw', 'sgd', got 'rmsprop'"
    config = load_recipe(RECIPES / "synth" / "avc_small.yaml", ["task.negatives=hard"])
    with pytest.raises(RecipeError) as caught:
        build_pretext_task(config)
    assert str(caught.value) == "task.negatives must be one of 'paired', 'in_batch', got 'hard'"
    config = load_recipe(RECIPES / "synth" / "avc_small.yaml", ["task.name=avcc"])
    with pytest.raises(RecipeError) as caught:
        build_pretext_task(config)
    assert str(caught.value) == ("task.name must be one of ['avc', 'avenet', 'avid_cma', 'avts', 'cav_mae', 'lvs', "
                                 "'robust_xid', 'selavi', 'vatt', 'xdc'], got 'avcc'")


def test_pretext_recipe_reads_a_loaded_recipe_and_a_checkpoints_dict_alike() -> None:
    from avssl.config import to_plain
    from avssl.data.datamodule import DataConfig
    from avssl.tasks.pretext.avid_cma import AVIDCMAConfig
    from avssl.tasks.pretext.base import PretextRecipe

    config = load_recipe(RECIPES / "synth" / "avid_cma_small.yaml", ["task.num_instances=50", "seed=3"])
    loaded = PretextRecipe.read(config, AVIDCMAConfig)
    assert isinstance(loaded.task, AVIDCMAConfig) and isinstance(loaded.data, DataConfig)
    assert (loaded.task.loss, loaded.task.num_instances, loaded.data.batch_size, loaded.seed) == ("softmax", 50, 64, 3)
    assert PretextRecipe.read(to_plain(config), AVIDCMAConfig) == loaded


def test_pretrain_refuses_a_bad_task_key_before_writing_anything(tmp_path: Path) -> None:
    from avssl.pretrain import pretrain

    run_dir = tmp_path / "run"
    config = load_recipe(RECIPES / "synth" / "avc_small.yaml", ["task.scheduler=step", f"run_dir={run_dir}"])
    with pytest.raises(RecipeError) as caught:
        pretrain(config)
    assert str(caught.value) == "task.scheduler must be one of 'cosine', 'none', got 'step'"
    assert not run_dir.exists()
