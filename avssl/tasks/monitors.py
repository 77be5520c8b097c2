"""Online monitors: a linear probe and a k-NN classifier trained on the embeddings a
pretext task returns, while it trains (docs/design.md "Methods, losses and monitors";
docs/monitors.md).

Both are Lightning callbacks. They read ``outputs["embeddings"]`` (modality → B×D) of
``training_step`` and ``validation_step`` and the batch's ``label`` (−1 unknown: masked
out); the task never sees labels. Each keeps its own state (probe weights and optimiser,
feature queue) in its ``state_dict``, which Lightning stores in the checkpoint.

Distributed: the labelled training rows of every rank are all-gathered (no gradient)
before use, so every rank holds the same queue and takes the same probe step on the same
global batch from the same seeded initialisation: the probes stay identical on every rank
without a gradient all-reduce, and N ranks × B clips equal one process with N·B
(tests/tasks/test_monitors.py). At validation each rank scores its own batches and the
correct/total counts are summed over ranks at the end of the epoch.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from pytorch_lightning.utilities import rank_zero_info
from torch import nn

from avssl.config import MonitorsConfig
from avssl.data.datamodule import manifest_classes
from avssl.data.views import LABEL
from avssl.distributed import all_reduce, gather, world_size

MODALITIES = ("video", "audio")


def gather_rows(x: torch.Tensor) -> torch.Tensor:
    """Rows of ``x`` from every rank, in rank order; ranks may hold different row counts
    (each pads to the largest). No gradient. Every rank must call it."""
    if world_size() == 1:
        return x
    counts = gather(torch.tensor([x.shape[0]], device=x.device))
    most = int(counts.max())
    padded = x.new_zeros((most, *x.shape[1:]))
    padded[: x.shape[0]] = x
    parts = gather(padded).split(most)
    return torch.cat([part[: int(count)] for part, count in zip(parts, counts)])


def knn_vote(query: torch.Tensor, bank: torch.Tensor, bank_labels: torch.Tensor, num_classes: int, k: int,
             temperature: float) -> torch.Tensor:
    """Class of each query row by a weighted vote of its ``k`` most cosine-similar bank
    rows, each voting exp(similarity / temperature) for its label (InstDisc's kNN)."""
    similarity = F.normalize(query.float(), dim=1) @ F.normalize(bank.float(), dim=1).T
    top_similarity, top = similarity.topk(min(k, bank.shape[0]), dim=1)
    scores = torch.zeros(query.shape[0], num_classes, device=query.device)
    scores.scatter_add_(1, bank_labels[top], (top_similarity / temperature).exp())
    return scores.argmax(dim=1)


class FeatureQueue(nn.Module):
    """The latest ``size`` labelled embeddings (L2-normalised) and their labels; new rows
    overwrite the oldest. Empty slots have label −1."""

    def __init__(self, size: int, dim: int) -> None:
        super().__init__()
        if size < 1:
            raise ValueError(f"monitors.queue_size must be ≥ 1, got {size}")
        self.register_buffer("features", torch.zeros(size, dim))
        self.register_buffer("labels", torch.full((size,), -1, dtype=torch.long))
        self.register_buffer("pointer", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def push(self, features: torch.Tensor, labels: torch.Tensor) -> None:
        if labels.numel() and int(labels.min()) < 0:
            raise ValueError("FeatureQueue.push takes labelled rows only (label ≥ 0)")
        size = self.labels.numel()
        features, labels = features[-size:], labels[-size:]
        slots = (self.pointer + torch.arange(labels.numel(), device=labels.device)) % size
        self.features[slots] = F.normalize(features.float(), dim=1)
        self.labels[slots] = labels
        self.pointer.copy_((self.pointer + labels.numel()) % size)

    def filled(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(features, labels) of the occupied slots, as views: slots fill in order, so until
        the last one is taken the occupied ones are those before the pointer."""
        if bool(self.labels[-1] >= 0):
            return self.features, self.labels
        return self.features[: int(self.pointer)], self.labels[: int(self.pointer)]


class _EmbeddingMonitor(pl.Callback):
    """Shared parts: pick labelled rows out of a step's output, count top-1 per modality at
    validation, log ``online/<modality>_<kind>_top1``, say each problem once."""

    kind = ""

    def __init__(self, modalities: Sequence[str] = MODALITIES) -> None:
        unknown = [m for m in modalities if m not in MODALITIES]
        if unknown or not modalities:
            raise ValueError(f"monitors.modalities must be a non-empty subset of {list(MODALITIES)}, "
                             f"got {list(modalities)}")
        self.modalities = tuple(modalities)
        self._said: set[str] = set()
        self._labelled_this_epoch = 0
        self._correct: dict[str, int] = {}
        self._total: dict[str, int] = {}

    def say_once(self, key: str, message: str) -> None:
        if key not in self._said:
            self._said.add(key)
            rank_zero_info(f"online {self.kind}: {message}")

    def _embeddings(self, outputs: Any, where: str) -> dict[str, torch.Tensor] | None:
        embeddings = outputs.get("embeddings") if isinstance(outputs, dict) else None
        if not embeddings:
            self.say_once(f"no-embeddings-{where}", f"{where} returned no 'embeddings'; nothing to monitor there")
            return None
        missing = [m for m in self.modalities if m not in embeddings]
        if missing:
            raise KeyError(f"online {self.kind}: {where} returned no {missing} embeddings "
                           f"(it has {sorted(embeddings)}); set monitors.modalities")
        return {m: embeddings[m].detach().float() for m in self.modalities}

    def training_rows(self, outputs: Any, batch: dict[str, torch.Tensor]
                      ) -> tuple[dict[str, torch.Tensor], torch.Tensor] | None:
        """Labelled rows of every rank's training batch, or None when there are none."""
        embeddings = self._embeddings(outputs, "training_step")
        if embeddings is None:
            return None
        known = batch[LABEL] >= 0
        labels = gather_rows(batch[LABEL][known])
        rows = {m: gather_rows(x[known]) for m, x in embeddings.items()}
        if labels.numel() == 0:
            return None
        self._labelled_this_epoch += labels.numel()
        return rows, labels

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._labelled_this_epoch = 0

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._labelled_this_epoch == 0:
            self.say_once("no-labels", "no training sample has a label (all −1): it does nothing")

    # -- validation -----------------------------------------------------------------------
    def predict(self, modality: str, features: torch.Tensor) -> torch.Tensor | None:
        """Predicted classes of B×D embeddings, or None while there is nothing to predict with."""
        raise NotImplementedError

    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._correct = {m: 0 for m in self.modalities}
        self._total = {m: 0 for m in self.modalities}

    def on_validation_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any,
                                batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        if trainer.sanity_checking:
            return
        embeddings = self._embeddings(outputs, "validation_step")
        if embeddings is None:
            return
        known = batch[LABEL] >= 0
        labels = batch[LABEL][known]
        if labels.numel() == 0:
            return
        every = labels.numel() == known.numel()
        for modality, features in embeddings.items():
            predicted = self.predict(modality, features if every else features[known])
            if predicted is not None:
                self._correct[modality] += int((predicted == labels).sum())
                self._total[modality] += labels.numel()

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        for modality in self.modalities:  # the same collectives on every rank
            counts = all_reduce(torch.tensor([self._correct.get(modality, 0), self._total.get(modality, 0)],
                                             dtype=torch.float64, device=pl_module.device))
            if counts[1] > 0:  # identical on every rank; sync_dist only spares Lightning's DDP warning
                pl_module.log(f"online/{modality}_{self.kind}_top1", float(counts[0] / counts[1]), on_epoch=True,
                              batch_size=int(counts[1]), sync_dist=True)


class OnlineLinearProbe(_EmbeddingMonitor):
    """A linear classifier per modality on the detached embeddings, trained with its own
    Adam on every training batch that has labelled samples; logs
    ``online/<modality>_linear_top1`` (validation) and ``online/<modality>_linear_train_top1``."""

    kind = "linear"

    def __init__(self, num_classes: int, modalities: Sequence[str] = MODALITIES, lr: float = 1e-3,
                 seed: int = 0) -> None:
        super().__init__(modalities)
        if num_classes < 2:
            raise ValueError(f"monitors.num_classes must be ≥ 2, got {num_classes}")
        self.num_classes, self.lr, self.seed = num_classes, lr, seed
        self.classifiers: nn.ModuleDict | None = None
        self.optimizer: torch.optim.Optimizer | None = None
        self._restored: dict[str, Any] | None = None

    def _build(self, dims: dict[str, int], device: torch.device) -> None:
        """Classifiers with a seeded initialisation (the same on every rank), then any
        restored state."""
        generator = torch.Generator().manual_seed(self.seed)
        with torch.inference_mode(False), torch.no_grad():  # validation runs in inference mode
            classifiers = {}
            for modality in self.modalities:
                layer = nn.Linear(dims[modality], self.num_classes)
                layer.weight.copy_(0.01 * torch.randn(layer.weight.shape, generator=generator))
                layer.bias.zero_()
                classifiers[modality] = layer
            self.classifiers = nn.ModuleDict(classifiers).to(device)
            self.optimizer = torch.optim.Adam(self.classifiers.parameters(), lr=self.lr)
            if self._restored is not None:
                self.classifiers.load_state_dict(self._restored["classifiers"])
                self.optimizer.load_state_dict(self._restored["optimizer"])
                self._restored = None

    def _ensure_built(self, device: torch.device, dims: dict[str, int] | None = None) -> bool:
        if self.classifiers is None:
            if self._restored is not None:
                dims = {m: int(self._restored["classifiers"][f"{m}.weight"].shape[1]) for m in self.modalities}
            if dims is None:
                return False
            self._build(dims, device)
        return True

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        rows = self.training_rows(outputs, batch)
        if rows is None:
            return
        features, labels = rows
        self.train_step(features, labels, pl_module)

    def train_step(self, features: dict[str, torch.Tensor], labels: torch.Tensor,
                   pl_module: pl.LightningModule | None = None) -> None:
        """One Adam step on labelled embeddings (the same on every rank)."""
        if int(labels.max()) >= self.num_classes:
            raise ValueError(f"online linear probe: label {int(labels.max())} ≥ monitors.num_classes="
                             f"{self.num_classes}; set monitors.num_classes to the number of classes")
        self._ensure_built(labels.device, {m: x.shape[1] for m, x in features.items()})
        with torch.enable_grad():
            logits = {m: self.classifiers[m](features[m]) for m in self.modalities}
            loss = sum(F.cross_entropy(z, labels) for z in logits.values())
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
        if pl_module is not None:
            for modality, z in logits.items():
                accuracy = (z.detach().argmax(1) == labels).float().mean()
                pl_module.log(f"online/{modality}_linear_train_top1", accuracy, on_step=False, on_epoch=True,
                              batch_size=labels.numel(), sync_dist=True)  # the same global batch on every rank

    @torch.no_grad()
    def predict(self, modality: str, features: torch.Tensor) -> torch.Tensor | None:
        if not self._ensure_built(features.device):
            return None
        return self.classifiers[modality](features.float()).argmax(1)

    def state_dict(self) -> dict[str, Any]:
        if self.classifiers is None:
            return dict(self._restored or {})
        return {"classifiers": self.classifiers.state_dict(), "optimizer": self.optimizer.state_dict(),
                "num_classes": self.num_classes}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if not state_dict:
            return
        saved = sorted({key.split(".")[0] for key in state_dict["classifiers"]})
        if saved != sorted(self.modalities):
            raise ValueError(f"online linear probe: the checkpoint's probe is for {saved}, "
                             f"monitors.modalities is {list(self.modalities)}")
        if int(state_dict["num_classes"]) != self.num_classes:
            raise ValueError(f"online linear probe: the checkpoint's probe has {state_dict['num_classes']} classes, "
                             f"monitors.num_classes is {self.num_classes}")
        self.classifiers, self.optimizer, self._restored = None, None, dict(state_dict)


class OnlineKNN(_EmbeddingMonitor):
    """A queue of the latest ``queue_size`` labelled training embeddings per modality; at
    validation a weighted ``k``-NN vote (cosine similarity, exp(s/temperature)) gives
    ``online/<modality>_knn_top1``."""

    kind = "knn"

    def __init__(self, modalities: Sequence[str] = MODALITIES, k: int = 20, temperature: float = 0.07,
                 queue_size: int = 4096, num_classes: int | None = None) -> None:
        super().__init__(modalities)
        if k < 1 or temperature <= 0:
            raise ValueError(f"monitors.knn_k must be ≥ 1 and knn_temperature > 0, got {k}, {temperature}")
        self.k, self.temperature, self.queue_size, self.num_classes = k, temperature, queue_size, num_classes
        self.queues: dict[str, FeatureQueue] = {}
        self._banks: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}  # filled slots, per validation epoch

    def _queue(self, modality: str, device: torch.device) -> FeatureQueue | None:
        queue = self.queues.get(modality)
        if queue is not None and queue.features.device != device:
            with torch.inference_mode(False):  # a queue moved during validation must stay writable
                queue.to(device)
        return queue

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        rows = self.training_rows(outputs, batch)
        if rows is not None:
            self.push(*rows)

    def push(self, features: dict[str, torch.Tensor], labels: torch.Tensor) -> None:
        for modality, x in features.items():
            if modality not in self.queues:
                self.queues[modality] = FeatureQueue(self.queue_size, x.shape[1]).to(x.device)
            self._queue(modality, x.device).push(x, labels)

    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_validation_epoch_start(trainer, pl_module)
        self._banks = {m: q.filled() for m in self.modalities if (q := self._queue(m, pl_module.device)) is not None}

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_validation_epoch_end(trainer, pl_module)
        self._banks = {}

    @torch.no_grad()
    def predict(self, modality: str, features: torch.Tensor) -> torch.Tensor | None:
        if modality in self._banks:
            bank, labels = self._banks[modality]
        elif (queue := self._queue(modality, features.device)) is not None:
            bank, labels = queue.filled()
        else:
            return None
        if labels.numel() == 0:
            return None
        num_classes = self.num_classes or int(labels.max()) + 1
        return knn_vote(features, bank, labels, num_classes, self.k, self.temperature)

    def state_dict(self) -> dict[str, Any]:
        return {modality: queue.state_dict() for modality, queue in self.queues.items()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.queues = {}
        for modality, state in state_dict.items():
            if modality not in self.modalities:
                continue
            queue = FeatureQueue(*state["features"].shape)
            queue.load_state_dict(state)
            self.queues[modality] = queue


def build_monitors(config: MonitorsConfig, shards: str | Path, seed: int = 0) -> list[pl.Callback]:
    """The recipe's ``monitors`` section → callbacks. The number of classes is
    ``monitors.num_classes`` when set, else the number of class names in the manifest;
    without either the linear probe is off (and says so), the kNN votes over the labels
    it has seen."""
    callbacks: list[pl.Callback] = []
    num_classes = config.num_classes
    if num_classes is None:
        classes = manifest_classes(shards)
        num_classes = len(classes) if classes else None
    if config.linear_probe:
        if num_classes is None:
            rank_zero_info("online linear: monitors.num_classes is unset and the manifest lists no class names: "
                           "the linear probe is off")
        else:
            callbacks.append(OnlineLinearProbe(num_classes, config.modalities, lr=config.lr, seed=seed))
    if config.knn:
        callbacks.append(OnlineKNN(config.modalities, k=config.knn_k, temperature=config.knn_temperature,
                                   queue_size=config.queue_size, num_classes=num_classes))
    return callbacks
