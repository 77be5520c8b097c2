"""The CSV log of a run that survives resuming.

Lightning's CSV writer deletes ``metrics.csv`` when it opens a folder that has one, so a
resumed run would lose every row before the restart. This writer keeps the rows of the
steps before the checkpoint it resumes from (rows after it belong to the lost part of the
killed run and would be logged twice), keeps their columns, and appends. A run trained on
from its final checkpoint (a larger ``trainer.max_epochs``) keeps the test scores of that
checkpoint too: they are logged at its step, and nothing relogs them.
"""
from __future__ import annotations

import csv
import os

from pytorch_lightning.loggers import CSVLogger
from pytorch_lightning.loggers.csv_logs import ExperimentWriter
from pytorch_lightning.loggers.logger import rank_zero_experiment


def _before_the_checkpoint(row: dict[str, str], step: int) -> bool:
    """Logged before the checkpoint at ``step``, or the test of that checkpoint (the end of a run)."""
    if row.get("step", "") == "":
        return False
    logged_at = int(row["step"])
    if logged_at != step:
        return logged_at < step
    metrics = [key for key, value in row.items() if value not in ("", None) and key not in ("epoch", "step")]
    return bool(metrics) and all(key.startswith("test/") for key in metrics)


class _AppendingWriter(ExperimentWriter):
    def __init__(self, log_dir: str, keep_before_step: int | None) -> None:
        self._keep_before_step = keep_before_step
        super().__init__(log_dir)

    def _check_log_dir_exists(self) -> None:  # the parent deletes metrics.csv here
        if self._keep_before_step is None or not os.path.isfile(self.metrics_file_path):
            super()._check_log_dir_exists()
            return
        with open(self.metrics_file_path, newline="") as file:
            reader = csv.DictReader(file)
            keys, rows = sorted(reader.fieldnames or []), list(reader)  # sorted: the order the parent appends in
        rows = [row for row in rows if _before_the_checkpoint(row, self._keep_before_step)]
        with open(self.metrics_file_path, "w", newline="") as file:
            writer = csv.DictWriter(file, fieldnames=keys)
            writer.writeheader()
            writer.writerows(rows)
        self.metrics_keys = keys


class ResumableCSVLogger(CSVLogger):
    """``CSVLogger`` that, given ``resumed_at_step``, continues the existing ``metrics.csv``."""

    def __init__(self, *args, resumed_at_step: int | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._resumed_at_step = resumed_at_step

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _AppendingWriter(self.log_dir, self._resumed_at_step)
        return self._experiment
