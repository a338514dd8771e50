"""The decision of :class:`~hwcomp.passes.dense_to_bsr.DenseToBSR` for one site: block density
against the threshold, then (with an injected latency function) dense vs BSR timings, cached in the
tuning database's BSR choices; and the per-layer report.

Measurement is injected: a :data:`Latency` is ``latency((m, k, n), choice) -> ms`` with ``choice``
``"dense"`` (the default-scheduled ``x[M, K] @ W.T (+ b)``) or a :class:`BSRChoice` (the target's BSR
kernel with those weights and knobs). The one that compiles and times kernels on this machine is
:func:`hwcomp.build_measure.bsr_latency`; passes never build.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path

from hwcomp.records.store import MeasurementStore
from hwcomp.sparse_format.bsr import BSRMatrix, block_density, pack_bsr

from .match import Site, rows

# Rough model for targets we cannot time: a BSR kernel reaches about this fraction of the dense
# kernel's FLOP rate, so the expected gain is BSR_EFFICIENCY / density (only used for the report).
BSR_EFFICIENCY = 0.5


@dataclasses.dataclass(frozen=True)
class BSRChoice:
    """The BSR side of a measurement: packed weights and the kernel knobs (None: the defaults)."""

    matrix: BSRMatrix
    knobs: object = None


#: ``latency((m, k, n), "dense" | BSRChoice) -> milliseconds``
Latency = Callable[[tuple[int, int, int], "str | BSRChoice"], float]


# ---- report ----------------------------------------------------------------------------------


@dataclasses.dataclass
class LayerDecision:
    """What :class:`DenseToBSR` did with one matmul / 1x1 conv."""

    name: str
    kind: str  # "matmul", "conv1x1" or "conv" (im2col)
    m: int
    k: int
    n: int
    block: tuple[int, int]
    density: float  # fraction of nonzero blocks
    chosen: str  # "bsr" or "dense"
    basis: str  # "measured", "threshold", or why the layer was skipped
    dense_ms: float | None = None
    bsr_ms: float | None = None
    expected_gain: float | None = None  # dense time / BSR time (measured or modelled)
    epilogue: str = ""

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["block"] = list(self.block)
        return d


@dataclasses.dataclass
class SparseReport:
    """Per-layer decisions of one :class:`DenseToBSR` run (print with :meth:`table`)."""

    target: str
    threshold: float
    layers: list[LayerDecision] = dataclasses.field(default_factory=list)

    @property
    def n_sparse(self) -> int:
        return sum(d.chosen == "bsr" for d in self.layers)

    def to_dict(self) -> dict:
        return {"target": self.target, "threshold": self.threshold, "n_sparse": self.n_sparse,
                "layers": [d.to_dict() for d in self.layers]}

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    def table(self) -> str:
        def ms(v):
            return f"{v:.3f}" if v is not None else "-"

        rows = [(f"{'layer':<14}{'kind':<9}{'M x K -> N':<20}{'block':<7}{'density':>8}  {'chosen':<7}"
                 f"{'dense ms':>9}{'bsr ms':>9}{'gain':>7}  basis")]
        for d in self.layers:
            gain = f"{d.expected_gain:.2f}" if d.expected_gain is not None else "-"
            rows.append(f"{d.name:<14}{d.kind:<9}{f'{d.m}x{d.k}->{d.n}':<20}{f'{d.block[0]}x{d.block[1]}':<7}"
                        f"{d.density:>8.3f}  {d.chosen:<7}{ms(d.dense_ms):>9}{ms(d.bsr_ms):>9}{gain:>7}  {d.basis}")
        rows.append(f"{self.n_sparse}/{len(self.layers)} layers sparse on {self.target}")
        return "\n".join(rows)


# ---- measured choices ------------------------------------------------------------------------


def _dense_key(m, k, n) -> str:
    return f"dense:{m}x{k}x{n}"


def _bsr_key(m, k, n, block, density) -> str:
    return f"bsr:{m}x{k}x{n}:{block[0]}x{block[1]}:d{density:.2f}"


class MeasuredChoices:
    """``(m, k, n, bsr, density) -> (dense_ms, bsr_ms, knobs)`` through the cache: timings missing
    from ``cache`` are taken with ``latency`` (the four likeliest knob sets of the backend's space, or
    all of them with ``tune``) and stored."""

    def __init__(self, latency: Latency, backend, target, block: tuple[int, int], cache: MeasurementStore,
                 tune: bool = False, log: Callable[[str], None] | None = None):
        self.latency = latency
        self.backend = backend
        self.target = target
        self.block = block
        self.cache = cache
        self.tune = tune
        self.log = log or (lambda s: None)

    def __call__(self, m, k, n, bsr: BSRMatrix, density: float):
        dkey = _dense_key(m, k, n)
        hit = self.cache.get(dkey)
        fresh = hit is None
        if fresh:
            hit = {"ms": round(self.latency((m, k, n), "dense"), 5)}
            self.cache.put(dkey, hit)
        dense_ms = hit["ms"]
        skey = _bsr_key(m, k, n, self.block, density)
        hit = self.cache.get(skey)
        if hit is None or (self.tune and not hit.get("tuned")):
            fresh = True
            hit = self._time_bsr(m, k, n, bsr)
            self.cache.put(skey, hit)
        knobs = self.backend.bsr_knobs_from(hit.get("knobs"))
        if fresh:
            self.log(f"  measured {m}x{k}->{n} density {density:.3f}: dense {dense_ms:.3f} ms, "
                     f"bsr {hit['ms']:.3f} ms, knobs {hit.get('knobs')}")
        return dense_ms, hit["ms"], knobs

    def _time_bsr(self, m: int, k: int, n: int, bsr: BSRMatrix) -> dict:
        # Without tune, the four likeliest knob sets (a few seconds a shape); with tune, all of them.
        space = self.backend.bsr_knob_space(self.target, self.block, m)
        if not space:
            return {"ms": round(self.latency((m, k, n), BSRChoice(bsr)), 5), "knobs": None, "tuned": False}
        best = None
        for knobs in space if self.tune else space[:4]:
            ms = self.latency((m, k, n), BSRChoice(bsr, knobs))
            if best is None or ms < best[0]:
                best = (ms, knobs)
        return {"ms": round(best[0], 5), "knobs": best[1].to_dict(), "tuned": self.tune}


def decide(site: Site, block: tuple[int, int], threshold: float, min_gain: float,
           measured: MeasuredChoices | None) -> tuple[LayerDecision, BSRMatrix | None, object]:
    """The decision for ``site``, the packed weights when BSR is chosen, and the kernel knobs.

    Without ``measured``, the threshold alone decides."""
    m = rows(site)
    n, k = site.weight.shape
    epi = "+".join(([] if site.bias is None else ["bias"]) + ([] if site.activation == "none" else [site.activation]))
    density = block_density(site.weight, block)
    d = LayerDecision(site.name, site.kind, m, k, n, block, round(density, 4), "dense", "threshold",
                      epilogue=epi)
    if 1.0 - density < threshold or m == 0:
        d.basis = f"sparsity {1 - density:.2f} < threshold"
        return d, None, None
    bsr = pack_bsr(site.weight, block)
    if measured is None:
        d.chosen = "bsr"
        d.expected_gain = round(BSR_EFFICIENCY / max(density, 1e-3), 2)
        return d, bsr, None
    dense_ms, bsr_ms, knobs = measured(m, k, n, bsr, density)
    d.basis, d.dense_ms, d.bsr_ms = "measured", dense_ms, bsr_ms
    d.expected_gain = round(dense_ms / bsr_ms, 2)
    if d.expected_gain >= min_gain:
        d.chosen = "bsr"
        return d, bsr, knobs
    return d, None, None


__all__ = ["BSR_EFFICIENCY", "BSRChoice", "Latency", "LayerDecision", "MeasuredChoices", "SparseReport", "decide"]
