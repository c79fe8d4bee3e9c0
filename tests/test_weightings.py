"""Loss weightings: each method against a hand-worked two-task example, and against torchjd / LibMTL.

The hand-worked examples use a shared parameter ``theta`` in R^2 and linear task
losses ``L_t = theta . g_t + c_t``, so each task's gradient on the shared
parameters is ``g_t`` exactly and every weight and combined gradient can be
worked out on paper (the working is in each test). The references run on
random inputs: torchjd's aggregators (``pip install torchjd``) and LibMTL's
weighting classes (``pip install --no-deps LibMTL==1.1.5``: its own package
``__init__`` imports a torchvision API that no longer exists, so the tests load
its ``weighting`` modules directly). A reference that is not installed skips
its tests with the reason.
"""

from __future__ import annotations

import importlib
import importlib.util
import math
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from losslab.core import Weighting, load_catalog
from losslab.core.config import ComponentSpec, LossSpec
from losslab.core.train.objective import Objective
from losslab.core.train.weighting import WeightingError, build_weighting, epoch_task_losses, shared_parameters
from losslab.plugins.weightings.gradient import aligned_mtl, imtl_g, pcgrad

CATALOG = load_catalog()
LEARNED = ["uncertainty", "dwa", "gradnorm", "pcgrad", "imtl-g", "aligned-mtl"]


def make(name: str, **params) -> Weighting:
    return build_weighting(ComponentSpec(name=name, params=params), CATALOG)


def linear_terms(theta: torch.Tensor, g_mask, g_depth, c_mask=0.0, c_depth=0.0) -> dict[str, torch.Tensor]:
    """``{"mask/a": theta . g_mask + c_mask, "depth/b": theta . g_depth + c_depth}``: gradients g_t exactly."""
    gm = torch.tensor(g_mask, dtype=theta.dtype)
    gd = torch.tensor(g_depth, dtype=theta.dtype)
    return {"mask/a": theta @ gm + c_mask, "depth/b": theta @ gd + c_depth}


def shared_theta(values=(1.0, 1.0)) -> nn.Parameter:
    return nn.Parameter(torch.tensor(values, dtype=torch.float64))


def combined_gradient(name: str, g_mask, g_depth, **params) -> torch.Tensor:
    theta = shared_theta()
    weighting = make(name, **params).double()
    out = weighting.combine(linear_terms(theta, g_mask, g_depth), [theta])
    assert out is None and theta.grad is not None
    return theta.grad


# -- the kind itself -----------------------------------------------------------------------------------


def test_every_builtin_is_registered_and_keeps_the_contract():
    assert set(CATALOG["weighting"].names()) == {"static", *LEARNED}
    for component in CATALOG["weighting"]:
        weighting = component.create()
        assert isinstance(weighting, Weighting), component.name
        assert component.summary
        assert set(weighting.weights()) <= {"mask", "depth"}


def test_static_is_the_default_and_a_config_names_a_method():
    assert LossSpec().weighting.name == "static"
    spec = LossSpec.model_validate({"weighting": {"name": "gradnorm", "params": {"alpha": 0.5}}})
    assert make(spec.weighting.name, **spec.weighting.params).alpha == 0.5


def test_an_unknown_method_or_param_is_a_config_error_with_the_nearest_name(tmp_path):
    from losslab.core.config import ConfigError, resolve_variants

    with pytest.raises(ConfigError, match=r"loss\.weighting\.name: unknown weighting 'gradnrom'.*'gradnorm'"):
        resolve_variants({"name": "x", "loss": {"weighting": {"name": "gradnrom"}}}, catalog=CATALOG)
    with pytest.raises(ConfigError, match=r"loss\.weighting\.params\.alhpa: unknown parameter; did you mean 'alpha'"):
        resolve_variants({"name": "x", "loss": {"weighting": {"name": "gradnorm", "params": {"alhpa": 1}}}},
                         catalog=CATALOG)


def test_bad_params_are_refused_with_the_method_named():
    with pytest.raises(WeightingError, match=r"could not build 'dwa'.*temperature must be > 0"):
        make("dwa", temperature=0.0)
    with pytest.raises(WeightingError, match=r"could not build 'gradnorm'.*alpha must be"):
        make("gradnorm", alpha=-1.0)


