"""The fidelity simulation: a model's outputs in PyTorch with options put on its layers in place, and
the output error (1 − cosine against fp32 on the calibration inputs) that follows."""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import numpy as np

from ..metrics import cosine_eps
from .layers import (
    LinearLayer,
    _fake_int8_weight,
    factorize_low_rank,
    full_width,
    prune_linear_,
)
from .space import Option

# The error model (1 − cosine) uses the ``+ 1e-30`` form of the cosine: a zero output scores 0.
_cosine = cosine_eps


def model_outputs(model, samples, chunk: int = 16) -> list[np.ndarray]:
    """The model's (first) output on each sample, as NumPy.

    Samples are run ``chunk`` at a time, concatenated on axis 0 (one larger batch runs much faster
    than many small ones); a model whose output does not keep axis 0 as the batch runs one by one.
    """
    import torch

    def run(inputs):
        y = model(*inputs)
        return (y[0] if isinstance(y, (tuple, list)) else y).numpy()

    outs: list[np.ndarray] = []
    with torch.no_grad():
        for i in range(0, len(samples), chunk):
            group = samples[i:i + chunk]
            sizes = [s[0].shape[0] if s[0].ndim else 0 for s in group]
            same = all(len(s) == len(group[0]) and all(a.shape[1:] == b.shape[1:] for a, b in zip(s, group[0]))
                       for s in group)
            if len(group) > 1 and same and all(sizes):
                y = run([torch.from_numpy(np.concatenate([s[j] for s in group])) for j in range(len(group[0]))])
                if y.ndim and y.shape[0] == sum(sizes):
                    outs += np.split(y, np.cumsum(sizes)[:-1])
                    continue
            outs += [run([torch.from_numpy(a) for a in s]) for s in group]
    return outs


def layer_grams(model, names: list[str], samples, max_bytes: int = 1 << 29):
    """Yield ``(name, input Gram)`` for each named Linear in order, on the model as it is now.

    Grams are collected for as many layers per calibration pass as fit in ``max_bytes`` (BERT-base's
    3072-wide inputs take 75 MB each), so the calibration set runs a few times, not once per layer.
    """
    from ..compress.block_refit import input_grams

    mods = dict(model.named_modules())
    chunk: list[str] = []
    size = 0
    for i, name in enumerate(names):
        chunk.append(name)
        size += 8 * (mods[name].in_features + 1) ** 2
        nxt = names[i + 1] if i + 1 < len(names) else None
        if nxt is None or size + 8 * (mods[nxt].in_features + 1) ** 2 > max_bytes:
            grams = input_grams({n: mods[n] for n in chunk}, lambda: model_outputs(model, samples))
            for n in chunk:
                yield n, grams.pop(n)
            chunk, size = [], 0


def model_error(model, samples, reference: list[np.ndarray]) -> float:
    """1 − the mean cosine of the model's outputs against the reference outputs."""
    outs = model_outputs(model, samples)
    return 1.0 - float(np.mean([_cosine(o, r) for o, r in zip(outs, reference)]))


def _smoothing(ch_absmax: np.ndarray, w_absmax: np.ndarray, alpha: float, min_ratio: float = 4.0) -> np.ndarray:
    """SmoothQuant factors as ``hwcomp.quantize.smooth`` computes them (ones without outlier channels)."""
    from ..quantize.smooth import smoothing_scale

    return smoothing_scale(ch_absmax, w_absmax, alpha, min_ratio)


