"""The training process's intra-op threads on the CPU: the cores left by the loader workers."""
from __future__ import annotations

import os

import pytest
import torch

from avssl.pretrain import cpu_intra_op_threads, node_cores


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


def test_inside_a_slurm_job_the_cores_are_what_slurm_allotted_the_node_s_tasks() -> None:
    assert node_cores({"SLURM_CPUS_PER_TASK": "1", "SLURM_NTASKS_PER_NODE": "2"}) == 2
    assert node_cores({"SLURM_CPUS_PER_TASK": "8", "SLURM_NTASKS_PER_NODE": "4"}) == 32
    assert node_cores({}) == os.cpu_count()
    # one task per node on 2 nodes of a 2-core host: 1 thread each, as 2 tasks on one node get
    assert cpu_intra_op_threads({"accelerator": "cpu", "devices": 1}, 0,
                                node_cores({"SLURM_CPUS_PER_TASK": "1", "SLURM_NTASKS_PER_NODE": "1"}), 2) == 1
