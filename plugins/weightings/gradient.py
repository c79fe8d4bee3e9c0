"""Gradient-based weightings: the update is built from each task's gradient on the shared parameters.

Each runs one backward per task (:meth:`Weighting.task_gradients`), turns the
``(tasks, n_shared)`` gradient matrix ``G`` into coefficients ``alpha`` with
``alpha @ G`` the shared parameters' gradient, and writes it into ``.grad``.
The task-specific parameters keep the sum of their tasks' gradients. ``G`` is
unscaled (divided by the AMP loss scale) before the coefficients are computed
and the result rescaled after, so the GradScaler's inf check and unscale
apply as for a plain backward. The coefficients, averaged over the epoch's
steps, are what ``weights()`` reports.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from losslab.core.plugin.contracts import TASKS, Weighting

PER_TASK_BACKWARD = ("it runs one backward per task and rewrites the shared gradients, while DDP averages "
                     "gradients inside each backward")


def pcgrad(G: torch.Tensor) -> torch.Tensor:
    """PCGrad's coefficients (Yu et al. 2020): each task's gradient, projected off every conflicting one.

    ``g_i' = g_i - sum_j min(g_i' . g_j, 0) / |g_j|^2 g_j`` for ``j != i`` in task order (the original
    shuffles that order; with two tasks it does not matter), and the update is ``sum_i g_i'``.
    Returned as ``alpha`` with ``alpha @ G == sum_i g_i'``.
    """
    T = G.shape[0]
    coef = torch.eye(T, dtype=G.dtype, device=G.device)
    sq = (G * G).sum(dim=1).clamp_min(torch.finfo(G.dtype).tiny)
    for i in range(T):
        for j in range(T):
            if i == j:
                continue
            dot = (coef[i] @ G) @ G[j]
            coef[i, j] = coef[i, j] - dot.clamp(max=0.0) / sq[j]
    return coef.sum(dim=0)


def imtl_g(G: torch.Tensor) -> torch.Tensor:
    """IMTL-G's coefficients (Liu et al., ICLR 2021): the update projects equally onto every task's direction.

    With ``u_t = g_t / |g_t|``, ``D = [g_1 - g_t]`` and ``U = [u_1 - u_t]`` (t = 2..T):
    ``alpha_{2..T} = g_1 U^T (D U^T)^+`` and ``alpha_1 = 1 - sum(alpha_{2..T})``; the coefficients sum to 1.
    The pseudo-inverse keeps parallel gradients (a singular ``D U^T``) finite.
    """
    T = G.shape[0]
    if T == 1:
        return torch.ones(1, dtype=G.dtype, device=G.device)
    norms = G.norm(dim=1, keepdim=True).clamp_min(torch.finfo(G.dtype).tiny)
    U = G / norms
    D = G[:1] - G[1:]
    Ud = U[:1] - U[1:]
    rest = (G[0] @ Ud.T) @ torch.linalg.pinv(D @ Ud.T)
    return torch.cat([(1.0 - rest.sum()).reshape(1), rest])


def aligned_mtl(G: torch.Tensor, pref: torch.Tensor | None = None) -> torch.Tensor:
    """Aligned-MTL's coefficients (Senushkin et al., CVPR 2023, Algorithm 1), the 'min' scale.

    The Gram matrix ``M = G G^T = V diag(l) V^T`` gives the balance transformation
    ``B = sqrt(l_min) V diag(l)^(-1/2) V^T`` over the eigenvalues above rank tolerance;
    ``alpha = B @ pref`` aligns the tasks' gradients to equal magnitude along orthogonal
    directions (condition number 1). ``pref`` defaults to ones, the scale of the plain sum.
    """
    T = G.shape[0]
    pref = torch.ones(T, dtype=G.dtype, device=G.device) if pref is None else pref.to(G)
    M = G @ G.T
    lam, V = torch.linalg.eigh(M)
    tol = lam.max() * T * torch.finfo(G.dtype).eps
    kept = lam > tol
    inv_sqrt = torch.where(kept, lam.clamp_min(torch.finfo(G.dtype).tiny).rsqrt(), torch.zeros_like(lam))
    lam_min = torch.where(kept, lam, torch.full_like(lam, float("inf"))).min()
    B = lam_min.clamp(max=torch.finfo(G.dtype).max).sqrt() * (V * inv_sqrt) @ V.T
    B = torch.where(kept.any(), B, torch.eye(T, dtype=G.dtype, device=G.device))
    return B @ pref


class _GradientWeighting(Weighting):
    needs_task_gradients = True
    distributed = PER_TASK_BACKWARD
    alpha_sum: torch.Tensor
    alpha_steps: torch.Tensor
    alpha_last: torch.Tensor

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("alpha_sum", torch.zeros(len(TASKS)))
        self.register_buffer("alpha_steps", torch.zeros(()))
        self.register_buffer("alpha_last", torch.ones(len(TASKS)))

    def coefficients(self, G: torch.Tensor) -> torch.Tensor:  # pragma: no cover - each method defines it
        raise NotImplementedError

    def combine(self, terms: dict[str, torch.Tensor], shared: Sequence[nn.Parameter],
                scale: torch.Tensor | None = None) -> None:
        losses = self.task_losses(terms)
        G = self.task_gradients(losses, shared, scale)
        if scale is not None:
            G = G / scale
        alpha = self.coefficients(G)
        combined = alpha @ G
        self.set_shared_gradient(shared, combined if scale is None else combined * scale)
        self._record(alpha.detach(), [TASKS.index(t) for t in losses])
        return None

    def _record(self, alpha: torch.Tensor, index: list[int]) -> None:
        """Add this step's coefficients to the epoch's sum (skipped, without a sync, when not finite)."""
        full = torch.zeros(len(TASKS), dtype=self.alpha_sum.dtype, device=self.alpha_sum.device)
        full[index] = alpha.to(full.dtype)
        ok = torch.isfinite(full).all()
        self.alpha_sum.add_(torch.where(ok, full, torch.zeros_like(full)))
        self.alpha_steps.add_(ok.to(self.alpha_steps.dtype))
        self.alpha_last.copy_(torch.where(ok, full, self.alpha_last))

    def weights(self) -> dict[str, float]:
        steps = float(self.alpha_steps)
        values = (self.alpha_sum / steps).tolist() if steps else self.alpha_last.tolist()
        return dict(zip(TASKS, values, strict=True))

    def end_epoch(self, task_losses: dict[str, float]) -> None:
        self.alpha_sum.zero_()
        self.alpha_steps.zero_()


class PCGrad(_GradientWeighting):
    """PCGrad, gradient surgery (Yu et al., NeurIPS 2020): conflicting task gradients are projected apart.

    Where two tasks' gradients on the shared parameters point against each other
    (negative dot product), each is projected onto the other's normal plane
    before they are summed; agreeing gradients are summed unchanged.
    """

    def coefficients(self, G: torch.Tensor) -> torch.Tensor:
        return pcgrad(G)


class IMTLG(_GradientWeighting):
    """IMTL-G, impartial multi-task learning, gradient part (Liu et al., ICLR 2021).

    The update's projection onto each task's gradient direction is the same for
    every task, so no task dominates the shared parameters; the coefficients sum to 1.
    """

    def coefficients(self, G: torch.Tensor) -> torch.Tensor:
        return imtl_g(G)


class AlignedMTL(_GradientWeighting):
    """Aligned-MTL (Senushkin et al., CVPR 2023): the task gradients' principal components are equalized.

    The gradient matrix is rescaled to condition number 1 along its principal
    directions (the smallest eigenvalue sets the scale), which removes both
    dominating and conflicting components, then summed.
    """

    def coefficients(self, G: torch.Tensor) -> torch.Tensor:
        return aligned_mtl(G)
