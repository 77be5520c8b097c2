"""The PNG figures of the evaluation verbs: what a person looks at beside ``metrics.json``.

* ``localization.png`` (`avssl localize`): frames with the sounding objects' boxes, the
  heatmap over them on a colour scale, the pixels the binarisation rule marks, each clip's cIoU.
* ``separation.png`` (`avssl separate`): mixture, estimates and references on time (s) ×
  frequency (Hz) axes, magnitude in dB on a colour bar, each mixture's SDR.
* ``confusion.png`` (`avssl probe`): the test confusion matrix of the chosen linear probe,
  video level, one panel per modality.
* ``embedding.png`` (`avssl probe`, `avssl cluster`): the test embeddings projected on their
  first two principal components, coloured by class.
* ``contingency.png`` (`avssl cluster`): classes × k-means clusters, the clusters ordered to
  put each one under the class it overlaps most.

Matplotlib's object interface on an Agg canvas (no pyplot: no global backend or figure
state), scikit-learn for PCA, confusion matrices and contingency tables. Every file is
written under a temporary name beside the target and then renamed, so a reader never sees
half a PNG.
"""
from __future__ import annotations

import math
import os
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

if TYPE_CHECKING:
    from avssl.evaluation.features import Features
    from avssl.evaluation.linear_probe import ProbeFit


DPI = 100
TITLE_SIZE = 9
CHAR_WIDTH_EM = 0.62  # an upper bound of the mean glyph width of matplotlib's default font, in ems
MAX_LEGEND_CLASSES = 20  # above this a legend is unreadable: a colour bar of class ids instead
DB_RANGE = 60.0  # separation.png shows magnitudes from the mixture's peak down to this many dB below


# -- writing -----------------------------------------------------------------------------------
def new_figure(width: float, height: float) -> Figure:
    """A figure (inches) on an Agg canvas, laid out by matplotlib's constrained layout."""
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig: Figure, path: Path, dpi: int = DPI) -> Path:
    """Write ``fig`` as a PNG at ``path`` atomically (a temporary file beside it, then a rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        # tight: a label longer than foreseen widens the picture instead of being cut off
        fig.savefig(temporary, format="png", dpi=dpi, bbox_inches="tight", pad_inches=0.08)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    return path


def fit_title(text: str, width_inches: float, fontsize: float = TITLE_SIZE, max_lines: int = 3) -> str:
    """``text`` wrapped to the figure's width: a word (a path) longer than a line keeps its
    beginning and end around an ellipsis, and lines beyond ``max_lines`` are cut."""
    chars = max(20, int(width_inches * 72 / (fontsize * CHAR_WIDTH_EM)))
    words = [word if len(word) <= chars else word[: chars // 3] + "…" + word[-(chars - chars // 3 - 1):]
             for word in text.split()]
    return "\n".join(textwrap.wrap(" ".join(words), chars, max_lines=max_lines, placeholder=" …",
                                   break_long_words=True, break_on_hyphens=False))


def label_inches(labels: Sequence[str], fontsize: float = 7) -> float:
    """About how long the longest of ``labels`` is on paper (inches)."""
    return max((len(label) for label in labels), default=0) * fontsize * CHAR_WIDTH_EM / 72


def class_name(names: Sequence[str], label: int) -> str:
    """The manifest's name of class ``label``, or its id when the manifest has no names."""
    return names[label] if 0 <= label < len(names) else str(label)


