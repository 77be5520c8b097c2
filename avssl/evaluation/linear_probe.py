"""Linear probe: frozen encoders, pooled features extracted once (cached on disk), a
linear classifier on top, top-1 on the test split ("Audio-Visual Instance Discrimination with Cross-Modal Agreement",
CVPR 2021; docs/evaluation.md).

Protocol: features of ``clips_per_video`` evenly spaced clips per video, no augmentation;
each modality's features standardised with train statistics; multinomial logistic
regression trained full-batch with L-BFGS (no library in the stack offers it on tensors:
this is the one hand-written piece here). The weight decay is chosen on the val split,
never on test. Reported: clip-level top-1, and video-level top-1 (softmax scores averaged
over the clips of a video) for the video encoder, the audio encoder and both concatenated.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from omegaconf import DictConfig

from avssl.config import start_evaluation
from avssl.data.datamodule import DataConfig, manifest_classes
from avssl.data.skips import split_clips
from avssl.evaluation.encoders import load_encoders, resolve_device
from avssl.evaluation.features import MODALITIES, Features, encoder_names, extract_features, standardiser
from avssl.evaluation.io import write_metrics
from avssl.metrics.classification import mean_average_precision, top_k_accuracy, video_level_scores


@dataclass
class ProbeConfig:
    """The ``probe`` section of an evaluation recipe."""

    encoders: str = "random"  # an `avssl export` folder, a Lightning .ckpt, or "random"
    modalities: list[str] = field(default_factory=lambda: list(MODALITIES))
    train_split: str = "train"
    val_split: str = "val"
    test_split: str = "test"
    train_clips_per_video: int = 1
    eval_clips_per_video: int = 3
    weight_decays: list[float] = field(default_factory=lambda: [1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1])
    max_iter: int = 300
    batch_size: int = 64
    cache_dir: str = "runs/.feature_cache"
    device: str = "auto"
    knn: bool = True  # also a k-NN classifier on the frozen features (cosine, weighted vote)
    knn_k: int = 20
    knn_temperature: float = 0.07
    multilabel: bool = False  # labels from annotation.json (AudioSet): one-vs-rest, scored by mAP
    fold_shards: list[str] = field(default_factory=list)  # cross-validation: one shard set per fold


def fit_logistic_regression(x: torch.Tensor, y: torch.Tensor, num_classes: int, weight_decay: float,
                            max_iter: int) -> torch.nn.Linear:
    """Logistic regression, full batch, L-BFGS, L2 penalty on the weights: multinomial for
    class ids ``y`` (N), one-vs-rest (binary cross-entropy per class) for a multi-hot ``y``
    (N×C float, multi-label sets)."""
    multilabel = y.dim() == 2
    torch.manual_seed(0)
    model = torch.nn.Linear(x.shape[1], num_classes)
    torch.nn.init.zeros_(model.weight)
    torch.nn.init.zeros_(model.bias)
    optimizer = torch.optim.LBFGS(model.parameters(), lr=1.0, max_iter=max_iter, history_size=20,
                                  line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        logits = model(x)
        fit = (torch.nn.functional.binary_cross_entropy_with_logits(logits, y) * num_classes if multilabel
               else torch.nn.functional.cross_entropy(logits, y))
        loss = fit + weight_decay * model.weight.pow(2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    return model


def _search_weight_decay(x_train: torch.Tensor, y_train: torch.Tensor, num_classes: int, cfg: ProbeConfig,
                         evaluate: Callable[[torch.nn.Linear, str], tuple[float, float]], metric: str,
                         ) -> tuple[dict[str, Any], torch.nn.Linear]:
    """Fit one classifier per weight decay, keep the best on val by the video-level score
    (``evaluate(model, split)`` → (clip, video) scores), report it on test; (the report, the
    chosen classifier)."""
    search = {}
    best = None
    for wd in cfg.weight_decays:
        model = fit_logistic_regression(x_train, y_train, num_classes, wd, cfg.max_iter)
        clip_score, video_score = evaluate(model, "val")
        search[str(wd)] = {f"val_clip_{metric}": clip_score, f"val_video_{metric}": video_score}
        if best is None or video_score > best[0]:
            best = (video_score, wd, model)
    assert best is not None
    clip_score, video_score = evaluate(best[2], "test")
    return {f"test_clip_{metric}": clip_score, f"test_video_{metric}": video_score, "weight_decay": best[1],
            f"val_video_{metric}": best[0], "search": search}, best[2]


@dataclass
class ProbeFit:
    """A probe's report, its chosen classifier and the train-statistics standardiser it reads
    features through (the figures predict the test split again with them)."""

    results: dict[str, Any]
    classifier: torch.nn.Linear
    standardise: Callable[[Features], torch.Tensor]


def probe_modality(train: Features, val: Features, test: Features, modality: str, cfg: ProbeConfig
                   ) -> dict[str, Any]:
    """Choose the weight decay on val (video-level top-1), report test top-1."""
    return fit_probe(train, val, test, modality, cfg).results


def fit_probe(train: Features, val: Features, test: Features, modality: str, cfg: ProbeConfig) -> ProbeFit:
    """:func:`probe_modality`, keeping the chosen classifier."""
    standardise = standardiser(train, modality)
    num_classes = int(max(train.label.max(), val.label.max(), test.label.max())) + 1
    splits = {"val": val, "test": test}

    def evaluate(model: torch.nn.Linear, split: str) -> tuple[float, float]:
        f = splits[split]
        with torch.no_grad():
            scores = torch.softmax(model(standardise(f)), 1)
        labels, index = torch.from_numpy(f.label), torch.from_numpy(f.index)
        return (top_k_accuracy(scores, labels, 1),
                top_k_accuracy(*video_level_scores(scores, labels, index, apply_softmax=False), 1))

    results, classifier = _search_weight_decay(standardise(train), torch.from_numpy(train.label).long(), num_classes,
                                               cfg, evaluate, "top1")
    return ProbeFit(results, classifier, standardise)


def multi_hot(padded: np.ndarray, num_classes: int) -> np.ndarray:
    """N×MAX_LABELS class indices (−1 padded) → N×C float {0, 1}."""
    out = np.zeros((len(padded), num_classes), np.float32)
    rows, cols = np.nonzero(padded >= 0)
    out[rows, padded[rows, cols]] = 1.0
    return out


def probe_multilabel(train: Features, val: Features, test: Features, modality: str, cfg: ProbeConfig
                     ) -> dict[str, Any]:
    """One-vs-rest probe of a multi-label set: weight decay chosen on val video-level mAP,
    test clip-level and video-level (sigmoid scores averaged over a video's clips) mAP."""
    standardise = standardiser(train, modality)
    num_classes = int(max(f.extra["labels"].max() for f in (train, val, test))) + 1
    splits = {"val": val, "test": test}

    def evaluate(model: torch.nn.Linear, split: str) -> tuple[float, float]:
        f = splits[split]
        y = torch.from_numpy(multi_hot(f.extra["labels"], num_classes)).long()
        with torch.no_grad():
            scores = torch.sigmoid(model(standardise(f)))
        index = torch.from_numpy(f.index)
        video_scores, _ = video_level_scores(scores, torch.from_numpy(f.label), index, apply_softmax=False)
        first = np.unique(f.index, return_index=True)[1]  # ascending video index, as video_level_scores
        return mean_average_precision(scores, y), mean_average_precision(video_scores, y[first])

    y_train = torch.from_numpy(multi_hot(train.extra["labels"], num_classes))
    return _search_weight_decay(standardise(train), y_train, num_classes, cfg, evaluate, "map")[0]


def knn_top1(train: Features, test: Features, modality: str, cfg: ProbeConfig) -> float:
    """Clip-level top-1 (%) of a weighted k-NN vote over the training clips (the online
    monitor's vote, :func:`avssl.tasks.monitors.knn_vote`), features standardised with
    train statistics as for the linear probe."""
    from avssl.tasks.monitors import knn_vote

    standardise = standardiser(train, modality)
    num_classes = int(max(train.label.max(), test.label.max())) + 1
    predicted = knn_vote(standardise(test), standardise(train),
                         torch.from_numpy(train.label).long(), num_classes, cfg.knn_k, cfg.knn_temperature)
    return float((predicted.numpy() == test.label).mean() * 100)


def run_linear_probe(encoders: dict[str, torch.nn.Module], data: DataConfig, cfg: ProbeConfig,
                     encoder_id: str, figures_dir: Path | None = None) -> dict[str, Any]:
    """Features for train/val/test (cached), then one probe per requested modality; with
    ``figures_dir``, its confusion matrices and embedding map there (single-label sets)."""
    for modality in cfg.modalities:
        if modality not in MODALITIES:
            raise ValueError(f"probe.modalities: {modality!r} is not one of {MODALITIES}")
    needed = sorted({m for mod in cfg.modalities for m in encoder_names(mod)})
    missing = [m for m in needed if encoders.get(m) is None]
    if missing:
        raise ValueError(f"probe needs the {', '.join(missing)} encoder, which these encoders do not have")
    used = {m: encoders[m] for m in needed}
    device = resolve_device(cfg.device)
    cache = Path(cfg.cache_dir)
    splits = {}
    clip_counts: dict[str, dict[str, Any]] = {}  # evaluated vs expected, per split (avssl/data/skips.py)
    targets = ("labels",) if cfg.multilabel else ()
    for name, split, clips in (("train", cfg.train_split, cfg.train_clips_per_video),
                               ("val", cfg.val_split, cfg.eval_clips_per_video),
                               ("test", cfg.test_split, cfg.eval_clips_per_video)):
        splits[name] = extract_features(used, data, split, clips, cfg.batch_size, device, cache, encoder_id, targets)
        clip_counts[name] = split_clips(data.shards, split, clips, len(splits[name].label), test=name == "test",
                                        allow_missing=data.allow_missing_test_clips, limit=data.max_skip_fraction)
    if cfg.multilabel:
        results = {m: probe_multilabel(splits["train"], splits["val"], splits["test"], m, cfg) for m in cfg.modalities}
        results["num_clips"] = {k: int(len(v.label)) for k, v in splits.items()}
        results["clips"] = clip_counts
        return results
    if (splits["train"].label < 0).any():
        raise ValueError(f"split {cfg.train_split!r} has unlabelled samples (label -1): a probe needs labels")
    fits = {m: fit_probe(splits["train"], splits["val"], splits["test"], m, cfg) for m in cfg.modalities}
    results = {m: fit.results for m, fit in fits.items()}
    if figures_dir is not None:
        from avssl.evaluation.figures import write_probe_figures

        write_probe_figures(fits, splits["test"], manifest_classes(data.shards), figures_dir)
    if cfg.knn:
        for m in cfg.modalities:
            results[m]["knn_clip_top1"] = knn_top1(splits["train"], splits["test"], m, cfg)
    results["num_clips"] = {k: int(len(v.label)) for k, v in splits.items()}
    results["clips"] = clip_counts
    return results



def cross_validate(encoders: dict, data: DataConfig, probe: ProbeConfig, encoder_id: str, run_dir: Path
                   ) -> dict[str, Any]:
    """The fold protocol (ESC-50, "Look, Listen and Learn", ICCV 2017; "Audio-Visual Instance Discrimination with
    Cross-Modal Agreement", CVPR 2021): one probe per fold's shard set
    (`avssl prepare esc50 --fold k`: train = the other folds, test = fold k), and the mean
    of each test metric over the folds; each fold's figures in ``run_dir/fold<k>``."""
    folds = [run_linear_probe(encoders, replace(data, shards=shards), probe, encoder_id, run_dir / f"fold{k}")
             for k, shards in enumerate(probe.fold_shards)]
    results: dict[str, Any] = {"folds": folds, "fold_shards": list(probe.fold_shards)}
    for modality in probe.modalities:
        keys = [k for k, v in folds[0][modality].items() if k.startswith("test_") or k == "knn_clip_top1"]
        results[modality] = {k: float(np.mean([f[modality][k] for f in folds])) for k in keys}
        results[modality]["weight_decay"] = [f[modality]["weight_decay"] for f in folds]
    return results


def evaluate(config: DictConfig) -> dict[str, Any]:
    """`avssl probe`: the encoders ``probe.encoders`` names, probed on the recipe's shards (or
    on each of ``probe.fold_shards``); metrics.json in ``run_dir``."""
    probe, run_dir = start_evaluation(config, "probe", ProbeConfig)
    encoders, data, encoder_id = load_encoders(config, probe.encoders, run_dir)
    if probe.fold_shards:
        results = cross_validate(encoders, data, probe, encoder_id, run_dir)
    else:
        results = run_linear_probe(encoders, data, probe, encoder_id, figures_dir=run_dir)
    results["encoders"] = probe.encoders
    return {**results, "metrics_file": str(write_metrics(results, run_dir))}


def format_table(results: dict[str, Any]) -> str:
    """One row per modality: top-1 (%) for single-label sets, mAP for multi-label ones."""
    def decay(value: Any) -> str:
        return "/".join(f"{v:.0e}" for v in value) if isinstance(value, list) else f"{value:.0e}"

    rows = [f"{'modality':<8} {'clip':>8} {'video':>8} {'kNN clip':>9}  weight decay"]
    for modality, r in results.items():
        if not isinstance(r, dict):
            continue
        if "test_clip_top1" in r:
            knn = f"{r['knn_clip_top1']:>9.1f}" if "knn_clip_top1" in r else f"{'-':>9}"
            rows.append(f"{modality:<8} {r['test_clip_top1']:>8.1f} {r['test_video_top1']:>8.1f} {knn}  "
                        f"{decay(r['weight_decay'])}")
        elif "test_clip_map" in r:
            rows.append(f"{modality:<8} {r['test_clip_map']:>8.3f} {r['test_video_map']:>8.3f} {'-':>9}  "
                        f"{decay(r['weight_decay'])}   (mAP)")
    return "\n".join(rows)


def report(results: dict[str, Any]) -> str:
    """What `avssl probe` prints: the table of :func:`format_table`, where the figures are."""
    run_dir = Path(results["metrics_file"]).parent
    folds = len(results.get("fold_shards", []))
    where = f"mean of {folds} folds" if folds else "test split"
    multilabel = any("test_clip_map" in r for r in results.values() if isinstance(r, dict))
    figures = f"{run_dir}/fold*/" if folds else run_dir
    figures = "" if multilabel else f"; confusion.png, embedding.png in {figures}"
    return (f"linear probe of {results['encoders']} ({where}, top-1 %):\n{format_table(results)}\n"
            f"written: {results['metrics_file']}{figures}")
