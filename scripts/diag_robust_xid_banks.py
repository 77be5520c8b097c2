"""What Robust-xID's robust terms read, measured against the ground truth of a synthetic set.

From a checkpoint's memory banks (video and audio slot per training clip) and the shards'
labels and ``soundtrack_from`` ground truth:

* faulty positives (§3.2): the bank positive similarity v̄_iᵀā_i of the clean and the faulty
  training clips, the AUC of clean over faulty, and the weights Φ((s − (μ + δσ)) / (κσ)) each
  group gets (the share of the total weight on faulty clips, against their share of clips);
* faulty negatives (§3.3): in each bank, the share of same-category clips among a clip's 10
  nearest slots (what the soft targets' relations put their mass on) and the mean cosine of
  same- vs other-category slots.

    python scripts/diag_robust_xid_banks.py runs/noisy/rx/checkpoints/last.ckpt runs/noisy/shards
"""
from __future__ import annotations

import argparse
import glob
import json
import tarfile

import torch

from avssl.losses.robust_xid import faulty_positive_weights


def ground_truth(shards: str) -> tuple[dict[int, int], dict[int, bool]]:
    """Training clips' label and whether their soundtrack is another clip's, by bank index."""
    label, faulty = {}, {}
    for path in sorted(glob.glob(f"{shards}/train-*.tar")):
        meta, gt = {}, {}
        with tarfile.open(path) as tar:
            for member in tar.getmembers():
                key, ext = member.name.split(".", 1)
                if ext in ("json", "gt.json"):
                    (meta if ext == "json" else gt)[key] = json.loads(tar.extractfile(member).read())
        for key, record in meta.items():
            label[record["index"]] = int(record["label"])
            faulty[record["index"]] = "soundtrack_from" in gt.get(key, {})
    return label, faulty


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint")
    parser.add_argument("shards")
    parser.add_argument("--delta", type=float, default=-1.0)
    parser.add_argument("--kappa", type=float, default=0.5)
    args = parser.parse_args()
    state = torch.load(args.checkpoint, map_location="cpu", weights_only=False)["state_dict"]
    label, faulty = ground_truth(args.shards)
    index = torch.tensor(sorted(label))
    is_faulty = torch.tensor([faulty[i] for i in index.tolist()])
    y = torch.tensor([label[i] for i in index.tolist()])
    video, audio = state["video_bank.bank"][index], state["audio_bank.bank"][index]
    s = (video * audio).sum(dim=1)
    w = faulty_positive_weights(s, s, args.delta, args.kappa)
    print(f"{len(index)} training clips, {int(is_faulty.sum())} faulty")
    if is_faulty.any() and not is_faulty.all():
        clean, bad = s[~is_faulty], s[is_faulty]
        auc = (clean[:, None] > bad[None, :]).float().mean().item()
        print(f"positive similarity: clean {clean.mean():.3f} ± {clean.std():.3f}, faulty {bad.mean():.3f} ± "
              f"{bad.std():.3f}; AUC clean > faulty {auc:.3f}")
        print(f"weights (δ {args.delta}, κ {args.kappa}): clean {w[~is_faulty].mean():.3f}, faulty "
              f"{w[is_faulty].mean():.3f}; faulty share of the total weight {w[is_faulty].sum() / w.sum():.3f} "
              f"(of the clips {is_faulty.float().mean():.3f})")
    else:
        print(f"positive similarity {s.mean():.3f} ± {s.std():.3f}; mean weight {w.mean():.3f}")
    same = y[:, None] == y[None, :]
    off_diagonal = ~torch.eye(len(index), dtype=torch.bool)
    for name, bank in (("video", video), ("audio", audio)):
        cosine = bank @ bank.T
        nearest = cosine.masked_fill(~off_diagonal, -2.0).topk(10, dim=1).indices
        share = same.gather(1, nearest).float().mean().item()
        print(f"{name} bank: same category among the 10 nearest {share:.3f} (chance {same.float().mean():.3f}); "
              f"cosine same {cosine[same & off_diagonal].mean():.3f}, other {cosine[~same].mean():.3f}")


if __name__ == "__main__":
    main()
