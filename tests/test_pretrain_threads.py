"""The training process's intra-op threads on the CPU: the cores left by the loader workers."""
from __future__ import annotations

import os

import pytest
import torch
from pytorch_lightning.utilities import rank_zero_only

import avssl.pretrain
from avssl.pretrain import cpu_intra_op_threads, node_cores, set_cpu_intra_op_threads


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


@pytest.mark.parametrize("rank,logged", [(0, ["CPU training: 1 intra-op thread(s) beside 2 loader worker(s)"]),
                                         (1, [])])
def test_the_thread_count_is_logged_once_not_printed_by_every_rank(
        rank: int, logged: list[str], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
        capsys: pytest.CaptureFixture) -> None:
    set_to: list[int] = []
    monkeypatch.setattr(avssl.pretrain, "node_cores", lambda: 2)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    monkeypatch.setattr(torch, "set_num_threads", set_to.append)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(rank_zero_only, "rank", rank)
    with caplog.at_level("INFO", logger="avssl.pretrain"):
        set_cpu_intra_op_threads({"accelerator": "cpu"}, num_workers=2)
    assert (caplog.messages, capsys.readouterr().out) == (logged, "")
    assert set_to == [1] and os.environ["OMP_NUM_THREADS"] == "1", "every rank sets its own count"
