"""``smoke=true``: every full-scale pretraining recipe trains on the CPU through every phase
of its method (2 steps each, batch 4, frames ≤ 32 px and ≤ 4 frames) with the recipe's
encoders, method constants, audio window, spectrogram, precision and feature path, in its
own ``<run_dir>-smoke`` folder; the user's ``key=value`` win; a real run never resumes it."""
from __future__ import annotations

import csv
import math
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from avssl.cli import main
from avssl.config import load_recipe, refuse_smoke_mix
from avssl.errors import RecipeError
from avssl.pretrain import resolve_resume
from avssl.tasks.pretext.avts import AVTS
from avssl.tasks.pretext.base import PretextTask
from tests.conftest import make_synth_shards

ROOT = Path(__file__).resolve().parent.parent
RECIPES = ROOT / "recipes"
FULL_SCALE = sorted((RECIPES / "pretrain").glob("*/*.yaml"))
AVC = RECIPES / "pretrain" / "avc" / "kinetics-sounds_r2plus1d18_8x32_1f224.yaml"
AVID = RECIPES / "pretrain" / "avid_cma" / "kinetics400_r2plus1d18_8x32_8f112.yaml"
AVTS_RECIPE = RECIPES / "pretrain" / "avts" / "kinetics400_mc318_8x32_16f112.yaml"

# the phase of each epoch of a smoke run, per method folder (see _phase)
PHASES = {"avc": ["avc"], "avts": ["easy", "easy+hard"], "avid_cma": ["avid", "avid+cma"],
          "selavi": ["bank fill", "labels"], "xdc": ["clustering 1", "clustering 2"],
          "avenet": ["avenet"], "lvs": ["lvs"],
          "vatt": ["vatt"], "cav_mae": ["cav_mae"],
          "robust_xid": ["xid", "xid+weights+soft targets"]}


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_synth_shards(tmp_path_factory.mktemp("smoke"), num_videos=24, size=48, split=(0.7, 0.15, 0.15),
                             seconds=4.0)  # AVTS: a hard negative needs room beside the window


@pytest.fixture(scope="module")
def long_shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """For the recipes whose window is longer than ``shards``' 4 s (CAV-MAE: 10 s of audio)."""
    return make_synth_shards(tmp_path_factory.mktemp("smoke_long"), num_videos=12, size=48, split=(0.5, 0.25, 0.25),
                             seconds=10.5)


def _shards_for(method: str, request: pytest.FixtureRequest) -> Path:
    return request.getfixturevalue("long_shards" if method == "cav_mae" else "shards")


def _smoke_args(recipe: Path, shards: Path, run_dir: Path, *overrides: str) -> list[str]:
    return ["pretrain", str(recipe), "smoke=true", f"data.shards={shards}", f"run_dir={run_dir}",
            "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false", *overrides]


# -- settings ------------------------------------------------------------------------------------

def test_there_is_a_recipe_per_method() -> None:
    assert {p.parent.name for p in FULL_SCALE} >= {"avc", "avts", "avid_cma", "selavi", "xdc", "avenet", "lvs",
                                                  "vatt", "cav_mae", "robust_xid"}


def test_smoke_shrinks_the_run_and_keeps_the_method() -> None:
    smoke, full = load_recipe(FULL_SCALE[0], ["smoke=true"]), load_recipe(FULL_SCALE[0])
    assert smoke.trainer.limit_train_batches == 2 and smoke.trainer.accelerator == "cpu" and smoke.trainer.devices == 1
    assert smoke.data.batch_size == 4 and smoke.data.video.size <= 32 and smoke.data.video.num_frames <= 4
    assert smoke.model == full.model and smoke.data.audio == full.data.audio
    assert full.data.batch_size > 4 and full.trainer.get("max_steps", -1) == -1, "without smoke=true: as written"


def test_smoke_keeps_what_a_gpu_run_depends_on() -> None:
    """Precision (bf16 autocast runs on the CPU), the on-device audio features, channels-last
    and compile stay as written; float16 becomes the CPU's bfloat16."""
    for recipe in FULL_SCALE:
        full, smoke = load_recipe(recipe), load_recipe(recipe, ["smoke=true"])
        assert full.trainer.precision == "bf16-mixed" and smoke.trainer.precision == "bf16-mixed", recipe
        assert smoke.data.audio_features == full.data.audio_features == "device"
    smoke = load_recipe(AVC, ["smoke=true", "model.channels_last=true", "model.compile=true",
                              "trainer.precision=16-mixed"])
    assert smoke.model.channels_last and smoke.model.compile and smoke.trainer.precision == "16-mixed", "the user's"
    assert load_recipe(AVC, ["trainer.precision=16-mixed", "smoke=true"]).trainer.precision == "16-mixed"


