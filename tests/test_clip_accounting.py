"""The evaluation verbs report clips evaluated vs expected; a test split that lost clips is
an error unless ``data.allow_missing_test_clips`` (avssl/data/skips.py)."""
from __future__ import annotations

import json
import shutil
import tarfile
from pathlib import Path
from typing import Any, Callable

import pytest

from avssl.config import load_recipe
from avssl.data.errors import DataError
from tests.conftest import make_synth_shards

RECIPES = Path(__file__).resolve().parents[1] / "recipes"
SMALL = ["data.num_workers=0", "data.batch_size=6", "data.video.size=32", "model.video_encoder.widths=[8,8,16]",
         "model.audio_encoder.widths=[8,8,16]"]


@pytest.fixture(scope="module")
def synth_shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_synth_shards(tmp_path_factory.mktemp("clips"))


def _lose_last_test_sample(shards: Path, out: Path) -> Path:
    """A copy of ``shards`` whose test shard is cut inside its last sample's first entry."""
    shutil.copytree(shards, out)
    shard = out / "test-000000.tar"
    with tarfile.open(shard) as tar:
        members = tar.getmembers()
    last_key = members[-1].name.split(".")[0]
    cut = next(m for m in members if m.name.split(".")[0] == last_key).offset_data + 10
    shard.write_bytes(shard.read_bytes()[:cut])
    return out


def _run(verb: str, recipe: str, overrides: list[str]) -> dict[str, Any]:
    from avssl.evaluation import clustering, linear_probe

    run: Callable[[Any], dict[str, Any]] = {"probe": linear_probe.evaluate, "cluster": clustering.evaluate}[verb]
    return run(load_recipe(RECIPES / "eval" / recipe, overrides))


@pytest.mark.parametrize("verb, recipe, clips_per_video",
                         [("probe", "synth_probe.yaml", 3), ("cluster", "synth_cluster.yaml", 1)])
def test_a_test_split_that_lost_clips_is_an_error_unless_allowed(
        synth_shards: Path, tmp_path: Path, verb: str, recipe: str, clips_per_video: int) -> None:
    damaged = _lose_last_test_sample(synth_shards, tmp_path / "shards")
    common = [f"data.shards={damaged}", *SMALL, f"{verb}.cache_dir={tmp_path / 'cache'}", f"run_dir={tmp_path / 'run'}"]
    if verb == "probe":
        common.append("probe.modalities=[video]")
    expected, evaluated = 6 * clips_per_video, 5 * clips_per_video
    message = (f"^split 'test': {evaluated} of {expected} clips evaluated, {clips_per_video} lost "
               f"\\(missing or damaged shards, undecodable media\\); repair the shards, "
               f"or set data.allow_missing_test_clips=true to report on the rest$")
    with pytest.warns(UserWarning, match="could not be read"), pytest.raises(DataError, match=message):
        _run(verb, recipe, common)
    assert not (tmp_path / "run" / "metrics.json").exists()

    with pytest.warns(UserWarning, match=f"^split 'test': {evaluated} of {expected} clips evaluated"):
        _run(verb, recipe, [*common, "data.allow_missing_test_clips=true"])
    clips = json.loads((tmp_path / "run" / "metrics.json").read_text())["clips"]
    assert clips["test"] == {"split": "test", "clips_expected": expected, "clips_evaluated": evaluated,
                             "clips_missing": clips_per_video}
    if verb == "probe":  # the splits the probe fits and selects on are reported too, whole here
        assert clips["train"] == {"split": "train", "clips_expected": 11, "clips_evaluated": 11, "clips_missing": 0}
        assert clips["val"] == {"split": "val", "clips_expected": 21, "clips_evaluated": 21, "clips_missing": 0}


@pytest.mark.slow
def test_finetune_and_localize_report_clips_and_refuse_a_damaged_test_split(synth_shards: Path, tmp_path: Path) -> None:
    from avssl.evaluation import finetune, localization

    damaged = _lose_last_test_sample(synth_shards, tmp_path / "shards")
    runs = {"finetune": (finetune.evaluate, "synth_finetune.yaml", ["finetune.epochs=1",
                                                                        "finetune.eval_clips_per_video=2"], 2),
            "localize": (localization.evaluate, "synth_localization.yaml", ["localization.events=false"], 1)}
    for verb, (run, recipe, extra, clips_per_video) in runs.items():
        common = [f"data.shards={damaged}", *SMALL, *extra, f"run_dir={tmp_path / verb}"]
        with pytest.warns(UserWarning, match="could not be read"), \
                pytest.raises(DataError, match=f"^split 'test': {5 * clips_per_video} of {6 * clips_per_video} clips"):
            run(load_recipe(RECIPES / "eval" / recipe, common))
        with pytest.warns(UserWarning, match="could not be read"):
            run(load_recipe(RECIPES / "eval" / recipe, [*common, "data.allow_missing_test_clips=true"]))
        clips = json.loads((tmp_path / verb / "metrics.json").read_text())["clips"]
        assert clips == {"test": {"split": "test", "clips_expected": 6 * clips_per_video,
                                  "clips_evaluated": 5 * clips_per_video, "clips_missing": clips_per_video}}, verb
