"""The training process's intra-op threads on the CPU: the cores left by the loader workers."""
from __future__ import annotations

import pytest
import torch

from avssl.pretrain import cpu_intra_op_threads


@pytest.mark.parametrize("trainer,workers,cores,current,expected", [
    ({"accelerator": "cpu"}, 2, 2, 2, 1),                  # the demo machine: 2 cores, 2 workers
    ({"accelerator": "cpu"}, 2, 16, 16, 14),
    ({"accelerator": "cpu"}, 0, 8, 8, 8),
    ({"accelerator": "cpu"}, 4, 16, 4, 4),                 # never more than the user set
    ({"accelerator": "cpu", "devices": 2}, 2, 16, 16, 6),  # two processes share the cores
    ({"accelerator": "cpu", "devices": 2}, 2, 2, 2, 1),    # at least one
    ({"accelerator": "gpu"}, 8, 32, 32, None),
])
def test_cpu_training_leaves_the_loader_workers_their_cores(trainer: dict, workers: int, cores: int, current: int,
                                                            expected: int | None) -> None:
    assert cpu_intra_op_threads(trainer, workers, cores, current) == expected


def test_auto_accelerator_counts_as_cpu_only_without_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert cpu_intra_op_threads({}, 2, 4, 4) == 2
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert cpu_intra_op_threads({}, 2, 4, 4) is None
