"""k-means timing for XDC's pseudo-labels: `distributed_kmeans` on N × D features, K clusters,
one process on one device (CUDA when there is one, else the CPU).

    python scripts/bench_kmeans.py                                   # CPU: 20000x512, K 64, 5 iterations
    python scripts/bench_kmeans.py --sizes 240000x512,1800000x512 --clusters 256 --iterations 25   # a GPU

240,000 × 512 is about one clip feature per Kinetics-400 training video, 1,800,000 × 512
one per AudioSet video: the clustering XDC redoes on the whole training set every few
epochs (its §3). XDC picks the number of clusters per dataset and modality by a search (the
paper's study of the number of clusters), so ``--clusters`` takes a list. An iteration is the
N × K × D distance product (linear in K) plus passes over the N × D features (the row norms,
the per-cluster sums) that do not depend on K.

The features are Gaussian noise (no cluster structure: the labels keep changing, so every
requested iteration runs; ``--blobs`` draws them around K centres instead, where Lloyd's
algorithm stops early). Prints the seconds per iteration (the run's total over the iterations
done, initialisation and the final assignment included), the total, and the peak memory of
the device (CUDA: `torch.cuda.max_memory_allocated`; CPU: the process's peak RSS, which also
holds the features).
"""
from __future__ import annotations

import argparse
import resource
import sys
import time

import torch

from avssl.losses.kmeans import distributed_kmeans


def parse_sizes(text: str) -> list[tuple[int, int]]:
    """``"240000x512,1800000x512"`` → [(240000, 512), (1800000, 512)]."""
    sizes = []
    for part in text.split(","):
        rows, sep, dim = part.strip().partition("x")
        if not sep or not rows.isdigit() or not dim.isdigit() or int(rows) < 1 or int(dim) < 1:
            raise ValueError(f"--sizes: {part!r} is not NxD (e.g. 240000x512)")
        sizes.append((int(rows), int(dim)))
    return sizes


def make_features(rows: int, dim: int, clusters: int, blobs: bool, device: torch.device) -> torch.Tensor:
    """float32 rows × dim features, drawn on ``device`` from a fixed seed."""
    generator = torch.Generator(device=device).manual_seed(0)
    x = torch.randn(rows, dim, generator=generator, device=device)
    if blobs:
        centres = 4 * torch.randn(clusters, dim, generator=generator, device=device)
        x += centres[torch.randint(clusters, (rows,), generator=generator, device=device)]
    return x


def peak_memory_gib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def bench(rows: int, dim: int, clusters: int, iterations: int, blobs: bool, device: torch.device
          ) -> tuple[float, int, int]:
    """(seconds, iterations done, empty-cluster splits) of one k-means run."""
    x = make_features(rows, dim, clusters, blobs, device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    result = distributed_kmeans(x, clusters, iterations=iterations, seed=0)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start, result.iterations, result.splits


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default=None,
                        help="comma-separated NxD (default: 20000x512 on the CPU, 240000x512,1800000x512 on a GPU)")
    parser.add_argument("--clusters", default=None,
                        help="comma-separated K (default: 64 on the CPU, 256 on a GPU)")
    parser.add_argument("--iterations", type=int, default=None,
                        help="k-means updates (default: 5 on the CPU, 25 = faiss's default on a GPU)")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--blobs", action="store_true", help="features around K centres instead of pure noise")
    parser.add_argument("--threads", type=int, help="torch intra-op threads on the CPU (default: torch's)")
    args = parser.parse_args(argv)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    gpu = device.type == "cuda"
    try:
        sizes = parse_sizes(args.sizes or ("240000x512,1800000x512" if gpu else "20000x512"))
        cluster_counts = [int(k) for k in (args.clusters or ("256" if gpu else "64")).split(",")]
    except ValueError as error:
        parser.error(str(error))
    iterations = args.iterations or (25 if gpu else 5)
    if args.threads:
        torch.set_num_threads(args.threads)
    name = torch.cuda.get_device_name(device) if gpu else f"cpu ({torch.get_num_threads()} threads)"
    print(f"{'device':<28} {'N':>9} {'D':>5} {'K':>6} {'iters':>5} {'s/iter':>8} {'total s':>8} {'peak GiB':>9} splits")
    for rows, dim in sizes:
        for clusters in cluster_counts:
            seconds, done, splits = bench(rows, dim, clusters, iterations, args.blobs, device)
            print(f"{name:<28} {rows:>9} {dim:>5} {clusters:>6} {done:>5} {seconds / done:>8.3f} {seconds:>8.2f} "
                  f"{peak_memory_gib(device):>9.2f} {splits}", flush=True)
            if gpu:
                torch.cuda.empty_cache()
    return 0


if __name__ == "__main__":
    sys.exit(main())
