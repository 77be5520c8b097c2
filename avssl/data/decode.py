"""Decoding windows from the bytes of one video with PyAV.

The recipe follows docs/decoding.md: open the in-memory file once, seek the video stream to
the keyframe before the window, skip non-reference frames until the window starts, keep
frames by presentation time, and cut the audio at the time of the first frame actually
returned (never at the requested time: a seek lands on a keyframe, docs/methods/avts.md).
Audio comes from the file's audio stream, or from raw PCM stored beside a video-only file
(:class:`PcmAudio`, the shard writer's default: no decode, no resampling).
"""
from __future__ import annotations

import io
from dataclasses import dataclass
from fractions import Fraction

import av
import numpy as np

from avssl.data.views import sample_count

# AAC frames overlap (MDCT): the first frame decoded after a seek is wrong, so audio seeks
# land this far before the window and the extra samples are trimmed by timestamp.
AUDIO_PREROLL_SECONDS = 0.25
# Video entries a shard sample may hold, and the FFmpeg demuxer each one is opened with.
CONTAINER_FORMATS = {"mp4": "mp4", "mov": "mov", "mkv": "matroska", "webm": "matroska"}


def audio_resampler(format: str, layout: str | av.AudioLayout, rate: int) -> av.AudioResampler:
    """swresample behind a filter graph that runs on the calling thread.

    By default PyAV gives a resampler's graph a pool of FFmpeg threads (one per core), which
    resampling does not use. A resampler left for the garbage collector when a DataLoader
    forks its workers (PyAV 18.1.1 leaves every one in a reference cycle) is then freed in a
    worker, where those threads do not exist, and the worker waits on them forever (a CI
    run hung this way). ``threads`` needs PyAV 18.1.1.
    """
    return av.AudioResampler(format=format, layout=layout, rate=rate, threads=1)


class MonoResampler:
    """Decoded audio frames → mono float32 at one rate; the one downmix path of avssl.

    The downmix is the plain mean of the channels (it never clips, and 5.1 or stereo give
    the same level as mono); the rate change is swresample's. The shard writer and the
    reader both use this class, so written and read audio share one gain (docs/decoding.md, pitfall 7).
    """

    def __init__(self, sample_rate: int) -> None:
        self.sample_rate = sample_rate
        self._resampler = audio_resampler("flt", "mono", sample_rate)

    def __call__(self, frame: av.AudioFrame | None) -> np.ndarray:
        """Samples out for one frame in (``None`` flushes); the output may lag the input."""
        chunks = [out.to_ndarray().reshape(-1) for out in self.frames(frame)]
        return np.concatenate(chunks) if chunks else np.zeros(0, np.float32)

    def frames(self, frame: av.AudioFrame | None) -> list[av.AudioFrame]:
        """Mono frames out, with their timestamps, for one frame in (``None`` flushes)."""
        if frame is not None and frame.layout.nb_channels > 1:
            samples = frame.to_ndarray()
            if not frame.format.is_planar:
                samples = samples.reshape(-1, frame.layout.nb_channels).T
            mono = av.AudioFrame.from_ndarray(
                samples.astype(np.float32).mean(axis=0, keepdims=True), format="flt", layout="mono"
            )
            mono.sample_rate, mono.pts, mono.time_base = frame.sample_rate, frame.pts, frame.time_base
            frame = mono
        return self._resampler.resample(frame)


class DecodeError(RuntimeError):
    """A sample that cannot give the asked window (corrupt, missing stream, too short)."""


@dataclass(frozen=True)
class StreamInfo:
    """What a reader needs to place windows, in seconds from the container's zero."""

    has_video: bool
    has_audio: bool
    video_start: float
    video_end: float
    audio_start: float
    audio_end: float
    fps: float
    width: int
    height: int
    sample_rate: int

    @property
    def start(self) -> float:
        """Start of the range where both streams (or the only one) have data."""
        starts = [s for s, ok in ((self.video_start, self.has_video), (self.audio_start, self.has_audio)) if ok]
        return max(starts)

    @property
    def end(self) -> float:
        ends = [e for e, ok in ((self.video_end, self.has_video), (self.audio_end, self.has_audio)) if ok]
        return min(ends)


