"""The whole pipeline on a tiny synthetic set: synth → shards → pretrain → export → probe."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import avssl
from avssl.cli import main
from tests.conftest import make_synth_shards

RECIPES = Path(__file__).resolve().parent.parent / "recipes"


@pytest.fixture(scope="module")
def tiny_shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_synth_shards(tmp_path_factory.mktemp("e2e"), num_videos=40, size=48, split=(0.6, 0.2, 0.2))


@pytest.mark.slow
def test_pretrain_export_probe(tiny_shards: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run_dir = tmp_path / "avc"
    common = [f"data.shards={tiny_shards}", "data.num_workers=0", "data.batch_size=8",
              "data.video.size=48", "model.video_encoder.widths=[8,8,16,16]", "model.audio_encoder.widths=[8,8,16,16]"]
    assert main(["pretrain", str(RECIPES / "synth" / "avc_small.yaml"), *common, f"run_dir={run_dir}",
                 "trainer.max_epochs=1", "trainer.check_val_every_n_epoch=1", "logger.wandb=true",
                 "trainer.log_every_n_steps=1"]) == 0
    # the resolved recipe, the CSV log, an offline wandb run, a checkpoint and the export
    saved = (run_dir / "config.yaml").read_text()
    assert "negatives: in_batch" in saved and str(tiny_shards) in saved
    metrics = (run_dir / "csv" / "metrics.csv").read_text()
    assert "train/loss" in metrics and "val/accuracy" in metrics
    for metric in ("online/video_linear_top1", "online/audio_linear_top1", "online/video_knn_top1",
                   "online/audio_knn_top1", "online/video_linear_train_top1"):
        assert metric in metrics, f"{metric} not logged"
    assert list((run_dir / "wandb").glob("offline-run-*")), "wandb runs offline by default"
    run_id = (run_dir / "wandb_run_id").read_text()
    assert list((run_dir / "wandb").glob(f"offline-run-*-{run_id}")), "the run id a resumed run continues"
    for column in ("perf/step_time", "perf/data_time", "perf/clips_per_s", "perf/skipped_samples"):
        assert column in metrics, column
    assert "lr-Adam" in metrics
    assert (run_dir / "checkpoints" / "last.ckpt").exists()
    export = run_dir / "export"
    spec = json.loads((export / "model.json").read_text())
    assert spec["video_encoder"]["name"] == "small3d" and spec["inputs"]["video"]["size"] == 48

    loaded = avssl.load_pretrained(export)
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    # the monitors' own state: probe weights + optimiser, kNN queues
    state = {key.split("{")[0]: value for key, value in ckpt["callbacks"].items()}
    classes = len(json.loads((tiny_shards / "manifest.json").read_text())["classes"])
    assert state["OnlineLinearProbe"]["classifiers"]["video.weight"].shape == (classes, 16)
    assert state["OnlineLinearProbe"]["optimizer"]["state"], "the probe's Adam state is saved"
    assert state["OnlineKNN"]["audio"]["features"].shape == (4096, 16)
    prefix = "video_encoder."
    for key, value in loaded.video_encoder.state_dict().items():
        torch.testing.assert_close(value, ckpt["state_dict"][prefix + key])

    probe_dir = tmp_path / "probe"
    assert main(["probe", str(RECIPES / "eval" / "synth_probe.yaml"), *common, f"run_dir={probe_dir}",
                 f"probe.encoders={export}", f"probe.cache_dir={tmp_path / 'cache'}", "probe.weight_decays=[1e-3]",
                 "probe.max_iter=20"]) == 0
    result = json.loads((probe_dir / "metrics.json").read_text())
    for modality in ("video", "audio", "both"):
        assert 0.0 <= result[modality]["test_clip_top1"] <= 100.0
        assert result[modality]["weight_decay"] == 1e-3
    videos = {k: v["num_samples"] for k, v in json.loads((tiny_shards / "manifest.json").read_text())["splits"].items()}
    # one clip per training video, three per evaluation video
    assert result["num_clips"] == {"train": videos["train"], "val": 3 * videos["val"], "test": 3 * videos["test"]}
    assert len(list((tmp_path / "cache").glob("*.npz"))) == 3, "features cached per split"
    assert 0.0 <= result["video"]["knn_clip_top1"] <= 100.0

    # the fold protocol: one probe per fold's shards, test metrics averaged (two identical folds here)
    folds_dir = tmp_path / "folds"
    assert main(["probe", str(RECIPES / "eval" / "synth_probe.yaml"), *common, f"run_dir={folds_dir}",
                 f"probe.encoders={export}", f"probe.cache_dir={tmp_path / 'cache'}", "probe.weight_decays=[1e-3]",
                 "probe.max_iter=20", f"probe.fold_shards=[{tiny_shards},{tiny_shards}]"]) == 0
    folds = json.loads((folds_dir / "metrics.json").read_text())
    assert len(folds["folds"]) == 2 and folds["video"]["test_video_top1"] == result["video"]["test_video_top1"]

    # k-means on the same frozen features
    assert main(["cluster", str(RECIPES / "eval" / "synth_cluster.yaml"), *common, f"run_dir={tmp_path / 'cluster'}",
                 f"cluster.encoders={export}", f"cluster.cache_dir={tmp_path / 'cache'}"]) == 0
    clusters = json.loads((tmp_path / "cluster" / "metrics.json").read_text())
    assert clusters["num_samples"] == videos["test"] and clusters["num_clusters"] == classes
    for modality in ("video", "audio", "both"):
        assert 0.0 <= clusters[modality]["nmi"] <= 1.0 and 0.0 < clusters[modality]["purity"] <= 1.0
    assert "linear probe of" in capsys.readouterr().out


@pytest.mark.slow
@pytest.mark.parametrize("method, recipe, metrics", [
    ("avts", "avts_small.yaml", ["val/sync_accuracy", "test/sync_accuracy", "train/accuracy_hard",
                                 "online/audio_knn_top1"]),
    ("avid_cma", "avid_cma_small.yaml", ["val/retrieval_top1", "train/xid", "train/cma", "online/video_knn_top1"]),
    ("selavi", "selavi_small.yaml", ["val/nmi_best_head", "test/nmi_head0", "train/video_head_accuracy",
                                     "online/audio_linear_top1"]),
    ("xdc", "xdc_small.yaml", ["val/nmi_video_head", "train/xdc_nmi", "train/xdc_nmi_audio",
                               "train/video_head_audio_accuracy", "online/video_knn_top1"]),
])
def test_other_pretext_tasks_train_and_export(tiny_shards: Path, tmp_path: Path, method: str, recipe: str,
                                              metrics: list[str]) -> None:
    """Two epochs through `avssl pretrain` with each phase switched on in the second."""
    run_dir = tmp_path / method
    per_method = {
        "avts": ["task.hard_start_epoch=1"],
        "avid_cma": ["task.cma_start_epoch=1", "task.cma_positives=3", "task.cma_negatives=4"],
        "selavi": ["task.num_labelings=3", "task.contrastive_warmup_epochs=1"],
        "xdc": ["task.num_clusters=3", "task.contrastive_warmup_epochs=1"],
    }[method]
    assert main(["pretrain", str(RECIPES / "synth" / recipe), f"data.shards={tiny_shards}", "data.num_workers=0",
                 "data.batch_size=8", "data.video.size=48", "model.video_encoder.widths=[8,8,16,16]",
                 "model.audio_encoder.widths=[8,8,16,16]", f"run_dir={run_dir}", "trainer.max_epochs=2",
                 "data.audio.seconds=0.5", "trainer.check_val_every_n_epoch=1", *per_method]) == 0
    logged = (run_dir / "csv" / "metrics.csv").read_text().splitlines()[0].split(",")
    for metric in metrics:
        assert any(name in (metric, f"{metric}_epoch") for name in logged), f"{metric} not logged by {method}"
    assert (run_dir / "export" / "model.json").exists()
    avssl.load_pretrained(run_dir / "export")
