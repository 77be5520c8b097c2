"""Per-step timing logged beside the losses: where a step's time goes, and clips/s.

Lightning's own ``ThroughputMonitor`` needs the batch size and FLOPs passed in by hand and
logs no data-wait time; this callback measures, per training step (rank 0's view):

- ``perf/data_time``: seconds from the end of the previous step to the start of this one
  (waiting for the loader plus moving the batch and its device transforms);
- ``perf/step_time``: seconds of forward, backward and optimiser step (the CUDA stream
  synchronised first when on a GPU, so that the time is the GPU's, not the launch's);
- ``perf/clips_per_s``: clips of this rank's batch over data + step time: per device;
- ``perf/skipped_samples``: samples the loader could not decode since the previous batch.

The learning rate and every loss term are logged by ``LearningRateMonitor`` and the task
(``train/<term>``).
"""
from __future__ import annotations

import time
from typing import Any

import pytorch_lightning as pl
import torch

from avssl.data.views import INDEX, SKIPPED


class ThroughputMonitor(pl.Callback):
    def __init__(self) -> None:
        self._step_start: float | None = None
        self._previous_end: float | None = None

    @staticmethod
    def _sync(pl_module: pl.LightningModule) -> None:
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize(pl_module.device)

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._previous_end = time.perf_counter()  # the epoch's first wait includes worker start-up

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        self._sync(pl_module)
        self._step_start = time.perf_counter()

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if self._step_start is None:
            return
        self._sync(pl_module)
        end = time.perf_counter()
        step = end - self._step_start
        data = self._step_start - (self._previous_end if self._previous_end is not None else self._step_start)
        self._previous_end = end
        clips = int(batch[INDEX].shape[0]) if isinstance(batch, dict) and INDEX in batch else 0
        values = {"perf/data_time": data, "perf/step_time": step}
        if clips:
            values["perf/clips_per_s"] = clips / max(data + step, 1e-9)
        if isinstance(batch, dict) and SKIPPED in batch:
            values["perf/skipped_samples"] = float(batch[SKIPPED].sum())
        pl_module.log_dict(values, on_step=True, on_epoch=False, batch_size=max(clips, 1), rank_zero_only=True)
