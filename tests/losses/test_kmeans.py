"""Distributed k-means (XDC's pseudo-labels): hand-computed cases on one process, and two
processes (gloo, the rows split unevenly) against one."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from avssl.losses.kmeans import (
    SPLIT_EPSILON,
    distributed_kmeans,
    initial_centroids,
    split_empty_clusters,
    update_centroids,
)
from avssl.losses.xdc import labels_by_index


def test_two_obvious_clusters() -> None:
    x = torch.tensor([[0.0], [1.0], [10.0], [11.0]])
    for seed in range(4):  # any two distinct starting rows end at the same partition
        result = distributed_kmeans(x, 2, seed=seed)
        order = result.centroids[:, 0].argsort()
        torch.testing.assert_close(result.centroids[order], torch.tensor([[0.5], [10.5]], dtype=torch.float64))
        assert result.labels[0] == result.labels[1] != result.labels[2] == result.labels[3]
        assert result.inertia == pytest.approx(1.0) and result.splits == 0


def test_initial_centroids_are_the_seeded_rows() -> None:
    x = torch.arange(12.0).view(6, 2)
    chosen = torch.randperm(6, generator=torch.Generator().manual_seed(5))[:3]
    torch.testing.assert_close(initial_centroids(x.double(), 3, seed=5), x[chosen].double())
    with pytest.raises(ValueError, match="at least as many rows as clusters: 6 rows for 7 clusters"):
        initial_centroids(x.double(), 7, seed=0)


def test_empty_cluster_takes_half_of_the_largest() -> None:
    centroids = torch.tensor([[1.0, 2.0], [0.0, 0.0], [4.0, 4.0]], dtype=torch.float64)
    counts = torch.tensor([3.0, 0.0, 5.0], dtype=torch.float64)
    assert split_empty_clusters(centroids, counts) == 1
    e = SPLIT_EPSILON
    torch.testing.assert_close(centroids, torch.tensor([[1.0, 2.0], [4 * (1 + e), 4 * (1 - e)],
                                                        [4 * (1 - e), 4 * (1 + e)]], dtype=torch.float64))
    assert counts.tolist() == [3.0, 2.0, 3.0]


def test_update_with_an_empty_cluster_by_hand() -> None:
    x = torch.tensor([[0.0], [2.0], [6.0], [8.0]], dtype=torch.float64)
    new, splits = update_centroids(x, torch.tensor([0, 0, 2, 2]), torch.zeros(3, 1, dtype=torch.float64))
    # means 1 and 7; cluster 1 empty: the largest (0 and 2 tie: the lowest, 0) is split
    e = SPLIT_EPSILON
    torch.testing.assert_close(new, torch.tensor([[1 - e], [1 + e], [7.0]], dtype=torch.float64))
    assert splits == 1


def _kmeans_on(rank: int, world: int, init_file: str, out: str) -> None:
    if world > 1:
        dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    g = torch.Generator().manual_seed(0)
    centres = 4 * torch.randn(4, 3, generator=g)
    x = centres[torch.arange(41) % 4] + torch.randn(41, 3, generator=g)
    rows = [slice(0, 41)] if world == 1 else [slice(0, 17), slice(17, 41)]  # uneven on purpose
    result = distributed_kmeans(x[rows[rank]], 5, iterations=10, seed=3)
    index = torch.arange(41)[rows[rank]]
    bank = labels_by_index(index, result.labels, 50)
    torch.save({"centroids": result.centroids, "labels": result.labels, "iterations": result.iterations,
                "inertia": result.inertia, "bank": bank}, os.path.join(out, f"kmeans{rank}_of{world}.pt"))
    if world > 1:
        dist.destroy_process_group()


def test_two_processes_match_one(tmp_path: Path) -> None:
    _kmeans_on(0, 1, "", str(tmp_path))
    mp.spawn(_kmeans_on, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    one = torch.load(tmp_path / "kmeans0_of1.pt")
    two = [torch.load(tmp_path / f"kmeans{r}_of2.pt") for r in range(2)]
    assert torch.equal(torch.cat([t["labels"] for t in two]), one["labels"])
    assert one["bank"][:41].tolist() == one["labels"].tolist() and (one["bank"][41:] == -1).all()
    for half in two:
        torch.testing.assert_close(half["centroids"], one["centroids"], rtol=1e-12, atol=1e-12)
        assert half["iterations"] == one["iterations"] and half["inertia"] == pytest.approx(one["inertia"])
        assert torch.equal(half["bank"], one["bank"])
