"""Truncated-SVD factorization: Eckart-Young error, rank selection, Conv reshaping."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from hwcomp.compress.low_rank import (LowRankConfig, choose_rank, factorize_conv2d, factorize_linear,
                                      low_rank_model)


def test_linear_factorization_error_is_discarded_energy():
    layer = nn.Linear(64, 48)
    with torch.no_grad():  # a decaying spectrum, like trained weights
        u, _, vh = torch.linalg.svd(torch.randn(48, 64), full_matrices=False)
        layer.weight.copy_(u @ torch.diag(torch.logspace(0, -2, 48)) @ vh)
    s = torch.linalg.svdvals(layer.weight.detach().double())
    for rank in (5, 20, 40):
        f = factorize_linear(layer, rank)
        assert f[0].weight.shape == (rank, 64) and f[1].weight.shape == (48, rank)
        err = torch.linalg.matrix_norm(layer.weight.double() - (f[1].weight @ f[0].weight).double()).detach()
        expected = s[rank:].pow(2).sum().sqrt()
        assert float(err) == pytest.approx(float(expected), rel=1e-4)
        x = torch.randn(8, 64)
        torch.testing.assert_close(f(x), x @ (f[1].weight @ f[0].weight).T + layer.bias, atol=1e-5, rtol=1e-5)


def test_conv_factorization_error_and_outputs():
    conv = nn.Conv2d(6, 10, 3, stride=2, padding=1)
    w2d = conv.weight.detach().reshape(10, -1).double()
    s = torch.linalg.svdvals(w2d)
    f = factorize_conv2d(conv, 4)
    assert f[0].weight.shape == (4, 6, 3, 3) and f[1].weight.shape == (10, 4, 1, 1)
    approx = (f[1].weight.reshape(10, 4) @ f[0].weight.reshape(4, -1)).double().detach()
    err = torch.linalg.matrix_norm(w2d - approx)
    assert float(err) == pytest.approx(float(s[4:].pow(2).sum().sqrt()), rel=1e-4)
    x = torch.randn(2, 6, 9, 9)
    expected = nn.functional.conv2d(x, approx.float().reshape(conv.weight.shape), conv.bias, 2, 1)
    torch.testing.assert_close(f(x), expected, atol=1e-5, rtol=1e-5)
    full = factorize_conv2d(conv, 10)  # full rank reproduces the layer
    torch.testing.assert_close(full(x), conv(x), atol=1e-5, rtol=1e-5)


def test_rank_selection():
    s = torch.tensor([4.0, 2.0, 1.0, 1.0])  # energies 16, 4, 1, 1 of 22
    assert choose_rank(s, 4, 4, LowRankConfig(energy=0.7)) == 1
    assert choose_rank(s, 4, 4, LowRankConfig(energy=0.9)) == 2
    assert choose_rank(s, 4, 4, LowRankConfig(energy=1.0)) == 4
    assert choose_rank(s, 100, 300, LowRankConfig(energy=None, param_ratio=0.5)) == 4  # capped by full rank
    assert choose_rank(torch.ones(100), 100, 300, LowRankConfig(energy=None, param_ratio=0.5)) == 37


def test_low_rank_model_replaces_only_what_saves_parameters():
    model = nn.Sequential(nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, 4))
    ranks = low_rank_model(model, LowRankConfig(energy=None, param_ratio=0.25))
    # 16 * (128 + 128) = 0.25 * 128^2; no rank of the 128x4 head fits 0.25 * 512 weights, so it stays
    assert ranks == {"0": 16}
    assert isinstance(model[0], nn.Sequential) and isinstance(model[2], nn.Linear)
    assert model(torch.randn(3, 128)).shape == (3, 4)
