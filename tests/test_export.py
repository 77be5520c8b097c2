"""Checkpoint → safetensors + model.json → load_pretrained, and the errors on the way."""
from __future__ import annotations

import copy
import json
import os
import stat
import struct
import warnings
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
import torchvision
import yaml
from omegaconf import OmegaConf
from safetensors.torch import load_file
from torch import nn

import avssl
from avssl.data.transforms import VIDEO_MEAN, VIDEO_STD
from avssl.data.views import MelSettings, VideoView
from avssl.export import CheckpointError, ExportError, export_checkpoint, load_pretrained
from avssl.models import MLP, build_encoders

RECIPE = {
    "seed": 0,
    "run_dir": "runs/test",
    "data": {
        "shards": "data/shards",
        "video": {"num_frames": 4, "fps": 8.0, "size": 32},
        "audio": {"seconds": 0.5, "offset": "aligned", "representation": "logmel"},
        "mel": {"sample_rate": 8000, "n_mels": 32, "window_seconds": 0.025, "hop_seconds": 0.01, "n_fft": 256},
    },
    "model": {
        "video_encoder": {"name": "small3d", "widths": [4, 8]},
        "audio_encoder": {"name": "small2d", "widths": [4, 8]},
    },
    "task": {"name": "toy", "lr": 0.1},
    "trainer": {"max_steps": 1},
    "logger": {"csv": False, "wandb": False},
    "export": {"after_training": True},
}


class ToyTask(pl.LightningModule):
    """The conventions of avssl's pretext tasks, in miniature: encoders named
    ``video_encoder`` / ``audio_encoder`` built from the recipe, the recipe saved as
    ``hyper_parameters["config"]``, and a head that is not exported."""

    def __init__(self, config: dict) -> None:
        super().__init__()
        self.save_hyperparameters({"config": config})
        self.video_encoder, self.audio_encoder = build_encoders(config["model"])
        self.video_head = MLP([self.video_encoder.embedding_dim, 8])
        self.audio_head = MLP([self.audio_encoder.embedding_dim, 8])

    def training_step(self, batch, batch_idx):
        video, audio = batch
        v = self.video_head(self.video_encoder(video))
        a = self.audio_head(self.audio_encoder(audio))
        return (v - a).square().mean()

    def configure_optimizers(self):
        return torch.optim.SGD([p for p in self.parameters() if p.requires_grad], lr=0.1)


def _inputs(batch: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(7)
    return torch.randn(batch, 3, 4, 32, 32, generator=g), torch.randn(batch, 1, 32, 51, generator=g)


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[ToyTask, Path]:
    """A real Lightning checkpoint after one optimiser step (BN statistics moved)."""
    root = tmp_path_factory.mktemp("lightning")
    torch.manual_seed(0)
    task = ToyTask(copy.deepcopy(RECIPE))
    data = torch.utils.data.TensorDataset(*_inputs(4))
    trainer = pl.Trainer(max_steps=1, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, default_root_dir=root)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Lightning's advice about dataloader workers
        trainer.fit(task, torch.utils.data.DataLoader(data, batch_size=2))
    path = root / "last.ckpt"
    trainer.save_checkpoint(path)
    return task, path


@pytest.fixture(scope="module")
def exported(trained, tmp_path_factory) -> Path:
    _, ckpt = trained
    out = tmp_path_factory.mktemp("export") / "encoders"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a real avssl checkpoint needs no pickle fallback
        assert export_checkpoint(ckpt, out) == out
    return out


def _fake_checkpoint(path: Path, recipe: dict, **encoders: nn.Module) -> Path:
    """A checkpoint dict shaped like Lightning's, saved with torch.save."""
    state_dict = {f"{key}.{k}": v for key, enc in encoders.items() for k, v in enc.state_dict().items()}
    state_dict["video_head.layers.0.weight"] = torch.zeros(2, 2)  # not an encoder: not exported
    torch.save({"epoch": 0, "global_step": 5, "state_dict": state_dict,
                "hyper_parameters": {"config": recipe}}, path)
    return path


def _recipe_with(**model) -> dict:
    recipe = copy.deepcopy(RECIPE)
    recipe["model"] = model
    return recipe


def _is_safetensors(path: Path) -> bool:
    raw = path.read_bytes()
    (header_len,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + header_len])
    return isinstance(header, dict) and 8 + header_len <= len(raw)


