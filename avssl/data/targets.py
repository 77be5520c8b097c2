"""Ground truth for downstream evaluation, read from a shard sample's sidecar entries and
placed on the clip the sampler decoded: sounding-object boxes in the output frame, clean
source waveforms of the audio window, and the event heard in the window.

A task asks for these by name in :attr:`ViewSpec.targets`; the batch keys are
``boxes`` (B×MAX_BOXES×4), ``stems`` (B×MAX_STEMS×N), ``num_stems`` (B), ``event`` (B) and
``labels`` (B×MAX_LABELS class indices, −1 padded: multi-label sets such as AudioSet).

Sources: the synthetic set's ``gt.json`` (objects with per-frame pixel boxes in a
``size``×``size`` frame, onsets in seconds, the stem channel of each sounding object) and
``stems.flac`` (one channel per sounding object); benchmark adapters write ``boxes.json``
(:func:`read_boxes_json`) and ``annotation.json`` (``labels``: the class indices of a
multi-label sample). Boxes and stems of a sample come in the same order (stem
channel), so box *k* is the object heard in stem *k*.
"""
from __future__ import annotations

import io
import json
import math
from functools import cached_property
from typing import Any

import av
import numpy as np
import torch

from avssl.data.decode import DecodeError, audio_resampler
from avssl.data.transforms import CropBox
from avssl.data.views import sample_count

BOXES = "boxes"
STEMS = "stems"
NUM_STEMS = "num_stems"
EVENT = "event"
LABELS = "labels"
TARGETS = (BOXES, STEMS, EVENT, LABELS)
MAX_LABELS = 32  # class indices per clip for multi-label sets; unused entries are −1
MAX_BOXES = 4  # box rows per clip; unused rows are NaN
MAX_STEMS = 2  # stem rows per clip; unused rows are zeros (num_stems says how many)
BACKGROUND = -1  # the ``event`` of a window in which no source has an onset


def _sounding_objects(gt: dict[str, Any]) -> list[dict[str, Any]]:
    objects = [o for o in gt.get("objects", []) if o.get("sounding")]
    return sorted(objects, key=lambda o: o.get("stem_channel", 0))


def synthetic_boxes(gt: dict[str, Any], time_seconds: float, frame_width: int, frame_height: int) -> np.ndarray:
    """Boxes of the sounding objects on screen at ``time_seconds``, K×4 in the pixels of a
    decoded frame of ``frame_width``×``frame_height`` (NaN rows for objects off screen)."""
    frame = int(math.floor(time_seconds * float(gt["fps"]) + 1e-6))
    scale_x, scale_y = frame_width / float(gt["size"]), frame_height / float(gt["size"])
    rows = []
    for obj in _sounding_objects(gt):
        boxes = obj["boxes"]
        box = boxes[min(max(frame, 0), len(boxes) - 1)] if boxes else None
        rows.append([np.nan] * 4 if box is None else
                    [box[0] * scale_x, box[1] * scale_y, box[2] * scale_x, box[3] * scale_y])
    return np.asarray(rows, dtype=np.float64).reshape(-1, 4)


def read_boxes_json(data: bytes, frame_width: int, frame_height: int) -> np.ndarray:
    """A benchmark's ``boxes.json``: ``{"boxes": [[x0, y0, x1, y1], …]}`` normalised to
    [0, 1] of the frame (one per annotated box) → K×4 decoded-frame pixels."""
    entry = json.loads(data)
    boxes = np.asarray(entry.get("boxes", []), dtype=np.float64).reshape(-1, 4)
    return boxes * np.array([frame_width, frame_height, frame_width, frame_height])


def window_event(gt: dict[str, Any], start_seconds: float, seconds: float, categories: list[str]) -> int:
    """The category heard in [start, start + seconds): the sounding object with the most
    onsets in the window (ties → the lower stem channel, the louder source), or BACKGROUND."""
    best, best_count = BACKGROUND, 0
    for obj in _sounding_objects(gt):
        count = sum(start_seconds <= t < start_seconds + seconds for t in obj.get("onsets", []))
        if count > best_count:
            best, best_count = categories.index(obj["category"]), count
    return best


def segment_event(events: dict[str, Any], time_seconds: float) -> int:
    """An ``events.json`` (``segments``: the label of each 1-s segment, ``background``: the
    index meaning none) → the label of the segment holding ``time_seconds``, BACKGROUND
    for background."""
    segments = events["segments"]
    label = int(segments[min(max(int(math.floor(time_seconds)), 0), len(segments) - 1)])
    return BACKGROUND if label == int(events.get("background", -1)) else label


def decode_stems(data: bytes, sample_rate: int) -> np.ndarray:
    """S×N float32: every channel of a stems file (one per source), whole, at ``sample_rate``."""
    try:
        with av.open(io.BytesIO(data)) as container:
            stream = container.streams.audio[0]
            channels = stream.codec_context.layout.nb_channels
            resampler = audio_resampler("fltp", stream.codec_context.layout, sample_rate)
            chunks = []
            for frame in container.decode(stream):
                chunks += [f.to_ndarray() for f in resampler.resample(frame)]
            chunks += [f.to_ndarray() for f in resampler.resample(None)]
    except (av.FFmpegError, IndexError) as error:
        raise DecodeError(f"stems: cannot decode ({error})") from error
    return np.concatenate(chunks, axis=1) if chunks else np.zeros((channels, 0), np.float32)


