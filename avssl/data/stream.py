"""One split's shards → batches of decoded views, as a chain of named stages.

Every worker of every rank runs the same chain (:meth:`ShardStream.__iter__`). Webdataset
reads the tars and shuffles; a stage is the project's own where webdataset's would break one
of three guarantees (equal step counts on every rank, exact mid-epoch resume, every lost
sample counted), and its line says which:

1. shard list (``ShardList``, :meth:`ShardStream.shard_order`): the manifest's shards and
   their sample counts, in an order shuffled each epoch with a seed all ranks share. The
   epoch is Lightning's, forwarded to the workers (:mod:`avssl.data.loader`), not webdataset's
   ``with_epoch`` (a sample count cut from an endless stream: no epoch to resume inside).
2. rank split, worker split (:meth:`ShardStream.worker_plan`, :func:`slice_bounds`). Own:
   webdataset's ``split_by_node`` / ``split_by_worker`` deal whole shards, so ranks get
   unequal sample counts, hence unequal step counts (a rank then waits forever on the
   others' all-reduce); here the epoch's sample sequence is cut into near-equal slices.
3. samples (:func:`read_samples`): webdataset's ``tarfile_to_samples``, one shard at a time.
   Own loop around it: it cuts a shard to the slice, numbers each sample (what seeds its
   draws) and counts the samples a missing, short or damaged shard no longer holds.
4. shuffle: webdataset's buffer (``webdataset.filters.shuffle``), on raw bytes.
5. decode (:func:`decode_clips`). Own: a sample's windows (:class:`~avssl.data.sampling.ViewSampler`)
   with draws seeded by the sample itself; an undecodable sample is counted (webdataset's
   handlers drop it uncounted); resuming, the samples of the batches trained on before the
   restart pass undecoded.
6. pad (:func:`pad_to`). Own (webdataset has none): every worker of every rank gives the same
   whole number of batches.
7. batch (:func:`collate_batches`). Own: webdataset's ``batched`` yields a full batch only once
   the next clip has arrived, so that clip's sample would be decoded early and its losses
   reported with the wrong batch; the batches trained on before a restart are dropped uncollated.
8. late counts (:func:`report_late`). Own: each batch is held one step, so that losses found
   after the last batch (a shard cut short at its end) are reported with that batch.

Splitting: every epoch the shard list is shuffled with a seed shared by all ranks and changed
every epoch; the resulting sample sequence is cut into ``world_size × num_workers`` contiguous
slices of near-equal length (a slice may start or end inside a shard; the few samples before
it are read and dropped without decoding). Every sample lands in exactly one slice, and each
slice is padded with repeats of its own samples up to the same whole number of batches, so
every rank runs the same number of steps and nothing is dropped. Padding is at most
``batch_size`` samples per worker and is counted.

Lost samples are counted against the manifest's per-shard counts (:mod:`avssl.data.skips`):
a shard missing at the start (a local file, or an http(s) URL whose HEAD request fails)
stops the run before training; one that becomes unreadable, a tar cut short or with a
damaged header (a connection dropped mid-shard), and undecodable media are counted as
``skipped`` in the batches and limited by ``data.max_skip_fraction`` on the run's totals.
The stages share one :class:`~avssl.data.skips.SkipCounts`: the samples and decode stages
add what they lose, the batch stage reports it with the batch it completes and starts again from zero.

``data.shards`` may also be the shards folder's URL, a brace list or a ``pipe:`` command
(:mod:`avssl.data.remote`); webdataset's openers read them. Batching happens inside each
worker; the loader (:mod:`avssl.data.loader`) takes batches from its workers in turn.
"""
from __future__ import annotations

import json
import math
import multiprocessing as mp
import random
import warnings
import zlib
from typing import Any, Callable, Iterator

import numpy as np
import torch
import webdataset as wds
from torch.utils.data import IterableDataset, get_worker_info
from torch.utils.data.dataloader import default_collate

from avssl.data.cache import DecodedSplit
from avssl.data.decode import sample_video_entry
from avssl.data.errors import DataError
from avssl.data.manifest import ShardList
from avssl.data.sampling import ViewSampler
from avssl.data.skips import SkipCounts
from avssl.data.views import EXPECTED, SKIPPED

Sample = dict[str, Any]  # one shard sample: its entries' bytes by name, "__key__", "__draw__"
Clip = dict[str, torch.Tensor]  # one clip's views (avssl/data/views.py)
Batch = dict[str, torch.Tensor]
Plan = list[tuple[str, int, int]]  # (shard, first sample, end sample) to read, in order


def slice_bounds(num_samples: int, num_slices: int, slice_id: int) -> tuple[int, int]:
    """Contiguous near-equal slices of ``range(num_samples)``."""
    return num_samples * slice_id // num_slices, num_samples * (slice_id + 1) // num_slices


