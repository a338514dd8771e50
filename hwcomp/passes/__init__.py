"""Relax passes, one per file. Each is an ``IRModule -> IRModule`` transformation that can be run,
printed and tested alone (``lift_constants`` is the one boundary step that also returns weights)."""

from .fold_weight_layout import FoldWeightLayout
from .lift_constants import lift_constants

__all__ = ["FoldWeightLayout", "lift_constants"]
