"""The evaluation figures: what each one shows is the metric's own number, every verb writes
its PNGs atomically, titles stay inside the image."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from avssl.cli import main
from avssl.evaluation import figures
from avssl.evaluation.spectral import _warp_grid
from avssl.metrics.localization import ciou, ground_truth_map
from avssl.metrics.separation import separation_metrics
from tests.conftest import make_synth_shards

RECIPES = Path(__file__).resolve().parents[2] / "recipes"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
SMALL = ["data.num_workers=0", "data.batch_size=6", "data.video.size=32",
         "model.video_encoder.widths=[8,8,16]", "model.audio_encoder.widths=[8,8,16]"]


def _inside_figure(fig, artist) -> bool:
    """Whether a drawn artist's bounding box lies within the figure's canvas."""
    renderer = fig.canvas.get_renderer()
    box, canvas = artist.get_window_extent(renderer), fig.bbox
    return box.x0 >= canvas.x0 and box.x1 <= canvas.x1 and box.y0 >= canvas.y0 and box.y1 <= canvas.y1


def _is_png(path: Path, low: int = 5_000, high: int = 200_000) -> bool:
    data = path.read_bytes()
    return data[:8] == PNG_SIGNATURE and low < len(data) < high


# -- writing ------------------------------------------------------------------------------------
def test_save_figure_renames_a_finished_temporary_file_beside_the_target(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    renames = []
    real_replace = os.replace

    def recording_replace(source, target):
        assert Path(source).read_bytes()[:8] == PNG_SIGNATURE, "the temporary file is complete before the rename"
        assert not Path(target).exists()
        renames.append((Path(source), Path(target)))
        real_replace(source, target)

    monkeypatch.setattr(figures.os, "replace", recording_replace)
    fig = figures.new_figure(2, 2)
    fig.subplots().plot([0, 1], [1, 0])
    target = tmp_path / "out" / "plot.png"
    assert figures.save_figure(fig, target) == target
    assert len(renames) == 1 and renames[0][1] == target and renames[0][0].parent == target.parent
    assert target.read_bytes()[:8] == PNG_SIGNATURE and sorted(p.name for p in target.parent.iterdir()) == ["plot.png"]


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "plot.png"
    target.write_bytes(b"old")
    fig = figures.new_figure(2, 2)

    def broken_savefig(path, **kwargs):
        Path(path).write_bytes(b"half")
        raise OSError("disk full")

    monkeypatch.setattr(fig, "savefig", broken_savefig)
    with pytest.raises(OSError, match="disk full"):
        figures.save_figure(fig, target)
    assert target.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["plot.png"]


def test_fit_title_wraps_and_shortens_a_long_path() -> None:
    path = "runs/" + "/".join(f"level{i:02d}" for i in range(40)) + "/checkpoints/last.ckpt"
    title = figures.fit_title(f"{path}: cIoU@0.5 0.312 (whole image 0.000), rule gt_area", width_inches=4.0)
    chars = int(4.0 * 72 / (figures.TITLE_SIZE * figures.CHAR_WIDTH_EM))
    lines = title.split("\n")
    assert len(lines) <= 3 and all(len(line) <= chars for line in lines)
    assert lines[0].startswith("runs/level00") and "…" in lines[0] and lines[0].endswith("last.ckpt:")
    assert "rule gt_area" in title
    assert figures.fit_title("short title", 4.0) == "short title"


# -- localization -------------------------------------------------------------------------------
def _localization_inputs(count: int = 3) -> tuple[torch.Tensor, ...]:
    frames = torch.full((count, 3, 32, 32), 40, dtype=torch.uint8)
    heat = torch.zeros(count, 32, 32)
    heat[:, 8:16, 8:16] = 1.0
    boxes = torch.full((count, 2, 4), float("nan"))
    boxes[:, 0] = torch.tensor([8.0, 8.0, 16.0, 16.0])
    return frames, heat, boxes, heat > 0.5


def test_localization_figure_has_colour_scale_each_clips_ciou_and_a_title_inside() -> None:
    frames, heat, boxes, predicted = _localization_inputs()
    boxes[2, 1] = torch.tensor([20.0, 24.0, 40.0, 36.0])  # an object half out of the 32-pixel frame
    cious = [1.0, 0.25, 0.0]
    title = "/very/long/" + "/".join(["experiment_folder"] * 30) + "/last.ckpt: cIoU@0.5 0.333, rule gt_area"
    fig = figures.localization_figure(frames, heat, boxes, predicted, cious, title, "gt_area")
    fig.canvas.draw()
    heat_axes = [ax for ax in fig.axes if ax.get_title().startswith("cIoU")]
    assert [ax.get_title() for ax in heat_axes] == ["cIoU 1.00", "cIoU 0.25", "cIoU 0.00"]
    colorbars = [ax for ax in fig.axes if "score" in ax.get_ylabel()]
    assert len(colorbars) == 1 and colorbars[0].get_ylim() == (0.0, 1.0)
    frame_axes = [ax for ax in fig.axes if ax.get_images() and ax not in colorbars]
    assert len(frame_axes) == 6
    assert all(ax.get_xlim() == (-0.5, 31.5) and ax.get_ylim() == (31.5, -0.5) for ax in frame_axes), \
        "every panel shows exactly its frame, whatever the boxes"
    assert _inside_figure(fig, fig._suptitle), "the title is wrapped to the figure's width"
    assert "…" in fig._suptitle.get_text()


def test_shown_ciou_is_the_metric_of_the_shown_heatmap(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                        tiny_shards: Path) -> None:
    """`avssl localize`: the cIoU printed over each clip is ``ciou`` of that clip's heatmap
    and boxes under the recipe's rule; the outlined pixels are the rule's."""
    seen = {}
    real = figures.localization_figure

    def spy(frames, heatmaps, boxes, predicted, cious, title, rule):
        seen.update(heatmaps=heatmaps, boxes=boxes, predicted=predicted, cious=cious, rule=rule)
        return real(frames, heatmaps, boxes, predicted, cious, title, rule)

    monkeypatch.setattr(figures, "localization_figure", spy)
    run_dir = tmp_path / "loc"
    assert main(["localize", str(RECIPES / "eval" / "synth_localization.yaml"), f"data.shards={tiny_shards}", *SMALL,
                 f"run_dir={run_dir}", "localization.events=false", "localization.num_plot=4"]) == 0
    assert seen["rule"] == "gt_area" and len(seen["cious"]) == 4
    for heat, rows, predicted, shown in zip(seen["heatmaps"], seen["boxes"], seen["predicted"], seen["cious"]):
        gt = ground_truth_map(rows[~torch.isnan(rows).any(1)], *heat.shape)
        assert shown == pytest.approx(ciou(heat, gt, rule="gt_area"), abs=1e-12)
        assert int(predicted.sum()) == int(gt.gt(0).sum()), "gt_area marks as many pixels as the boxes cover"
    assert _is_png(run_dir / "localization.png")
    assert json.loads((run_dir / "metrics.json").read_text())["plot"] == str(run_dir / "localization.png")


# -- separation ---------------------------------------------------------------------------------
def test_warped_rows_read_the_frequencies_of_the_warp_grid() -> None:
    bins, sample_rate, n_fft = 64, 16000, 512
    grid_y = _warp_grid(bins, 1, inverse=False, device=torch.device("cpu"))[0, :, 0, 1].double().numpy()
    linear_bin = (grid_y + 1) / 2 * (n_fft // 2)  # align_corners=True: −1 is bin 0, 1 the last bin
    expected = linear_bin * sample_rate / n_fft
    frequencies = figures.warped_bin_frequencies(bins, sample_rate)
    np.testing.assert_allclose(frequencies, expected, rtol=1e-5, atol=1e-3)
    assert frequencies[0] == 0 and frequencies[-1] == pytest.approx(8000)


def test_separation_figure_axes_colour_bar_and_each_rows_sdr() -> None:
    rng = np.random.default_rng(0)
    scores = [{"sdr": 4.256, "sir": 9.0, "sar": 7.0, "sdr_mixture": -0.504}, "silent_reference"]
    spectrograms = np.abs(rng.normal(size=(2, 5, 64, 32))) + 1e-3
    fig = figures.separation_figure(spectrograms, scores, 16000, 256)
    fig.canvas.draw()
    panels = [ax for ax in fig.axes if ax.get_images() and ax.get_images()[0].get_array().shape == (64, 32)]
    assert len(panels) == 10
    labels = [t.get_text() for ax in panels for t in ax.texts]
    assert labels == ["SDR 4.26 dB\n(mixture itself -0.50 dB)", "not scored: silent reference"]
    assert [t.get_text() for t in panels[0].get_yticklabels()] == ["100", "250", "500", "1k", "2k", "4k", "8k"]
    assert panels[0].get_xlim() == (0.0, 32 * 256 / 16000)
    assert fig._supxlabel.get_text() == "time (s)" and "frequency (Hz" in fig._supylabel.get_text()
    colorbar = [ax for ax in fig.axes if "dB" in ax.get_ylabel()]
    assert len(colorbar) == 1 and colorbar[0].get_ylim() == (-figures.DB_RANGE, 0.0)


def test_plot_separation_shows_the_scores_of_its_own_mixtures(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from avssl.evaluation.separation import Separated, SeparationConfig, SeparationModel, plot_separation
    from avssl.models.video import small3d

    rng = np.random.default_rng(1)
    references = rng.normal(size=(3, 2, 2000))
    estimates = references + 0.5 * rng.normal(size=references.shape)
    separated = Separated(estimates, references, references.sum(1), np.zeros((3, 2, 64, 16)))
    model = SeparationModel(small3d(widths=(8, 16)), SeparationConfig(log_bins=64), frame_size=32)
    seen = {}
    real = figures.separation_figure
    monkeypatch.setattr(figures, "separation_figure",
                        lambda spectra, scores, rate, hop: seen.update(spectra=spectra, scores=scores, rate=rate)
                        or real(spectra, scores, rate, hop))
    plot_separation(separated, model, tmp_path / "separation.png", count=1, sample_rate=8000)
    assert seen["rate"] == 8000 and seen["spectra"].shape[:3] == (1, 5, 64)
    expected = separation_metrics(estimates[0], references[0], references[0].sum(0))
    assert len(seen["scores"]) == 1 and seen["scores"][0] == pytest.approx(expected)
    assert _is_png(tmp_path / "separation.png")


# -- classification and clustering --------------------------------------------------------------
def test_confusion_figure_draws_sklearns_counts_with_class_names() -> None:
    truth = np.array([0, 0, 1, 1, 1, 2])
    predicted = np.array([0, 1, 1, 1, 0, 0])
    fig = figures.confusion_figure({"video": truth}, {"video": predicted}, ["dog", "cat"], 3, "probe")
    ax = fig.axes[0]
    np.testing.assert_array_equal(ax.get_images()[0].get_array(), [[1, 1, 0], [1, 2, 0], [1, 0, 0]])
    assert [t.get_text() for t in ax.get_yticklabels()] == ["dog", "cat", "2"], "ids where the manifest has no name"
    assert ax.get_title() == "video: top-1 50.0 % (6 videos)"


def test_contingency_figure_puts_matched_clusters_on_the_diagonal() -> None:
    labels = np.array([0, 0, 0, 1, 1, 2, 2, 2])
    clusters = np.array([7, 7, 3, 5, 5, 3, 3, 7])  # cluster 7 ~ class 0, 5 ~ 1, 3 ~ 2
    table = np.array([[2, 0, 1], [0, 2, 0], [1, 0, 2]])  # rows classes, columns clusters 7, 5, 3
    np.testing.assert_array_equal(figures.matched_cluster_order(np.array([[1, 0, 2], [0, 2, 0], [2, 0, 1]])),
                                  [2, 1, 0])
    fig = figures.contingency_figure(labels, {"video": clusters}, ["a", "b", "c"], {"video": {"nmi": 0.5, "ari": 0.25,
                                                                                          "purity": 0.75}}, "k-means")
    ax = fig.axes[0]
    np.testing.assert_array_equal(ax.get_images()[0].get_array(), table)
    assert [t.get_text() for t in ax.get_xticklabels()] == ["7", "5", "3"]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["a", "b", "c"]
    assert ax.get_title() == "video: NMI 0.50, ARI 0.25, purity 0.75"


def test_embedding_figure_is_sklearns_pca_coloured_by_class() -> None:
    from sklearn.decomposition import PCA

    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1, 2], 10)
    x = rng.normal(size=(30, 5)) + 4 * labels[:, None]
    fig = figures.embedding_figure({"audio": x}, labels, ["low", "mid", "high"], "test")
    ax = fig.axes[0]
    expected = PCA(n_components=2, random_state=0).fit_transform(x)
    for c, points in enumerate(ax.collections):
        np.testing.assert_allclose(points.get_offsets(), expected[labels == c])
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["low", "mid", "high"]
    assert ax.get_xlabel().startswith("PC 1 (") and "% of variance" in ax.get_ylabel()


@pytest.fixture(scope="module")
def tiny_shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_synth_shards(tmp_path_factory.mktemp("figures"))


def test_probe_writes_a_confusion_matrix_that_matches_its_top1(tiny_shards: Path, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    seen = {}
    real = figures.confusion_figure

    def spy(truths, predictions, class_names, num_classes, subtitle):
        seen.update(truths=truths, predictions=predictions, class_names=class_names)
        return real(truths, predictions, class_names, num_classes, subtitle)

    monkeypatch.setattr(figures, "confusion_figure", spy)
    run_dir = tmp_path / "probe"
    assert main(["probe", str(RECIPES / "eval" / "synth_probe.yaml"), f"data.shards={tiny_shards}", *SMALL,
                 f"run_dir={run_dir}", f"probe.cache_dir={tmp_path / 'cache'}", "probe.weight_decays=[1e-3]",
                 "probe.max_iter=20", "probe.knn=false"]) == 0
    metrics = json.loads((run_dir / "metrics.json").read_text())
    manifest = json.loads((tiny_shards / "manifest.json").read_text())
    assert seen["class_names"] == manifest["classes"]
    for modality in ("video", "audio", "both"):
        accuracy = 100 * float(np.mean(seen["truths"][modality] == seen["predictions"][modality]))
        assert accuracy == pytest.approx(metrics[modality]["test_video_top1"])
    assert _is_png(run_dir / "confusion.png") and _is_png(run_dir / "embedding.png")
    assert not [p for p in run_dir.iterdir() if p.name.endswith(".tmp")]


def test_cluster_writes_a_contingency_table_that_matches_its_purity(tiny_shards: Path, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    seen = {}
    real = figures.contingency_figure

    def spy(labels, clusters, class_names, scores, subtitle):
        seen.update(labels=labels, clusters=clusters, class_names=class_names)
        return real(labels, clusters, class_names, scores, subtitle)

    monkeypatch.setattr(figures, "contingency_figure", spy)
    run_dir = tmp_path / "cluster"
    assert main(["cluster", str(RECIPES / "eval" / "synth_cluster.yaml"), f"data.shards={tiny_shards}", *SMALL,
                 f"run_dir={run_dir}", f"cluster.cache_dir={tmp_path / 'cache'}"]) == 0
    metrics = json.loads((run_dir / "metrics.json").read_text())
    from sklearn.metrics.cluster import contingency_matrix

    for modality in ("video", "audio", "both"):
        table = contingency_matrix(seen["labels"], seen["clusters"][modality])
        assert table.sum() == metrics["num_samples"]
        assert table.max(axis=0).sum() / table.sum() == pytest.approx(metrics[modality]["purity"])
    assert seen["class_names"] == json.loads((tiny_shards / "manifest.json").read_text())["classes"]
    assert _is_png(run_dir / "contingency.png") and _is_png(run_dir / "embedding.png")


def test_each_fold_of_the_fold_protocol_gets_its_figures(tiny_shards: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "folds"
    assert main(["probe", str(RECIPES / "eval" / "synth_probe.yaml"), f"data.shards={tiny_shards}", *SMALL,
                 f"run_dir={run_dir}", f"probe.cache_dir={tmp_path / 'cache'}", "probe.weight_decays=[1e-3]",
                 "probe.max_iter=5", "probe.knn=false", "probe.modalities=[audio]",
                 f"probe.fold_shards=[{tiny_shards},{tiny_shards}]"]) == 0
    for fold in ("fold0", "fold1"):
        assert _is_png(run_dir / fold / "confusion.png", low=2_000) and _is_png(run_dir / fold / "embedding.png")
    assert not (run_dir / "confusion.png").exists()
