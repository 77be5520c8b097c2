"""Lost samples are counted, never silent.

The manifest says how many samples each shard holds, so every sample a run expected and did
not get is counted: a shard missing or unreadable, a tar cut short or with a damaged header
(the rest of that shard is lost), a sample whose media cannot be decoded. Each loader worker
carries its counts in the batches (``skipped``, ``expected``: workers share no state), the
training process sums them (:class:`~avssl.data.loader.ShardLoader`) and, at the end of
every epoch, :class:`SkipMonitor` sums them over ranks and applies ``data.max_skip_fraction``
to the run's totals. Mid-epoch a rank stops only once the limit is certain to be exceeded
(its own losses alone pass the limit's share of the whole epoch), so a few early failures
never stop a run that would end under its limit.

The evaluation verbs report, per split, the clips evaluated against those expected
(:func:`clip_report`) in ``metrics.json``; a test split that lost clips is an error unless
``data.allow_missing_test_clips`` (:func:`require_complete_split`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities import rank_zero_info, rank_zero_warn

from avssl.data.errors import DataError
from avssl.data.manifest import ShardList


@dataclass
class SkipCounts:
    """Samples lost (``skipped``) of those settled so far (``expected``: decoded or lost)."""

    skipped: int = 0
    expected: int = 0

    def add(self, skipped: int, expected: int) -> None:
        self.skipped += skipped
        self.expected += expected

    def as_dict(self) -> dict[str, int]:
        return {"skipped": self.skipped, "expected": self.expected}


def certainly_over_limit(skipped: int, epoch_samples: int, limit: float) -> bool:
    """True once ``skipped`` alone passes ``limit`` of the whole epoch: the epoch's share is
    then over the limit whatever the remaining samples do."""
    return skipped > limit * epoch_samples


def over_limit_message(what: str, skipped: int, epoch_samples: int, limit: float) -> str:
    return (f"{what}: {skipped} of the {epoch_samples} samples the manifest lists were lost (missing or damaged "
            f"shards, undecodable media), over data.max_skip_fraction={limit:g} "
            f"({int(limit * epoch_samples)} samples); repair or rewrite the shards (`avssl shards`), "
            "or raise the limit")


def clip_report(split: str, samples_expected: int, clips_per_video: int, clips_evaluated: int) -> dict[str, Any]:
    """What an evaluation verb writes about one split: clips evaluated vs expected (every
    sample of the manifest gives ``clips_per_video`` clips, or none when it is lost)."""
    clips_expected = samples_expected * clips_per_video
    return {"split": split, "clips_expected": clips_expected, "clips_evaluated": clips_evaluated,
            "clips_missing": clips_expected - clips_evaluated}


def require_complete_split(report: dict[str, Any], allow_missing: bool) -> None:
    """A test split that lost clips gives figures on another set than the one named: an
    error unless the user allows it (``data.allow_missing_test_clips``; then a warning)."""
    missing = report["clips_missing"]
    if missing <= 0:
        return
    text = (f"split {report['split']!r}: {report['clips_evaluated']} of {report['clips_expected']} clips evaluated, "
            f"{missing} lost (missing or damaged shards, undecodable media)")
    if not allow_missing:
        raise DataError(f"{text}; repair the shards, or set data.allow_missing_test_clips=true to report on the rest")
    rank_zero_warn(f"{text}; reported on the rest (data.allow_missing_test_clips)")


def split_clips(shards_dir: str, split: str, clips_per_video: int, clips_evaluated: int, *, test: bool,
                allow_missing: bool = False, limit: float = 1.0) -> dict[str, Any]:
    """The :func:`clip_report` of one split an evaluation verb read (the manifest gives the
    samples expected). A ``test`` split must be whole (:func:`require_complete_split`);
    another (a probe's train or val split) may lose up to ``limit`` of its samples."""
    samples = ShardList.from_manifest(shards_dir, split).num_samples
    report = clip_report(split, samples, clips_per_video, clips_evaluated)
    if test:
        require_complete_split(report, allow_missing)
    else:
        lost = -(-report["clips_missing"] // clips_per_video)  # samples: a lost sample takes all its clips
        if lost > limit * samples:
            raise DataError(over_limit_message(f"split {split!r}", lost, samples, limit))
    return report


class SkipMonitor(pl.Callback):
    """Per epoch: the training loader's counts summed over ranks, ``data.max_skip_fraction``
    applied to them, ``data/skipped`` and ``data/expected`` logged; at the end of fitting a
    summary of every epoch. Installed by :class:`~avssl.data.datamodule.AVDataModule`."""

    def __init__(self, datamodule: Any) -> None:
        self.datamodule = datamodule

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        loader = self.datamodule.train_loader
        if loader is None:
            return
        local = torch.tensor(float(loader.epoch_counts().skipped), dtype=torch.float64, device=pl_module.device)
        skipped = int(trainer.strategy.reduce(local, reduce_op="sum"))
        samples = loader.stream.shards.num_samples  # all ranks' workers together settle every one
        self.datamodule.skip_history.append({"epoch": trainer.current_epoch, "skipped": skipped, "expected": samples})
        pl_module.log_dict({"data/skipped": float(skipped), "data/expected": float(samples)}, on_step=False,
                           on_epoch=True, sync_dist=False, batch_size=1)
        limit = loader.stream.max_skip_fraction
        if certainly_over_limit(skipped, samples, limit):
            raise DataError(over_limit_message(f"epoch {trainer.current_epoch}", skipped, samples, limit))
        if skipped:
            rank_zero_warn(f"epoch {trainer.current_epoch}: {skipped} of {samples} training samples lost "
                           f"({skipped / samples:.1%}, limit {limit:.0%}); each was replaced by a repeat")

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        rank_zero_info(skip_summary(self.datamodule.skip_history))


def skip_summary(history: list[dict[str, int]]) -> str:
    """One line: the training samples lost over the run, and in which epochs."""
    if not history:
        return "data: no training epoch completed"
    skipped = sum(h["skipped"] for h in history)
    expected = sum(h["expected"] for h in history)
    epochs = ", ".join(f"epoch {h['epoch']}: {h['skipped']}" for h in history if h["skipped"])
    return (f"data: {skipped} of {expected} training samples lost over {len(history)} epoch(s)"
            + (f" ({epochs})" if epochs else ""))


__all__ = ["SkipCounts", "SkipMonitor", "certainly_over_limit", "clip_report", "over_limit_message",
           "require_complete_split", "skip_summary", "split_clips"]