def window(samples: np.ndarray, start_seconds: float, seconds: float, sample_rate: int) -> np.ndarray:
    """S×count of S×N ``samples`` from ``start_seconds``; zeros outside them."""
    count = sample_count(seconds, sample_rate)
    first = sample_count(start_seconds, sample_rate)
    out = np.zeros((samples.shape[0], count), np.float32)
    lo, hi = max(first, 0), min(first + count, samples.shape[1])
    if hi > lo:
        out[:, lo - first : hi - first] = samples[:, lo:hi]
    return out


def read_stems(data: bytes, start_seconds: float, seconds: float, sample_rate: int) -> np.ndarray:
    """S×N float32: every channel of a stems file (one per source) over the window, at
    ``sample_rate``; zeros outside the file."""
    return window(decode_stems(data, sample_rate), start_seconds, seconds, sample_rate)


class SampleTruth:
    """One shard sample's ground truth: its sidecars by entry name and its json, each
    parsed (and the stems decoded) once however many clips the sample gives."""

    def __init__(self, entries: dict[str, bytes], meta: dict[str, Any], sample_rate: int = 16000) -> None:
        self.entries = entries
        self.meta = meta
        self.sample_rate = sample_rate

    @cached_property
    def gt(self) -> dict[str, Any] | None:
        return json.loads(self.entries["gt.json"]) if "gt.json" in self.entries else None

    @cached_property
    def stems(self) -> np.ndarray:
        return decode_stems(self.entries["stems.flac"], self.sample_rate)

    def json(self, name: str) -> Any:
        return json.loads(self.entries[name])


def clip_targets(
    names: tuple[str, ...], truth: SampleTruth, crop: CropBox | None, frame_size: tuple[int, int],
    video_time: float, audio_window: tuple[float, float] | None,
) -> dict[str, torch.Tensor]:
    """The batch entries for ``names`` of one clip: ``frame_size`` is the decoded frame's
    (width, height), ``video_time`` the time of the frame the boxes are read at,
    ``audio_window`` (start, seconds)."""
    entries, gt = truth.entries, truth.gt
    out: dict[str, torch.Tensor] = {}
    if BOXES in names:
        if crop is None:
            raise DecodeError("boxes need a video view")
        if "boxes.json" in entries:
            boxes = read_boxes_json(entries["boxes.json"], *frame_size)
        elif gt is not None:
            boxes = synthetic_boxes(gt, video_time, *frame_size)
        else:
            raise DecodeError("boxes asked for, but the sample has neither boxes.json nor gt.json")
        mapped = crop.map_boxes(boxes[:MAX_BOXES])
        padded = np.full((MAX_BOXES, 4), np.nan, np.float32)
        padded[: len(mapped)] = mapped
        out[BOXES] = torch.from_numpy(padded)
    if STEMS in names:
        if "stems.flac" not in entries or audio_window is None:
            raise DecodeError("stems asked for, but the sample has no stems.flac (or the task no audio view)")
        stems = window(truth.stems, audio_window[0] - float(truth.meta.get("audio_start", 0.0)), audio_window[1],
                       truth.sample_rate)[:MAX_STEMS]
        padded = np.zeros((MAX_STEMS, stems.shape[1]), np.float32)
        padded[: len(stems)] = stems
        out[STEMS] = torch.from_numpy(padded)
        out[NUM_STEMS] = torch.tensor(len(stems), dtype=torch.int64)
    if LABELS in names:
        if "annotation.json" not in entries:
            raise DecodeError("labels asked for, but the sample has no annotation.json")
        labels = [int(x) for x in truth.json("annotation.json").get("labels", [])][:MAX_LABELS]
        padded = torch.full((MAX_LABELS,), -1, dtype=torch.int64)
        padded[: len(labels)] = torch.tensor(labels, dtype=torch.int64)
        out[LABELS] = padded
    if EVENT in names:
        if audio_window is None:
            raise DecodeError("event asked for, but the task has no audio view")
        if "events.json" in entries:  # AVE: one label per 1-s segment, `background` its own index
            event = segment_event(truth.json("events.json"), audio_window[0] + audio_window[1] / 2)
        elif gt is not None:
            event = window_event(gt, *audio_window, gt["categories"])
        else:
            raise DecodeError("event asked for, but the sample has neither events.json nor gt.json")
        out[EVENT] = torch.tensor(event, dtype=torch.int64)
    return out


__all__ = ["BACKGROUND", "BOXES", "EVENT", "LABELS", "MAX_BOXES", "MAX_LABELS", "MAX_STEMS", "NUM_STEMS", "STEMS",
           "TARGETS", "SampleTruth", "clip_targets", "read_boxes_json", "read_stems", "segment_event",
           "synthetic_boxes", "window_event"]
