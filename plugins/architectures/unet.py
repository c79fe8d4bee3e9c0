"""``unet``: a small UNet with one shared encoder and two decoders (mask logits, depth).

The default network of losslab, sized so that a loss study trains on a laptop
CPU (at 64x64 and batch 32 a forward and backward pass takes tens of
milliseconds on two cores). The encoder is shared because both targets depend
on the same evidence (where bg and fg_bg differ); each task has its own
decoder, so one task's loss does not share the last layers with the other's,
which keeps per-task loss comparisons clean.

Speed choices, measured on a 2-core CPU (see the issue note): each decoder
stage upsamples with a learned 2x2 transposed conv (the original UNet's
"up-conv") and, by default, *adds* the skip instead of concatenating it
(``merge="add"``, as in LinkNet), which halves the decoder's widest convs;
``merge="concat"`` gives the classic UNet. Convolutions run in channels_last
memory format by default, 2-3x faster on CPU for layers this narrow; the
result is the same up to float rounding.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from losslab.plugins.architectures.blocks import (
    IN_CHANNELS,
    ConvBNReLU,
    Head,
    check_depth_output,
    check_input,
    composite_layers,
    crop,
    init_weights,
    pad_to_multiple,
)

Merge = Literal["add", "concat"]


def _stage(cin: int, cout: int, convs: int, stride: int = 1) -> nn.Sequential:
    layers = [ConvBNReLU(cin, cout, stride=stride)]
    layers += [ConvBNReLU(cout, cout) for _ in range(convs - 1)]
    return nn.Sequential(*layers)


class UNetDecoder(nn.Module):
    """From the deepest level back to full resolution: up-conv, merge the skip, convolve; 1x1 head."""

    def __init__(
        self,
        widths: list[int],
        convs: int,
        merge: Merge,
        output: str = "linear",
        extra: int = 0,
        propagate: bool = False,
        channels: int = 1,
    ) -> None:
        super().__init__()
        self.merge = merge
        levels = list(reversed(range(len(widths) - 1)))
        self.ups = nn.ModuleList(nn.ConvTranspose2d(widths[i + 1], widths[i], 2, stride=2) for i in levels)
        factor = 2 if merge == "concat" else 1
        self.stages = nn.ModuleList(_stage(factor * widths[i], widths[i], convs) for i in levels)
        self.head = Head(widths[0] + extra, output, propagate, channels)

    def forward(self, feats: list[torch.Tensor], extra: torch.Tensor | None = None) -> torch.Tensor:
        """``extra``: full-resolution features concatenated with the last stage's before the head."""
        x = feats[-1]
        for up, stage, skip in zip(self.ups, self.stages, reversed(feats[:-1]), strict=True):
            x = up(x)
            x = stage(torch.cat([x, skip], dim=1) if self.merge == "concat" else x + skip)
        return self.head(x if extra is None else torch.cat([x, extra], dim=1))


def coordinate_maps(x: torch.Tensor) -> torch.Tensor:
    """Two channels ``(B, 2, H, W)``: normalized column and row, each from -1 to 1 across the image (CoordConv)."""
    b, _, h, w = x.shape
    ys = torch.linspace(-1.0, 1.0, h, device=x.device, dtype=x.dtype)
    xs = torch.linspace(-1.0, 1.0, w, device=x.device, dtype=x.dtype)
    grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([grid_x, grid_y]).unsqueeze(0).expand(b, 2, h, w)


