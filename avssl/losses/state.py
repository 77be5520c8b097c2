"""Checkpoints of state that moved: a piece of a task's state (a bank, a positive set) that
became a submodule has new state-dict keys; a load pre-hook reads the former ones as the new."""
from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from torch import nn


def load_former_keys(renames: Mapping[str, str]) -> Callable[..., None]:
    """A pre-hook for ``module.register_load_state_dict_pre_hook``: each former key (relative
    to the module) in a state dict is loaded as its new key, so checkpoints written before the
    move load (strictly) into the new layout."""
    def hook(module: nn.Module, state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
        for former, new in renames.items():
            if prefix + former in state_dict:
                state_dict[prefix + new] = state_dict.pop(prefix + former)
    return hook