@dataclass(frozen=True)
class PcmAudio:
    """Mono samples whose first sample plays at ``start`` seconds on the video's timeline:
    little-endian int16 bytes (a shard sample's ``pcm`` entry) or a float32 array (an audio
    stream decoded once, :mod:`avssl.data.cache`)."""

    data: bytes | np.ndarray
    sample_rate: int
    start: float = 0.0

    def __post_init__(self) -> None:
        if isinstance(self.data, np.ndarray):
            if self.data.dtype != np.float32 or self.data.ndim != 1:
                raise DecodeError(f"decoded audio must be a 1-d float32 array, got {self.data.dtype} {self.data.shape}")
        elif len(self.data) % 2:
            raise DecodeError(f"pcm entry has an odd number of bytes ({len(self.data)}): not int16 samples")
        if self.sample_rate <= 0:
            raise DecodeError(f"pcm sample rate must be positive, got {self.sample_rate}")

    @property
    def num_samples(self) -> int:
        return self.data.size if isinstance(self.data, np.ndarray) else len(self.data) // 2

    @property
    def end(self) -> float:
        return self.start + self.num_samples / self.sample_rate

    def read(self, start_seconds: float, seconds: float, sample_rate: int) -> np.ndarray:
        """Float32 waveform of ``seconds`` from ``start_seconds`` at ``sample_rate``; zeros
        outside the stored range. Another rate is resampled (torchaudio, windowed sinc)."""
        rate = self.sample_rate
        count = sample_count(seconds, rate)
        first = sample_count(start_seconds - self.start, rate)
        if isinstance(self.data, np.ndarray):
            samples, scale = self.data, np.float32(1)
        else:
            samples, scale = np.frombuffer(self.data, dtype="<i2"), np.float32(1 / 32768)
        out = np.zeros(count, np.float32)
        lo, hi = max(first, 0), min(first + count, samples.size)
        if hi > lo:
            out[lo - first : hi - first] = samples[lo:hi] * scale
        if sample_rate == rate:
            return out
        import torch
        import torchaudio.functional

        resampled = torchaudio.functional.resample(torch.from_numpy(out), rate, sample_rate).numpy()
        wanted = sample_count(seconds, sample_rate)
        return np.pad(resampled[:wanted], (0, max(wanted - resampled.size, 0)))


class FrameWindow:
    """Which decoded frames make a window of ``num_frames`` at ``fps`` that starts with the
    frame at ``t_first``: the rule :class:`MediaReader` decodes by, and the in-memory reader
    (:mod:`avssl.data.cache`) reuses, so that both pick the same frames, ties included.

    Half a source frame of tolerance says which frame is "on screen" at a time. The last
    wanted frame is the last one to start by (last wanted time + tolerance). Variable rate:
    known only once a later frame shows up. Constant rate: the frame that starts within a
    tolerance of the last wanted time is it (the next starts 2 × later); so at an exact tie
    (10 fps read from 25) the earlier frame is picked.
    """

    def __init__(self, t_first: float, num_frames: int, fps: float, source_fps: float, constant_frame_rate: bool
                 ) -> None:
        self.num_frames, self.fps = num_frames, fps
        self.tolerance = 0.5 / (source_fps or fps)
        self.constant_frame_rate = constant_frame_rate
        margin = -self.tolerance if constant_frame_rate else self.tolerance
        self.stop_time = t_first + (num_frames - 1) / fps + margin

    def past(self, t: float | np.ndarray) -> bool | np.ndarray:
        """Whether a frame starting at ``t`` ends the decoding (it is the last one needed)."""
        return t > self.stop_time if self.constant_frame_rate else t >= self.stop_time

    def picks(self, times_sorted: np.ndarray) -> np.ndarray:
        """Index into ``times_sorted`` (the decoded frames' start times, ascending, the first
        one the window's first frame) of the frame on screen at each wanted time
        ``times_sorted[0] + k / fps``: the last one that started by then (past the end the
        last frame repeats)."""
        wanted = float(times_sorted[0]) + np.arange(self.num_frames) / self.fps
        picks = np.searchsorted(times_sorted, wanted + self.tolerance, side="right") - 1
        return np.clip(picks, 0, len(times_sorted) - 1)


