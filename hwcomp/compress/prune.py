"""Pruning masks: granularity, target sparsity, keeping masks applied, one-shot and gradual schedules.

Convention: a weight is viewed as a matrix ``[out, in]`` (a Conv kernel ``[out, in, kh, kw]`` as
``[out, in*kh*kw]``, flattened in (in, kh, kw) order). A block ``RxC`` covers **R consecutive output rows
and C consecutive input columns** (the BSR block of a ``y = x W^T`` sparse-dense kernel), so ``block:16x1``
zeroes 16 output neurons' weights on one input feature at a time. Blocks are tiled from ``[0, 0]``; when
``out`` or ``in`` is not a multiple of R or C the last blocks are partial (smaller) and are ranked by their
*mean* saliency so that their size does not bias them. Sparsity is the fraction of blocks pruned:
``round(sparsity * n_blocks)`` blocks per layer (``scope="layer"``) or over all layers (``"global"``).
Masks are bool tensors of the weight's shape keyed by parameter name; True keeps the weight.
"""
from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import Tensor, nn

from .layers import as_matrix

Masks = dict[str, Tensor]


@dataclass(frozen=True)
class Granularity:
    """Pruning granularity: ``rows x cols`` blocks of the ``[out, in]`` weight matrix; 1x1 is unstructured."""

    rows: int = 1
    cols: int = 1

    def __post_init__(self) -> None:
        if self.rows < 1 or self.cols < 1:
            raise ValueError(f"block dimensions must be positive, got {self.rows}x{self.cols}")

    @classmethod
    def parse(cls, spec: str | Granularity) -> Granularity:
        """Parse ``"unstructured"`` or ``"block:RxC"`` (e.g. ``"block:16x1"``)."""
        if isinstance(spec, Granularity):
            return spec
        if spec == "unstructured":
            return cls()
        m = re.fullmatch(r"block:(\d+)x(\d+)", spec.strip())
        if not m:
            raise ValueError(f"bad granularity {spec!r}: use 'unstructured' or 'block:RxC'")
        return cls(int(m.group(1)), int(m.group(2)))

    @property
    def unstructured(self) -> bool:
        return self.rows == 1 and self.cols == 1

    def __str__(self) -> str:
        return "unstructured" if self.unstructured else f"block:{self.rows}x{self.cols}"


@dataclass(frozen=True)
class PruneConfig:
    """Target of a pruning step.

    Attributes:
        sparsity: fraction of blocks to prune, one value for every scored weight or a mapping
            ``{weight name: sparsity}`` (weights missing from the mapping are left dense).
        granularity: :class:`Granularity` or its string form.
        scope: ``"layer"`` (each weight reaches its own sparsity) or ``"global"`` (one threshold over all
            weights, so sparsity varies per layer; needs a single float sparsity).
    """

    sparsity: float | Mapping[str, float]
    granularity: Granularity | str = "unstructured"
    scope: Literal["layer", "global"] = "layer"

    def __post_init__(self) -> None:
        values = self.sparsity.values() if isinstance(self.sparsity, Mapping) else [self.sparsity]
        if any(not 0.0 <= s <= 1.0 for s in values):
            raise ValueError("sparsity must be in [0, 1]")
        if self.scope == "global" and isinstance(self.sparsity, Mapping):
            raise ValueError("global scope takes a single sparsity")
        object.__setattr__(self, "granularity", Granularity.parse(self.granularity))


def block_scores(scores: Tensor, granularity: Granularity) -> Tensor:
    """Mean saliency of every block of a weight's scores: ``[ceil(out/R), ceil(in/C)]``."""
    m = as_matrix(scores).double()
    r, c = granularity.rows, granularity.cols
    nbr, nbc = math.ceil(m.shape[0] / r), math.ceil(m.shape[1] / c)
    pad = (0, nbc * c - m.shape[1], 0, nbr * r - m.shape[0])
    total = nn.functional.pad(m, pad).reshape(nbr, r, nbc, c).sum((1, 3))
    count = nn.functional.pad(torch.ones_like(m), pad).reshape(nbr, r, nbc, c).sum((1, 3))
    return total / count


