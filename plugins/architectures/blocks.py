"""Building blocks shared by the built-in architectures.

Kept in one small module so that the three networks differ only in how they
wire these blocks, which is what a loss study wants to compare: the same
padding rule, the same heads and the same input check everywhere.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

IN_CHANNELS = 6


def check_input(x: torch.Tensor, where: str) -> None:
    """Fail with a message naming the expected shape instead of a conv's shape error deep inside."""
    if x.ndim != 4 or x.shape[1] != IN_CHANNELS:
        raise ValueError(
            f"{where}: expected input of shape (B, {IN_CHANNELS}, H, W) — bg RGB and fg_bg RGB stacked "
            f"on channels — but got {tuple(x.shape)}; build it with torch.cat([bg, fg_bg], dim=1)"
        )
    if not x.is_floating_point():
        raise ValueError(
            f"{where}: expected a float input in [0, 1], got {x.dtype}; convert uint8 with x.float() / 255"
        )


def pad_to_multiple(x: torch.Tensor, multiple: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """Pad right and bottom (replicating the edge) so H and W are multiples of ``multiple``.

    Padding, rather than resizing, keeps every 2x down/up step exactly aligned
    with its skip connection; replicating the edge avoids a false dark border
    that the network would have to learn to ignore. Returns the padded tensor
    and the original (H, W) to crop back to.
    """
    h, w = x.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    if ph or pw:
        x = F.pad(x, (0, pw, 0, ph), mode="replicate")
    return x, (h, w)


def crop(x: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
    """Undo :func:`pad_to_multiple`; the result is contiguous, as a loss may ``view`` it."""
    h, w = hw
    if x.shape[-2:] == (h, w):
        return x
    return x[..., :h, :w].contiguous()


class ConvBNReLU(nn.Sequential):
    """3x3 (or ``kernel``) conv, BatchNorm, ReLU; ``stride=2`` halves the resolution."""

    def __init__(self, cin: int, cout: int, stride: int = 1, kernel: int = 3) -> None:
        super().__init__(
            nn.Conv2d(cin, cout, kernel, stride=stride, padding=kernel // 2, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True),
        )


class BasicBlock(nn.Module):
    """ResNet's basic residual block: two 3x3 conv+BN and a shortcut.

    The shortcut is the identity, or, where the shape changes, a 1x1 conv + BN
    after a 2x2 average pool when striding (the "ResNet-D" shortcut of Bag of
    Tricks, He et al. 2019: it sees every input pixel rather than one in
    four). It also sidesteps a crash in torch 2.13's CPU backward of a 1x1
    stride-2 conv on channels_last inputs with few channels (segfault at 8
    input channels, 64x64), which the plain ResNet shortcut would hit.
    """

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            pool: nn.Module = nn.AvgPool2d(stride) if stride != 1 else nn.Identity()
            self.shortcut = nn.Sequential(pool, nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout))
        # zero-init the last BN's scale: each block starts as the identity, which trains faster
        nn.init.zeros_(self.bn2.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)), inplace=True)
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x), inplace=True)


