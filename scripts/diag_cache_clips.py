"""In-memory diagnostics for AVID/SeLaVi (docs/methods/avid_cma.md): decode the demo shards once.
python scripts/diag_cache_clips.py  → /tmp/diag/cache.pt (train: 2 random windows per video; val/test centre)."""
import os
import time
from pathlib import Path

import torch
from omegaconf import OmegaConf

from avssl.config import load_recipe
from avssl.data.datamodule import AVDataModule, DataConfig, base_views, make_loader

REPO = Path(__file__).resolve().parents[1]

torch.set_num_threads(1)
recipe = load_recipe(str(REPO) + "/recipes/synth/avid_cma_small.yaml")
data: DataConfig = OmegaConf.to_object(recipe.data)
data.shards = str(REPO) + "/runs/demo/shards"
data.num_workers = 1
views = base_views(data)
dm = AVDataModule(data, views)
out = {}
for split, train, passes in [("train", True, 2), ("val", False, 1), ("test", False, 1)]:
    t = time.time()
    vs, as_, idx, lab = [], [], [], []
    for p in range(passes):
        ds = dm.stream(split, train=train, distributed=False)
        ds.epoch.set(p)
        for batch in make_loader(ds, 1):
            batch = dm.eval_transform(batch, train=False)  # normalise + log-mel, no aug
            vs.append(batch["video"])
            as_.append(batch["audio"])
            idx.append(batch["index"])
            lab.append(batch["label"])
    out[split] = {"video": torch.cat(vs), "audio": torch.cat(as_), "index": torch.cat(idx), "label": torch.cat(lab)}
    print(split, out[split]["video"].shape, out[split]["audio"].shape, time.time() - t, flush=True)
os.makedirs("/tmp/diag", exist_ok=True)
torch.save(out, "/tmp/diag/cache.pt.tmp")  # complete before it takes the final name
os.replace("/tmp/diag/cache.pt.tmp", "/tmp/diag/cache.pt")
