"""The optimizers ``train.optimizer`` names, built in one place so training and the memory estimate agree."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

import torch

OptimizerName = Literal["adam", "adamw", "sgd"]


def build_optimizer(name: OptimizerName, params: Iterable[torch.Tensor], *, lr: float, weight_decay: float,
                    foreach: bool | None = None) -> torch.optim.Optimizer:
    """``sgd`` (Nesterov momentum 0.9), ``adam`` or ``adamw`` over ``params``.

    ``foreach`` is PyTorch's choice between one fused kernel per step over all parameters and a loop
    (``None``: PyTorch picks, which is the fused form for CUDA parameters).
    """
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=weight_decay, nesterov=True,
                               foreach=foreach)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay, foreach=foreach)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, foreach=foreach)
    raise ValueError(f"optimizer must be 'adamw', 'adam' or 'sgd', got {name!r}")
