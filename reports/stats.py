"""The statistics of a comparison: intervals over seeds, paired tests, Holm's correction.

Why these choices:

- Seeds are the unit of replication of a training run, so the interval of a variant's score is
  a Student-t interval over its seeds, and two variants are compared by a paired t-test on the
  per-seed differences (seed s of A against seed s of B: same data order and initialisation
  stream), which has power with the 3-5 seeds a study can afford, where a rank test cannot
  (a two-sided Wilcoxon test on 3 pairs can never go below p = 0.25).
- Validation images are the unit of the data: the same held-out images score every variant, so a
  Wilcoxon signed-rank test on per-image differences (each image's score averaged over seeds
  first) says whether a difference holds across images rather than on a few of them.
- Each metric compares every pair of variants, so the p-values of one metric and one test are
  corrected together with Holm's step-down method (it controls the family-wise error rate with
  no assumption about how the tests depend on each other).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

ALPHA = 0.05
CONFIDENCE = 0.95
#: Fewer trained models than this per variant and a study is exploratory: it makes no claim.
MIN_SEEDS_FOR_CLAIM = 3
#: Power at which the report states the smallest gap a study could detect.
POWER = 0.8
#: Resamples of the hierarchical bootstrap; the generator is seeded, so a report is reproducible.
N_BOOT = 2000
BOOT_SEED = 20211
#: Differences within this fraction of the scores' magnitude are rounding, not a difference: two
#: variants whose scores agree to 12 digits must not be "tested" on their floating-point noise.
RELATIVE_TOLERANCE = 1e-12


def _tolerance(*scores: np.ndarray) -> float:
    return RELATIVE_TOLERANCE * max([1.0] + [float(np.max(np.abs(s))) for s in scores if s.size])


def _snap(d: np.ndarray, *scores: np.ndarray) -> np.ndarray:
    """``d`` with rounding-level differences set to exactly zero."""
    return np.where(np.abs(d) <= _tolerance(*scores), 0.0, d)


@dataclass(frozen=True)
class Summary:
    """Mean, sample standard deviation and the 95% t-interval of the mean of ``n`` values."""

    n: int
    mean: float
    std: float
    low: float
    high: float

    @property
    def half_width(self) -> float:
        return (self.high - self.low) / 2.0


def summarize(values: Sequence[float], confidence: float = CONFIDENCE) -> Summary:
    """Summary of ``values``; with one value the spread and interval are unknown (NaN)."""
    from scipy import stats

    arr = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=np.float64)
    n = int(arr.size)
    if n == 0:
        nan = float("nan")
        return Summary(0, nan, nan, nan, nan)
    mean = float(arr.mean())
    if n == 1:
        nan = float("nan")
        return Summary(1, mean, nan, nan, nan)
    std = float(arr.std(ddof=1))
    half = float(stats.t.ppf(0.5 + confidence / 2.0, df=n - 1)) * std / math.sqrt(n)
    return Summary(n, mean, std, mean - half, mean + half)


@dataclass(frozen=True)
class PairedTest:
    """A paired comparison of A against B: ``diff`` is mean(A - B) over ``n`` pairs.

    ``p`` is NaN when no test was possible; ``note`` then says why.
    """

    method: str
    n: int
    diff: float
    half_width: float
    p: float
    note: str = ""

    @property
    def possible(self) -> bool:
        return math.isfinite(self.p)


def paired_seed_test(a: Mapping[int, float], b: Mapping[int, float]) -> PairedTest:
    """Paired t-test of A against B over the seeds both ran (two-sided)."""
    from scipy import stats

    seeds = sorted(set(a) & set(b))
    a_arr = np.asarray([a[s] for s in seeds], dtype=np.float64)
    b_arr = np.asarray([b[s] for s in seeds], dtype=np.float64)
    d = _snap(a_arr - b_arr, a_arr, b_arr)
    n = int(d.size)
    nan = float("nan")
    if n == 0:
        return PairedTest("paired t-test over seeds", 0, nan, nan, nan, "no seed ran both variants")
    summary = summarize(d.tolist())
    if n < 2:
        return PairedTest("paired t-test over seeds", 1, summary.mean, nan, nan,
                          "one seed: seed-to-seed variation is not measured")
    if summary.std <= _tolerance(a_arr, b_arr):
        # Every seed moved by exactly the same amount: no variance to test against.
        p = 1.0 if summary.mean == 0.0 else 0.0
        return PairedTest("paired t-test over seeds", n, summary.mean, 0.0, p,
                          "identical differences on every seed")
    result = stats.ttest_rel(a_arr, b_arr)
    return PairedTest("paired t-test over seeds", n, summary.mean, summary.half_width, float(result.pvalue))


def paired_image_test(a: np.ndarray, b: np.ndarray) -> PairedTest:
    """Wilcoxon signed-rank test of A against B over paired images (two-sided)."""
    from scipy import stats

    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    keep = np.isfinite(a) & np.isfinite(b)
    d = _snap(a[keep] - b[keep], a[keep], b[keep])
    n = int(d.size)
    nan = float("nan")
    method = "Wilcoxon signed-rank over images"
    if n == 0:
        return PairedTest(method, 0, nan, nan, nan, "no per-image scores to pair")
    summary = summarize(d.tolist())
    half = summary.half_width if n > 1 else nan
    if not np.any(d != 0.0):
        return PairedTest(method, n, 0.0, half, 1.0, "identical scores on every image")
    result = stats.wilcoxon(d, zero_method="wilcox", alternative="two-sided")
    return PairedTest(method, n, summary.mean, half, float(result.pvalue))


def hierarchical_bootstrap(matrix: np.ndarray, n_boot: int = N_BOOT, confidence: float = CONFIDENCE,
                           seed: int = BOOT_SEED) -> tuple[float, float]:
    """Percentile interval of the grand mean of ``matrix`` (seeds x images), resampling seeds, then images.

    Two levels, because a study has two sources of noise: which models training happened to
    produce (seeds) and which images happened to be held out. Seeds and images are crossed (every
    seed scores the same images), so each resample draws seeds with replacement and images with
    replacement and averages the chosen cells; NaN cells are left out of the mean. With one image
    column (no per-image scores) it is the ordinary bootstrap over seeds; with one seed, over images.
    """
    m = np.asarray(matrix, dtype=np.float64)
    if m.ndim != 2 or m.size == 0 or not np.isfinite(m).any():
        return float("nan"), float("nan")
    n_seeds, n_images = m.shape
    if n_seeds * n_images == 1:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    finite = np.isfinite(m)
    values = np.where(finite, m, 0.0)
    means = np.empty(n_boot)
    chunk = max(1, 4_000_000 // max(1, n_seeds * n_images))
    for start in range(0, n_boot, chunk):
        b = min(chunk, n_boot - start)
        rows = rng.integers(0, n_seeds, (b, n_seeds))
        cols = rng.integers(0, n_images, (b, n_images))
        picked = values[rows[:, :, None], cols[:, None, :]]
        counted = finite[rows[:, :, None], cols[:, None, :]]
        with np.errstate(invalid="ignore", divide="ignore"):
            means[start:start + b] = picked.sum(axis=(1, 2)) / counted.sum(axis=(1, 2))
    means = means[np.isfinite(means)]
    if not means.size:
        return float("nan"), float("nan")
    tail = (1.0 - confidence) / 2.0
    low, high = np.quantile(means, [tail, 1.0 - tail])
    return float(low), float(high)


def probability_of_improvement(a: Sequence[float], b: Sequence[float]) -> float:
    """Vargha-Delaney A: the chance that a random seed of A scores above a random seed of B (ties half).

    The effect size rliable reports as "probability of improvement" (Agarwal et al. 2021): 0.5 is
    no effect, 1.0 means every model of A beat every model of B. Pass scores so that higher is
    better (negate a lower-is-better metric).
    """
    x = np.asarray([v for v in a if math.isfinite(v)], dtype=np.float64)
    y = np.asarray([v for v in b if math.isfinite(v)], dtype=np.float64)
    if not x.size or not y.size:
        return float("nan")
    greater = (x[:, None] > y[None, :]).sum()
    equal = (x[:, None] == y[None, :]).sum()
    return float((greater + 0.5 * equal) / (x.size * y.size))


def interquartile_mean(values: Sequence[float]) -> float:
    """Mean of the middle 50% (25% trimmed from each end), robust to one bad seed; NaN below 5 values."""
    from scipy import stats

    arr = np.asarray([v for v in values if math.isfinite(v)], dtype=np.float64)
    if arr.size < 5:
        return float("nan")
    return float(stats.trim_mean(arr, 0.25))


def paired_t_power(gap: float, sd: float, n: int, alpha: float) -> float:
    """Power of a two-sided paired t-test on ``n`` pairs to detect a true mean difference ``gap``."""
    from scipy import stats

    if n < 2 or not (sd > 0) or not math.isfinite(gap):
        return float("nan")
    df = n - 1
    crit = float(stats.t.ppf(1.0 - alpha / 2.0, df))
    nc = abs(gap) * math.sqrt(n) / sd
    power = float(stats.nct.sf(crit, df, nc) + stats.nct.cdf(-crit, df, nc))
    if not math.isfinite(power):  # far in the tail the noncentral t underflows: the normal limit
        power = float(stats.norm.sf(crit - nc) + stats.norm.cdf(-crit - nc))
    return min(1.0, max(0.0, power))


def detectable_gap(sd: float, n: int, alpha: float, power: float = POWER) -> float:
    """The smallest true gap a two-sided paired t-test on ``n`` pairs detects with ``power``.

    ``sd`` is the standard deviation of the per-seed differences: the seed-to-seed spread that
    any claim has to rise above.
    """
    from scipy import optimize

    if n < 2 or not (sd > 0) or not math.isfinite(sd):
        return float("nan")
    high = sd
    while paired_t_power(high, sd, n, alpha) < power:
        high *= 2.0
        if high > 1e6 * sd:
            return float("inf")
    return float(optimize.brentq(lambda g: paired_t_power(g, sd, n, alpha) - power, 0.0, high, xtol=sd * 1e-9))


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm-adjusted p-values, in the input order; NaN entries stay NaN and do not count."""
    idx = [i for i, p in enumerate(pvalues) if math.isfinite(p)]
    m = len(idx)
    out = [float("nan")] * len(pvalues)
    running = 0.0
    for rank, i in enumerate(sorted(idx, key=lambda i: pvalues[i])):
        running = max(running, min(1.0, (m - rank) * pvalues[i]))
        out[i] = running
    return out


