"""Mix-and-separate ("The Sound of Pixels", ECCV 2018) at CPU-demo scale.

Training: two clips of different labels from the train split, each scaled to one RMS
(``equal_level``), given a gain from ``gain_range``, halved and summed. A U-Net on the
log-frequency STFT magnitude of the mixture (stacked with its harmonics, ``harmonics``)
gives K feature maps; each source's visual vector (the video encoder's feature map, frozen
by default, projected to K channels and pooled in the object's box) weights them into
that source's mask logits (Sound of Pixels' linear synthesiser); for two sources the two
logits are made complementary. The loss is the weighted BCE against binary masks (or the
weighted L1 against ratio masks).

Evaluation on the test split (centre window of each video, no augmentation, nothing chosen
on it): (a) ``test_mixtures`` synthetic two-clip mixtures, pairs drawn from ``seed`` among
clips of different labels; (b) every clip with two sounding objects, whose own audio is
the mixture and whose two stems are the references, each source conditioned on the visual
feature pooled inside its own box. Estimates: the predicted mask (the probabilities, or
binarised at 0.5 with ``soft_masks: false``) unwarped to linear frequency, times the
mixture magnitude, inverted with the mixture phase. Scores: ``avssl.metrics.separation``
(BSS Eval v3 through mir_eval, SI-SDR), averaged over sources, then over mixtures; mixtures
with a silent reference or estimate are skipped and counted.

Clips are decoded once into memory (the test and train windows of this scale fit easily),
through the data module's stream, and, with a frozen encoder, its feature maps are computed
once. A Lightning Trainer runs the training (:class:`SeparationTraining`); its batches are drawn
from the clips in memory by one seeded generator (:class:`MixtureBatches`). `avssl separate` is
:func:`evaluate` (metrics.json) and :func:`report` (what it prints).
"""
from __future__ import annotations

import math
import multiprocessing as mp
import os
import sys
import time
import warnings
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytorch_lightning as pl
import torch
from omegaconf import DictConfig
from pytorch_lightning.callbacks import TQDMProgressBar
from pytorch_lightning.plugins.environments import LightningEnvironment
from pytorch_lightning.utilities.warnings import PossibleUserWarning
from torch.utils.data import IterableDataset
from tqdm import tqdm

from avssl.config import start_evaluation
from avssl.data.datamodule import AVDataModule, DataConfig, ShardList, make_loader
from avssl.data.sampling import ViewSampler
from avssl.data.skips import split_clips
from avssl.data.targets import BOXES, NUM_STEMS, STEMS
from avssl.data.transforms import VideoBatchTransform
from avssl.data.views import AUDIO, INDEX, LABEL, VIDEO, AudioView, ViewSpec
from avssl.errors import RecipeError
from avssl.evaluation.encoders import load_encoders, resolve_device
from avssl.evaluation.io import write_metrics
from avssl.evaluation.spectral import (
    MASK_TYPES,
    StftSettings,
    apply_masks,
    bin_weights,
    mask_loss,
    mask_targets,
    predicted_masks,
    stft,
    warp_harmonics,
    warp_log_frequency,
)
from avssl.models.unet import LinearSynthesizer, UNet, VisualProjection

POOLINGS = ("box", "frame")
LOG_EPSILON = 1e-10


