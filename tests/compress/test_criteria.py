"""Each criterion ranks a planted unimportant unit last."""
from __future__ import annotations

import pytest
import torch
from compress_helpers import batches, make_task, train
from torch import nn

from hwcomp.compress.criteria import CRITERIA, activation_frequency, weight_scores
from hwcomp.compress.structured import ChannelGroup, unit_scores

GROUP = ChannelGroup("0", ("2",))
PLANT = 5


def trained_mlp() -> tuple[nn.Sequential, list]:
    x, y = make_task()
    data = batches(x, y)
    model = train(nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3)), data)
    return model, data


def rank_of(scores: torch.Tensor, unit: int) -> int:
    """0 = least important."""
    return int((scores < scores[unit]).sum())


def test_magnitude_criteria_rank_tiny_unit_last():
    model, data = trained_mlp()
    with torch.no_grad():  # a neuron with tiny incoming and outgoing weights
        model[0].weight[PLANT] *= 1e-3
        model[0].bias[PLANT] *= 1e-3
        model[2].weight[:, PLANT] *= 1e-3
    for c in ("l1", "l2"):
        assert rank_of(unit_scores(model, [GROUP], c)["0"], PLANT) == 0, c


@pytest.mark.parametrize("criterion", ["taylor", "fisher", "hessian", "apoz"])
def test_data_criteria_rank_dead_unit_last(criterion):
    model, data = trained_mlp()
    with torch.no_grad():  # large weights, but never active: a magnitude criterion cannot tell
        model[0].weight[PLANT] = model[0].weight[PLANT].sign() * 2.0
        model[0].bias[PLANT] = -100.0
        model[2].weight[:, PLANT] = 2.0
    scores = unit_scores(model, [GROUP], criterion, data)["0"]
    assert rank_of(scores, PLANT) == 0, scores
    assert rank_of(unit_scores(model, [GROUP], "l1")["0"], PLANT) == 15  # the control: l1 ranks it first


@pytest.mark.parametrize("criterion", ["taylor", "fisher"])
def test_gradient_criteria_rank_disconnected_unit_last(criterion):
    model, data = trained_mlp()
    with torch.no_grad():  # active, large input weights, but its output barely reaches the logits
        model[0].weight[PLANT] *= 3.0
        model[0].bias[PLANT] = 3.0
        model[2].weight[:, PLANT] *= 1e-4
    assert rank_of(unit_scores(model, [GROUP], criterion, data)["0"], PLANT) == 0


def test_weight_scores_shapes_and_apoz_frequency():
    model, data = trained_mlp()
    with torch.no_grad():
        model[0].bias[PLANT] = -100.0
    freq = activation_frequency(model, ["2.weight"], data)["2.weight"]
    assert freq.shape == (16,) and freq[PLANT] == 0.0 and freq.max() > 0.3
    for c in CRITERIA:
        s = weight_scores(model, c, data)
        assert set(s) == {"0.weight", "2.weight"}
        assert all(s[n].shape == model.get_parameter(n).shape and (s[n] >= 0).all() for n in s), c
    # apoz saliency of weights reading the dead unit is exactly zero
    assert weight_scores(model, "apoz", data)["2.weight"][:, PLANT].abs().sum() == 0


def test_label_free_fisher_ranks_disconnected_unit_last():
    model, data = trained_mlp()
    with torch.no_grad():
        model[2].weight[:, PLANT] *= 1e-4
    unlabeled = [(xb,) for xb, _ in data]
    assert rank_of(unit_scores(model, [GROUP], "fisher", unlabeled)["0"], PLANT) == 0