def expand_blocks(block_mask: Tensor, granularity: Granularity, shape: torch.Size) -> Tensor:
    """Expand a ``[n_block_rows, n_block_cols]`` mask to a mask of a weight of ``shape``."""
    out = shape[0]
    inner = math.prod(shape[1:])
    full = block_mask.repeat_interleave(granularity.rows, 0).repeat_interleave(granularity.cols, 1)
    return full[:out, :inner].reshape(shape).contiguous()


def _n_prune(sparsity: float, n: int) -> int:
    return min(n, math.floor(sparsity * n + 0.5))


def compute_masks(scores: Mapping[str, Tensor], config: PruneConfig,
                  previous: Mapping[str, Tensor] | None = None) -> Masks:
    """Masks that prune the lowest-saliency blocks of each scored weight to ``config``'s sparsity.

    ``previous`` masks (from an earlier, lower-sparsity step) stay pruned: their blocks rank first.
    """
    g = config.granularity
    per_block = {}
    for name, s in scores.items():
        b = block_scores(s, g)
        if previous is not None and name in previous:
            kept = block_scores(previous[name].to(s.dtype), g) > 0.5  # blocks fully kept before
            b = torch.where(kept, b, torch.full_like(b, -math.inf))
        per_block[name] = b
    chosen: dict[str, Tensor] = {}
    if config.scope == "global":
        flat = torch.cat([b.flatten() for b in per_block.values()])
        order = torch.argsort(flat, stable=True)[: _n_prune(float(config.sparsity), flat.numel())]
        pruned = torch.zeros(flat.numel(), dtype=torch.bool)
        pruned[order] = True
        offset = 0
        for name, b in per_block.items():
            chosen[name] = ~pruned[offset: offset + b.numel()].reshape(b.shape)
            offset += b.numel()
    else:
        for name, b in per_block.items():
            sparsity = config.sparsity.get(name) if isinstance(config.sparsity, Mapping) else config.sparsity
            if sparsity is None:
                continue
            keep = torch.ones(b.numel(), dtype=torch.bool)
            keep[torch.argsort(b.flatten(), stable=True)[: _n_prune(sparsity, b.numel())]] = False
            chosen[name] = keep.reshape(b.shape)
    return {name: expand_blocks(k, g, scores[name].shape) for name, k in chosen.items()}


def mask_sparsity(masks: Mapping[str, Tensor]) -> float:
    """Fraction of zeroed entries over all masks."""
    total = sum(m.numel() for m in masks.values())
    return 0.0 if total == 0 else sum(int((~m.bool()).sum()) for m in masks.values()) / total


def apply_masks(model: nn.Module, masks: Mapping[str, Tensor]) -> None:
    """Zero the masked entries of the named parameters in place."""
    with torch.no_grad():
        for name, mask in masks.items():
            p = model.get_parameter(name)
            p.mul_(mask.to(p.dtype))


class MaskHooks:
    """Keeps masks applied while a model trains.

    A forward pre-hook on the root module re-zeroes masked weights before every forward (so optimizer
    momentum or weight decay cannot regrow them), and a gradient hook zeroes their gradients (so optimizer
    state never builds up for them). ``masks`` can be updated in place (gradual pruning); call
    :meth:`remove` (or use as a context manager) to leave a plain model with the masks baked in.
    """

    def __init__(self, model: nn.Module, masks: Mapping[str, Tensor]):
        self.model = model
        self.masks: Masks = {n: m.bool() for n, m in masks.items()}
        self._handles = [model.register_forward_pre_hook(self._remask)]
        for name in self.masks:
            p = model.get_parameter(name)
            self._handles.append(p.register_hook(lambda g, n=name: g * self.masks[n].to(g.dtype)))
        apply_masks(model, self.masks)

    def _remask(self, _module: nn.Module, _args: tuple) -> None:
        apply_masks(self.model, self.masks)

    @staticmethod
    def attached(model: nn.Module) -> bool:
        """Whether ``model`` still carries mask hooks."""
        return any(isinstance(getattr(h, "__self__", None), MaskHooks) for h in model._forward_pre_hooks.values())

    def update(self, masks: Mapping[str, Tensor]) -> None:
        """Replace the masks of the given names (names must already be hooked) and apply them now."""
        for name, m in masks.items():
            if name not in self.masks:
                raise KeyError(f"{name} is not hooked")
            self.masks[name] = m.bool()
        apply_masks(self.model, self.masks)

    def remove(self) -> None:
        """Apply the masks one last time and remove every hook."""
        apply_masks(self.model, self.masks)
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def __enter__(self) -> MaskHooks:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()


