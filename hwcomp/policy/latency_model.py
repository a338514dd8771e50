"""Fit the additive latency model to whole-model measurements.

A layer timed alone keeps its weights in cache across runs; inside the model they are evicted by
the other layers' weights, and int8 layers chained in the model skip the quantize/dequantize a
lone layer pays. So the in-model latency of a layer is modelled as ``scale[kind] × its lone
latency``, plus a fixed part for everything that is not a Linear layer:

    model_ms(uniform policy of kind k) = fixed + scale[k] · Σ lone_ms(layer, option)

Two uniform sparse models (two sparsity levels) give ``fixed`` and the sparse scale; the dense and
uniform int8 models then give their scales. sparse+int8 takes the sparse scale, and low rank the
dense one (it compiles to two fp32 dense layers; unscaled, a lone low-rank layer's cache-warm
latency would flatter it against in-model dense layers).
"""

from __future__ import annotations

import dataclasses

from .search import LayerProfile, OptionCost
from .space import Option


@dataclasses.dataclass
class LatencyModel:
    fixed_ms: float
    scale: dict[str, float]  # by option kind

    def apply(self, profiles: list[LayerProfile]) -> list[LayerProfile]:
        """Profiles with in-model latency estimates."""
        return [LayerProfile(p.name, p.shape, [
            OptionCost(c.option, c.latency_ms * self.scale.get(c.option.kind, 1.0), c.error) for c in p.costs])
            for p in profiles]

    def describe(self) -> str:
        return (f"fixed {self.fixed_ms:.2f} ms, in-model / lone layer latency: "
                + ", ".join(f"{k} {v:.2f}x" for k, v in sorted(self.scale.items())))


def lone_sum(profiles: list[LayerProfile], option: Option) -> float:
    """Σ of every layer's lone latency under ``option`` (a uniform policy)."""
    return sum(next(c.latency_ms for c in p.costs if c.option == option) for p in profiles)


def fit_latency_model(profiles: list[LayerProfile], measured: dict[Option, float]) -> LatencyModel:
    """``measured``: whole-model latency (ms) of uniform policies, by option; needs dense and two
    sparse levels of one block shape (int8 is used when present)."""
    sparse = sorted((o for o in measured if o.kind == "sparse"), key=lambda o: o.sparsity)
    dense = next(o for o in measured if o.kind == "dense")
    if len(sparse) < 2:
        raise ValueError("the latency model needs two uniform sparse measurements")
    lo, hi = sparse[0], sparse[-1]
    s_lo, s_hi = lone_sum(profiles, lo), lone_sum(profiles, hi)
    a_sparse = (measured[lo] - measured[hi]) / max(s_lo - s_hi, 1e-9)
    fixed = measured[hi] - a_sparse * s_hi
    if fixed < 0 or a_sparse <= 0:  # noisy measurements: no fixed part, one scale through the points
        fixed = 0.0
        a_sparse = (measured[lo] + measured[hi]) / (s_lo + s_hi)
    dense_scale = max(measured[dense] - fixed, 1e-9) / lone_sum(profiles, dense)
    scale = {"sparse": a_sparse, "sparse_int8": a_sparse, "dense": dense_scale, "low_rank": dense_scale}
    for o in measured:
        if o.kind == "int8":
            scale["int8"] = max(measured[o] - fixed, 1e-9) / lone_sum(profiles, o)
    return LatencyModel(fixed, scale)