# -- the export folder ----------------------------------------------------------------------------
def test_lightning_checkpoint_loads_without_pickle(trained):
    _, ckpt = trained
    loaded = torch.load(ckpt, map_location="cpu", weights_only=True)
    assert loaded["hyper_parameters"]["config"] == RECIPE


def test_export_writes_safetensors_model_json_and_card_only(exported):
    names = sorted(p.name for p in exported.iterdir())
    assert names == ["README.md", "audio_encoder.safetensors", "model.json", "video_encoder.safetensors"]
    for name in ("audio_encoder.safetensors", "video_encoder.safetensors"):
        path = exported / name
        assert path.read_bytes()[:2] not in (b"\x80\x02", b"\x80\x04", b"PK")  # not a pickle, not torch's zip
        assert _is_safetensors(path)
        with pytest.raises(Exception):
            torch.load(path, weights_only=True)


def test_model_json(exported, trained):
    task, ckpt = trained
    spec = json.loads((exported / "model.json").read_text())
    assert spec["format_version"] == 1
    assert spec["recipe"] == RECIPE
    assert spec["source_checkpoint"] == str(ckpt.resolve())
    video, audio = spec["video_encoder"], spec["audio_encoder"]
    assert video["name"] == "small3d" and video["kwargs"] == {"widths": [4, 8]}
    assert audio["name"] == "small2d" and audio["kwargs"] == {"widths": [4, 8]}
    assert video["embedding_dim"] == 8 and audio["embedding_dim"] == 8
    assert video["file"] == "video_encoder.safetensors" and audio["file"] == "audio_encoder.safetensors"
    assert video["torchvision_arch"] is False and video["weights_convention"] == "avssl"

    vin, ain = spec["inputs"]["video"], spec["inputs"]["audio"]
    assert (vin["num_frames"], vin["fps"], vin["size"]) == (4, 8.0, 32)
    assert vin["mean"] == list(VIDEO_MEAN) and vin["std"] == list(VIDEO_STD)
    assert vin["layout"] == "B×3×T×H×W"
    assert ain["seconds"] == 0.5 and ain["sample_rate"] == 8000 and ain["layout"] == "B×1×F×T"
    # mel settings: the recipe's values, defaults for what it leaves out (log_offset)
    assert ain["mel"] == {**RECIPE["data"]["mel"], "log_offset": MelSettings().log_offset}
    assert ain["num_mel_frames"] == MelSettings(**ain["mel"]).num_frames(0.5) == 51

    # the safetensors hold exactly the encoders' state dicts (with the trained BN statistics)
    tensors = load_file(str(exported / "video_encoder.safetensors"))
    reference = task.video_encoder.state_dict()
    assert tensors.keys() == reference.keys()
    assert all(torch.equal(tensors[k], reference[k]) for k in tensors)
    assert not torch.equal(tensors["blocks.0.1.running_mean"], torch.zeros(4))


def test_load_pretrained_reproduces_the_trained_encoders(exported, trained):
    task, _ = trained
    pretrained = avssl.load_pretrained(exported)
    assert avssl.load_pretrained is load_pretrained
    assert not pretrained.video_encoder.training and not pretrained.audio_encoder.training
    assert pretrained.spec["video_encoder"]["name"] == "small3d"
    assert pretrained.video_view == VideoView(num_frames=4, fps=8.0, size=32)
    assert pretrained.mel.n_mels == 32 and pretrained.audio_view.seconds == 0.5
    video, audio = _inputs()
    task.eval()
    with torch.no_grad():
        torch.testing.assert_close(pretrained.video_encoder(video), task.video_encoder(video), rtol=0, atol=0)
        torch.testing.assert_close(pretrained.audio_encoder(audio), task.audio_encoder(audio), rtol=0, atol=0)
        fresh = build_encoders(RECIPE["model"]).video_encoder.eval()
        assert not torch.allclose(fresh(video), task.video_encoder(video))  # the weights did matter


