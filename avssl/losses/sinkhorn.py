"""Sinkhorn–Knopp for self-labelling (SeLa / SeLaVi, "Labelling Unlabelled Videos from Scratch with Multi-modal
Self-supervision", NeurIPS 2020).

Solves  min_Q ⟨Q, −log P⟩ − (1/λ)·H(Q)  with row sums c (one unit per sample) and column
sums r (cluster sizes): Q = diag(β)·P^λ·diag(α), α and β by alternating scaling. The
samples may be split over ranks (each holds its rows): the column sums are all-reduced,
so every rank gets the labels of its own rows under the global constraint.

Runs in float64 as SeLaVi does. Two iterations, the same fixed point:

* probability domain (fast: two matrix–vector products a step): P^λ is formed row-wise
  relative to the row maximum (a per-row factor that β absorbs). Exact while every entry
  that can carry mass stays a normal float64 (> e^−708), i.e. while
  λ·(row max − row min) + log N + log(1/min r) stays under `PROBABILITY_DOMAIN_LIMIT`.
* log domain (the potentials log α, log β absorbed into the kernel, "Stabilized Sparse
  Scaling Algorithms for Entropy Regularized Transport Problems", Schmitzer 2019, §3.1,
  without the sparsity): used beyond that limit, where e^(λ·gap) underflows, a whole column
  can vanish and the plan misses its marginals. The same matrix–vector products a step,
  plus an exp pass over N×K whenever the scalings are absorbed.

The choice is made once per call, from one pass over the scores, identically on every rank.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import torch

from avssl.distributed import all_reduce

logger = logging.getLogger(__name__)

#: e^−708 is float64's smallest normal number; the margin of 58 covers the scalings' range
#: (K, the gauge of α and β) so that every entry of the plan that can matter stays normal.
PROBABILITY_DOMAIN_LIMIT = 650.0


@dataclass
class SinkhornResult:
    plan: torch.Tensor  # local rows of Q (N_local×K), rows sum to 1/N, columns (global) to r
    iterations: int
    column_error: float  # max |column sum − r| after the last iteration
    tolerance: float = 0.0  # the requested column_error
    log_domain: bool = False  # which iteration ran (see the module docstring)

    @property
    def labels(self) -> torch.Tensor:
        return self.plan.argmax(dim=1)

    @property
    def converged(self) -> bool:
        return self.column_error < self.tolerance


def needs_log_domain(scores: torch.Tensor, column_marginal: torch.Tensor, total: int) -> bool:
    """Whether the probability-domain iteration could underflow on these λ·log P scores
    (all ranks' rows): λ·(largest row range) + log N + log(1/smallest positive r) against
    `PROBABILITY_DOMAIN_LIMIT`. Non-finite scores (log 0) always take the log domain."""
    if scores.shape[0]:
        local_spread = (scores.max(dim=1).values - scores.min(dim=1).values).max()
    else:
        local_spread = torch.zeros((), dtype=scores.dtype, device=scores.device)
    spread = float(all_reduce(local_spread, "max"))
    smallest_share = float(column_marginal[column_marginal > 0].min())
    budget = spread + math.log(total) - math.log(smallest_share)
    return not math.isfinite(budget) or budget > PROBABILITY_DOMAIN_LIMIT


@torch.no_grad()
def sinkhorn_knopp(
    log_probs: torch.Tensor,
    lam: float = 20.0,
    column_marginal: torch.Tensor | None = None,
    tolerance: float = 1e-9,
    max_iterations: int = 2000,
    check_every: int = 10,
    domain: str = "auto",
) -> SinkhornResult:
    """Transport plan for ``log_probs`` (N_local×K log-probabilities of this rank's samples).

    ``column_marginal``: the K cluster-size fractions r (sum 1); uniform (equipartition)
    when omitted. Rows get c = 1/N with N the number of samples over all ranks. Stops when
    every column sum is within ``tolerance`` of r (checked every ``check_every`` steps) or
    after ``max_iterations`` (then ``result.converged`` is False: the caller decides whether
    ``result.column_error`` is good enough, as `SeLaVi.relabel` does). ``domain``: "auto"
    (`needs_log_domain` decides), or "probability" / "log" to force one (tests, benchmarks).
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
    if domain not in ("auto", "probability", "log"):
        raise ValueError(f"domain must be 'auto', 'probability' or 'log', got {domain!r}")
    log_domain = needs_log_domain(scores, r, total) if domain == "auto" else domain == "log"
    solve = _log_domain_iteration if log_domain else _probability_domain_iteration
    plan, iteration, error = solve(scores, r, 1.0 / total, tolerance, max_iterations, check_every)
    logger.debug("Sinkhorn–Knopp: %d iterations, column-sum error %.3g, %s domain", iteration, error,
                 "log" if log_domain else "probability")
    return SinkhornResult(plan=plan, iterations=iteration, column_error=error, tolerance=tolerance,
                          log_domain=log_domain)


def _probability_domain_iteration(scores: torch.Tensor, r: torch.Tensor, c: float, tolerance: float,
                                  max_iterations: int, check_every: int) -> tuple[torch.Tensor, int, float]:
    """α, β on P^λ / (row max of P^λ): two matrix–vector products a step."""
    tiny = torch.finfo(torch.float64).tiny
    kernel = torch.exp(scores - scores.max(dim=1, keepdim=True).values)
    alpha = torch.ones(r.numel(), dtype=torch.float64, device=scores.device)
    beta = torch.full((scores.shape[0],), c, dtype=torch.float64, device=scores.device)
    error, iteration = float("inf"), 0
    column_mass = all_reduce(kernel.T @ beta)  # Σ_n β_n P_nk over all ranks
    for iteration in range(1, max_iterations + 1):
        alpha = r / column_mass.clamp_min(tiny)
        beta = c / (kernel @ alpha).clamp_min(tiny)
        column_mass = all_reduce(kernel.T @ beta)  # for the check and the next α
        if iteration % check_every == 0 or iteration == max_iterations:
            error = float(all_reduce((column_mass * alpha - r).abs().max(), "max"))
            if error < tolerance:
                break
    return beta[:, None] * kernel * alpha[None, :], iteration, error


def _log_domain_iteration(scores: torch.Tensor, r: torch.Tensor, c: float, tolerance: float,
                          max_iterations: int, check_every: int) -> tuple[torch.Tensor, int, float]:
    """Scaling with the potentials absorbed into the kernel (log β → f, log α → g):
    K̃ = exp(λ·log P + f + g) is the current plan, so an entry that underflows is one whose
    mass is below e^−708 at that point; α, β scale K̃ as in the probability domain and are
    absorbed again (one exp pass) once either leaves [e^−ABSORB, e^ABSORB]. The first f, g
    come from one exact log-sum-exp step each, so no column starts empty. Matrix–vector
    products a step, like the probability domain, rather than two exp passes."""
    tiny = torch.finfo(torch.float64).tiny
    buffer = torch.empty_like(scores)
    log_beta = torch.full((scores.shape[0],), math.log(c), dtype=torch.float64, device=scores.device)
    log_alpha = r.log() - _column_logsumexp(scores, log_beta, buffer)
    log_beta = math.log(c) - _row_logsumexp(scores, log_alpha, buffer)
    kernel = _absorbed_kernel(scores, log_beta, log_alpha, buffer)
    alpha, beta = torch.ones_like(log_alpha), torch.ones_like(log_beta)
    error, iteration = float("inf"), 0
    column_mass = all_reduce(kernel.T @ beta)
    for iteration in range(1, max_iterations + 1):
        alpha = r / column_mass.clamp_min(tiny)
        beta = c / (kernel @ alpha).clamp_min(tiny)
        column_mass = all_reduce(kernel.T @ beta)
        if iteration % check_every == 0 or iteration == max_iterations:
            error = float(all_reduce((column_mass * alpha - r).abs().max(), "max"))
            if error < tolerance:
                break
        if _needs_absorbing(alpha, beta):
            log_alpha, log_beta = log_alpha + alpha.log(), log_beta + beta.log()
            kernel = _absorbed_kernel(scores, log_beta, log_alpha, kernel)
            alpha, beta = torch.ones_like(alpha), torch.ones_like(beta)
            column_mass = all_reduce(kernel.T @ beta)
    return beta[:, None] * kernel * alpha[None, :], iteration, error


#: `_log_domain_iteration` absorbs α and β into the kernel once either passes e^±ABSORB.
ABSORB = 50.0


def _needs_absorbing(alpha: torch.Tensor, beta: torch.Tensor) -> bool:
    """Whether a scaling left [e^−ABSORB, e^ABSORB] on any rank (the same answer on all)."""
    local = torch.stack([alpha.log().abs().max(), beta.log().abs().max() if beta.numel() else alpha.new_zeros(())])
    return bool(all_reduce(local.max(), "max") > ABSORB)


def _absorbed_kernel(scores: torch.Tensor, log_beta: torch.Tensor, log_alpha: torch.Tensor,
                     out: torch.Tensor) -> torch.Tensor:
    """exp(scores + log β_n + log α_k) written into ``out`` (no N×K allocation)."""
    torch.add(scores, log_beta[:, None], out=out)
    return out.add_(log_alpha[None, :]).exp_()


def _column_logsumexp(scores: torch.Tensor, log_beta: torch.Tensor, buffer: torch.Tensor) -> torch.Tensor:
    """log Σ_n exp(scores_nk + log β_n) over the rows of every rank (K values, the same on all
    ranks), in ``buffer``: `torch.logsumexp` would allocate N×K temporaries."""
    torch.add(scores, log_beta[:, None], out=buffer)
    local_peak = buffer.amax(dim=0) if buffer.shape[0] else scores.new_full((scores.shape[1],), -math.inf)
    peak = all_reduce(local_peak, "max")
    peak = torch.where(torch.isfinite(peak), peak, torch.zeros_like(peak))
    return peak + all_reduce(buffer.sub_(peak[None, :]).exp_().sum(dim=0)).log()


def _row_logsumexp(scores: torch.Tensor, log_alpha: torch.Tensor, buffer: torch.Tensor) -> torch.Tensor:
    """log Σ_k exp(scores_nk + log α_k) of this rank's rows, in ``buffer``."""
    torch.add(scores, log_alpha[None, :], out=buffer)
    peak = buffer.amax(dim=1, keepdim=True) if buffer.shape[1] else buffer.new_zeros(buffer.shape[0], 1)
    peak = torch.where(torch.isfinite(peak), peak, torch.zeros_like(peak))
    return (peak + buffer.sub_(peak).exp_().sum(dim=1, keepdim=True).log()).squeeze(1)


@torch.no_grad()
def swav_codes(scores: torch.Tensor, epsilon: float = 0.05, iterations: int = 3) -> torch.Tensor:
    """SwAV's online codes ("Unsupervised Learning of Visual Features by Contrasting Cluster Assignments", NeurIPS 2020)
    for this rank's B×K prototype scores: Q = exp(scores/ε) (shifted by the global maximum), then ``iterations``
    times: every prototype's mass to 1/K (sums all-reduced over ranks), every sample's to 1/B_global.
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
