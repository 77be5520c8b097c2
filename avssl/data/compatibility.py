"""Do the shards fit the recipe? ``manifest.json`` records how `avssl shards` (and
`avssl prepare`) wrote the videos; the recipe's ``data`` section says what each clip needs.

Nothing here is needed for the run to go: the reader resamples audio, resizes frames and
repeats frames on its own. What a mismatch silently costs is quality (audio upsampled from
16 kHz has no content above 8 kHz; 224² crops of a 128-pixel short side are blurred), so
each one is a :class:`ShardsMismatchWarning` naming both values and the flag that rewrites
the shards to fit. Two mismatches make the recipe's run impossible as written and stop it
with a :class:`~avssl.errors.RecipeError`: training videos shorter on average than the
clip window, and a ``task.num_instances`` smaller than the training split (one bank slot
per video).
"""
from __future__ import annotations

import math
import warnings
from typing import Any

from omegaconf import DictConfig

from avssl.data.remote import read_manifest
from avssl.data.views import AUDIO, ViewSpec
from avssl.errors import RecipeError


class ShardsMismatchWarning(UserWarning):
    """The shards were written at a lower quality than the recipe asks for."""


def window_seconds(views: ViewSpec) -> float:
    """The shortest video that holds every window of one clip: the video window, the aligned
    audio around it, and each same-video negative (AVTS) beside the aligned audio:
    ``max(shift, length) + length`` for a non-overlapping one, ``min_shift + length`` for a
    partly overlapping one (the sampler's placement, avssl/data/sampling.py)."""
    video = views.video.seconds if views.video is not None else 0.0
    aligned = views.audio.get(AUDIO)
    needed = max(video, aligned.seconds if aligned is not None else 0.0)
    for view in views.audio.values():
        if view.offset == "shifted":
            needed = max(needed, max(view.seconds, view.min_shift_seconds) + view.seconds)
        elif view.offset == "overlapping":
            needed = max(needed, view.min_shift_seconds + view.seconds)
    return needed


def _even_at_least(size: int) -> int:
    return size + size % 2


def quality_warnings(settings: dict[str, Any], views: ViewSpec, where: str) -> list[str]:
    """One line per setting of the shards below what the recipe's views need."""
    lines = []
    if views.audio and "sample_rate" in settings and settings["sample_rate"] < views.mel.sample_rate:
        have, need = int(settings["sample_rate"]), int(views.mel.sample_rate)
        lines.append(f"data.mel.sample_rate is {need} Hz but the shards in {where} hold audio at {have} Hz: it is "
                     f"upsampled, with nothing above {have / 2:g} Hz; "
                     f"rewrite them with `avssl shards --sample-rate {need}`")
    video = views.video
    if video is not None and "short_side" in settings and settings["short_side"] < video.size:
        have = int(settings["short_side"])
        lines.append(f"data.video.size is {video.size} px but the shards in {where} have a short side of {have} px: "
                     f"frames are upscaled; rewrite them with `avssl shards --short-side {_even_at_least(video.size)}` "
                     "(or more)")
    if video is not None and "fps" in settings and settings["fps"] < video.fps:
        have_fps = float(settings["fps"])
        lines.append(f"data.video.fps is {video.fps:g} but the shards in {where} are at {have_fps:g} fps: frames "
                     f"repeat; rewrite them with `avssl shards --fps {video.fps:g}`")
    needed = window_seconds(views)
    if "min_seconds" in settings and settings["min_seconds"] < needed:
        lines.append(f"a clip needs {needed:g} s of video but the shards in {where} keep videos from "
                     f"{float(settings['min_seconds']):g} s: shorter ones are padded, or skipped when a same-video "
                     f"negative does not fit; `avssl shards --min-seconds {needed:g}` leaves them out")
    return lines


def impossible(manifest: dict[str, Any], views: ViewSpec, task: dict[str, Any], train_split: str,
               where: str) -> str | None:
    """Why the recipe cannot train on these shards as written, None when it can."""
    split = (manifest.get("splits") or {}).get(train_split)
    if not split or not split.get("num_samples"):
        return None  # the data module names a missing split itself
    count = int(split["num_samples"])
    instances = task.get("num_instances")
    if instances is not None and int(instances) < count:
        return (f"task.num_instances is {int(instances)} but the shards in {where} hold {count} training videos: "
                "a bank has one slot per video; set task.num_instances=null to read it from the manifest")
    needed = window_seconds(views)
    if split.get("hours") is not None:
        mean = float(split["hours"]) * 3600 / count
        if mean < needed and not math.isclose(mean, needed):
            return (f"a clip needs {needed:g} s of video but the training videos in {where} last {mean:.2f} s on "
                    "average: most clips cannot hold it; use longer videos or shorter windows (data.video, "
                    "data.audio, task.min_shift_seconds)")
    return None


def check_shards_fit_recipe(config: DictConfig, views: ViewSpec) -> None:
    """Warn for each shard setting below the recipe's needs; RecipeError when the recipe
    cannot train on the shards. ``views``: what the task decodes (its extra audio too)."""
    manifest = read_manifest(str(config.data.shards), missing_ok=True)
    if manifest is None:  # the data module names the missing manifest itself
        return
    where = str(config.data.shards)
    reason = impossible(manifest, views, dict(config.get("task") or {}), str(config.data.train_split), where)
    if reason is not None:
        raise RecipeError(reason)
    for line in quality_warnings(manifest.get("settings") or {}, views, where):
        warnings.warn(line, ShardsMismatchWarning, stacklevel=2)
