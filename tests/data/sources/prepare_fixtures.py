"""Helpers of the benchmark-adapter tests: tiny media files and the shards read back.

Every clip is 32x32 pixels, 0.6-1 s at 10 fps with an 8 kHz tone, written in the container
the benchmark ships (avi for UCF101/HMDB51, mp4 for the YouTube sets, wav, jpg), so a whole
adapter run (spawned shard-writer workers included) takes a few seconds.
"""
from __future__ import annotations

import json
import tarfile
from pathlib import Path

import numpy as np

from avssl.data.encode import write_media
from avssl.data.shards import ShardSettings

RATE = 8000
FPS = 10
SMALL = ShardSettings(short_side=32, fps=FPS, sample_rate=RATE, min_seconds=0.2, missing_audio="silence")
SMALL_FLAGS = ["--short-side", "32", "--fps", str(FPS), "--sample-rate", str(RATE), "--min-seconds", "0.2"]


def tone(seconds: float, hz: float = 440.0) -> np.ndarray:
    t = np.arange(int(round(seconds * RATE))) / RATE
    return (0.3 * np.sin(2 * np.pi * hz * t)).astype(np.float32)


def frames(seconds: float, value: int = 60) -> np.ndarray:
    clip = np.full((int(round(seconds * FPS)), 32, 32, 3), value, np.uint8)
    for i in range(len(clip)):
        clip[i, 8:16, i % 24 : i % 24 + 8] = 220
    return clip


def video(path: Path, seconds: float = 0.8, audio: bool = True) -> Path:
    """A tiny clip in the container its suffix names (avi: mpeg4 + pcm, else h264 + aac)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    options = {}
    if path.suffix == ".avi":
        options = {"video_codec": "mpeg4", "container_format": "avi"}
        if audio:
            options["audio_codec"] = "pcm_s16le"
    sound = tone(seconds) if audio else None
    write_media(path, frames(seconds), FPS, sound, RATE if audio else None, **options)
    return path


def wav(path: Path, seconds: float = 0.8, hz: float = 440.0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_media(path, None, FPS, tone(seconds, hz), RATE, audio_codec="pcm_s16le", container_format="wav")
    return path


def image(path: Path, rgb: tuple[int, int, int] = (200, 40, 40), size: tuple[int, int] = (40, 48)) -> Path:
    """A flat-coloured jpg (or png) of (height, width) ``size``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.zeros((1, *size, 3), np.uint8) + np.array(rgb, np.uint8)
    if path.suffix == ".png":
        write_media(path, pixels, 1, video_codec="png", container_format="image2", pix_fmt="rgb24")
    else:
        write_media(path, pixels, 1, video_codec="mjpeg", container_format="image2", pix_fmt="yuvj420p")
    return path


def read_out(out: Path) -> tuple[dict, dict[str, dict]]:
    """(manifest, {sample id: {"json": metadata, entry: bytes or parsed json sidecar}})."""
    manifest = json.loads((out / "manifest.json").read_text())
    samples: dict[str, dict] = {}
    for split in manifest["splits"].values():
        for shard in split["shards"]:
            grouped: dict[str, dict] = {}
            with tarfile.open(out / shard["file"]) as tar:
                for member in tar:
                    key, entry = member.name.split(".", 1)
                    data = tar.extractfile(member).read()
                    grouped.setdefault(key, {})[entry] = json.loads(data) if entry.endswith("json") else data
            for entries in grouped.values():
                samples[entries["json"]["id"]] = entries
    return manifest, samples


def by_split(samples: dict[str, dict]) -> dict[str, set[str]]:
    splits: dict[str, set[str]] = {}
    for video_id, entries in samples.items():
        splits.setdefault(entries["json"]["split"], set()).add(video_id)
    return splits


def skipped_files(manifest: dict) -> dict[str, str]:
    return {entry["file"]: entry["reason"] for entry in manifest["skipped"]}
