"""Streaming shards into batches: the AVDataModule.

Splitting across ranks and workers (the part webdataset leaves to the user): every epoch
the shard list is shuffled with a seed shared by all ranks and changed every epoch; the
resulting sample sequence is cut into ``world_size × num_workers`` contiguous slices of
near-equal length (a slice may start or end inside a shard; the few samples before it are
read and dropped without decoding). Every sample lands in exactly one slice, and each
slice is padded with repeats of its own samples up to the same whole number of batches,
so every rank runs the same number of steps and nothing is dropped. Padding is at most
``batch_size`` samples per worker and is counted.

Lost samples are counted against the manifest's per-shard counts (:mod:`avssl.data.skips`):
a shard missing at the start (a local file, or an http(s) URL whose HEAD request fails)
stops the run before training; one that becomes unreadable, a tar cut short or with a
damaged header (a connection dropped mid-shard), and undecodable media are counted as
``skipped`` in the batches and limited by ``data.max_skip_fraction`` on the run's totals.

``data.shards`` may also be the shards folder's URL, a brace list or a ``pipe:`` command
(:mod:`avssl.data.remote`); webdataset's openers read them, and its tar reading and shuffle
buffer (raw bytes, before decoding) do the rest; batching happens inside each worker.
"""
from __future__ import annotations

import functools
import json
import math
import multiprocessing as mp
import random
import warnings
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import pytorch_lightning as pl
import torch
import webdataset as wds
from torch.utils.data import DataLoader, IterableDataset, get_worker_info
from torch.utils.data.dataloader import _InfiniteConstantSampler, default_collate

from avssl.data import remote
from avssl.data.cache import DecodedSplit, decoded_split
from avssl.data.decode import sample_video_entry
from avssl.data.errors import DataError
from avssl.data.remote import MANIFEST
from avssl.data.sampling import ViewSampler
from avssl.data.skips import SkipCounts, SkipMonitor, certainly_over_limit, over_limit_message
from avssl.data.transforms import AugmentSettings, BatchTransform
from avssl.data.views import AUDIO, EXPECTED, SKIPPED, AudioView, MelSettings, VideoView, ViewSpec


