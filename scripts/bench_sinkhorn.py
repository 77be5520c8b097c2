"""Sinkhorn–Knopp timing: N samples × K clusters, float64, λ = 20, to a column-sum error of
1e-6 (CPU always, and the GPU when there is one).

    python scripts/bench_sinkhorn.py [--sizes 10000x100 100000x1000 1000000x1000]
    # before/after: another revision's module, timed alternately with this one
    git show REV:avssl/losses/sinkhorn.py > /tmp/sinkhorn_before.py
    python scripts/bench_sinkhorn.py --sizes 100000x1000 --baseline /tmp/sinkhorn_before.py --repeats 3
"""
from __future__ import annotations

import argparse
import importlib.util
import sys
import time
from collections.abc import Callable

import torch

from avssl.losses.sinkhorn import sinkhorn_knopp


def load_baseline(path: str) -> Callable:
    """`sinkhorn_knopp` from a copy of the module at another revision (the developer's own file)."""
    spec = importlib.util.spec_from_file_location("sinkhorn_baseline", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["sinkhorn_baseline"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module.sinkhorn_knopp


def bench(solver: Callable, log_probs: torch.Tensor, device: str, **options) -> tuple[float, int, float, str]:
    solver(log_probs[: min(log_probs.shape[0], 1000)], lam=20.0, tolerance=1e-6, **options)  # warm-up
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    result = solver(log_probs, lam=20.0, tolerance=1e-6, **options)
    if device == "cuda":
        torch.cuda.synchronize()
    domain = "log" if getattr(result, "log_domain", False) else "prob"
    return time.perf_counter() - start, result.iterations, result.column_error, domain


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=["10000x100", "100000x1000"])
    parser.add_argument("--gpu-sizes", nargs="+", default=["100000x1000", "1000000x1000"])
    parser.add_argument("--baseline", help="a sinkhorn.py of another revision, timed alternately with this one")
    parser.add_argument("--repeats", type=int, default=1, help="timings of each solver per size (alternating)")
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--log-domain", action="store_true",
                        help="also time the current solver forced to the log domain")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    solvers = [("current", sinkhorn_knopp)] + ([("baseline", load_baseline(args.baseline))] if args.baseline else [])
    devices = [("cpu", args.sizes)] + ([("cuda", args.gpu_sizes)] if torch.cuda.is_available() else [])
    print(f"{'device':<28} {'solver':<9} {'N':>9} {'K':>6} {'seconds':>8} {'iters':>6} {'col err':>9} domain")
    for device, sizes in devices:
        name = torch.cuda.get_device_name() if device == "cuda" else f"cpu ({torch.get_num_threads()} threads)"
        for size in sizes:
            n, k = (int(x) for x in size.split("x"))
            g = torch.Generator(device=device).manual_seed(0)
            log_probs = torch.log_softmax(3 * torch.randn(n, k, generator=g, device=device, dtype=torch.float64), dim=1)
            for _ in range(args.repeats):
                for label, solver in solvers:
                    seconds, iterations, error, domain = bench(solver, log_probs, device)
                    print(f"{name:<28} {label:<9} {n:>9} {k:>6} {seconds:>8.2f} {iterations:>6} {error:>9.1e} {domain}",
                          flush=True)
                if args.log_domain:
                    seconds, iterations, error, domain = bench(sinkhorn_knopp, log_probs, device, domain="log")
                    print(f"{name:<28} {'current':<9} {n:>9} {k:>6} {seconds:>8.2f} {iterations:>6} {error:>9.1e} "
                          f"{domain}", flush=True)


if __name__ == "__main__":
    main()
