"""The AVDataModule: a recipe's ``data`` section (:class:`DataConfig`) → training and
evaluation loaders, their resumable position and lost-sample counts in the checkpoint.

The stream itself is :mod:`avssl.data.stream` (its stages, and which are webdataset's), its
loader :mod:`avssl.data.loader`, the manifest's shard lists :mod:`avssl.data.manifest`; their
public names are importable from here too.
"""
from __future__ import annotations

import functools
import zlib
from dataclasses import dataclass, field
from typing import Any

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader

from avssl.data.cache import DecodedSplit, decoded_split
from avssl.data.loader import ShardLoader, make_loader
from avssl.data.manifest import ShardList, manifest_classes
from avssl.data.remote import MANIFEST
from avssl.data.sampling import ViewSampler
from avssl.data.skips import SkipMonitor
from avssl.data.stream import ShardStream, seed_cpu_draws, slice_bounds
from avssl.data.transforms import AugmentSettings, BatchTransform
from avssl.data.views import AUDIO, AudioView, MelSettings, VideoView, ViewSpec
from avssl.distributed import rank, world_size


@dataclass
class DataConfig:
    """The ``data`` section of a recipe: where the shards are, the input windows
    (``video``, ``audio``, ``mel``: the spec exported with the encoders), and loading."""

    shards: str = "data/shards"
    video: VideoView | None = field(default_factory=VideoView)
    audio: AudioView | None = field(default_factory=AudioView)
    mel: MelSettings = field(default_factory=MelSettings)
    batch_size: int = 32
    eval_batch_size: int | None = None
    num_workers: int = 2
    shuffle_buffer: int = 256
    seed: int = 0
    train_split: str = "train"
    val_split: str | None = "val"
    test_split: str | None = "test"
    max_skip_fraction: float = 0.05  # of the samples the manifest lists, per epoch (avssl/data/skips.py)
    # evaluation: a test split that lost clips is an error unless this is true (then a warning)
    allow_missing_test_clips: bool = False
    augment: dict[str, Any] = field(default_factory=dict)
    # where audio gain, log-mel and masks run: "device" (batched on the GPU, the default) or
    # "loader" (batched in each worker: CPU training, where the main process is the bottleneck)
    audio_features: str = "device"
    # "none": decode every window from the shards as it is drawn; "memory": decode each split
    # whole once, before the workers start, and draw the same windows from RAM
    # (avssl/data/cache.py: small sets on few cores, e.g. the CPU recipes)
    cache: str = "none"
    # a loader whose workers send no batch for this long has a stuck worker (a deadlock in a
    # native library, a hung network read): the run stops with an error instead of waiting
    # forever (0: wait forever)
    worker_timeout_s: float = 600.0

    def __post_init__(self) -> None:
        if self.audio_features not in ("device", "loader"):
            raise ValueError(f"data.audio_features must be 'device' or 'loader', got {self.audio_features!r}")
        if self.cache not in ("none", "memory"):
            raise ValueError(f"data.cache must be 'none' or 'memory', got {self.cache!r}")


def base_views(config: DataConfig, extra_audio: dict[str, AudioView] | None = None,
               clips_per_video: int = 1) -> ViewSpec:
    """The ViewSpec of the recipe's input windows, plus any extra views a task adds."""
    audio = {AUDIO: config.audio} if config.audio is not None else {}
    audio.update(extra_audio or {})
    return ViewSpec(video=config.video, audio=audio, mel=config.mel, clips_per_video=clips_per_video)