def test_float16_recipes_smoke_in_bfloat16(tmp_path: Path) -> None:
    recipe = tmp_path / "fp16.yaml"
    recipe.write_text(f"base: {AVC}\ntrainer:\n  precision: 16-mixed\n")
    assert load_recipe(recipe, ["smoke=true"]).trainer.precision == "bf16-mixed"
    assert load_recipe(recipe).trainer.precision == "16-mixed"


def test_the_users_overrides_win_over_the_smoke_settings() -> None:
    smoke = load_recipe(AVID, ["smoke=true", "data.batch_size=8", "trainer.precision=32-true",
                               "trainer.limit_train_batches=3", "task.num_negatives=16", "task.cma_start_epoch=2",
                               "trainer.max_epochs=3", "data.video.size=48"])
    assert (smoke.data.batch_size, smoke.trainer.precision, smoke.trainer.limit_train_batches) == (8, "32-true", 3)
    assert (smoke.task.num_negatives, smoke.task.cma_start_epoch, smoke.trainer.max_epochs) == (16, 2, 3)
    assert smoke.data.video.size == 48 and smoke.data.num_workers == 0, "what the user did not set: smoke's"


def test_a_smoke_run_has_its_own_folder() -> None:
    assert load_recipe(AVID, ["smoke=true"]).run_dir == "runs/avid_cma_kinetics400_r2plus1d18-smoke"
    assert load_recipe(AVID, ["smoke=true", "run_dir=/scratch/avid/"]).run_dir == "/scratch/avid-smoke"
    assert load_recipe(AVID, ["smoke=true", "run_dir=runs/x-smoke"]).run_dir == "runs/x-smoke", "not twice"
    assert load_recipe(AVID, ["run_dir=/scratch/avid"]).run_dir == "/scratch/avid"


def test_smoke_moves_every_phase_switch_to_epoch_one() -> None:
    expected = {"avc": (1, {}), "avts": (2, {"hard_start_epoch": 1}),
                "avid_cma": (2, {"cma_start_epoch": 1, "cma_resample_epochs": 1}),
                "selavi": (2, {"contrastive_warmup_epochs": 0}), "xdc": (2, {"recluster_epochs": 1}),
                "avenet": (1, {}), "lvs": (1, {}), "vatt": (1, {}), "cav_mae": (1, {}),
                "robust_xid": (2, {"robust_start_epoch": 1})}
    for recipe in FULL_SCALE:
        epochs, keys = expected[recipe.parent.name]
        smoke = load_recipe(recipe, ["smoke=true"])
        assert smoke.trainer.max_epochs == epochs and smoke.trainer.max_steps == -1, recipe
        assert {key: smoke.task[key] for key in keys} == keys, recipe
    selavi = next(p for p in FULL_SCALE if p.parent.name == "selavi")
    warm = load_recipe(selavi, ["smoke=true", "task.contrastive_warmup_epochs=20"])
    assert warm.task.contrastive_warmup_epochs == 20, "the user's"


def test_resume_refuses_to_mix_smoke_and_real_runs() -> None:
    smoke_checkpoint = {"hyper_parameters": {"config": {"smoke": True, "run_dir": "runs/a-smoke"}}}
    real_checkpoint = {"hyper_parameters": {"config": {"smoke": False, "run_dir": "runs/a"}}}
    with pytest.raises(RecipeError) as error:
        refuse_smoke_mix(smoke_checkpoint, {"smoke": False})
    assert str(error.value) == ("resume: that checkpoint is from a smoke run (smoke=true, run_dir runs/a-smoke); "
                                "a real run never continues one: start it fresh (resume=null) "
                                "or from its own checkpoint")
    with pytest.raises(RecipeError) as error:
        refuse_smoke_mix(real_checkpoint, {"smoke": True})
    assert str(error.value) == ("resume: that checkpoint is from a real run (run_dir runs/a); a smoke run starts fresh "
                                "in its own folder: drop resume")
    refuse_smoke_mix(smoke_checkpoint, {"smoke": True})
    refuse_smoke_mix(real_checkpoint, {"smoke": False})


