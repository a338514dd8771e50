"""Importance scores of weights, selectable by name.

Every criterion returns, for each weight, a *saliency* tensor of the weight's shape whose entries add up
over a group of weights (a block, a neuron): pruning removes the groups with the smallest summed saliency.

  ``l1``       ``|w|``                               -> block/unit score = L1 norm
  ``l2``       ``w^2``                               -> block/unit score = squared L2 norm (same ranking as L2)
  ``taylor``   ``mean_b |g_b * w|``                  first-order Taylor estimate of the loss change when
                                                     ``w`` is zeroed, averaged over mini-batches ``b``
  ``fisher``   ``0.5 * mean_b(g_b^2) * w^2``         OBD saliency with diag(H) approximated by the
                                                     empirical Fisher (accumulated squared gradients)
  ``hessian``  ``0.5 * |diag(H)| * w^2``              Optimal Brain Damage, diag(H) by Hutchinson's estimator
                                                     ``E_z[z * Hz]`` with Rademacher ``z`` (double backprop)
  ``apoz``     ``|w| * freq(input feature)``         activation frequency: ``freq`` is the fraction of
                                                     non-zero values of the layer's input feature/channel
                                                     (1 - APoZ of the producing unit); a weight that reads an
                                                     always-dead unit scores 0.

Gradient criteria need a data source and use ``loss_fn(output, target)`` or
:func:`hwcomp.compress.batches.default_loss`. Scores are computed in eval mode (fixed BatchNorm statistics,
no dropout); the model's mode and ``requires_grad`` flags are restored afterwards.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .batches import Batch, LossFn, batch_loss, iterate, set_training
from .layers import as_matrix, for_each_layer_call, prunable_weights

CRITERIA = ("l1", "l2", "taylor", "fisher", "hessian", "apoz")
DATA_CRITERIA = ("taylor", "fisher", "hessian", "apoz")


@dataclass(frozen=True)
class CriterionConfig:
    """How to score weights.

    Attributes:
        name: one of :data:`CRITERIA`.
        max_batches: use at most this many batches of the data source (None: all).
        hutchinson_samples: Rademacher probes per batch for ``hessian``.
        seed: seeds the Hutchinson probes and the label-free default loss.
    """

    name: str = "l1"
    max_batches: int | None = None
    hutchinson_samples: int = 1
    seed: int = 0

    def __post_init__(self) -> None:
        if self.name not in CRITERIA:
            raise ValueError(f"unknown criterion {self.name!r}; choose from {', '.join(CRITERIA)}")


def weight_scores(model: nn.Module, criterion: str | CriterionConfig = "l1", data: Iterable[Batch] | None = None,
                  loss_fn: LossFn | None = None, names: Sequence[str] | None = None) -> dict[str, Tensor]:
    """Saliency of every entry of the named weights (default: all prunable weights).

    Returns ``{weight name: tensor of the weight's shape}``; higher means more important.
    """
    config = criterion if isinstance(criterion, CriterionConfig) else CriterionConfig(criterion)
    names = list(names) if names is not None else prunable_weights(model)
    weights = {n: model.get_parameter(n).detach() for n in names}
    if config.name == "l1":
        return {n: w.abs().clone() for n, w in weights.items()}
    if config.name == "l2":
        return {n: w.pow(2) for n, w in weights.items()}
    if data is None:
        raise ValueError(f"criterion {config.name!r} needs a data source")
    if config.name == "apoz":
        freq = activation_frequency(model, names, data, config.max_batches)
        return {n: w.abs() * _expand_to_weight(freq[n], w) for n, w in weights.items()}
    return _gradient_scores(model, names, config, data, loss_fn)


def activation_frequency(model: nn.Module, names: Sequence[str], data: Iterable[Batch],
                         max_batches: int | None = None) -> dict[str, Tensor]:
    """Fraction of non-zero values of each input feature (Linear) or input channel (Conv) of the named layers.

    ``1 - frequency`` is the APoZ (average percentage of zeros) of the unit feeding that input.
    """
    nonzero: dict[str, Tensor] = {}
    count: dict[str, int] = {}

    def record(name: str, x: Tensor, _y: Tensor) -> None:
        w = model.get_parameter(name)
        if w.dim() == 2:  # Linear: features on the last axis
            flat = x.reshape(-1, x.shape[-1])
        else:  # Conv: channels on axis 1
            flat = x.transpose(0, 1).reshape(x.shape[1], -1).T
        nonzero[name] = nonzero.get(name, 0) + (flat != 0).sum(0).double()
        count[name] = count.get(name, 0) + flat.shape[0]

    was_training = model.training
    set_training(model, False)
    try:
        for_each_layer_call(model, names, data, record, max_batches, desc="activation frequency")
    finally:
        set_training(model, was_training)
    return {n: (nonzero[n] / count[n]).float() for n in names if n in nonzero}


def _expand_to_weight(per_input: Tensor, w: Tensor) -> Tensor:
    """Broadcast a per-input-channel vector onto a weight ``[out, in/groups, *kernel]`` (handles groups)."""
    out, cin_g = w.shape[0], w.shape[1]
    groups = per_input.numel() // cin_g
    group_of_row = torch.arange(out) // (out // groups)
    idx = group_of_row[:, None] * cin_g + torch.arange(cin_g)[None, :]  # [out, in/groups]
    return per_input[idx].reshape(out, cin_g, *([1] * (w.dim() - 2))).expand_as(w).to(w.dtype)


def _gradient_scores(model: nn.Module, names: Sequence[str], config: CriterionConfig,
                     data: Iterable[Batch], loss_fn: LossFn | None) -> dict[str, Tensor]:
    params = [model.get_parameter(n) for n in names]
    flags = [p.requires_grad for p in params]
    was_training = model.training
    generator = torch.Generator().manual_seed(config.seed)
    acc = [torch.zeros_like(p, dtype=torch.float32) for p in params]
    batches = 0
    set_training(model, False)
    try:
        for p in params:
            p.requires_grad_(True)
        for batch in iterate(data, config.max_batches, desc=f"{config.name} scores"):
            loss = batch_loss(model, batch, loss_fn, generator)
            if config.name == "hessian":
                grads = torch.autograd.grad(loss, params, create_graph=True)
                for _ in range(config.hutchinson_samples):
                    probes = [torch.randint(0, 2, p.shape, generator=generator).to(p.dtype) * 2 - 1 for p in params]
                    hz = torch.autograd.grad(grads, params, grad_outputs=probes, retain_graph=True)
                    for a, z, h in zip(acc, probes, hz):
                        a += (z * h).detach() / config.hutchinson_samples
            else:
                grads = torch.autograd.grad(loss, params)
                for a, g, p in zip(acc, grads, params):
                    a += (g * p).abs() if config.name == "taylor" else g.pow(2)
            batches += 1
    finally:
        for p, flag in zip(params, flags):
            p.requires_grad_(flag)
        set_training(model, was_training)
    if batches == 0:
        raise ValueError("the data source yielded no batches")
    scores = {}
    for n, a, p in zip(names, acc, params):
        mean = a / batches
        w2 = p.detach().pow(2)
        # OBD assumes positive curvature; a negative Hutchinson estimate is noise or a saddle: use |.|.
        scores[n] = mean if config.name == "taylor" else 0.5 * mean.abs() * w2
    return scores


def unit_reduce(scores: Tensor, criterion: str) -> Tensor:
    """Sum a weight's saliency per output row (``[out]``); ``l2`` returns the row L2 norm."""
    total = as_matrix(scores).sum(1)
    return total.sqrt() if criterion == "l2" else total
