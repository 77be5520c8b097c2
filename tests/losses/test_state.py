"""A state dict of the former layout (state that moved into a submodule) loads strictly."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from avssl.losses.state import load_former_keys


def test_former_keys_load_into_the_moved_state_and_others_are_untouched() -> None:
    class Moved(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.bank = nn.Module()
            self.bank.register_buffer("slots", torch.zeros(3))
            self.layer = nn.Linear(2, 1)
            self.register_load_state_dict_pre_hook(load_former_keys({"flat_slots": "bank.slots"}))

    model = Moved()
    former = {"flat_slots": torch.tensor([1.0, 2.0, 3.0]), **model.layer.state_dict(prefix="layer.")}
    model.load_state_dict(former, strict=True)
    torch.testing.assert_close(model.bank.slots, torch.tensor([1.0, 2.0, 3.0]))
    outer = nn.Sequential(Moved())  # the prefix of a module inside another
    outer.load_state_dict({"0.flat_slots": torch.ones(3), **{f"0.{k}": v for k, v in model.layer.state_dict(
        prefix="layer.").items()}}, strict=True)
    torch.testing.assert_close(outer[0].bank.slots, torch.ones(3))
    with pytest.raises(RuntimeError, match="Unexpected key"):
        Moved().load_state_dict({**former, "other": torch.zeros(1)}, strict=True)
