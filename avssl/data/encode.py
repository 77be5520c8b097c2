"""Writing mp4 (or other containers) with PyAV: one streaming writer shared by the
synthetic-set generator, the shard writer and the tests that make odd clips.

Audio is given as float32 in [-1, 1], shaped (channels, samples); video as uint8 RGB
frames (H, W, 3). Timestamps are in seconds; by default frames are constant-rate.
"""
from __future__ import annotations

import io
from fractions import Fraction
from pathlib import Path
from typing import BinaryIO, Sequence

import av
import numpy as np

AUDIO_LAYOUTS = {1: "mono", 2: "stereo", 6: "5.1"}


class MediaWriter:
    """Streaming writer: add video frames and audio chunks in any interleaving.

    ``video_codec=None`` or ``audio_codec=None`` leaves that stream out.
    ``gop_frames`` fixes the keyframe interval (no scene-cut keyframes), which is what
    makes seeking cheap for readers (docs/decoding.md).
    """

    def __init__(
        self,
        target: str | Path | BinaryIO,
        *,
        width: int,
        height: int,
        fps: float,
        sample_rate: int | None = None,
        audio_channels: int = 1,
        video_codec: str | None = "libx264",
        audio_codec: str | None = "aac",
        gop_frames: int | None = None,
        crf: int = 23,
        audio_bitrate: int = 64_000,
        container_format: str | None = None,
        pix_fmt: str = "yuv420p",
    ) -> None:
        if isinstance(target, (str, Path)):
            self._container = av.open(str(target), mode="w", format=container_format)
        else:
            self._container = av.open(target, mode="w", format=container_format or "mp4")
        self.fps = Fraction(fps).limit_denominator(1001)
        self.video = None
        self.audio = None
        self._next_video_index = 0
        if video_codec is not None:
            self.video = self._container.add_stream(video_codec, rate=self.fps)
            self.video.width = width
            self.video.height = height
            self.video.pix_fmt = pix_fmt
            # A fine time base carries variable frame rates; mpeg4 caps it at 2^16-1.
            time_base = Fraction(1, 90_000) if video_codec == "libx264" else Fraction(1, 1000)
            self.video.time_base = time_base
            self.video.codec_context.time_base = time_base
            options: dict[str, str] = {}
            if video_codec == "libx264":
                options = {"crf": str(crf), "preset": "veryfast", "threads": "1"}
                # No B-frame pyramid: every B-frame is then a non-reference frame, which a
                # reader seeking into a GOP skips without decoding (3 of every 4 frames
                # before the window instead of 2 of 4 with x264's default pyramid).
                # No macroblock-tree rate control: with it, this build of x264 gave other
                # bytes for the same frames on a second encode in one process (memory it
                # reads before writing; `threads`, lookahead and psy options do not stop
                # it), so neither the synthetic set nor the shards would be reproducible.
                # Off, the same crf gives ~60 % larger, ~0.6 dB better files (docs/data-format.md).
                params = ["b-pyramid=none", "mbtree=0"]
                if gop_frames:
                    params += [f"keyint={gop_frames}", f"min-keyint={gop_frames}", "scenecut=0"]
                options["x264-params"] = ":".join(params)
            elif gop_frames:
                self.video.codec_context.gop_size = gop_frames
            self.video.options = options
            if video_codec != "libx264":
                self.video.codec_context.bit_rate = 1_000_000
        if audio_codec is not None:
            if sample_rate is None:
                raise ValueError("sample_rate is required when writing audio")
            if audio_channels not in AUDIO_LAYOUTS:
                raise ValueError(f"audio_channels must be one of {sorted(AUDIO_LAYOUTS)}")
            self.audio = self._container.add_stream(audio_codec, rate=sample_rate)
            self.audio.layout = AUDIO_LAYOUTS[audio_channels]
            if audio_codec not in ("flac", "pcm_s16le"):
                self.audio.bit_rate = audio_bitrate
            self._audio_channels = audio_channels
            self._audio_samples_written = 0

    def add_frame(self, rgb: np.ndarray, time_seconds: float | None = None) -> None:
        """Add one RGB frame; ``time_seconds`` gives its presentation time (VFR)."""
        if self.video is None:
            raise RuntimeError("this writer has no video stream")
        self._encode_frame(av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24"), time_seconds)

    def add_video_frame(self, frame: av.VideoFrame, time_seconds: float | None = None) -> None:
        """Add a PyAV frame as it is, e.g. one reformatted straight to the stream's size and
        pixel format: no RGB round trip (to_ndarray, from_ndarray and the encoder's RGB→YUV
        conversion cost the shard writer ~10 % of its time on 360p input). ``time_seconds``
        as for :meth:`add_frame`; the frame's pts and type are overwritten."""
        if self.video is None:
            raise RuntimeError("this writer has no video stream")
        frame.pict_type = av.video.frame.PictureType.NONE  # a decoder's type would force x264's choice
        self._encode_frame(frame, time_seconds)

    def _encode_frame(self, frame: av.VideoFrame, time_seconds: float | None) -> None:
        if time_seconds is None:
            time_seconds = self._next_video_index / self.fps
        frame.time_base = self.video.time_base
        frame.pts = int(round(time_seconds / self.video.time_base))
        self._next_video_index += 1
        for packet in self.video.encode(frame):
            self._container.mux(packet)

    def add_audio(self, samples: np.ndarray) -> None:
        """Append float samples shaped (channels, n) in [-1, 1]."""
        if self.audio is None:
            raise RuntimeError("this writer has no audio stream")
        samples = np.asarray(samples, dtype=np.float32)
        if samples.ndim == 1:
            samples = samples[None]
        if samples.shape[0] != self._audio_channels:
            raise ValueError(f"expected {self._audio_channels} channels, got {samples.shape[0]}")
        if samples.shape[1] == 0:
            return
        # Packed float is accepted by every layout; the encoder converts to its own format.
        packed = np.ascontiguousarray(samples.T).reshape(1, -1)
        frame = av.AudioFrame.from_ndarray(packed, format="flt", layout=AUDIO_LAYOUTS[self._audio_channels])
        frame.sample_rate = self.audio.rate
        frame.pts = self._audio_samples_written
        frame.time_base = Fraction(1, self.audio.rate)
        self._audio_samples_written += samples.shape[1]
        for packet in self.audio.encode(frame):
            self._container.mux(packet)

    def close(self) -> None:
        if self.video is not None:
            for packet in self.video.encode(None):
                self._container.mux(packet)
        if self.audio is not None:
            for packet in self.audio.encode(None):
                self._container.mux(packet)
        self._container.close()

    def __enter__(self) -> "MediaWriter":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def write_media(
    target: str | Path | BinaryIO | None,
    frames: np.ndarray | Sequence[np.ndarray] | None,
    fps: float,
    audio: np.ndarray | None = None,
    sample_rate: int | None = None,
    *,
    frame_times: Sequence[float] | None = None,
    **writer_options: object,
) -> bytes | None:
    """Write whole arrays at once: frames (T, H, W, 3) uint8 and audio (C, N) float.

    With ``target=None`` the file is written to memory and its bytes are returned.
    """
    buffer = io.BytesIO() if target is None else None
    if frames is None or len(frames) == 0:
        writer_options.setdefault("video_codec", None)
        height = width = 16
    else:
        height, width = frames[0].shape[:2]
    if audio is None:
        writer_options.setdefault("audio_codec", None)
        channels = 1
    else:
        audio = np.asarray(audio, dtype=np.float32)
        channels = 1 if audio.ndim == 1 else audio.shape[0]
    with MediaWriter(
        buffer if buffer is not None else target,
        width=width,
        height=height,
        fps=fps,
        sample_rate=sample_rate,
        audio_channels=channels,
        **writer_options,  # type: ignore[arg-type]
    ) as writer:
        if writer.audio is not None and audio is not None:
            writer.add_audio(audio)
        if writer.video is not None and frames is not None:
            for i, frame in enumerate(frames):
                writer.add_frame(frame, None if frame_times is None else frame_times[i])
    return buffer.getvalue() if buffer is not None else None
