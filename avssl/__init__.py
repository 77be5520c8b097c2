"""avssl: self-supervised audio-visual pretraining on PyTorch Lightning.

``avssl.load_pretrained(folder)`` reads encoders exported by ``avssl export``. It is
imported on first use, so that ``import avssl`` (and ``avssl --help``) stays instant.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from avssl.export import PretrainedEncoders, export_checkpoint, load_pretrained

__all__ = ["PretrainedEncoders", "export_checkpoint", "load_pretrained"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from avssl import export

        return getattr(export, name)
    raise AttributeError(f"module 'avssl' has no attribute {name!r}")