def seed_cpu_draws(seed: int) -> None:
    """Seed torch's CPU generator, where the loader's transforms draw from. Not
    ``torch.manual_seed``: in a CUDA build it also queues a lazy CUDA seeding with the
    formatted call stack, ~1 ms a call, which at one call per sample was a third of a loader
    worker's time in the CPU demo (the CPU stream is the same)."""
    torch.default_generator.manual_seed(seed)


class SharedEpoch:
    """An epoch counter shared with (persistent) worker processes."""

    def __init__(self, epoch: int = 0) -> None:
        self._value = mp.Value("i", epoch)

    def set(self, epoch: int) -> None:
        self._value.value = epoch

    def get(self) -> int:
        return int(self._value.value)


# -- the stages -----------------------------------------------------------------------------
def read_samples(plan: Plan, lost: SkipCounts, cache: DecodedSplit | None = None) -> Iterator[Sample]:
    """samples: the planned samples in order, each numbered by its shard and position
    (``__draw__``: what names its random draws). Those a shard no longer holds (an unreadable
    file, a tar cut short or with a damaged header: tar reading stops there) are added to
    ``lost``, checked against the manifest's count. ``cache``: the shards already decoded."""
    if cache is not None:
        for url, first, end in plan:
            held = cache.samples[url][first:end]
            for position, sample in enumerate(held, start=first):
                yield {**sample, "__draw__": (url, position)}
            count_lost(lost, url, first + len(held), end)
        return
    for url, first, end in plan:
        stream = wds.tarfile_to_samples(handler=wds.warn_and_continue)([{"url": url}])
        read = 0  # positions the tar gave
        for position, sample in enumerate(stream):
            read = position + 1
            if position >= end:
                break
            if position >= first:
                sample["__draw__"] = (url, position)
                yield sample
        count_lost(lost, url, max(read, first), end)


def count_lost(lost: SkipCounts, url: str, reached: int, end: int) -> None:
    """Add the samples ``reached`` to ``end`` of a shard, which it did not give, to ``lost``."""
    if reached < end:
        lost.add(end - reached, end - reached)
        warnings.warn(f"{url}: samples {reached} to {end - 1} could not be read (the shard is missing, cut "
                      f"short or damaged); {end - reached} counted as skipped", stacklevel=2)


def decode_clips(samples: Iterator[Sample], decode: Callable[[Sample], list[Clip]], lost: SkipCounts, *,
                 batch_size: int, trained_clips: int = 0) -> Iterator[Clip | None]:
    """decode: each sample's clips; one that cannot be decoded is added to ``lost`` (the limit
    applies to the run's totals: :class:`~avssl.data.loader.ShardLoader`), one decoded is
    settled (``expected``). ``trained_clips``: resuming, the clips of this epoch's batches
    trained on before the restart: past the first batch (decoded: the padding's material)
    their samples give ``None`` undecoded (a training sample is one window)."""
    given = 0
    for sample in samples:
        if batch_size <= given < trained_clips:
            given += 1
            yield None
            continue
        try:
            clips = decode(sample)
        except Exception:  # a corrupt sample: counted
            lost.add(1, 1)
            continue
        lost.add(0, 1)
        for clip in clips:
            given += 1
            yield clip


def pad_to(clips: Iterator[Clip | None], target: int | None, batch_size: int, empty: str) -> Iterator[Clip | None]:
    """pad: exactly ``target`` clips (None: as many as come): those past it are dropped (their
    samples are still read and counted), and a short slice is padded with repeats of its own
    first ``batch_size`` clips. ``empty``: the DataError when there is nothing to repeat."""
    if target is None:
        yield from clips
        return
    kept: list[Clip | None] = []  # for padding
    given = 0
    for clip in clips:
        if given >= target:
            continue
        given += 1
        if len(kept) < batch_size:
            kept.append(clip)
        yield clip
    if given < target and not kept:
        raise DataError(empty)
    for i in range(target - given):  # pad with repeats of this worker's own clips
        yield kept[i % len(kept)]


def collate_batches(clips: Iterator[Clip | None], batch_size: int, lost: SkipCounts, *, trained_batches: int = 0,
                    finish: Callable[[Batch, int], Batch] | None = None) -> Iterator[Batch]:
    """batch: every ``batch_size`` clips (and the rest) collated as soon as the last of them
    arrives, with the samples ``lost`` since the previous batch (``skipped``) and those settled
    (``expected``); ``lost`` then starts again. The first ``trained_batches`` (trained on, and
    counted, before a restart) are dropped uncollated. ``finish(batch, number)``: applied to
    each batch (``number`` counts from 1, the dropped ones included)."""
    pending: list[Clip | None] = []
    number = 0

    def emit() -> Batch | None:
        nonlocal number
        number += 1
        skipped, expected = lost.skipped, lost.expected
        lost.skipped = lost.expected = 0
        if number <= trained_batches:
            return None
        batch = default_collate(pending)
        if finish is not None:
            batch = finish(batch, number)
        batch[SKIPPED] = torch.tensor([skipped], dtype=torch.int64)
        batch[EXPECTED] = torch.tensor([expected], dtype=torch.int64)
        return batch

    for clip in clips:
        pending.append(clip)
        if len(pending) == batch_size:
            if (batch := emit()) is not None:
                yield batch
            pending = []
    if pending and (batch := emit()) is not None:
        yield batch


