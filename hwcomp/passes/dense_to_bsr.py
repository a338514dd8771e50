"""DenseToBSR: replace block-sparse constant-weight matmuls (and 1x1 conv2d) by hwcomp BSR kernels.

A Linear imported from torch is ``matmul(x, permute_dims(W))`` (+ ``add(bias)``, reshapes, maybe a
ReLU or GELU after). When the constant ``W[N, K]`` has block sparsity ≥ ``threshold`` for the target's block
``(r, c)``, the chain is replaced by ``call_tir(bsr_matmul, x2d, data, indices, indptr[, bias])``: the
packed weights become constants, the bias and a ReLU or GELU become the kernel's epilogue. A 1x1 conv2d
(NCHW/OIHW, stride 1, no padding, groups 1) is the same product over pixels: NCHW → [pixels, C] →
BSR → back to NCHW; other convolutions (3x3, strided, padded, dilated; groups 1) go through an
im2col stage ``[pixels, C·kh·kw]`` first (the weight is pruned and packed as ``[O, C·kh·kw]``).

Hardware-aware choice: with an injected latency function (``latency``; the one that builds and
times kernels on this machine is :func:`hwcomp.build_measure.bsr_latency`, given by the API and the
CLI), each eligible layer's dense (default-scheduled) matmul and its BSR kernel are timed, and BSR is
used only when it is at least ``min_gain`` times faster; timings are cached in the tuning database's
BSR choices keyed by shape, block and density (a convolution is timed as its ``[pixels, C·kh·kw] × [C·kh·kw, O]``
product on both sides; the im2col stage is not counted). Without a latency function (targets that
cannot run here: cross targets, GPUs) the threshold alone decides. Decisions are kept in :attr:`DenseToBSR.report` (:class:`SparseReport`).

Rewritten layers no longer match (their weight is gone), and the decision for the others is
deterministic (threshold, or cached timings), so running the pass twice changes nothing.

The pieces live in ``passes/bsr/``: ``match`` (sites), ``decide`` (decision, measurement, report),
``rewrite`` (the IRModule rewrite); this module keeps the pass and the public names.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import tvm
from tvm import relax

from hwcomp.errors import HwcompError
from hwcomp.records.locations import BSR_CHOICES, user_database_dir
from hwcomp.records.store import MeasurementStore
from hwcomp.schedules.backends import backend_for
from hwcomp.target import Target, require_target

from .bsr.decide import (
    BSR_EFFICIENCY,
    BSRChoice,
    Latency,
    LayerDecision,
    MeasuredChoices,
    SparseReport,
    decide,
)
from .bsr.match import match_sites
from .bsr.rewrite import bsr_primfunc, rewrite_function
from .prune_weights import PruneWeights

#: The BSR choices (dense vs BSR timings and the best kernel knobs per shape) sit in the tuning
#: database directory beside MetaSchedule's records, so ``hwcomp tune`` and compile share them.


class DenseToBSR:
    """``IRModule -> IRModule`` pass: eligible constant-weight matmuls / convs → BSR kernels.

    ``threshold``: minimum block sparsity (fraction of all-zero ``block`` tiles) for a layer to be
    considered. ``block``: ``(r, c)`` (default: the target's ``sparse_block``). ``latency``: the
    injected measurement, ``latency((m, k, n), "dense" | BSRChoice) -> ms``
    (:func:`hwcomp.build_measure.bsr_latency` builds and times on this machine); None = the threshold
    alone decides. ``min_gain``: when measuring, BSR is used only when at least this much faster than
    dense. ``measure``: False = threshold only even with a latency function. When measuring, the four
    likeliest kernel knob sets of the target backend are timed per shape and the fastest is kept;
    ``tune=True`` times the whole candidate list. ``cache_dir``: the tuning database directory the
    timings are kept in (default: the target's, ``~/.cache/hwcomp/tuning/<target>``; file
    ``hwcomp_bsr.json``). After a call, :attr:`report` holds the decisions.
    """

    __name__ = "DenseToBSR"

    def __init__(self, target: Target, threshold: float = 0.7, block: tuple[int, int] | None = None,
                 min_gain: float = 1.1, measure: bool | None = None, tune: bool = False,
                 cache_dir: str | Path | None = None, log: Callable[[str], None] | None = None,
                 latency: Latency | None = None):
        self.target = require_target(target, "DenseToBSR")
        self.backend = backend_for(self.target)
        self.threshold = float(threshold)
        self.block = tuple(int(v) for v in (block or self.target.sparse_block))
        self.min_gain = float(min_gain)
        self.latency = latency
        self.measure = latency is not None and measure is not False
        self.tune = tune
        if cache_dir is None:
            cache_dir = user_database_dir(self.target)
        self.cache = MeasurementStore(Path(cache_dir) / BSR_CHOICES)
        self.log = log or (lambda s: None)
        self.report = SparseReport(self.target.name, self.threshold)

    def __repr__(self) -> str:
        return (f"DenseToBSR(target={self.target.name!r}, threshold={self.threshold}, "
                f"block={self.block[0]}x{self.block[1]}, min_gain={self.min_gain})")

    def _kernel(self, spec, knobs):
        return self.backend.bsr_kernel(self.target, spec, knobs)

    def __call__(self, mod: tvm.IRModule) -> tvm.IRModule:
        self.report = SparseReport(self.target.name, self.threshold)
        measured = (MeasuredChoices(self.latency, self.backend, self.target, self.block, self.cache, self.tune,
                                    self.log) if self.measure else None)
        out = mod
        for gv, func in mod.functions_items():
            if not isinstance(func, relax.Function):
                continue
            plan: dict = {}
            for i, site in enumerate(match_sites(func)):
                site.name = f"L{i}:{site.name}"
                decision, bsr, knobs = decide(site, self.block, self.threshold, self.min_gain, measured)
                self.report.layers.append(decision)
                if bsr is not None:
                    plan[site.root] = (site, bsr, knobs)
            if plan:
                out = rewrite_function(out, gv, func, plan, self._kernel)
        if out is not mod:
            out = relax.transform.DeadCodeElimination()(out)
        return out


def sparse_passes(target: Target, sparsity: float | None = None, block: tuple[int, int] | None = None,
                  threshold: float = 0.7, **dense_to_bsr_options) -> list:
    """The compression passes for ``hwcomp compile --sparsity S [--block RxC] [--sparse-threshold T]``.

    With ``sparsity``: block-prune every matmul / conv weight to it, then convert. Without: the model
    is taken as it is, and weights that are already block-sparse (pre-pruned) are converted.
    """
    target = require_target(target, "sparse_passes")
    block = tuple(block) if block else target.sparse_block
    passes: list = []
    if sparsity is not None:
        passes.append(PruneWeights(sparsity=sparsity, block=block))
    passes.append(DenseToBSR(target, threshold=threshold, block=block, **dense_to_bsr_options))
    return passes


def check_sparse_options(sparsity: float | None, threshold: float | None, block: str | None) -> None:
    """The ranges of the sparse options, and no option that would be ignored (``block`` alone).

    The messages name the ``hwcomp compile`` / ``hwcomp tune`` flags these options come from."""
    if sparsity is not None and not (isinstance(sparsity, (int, float)) and 0 <= sparsity < 1):
        raise HwcompError(f"--sparsity must be in [0, 1), got {sparsity}")
    if threshold is not None and not (isinstance(threshold, (int, float)) and 0 < threshold < 1):
        raise HwcompError(f"--sparse-threshold must be in (0, 1), got {threshold}")
    if block and sparsity is None and threshold is None:
        raise HwcompError(f"--block {block} needs --sparsity S (prune to S) or --sparse-threshold T "
                          "(convert layers already at least T sparse); alone it would be ignored")


def sparse_passes_from_options(options, target: Target, tune: bool = False,
                               log: Callable[[str], None] | None = None, latency: Latency | None = None) -> list:
    """The sparse passes of compile / tune options (none when neither ``sparsity`` nor
    ``sparse_threshold`` is given).

    ``options``: any object with attributes ``sparsity``, ``block`` (``"RxC"`` text or None),
    ``sparse_threshold`` and optionally ``db`` (an ``argparse.Namespace`` of ``hwcomp compile`` or
    ``hwcomp tune`` is one). BSR choices are read from (and, with ``tune``, measured over the whole knob
    space into) the tuning database ``db``, or the target's own. ``latency``: the measurement (see
    :class:`DenseToBSR`); None = threshold only."""
    sparsity = getattr(options, "sparsity", None)
    threshold = getattr(options, "sparse_threshold", None)
    block = getattr(options, "block", None)
    check_sparse_options(sparsity, threshold, block)
    if sparsity is None and threshold is None:
        return []
    try:
        parsed = parse_block(block) if block else None
    except ValueError as e:
        raise HwcompError(str(e)) from None
    return list(sparse_passes(target, sparsity, parsed, threshold or 0.7, tune=tune,
                              cache_dir=getattr(options, "db", None), log=log, latency=latency))


def parse_block(text: str) -> tuple[int, int]:
    """``"16x1"`` → ``(16, 1)`` (for the CLI)."""
    try:
        r, c = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise ValueError(f"block must look like RxC (e.g. 16x1), got {text!r}") from None
    if r < 1 or c < 1:
        raise ValueError(f"block dimensions must be positive, got {text!r}")
    return r, c


__all__ = [
    "BSR_CHOICES",
    "BSR_EFFICIENCY",
    "BSRChoice",
    "DenseToBSR",
    "Latency",
    "LayerDecision",
    "SparseReport",
    "bsr_primfunc",
    "check_sparse_options",
    "parse_block",
    "sparse_passes",
    "sparse_passes_from_options",
]
