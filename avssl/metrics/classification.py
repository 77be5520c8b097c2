"""Classification metrics (docs/evaluation.md): top-k accuracy, clip → video score averaging and
multi-label mean average precision. AP comes from torchmetrics; top-k accuracy is a few lines
of torch, for a stated rule on ties."""
from __future__ import annotations

import warnings

import torch
from torchmetrics.functional.classification import multilabel_average_precision


def _check_scores(scores: torch.Tensor, n: int, what: str) -> None:
    if scores.dim() != 2 or scores.shape[0] != n:
        raise ValueError(f"scores must be N×C with N = len({what}) = {n}, got {tuple(scores.shape)}")


def top_k_accuracy(scores: torch.Tensor, labels: torch.Tensor, k: int = 1) -> float:
    """Percentage of rows of `scores` (N×C, logits or probabilities) whose `k` highest classes
    contain `labels` (N, int).

    Ties are shared: a row whose label ties with others at the k-th place counts the chance
    that a uniformly random order of the tied classes keeps the label, (k − #higher) / #tied
    (so a constant row scores k/C). Hand-written: torchmetrics takes `torch.topk`'s
    unspecified order of the tied classes (an all-zero row's top-1 is class 0, its top-2
    classes 2 and 3), scikit-learn the highest class indices first."""
    if labels.dim() != 1:
        raise ValueError(f"labels must be 1-D, got {tuple(labels.shape)}")
    _check_scores(scores, labels.numel(), "labels")
    num_classes = scores.shape[1]
    if not 1 <= k <= num_classes:
        raise ValueError(f"top-{k} accuracy needs 1 <= k <= number of classes ({num_classes})")
    if torch.isnan(scores).any():
        raise ValueError("scores contain NaN")
    labels = labels.long()
    if labels.numel() and not (0 <= int(labels.min()) and int(labels.max()) < num_classes):
        raise ValueError(f"labels must be in 0..{num_classes - 1}, got {int(labels.min())}..{int(labels.max())}")
    label_scores = scores.gather(1, labels[:, None])
    higher = (scores > label_scores).sum(dim=1)
    tied = (scores == label_scores).sum(dim=1)  # the label included
    credit = ((k - higher).clamp(min=0).double() / tied).clamp(max=1)
    return 100.0 * float(credit.mean())


def video_level_scores(clip_scores: torch.Tensor, clip_labels: torch.Tensor, video_index: torch.Tensor,
                       *, apply_softmax: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Average the clips of each video ("Audio-Visual Instance Discrimination with Cross-Modal Agreement", CVPR 2021
    "video accuracy").

    `clip_scores` N×C are logits turned into softmax scores first (`apply_softmax=False`
    averages them as given, e.g. logits: say which you report); `clip_labels` and
    `video_index` are N-long. Returns (V×C mean scores, V labels), row i being the i-th
    smallest video index. Clips of one video with different labels are an error."""
    if clip_labels.dim() != 1 or video_index.shape != clip_labels.shape:
        raise ValueError(f"clip_labels and video_index must be 1-D of equal length, got "
                         f"{tuple(clip_labels.shape)} and {tuple(video_index.shape)}")
    _check_scores(clip_scores, clip_labels.numel(), "clip_labels")
    scores = clip_scores.float()
    if apply_softmax:
        scores = scores.softmax(dim=1)
    videos, inverse = torch.unique(video_index, sorted=True, return_inverse=True)
    sums = torch.zeros(len(videos), scores.shape[1], dtype=scores.dtype).index_add_(0, inverse, scores)
    counts = torch.bincount(inverse, minlength=len(videos)).to(scores.dtype)
    video_labels = torch.empty(len(videos), dtype=torch.long).scatter_(0, inverse, clip_labels.long())
    mismatch = video_labels[inverse] != clip_labels.long()
    if mismatch.any():
        bad = int(video_index[mismatch.nonzero()[0, 0]])
        raise ValueError(f"video {bad} has clips with different labels")
    return sums / counts[:, None], video_labels


def mean_average_precision(scores: torch.Tensor, targets: torch.Tensor) -> float:
    """Macro mean over classes of average precision (a fraction in [0, 1]) for multi-label
    `scores` N×C and {0, 1} `targets` N×C.

    AP is the step-wise area under the precision–recall curve of the ranked scores
    (Σ_n (R_n − R_{n−1}) P_n, as sklearn's `average_precision_score`), computed per class by
    torchmetrics `multilabel_average_precision(average="none")`. Classes with no positive in
    `targets` have no defined AP and are skipped (torchmetrics' own macro average would count
    them as 0)."""
    if scores.dim() != 2 or scores.shape != targets.shape:
        raise ValueError(f"scores and targets must both be N×C, got {tuple(scores.shape)} and "
                         f"{tuple(targets.shape)}")
    if not bool(((targets == 0) | (targets == 1)).all()):
        raise ValueError("targets must hold only 0 and 1")
    has_positive = targets.sum(dim=0) > 0
    if not has_positive.any():
        raise ValueError("no class has a positive target: mAP is undefined")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*No positive samples.*")
        per_class = multilabel_average_precision(scores.float(), targets.long(), num_labels=scores.shape[1],
                                                 average="none")
    return float(per_class[has_positive].mean())
