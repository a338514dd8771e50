"""The cost of each option per layer — its latency and its sensitivity — and the simulated error of a
whole policy (:class:`Simulation`).

Latency is measured on the target with hwcomp's real kernels: one single-layer model per distinct
``(rows, in, out)`` shape and option, compiled like the full model and timed with TVM's time
evaluator; results are cached as JSON lines beside the tuning database. Sensitivity is the output
error (1 − cosine against fp32 on the calibration inputs) when that layer alone takes the option,
simulated on the PyTorch model: block pruning (with the least-squares re-fit) exactly as compiled,
int8 as the realized scheme of ``QuantConfig()`` (SmoothQuant where the input has outlier channels,
per-channel weights, per-tensor affine activations).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np

from ..target import Target
from .latency import latency_table
from .layers import NEEDS_GRAM, LinearLayer, full_width
from .search import LayerProfile, OptionCost
from .simulate import (
    activation_ranges,
    apply_option_,
    layer_grams,
    model_error,
    model_outputs,
    trial,
)
from .space import Option
from .widths import check_widths, narrow_


def simulate_error(model, choices: dict[str, Option], samples, reference: list[np.ndarray],
                   ranges: dict, refit: bool = True, fit_samples=None,
                   weight_bits: Callable[[int, int], int] = full_width) -> float:
    """1 − cosine of the whole policy, simulated in PyTorch on ``samples`` (every layer at once);
    sparse layers re-fit, and structured widths chosen and re-fit, on ``fit_samples`` (default
    ``samples``)."""
    import copy

    sim = copy.deepcopy(model)
    narrowed = check_widths(model, choices)
    sparse = [n for n, o in choices.items() if o.kind in NEEDS_GRAM] if refit else []
    names = sparse + [g.consumer for g in narrowed.values()]
    grams = dict(layer_grams(model, names, fit_samples or samples)) if names else {}
    for g in narrowed.values():
        narrow_(sim, g, choices[g.producer].width, grams[g.consumer], shrink=False)
    for name, opt in choices.items():
        if opt.kind != "dense":
            apply_option_(sim, name, opt, ranges, grams.get(name) if name in sparse else None, weight_bits)
    return max(0.0, model_error(sim, samples, reference))


@dataclasses.dataclass
class Simulation:
    """What every PyTorch simulation of a policy shares, collected once: the validation inputs and
    the fp32 model's outputs on them, and the fit inputs with the int8 input ranges observed on them
    (re-fit and ranges come from ``fit``, errors are measured on ``val`` — kept apart, or the
    re-fit's overfitting to its own data reads as fidelity)."""

    fit: list
    val: list
    reference: list[np.ndarray]
    ranges: dict
    weight_bits: Callable[[int, int], int] = full_width  # dense int8 weight width by shape (int8_weight_bits)

    @classmethod
    def collect(cls, model, fit, val, layers: list[LinearLayer],
                weight_bits: Callable[[int, int], int] = full_width) -> Simulation:
        return cls(fit, val, model_outputs(model, val), activation_ranges(model, fit, layers), weight_bits)

    def error(self, model, choices: dict[str, Option], refit: bool = True) -> float:
        """1 − cosine of ``model`` with every layer of ``choices`` at once, on ``val``."""
        return simulate_error(model, choices, self.val, self.reference, self.ranges, refit, fit_samples=self.fit,
                              weight_bits=self.weight_bits)


def profile_layers(model, layers: list[LinearLayer], options: list[Option], sim: Simulation, target: Target,
                   log: Callable[[str], None] = print, refit: bool = True, device: str = "local") -> list[LayerProfile]:
    """Latency (measured on ``target`` at ``device``) and sensitivity (simulated, ``sim``) of every
    layer × option.

    ``refit``: sparse options prune with the least-squares re-fit (as compiled)."""
    from tqdm import tqdm

    latency_of = latency_table(target, device)
    shapes = sorted({l.shape for l in layers})
    latency: dict = {}
    for shape in tqdm(shapes, desc="latency per shape", disable=None):
        for opt in options:
            latency[shape, opt] = latency_of(shape, opt)
    log("latency per option (ms): " + "; ".join(
        f"{'x'.join(map(str, s))}: " + ", ".join(f"{o.label} {latency[s, o]:.3f}" for o in options)
        for s in shapes))
    profiles = []
    sparse = any(o.kind in NEEDS_GRAM for o in options)
    grams = layer_grams(model, [l.name for l in layers], sim.fit) if sparse and refit else None
    for layer in tqdm(layers, desc="sensitivity per layer", disable=None):
        gram = next(grams)[1] if grams is not None else None
        costs = []
        pruned: dict = {}
        for opt in options:
            if opt.kind == "dense":
                err = 0.0
            else:
                with trial(model, [layer.name]) as hooks:
                    hooks += apply_option_(model, layer.name, opt, sim.ranges, gram, sim.weight_bits, pruned)
                    err = max(0.0, model_error(model, sim.val, sim.reference))
            costs.append(OptionCost(opt, latency[layer.shape, opt], err))
        profiles.append(LayerProfile(layer.name, layer.shape, costs))
    return profiles
