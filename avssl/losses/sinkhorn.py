"""Sinkhorn–Knopp for self-labelling (SeLa / SeLaVi, METHODS.md §4.1–4.2).

Solves  min_Q ⟨Q, −log P⟩ − (1/λ)·H(Q)  with row sums c (one unit per sample) and column
sums r (cluster sizes): Q = diag(β)·P^λ·diag(α), α and β by alternating scaling. The
samples may be split over ranks (each holds its rows): the column sums are all-reduced,
so every rank gets the labels of its own rows under the global constraint.

Runs in float64 as SeLaVi does; P^λ is formed row-wise relative to the row maximum (a
per-row factor that β absorbs), so λ = 20 does not underflow a whole row.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from avssl.losses.distributed import all_reduce


@dataclass
class SinkhornResult:
    plan: torch.Tensor  # local rows of Q (N_local×K), rows sum to 1/N, columns (global) to r
    iterations: int
    column_error: float  # max |column sum − r| after the last iteration

    @property
    def labels(self) -> torch.Tensor:
        return self.plan.argmax(dim=1)


@torch.no_grad()
def sinkhorn_knopp(
    log_probs: torch.Tensor,
    lam: float = 20.0,
    column_marginal: torch.Tensor | None = None,
    tolerance: float = 1e-9,
    max_iterations: int = 2000,
    check_every: int = 10,
) -> SinkhornResult:
    """Transport plan for ``log_probs`` (N_local×K log-probabilities of this rank's samples).

    ``column_marginal``: the K cluster-size fractions r (sum 1); uniform (equipartition)
    when omitted. Rows get c = 1/N with N the number of samples over all ranks. Stops when
    every column sum is within ``tolerance`` of r (checked every ``check_every`` steps) or
    after ``max_iterations``.
    """
    if log_probs.dim() != 2:
        raise ValueError(f"log_probs must be N×K, got shape {tuple(log_probs.shape)}")
    scores = lam * log_probs.double()
    num_local, k = scores.shape
    total = int(all_reduce(torch.tensor(num_local, dtype=torch.float64, device=scores.device)).item())
    if total == 0:
        raise ValueError("no samples to label")
    r = (torch.full((k,), 1.0 / k, dtype=torch.float64, device=scores.device) if column_marginal is None
         else column_marginal.to(scores.device, torch.float64) / column_marginal.sum())
    c = 1.0 / total
    # P^λ up to a per-row factor (absorbed by β), and a global factor so no column is all-zero.
    kernel = torch.exp(scores - scores.max(dim=1, keepdim=True).values)
    alpha = torch.ones(k, dtype=torch.float64, device=scores.device)
    beta = torch.full((num_local,), c, dtype=torch.float64, device=scores.device)
    error, iteration = float("inf"), 0
    column_mass = all_reduce(kernel.T @ beta)  # Σ_n β_n P_nk over all ranks
    for iteration in range(1, max_iterations + 1):
        alpha = r / column_mass.clamp_min(torch.finfo(torch.float64).tiny)
        beta = c / (kernel @ alpha).clamp_min(torch.finfo(torch.float64).tiny)
        column_mass = all_reduce(kernel.T @ beta)  # for the check and the next α
        if iteration % check_every == 0 or iteration == max_iterations:
            error = float(all_reduce((column_mass * alpha - r).abs().max(), "max"))
            if error < tolerance:
                break
    plan = beta[:, None] * kernel * alpha[None, :]
    return SinkhornResult(plan=plan, iterations=iteration, column_error=error)


@torch.no_grad()
def swav_codes(scores: torch.Tensor, epsilon: float = 0.05, iterations: int = 3) -> torch.Tensor:
    """SwAV's online codes (METHODS.md §4.4) for this rank's B×K prototype scores: Q =
    exp(scores/ε) (shifted by the global maximum), then ``iterations`` times: every
    prototype's mass to 1/K (sums all-reduced over ranks), every sample's to 1/B_global.
    Returns B×K soft codes whose rows sum to 1."""
    scores = scores.double() / epsilon
    q = torch.exp(scores - all_reduce(scores.max(), "max"))
    k = q.shape[1]
    total = all_reduce(torch.tensor(float(q.shape[0]), dtype=torch.float64, device=q.device))
    q /= all_reduce(q.sum())
    for _ in range(iterations):
        q /= all_reduce(q.sum(dim=0)).clamp_min(torch.finfo(torch.float64).tiny) * k
        q /= q.sum(dim=1, keepdim=True).clamp_min(torch.finfo(torch.float64).tiny) * total
    return q * total
