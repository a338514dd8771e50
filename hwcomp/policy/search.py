"""Choose one option per layer under a latency budget (maximize fidelity) or a fidelity target
(minimize latency), and the Pareto front between the two.

The model is additive, as HAQ/AMC use it as a first estimate: end-to-end latency = fixed part + sum
of the chosen layers' latencies; output error (1 − cosine) ≈ sum of the errors each layer causes
when compressed alone. The choice is then a multiple-choice knapsack, solved exactly by dynamic
programming over a discretized error budget; the chosen policy is always re-measured for real.
"""

from __future__ import annotations

import dataclasses
import math

from .space import Option


@dataclasses.dataclass(frozen=True)
class OptionCost:
    option: Option | tuple[Option, ...]  # a tuple, one per member, for a profile of several layers
    latency_ms: float
    error: float  # 1 − cosine of the model output when only this layer uses this option


@dataclasses.dataclass
class LayerProfile:
    """The options of one knapsack item: a layer, or several layers chosen together (``members``: a
    structured-width group, whose producer's width changes its consumer's shape)."""

    name: str
    shape: tuple[int, ...]
    costs: list[OptionCost]
    members: tuple[str, ...] = ()

    @property
    def layer_names(self) -> tuple[str, ...]:
        return self.members or (self.name,)

    def choices_of(self, cost: OptionCost) -> dict[str, Option]:
        """The option each layer takes under ``cost``."""
        opts = cost.option if isinstance(cost.option, tuple) else (cost.option,)
        return dict(zip(self.layer_names, opts))

    def cost_of(self, choices: dict[str, Option]) -> OptionCost:
        """The cost whose options are those ``choices`` give this item's layers."""
        want = tuple(choices[n] for n in self.layer_names)
        return next(c for c in self.costs if tuple(self.choices_of(c).values()) == want)

    def dense(self) -> OptionCost:
        return self.cost_of({n: Option("dense") for n in self.layer_names})


@dataclasses.dataclass
class Policy:
    choices: dict[str, Option]
    predicted_latency_ms: float
    predicted_error: float
    measured_latency_ms: float | None = None
    measured_cosine: float | None = None
    simulated_cosine: float | None = None  # every layer at once, in PyTorch on the calibration inputs

    @property
    def predicted_cosine(self) -> float:
        return 1.0 - self.predicted_error

    def label_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for o in self.choices.values():
            counts[o.label] = counts.get(o.label, 0) + 1
        return counts


def _dp(profiles: list[LayerProfile], max_error: float, buckets: int):
    """min total latency with total error ≤ max_error; returns (latency, choice indices) per bucket."""
    step = max_error / buckets if max_error > 0 else 1.0
    inf = math.inf
    best = [0.0] + [inf] * buckets  # best[e] = min latency using error exactly-at-most bucket e
    picks: list[list[int]] = []
    for prof in profiles:
        new = [inf] * (buckets + 1)
        pick = [-1] * (buckets + 1)
        for e in range(buckets + 1):
            if best[e] == inf:
                continue
            for i, c in enumerate(prof.costs):
                de = 0 if c.error <= 0 else math.ceil(c.error / step - 1e-9)
                ne = e + de
                if ne <= buckets and best[e] + c.latency_ms < new[ne]:
                    new[ne] = best[e] + c.latency_ms
                    pick[ne] = i
        picks.append(pick)
        best = new
    return best, picks, step


def _backtrack(profiles, best, picks, step, end: int) -> list[int]:
    choice = []
    e = end
    for prof, pick in zip(reversed(profiles), reversed(picks)):
        i = pick[e]
        choice.append(i)
        c = prof.costs[i]
        e -= 0 if c.error <= 0 else math.ceil(c.error / step - 1e-9)
    return list(reversed(choice))


def _policy(profiles, idx, fixed_ms) -> Policy:
    chosen = [p.costs[i] for p, i in zip(profiles, idx)]
    choices: dict[str, Option] = {}
    for p, c in zip(profiles, chosen):
        choices.update(p.choices_of(c))
    return Policy(choices, fixed_ms + sum(c.latency_ms for c in chosen), sum(c.error for c in chosen))


def policy_for(profiles: list[LayerProfile], choices: dict[str, Option], fixed_ms: float = 0.0) -> Policy:
    """The predicted latency and error of given ``choices`` (every profiled layer named)."""
    costs = [p.cost_of(choices) for p in profiles]
    return Policy(dict(choices), fixed_ms + sum(c.latency_ms for c in costs), sum(c.error for c in costs))


def search(profiles: list[LayerProfile], *, latency_budget_ms: float | None = None,
           fidelity_target: float | None = None, fixed_ms: float = 0.0, buckets: int = 2000) -> Policy:
    """The fastest policy whose predicted cosine ≥ ``fidelity_target``, or the most faithful one
    whose predicted latency ≤ ``latency_budget_ms`` (exactly one of the two)."""
    if (latency_budget_ms is None) == (fidelity_target is None):
        raise ValueError("give exactly one of latency_budget_ms and fidelity_target")
    if fidelity_target is not None:
        max_error = max(0.0, 1.0 - fidelity_target)
        best, picks, step = _dp(profiles, max_error, buckets)
        end = min(range(len(best)), key=lambda e: best[e])
        return _policy(profiles, _backtrack(profiles, best, picks, step, end), fixed_ms)
    front = pareto_front(profiles, fixed_ms=fixed_ms, buckets=buckets)
    feasible = [p for p in front if p.predicted_latency_ms <= latency_budget_ms]
    if not feasible:
        return min(front, key=lambda p: p.predicted_latency_ms)  # nothing fits: the fastest there is
    return min(feasible, key=lambda p: p.predicted_error)


def pareto_front(profiles: list[LayerProfile], *, fixed_ms: float = 0.0, buckets: int = 2000) -> list[Policy]:
    """Policies not dominated in (predicted latency, predicted error), fastest last."""
    max_error = sum(max(c.error for c in p.costs) for p in profiles)
    best, picks, step = _dp(profiles, max_error, buckets)
    front = []
    last = math.inf
    for e in range(len(best)):
        if best[e] < last - 1e-12:
            last = best[e]
            front.append(_policy(profiles, _backtrack(profiles, best, picks, step, e), fixed_ms))
    return front