def rank_order(means: Mapping[str, float], higher_is_better: bool) -> list[str]:
    """Names ordered best first; NaN means go last; ties keep the input order."""
    names = list(means)

    def key(name: str) -> tuple[int, float, int]:
        value = means[name]
        if not math.isfinite(value):
            return (1, 0.0, names.index(name))
        return (0, -value if higher_is_better else value, names.index(name))

    return sorted(names, key=key)


def format_p(p: float) -> str:
    """``p = 0.004``; tiny values in scientific notation; NaN as ``n/a``."""
    if not math.isfinite(p):
        return "n/a"
    if p >= 0.001:
        return f"{p:.3f}" if p < 0.995 else "1"
    return f"{p:.1e}"


def format_value(x: float, digits: int = 3) -> str:
    """A score with ``digits`` significant digits (at least 3 decimals for values below 1)."""
    if x is None or not math.isfinite(x):
        return "n/a"
    if x == 0:
        return "0.000"
    magnitude = math.floor(math.log10(abs(x)))
    decimals = max(0, digits - 1 - magnitude)
    decimals = min(decimals, 6)
    return f"{x:.{decimals}f}"


def format_pm(value: float, half_width: float) -> str:
    """``0.031 +/- 0.008``, ``112 +/- 25``: decimals set by the uncertainty's first digit.

    One significant digit of the half-width (two when it starts with 1), and at least three
    decimals for values below 1, so a score never reads as ``0.0 +/- 0.1``.
    """
    if not math.isfinite(value):
        return "n/a"
    if not math.isfinite(half_width) or half_width <= 0:
        return format_value(value)
    magnitude = math.floor(math.log10(half_width))
    decimals = -magnitude + (1 if f"{half_width:e}".startswith("1") else 0)
    if abs(value) < 1:
        decimals = max(decimals, 3)
    elif half_width >= 1:
        decimals = max(decimals, 1)
    decimals = min(6, max(0, decimals))
    return f"{value:.{decimals}f} +/- {half_width:.{decimals}f}"
