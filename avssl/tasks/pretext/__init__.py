"""Pretext methods by recipe name (``task.name``)."""
from __future__ import annotations

from typing import Any

from avssl.tasks.pretext.avc import AVC
from avssl.tasks.pretext.avid import AVID
from avssl.tasks.pretext.avts import AVTS
from avssl.tasks.pretext.base import PretextTask
from avssl.tasks.pretext.selavi import SeLaVi

PRETEXT_TASKS: dict[str, type[PretextTask]] = {"avc": AVC, "avts": AVTS, "avid": AVID, "selavi": SeLaVi}


def build_pretext_task(config: dict[str, Any]) -> PretextTask:
    name = (config.get("task") or {}).get("name")
    if name not in PRETEXT_TASKS:
        raise ValueError(f"task.name must be one of {sorted(PRETEXT_TASKS)}, got {name!r}")
    return PRETEXT_TASKS[name](config)
