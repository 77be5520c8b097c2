"""Exact resume: a run killed with SIGKILL in the middle of an epoch and resumed with
``resume=auto`` ends with the weights, optimiser state and method state (memory banks,
monitors) of the same run uninterrupted — on 1 process with 2 loader workers, and on
2 DDP processes (gloo)."""
from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from avssl.cli import main
from avssl.errors import RecipeError
from avssl.pretrain import AtomicCheckpointIO, find_resume_checkpoint, remove_stale_temporaries, resolve_resume
from tests.conftest import make_synth_shards

RECIPES = Path(__file__).resolve().parent.parent / "recipes"
ROOT = Path(__file__).resolve().parent.parent

# Runs `avssl pretrain` with a callback that SIGKILLs the whole process group (every rank and
# loader worker at once, as a node failure or a scheduler's kill does) when the first rank
# starts step KILL_AT; the checkpoint of the step before is on disk by then (the ranks meet in
# a barrier after each save). A hard kill, no cleanup.
DRIVER = textwrap.dedent('''
    import os, signal, sys
    import pytorch_lightning as pl
    import avssl.pretrain as pretrain_module
    from avssl.cli import main

    kill_at = int(os.environ.get("KILL_AT", "0"))

    class KillAt(pl.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if kill_at and trainer.global_step == kill_at:
                os.killpg(os.getpgrp(), signal.SIGKILL)

    make = pretrain_module.checkpoint_callbacks
    pretrain_module.checkpoint_callbacks = lambda config, run_dir: [*make(config, run_dir), KillAt()]
    sys.exit(main(sys.argv[1:]))
''')


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_synth_shards(tmp_path_factory.mktemp("resume"), num_videos=40, size=32, split=(0.6, 0.2, 0.2))


