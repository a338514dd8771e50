"""OBS structured pruning with compensation, and data-aware low-rank factorization."""
from __future__ import annotations

import copy

import torch
from torch import nn

from hwcomp.compress.low_rank import LowRankConfig, low_rank_model
from hwcomp.compress.reconstruct import ObsConfig, obs_prune_units
from hwcomp.compress.structured import ChannelGroup, prune_units


def redundant_mlp() -> nn.Sequential:
    """Unit 5 duplicates unit 3; unit 9 always outputs 1 (zero input weights, bias 1)."""
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4)).eval()
    with torch.no_grad():
        m[0].weight[5], m[0].bias[5] = m[0].weight[3], m[0].bias[3]
        m[0].weight[9], m[0].bias[9] = 0.0, 1.0
        m[2].weight[:, 9] = 3.0  # large outgoing weights: magnitude criteria keep it
    return m


def test_obs_removes_redundant_units_without_changing_outputs():
    model = redundant_mlp()
    x = torch.randn(512, 8)
    data = [x[i:i + 128] for i in range(0, 512, 128)]
    obs = copy.deepcopy(model)
    kept = obs_prune_units(obs, [ChannelGroup("0", ("2",))], 2 / 16, data, ObsConfig(damp=1e-9, block=1))
    removed = set(range(16)) - set(kept["0"].tolist())
    assert 9 in removed and len(removed & {3, 5}) == 1, removed
    assert obs[0].weight.shape == (14, 8) and obs[2].weight.shape == (4, 14)
    with torch.no_grad():
        torch.testing.assert_close(obs(x), model(x), atol=1e-4, rtol=0)
        plain = copy.deepcopy(model)
        prune_units(plain, [ChannelGroup("0", ("2",))], 2 / 16, "l2")
        assert (plain(x) - model(x)).abs().max() > 1e-2  # without compensation the function changes


def test_data_aware_low_rank_is_exact_on_low_dimensional_inputs():
    torch.manual_seed(0)
    x = torch.randn(256, 4) @ torch.randn(4, 32)  # inputs span a 4-dim subspace
    data = [x[i:i + 64] for i in range(0, 256, 64)]
    layer = nn.Sequential(nn.Linear(32, 24))
    plain, aware = copy.deepcopy(layer), copy.deepcopy(layer)
    cfg = LowRankConfig(energy=None, rank=4, damp=1e-9)
    low_rank_model(plain, cfg)
    low_rank_model(aware, cfg, data=data)
    with torch.no_grad():
        ref = layer(x)
        assert (aware(x) - ref).abs().max() < 1e-3 * ref.abs().max()
        assert (plain(x) - ref).abs().max() > 0.05 * ref.abs().max()
