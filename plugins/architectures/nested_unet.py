"""``nested-unet``: a light UNet++ (nested, densely connected skips) with two task heads.

UNet++ replaces each plain skip with a column of intermediate nodes, so the
decoder sees features fused at every scale; it is the usual choice when mask
boundaries are what a loss is judged on. "Light": narrow widths, one conv per
node and the nested grid shared by both tasks, which then part in a small
head each (a 3x3 conv and a 1x1 projection), so its cost stays within a few
times the default ``unet``.

Node ``X[i][j]`` (level ``i``, column ``j``) convolves the concatenation of
``X[i][0..j-1]`` and the 2x up-conv of ``X[i+1][j-1]``; ``X[i][0]`` is the encoder.
"""

from __future__ import annotations

import torch
from torch import nn

from losslab.plugins.architectures.blocks import (
    IN_CHANNELS,
    ConvBNReLU,
    Head,
    check_depth_output,
    check_input,
    crop,
    init_weights,
    pad_to_multiple,
)


class NestedUNet(nn.Module):
    """UNet++ grid of ``depth + 1`` levels, shared by a mask head and a depth head.

    Args:
        base_channels: width at full resolution; level ``i`` has ``base_channels * 2**i``.
        depth: number of 2x downsamplings; the network's stride is ``2**depth``.
        channels_last: compute in channels_last memory format (faster on CPU; same result).
        depth_output: ``"linear"``, ``"log"`` (exp of a log-depth prediction) or ``"inverse"`` (see ``unet``).

    Shape:
        input ``(B, 6, H, W)`` float, any H and W; output ``{"mask": (B, 1, H, W)
        logits, "depth": (B, 1, H, W)}``.
    """

    def __init__(self, base_channels: int = 8, depth: int = 3, channels_last: bool = True,
                 depth_output: str = "linear") -> None:
        super().__init__()
        if base_channels < 1 or depth < 1:
            raise ValueError(
                f"nested-unet: base_channels and depth must be at least 1, got "
                f"base_channels={base_channels}, depth={depth}"
            )
        self.depth = depth
        self.stride = 2**depth
        self.channels_last = channels_last
        w = [base_channels * 2**i for i in range(depth + 1)]
        self.encoder = nn.ModuleList(
            [ConvBNReLU(IN_CHANNELS, w[0])]
            + [ConvBNReLU(w[i - 1], w[i], stride=2) for i in range(1, depth + 1)]
        )
        # node (i, j), j >= 1, exists for i + j <= depth; keys are "i_j" (ModuleDict needs strings)
        self.ups = nn.ModuleDict()
        self.nodes = nn.ModuleDict()
        for j in range(1, depth + 1):
            for i in range(depth + 1 - j):
                self.ups[f"{i}_{j}"] = nn.ConvTranspose2d(w[i + 1], w[i], 2, stride=2)
                self.nodes[f"{i}_{j}"] = ConvBNReLU((j + 1) * w[i], w[i])
        self.mask_head = nn.Sequential(ConvBNReLU(w[0], w[0]), Head(w[0]))
        self.depth_head = nn.Sequential(ConvBNReLU(w[0], w[0]), Head(w[0], check_depth_output(depth_output,
                                                                                               "nested-unet")))
        init_weights(self)

    def shared_parameters(self) -> list[nn.Parameter]:
        """The parameters both tasks train (encoder and nested nodes; only the two heads are per task).

        Gradient-based weightings combine the tasks' gradients on these.
        """
        return [*self.encoder.parameters(), *self.ups.parameters(), *self.nodes.parameters()]

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        check_input(x, "nested-unet")
        x, hw = pad_to_multiple(x, self.stride)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        grid: list[list[torch.Tensor]] = []
        for stage in self.encoder:
            x = stage(x)
            grid.append([x])
        for j in range(1, self.depth + 1):
            for i in range(self.depth + 1 - j):
                up = self.ups[f"{i}_{j}"](grid[i + 1][j - 1])
                grid[i].append(self.nodes[f"{i}_{j}"](torch.cat([*grid[i][:j], up], dim=1)))
        top = grid[0][self.depth]
        return {"mask": crop(self.mask_head(top), hw), "depth": crop(self.depth_head(top), hw)}
