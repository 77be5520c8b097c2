"""The command line: a user's mistake is one line and an exit status, each verb's help says
what it does, and a smoke run prints no noise a user cannot act on."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from avssl.cli import (
    EVALUATION_VERBS,
    PRETRAIN_EXAMPLE,
    PRETRAIN_KEYS,
    key_default,
    main,
    one_line,
)
from avssl.data.cache import DecodeCacheFull
from avssl.data.errors import DataError
from avssl.errors import RecipeError

ROOT = Path(__file__).resolve().parent.parent
RECIPES = ROOT / "recipes"
AVC = str(RECIPES / "synth" / "avc_small.yaml")
PROBE = str(RECIPES / "eval" / "synth_probe.yaml")
SHARDS_FIX = "point data.shards at a folder written by `avssl shards`"


@pytest.fixture
def manifest_only(tmp_path: Path) -> Path:
    """A shards folder as far as the CLI's up-front check goes (no verb reads it here)."""
    folder = tmp_path / "shards"
    folder.mkdir()
    (folder / "manifest.json").write_text(json.dumps({"splits": {}}))
    return folder


@pytest.fixture
def a_file(tmp_path: Path) -> Path:
    """A regular file: a path under it cannot be created, even by root."""
    path = tmp_path / "a_file"
    path.write_text("not a folder\n")
    return path


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = main(argv)
    return code, capsys.readouterr().err


# -- values are checked where the recipe is read, and the message names the key ---------------------
@pytest.mark.parametrize("override, line", [
    ("trainer.max_epochs=two", "trainer.max_epochs: 'two' is not an integer"),
    ("data.batch_size=0", "data.batch_size must be an integer >= 1, got 0"),
    ("data.batch_size=-4", "data.batch_size must be an integer >= 1, got -4"),
    ("trainer.max_epochs=0", "trainer.max_epochs must be an integer >= 1, or -1 (no limit), got 0"),
    ("data.num_workers=-1", "data.num_workers must be an integer >= 0, got -1"),
    ("data.max_skip_fraction=1.5", "data.max_skip_fraction must be a number in [0, 1], got 1.5"),
    ("data.worker_timeout_s=-0.5", "data.worker_timeout_s must be a number >= 0, got -0.5"),
    ("data.bach_size=4", f"{AVC}: unknown key 'data.bach_size' (did you mean 'data.batch_size'?)"),
])
def test_recipe_mistake_is_one_line_exit_2(override: str, line: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["pretrain", AVC, override], capsys) == (2, f"avssl pretrain: {line}\n")


def test_missing_recipe_is_one_line_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    recipe = tmp_path / "avc_smal.yaml"
    assert run(["pretrain", str(recipe)], capsys) == (2, f"avssl pretrain: recipe {recipe} not found\n")


def test_missing_shards_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "no_shards"
    assert run(["pretrain", AVC, f"data.shards={missing}"], capsys) == (
        1, f"avssl pretrain: data.shards={missing}: no such folder; {SHARDS_FIX}\n")


def test_shards_folder_without_manifest(tmp_path: Path, a_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["probe", PROBE, f"data.shards={tmp_path}"], capsys) == (
        1, f"avssl probe: data.shards={tmp_path} has no manifest.json; {SHARDS_FIX}\n")
    assert run(["probe", PROBE, f"data.shards={a_file}"], capsys) == (
        1, f"avssl probe: data.shards={a_file} is a file; {SHARDS_FIX}\n")


