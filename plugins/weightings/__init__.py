"""Built-in loss weightings: how the mask and depth losses become one update.

``static`` (the default) is the config's weighted sum, unchanged. The
others learn or adapt the balance during training, after the multi-task
literature (LibMTL and torchjd implement the same methods):

- loss-based: ``uncertainty`` (Kendall et al. 2018), ``dwa`` (Liu et al. 2019);
- gradient-based, one backward per task on the shared parameters:
  ``gradnorm`` (Chen et al. 2018), ``pcgrad`` (Yu et al. 2020),
  ``imtl-g`` (Liu et al. 2021) and ``aligned-mtl`` (Senushkin et al. 2023).
"""

from __future__ import annotations

from losslab.plugins.weightings.gradient import IMTLG, AlignedMTL, PCGrad
from losslab.plugins.weightings.gradnorm import GradNorm
from losslab.plugins.weightings.loss_based import DWA, Static, Uncertainty

__all__ = ["DWA", "IMTLG", "AlignedMTL", "GradNorm", "PCGrad", "Static", "Uncertainty"]
