"""Low-rank factorization of Linear and Conv layers by truncated SVD.

``W [out, in] ~= (U_r sqrt(S_r)) (sqrt(S_r) V_r^T)``: the layer becomes ``in -> r`` (no bias) then ``r -> out``
(original bias), with Frobenius error ``sqrt(sum of discarded sigma^2)`` (Eckart-Young: the best rank-r
approximation). A Conv kernel ``[out, in, kh, kw]`` is factorized as the matrix ``[out, in*kh*kw]``: the first
layer is a ``kh x kw`` conv to ``r`` channels (same stride/padding/dilation), the second a 1x1 conv.

Data-aware variant (Linear only): given the Gram matrix ``H = X^T X`` of the layer's inputs on calibration
data, factorize ``W L`` with ``L L^T = H`` (Cholesky) and map back with ``L^-1``. That minimizes the output
error ``||(W - W') X^T||_F`` instead of the weight error, as in ASVD / SVD-LLM (Wang et al. 2024): directions
the inputs never excite are dropped first.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .batches import Batch
from .layers import name_matches


@dataclass(frozen=True)
class LowRankConfig:
    """How to choose each layer's rank (set exactly one of ``energy`` / ``param_ratio``, or ``rank``).

    Attributes:
        energy: smallest rank whose kept singular values hold this fraction of ``sum sigma^2``.
        param_ratio: largest rank whose two factors hold at most this fraction of the layer's weights.
        rank: a fixed rank for every layer.
        skip_if_larger: leave a layer alone when its factorization would not have fewer parameters.
        damp: ridge of the data-aware factorization, relative to the input Gram's mean diagonal.
    """

    energy: float | None = 0.9
    param_ratio: float | None = None
    rank: int | None = None
    skip_if_larger: bool = True
    damp: float = 1e-2

    def __post_init__(self) -> None:
        if sum(v is not None for v in (self.energy, self.param_ratio, self.rank)) != 1:
            raise ValueError("set exactly one of energy, param_ratio, rank")


def choose_rank(singular_values: Tensor, out_dim: int, in_dim: int, config: LowRankConfig) -> int:
    """Rank for a matrix ``[out_dim, in_dim]`` with the given singular values (descending); 0 when no rank
    fits a ``param_ratio`` budget."""
    full = singular_values.numel()
    if config.rank is not None:
        return max(1, min(full, config.rank))
    if config.energy is not None:
        e = singular_values.double().pow(2)
        cum = torch.cumsum(e, 0) / e.sum()
        return min(full, int(torch.searchsorted(cum, torch.tensor(config.energy, dtype=torch.float64) - 1e-12)) + 1)
    budget = config.param_ratio * out_dim * in_dim
    return min(full, int(budget // (out_dim + in_dim)))  # 0: no rank fits the budget


def saves_parameters(out_dim: int, in_dim: int, rank: int) -> bool:
    """Whether ``rank * (out + in) < out * in``."""
    return rank * (out_dim + in_dim) < out_dim * in_dim


def _whitener(gram: Tensor, damp: float) -> Tensor:
    """Lower-triangular ``L`` with ``L L^T = H + damp * mean(diag H) * I``."""
    h = gram.double().clone()
    h.diagonal().add_(damp * float(h.diagonal().mean()) + 1e-12)
    return torch.linalg.cholesky(h)


def _factors(w2d: Tensor, rank: int, whitener: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
    w = w2d.detach().double()
    u, s, vh = torch.linalg.svd(w if whitener is None else w @ whitener, full_matrices=False)
    root = s[:rank].sqrt()
    first = vh[:rank] * root[:, None]
    if whitener is not None:  # first = (S^1/2 V^T) L^-1 = (L^-T V S^1/2)^T, by a triangular solve
        first = torch.linalg.solve_triangular(whitener.T, first.T, upper=True).T
    return first, (u[:, :rank] * root[None, :]), s


def factorize_linear(layer: nn.Linear, rank: int, gram: Tensor | None = None, damp: float = 1e-2) -> nn.Sequential:
    """``Linear(in, out)`` -> ``Sequential(Linear(in, rank, bias=False), Linear(rank, out))``.

    With ``gram`` (``X^T X`` of the layer's inputs, ``[in, in]``) the factorization minimizes the output
    error on those inputs (data-aware); ``damp`` regularizes it relative to the mean diagonal.
    """
    first, second, _ = _factors(layer.weight, rank, _whitener(gram, damp) if gram is not None else None)
    dtype = layer.weight.dtype
    a = nn.Linear(layer.in_features, rank, bias=False, dtype=dtype)
    b = nn.Linear(rank, layer.out_features, bias=layer.bias is not None, dtype=dtype)
    with torch.no_grad():
        a.weight.copy_(first)
        b.weight.copy_(second)
        if layer.bias is not None:
            b.bias.copy_(layer.bias)
    return nn.Sequential(a, b)


def factorize_conv2d(layer: nn.Conv2d, rank: int) -> nn.Sequential:
    """``Conv2d(in, out, k)`` -> ``Sequential(Conv2d(in, rank, k, no bias), Conv2d(rank, out, 1))`` (groups=1)."""
    if layer.groups != 1:
        raise ValueError("grouped convolutions are not factorized")
    w = layer.weight
    first, second, _ = _factors(w.reshape(w.shape[0], -1), rank)
    dtype = w.dtype
    a = nn.Conv2d(layer.in_channels, rank, layer.kernel_size, layer.stride, layer.padding, layer.dilation,
                  bias=False, padding_mode=layer.padding_mode, dtype=dtype)
    b = nn.Conv2d(rank, layer.out_channels, 1, bias=layer.bias is not None, dtype=dtype)
    with torch.no_grad():
        a.weight.copy_(first.reshape(rank, *w.shape[1:]))
        b.weight.copy_(second.reshape(w.shape[0], rank, 1, 1))
        if layer.bias is not None:
            b.bias.copy_(layer.bias)
    return nn.Sequential(a, b)


def low_rank_model(model: nn.Module, config: LowRankConfig = LowRankConfig(), include: Sequence[str] = ("*",),
                   exclude: Sequence[str] = (), data: Iterable[Batch] | None = None,
                   max_batches: int | None = None) -> dict[str, int]:
    """Replace every Linear/Conv2d whose module name matches ``include`` (globs) and not ``exclude`` by its
    factorization, in place. Returns ``{module name: chosen rank}`` for the layers replaced.

    With ``data``, Linear layers are factorized data-aware (input Gram matrices from one calibration pass
    over the unmodified model); ranks by ``energy`` then refer to the whitened spectrum.
    """
    chosen: dict[str, int] = {}
    targets = [(n, m) for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))
               and name_matches(f"{n}.weight", include) and not name_matches(f"{n}.weight", exclude)]
    grams: dict[str, Tensor] = {}
    if data is not None:
        from .reconstruct import input_hessians  # (X 1)^T (X 1); the bias column is dropped below

        linear = [n for n, m in targets if isinstance(m, nn.Linear)]
        grams = {n: g[:-1, :-1] for n, g in input_hessians(model, linear, data, max_batches).items()}
    for name, layer in targets:
        w2d = layer.weight.detach().reshape(layer.weight.shape[0], -1).double()
        whitener = _whitener(grams[name], config.damp) if name in grams else None
        s = torch.linalg.svdvals(w2d if whitener is None else w2d @ whitener)
        rank = choose_rank(s, *w2d.shape, config)
        if rank == 0 or (config.skip_if_larger and not saves_parameters(*w2d.shape, rank)):
            continue
        if isinstance(layer, nn.Linear):
            new = factorize_linear(layer, rank, grams.get(name), config.damp)
        else:
            new = factorize_conv2d(layer, rank)
        parent, _, attr = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, attr, new)
        chosen[name] = rank
    return chosen
