"""Sinkhorn–Knopp: marginals, agreement with a direct reference and with POT (the log domain
where the probability domain underflows), precision."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import ot
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from avssl.losses.sinkhorn import (
    PROBABILITY_DOMAIN_LIMIT,
    needs_log_domain,
    sinkhorn_knopp,
)


def _reference(log_p: np.ndarray, lam: float, r: np.ndarray, iterations: int = 20000) -> np.ndarray:
    """The textbook iteration on P^λ itself, in float64 (small matrices only)."""
    kernel = np.exp(lam * log_p)
    n = kernel.shape[0]
    alpha, beta = np.ones(kernel.shape[1]), np.full(n, 1.0 / n)
    for _ in range(iterations):
        alpha = r / (kernel.T @ beta)
        beta = (1.0 / n) / (kernel @ alpha)
    return beta[:, None] * kernel * alpha[None, :]


def test_marginals_and_reference_on_a_small_matrix() -> None:
    g = torch.Generator().manual_seed(0)
    log_p = torch.log_softmax(torch.randn(12, 4, generator=g, dtype=torch.float64), dim=1)
    r = torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=torch.float64)
    result = sinkhorn_knopp(log_p, lam=3.0, column_marginal=r, tolerance=1e-12)
    q = result.plan
    torch.testing.assert_close(q.sum(1), torch.full((12,), 1 / 12, dtype=torch.float64), atol=1e-6, rtol=0)
    torch.testing.assert_close(q.sum(0), r, atol=1e-6, rtol=0)
    np.testing.assert_allclose(q.numpy(), _reference(log_p.numpy(), 3.0, r.numpy()), atol=1e-9)


def test_equipartition_by_default_and_labels_balance() -> None:
    g = torch.Generator().manual_seed(1)
    # every sample prefers cluster 0: equipartition still spreads them evenly
    logits = torch.randn(400, 4, generator=g) * 0.1
    logits[:, 0] += 2.0
    result = sinkhorn_knopp(torch.log_softmax(logits, 1), lam=20.0)
    assert result.column_error < 1e-6
    counts = torch.bincount(result.labels, minlength=4)
    assert counts.min() >= 80 and counts.max() <= 120


def test_confident_predictions_with_lambda_20_do_not_underflow() -> None:
    log_p = torch.full((6, 3), -300.0, dtype=torch.float64)
    log_p[torch.arange(6), torch.arange(6) % 3] = 0.0  # exp(20 × −300) is 0 in float64
    result = sinkhorn_knopp(log_p, lam=20.0)
    assert torch.isfinite(result.plan).all()
    torch.testing.assert_close(result.labels, torch.arange(6) % 3)
    torch.testing.assert_close(result.plan.sum(0), torch.full((3,), 1 / 3, dtype=torch.float64), atol=1e-6, rtol=0)


def test_bad_shape_is_an_error() -> None:
    with pytest.raises(ValueError, match="N×K"):
        sinkhorn_knopp(torch.zeros(3))
    with pytest.raises(ValueError, match="^domain must be 'auto', 'probability' or 'log', got 'exp'$"):
        sinkhorn_knopp(torch.zeros(3, 2), domain="exp")


def test_both_domains_reach_the_same_plan_where_both_are_safe() -> None:
    g = torch.Generator().manual_seed(2)
    log_p = torch.log_softmax(3 * torch.randn(200, 8, generator=g, dtype=torch.float64), dim=1)
    plans = [sinkhorn_knopp(log_p, lam=20.0, tolerance=1e-12, domain=d) for d in ("probability", "log")]
    assert [p.log_domain for p in plans] == [False, True] and plans[0].iterations == plans[1].iterations
    torch.testing.assert_close(plans[1].plan, plans[0].plan, atol=1e-14, rtol=1e-9)


def _disliked_cluster(shift: float, n: int = 1000, k: int = 10) -> torch.Tensor:
    """Log-probabilities of n samples that all put cluster 0 about ``shift`` nats below the rest."""
    g = torch.Generator().manual_seed(0)
    logits = 0.3 * torch.randn(n, k, generator=g, dtype=torch.float64)
    logits[:, 0] -= shift
    return torch.log_softmax(logits, dim=1)


def _pot_plan(log_p: torch.Tensor, lam: float) -> np.ndarray:
    n, k = log_p.shape
    return ot.sinkhorn(np.full(n, 1 / n), np.full(k, 1 / k), -log_p.numpy(), 1 / lam, method="sinkhorn_log",
                       numItermax=20000, stopThr=1e-12)


@pytest.mark.parametrize(("shift", "log_domain"), [(10.0, False), (30.0, True)])
def test_matches_pot_on_both_sides_of_the_underflow_limit(shift: float, log_domain: bool) -> None:
    # λ = 50: cluster 0's entries sit e^(−50·10) (representable) or e^(−50·30) (0 in float64)
    # below their row's maximum; the probability domain lost that column (sizes 0, 107–115).
    log_p = _disliked_cluster(shift)
    result = sinkhorn_knopp(log_p, lam=50.0, tolerance=1e-10)
    assert result.log_domain is log_domain
    assert result.converged and result.column_error < 1e-10
    reference = _pot_plan(log_p, 50.0)
    np.testing.assert_allclose(result.plan.numpy(), reference, atol=1e-10, rtol=0)
    torch.testing.assert_close(result.labels, torch.from_numpy(reference.argmax(1)))
    assert torch.bincount(result.labels, minlength=10)[0] == 101


def test_the_domain_follows_the_spread_of_the_scores() -> None:
    r = torch.full((10,), 0.1, dtype=torch.float64)
    row = torch.zeros(1, 10, dtype=torch.float64)
    row[0, 0] = -(PROBABILITY_DOMAIN_LIMIT - math.log(1000) - math.log(10)) + 1.0
    assert not needs_log_domain(row, r, total=1000)
    row[0, 0] -= 2.0
    assert needs_log_domain(row, r, total=1000)
    assert needs_log_domain(torch.tensor([[0.0, -math.inf]], dtype=torch.float64), r[:2] * 5, total=1)


def test_stopping_short_of_the_tolerance_is_reported() -> None:
    result = sinkhorn_knopp(_disliked_cluster(30.0), lam=50.0, tolerance=1e-10, max_iterations=20)
    assert not result.converged and result.iterations == 20 and result.log_domain
    assert 1e-10 < result.column_error < 0.1


def _two_rank_log_domain(rank: int, world: int, init_file: str, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    log_p = _disliked_cluster(30.0, n=200, k=5)
    rows = slice(rank * 200 // world, (rank + 1) * 200 // world)
    result = sinkhorn_knopp(log_p[rows], lam=50.0, tolerance=1e-10)
    torch.save({"plan": result.plan, "log_domain": result.log_domain, "iterations": result.iterations},
               f"{out}/rank{rank}.pt")
    dist.destroy_process_group()


@pytest.mark.slow  # two spawned processes (gloo)
def test_log_domain_over_two_ranks_matches_one(tmp_path: Path) -> None:
    single = sinkhorn_knopp(_disliked_cluster(30.0, n=200, k=5), lam=50.0, tolerance=1e-10)
    mp.spawn(_two_rank_log_domain, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    parts = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    assert single.log_domain and all(p["log_domain"] for p in parts)
    assert {p["iterations"] for p in parts} == {single.iterations}
    torch.testing.assert_close(torch.cat([p["plan"] for p in parts]), single.plan, atol=1e-15, rtol=1e-9)
