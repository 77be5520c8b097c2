"""The launch scripts under a real scheduler: `scripts/slurm_pretrain.sbatch` on the local
single-host SLURM cluster that `scripts/local_slurm.sh up` starts (two node names, n1 and n2,
on this machine), and `scripts/launch_torchrun.sh` with two nodes on 127.0.0.1.

Every run is 2 DDP processes (gloo on the CPU) training the tiny AVC recipe for 2 epochs of 3
steps; the uninterrupted 1-node × 2-task run is the reference the others must match to the
last bit (same seed, same shards, same ranks). Without a cluster these tests are skipped with
the reason; where ``AVSSL_REQUIRE_SLURM=1`` (CI) a missing cluster is a failure."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from tests.conftest import make_synth_shards, shard_samples

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


def _cluster_problem() -> str | None:
    """Why the local cluster cannot run these tests (None: it can)."""
    if not shutil.which("sbatch"):
        return "SLURM is not installed (scripts/local_slurm.sh up installs and starts it)"
    if not CONF.is_file():
        return f"no SLURM cluster configured at {CONF} (scripts/local_slurm.sh up)"
    idle = subprocess.run(["sinfo", "-h", "-N", "-o", "%N %t"], env={**os.environ, "SLURM_CONF": str(CONF)},
                          capture_output=True, text=True)
    nodes = dict(line.split() for line in idle.stdout.splitlines())
    if idle.returncode or not {"n1", "n2"} <= nodes.keys():
        return f"the local SLURM cluster is not answering (sinfo: {idle.stderr.strip() or idle.stdout.strip()})"
    return None


CONF = Path(os.environ.get("SLURM_CONF", STATE / "slurm.conf"))
PROBLEM = _cluster_problem()
REQUIRED = os.environ.get("AVSSL_REQUIRE_SLURM") == "1"  # CI: a missing scheduler fails, never skips
pytestmark.append(pytest.mark.skipif(PROBLEM is not None and not REQUIRED, reason=PROBLEM or ""))


@pytest.fixture(scope="module")
def cluster() -> dict[str, str]:
    if PROBLEM is not None:
        pytest.fail(f"AVSSL_REQUIRE_SLURM=1 but {PROBLEM}")
    return {**os.environ, "SLURM_CONF": str(CONF)}


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
    written = {p.name for p in export.iterdir()}
    assert {"video_encoder.safetensors", "audio_encoder.safetensors", "model.json", "README.md"} <= written
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
    output = workspace / "signalled.out"
    while (info := _job(cluster, job))["Restarts"] == "0" or info["JobState"] not in ("PENDING", "RUNNING",
                                                                                      "COMPLETED"):
        assert info["JobState"] in ("PENDING", "RUNNING", "COMPLETING"), output.read_text()[-4000:]
        assert time.monotonic() < deadline, (workspace / "signalled.out").read_text()[-4000:]
        time.sleep(0.5)
    if info["JobState"] == "PENDING":  # the rest of the run gets more time and starts now
        subprocess.run(["scontrol", "update", f"JobId={job}", "TimeLimit=10", "StartTime=now"], env=cluster, check=True)
    info = _wait(cluster, job, workspace, "signalled")
    assert info["Restarts"] == "1"
    log = (workspace / "signalled.out").read_text()
    assert "Handling auto-requeue signal" in log and "(restart 1)" in log
    hpc = workspace / "signalled" / "hpc_ckpt_1.ckpt"
    signalled_at = torch.load(hpc, weights_only=True)["global_step"]
    assert 0 < signalled_at < STEPS, "saved in the middle of the run"
    # resume=auto takes the newest state: the signal's checkpoint, or a step checkpoint written after it
    resumed_at = int(re.search(r"resuming from \S+ \(step (\d+)\)", log).group(1))
    assert signalled_at <= resumed_at < STEPS, log[-4000:]
    assert torch.load(workspace / "signalled" / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == STEPS

# --------------------------------------------------------------------------- shard writing as an array job

SHARDS_SBATCH = ROOT / "scripts" / "slurm_shards.sbatch"
SHARD_FLAGS = ["--short-side", "32", "--shard-size", "2", "--min-seconds", "0.5"]
# `avssl shards` in which part 1 of an array hits a full disk (the other parts and the merge run as usual)
FAILING_PART = textwrap.dedent('''
    import os, sys
    import avssl.data.shards as shards
    from avssl.cli import main

    if os.environ.get("SLURM_ARRAY_TASK_ID") == "1":
        def full_disk(*args, **kwargs):
            raise OSError(28, "No space left on device")
        shards._pack = full_disk
    if __name__ == "__main__":  # the writer's spawned workers import this file too
        sys.exit(main(sys.argv[1:]))
''')


@pytest.fixture(scope="module")
def shard_inputs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """6 labelled synthetic videos and their shards written by one plain run (the reference)."""
    from avssl.cli import main

    root = tmp_path_factory.mktemp("slurm_shards")
    assert main(["synth", "--out", str(root / "synth"), "--num-videos", "6", "--seconds", "1", "--size", "32",
                 "--num-categories", "2"]) == 0
    assert main(["shards", "--videos", str(root / "synth" / "videos"), "--labels", str(root / "synth" / "labels.csv"),
                 "--out", str(root / "single"), *SHARD_FLAGS]) == 0
    (root / "failing_part.py").write_text(FAILING_PART)
    return root


def _shard_array(cluster: dict[str, str], root: Path, name: str, avssl: str) -> str:
    """Submit slurm_shards.sbatch as a 2-task array; the merge job's id once task 0 queued it."""
    env = {**cluster, "VENV": sys.prefix, "PYTHONPATH": str(ROOT), "AVSSL": avssl,
           "MERGE_OUTPUT": str(root / f"{name}_merge.out"), "MERGE_CPUS": "2"}  # the nodes have 2
    command = ["sbatch", "--parsable", "--array=0-1", "--cpus-per-task=1", f"--job-name={name}",
               f"--output={root / name}_%a.out", str(SHARDS_SBATCH), "--videos", str(root / "synth" / "videos"),
               "--labels", str(root / "synth" / "labels.csv"), "--out", str(root / name), *SHARD_FLAGS]
    subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True, check=True)
    deadline, log = time.monotonic() + 120, root / f"{name}_0.out"
    while time.monotonic() < deadline:
        text = log.read_text() if log.exists() else ""
        if "merge queued as job " in text:
            return text.split("merge queued as job ")[1].split()[0]
        time.sleep(0.5)
    pytest.fail(f"task 0 did not queue the merge in 120 s: {log.read_text() if log.exists() else 'no log'}")


