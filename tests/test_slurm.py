"""The launch scripts under a real scheduler: `scripts/slurm_pretrain.sbatch` on the local
single-host SLURM cluster that `scripts/local_slurm.sh up` starts (two node names, n1 and n2,
on this machine), and `scripts/launch_torchrun.sh` with two nodes on 127.0.0.1.

Every run is 2 DDP processes (gloo on the CPU) training the tiny AVC recipe for 2 epochs of 3
steps; the uninterrupted 1-node × 2-task run is the reference the others must match to the
last bit (same seed, same shards, same ranks). Without a cluster these tests are skipped with
the reason; where ``AVSSL_REQUIRE_SLURM=1`` (CI) a missing cluster is a failure."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from tests.conftest import make_synth_shards

ROOT = Path(__file__).resolve().parent.parent
SBATCH = ROOT / "scripts" / "slurm_pretrain.sbatch"
STATE = Path(os.environ.get("AVSSL_SLURM_DIR", "/tmp/avssl-slurm"))

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

TINY = ["model.video_encoder.widths=[8,8,16,16]", "model.audio_encoder.widths=[8,8,16,16]", "data.video.size=32",
        "trainer.max_epochs=2", "checkpoint.every_n_train_steps=1", "trainer.log_every_n_steps=1",
        "logger.wandb=false", "trainer.enable_progress_bar=false", "data.batch_size=4", "data.num_workers=0",
        "trainer.accelerator=cpu", "trainer.strategy=ddp", "monitors.linear_probe=false",
        "monitors.knn=false"]
STEPS = 6  # 24 training videos, 2 ranks × batch 4: 3 steps an epoch, 2 epochs

# `avssl pretrain` with an optional pause after every training step (AVSSL_STEP_SECONDS, first
# run of a job only), so that a requeue lands in the middle of the run.
DRIVER = textwrap.dedent('''
    import os, sys, time
    import pytorch_lightning as pl
    import avssl.pretrain as pretrain_module
    from avssl.cli import main

    pause = float(os.environ.get("AVSSL_STEP_SECONDS", "0")) if not os.environ.get("SLURM_RESTART_COUNT") else 0.0

    class Pause(pl.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            time.sleep(pause)

    make = pretrain_module.checkpoint_callbacks
    pretrain_module.checkpoint_callbacks = lambda config, run_dir: [*make(config, run_dir), Pause()]
    sys.exit(main(sys.argv[1:]))
''')


def _cluster_env() -> dict[str, str]:
    conf = Path(os.environ.get("SLURM_CONF", STATE / "slurm.conf"))
    reason = None
    if not shutil.which("sbatch"):
        reason = "SLURM is not installed (scripts/local_slurm.sh up installs and starts it)"
    elif not conf.is_file():
        reason = f"no SLURM cluster configured at {conf} (scripts/local_slurm.sh up)"
    else:
        env = {**os.environ, "SLURM_CONF": str(conf)}
        idle = subprocess.run(["sinfo", "-h", "-N", "-o", "%N %t"], env=env, capture_output=True, text=True)
        nodes = dict(line.split() for line in idle.stdout.splitlines())
        if idle.returncode or not {"n1", "n2"} <= nodes.keys():
            reason = f"the local SLURM cluster is not answering (sinfo: {idle.stderr.strip() or idle.stdout.strip()})"
    if reason:
        if os.environ.get("AVSSL_REQUIRE_SLURM") == "1":
            pytest.fail(f"AVSSL_REQUIRE_SLURM=1 but {reason}")
        pytest.skip(reason)
    return env


@pytest.fixture(scope="module")
def cluster() -> dict[str, str]:
    return _cluster_env()


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # the compute "nodes" run the job from its own folder: a path every task sees
    root = tmp_path_factory.mktemp("slurm")
    make_synth_shards(root, num_videos=40, size=32, split=(0.6, 0.2, 0.2))
    (root / "driver.py").write_text(DRIVER)
    return root


def _submit(cluster: dict[str, str], workspace: Path, name: str, options: list[str], *,
            step_seconds: float = 0.0) -> str:
    env = {**cluster, "VENV": sys.prefix, "PYTHONPATH": str(ROOT), "WANDB_MODE": "offline",
           "AVSSL": f"{sys.executable} {workspace / 'driver.py'}", "AVSSL_STEP_SECONDS": str(step_seconds)}
    command = ["sbatch", "--parsable", "--gpus-per-node=0", "--cpus-per-task=1", f"--output={workspace / name}.out",
               f"--job-name={name}", *options, str(SBATCH), str(ROOT / "recipes" / "synth" / "avc_small.yaml"),
               *TINY, f"data.shards={workspace / 'shards'}", f"run_dir={workspace / name}"]
    submitted = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True, check=True)
    return submitted.stdout.strip().split(";")[0]


def _job(cluster: dict[str, str], job: str) -> dict[str, str]:
    shown = subprocess.run(["scontrol", "show", "job", job], env=cluster, capture_output=True, text=True, check=True)
    return dict(field.split("=", 1) for field in shown.stdout.split() if "=" in field)


def _wait(cluster: dict[str, str], job: str, workspace: Path, name: str, timeout: float = 480) -> dict[str, str]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        info = _job(cluster, job)
        if info["JobState"] in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY"):
            assert info["JobState"] == "COMPLETED", (workspace / f"{name}.out").read_text()[-4000:]
            return info
        time.sleep(1)
    subprocess.run(["scancel", job], env=cluster)
    pytest.fail(f"job {job} not finished after {timeout:.0f} s:\n" + (workspace / f"{name}.out").read_text()[-4000:])


def _weights(run_dir: Path) -> dict:
    checkpoint = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert checkpoint["global_step"] == STEPS
    return checkpoint["state_dict"]


@pytest.fixture(scope="module")
def reference(cluster: dict[str, str], workspace: Path) -> dict:
    """One node, two tasks, uninterrupted: the job completes and exports."""
    job = _submit(cluster, workspace, "one_node", ["--nodes=1", "--ntasks-per-node=2"])
    _wait(cluster, job, workspace, "one_node")
    export = workspace / "one_node" / "export"
    assert {"video_encoder.safetensors", "audio_encoder.safetensors", "model.json"} <= {p.name for p in export.iterdir()}
    return _weights(workspace / "one_node")


def test_sbatch_two_tasks_trains_to_the_end_and_exports(reference: dict, workspace: Path) -> None:
    log = (workspace / "one_node.out").read_text()
    assert "1 node(s) x 2 task(s)" in log and "main node 127.0.0.1" in log
    assert log.count("exported encoders:") == 1 and log.count("run folder:") == 1, "rank 0 alone exports and reports"
    assert reference, "weights trained"


def test_two_nodes_give_the_weights_of_one_node_with_two_tasks(cluster: dict[str, str], workspace: Path,
                                                               reference: dict) -> None:
    job = _submit(cluster, workspace, "two_nodes", ["--nodes=2", "--ntasks-per-node=1"])
    info = _wait(cluster, job, workspace, "two_nodes")
    assert info["NodeList"] == "n[1-2]"
    assert "2 node(s) x 1 task(s)" in (workspace / "two_nodes.out").read_text()
    torch.testing.assert_close(_weights(workspace / "two_nodes"), reference, rtol=0, atol=0)


def test_a_requeued_job_resumes_and_ends_with_the_uninterrupted_weights(cluster: dict[str, str], workspace: Path,
                                                                        reference: dict) -> None:
    # pre-emption: the scheduler stops the running job and puts it back in the queue
    job = _submit(cluster, workspace, "requeued", ["--nodes=1", "--ntasks-per-node=2"], step_seconds=2.0)
    last = workspace / "requeued" / "checkpoints" / "last.ckpt"
    deadline = time.monotonic() + 300
    while not (last.exists() and torch.load(last, weights_only=True)["global_step"] >= 2):
        assert time.monotonic() < deadline, (workspace / "requeued.out").read_text()[-4000:]
        time.sleep(0.5)
    subprocess.run(["scontrol", "requeue", job], env=cluster, check=True)
    # a requeued job may start cred_expire + 1 s later (11 s here, 121 s by default): release it now
    for _ in range(100):
        if _job(cluster, job)["JobState"] == "PENDING":
            break
        time.sleep(0.2)
    subprocess.run(["scontrol", "update", f"JobId={job}", "StartTime=now"], env=cluster, check=True)
    info = _wait(cluster, job, workspace, "requeued")
    assert info["Restarts"] == "1"
    log = (workspace / "requeued.out").read_text()
    assert "(restart 1)" in log and "resumed from:" in log
    torch.testing.assert_close(_weights(workspace / "requeued"), reference, rtol=0, atol=0)


def test_torchrun_with_two_nodes_on_one_host_matches_the_reference(workspace: Path, reference: dict) -> None:
    """scripts/launch_torchrun.sh twice, NODE_RANK 0 and 1, rendezvous on 127.0.0.1."""
    run_dir, port = workspace / "torchrun", 29000 + os.getpid() % 1000
    nodes = []
    for node_rank in (0, 1):
        env = {**os.environ, "NNODES": "2", "NODE_RANK": str(node_rank), "MASTER_ADDR": "127.0.0.1",
               "MASTER_PORT": str(port), "GPUS_PER_NODE": "1", "PYTHON": sys.executable, "PYTHONPATH": str(ROOT),
               "AVSSL": str(Path(sys.executable).with_name("avssl")), "WANDB_MODE": "offline",
               "OMP_NUM_THREADS": "1"}  # as torchrun sets it for several processes on one host
        log = open(workspace / f"torchrun_{node_rank}.log", "w")
        nodes.append((subprocess.Popen([str(ROOT / "scripts" / "launch_torchrun.sh"),
                                        str(ROOT / "recipes" / "synth" / "avc_small.yaml"), *TINY,
                                        f"data.shards={workspace / 'shards'}", f"run_dir={run_dir}"],
                                       env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT), log))
    for process, log in nodes:
        try:
            returncode = process.wait(timeout=480)
        finally:
            process.kill()
            log.close()
        assert returncode == 0, Path(log.name).read_text()[-4000:]
    torch.testing.assert_close(_weights(run_dir), reference, rtol=0, atol=0)


def test_the_time_limit_signal_checkpoints_and_requeues_the_job(cluster: dict[str, str], workspace: Path) -> None:
    """The script asks SLURM for SIGUSR1 before the time limit (here 2 minutes, the signal 20–80 s before it:
    SLURM may send it up to a minute early, and one that lands before Lightning is listening kills the tasks):
    Lightning's SLURM handler writes hpc_ckpt_1.ckpt on every rank's signal and requeues the job, which comes
    back, resumes from that checkpoint and trains to the end."""
    job = _submit(cluster, workspace, "signalled", ["--nodes=1", "--ntasks-per-node=2", "--time=2",
                                                    "--signal=SIGUSR1@20"], step_seconds=25.0)
    deadline = time.monotonic() + 300
    while (info := _job(cluster, job))["Restarts"] == "0" or info["JobState"] not in ("PENDING", "RUNNING", "COMPLETED"):
        assert info["JobState"] in ("PENDING", "RUNNING", "COMPLETING"), (workspace / "signalled.out").read_text()[-4000:]
        assert time.monotonic() < deadline, (workspace / "signalled.out").read_text()[-4000:]
        time.sleep(0.5)
    if info["JobState"] == "PENDING":  # the rest of the run gets more time and starts now
        subprocess.run(["scontrol", "update", f"JobId={job}", "TimeLimit=10", "StartTime=now"], env=cluster, check=True)
    info = _wait(cluster, job, workspace, "signalled")
    assert info["Restarts"] == "1"
    log = (workspace / "signalled.out").read_text()
    assert "Handling auto-requeue signal" in log and "(restart 1)" in log
    hpc = workspace / "signalled" / "hpc_ckpt_1.ckpt"
    assert 0 < torch.load(hpc, weights_only=True)["global_step"] < STEPS, "saved in the middle of the run"
    assert f"resumed from: {hpc}" in log
    assert torch.load(workspace / "signalled" / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == STEPS
