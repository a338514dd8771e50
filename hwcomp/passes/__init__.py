"""Relax passes, one per file. Each is an ``IRModule -> IRModule`` transformation that can be run,
printed and tested alone (``lift_constants`` is the one boundary step that also returns weights)."""

from .dense_to_bsr import DenseToBSR, sparse_passes
from .elementwise_before_reshape import ElementwiseBeforeReshape
from .fast_math import FastMath
from .fold_weight_layout import FoldWeightLayout
from .lift_constants import lift_constants
from .prune_weights import PruneWeights

__all__ = ["DenseToBSR", "ElementwiseBeforeReshape", "FastMath", "FoldWeightLayout", "PruneWeights", "lift_constants", "sparse_passes"]