@dataclass(frozen=True)
class GradualSchedule:
    """Zhu & Gupta (2017) cubic schedule: ``s_t = s_f + (s_i - s_f) * (1 - (t - t0) / (t1 - t0))^3``.

    Sparsity rises from ``initial`` at ``begin_step`` to the final target at ``end_step``; masks are
    recomputed every ``frequency`` steps in between. With a per-layer mapping each layer follows the
    same curve towards its own target.
    """

    end_step: int
    begin_step: int = 0
    initial_sparsity: float = 0.0
    frequency: int = 1


def cubic_sparsity(step: int, final: float, schedule: GradualSchedule) -> float:
    """Sparsity the cubic schedule asks for at ``step`` (0 before ``begin_step``, ``final`` after the end)."""
    if step < schedule.begin_step:
        return 0.0
    span = max(1, schedule.end_step - schedule.begin_step)
    progress = min(1.0, (step - schedule.begin_step) / span)
    return final + (schedule.initial_sparsity - final) * (1.0 - progress) ** 3


@dataclass
class GradualPruner:
    """Prunes the weights ``names`` step by step during training (call :meth:`step` after each optimizer step).

    ``score_fn()`` returns fresh saliencies (``{weight name: scores}``) each time masks are recomputed,
    e.g. ``lambda: weight_scores(model, "taylor", data, names=names)``. Already-pruned blocks stay pruned.
    """

    model: nn.Module
    names: Sequence[str]
    config: PruneConfig
    schedule: GradualSchedule
    score_fn: Callable[[], Mapping[str, Tensor]]
    hooks: MaskHooks = field(init=False)
    current: float = field(init=False, default=0.0)

    def __post_init__(self) -> None:
        self.hooks = MaskHooks(self.model, {n: torch.ones_like(self.model.get_parameter(n), dtype=torch.bool)
                                            for n in self.names})
        self.step(0)

    def _target_at(self, step: int) -> float | dict[str, float]:
        s = self.config.sparsity
        if isinstance(s, Mapping):
            return {n: cubic_sparsity(step, v, self.schedule) for n, v in s.items()}
        return cubic_sparsity(step, s, self.schedule)

    def step(self, step: int) -> None:
        """Recompute masks if ``step`` is a pruning step of the schedule (or the final step)."""
        t0, t1 = self.schedule.begin_step, self.schedule.end_step
        if step < t0 or step > t1 or ((step - t0) % self.schedule.frequency and step != t1):
            return
        target = self._target_at(step)
        if not isinstance(target, dict) and target <= 0.0:
            return
        config = PruneConfig(target, self.config.granularity, self.config.scope)
        scores = {n: s for n, s in self.score_fn().items() if n in self.hooks.masks}
        self.hooks.update(compute_masks(scores, config, previous=self.hooks.masks))
        self.current = mask_sparsity(self.hooks.masks)

    def finish(self) -> Masks:
        """Jump to the final sparsity, bake the masks into the weights, remove hooks; returns the masks."""
        self.step(self.schedule.end_step)
        self.hooks.remove()
        return self.hooks.masks


def one_shot_masks(scores: Mapping[str, Tensor], sparsity: float | Mapping[str, float],
                   granularity: Granularity | str = "unstructured",
                   scope: Literal["layer", "global"] = "layer") -> Masks:
    """Shorthand for ``compute_masks(scores, PruneConfig(sparsity, granularity, scope))``."""
    return compute_masks(scores, PruneConfig(sparsity, granularity, scope))


def merge_masks(*mask_sets: Mapping[str, Tensor]) -> Masks:
    """Combine mask sets: an entry survives only if every set that covers its parameter keeps it."""
    merged: Masks = {}
    for masks in mask_sets:
        for name, m in masks.items():
            merged[name] = merged[name] & m.bool() if name in merged else m.bool().clone()
    return merged
