"""ViewSampler: turn one shard sample (mp4 bytes + json) into the windows a task declared.

Window placement follows docs/design.md: the video window comes first; every audio window is
placed relative to the first frame actually returned, inside the range where both streams
have data, and never padded differently from the positive.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from avssl.data.decode import DecodeError, MediaReader, StreamInfo, open_sample_media
from avssl.data.targets import SampleTruth, clip_targets
from avssl.data.transforms import AugmentSettings, VideoTransform
from avssl.data.views import AUDIO, CLIP, INDEX, LABEL, T_VIDEO, VIDEO, AudioView, ViewSpec

if TYPE_CHECKING:
    from avssl.data.cache import DecodedMedia


def _valid_range(info: StreamInfo, meta: dict[str, Any]) -> tuple[float, float]:
    lo, hi = info.start, info.end
    if meta.get("duration"):
        # Decoded AAC runs past the nominal end (padding): trust the writer's duration.
        hi = min(hi, lo + float(meta["duration"]))
    return lo, hi


def _uniform_in_union(rng: np.random.Generator, intervals: list[tuple[float, float]]) -> float | None:
    """A uniform draw over a union of disjoint closed intervals, None when all are empty."""
    spans = [(a, b) for a, b in intervals if b >= a]
    if not spans:
        return None
    lengths = np.array([b - a for a, b in spans])
    if lengths.sum() <= 0:
        return spans[0][0]
    u = rng.uniform(0, lengths.sum())
    for (a, _), length in zip(spans, lengths):
        if u <= length:
            return a + u
        u -= length
    return spans[-1][1]


def shifted_window_intervals(view: AudioView, aligned_start: float, lo: float, hi: float
                             ) -> list[tuple[float, float]]:
    """Where a same-video audio window at the shift ``view.offset`` asks for may start
    (closed intervals; one with end < start is empty)."""
    length = view.seconds
    last = hi - length
    if view.offset == "shifted":
        gap = max(length, view.min_shift_seconds)
        intervals = [(lo, min(aligned_start - gap, last)), (max(aligned_start + gap, lo), last)]
    else:  # overlapping: shift in [min_shift, length) either way
        eps = 1e-3
        intervals = [
            (max(aligned_start - length + eps, lo), min(aligned_start - view.min_shift_seconds, last)),
            (max(aligned_start + view.min_shift_seconds, lo), min(aligned_start + length - eps, last)),
        ]
    return intervals


def shifted_window_start(
    rng: np.random.Generator, view: AudioView, aligned_start: float, lo: float, hi: float
) -> float | None:
    """Start of a same-video audio window at the shift ``view.offset`` asks for, drawn
    uniformly where it may start; None when it fits nowhere."""
    return _uniform_in_union(rng, shifted_window_intervals(view, aligned_start, lo, hi))


_ANCHOR_DRAWS = 20


@dataclass(frozen=True)
class ClipLayout:
    """Where a clip's windows sit, in seconds from its first video frame (one place for the
    arithmetic): the video window, each aligned audio window centred on it, and the aligned
    positive's place that a same-video negative is drawn around (:func:`shifted_window_start`)."""

    video_seconds: float
    aligned_seconds: float | None  # the aligned positive ("audio"), None without one

    @classmethod
    def of(cls, spec: ViewSpec) -> "ClipLayout":
        aligned = spec.audio.get(AUDIO)
        return cls(spec.video.seconds if spec.video else 0.0, aligned.seconds if aligned is not None else None)

    def centred(self, seconds: float) -> float:
        """Start of an audio window of ``seconds`` centred on the video window."""
        return (self.video_seconds - seconds) / 2

    def reference(self, view: AudioView) -> float:
        """Start of the window a same-video negative ``view`` is placed against: the aligned
        positive's, or without one a window of its own length centred on the video."""
        return self.centred(self.aligned_seconds if self.aligned_seconds is not None else view.seconds)

    def extent(self) -> tuple[float, float]:
        """Extent of the video window and its aligned audio."""
        if self.aligned_seconds is None:
            return 0.0, self.video_seconds
        offset = self.centred(self.aligned_seconds)
        return min(0.0, offset), max(self.video_seconds, offset + self.aligned_seconds)