# -- localization --------------------------------------------------------------------------------
def localization_figure(frames: torch.Tensor, heatmaps: torch.Tensor, boxes: torch.Tensor, predicted: torch.Tensor,
                        cious: Sequence[float], title: str, rule: str) -> Figure:
    """Two rows per clip column: the frame (uint8 3×H×W) with its boxes (K×4 pixels, NaN rows
    unused); the heatmap over it, min–max scaled per clip, with the outline of the pixels
    the rule marks (``predicted``, bool H×W) and the clip's cIoU above it."""
    count = len(frames)
    width = 1.7 * count + 1.2
    fig = new_figure(width, 4.3)
    axes = fig.subplots(2, count, squeeze=False)
    scale = ScalarMappable(Normalize(0.0, 1.0), "jet")
    for i in range(count):
        frame = frames[i].permute(1, 2, 0).numpy()
        heat = heatmaps[i].numpy()
        for row, ax in enumerate(axes[:, i]):
            ax.imshow(frame)
            if row == 1:
                ax.imshow((heat - heat.min()) / (np.ptp(heat) + 1e-9), cmap=scale.cmap, norm=scale.norm, alpha=0.5)
                if predicted[i].any() and not predicted[i].all():
                    ax.contour(predicted[i].numpy().astype(float), levels=[0.5], colors="white", linewidths=1.0,
                               linestyles="dashed")
                ax.set_title(f"cIoU {cious[i]:.2f}", fontsize=9)
            for x0, y0, x1, y1 in boxes[i].tolist():
                if not math.isnan(x0):
                    ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, color="lime", linewidth=1.2))
            rows, columns = heat.shape
            ax.set_xlim(-0.5, columns - 0.5)  # a box reaching past the frame must not widen the panel
            ax.set_ylim(rows - 0.5, -0.5)
            ax.set_xticks([])
            ax.set_yticks([])
    axes[0, 0].set_ylabel("frame, boxes", fontsize=9)
    axes[1, 0].set_ylabel(f"heatmap\n(dashed: {rule} pixels)", fontsize=9)
    colorbar = fig.colorbar(scale, ax=axes[1, :].tolist(), shrink=0.9, pad=0.01)
    colorbar.set_label("score (per clip,\nmin 0 – max 1)", fontsize=8)
    colorbar.ax.tick_params(labelsize=7)
    fig.suptitle(fit_title(title, width), fontsize=TITLE_SIZE)
    return fig


# -- separation ----------------------------------------------------------------------------------
def warped_bin_frequencies(log_bins: int, sample_rate: int) -> np.ndarray:
    """The frequency (Hz) each row of the Sound-of-Pixels log-frequency warp reads
    (:func:`avssl.evaluation.spectral.warp_log_frequency`): row y ∈ [−1, 1] samples
    the linear axis at (21^((y+1)/2) − 11)/10, i.e. at (21^((y+1)/2) − 1)/20 of Nyquist."""
    y = np.linspace(-1.0, 1.0, log_bins)
    return (21.0 ** ((y + 1) / 2) - 1) / 20 * sample_rate / 2


def _frequency_ticks(log_bins: int, sample_rate: int) -> tuple[list[float], list[str]]:
    """Row positions and labels of round frequencies on the warped axis."""
    rows = np.arange(log_bins)
    frequencies = warped_bin_frequencies(log_bins, sample_rate)
    candidates = [100, 250, 500, 1000, 2000, 4000, 8000, 16000, 22050]
    kept = [f for f in candidates if frequencies[1] <= f <= frequencies[-1]]
    labels = [f"{f // 1000}k" if f >= 1000 and f % 1000 == 0 else (f"{f / 1000:g}k" if f >= 1000 else str(f))
              for f in kept]
    return list(np.interp(kept, frequencies, rows)), labels


def separation_row_label(scores: dict[str, float] | str) -> str:
    """A mixture's scores (``separation_metrics``) as its row shows them, or why it was not
    scored (``silent_reference`` / ``silent_estimate``)."""
    if isinstance(scores, str):
        return f"not scored: {scores.replace('_', ' ')}"
    return f"SDR {scores['sdr']:.2f} dB\n(mixture itself {scores['sdr_mixture']:.2f} dB)"


