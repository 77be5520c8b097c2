"""A split decoded once into memory (``data.cache: memory``): windows then come from RAM.

Streaming decodes every training window again each epoch: on a small set and few cores
(the CPU recipes: 2,400 four-second 64² training videos on 2 cores) that decoding costs more
CPU than the model. With the cache, every video of a split is decoded once, whole (all
frames as uint8 RGB, the audio as samples), before the loader's workers start; the workers
fork after it is built and read its arrays without copying them (copy-on-write pages that
are only read). The shard order, shuffle, per-sample draws and window placement are the
streaming path's own (:class:`~avssl.data.stream.ShardStream` and
:class:`~avssl.data.sampling.ViewSampler` run unchanged on a :class:`DecodedMedia` instead of
a :class:`~avssl.data.decode.MediaReader`), so a cached run draws the same batches as a
streamed one. Memory: frames × height × width × 3 bytes per video, per process that builds
it (each rank of a multi-GPU run holds the whole split): for small sets, not for Kinetics.
"""
from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import webdataset as wds
from tqdm.auto import tqdm

from avssl.data.decode import (
    CONTAINER_FORMATS,
    DecodeError,
    FrameWindow,
    MediaReader,
    MonoResampler,
    PcmAudio,
    StreamInfo,
    open_sample_media,
    sample_video_entry,
)
from avssl.data.remote import is_local_path
from avssl.distributed import rank

# Sample entries that hold the media (decoded into the cache, their bytes dropped).
MEDIA_ENTRIES = (*CONTAINER_FORMATS, "pcm")
# The share of the machine's available memory one cached split may take.
MEMORY_SHARE = 0.8

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DecodedMedia:
    """One whole decoded video: what :class:`~avssl.data.decode.MediaReader` reads windows
    from, already in memory. ``frames`` T×H×W×3 uint8 in presentation order, ``pts`` their
    timestamps in units of ``time_base`` seconds, ``audio`` the samples (a PCM entry as
    stored, or the file's audio stream decoded to mono float32 once)."""

    info: StreamInfo
    frames: np.ndarray
    pts: np.ndarray
    time_base: float
    audio: PcmAudio | None
    constant_frame_rate: bool = False

    @property
    def nbytes(self) -> int:
        audio = self.audio.data if self.audio is not None else b""
        return self.frames.nbytes + self.pts.nbytes + (audio.nbytes if isinstance(audio, np.ndarray) else len(audio))

    def __enter__(self) -> "DecodedMedia":
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def read_frames(self, start_seconds: float, num_frames: int, fps: float) -> tuple[np.ndarray, float]:
        """:meth:`MediaReader.read_frames` from memory: the first frame whose timestamp is
        at or after ``start_seconds``, then the frames :class:`~avssl.data.decode.FrameWindow`
        picks among those the file reader would have decoded (the same frames, ties included)."""
        if not self.info.has_video:
            raise DecodeError("no video stream")
        target_pts = int(np.floor(start_seconds / self.time_base))
        first = int(np.searchsorted(self.pts, target_pts, side="left"))
        if first == len(self.pts):
            raise DecodeError(f"no video frame at or after {start_seconds:.3f}s")
        times = self.pts[first:] * self.time_base
        window = FrameWindow(float(times[0]), num_frames, fps, self.info.fps, self.constant_frame_rate)
        past = window.past(times)
        times = times[: int(np.argmax(past)) + 1 if past.any() else len(times)]  # where the file reader stops
        return self.frames[first + window.picks(times)], float(times[0])

    def read_audio(self, start_seconds: float, seconds: float, sample_rate: int) -> np.ndarray:
        if self.audio is None:
            raise DecodeError("no audio stream")
        return self.audio.read(start_seconds, seconds, sample_rate)


def decode_media(reader: MediaReader) -> DecodedMedia:
    """Decode the whole video of an opened reader (and its audio stream, unless the reader
    has a PCM entry in its place)."""
    info, frames, pts, time_base = reader.info, np.zeros((0, 0, 0, 3), np.uint8), np.zeros(0, np.int64), 1.0
    if reader.video is not None:
        time_base = float(reader.video.time_base)
        decoded = []
        try:
            for frame in reader.container.decode(reader.video):
                if frame.pts is not None:
                    decoded.append((frame.pts, frame.to_ndarray(format="rgb24", threads=1)))
        except Exception as error:  # av.FFmpegError: what was decoded before it is kept, as streaming does
            if not decoded:
                raise DecodeError(f"video decode failed: {error}") from error
        decoded.sort(key=lambda item: item[0])
        if decoded:
            pts = np.array([p for p, _ in decoded], np.int64)
            frames = np.stack([f for _, f in decoded])
    audio = reader.pcm
    if audio is None and reader.audio is not None:
        audio = _decoded_audio_stream(reader)
    return DecodedMedia(info=info, frames=frames, pts=pts, time_base=time_base, audio=audio,
                        constant_frame_rate=reader.constant_frame_rate)


