"""Projection heads."""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class MLP(nn.Module):
    """Linear layers ``dims[0] → dims[1] → … → dims[-1]``.

    Every hidden layer is Linear [→ BatchNorm1d] → ReLU; the last layer is a bare Linear
    unless ``last_activation`` (then it gets the same BatchNorm/ReLU). AVID's projection
    head is ``MLP([512, 512, 128])``. Linear layers followed by BatchNorm have no bias.
    """

    def __init__(self, dims: Sequence[int], batchnorm: bool = False, last_activation: bool = False) -> None:
        super().__init__()
        dims = [int(d) for d in dims]
        if len(dims) < 2 or min(dims) < 1:
            raise ValueError(f"dims needs at least an input and an output size, all positive; got {dims}")
        self.dims = dims
        self.in_dim, self.out_dim = dims[0], dims[-1]
        layers: list[nn.Module] = []
        num_layers = len(dims) - 1
        for i, (d_in, d_out) in enumerate(zip(dims[:-1], dims[1:])):
            activated = i < num_layers - 1 or last_activation
            layers.append(nn.Linear(d_in, d_out, bias=not (activated and batchnorm)))
            if activated:
                if batchnorm:
                    layers.append(nn.BatchNorm1d(d_out))
                layers.append(nn.ReLU(inplace=True))
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


def contrastive_projection(dim: int, out_dim: int) -> MLP:
    """``MLP([dim, dim, out_dim])`` with BatchNorm: the projection each modality's pooled features
    go through for an InfoNCE kept beside a method's own loss (AVTS, AVE-Net, SeLaVi's and XDC's
    warm-up), so that its pull stays out of the method's heads."""
    return MLP([dim, dim, out_dim], batchnorm=True)