class UNet(nn.Module):
    """Shared encoder of ``depth`` stride-2 stages and two UNet decoders (mask logits, linear depth).

    Args:
        base_channels: width at full resolution; level ``i`` has ``base_channels * 2**i``.
        depth: number of 2x downsamplings; the network's stride is ``2**depth``.
        convs_per_stage: 3x3 conv+BN+ReLU layers per encoder and decoder stage.
        merge: how a decoder joins its skip: ``"add"`` (light) or ``"concat"`` (classic UNet).
        channels_last: compute in channels_last memory format (faster on CPU; same result).
        difference: also feed the first layer ``fg_bg - bg`` (3 more channels). The mask is
            exactly where the two shots differ, so handing the network the difference
            spares its first layer from learning to subtract; it costs one 3x3 conv's
            input channels and reaches a given IoU in fewer steps.
        depth_output: ``"linear"`` (a plain linear depth), ``"log"`` (the head predicts
            log depth and returns its exp: always positive, as ``silog`` needs) or
            ``"inverse"`` (the head predicts inverse depth and returns depth, positive too:
            on a ground plane the inverse depth is linear in the row, see ``Head``). The
            config check sets ``log`` when a variant's depth loss declares ``positive_depth``.
        coords: also feed the first layer two coordinate maps, the normalized column and row
            (-1 to 1 across the image; CoordConv, Liu et al. 2018). Convolutions are
            translation-equivariant, so without them the net cannot tell the top of the
            image from the bottom except through the padding; on a ground-plane scene the
            depth is mostly a function of the row, which these channels hand over directly.
        mask_path: width of a full-resolution shallow path for the mask (0: none). Three
            3x3 conv+BN+ReLU layers of this width read ``[bg, fg_bg, |fg_bg - bg|]`` at
            full resolution (plus the coordinates with ``coords``) and their features are
            concatenated with the mask decoder's last ones before the mask head. The mask
            is a per-pixel difference test sharpened by a little context; a shallow path
            keeps its boundary at full resolution, which the decoder's upsampled features
            blur. The depth decoder does not read it.
        propagate: the depth head carries values up each column through learned gates
            (:func:`~losslab.plugins.architectures.blocks.propagate_up`, a one-directional spatial
            propagation as in SPN/CSPN): a pixel can take the depth of the pixel below it. Whatever
            stands on the ground (a fg, a wall) is as far away as the ground where it stands, and the
            ground's depth is a function of the row; with the gates open over it, an object's pixels
            read their depth off its contact row instead of guessing it from how the object looks.
        layered: the depth decoder predicts two layers, the fg's depth and the bg's, and the depth
            is their blend by the mask head's probability, detached (the depth loss never trains the
            mask): see :func:`~losslab.plugins.architectures.blocks.composite_layers`. A fg's depth is
            one number while the scene beside and above it is far behind; one smooth map blurs that
            jump over the outline, two layers put it where the mask has it.

    Shape:
        input ``(B, 6, H, W)`` float, any H and W (padded to a multiple of
        ``2**depth`` by edge replication inside, and cropped back); output
        ``{"mask": (B, 1, H, W) logits, "depth": (B, 1, H, W)}``, depth a
        linear output by default (targets are depth / max_depth in [0, 1]).

    Example:
        >>> net = UNet()
        >>> out = net(torch.rand(2, 6, 61, 77))
        >>> tuple(out["mask"].shape), tuple(out["depth"].shape)
        ((2, 1, 61, 77), (2, 1, 61, 77))
    """

    def __init__(
        self,
        base_channels: int = 8,
        depth: int = 3,
        convs_per_stage: int = 1,
        merge: Merge = "add",
        channels_last: bool = True,
        difference: bool = True,
        depth_output: str = "linear",
        coords: bool = False,
        mask_path: int = 0,
        propagate: bool = False,
        layered: bool = False,
    ) -> None:
        super().__init__()
        if base_channels < 1 or depth < 1 or convs_per_stage < 1:
            raise ValueError(
                f"unet: base_channels, depth and convs_per_stage must be at least 1, got "
                f"base_channels={base_channels}, depth={depth}, convs_per_stage={convs_per_stage}"
            )
        if mask_path < 0:
            raise ValueError(f"unet: mask_path must be 0 (no path) or a positive width, got {mask_path}")
        if merge not in ("add", "concat"):
            raise ValueError(f"unet: merge must be 'add' or 'concat', got {merge!r}")
        self.stride = 2**depth
        self.channels_last = channels_last
        self.difference = difference
        self.coords = bool(coords)
        self.in_channels = IN_CHANNELS  # what forward takes; the first conv sees 3 more with ``difference``
        widths = [base_channels * 2**i for i in range(depth + 1)]
        n_coords = 2 if self.coords else 0
        self.encoder = nn.ModuleList(
            [_stage(IN_CHANNELS + (3 if difference else 0) + n_coords, widths[0], convs_per_stage)]
            + [_stage(widths[i - 1], widths[i], convs_per_stage, stride=2) for i in range(1, depth + 1)]
        )
        self.mask_path = (
            nn.Sequential(
                ConvBNReLU(IN_CHANNELS + 3 + n_coords, mask_path),
                ConvBNReLU(mask_path, mask_path),
                ConvBNReLU(mask_path, mask_path),
            )
            if mask_path
            else None
        )
        self.mask_decoder = UNetDecoder(widths, convs_per_stage, merge, extra=mask_path)
        self.depth_decoder = UNetDecoder(
            widths, convs_per_stage, merge, check_depth_output(depth_output, "unet"),
            propagate=propagate, channels=2 if layered else 1,
        )
        self.layered = bool(layered)
        init_weights(self)

    def shared_parameters(self) -> list[nn.Parameter]:
        """The parameters both tasks train (the encoder, whose features both decoders read).

        Gradient-based weightings combine the tasks' gradients on these.
        """
        return list(self.encoder.parameters())

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        check_input(x, "unet")
        coords = coordinate_maps(x) if self.coords else None
        shallow = None
        if self.mask_path is not None:
            parts = [x, (x[:, 3:6] - x[:, 0:3]).abs()] + ([coords] if coords is not None else [])
            shallow = torch.cat(parts, dim=1)
            if self.channels_last:
                shallow = shallow.contiguous(memory_format=torch.channels_last)
            shallow = self.mask_path(shallow)
        if self.difference:
            x = torch.cat([x, x[:, 3:6] - x[:, 0:3]], dim=1)
        if coords is not None:
            x = torch.cat([x, coords], dim=1)
        x, hw = pad_to_multiple(x, self.stride)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        feats = []
        for stage in self.encoder:
            x = stage(x)
            feats.append(x)
        mask = crop(self.mask_decoder(feats), hw) if shallow is None else self._mask_with_path(feats, shallow, hw)
        depth = crop(self.depth_decoder(feats), hw)
        if self.layered:
            depth = composite_layers(depth, mask)
        return {"mask": mask, "depth": depth}

    def _mask_with_path(self, feats: list[torch.Tensor], shallow: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
        """The mask head reads the decoder's last features (padded size) beside the shallow path's (true size)."""
        h, w = hw
        padded = feats[0].shape[-2:]
        if shallow.shape[-2:] != padded:
            shallow = F.pad(shallow, (0, padded[1] - w, 0, padded[0] - h))
        return crop(self.mask_decoder(feats, shallow), hw)
