"""Separation metrics (mir_eval BSS Eval, torchmetrics SI-SDR) on synthetic signals."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from avssl.metrics.separation import SilentSourceError, separation_metrics, si_sdr


@pytest.fixture(scope="module")
def sources() -> np.ndarray:
    rng = np.random.default_rng(0)
    t = np.arange(4000) / 8000
    tone = np.sin(2 * np.pi * 440 * t)
    noise = rng.standard_normal(t.size) * 0.3
    return np.stack([tone, noise])


def test_perfect_estimate_scores_very_high(sources: np.ndarray) -> None:
    scores = separation_metrics(sources, sources, sources.mean(axis=0))
    assert scores["sdr"] > 100 and scores["sir"] > 100 and scores["sar"] > 100
    assert scores["si_sdr"] > 100


def test_mixture_as_estimate_has_zero_improvement(sources: np.ndarray) -> None:
    mixture = sources.mean(axis=0)
    scores = separation_metrics(np.stack([mixture, mixture]), sources, mixture)
    assert scores["sdr_improvement"] == 0.0 and scores["si_sdr_improvement"] == 0.0
    assert scores["sdr"] == scores["sdr_mixture"] < 10


def test_known_si_sdr_and_scale_invariance(sources: np.ndarray) -> None:
    reference = sources[:1] - sources[:1].mean()
    noise = np.roll(sources[1:], 7) - sources[1:].mean()
    noise -= reference * (noise @ reference.T) / (reference @ reference.T)  # orthogonal to the reference
    noise *= np.sqrt((reference ** 2).sum() / (noise ** 2).sum() / 10)        # 10 dB below it
    estimate = reference + noise
    assert si_sdr(estimate, reference)[0] == pytest.approx(10.0, abs=1e-6)
    assert si_sdr(0.01 * estimate, reference)[0] == pytest.approx(10.0, abs=1e-6)
    scaled_and_shifted = torch.from_numpy(-5 * estimate + 3.0)
    assert si_sdr(scaled_and_shifted, torch.from_numpy(reference))[0] == pytest.approx(10.0, abs=1e-6)


def test_a_better_estimate_improves_over_the_mixture(sources: np.ndarray) -> None:
    mixture = sources.mean(axis=0)
    estimates = 0.9 * sources + 0.1 * mixture
    scores = separation_metrics(estimates, sources, mixture)
    assert scores["sdr_improvement"] > 5 and scores["si_sdr_improvement"] > 5
    assert scores["sdr"] == pytest.approx(scores["sdr_mixture"] + scores["sdr_improvement"])


def test_shape_mismatch_names_the_shapes(sources: np.ndarray) -> None:
    with pytest.raises(ValueError, match=r"estimates \(2, 3999\), references \(2, 4000\)"):
        separation_metrics(sources[:, 1:], sources, sources.mean(axis=0))
    with pytest.raises(ValueError, match=r"mixture \(3999,\)"):
        separation_metrics(sources, sources, sources.mean(axis=0)[1:])


def test_silent_reference_or_estimate_raises(sources: np.ndarray) -> None:
    silent = sources.copy()
    silent[1] = 0
    with pytest.raises(SilentSourceError, match="reference 1 is silent"):
        separation_metrics(sources, silent, sources.mean(axis=0))
    with pytest.raises(SilentSourceError, match="estimate 1 is silent"):
        separation_metrics(silent, sources, sources.mean(axis=0))