def _pretrain(driver: Path, recipe: str, overrides: list[str], kill_at: int = 0, timeout: float = 600) -> int:
    """Run the driver in its own process group, its output in a log file: waiting on a pipe
    would also wait for any process that inherited it; the group is killed afterwards, so no
    rank or loader worker outlives the test."""
    env = {**os.environ, "KILL_AT": str(kill_at), "WANDB_MODE": "offline", "PYTHONPATH": str(ROOT)}
    log_path = driver.with_name(f"pretrain_{len(list(driver.parent.glob('pretrain_*.log')))}.log")
    with open(log_path, "w") as log:
        process = subprocess.Popen([sys.executable, str(driver), "pretrain", str(RECIPES / "synth" / recipe),
                                    *overrides], env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=True)
        try:
            returncode = process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            returncode = None
        finally:
            try:
                os.killpg(process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            process.wait()
    output = log_path.read_text()[-3000:]
    assert returncode is not None, f"still running after {timeout:.0f} s:\n{output}"
    assert returncode == (-signal.SIGKILL if kill_at else 0), output
    return returncode


def _final_state(run_dir: Path) -> dict:
    checkpoint = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    return {"state_dict": checkpoint["state_dict"], "optimizer": checkpoint["optimizer_states"][0]["state"],
            "monitors": {k: v for k, v in checkpoint["callbacks"].items() if k.startswith("Online")},
            "global_step": checkpoint["global_step"],
            "epoch": checkpoint["epoch"]}


def _kill_and_resume(tmp_path: Path, recipe: str, overrides: list[str], steps_per_epoch: int, kill_at: int) -> None:
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    _pretrain(driver, recipe, [*overrides, f"run_dir={tmp_path / 'straight'}"])
    interrupted = tmp_path / "interrupted"
    _pretrain(driver, recipe, [*overrides, f"run_dir={interrupted}"], kill_at=kill_at)
    _, step = find_resume_checkpoint(interrupted)
    assert step == kill_at and step % steps_per_epoch, "killed in the middle of an epoch"
    _pretrain(driver, recipe, [*overrides, f"run_dir={interrupted}", "resume=auto"])
    expected, resumed = _final_state(tmp_path / "straight"), _final_state(interrupted)
    assert resumed["global_step"] == expected["global_step"] == 2 * steps_per_epoch
    torch.testing.assert_close(resumed["state_dict"], expected["state_dict"], rtol=1e-5, atol=1e-6, equal_nan=True)
    torch.testing.assert_close(resumed["optimizer"], expected["optimizer"], rtol=1e-5, atol=1e-6, equal_nan=True)
    assert len(expected["monitors"]) == 2, "the online linear probe and kNN"
    # the CSV log continues: every step once, the same learning rates as the straight run
    logged = {name: [(row["step"], row["lr-Adam"])
                     for row in csv.DictReader(open(tmp_path / name / "csv" / "metrics.csv")) if row.get("lr-Adam")]
              for name in ("straight", "interrupted")}
    assert logged["interrupted"] == logged["straight"] and len(logged["straight"]) == 2 * steps_per_epoch
    torch.testing.assert_close(resumed["monitors"], expected["monitors"], rtol=1e-5, atol=1e-6, equal_nan=True)


TINY = ["model.video_encoder.widths=[8,8,16,16]", "model.audio_encoder.widths=[8,8,16,16]", "data.video.size=32",
        "trainer.max_epochs=2", "trainer.check_val_every_n_epoch=1", "checkpoint.every_n_train_steps=1",
        "trainer.log_every_n_steps=1",
        "logger.wandb=false", "export.after_training=false", "trainer.enable_progress_bar=false",
        # random crops, colour jitter, gain and masks: every augmentation draws random numbers
        "data.augment.crop_scale=[0.5,1.0]", "data.augment.color_jitter=0.4", "data.augment.audio_gain_db=6.0",
        "data.augment.time_masks=1", "data.augment.freq_masks=1"]


def test_a_run_killed_between_validations_keeps_its_last_finished_epoch(shards: Path, tmp_path: Path) -> None:
    """Validation every 4 epochs: a run killed in its second epoch resumes from the end of
    its first (Lightning's default with sparse validation saves only at validation's end:
    nothing on disk until epoch 4, and last.ckpt lagging the run by up to 3 epochs)."""
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    overrides = [*TINY, f"data.shards={shards}", "data.batch_size=4", "data.num_workers=0", "trainer.max_epochs=3",
                 "trainer.check_val_every_n_epoch=4", "checkpoint.every_n_train_steps=0", f"run_dir={tmp_path / 'run'}"]
    _pretrain(driver, "avc_small.yaml", overrides, kill_at=8)  # 6 steps an epoch: killed in the second
    saved = _final_state(tmp_path / "run")
    assert (saved["epoch"], saved["global_step"]) == (0, 6)  # the end of epoch 0: resume starts epoch 1


def test_the_end_of_training_is_saved_between_two_epoch_checkpoints(shards: Path, tmp_path: Path) -> None:
    overrides = [*TINY, f"data.shards={shards}", "data.batch_size=4", "data.num_workers=0", "trainer.max_epochs=3",
                 "checkpoint.every_n_epochs=2", "checkpoint.every_n_train_steps=0", f"run_dir={tmp_path / 'run'}"]
    assert main(["pretrain", str(RECIPES / "synth" / "avc_small.yaml"), *overrides]) == 0
    assert _final_state(tmp_path / "run")["global_step"] == 3 * 6  # not epoch 2's 12
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir()) == ["last.ckpt"]


@pytest.mark.slow
@pytest.mark.parametrize("recipe,extra", [
    ("avc_small.yaml", ["task.scheduler=cosine", "task.warmup_epochs=1"]),  # the scheduler's state too
    ("selavi_small.yaml", ["task.num_labelings=4"]),  # label bank and Sinkhorn labels, relabelled mid-run
    # pseudo-labels from k-means at epoch start: the resumed epoch keeps its labels, epoch 1 clusters again
    ("xdc_small.yaml", ["task.num_clusters=3", "task.contrastive_warmup_epochs=0", "task.contrastive_weight=0.0"]),
], ids=["avc", "selavi", "xdc"])
def test_kill_mid_epoch_and_resume_matches_uninterrupted_run(shards: Path, tmp_path: Path, recipe: str,
                                                            extra: list[str]) -> None:
    # 24 training videos, 2 workers × 3 batches of 4 = 6 steps an epoch; killed at step 5
    overrides = [*TINY, *extra, f"data.shards={shards}", "data.batch_size=4", "data.num_workers=2"]
    _kill_and_resume(tmp_path, recipe, overrides, steps_per_epoch=6, kill_at=5)