def test_missing_export_folder(manifest_only: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "exported"
    code, err = run(["probe", PROBE, f"data.shards={manifest_only}", f"run_dir={tmp_path / 'run'}",
                     f"probe.encoders={missing}"], capsys)
    assert (code, err) == (1, f"avssl probe: encoders={missing}: not an export folder, a .ckpt or 'random'\n")


def test_empty_export_folder(manifest_only: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    empty = tmp_path / "exported"
    empty.mkdir()
    code, err = run(["probe", PROBE, f"data.shards={manifest_only}", f"run_dir={tmp_path / 'run'}",
                     f"probe.encoders={empty}"], capsys)
    assert (code, err) == (
        1, f"avssl probe: {empty}/model.json not found: {empty} is not an avssl export folder (run `avssl export`)\n")


def _library_error(call) -> str:
    """The one-line message of the OSError a library call raises (its wording is the data
    package's; the CLI's part is the prefix, the single line and the status)."""
    with pytest.raises(OSError) as caught:
        call()
    return one_line(caught.value)


def test_shards_videos_is_a_file(a_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from avssl.data.shards import write_shards

    message = _library_error(lambda: write_shards(a_file, tmp_path / "out"))
    assert str(a_file) in message
    assert run(["shards", "--videos", str(a_file), "--out", str(tmp_path / "out")], capsys) == (
        1, f"avssl shards: {message}\n")


def test_shards_out_not_writable(a_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from avssl.data.shards import write_shards

    videos = tmp_path / "videos"
    videos.mkdir()
    (videos / "clip.mp4").write_bytes(b"not a video")
    message = _library_error(lambda: write_shards(videos, a_file / "out"))
    assert str(a_file) in message
    assert run(["shards", "--videos", str(videos), "--out", str(a_file / "out")], capsys) == (
        1, f"avssl shards: {message}\n")


def test_synth_out_not_writable(a_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["synth", "--out", str(a_file / "out"), "--num-videos", "2"], capsys) == (
        1, f"avssl synth: {a_file}/out/videos: Not a directory\n")


def test_synth_prints_the_summary_line_of_what_it_wrote(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    import avssl.data.synth

    summary = {"videos": 3, "hours": 0.0033, "splits": {"train": 2, "val": 1, "test": 0}}
    monkeypatch.setattr(avssl.data.synth, "generate_dataset", lambda **kwargs: summary)
    assert main(["synth", "--out", str(tmp_path), "--num-videos", "3"]) == 0
    assert capsys.readouterr().out == f"wrote 3 videos (0.00 h; train 2, val 1, test 0) to {tmp_path}\n"


def _small_checkpoint(path: Path) -> Path:
    """A checkpoint shaped like a training run's, with one small video encoder."""
    from avssl.models import build_encoders

    model = {"video_encoder": {"name": "small3d", "widths": [4, 8]}, "audio_encoder": None}
    encoder = build_encoders(model).video_encoder
    torch.save({"epoch": 0, "global_step": 2, "pytorch-lightning_version": "2.0.0",
                "state_dict": {f"video_encoder.{k}": v for k, v in encoder.state_dict().items()},
                "hyper_parameters": {"config": {"model": model}}}, path)
    return path


def test_export_out_not_writable(a_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from avssl.export import export_checkpoint

    checkpoint = _small_checkpoint(tmp_path / "last.ckpt")
    message = _library_error(lambda: export_checkpoint(checkpoint, a_file / "out"))
    assert str(a_file) in message
    assert run(["export", str(checkpoint), "--out", str(a_file / "out")], capsys) == (1, f"avssl export: {message}\n")


def test_export_missing_checkpoint(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "last.ckpt"
    code, err = run(["export", str(missing), "--out", str(tmp_path / "out")], capsys)
    assert code == 1 and err.count("\n") == 1 and err.startswith("avssl export: ") and str(missing) in err


# -- which exceptions are a user's mistake ------------------------------------------------------------
def _raising(monkeypatch: pytest.MonkeyPatch, error: BaseException) -> None:
    def export_checkpoint(checkpoint: Path, out: Path, **options: object) -> Path:
        raise error

    monkeypatch.setattr("avssl.export.export_checkpoint", export_checkpoint)


@pytest.mark.parametrize("error, code", [
    (RecipeError("probe.encoders=x: no such folder"), 2),
    (DataError("train-000001.tar: missing\nsecond line"), 1),
    (type("LabelsError", (ValueError,), {"__module__": "avssl.data.shards"})("labels.csv line 3: no id"), 1),
    (PermissionError(13, "Permission denied", "/data/out"), 1),
    (DecodeCacheFull("data.cache=memory: the decoded train passed 2.3 GiB; stream it instead (data.cache=none)"), 1),
])
def test_user_errors_map_to_exit_status(error: BaseException, code: int, monkeypatch: pytest.MonkeyPatch,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    _raising(monkeypatch, error)
    line = "/data/out: Permission denied" if isinstance(error, OSError) else str(error).replace("\n", " ")
    assert run(["export", "x.ckpt", "--out", "y"], capsys) == (code, f"avssl export: {line}\n")


@pytest.mark.parametrize("error", [KeyError(174812789), ValueError("a bug's message"), ZeroDivisionError(),
                                   MemoryError("torch ran out")])
def test_bugs_keep_their_traceback(error: BaseException, monkeypatch: pytest.MonkeyPatch) -> None:
    _raising(monkeypatch, error)
    with pytest.raises(type(error)):
        main(["export", "x.ckpt", "--out", "y"])


def test_avssl_debug_shows_the_traceback(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AVSSL_DEBUG", "1")
    with pytest.raises(RecipeError, match=r"^data\.batch_size must be an integer >= 1, got 0$"):
        main(["pretrain", AVC, "data.batch_size=0"])


@pytest.mark.parametrize("debug", ["", "0", "1"])
def test_avssl_debug_from_the_shell(debug: str, a_file: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "avssl.cli", "synth", "--out", str(a_file / "x")],
                          check=False, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT), "AVSSL_DEBUG": debug})
    assert done.returncode == 1
    if debug == "1":
        assert done.stderr.startswith("Traceback (most recent call last):")
        assert done.stderr.endswith(f"NotADirectoryError: [Errno 20] Not a directory: '{a_file}/x/videos'\n")
    else:
        assert done.stderr == f"avssl synth: {a_file}/x/videos: Not a directory\n"


# -- logging ----------------------------------------------------------------------------------------------
def test_library_logs_reach_stderr_plainly() -> None:
    code = ("import logging, avssl.cli as cli; cli.configure_logging(); log = logging.getLogger('avssl.data.x'); "
            "log.info('packed 3 videos'); log.debug('hidden'); log.warning('2 files skipped')")
    done = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert (done.stdout, done.stderr) == ("", "packed 3 videos\nwarning: 2 files skipped\n")


# -- help ---------------------------------------------------------------------------------------------------
def _help(verb: str, capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main([verb, "--help"])
    assert exit_info.value.code == 0
    return capsys.readouterr().out


def _example_recipe(example: str) -> Path:
    recipe = ROOT / example.split()[2]
    assert recipe.is_file(), example
    return recipe


def test_pretrain_help(capsys: pytest.CaptureFixture[str]) -> None:
    text = _help("pretrain", capsys)
    assert "Train the recipe's pretext task" in text and f"example:\n  {PRETRAIN_EXAMPLE}\n" in text
    _example_recipe(PRETRAIN_EXAMPLE)
    for key, meaning in PRETRAIN_KEYS:
        assert f" {meaning} (default: " in text.split(f"\n  {key} ")[1].splitlines()[0]
    assert "  data.batch_size                 clips per batch, per GPU (default: 32)\n" in text
    assert "  trainer.max_epochs              epochs to train (-1: no limit) (default: 100)\n" in text
    assert "  smoke                           true: 2 CPU steps at a small size, to check the recipe end to end " \
           "(default: false)\n" in text
    assert "trainer.max_epochs=2" not in text


@pytest.mark.parametrize("verb", sorted(EVALUATION_VERBS))
def test_evaluation_verb_help(verb: str, capsys: pytest.CaptureFixture[str]) -> None:
    spec = EVALUATION_VERBS[verb]
    text = _help(verb, capsys)
    assert spec.description.split(".")[0] in " ".join(text.split())
    assert f"example:\n  {spec.example}\n" in text and spec.example.startswith(f"avssl {verb} ")
    _example_recipe(spec.example)
    encoders_key = spec.keys[0][0]
    assert encoders_key.startswith(spec.section + ".")
    line = next(line for line in text.splitlines() if line.startswith(f"  {encoders_key} "))
    assert line.endswith("(default: random)")
    for key, _ in spec.keys:
        assert f"\n  {key} " in text


def test_help_defaults_come_from_the_schemas() -> None:
    from avssl.data.datamodule import DataConfig
    from avssl.evaluation.separation import SeparationConfig

    assert key_default("data.batch_size") == DataConfig().batch_size
    assert key_default("separation.steps", {"separation": SeparationConfig}) == SeparationConfig().steps
    assert key_default("trainer.precision") == "bf16-mixed"  # recipes/pretrain/_base.yaml
    assert key_default("trainer.num_nodes") == 1  # Lightning's own


def test_export_help(capsys: pytest.CaptureFixture[str]) -> None:
    text = _help("export", capsys)
    assert text.startswith("usage: avssl export [-h] --out OUT [--license LICENSE]") and "CHECKPOINT\n" in text
    assert "CHECKPOINT            a .ckpt written by `avssl pretrain`" in text
    assert "--out OUT             export folder to write" in text
    assert "--license LICENSE     the model card's licence" in text


# -- what the fine-tune verb prints -------------------------------------------------------------------
def test_finetune_says_1_epoch(manifest_only: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                               capsys: pytest.CaptureFixture[str]) -> None:
    from avssl.evaluation import finetune

    monkeypatch.setattr(finetune, "load_encoders",
                        lambda config, name, run_dir: ({"video": object()}, SimpleNamespace(shards="s"), "id"))
    monkeypatch.setattr(finetune, "manifest_classes", lambda shards: ["a", "b"])
    monkeypatch.setattr(finetune, "run_finetune", lambda encoder, data, cfg, *args, **kwargs: {
        "modality": cfg.modality, "epochs": cfg.epochs, "test": {"clip_top1": 50.0, "video_top1": 60.0,
                                                                  "video_top5": 100.0}})
    assert main(["finetune", str(RECIPES / "eval" / "synth_finetune.yaml"), f"data.shards={manifest_only}",
                 f"run_dir={tmp_path}", "finetune.epochs=1"]) == 0
    expected = ("fine-tuned video encoder of random (1 epoch), test top-1 %: clip 50.0, video 60.0 (top-5 100.0)\n"
                f"written: {tmp_path / 'metrics.json'}\n")
    assert capsys.readouterr().out == expected


# -- noise ---------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_smoke_pretrain_prints_no_noise(tmp_path: Path) -> None:
    from conftest import make_synth_shards

    shards = make_synth_shards(tmp_path, num_videos=12, split=(0.5, 0.25, 0.25))
    done = subprocess.run(
        [sys.executable, "-m", "avssl.cli", "pretrain", AVC, "smoke=true", f"data.shards={shards}",
         f"run_dir={tmp_path / 'run'}"],
        check=False, capture_output=True, text=True, timeout=600,
        env={**os.environ, "PYTHONPATH": str(ROOT), "WANDB_MODE": "offline"})
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    # AVC has one phase: a smoke run is one epoch of 2 steps
    assert "checkpoint: " in done.stdout and "`Trainer.fit` stopped: `max_epochs=1` reached." in output
    for noise in ("Tip:", "litlogger", "litmodels", "LeafSpec", "(1 epochs)", "Traceback"):
        assert noise not in output, noise


def test_a_recipe_mistake_is_reported_before_the_shards(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from avssl.evaluation.separation import MASK_TYPES

    code, err = run(["separate", str(RECIPES / "eval" / "synth_separation.yaml"), "separation.mask=soft",
                     f"data.shards={tmp_path / 'missing'}"], capsys)
    assert (code, err) == (2, f"avssl separate: separation.mask must be one of {MASK_TYPES}, got 'soft'\n")
