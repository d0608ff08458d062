"""SAM 2's FPN neck: the trunk's four stage outputs -> three 256-channel feature maps.

Each level gets a 1x1 lateral convolution to `d_model` channels; only the levels in
`top_down_levels` (the official configs: the two coarsest) also add the nearest-neighbour 2x
upsampling of the level below them in resolution. The coarsest level (stride 32) is then
dropped (the official `scalp=1`), leaving strides 4, 8 and 16. The official neck also makes
sine position encodings of each level; only the video memory uses them, so they are not made
here (they have no weights).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class FpnNeck(nn.Module):
    """Stage outputs finest first (channels `backbone_channel_list` reversed) -> feature maps
    Bx`d_model`x(S/4)x(S/4), x(S/8)x(S/8), x(S/16)x(S/16) (the stride-32 level scalped).
    `convs.0` is the coarsest level's lateral, as the official neck numbers them."""

    def __init__(self, d_model: int, backbone_channel_list: list[int],
                 top_down_levels: tuple[int, ...] = (2, 3), scalp: int = 1) -> None:
        super().__init__()
        self.d_model = d_model
        self.backbone_channel_list = list(backbone_channel_list)
        self.top_down_levels = tuple(top_down_levels)
        self.scalp = scalp
        self.convs = nn.ModuleList()
        for dim in backbone_channel_list:
            lateral = nn.Sequential()
            lateral.add_module("conv", nn.Conv2d(dim, d_model, kernel_size=1))
            self.convs.append(lateral)

    def forward(self, xs: list[torch.Tensor]) -> list[torch.Tensor]:
        if len(xs) != len(self.convs):
            raise ValueError(f"expected {len(self.convs)} feature maps, got {len(xs)}")
        n = len(xs) - 1
        out: list[torch.Tensor] = [xs[0]] * len(xs)
        prev = None
        for i in range(n, -1, -1):  # coarse to fine
            lateral = self.convs[n - i](xs[i])
            if i in self.top_down_levels and prev is not None:
                # float32 upsampling, as the official neck (under autocast the sum is float32)
                prev = lateral + F.interpolate(prev.float(), scale_factor=2.0, mode="nearest")
            else:
                prev = lateral
            out[i] = prev
        return out[: len(out) - self.scalp] if self.scalp else out


class ImageEncoder(nn.Module):
    """Hiera trunk + FPN neck: normalised Bx3xSxS -> [Bx256x(S/4)^2, Bx256x(S/8)^2,
    Bx256x(S/16)^2] (module names `trunk`, `neck` as the official `ImageEncoder`)."""

    def __init__(self, trunk: nn.Module, neck: FpnNeck) -> None:
        super().__init__()
        if list(trunk.channel_list) != neck.backbone_channel_list:
            raise ValueError(f"expected the neck's channels {neck.backbone_channel_list} to "
                             f"equal the trunk's, got {list(trunk.channel_list)}")
        self.trunk = trunk
        self.neck = neck

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.neck(self.trunk(x))
