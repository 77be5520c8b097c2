"""A stranger's checkpoint never runs code: a real checkpoint with one extra object whose
unpickling would create a marker file is refused by every verb that reads a ``.ckpt``, with
one line on stderr and a non-zero exit status, and the marker never appears."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from avssl.cli import main
from tests.conftest import make_synth_shards

RECIPES = Path(__file__).resolve().parent.parent / "recipes"


class CreatesMarker:
    """Unpickling this calls ``open(marker, "w")``: the file appears iff the pickle ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return open, (str(self.marker), "w")


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_synth_shards(tmp_path_factory.mktemp("trust"), num_videos=16, size=32, split=(0.5, 0.25, 0.25))


@pytest.fixture(scope="module")
def real_checkpoint(shards: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`avssl pretrain` for 2 steps (smoke=true): a checkpoint every verb accepts."""
    run_dir = tmp_path_factory.mktemp("real") / "run"
    assert main(["pretrain", str(RECIPES / "synth" / "avc_small.yaml"), "smoke=true", f"data.shards={shards}",
                 f"run_dir={run_dir}", "trainer.enable_progress_bar=false"]) == 0
    return run_dir.with_name("run-smoke") / "checkpoints" / "last.ckpt"  # a smoke run's own folder


@pytest.fixture
def evil(real_checkpoint: Path, tmp_path: Path) -> tuple[Path, Path]:
    """(the real checkpoint plus a marker-creating object, the marker's path)."""
    marker = tmp_path / "MARKER"
    checkpoint = torch.load(real_checkpoint, map_location="cpu", weights_only=True)
    checkpoint["extra"] = CreatesMarker(marker)
    path = tmp_path / "evil.ckpt"
    torch.save(checkpoint, path)
    return path, marker


def _refused(argv: list[str], marker: Path, capsys: pytest.CaptureFixture[str], path: Path) -> str:
    """Runs the CLI; checks the marker is absent, the status non-zero and stderr one line."""
    status = main(argv)
    err = capsys.readouterr().err.strip()
    assert not marker.exists(), "the checkpoint's pickle ran"
    assert status == 1  # the file is the problem: a data error
    assert len(err.splitlines()) == 1, err
    assert str(path) in err
    return err


def test_the_real_checkpoint_loads_with_weights_only(real_checkpoint: Path, tmp_path: Path) -> None:
    assert main(["export", str(real_checkpoint), "--out", str(tmp_path / "export")]) == 0
    assert torch.load(real_checkpoint, weights_only=True)["global_step"] == 2


def test_export_refuses(evil: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path, marker = evil
    err = _refused(["export", str(path), "--out", str(tmp_path / "out")], marker, capsys, path)
    assert err.startswith(f"avssl export: {path}: refused: it holds objects that only pickle can rebuild, and "
                          "unpickling a file can run code in it (Unsupported global: GLOBAL io.open was not an "
                          "allowed global by default.); avssl loads checkpoints with weights_only=True only")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("verb,recipe,key", [
    ("probe", "synth_probe.yaml", "probe.encoders"),
    ("finetune", "synth_finetune.yaml", "finetune.encoders"),
    ("localize", "synth_localization.yaml", "localization.checkpoint"),
    ("separate", "synth_separation.yaml", "separation.encoders"),
    ("cluster", "synth_cluster.yaml", "cluster.encoders"),
    ("retrieve", "synth_retrieval.yaml", "retrieval.checkpoint"),
])
def test_evaluation_verbs_refuse(verb: str, recipe: str, key: str, evil: tuple[Path, Path], shards: Path,
                                 tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path, marker = evil
    err = _refused([verb, str(RECIPES / "eval" / recipe), f"{key}={path}", f"data.shards={shards}",
                    f"run_dir={tmp_path / 'eval'}"], marker, capsys, path)
    assert "refused: it holds objects that only pickle can rebuild" in err


def test_pretrain_resume_path_refuses(evil: tuple[Path, Path], shards: Path, tmp_path: Path,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    path, marker = evil
    run_dir = tmp_path / "run"
    err = _refused(["pretrain", str(RECIPES / "synth" / "avc_small.yaml"), "smoke=true", f"data.shards={shards}",
                    f"run_dir={run_dir}", f"resume={path}"], marker, capsys, path)
    assert err.startswith(f"avssl pretrain: {path}: refused:")
    assert not run_dir.exists(), "refused before anything was written"


def test_pretrain_resume_auto_refuses(evil: tuple[Path, Path], shards: Path, tmp_path: Path,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    path, marker = evil
    run_dir = tmp_path / "run-smoke"  # a smoke run's own folder
    (run_dir / "checkpoints").mkdir(parents=True)
    dropped = run_dir / "checkpoints" / "last.ckpt"
    shutil.copy(path, dropped)
    err = _refused(["pretrain", str(RECIPES / "synth" / "avc_small.yaml"), "smoke=true", f"data.shards={shards}",
                    f"run_dir={run_dir}", "resume=auto"], marker, capsys, dropped)
    assert err.startswith(f"avssl pretrain: resume=auto: no checkpoint of {run_dir} loads, nothing was started or "
                          f"changed ({dropped}: refused:")
    assert sorted(p.name for p in run_dir.rglob("*")) == ["checkpoints", "last.ckpt"]


def test_a_text_file_named_ckpt(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "notes.ckpt"
    path.write_text("not a checkpoint\n")
    assert main(["export", str(path), "--out", str(tmp_path / "out")]) == 1
    assert capsys.readouterr().err == (f"avssl export: {path} is not a PyTorch checkpoint (no torch.save zip archive "
                                       "in it: another kind of file, or one cut short)\n")


def test_lightning_reads_through_the_same_loader(evil: tuple[Path, Path], real_checkpoint: Path) -> None:
    # what Lightning calls to restore a run (resume, or an hpc_ckpt it finds by itself),
    # whatever weights_only it passes
    from avssl.export import CheckpointError
    from avssl.pretrain import AtomicCheckpointIO

    path, marker = evil
    with pytest.raises(CheckpointError, match="refused: it holds objects that only pickle can rebuild"):
        AtomicCheckpointIO().load_checkpoint(path, weights_only=False)
    assert not marker.exists()
    assert AtomicCheckpointIO().load_checkpoint(real_checkpoint, weights_only=False)["global_step"] == 2