class ViewSampler:
    """Decode the views of ``spec`` from one sample; training draws random windows and
    crops at random, evaluation takes ``clips_per_video`` evenly spaced windows and centre
    crops. Yields uint8 video and 1×N waveforms: :class:`~avssl.data.transforms.BatchTransform`
    finishes the batch on the device."""

    def __init__(self, spec: ViewSpec, train: bool, augment: AugmentSettings = AugmentSettings()) -> None:
        self.spec = spec
        self.train = train
        self.video_transform = VideoTransform(spec.video.size, train, augment) if spec.video else None
        self.layout = ClipLayout.of(spec)
        # same-video negative views (AVTS) and the start of the window each is placed against
        self._negative_views = [(view, self.layout.reference(view))
                                for view in spec.audio.values() if view.offset != "aligned"]

    def _anchor_starts(self, lo: float, hi: float, rng: np.random.Generator) -> list[float]:
        left, right = self.layout.extent()
        first, last = lo - left, hi - right
        if last < first:  # clip shorter than the window: start at the beginning, pad the end
            return [first] * (1 if self.train else self.spec.clips_per_video)
        if self.train:
            # Draw until every same-video negative view (AVTS) fits beside the positive.
            for _ in range(_ANCHOR_DRAWS):
                start = float(rng.uniform(first, last))
                if self._negatives_fit(start, lo, hi):
                    return [start]
            return [start]  # the clip is (nearly) too short: _decode_clip says so
        n = self.spec.clips_per_video
        return [first + (last - first) * (k + 0.5) / n for k in range(n)]

    def _negatives_fit(self, start: float, lo: float, hi: float) -> bool:
        return all(any(b >= a for a, b in shifted_window_intervals(view, start + offset, lo, hi))
                   for view, offset in self._negative_views)

    def __call__(
        self, data: bytes, meta: dict[str, Any], rng: np.random.Generator, *,
        container_format: str | None = None, pcm: bytes | None = None, entries: dict[str, bytes] | None = None,
    ) -> list[dict[str, torch.Tensor]]:
        """The clips of one sample: ``data`` is the video file, ``meta`` its json, ``pcm``
        the sample's raw audio entry if it has one (rate and start from ``meta``),
        ``entries`` its sidecars by entry name (ground truth for ``spec.targets``)."""
        with open_sample_media(data, meta, container_format=container_format, pcm=pcm) as reader:
            return self.clips(reader, meta, rng, entries)

    def clips(self, reader: MediaReader | DecodedMedia, meta: dict[str, Any], rng: np.random.Generator,
              entries: dict[str, bytes] | None = None) -> list[dict[str, torch.Tensor]]:
        """The clips of one sample from an opened reader (a file being decoded, or one
        decoded into memory: :mod:`avssl.data.cache`)."""
        info = reader.info
        if self.spec.video and not info.has_video:
            raise DecodeError("no video stream")
        if self.spec.audio and not info.has_audio:
            raise DecodeError("no audio stream")
        lo, hi = _valid_range(info, meta)
        truth = SampleTruth(entries or {}, meta, self.spec.mel.sample_rate) if self.spec.targets else None
        return [self._decode_clip(reader, start, lo, hi, rng, meta, clip_number, truth)
                for clip_number, start in enumerate(self._anchor_starts(lo, hi, rng))]

    def _decode_clip(
        self, reader: MediaReader | DecodedMedia, start: float, lo: float, hi: float, rng: np.random.Generator,
        meta: dict[str, Any], clip_number: int, truth: SampleTruth | None,
    ) -> dict[str, torch.Tensor]:
        sample: dict[str, torch.Tensor] = {
            INDEX: torch.tensor(int(meta.get("index", -1)), dtype=torch.int64),
            LABEL: torch.tensor(int(meta.get("label", -1) if meta.get("label") is not None else -1), dtype=torch.int64),
            CLIP: torch.tensor(clip_number, dtype=torch.int64),
        }
        t_video = start
        crop = None
        if self.spec.video is not None:
            view = self.spec.video
            frames, t_video = reader.read_frames(start, view.num_frames, view.fps)
            sample[VIDEO], crop = self.video_transform.apply(torch.from_numpy(frames))
        sample[T_VIDEO] = torch.tensor(t_video, dtype=torch.float32)
        for name, view in self.spec.audio.items():
            if view.offset == "aligned":
                audio_start = t_video + self.layout.centred(view.seconds)
            else:
                audio_start = shifted_window_start(rng, view, t_video + self.layout.reference(view), lo, hi)
                if audio_start is None:
                    raise DecodeError(f"too short for a {view.offset} window of {view.seconds}s")
            waveform = reader.read_audio(audio_start, view.seconds, self.spec.mel.sample_rate)
            sample[name] = torch.from_numpy(waveform).unsqueeze(0)  # 1×N; log-mel on the device batch
            sample["t_" + name] = torch.tensor(audio_start, dtype=torch.float32)
        if truth is not None:
            aligned = self.spec.audio.get(AUDIO)
            audio_window = (float(sample["t_" + AUDIO]), aligned.seconds) if aligned else None
            # boxes at the middle frame of the window
            video = self.spec.video
            middle = t_video + ((video.num_frames - 1) // 2) / video.fps if video else t_video
            sample.update(clip_targets(self.spec.targets, truth, crop, (reader.info.width, reader.info.height),
                                       middle, audio_window))
        return sample


__all__ = ["ClipLayout", "ViewSampler", "shifted_window_intervals", "shifted_window_start"]
