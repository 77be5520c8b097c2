"""SeLaVi's label bank ("Labelling Unlabelled Videos from Scratch with Multi-modal
Self-supervision", NeurIPS 2020, §3): the latest joint log-probabilities of every training
video per head, and the labels Sinkhorn–Knopp solves from them under Gaussian cluster-size
marginals, at front-loaded steps of the run, and the loss against those labels. A module, so that all of it is in the
checkpoint under ``label_bank.``; identical on every rank (writes are gathered)."""
from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch import nn

from avssl.distributed import gather, rank
from avssl.losses.sinkhorn import SinkhornResult, sinkhorn_knopp

logger = logging.getLogger(__name__)

#: `check_cluster_sizes`: the largest miss of a cluster's mass (|column sum − r_k|, as a
#: fraction of the smallest target share min r) that passes silently, and the one that stops.
SIZE_MISS_WARNING = 0.01
SIZE_MISS_ERROR = 0.5


def labeling_steps(total_steps: int, first_step: int, count: int) -> list[int]:
    """``count`` steps from ``first_step`` to ``total_steps``, spaced as (k/(count−1))^1.5."""
    if count <= 1:
        return [first_step]
    span = max(total_steps - first_step, 0)
    return sorted({first_step + int(span * (k / (count - 1)) ** 1.5) for k in range(count)})


def gaussian_marginal(current_mass: torch.Tensor, std: float, generator: torch.Generator) -> torch.Tensor:
    """Cluster-size fractions ~ N(1, std²), largest to the cluster that is largest now."""
    k = current_mass.numel()
    if std <= 0:
        return torch.full((k,), 1.0 / k, dtype=torch.float64)
    sizes = (1 + std * torch.randn(k, generator=generator, dtype=torch.float64)).clamp_min(0.05)
    marginal = torch.empty(k, dtype=torch.float64)
    marginal[current_mass.argsort(descending=True).cpu()] = sizes.sort(descending=True).values
    return marginal / marginal.sum()


def check_cluster_sizes(result: SinkhornResult, marginal: torch.Tensor, head: int) -> None:
    """The rule for a labelling whose column sums miss the marginal (Sinkhorn stopped at
    ``max_iterations`` short of its 1e-9 tolerance): a miss up to 1 % of the smallest cluster's
    target passes (labels are argmaxes, a small miss moves few of them); up to 50 % logs a
    warning on rank 0 and the labels are used; beyond, clusters are empty or double their size
    and training on them would be training on the wrong problem: RuntimeError."""
    miss = result.column_error / float(marginal.min())
    if miss <= SIZE_MISS_WARNING:
        return
    message = (f"SeLaVi head {head}: Sinkhorn–Knopp stopped after {result.iterations} iterations with cluster "
               f"masses off by up to {miss:.1%} of the smallest target (column error {result.column_error:.3g})")
    if miss > SIZE_MISS_ERROR:
        raise RuntimeError(f"{message}: the labels do not follow the cluster-size marginal; lower task.lam")
    if rank() == 0:
        logger.warning("%s; the labels are used", message)


def shared_label_loss(video_logits: torch.Tensor, audio_logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """½ [CE(video heads, labels) + CE(audio heads, labels)] of H×B×K logits against H×B
    labels shared by both modalities, averaged over heads and clips."""
    k = video_logits.shape[-1]
    return 0.5 * (F.cross_entropy(video_logits.reshape(-1, k), targets.reshape(-1))
                  + F.cross_entropy(audio_logits.reshape(-1, k), targets.reshape(-1)))


class LabelBank(nn.Module):
    """Per head: every training video's latest joint log-probabilities (float16, the uniform
    prior until written), whether it was seen, its label (−1 before the first labelling);
    and the number of labellings done. ``lam``: Sinkhorn's λ; ``marginal_std``: the spread
    of the cluster sizes (0: equipartition); ``seed``: their draws."""

    #: the buffers' names when they were attributes of the SeLaVi task (checkpoints before the bank was a module)
    FORMER_NAMES = {"log_prob_bank": "log_probs", "seen": "seen", "labels": "labels",
                    "labelings_done": "labelings_done"}

    def __init__(self, num_heads: int, num_instances: int, num_clusters: int, lam: float, marginal_std: float,
                 seed: int) -> None:
        super().__init__()
        h, n, k = num_heads, num_instances, num_clusters
        self.register_buffer("log_probs", torch.full((h, n, k), -float(torch.log(torch.tensor(k))),
                                                     dtype=torch.float16))
        self.register_buffer("seen", torch.zeros(n, dtype=torch.bool))
        self.register_buffer("labels", torch.full((h, n), -1, dtype=torch.long))
        self.register_buffer("labelings_done", torch.zeros((), dtype=torch.long))
        self.lam, self.marginal_std = lam, marginal_std
        self.generator = torch.Generator().manual_seed(seed)
        self.last_labeled_step = -1  # a step seen twice (gradient accumulation) labels once

    @property
    def has_labels(self) -> bool:
        return int(self.labelings_done) > 0

    @torch.no_grad()
    def write(self, index: torch.Tensor, log_probs: torch.Tensor) -> None:
        """Store this step's H×B×K joint log-probabilities of every rank (gathered here)."""
        all_index = gather(index)
        all_log_probs = gather(log_probs.transpose(0, 1).contiguous())
        self.log_probs[:, all_index] = all_log_probs.transpose(0, 1).to(self.log_probs.dtype)
        self.seen[all_index] = True

    def targets(self, index: torch.Tensor) -> torch.Tensor:
        """H×B labels of these videos."""
        return self.labels[:, index]

    def relabel_at(self, step: int, schedule: list[int]) -> None:
        """Relabel once at each step of ``schedule``. Rows never seen (a video skipped as
        undecodable, an epoch cut short) keep the uniform prior and get labels by the
        marginals: requiring every row left the labels unsolved."""
        if step in schedule and bool(self.seen.any()) and self.last_labeled_step != step:
            self.relabel()
            self.last_labeled_step = step

    @torch.no_grad()
    def relabel(self) -> None:
        """Solve the labels of every head from the bank (identical on every rank); the sizes
        Sinkhorn reached are judged by `check_cluster_sizes` (warning or error)."""
        num_clusters = self.log_probs.shape[-1]
        for head in range(self.log_probs.shape[0]):
            log_probs = self.log_probs[head].double()
            current = torch.bincount(log_probs.argmax(1), minlength=num_clusters).double()
            marginal = gaussian_marginal(current, self.marginal_std, self.generator)
            result = sinkhorn_knopp(log_probs, self.lam, marginal.to(log_probs.device))
            check_cluster_sizes(result, marginal, head)
            self.labels[head] = result.labels
        self.labelings_done += 1

