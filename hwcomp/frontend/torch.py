"""PyTorch import: ``torch.export`` → ``relax.frontend.torch.from_exported_program``."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import numpy as np

from ..errors import HwcompError, UnsupportedOpError
from .model import ImportedModel, TensorSpec, random_inputs


def _to_numpy_list(tensors) -> list[np.ndarray]:
    import torch

    if isinstance(tensors, torch.Tensor):
        tensors = [tensors]
    elif isinstance(tensors, dict):
        tensors = list(tensors.values())
    out = []
    for t in tensors:
        if isinstance(t, (tuple, list)):
            out.extend(_to_numpy_list(t))
        elif hasattr(t, "last_hidden_state"):  # transformers ModelOutput
            out.extend(_to_numpy_list([v for v in t.values() if isinstance(v, torch.Tensor)]))
        elif isinstance(t, torch.Tensor):
            out.append(t.detach().cpu().numpy())
    return out


def _locate(ep, op_names: list[str]) -> str:
    """Name each unsupported op with the graph node and user source line it comes from."""
    where = []
    for node in ep.graph.nodes:
        if node.op == "call_function" and getattr(node.target, "__name__", "") in op_names:
            trace = (node.meta.get("stack_trace") or "").strip().splitlines()
            src = next((ln.strip() for ln in reversed(trace) if ln.strip().startswith("File")), "")
            module = ""
            stack = node.meta.get("nn_module_stack") or {}
            if stack:
                module = list(stack.values())[-1][0]
            where.append(f"  {node.target.__name__} at node {node.name!r}"
                         + (f" in module {module!r}" if module else "")
                         + (f" ({src})" if src else ""))
    return "\n".join(where)


def import_exported_program(ep, example_inputs=None, source: str = "ExportedProgram") -> ImportedModel:
    import torch
    from tvm import relax
    from tvm.relax.frontend.torch import from_exported_program

    ep = ep.run_decompositions()
    try:
        mod = from_exported_program(ep, keep_params_as_input=True, unwrap_unit_return_tuple=True,
                                    run_ep_decomposition=False)
    except AssertionError as e:
        m = re.search(r"Unsupported function types (\[.*\])", str(e))
        if not m:
            raise
        ops = ast.literal_eval(m.group(1))
        raise UnsupportedOpError(
            f"{source}: operator(s) not supported by the Relax importer: {', '.join(ops)}\n{_locate(ep, ops)}"
        ) from None
    mod, params = relax.frontend.detach_params(mod)
    main = mod["main"]
    n_in = int(main.attrs["num_input"])
    param_vars = list(main.params[n_in:])
    weights = {v.name: t.numpy() for v, t in zip(param_vars, params.get("main", []))}
    inputs = [TensorSpec(v.name, tuple(int(d) for d in v.ty.shape), str(v.ty.dtype))
              for v in main.params[:n_in]]

    module = ep.module()

    def reference(arrays: list[np.ndarray]) -> list[np.ndarray]:
        with torch.no_grad():
            return _to_numpy_list(module(*[torch.from_numpy(np.ascontiguousarray(a)) for a in arrays]))

    ex = None
    if example_inputs is not None:
        ex = [t.detach().cpu().numpy() for t in example_inputs]
    elif getattr(ep, "example_inputs", None):
        args, _kwargs = ep.example_inputs
        ex = [t.detach().cpu().numpy() for t in args if isinstance(t, torch.Tensor)] or None
    return ImportedModel(mod, weights, inputs, reference, source, ex)


def import_module(module, example_inputs) -> ImportedModel:
    import torch

    if isinstance(example_inputs, torch.Tensor):
        example_inputs = (example_inputs,)
    example_inputs = tuple(example_inputs)
    module = module.eval()
    try:
        ep = torch.export.export(module, example_inputs)
    except Exception as e:  # torch.export's own errors are long; keep the first lines
        msg = "\n".join(str(e).strip().splitlines()[:8])
        raise HwcompError(f"torch.export could not trace {type(module).__name__}: {msg}") from e
    return import_exported_program(ep, example_inputs, source=type(module).__name__)


def import_pt2(path: Path, input_shapes: dict | None = None) -> ImportedModel:
    import torch

    try:
        ep = torch.export.load(str(path))
    except Exception as e:
        raise HwcompError(f"{path} is not a loadable torch.export program (.pt2): {e}") from e
    model = import_exported_program(ep, source=str(path))
    if input_shapes:
        for s in model.inputs:
            if s.name in input_shapes and tuple(input_shapes[s.name]) != s.shape:
                raise HwcompError(
                    f"{path}: input {s.name!r} was exported with static shape {s.shape}; "
                    f"re-export to compile for {input_shapes[s.name]}")
    if model.example_inputs is None:
        model.example_inputs = random_inputs(model.inputs)
    return model
