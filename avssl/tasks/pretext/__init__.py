"""Pretext methods by recipe name (``task.name``)."""
from __future__ import annotations

from pathlib import Path
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


def load_pretext_task(checkpoint: str | Path) -> PretextTask:
    """A trained pretext task (encoders, heads, state) from its Lightning checkpoint, rebuilt
    from the recipe the checkpoint carries; in eval mode."""
    from avssl.export import checkpoint_recipe as _recipe
    from avssl.export import load_checkpoint
    from avssl.export import load_state_strict as _load_strict

    path = Path(checkpoint)
    ckpt = load_checkpoint(path)  # weights_only=True: a file that needs pickle is refused
    task = build_pretext_task(_recipe(ckpt, path))
    # as Lightning does before the weights: state whose shape training set (CMA's positive sets)
    task.on_load_checkpoint(ckpt)
    _load_strict(task, ckpt["state_dict"], str(path))
    return task.eval()
