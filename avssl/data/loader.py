"""The DataLoader of a :class:`~avssl.data.stream.ShardStream`: Lightning's epochs in, and
the position it resumes from (the epoch and the batches consumed) and the samples lost out.
"""
from __future__ import annotations

import gc
import warnings
from typing import Callable, Iterator

import torch
from torch.utils.data import DataLoader
from torch.utils.data.dataloader import _InfiniteConstantSampler

from avssl.data.errors import DataError
from avssl.data.skips import SkipCounts, certainly_over_limit, over_limit_message
from avssl.data.stream import ShardStream, SharedEpoch
from avssl.data.views import EXPECTED, SKIPPED


class EpochSampler(_InfiniteConstantSampler):
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
            timeout=dataset.worker_timeout if num_workers > 0 else 0,
        )
        # DataLoader refuses a sampler for an IterableDataset, but Lightning looks for
        # `loader.sampler.set_epoch`: install one that only forwards the epoch.
        object.__setattr__(self, "sampler", EpochSampler(dataset.epoch, self._new_epoch))
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
        try:
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
        except RuntimeError as error:
            if not (self.timeout and str(error).startswith("DataLoader timed out")):
                raise
            raise DataError(
                f"no batch from the {self.num_workers} loader workers in {self.timeout:g} s "
                f"(data.worker_timeout_s): a worker is stuck or far too slow; py-spy dump --pid <worker> "
                f"shows where, and data.worker_timeout_s=0 waits forever") from None

    def _get_iterator(self):
        """DataLoader starts its workers here (once for persistent ones): a fork copies the
        parent's uncollected garbage, and a native object freed in a worker waits forever on
        FFmpeg threads that live in the parent only (avssl.data.decode.audio_resampler), so
        the garbage is freed first, here."""
        if self.num_workers > 0:
            gc.collect()
        return super()._get_iterator()

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


__all__ = ["EpochSampler", "ShardLoader", "make_loader"]
