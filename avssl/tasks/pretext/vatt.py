"""VATT, audio–video only ("VATT: Transformers for Multimodal Self-Supervised Learning from Raw
Video, Audio and Text", Akbari et al., NeurIPS 2021; the text tower and MIL-NCE are left out).

Modality-specific transformers (``model.video_encoder: vit_*``, ``model.audio_encoder:
ast_*`` or ``wat_*``) see, in training, the tokens DropToken keeps (§3.3: half of them, one
random choice of positions for the whole batch); each pooled output goes through its own
projection head into a common space where an in-batch NCE pairs each clip's video with its
audio (§3.2, the video–audio term of Eq. 2: temperature 0.07, negatives from the global
batch, gathered over ranks). Evaluation feeds every token.

The exported encoders are the modality-specific transformers, pooled by the mean of their
final tokens (the Encoder contract; VATT reads an aggregation token instead).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from avssl.data.views import AUDIO, VIDEO
from avssl.distributed import gather_with_grad
from avssl.losses.masking import DROP_TOKEN_RATE, drop_tokens
from avssl.losses.nce import cross_modal_info_nce
from avssl.models.heads import MLP
from avssl.models.vit import VisionTransformer
from avssl.tasks.pretext.base import PretextRecipe, PretextTask, TaskConfig

#: VATT's NCE temperature (§4.1, "τ = 0.07") and the common video–audio space (d_va = 512).
VATT_TEMPERATURE = 0.07
VATT_COMMON_DIM = 512


@dataclass
class VATTConfig(TaskConfig):
    name: str = "vatt"
    optimizer: Literal["adam", "adamw", "sgd"] = "adam"
    drop_token_rate: float = DROP_TOKEN_RATE  # 0: every token in training too
    embedding_dim: int = VATT_COMMON_DIM  # the common video–audio space
    projection_hidden: int = 0  # 0: VATT's linear projections; > 0: MLP [D, hidden, embedding_dim]
    # none: the paper's heads. batchnorm: BatchNorm1d on the pooled output before the head
    # and, for an MLP, in its hidden layer (docs/methods/vatt.md)
    projection_norm: Literal["none", "batchnorm"] = "none"
    temperature: float = VATT_TEMPERATURE

    def __post_init__(self) -> None:
        if not 0.0 <= self.drop_token_rate < 1.0:
            raise ValueError(f"task.drop_token_rate must lie in [0, 1), got {self.drop_token_rate}")


def vatt_projection(dim: int, cfg: VATTConfig) -> nn.Module:
    """The head of one modality into the common space."""
    batchnorm = cfg.projection_norm == "batchnorm"
    head = (nn.Linear(dim, cfg.embedding_dim) if cfg.projection_hidden == 0
            else MLP([dim, cfg.projection_hidden, cfg.embedding_dim], batchnorm=batchnorm))
    return nn.Sequential(nn.BatchNorm1d(dim), head) if batchnorm else head


def require_transformers(task: PretextTask) -> None:
    """Token-level methods need the ViT encoders (embed / encode / pool_tokens)."""
    for key, encoder in (("video_encoder", task.video_encoder), ("audio_encoder", task.audio_encoder)):
        if not isinstance(encoder, VisionTransformer):
            raise ValueError(f"{type(task).__name__} needs a transformer model.{key} (vit_*, ast_*, wat_*), "
                             f"got {type(encoder).__name__}")


class VATT(PretextTask):
    config_class = VATTConfig

    def __init__(self, recipe: PretextRecipe | dict) -> None:
        super().__init__(recipe)
        self.require_both_encoders()
        require_transformers(self)
        cfg: VATTConfig = self.task_config
        self.video_head = vatt_projection(self.video_encoder.embedding_dim, cfg)
        self.audio_head = vatt_projection(self.audio_encoder.embedding_dim, cfg)

    def _generator(self) -> torch.Generator:
        """DropToken's draw: seeded by (seed, global step), the same on every rank."""
        return torch.Generator().manual_seed(self.seed * 1_000_003 + int(self.global_step))

    def pooled_dropped(self, encoder: VisionTransformer, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """The pooled output of the tokens DropToken keeps (all of them at rate 0)."""
        tokens, _ = encoder.embed(x)
        rate = self.task_config.drop_token_rate
        if rate > 0:
            tokens = drop_tokens(tokens, rate, generator).kept
        return encoder.pool_tokens(encoder.encode(tokens))

    def pair_scores(self, video_features: torch.Tensor, audio_features: torch.Tensor) -> torch.Tensor:
        """Cosine similarity in the common space of the NCE."""
        return F.cosine_similarity(self.video_head(video_features), self.audio_head(audio_features), dim=-1)

    def nce(self, video: torch.Tensor, audio: torch.Tensor) -> torch.Tensor:
        """Symmetric in-batch NCE of this rank's projections against the global batch."""
        v = gather_with_grad(F.normalize(video, dim=-1))
        a = gather_with_grad(F.normalize(audio, dim=-1))
        return cross_modal_info_nce(v, a, self.task_config.temperature)

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> dict:
        generator = self._generator()
        video_features = self.pooled_dropped(self.video_encoder, batch[VIDEO], generator)
        audio_features = self.pooled_dropped(self.audio_encoder, batch[AUDIO], generator)
        loss = self.nce(self.video_head(video_features), self.audio_head(audio_features))
        size = video_features.shape[0]
        self.log("train/loss", loss, prog_bar=True, on_epoch=True, batch_size=size)
        self.log_skipped(batch, "train")
        return {"loss": loss, "terms": {"nce": loss.detach()},
                "embeddings": {"video": video_features.detach(), "audio": audio_features.detach()}}

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> dict:
        return self.in_batch_retrieval_validation(batch, self.video_head, self.audio_head)
