"""`avssl separate` and its splits: a split that cannot give a mixture is refused before
training, in one line; the scored split is the one printed and recorded."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

import avssl.evaluation.separation as separation
from avssl.cli import main
from tests.conftest import flash_click_clip, write_test_shards

RECIPE = str(Path(__file__).resolve().parents[2] / "recipes" / "eval" / "synth_separation.yaml")
SMALL = ["data.num_workers=0", "data.batch_size=4", "data.cache=none", "model.video_encoder.widths=[8,8,16,16]",
         "model.audio_encoder.widths=[8,8,16,16]", "separation.pooling=frame", "separation.two_source_clips=false",
         "separation.steps=1", "separation.batch_size=2", "separation.unet_width=8", "separation.channels=8",
         "separation.test_mixtures=2", "separation.eval_workers=0", "separation.figure_mixtures=0"]


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """train: labels 0, 1, 0, 1; test: one clip (label 1); duet: two unlabelled clips."""
    out = tmp_path_factory.mktemp("separation_splits") / "shards"
    clip = flash_click_clip(seconds=1.5, size=(64, 64))
    write_test_shards(out, [clip] * 4, 8, "train", labels=[0, 1, 0, 1])
    write_test_shards(out, [clip], 8, "test", labels=[1])
    write_test_shards(out, [clip] * 2, 8, "duet", labels=[-1, -1])
    return out


def _no_training(*args, **kwargs):
    raise AssertionError("training started")


@pytest.mark.parametrize("override, message", [
    ([], "separation.test_split=test: its only clip has label 1 in {shards}; a mixture needs two clips of different "
         "labels: give split 'test' clips of at least two labels (e.g. re-prepare with a larger share of it) or set "
         "separation.test_split to a split that has them"),
    (["separation.train_split=duet"],
     "separation.train_split=duet: all 2 clips have label -1 (unlabelled) in {shards}; a mixture needs two clips of "
     "different labels: give split 'duet' clips of at least two labels (e.g. re-prepare with a larger share of it) or "
     "set separation.train_split to a split that has them"),
    (["separation.test_split=tset"],
     "separation.test_split=tset: split 'tset' not in {shards}/manifest.json (it has ['duet', 'test', 'train'])"),
])
def test_a_split_that_cannot_give_mixtures_is_refused_before_training(
        shards: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
        override: list[str], message: str) -> None:
    """Once, a one-clip test split failed with a traceback after the whole training, and an
    unknown split with a KeyError traceback."""
    monkeypatch.setattr(separation, "train", _no_training)
    assert main(["separate", RECIPE, f"data.shards={shards}", f"run_dir={tmp_path / 'run'}", *SMALL, *override]) == 2
    assert capsys.readouterr().err.splitlines()[-1] == f"avssl separate: {message.format(shards=shards)}"


def test_the_scored_split_is_printed_and_recorded(shards: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    scores = {"sdr_db": 1.0, "sir_db": 2.0, "sar_db": 3.0, "si_sdr_db": 0.5, "sdr_improvement_db": 0.25,
              "sdr_mixture_db": 0.75, "count": 2}
    monkeypatch.setattr(separation, "run_separation",
                        lambda *args: {"mixtures": dict(scores), "seconds": {"total": 3.0}})
    run_dir = tmp_path / "run"
    assert main(["separate", RECIPE, f"data.shards={shards}", f"run_dir={run_dir}", *SMALL,
                 "separation.test_split=train"]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[0] == ("separation with video encoder random (split train, the split it was trained on: not held "
                          "out; dB, means over sources then mixtures):")
    assert printed[1].split()[:2] == ["scored", "set"]
    assert json.loads((run_dir / "metrics.json").read_text())["splits"] == {"train": "train", "test": "train"}
    assert main(["separate", RECIPE, f"data.shards={shards}", f"run_dir={run_dir}", *SMALL]) == 0
    assert capsys.readouterr().out.splitlines()[0].startswith("separation with video encoder random (split test; dB")
    assert json.loads((run_dir / "metrics.json").read_text())["splits"] == {"train": "train", "test": "test"}