def report_late(batches: Iterator[Batch], lost: SkipCounts) -> Iterator[Batch]:
    """late counts: each batch one step late, so that samples found lost after the last batch
    was made (the end of a shard cut short) are still reported, with that last batch."""
    held = None
    for batch in batches:
        if held is not None:
            yield held
        held = batch
    if held is not None:
        held[SKIPPED] += lost.skipped
        held[EXPECTED] += lost.expected
        yield held


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
        worker_timeout: float = 0.0,
        finish: Callable[[Batch], Batch] | None = None,
        cache: DecodedSplit | None = None,
    ) -> None:
        """``finish``: applied to each collated batch inside the worker (the log-mel, when
        the recipe computes it in the loader). ``cache``: these shards already decoded into
        memory (:mod:`avssl.data.cache`); the samples and their draws are the same.
        ``worker_timeout``: seconds the loader waits for its workers' next batch (0: forever)."""
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
        self.worker_timeout = worker_timeout
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

    # -- planning: shard list, rank split, worker split --------------------------------------
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

    def worker_plan(self, epoch: int, worker: int) -> Plan:
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

    # -- resuming --------------------------------------------------------------------------
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

    # -- the chain -------------------------------------------------------------------------
    def __iter__(self) -> Iterator[Batch]:
        info = get_worker_info()
        if info is not None and info.num_workers != self.num_workers:
            raise RuntimeError(f"dataset planned for {self.num_workers} workers, loader has {info.num_workers}")
        epoch = self.epoch.get()
        worker = ((info.id if info is not None else 0) + self.resume_shift(epoch)) % self.num_workers
        rng = np.random.default_rng([self.seed, epoch, self.rank, worker])
        worker_seed = int(rng.integers(2**31))
        seed_cpu_draws(worker_seed)
        random.seed(worker_seed)
        lost = SkipCounts()  # added to by the samples and decode stages, reported with each batch
        trained_batches = self.batches_to_skip(epoch, worker)

        def decode(sample: Sample) -> list[Clip]:
            return self._decode(sample, self._sample_rng(sample, epoch))

        def finish(batch: Batch, number: int) -> Batch:
            seed_cpu_draws(zlib.crc32(f"{self.seed}-{epoch}-{self.rank}-{worker}-{number}".encode()))
            return self.finish(batch)

        samples = read_samples(self.worker_plan(epoch, worker), lost, self.cache)
        if self.shuffle and self.shuffle_buffer > 1:
            samples = wds.filters.shuffle(
                bufsize=self.shuffle_buffer, initial=self.shuffle_buffer, rng=random.Random(worker_seed)
            )(samples)
        clips = decode_clips(samples, decode, lost, batch_size=self.batch_size,
                             trained_clips=trained_batches * self.batch_size)
        clips = pad_to(clips, self.samples_per_worker if self.pad else None, self.batch_size,
                       empty=f"no sample of rank {self.rank}'s worker {worker} could be read or decoded in "
                             f"epoch {epoch}: the shards are missing or damaged")
        batches = collate_batches(clips, self.batch_size, lost, trained_batches=trained_batches,
                                  finish=finish if self.finish is not None else None)
        yield from report_late(batches, lost)

    def _sample_rng(self, sample: Sample, epoch: int) -> np.random.Generator:
        """The random draws of one sample in one epoch (windows, crop, flip), seeded by the
        sample itself: the same whichever worker decodes it and whatever was skipped before
        it, which is what lets a resumed run skip batches without decoding them."""
        url, position = sample["__draw__"]
        name = self._draw_names[url]  # the manifest's file name: the same draws from a server as from a folder
        rng = np.random.default_rng([self.seed, epoch, zlib.crc32(name.encode()), position])
        seed_cpu_draws(int(rng.integers(2**63 - 1)))  # the crop and flip draw from torch
        return rng

    def _decode(self, sample: Sample, rng: np.random.Generator) -> list[Clip]:
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


__all__ = ["SharedEpoch", "ShardStream", "collate_batches", "count_lost", "decode_clips", "pad_to", "read_samples",
           "report_late", "seed_cpu_draws", "slice_bounds"]
