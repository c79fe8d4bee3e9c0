"""The sequential plan of ``lab run --until-decisive``: when to look, and at what level.

Adding seeds until a comparison "comes out significant" and then testing at 5% inflates the
false-positive rate without bound: every look is another chance. So the looks are fixed before
the first seed trains, and the 5% is spent across them:

- **Looks.** The seed list ``seeds`` of the config, then fresh seeds (one above the largest) up to
  ``max_seeds``. The first look is after the configured seeds; at most :data:`MAX_LOOKS` looks,
  evenly spaced in seeds, the last at ``max_seeds``.
- **Alpha spending.** The family-wise level ``alpha`` is spent with the O'Brien-Fleming-type
  spending function of Lan and DeMets (1983), ``a(t) = 2 - 2 Phi(z_{1-alpha/2} / sqrt(t))``, where
  ``t`` is the fraction of ``max_seeds`` trained at the look. Look ``k`` tests at the increment
  ``a(t_k) - a(t_{k-1})``: little alpha early, when few seeds make estimates rough, most at the end.
- **Validity.** Each look tests every pair of variants (Holm-corrected) at its increment, and the
  increments sum to ``alpha``, so by the union bound the chance of any false claim over all looks
  is at most ``alpha``, however the looks' statistics depend on each other and whichever variants
  are extended. (The exact group-sequential boundaries would be less conservative; they need the
  looks' joint distribution, which the union bound does not.)
- **Stopping rule.** After each look, the variants whose comparison with the best is decided
  (significant) stop; the best and the undecided ones get the next look's seeds. The study stops
  when every comparison with the best is decided, or after the look at ``max_seeds``.

The statistics themselves (paired t-tests over seeds) live with the report's analysis; this module
is the pure plan, so the engine can run it and the report can state and re-check it.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from itertools import pairwise
from statistics import NormalDist

from losslab.core import names

#: Parent-run tag holding the plan as JSON (see docs/tracking.md).
SEQUENTIAL_TAG = names.SEQUENTIAL_TAG
PROCEDURE = "group-sequential, O'Brien-Fleming-type alpha spending (Lan-DeMets), Bonferroni over looks"
MAX_LOOKS = 4


class PlanError(ValueError):
    """The sequential plan cannot be made; the message says why and what to pass instead."""


def obrien_fleming_spent(t: float, alpha: float) -> float:
    """Alpha spent by information fraction ``t`` (0 < t <= 1) under the O'Brien-Fleming-type function."""
    if t <= 0:
        return 0.0
    z = NormalDist().inv_cdf(1.0 - alpha / 2.0)
    return min(alpha, 2.0 - 2.0 * NormalDist().cdf(z / math.sqrt(min(t, 1.0))))


@dataclass(frozen=True)
class SequentialPlan:
    """Seeds in the order they are trained, the seed counts at which to look, and each look's level."""

    seeds: tuple[int, ...]
    looks: tuple[int, ...]
    alphas: tuple[float, ...]
    alpha: float = 0.05
    procedure: str = PROCEDURE

    def seeds_at(self, look: int) -> tuple[int, ...]:
        """The seeds a variant has trained by look ``look`` (0-based) if it was extended that far."""
        return self.seeds[: self.looks[look]]

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> SequentialPlan:
        data = json.loads(text)
        return cls(tuple(int(s) for s in data["seeds"]), tuple(int(n) for n in data["looks"]),
                   tuple(float(a) for a in data["alphas"]), float(data.get("alpha", 0.05)),
                   str(data.get("procedure", PROCEDURE)))

    def describe(self) -> str:
        """The procedure and stopping rule in one paragraph, as the report states it."""
        looks = ", ".join(f"{n} seeds at p < {a:.2g}" for n, a in zip(self.looks, self.alphas, strict=True))
        return (
            f"Seeds were added with a sequential procedure fixed before training: {self.procedure}. "
            f"Looks (seeds per variant, and the per-look level after Holm's correction over all pairs): {looks}; "
            f"the levels sum to {self.alpha:g}, so the chance of any false claim over all looks is at most "
            f"{self.alpha:g}. Stopping rule: after each look, variants whose comparison with the best is "
            "significant stop, the best and the undecided ones get the next look's seeds, and the study "
            f"ends when nothing is undecided or after {self.looks[-1]} seeds."
        )


def make_plan(seeds: list[int], max_seeds: int, alpha: float = 0.05, max_looks: int = MAX_LOOKS) -> SequentialPlan:
    """The plan for a study configured with ``seeds`` that may grow to ``max_seeds`` per variant."""
    n0 = len(seeds)
    if n0 < 3:
        raise PlanError(f"--until-decisive needs at least 3 configured seeds for its first look, found {n0} "
                        f"({seeds}); set e.g. seeds: [0, 1, 2]")
    if max_seeds <= n0:
        raise PlanError(f"--max-seeds {max_seeds} must be larger than the {n0} configured seeds; "
                        f"e.g. --max-seeds {n0 + 4}")
    extra = list(range(max(seeds) + 1, max(seeds) + 1 + max_seeds - n0))
    looks_n = max(2, min(max_looks, max_seeds - n0 + 1))
    looks = sorted({round(n0 + (max_seeds - n0) * k / (looks_n - 1)) for k in range(looks_n)})
    spent = [obrien_fleming_spent(n / max_seeds, alpha) for n in looks]
    alphas = [spent[0]] + [b - a for a, b in pairwise(spent)]
    return SequentialPlan(tuple([*seeds, *extra]), tuple(looks), tuple(alphas), alpha)
