"""Model size and cost: parameter counts, bytes, and FLOPs of Linear/Conv layers at given input shapes."""
from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

from .batches import Batch, set_training
from .layers import for_each_layer_call, prunable_weights


def count_parameters(model: nn.Module, nonzero: bool = False) -> int:
    """Number of parameters (``nonzero=True``: only the non-zero ones)."""
    return sum(int(p.count_nonzero()) if nonzero else p.numel() for p in model.parameters())


def parameter_bytes(model: nn.Module, nonzero: bool = False) -> int:
    """Bytes of the parameters at their stored dtype (``nonzero=True``: values only, no sparse indices)."""
    return sum((int(p.count_nonzero()) if nonzero else p.numel()) * p.element_size() for p in model.parameters())


@dataclass(frozen=True)
class LayerCost:
    """Cost of one Linear/Conv weight over one forward pass (summed over every call of the layer).

    ``flops`` counts a multiply-add as 2 FLOPs; ``nonzero_flops`` skips the products with zero weights.
    """

    name: str
    params: int
    nonzero_params: int
    flops: int
    nonzero_flops: int


def layer_costs(model: nn.Module, example_inputs: Batch) -> list[LayerCost]:
    """FLOPs of every Linear/Conv for one forward on ``example_inputs``, in execution order."""
    costs: dict[str, list[int]] = {}

    def record(name: str, _x: Tensor, y: Tensor) -> None:
        w = model.get_parameter(name)
        channel_dim = -1 if w.dim() == 2 else 1
        positions = y.numel() // y.shape[channel_dim]  # output rows (Linear) or batch*spatial (Conv)
        # Each output position does in*kernel MACs per output channel: positions * numel(W) in total.
        c = costs.setdefault(name, [0, 0])
        c[0] += 2 * positions * w.numel()
        c[1] += 2 * positions * int(w.count_nonzero())

    was_training = model.training
    set_training(model, False)
    try:
        for_each_layer_call(model, prunable_weights(model), [example_inputs], record)
    finally:
        set_training(model, was_training)
    result = []
    for name, (flops, nz_flops) in costs.items():
        w = model.get_parameter(name)
        result.append(LayerCost(name, w.numel(), int(w.count_nonzero()), flops, nz_flops))
    return result


@dataclass(frozen=True)
class SizeReport:
    """Totals for a model: parameters, fp bytes, and Linear/Conv FLOPs for one forward pass."""

    params: int
    nonzero_params: int
    bytes: int
    flops: int
    nonzero_flops: int

    def __str__(self) -> str:
        return (f"params {self.params:,} (non-zero {self.nonzero_params:,}), {self.bytes / 1e6:.2f} MB, "
                f"{self.flops / 1e6:.2f} MFLOP (non-zero {self.nonzero_flops / 1e6:.2f})")


def size_report(model: nn.Module, example_inputs: Batch) -> SizeReport:
    """Parameter counts, bytes and FLOPs of ``model`` on ``example_inputs``."""
    costs = layer_costs(model, example_inputs)
    return SizeReport(count_parameters(model), count_parameters(model, nonzero=True), parameter_bytes(model),
                      sum(c.flops for c in costs), sum(c.nonzero_flops for c in costs))
