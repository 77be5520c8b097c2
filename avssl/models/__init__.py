"""Video and audio encoders, projection heads, and the name → builder registry.

No Lightning here: an encoder is a plain ``nn.Module`` that exports as it is.
"""
from avssl.models.base import Encoder, global_pool
from avssl.models.heads import MLP
from avssl.models.registry import (
    AUDIO_ENCODERS,
    VIDEO_ENCODERS,
    Encoders,
    build_audio_encoder,
    build_encoders,
    build_video_encoder,
)

__all__ = [
    "AUDIO_ENCODERS",
    "VIDEO_ENCODERS",
    "MLP",
    "Encoder",
    "Encoders",
    "build_audio_encoder",
    "build_encoders",
    "build_video_encoder",
    "global_pool",
]