def separation_figure(spectrograms: np.ndarray, scores: Sequence[dict[str, float] | str], sample_rate: int,
                      hop: int) -> Figure:
    """Rows of (mixture, estimate 1, true 1, estimate 2, true 2) warped magnitudes
    (M×5×log_bins×T), in dB relative to each row's mixture peak, on one colour scale."""
    titles = ["mixture", "estimate 1", "true 1", "estimate 2", "true 2"]
    count, panels, log_bins, frames = spectrograms.shape
    fig = new_figure(2.3 * panels + 1.0, 2.1 * count + 0.6)
    axes = fig.subplots(count, panels, squeeze=False, sharex=True, sharey=True)
    seconds = frames * hop / sample_rate
    ticks, tick_labels = _frequency_ticks(log_bins, sample_rate)
    norm = Normalize(-DB_RANGE, 0.0)
    image = None
    for row in range(count):
        decibels = 20 * np.log10(np.maximum(spectrograms[row], 1e-10))
        decibels -= decibels[0].max()
        for column, ax in enumerate(axes[row]):
            image = ax.imshow(decibels[column], origin="lower", aspect="auto", cmap="magma", norm=norm,
                              extent=(0.0, seconds, -0.5, log_bins - 0.5), interpolation="nearest")
            if row == 0:
                ax.set_title(titles[column], fontsize=9)
            ax.tick_params(labelsize=7)
        axes[row, 0].set_yticks(ticks, tick_labels)
        axes[row, 0].set_ylabel(f"mixture {row}", fontsize=9)
        axes[row, 0].text(0.03, 0.96, separation_row_label(scores[row]), transform=axes[row, 0].transAxes,
                          fontsize=7, color="white", va="top", ha="left",
                          bbox={"facecolor": "black", "alpha": 0.6, "pad": 2, "linewidth": 0})
    fig.supylabel("frequency (Hz, log-frequency rows)", fontsize=8)
    fig.supxlabel("time (s)", fontsize=8)
    colorbar = fig.colorbar(image, ax=axes.ravel().tolist(), shrink=0.8, pad=0.01)
    colorbar.set_label("magnitude (dB re. the mixture's peak)", fontsize=8)
    colorbar.ax.tick_params(labelsize=7)
    return fig


# -- classification and clustering ---------------------------------------------------------------
def _names_on_first_panel_only(axes: np.ndarray) -> None:
    """Panels side by side share their rows (the classes): name them once, on the left."""
    for ax in axes[1:]:
        ax.tick_params(labelleft=False)
        ax.set_ylabel("")


def _count_colorbar(fig: Figure, norm: Normalize, axes: np.ndarray, unit: str) -> None:
    """One colour bar for panels of counts drawn on the same ``norm``, integer ticks."""
    from matplotlib.ticker import MaxNLocator

    colorbar = fig.colorbar(ScalarMappable(norm, "Blues"), ax=axes.tolist(), shrink=0.8, pad=0.01)
    colorbar.ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    colorbar.set_label(unit, fontsize=8)
    colorbar.ax.tick_params(labelsize=7)


def confusion_figure(truths: dict[str, np.ndarray], predictions: dict[str, np.ndarray], class_names: Sequence[str],
                     num_classes: int, subtitle: str) -> Figure:
    """One confusion matrix per modality (rows true, columns predicted), counts of
    ``sklearn.metrics.confusion_matrix`` drawn by ``ConfusionMatrixDisplay``."""
    from sklearn.metrics import ConfusionMatrixDisplay, confusion_matrix

    names = [class_name(class_names, c) for c in range(num_classes)]
    side = max(2.4, 0.32 * num_classes)  # a panel of 0.32-inch cells
    margin = label_inches(names)  # the class names beside and (rotated) below the first panel
    fig = new_figure(len(truths) * (side + 0.4) + margin + 1.4, side + margin + 1.0)
    axes = fig.subplots(1, len(truths), squeeze=False)[0]
    classes = list(range(num_classes))
    tables = {m: confusion_matrix(truth, predictions[m], labels=classes) for m, truth in truths.items()}
    norm = Normalize(0, max(1, max(int(t.max()) for t in tables.values())))
    for ax, (modality, counts) in zip(axes, tables.items()):
        display = ConfusionMatrixDisplay(counts, display_labels=names)
        display.plot(ax=ax, colorbar=False, cmap="Blues", include_values=num_classes <= 20, xticks_rotation="vertical",
                     text_kw={"fontsize": 7})
        display.im_.set_norm(norm)
        for text, count in zip(np.ravel(display.text_ if display.text_ is not None else []), counts.ravel()):
            text.set_color("white" if norm(count) > 0.5 else "black")  # the shared scale's contrast
        accuracy = 100 * np.trace(counts) / max(1, counts.sum())
        ax.set_title(f"{modality}: top-1 {accuracy:.1f} % ({counts.sum()} videos)", fontsize=9)
        ax.tick_params(labelsize=7)
        ax.set_xlabel("predicted class", fontsize=8)
        ax.set_ylabel("true class", fontsize=8)
    _names_on_first_panel_only(axes)
    _count_colorbar(fig, norm, axes, "videos")
    fig.suptitle(fit_title(subtitle, fig.get_figwidth()), fontsize=TITLE_SIZE)
    return fig