def open_sample_media(data: bytes, meta: dict, *, container_format: str | None = None, pcm: bytes | None = None
                      ) -> "MediaReader":
    """The reader of one shard sample: its video ``data``, its raw ``pcm`` entry if it has
    one (rate and start from the json ``meta``), constant-rate when the json says so."""
    audio = None
    if pcm is not None:
        if not meta.get("sample_rate"):
            raise DecodeError("the sample has a pcm entry but its json gives no sample_rate")
        audio = PcmAudio(pcm, int(meta["sample_rate"]), float(meta.get("audio_start", 0.0)))
    # A json with "fps" comes from `avssl shards`, which writes constant-rate video.
    return MediaReader(data, container_format=container_format, pcm=audio, constant_frame_rate=bool(meta.get("fps")))


def sample_video_entry(sample: dict) -> tuple[str, str]:
    """(entry name, FFmpeg demuxer) of a shard sample's video file."""
    key = next((k for k in CONTAINER_FORMATS if k in sample), None)
    if key is None:
        raise ValueError(f"sample {sample.get('__key__')} has no video entry")
    return key, CONTAINER_FORMATS[key]


def _seconds(value: int | None, time_base: Fraction | None) -> float | None:
    if value is None or time_base is None:
        return None
    return float(value * time_base)


