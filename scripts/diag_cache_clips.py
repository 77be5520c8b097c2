"""In-memory diagnostics for AVID/SeLaVi (docs/methods/avid_cma.md): decode the demo shards once.
python scripts/diag_cache_clips.py  → /tmp/diag/cache.pt (train: 2 random windows per video; val/test centre)."""
import sys
import time

import torch
from omegaconf import OmegaConf

torch.set_num_threads(1)
sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[1]))
from avssl.config import load_recipe
from avssl.data.datamodule import AVDataModule, DataConfig, base_views, make_loader

recipe = load_recipe(str(__import__("pathlib").Path(__file__).resolve().parents[1]) + "/recipes/synth/avid_cma_small.yaml")
data: DataConfig = OmegaConf.to_object(recipe.data)
data.shards = str(__import__("pathlib").Path(__file__).resolve().parents[1]) + "/runs/demo/shards"; data.num_workers = 1
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
            vs.append(batch["video"]); as_.append(batch["audio"]); idx.append(batch["index"]); lab.append(batch["label"])
    out[split] = {"video": torch.cat(vs), "audio": torch.cat(as_), "index": torch.cat(idx), "label": torch.cat(lab)}
    print(split, out[split]["video"].shape, out[split]["audio"].shape, time.time() - t, flush=True)
torch.save(out, (__import__("os").makedirs("/tmp/diag", exist_ok=True), "/tmp/diag/cache.pt")[1])
