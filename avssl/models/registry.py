"""Name → builder registry of encoders, and the one way to build them from a config.

A recipe names an encoder as ``{"name": "small3d", **kwargs}`` under
``model.video_encoder`` / ``model.audio_encoder``; tasks and :func:`avssl.load_pretrained`
both go through :func:`build_encoders`, so a checkpoint and its export always agree.
"""
from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

from avssl.models import audio, video, vit
from avssl.models.base import Encoder

VIDEO_ENCODERS: dict[str, Callable[..., Encoder]] = {
    "r2plus1d_18": video.r2plus1d_18,
    "r3d_18": video.r3d_18,
    "mc3_18": video.mc3_18,
    "small3d": video.small3d,
    "vit_tiny": vit.vit_tiny,
    "vit_small": vit.vit_small,
    "vit_base": vit.vit_base,
}

AUDIO_ENCODERS: dict[str, Callable[..., Encoder]] = {
    "avid_conv2d": audio.avid_conv2d,
    "resnet18": audio.resnet18,
    "small2d": audio.small2d,
    "ast_tiny": vit.ast_tiny,
    "ast_small": vit.ast_small,
    "ast_base": vit.ast_base,
    "wat_tiny": vit.wat_tiny,
    "wat_base": vit.wat_base,
}


def _build(kind: str, registry: Mapping[str, Callable[..., Encoder]], name: str, kwargs: dict[str, Any]) -> Encoder:
    if not isinstance(name, str) or name not in registry:
        raise ValueError(f"unknown {kind} encoder {name!r}; known {kind} encoders: {sorted(registry)}")
    builder = registry[name]
    accepted = inspect.signature(builder).parameters
    unknown = sorted(k for k in kwargs if k not in accepted)
    if unknown:
        raise TypeError(
            f"{kind} encoder {name!r} got unknown argument(s) {unknown}; it accepts {sorted(accepted)}"
        )
    return builder(**kwargs)


def build_video_encoder(name: str, **kwargs: Any) -> Encoder:
    """A randomly initialised video encoder (B×3×T×H×W → B×D) by registry name."""
    return _build("video", VIDEO_ENCODERS, name, kwargs)


def build_audio_encoder(name: str, **kwargs: Any) -> Encoder:
    """A randomly initialised audio encoder (B×1×F×T → B×D) by registry name."""
    return _build("audio", AUDIO_ENCODERS, name, kwargs)


class Encoders(NamedTuple):
    video_encoder: Encoder | None
    audio_encoder: Encoder | None


def _plain(config: Any) -> Any:
    """OmegaConf containers → plain dicts/lists; anything else unchanged."""
    try:
        from omegaconf import OmegaConf
    except ImportError:  # pragma: no cover - omegaconf is a dependency
        return config
    if OmegaConf.is_config(config):
        return OmegaConf.to_container(config, resolve=True)
    return config


def encoder_spec(entry: Any, key: str) -> tuple[str, dict[str, Any]] | None:
    """``{"name": ..., **kwargs}`` → ``(name, kwargs)``; ``None`` (no encoder) stays None."""
    entry = _plain(entry)
    if entry is None:
        return None
    if not isinstance(entry, Mapping) or "name" not in entry:
        raise ValueError(f"model.{key} must be a mapping with a 'name' key (or null), got {entry!r}")
    kwargs = {k: _plain(v) for k, v in entry.items() if k != "name"}
    return entry["name"], kwargs


def build_encoders(model_config: Mapping[str, Any]) -> Encoders:
    """Build ``(video_encoder, audio_encoder)`` from a recipe's ``model`` section.

    ``model_config["video_encoder"]`` / ``["audio_encoder"]`` are ``{"name": ..., **kwargs}``;
    a missing or null entry gives ``None`` (single-modality tasks).
    """
    model_config = _plain(model_config)
    if not isinstance(model_config, Mapping):
        raise ValueError(f"the model config must be a mapping, got {type(model_config).__name__}")
    built = []
    for key, build in (("video_encoder", build_video_encoder), ("audio_encoder", build_audio_encoder)):
        spec = encoder_spec(model_config.get(key), key)
        built.append(None if spec is None else build(spec[0], **spec[1]))
    return Encoders(*built)