@pytest.mark.slow
def test_two_process_ddp_kill_and_resume(shards: Path, tmp_path: Path) -> None:
    # AVID: its memory banks are part of the state. 2 ranks × 3 batches of 4
    # Loading in the rank's own process (num_workers=0): forking a loader worker from a rank
    # whose gloo threads are running deadlocked once here, most likely CI's hang too (the child stuck in
    # multiprocessing's Popen._launch); the 1-process tests cover resuming with workers.
    overrides = [*TINY, f"data.shards={shards}", "data.batch_size=4", "data.num_workers=0",
                 "trainer.devices=2", "trainer.strategy=ddp", "task.num_negatives=8", "task.cma_start_epoch=1",
                 "task.cma_positives=2", "task.cma_negatives=4", "task.projection_hidden=16", "task.embedding_dim=8"]
    _kill_and_resume(tmp_path, "avid_cma_small.yaml", overrides, steps_per_epoch=3, kill_at=5)


def _cut_short(path: Path, good: Path, newer_by: float) -> Path:
    """A copy of ``good`` cut short mid-write, ``newer_by`` seconds newer."""
    path.write_bytes(good.read_bytes()[:100])
    os.utime(path, (good.stat().st_mtime + newer_by,) * 2)
    return path


def test_resume_auto_takes_the_newest_checkpoint_that_loads(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    assert resolve_resume("auto", tmp_path) is None, "no checkpoint yet: a fresh start"
    good = folder / "epoch=0-step=4.ckpt"
    torch.save({"global_step": 4}, good)
    broken = _cut_short(folder / "last.ckpt", good, newer_by=10)
    with caplog.at_level("WARNING", logger="avssl.pretrain"):
        assert resolve_resume("auto", tmp_path) == (str(good), 4)
    assert caplog.messages == [f"resume=auto: skipping {broken} is not a PyTorch checkpoint (no torch.save zip "
                               "archive in it: another kind of file, or one cut short)"]
    hpc = tmp_path / "hpc_ckpt_1.ckpt"  # written by Lightning on SLURM's pre-emption signal
    torch.save({"global_step": 6}, hpc)
    os.utime(hpc, (good.stat().st_mtime + 20,) * 2)
    assert resolve_resume("auto", tmp_path) == (str(hpc), 6)
    assert resolve_resume(None, tmp_path) is None
    assert resolve_resume(str(good), tmp_path) == (str(good), 4)
    with pytest.raises(RecipeError, match="no such checkpoint"):
        resolve_resume(str(tmp_path / "missing.ckpt"), tmp_path)


def test_resume_auto_stops_when_no_checkpoint_loads(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run_dir = tmp_path / "run"
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "csv").mkdir()
    history = run_dir / "csv" / "metrics.csv"
    history.write_text("epoch,step,train/loss\n0,0,2.5\n0,1,2.25\n")
    (run_dir / "config.yaml").write_text("the earlier run's recipe\n")
    good = tmp_path / "good.ckpt"
    torch.save({"global_step": 4}, good)
    only = _cut_short(run_dir / "checkpoints" / "last.ckpt", good, newer_by=0)
    before = {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}
    shards = tmp_path / "shards"  # only read once the resume choice is made
    shards.mkdir()
    (shards / "manifest.json").write_text('{"splits": {}}')
    status = main(["pretrain", str(RECIPES / "synth" / "avc_small.yaml"), f"run_dir={run_dir}", "resume=auto",
                   f"data.shards={shards}"])
    assert status == 1  # the run folder's files are the problem: a data error
    assert capsys.readouterr().err == (
        f"avssl pretrain: resume=auto: no checkpoint of {run_dir} loads, nothing was started or changed ({only} is "
        "not a PyTorch checkpoint (no torch.save zip archive in it: another kind of file, or one cut short)); "
        "pass resume=PATH or resume=null\n")
    assert {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()} == before, "the history is untouched"


def test_stale_temporaries_are_removed_at_start(tmp_path: Path) -> None:
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    stale = [folder / ".last.ckpt.4242.tmp", folder / ".epoch=0-step=4.ckpt.17.tmp",
             tmp_path / ".hpc_ckpt_1.ckpt.9.tmp"]
    kept = [folder / "last.ckpt", folder / ".notes.tmp", folder / "last.ckpt.4242.tmp", folder / ".last.ckpt.tmp",
            tmp_path / ".config.yaml.12.tmp"]
    for path in stale + kept:
        path.write_bytes(b"")
    assert remove_stale_temporaries(tmp_path) == sorted(stale[:2]) + stale[2:]
    assert sorted(p for p in tmp_path.rglob("*") if p.is_file()) == sorted(kept)


def test_a_write_cut_short_leaves_the_previous_checkpoint_whole(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    io, path = AtomicCheckpointIO(), tmp_path / "checkpoints" / "last.ckpt"
    io.save_checkpoint({"global_step": 1, "w": torch.ones(1000)}, path)

    def dies_half_way(obj, handle):  # a kill in the middle of writing
        handle.write(b"PK\x03\x04 half a checkpoint")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", dies_half_way)
    with pytest.raises(KeyboardInterrupt):
        io.save_checkpoint({"global_step": 2, "w": torch.zeros(1000)}, path)
    monkeypatch.undo()
    assert torch.load(path, weights_only=True)["global_step"] == 1
    assert [p.name for p in path.parent.iterdir()] == ["last.ckpt"], "no temporary file left behind"


def test_one_last_checkpoint_holds_the_final_step(shards: Path, tmp_path: Path) -> None:
    # 24 training videos in batches of 4: 6 steps an epoch; stopped at step 3, a step
    # checkpoint every 2 beside the end-of-epoch one (both write last.ckpt)
    run_dir = tmp_path / "run"
    (run_dir / "checkpoints").mkdir(parents=True)
    stale = run_dir / "checkpoints" / ".last.ckpt.99999.tmp"  # a kill during an earlier save
    stale.write_bytes(b"")
    assert main(["pretrain", str(RECIPES / "synth" / "avc_small.yaml"), f"data.shards={shards}", f"run_dir={run_dir}",
                 "model.video_encoder.widths=[8,8,16,16]", "model.audio_encoder.widths=[8,8,16,16]",
                 "data.video.size=32", "data.batch_size=4", "data.num_workers=0", "data.cache=none",
                 "trainer.max_epochs=1", "trainer.max_steps=3", "trainer.limit_val_batches=0",
                 "checkpoint.every_n_train_steps=2", "export.after_training=true", "logger.wandb=false",
                 "trainer.enable_progress_bar=false"]) == 0
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["last.ckpt"]
    assert torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 3
    assert json.loads((run_dir / "export" / "model.json").read_text())["global_step"] == 3


def test_resumed_log_keeps_the_test_scores_of_the_checkpoint_it_trains_on_from(tmp_path: Path) -> None:
    """Trained on from the final checkpoint (step 4), the earlier end's test row stays; rows logged
    after a checkpoint by a killed run go, as they are logged again."""
    from avssl.csv_log import ResumableCSVLogger

    folder = tmp_path / "csv"
    folder.mkdir()
    (folder / "metrics.csv").write_text("epoch,step,train/loss,test/nmi\n0,1,2.5,\n1,3,2.25,\n1,4,,0.75\n"
                                        "1,4,2.0,\n2,5,1.5,\n")
    logger = ResumableCSVLogger(save_dir=str(tmp_path), name="", version="csv", resumed_at_step=4)
    logger.log_metrics({"train/loss": 1.25}, step=5)
    logger.save()
    rows = [(r["step"], r["train/loss"], r["test/nmi"]) for r in csv.DictReader(open(folder / "metrics.csv"))]
    assert rows == [("1", "2.5", ""), ("3", "2.25", ""), ("4", "", "0.75"), ("5", "1.25", "")]
