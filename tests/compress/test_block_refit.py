"""Block pruning with least-squares re-fit against plain magnitude block pruning."""

import numpy as np
import torch

from hwcomp.compress.block_refit import block_prune_refit_, input_gram
from hwcomp.sparse_format.bsr import block_density, block_prune


def _correlated_inputs(rows=512, k=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    # Low-rank-ish inputs with a mean: removed columns are predictable from kept ones.
    return torch.randn(rows, 16, generator=g) @ torch.randn(16, k, generator=g) + 0.1 * torch.randn(rows, k, generator=g) + 1.0


def _err(lin, ref, x):
    with torch.no_grad():
        return float(((lin(x) - ref) ** 2).mean() / (ref ** 2).mean())


def test_refit_beats_magnitude_pruning_and_keeps_the_block_pattern():
    torch.manual_seed(0)
    lin = torch.nn.Linear(64, 48)
    x = _correlated_inputs()
    with torch.no_grad():
        ref = lin(x)
    plain = torch.nn.Linear(64, 48)
    plain.load_state_dict(lin.state_dict())
    plain.weight.data = torch.from_numpy(block_prune(lin.weight.detach().numpy(), 0.5, (8, 1)))
    gram = input_gram(lin, lambda: lin(x))
    keep = block_prune_refit_(lin, 0.5, (8, 1), gram)
    w = lin.weight.detach().numpy()
    assert keep.mean() == 0.5
    assert abs(block_density(w, (8, 1)) - 0.5) < 1e-9  # the zeros are whole 8x1 blocks
    e_refit, e_plain = _err(lin, ref, x), _err(plain, ref, x)
    assert e_refit < 0.05 * e_plain, (e_refit, e_plain)


def test_already_block_sparse_layer_is_recovered_exactly():
    torch.manual_seed(1)
    lin = torch.nn.Linear(32, 16)
    keep = torch.rand(2, 32) < 0.5
    with torch.no_grad():
        lin.weight.mul_(keep.repeat_interleave(8, 0).float() * 5)
    w0, b0 = lin.weight.detach().clone(), lin.bias.detach().clone()
    x = torch.randn(256, 32)
    block_prune_refit_(lin, 1 - float(keep.float().mean()), (8, 1), input_gram(lin, lambda: lin(x)), damp=1e-8)
    np.testing.assert_allclose(lin.weight.detach().numpy(), w0.numpy(), atol=1e-4)
    np.testing.assert_allclose(lin.bias.detach().numpy(), b0.numpy(), atol=1e-4)
