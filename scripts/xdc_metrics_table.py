"""Per-epoch table of an XDC run's logged metrics (last value of each per epoch).

    python scripts/xdc_metrics_table.py runs/x/csv/metrics.csv
"""
from __future__ import annotations

import csv
import sys

COLUMNS = ["train/loss_epoch", "online/video_linear_top1", "online/audio_linear_top1", "train/xdc_nmi",
           "train/xdc_nmi_audio", "train/video_head_audio_accuracy", "train/audio_head_video_accuracy",
           "val/nmi_video_head"]


def main(path: str) -> None:
    rows: dict[int, dict[str, str]] = {}
    with open(path) as f:
        for row in csv.DictReader(f):
            if row.get("epoch"):
                slot = rows.setdefault(int(float(row["epoch"])), {})
                slot.update({k: v for k, v in row.items() if v and k in COLUMNS})
    print("epoch " + " ".join(c.split("/")[1][:12].rjust(12) for c in COLUMNS))
    for epoch in sorted(rows):
        print(f"{epoch:5d} " + " ".join(f"{float(rows[epoch][c]):12.3f}" if c in rows[epoch] else " " * 12
                                        for c in COLUMNS))


if __name__ == "__main__":
    main(sys.argv[1])
