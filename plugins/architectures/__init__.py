"""Built-in architectures: ``unet`` (the default), ``resnet-unet`` and ``nested-unet``.

Every network takes ``(B, 6, H, W)`` (bg RGB and fg_bg RGB in [0, 1],
stacked on channels) and returns ``{"mask": logits (B,1,H,W), "depth":
(B,1,H,W)}`` for any H and W (padded inside to the network's stride, cropped
back). None downloads weights: a loss study must start every variant from
the same seeded random initialisation. Each factory takes keyword params with
defaults, so an experiment can name an architecture with no params at all.
"""

from __future__ import annotations

from losslab.plugins.architectures.nested_unet import NestedUNet
from losslab.plugins.architectures.resnet_unet import ResNetUNet
from losslab.plugins.architectures.unet import UNet

__all__ = ["NestedUNet", "ResNetUNet", "UNet"]
