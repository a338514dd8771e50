"""What a policy's layer is and how an option changes its weights: the ``nn.Linear`` layers a model
runs, block pruning (with the least-squares re-fit), the low-rank factorization, and the int8 weight
codes the realized kernels store."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np

from ..target import Target
from .space import Option

#: Options fitted to the calibration inputs: the re-fit of pruning, the data-aware low-rank SVD.
NEEDS_GRAM = ("sparse", "sparse_int8", "low_rank")


@dataclasses.dataclass(frozen=True)
class LinearLayer:
    name: str  # the torch module path, e.g. model.encoder.layer.0.attention.self.query
    rows: int
    k: int
    n: int

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.rows, self.k, self.n)


def find_linear_layers(model, example_inputs, min_elements: int = 1024) -> list[LinearLayer]:
    """Every ``nn.Linear`` the example inputs run through, with the number of rows it sees."""
    import torch

    rows: dict[str, int] = {}
    hooks = []
    for name, mod in model.named_modules():
        if isinstance(mod, torch.nn.Linear) and mod.weight.numel() >= min_elements:
            hooks.append(mod.register_forward_pre_hook(
                lambda m, a, name=name: rows.__setitem__(name, int(np.prod(a[0].shape[:-1])))))
    with torch.no_grad():
        model(*example_inputs)
    for h in hooks:
        h.remove()
    mods = dict(model.named_modules())
    return [LinearLayer(n, r, mods[n].in_features, mods[n].out_features) for n, r in rows.items()]


def prune_linear_(linear, option: Option, gram=None) -> None:
    """Block-prune one ``nn.Linear`` in place to ``option.sparsity`` (block = out rows × in cols).

    With ``gram`` (the layer's calibration input Gram matrix, :func:`layer_grams`) the mask is
    input-weighted and the surviving weights are re-fit by least squares; without, plain L1 magnitude.
    """
    import torch

    from ..sparse_format.bsr import (
        apply_block_mask,
        block_scores,
        prune_mask_from_scores,
    )

    if gram is not None:
        from ..compress.block_refit import block_prune_refit_

        block_prune_refit_(linear, option.sparsity, option.block, gram)
        return
    w = linear.weight.detach().numpy()
    keep = prune_mask_from_scores(block_scores(w, option.block, "l1"), option.sparsity)
    linear.weight.data = torch.from_numpy(np.ascontiguousarray(apply_block_mask(w, keep, option.block)))


def factorize_low_rank(linear, option: Option, gram=None):
    """``linear`` as two Linears of ``option``'s rank; data-aware (output error on the calibration
    inputs) with the layer's input ``gram`` from :func:`layer_grams`."""
    from ..compress.low_rank import factorize_linear

    k = linear.in_features
    return factorize_linear(linear, option.rank_for(k, linear.out_features),
                            None if gram is None else gram[:k, :k])


def _fake_int8_weight(w, bits: int = 8):
    """Per-output-channel symmetric ``bits``-wide codes, as the realized kernels store weights."""
    import torch

    qmax = (1 << (bits - 1)) - 1
    scale = w.abs().amax(dim=1, keepdim=True).clamp(min=1e-12) / qmax
    return torch.round(w / scale).clamp(-qmax, qmax) * scale


def full_width(k: int, n: int) -> int:
    """8-bit weights whatever the shape (the default ``weight_bits`` of the simulation)."""
    return 8


def int8_weight_bits(target: Target) -> Callable[[int, int], int]:
    """``(k, n) -> width`` of a ``k -> n`` dense layer's int8 weights as realized for ``target``
    (the kernel provider's own choice: 7 where ``reduce_range`` selects a faster kernel)."""
    from ..quantize.int8_compute import get_provider

    return get_provider(target).dense_weight_bits
