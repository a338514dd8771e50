"""Masks: exact sparsity and block structure, mask persistence during training, gradual schedule."""
from __future__ import annotations

import math

import pytest
import torch
from compress_helpers import batches, make_task
from torch import nn

from hwcomp.compress.finetune import FinetuneConfig, finetune
from hwcomp.compress.prune import (GradualPruner, GradualSchedule, Granularity, MaskHooks, PruneConfig,
                                   compute_masks, cubic_sparsity, mask_sparsity)


def test_parse_granularity():
    assert Granularity.parse("block:16x1") == Granularity(16, 1)
    assert Granularity.parse("unstructured").unstructured
    with pytest.raises(ValueError):
        Granularity.parse("block:16")


@pytest.mark.parametrize("shape,rows,cols,sparsity", [
    ((37, 45), 16, 4, 0.7),      # N=37, K=45: neither divisible by the block
    ((37, 45), 16, 1, 0.9),
    ((8, 3, 3, 3), 4, 2, 0.5),   # Conv kernel viewed as [8, 27]
    ((37, 45), 1, 1, 0.9),       # unstructured
])
def test_block_mask_exact_sparsity_and_structure(shape, rows, cols, sparsity):
    g = torch.Generator().manual_seed(1)
    scores = torch.rand(shape, generator=g)
    mask = compute_masks({"w": scores}, PruneConfig(sparsity, f"block:{rows}x{cols}"))["w"]
    assert mask.shape == scores.shape and mask.dtype == torch.bool
    m, s = mask.reshape(shape[0], -1), scores.reshape(shape[0], -1)
    nbr, nbc = math.ceil(m.shape[0] / rows), math.ceil(m.shape[1] / cols)
    kept, means, sizes = [], [], []
    for i in range(nbr):
        for j in range(nbc):
            block = m[i * rows:(i + 1) * rows, j * cols:(j + 1) * cols]
            assert block.all() or not block.any(), "mask is not constant over a block"
            kept.append(bool(block[0, 0]))
            means.append(float(s[i * rows:(i + 1) * rows, j * cols:(j + 1) * cols].mean()))
            sizes.append(block.numel())
    n_pruned = math.floor(sparsity * nbr * nbc + 0.5)
    assert kept.count(False) == n_pruned
    # exact element sparsity: the pruned blocks' sizes (partial edge blocks are smaller)
    assert int((~m).sum()) == sum(z for z, k in zip(sizes, kept) if not k)
    # the pruned blocks are exactly the lowest mean-score ones
    assert max(v for v, k in zip(means, kept) if not k) <= min(v for v, k in zip(means, kept) if k)


def test_global_scope_prunes_lowest_overall():
    a, b = torch.full((4, 4), 1.0), torch.full((4, 4), 2.0)
    masks = compute_masks({"a": a, "b": b}, PruneConfig(0.5, "unstructured", "global"))
    assert not masks["a"].any() and masks["b"].all()
    assert mask_sparsity(masks) == 0.5


def test_masks_survive_finetuning_with_momentum_and_weight_decay():
    x, y = make_task()
    data = batches(x, y)
    model = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 3))
    masks = compute_masks({"0.weight": model[0].weight.detach().abs()}, PruneConfig(0.8, "block:4x1"))
    losses = finetune(model, data, FinetuneConfig(epochs=3, lr=1e-2, weight_decay=0.1), masks=masks)
    assert losses[-1] < losses[0]
    w = model[0].weight.detach()
    assert (w[~masks["0.weight"]] == 0).all() and (w[masks["0.weight"]] != 0).all()
    assert not MaskHooks.attached(model)


def test_cubic_schedule():
    sched = GradualSchedule(end_step=100, begin_step=10)
    assert cubic_sparsity(5, 0.9, sched) == 0.0
    assert cubic_sparsity(10, 0.9, sched) == 0.0
    assert cubic_sparsity(55, 0.9, sched) == pytest.approx(0.9 * (1 - 0.5**3))
    assert cubic_sparsity(100, 0.9, sched) == pytest.approx(0.9)
    assert cubic_sparsity(500, 0.9, sched) == pytest.approx(0.9)


def test_gradual_pruner_is_monotone_and_reaches_target():
    model = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 4))  # shapes divisible by 2x2
    names = ["0.weight", "2.weight"]
    pruner = GradualPruner(model, names, PruneConfig(0.75, "block:2x2"), GradualSchedule(end_step=20, frequency=5),
                           lambda: {n: model.get_parameter(n).detach().abs() for n in names})
    history, previous = [], None
    for step in range(1, 21):
        pruner.step(step)
        history.append(pruner.current)
        current = {n: m.clone() for n, m in pruner.hooks.masks.items()}
        if previous is not None:  # nested: nothing pruned comes back
            assert all((current[n] <= previous[n]).all() for n in names)
        previous = current
    masks = pruner.finish()
    assert history == sorted(history) and 0 < history[4] < history[-1]
    assert mask_sparsity(masks) == pytest.approx(0.75)
    assert (model[0].weight[~masks["0.weight"]] == 0).all()
