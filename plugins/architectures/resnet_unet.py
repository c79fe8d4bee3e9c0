"""``resnet-unet``: a ResNet-style encoder (basic residual blocks) with two UNet decoders.

The residual encoder is the usual next step up from a plain UNet when a loss
needs a deeper, easier-to-optimise feature extractor; everything is written
here (no torchvision, no downloaded weights), so every variant starts from
the same seeded initialisation. The decoders are the ``unet`` ones, so a
comparison between the two architectures isolates the encoder.
"""

from __future__ import annotations

import torch
from torch import nn

from losslab.plugins.architectures.blocks import (
    IN_CHANNELS,
    BasicBlock,
    ConvBNReLU,
    check_depth_output,
    check_input,
    crop,
    init_weights,
    pad_to_multiple,
)
from losslab.plugins.architectures.unet import Merge, UNetDecoder


class ResNetUNet(nn.Module):
    """A stem conv, then ``depth`` stages of basic residual blocks (the first of each with stride 2).

    Args:
        base_channels: width of the stem (full resolution); stage ``i`` has ``base_channels * 2**i``.
        depth: number of stride-2 stages; the network's stride is ``2**depth``.
        blocks_per_stage: basic residual blocks per encoder stage (ResNet-18 uses 2).
        merge: decoder skip merge, ``"add"`` or ``"concat"`` (see ``unet``).
        channels_last: compute in channels_last memory format (faster on CPU; same result).
        depth_output: ``"linear"``, ``"log"`` (exp of a log-depth prediction) or ``"inverse"`` (see ``unet``).

    Shape:
        input ``(B, 6, H, W)`` float, any H and W; output ``{"mask": (B, 1, H, W)
        logits, "depth": (B, 1, H, W)}``.
    """

    def __init__(
        self,
        base_channels: int = 8,
        depth: int = 3,
        blocks_per_stage: int = 2,
        merge: Merge = "add",
        channels_last: bool = True,
        depth_output: str = "linear",
    ) -> None:
        super().__init__()
        if base_channels < 1 or depth < 1 or blocks_per_stage < 1:
            raise ValueError(
                f"resnet-unet: base_channels, depth and blocks_per_stage must be at least 1, got "
                f"base_channels={base_channels}, depth={depth}, blocks_per_stage={blocks_per_stage}"
            )
        if merge not in ("add", "concat"):
            raise ValueError(f"resnet-unet: merge must be 'add' or 'concat', got {merge!r}")
        self.stride = 2**depth
        self.channels_last = channels_last
        widths = [base_channels * 2**i for i in range(depth + 1)]
        stages: list[nn.Module] = [ConvBNReLU(IN_CHANNELS, widths[0])]
        for i in range(1, depth + 1):
            blocks = [BasicBlock(widths[i - 1], widths[i], stride=2)]
            blocks += [BasicBlock(widths[i], widths[i]) for _ in range(blocks_per_stage - 1)]
            stages.append(nn.Sequential(*blocks))
        self.encoder = nn.ModuleList(stages)
        self.mask_decoder = UNetDecoder(widths, 1, merge)
        self.depth_decoder = UNetDecoder(widths, 1, merge, check_depth_output(depth_output, "resnet-unet"))
        init_weights(self)

    def shared_parameters(self) -> list[nn.Parameter]:
        """The parameters both tasks train (the encoder, whose features both decoders read).

        Gradient-based weightings combine the tasks' gradients on these.
        """
        return list(self.encoder.parameters())

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        check_input(x, "resnet-unet")
        x, hw = pad_to_multiple(x, self.stride)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        feats = []
        for stage in self.encoder:
            x = stage(x)
            feats.append(x)
        return {"mask": crop(self.mask_decoder(feats), hw), "depth": crop(self.depth_decoder(feats), hw)}