@dataclass
class SeparationConfig:
    """The ``separation`` section of a recipe (recipes/eval/synth_separation.yaml explains
    each key; the defaults are the CPU-demo settings measured in docs/evaluation.md)."""

    encoders: str = "random"  # an `avssl export` folder, a Lightning .ckpt, or "random"
    finetune_video: bool = False  # train the video encoder too, at lr × video_lr_scale
    video_lr_scale: float = 0.1
    pooling: str = "box"  # visual vector of a training / mixture clip: in the main object's box, or the frame
    visual_reduce: str = "mean"  # over the box (or frame) cells: "mean", or "max" (Sound of Pixels)
    visual_hidden: int = 128  # hidden width of the visual projection (0: one linear layer)
    n_fft: int = 512
    hop: int = 256
    log_bins: int = 64
    harmonics: list[float] = field(default_factory=lambda: [0.5, 1.0, 2.0, 3.0, 4.0])  # [1.0]: log|S| only
    unet_width: int = 16
    unet_levels: int = 4
    channels: int = 16  # K: audio feature maps = visual vector size
    mask: str = "binary"  # or "ratio"
    ratio_max: float = 5.0
    complementary_masks: bool = True  # binary masks of two sources: logit differences, masks sum to 1
    soft_masks: bool = True  # estimates from the predicted probabilities (false: binarised at 0.5, as SoP)
    # soft binary masks at inference: σ(sharpness · logit); 1: the probabilities as trained
    # (chosen on val: docs/evaluation.md)
    mask_sharpness: float = 1.0
    equal_level: bool = True  # scale every clip to the same RMS before the gain (and in test mixtures)
    gain_range: list[float] = field(default_factory=lambda: [0.5, 1.5])
    steps: int = 1500
    batch_size: int = 16
    lr: float = 1.0e-3
    # the learning rate × 0.1 at these fractions of the steps (Sound of Pixels: epochs 40 and 80 of 100)
    lr_decay_at: list[float] = field(default_factory=list)
    weight_decay: float = 1.0e-4
    train_split: str = "train"
    max_train_clips: int = 0  # 0: every clip of the train split
    test_split: str = "test"
    test_mixtures: int = 64
    # (b): also separate the test clips with two sounding objects against their clean stems
    # (needs `boxes` and `stems` ground truth, as the synthetic set has; false for MUSIC solos)
    two_source_clips: bool = True
    max_two_source_clips: int = 0  # 0: every two-source clip of the test split
    figure_mixtures: int = 3
    eval_workers: int = 2  # processes for BSS Eval (0: in this process)
    seed: int = 0
    device: str = "auto"

    def __post_init__(self) -> None:
        if self.mask not in MASK_TYPES:
            raise ValueError(f"separation.mask must be one of {MASK_TYPES}, got {self.mask!r}")
        if any(not 0 < f < 1 for f in self.lr_decay_at):
            raise ValueError(f"separation.lr_decay_at takes fractions of the steps in (0, 1), got {self.lr_decay_at}")
        if not self.mask_sharpness > 0 or math.isinf(self.mask_sharpness):
            raise ValueError(f"separation.mask_sharpness must be a positive number, got {self.mask_sharpness} "
                             "(soft_masks: false binarises)")
        if self.mask == "ratio" and self.mask_sharpness != 1.0:
            raise ValueError("separation.mask_sharpness applies to binary masks only; ratio masks need 1.0")
        if self.visual_reduce not in ("mean", "max"):
            raise ValueError(f"separation.visual_reduce must be 'mean' or 'max', got {self.visual_reduce!r}")
        if not self.harmonics or min(self.harmonics) <= 0:
            raise ValueError(f"separation.harmonics must be positive multiples of the frequency, got {self.harmonics}")
        if self.pooling not in POOLINGS:
            raise ValueError(f"separation.pooling must be one of {POOLINGS}, got {self.pooling!r}")
        if len(self.gain_range) != 2 or not 0 < self.gain_range[0] <= self.gain_range[1]:
            raise ValueError(f"separation.gain_range must be [low, high] with 0 < low <= high, got {self.gain_range}")

    @property
    def stft_settings(self) -> StftSettings:
        return StftSettings(self.n_fft, self.hop, self.log_bins)


# -- clips in memory -------------------------------------------------------------------------
@dataclass
class Clips:
    """Decoded windows of one split: uint8 video N×3×T×H×W, waveform N×L, label and index N,
    and, where asked for, boxes N×4×4 (NaN rows unused), stems N×2×L, num_stems N."""

    video: torch.Tensor
    audio: torch.Tensor
    label: torch.Tensor
    index: torch.Tensor
    boxes: torch.Tensor | None = None
    stems: torch.Tensor | None = None
    num_stems: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.label)


def load_clips(data: DataConfig, split: str, targets: tuple[str, ...], train: bool, max_clips: int = 0) -> Clips:
    """One window per video of ``split``, read once in the manifest's order (random window and
    flip for training, the centre window otherwise), the aligned audio as a waveform, with the
    ``targets`` asked for."""
    if data.video is None or data.audio is None:
        raise ValueError("separation needs a video and an audio window in the data section")
    views = ViewSpec(video=data.video, audio={AUDIO: AudioView(seconds=data.audio.seconds, representation="waveform")},
                     mel=data.mel, targets=targets)
    # each window is drawn once, so a split decoded whole into memory first (data.cache) would only cost its size
    module = AVDataModule(replace(data, cache="none"), views)
    stream = module.stream(split, train=False, distributed=False)  # every clip once, in order, no padding
    if train:  # the training windows, still read once in order (the data module's training stream shuffles and pads)
        stream.sampler = ViewSampler(views, train=True, augment=module.augment)
    keys = [VIDEO, AUDIO, LABEL, INDEX, *(t for t in (BOXES, STEMS) if t in targets)]
    if STEMS in targets:
        keys.append(NUM_STEMS)
    parts: dict[str, list[torch.Tensor]] = {k: [] for k in keys}
    count = 0
    for batch in tqdm(make_loader(stream, data.num_workers, single_pass=True), desc=f"decode {split}", unit="batch",
                      total=len(stream), leave=False):
        for key in keys:
            parts[key].append(batch[key])
        count += len(batch[LABEL])
        if max_clips and count >= max_clips:
            break
    if not count:
        raise RuntimeError(f"no clip of split {split!r} in {data.shards} could be decoded")
    out = {k: torch.cat(v)[: max_clips or None] for k, v in parts.items()}
    out[AUDIO] = out[AUDIO][:, 0]
    return Clips(video=out[VIDEO], audio=out[AUDIO], label=out[LABEL], index=out[INDEX], boxes=out.get(BOXES),
                 stems=out.get(STEMS), num_stems=out.get(NUM_STEMS))