def apply_option_(model, layer_name: str, option: Option, ranges: dict, gram=None,
                  weight_bits: Callable[[int, int], int] = full_width, pruned: dict | None = None) -> list:
    """Put ``option`` on one layer of ``model`` in place (PyTorch simulation); returns hooks to remove.

    int8 follows the realized scheme of ``QuantConfig()``: SmoothQuant (alpha 0.7) where the input
    has outlier channels, weights per output channel, the smoothed input per tensor, affine (uint8
    when non-negative). ``ranges``: :func:`activation_ranges`. ``gram``: the layer's input Gram
    matrix, to prune with re-fit exactly as :func:`compile_policy` will. ``weight_bits``: dense int8
    weight width by shape (:func:`int8_weight_bits`; sparse + int8 keeps 8)."""
    import torch

    from ..quantize import QuantConfig
    from ..quantize.qmath import activation_params

    lin = dict(model.named_modules())[layer_name]
    hooks = []
    if option.kind in ("sparse", "sparse_int8"):
        key = (option.sparsity, option.block)
        if pruned is not None and key in pruned:
            lin.weight.data = pruned[key][0].clone()
            if lin.bias is not None:
                lin.bias.data = pruned[key][1].clone()
        else:
            prune_linear_(lin, option, gram)
            if pruned is not None:
                pruned[key] = lin.weight.data.clone(), None if lin.bias is None else lin.bias.data.clone()
    if option.kind == "low_rank":
        # The product of the two factors: the factorized layer's output, up to float rounding.
        seq = factorize_low_rank(lin, option, gram)
        lin.weight.data = (seq[1].weight.data @ seq[0].weight.data).to(lin.weight.dtype)
    if option.kind in ("int8", "sparse_int8"):
        cfg = QuantConfig()
        lo_c, hi_c = ranges[layer_name]
        w = lin.weight.data.double()
        s = np.ones(w.shape[1])
        if cfg.smooth is not None:
            s = _smoothing(np.maximum(np.abs(lo_c), np.abs(hi_c)), w.abs().amax(0).numpy(), cfg.smooth)
        lo, hi = float(np.min(lo_c / s)), float(np.max(hi_c / s))
        scale, zp, dtype = activation_params(lo, hi, cfg.activations, cfg.bits, unsigned=cfg.unsigned_nonneg)
        qmin, qmax = (0, 255) if dtype == "uint8" else (-128, 127)
        st = torch.from_numpy(s)
        bits = weight_bits(lin.in_features, lin.out_features) if option.kind == "int8" else 8
        lin.weight.data = (_fake_int8_weight(w * st, bits) / st).to(lin.weight.dtype)

        def quant_input(m, args, st=st.float()):
            xs = args[0] / st
            q = torch.clamp(torch.round(xs / scale) + zp, qmin, qmax)
            return ((q - zp) * scale * st,) + tuple(args[1:])

        hooks.append(lin.register_forward_pre_hook(quant_input))
    return hooks


def activation_ranges(model, samples, layers: list[LinearLayer]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per-input-channel ``(min, max)`` of each layer's input over the samples (min-max observer)."""
    import torch

    ranges: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    def observe(name, x):
        x = x.detach().reshape(-1, x.shape[-1])
        lo, hi = x.amin(0).double().numpy(), x.amax(0).double().numpy()
        if name in ranges:
            lo, hi = np.minimum(ranges[name][0], lo), np.maximum(ranges[name][1], hi)
        ranges[name] = (lo, hi)

    mods = dict(model.named_modules())
    hooks = [mods[l.name].register_forward_pre_hook(lambda m, a, n=l.name: observe(n, a[0])) for l in layers]
    with torch.no_grad():
        model_outputs(model, samples)
    for h in hooks:
        h.remove()
    return ranges


@contextlib.contextmanager
def trial(model, names):
    """Layers of ``model`` changed in place for one simulated trial and restored afterwards — their
    weights and biases, and the hooks collected in the yielded list (a deep copy per trial would copy
    BERT-base hundreds of times)."""
    mods = dict(model.named_modules())
    saved = {n: (mods[n].weight.data.clone(), None if mods[n].bias is None else mods[n].bias.data.clone())
             for n in names}
    hooks: list = []
    try:
        yield hooks
    finally:
        for n, (w, b) in saved.items():
            mods[n].weight.data = w
            if b is None:
                mods[n].bias = None  # a trial may have given it one (a width's compensated bias)
            else:
                mods[n].bias.data = b
        for h in hooks:
            h.remove()
