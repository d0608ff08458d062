"""Small layers of the SAM 2 modules."""

from __future__ import annotations

import torch
from torch import nn


class MLP(nn.Module):
    """`num_layers` linear layers (`layers.i`) with `act` between them, optionally a sigmoid on
    the output: ...xIn -> ...xOut. SAM 2 uses it everywhere SAM 1 had two kinds of MLP (the
    trunk with GELU, the decoder's with ReLU), hence keys `mlp.layers.0` rather than
    `mlp.lin1`."""

    def __init__(self, input_dim: int, hidden_dim: int, output_dim: int, num_layers: int,
                 act: type[nn.Module] = nn.ReLU, sigmoid_output: bool = False) -> None:
        super().__init__()
        dims_in = [input_dim] + [hidden_dim] * (num_layers - 1)
        dims_out = [hidden_dim] * (num_layers - 1) + [output_dim]
        self.layers = nn.ModuleList(nn.Linear(i, o) for i, o in zip(dims_in, dims_out, strict=True))
        self.act = act()
        self.sigmoid_output = sigmoid_output

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < last:
                x = self.act(x)
        return torch.sigmoid(x) if self.sigmoid_output else x
