"""Sinkhorn–Knopp: marginals, agreement with a direct reference, precision."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from avssl.losses.sinkhorn import sinkhorn_knopp


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
