"""Offline comparison of k-means variants on the features an XDC run clustered
(``scripts/xdc_dump_features.py``): NMI against the categories per clustering epoch.

    python scripts/xdc_kmeans_report.py runs/x/dump [--sets video audio]

Columns: ``recipe`` (avssl's k-means as the task runs it: L2, one draw, 25 iterations),
``best10`` (the lowest-inertia of 10 draws), ``k16`` (16 clusters), ``pca32`` (PCA-whitened
to 32 dimensions, then L2: DeepCluster's preprocessing), ``oracle`` (k-means
started from the true category means, a bound on what k-means can find in these features),
``linear`` (a logistic regression on half the rows scored on the other half: how
separable the categories are), ``va`` (NMI between the video and the audio clustering).
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import normalized_mutual_info_score as nmi

from avssl.losses.kmeans import distributed_kmeans
from avssl.losses.xdc import preprocess_features


def kmeans_labels(x: torch.Tensor, k: int, seed: int, draws: int = 1, iterations: int = 25) -> torch.Tensor:
    best = None
    for draw in range(draws):
        result = distributed_kmeans(x, k, iterations, seed=seed + draw)
        if best is None or result.inertia < best.inertia:
            best = result
    return best.labels


def oracle_labels(x: torch.Tensor, category: torch.Tensor, k: int, iterations: int = 25) -> torch.Tensor:
    centroids = torch.stack([x[category == c].mean(0) for c in range(k)])
    for _ in range(iterations):
        labels = torch.cdist(x, centroids).argmin(1)
        centroids = torch.stack([x[labels == c].mean(0) if bool((labels == c).any()) else centroids[c]
                                 for c in range(k)])
    return labels


def main() -> None:
    torch.set_num_threads(1)
    parser = argparse.ArgumentParser()
    parser.add_argument("dump", type=Path)
    parser.add_argument("--every", type=int, default=4)
    args = parser.parse_args()
    files = sorted(args.dump.glob("epoch_*.pt"))
    print("epoch set     recipe best10  k16   pca32 oracle linear   va")
    for i, path in enumerate(files):
        if i % args.every and path != files[-1]:
            continue
        record = torch.load(path)
        category = record["category"]
        epoch = int(path.stem.split("_")[1])
        labels = {}
        for name in ("video", "audio"):
            x = preprocess_features(record[name], None, True)
            labels[name] = kmeans_labels(x, 8, seed=epoch)
            best = kmeans_labels(x, 8, seed=1000 + epoch, draws=10)
            k16 = kmeans_labels(x, 16, seed=epoch)
            pca = kmeans_labels(preprocess_features(record[name], 32, True), 8, seed=epoch)
            oracle = oracle_labels(x, category, 8)
            half = x.shape[0] // 2
            clf = LogisticRegression(max_iter=2000).fit(x[:half].float().numpy(), category[:half].numpy())
            linear = clf.score(x[half:].float().numpy(), category[half:].numpy())
            c = category.numpy()
            va = nmi(labels["video"].numpy(), labels["audio"].numpy()) if name == "audio" else float("nan")
            print(f"{epoch:5d} {name:6s} {nmi(c, labels[name].numpy()):6.3f} {nmi(c, best.numpy()):6.3f} "
                  f"{nmi(c, k16.numpy()):6.3f} {nmi(c, pca.numpy()):6.3f} {nmi(c, oracle.numpy()):6.3f} "
                  f"{linear:6.3f} {va:6.3f}", flush=True)


if __name__ == "__main__":
    main()
