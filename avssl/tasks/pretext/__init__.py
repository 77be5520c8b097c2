"""Pretext methods by recipe name (``task.name``)."""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from avssl.errors import RecipeError
from avssl.tasks.pretext.avc import AVC
from avssl.tasks.pretext.avenet import AVENet
from avssl.tasks.pretext.avid_cma import AVIDCMA
from avssl.tasks.pretext.avts import AVTS
from avssl.tasks.pretext.base import PretextRecipe, PretextTask
from avssl.tasks.pretext.cav_mae import CAVMAE
from avssl.tasks.pretext.lvs import LVS
from avssl.tasks.pretext.robust_xid import RobustXID
from avssl.tasks.pretext.selavi import SeLaVi
from avssl.tasks.pretext.vatt import VATT
from avssl.tasks.pretext.xdc import XDC

PRETEXT_TASKS: dict[str, type[PretextTask]] = {"avc": AVC, "avts": AVTS, "avid_cma": AVIDCMA, "selavi": SeLaVi,
                                              "xdc": XDC, "avenet": AVENet, "lvs": LVS, "vatt": VATT,
                                              "cav_mae": CAVMAE, "robust_xid": RobustXID}
# former names, still read from recipes and checkpoints
PRETEXT_ALIASES: dict[str, str] = {"avid": "avid_cma"}


def pretext_class(name: Any) -> type[PretextTask]:
    """The method a ``task.name`` names (a former name included)."""
    name = PRETEXT_ALIASES.get(name, name) if isinstance(name, str) else name
    if name not in PRETEXT_TASKS:
        raise RecipeError(f"task.name must be one of {sorted(PRETEXT_TASKS)}, got {name!r}")
    return PRETEXT_TASKS[name]


def read_pretext_recipe(config: DictConfig | Mapping[str, Any]) -> PretextRecipe:
    """A pretraining recipe (``load_recipe``'s, or a checkpoint's plain dict) read once, its
    ``task`` section against the schema of the method it names."""
    return PretextRecipe.read(config, pretext_class((config.get("task") or {}).get("name")).config_class)


def build_pretext_task(config: PretextRecipe | DictConfig | Mapping[str, Any]) -> PretextTask:
    """The task of a recipe read once (or of a recipe, read here)."""
    recipe = config if isinstance(config, PretextRecipe) else read_pretext_recipe(config)
    return pretext_class(recipe.task.name)(recipe)


def load_pretext_task(checkpoint: str | Path) -> PretextTask:
    """A trained pretext task (encoders, heads, state) from its Lightning checkpoint, rebuilt
    from the recipe the checkpoint carries; in eval mode."""
    from avssl.export import checkpoint_recipe, load_checkpoint, load_state_strict

    path = Path(checkpoint)
    ckpt = load_checkpoint(path)  # weights_only=True: a file that needs pickle is refused
    task = build_pretext_task(checkpoint_recipe(ckpt, path))
    # as Lightning does before the weights (a smoke run's checkpoint is refused for a real recipe and vice versa)
    task.on_load_checkpoint(ckpt)
    load_state_strict(task, ckpt["state_dict"], str(path))
    return task.eval()
