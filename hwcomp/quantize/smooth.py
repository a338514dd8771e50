"""Activation smoothing (SmoothQuant, Xiao et al. 2023) for dense layers.

Transformer activations (LayerNorm outputs, GELU outputs) have a few channels with values 10-100x
larger than the rest. With one scale per tensor those channels set the step and every other
channel is left with a handful of codes — all-MiniLM-L6-v2's FFN layers lose 1 % cosine each that
way, and no clipping calibration helps (the outlier channels carry signal). Smoothing moves the
range from the activation into the weights, exactly: ``x W^T = (x / s) (W s)^T`` with

    s_k = max|x_k|^alpha / max|W[:, k]|^(1 - alpha)      (max over every dense that reads x)

so the activation is quantized per tensor as ``x / s`` (the per-channel ``1 / (s * scale)`` is
folded into the quantize kernel, or into the per-channel requantization multiplier of the int8
dense that produces ``x``) and the weights per output channel as ``W * s``. Nothing is added at
run time. A key is smoothed only when its channels have outliers (``max / median`` of the
per-channel ranges at least ``min_ratio``, 4) and every quantized consumer is a dense reading the root's last
axis as its K (reshapes only) and its producer is a float op or a dense.
"""

from __future__ import annotations

import numpy as np

from .annotate import find_layers
from .config import QuantConfig
from .graph import Graph, op_name, static_shape


def smoothing_factors(mod, config: QuantConfig, observers: dict, names: dict | None = None,
                      alpha: float = 0.5, min_ratio: float = 4.0) -> dict[str, np.ndarray]:
    """``{key: s[K]}`` for the keys that can and should be smoothed (module docstring).

    Only activations with outlier channels are smoothed: ``max_k |x_k| / median_k |x_k| >=
    min_ratio``. Smoothing equalizes the channels' calibrated ranges, which leaves no headroom for
    values past them on new inputs; on activations without outliers (an MLP on Gaussian data,
    ratio ~1.5) that costs more than it gains (cosine 0.9999 → 0.992 with 32 calibration rows).
    """
    func = mod["main"]
    g = Graph(func)
    layers = [layer for layer in find_layers(func, config, names) if not layer.skipped]
    by_key: dict[str, list] = {}
    for layer in layers:
        for op in layer.operands:
            root, steps, factor, key = g.trace(op)
            if key is not None:
                by_key.setdefault(key, []).append((layer, root, steps, factor))
    out = {}
    for key, cons in by_key.items():
        if any(layer.kind != "dense" for layer, *_ in cons):
            continue
        root = cons[0][1]
        shape = static_shape(root)
        if shape is None:
            continue
        k = shape[-1]
        ok = all(layer.weight.shape[1] == k and factor == 1.0
                 and all(op_name(st) == "relax.reshape" and static_shape(st)[-1] == k for st in steps)
                 for layer, _r, steps, factor in cons)
        producer = g.value(root)
        if op_name(producer) == "relax.matmul" and static_shape(producer)[-1] != k:
            ok = False
        obs = observers.get(key)
        if not ok or obs is None or obs.ch_max is None or obs.ch_max.shape != (k,):
            continue
        amax_x = np.maximum(np.abs(obs.ch_min), np.abs(obs.ch_max)).astype(np.float64)
        if not has_outliers(amax_x, min_ratio):
            continue
        amax_w = np.max([np.abs(layer.weight).max(axis=0) for layer, *_ in cons], axis=0).astype(np.float64)
        out[key] = smoothing_scale(amax_x, amax_w, alpha, min_ratio).astype(np.float32)
    return out


def has_outliers(amax_x: np.ndarray, min_ratio: float = 4.0) -> bool:
    """Whether the per-channel ranges ``amax_x`` have outlier channels: ``max / median >= min_ratio``."""
    med = float(np.median(amax_x))
    return not (med <= 0 or float(amax_x.max()) / med < min_ratio)


def smoothing_scale(amax_x: np.ndarray, amax_w: np.ndarray, alpha: float, min_ratio: float = 4.0) -> np.ndarray:
    """The SmoothQuant factors ``s[K]`` (float64) from the per-channel ranges of the activation
    (``amax_x = max|x_k|``) and of the weights reading it (``amax_w = max|W[:, k]|``)::

        s_k = amax_x[k]^alpha / amax_w[k]^(1 - alpha), clipped to [1e-5, 1e5]

    with ``s_k = 1`` where either range is 0, and ``s = 1`` everywhere when the activation has no
    outlier channels (:func:`has_outliers`). The power is taken in the inputs' dtypes (callers pass
    float64 for the compiler's factors)."""
    s = np.ones(np.shape(amax_x), dtype=np.float64)
    if not has_outliers(amax_x, min_ratio):
        return s
    good = (amax_x > 0) & (amax_w > 0)
    s[good] = amax_x[good] ** alpha / amax_w[good] ** (1.0 - alpha)
    return np.clip(s, 1e-5, 1e5)


def smoothed_minmax(observer, s: np.ndarray) -> tuple[float, float]:
    """The min-max range of ``x / s`` from the per-channel extremes of ``x``."""
    lo = float(np.min(observer.ch_min / s))
    hi = float(np.max(observer.ch_max / s))
    return lo, hi
