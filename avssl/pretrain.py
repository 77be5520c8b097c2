"""Recipe → task, data module, loggers, callbacks → Lightning Trainer → checkpoint (→ export)."""
from __future__ import annotations

import logging
import os
import re
import uuid
import warnings
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.callbacks import LearningRateMonitor, ModelCheckpoint
from pytorch_lightning.loggers import Logger
from pytorch_lightning.plugins.io import TorchCheckpointIO
from pytorch_lightning.utilities import rank_zero_only

from avssl.config import to_plain
from avssl.csv_log import ResumableCSVLogger
from avssl.data.compatibility import check_shards_fit_recipe
from avssl.data.datamodule import AVDataModule
from avssl.errors import RecipeError
from avssl.tasks.throughput import ThroughputMonitor

log = logging.getLogger(__name__)

WANDB_ID_FILE = "wandb_run_id"  # in the run folder: a resumed run continues the same wandb run


def make_loggers(config: DictConfig, run_dir: Path, resumed_at_step: int | None = None) -> list[Logger]:
    """CSV always (when on; a resumed run continues its metrics.csv); wandb offline unless
    the user set WANDB_MODE (a resumed run continues the same wandb run)."""
    loggers: list[Logger] = []
    if config.logger.csv:
        loggers.append(ResumableCSVLogger(save_dir=str(run_dir), name="", version="csv",
                                          resumed_at_step=resumed_at_step))
    if config.logger.wandb:
        os.environ.setdefault("WANDB_MODE", "offline")
        from pytorch_lightning.loggers import WandbLogger

        id_file = run_dir / WANDB_ID_FILE
        if not id_file.exists():
            run_dir.mkdir(parents=True, exist_ok=True)
            id_file.write_text(uuid.uuid4().hex[:8])  # wandb's run id format: 8 of [a-z0-9]
        loggers.append(WandbLogger(project=config.logger.project, name=config.logger.name or run_dir.name,
                                   save_dir=str(run_dir), config=to_plain(config), id=id_file.read_text().strip(),
                                   resume="allow"))
    return loggers


def save_resolved(config: DictConfig, run_dir: Path) -> Path:
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / "config.yaml"
    OmegaConf.save(config, path, resolve=True)
    return path


def _temporary_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


# What AtomicCheckpointIO names a checkpoint while writing it (.last.ckpt.<pid>.tmp): the
# only files remove_stale_temporaries deletes.
TEMPORARY_CHECKPOINT = re.compile(r"\..+\.ckpt\.[0-9]+\.tmp")


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes a checkpoint to a temporary file beside it, flushes it to disk and renames it
    into place (``os.replace``: atomic on one file system), so that a kill mid-write leaves
    the previous checkpoint whole. Lightning's own save goes through a temporary file in the
    system's temp folder and ``shutil.move``, which is a plain copy when that folder is on
    another file system than the run folder (a local /tmp and a shared run folder on a cluster).

    Reads go through :func:`avssl.export.load_checkpoint` (``weights_only=True`` whatever
    Lightning asks for), so no checkpoint Lightning restores, ``hpc_ckpt_*`` included, can
    run code."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError("AtomicCheckpointIO takes no storage_options")
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = _temporary_name(path)
        try:
            with open(temporary, "wb") as handle:
                torch.save(checkpoint, handle)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temporary, path)
        finally:
            temporary.unlink(missing_ok=True)

    def load_checkpoint(self, path: Any, map_location: Any | None = None,
                        weights_only: bool | None = None) -> dict[str, Any]:
        from avssl.export import load_checkpoint

        return load_checkpoint(path)


def remove_stale_temporaries(run_dir: Path) -> list[Path]:
    """Delete the temporary files of checkpoint writes that a kill cut short (a 0-byte
    ``.last.ckpt.<pid>.tmp`` each) from ``run_dir/checkpoints`` and ``run_dir``; only names
    of :data:`TEMPORARY_CHECKPOINT`'s pattern. Called once at the start of a run, before any
    save."""
    removed = []
    for folder in (run_dir / "checkpoints", run_dir):
        for path in sorted(folder.glob(".*.tmp")) if folder.is_dir() else ():
            if TEMPORARY_CHECKPOINT.fullmatch(path.name) and path.is_file():
                path.unlink(missing_ok=True)
                removed.append(path)
    if removed:
        log.info("removed %d stale temporary checkpoint file(s): %s", len(removed), ", ".join(p.name for p in removed))
    return removed


def _global_step(path: Path) -> int:
    """The step a checkpoint resumes at, read with the safe loader (the file is vetted here,
    before Lightning opens it)."""
    from avssl.export import CheckpointError, load_checkpoint

    step = load_checkpoint(path).get("global_step")
    if not isinstance(step, int):
        raise CheckpointError(f"{path} has no global_step: not a Lightning training checkpoint")
    return step