# -- torchvision architectures ---------------------------------------------------------------------
@pytest.mark.parametrize("arch", ["r2plus1d_18", "r3d_18"])
def test_torchvision_video_file_loads_into_torchvision(arch, tmp_path):
    torch.manual_seed(0)
    recipe = _recipe_with(video_encoder={"name": arch, "pooling": "avg"}, audio_encoder={"name": "resnet18"})
    video_encoder, audio_encoder = build_encoders(recipe["model"])
    with torch.no_grad():  # make BN statistics non-default so that buffers are checked too
        for m in video_encoder.modules():
            if isinstance(m, nn.BatchNorm3d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    ckpt = _fake_checkpoint(tmp_path / "fake.ckpt", recipe, video_encoder=video_encoder, audio_encoder=audio_encoder)
    out = export_checkpoint(ckpt, tmp_path / "export")

    spec = json.loads((out / "model.json").read_text())
    entry = spec["video_encoder"]
    assert entry["torchvision_arch"] is True and entry["weights_convention"] == "torchvision"
    assert entry["torchvision_class"] == f"torchvision.models.video.{arch}"
    assert spec["global_step"] == 5

    tensors = load_file(str(out / "video_encoder.safetensors"))
    assert not any(k.startswith("backbone.") for k in tensors)
    reference = getattr(torchvision.models.video, arch)()
    reference.load_state_dict(tensors, strict=True)
    reference.fc = nn.Identity()  # torchvision's own avg pool → the 512-d embedding

    audio_tensors = load_file(str(out / "audio_encoder.safetensors"))
    audio_reference = torchvision.models.resnet18()
    audio_reference.conv1 = nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3, bias=False)
    audio_reference.load_state_dict(audio_tensors, strict=True)

    pretrained = load_pretrained(out)
    video = torch.randn(1, 3, 2, 32, 32)
    with torch.no_grad():
        expected = video_encoder.eval()(video)
        torch.testing.assert_close(reference.eval()(video), expected)
        torch.testing.assert_close(pretrained.video_encoder(video), expected, rtol=0, atol=0)
    assert not pretrained.video_encoder.backbone.fc.weight.requires_grad


def test_avid_conv2d_export_round_trip(tmp_path):
    torch.manual_seed(0)
    recipe = _recipe_with(video_encoder=None, audio_encoder={"name": "avid_conv2d"})
    _, audio_encoder = build_encoders(recipe["model"])
    ckpt = _fake_checkpoint(tmp_path / "a.ckpt", recipe, audio_encoder=audio_encoder)
    out = export_checkpoint(ckpt, tmp_path / "export")
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "audio_encoder.safetensors", "model.json"]
    pretrained = load_pretrained(out)
    assert pretrained.video_encoder is None and pretrained.spec["inputs"]["video"] is None
    assert pretrained.spec["audio_encoder"]["pooling"] == "max"
    audio = torch.randn(2, 1, 32, 51)
    with torch.no_grad():
        torch.testing.assert_close(pretrained.audio_encoder(audio), audio_encoder.eval()(audio), rtol=0, atol=0)


# -- errors --------------------------------------------------------------------------------------
def test_missing_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match=r"nope.ckpt: no such checkpoint$"):
        export_checkpoint(tmp_path / "nope.ckpt", tmp_path / "out")