def _end_state(cluster: dict[str, str], job: str, timeout: float = 300) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = _job(cluster, job)["JobState"]
        if state not in ("PENDING", "RUNNING", "CONFIGURING", "COMPLETING"):
            return state
        time.sleep(1)
    subprocess.run(["scancel", job], env=cluster, check=False)
    pytest.fail(f"job {job} not finished after {timeout:.0f} s")


def test_a_shards_array_job_writes_two_parts_and_merges_them_into_the_output_of_one_run(
        cluster: dict[str, str], shard_inputs: Path) -> None:
    import json

    merge = _shard_array(cluster, shard_inputs, "array", f"{sys.executable} -m avssl.cli")
    assert _end_state(cluster, merge) == "COMPLETED", (shard_inputs / "array_merge.out").read_text()[-4000:]
    for task in (0, 1):
        assert f"task {task} of 2 on" in (shard_inputs / f"array_{task}.out").read_text()
    assert "merged 2 parts" in (shard_inputs / "array_merge.out").read_text()
    merged = json.loads((shard_inputs / "array" / "manifest.json").read_text())
    single = json.loads((shard_inputs / "single" / "manifest.json").read_text())
    assert {k: v for k, v in merged.items() if k not in ("splits", "merged_from_parts")} == \
        {k: v for k, v in single.items() if k != "splits"}
    assert {s: r["num_samples"] for s, r in merged["splits"].items()} == \
        {s: r["num_samples"] for s, r in single["splits"].items()}
    assert shard_samples(shard_inputs / "array") == shard_samples(shard_inputs / "single")


def test_a_failed_array_task_is_reported_by_the_merge(cluster: dict[str, str], shard_inputs: Path) -> None:
    merge = _shard_array(cluster, shard_inputs, "broken",
                         f"{sys.executable} {shard_inputs / 'failing_part.py'}")
    assert _end_state(cluster, merge) == "FAILED"
    log = (shard_inputs / "broken_merge.out").read_text()
    assert (f"avssl shards merge: cannot merge {shard_inputs / 'broken' / 'parts'}: part 1 of 2 failed "
            f"(OSError: [Errno 28] No space left on device)") in log, log[-4000:]
    assert not (shard_inputs / "broken" / "manifest.json").exists()
    assert "No space left on device" in (shard_inputs / "broken_1.out").read_text()
