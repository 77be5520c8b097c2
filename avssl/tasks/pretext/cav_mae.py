"""CAV-MAE ("Contrastive Audio-Visual Masked Autoencoder", Gong et al., ICLR 2023, §2.3–2.4).

Each modality's patches (``model.video_encoder: vit_*`` on frames, ``model.audio_encoder:
ast_*`` on the log-mel) get their position embedding, 75 % of them are masked per sample
(MAE's random masking), and the kept ones go through the modality-specific transformer. Then
``task.joint_depth`` joint layers, shared, run three times as in the official code: on the
audio tokens alone (then ``norm_audio``), on the video tokens alone (``norm_video``) and on
both concatenated (``norm_joint``). The first two, mean-pooled (``task.contrastive_pooling: max``
— not the paper — max-pools them), give the contrastive term
(InfoNCE, temperature 0.05, each video choosing its audio among the global batch's); the
third feeds a lightweight decoder (mask tokens put back in place, sin-cos positions and a
modality embedding, its own blocks, one linear prediction head per modality) that
reconstructs the masked patches against per-patch normalised pixels and log-mel values.
L = 1·(L_r,audio + L_r,video) + 0.01·L_c (``avssl.losses.cav_mae``).

Export: the modality-specific encoders only (their forward pools their own final tokens);
the joint layers and the decoder stay in the task (and its checkpoint). CAV-MAE's
single-modality downstream use reads the modality-specific layers plus the joint layers;
here the exported encoders stop before the joint layers so that they keep the Encoder
contract (docs/methods/cav_mae.md).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from avssl.data.views import AUDIO, VIDEO
from avssl.distributed import gather_with_grad, rank, world_size
from avssl.losses.cav_mae import (
    CONTRASTIVE_WEIGHT,
    DECODER_DEPTH,
    DECODER_DIM,
    DECODER_HEADS,
    RECONSTRUCTION_WEIGHT,
    TEMPERATURE,
    cav_mae_contrastive_loss,
    masked_reconstruction_loss,
    normalised_targets,
)
from avssl.losses.masking import CAV_MAE_MASK_RATIO, MaskedTokens, mask_from_noise, restore_tokens
from avssl.metrics.retrieval import in_batch_retrieval_top1
from avssl.models.base import POOLINGS, pool_tokens
from avssl.models.transformer import init_vit_weights, patchify, sincos_position_embedding, transformer_blocks
from avssl.models.vit import VisionTransformer
from avssl.tasks.pretext.base import PretextRecipe, PretextTask, TaskConfig
from avssl.tasks.pretext.vatt import require_transformers

MODALITIES = ("audio", "video")


@dataclass
class CAVMAEConfig(TaskConfig):
    name: str = "cav_mae"
    mask_ratio: float = CAV_MAE_MASK_RATIO  # of each modality's patches, per sample
    joint_depth: int = 1  # the official model: 11 modality-specific layers, then 1 joint layer
    decoder_dim: int = DECODER_DIM
    decoder_depth: int = DECODER_DEPTH
    decoder_heads: int = DECODER_HEADS
    normalise_targets: bool = True  # per-patch normalised pixels / log-mel (MAE's norm_pix_loss)
    reconstruction_weight: float = RECONSTRUCTION_WEIGHT
    contrastive_weight: float = CONTRASTIVE_WEIGHT
    temperature: float = TEMPERATURE
    bidirectional: bool = False  # the official default: video → audio only
    # the contrastive latent: the joint layer's tokens averaged (the paper) or max-pooled (VATT's
    # finding on the synthetic set: averaged, the latents of different clips start nearly parallel)
    contrastive_pooling: str = "avg"

    def __post_init__(self) -> None:
        if not 0.0 < self.mask_ratio < 1.0:
            raise ValueError(f"task.mask_ratio must lie in (0, 1), got {self.mask_ratio}")
        if self.contrastive_pooling not in POOLINGS:
            raise ValueError(f"task.contrastive_pooling must be 'avg' or 'max', got {self.contrastive_pooling!r}")


class MaskedDecoder(nn.Module):
    """CAV-MAE's decoder: encoded kept tokens of both modalities → their masked patches.

    Linear to the decoder width, a learned mask token in every masked place (each modality's
    token order restored), fixed sin-cos positions of each modality's grid plus a learned
    modality embedding, the blocks over both modalities at once, LayerNorm, and one linear
    head per modality to its patch size."""

    def __init__(self, dim: int, decoder_dim: int, depth: int, heads: int, patch_values: dict[str, int]) -> None:
        super().__init__()
        self.decoder_dim = decoder_dim
        self.embed = nn.Linear(dim, decoder_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_dim))
        self.modality = nn.ParameterDict({m: nn.Parameter(torch.zeros(1, 1, decoder_dim)) for m in patch_values})
        self.blocks = transformer_blocks(decoder_dim, depth, heads)
        self.norm = nn.LayerNorm(decoder_dim, eps=1e-6)
        self.heads = nn.ModuleDict({m: nn.Linear(decoder_dim, n) for m, n in patch_values.items()})
        self.apply(init_vit_weights)
        for p in (self.mask_token, *self.modality.values()):
            nn.init.normal_(p, std=0.02)  # as MAE's mask token

    def forward(self, encoded: dict[str, torch.Tensor], masked: dict[str, MaskedTokens],
                grids: dict[str, tuple[int, ...]]) -> dict[str, torch.Tensor]:
        """``encoded[m]``: B×K_m×D tokens in ``masked[m].ids_keep`` order → B×N_m×P_m predictions."""
        parts = []
        for m in encoded:
            tokens = restore_tokens(self.embed(encoded[m]), masked[m].ids_restore, self.mask_token)
            position = sincos_position_embedding(self.decoder_dim, grids[m]).to(tokens)
            parts.append(tokens + position[None] + self.modality[m])
        decoded = self.norm(self.blocks(torch.cat(parts, dim=1)))
        out, start = {}, 0
        for m, part in zip(encoded, parts):
            out[m] = self.heads[m](decoded[:, start:start + part.shape[1]])
            start += part.shape[1]
        return out


class CAVMAE(PretextTask):
    config_class = CAVMAEConfig

    def __init__(self, recipe: PretextRecipe | dict) -> None:
        super().__init__(recipe)
        self.require_both_encoders()
        require_transformers(self)
        cfg: CAVMAEConfig = self.task_config
        dim = self.video_encoder.embedding_dim
        if self.audio_encoder.embedding_dim != dim:
            raise ValueError(f"CAV-MAE's joint layers need encoders of one width, got video {dim} and audio "
                             f"{self.audio_encoder.embedding_dim}")
        heads = self.video_encoder.blocks[0].attn.heads
        self.joint = transformer_blocks(dim, cfg.joint_depth, heads)
        self.joint_norms = nn.ModuleDict({m: nn.LayerNorm(dim, eps=1e-6) for m in (*MODALITIES, "joint")})
        self.joint.apply(init_vit_weights)
        patch_values = {"audio": self.audio_encoder.in_channels * math.prod(self.audio_encoder.patch_size),
                        "video": self.video_encoder.in_channels * math.prod(self.video_encoder.patch_size)}
        self.decoder = MaskedDecoder(dim, cfg.decoder_dim, cfg.decoder_depth, cfg.decoder_heads, patch_values)

    def encoders(self) -> dict[str, VisionTransformer]:
        return {"audio": self.audio_encoder, "video": self.video_encoder}

    def _generator(self, offset: int = 0) -> torch.Generator:
        """Masking draws: seeded by (seed, global step) in training, (seed, batch) in validation;
        the same on every rank."""
        return torch.Generator().manual_seed(self.seed * 1_000_003 + offset)

    def masked_forward(self, batch: dict[str, torch.Tensor], generator: torch.Generator) -> dict:
        """Everything the losses need: per modality the encoded kept tokens, the contrastive
        latent (joint layers on that modality alone, pooled), the masking, the input patches and
        the decoder's predictions."""
        inputs = {"audio": batch[AUDIO], "video": batch[VIDEO]}
        encoded, masked, grids, pooled = {}, {}, {}, {}
        for m, encoder in self.encoders().items():  # audio first, as the official code
            tokens, grids[m] = encoder.embed(inputs[m])
            # noise for the global batch, this rank's rows: N ranks × B clips mask as one process with N·B
            b, n = tokens.shape[:2]
            noise = torch.rand(b * world_size(), n, generator=generator)[b * rank():b * (rank() + 1)]
            masked[m] = mask_from_noise(tokens, noise.to(tokens.device), self.task_config.mask_ratio)
            encoded[m] = encoder.encode(masked[m].kept)
            pooled[m] = pool_tokens(self.joint_norms[m](self.joint(encoded[m])), self.task_config.contrastive_pooling)
        joint = self.joint_norms["joint"](self.joint(torch.cat([encoded["audio"], encoded["video"]], dim=1)))
        split = encoded["audio"].shape[1]
        predictions = self.decoder({"audio": joint[:, :split], "video": joint[:, split:]}, masked, grids)
        patches = {m: patchify(inputs[m], enc.patch_size) for m, enc in self.encoders().items()}
        return {"encoded": encoded, "pooled": pooled, "masked": masked, "patches": patches,
                "predictions": predictions}

    def losses(self, out: dict) -> dict[str, torch.Tensor]:
        """The reconstruction of each modality's masked patches and the contrastive term (over
        the global batch)."""
        cfg: CAVMAEConfig = self.task_config
        terms = {f"reconstruction_{m}": masked_reconstruction_loss(out["predictions"][m], out["patches"][m],
                                                                   out["masked"][m].mask, cfg.normalise_targets)
                 for m in MODALITIES}
        terms["contrastive"] = cav_mae_contrastive_loss(gather_with_grad(out["pooled"]["video"]),
                                                        gather_with_grad(out["pooled"]["audio"]),
                                                        cfg.temperature, cfg.bidirectional)
        return terms

    def total(self, terms: dict[str, torch.Tensor]) -> torch.Tensor:
        cfg: CAVMAEConfig = self.task_config
        return (cfg.reconstruction_weight * (terms["reconstruction_audio"] + terms["reconstruction_video"])
                + cfg.contrastive_weight * terms["contrastive"])

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> dict:
        out = self.masked_forward(batch, self._generator(int(self.global_step)))
        terms = self.losses(out)
        loss = self.total(terms)
        size = batch[VIDEO].shape[0]
        self.log("train/loss", loss, prog_bar=True, on_epoch=True, batch_size=size)
        for name, value in terms.items():
            self.log(f"train/{name}", value, on_epoch=True, batch_size=size)
        self.log_skipped(batch, "train")
        embeddings = {m: self.encoders()[m].pool_tokens(out["encoded"][m]).detach() for m in MODALITIES}
        return {"loss": loss, "terms": {k: t.detach() for k, t in terms.items()}, "embeddings": embeddings}

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> dict:
        """The masked-patch reconstruction error beside that of predicting each patch's mean
        (in the target space: 0 for normalised targets), and retrieval on every token."""
        cfg: CAVMAEConfig = self.task_config
        out = self.masked_forward(batch, self._generator(10_000_019 + batch_idx))
        size = batch[VIDEO].shape[0]
        errors, baselines = {}, {}
        for m in MODALITIES:
            patches, mask = out["patches"][m], out["masked"][m].mask
            target = normalised_targets(patches) if cfg.normalise_targets else patches
            errors[m] = masked_reconstruction_loss(out["predictions"][m], patches, mask, cfg.normalise_targets)
            baselines[m] = masked_reconstruction_loss(target.mean(-1, keepdim=True).expand_as(target), patches,
                                                      mask, cfg.normalise_targets)
            self.log(f"val/reconstruction_{m}", errors[m], sync_dist=True, batch_size=size)
            self.log(f"val/patch_mean_{m}", baselines[m], sync_dist=True, batch_size=size)
        self.log("val/reconstruction_ratio", sum(errors.values()) / sum(baselines.values()), prog_bar=True,
                 sync_dist=True, batch_size=size)
        features, latents = {}, {}
        for m, encoder in self.encoders().items():
            tokens = encoder.encode(encoder.embed(batch[AUDIO if m == "audio" else VIDEO])[0])
            features[m] = encoder.pool_tokens(tokens)
            latents[m] = self.joint_norms[m](self.joint(tokens)).mean(dim=1)
        self.log("val/retrieval_top1", in_batch_retrieval_top1(latents["video"], latents["audio"]),
                 sync_dist=True, batch_size=size)
        self.log_skipped(batch, "val")
        return {"embeddings": features}