# -- runs ------------------------------------------------------------------------------------------

@dataclass
class Step:
    epoch: int
    phase: str
    loss: float
    grad_norm: float
    precision: str


def _phase(task: PretextTask, outputs: dict) -> str:
    name = task.task_config.name
    if name == "avts":
        drawn = set(task.smoke_kinds.tolist())
        return "+".join(kind for code, kind in enumerate(("easy", "hard", "super_hard")) if code in drawn)
    if name == "avid_cma":
        return "avid+cma" if "cma" in outputs["terms"] else "avid"
    if name == "selavi":
        return "labels" if task.label_bank.has_labels else "bank fill"
    if name == "xdc":  # the clustering that gave this step's labels
        return f"clustering {int(task.pseudo_labels.clusterings_done)}"
    if name == "robust_xid":  # the weights' diagnostic is logged once they apply
        return "xid+weights+soft targets" if task.robust_active and "mean_weight" in outputs["terms"] else "xid"
    return name


@pytest.fixture
def steps(monkeypatch: pytest.MonkeyPatch) -> list[Step]:
    """Every training step of the runs in a test: its epoch, phase, loss and gradient norm."""
    recorded: list[Step] = []
    norms: list[float] = []

    def on_before_optimizer_step(self: PretextTask, optimizer: torch.optim.Optimizer) -> None:
        squares = [float(p.grad.float().pow(2).sum()) for p in self.parameters() if p.grad is not None]
        norms.append(math.sqrt(sum(squares)))

    def on_train_batch_end(self: PretextTask, outputs: dict, batch: dict, batch_idx: int) -> None:
        recorded.append(Step(self.current_epoch, _phase(self, outputs), float(outputs["loss"]), norms.pop(),
                             str(self.trainer.precision)))

    negative_kinds = AVTS.negative_kinds

    def recording_kinds(self: AVTS, batch_size: int, device: torch.device) -> torch.Tensor:
        self.smoke_kinds = negative_kinds(self, batch_size, device)
        return self.smoke_kinds

    monkeypatch.setattr(PretextTask, "on_before_optimizer_step", on_before_optimizer_step, raising=False)
    monkeypatch.setattr(PretextTask, "on_train_batch_end", on_train_batch_end, raising=False)
    monkeypatch.setattr(AVTS, "negative_kinds", recording_kinds)
    return recorded


def _assert_every_phase_learns(steps: list[Step], phases: list[str], precision: str) -> None:
    assert [step.phase for step in steps] == [phase for phase in phases for _ in range(2)]
    for step in steps:
        assert step.precision == precision
        if step.phase == "bank fill":  # SeLaVi's epoch 0 only fills the label bank: nothing to learn, by design
            assert step.loss == 0.0 and step.grad_norm == 0.0
        else:
            assert step.loss != 0.0 and math.isfinite(step.loss), step
            assert step.grad_norm > 0.0 and math.isfinite(step.grad_norm), step


# bf16 convolutions on a CPU without bf16 instructions are ~15× slower than float32 (R(2+1)D-18
# at 4×32²: 12.5 s against 0.8 s a step on the 2-core test machine): the full-size encoders
# run here in float32, and the bf16-mixed the smoke run keeps runs below, per method, with
# the CPU recipes' small encoders (the method's heads, banks and losses as written).
FLOAT32 = "trainer.precision=32-true"
SMALL_ENCODERS = ("model.video_encoder.name=small3d", "model.audio_encoder.name=small2d")
# the token methods need transformers: the tiny ones, with the recipe's patch sizes
TINY_TRANSFORMERS = {"vatt": ("model.video_encoder.name=vit_tiny", "model.audio_encoder.name=wat_tiny"),
                     "cav_mae": ("model.video_encoder.name=vit_tiny", "model.audio_encoder.name=ast_tiny")}