class MediaReader:
    """One opened in-memory video; decode any number of windows from it.

    ``container_format`` (e.g. ``"mp4"``) skips format probing, paid on every open
    (docs/benchmarks.md).
    ``pcm`` replaces the file's audio stream, if any, as the audio source.
    ``constant_frame_rate`` (true of every video ``avssl shards`` writes) lets a window stop
    decoding at its last frame instead of one frame past it.
    """

    def __init__(self, data: bytes, *, container_format: str | None = None, pcm: PcmAudio | None = None,
                 constant_frame_rate: bool = False) -> None:
        self.constant_frame_rate = constant_frame_rate
        try:
            self.container = av.open(io.BytesIO(data), mode="r", format=container_format)
        except av.FFmpegError as error:
            raise DecodeError(f"cannot open: {error}") from error
        self.pcm = pcm
        self.video = self.container.streams.video[0] if self.container.streams.video else None
        has_stream = bool(self.container.streams.audio) and pcm is None
        self.audio = self.container.streams.audio[0] if has_stream else None
        if self.video is not None:
            ctx = self.video.codec_context
            ctx.thread_type = "SLICE"
            ctx.thread_count = 1
        self.info = self._probe()

    def close(self) -> None:
        self.container.close()

    def __enter__(self) -> "MediaReader":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _probe(self) -> StreamInfo:
        container_duration = (self.container.duration or 0) / av.time_base
        v0 = v1 = a0 = a1 = 0.0
        fps, width, height, sample_rate = 0.0, 0, 0, 0
        if self.video is not None:
            tb = self.video.time_base
            v0 = _seconds(self.video.start_time, tb) or 0.0
            duration = _seconds(self.video.duration, tb) or container_duration
            v1 = v0 + duration
            rate = self.video.average_rate or self.video.guessed_rate or self.video.base_rate
            fps = float(rate) if rate else 25.0
            width, height = self.video.codec_context.width, self.video.codec_context.height
        if self.audio is not None:
            tb = self.audio.time_base
            a0 = _seconds(self.audio.start_time, tb) or 0.0
            duration = _seconds(self.audio.duration, tb) or container_duration
            a1 = a0 + duration
            sample_rate = self.audio.codec_context.sample_rate
        elif self.pcm is not None:
            a0, a1, sample_rate = self.pcm.start, self.pcm.end, self.pcm.sample_rate
        return StreamInfo(
            has_video=self.video is not None,
            has_audio=self.audio is not None or self.pcm is not None,
            video_start=v0,
            video_end=v1,
            audio_start=a0,
            audio_end=a1,
            fps=fps,
            width=width,
            height=height,
            sample_rate=sample_rate,
        )

    def read_frames(self, start_seconds: float, num_frames: int, fps: float) -> tuple[np.ndarray, float]:
        """``num_frames`` RGB frames (T×H×W×3 uint8) at ``fps`` from ``start_seconds``.

        Returns the frames and the time of the first frame returned (the first frame whose
        presentation time is at or after ``start_seconds``). Each later frame is the one on
        screen at ``t_first + k / fps``. Past the end of the stream the last frame repeats.
        """
        if self.video is None:
            raise DecodeError("no video stream")
        stream = self.video
        # float arithmetic: Fraction products are slow, and this runs for every frame (docs/benchmarks.md)
        tb = float(stream.time_base)
        target_pts = int(np.floor(start_seconds / tb))
        self.container.seek(max(target_pts, 0), stream=stream, backward=True, any_frame=False)
        ctx = stream.codec_context
        # Before the window, frames no other frame refers to (B-frames) are not decoded.
        # The flag is tracked locally: reading ctx.skip_frame builds an enum each time.
        ctx.skip_frame = "NONREF"
        skipping = True
        times: list[float] = []
        frames: list[av.VideoFrame] = []
        window: FrameWindow | None = None  # set by the first frame
        latest = -float("inf")
        try:
            for packet in self.container.demux(stream):
                if skipping and packet.pts is not None and packet.pts >= target_pts:
                    ctx.skip_frame = "DEFAULT"
                    skipping = False
                for frame in packet.decode():
                    pts = frame.pts
                    if pts is None or pts < target_pts:
                        continue
                    t = pts * tb
                    if window is None:
                        window = FrameWindow(t, num_frames, fps, self.info.fps, self.constant_frame_rate)
                    times.append(t)
                    frames.append(frame)
                    latest = max(latest, t)
                if window is not None and window.past(latest):
                    break
        except av.FFmpegError as error:
            if not frames:
                raise DecodeError(f"video decode failed: {error}") from error
        finally:
            if skipping:
                ctx.skip_frame = "DEFAULT"
        if not frames:
            raise DecodeError(f"no video frame at or after {start_seconds:.3f}s")
        order = np.argsort(times, kind="stable")
        times_sorted = np.asarray(times)[order]
        out = np.stack([frames[order[i]].to_ndarray(format="rgb24", threads=1) for i in window.picks(times_sorted)])
        return out, float(times_sorted[0])

    def read_audio(self, start_seconds: float, seconds: float, sample_rate: int) -> np.ndarray:
        """Mono float32 waveform of ``seconds`` from ``start_seconds``, at ``sample_rate``.

        Downmix and resampling go through :class:`MonoResampler`, the path the shard
        writer uses too.
        Samples past the end of the stream are zeros.
        """
        if self.pcm is not None:
            return self.pcm.read(start_seconds, seconds, sample_rate)
        if self.audio is None:
            raise DecodeError("no audio stream")
        stream = self.audio
        num_samples = sample_count(seconds, sample_rate)
        seek_seconds = max(start_seconds - AUDIO_PREROLL_SECONDS, 0.0)
        self.container.seek(int(seek_seconds / stream.time_base), stream=stream, backward=True, any_frame=False)
        resampler = MonoResampler(sample_rate)
        chunks: list[np.ndarray] = []
        first_time: float | None = None
        collected = 0
        end_seconds = start_seconds + seconds
        try:
            for packet in self.container.demux(stream):
                for frame in packet.decode():
                    if first_time is None:
                        if frame.pts is None:
                            continue
                        first_time = float(frame.pts * stream.time_base)
                    chunk = resampler(frame)
                    chunks.append(chunk)
                    collected += chunk.size
                if first_time is not None and first_time + collected / sample_rate >= end_seconds + 0.05:
                    break
            else:
                chunks.append(resampler(None))
        except av.FFmpegError as error:
            if not chunks:
                raise DecodeError(f"audio decode failed: {error}") from error
        if first_time is None:
            raise DecodeError(f"no audio at {start_seconds:.3f}s")
        samples = np.concatenate(chunks) if chunks else np.zeros(0, np.float32)
        offset = sample_count(start_seconds - first_time, sample_rate)
        out = np.zeros(num_samples, np.float32)
        src_lo, dst_lo = max(offset, 0), max(-offset, 0)
        n = max(min(num_samples - dst_lo, samples.size - src_lo), 0)
        out[dst_lo : dst_lo + n] = samples[src_lo : src_lo + n]
        return out
