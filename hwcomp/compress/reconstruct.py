"""Structured pruning with Optimal-Brain-Surgeon compensation of the consumer layer.

For a group whose consumer is a Linear ``y = W x + b`` (``x`` = the producer's units after the activation),
removing units is a least-squares problem over calibration inputs ``X``: choose which columns of ``W`` to
drop and re-fit the remaining columns and the bias so that ``y`` changes least. With ``H = [X 1]^T [X 1]``
(damped) and ``Hinv = H^-1``, the OBS cost of removing a set ``S`` is ``tr(W_S (Hinv_SS)^-1 W_S^T)`` and the
optimal update of the rest is ``W -= W_S (Hinv_SS)^-1 Hinv_S,:`` (Hassibi & Stork 1993; applied to whole
columns as in ZipLM, Kurtic et al. 2023). Units are removed greedily in blocks, cheapest single-unit cost
first, updating ``W`` and ``Hinv`` after each block. The bias column is never removed, so the fitted bias
absorbs the mean contribution of the removed units.
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .batches import Batch, set_training
from .layers import for_each_layer_call
from .structured import ChannelGroup, shrink_group


@dataclass(frozen=True)
class ObsConfig:
    """OBS structured pruning settings.

    Attributes:
        damp: ridge added to ``H``'s diagonal, relative to its mean diagonal (numerical stability and a
            prior towards the original weights where calibration data say little).
        block: units removed per greedy step (1 is exact greedy OBS; larger is faster).
        max_batches: calibration batches used to build ``H`` (None: all).
    """

    damp: float = 1e-2
    block: int = 16
    max_batches: int | None = None


def input_hessians(model: nn.Module, consumers: Sequence[str], data: Iterable[Batch],
                   max_batches: int | None = None) -> dict[str, Tensor]:
    """``[X 1]^T [X 1]`` (float64) of the inputs of each named Linear, summed over all calibration rows."""
    grams: dict[str, Tensor] = {}

    def record(name: str, x: Tensor, _y: Tensor) -> None:
        f = x.reshape(-1, x.shape[-1]).double()
        f = torch.cat([f, torch.ones(f.shape[0], 1, dtype=f.dtype)], 1)
        grams[name] = grams.get(name, 0) + f.T @ f

    was_training = model.training
    set_training(model, False)
    try:
        for_each_layer_call(model, [f"{c}.weight" for c in consumers], data, record, max_batches,
                            desc="OBS calibration")
    finally:
        set_training(model, was_training)
    return {n[: -len(".weight")]: g for n, g in grams.items()}


def obs_remove(weight: Tensor, bias: Tensor | None, hessian: Tensor, n_remove: int,
               config: ObsConfig = ObsConfig()) -> tuple[Tensor, Tensor, Tensor]:
    """Greedy OBS removal of ``n_remove`` input columns of ``weight [out, n]``.

    ``hessian`` is the ``(n+1) x (n+1)`` input Gram matrix with the bias column last. Returns (sorted kept
    column indices, compensated weight ``[out, kept]``, compensated bias ``[out]``).
    """
    n = weight.shape[1]
    w = torch.cat([weight.detach().double(), (bias.detach().double() if bias is not None
                                              else torch.zeros(weight.shape[0], dtype=torch.float64))[:, None]], 1)
    h = hessian.double().clone()
    h.diagonal().add_(config.damp * float(h.diagonal()[:n].mean()) + 1e-12)
    hinv = torch.linalg.inv(h)
    alive = torch.ones(n + 1, dtype=torch.bool)
    removed = 0
    while removed < n_remove:
        cost = w[:, :n].pow(2).sum(0) / hinv.diagonal()[:n]
        cost[~alive[:n]] = math.inf
        s = torch.argsort(cost)[: min(config.block, n_remove - removed)]
        inv_ss = torch.linalg.inv(hinv[s][:, s])
        w -= w[:, s] @ inv_ss @ hinv[s, :]
        hinv -= hinv[:, s] @ inv_ss @ hinv[s, :]
        w[:, s] = 0.0
        alive[s] = False
        removed += len(s)
    keep = alive[:n].nonzero().flatten()
    return keep, w[:, keep], w[:, n]


def obs_prune_units(model: nn.Module, groups: Sequence[ChannelGroup], amount: float, data: Iterable[Batch],
                    config: ObsConfig = ObsConfig(), round_to: int = 1) -> dict[str, Tensor]:
    """Remove a fraction ``amount`` of every group's units by OBS and shrink the layers (in place).

    Each group must have one ``nn.Linear`` consumer reading the units directly (e.g. a transformer FFN);
    the consumer's remaining weights and bias are re-fitted. Calibration statistics are taken from the
    unpruned model in one pass. Returns ``{producer: kept unit indices}``.
    """
    for g in groups:
        c = model.get_submodule(g.consumers[0])
        if len(g.consumers) != 1 or not isinstance(c, nn.Linear) or c.in_features != model.get_submodule(
                g.producer).weight.shape[0]:
            raise ValueError(f"OBS pruning needs one Linear consumer reading {g.producer}'s units directly")
    hessians = input_hessians(model, [g.consumers[0] for g in groups], data, config.max_batches)
    kept: dict[str, Tensor] = {}
    for g in groups:
        consumer = model.get_submodule(g.consumers[0])
        n = consumer.in_features
        n_keep = min(n, max(1, math.ceil((n - math.floor(amount * n + 0.5)) / round_to) * round_to))
        keep, w, b = obs_remove(consumer.weight, consumer.bias, hessians[g.consumers[0]], n - n_keep, config)
        shrink_group(model, g, keep)
        with torch.no_grad():
            consumer.weight.copy_(w.to(consumer.weight.dtype))
            if consumer.bias is None:
                consumer.bias = nn.Parameter(b.to(consumer.weight.dtype))
            else:
                consumer.bias.copy_(b.to(consumer.bias.dtype))
        kept[g.producer] = keep
    return kept
