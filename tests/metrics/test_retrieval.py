"""In-batch cross-modal retrieval by hand."""
from __future__ import annotations

import torch

from avssl.metrics.retrieval import in_batch_retrieval_top1


def test_retrieval_averages_both_directions() -> None:
    """Video (1, 0), (0, 1) against audio (1, 0), (1, 0.1): both videos find their own audio
    (cosines 1 > 0.995 and 0.0995 > 0); audio 1 is nearer video 0 (0.995 > 0.0995): ½(1 + ½)."""
    video = torch.tensor([[1.0, 0.0], [0.0, 3.0]])
    audio = torch.tensor([[2.0, 0.0], [1.0, 0.1]])
    assert in_batch_retrieval_top1(video, audio).item() == 0.75
    assert in_batch_retrieval_top1(video, video).item() == 1.0
