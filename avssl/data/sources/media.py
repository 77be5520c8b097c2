"""Audio-only benchmark files as videos the shard writer accepts.

The shard writer packs videos (a file without a video stream is skipped as
``no video stream``), so an audio file (ESC-50's wavs, audio-only downloads of AudioSet or
VGG-Sound) is first written as a small Matroska file: the audio losslessly (FLAC, its own
rate, mono or stereo) and a video track that covers the whole audio, either black 16×16
frames or, for the localisation test sets released as frame + audio pairs, the still
image repeated. The shard writer then re-encodes it like any other video (a black track
costs almost nothing) and the reader needs no special case. ``annotation.json`` records
``"video": "blank"`` or ``"still"`` so an evaluation knows not to read the frames.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

BLANK_SIZE = 16  # pixels; the shard writer rescales to its short side anyway
STILL_CRF = 12  # the still image is encoded twice (here and by the shard writer): keep it near-lossless


def read_image(path: Path) -> np.ndarray:
    """The first frame of an image file as uint8 RGB (H, W, 3), cropped to even sides."""
    import av

    with av.open(str(path)) as container:
        frame = next(container.decode(video=0))
        rgb = frame.to_ndarray(format="rgb24")
    height, width = rgb.shape[0] // 2 * 2, rgb.shape[1] // 2 * 2
    if height == 0 or width == 0:
        raise ValueError(f"{path}: image too small ({rgb.shape[1]}x{rgb.shape[0]})")
    return np.ascontiguousarray(rgb[:height, :width])


def audio_to_video(audio: Path, target: Path, fps: float, image: Path | None = None) -> int:
    """Write ``target`` (.mkv): the audio of ``audio`` and a constant video track (black,
    or ``image``) at ``fps`` that lasts at least as long. Streams the audio; returns the
    number of audio samples written. Raises ValueError for a file without audio."""
    import av

    from avssl.data.decode import audio_resampler
    from avssl.data.encode import MediaWriter

    frame_rgb = read_image(image) if image is not None else np.zeros((BLANK_SIZE, BLANK_SIZE, 3), np.uint8)
    with av.open(str(audio)) as container:
        if not container.streams.audio:
            raise ValueError(f"{audio}: no audio stream")
        stream = container.streams.audio[0]
        rate = stream.rate or stream.codec_context.sample_rate
        channels = 1 if (stream.channels or 1) == 1 else 2  # more than 2 channels: downmixed to stereo
        resampler = audio_resampler("flt", "mono" if channels == 1 else "stereo", rate)
        writer = MediaWriter(
            target, width=frame_rgb.shape[1], height=frame_rgb.shape[0], fps=fps, sample_rate=rate,
            audio_channels=channels, audio_codec="flac", crf=STILL_CRF if image is not None else 23,
        )
        written = frames = 0

        def push(chunks: list) -> None:
            nonlocal written, frames
            for chunk in chunks:
                samples = chunk.to_ndarray().reshape(-1, channels).T  # packed flt → (channels, n)
                writer.add_audio(samples)
                written += samples.shape[1]
                while frames < math.ceil(written / rate * fps):  # keep the video level with the audio
                    writer.add_frame(frame_rgb)
                    frames += 1

        try:
            for decoded in container.decode(stream):
                push(resampler.resample(decoded))
            push(resampler.resample(None))
        finally:
            writer.close()
    if written == 0:
        Path(target).unlink(missing_ok=True)
        raise ValueError(f"{audio}: the audio stream holds no samples")
    return written