@pytest.mark.slow
@pytest.mark.parametrize("recipe", FULL_SCALE, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_full_scale_recipe_smoke_run_learns_in_every_phase(recipe: Path, request: pytest.FixtureRequest,
                                                            tmp_path: Path, steps: list[Step]) -> None:
    shards = _shards_for(recipe.parent.name, request)
    assert main(_smoke_args(recipe, shards, tmp_path / "run", FLOAT32)) == 0
    _assert_every_phase_learns(steps, PHASES[recipe.parent.name], "32-true")
    run_dir = tmp_path / "run-smoke"
    assert not (tmp_path / "run").exists(), "a smoke run writes only into <run_dir>-smoke"
    checkpoint = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert checkpoint["global_step"] == len(steps)
    saved = load_recipe(run_dir / "config.yaml")
    full = load_recipe(recipe)
    assert saved.model == full.model and saved.task.name == full.task.name and saved.smoke


@pytest.mark.slow
@pytest.mark.parametrize("method", sorted(PHASES))
def test_every_method_smokes_in_bf16_mixed_on_the_cpu(method: str, request: pytest.FixtureRequest, tmp_path: Path,
                                                      steps: list[Step]) -> None:
    recipe = next(p for p in FULL_SCALE if p.parent.name == method)
    shards = _shards_for(method, request)
    # channels-last too: the layout a GPU recipe turns on for its bf16 convolutions
    small = TINY_TRANSFORMERS.get(method, SMALL_ENCODERS)
    assert main(_smoke_args(recipe, shards, tmp_path / "run", *small, "model.channels_last=true")) == 0
    _assert_every_phase_learns(steps, PHASES[method], "bf16-mixed")


@pytest.mark.slow
def test_avts_smoke_run_draws_super_hard_negatives_when_the_recipe_asks(shards: Path, tmp_path: Path,
                                                                       steps: list[Step]) -> None:
    assert main(_smoke_args(AVTS_RECIPE, shards, tmp_path / "run", "task.super_hard=true",
                            "task.super_hard_fraction=0.25", FLOAT32)) == 0
    _assert_every_phase_learns(steps, ["easy", "easy+hard+super_hard"], "32-true")


@pytest.mark.slow
def test_a_real_run_never_resumes_a_smoke_run(shards: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    run_dir = tmp_path / "avc"
    assert main(_smoke_args(AVC, shards, run_dir, FLOAT32)) == 0
    smoke_checkpoint = tmp_path / "avc-smoke" / "checkpoints" / "last.ckpt"
    assert smoke_checkpoint.is_file()
    real = load_recipe(AVC, [f"run_dir={run_dir}", "resume=auto"])
    assert resolve_resume(real.resume, Path(real.run_dir)) is None, "resume=auto: a fresh start"
    capsys.readouterr()
    # the real recipe, on the CPU in one process: it stops when it restores the checkpoint
    assert main(["pretrain", str(AVC), f"data.shards={shards}", f"run_dir={run_dir}", f"resume={smoke_checkpoint}",
                 "trainer.accelerator=cpu", "trainer.devices=1", "trainer.strategy=auto", "data.num_workers=0",
                 "logger.wandb=false", "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false"]) == 2
    assert capsys.readouterr().err.endswith(
        f"resume: that checkpoint is from a smoke run (smoke=true, run_dir {run_dir}-smoke); a real run never "
        "continues one: start it fresh (resume=null) or from its own checkpoint\n")
    assert not (run_dir / "checkpoints").exists()


@pytest.mark.slow
def test_two_process_smoke_run(shards: Path, tmp_path: Path) -> None:
    """The GPU run's DDP path on the CPU: 2 processes (gloo) in bf16-mixed and channels-last,
    AVID then CMA with banks gathered across ranks, started as a user starts it (Lightning
    re-launches the command); the small encoders keep it short."""
    run_dir = tmp_path / "ddp"
    command = [sys.executable, "-m", "avssl.cli", *_smoke_args(AVID, shards, run_dir, "trainer.devices=2",
                                                                 "trainer.strategy=ddp", *SMALL_ENCODERS,
                                                                 "model.channels_last=true")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
           "WANDB_MODE": "offline"}
    done = subprocess.run(command, check=False, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    checkpoint = torch.load(tmp_path / "ddp-smoke" / "checkpoints" / "last.ckpt", map_location="cpu",
                            weights_only=True)
    assert checkpoint["global_step"] == 4
    with open(tmp_path / "ddp-smoke" / "csv" / "metrics.csv") as handle:
        rows = [row for row in csv.DictReader(handle) if row.get("train/loss_step")]
    assert [int(row["epoch"]) for row in rows] == [0, 0, 1, 1]
    assert [bool(row["train/cma_step"]) for row in rows] == [False, False, True, True]
    assert all(float(row["train/loss_step"]) != 0.0 for row in rows)
    assert all(float(row["train/cma_step"]) != 0.0 for row in rows[2:])
