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


def _where(node) -> str:
    """``op at node 'n' in module 'm' (File "...", line N, in forward)``: where an fx node comes from."""
    trace = (node.meta.get("stack_trace") or "").strip().splitlines()
    src = next((ln.strip() for ln in reversed(trace) if ln.strip().startswith("File")), "")
    module = ""
    stack = node.meta.get("nn_module_stack") or {}
    if stack:
        module = list(stack.values())[-1][0]
    return (f"{getattr(node.target, '__name__', node.target)} at node {node.name!r}"
            + (f" in module {module!r}" if module else "")
            + (f" ({src})" if src else ""))


def _locate(ep, op_names: list[str]) -> str:
    """Name each unsupported op with the graph node and user source line it comes from."""
    return "\n".join(f"  {_where(node)}" for node in ep.graph.nodes
                     if node.op == "call_function" and getattr(node.target, "__name__", "") in op_names)


def _unsupported(e: Exception, ep, source: str) -> UnsupportedOpError | None:
    """The importer's error as an :class:`UnsupportedOpError` naming the op, node and source line:
    ops it has no converter for, or the node whose converter failed (a form TVM does not handle).
    None when the error cannot be tied to a node."""
    m = re.search(r"Unsupported function types (\[.*\])", str(e)) if isinstance(e, AssertionError) else None
    if m:
        ops = ast.literal_eval(m.group(1))
        return UnsupportedOpError(
            f"{source}: operator(s) not supported by the Relax importer: {', '.join(ops)}\n{_locate(ep, ops)}")
    # The converter's frame holds the node being translated (innermost importer frame wins).
    from torch import fx

    node, tb = None, e.__traceback__
    while tb is not None:
        cand = tb.tb_frame.f_locals.get("node")
        if isinstance(cand, fx.Node) and cand.graph is ep.graph \
                and "relax/frontend/torch" in tb.tb_frame.f_code.co_filename.replace("\\", "/"):
            node = cand
        tb = tb.tb_next
    if node is None:
        return None
    first = (str(e).strip().splitlines() or [""])[0][:300]
    return UnsupportedOpError(f"{source}: the Relax importer cannot convert {_where(node)}: "
                              f"{type(e).__name__}: {first}")


def import_exported_program(ep, example_inputs=None, source: str = "ExportedProgram") -> ImportedModel:
    import torch
    from tvm import relax
    from tvm.relax.frontend.torch import from_exported_program

    from .torch_fixes import CUSTOM_CONVERTERS  # workarounds for TVM importer bugs

    ep = ep.run_decompositions()
    try:
        mod = from_exported_program(ep, keep_params_as_input=True, unwrap_unit_return_tuple=True,
                                    run_ep_decomposition=False, custom_convert_map=CUSTOM_CONVERTERS)
    except Exception as e:  # noqa: BLE001 - re-raised unless it can be tied to a graph node
        err = _unsupported(e, ep, source)
        if err is None:
            raise
        raise err from None
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


def untrusted_pt2_members(path: Path) -> list[str]:
    """Members of a ``.pt2`` that ``torch.export.load`` would unpickle or load as native code.

    ``torch.export.load`` unpickles weights and constants saved with ``use_pickle`` (and custom or
    opaque objects) with ``weights_only=False``, falls back to ``weights_only=False`` for sample
    inputs that do not load safely, and loads AOTInductor libraries: any of these runs code the
    file's author chose. Plain tensor payloads, JSON and sample inputs that load with
    ``weights_only=True`` are data. Anything not recognized as data is listed."""
    import io
    import json
    import zipfile

    import torch
    from torch.export.pt2_archive import constants as c

    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as e:
        raise HwcompError(f"{path} is not a torch.export program (.pt2): {e}") from None
    with zf:
        names = zf.namelist()
        data: set[str] = set()  # raw tensor payloads named by a config as not pickled
        flagged: list[str] = []
        for name in names:
            rel = name.split("/", 1)[1] if "/" in name else name
            root = name[: len(name) - len(rel)]
            if rel.endswith("_config.json") and rel.startswith((c.WEIGHTS_DIR, c.CONSTANTS_DIR)):
                try:
                    config = json.loads(zf.read(name))["config"]
                    items = list(config.items())
                except (ValueError, KeyError, TypeError, AttributeError):
                    flagged.append(name)
                    continue
                folder = c.WEIGHTS_DIR if rel.startswith(c.WEIGHTS_DIR) else c.CONSTANTS_DIR
                for _fqn, meta in items:
                    pname = meta.get("path_name", "") if isinstance(meta, dict) else ""
                    tensor = folder == c.WEIGHTS_DIR or pname.startswith(c.TENSOR_CONSTANT_FILENAME_PREFIX)
                    if not isinstance(meta, dict) or meta.get("use_pickle") or not tensor:
                        flagged.append(f"{root}{folder}{pname}")
                    else:
                        data.add(f"{root}{folder}{pname}")
        for name in names:
            rel = name.split("/", 1)[1] if "/" in name else name
            if name in data or name in flagged or name.endswith("/"):
                continue
            if rel in ("archive_format", "archive_version", "byteorder", ".data/version",
                       ".data/serialization_id") or rel.startswith(c.EXTRA_DIR):
                continue
            if rel.endswith(".json") and (rel.startswith(c.MODELS_DIR) or rel.endswith("_config.json")):
                continue
            if rel.startswith(c.SAMPLE_INPUTS_DIR) and rel.endswith(".pt"):
                try:  # torch tries weights_only=True first; only its fallback unpickles freely
                    torch.load(io.BytesIO(zf.read(name)), weights_only=True)
                    continue
                except Exception:  # noqa: BLE001 - any failure means torch would fall back
                    pass
            flagged.append(name)
    return flagged


def import_pt2(path: Path, input_shapes: dict | None = None, trust_pickle: bool = False) -> ImportedModel:
    """Import a ``.pt2``. Pickled content (which can run code) is refused unless ``trust_pickle``."""
    import torch

    if not trust_pickle:
        flagged = untrusted_pt2_members(path)
        if flagged:
            raise HwcompError(
                f"{path} holds content that loads with pickle or as native code and can run code "
                f"({flagged[0]}{f' and {len(flagged) - 1} more' if len(flagged) > 1 else ''}); "
                "compile it only if you trust its author, with --trust-pickle")
    try:
        ep = torch.export.load(str(path))
    except Exception as e:
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise HwcompError(f"{path} is not a loadable torch.export program (.pt2): {msg}") from None
    model = import_exported_program(ep, source=str(path))
    if input_shapes:
        unknown = sorted(set(input_shapes) - {s.name for s in model.inputs})
        if unknown:
            raise HwcompError(f"{path}: --input-shape names {unknown}, but the model's inputs are "
                              f"{[s.name for s in model.inputs]}")
        for s in model.inputs:
            if s.name in input_shapes and tuple(input_shapes[s.name]) != s.shape:
                raise HwcompError(
                    f"{path}: input {s.name!r} was exported with static shape {s.shape}; "
                    f"re-export to compile for {input_shapes[s.name]}")
    if model.example_inputs is None:
        model.example_inputs = random_inputs(model.inputs)
    return model