def test_checkpoint_without_config(tmp_path):
    video_encoder = build_encoders(RECIPE["model"]).video_encoder
    path = tmp_path / "x.ckpt"
    torch.save({"state_dict": {f"video_encoder.{k}": v for k, v in video_encoder.state_dict().items()},
                "hyper_parameters": {"lr": 0.1}}, path)
    with pytest.raises(ExportError, match=r"hyper_parameters\['config'\]"):
        export_checkpoint(path, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_architecture_not_in_registry(tmp_path):
    video_encoder = build_encoders(RECIPE["model"]).video_encoder
    recipe = _recipe_with(video_encoder={"name": "slowfast_r50"}, audio_encoder=None)
    ckpt = _fake_checkpoint(tmp_path / "x.ckpt", recipe, video_encoder=video_encoder)
    with pytest.raises(ExportError, match=r"slowfast_r50.*small3d"):
        export_checkpoint(ckpt, tmp_path / "out")


def test_weights_that_do_not_match_the_config(tmp_path):
    video_encoder = build_encoders(RECIPE["model"]).video_encoder  # widths [4, 8]
    recipe = _recipe_with(video_encoder={"name": "small3d", "widths": [4, 16]}, audio_encoder=None)
    ckpt = _fake_checkpoint(tmp_path / "x.ckpt", recipe, video_encoder=video_encoder)
    with pytest.raises(ExportError, match="do not match"):
        export_checkpoint(ckpt, tmp_path / "out")
    recipe = _recipe_with(video_encoder=RECIPE["model"]["video_encoder"],
                          audio_encoder=RECIPE["model"]["audio_encoder"])
    ckpt = _fake_checkpoint(tmp_path / "y.ckpt", recipe, video_encoder=video_encoder)  # no audio weights
    with pytest.raises(ExportError, match="audio_encoder"):
        export_checkpoint(ckpt, tmp_path / "out")


def test_checkpoint_that_needs_pickle_is_refused(tmp_path):
    encoders = build_encoders(RECIPE["model"])
    recipe = OmegaConf.create(RECIPE)  # a DictConfig instead of a plain dict: not weights_only-loadable
    path = tmp_path / "omegaconf.ckpt"
    _fake_checkpoint(path, recipe, video_encoder=encoders.video_encoder, audio_encoder=encoders.audio_encoder)
    with pytest.raises(CheckpointError) as refused:
        export_checkpoint(path, tmp_path / "refused")
    message = str(refused.value)
    assert message.startswith(f"{path}: refused: it holds objects that only pickle can rebuild")
    assert "Unsupported global: GLOBAL omegaconf.dictconfig.DictConfig" in message and "\n" not in message
    assert not (tmp_path / "refused").exists()


def test_load_pretrained_errors(exported, tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_pretrained(tmp_path / "missing")
    with pytest.raises(FileNotFoundError, match="model.json"):
        load_pretrained(tmp_path)

    broken = tmp_path / "no_weights"
    broken.mkdir()
    (broken / "model.json").write_text((exported / "model.json").read_text())
    with pytest.raises(FileNotFoundError, match="video_encoder.safetensors"):
        load_pretrained(broken)

    unknown = tmp_path / "unknown"
    unknown.mkdir()
    spec = json.loads((exported / "model.json").read_text())
    spec["video_encoder"]["name"] = "vivit"
    (unknown / "model.json").write_text(json.dumps(spec))
    with pytest.raises(ExportError, match=r"vivit.*small3d"):
        load_pretrained(unknown)

    spec["video_encoder"]["name"] = "small3d"
    spec["format_version"] = 2
    (unknown / "model.json").write_text(json.dumps(spec))
    with pytest.raises(ExportError, match="format_version"):
        load_pretrained(unknown)


# -- the folder as a whole: modes, atomic replacement, progress, model card ----------------------------
def _tiny_export_checkpoint(path: Path, **recipe_changes) -> Path:
    recipe = {**copy.deepcopy(RECIPE), **recipe_changes}
    encoders = build_encoders(recipe["model"])
    path.parent.mkdir(parents=True, exist_ok=True)
    return _fake_checkpoint(path, recipe, video_encoder=encoders.video_encoder, audio_encoder=encoders.audio_encoder)


def test_exported_files_are_readable_by_others(tmp_path):
    ckpt = _tiny_export_checkpoint(tmp_path / "x.ckpt")
    previous = os.umask(0o022)
    try:
        out = export_checkpoint(ckpt, tmp_path / "export")
    finally:
        os.umask(previous)
    assert stat.S_IMODE(out.stat().st_mode) == 0o755
    assert {p.name: oct(stat.S_IMODE(p.stat().st_mode)) for p in out.iterdir()} == {
        name: "0o644" for name in ("README.md", "audio_encoder.safetensors", "model.json", "video_encoder.safetensors")}


def test_export_logs_its_progress(tmp_path, caplog):
    ckpt = _tiny_export_checkpoint(tmp_path / "x.ckpt")
    with caplog.at_level("INFO", logger="avssl"):
        export_checkpoint(ckpt, tmp_path / "export")
    assert caplog.messages == [f"reading checkpoint {ckpt}", "writing video_encoder.safetensors (small3d, 12 tensors)",
                               "writing audio_encoder.safetensors (small2d, 12 tensors)", "writing model.json",
                               "writing README.md (model card)",
                               "model card: no readable manifest at data/shards; the data size is left out",
                               f"exported {tmp_path / 'export'}"]


def test_an_earlier_export_is_replaced_only_by_a_complete_one(tmp_path, monkeypatch):
    out = export_checkpoint(_tiny_export_checkpoint(tmp_path / "a.ckpt"), tmp_path / "export")
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def dies(*args, **kwargs):  # a failure after the weights were written
        raise KeyboardInterrupt

    monkeypatch.setattr("avssl.export.model_card", dies)
    with pytest.raises(KeyboardInterrupt):
        export_checkpoint(_tiny_export_checkpoint(tmp_path / "b.ckpt"), out)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.ckpt", "b.ckpt", "export"], "no temporary folder left"
    monkeypatch.undo()
    recipe_b = json.loads((export_checkpoint(tmp_path / "b.ckpt", out) / "model.json").read_text())
    assert recipe_b["source_checkpoint"] == str((tmp_path / "b.ckpt").resolve())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.ckpt", "b.ckpt", "export"]


def test_a_folder_with_other_files_is_not_replaced(tmp_path):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "notes.txt").write_text("keep me")
    with pytest.raises(ExportError, match=r"^--out .*mine holds files an export does not write \(notes.txt\); give a "
                                          r"new folder or an earlier export folder$"):
        export_checkpoint(_tiny_export_checkpoint(tmp_path / "a.ckpt"), folder)
    assert [p.name for p in folder.iterdir()] == ["notes.txt"]


def _front_matter(card: str) -> dict:
    assert card.startswith("---\n")
    return yaml.safe_load(card.split("---\n")[1])


def test_model_card(tmp_path):
    shards = tmp_path / "vggsound" / "shards"
    shards.mkdir(parents=True)
    (shards / "manifest.json").write_text(json.dumps({"classes": ["a", "b", "c"], "splits": {
        "train": {"num_samples": 1234, "hours": 3.4}, "val": {"num_samples": 10}}}))
    data = {**RECIPE["data"], "shards": str(shards)}
    ckpt = _tiny_export_checkpoint(tmp_path / "run" / "checkpoints" / "last.ckpt", data=data,
                                   task={"name": "avc", "lr": 0.1})
    (tmp_path / "run" / "csv").mkdir()
    (tmp_path / "run" / "csv" / "metrics.csv").write_text(
        "epoch,lr-Adam,online/video_knn_top1,perf/step_time,step,train/loss,val/accuracy\n"
        "0,0.1,,0.5,3,0.9,\n0,,41.5,,4,,0.75\n0,,,,5,0.7,\n0,,99.0,,6,0.1,\n")  # step 6: after the checkpoint
    probe = tmp_path / "probe_metrics.json"
    probe.write_text(json.dumps({"video": {"test_clip_top1": 61.25, "weight_decay": 1e-4}, "num_clips": 30}))
    out = export_checkpoint(ckpt, tmp_path / "export", license="cc-by-4.0", evaluations=[probe])
    card = (out / "README.md").read_text()
    assert _front_matter(card) == {"library_name": "avssl", "license": "cc-by-4.0",
                                   "tags": ["avssl", "self-supervised-learning", "audio-visual", "video", "audio",
                                            "avc"],
                                   "datasets": ["vggsound"], "pipeline_tag": "feature-extraction"}
    assert "# Audio-Visual Correspondence (AVC): small3d + small2d\n" in card
    assert '- method: Audio-Visual Correspondence (AVC) (paper: "Look, Listen and Learn")' in card
    assert "| video | `small3d` {\"widths\": [4, 8]} | 8 | avg | " in card
    assert f"- data: vggsound (`{shards}`), 1,234 clips, 3.4 hours, 3 classes in the training split" in card
    assert "- training steps: 5 (epoch 0)" in card
    assert "- video: 4 frames at 8.0 fps, 32×32 px, layout B×3×T×H×W" in card
    assert "- audio: 0.5 s mono at 8000 Hz → logmel 32×51 (window 0.025 s, hop 0.01 s, n_fft 256)" in card
    # the last value up to step 5 of each figure; no learning rate, no speed
    assert "| online/video_knn_top1 | 41.5 |\n| train/loss | 0.7 |\n| val/accuracy | 0.75 |\n" in card
    assert "lr-Adam" not in card and "perf/" not in card
    assert f"Evaluation `{probe}`:" in card
    assert "| video.test_clip_top1 | 61.25 |\n| video.weight_decay | 0.0001 |\n| num_clips | 30 |" in card
    assert "## Licence\n\n`cc-by-4.0`\n" in card
    for section in ("## Model", "## Training", "## Inputs", "## Results", "## Usage", "## Licence"):
        assert f"\n{section}\n" in card
    assert load_pretrained(out).spec["global_step"] == 5, "load_pretrained reads the same folder"


def test_a_smoke_export_says_so(tmp_path, caplog):
    ckpt = _tiny_export_checkpoint(tmp_path / "x.ckpt", smoke=True)
    out = export_checkpoint(ckpt, tmp_path / "export")
    spec = json.loads((out / "model.json").read_text())
    assert spec["smoke"] is True and spec["inputs"]["video"]["size"] == 32, "the input the weights were trained on"
    card = (out / "README.md").read_text()
    assert "> **Smoke export.** Trained with `smoke=true`: 2 steps at a shrunken input" in card
    assert _front_matter(card)["license"] == "unknown"
    with caplog.at_level("WARNING", logger="avssl.export"):
        load_pretrained(out)
    assert caplog.messages[-1] == f"{out} is a smoke export (2 training steps at a shrunken input), not a trained model"
    assert json.loads((export_checkpoint(_tiny_export_checkpoint(tmp_path / "y.ckpt"), tmp_path / "e2")
                       / "model.json").read_text())["smoke"] is False


def test_the_documented_torchvision_loading_gives_the_same_embeddings(tmp_path):
    """docs/models.md's snippet, run as written against an export of a max-pooled
    R(2+1)D-18 (AVC's and AVID+CMA's video encoder)."""
    torch.manual_seed(0)
    recipe = _recipe_with(video_encoder={"name": "r2plus1d_18", "pooling": "max"}, audio_encoder=None)
    encoder = build_encoders(recipe["model"]).video_encoder
    out = export_checkpoint(_fake_checkpoint(tmp_path / "x.ckpt", recipe, video_encoder=encoder), tmp_path / "export")
    docs = (Path(__file__).resolve().parent.parent / "docs" / "models.md").read_text()
    snippet = next(block for block in docs.split("```python\n")[1:] if "AdaptiveMaxPool3d" in block).split("```")[0]
    namespace: dict = {}
    exec(snippet.replace("runs/avc/export", str(out)), namespace)
    model = namespace["model"].eval()
    clip = torch.randn(2, 3, 4, 32, 32)
    with torch.no_grad():
        expected = load_pretrained(out).video_encoder(clip)
        torch.testing.assert_close(model(clip), expected)
        stock = torchvision.models.video.r2plus1d_18()
        stock.load_state_dict(load_file(str(out / "video_encoder.safetensors")))
        stock.fc = nn.Identity()
        assert (stock.eval()(clip) - expected).abs().max() > 0.05, "torchvision's own average pool differs"


def test_model_card_keeps_a_shards_url_as_it_was_given():
    from avssl.model_card import _training_data

    data = _training_data({"data": {"shards": "http://127.0.0.1:9/corpus/shards/"}})  # port 9: nothing listens
    assert data == {"shards": "http://127.0.0.1:9/corpus/shards/", "name": "corpus"}
