"""The batch contract, documented in one place, and the view specs tasks declare.

A batch is a dict of tensors with these names:

=================  ==========================  ===========================================
key                shape / dtype               meaning
=================  ==========================  ===========================================
``video``          B×C×T×H×W float32           normalised frames (C=3)
``audio``          B×1×F×Ta float32            log-mel of the aligned audio window, or
                   B×1×N float32               the waveform (``representation="waveform"``)
``<name>``         as ``audio``                each extra audio view a task declares
                                               (e.g. ``audio_hard`` for AVTS negatives)
``index``          B int64                     dataset-wide instance id (shard json ``index``)
``label``          B int64                     class id, −1 when unknown
``clip``           B int64                     clip number within its video (evaluation)
``t_video``        B float32                   start of the first returned frame (seconds)
``t_audio``        B float32                   start of the aligned audio window (seconds)
``t_<name>``       B float32                   start of each extra audio view
``skipped``        1 int64                     samples of the worker's share that were lost
                                               since its previous batch: undecodable, or
                                               never read (missing or damaged shard)
``expected``       1 int64                     samples of the worker's share settled since
                                               its previous batch (decoded or lost): summed
                                               over an epoch, what the manifest promised
``boxes``          B×4×4 float32               sounding-object boxes (x0, y0, x1, y1) in
                                               output-frame pixels, NaN rows unused
                                               (target ``boxes``, evaluation)
``stems``          B×2×N float32               clean source waveforms of the aligned audio
``num_stems``      B int64                     window, zero rows unused (target ``stems``)
``event``          B int64                     category heard in the audio window, −1 none
                                               (target ``event``; avssl/data/targets.py)
``labels``         B×32 int64                  class indices of a multi-label sample, −1
                                               padded (target ``labels``)
=================  ==========================  ===========================================

The loader's workers yield ``video`` as uint8 and every audio view as a B×1×N waveform;
:class:`~avssl.data.transforms.BatchTransform` finishes them on the device (colour jitter,
normalisation, gain, log-mel, masks): AVDataModule does it in ``on_after_batch_transfer``,
feature extraction right after loading. A task only ever sees finished batches.

A task declares a :class:`ViewSpec`; the data module decodes exactly those windows, so no
task decodes video itself.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any, NamedTuple, TypeVar

VIDEO = "video"
AUDIO = "audio"
INDEX = "index"
LABEL = "label"
CLIP = "clip"
T_VIDEO = "t_video"
T_AUDIO = "t_audio"
SKIPPED = "skipped"
EXPECTED = "expected"

TARGET_NAMES = ("boxes", "stems", "event", "labels")  # avssl/data/targets.py
AUDIO_OFFSETS = ("aligned", "shifted", "overlapping")
AUDIO_REPRESENTATIONS = ("logmel", "waveform")


@dataclass(frozen=True)
class VideoView:
    """``num_frames`` frames at ``fps``, cropped to ``size``×``size``."""

    num_frames: int = 16
    fps: float = 25.0
    size: int = 112

    @property
    def seconds(self) -> float:
        return self.num_frames / self.fps


@dataclass(frozen=True)
class AudioView:
    """An audio window placed relative to the video window.

    ``aligned``: centred on the video window (a positive).
    ``shifted``: same video, not overlapping the aligned window, at least
    ``min_shift_seconds`` away from it (AVTS hard negative).
    ``overlapping``: same video, shifted by between ``min_shift_seconds`` and the window
    length, so it partly overlaps the aligned window (AVTS super-hard negative).
    """

    seconds: float = 1.0
    offset: str = "aligned"  # one of AUDIO_OFFSETS
    min_shift_seconds: float = 0.5
    representation: str = "logmel"  # one of AUDIO_REPRESENTATIONS

    def __post_init__(self) -> None:
        if self.offset not in AUDIO_OFFSETS:
            raise ValueError(f"audio offset must be one of {AUDIO_OFFSETS}, got {self.offset!r}")
        if self.representation not in AUDIO_REPRESENTATIONS:
            raise ValueError(f"audio representation must be one of {AUDIO_REPRESENTATIONS}, "
                             f"got {self.representation!r}")
        if self.seconds <= 0:
            raise ValueError(f"audio window seconds must be positive, got {self.seconds}")


def sample_count(seconds: float, rate: float) -> int:
    """Samples in ``seconds`` at ``rate``, to the nearest: the one rule for where an audio
    window starts and how long it is (the decoders, the targets, the spectrogram's window and hop)."""
    return int(round(seconds * rate))


@dataclass(frozen=True)
class MelSettings:
    """Log-mel front end (torchaudio ``MelSpectrogram`` + log)."""

    sample_rate: int = 16000
    n_mels: int = 64
    window_seconds: float = 0.025
    hop_seconds: float = 0.010
    n_fft: int = 512
    log_offset: float = 1e-6

    def num_frames(self, seconds: float) -> int:
        return sample_count(seconds, self.sample_rate) // sample_count(self.hop_seconds, self.sample_rate) + 1


@dataclass(frozen=True)
class ViewSpec:
    """The windows a task needs from each video.

    ``audio`` maps a batch key to its window; the key ``"audio"`` is the aligned positive.
    ``clips_per_video`` applies at evaluation: that many windows spread evenly over each
    video, each a sample of its own (``clip`` tells them apart). ``targets`` names the
    ground truth to read beside the windows (``boxes``, ``stems``, ``event``).
    """

    video: VideoView | None = VideoView()
    audio: dict[str, AudioView] = field(default_factory=lambda: {AUDIO: AudioView()})
    mel: MelSettings = MelSettings()
    clips_per_video: int = 1
    targets: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.video is None and not self.audio:
            raise ValueError("a ViewSpec needs a video view, an audio view or both")
        for name, view in self.audio.items():
            if name != AUDIO and not name.startswith(AUDIO + "_"):
                raise ValueError(f"audio view names must be 'audio' or start with 'audio_', got {name!r}")
            if view.offset == "overlapping" and view.min_shift_seconds >= view.seconds:
                raise ValueError(f"{name}: an overlapping window needs min_shift_seconds < seconds")
        unknown = sorted(set(self.targets) - set(TARGET_NAMES))
        if unknown:
            raise ValueError(f"unknown targets {unknown}; known: {list(TARGET_NAMES)}")


Config = TypeVar("Config")  # a dataclass with video / audio / mel fields (DataConfig)


class InputViews(NamedTuple):
    """The input windows an exported encoder pair was trained on (model.json's ``inputs``);
    None where the export has no encoder of that modality."""

    video: VideoView | None
    audio: AudioView | None
    mel: MelSettings | None

    def applied_to(self, data: Config) -> Config:
        """``data`` (a DataConfig) with these windows in place of the recipe's, where the
        export sets them: encoders are evaluated on the clip they were pretrained on."""
        return replace(data, **{k: v for k, v in self._asdict().items() if v is not None})  # type: ignore[type-var]


def input_views(inputs: Mapping[str, Any]) -> InputViews:
    """model.json's ``inputs`` block (written by :func:`avssl.export.input_spec`) as the data
    package's views: the one reading of it, for ``load_pretrained`` and the evaluation verbs."""
    video, audio = inputs.get("video"), inputs.get("audio")
    return InputViews(
        VideoView(num_frames=video["num_frames"], fps=video["fps"], size=video["size"]) if video else None,
        AudioView(seconds=audio["seconds"], representation=audio.get("representation", "logmel")) if audio else None,
        MelSettings(**audio["mel"]) if audio and "mel" in audio else None,
    )
