"""Which weights are prunable, in which order they run, and what each one sees as input.

Prunable weights are addressed by their parameter name (``"features.3.weight"``). They are the weights of
``nn.Linear`` / ``nn.Conv{1,2,3}d`` modules, or, for a module unlifted from a ``torch.export`` program
(``ExportedProgram.module()``, which has no ``nn.Linear`` left), the weights consumed by ``aten.linear`` /
``aten.conv*`` nodes of its graph. Every weight is viewed as a matrix ``[out, in * prod(kernel)]``.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from fnmatch import fnmatch
from typing import Any

import torch
from torch import Tensor, fx, nn

from .batches import Batch, iterate, run_model, split_batch

_MODULE_TYPES = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
_ATEN_TARGETS = {
    torch.ops.aten.linear.default,
    torch.ops.aten.conv1d.default,
    torch.ops.aten.conv2d.default,
    torch.ops.aten.conv3d.default,
    torch.ops.aten.convolution.default,
}


def _is_graph(model: nn.Module) -> bool:
    return isinstance(model, fx.GraphModule)


def _weight_nodes(model: fx.GraphModule) -> dict[str, list[fx.Node]]:
    """weight name -> the aten linear/conv nodes that use it as their weight, in graph order."""
    found: dict[str, list[fx.Node]] = {}
    for node in model.graph.nodes:
        if node.op == "call_function" and node.target in _ATEN_TARGETS and len(node.args) > 1:
            w = node.args[1]
            if isinstance(w, fx.Node) and w.op == "get_attr":
                found.setdefault(str(w.target), []).append(node)
    return found


def name_matches(name: str, patterns: Sequence[str]) -> bool:
    """Whether a parameter name or its module name matches one of the globs in ``patterns``."""
    module = name.rsplit(".", 1)[0]
    return any(fnmatch(name, p) or fnmatch(module, p) for p in patterns)


def prunable_weights(model: nn.Module, exclude: Sequence[str] = ()) -> list[str]:
    """Names of the Linear/Conv weights of ``model``, minus those matching a glob in ``exclude``.

    ``exclude`` globs match the parameter name (``"fc.weight"``) or its module name (``"fc"``, ``"head.*"``).
    """
    if _is_graph(model):
        names = list(_weight_nodes(model))
    else:
        names = [f"{n}.weight" if n else "weight" for n, m in model.named_modules() if isinstance(m, _MODULE_TYPES)]
    return [n for n in names if not name_matches(n, exclude)]


def as_matrix(t: Tensor) -> Tensor:
    """View a Linear/Conv weight (or a same-shaped score/mask) as ``[out, in * prod(kernel)]``."""
    return t.reshape(t.shape[0], -1)


def execution_order(model: nn.Module, example_inputs: Batch) -> list[str]:
    """Prunable weight names in the order their layers first run on ``example_inputs``."""
    if _is_graph(model):
        return list(_weight_nodes(model))
    order: list[str] = []
    handles = []
    for name in prunable_weights(model):
        module = model.get_submodule(name.rsplit(".", 1)[0]) if "." in name else model
        handles.append(module.register_forward_pre_hook(
            lambda _m, _a, n=name: order.append(n) if n not in order else None))
    try:
        with torch.no_grad():
            run_model(model, example_inputs)
    finally:
        for h in handles:
            h.remove()
    return order


def output_weight(model: nn.Module, example_inputs: Batch) -> str | None:
    """The weight of the last Linear/Conv to run: usually the classifier, which pruning should spare."""
    order = execution_order(model, example_inputs)
    return order[-1] if order else None


class _InputCapture(fx.Interpreter):
    """Runs a GraphModule and reports the data input and output of watched linear/conv nodes."""

    def __init__(self, gm: fx.GraphModule, watch: dict[fx.Node, str], callback: LayerCallback):
        super().__init__(gm)
        self._watch, self._callback = watch, callback

    def run_node(self, n: fx.Node) -> Any:
        result = super().run_node(n)
        if n in self._watch:
            args, _ = self.fetch_args_kwargs_from_env(n)
            self._callback(self._watch[n], args[0], result)
        return result


LayerCallback = Callable[[str, Tensor, Tensor], None]
"""``callback(weight name, layer input, layer output)``."""


def for_each_layer_call(model: nn.Module, names: Iterable[str], data: Iterable[Batch], callback: LayerCallback,
                        max_batches: int | None = None, desc: str = "") -> None:
    """Run ``model`` on ``data`` (no grad) and call ``callback(weight_name, input, output)`` per layer call."""
    names = list(names)
    with torch.no_grad():
        if _is_graph(model):
            nodes = _weight_nodes(model)
            watch = {node: n for n in names for node in nodes.get(n, [])}
            for batch in iterate(data, max_batches, desc):
                args, kwargs, _ = split_batch(batch)
                _InputCapture(model, watch, callback).run(*args, *kwargs.values())
            return
        handles = []
        for name in names:
            module = model.get_submodule(name.rsplit(".", 1)[0]) if "." in name else model
            handles.append(module.register_forward_hook(lambda _m, a, y, n=name: callback(n, a[0], y)))
        try:
            for batch in iterate(data, max_batches, desc):
                run_model(model, batch)
        finally:
            for h in handles:
                h.remove()
