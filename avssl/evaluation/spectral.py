"""Spectrogram pieces of mix-and-separate ("The Sound of Pixels", ECCV 2018): STFT magnitude and phase,
the Sound-of-Pixels log-frequency warp and its inverse, mask targets and their losses, and
masked reconstruction with the mixture phase.

Library parts: ``torch.stft`` / ``torch.istft`` and ``torch.nn.functional.grid_sample``.
Written here because no library in the stack has them: the warp's sampling grid (the
formula y' = (21^((y+1)/2) − 11)/10 on [−1, 1] from the Sound of Pixels paper's code; torchaudio
has mel filter banks but not this invertible resampling), the mask targets and the
weighted BCE weights.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

WARP_BASE = 21.0  # Sound of Pixels' warp: 21^((y+1)/2), shifted and scaled back to [−1, 1]
MASK_TYPES = ("binary", "ratio")


@dataclass(frozen=True)
class StftSettings:
    """STFT of the separation front end (Hann window of ``n_fft``)."""

    n_fft: int = 512
    hop: int = 128
    log_bins: int = 128  # frequency bins after the log-frequency warp

    @property
    def linear_bins(self) -> int:
        return self.n_fft // 2 + 1


def stft(waveform: torch.Tensor, settings: StftSettings) -> torch.Tensor:
    """…×N float → …×F×T complex (F = n_fft/2 + 1, centred frames)."""
    shape = waveform.shape
    spec = torch.stft(waveform.reshape(-1, shape[-1]), settings.n_fft, settings.hop,
                      window=torch.hann_window(settings.n_fft, device=waveform.device), return_complex=True)
    return spec.reshape(*shape[:-1], *spec.shape[-2:])


def istft(spec: torch.Tensor, settings: StftSettings, length: int) -> torch.Tensor:
    """…×F×T complex → …×``length`` float (the inverse of :func:`stft`)."""
    shape = spec.shape
    wave = torch.istft(spec.reshape(-1, *shape[-2:]), settings.n_fft, settings.hop,
                       window=torch.hann_window(settings.n_fft, device=spec.device), length=length)
    return wave.reshape(*shape[:-2], length)


def _warp_grid(out_bins: int, frames: int, inverse: bool, device: torch.device, harmonic: float = 1.0
               ) -> torch.Tensor:
    """1×out_bins×frames×2 sampling grid (x = time, y = frequency, in [−1, 1]).

    Forward: output row y samples the linear axis at (21^((y+1)/2) − 11)/10, so low
    frequencies get many rows and high ones few. Inverse: output row y (linear axis) samples
    the warped axis at 2·log(10y + 11)/log 21 − 1, the solution of the forward formula.
    ``harmonic`` h (forward only) reads h times the row's frequency instead; rows above
    the Nyquist frequency then fall outside [−1, 1]."""
    y = torch.linspace(-1.0, 1.0, out_bins, device=device)
    if inverse:
        source = (2 * torch.log(10 * y + 11) / math.log(WARP_BASE) - 1).clamp(-1, 1)
    else:
        source = ((WARP_BASE ** ((y + 1) / 2) - 11) / 10).clamp(-1, 1)
        source = harmonic * (source + 1) - 1
    x = torch.linspace(-1.0, 1.0, frames, device=device)
    grid = torch.stack(torch.broadcast_tensors(x[None, :], source[:, None]), dim=-1)
    return grid.unsqueeze(0)


def _resample_rows(x: torch.Tensor, out_bins: int, inverse: bool) -> torch.Tensor:
    shape = x.shape
    flat = x.reshape(-1, 1, *shape[-2:])
    grid = _warp_grid(out_bins, shape[-1], inverse, x.device).expand(flat.shape[0], -1, -1, -1)
    out = F.grid_sample(flat, grid, mode="bilinear", padding_mode="border", align_corners=True)
    return out.reshape(*shape[:-2], out_bins, shape[-1])


def warp_log_frequency(x: torch.Tensor, out_bins: int) -> torch.Tensor:
    """…×F×T (linear frequency) → …×out_bins×T (log frequency), bilinear."""
    return _resample_rows(x, out_bins, inverse=False)


def warp_harmonics(x: torch.Tensor, out_bins: int, harmonics: tuple[float, ...]) -> torch.Tensor:
    """…×F×T linear magnitudes → …×H×out_bins×T: channel h holds, at each log-frequency row,
    the magnitude at ``harmonics[h]`` times that row's frequency (the Nyquist bin's above it), so a
    small kernel sees a whole harmonic series at once (the idea of Bittner et al.'s harmonic
    CQT, on this warped axis). ``harmonics=(1,)`` is :func:`warp_log_frequency`."""
    shape = x.shape
    flat = x.reshape(-1, 1, *shape[-2:])
    channels = []
    for harmonic in harmonics:
        grid = _warp_grid(out_bins, shape[-1], False, x.device, harmonic).expand(flat.shape[0], -1, -1, -1)
        channels.append(F.grid_sample(flat, grid, mode="bilinear", padding_mode="border", align_corners=True))
    return torch.cat(channels, dim=1).reshape(*shape[:-2], len(harmonics), out_bins, shape[-1])


def unwarp_log_frequency(x: torch.Tensor, linear_bins: int) -> torch.Tensor:
    """…×B×T (log frequency) → …×linear_bins×T: the inverse of :func:`warp_log_frequency`."""
    return _resample_rows(x, linear_bins, inverse=True)


def mask_targets(source_magnitudes: torch.Tensor, mixture_magnitude: torch.Tensor, mask_type: str,
                 ratio_max: float = 5.0) -> torch.Tensor:
    """Ground-truth masks from (warped) magnitudes: sources B×S×F×T, mixture B×1×F×T.

    ``binary``: 1 where |S_n| > 0.5·|S_mix| (source n dominates the bin, for two sources).
    ``ratio``: |S_n| / |S_mix| clamped to [0, ``ratio_max``]."""
    if mask_type == "binary":
        return (source_magnitudes > 0.5 * mixture_magnitude).float()
    if mask_type == "ratio":
        return (source_magnitudes / mixture_magnitude.clamp_min(1e-10)).clamp(0, ratio_max)
    raise ValueError(f"mask type must be one of {MASK_TYPES}, got {mask_type!r}")


def bin_weights(mixture_magnitude: torch.Tensor) -> torch.Tensor:
    """Per-bin loss weight log(1 + |S_mix|) clipped to [1e-3, 10]: loud bins count more."""
    return torch.log1p(mixture_magnitude).clamp(1e-3, 10)


def mask_loss(logits: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor, mask_type: str,
              ratio_max: float = 5.0) -> torch.Tensor:
    """Weighted BCE on logits (binary) or weighted L1 on ``ratio_max``·σ(logits) (ratio)."""
    weights = weights.expand_as(targets)
    if mask_type == "binary":
        return F.binary_cross_entropy_with_logits(logits, targets, weight=weights)
    if mask_type == "ratio":
        return (weights * (ratio_max * torch.sigmoid(logits) - targets).abs()).mean()
    raise ValueError(f"mask type must be one of {MASK_TYPES}, got {mask_type!r}")


def predicted_masks(logits: torch.Tensor, mask_type: str, ratio_max: float = 5.0, sharpness: float = 1.0
                    ) -> torch.Tensor:
    """Network output → mask values in the warped domain (before unwarping). Binary masks:
    σ(``sharpness`` · logit), the predicted probability at 1; above 1 the mask leans further
    towards the likelier source (for two complementary sources: p^s / (p^s + (1 − p)^s))."""
    if mask_type == "binary":
        return torch.sigmoid(sharpness * logits)
    return ratio_max * torch.sigmoid(logits)


def apply_masks(mixture_spec: torch.Tensor, warped_masks: torch.Tensor, settings: StftSettings, length: int,
                mask_type: str, binarize: bool = True) -> torch.Tensor:
    """Unwarp B×S×log_bins×T masks to linear frequency, binarise at 0.5 (binary masks, unless
    ``binarize`` is off), multiply the mixture magnitude (B×F×T complex spectrum) and invert
    with the mixture phase → B×S×length."""
    masks = unwarp_log_frequency(warped_masks, settings.linear_bins)
    if mask_type == "binary" and binarize:
        masks = (masks > 0.5).to(masks.dtype)
    magnitude, phase = mixture_spec.abs().unsqueeze(1), torch.angle(mixture_spec).unsqueeze(1)
    return istft(torch.polar(magnitude * masks, phase.expand_as(masks)), settings, length)


__all__ = ["MASK_TYPES", "StftSettings", "apply_masks", "bin_weights", "istft", "mask_loss", "mask_targets",
           "predicted_masks", "stft", "unwarp_log_frequency", "warp_harmonics", "warp_log_frequency"]