def find_resume_checkpoint(run_dir: Path) -> tuple[Path, int] | None:
    """The newest checkpoint of a run folder that loads, and its step: ``checkpoints/*.ckpt``
    or the ``hpc_ckpt_<n>.ckpt`` Lightning writes when SLURM signals a job's end, newest
    first. Each one that does not load is skipped with a warning saying why; None when the
    folder has no checkpoint; :class:`~avssl.export.CheckpointError` when it has some and none
    loads (a silent fresh start would overwrite the run's history)."""
    from avssl.export import CheckpointError

    found = [*(run_dir / "checkpoints").glob("*.ckpt"), *run_dir.glob("hpc_ckpt_*.ckpt")]
    candidates = sorted(found, key=lambda p: p.stat().st_mtime, reverse=True)
    reasons = []
    for path in candidates:
        try:
            step = _global_step(path)
        except CheckpointError as error:
            reasons.append(str(error))
            continue
        for reason in reasons:
            log.warning("resume=auto: skipping %s", reason)
        return path, step
    if candidates:  # one line: every checkpoint and why it does not load
        raise CheckpointError(f"resume=auto: no checkpoint of {run_dir} loads, nothing was started or changed "
                              f"({'; '.join(reasons)}); pass resume=PATH or resume=null")
    return None


def resolve_resume(resume: str | None, run_dir: Path) -> tuple[str, int] | None:
    """``resume``: None (fresh), ``auto`` (the newest checkpoint of the run folder that loads,
    or fresh when there is none) or a checkpoint path, which must load; returns the
    checkpoint and its step."""
    if resume in (None, "", "none", "null"):
        return None
    if resume == "auto":
        found = find_resume_checkpoint(run_dir)
        return (str(found[0]), found[1]) if found else None
    if not Path(resume).is_file():
        raise RecipeError(f"resume={resume}: no such checkpoint")
    return resume, _global_step(Path(resume))


class LatestCheckpoint(ModelCheckpoint):
    """``last.ckpt``: the newest state, as the one "top-k" file named ``last`` (no monitor:
    the newest is kept). Lightning's ``save_last`` beside ``save_top_k=0`` writes only when
    training ends (or with ``every_n_train_steps``), so a run killed before its end left nothing
    to resume from; and with ``check_val_every_n_epoch`` ≠ 1 it saves at validation's end only
    (``save_on_train_epoch_end`` here). The end of training is saved too when the last epochs
    fell between two ``every_n_epochs`` saves (``tail``)."""

    def __init__(self, folder: Path, tail: bool = False, **when: Any) -> None:
        super().__init__(dirpath=folder, filename=self.CHECKPOINT_NAME_LAST, monitor=None, save_top_k=1,
                         save_last=False, enable_version_counter=False, **when)
        self.tail = tail

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_end(trainer, pl_module)
        if self.tail and self._last_global_step_saved != trainer.global_step:  # every rank alike
            trainer.save_checkpoint(Path(self.dirpath) / (self.CHECKPOINT_NAME_LAST + self.FILE_EXTENSION))


def checkpoint_callbacks(config: DictConfig, run_dir: Path) -> list[ModelCheckpoint]:
    """``last.ckpt`` at the end of every ``checkpoint.every_n_epochs`` epochs and of training,
    and, when set, every ``checkpoint.every_n_train_steps`` steps (mid-epoch checkpoints resume
    exactly). Both callbacks write the one ``last.ckpt``, whichever saves later."""
    folder, every = run_dir / "checkpoints", config.checkpoint
    callbacks: list[ModelCheckpoint] = [LatestCheckpoint(folder, tail=True, every_n_epochs=every.every_n_epochs,
                                                         save_on_train_epoch_end=True)]
    if every.every_n_train_steps:
        callbacks.append(LatestCheckpoint(folder, every_n_train_steps=every.every_n_train_steps))
    return callbacks


def speed_up_encoders(task: pl.LightningModule, channels_last: bool, compile_encoders: bool) -> None:
    """``model.channels_last`` and ``model.compile`` on each encoder of the task."""
    for encoder in (getattr(task, "video_encoder", None), getattr(task, "audio_encoder", None)):
        if encoder is None:
            continue
        if channels_last:
            encoder.use_channels_last()
        if compile_encoders:
            encoder.compile()