class AVDataModule(pl.LightningDataModule):
    """Shards → batches for a task's :class:`ViewSpec`; ranks come from the trainer."""

    def __init__(self, config: DataConfig, views: ViewSpec, eval_views: ViewSpec | None = None) -> None:
        super().__init__()
        self.config = config
        self.views = views
        self.eval_views = eval_views or views
        augment = dict(config.augment)
        if "crop_scale" in augment:
            augment["crop_scale"] = tuple(augment["crop_scale"])
        self.augment = AugmentSettings(**augment)
        on_device = config.audio_features == "device"
        self.train_loader: ShardLoader | None = None
        self._resume_position: dict[str, int] | None = None
        self.skip_history: list[dict[str, int]] = []  # per training epoch (SkipMonitor)
        self.train_transform = BatchTransform(views, self.augment, audio=on_device)
        self.eval_transform = BatchTransform(self.eval_views, self.augment, audio=on_device)

    def on_after_batch_transfer(self, batch: dict[str, torch.Tensor], dataloader_idx: int) -> dict:
        """Colour jitter, normalisation, audio gain, log-mel and masks on the device.

        A training batch also counts as consumed (the loader's resumable position) and seeds
        the step's random draws (augmentations here, negatives in the task) from (seed, rank,
        epoch, batch): a run resumed at any batch draws what the uninterrupted run drew."""
        training = self.trainer is not None and self.trainer.training
        if training and self.train_loader is not None:
            loader = self.train_loader
            torch.manual_seed(zlib.crc32(
                f"{self.config.seed}-{self.trainer.global_rank}-{loader.stream.epoch.get()}-{loader.consumed}".encode()))
            loader.mark_consumed()
        transform = (self.train_transform if training else self.eval_transform).to(next(iter(batch.values())).device)
        return transform(batch, train=training)

    def setup(self, stage: str) -> None:
        """Adds the :class:`~avssl.data.skips.SkipMonitor` to the trainer (first: its
        epoch's count is in the data module's state before a checkpoint saves it)."""
        trainer = self.trainer
        if trainer is not None and not any(isinstance(c, SkipMonitor) for c in trainer.callbacks):
            trainer.callbacks.insert(0, SkipMonitor(self))

    def _rank_world(self) -> tuple[int, int]:
        trainer = getattr(self, "trainer", None)
        if trainer is not None:
            return trainer.global_rank, trainer.world_size
        return rank(), world_size()

    def stream(self, split: str, train: bool, views: ViewSpec | None = None, distributed: bool = True) -> ShardStream:
        rank, world = self._rank_world() if distributed else (0, 1)
        views = views or (self.views if train else self.eval_views)
        finish = None
        if self.config.audio_features == "loader":
            finish = functools.partial(BatchTransform(views, self.augment, video=False), train=train)
        return ShardStream(
            ShardList.from_manifest(self.config.shards, split),
            ViewSampler(views, train=train, augment=self.augment),
            self.config.batch_size if train else (self.config.eval_batch_size or self.config.batch_size),
            num_workers=self.config.num_workers,
            rank=rank,
            world_size=world,
            shuffle=train,
            shuffle_buffer=self.config.shuffle_buffer,
            pad=train or world > 1,
            seed=self.config.seed,
            max_skip_fraction=self.config.max_skip_fraction,
            worker_timeout=self.config.worker_timeout_s,
            finish=finish,
            cache=self.decoded(split, keep_entries=bool(views.targets)) if self.config.cache == "memory" else None,
        )

    def decoded(self, split: str, keep_entries: bool = False) -> DecodedSplit:
        """``split`` decoded into memory (:func:`~avssl.data.cache.decoded_split`: built on
        first use in this process, before its loader forks the workers that share it, and
        kept for later loaders and runs)."""
        shards = ShardList.from_manifest(self.config.shards, split)
        shards.require_files()
        return decoded_split(shards.files, keep_entries=keep_entries, description=split)

    def loader(self, dataset: ShardStream) -> DataLoader:
        return make_loader(dataset, self.config.num_workers)

    def state_dict(self) -> dict[str, Any]:
        """Saved in every checkpoint: where the training loader stands (:class:`ShardLoader`)
        and the samples lost in each finished epoch."""
        state: dict[str, Any] = {"skip_history": list(self.skip_history)}
        if self.train_loader is not None:
            state["train_position"] = self.train_loader.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        # Lightning restores the data module before anything builds the loader (a scheduler
        # asking for estimated_stepping_batches builds it before the loops are restored,
        # too early for Lightning's own restore of a stateful loader): keep it for then.
        self._resume_position = state.get("train_position")
        self.skip_history = list(state.get("skip_history", []))

    def train_dataloader(self) -> DataLoader:
        self.train_loader = self.loader(self.stream(self.config.train_split, train=True))
        if self._resume_position is not None:
            self.train_loader.load_state_dict(self._resume_position)
            self._resume_position = None
        elif self.trainer is not None:  # the workers fork at the first iter(), before set_epoch
            self.train_loader.stream.epoch.set(self.trainer.current_epoch)
        return self.train_loader

    def val_dataloader(self) -> DataLoader | list:
        if not self.config.val_split:
            return []
        return self.evaluation_loader(self.config.val_split)

    def test_dataloader(self) -> DataLoader | list:
        if not self.config.test_split:
            return []
        return self.evaluation_loader(self.config.test_split)

    def evaluation_loader(self, split: str, single_pass: bool = False) -> DataLoader:
        """A validation or test loader: its losses are counted in the batches (``skipped``)
        and logged, never a stop mid-pass (a test split's clips are checked whole by the verb
        that reports them: :func:`~avssl.data.skips.split_clips`). ``single_pass``: its
        workers exit after each pass (:func:`make_loader`)."""
        loader = make_loader(self.stream(split, train=False), self.config.num_workers, single_pass)
        loader.check_limit = False
        return loader


__all__ = ["MANIFEST", "AVDataModule", "DataConfig", "ShardList", "ShardLoader", "ShardStream", "base_views",
           "make_loader", "manifest_classes", "seed_cpu_draws", "slice_bounds"]