def project_2d(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(N×2 coordinates on the first two principal components, their explained-variance
    ratios); a single feature gives a second coordinate of zeros."""
    from sklearn.decomposition import PCA

    if len(features) < 2:  # nothing to project: one point at the origin
        return np.zeros((len(features), 2)), np.zeros(2)
    components = min(2, features.shape[1], len(features))
    pca = PCA(n_components=components, random_state=0).fit(features)
    coordinates = pca.transform(features)
    ratios = pca.explained_variance_ratio_
    if components < 2:
        coordinates = np.pad(coordinates, ((0, 0), (0, 2 - components)))
        ratios = np.pad(ratios, (0, 2 - components))
    return coordinates, ratios


def embedding_figure(features: dict[str, np.ndarray], labels: np.ndarray, class_names: Sequence[str],
                     subtitle: str) -> Figure:
    """Each modality's (standardised) embeddings on their first two principal components,
    one point per clip, coloured by class (a legend with the class names up to
    ``MAX_LEGEND_CLASSES`` classes, a colour bar of class ids above)."""
    classes = np.unique(labels)
    num_classes = int(labels.max()) + 1
    legend = len(classes) <= MAX_LEGEND_CLASSES
    cmap = "tab10" if num_classes <= 10 else ("tab20" if num_classes <= 20 else "turbo")
    norm = Normalize(-0.5, max(num_classes, 10 if cmap == "tab10" else 20 if cmap == "tab20" else num_classes) - 0.5)
    scale = ScalarMappable(norm, cmap)
    names = [class_name(class_names, int(c)) for c in classes]
    fig = new_figure(3.4 * len(features) + (label_inches(names) + 0.8 if legend else 0.8), 3.7)
    axes = fig.subplots(1, len(features), squeeze=False)[0]
    for ax, (modality, x) in zip(axes, features.items()):
        coordinates, ratios = project_2d(x)
        for c in classes:
            chosen = labels == c
            ax.scatter(coordinates[chosen, 0], coordinates[chosen, 1], s=12, color=scale.to_rgba(c), alpha=0.8,
                       linewidths=0, label=class_name(class_names, int(c)))
        ax.set_title(modality, fontsize=9)
        ax.set_xlabel(f"PC 1 ({100 * ratios[0]:.0f} % of variance)", fontsize=8)
        ax.set_ylabel(f"PC 2 ({100 * ratios[1]:.0f} % of variance)", fontsize=8)
        ax.tick_params(labelsize=7)
    if legend:
        fig.legend(*axes[0].get_legend_handles_labels(), loc="outside right center", fontsize=7, title="class",
                   title_fontsize=8, markerscale=1.5, frameon=False)
    else:
        fig.colorbar(scale, ax=axes.tolist(), pad=0.01).set_label("class id", fontsize=8)
    fig.suptitle(fit_title(subtitle, fig.get_figwidth()), fontsize=TITLE_SIZE)
    return fig


def matched_cluster_order(table: np.ndarray) -> np.ndarray:
    """Column order of a classes × clusters table that puts on the diagonal the one-to-one
    matching with the largest overlap (scipy's Hungarian solver), the unmatched clusters last."""
    from scipy.optimize import linear_sum_assignment

    _, matched = linear_sum_assignment(table, maximize=True)
    rest = [c for c in range(table.shape[1]) if c not in set(matched.tolist())]
    return np.concatenate([matched, np.asarray(rest, dtype=int)]).astype(int)


def contingency_figure(labels: np.ndarray, clusters: dict[str, np.ndarray], class_names: Sequence[str],
                       scores: dict[str, dict[str, float]], subtitle: str) -> Figure:
    """Per modality, ``sklearn.metrics.cluster.contingency_matrix`` of classes (rows) ×
    clusters (columns, matched to the classes: :func:`matched_cluster_order`) as a heatmap."""
    from sklearn.metrics.cluster import contingency_matrix

    classes = np.unique(labels)
    side = max(2.4, 0.32 * max(len(classes), max(len(np.unique(c)) for c in clusters.values())))
    margin = label_inches([class_name(class_names, int(c)) for c in classes])  # the class names on the left
    fig = new_figure(len(clusters) * (side + 0.4) + margin + 1.4, side + 1.5)
    axes = fig.subplots(1, len(clusters), squeeze=False)[0]
    tables = {m: contingency_matrix(labels, ids) for m, ids in clusters.items()}
    norm = Normalize(0, max(1, max(int(t.max()) for t in tables.values())))
    for ax, (modality, ids) in zip(axes, clusters.items()):
        order = matched_cluster_order(tables[modality])
        table = tables[modality][:, order]
        names = np.unique(ids)[order]
        ax.imshow(table, cmap="Blues", norm=norm, aspect="auto", interpolation="nearest")
        if table.size <= 400:
            threshold = norm.vmax / 2
            for (r, c), value in np.ndenumerate(table):
                ax.text(c, r, str(value), ha="center", va="center", fontsize=7,
                        color="white" if value > threshold else "black")
        ax.set_xticks(range(len(names)), [str(n) for n in names], fontsize=7)
        ax.set_yticks(range(len(classes)), [class_name(class_names, int(c)) for c in classes], fontsize=7)
        ax.set_xlabel("k-means cluster", fontsize=8)
        ax.set_ylabel("true class", fontsize=8)
        s = scores.get(modality, {})
        ax.set_title(f"{modality}: NMI {s.get('nmi', float('nan')):.2f}, ARI {s.get('ari', float('nan')):.2f}, "
                     f"purity {s.get('purity', float('nan')):.2f}", fontsize=9)
    _names_on_first_panel_only(axes)
    _count_colorbar(fig, norm, axes, "clips")
    fig.suptitle(fit_title(subtitle, fig.get_figwidth()), fontsize=TITLE_SIZE)
    return fig


# -- what the verbs call ----------------------------------------------------------------------
def video_predictions(fit: ProbeFit, test: Features) -> tuple[np.ndarray, np.ndarray]:
    """(true, predicted) class of each test video under a probe's chosen classifier: the
    softmax scores averaged over the video's clips, as the probe's video-level top-1."""
    from avssl.metrics.classification import video_level_scores

    with torch.no_grad():
        scores = torch.softmax(fit.classifier(fit.standardise(test)), 1)
    video_scores, video_labels = video_level_scores(scores, torch.from_numpy(test.label),
                                                    torch.from_numpy(test.index), apply_softmax=False)
    return video_labels.numpy(), video_scores.argmax(1).numpy()


def write_probe_figures(fits: dict[str, ProbeFit], test: Features, class_names: Sequence[str], run_dir: Path
                        ) -> list[Path]:
    """``confusion.png`` (video level, each modality's chosen classifier) and
    ``embedding.png`` (the test clips' standardised features) of a linear probe."""
    predicted = {m: video_predictions(fit, test) for m, fit in fits.items()}
    truths = {m: truth for m, (truth, _) in predicted.items()}
    predictions = {m: guess for m, (_, guess) in predicted.items()}
    num_classes = max(len(class_names), int(test.label.max()) + 1,
                      *(int(guess.max()) + 1 for guess in predictions.values()))
    written = [save_figure(confusion_figure(truths, predictions, class_names, num_classes,
                                            f"linear probe, test split, video level ({len(test.label)} clips of "
                                            f"{len(np.unique(test.index))} videos)"), Path(run_dir) / "confusion.png")]
    embeddings = {m: fit.standardise(test).numpy() for m, fit in fits.items()}
    written.append(save_figure(embedding_figure(embeddings, test.label, class_names,
                                                f"test clips, standardised features, PCA ({len(test.label)} clips)"),
                               Path(run_dir) / "embedding.png"))
    return written


def write_cluster_figures(features: dict[str, np.ndarray], labels: np.ndarray, clusters: dict[str, np.ndarray],
                          scores: dict, class_names: Sequence[str], split: str, run_dir: Path) -> list[Path]:
    """``contingency.png`` and ``embedding.png`` of a k-means run on ``split``."""
    subtitle = f"k-means (K = {scores.get('num_clusters')}) on the {split} split ({len(labels)} clips)"
    return [save_figure(contingency_figure(labels, clusters, class_names, scores, subtitle),
                        Path(run_dir) / "contingency.png"),
            save_figure(embedding_figure(features, labels, class_names,
                                         f"{split} clips, standardised features, PCA ({len(labels)} clips)"),
                        Path(run_dir) / "embedding.png")]


__all__ = ["class_name", "confusion_figure", "contingency_figure", "embedding_figure", "fit_title",
           "localization_figure", "matched_cluster_order", "new_figure", "project_2d", "save_figure",
           "separation_figure", "separation_row_label", "video_predictions", "warped_bin_frequencies",
           "write_cluster_figures", "write_probe_figures"]