def _decoded_audio_stream(reader: MediaReader) -> PcmAudio:
    """The file's whole audio stream as mono float32 at its own rate (windows are then cut,
    and resampled when asked for another rate, as from a PCM entry)."""
    stream = reader.audio
    rate = stream.codec_context.sample_rate
    reader.container.seek(0, stream=stream, backward=True, any_frame=False)
    resampler = MonoResampler(rate)
    chunks, first_time = [], None
    for frame in reader.container.decode(stream):
        if first_time is None:
            if frame.pts is None:
                continue
            first_time = float(frame.pts * stream.time_base)
        chunks.append(resampler(frame))
    chunks.append(resampler(None))
    if first_time is None:
        raise DecodeError("no audio in the audio stream")
    return PcmAudio(np.concatenate(chunks).astype(np.float32), rate, first_time)


def available_memory_bytes() -> int:
    """Memory the system can still give (Linux: MemAvailable; elsewhere free pages)."""
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


class DecodeCacheFull(MemoryError):
    """The decoded split would take more memory than ``data.cache=memory`` allows; the message
    says how to stream instead (the CLI prints it on one line, as a user's mistake)."""


class DecodedSplit:
    """Every sample of a split's shards, in the order streaming reads them, with its media
    decoded (:class:`DecodedMedia`, or the :class:`DecodeError` it raised, re-raised when
    the sample is drawn so that skips are counted as when streaming) and its other entries
    kept (``keep_entries``: every sidecar; otherwise the json alone)."""

    def __init__(self, files: tuple[str, ...], *, keep_entries: bool = False, description: str = "",
                 memory_limit: int | None = None) -> None:
        limit = int(MEMORY_SHARE * available_memory_bytes()) if memory_limit is None else memory_limit
        self.samples: dict[str, list[dict[str, Any]]] = {}
        self.nbytes = 0
        start = time.perf_counter()
        progress = tqdm(total=len(files), desc=f"decoding {description} into memory".replace("  ", " "),
                        unit="shard", leave=False)
        for url in files:
            samples = []
            for sample in wds.tarfile_to_samples(handler=wds.warn_and_continue)([{"url": url}]):
                cached = {k: v for k, v in sample.items()
                          if k.startswith("__") or k == "json" or (keep_entries and k not in MEDIA_ENTRIES)}
                cached["__media__"] = media = self._decode(sample)
                if isinstance(media, DecodedMedia):
                    self.nbytes += media.nbytes
                if self.nbytes > limit:
                    raise DecodeCacheFull(
                        f"data.cache=memory: the decoded {description or 'split'} passed {limit / 2**30:.1f} GiB "
                        f"({MEMORY_SHARE:.0%} of the memory available) at {url}:{sample.get('__key__')}; "
                        f"stream it instead (data.cache=none)")
                samples.append(cached)
            self.samples[url] = samples
            progress.update()
        progress.close()
        self.seconds = time.perf_counter() - start

    @staticmethod
    def _decode(sample: dict[str, Any]) -> DecodedMedia | DecodeError:
        try:
            key, container_format = sample_video_entry(sample)
            with open_sample_media(sample[key], json.loads(sample["json"]), container_format=container_format,
                                   pcm=sample.get("pcm")) as reader:
                return decode_media(reader)
        except Exception as error:  # a corrupt sample: kept as its error, skipped when drawn
            return error if isinstance(error, DecodeError) else DecodeError(str(error))

    @property
    def num_samples(self) -> int:
        return sum(len(s) for s in self.samples.values())

    def summary(self) -> str:
        failed = sum(not isinstance(s["__media__"], DecodedMedia) for v in self.samples.values() for s in v)
        return (f"{self.num_samples} samples decoded into memory ({self.nbytes / 2**30:.2f} GiB) in "
                f"{self.seconds:.0f} s" + (f", {failed} could not be decoded" if failed else ""))


# Splits decoded in this process, kept for the next run that asks for them (`make demo` pretrains
# four methods on the same shards in one process: one decode instead of four).
_DECODED: dict[tuple, DecodedSplit] = {}


def decoded_split(files: tuple[str, ...], *, keep_entries: bool = False, description: str = "") -> DecodedSplit:
    """``files`` decoded into memory, or the copy this process already holds of the same
    files (same paths, sizes and modification times; a URL or ``pipe:`` command: the same
    text, read once per process)."""
    key = (tuple((f, *_version(f)) for f in files), keep_entries)
    if key not in _DECODED:
        cached = DecodedSplit(files, keep_entries=keep_entries, description=description)
        if rank() == 0:  # every rank decodes its own copy; one line for them all
            log.info("data.cache=memory: %s: %s", description or "split", cached.summary())
        _DECODED[key] = cached
    return _DECODED[key]


def _version(spec: str) -> tuple[int, int]:
    """A local shard's size and modification time; (-1, -1) for a shard read from a server
    (:mod:`avssl.data.remote`), which webdataset's opener reads like a file."""
    if not is_local_path(spec):
        return -1, -1
    stat = os.stat(spec)
    return stat.st_size, stat.st_mtime_ns


def release_decoded() -> None:
    """Drop every split this process holds decoded (its memory goes back once no loader uses it)."""
    _DECODED.clear()


__all__ = ["DecodedMedia", "DecodedSplit", "available_memory_bytes", "decode_media", "decoded_split",
           "release_decoded"]