def cpu_intra_op_threads(trainer_args: dict[str, Any], num_workers: int, cores: int | None,
                         current: int) -> int | None:
    """The intra-op thread count for a training process on the CPU that shares ``cores``
    with its loader workers: cores per process minus the workers, at least 1 and never
    more than ``current``; None on an accelerator (nothing to change). torch's default (one
    thread per core) makes the training process compete with its workers for the cores, and
    epochs markedly slower (docs/benchmarks.md)."""
    accelerator = str(trainer_args.get("accelerator", "auto"))
    if accelerator not in ("cpu", "auto") or (accelerator == "auto" and torch.cuda.is_available()):
        return None
    devices = trainer_args.get("devices", 1)
    processes = devices if isinstance(devices, int) and devices > 0 else 1
    return min(current, max(1, (cores or 1) // processes - num_workers))


def node_cores(environ: dict[str, str] | None = None) -> int | None:
    """The cores this node's training processes may use: inside a SLURM job step, what SLURM
    allotted them (cpus per task × tasks on this node), else every core of the machine. A
    task that took the whole machine's count would oversubscribe the cores SLURM gave its
    neighbours (and multi-node runs would use another thread count than one node)."""
    environ = os.environ if environ is None else environ
    per_task, tasks = environ.get("SLURM_CPUS_PER_TASK"), environ.get("SLURM_NTASKS_PER_NODE")
    if per_task and tasks and per_task.isdigit() and tasks.isdigit():
        return int(per_task) * int(tasks)
    return os.cpu_count()


def set_cpu_intra_op_threads(trainer_args: dict[str, Any], num_workers: int) -> None:
    """Give this training process :func:`cpu_intra_op_threads` threads on the CPU (nothing on
    an accelerator), and say so once: every rank sets its own count, rank zero logs it."""
    threads = cpu_intra_op_threads(trainer_args, num_workers, node_cores(), torch.get_num_threads())
    if threads is None:
        return
    # A count the user (or torchrun) set in OMP_NUM_THREADS wins. Otherwise ours goes there
    # too: Lightning's DDP launcher resets the count to cores // local processes unless
    # OMP_NUM_THREADS is set, which would undo this choice (and make a 2-node run compute
    # with other thread counts, so other roundings, than 2 processes on one node).
    given = os.environ.get("OMP_NUM_THREADS", "")
    threads = int(given) if given.isdigit() and int(given) > 0 else threads
    os.environ["OMP_NUM_THREADS"] = str(threads)
    if threads != torch.get_num_threads():
        if rank_zero_only.rank == 0:
            log.info("CPU training: %d intra-op thread(s) beside %d loader worker(s)", threads, num_workers)
        torch.set_num_threads(threads)


def _has_test_step(task: pl.LightningModule) -> bool:
    return type(task).test_step is not pl.LightningModule.test_step


def pretrain(config: DictConfig) -> dict[str, Any]:
    """Train the recipe's pretext task; returns the run folder, the last checkpoint, the
    checkpoint it resumed from (the recipe's ``resume``: :func:`resolve_resume`) and the
    export folder."""
    # ShardStream.__len__ is exact by construction (equal batches per worker and rank).
    warnings.filterwarnings("ignore", message=".*IterableDataset.*has `__len__` defined.*")
    from avssl.tasks.monitors import build_monitors
    from avssl.tasks.pretext import build_pretext_task, read_pretext_recipe

    recipe = read_pretext_recipe(config)  # read once, for the task and its data module; a bad task key stops here
    run_dir = Path(config.run_dir)
    resume, resumed_at = resolve_resume(config.resume, run_dir) or (None, None)  # vetted before anything is written
    if resume:
        log.info("resuming from %s (step %d)", resume, resumed_at)
    if rank_zero_only.rank == 0:  # one rank cleans up: under torchrun or srun every rank starts at once
        remove_stale_temporaries(run_dir)
    save_resolved(config, run_dir)
    pl.seed_everything(config.seed, workers=True)
    task = build_pretext_task(recipe)
    speed_up_encoders(task, config.model.channels_last, config.model.compile)
    datamodule = AVDataModule(recipe.data, views=task.views(), eval_views=task.eval_views())
    check_shards_fit_recipe(config, datamodule.views)  # warns, or stops, naming the `avssl shards` flags
    checkpoints = checkpoint_callbacks(config, run_dir)
    trainer_args = dict(OmegaConf.to_container(config.trainer, resolve=True))
    trainer_args.setdefault("default_root_dir", str(run_dir))
    set_cpu_intra_op_threads(trainer_args, datamodule.config.num_workers)
    loggers = make_loggers(config, run_dir, resumed_at)
    monitors = OmegaConf.to_object(config.monitors)
    callbacks: list[pl.Callback] = [*checkpoints, *build_monitors(monitors, config.data.shards, seed=config.seed)]
    if loggers:
        callbacks += [LearningRateMonitor(logging_interval="step"), ThroughputMonitor()]
    plugins = [AtomicCheckpointIO(), *(trainer_args.pop("plugins", None) or [])]
    trainer = pl.Trainer(logger=loggers or False, callbacks=callbacks, plugins=plugins, **trainer_args)
    trainer.fit(task, datamodule=datamodule, ckpt_path=resume, weights_only=True)
    if _has_test_step(task) and datamodule.config.test_split:
        trainer.test(task, datamodule=datamodule)  # held-out pretext metrics (e.g. AVTS sync accuracy)
    last = run_dir / "checkpoints" / "last.ckpt"
    result: dict[str, Any] = {"run_dir": str(run_dir), "checkpoint": str(last), "resumed_from": resume,
                              "metrics": {k: float(v) for k, v in trainer.callback_metrics.items()}}
    if config.export.after_training and trainer.is_global_zero:
        from avssl.export import export_checkpoint

        result["export"] = str(export_checkpoint(last, run_dir / "export"))
    return result
