"""Memory-bank timing for AVID+CMA: one step's NCE scores (B queries × K negatives) and
momentum update, and one CMA agreement search over the whole bank (CPU always, and the
GPU when there is one).

    python scripts/bench_memory_bank.py [--instances 232067] [--batch 256] [--negatives 1024]
"""
from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from avssl.losses.agreement import agreement_positives
from avssl.losses.nce import MemoryBank, cross_modal_scores, nce_loss, sample_excluding


def timed(fn, device: str, repeat: int) -> float:
    fn()
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeat):
        fn()
    if device == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / repeat


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--instances", type=int, default=232_067, help="Kinetics-400 training videos")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--negatives", type=int, default=1024)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--cma-instances", type=int, default=20_000, help="bank size for the CPU agreement search")
    args = parser.parse_args()
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    for device in devices:
        name = torch.cuda.get_device_name() if device == "cuda" else f"cpu ({torch.get_num_threads()} threads)"
        bank = MemoryBank(args.instances, args.dim).to(device)
        query = torch.randn(args.batch, args.dim, device=device, requires_grad=True)
        index = torch.randperm(args.instances, device=device)[: args.batch]
        generator = torch.Generator().manual_seed(0)

        def step() -> None:
            negatives = sample_excluding(index[:, None], args.instances, args.negatives, generator)
            pos, neg = cross_modal_scores(query, bank, index, negatives, 0.07)
            nce_loss(pos, neg, 0.0).backward()
            bank.update(index, query.detach())

        step_ms = 1000 * timed(step, device, 10)
        n = args.instances if device == "cuda" else args.cma_instances
        v = F.normalize(torch.randn(n, args.dim, device=device), dim=1)
        a = F.normalize(torch.randn(n, args.dim, device=device), dim=1)
        cma_s = timed(lambda: agreement_positives(v, a, 32, chunk=1024), device, 1)
        print(f"{name}: bank {args.instances}×{args.dim}, batch {args.batch}, K {args.negatives}: "
              f"NCE step + update {step_ms:.1f} ms; CMA top-32 agreement over {n} slots {cma_s:.2f} s", flush=True)


if __name__ == "__main__":
    main()
