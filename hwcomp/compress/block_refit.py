"""Block-sparse pruning of one Linear with a least-squares re-fit of the weights that survive.

Magnitude pruning throws away each removed weight's contribution; with calibration inputs ``X`` the
surviving weights of every output row can absorb part of it. For a group of output rows sharing one
column pattern (a block row of the BSR layout) with kept columns ``K`` and ``H = [X 1]^T [X 1]``:

    W[g, K] = W[g, :] H[:, K] (H[K, K] + λI)^-1          (bias: the ones column, always kept)

is the exact least-squares fit of the layer's original output (the row-wise OBS update, as in
SparseGPT, Frantar & Alistarh 2023, solved in closed form because the mask is fixed first). The mask
keeps the blocks with the largest input-weighted magnitude ``|W_ij| · ||x_j||`` (Wanda, Sun et al.
2023), which already accounts for how large each input feature is.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor, nn

from ..sparse_format.bsr import block_scores, prune_mask_from_scores


def input_grams(linears: dict[str, nn.Linear], run: Callable[[], object]) -> dict[str, Tensor]:
    """``[X 1]^T [X 1]`` (float64, ``(k+1)²``) of each Linear's inputs while ``run()`` feeds the model."""
    grams: dict[str, Tensor] = {}

    def record(name, args):
        x = args[0].detach().reshape(-1, args[0].shape[-1]).double()
        x = torch.cat([x, torch.ones(x.shape[0], 1, dtype=x.dtype)], 1)
        grams[name] = grams[name] + x.T @ x if name in grams else x.T @ x

    hooks = [lin.register_forward_pre_hook(lambda _m, args, name=name: record(name, args))
             for name, lin in linears.items()]
    try:
        with torch.no_grad():
            run()
    finally:
        for h in hooks:
            h.remove()
    missing = set(linears) - set(grams)
    if missing:
        raise ValueError(f"the calibration run never reached {sorted(missing)}")
    return grams


def input_gram(linear: nn.Linear, run: Callable[[], object]) -> Tensor:
    """:func:`input_grams` of one layer."""
    return input_grams({"layer": linear}, run)["layer"]


def block_prune_refit_(linear: nn.Linear, sparsity: float, block: tuple[int, int], gram: Tensor,
                       damp: float = 0.1) -> np.ndarray:
    """Prune ``linear`` in place to ``sparsity`` in ``block`` (out rows × in cols) blocks and re-fit.

    ``gram`` is :func:`input_gram` of this layer; ``damp`` is the ridge relative to the mean of its
    diagonal (keeps the fit near the original weights where the calibration data say little; 0.1
    generalized best to held-out sentences on all-MiniLM-L6-v2 among 0.01, 0.1 and 1).
    Returns the kept-block mask (block rows × block cols).
    """
    w = linear.weight.detach().double()
    n, k = w.shape
    has_bias = linear.bias is not None
    h = gram if has_bias else gram[:k, :k]
    h = h + damp * torch.diag(h).mean() * torch.eye(h.shape[0], dtype=h.dtype)
    feature_norm = torch.sqrt(torch.diag(gram)[:k]).numpy()
    keep = prune_mask_from_scores(block_scores(w.numpy() * feature_norm[None, :], block, "l1"), sparsity)
    w_aug = torch.cat([w, linear.bias.detach().double()[:, None]], 1) if has_bias else w
    new = torch.zeros_like(w_aug)
    r, c = block
    for g in range(keep.shape[0]):
        rows = slice(g * r, min((g + 1) * r, n))
        cols = (np.nonzero(keep[g])[0][:, None] * c + np.arange(c)[None, :]).ravel()
        cols = cols[cols < k]
        if has_bias:
            cols = np.append(cols, k)
        if cols.size == 0:
            continue
        idx = torch.from_numpy(cols)
        # Solve H_KK X = H_K: W_g^T for the kept weights of every row in the group at once.
        rhs = h[idx, :] @ w_aug[rows].T
        new[rows, idx] = torch.linalg.solve(h[idx][:, idx], rhs).T
    with torch.no_grad():
        linear.weight.copy_(new[:, :k].to(linear.weight.dtype))
        if has_bias:
            linear.bias.copy_(new[:, k].to(linear.bias.dtype))
    return keep
