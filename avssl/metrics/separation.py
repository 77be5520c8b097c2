"""Source-separation metrics ("The Sound of Pixels", ECCV 2018, the Sound-of-Pixels protocol): BSS Eval
SDR/SIR/SAR from mir_eval, SI-SDR from torchmetrics, and their improvement over the mixture."""
from __future__ import annotations

import warnings

import numpy as np
import torch
from mir_eval.separation import bss_eval_sources
from torchmetrics.functional.audio import scale_invariant_signal_distortion_ratio

#: Sound of Pixels skips a mixture when any reference or estimate has Σ|x| at or below this.
SILENCE_THRESHOLD = 1e-5


class SilentSourceError(ValueError):
    """A reference or estimate is silent: BSS Eval is undefined (mir_eval raises). Catch it,
    skip the mixture and count the skips, as Sound of Pixels does."""


def _as_array(x: np.ndarray | torch.Tensor) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=np.float64)


def si_sdr(estimates: np.ndarray | torch.Tensor, references: np.ndarray | torch.Tensor) -> np.ndarray:
    """Per-source SI-SDR in dB of (n_src, n_samples) arrays, both zero-meaned first: torchmetrics
    `scale_invariant_signal_distortion_ratio(zero_mean=True)` (its default is False)."""
    values = scale_invariant_signal_distortion_ratio(torch.from_numpy(_as_array(estimates)),
                                                     torch.from_numpy(_as_array(references)), zero_mean=True)
    return values.numpy()


def _bss_eval(references: np.ndarray, estimates: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    with warnings.catch_warnings():  # deprecated in mir_eval 0.8, hence the <0.9 pin
        warnings.filterwarnings("ignore", category=FutureWarning, message=".*bss_eval_sources.*")
        sdr, sir, sar, _ = bss_eval_sources(references, estimates, compute_permutation=False)
    return sdr, sir, sar


def separation_metrics(estimates: np.ndarray | torch.Tensor, references: np.ndarray | torch.Tensor,
                       mixture: np.ndarray | torch.Tensor) -> dict[str, float]:
    """SDR, SIR, SAR, SI-SDR (dB, means over sources) of one mixture's separated sources.

    `estimates` and `references` are (n_src, n_samples) in the same source order (no
    permutation search: the conditioning fixes the order); `mixture` is (n_samples,), trimmed
    to the same length by the caller. BSS Eval is mir_eval's `bss_eval_sources` (v3, 512-tap
    distortion filters, `compute_permutation=False`); a perfect estimate scores about 300 dB,
    not infinity. `sdr_mixture` and the SI-SDR baseline use the mixture as the estimate of
    every source, and `sdr_improvement` / `si_sdr_improvement` subtract them. Raises
    `SilentSourceError` when any reference, estimate or the mixture has Σ|x| ≤ 1e-5."""
    est, ref, mix = _as_array(estimates), _as_array(references), _as_array(mixture)
    if ref.ndim != 2 or est.shape != ref.shape or mix.shape != ref.shape[1:]:
        raise ValueError(f"need estimates and references of shape (n_src, n_samples) and a mixture of "
                         f"(n_samples,), got estimates {est.shape}, references {ref.shape}, mixture {mix.shape}")
    for name, signals in (("reference", ref), ("estimate", est), ("mixture", mix[None])):
        energy = np.abs(signals).sum(axis=1)
        silent = np.flatnonzero(energy <= SILENCE_THRESHOLD)
        if silent.size:
            i = int(silent[0])
            raise SilentSourceError(f"{name} {i} is silent (sum |x| = {energy[i]:.3g} <= {SILENCE_THRESHOLD}): "
                                    f"BSS Eval is undefined; skip this mixture and count it")
    mixture_as_estimate = np.repeat(mix[None], ref.shape[0], axis=0)
    sdr, sir, sar = _bss_eval(ref, est)
    sdr_mixture, _, _ = _bss_eval(ref, mixture_as_estimate)
    si, si_mixture = si_sdr(est, ref), si_sdr(mixture_as_estimate, ref)
    return {"sdr": float(sdr.mean()), "sir": float(sir.mean()), "sar": float(sar.mean()),
            "si_sdr": float(si.mean()), "sdr_mixture": float(sdr_mixture.mean()),
            "sdr_improvement": float((sdr - sdr_mixture).mean()),
            "si_sdr_improvement": float((si - si_mixture).mean())}
