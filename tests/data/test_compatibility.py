"""The pretraining compares the shards' manifest with what the recipe decodes: a warning per
setting below the recipe's needs (naming both values and the `avssl shards` flag), a stop
when the recipe cannot train on them."""
from __future__ import annotations

import json
import warnings
from dataclasses import asdict
from pathlib import Path

import pytest

from avssl.cli import main
from avssl.config import data_config, load_recipe
from avssl.data.compatibility import (
    ShardsMismatchWarning,
    check_shards_fit_recipe,
    window_seconds,
)
from avssl.data.datamodule import base_views
from avssl.data.shards import ShardSettings
from avssl.data.views import AudioView
from avssl.errors import RecipeError

PRETRAIN = Path(__file__).resolve().parents[2] / "recipes" / "pretrain"
AVC = PRETRAIN / "avc" / "kinetics-sounds_r2plus1d18_8x32_1f224.yaml"
AVID = PRETRAIN / "avid_cma" / "kinetics400_r2plus1d18_8x32_8f112.yaml"
AVTS = PRETRAIN / "avts" / "kinetics400_mc318_8x32_16f112.yaml"
SELAVI = PRETRAIN / "selavi" / "vggsound_r2plus1d18_8x16_30f112.yaml"


def _manifest(folder: Path, videos: int = 100, seconds: float = 10.0, **settings: object) -> Path:
    """A manifest.json as `avssl shards` writes it, with ``settings`` changed from its defaults."""
    folder.mkdir(parents=True, exist_ok=True)
    manifest = {"format": "avssl-shards/1", "settings": asdict(ShardSettings(**settings)), "classes": None,
                "splits": {"train": {"shards": [], "num_samples": videos, "hours": videos * seconds / 3600}}}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder


def _check(recipe: Path, shards: Path, *overrides: str, extra_audio: dict | None = None) -> list[str]:
    config = load_recipe(recipe, [f"data.shards={shards}", *overrides])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        check_shards_fit_recipe(config, base_views(data_config(config), extra_audio))
    return [str(w.message) for w in caught if issubclass(w.category, ShardsMismatchWarning)]


def test_default_shards_under_the_48k_224_avc_recipe_warn_with_both_values_and_the_flags(tmp_path: Path) -> None:
    shards = _manifest(tmp_path / "s")
    assert _check(AVC, shards) == [
        (f"data.mel.sample_rate is 48000 Hz but the shards in {shards} hold audio at 16000 Hz: it is upsampled, "
         "with nothing above 8000 Hz; rewrite them with `avssl shards --sample-rate 48000`"),
        (f"data.video.size is 224 px but the shards in {shards} have a short side of 128 px: frames are upscaled; "
         "rewrite them with `avssl shards --short-side 224` (or more)"),
    ]


def test_shards_written_as_the_recipe_header_says_fit_without_a_word(tmp_path: Path) -> None:
    assert _check(AVC, _manifest(tmp_path / "s", short_side=256, sample_rate=48000)) == []
    assert _check(SELAVI, _manifest(tmp_path / "v", fps=30.0, sample_rate=24000)) == []
    assert _check(AVID, _manifest(tmp_path / "k", sample_rate=24000, min_seconds=2.0)) == []


def test_selavi_at_30_fps_on_25_fps_shards_warns_that_frames_repeat(tmp_path: Path) -> None:
    shards = _manifest(tmp_path / "s", sample_rate=24000)
    assert _check(SELAVI, shards) == [(f"data.video.fps is 30 but the shards in {shards} are at 25 fps: frames "
                                       "repeat; rewrite them with `avssl shards --fps 30`")]


def test_avid_two_second_audio_on_shards_that_keep_one_second_videos_warns(tmp_path: Path) -> None:
    shards = _manifest(tmp_path / "s", sample_rate=24000)
    assert _check(AVID, shards) == [(f"a clip needs 2 s of video but the shards in {shards} keep videos from 1 s: "
                                     "shorter ones are padded, or skipped when a same-video negative does not fit; "
                                     "`avssl shards --min-seconds 2` leaves them out")]


def test_avts_hard_negatives_need_room_beside_the_aligned_window(tmp_path: Path) -> None:
    hard = {"audio_hard": AudioView(seconds=1.0, offset="shifted", min_shift_seconds=0.5)}
    config = load_recipe(AVTS)
    assert window_seconds(base_views(data_config(config))) == 1.0
    assert window_seconds(base_views(data_config(config), hard)) == 2.0
    overlapping = {"audio_superhard": AudioView(seconds=1.0, offset="overlapping", min_shift_seconds=0.25)}
    assert window_seconds(base_views(data_config(config), overlapping)) == 1.25
    shards = _manifest(tmp_path / "s", seconds=1.5)
    with pytest.raises(RecipeError) as error:
        _check(AVTS, shards, extra_audio=hard)
    assert str(error.value) == (f"a clip needs 2 s of video but the training videos in {shards} last 1.50 s on "
                                "average: most clips cannot hold it; use longer videos or shorter windows "
                                "(data.video, data.audio, task.min_shift_seconds)")


def test_a_bank_smaller_than_the_training_split_stops_the_run(tmp_path: Path) -> None:
    shards = _manifest(tmp_path / "s", videos=40, sample_rate=24000, min_seconds=2.0)
    with pytest.raises(RecipeError) as error:
        _check(AVID, shards, "task.num_instances=30")
    assert str(error.value) == (f"task.num_instances is 30 but the shards in {shards} hold 40 training videos: a "
                                "bank has one slot per video; set task.num_instances=null to read it from the manifest")
    assert _check(AVID, shards, "task.num_instances=40") == []


def test_pretrain_stops_before_training_with_the_mismatch(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    shards = _manifest(tmp_path / "s", videos=40)
    assert main(["pretrain", str(AVID), "smoke=true", f"data.shards={shards}", f"run_dir={tmp_path / 'run'}",
                 "task.num_instances=20"]) == 2
    assert capsys.readouterr().err == (f"avssl pretrain: task.num_instances is 20 but the shards in {shards} hold 40 "
                                       "training videos: a bank has one slot per video; set task.num_instances=null "
                                       "to read it from the manifest\n")
    assert not (tmp_path / "run-smoke" / "checkpoints").exists()


def test_shards_named_by_a_command_are_checked_against_the_manifest_beside_them(tmp_path: Path) -> None:
    """The check reads the manifest the run reads (avssl/data/remote.py), wherever it is."""
    folder = _manifest(tmp_path / "s", sample_rate=24000)
    command = f"pipe:cat {folder}/train-000000.tar"
    assert _check(SELAVI, command) == [(f"data.video.fps is 30 but the shards in {command} are at 25 fps: frames "
                                        "repeat; rewrite them with `avssl shards --fps 30`")]
