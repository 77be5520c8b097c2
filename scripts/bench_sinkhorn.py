"""Sinkhorn–Knopp timing: N samples × K clusters, float64, λ = 20, to a column-sum error of
1e-6 (CPU always, and the GPU when there is one).

    python scripts/bench_sinkhorn.py [--sizes 10000x100 100000x1000 1000000x1000]
"""
from __future__ import annotations

import argparse
import time

import torch

from avssl.losses.sinkhorn import sinkhorn_knopp


def bench(n: int, k: int, device: str) -> tuple[float, int, float]:
    g = torch.Generator(device=device).manual_seed(0)
    log_probs = torch.log_softmax(3 * torch.randn(n, k, generator=g, device=device, dtype=torch.float64), dim=1)
    sinkhorn_knopp(log_probs[: min(n, 1000)], lam=20.0)  # warm-up
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    result = sinkhorn_knopp(log_probs, lam=20.0, tolerance=1e-6)
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start, result.iterations, result.column_error


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=["10000x100", "100000x1000"])
    parser.add_argument("--gpu-sizes", nargs="+", default=["100000x1000", "1000000x1000"])
    args = parser.parse_args()
    devices = [("cpu", args.sizes)] + ([("cuda", args.gpu_sizes)] if torch.cuda.is_available() else [])
    print(f"{'device':<28} {'N':>9} {'K':>6} {'seconds':>8} {'iters':>6} {'col err':>9}")
    for device, sizes in devices:
        name = torch.cuda.get_device_name() if device == "cuda" else f"cpu ({torch.get_num_threads()} threads)"
        for size in sizes:
            n, k = (int(x) for x in size.split("x"))
            seconds, iterations, error = bench(n, k, device)
            print(f"{name:<28} {n:>9} {k:>6} {seconds:>8.2f} {iterations:>6} {error:>9.1e}", flush=True)


if __name__ == "__main__":
    main()
