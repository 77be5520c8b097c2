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

import hashlib
import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from tqdm import tqdm

from avssl.data.datamodule import DataConfig, ShardList, ShardStream, base_views, make_loader, manifest_classes
from avssl.data.remote import shard_stamp
from avssl.data.sampling import ViewSampler
from avssl.data.skips import split_clips
from avssl.data.transforms import BatchTransform
from avssl.data.views import AUDIO, CLIP, INDEX, LABEL, VIDEO
from avssl.metrics.classification import mean_average_precision, top_k_accuracy, video_level_scores

MODALITIES = ("video", "audio", "both")


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


@dataclass
class Features:
    """Pooled features of one split: per modality N×D, with labels, video index, clip, and
    any ground-truth targets asked for (``extra``, e.g. ``event``)."""

    by_modality: dict[str, np.ndarray]
    label: np.ndarray
    index: np.ndarray
    clip: np.ndarray
    extra: dict[str, np.ndarray] = field(default_factory=dict)


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _cache_key(encoder_id: str, shards: ShardList, split: str, views: Any) -> str:
    h = hashlib.sha256()
    h.update(encoder_id.encode())
    for file, count in zip(shards.files, shards.counts):
        h.update(f"{Path(file).name}:{count}:{shard_stamp(file)}".encode())
    h.update(split.encode())
    h.update(repr(views).encode())
    return h.hexdigest()[:24]


@torch.inference_mode()
def extract_features(
    encoders: dict[str, torch.nn.Module], data: DataConfig, split: str, clips_per_video: int,
    batch_size: int, device: torch.device, cache: Path | None = None, encoder_id: str = "",
    targets: tuple[str, ...] = (),
) -> Features:
    """Pooled features of every clip of a split, from a cache when one exists; ``targets``
    (e.g. ``("event",)``) are read beside the windows and returned in ``Features.extra``."""
    shards = ShardList.from_manifest(data.shards, split)
    views = replace(base_views(data, clips_per_video=clips_per_video), targets=targets)
    path = None
    if cache is not None:
        path = cache / f"{_cache_key(encoder_id, shards, split, views)}.npz"
        if path.exists():
            stored = np.load(path)
            return Features({m: stored[m] for m in encoders}, stored["label"], stored["index"], stored["clip"],
                            {t: stored[t] for t in targets})
    stream = ShardStream(shards, ViewSampler(views, train=False), batch_size, num_workers=data.num_workers,
                         shuffle=False, pad=False, max_skip_fraction=data.max_skip_fraction)
    outputs: dict[str, list[np.ndarray]] = {m: [] for m in encoders}
    meta: dict[str, list[np.ndarray]] = {LABEL: [], INDEX: [], CLIP: [], **{t: [] for t in targets}}
    inputs = {"video": VIDEO, "audio": AUDIO}
    for module in encoders.values():
        module.eval().to(device)
    finish = BatchTransform(views).to(device)
    for batch in tqdm(make_loader(stream, data.num_workers, single_pass=True), desc=f"features {split}", unit="batch",
                      total=len(stream), leave=False):
        batch = finish({k: v.to(device) for k, v in batch.items()}, train=False)
        for modality, module in encoders.items():
            outputs[modality].append(module(batch[inputs[modality]].to(device)).float().cpu().numpy())
        for key in meta:
            meta[key].append(batch[key].cpu().numpy())
    features = Features({m: np.concatenate(v) for m, v in outputs.items()},
                        *(np.concatenate(meta[k]) for k in (LABEL, INDEX, CLIP)),
                        {t: np.concatenate(meta[t]) for t in targets})
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez(path, label=features.label, index=features.index, clip=features.clip, **features.by_modality,
                 **features.extra)
    return features


def encoder_names(modality: str) -> list[str]:
    """The encoders a probe modality reads: itself, or video and audio for ``both``."""
    return ["video", "audio"] if modality == "both" else [modality]


def standardiser(reference: Features, modality: str) -> Callable[[Features], torch.Tensor]:
    """Features → N×D float tensor of the modality's features (``both``: concatenated),
    each encoder's standardised with the statistics of ``reference`` (the train split)."""
    names = encoder_names(modality)
    stats = {n: (reference.by_modality[n].mean(0), reference.by_modality[n].std(0) + 1e-6) for n in names}

    def standardise(features: Features) -> torch.Tensor:
        parts = [(features.by_modality[n] - stats[n][0]) / stats[n][1] for n in names]
        return torch.from_numpy(np.concatenate(parts, axis=1)).float()

    return standardise


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
    device = _device(cfg.device)
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


def write_metrics(results: dict[str, Any], run_dir: Path) -> Path:
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / "metrics.json"
    path.write_text(json.dumps(results, indent=2))
    return path