@dataclass(frozen=True)
class ShardList:
    """The shards of one split and how many samples each holds (from manifest.json).

    ``files``: what opens each shard (a path, a URL or a ``pipe:`` command: :mod:`avssl.data.remote`);
    ``names``: its file name in the manifest (what seeds its samples' draws, so a split read
    from a server draws what it draws from a local copy)."""

    files: tuple[str, ...]
    counts: tuple[int, ...]
    names: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.names:
            object.__setattr__(self, "names", tuple(Path(f).name for f in self.files))

    @property
    def num_samples(self) -> int:
        return sum(self.counts)

    def require_files(self) -> None:
        """Stop before any work when a shard the manifest lists is not there (its samples
        would otherwise be silently missing from every epoch): a local file, or an http(s)
        URL whose HEAD request fails. A ``pipe:`` command is only run to read (its failures
        are counted as lost samples then)."""
        missing = remote.unreachable(self.files)
        if missing:
            lost = sum(c for f, c in zip(self.files, self.counts) if f in set(missing))
            shown = ", ".join(missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
            raise DataError(f"{len(missing)} of the {len(self.files)} shards listed in the manifest are missing "
                            f"({lost} of {self.num_samples} samples): {shown}; rewrite the shards (`avssl shards`)")

    @classmethod
    def from_manifest(cls, shards: str | Path, split: str) -> "ShardList":
        """``shards``: ``data.shards``, a folder, its URL or a list of shards (:mod:`avssl.data.remote`)."""
        manifest = remote.read_manifest(str(shards))
        splits = manifest.get("splits", {})
        if split not in splits:
            raise KeyError(f"split {split!r} not in {remote.manifest_location(str(shards))} (it has {sorted(splits)})")
        entries = splits[split]["shards"]
        names = [e["file"] for e in entries]
        return cls(
            files=tuple(remote.shard_specs(str(shards), manifest, split, names)),
            counts=tuple(int(e["num_samples"]) for e in entries),
            names=tuple(Path(n).name for n in names),
        )


def manifest_classes(shards: str | Path) -> list[str]:
    """The class names `avssl shards` recorded in the manifest (empty when unlabelled)."""
    if remote.is_local_folder(str(shards)) and not (Path(shards) / MANIFEST).exists():
        return []
    return list(remote.read_manifest(str(shards)).get("classes") or [])


def slice_bounds(num_samples: int, num_slices: int, slice_id: int) -> tuple[int, int]:
    """Contiguous near-equal slices of ``range(num_samples)``."""
    return num_samples * slice_id // num_slices, num_samples * (slice_id + 1) // num_slices


class SharedEpoch:
    """An epoch counter shared with (persistent) worker processes."""

    def __init__(self, epoch: int = 0) -> None:
        self._value = mp.Value("i", epoch)

    def set(self, epoch: int) -> None:
        self._value.value = epoch

    def get(self) -> int:
        return int(self._value.value)


class _EpochSampler(_InfiniteConstantSampler):
    """Lightning calls ``set_epoch`` on a loader's sampler before each epoch: this one
    forwards the epoch to the dataset's workers (an IterableDataset has no sampler)."""

    def __init__(self, shared_epoch: SharedEpoch, on_new_epoch: Callable[[int], None] | None = None) -> None:
        super().__init__()
        self.shared_epoch = shared_epoch
        self.on_new_epoch = on_new_epoch

    def set_epoch(self, epoch: int) -> None:
        if self.on_new_epoch is not None:
            self.on_new_epoch(epoch)
        self.shared_epoch.set(epoch)


def seed_cpu_draws(seed: int) -> None:
    """Seed torch's CPU generator, where the loader's transforms draw from. Not
    ``torch.manual_seed``: in a CUDA build it also queues a lazy CUDA seeding with the
    formatted call stack, ~1 ms a call, which at one call per sample was a third of a loader
    worker's time in the CPU demo (the CPU stream is the same)."""
    torch.default_generator.manual_seed(seed)


class ShardStream(IterableDataset):
    """Batches of decoded views from one split's shards, split over ranks and workers.

    ``pad=True`` (training) makes every worker of every rank yield the same number of
    full batches. ``pad=False`` (evaluation) yields each sample exactly once, with a
    partial last batch.
    """

    def __init__(
        self,
        shards: ShardList,
        sampler: ViewSampler,
        batch_size: int,
        *,
        num_workers: int = 0,
        rank: int = 0,
        world_size: int = 1,
        shuffle: bool = True,
        shuffle_buffer: int = 256,
        pad: bool = True,
        seed: int = 0,
        max_skip_fraction: float = 0.05,
        finish: Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]] | None = None,
        cache: DecodedSplit | None = None,
    ) -> None:
        """``finish``: applied to each collated batch inside the worker (the log-mel, when
        the recipe computes it in the loader). ``cache``: these shards already decoded into
        memory (:mod:`avssl.data.cache`); the samples and their draws are the same."""
        super().__init__()
        if shards.num_samples == 0:
            raise ValueError("the shard list is empty")
        shards.require_files()
        self.shards = shards
        self.sampler = sampler
        self.batch_size = batch_size
        self.num_workers = max(num_workers, 1)
        self.rank = rank
        self.world_size = world_size
        self.shuffle = shuffle
        self.shuffle_buffer = shuffle_buffer
        self.pad = pad
        self.seed = seed
        self.max_skip_fraction = max_skip_fraction
        self.finish = finish
        if cache is not None and set(cache.samples) != set(shards.files):
            raise ValueError("the decoded cache holds other shards than the stream reads")
        self.cache = cache
        self._draw_names = dict(zip(shards.files, shards.names))
        self.epoch = SharedEpoch()
        # (epoch, batches this rank already trained on in it): set by a resumed run, read by
        # the workers it forks; that epoch's first batches are then skipped without decoding
        self.resume_position: tuple[int, int] | None = None
        num_slices = self.world_size * self.num_workers
        if shards.num_samples < num_slices:
            raise ValueError(
                f"{shards.num_samples} samples cannot feed {world_size} ranks × {self.num_workers} workers"
            )

    # -- planning ---------------------------------------------------------------------
    @property
    def samples_per_worker(self) -> int:
        """Samples each worker yields per epoch when padding (a whole number of batches)."""
        per_slice = math.ceil(self.shards.num_samples / (self.world_size * self.num_workers))
        return math.ceil(per_slice / self.batch_size) * self.batch_size

    def __len__(self) -> int:
        """Batches this rank yields per epoch (exact with ``pad=True``)."""
        if self.pad:
            return self.num_workers * self.samples_per_worker // self.batch_size
        total = 0
        for worker in range(self.num_workers):
            lo, hi = slice_bounds(self.shards.num_samples, self.world_size * self.num_workers,
                                  self.rank * self.num_workers + worker)
            total += math.ceil((hi - lo) * self.sampler.spec.clips_per_video / self.batch_size)
        return total

    def shard_order(self, epoch: int) -> list[int]:
        order = list(range(len(self.shards.files)))
        if self.shuffle:
            random.Random(f"{self.seed}-{epoch}").shuffle(order)  # same on every rank
        return order

    def worker_plan(self, epoch: int, worker: int) -> list[tuple[str, int, int]]:
        """(shard file, first sample, end sample) to read, in order, for one worker."""
        slice_id = self.rank * self.num_workers + worker
        lo, hi = slice_bounds(self.shards.num_samples, self.world_size * self.num_workers, slice_id)
        plan, offset = [], 0
        for shard in self.shard_order(epoch):
            count = self.shards.counts[shard]
            first, end = max(lo - offset, 0), min(hi - offset, count)
            if first < end:
                plan.append((self.shards.files[shard], first, end))
            offset += count
        return plan

    # -- iteration ----------------------------------------------------------------------
    def _raw_samples(self, plan: list[tuple[str, int, int]], lost: SkipCounts) -> Iterator[dict[str, Any]]:
        """The planned samples in order; those the shard no longer holds (an unreadable
        file, a tar cut short or with a damaged header: tar reading stops there) are
        added to ``lost``, checked against the manifest's count."""
        if self.cache is not None:
            for url, first, end in plan:
                held = self.cache.samples[url][first:end]
                for position, sample in enumerate(held, start=first):
                    yield {**sample, "__draw__": (url, position)}
                self._count_lost(lost, url, first + len(held), end)
            return
        for url, first, end in plan:
            stream = wds.tarfile_to_samples(handler=wds.warn_and_continue)([{"url": url}])
            read = 0  # positions the tar gave
            for position, sample in enumerate(stream):
                read = position + 1
                if position >= end:
                    break
                if position >= first:
                    sample["__draw__"] = (url, position)  # names the sample's random draws
                    yield sample
            self._count_lost(lost, url, max(read, first), end)

    @staticmethod
    def _count_lost(lost: SkipCounts, url: str, reached: int, end: int) -> None:
        if reached < end:
            lost.add(end - reached, end - reached)
            warnings.warn(f"{url}: samples {reached} to {end - 1} could not be read (the shard is missing, cut "
                          f"short or damaged); {end - reached} counted as skipped", stacklevel=2)

    def batches_to_skip(self, epoch: int, worker: int) -> int:
        """Batches this worker skips in ``epoch`` to resume after ``resume_position``: the
        loader takes batches from its workers in turn, so batch ``i`` is worker ``i % W``'s."""
        if self.resume_position is None or self.resume_position[0] != epoch:
            return 0
        consumed = self.resume_position[1]
        return max(0, (consumed - worker + self.num_workers - 1) // self.num_workers)

    def resume_shift(self, epoch: int) -> int:
        """Which planned worker's batches the loader's worker 0 gives in ``epoch``. The loader
        asks its workers in turn from worker 0, but a run resumed after ``consumed`` batches
        continues with batch ``consumed``, planned worker ``consumed % W``'s: each loader
        worker then plays the part of the planned worker this far ahead of it (0 when not
        resuming; without it, a resume at an odd batch with 2 workers swapped each pair)."""
        if self.resume_position is None or self.resume_position[0] != epoch:
            return 0
        return self.resume_position[1] % self.num_workers

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        info = get_worker_info()
        if info is not None and info.num_workers != self.num_workers:
            raise RuntimeError(f"dataset planned for {self.num_workers} workers, loader has {info.num_workers}")
        epoch = self.epoch.get()
        worker = ((info.id if info is not None else 0) + self.resume_shift(epoch)) % self.num_workers
        rng = np.random.default_rng([self.seed, epoch, self.rank, worker])
        worker_seed = int(rng.integers(2**31))
        seed_cpu_draws(worker_seed)
        random.seed(worker_seed)
        lost = SkipCounts()  # filled by the tar reading, reported with the next batch
        samples: Iterator[dict[str, Any]] = self._raw_samples(self.worker_plan(epoch, worker), lost)
        if self.shuffle and self.shuffle_buffer > 1:
            samples = wds.filters.shuffle(
                bufsize=self.shuffle_buffer, initial=self.shuffle_buffer, rng=random.Random(worker_seed)
            )(samples)
        target = self.samples_per_worker if self.pad else None
        yield from self._with_counts(self._batches(samples, epoch, worker, target, lost), lost)

    @staticmethod
    def _with_counts(batches: Iterator[dict[str, torch.Tensor]], lost: SkipCounts
                     ) -> Iterator[dict[str, torch.Tensor]]:
        """Each batch one step late, so that samples found lost after the last batch was
        made (the end of a shard cut short) are still reported, with that last batch."""
        held = None
        for batch in batches:
            if held is not None:
                yield held
            held = batch
        if held is not None:
            held[SKIPPED] += lost.skipped
            held[EXPECTED] += lost.expected
            yield held

    def _sample_rng(self, sample: dict[str, Any], epoch: int) -> np.random.Generator:
        """The random draws of one sample in one epoch (windows, crop, flip), seeded by the
        sample itself: the same whichever worker decodes it and whatever was skipped before
        it, which is what lets a resumed run skip batches without decoding them."""
        url, position = sample["__draw__"]
        name = self._draw_names[url]  # the manifest's file name: the same draws from a server as from a folder
        rng = np.random.default_rng([self.seed, epoch, zlib.crc32(name.encode()), position])
        seed_cpu_draws(int(rng.integers(2**63 - 1)))  # the crop and flip draw from torch
        return rng

    def _decode(self, sample: dict[str, Any], rng: np.random.Generator) -> list[dict[str, torch.Tensor]]:
        meta = json.loads(sample["json"])
        entries = {k: v for k, v in sample.items() if not k.startswith("__")} if self.sampler.spec.targets else None
        if "__media__" in sample:  # decoded into memory: a DecodedMedia, or the error it gave
            media = sample["__media__"]
            if isinstance(media, Exception):
                raise media
            return self.sampler.clips(media, meta, rng, entries)
        key, container_format = sample_video_entry(sample)
        return self.sampler(sample[key], meta, rng, container_format=container_format, pcm=sample.get("pcm"),
                            entries=entries)

    def _batches(
        self, samples: Iterator[dict[str, Any]], epoch: int, worker: int, target: int | None, lost: SkipCounts
    ) -> Iterator[dict[str, torch.Tensor]]:
        """``lost``: samples lost since the previous batch (the tar reading adds those it
        could not read, decoding those it could not decode), reported with each batch."""
        pending: list[dict[str, torch.Tensor]] = []
        kept: list[dict[str, torch.Tensor]] = []  # for padding
        produced = emitted = 0
        # resuming: the first batches of this epoch were trained on before the restart
        fast_forward = self.batches_to_skip(epoch, worker) * self.batch_size

        def emit(items: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor] | None:
            nonlocal emitted
            emitted += 1
            skipped, expected = lost.skipped, lost.expected
            lost.skipped = lost.expected = 0
            if emitted * self.batch_size <= fast_forward:
                return None  # trained on, and counted, before the restart
            batch = default_collate(items)
            if self.finish is not None:
                seed_cpu_draws(zlib.crc32(f"{self.seed}-{epoch}-{self.rank}-{worker}-{emitted}".encode()))
                batch = self.finish(batch)
            batch[SKIPPED] = torch.tensor([skipped], dtype=torch.int64)
            batch[EXPECTED] = torch.tensor([expected], dtype=torch.int64)
            return batch

        for sample in samples:
            if produced < fast_forward and len(kept) >= self.batch_size:
                # trained on before the restart: counted, not decoded (a training sample is one
                # window; `pending` is empty here, the first batch having filled `kept`)
                produced += 1
                if produced % self.batch_size == 0:
                    emitted += 1
                    lost.skipped = lost.expected = 0  # its losses were counted before the restart
                continue
            try:
                clips = self._decode(sample, self._sample_rng(sample, epoch))
            except Exception:  # corrupt sample: counted; the limit applies to the run's totals (ShardLoader)
                lost.add(1, 1)
                continue
            lost.add(0, 1)
            for clip in clips:
                if target is not None and produced >= target:
                    break
                pending.append(clip)
                produced += 1
                if len(kept) < self.batch_size:
                    kept.append(clip)
                if len(pending) == self.batch_size:
                    if (batch := emit(pending)) is not None:
                        yield batch
                    pending = []
        if target is not None:
            if produced < target and not kept:
                raise DataError(f"no sample of rank {self.rank}'s worker {worker} could be read or decoded in "
                                f"epoch {epoch}: the shards are missing or damaged")
            i = 0
            while produced < target:  # pad with repeats of this worker's own samples
                pending.append(kept[i % len(kept)])
                i += 1
                produced += 1
                if len(pending) == self.batch_size:
                    if (batch := emit(pending)) is not None:
                        yield batch
                    pending = []
        if pending and (batch := emit(pending)) is not None:
            yield batch


@dataclass
class DataConfig:
    """The ``data`` section of a recipe: where the shards are, the input windows
    (``video``, ``audio``, ``mel``: the spec exported with the encoders), and loading."""

    shards: str = "data/shards"
    video: VideoView | None = field(default_factory=VideoView)
    audio: AudioView | None = field(default_factory=AudioView)
    mel: MelSettings = field(default_factory=MelSettings)
    eval_clips_per_video: int = 1
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
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            return torch.distributed.get_rank(), torch.distributed.get_world_size()
        return 0, 1

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

    def evaluation_loader(self, split: str) -> DataLoader:
        """A validation or test loader: its losses are counted in the batches (``skipped``)
        and logged, never a stop mid-pass (a test split's clips are checked whole by the verb
        that reports them: :func:`~avssl.data.skips.split_clips`)."""
        loader = self.loader(self.stream(split, train=False))
        loader.check_limit = False
        return loader


class ShardLoader(DataLoader):
    """A DataLoader over a ShardStream whose sampler forwards Lightning's ``set_epoch``.

    Stateful (``state_dict`` / ``load_state_dict``): the epoch and the number of batches the
    training loop has consumed in it (:meth:`mark_consumed`, called by the data module once
    per training batch), and the samples lost in those batches. A run resumed from a
    mid-epoch checkpoint continues with the next batch of that epoch. The data module's
    state carries it (restored before the loader is built); Lightning, seeing a stateful
    loader, also saves and reloads it, with the same values.

    Iterating sums the workers' ``skipped`` / ``expected`` counts of the epoch and, unless
    ``single_pass`` (the evaluation verbs, which check each split whole once read:
    :func:`~avssl.data.skips.split_clips`), stops (:class:`~avssl.data.errors.DataError`) once
    this process alone lost more than ``max_skip_fraction`` of the samples the manifest lists:
    the epoch is then over the limit whatever the rest does (the limit on the run's totals:
    :class:`~avssl.data.skips.SkipMonitor`).
    """

    def __init__(self, dataset: ShardStream, num_workers: int, single_pass: bool = False) -> None:
        super().__init__(
            dataset,
            batch_size=None,
            num_workers=num_workers,
            # Training keeps its workers across epochs. A single pass (the evaluation verbs)
            # lets them exit at the end: workers kept alive by a finished loader were inherited
            # by the next loader's forked workers, whose garbage collector then tried to stop
            # them ("AssertionError: can only test a child process" in the probe's output).
            persistent_workers=num_workers > 0 and not single_pass,
            prefetch_factor=4 if num_workers > 0 else None,
            pin_memory=torch.cuda.is_available(),  # page-locked batches: asynchronous copies to the GPU
        )
        # DataLoader refuses a sampler for an IterableDataset, but Lightning looks for
        # `loader.sampler.set_epoch`: install one that only forwards the epoch.
        object.__setattr__(self, "sampler", _EpochSampler(dataset.epoch, self._new_epoch))
        self.stream = dataset
        self.consumed = 0
        self.check_limit = not single_pass
        # lost samples of this epoch: those of the batches before a resume point, then each
        # batch's own (a batch is fetched before it is consumed; a checkpoint counts the consumed)
        self._counts = SkipCounts()  # this epoch's, through the last batch fetched
        self._batch_counts: list[tuple[int, int]] = []  # each batch's own, from batch _first_counted on
        self._first_counted = 0

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        if self.consumed == 0:  # a new epoch (a resumed one starts where load_state_dict put it)
            self._counts, self._batch_counts, self._first_counted = SkipCounts(), [], 0
        samples = self.stream.shards.num_samples
        limit = self.stream.max_skip_fraction
        for batch in super().__iter__():
            counts = (int(batch[SKIPPED].sum()), int(batch[EXPECTED].sum()))
            if self.consumed > self._first_counted:  # keep those of the batches not yet trained on
                del self._batch_counts[: self.consumed - self._first_counted]
                self._first_counted = self.consumed
            self._batch_counts.append(counts)
            self._counts.add(*counts)
            if self.check_limit and certainly_over_limit(self._counts.skipped, samples, limit):
                raise DataError(over_limit_message(f"epoch {self.stream.epoch.get()}", self._counts.skipped,
                                                   samples, limit))
            yield batch

    def epoch_counts(self, batches: int | None = None) -> SkipCounts:
        """Samples lost and settled in this epoch's batches fetched so far (or its first ``batches``:
        those trained on, the few fetched ahead taken off)."""
        total = SkipCounts(self._counts.skipped, self._counts.expected)
        if batches is not None:
            for skipped, expected in self._batch_counts[max(batches - self._first_counted, 0):]:
                total.add(-skipped, -expected)
        return total

    def _new_epoch(self, epoch: int) -> None:
        if epoch != self.stream.epoch.get():
            self.consumed = 0

    def mark_consumed(self) -> None:
        self.consumed += 1

    def state_dict(self) -> dict[str, int]:
        epoch, consumed = self.stream.epoch.get(), self.consumed
        counts = self.epoch_counts(consumed)
        if consumed >= len(self.stream):  # a checkpoint at the end of an epoch: the next one starts
            epoch, consumed, counts = epoch + 1, 0, SkipCounts()
        return {"epoch": epoch, "consumed": consumed, "workers": self.stream.num_workers,
                "world_size": self.stream.world_size, "skipped": counts.skipped, "expected": counts.expected}

    def load_state_dict(self, state: dict[str, int]) -> None:
        epoch, consumed = int(state["epoch"]), int(state["consumed"])
        same = (state.get("workers"), state.get("world_size")) == (self.stream.num_workers, self.stream.world_size)
        if consumed and not same:
            warnings.warn(
                f"the checkpoint was written with {state.get('world_size')} ranks × {state.get('workers')} workers, "
                f"this run has {self.stream.world_size} × {self.stream.num_workers}: the samples of an epoch are "
                f"split differently, so epoch {epoch} restarts from its first batch instead of batch {consumed}",
                stacklevel=2)
            consumed = 0
        self.stream.epoch.set(epoch)
        self.stream.resume_position = (epoch, consumed) if consumed else None
        self.consumed = consumed
        self._counts = (SkipCounts(int(state.get("skipped", 0)), int(state.get("expected", 0))) if consumed
                        else SkipCounts())
        self._batch_counts, self._first_counted = [], consumed


def make_loader(dataset: ShardStream, num_workers: int, single_pass: bool = False) -> ShardLoader:
    """The loader of a ShardStream (training and validation; ``single_pass=True``: the
    evaluation verbs, which read each split once)."""
    return ShardLoader(dataset, num_workers, single_pass)
