"""Sound-source localization metrics ("Localizing Visual Sounds the Hard Way", CVPR 2021, the LVS test code's rules):
ground-truth maps from boxes, the median-threshold binarisation, consensus IoU, cIoU@0.5 and the AUC of the
success-rate curve. Small torch code: no maintained library implements these rules."""
from __future__ import annotations

from collections.abc import Sequence

import torch

#: LVS's thresholds, built as 0.05·i (i = 0..20) like its code, so a cIoU that sits exactly on
#: a threshold passes or fails as it does there.
AUC_THRESHOLDS = torch.tensor([0.05 * i for i in range(21)], dtype=torch.float64)


def ground_truth_map(boxes: Sequence[Sequence[float]] | torch.Tensor, height: int, width: int,
                     *, combine: str = "union") -> torch.Tensor:
    """A height×width float map from boxes (xmin, ymin, xmax, ymax) in pixels of that map.

    A box covers rows ymin..ymax−1 and columns xmin..xmax−1 (coordinates truncated to
    integers and clipped to the image, as LVS's `int(...)` and `max(x, 0)`): a box wholly left
    of or above the image covers nothing. `combine`:
    "union" (VGG-SS): 1 where any box lies, else 0; "consensus" (Flickr-SoundNet, one box per
    annotator): the sum of the box masks / 2, clipped at 1, so one annotator gives 0.5 and two
    or more give 1. Rescale coordinates to the map (×224, or 256 → 224) before calling."""
    if combine not in ("union", "consensus"):
        raise ValueError(f"combine must be 'union' or 'consensus', got {combine!r}")
    box_list = boxes.tolist() if isinstance(boxes, torch.Tensor) else list(boxes)
    counts = torch.zeros(height, width, dtype=torch.float32)
    for box in box_list:
        if len(box) != 4:
            raise ValueError(f"a box is (xmin, ymin, xmax, ymax), got {box}")
        xmin, ymin, xmax, ymax = (int(c) for c in box)
        # every coordinate into 0..size: a negative end would index from the far side
        xmin, xmax = (min(max(x, 0), width) for x in (xmin, xmax))
        ymin, ymax = (min(max(y, 0), height) for y in (ymin, ymax))
        counts[ymin:ymax, xmin:xmax] += 1
    return (counts > 0).float() if combine == "union" else (counts / 2).clamp(max=1)


def binarize_heatmap(heatmap: torch.Tensor, num_pixels: int | None = None) -> torch.Tensor:
    """LVS's rule: the pixels strictly above the value at index ⌊HW/2⌋ of the sorted map.
    With distinct values that is HW/2 − 1 pixels for even HW (one short of "exactly half").
    LVS min-max normalises first (skipped here: it changes no ranking), then sets the pixels
    above that value to 1 and those below 1 to 0, so its maxima (normalised to exactly 1) stay
    marked even when none is above it: a saturated map (the middle value is the maximum)
    marks every maximum pixel. A constant map LVS does not normalise: it marks every pixel
    when the value is ≥ 0 and none when it is negative; so does this. (Pixels within float32
    rounding of the maximum, which LVS's normalisation would also round to 1, are not
    matched.) ``num_pixels`` instead marks that many highest pixels (the
    "top-k fraction" rule the LVS paper mentions; with k = the ground truth's area it asks
    where, not how much: objects far smaller than half the frame cannot reach cIoU 0.5
    under the median rule). Returns a bool map."""
    if heatmap.dim() != 2:
        raise ValueError(f"heatmap must be H×W, got {tuple(heatmap.shape)}")
    if torch.isnan(heatmap).any():
        raise ValueError("heatmap contains NaN")
    flat = heatmap.flatten()
    if num_pixels is not None:
        if not 0 < num_pixels <= flat.numel():
            raise ValueError(f"num_pixels must be in 1..{flat.numel()}, got {num_pixels}")
        chosen = torch.zeros(flat.numel(), dtype=torch.bool)
        chosen[flat.argsort(descending=True, stable=True)[:num_pixels]] = True
        return chosen.view_as(heatmap)
    threshold = flat.sort().values[flat.numel() // 2]
    peak = flat.max()
    if threshold < peak:
        return heatmap > threshold
    if flat.min() < peak:  # saturated
        return heatmap == peak
    return torch.full_like(heatmap, bool(peak >= 0), dtype=torch.bool)  # constant


def ciou(heatmap: torch.Tensor, gt_map: torch.Tensor, *, binarized: bool = False, rule: str = "median") -> float:
    """Consensus IoU of one image: Σ P·g / (Σ g + Σ P·[g = 0]).

    P is `binarize_heatmap(heatmap)` (``rule="median"``, LVS) or the top-k pixels with k the
    number of ground-truth pixels (``rule="gt_area"``), or `heatmap` itself (values in
    {0, 1}) when `binarized=True`; g is a `ground_truth_map` of the same H×W. An empty g is
    an error."""
    if heatmap.shape != gt_map.shape or gt_map.dim() != 2:
        raise ValueError(f"heatmap and gt_map must be H×W of one size, got {tuple(heatmap.shape)} "
                         f"and {tuple(gt_map.shape)}")
    if rule not in ("median", "gt_area"):
        raise ValueError(f"rule must be 'median' or 'gt_area', got {rule!r}")
    g = gt_map.double()
    if float(g.sum()) <= 0:
        raise ValueError("gt_map is empty (no box): cIoU is undefined")
    if binarized:
        if not bool(((heatmap == 0) | (heatmap == 1)).all()):
            raise ValueError("binarized=True needs a prediction of 0s and 1s")
        prediction = heatmap.double()
    else:
        num_pixels = int((g > 0).sum()) if rule == "gt_area" else None
        prediction = binarize_heatmap(heatmap, num_pixels).double()
    return float((prediction * g).sum() / (g.sum() + (prediction * (g == 0)).sum()))


def whole_image_baseline(gt_map: torch.Tensor) -> float:
    """cIoU of a prediction marking every pixel: Σ g / (Σ g + #{g = 0}). For a binary (union)
    map this is box area / image area; for a consensus map, pixels at 0.5 count half."""
    return ciou(torch.ones_like(gt_map), gt_map, binarized=True)


def ciou_success_rate(cious: Sequence[float] | torch.Tensor, threshold: float = 0.5) -> float:
    """Fraction of images whose cIoU ≥ threshold ("cIoU" as papers report it, at 0.5)."""
    values = torch.as_tensor(cious, dtype=torch.float64)
    if values.numel() == 0:
        raise ValueError("no cIoU values")
    return float((values >= threshold).double().mean())


def ciou_auc(cious: Sequence[float] | torch.Tensor) -> float:
    """Area under the success-rate curve: the fraction with cIoU ≥ t at the 21 thresholds
    t = 0, 0.05, …, 1, integrated by the trapezoidal rule (as `sklearn.metrics.auc` in LVS).
    All-ones cIoUs give 1; all zeros give 0.025, not 0 (every cIoU passes t = 0)."""
    values = torch.as_tensor(cious, dtype=torch.float64).flatten()
    if values.numel() == 0:
        raise ValueError("no cIoU values")
    rates = (values[None, :] >= AUC_THRESHOLDS[:, None]).double().mean(dim=1)
    return float(torch.trapezoid(rates, AUC_THRESHOLDS))
