"""The step-memory estimate (losslab.core.train.memory) against hand counts, the batch, and real allocation."""

from __future__ import annotations

import resource
import time

import pytest
import torch
from torch import nn

from losslab.core.config import resolve_variants
from losslab.core.plugin.manager import load_catalog
from losslab.core.train.memory import GIB, estimate_for_config, estimate_step_memory

BENCHMARK_LOSSES = {"mask": [{"name": "bce"}, {"name": "dice"}], "depth": [{"name": "l1"}, {"name": "ssim"}]}
FAST_LOSSES = {"mask": [{"name": "bce"}], "depth": [{"name": "l1"}]}


class OneConv(nn.Module):
    """3x3 conv (6 -> 2 channels, bias) and ReLU; channel 0 is the mask, channel 1 the depth."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(6, 2, 3, padding=1)
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        y = self.relu(self.conv(x))
        return {"mask": y[:, :1], "depth": y[:, 1:]}


def mean_objective(out: dict[str, torch.Tensor], batch: dict[str, torch.Tensor]) -> torch.Tensor:
    return out["mask"].mean() + out["depth"].mean()


@pytest.fixture(scope="module")
def catalog():
    return load_catalog()


def unet_config(catalog, size: int, batch: int, losses=FAST_LOSSES):
    raw = {
        "name": "memory",
        "data": {"source": {"kind": "synthetic", "n_bg": 2, "n_fg": 2, "size": 64}, "image_size": size},
        "model": {"name": "unet"},
        "train": {"batch_size": batch},
        "loss": losses,
    }
    (cfg,) = resolve_variants(raw, None, catalog)
    return cfg


B, S = 2, 8  # the hand-counted step: batch 2 of 8x8 images
PARAMS = 2 * 6 * 3 * 3 + 2  # conv weight and bias


def test_float32_step_matches_a_hand_count():
    est = estimate_step_memory(OneConv, mean_objective, S, B, amp_dtype=None, channels_last=False)
    assert est.parameters == 4 * PARAMS
    assert est.gradients == 4 * PARAMS  # the trainer keeps them after the step (zero_grad comes after the loss)
    # AdamW: exp_avg and exp_avg_sq shaped like each parameter, and a 0-dim float32 step count per parameter
    assert est.optimizer_state == 2 * 4 * PARAMS + 2 * 4
    # held when the loss is computed: the input cat([bg, fg_bg]) (the conv keeps it for backward) and the ReLU
    # output (ReLU keeps it; the conv output is freed); the loss is one float32 scalar
    assert est.activations == 4 * B * S * S * (6 + 2) + 4
    assert est.batch == 4 * B * S * S * (3 + 3 + 1 + 1)  # bg, fg_bg, mask, depth
    assert est.output_dtype == torch.float32
    assert est.peak == sum(est.at_peak.values())
    assert est.peak >= est.parameters + est.optimizer_state + est.batch + est.activations


def test_bfloat16_autocast_is_in_effect_in_the_fake_step():
    est = estimate_step_memory(OneConv, mean_objective, S, B, amp_dtype=torch.bfloat16, channels_last=False)
    assert est.output_dtype == torch.bfloat16
    # the float32 input, and the bfloat16 copies of input and weight that the conv keeps under autocast (the
    # bias copy is freed with autocast's cache), the bfloat16 ReLU output, and a bfloat16 loss
    hand = 4 * B * S * S * 6 + 2 * B * S * S * 6 + 2 * (2 * 6 * 3 * 3) + 2 * B * S * S * 2 + 2
    assert est.activations == hand
    assert est.parameters == 4 * PARAMS  # the weights themselves stay float32


def test_activations_grow_linearly_with_the_batch(catalog):
    one, two, four = (estimate_for_config(unet_config(catalog, 48, b), catalog).activations for b in (1, 2, 4))
    # a fixed part (bfloat16 weight copies, norm statistics) and B times a per-image part, to the byte
    assert four - two == 2 * (two - one) > 0
    assert four == pytest.approx(2 * two, rel=0.05)


def test_default_unet_with_the_benchmark_losses_is_quick_and_sane(catalog):
    cfg = unet_config(catalog, 64, 8, BENCHMARK_LOSSES)
    started = time.perf_counter()
    est = estimate_for_config(cfg, catalog)
    elapsed = time.perf_counter() - started
    assert elapsed < 10, f"took {elapsed:.1f} s"
    n_params = sum(p.numel() for p in catalog.create("architecture", "unet").parameters())
    assert est.parameters == 4 * n_params
    assert est.optimizer_state >= 2 * est.parameters
    assert est.peak > est.parameters + est.optimizer_state + est.activations
    assert est.output_dtype == torch.bfloat16
    assert est.autocast == torch.bfloat16 and est.batch_size == 8 and est.image_size == (64, 64)


def test_a_step_too_big_for_any_gpu_allocates_nothing(catalog):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    started = time.perf_counter()
    est = estimate_for_config(unet_config(catalog, 512, 512), catalog)  # about 43 GiB
    assert time.perf_counter() - started < 10
    assert est.peak > 24 * GIB
    grown_gib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 2**20
    assert grown_gib < 1, f"resident memory grew by {grown_gib:.2f} GiB"


def test_a_real_loss_still_works_after_an_estimate(catalog):
    """SSIM caches operators per image size and device: the estimate must leave real ones behind, not fakes."""
    estimate_for_config(unet_config(catalog, 40, 2, BENCHMARK_LOSSES), catalog)
    value = catalog.create("loss", "ssim")(torch.rand(2, 1, 40, 40), torch.rand(2, 1, 40, 40))
    assert type(value) is torch.Tensor and bool(torch.isfinite(value))


def test_estimate_leaves_the_random_stream_alone():
    torch.manual_seed(0)
    estimate_step_memory(OneConv, mean_objective, S, B)
    after = torch.rand(3)
    torch.manual_seed(0)
    assert torch.equal(after, torch.rand(3))


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"batch": 0}, ValueError, "batch must be an int >= 1"),
        ({"image_size": 0}, ValueError, "image_size must be a positive"),
        ({"image_size": (8, 8, 8)}, ValueError, "image_size must be a positive"),
        ({"image_size": 8.0}, ValueError, "image_size must be a positive"),
        ({"optimizer": "lion"}, ValueError, "optimizer must be"),
        ({"device": "tpu"}, ValueError, "device must be 'cpu' or 'cuda'"),
        ({"model": lambda: "not a module"}, TypeError, "must return a torch.nn.Module"),
        ({"objective": lambda out, batch: out}, TypeError, "must return a scalar tensor"),
    ],
)
def test_bad_input_is_a_clear_error(kwargs, error, match):
    args = {"model": OneConv, "objective": mean_objective, "image_size": S, "batch": B, **kwargs}
    with pytest.raises(error, match=match):
        estimate_step_memory(**args)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message where CUDA is missing")
def test_tracing_on_cuda_without_cuda_says_why():
    with pytest.raises(ValueError, match="device='cpu'"):
        estimate_step_memory(OneConv, mean_objective, S, B, device="cuda")


def test_auto_batch_needs_an_explicit_batch(catalog):
    cfg = unet_config(catalog, 32, 2).model_copy(deep=True)
    cfg.train.batch_size = "auto"
    with pytest.raises(ValueError, match="pass the batch"):
        estimate_for_config(cfg, catalog)
    assert estimate_for_config(cfg, catalog, batch=2).batch_size == 2