def partners(labels: torch.Tensor, first: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """For each clip in ``first``, a clip drawn uniformly among those of another label."""
    other = labels[None, :] != labels[first][:, None]
    if not other.any(1).all():
        raise ValueError("mixing needs clips of at least two labels")
    scores = torch.rand(other.shape, generator=generator).masked_fill(~other, -1.0)
    return scores.argmax(1)


def check_splits_exist(shards: str, cfg: SeparationConfig) -> None:
    """A RecipeError naming the key when the train or test split is not in the shards'
    manifest, before any split is decoded."""
    for key, split in (("train_split", cfg.train_split), ("test_split", cfg.test_split)):
        try:
            ShardList.from_manifest(shards, split)
        except KeyError as error:
            raise RecipeError(f"separation.{key}={split}: {error.args[0]}") from None


def check_mixable(labels: torch.Tensor, key: str, split: str, shards: str) -> None:
    """A RecipeError unless ``labels`` hold two different values: every mixture, in training
    and in the test set, pairs a clip with one of another label (:func:`partners`), which a
    split of one label (or of one clip) cannot give. Run on decoding, before any training."""
    values = labels.unique().tolist()
    if len(values) >= 2:
        return
    count = len(labels)
    label = f"label {values[0]}" + (" (unlabelled)" if values[0] == -1 else "")
    raise RecipeError(
        f"separation.{key}={split}: {'its only clip has' if count == 1 else f'all {count} clips have'} {label} "
        f"in {shards}; a mixture needs two clips of different labels: give split {split!r} clips of at least two "
        f"labels (e.g. re-prepare with a larger share of it) or set separation.{key} to a split that has them")


def box_cells(boxes: torch.Tensor, map_size: tuple[int, int], frame_size: int) -> torch.Tensor:
    """B×h×w: the feature-map cells whose centre lies in each box (x0, y0, x1, y1 in pixels of a
    ``frame_size`` frame, x1/y1 exclusive), and always the cell under the box centre; every
    cell for a NaN box. Written here because torchvision's ``roi_pool`` rounds both ends
    outwards, which on a 4×4 map of 16-pixel cells takes in a cell past the box's end, and
    ``roi_align`` averages bilinear samples, which dilutes one strong cell."""
    height, width = map_size
    out = torch.ones(len(boxes), height, width, dtype=torch.bool, device=boxes.device)
    known = torch.isfinite(boxes).all(1)
    if not known.any():
        return out
    b = boxes[known]
    axes = []
    for lo, hi, cells in ((b[:, 1], b[:, 3], height), (b[:, 0], b[:, 2], width)):
        step = frame_size / cells
        centres = (torch.arange(cells, device=boxes.device) + 0.5) * step
        inside = (centres >= lo[:, None]) & (centres < hi[:, None])
        middle = ((lo + hi) / 2 / step).long().clamp(0, cells - 1)
        inside[torch.arange(len(b)), middle] = True
        axes.append(inside)
    out[known] = axes[0][:, :, None] & axes[1][:, None, :]
    return out


# -- the model ------------------------------------------------------------------------------
class SeparationModel(torch.nn.Module):
    """Video encoder (frozen unless fine-tuned) + visual projection + U-Net + synthesiser."""

    def __init__(self, video_encoder: torch.nn.Module, cfg: SeparationConfig, frame_size: int) -> None:
        super().__init__()
        self.video_encoder = video_encoder
        self.cfg = cfg
        self.stft_settings = cfg.stft_settings
        self.frame_size = frame_size
        self.visual = VisualProjection(video_encoder.embedding_dim, cfg.channels, cfg.visual_hidden)
        self.unet = UNet(cfg.channels, cfg.unet_width, cfg.unet_levels, in_channels=len(cfg.harmonics))
        self.synthesizer = LinearSynthesizer(cfg.channels)

    def visual_vectors(self, feature_map: torch.Tensor, boxes: torch.Tensor | None) -> torch.Tensor:
        """B×C×T×h×w map → B×K in [0, 1]: the projected map's maximum (or mean, ``visual_reduce``)
        over the frame, or over the cells of the box (B×4 frame pixels; a NaN box: the frame)."""
        projected = self.visual(feature_map)
        cells = torch.ones_like(projected[:, 0], dtype=torch.bool)
        if boxes is not None:
            cells = box_cells(boxes, projected.shape[-2:], self.frame_size)
        if self.cfg.visual_reduce == "mean":
            weights = cells[:, None].to(projected.dtype)
            pooled = (projected * weights).sum((-2, -1)) / weights.sum((-2, -1))
        else:
            pooled = projected.masked_fill(~cells[:, None], float("-inf")).amax(dim=(-2, -1))
        return torch.sigmoid(pooled)

    def spectra(self, mixture: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """B×N mixture → (complex B×F×T spectrum, warped magnitude B×1×log_bins×T, the network
        input: log of the warped magnitude, or of its harmonic stack, B×H×log_bins×T)."""
        spec = stft(mixture, self.stft_settings)
        magnitude = spec.abs()
        warped = warp_log_frequency(magnitude.unsqueeze(1), self.stft_settings.log_bins)
        stack = warped if tuple(self.cfg.harmonics) == (1.0,) else warp_harmonics(
            magnitude, self.stft_settings.log_bins, tuple(self.cfg.harmonics))
        return spec, warped, torch.log(stack + LOG_EPSILON)

    def forward(self, network_input: torch.Tensor, visual: torch.Tensor) -> torch.Tensor:
        """Mask logits B×S×log_bins×T from the network input (:meth:`spectra`) and visual vectors B×S×K; with
        ``complementary_masks``, binary masks and two sources, each logit is the difference to
        the other's (the masks sum to 1; ratio masks stay independent, as in Sound of Pixels)."""
        logits = self.synthesizer(self.unet(network_input), visual)
        if self.cfg.complementary_masks and self.cfg.mask == "binary" and logits.shape[1] == 2:
            difference = logits[:, 0] - logits[:, 1]
            logits = torch.stack([difference, -difference], dim=1)
        return logits

    @torch.no_grad()
    def separate(self, mixture: torch.Tensor, visual: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(estimates B×S×N, warped masks B×S×log_bins×T) for mixtures B×N."""
        spec, _, network_input = self.spectra(mixture)
        masks = predicted_masks(self(network_input, visual), self.cfg.mask, self.cfg.ratio_max, self.cfg.mask_sharpness)
        return apply_masks(spec, masks, self.stft_settings, mixture.shape[-1], self.cfg.mask,
                           binarize=not self.cfg.soft_masks), masks


class VisualFeatures:
    """Feature maps of a clip set: computed once for a frozen encoder, per call otherwise."""

    def __init__(self, model: SeparationModel, clips: Clips, device: torch.device, batch_size: int = 128) -> None:
        self.model, self.clips, self.device = model, clips, device
        self.normalise = VideoBatchTransform().to(device)
        self.cached: torch.Tensor | None = None
        if not model.cfg.finetune_video:
            with torch.no_grad():
                self.cached = torch.cat([self._compute(torch.arange(i, min(i + batch_size, len(clips))))
                                         for i in range(0, len(clips), batch_size)])

    def _compute(self, rows: torch.Tensor) -> torch.Tensor:
        video = self.normalise(self.clips.video[rows].to(self.device), train=False)
        return self.model.video_encoder.feature_map(video)

    def __call__(self, rows: torch.Tensor) -> torch.Tensor:
        if self.cached is not None:
            return self.cached[rows.to(self.cached.device)]
        return self._compute(rows)


def main_boxes(clips: Clips, rows: torch.Tensor, source: int = 0) -> torch.Tensor | None:
    return None if clips.boxes is None else clips.boxes[rows, source]


# -- training -------------------------------------------------------------------------------
def training_batch(clips: Clips, cfg: SeparationConfig, generator: torch.Generator
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(rows B×2 of the two clips, sources B×2×L already gained and halved, mixture B×L)."""
    first = torch.randint(len(clips), (cfg.batch_size,), generator=generator)
    rows = torch.stack([first, partners(clips.label, first, generator)], dim=1)
    low, high = cfg.gain_range
    gains = low + (high - low) * torch.rand(rows.shape, generator=generator)
    sources = source_audio(clips, rows, cfg.equal_level) * gains[..., None] / 2
    return rows, sources, sources.sum(1)


REFERENCE_RMS = 0.05  # about −26 dBFS, the middle of the synthetic set's clip levels


def source_audio(clips: Clips, rows: torch.Tensor, equal_level: bool) -> torch.Tensor:
    """The clips' waveforms (…×L for rows of any shape), scaled to one RMS if ``equal_level``."""
    audio = clips.audio[rows]
    if not equal_level:
        return audio
    rms = audio.pow(2).mean(-1, keepdim=True).sqrt()
    return audio * (REFERENCE_RMS / rms.clamp_min(1e-8))


def training_loss(model: SeparationModel, features: VisualFeatures, clips: Clips, rows: torch.Tensor,
                  sources: torch.Tensor, mixture: torch.Tensor) -> torch.Tensor:
    """The mask loss of one batch of mixtures (both sources of each)."""
    cfg, device = model.cfg, next(model.parameters()).device
    sources, mixture = sources.to(device), mixture.to(device)
    _, magnitude, network_input = model.spectra(mixture)
    source_magnitudes = warp_log_frequency(stft(sources, model.stft_settings).abs(), cfg.log_bins)
    targets = mask_targets(source_magnitudes, magnitude, cfg.mask, cfg.ratio_max)
    visual = torch.stack([
        model.visual_vectors(features(rows[:, k]), main_boxes(clips, rows[:, k]) if cfg.pooling == "box" else None)
        for k in range(rows.shape[1])], dim=1)
    logits = model(network_input, visual.to(device))
    return mask_loss(logits, targets, bin_weights(magnitude), cfg.mask, cfg.ratio_max)


def make_optimizer(model: SeparationModel, cfg: SeparationConfig) -> torch.optim.Optimizer:
    """Adam; the video encoder (only when fine-tuned) at ``lr × video_lr_scale``."""
    head = [p for name, p in model.named_parameters() if not name.startswith("video_encoder.")]
    groups = [{"params": head, "lr": cfg.lr}]
    if cfg.finetune_video:
        groups.append({"params": list(model.video_encoder.parameters()), "lr": cfg.lr * cfg.video_lr_scale})
    return torch.optim.Adam(groups, weight_decay=cfg.weight_decay)


def lr_schedule(optimizer: torch.optim.Optimizer, cfg: SeparationConfig) -> torch.optim.lr_scheduler.MultiStepLR:
    """× 0.1 at each of ``cfg.lr_decay_at`` (fractions of ``cfg.steps``), stepped once a step."""
    return torch.optim.lr_scheduler.MultiStepLR(optimizer, [round(f * cfg.steps) for f in cfg.lr_decay_at], gamma=0.1)


class MixtureBatches(IterableDataset):
    """``cfg.steps`` training batches (:func:`training_batch`), drawn in this process from the
    clips in memory by one generator seeded with ``cfg.seed`` (a fresh one per pass)."""

    def __init__(self, clips: Clips, cfg: SeparationConfig) -> None:
        self.clips, self.cfg = clips, cfg

    def __len__(self) -> int:
        return self.cfg.steps

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        generator = torch.Generator().manual_seed(self.cfg.seed)
        for _ in range(self.cfg.steps):
            yield training_batch(self.clips, self.cfg, generator)


class SeparationTraining(pl.LightningModule):
    """The separation network's training for the Trainer: the mask loss of each batch of
    mixtures, Adam (:func:`make_optimizer`) and the step-wise decay (:func:`lr_schedule`).
    ``losses`` holds the loss of every step."""

    def __init__(self, model: SeparationModel, clips: Clips, features: VisualFeatures) -> None:
        super().__init__()
        self.model, self.clips, self.features = model, clips, features
        self.losses: list[float] = []

    def on_fit_start(self) -> None:
        self.model.train()
        self.model.video_encoder.eval()  # BatchNorm statistics stay those of pretraining, even when fine-tuned
        self.model.video_encoder.requires_grad_(self.model.cfg.finetune_video)

    def transfer_batch_to_device(self, batch: Any, device: torch.device, dataloader_idx: int) -> Any:
        return batch  # the rows index clips kept on the CPU; training_loss moves the audio itself

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss = training_loss(self.model, self.features, self.clips, *batch)
        self.losses.append(loss.item())
        return loss

    def configure_optimizers(self) -> dict[str, Any]:
        optimizer = make_optimizer(self.model, self.model.cfg)
        return {"optimizer": optimizer,
                "lr_scheduler": {"scheduler": lr_schedule(optimizer, self.model.cfg), "interval": "step"}}

    def on_fit_end(self) -> None:
        self.model.eval()


class TrainingBar(TQDMProgressBar):
    """Lightning's bar, named for the task, with the mean loss of the last 20 steps, on stderr
    (Lightning's goes to stdout, which `avssl separate` keeps for its report)."""

    def init_train_tqdm(self) -> tqdm:
        return tqdm(desc="separation training", unit="step", disable=self.is_disabled, file=sys.stderr)

    def on_train_epoch_start(self, trainer: pl.Trainer, *args: Any) -> None:
        self.train_progress_bar.reset(total=self.total_train_batches)  # the one epoch: cfg.steps batches

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        self.train_progress_bar.close()  # before the Trainer logs that it stopped

    def get_metrics(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, str]:
        return {"loss": f"{np.mean(pl_module.losses[-20:]):.4f}"}


def trainer_devices(device: torch.device) -> dict[str, Any]:
    """The Trainer's accelerator and devices for one torch device (``cuda:1``: that GPU)."""
    return {"accelerator": device.type, "devices": [device.index] if device.index is not None else 1}


def train(model: SeparationModel, clips: Clips, features: VisualFeatures, cfg: SeparationConfig) -> list[float]:
    """``cfg.steps`` steps on random mixtures, run by a Lightning Trainer on the model's
    device; the loss of every step. Nothing is written (no logger, no checkpoint)."""
    training = SeparationTraining(model, clips, features)
    # one process on one device, whatever launched it (no torchrun or SLURM ranks to find)
    trainer = pl.Trainer(max_steps=cfg.steps, **trainer_devices(next(model.parameters()).device), logger=False,
                         enable_checkpointing=False, enable_model_summary=False, callbacks=[TrainingBar()],
                         num_sanity_val_steps=0, plugins=[LightningEnvironment()])
    with warnings.catch_warnings():  # the frozen video encoder is in eval mode on purpose (SeparationTraining)
        warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode", category=PossibleUserWarning)
        trainer.fit(training, train_dataloaders=MixtureBatches(clips, cfg))
    return training.losses


# -- evaluation -----------------------------------------------------------------------------
SILENT_REFERENCE, SILENT_ESTIMATE = "silent_reference", "silent_estimate"


def _score(item: tuple[np.ndarray, np.ndarray, np.ndarray]) -> dict[str, float] | str:
    from avssl.metrics.separation import SILENCE_THRESHOLD, SilentSourceError, separation_metrics

    estimates, references, mixture = item
    if (np.abs(references).sum(1) <= SILENCE_THRESHOLD).any():
        return SILENT_REFERENCE
    try:
        return separation_metrics(estimates, references, mixture)
    except SilentSourceError:
        return SILENT_ESTIMATE


def _one_thread() -> None:
    torch.set_num_threads(1)


@contextmanager
def _single_threaded_children() -> Iterator[None]:
    """Spawned children read these when they import NumPy: one BLAS thread per process
    (BSS Eval is mostly 1024×1024 solves; two processes beat one with two threads)."""
    names = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")
    saved = {n: os.environ.get(n) for n in names}
    os.environ.update({n: "1" for n in names})
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


Items = list[tuple[np.ndarray, np.ndarray, np.ndarray]]  # (estimates S×L, references S×L, mixture L) per mixture


def score_sets(sets: dict[str, Items], workers: int) -> dict[str, dict[str, float | int | None]]:
    """Mean scores of each named set of mixtures (dB; None when nothing could be scored) and
    how many were skipped; BSS Eval for all sets in one pool of ``workers`` spawned processes
    (0: in this process; a pool costs seconds to start, so the sets share it)."""
    items = [item for set_items in sets.values() for item in set_items]
    if workers > 0 and len(items) > 1:
        with _single_threaded_children(), ProcessPoolExecutor(
                workers, mp_context=mp.get_context("spawn"), initializer=_one_thread) as pool:
            results = list(tqdm(pool.map(_score, items, chunksize=4), total=len(items), desc="BSS Eval", leave=False))
    else:
        results = [_score(item) for item in tqdm(items, desc="BSS Eval", leave=False)]
    summaries, start = {}, 0
    for name, set_items in sets.items():
        summaries[name] = _summary(results[start : start + len(set_items)])
        start += len(set_items)
    return summaries


def _summary(results: list[dict[str, float] | str]) -> dict[str, float | int | None]:
    scored = [r for r in results if isinstance(r, dict)]
    summary: dict[str, float | int | None] = {}
    for key in ("sdr", "sir", "sar", "si_sdr", "sdr_improvement", "si_sdr_improvement", "sdr_mixture"):
        summary[f"{key}_db"] = float(np.mean([r[key] for r in scored])) if scored else None
    summary["count"] = len(scored)
    summary[f"skipped_{SILENT_REFERENCE}"] = results.count(SILENT_REFERENCE)
    summary[f"skipped_{SILENT_ESTIMATE}"] = results.count(SILENT_ESTIMATE)
    return summary


def evaluation_pairs(labels: torch.Tensor, count: int, seed: int) -> torch.Tensor:
    """``count`` (or fewer, if the split is small) pairs of clips with different labels,
    deterministic from ``seed``: distinct first clips, partners drawn among other labels."""
    generator = torch.Generator().manual_seed(seed)
    first = torch.randperm(len(labels), generator=generator)[:count]
    return torch.stack([first, partners(labels, first, generator)], dim=1)


@dataclass
class Separated:
    """Estimates and references of some mixtures, as NumPy (for scoring and figures)."""

    estimates: np.ndarray  # M×2×L
    references: np.ndarray  # M×2×L
    mixtures: np.ndarray  # M×L
    masks: np.ndarray  # M×2×log_bins×T, warped

    def items(self) -> Items:
        return list(zip(self.estimates, self.references, self.mixtures))


def _run(model: SeparationModel, mixtures: torch.Tensor, references: torch.Tensor, visual: torch.Tensor,
         batch_size: int) -> Separated:
    device = next(model.parameters()).device
    outputs, masks = [], []
    for i in range(0, len(mixtures), batch_size):
        estimate, mask = model.separate(mixtures[i : i + batch_size].to(device), visual[i : i + batch_size].to(device))
        outputs.append(estimate.cpu())
        masks.append(mask.cpu())
    return Separated(torch.cat(outputs).numpy().astype(np.float64), references.numpy().astype(np.float64),
                     mixtures.numpy().astype(np.float64), torch.cat(masks).numpy())


@torch.no_grad()
def separate_test_mixtures(model: SeparationModel, clips: Clips, features: VisualFeatures, cfg: SeparationConfig
                           ) -> Separated:
    """(a) synthetic mixtures of two test clips of different labels."""
    rows = evaluation_pairs(clips.label, cfg.test_mixtures, cfg.seed)
    references = source_audio(clips, rows, cfg.equal_level) / 2
    visual = torch.stack([
        model.visual_vectors(features(rows[:, k]), main_boxes(clips, rows[:, k]) if cfg.pooling == "box" else None)
        for k in range(2)], dim=1)
    return _run(model, references.sum(1), references, visual, cfg.batch_size)


@torch.no_grad()
def separate_two_source_clips(model: SeparationModel, clips: Clips, features: VisualFeatures, cfg: SeparationConfig
                              ) -> tuple[Separated | None, int]:
    """(b) the test clips with two sounding objects: their own audio, their two stems, each
    source conditioned on its own box. Also returns how many had a box missing (skipped)."""
    assert clips.num_stems is not None and clips.stems is not None and clips.boxes is not None
    two = torch.nonzero(clips.num_stems == 2).flatten()
    if cfg.max_two_source_clips:
        two = two[: cfg.max_two_source_clips]
    has_boxes = torch.isfinite(clips.boxes[two, :2]).all(dim=(1, 2))
    rows = two[has_boxes]
    if not len(rows):
        return None, int((~has_boxes).sum())
    feature_maps = features(rows)
    visual = torch.stack([model.visual_vectors(feature_maps, clips.boxes[rows, k]) for k in range(2)], dim=1)
    return _run(model, clips.audio[rows], clips.stems[rows, :2], visual, cfg.batch_size), int((~has_boxes).sum())


def plot_separation(separated: Separated, model: SeparationModel, path: Path, count: int,
                    sample_rate: int = 16000) -> None:
    """``separation.png``: mixture, estimated and true log-frequency spectrograms of the first
    ``count`` mixtures, each row with its SDR (:mod:`~avssl.evaluation.figures`)."""
    from avssl.evaluation.figures import save_figure, separation_figure

    count = min(count, len(separated.mixtures))
    if count == 0:
        return
    rows = []
    for row in range(count):
        panels = [separated.mixtures[row], separated.estimates[row, 0], separated.references[row, 0],
                  separated.estimates[row, 1], separated.references[row, 1]]
        rows.append(model.spectra(torch.from_numpy(np.stack(panels)).float())[1][:, 0].numpy())
    scores = [_score(item) for item in separated.items()[:count]]
    save_figure(separation_figure(np.stack(rows), scores, sample_rate, model.stft_settings.hop), path)


# -- the whole protocol ---------------------------------------------------------------------
def run_separation(video_encoder: torch.nn.Module, data: DataConfig, cfg: SeparationConfig, run_dir: Path
                   ) -> dict[str, Any]:
    """Decode, train, evaluate (a) and (b), plot; the metrics.json content."""
    if data.video is None:
        raise ValueError("separation needs a video window (data.video)")
    started = time.time()
    torch.manual_seed(cfg.seed)
    device = resolve_device(cfg.device)
    check_splits_exist(data.shards, cfg)
    train_targets = (BOXES,) if cfg.pooling == "box" else ()
    train_clips = load_clips(data, cfg.train_split, train_targets, train=True, max_clips=cfg.max_train_clips)
    check_mixable(train_clips.label, "train_split", cfg.train_split, data.shards)
    test_targets = (BOXES, STEMS) if cfg.two_source_clips else train_targets
    test_clips = load_clips(data, cfg.test_split, test_targets, train=False)
    check_mixable(test_clips.label, "test_split", cfg.test_split, data.shards)
    clips = split_clips(data.shards, cfg.test_split, 1, len(test_clips), test=True,
                        allow_missing=data.allow_missing_test_clips)
    decoded = time.time()
    model = SeparationModel(video_encoder, cfg, data.video.size).to(device)
    model.video_encoder.eval()
    train_features = VisualFeatures(model, train_clips, device)
    losses = train(model, train_clips, train_features, cfg)
    trained = time.time()
    test_features = VisualFeatures(model, test_clips, device)
    mixtures = separate_test_mixtures(model, test_clips, test_features, cfg)
    sets = {"mixtures": mixtures.items()}
    if cfg.two_source_clips:
        two_source, missing_boxes = separate_two_source_clips(model, test_clips, test_features, cfg)
        sets["two_source_clips"] = two_source.items() if two_source else []
    results: dict[str, Any] = score_sets(sets, cfg.eval_workers)
    if cfg.two_source_clips:
        results["two_source_clips"]["skipped_missing_box"] = missing_boxes
    plot_separation(mixtures, model, run_dir / "separation.png", cfg.figure_mixtures, data.mel.sample_rate)
    results["train"] = {"steps": cfg.steps, "clips": len(train_clips), "first_loss": float(np.mean(losses[:10])),
                        "last_loss": float(np.mean(losses[-10:]))}
    results["clips"] = {"test": clips}
    results["seconds"] = {"decode": decoded - started, "train": trained - decoded, "evaluate": time.time() - trained,
                          "total": time.time() - started}
    return results


# -- the verb ----------------------------------------------------------------------------------
METRIC_ROWS = ("sdr_db", "sir_db", "sar_db", "si_sdr_db", "sdr_improvement_db", "sdr_mixture_db")


def evaluate(config: DictConfig) -> dict[str, Any]:
    """`avssl separate`: the video encoder the checked recipe names through :func:`run_separation`;
    the results, also written to ``run_dir/metrics.json``."""
    cfg, run_dir = start_evaluation(config, "separation", SeparationConfig)
    try:
        encoders, data, _ = load_encoders(config, cfg.encoders, run_dir)
    except FileNotFoundError as error:
        raise RecipeError(f"separation.encoders={cfg.encoders}: {error}") from None
    if encoders.get("video") is None:
        raise RecipeError(f"separation.encoders={cfg.encoders}: these encoders have no video encoder")
    results = run_separation(encoders["video"], data, cfg, run_dir)
    results["encoders"] = cfg.encoders
    results["splits"] = {"train": cfg.train_split, "test": cfg.test_split}
    return {**results, "metrics_file": str(write_metrics(results, run_dir))}


def format_table(results: dict[str, Any]) -> str:
    """One row of dB means per scored set (a dash where nothing could be scored)."""
    rows = [f"{'scored set':<17} " + " ".join(f"{k.removesuffix('_db'):>15}" for k in METRIC_ROWS) + f" {'count':>6}"]
    for name in ("mixtures", "two_source_clips"):
        if name not in results:
            continue
        r = results[name]
        cells = " ".join(f"{r[k]:>15.2f}" if r[k] is not None else f"{'-':>15}" for k in METRIC_ROWS)
        rows.append(f"{name:<17} {cells} {r['count']:>6}")
    return "\n".join(rows)


def report(results: dict[str, Any]) -> str:
    """What `avssl separate` prints of :func:`evaluate`'s results: the split, the table, the files."""
    metrics_file = Path(results["metrics_file"])
    splits = results["splits"]
    held_out = "" if splits["test"] != splits["train"] else ", the split it was trained on: not held out"
    return (f"separation with video encoder {results['encoders']} (split {splits['test']}{held_out}; dB, means over "
            f"sources then mixtures):\n"
            f"{format_table(results)}\n{results['seconds']['total']:.0f} s; "
            f"written: {metrics_file}, {metrics_file.parent / 'separation.png'}")


__all__ = ["Clips", "MixtureBatches", "SeparationConfig", "SeparationModel", "SeparationTraining", "TrainingBar",
           "VisualFeatures", "box_cells", "check_mixable", "check_splits_exist", "evaluate", "evaluation_pairs",
           "format_table", "load_clips", "partners", "plot_separation", "report", "run_separation", "score_sets",
           "separate_test_mixtures", "separate_two_source_clips", "train", "trainer_devices", "training_batch",
           "training_loss"]