@pytest.mark.parametrize("name", ["uncertainty", "gradnorm", "pcgrad", "imtl-g", "aligned-mtl"])
def test_methods_that_are_wrong_under_ddp_refuse_with_the_reason(name):
    with pytest.raises(WeightingError, match=rf"'{name}' cannot run under DDP \(2 processes\): .*Run it in one"):
        build_weighting(ComponentSpec(name=name), CATALOG, world_size=2)


@pytest.mark.parametrize("name", ["static", "dwa"])
def test_loss_and_epoch_based_methods_run_under_ddp(name):
    assert isinstance(build_weighting(ComponentSpec(name=name), CATALOG, world_size=2), Weighting)


def test_architectures_declare_their_shared_parameters_and_the_fallback_is_the_encoder():
    for name in ("unet", "resnet-unet", "nested-unet"):
        model = CATALOG.create("architecture", name)
        shared, source = shared_parameters(model)
        assert source.endswith("shared_parameters()")
        ids = {id(p) for p in shared}
        heads = [p for n, p in model.named_parameters() if "mask" in n or "depth_" in n.split(".")[0]]
        assert heads and not ids & {id(p) for p in heads}, name  # no head parameter is shared
        assert ids and ids <= {id(p) for p in model.parameters()}

    class EncoderOnly(nn.Module):
        def __init__(self):
            super().__init__()
            self.encoder = nn.Linear(2, 2)
            self.mask_head = nn.Linear(2, 1)

    model = EncoderOnly()
    shared, source = shared_parameters(model)
    assert source == "EncoderOnly.encoder" and {id(p) for p in shared} == {id(p) for p in model.encoder.parameters()}

    class Neither(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Linear(2, 2)
            self.mask_head = nn.Linear(2, 1)
            self.depth_head = nn.Linear(2, 1)

    model = Neither()
    shared, _ = shared_parameters(model)
    assert {id(p) for p in shared} == {id(p) for p in model.body.parameters()}


def test_epoch_task_losses_sum_each_tasks_weighted_term_means():
    terms = [("mask", "bce", 1.0), ("mask", "dice", 0.5), ("depth", "l1", 2.0), ("depth", "ssim", 0.0)]
    means = {"train/mask/bce": 0.4, "train/mask/dice": 0.2, "train/depth/l1": 0.1, "train/depth/ssim": 9.0}
    assert epoch_task_losses(terms, means) == pytest.approx({"mask": 0.5, "depth": 0.2})


# -- static: today's objective, bit for bit -----------------------------------------------------------


def test_static_repeats_the_former_interleaved_sum_bit_for_bit_in_value_and_gradients():
    """The objective used to add ``weight * value.float()`` to a float32 zero right after each term
    (mask terms on probabilities get the sigmoid of the logits)."""
    spec = LossSpec.model_validate({
        "mask": [{"name": "bce"}, {"name": "dice", "weight": 0.7}],
        "depth": [{"name": "l1"}, {"name": "ssim", "weight": 0.5, "params": {"window_size": 7}},
                  {"name": "gradient", "weight": 0.3}]})
    objective = Objective(spec, CATALOG)
    static = make("static")
    torch.manual_seed(0)
    net = CATALOG.create("architecture", "unet", base_channels=4, depth=2)
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(2, 6, 24, 24, generator=gen)
    batch = {"mask": (torch.rand(2, 1, 24, 24, generator=gen) > 0.5).float(), "depth": torch.rand(2, 1, 24, 24,
                                                                                                  generator=gen)}

    def former(out):
        total = out["mask"].new_zeros((), dtype=torch.float32)
        for term in objective.terms:
            pred = out["mask"] if term.task == "mask" else out["depth"]
            if term.input_kind == "probabilities":
                pred = torch.sigmoid(out["mask"].float())
            total = total + term.weight * term.module(pred, batch[term.task]).float()
        return total

    out = net(x)
    reference = former(out)
    reference.backward()
    expected = [p.grad.clone() for p in net.parameters()]
    net.zero_grad(set_to_none=True)
    _, weighted = objective.term_values(net(x), batch)
    total = static.combine(weighted, [])
    total.backward()
    assert torch.equal(total, reference)
    assert all(torch.equal(p.grad, e) for p, e in zip(net.parameters(), expected, strict=True))


def test_static_hand_worked():
    terms = {"mask/bce": torch.tensor(0.5), "depth/l1": torch.tensor(0.25), "depth/ssim": torch.tensor(0.125)}
    assert make("static").combine(terms, []).item() == 0.875
    assert make("static").weights() == {"mask": 1.0, "depth": 1.0}


# -- uncertainty (Kendall et al. 2018) -----------------------------------------------------------------


def test_uncertainty_hand_worked():
    """s = (0, ln 2), L = (3, 4): total = 0.5*3 + 0 + 0.5*(1/2)*4 + 0.5 ln 2 = 2.5 + 0.3466;
    dtotal/ds_t = -0.5 exp(-s_t) L_t + 0.5 = (-1.0, -0.5); weights exp(-s)/2 = (0.5, 0.25)."""
    weighting = make("uncertainty").double()
    with torch.no_grad():
        weighting.log_var.copy_(torch.tensor([0.0, math.log(2.0)]))
    terms = {"mask/bce": torch.tensor(3.0, dtype=torch.float64), "depth/l1": torch.tensor(4.0, dtype=torch.float64)}
    total = weighting.combine(terms, [])
    assert total.item() == pytest.approx(2.5 + 0.5 * math.log(2.0))
    total.backward()
    assert weighting.log_var.grad.tolist() == pytest.approx([-1.0, -0.5])
    assert weighting.weights() == pytest.approx({"mask": 0.5, "depth": 0.25})


def test_uncertainty_starts_where_init_says():
    assert make("uncertainty", init=math.log(0.5)).weights() == pytest.approx({"mask": 1.0, "depth": 1.0})


# -- dwa (Liu et al. 2019) -------------------------------------------------------------------------------


def test_dwa_hand_worked():
    """Epoch losses mask 1.0 -> 0.5 (r = 0.5), depth 2.0 -> 2.0 (r = 1), T = 2:
    w = 2 softmax(0.25, 0.5) = (2 / (1 + e^0.25), 2 e^0.25 / (1 + e^0.25)) = (0.87564, 1.12436)."""
    weighting = make("dwa", temperature=2.0)
    terms = {"mask/bce": torch.tensor(1.0), "depth/l1": torch.tensor(1.0)}
    assert weighting.combine(terms, []).item() == 2.0  # the first two epochs weigh 1 each
    weighting.end_epoch({"mask": 1.0, "depth": 2.0})
    assert weighting.weights() == {"mask": 1.0, "depth": 1.0}
    weighting.end_epoch({"mask": 0.5, "depth": 2.0})
    e = math.exp(0.25)
    assert weighting.weights() == pytest.approx({"mask": 2 / (1 + e), "depth": 2 * e / (1 + e)})
    terms = {"mask/bce": torch.tensor(3.0), "depth/l1": torch.tensor(5.0)}
    assert weighting.combine(terms, []).item() == pytest.approx(3 * 2 / (1 + e) + 5 * 2 * e / (1 + e), rel=1e-6)


# -- gradnorm (Chen et al. 2018) ------------------------------------------------------------------------


def test_gradnorm_hand_worked_first_and_second_step():
    """g_mask = (3, 4) (|g| = 5), g_depth = (1, 0) (|g| = 1), theta = (1, 1): L = (7, 1) at step 0.

    Step 0: w = (1, 1), L(0) = (7, 1), r = (1, 1). G = (5, 1), Gbar = 3, target = (3, 3):
    dL_grad/dw = sign(G - target) |g| = (+5, -1); the shared gradient is 1*g_mask + 1*g_depth = (4, 4).
    Step 1: weights set to (1, 2) are renormalized to sum 2: (2/3, 4/3). Losses (3.5, 1): L/L(0) = (0.5, 1),
    r = (2/3, 4/3). G = (10/3, 4/3), Gbar = 7/3, alpha = 1: target = (14/9, 28/9); signs (+, -) again,
    so dL_grad/dw = (5, -1); the shared gradient is (2/3)(3, 4) + (4/3)(1, 0) = (10/3, 8/3).
    """
    weighting = make("gradnorm", alpha=1.0).double()
    theta = shared_theta()
    assert weighting.combine(linear_terms(theta, (3, 4), (1, 0)), [theta]) is None
    assert theta.grad.tolist() == pytest.approx([4.0, 4.0])
    assert weighting.task_weight.grad.tolist() == pytest.approx([5.0, -1.0])
    assert weighting.initial.tolist() == pytest.approx([7.0, 1.0])
    with torch.no_grad():
        weighting.task_weight.copy_(torch.tensor([1.0, 2.0]))
    theta.grad = None
    weighting.combine(linear_terms(theta, (3, 4), (1, 0), c_mask=-3.5), [theta])
    assert weighting.weights() == pytest.approx({"mask": 2 / 3, "depth": 4 / 3})
    assert theta.grad.tolist() == pytest.approx([10 / 3, 8 / 3])
    assert weighting.task_weight.grad.tolist() == pytest.approx([5.0, -1.0])


def test_gradnorm_pulls_a_slow_task_up_with_alpha():
    """Same step 1 with alpha = 3: r^3 = (8/27, 64/27) so target = (0.69, 5.53): the signs stay (+, -),
    and the depth task, whose loss fell less, is pushed up (its weight's gradient is negative)."""
    weighting = make("gradnorm", alpha=3.0).double()
    theta = shared_theta()
    weighting.combine(linear_terms(theta, (3, 4), (1, 0)), [theta])
    weighting.combine(linear_terms(theta, (3, 4), (1, 0), c_mask=-3.5), [theta])
    grad = weighting.task_weight.grad.tolist()
    assert grad[0] > 0 > grad[1]


# -- pcgrad (Yu et al. 2020) ----------------------------------------------------------------------------


def test_pcgrad_hand_worked_conflict_and_agreement():
    """g1 = (1, 0), g2 = (-1, 1) conflict (g1.g2 = -1): g1' = g1 + (1/2) g2 = (0.5, 0.5),
    g2' = g2 + g1 = (0, 1), so the update is (0.5, 1.5). g1 = (1, 0), g2 = (1, 1) agree: (2, 1)."""
    assert combined_gradient("pcgrad", (1, 0), (-1, 1)).tolist() == pytest.approx([0.5, 1.5])
    assert combined_gradient("pcgrad", (1, 0), (1, 1)).tolist() == pytest.approx([2.0, 1.0])
    G = torch.tensor([[1.0, 0.0], [-1.0, 1.0]], dtype=torch.float64)
    assert pcgrad(G).tolist() == pytest.approx([2.0, 1.5])  # 2 g1 + 1.5 g2 = (0.5, 1.5)


# -- imtl-g (Liu et al. 2021) ---------------------------------------------------------------------------


def test_imtl_g_hand_worked():
    """g1 = (2, 0), g2 = (0, 1): u1 = (1, 0), u2 = (0, 1), D = g1 - g2 = (2, -1), U = u1 - u2 = (1, -1).
    alpha2 = g1.U / (D.U) = 2 / 3, alpha1 = 1/3: the update (2/3, 2/3) projects 2/3 onto both directions."""
    assert combined_gradient("imtl-g", (2, 0), (0, 1)).tolist() == pytest.approx([2 / 3, 2 / 3])
    G = torch.tensor([[2.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    assert imtl_g(G).tolist() == pytest.approx([1 / 3, 2 / 3])


def test_imtl_g_projects_equally_on_random_gradients():
    G = torch.randn(2, 9, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    update = imtl_g(G) @ G
    u = G / G.norm(dim=1, keepdim=True)
    assert (u @ update).tolist()[0] == pytest.approx((u @ update).tolist()[1])


# -- aligned-mtl (Senushkin et al. 2023) ---------------------------------------------------------------


def test_aligned_mtl_hand_worked():
    """g1 = (2, 0), g2 = (0, 1): M = G G^T = diag(4, 1), V = I, l_min = 1, B = 1 * diag(1/2, 1),
    alpha = B (1, 1) = (1/2, 1): the update (1, 1) has equal components along both gradients."""
    assert combined_gradient("aligned-mtl", (2, 0), (0, 1)).tolist() == pytest.approx([1.0, 1.0])
    G = torch.tensor([[2.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    assert aligned_mtl(G).tolist() == pytest.approx([0.5, 1.0])


def test_aligned_mtl_of_zero_gradients_is_finite():
    assert torch.isfinite(aligned_mtl(torch.zeros(2, 3))).all()


# -- gradient methods: heads, AMP scale, the weights they log ------------------------------------------


class TwoHeads(nn.Module):
    def __init__(self):
        super().__init__()
        self.encoder = nn.Linear(3, 4)
        self.mask_head = nn.Linear(4, 1)
        self.depth_head = nn.Linear(4, 1)

    def terms(self, x):
        h = torch.tanh(self.encoder(x))
        return {"mask/a": self.mask_head(h).pow(2).mean(), "depth/b": (self.depth_head(h) - 1).abs().mean()}


@pytest.mark.parametrize("name", ["pcgrad", "imtl-g", "aligned-mtl", "gradnorm"])
def test_gradient_methods_give_heads_their_tasks_gradient_and_the_encoder_alpha_at_G(name):
    torch.manual_seed(0)
    net = TwoHeads().double()
    x = torch.randn(5, 3, dtype=torch.float64)
    shared = list(net.encoder.parameters())
    per_task = {}
    for key in ("mask/a", "depth/b"):
        net.zero_grad(set_to_none=True)
        net.terms(x)[key].backward()
        per_task[key] = {n: p.grad.clone() for n, p in net.named_parameters() if p.grad is not None}
    net.zero_grad(set_to_none=True)
    weighting = make(name).double()
    weighting.combine(net.terms(x), shared)
    G = torch.stack([torch.cat([per_task[k][n].reshape(-1) for n in ("encoder.weight", "encoder.bias")])
                     for k in ("mask/a", "depth/b")])
    w = torch.ones(2, dtype=torch.float64)  # gradnorm's first step weighs both tasks 1
    alpha = {"pcgrad": pcgrad, "imtl-g": imtl_g, "aligned-mtl": aligned_mtl}.get(name, lambda G: w)(G)
    got = torch.cat([net.encoder.weight.grad.reshape(-1), net.encoder.bias.grad])
    assert torch.allclose(got, alpha @ G)
    assert torch.allclose(net.mask_head.weight.grad, per_task["mask/a"]["mask_head.weight"])
    assert torch.allclose(net.depth_head.weight.grad, per_task["depth/b"]["depth_head.weight"])
    if name != "gradnorm":
        assert weighting.weights() == pytest.approx(dict(zip(("mask", "depth"), alpha.tolist(), strict=True)))


@pytest.mark.parametrize("name", ["static", *LEARNED])
def test_under_an_amp_loss_scale_every_gradient_is_the_scale_times_the_unscaled_one(name):
    """The engine back-propagates a returned total times the scale; gradient methods scale their own
    backward. Either way what reaches ``.grad`` is exactly 2^10 times the unscaled gradient."""
    grads = []
    for scale in (None, torch.tensor(1024.0, dtype=torch.float64)):
        torch.manual_seed(0)
        net = TwoHeads().double()
        weighting = make(name).double()
        x = torch.randn(5, 3, dtype=torch.float64)
        total = weighting.combine(net.terms(x), list(net.encoder.parameters()), scale)
        if total is not None:
            (total if scale is None else total * scale).backward()
        extra = [p.grad for p in weighting.parameters() if p.grad is not None]
        grads.append([p.grad.clone() for p in net.parameters()] + [g.clone() for g in extra])
    plain, scaled = grads
    assert len(plain) == len(scaled)
    for a, b in zip(plain, scaled, strict=True):
        assert torch.allclose(b, a * 1024, rtol=1e-12, atol=0), name


def test_a_grad_scaler_step_with_a_gradient_method_equals_the_unscaled_step():
    torch.manual_seed(0)
    nets = [TwoHeads(), TwoHeads()]
    nets[1].load_state_dict(nets[0].state_dict())
    x = torch.randn(5, 3)
    for i, net in enumerate(nets):
        opt = torch.optim.SGD(net.parameters(), lr=0.1)
        weighting = make("pcgrad")
        if i == 0:
            weighting.combine(net.terms(x), list(net.encoder.parameters()))
            opt.step()
        else:
            scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12)
            weighting.combine(net.terms(x), list(net.encoder.parameters()), scaler.scale(torch.ones(())))
            scaler.step(opt)
            scaler.update()
    for a, b in zip(nets[0].parameters(), nets[1].parameters(), strict=True):
        assert torch.allclose(a, b, atol=1e-6)


def test_gradient_methods_log_the_epochs_mean_coefficients_and_start_afresh_each_epoch():
    weighting = make("pcgrad").double()
    for g2 in ((-1, 1), (1, 1)):  # alpha (2, 1.5) then (1, 1)
        theta = shared_theta()
        weighting.combine(linear_terms(theta, (1, 0), g2), [theta])
    assert weighting.weights() == pytest.approx({"mask": 1.5, "depth": 1.25})
    weighting.end_epoch({"mask": 1.0, "depth": 1.0})
    assert weighting.weights() == pytest.approx({"mask": 1.0, "depth": 1.0})  # the last step's, until the next


# -- state: checkpoint and resume -----------------------------------------------------------------------


@pytest.mark.parametrize("name", LEARNED)
def test_state_dict_round_trip_continues_identically(name):
    """A method restored from its state_dict (through torch.save / weights_only load) continues as the original."""
    import io

    def step(weighting, theta_values, c):
        theta = shared_theta(theta_values)
        total = weighting.combine(linear_terms(theta, (3, 4), (1, -2), c_mask=c, c_depth=2.0), [theta])
        if total is not None:
            total.backward()
        with torch.no_grad():
            for p in weighting.parameters():
                if p.grad is not None:
                    p -= 0.01 * p.grad
                    p.grad = None
        return theta.grad.clone()

    first = make(name).double()
    step(first, (1.0, 1.0), 0.0)
    first.end_epoch({"mask": 2.0, "depth": 1.0})
    step(first, (0.5, 1.0), -1.0)
    first.end_epoch({"mask": 1.5, "depth": 0.9})
    buffer = io.BytesIO()
    torch.save(first.state_dict(), buffer)
    buffer.seek(0)
    second = make(name).double()
    second.load_state_dict(torch.load(buffer, weights_only=True))
    assert second.weights() == pytest.approx(first.weights())
    assert torch.equal(step(second, (0.2, 0.3), 0.5), step(first, (0.2, 0.3), 0.5))
    assert second.weights() == pytest.approx(first.weights())


# -- references: torchjd ---------------------------------------------------------------------------------


def _torchjd():
    try:
        return importlib.import_module("torchjd.aggregation")
    except ImportError:
        pytest.skip("torchjd is not installed (pip install torchjd): its aggregators are the reference here")


@pytest.mark.parametrize("seed", range(5))
def test_gradient_methods_match_torchjd_on_random_gradients(seed):
    aggregation = _torchjd()
    gen = torch.Generator().manual_seed(seed)
    G = torch.randn(2, 11, dtype=torch.float64, generator=gen)
    if seed % 2:  # make them conflict
        G[1] = -0.7 * G[0] + 0.3 * torch.randn(11, dtype=torch.float64, generator=gen)
    ones = torch.ones(2, dtype=torch.float64)
    assert torch.allclose(pcgrad(G) @ G, aggregation.PCGrad()(G), atol=1e-12)
    assert torch.allclose(imtl_g(G) @ G, aggregation.IMTLG()(G), atol=1e-12)
    assert torch.allclose(aligned_mtl(G) @ G, aggregation.AlignedMTL(pref_vector=ones)(G), atol=1e-12)


# -- references: LibMTL ----------------------------------------------------------------------------------


@pytest.fixture
def libmtl(monkeypatch):
    """LibMTL's weighting modules, loaded without its package ``__init__`` (which needs an old torchvision)."""
    spec = importlib.util.find_spec("LibMTL")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("LibMTL is not installed (pip install --no-deps LibMTL==1.1.5): it is the reference here")
    root = Path(next(iter(spec.submodule_search_locations)))
    for name, path in (("LibMTL", root), ("LibMTL.weighting", root / "weighting")):
        module = types.ModuleType(name)
        module.__path__ = [str(path)]
        monkeypatch.setitem(sys.modules, name, module)
    for name in [n for n in sys.modules if n.startswith("LibMTL.weighting.")]:
        monkeypatch.delitem(sys.modules, name)

    def load(cls: str, shared: list[nn.Parameter]):
        module = importlib.import_module(f"LibMTL.weighting.{cls}")
        ref = getattr(module, cls)()
        ref.task_num, ref.device, ref.rep_grad, ref.task_name = 2, torch.device("cpu"), False, ["mask", "depth"]
        ref.get_share_params = lambda: iter(shared)

        def zero_shared():
            for p in shared:
                if p.grad is not None:
                    p.grad.zero_()

        ref.zero_grad_share_params = zero_shared
        return ref

    return load


@pytest.mark.parametrize("seed", range(3))
def test_uncertainty_matches_libmtl_uw(libmtl, seed):
    gen = torch.Generator().manual_seed(seed)
    losses = torch.rand(2, generator=gen, dtype=torch.float64) * 5
    s = torch.randn(2, generator=gen, dtype=torch.float64)
    ref = libmtl("UW", [])
    ref.loss_scale = nn.Parameter(s.clone())
    ref_weights = ref.backward(losses.clone().requires_grad_(True))
    ours = make("uncertainty").double()
    with torch.no_grad():
        ours.log_var.copy_(s)
    ours.combine({"mask/x": losses[0], "depth/y": losses[1]}, []).backward()
    assert np.allclose(list(ours.weights().values()), ref_weights)
    assert torch.allclose(ours.log_var.grad, ref.loss_scale.grad)


@pytest.mark.parametrize("seed", range(3))
def test_dwa_matches_libmtl(libmtl, seed):
    rng = np.random.default_rng(seed)
    history = rng.uniform(0.2, 3.0, size=(2, 4))  # two tasks, four epochs of mean losses
    ours = make("dwa", temperature=1.5)
    for epoch in range(3):
        ours.end_epoch({"mask": history[0, epoch], "depth": history[1, epoch]})
    ref = libmtl("DWA", [])
    ref.epoch, ref.train_loss_buffer = 3, history
    ref_weights = ref.backward(torch.ones(2, requires_grad=True), T=1.5)
    assert np.allclose(list(ours.weights().values()), ref_weights, rtol=1e-6)


@pytest.mark.parametrize("seed", range(3))
def test_pcgrad_matches_libmtl(libmtl, seed):
    torch.manual_seed(seed)
    net = TwoHeads()  # float32: LibMTL gathers gradients into float32 vectors
    x = torch.randn(6, 3)
    shared = list(net.encoder.parameters())
    ref = libmtl("PCGrad", shared)
    terms = net.terms(x)
    ref.backward(torch.stack(list(terms.values())))
    expected = [p.grad.clone() for p in shared]
    net.zero_grad(set_to_none=True)
    make("pcgrad").combine(net.terms(x), shared)
    assert all(torch.allclose(p.grad, e, atol=1e-6) for p, e in zip(shared, expected, strict=True))


@pytest.mark.parametrize("seed", range(3))
def test_gradnorm_matches_libmtl_through_its_softmax_parametrization(libmtl, seed):
    """LibMTL parametrizes the weights as ``w = T softmax(p)`` and holds the target constant as we do, so with
    our weights set to its ``w``, its ``p.grad`` is our weight gradient pulled back through the softmax, and
    both write ``sum_t w_t g_t`` into the shared gradients."""
    torch.manual_seed(seed)
    net = TwoHeads()  # float32: LibMTL gathers gradients into float32 vectors
    x = torch.randn(6, 3)
    shared = list(net.encoder.parameters())
    p = torch.randn(2)
    initial = torch.rand(2) + 0.5
    ref = libmtl("GradNorm", shared)
    ref.loss_scale = nn.Parameter(p.clone())
    ref.epoch, ref.train_loss_buffer = 1, initial.numpy()[:, None]
    ref.backward(torch.stack(list(net.terms(x).values())), alpha=1.5)
    expected_shared = [q.grad.clone() for q in shared]
    net.zero_grad(set_to_none=True)
    ours = make("gradnorm", alpha=1.5)
    w = 2 * torch.softmax(p, dim=0)
    with torch.no_grad():
        ours.task_weight.copy_(w)
        ours.initial.copy_(initial)
    ours.has_initial = True
    ours.combine(net.terms(x), shared)
    pulled = p.clone().requires_grad_(True)
    (2 * torch.softmax(pulled, dim=0) * ours.task_weight.grad).sum().backward()
    assert torch.allclose(pulled.grad, ref.loss_scale.grad, atol=1e-6)
    assert all(torch.allclose(q.grad, e, atol=1e-6) for q, e in zip(shared, expected_shared, strict=True))


# -- lab tune searches a method's parameters like any other key ----------------------------------------


def test_lab_tune_searches_a_methods_parameter_and_the_method_itself():
    from losslab.core.config import ConfigError, resolve_variants
    from losslab.core.experiment.tuning.space import parse_search

    base = resolve_variants({"name": "x", "loss": {"weighting": {"name": "gradnorm", "params": {"alpha": 1.5}}}},
                            catalog=CATALOG)[0]
    (alpha,) = parse_search({"params": {"loss.weighting.params.alpha": {"low": 0, "high": 3}}}, base, CATALOG).params
    assert (alpha.kind, alpha.low, alpha.high) == ("float", 0.0, 3.0)  # a float because the config holds 1.5
    plain = resolve_variants({"name": "x"}, catalog=CATALOG)[0]
    method, alpha = parse_search({"params": {
        "loss.weighting.name": ["static", "gradnorm"],
        "loss.weighting.params.alpha": {"low": 0.5, "high": 3.0, "when": {"loss.weighting.name": "gradnorm"}},
    }}, plain, CATALOG).params
    assert method.labels == ["static", "gradnorm"] and alpha.when == {"loss.weighting.name": ["gradnorm"]}
    with pytest.raises(ConfigError, match=r"loss\.weighting\.params\.alpha: unknown parameter"):
        parse_search({"params": {"loss.weighting.params.alpha": {"low": 0.5, "high": 3.0}}}, plain, CATALOG)


# -- in training: logged weights, checkpoint and resume -------------------------------------------------


def _trainer(tmp_path, name, epochs=2, **params):
    from losslab.core.config import resolve_variants
    from losslab.core.train.trainer import Trainer
    from tests.conftest import TINY

    raw = {**TINY, "train": {**TINY["train"], "epochs": epochs},
           "loss": {**TINY["loss"], "weighting": {"name": name, "params": params}}}
    cfg = resolve_variants(raw, catalog=CATALOG)[0]
    return Trainer(cfg, 0, CATALOG, tmp_path)


@pytest.mark.parametrize("name", ["uncertainty", "gradnorm", "dwa", "pcgrad"])
def test_a_killed_run_resumes_its_weighting_and_matches_an_uninterrupted_one(tmp_path, name):
    straight = _trainer(tmp_path / "a", name, epochs=3).fit()

    def stop_after_second(epoch, metrics):
        if epoch == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _trainer(tmp_path / "b", name, epochs=3).fit(on_epoch=stop_after_second)
    resumed = _trainer(tmp_path / "b", name, epochs=3).fit(resume=True)
    assert [h["epoch"] for h in resumed.history] == [0, 1, 2]
    for key in ("weighting/mask", "weighting/depth", "train/loss", "val/mask_iou"):
        assert [h[key] for h in resumed.history] == [h[key] for h in straight.history], key  # bit for bit
    assert all(math.isfinite(h["weighting/mask"]) for h in straight.history)


def test_learned_weights_move_and_are_logged_each_epoch(tmp_path):
    result = _trainer(tmp_path, "uncertainty", epochs=2, init=0.0).fit()
    first, second = (h["weighting/mask"] for h in result.history)
    assert first != 0.5 and second != first  # trained away from exp(-0)/2 by the optimizer


def test_dwa_logs_ones_for_two_epochs_then_the_ratio_weights(tmp_path):
    result = _trainer(tmp_path, "dwa", epochs=3).fit()
    assert [h["weighting/mask"] for h in result.history[:2]] == [1.0, 1.0]
    loss = [{t: h[f"train/{t}/{k}"] for t, k in (("mask", "bce"), ("depth", "l1"))} for h in result.history]
    r = {t: loss[1][t] / loss[0][t] / 2.0 for t in ("mask", "depth")}
    expected = 2 * math.exp(r["mask"]) / (math.exp(r["mask"]) + math.exp(r["depth"]))
    assert result.history[2]["weighting/mask"] == pytest.approx(expected, rel=1e-5)