def upsample_to(x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """Bilinear upsampling of ``x`` to ``ref``'s spatial size."""
    return F.interpolate(x, size=ref.shape[-2:], mode="bilinear", align_corners=False)


DEPTH_OUTPUTS = ("linear", "log", "inverse")

#: The depth outputs that can never reach zero or below (what ``silog`` and ``ssim`` need).
POSITIVE_DEPTH_OUTPUTS = ("log", "inverse")

#: ``log`` heads exponentiate at most this: exp(10) is 22,000 times max_depth, far past any target,
#: and keeps a half-precision forward finite.
_MAX_LOG = 10.0

#: ``inverse`` heads add this to the predicted inverse depth: the depth stays at most 100 times
#: max_depth, and the head's gradient, which grows as 1/inverse**2, stays bounded.
_MIN_INVERSE = 0.01

#: ``inverse`` heads read the conv's output shifted by this: at q = 0 the inverse depth is softplus(4) = 4.02
#: (a quarter of max_depth), and over the targets' range (inverse 1 at max_depth to ~20 near the camera)
#: softplus keeps a slope of at least 0.63 (sigmoid at inverse 1), so no pixel starts where its gradient has died.
_INVERSE_SHIFT = 4.0


def propagate_up(value: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
    """Carry values up each column: ``out[y] = gate[y] * out[y + 1] + (1 - gate[y]) * value[y]``.

    A one-directional spatial propagation, each channel on its own (Liu et al. 2017's SPN,
    Cheng et al. 2018's CSPN for depth), bottom row first. With the gate open
    a pixel takes the value from below it, with the gate shut its own. An
    object standing on the ground, or a wall rising from it, is as far away as
    the ground where it stands: with gates open over it, its pixels take the
    depth of its contact row, which the network reads off the ground (a
    function of the row) instead of guessing it from how the object looks.
    ``value`` and ``gate`` are ``(B, C, H, W)``; a loop over the rows, each
    step elementwise, which autograd differentiates exactly.
    """
    values, gates = value.unbind(-2), gate.unbind(-2)
    rows = [values[-1]]
    for y in range(len(values) - 2, -1, -1):
        rows.append(torch.lerp(values[y], rows[-1], gates[y]))  # v + g (below - v)
    return torch.stack(rows[::-1], dim=-2)


def composite_layers(layers: torch.Tensor, mask_logits: torch.Tensor) -> torch.Tensor:
    """One depth map from a fg layer and a bg layer ``(B, 2, H, W)``: ``p fg + (1 - p) bg``, ``p`` the mask's.

    ``p = sigmoid(mask_logits)``, detached: the depth loss trains the two layers, never the mask, so a
    mask-loss comparison stays one of mask losses. Why layers: a fg pixel's depth is the fg's (one
    number, where it stands), while the pixel beside it, or above its head, shows the ground, a wall or
    the sky far behind; one map has to jump there, and a decoder's smooth output blurs the jump over the
    fg's outline and its upper half. Two layers are each smooth, and the jump is put where the mask has it.
    """
    p = torch.sigmoid(mask_logits.detach())
    return p * layers[:, :1] + (1 - p) * layers[:, 1:]


def check_depth_output(value: str, where: str) -> str:
    if value not in DEPTH_OUTPUTS:
        raise ValueError(f"{where}: depth_output must be one of {', '.join(DEPTH_OUTPUTS)}, got {value!r}")
    return value


class Head(nn.Module):
    """1x1 conv to one channel: mask logits, or depth as a linear output, the exp of one, or an inverse.

    Depth targets are depth / max_depth in [0, 1]. ``output="linear"`` (the
    default) keeps gradients alive at both ends of that range, where a sigmoid
    saturates, but can reach zero or below. ``output="log"``: the conv predicts
    log depth and the head returns ``exp`` of it, a depth that is always
    positive, which a loss that takes the depth's log (``silog``) needs: on a
    linear head such a loss clamps every pixel at or below its ``eps`` and its
    gradient there is zero, so the depth collapses and never recovers.
    ``output="inverse"``: the conv predicts inverse depth (disparity) ``q`` and
    the head returns ``1 / (softplus(q + 4) + 0.01)``, positive too (q = 0 is a
    quarter of max_depth). On a ground
    plane the inverse depth is linear in the image row (``depth = h f / (y -
    y_horizon)``), and constant over a wall or the sky, so this head turns the
    scene's depth into a piecewise-linear function of the coordinates that a
    small ReLU net represents exactly. Either way the head returns *depth*: a
    loss always scores the space it says it uses (``l1`` the depth, ``silog``
    its log); the parametrization changes only what the net has to represent.

    ``channels`` values come out (two for a layered depth). With ``propagate``
    the conv also predicts one gate per channel, and the values are carried up
    each column by :func:`propagate_up` in the head's own space (the log depth
    for ``log``) before the output transform.
    """

    def __init__(self, cin: int, output: str = "linear", propagate: bool = False, channels: int = 1) -> None:
        super().__init__()
        self.output = check_depth_output(output, "head")
        self.propagate, self.channels = propagate, channels
        self.proj = nn.Conv2d(cin, 2 * channels if propagate else channels, 1)  # values, then gates

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.proj(x)
        if self.propagate:
            c = self.channels
            y = propagate_up(y[:, :c], torch.sigmoid(y[:, c:]))
        if self.output == "log":
            return torch.exp(y.clamp(max=_MAX_LOG))
        if self.output == "inverse":
            return 1.0 / (F.softplus(y + _INVERSE_SHIFT) + _MIN_INVERSE)
        return y


def init_weights(module: nn.Module) -> None:
    """He init for convs (ReLU nets), unit BN; BasicBlock re-zeroes its last BN afterwards."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d | nn.GroupNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    for m in module.modules():
        if isinstance(m, BasicBlock):
            nn.init.zeros_(m.bn2.weight)
