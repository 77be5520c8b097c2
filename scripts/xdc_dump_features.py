"""Diagnostics for XDC's clustering (docs/methods/xdc.md): run ``avssl`` with every
clustering's input saved to ``$XDC_DUMP_DIR/epoch_XXX.pt`` (shard index, video and audio
backbone features, the warm-up projections' outputs when the recipe has them, categories),
so that k-means variants can be compared offline on the very features the run clustered.
Training is unchanged.

    XDC_DUMP_DIR=runs/x/dump python scripts/xdc_dump_features.py pretrain recipes/synth/xdc_small.yaml ...
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import torch

from avssl.tasks.pretext.xdc import XDC

_relabel = XDC.relabel


def relabel_and_dump(self: XDC, index: torch.Tensor, features: dict[str, torch.Tensor],
                     category: torch.Tensor) -> None:
    out = Path(os.environ["XDC_DUMP_DIR"])
    out.mkdir(parents=True, exist_ok=True)
    record = {"index": index.cpu(), "category": category.cpu(),
              **{name: value.cpu() for name, value in features.items()}}
    torch.save(record, out / f"epoch_{int(self.current_epoch):03d}.pt")
    _relabel(self, index, features, category)


XDC.relabel = relabel_and_dump

if __name__ == "__main__":
    from avssl.cli import main

    sys.exit(main(sys.argv[1:]))
