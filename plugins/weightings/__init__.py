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

from losslab.core.plugin.markers import hookimpl
from losslab.core.plugin.registry import Registry
from losslab.plugins.weightings.gradient import IMTLG, AlignedMTL, PCGrad
from losslab.plugins.weightings.gradnorm import GradNorm
from losslab.plugins.weightings.loss_based import DWA, Static, Uncertainty

__all__ = ["DWA", "IMTLG", "AlignedMTL", "GradNorm", "PCGrad", "Static", "Uncertainty",
           "lab_register_weightings"]


@hookimpl
def lab_register_weightings(registry: Registry) -> None:
    registry.add("static", Static, summary="the config's weighted sum of the terms, unchanged; the default")
    registry.add("uncertainty", Uncertainty, summary="learned homoscedastic uncertainty per task (Kendall 2018)")
    registry.add("dwa", DWA, summary="dynamic weight average of the tasks' loss ratios (Liu 2019)")
    registry.add("gradnorm", GradNorm, summary="weights that equalize the tasks' gradient norms (Chen 2018)")
    registry.add("pcgrad", PCGrad, summary="projects away conflicting task gradients (Yu 2020)")
    registry.add("imtl-g", IMTLG, summary="equal projection onto every task's gradient direction (Liu 2021)")
    registry.add("aligned-mtl", AlignedMTL, summary="aligns the task gradients' principal components (Senushkin 2023)")
