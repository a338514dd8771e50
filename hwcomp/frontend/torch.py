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


def _finite_int(v) -> int | None:
    if getattr(v, "is_finite", True) is False:
        return None
    try:
        return int(v)
    except (TypeError, ValueError, OverflowError, AttributeError):
        return None


def _symbol_ranges(ep) -> dict[str, tuple[int, int | None]]:
    """torch's symbol name (``s53``, as the Relax importer names it) → its (min, max) from the
    program's range constraints; max None when unbounded."""
    out = {}
    for sym, vr in getattr(ep, "range_constraints", {}).items():
        lo, hi = _finite_int(vr.lower), _finite_int(vr.upper)  # None: infinite (int_oo)
        lo = max(lo or 0, 0)
        out[str(sym)] = (lo, hi if hi is not None and hi < 1 << 62 else None)
    return out


def _input_specs(main, n_in: int, ep, names: dict[str, str] | None, source: str):
    """Input specs from ``main``'s parameters: static dimensions as ints, symbolic ones as the name of
    their symbol (the user's name from ``names`` — torch symbol → name — else torch's own), and the
    symbols' ranges."""
    from tvm import tirx

    ranges = _symbol_ranges(ep)
    specs, dynamic = [], {}
    for v in main.params[:n_in]:
        shape = []
        for d in v.ty.shape:
            if isinstance(d, tirx.IntImm):
                shape.append(int(d))
            elif isinstance(d, tirx.Var):
                sym = str(d.name)
                name = (names or {}).get(sym, sym)
                shape.append(name)
                dynamic[name] = ranges.get(sym, (0, None))
            else:
                raise HwcompError(f"{source}: input {v.name!r} has dimension {d} (an expression of other "
                                  "dimensions); hwcomp supports dynamic dimensions that are plain symbols")
        specs.append(TensorSpec(v.name, tuple(shape), str(v.ty.dtype)))
    return specs, dynamic


def _set_upper_bounds(mod, main, dynamic: dict, names: dict[str, str] | None):
    """Tell Relax each bounded symbol's maximum (``tir_var_upper_bound``): memory for the largest
    length is planned once, not allocated per call."""
    old = main.attrs.get("tir_var_upper_bound") if main.attrs is not None else None
    bounds = {str(k): int(v) for k, v in old.items()} if old is not None else {}
    inv = {v: k for k, v in (names or {}).items()}
    for name, (_lo, hi) in dynamic.items():
        if hi is not None:
            bounds[inv.get(name, name)] = hi
    if bounds:
        mod["main"] = main.with_attr("tir_var_upper_bound", bounds)
    return mod


def import_exported_program(ep, example_inputs=None, source: str = "ExportedProgram",
                            dynamic: dict | None = None) -> ImportedModel:
    """``dynamic`` (``{input: {dim: DynamicDim}}``, normalized): names and (narrower) ranges for
    dimensions the program has symbolic. Symbolic dimensions it does not name keep torch's symbol
    name (``s53``) and the program's range."""
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
    symbol_names, user_ranges = _torch_symbols(ep, dynamic, source) if dynamic else ({}, {})
    inputs, dynamic = _input_specs(main, n_in, ep, symbol_names, source)
    dynamic.update({k: v for k, v in user_ranges.items() if k in dynamic})
    mod = _set_upper_bounds(mod, main, dynamic, symbol_names)

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
    if ex is not None and dynamic:
        _check_example(inputs, dynamic, ex, source)
    return ImportedModel(mod, weights, inputs, reference, source, ex, dynamic, symbol_names)


def _check_example(specs, dynamic: dict, arrays, source: str) -> None:
    from ..artifact import check_shapes

    try:
        check_shapes([s.to_dict() for s in specs], {k: {"min": lo, "max": hi} for k, (lo, hi) in dynamic.items()},
                     arrays)
    except HwcompError as e:
        raise HwcompError(f"{source}: the example inputs do not fit the dynamic shapes: {e}") from None


def _forward_arg_names(module, n: int) -> list[str]:
    import inspect

    try:
        params = [p for p in inspect.signature(module.forward).parameters.values()
                  if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    except (TypeError, ValueError):
        params = []
    names = [p.name for p in params[:n]]
    return names + [f"arg{i}" for i in range(len(names), n)]


def dynamic_shapes_for(module, example_inputs, dynamic: dict) -> tuple:
    """``torch.export``'s ``dynamic_shapes`` for ``dynamic`` (``{input: {dim: DynamicDim}}``, see
    :func:`~hwcomp.frontend.model.normalize_dynamic`): one ``torch.export.Dim`` per symbol name, so
    dimensions given the same symbol are one length."""
    import torch

    names = _forward_arg_names(module, len(example_inputs))
    unknown = sorted(set(dynamic) - set(names))
    if unknown:
        raise HwcompError(f"dynamic shapes name input(s) {unknown}, but {type(module).__name__} takes {names}")
    dims: dict[str, object] = {}
    spec = []
    for name, t in zip(names, example_inputs):
        entry = {}
        for i, d in sorted(dynamic.get(name, {}).items()):
            if not isinstance(t, torch.Tensor) or i >= t.dim():
                raise HwcompError(f"dynamic shapes: input {name!r} has no dimension {i} "
                                  f"(its example has shape {tuple(getattr(t, 'shape', ()))})")
            if not d.min <= t.shape[i] <= d.max:
                raise HwcompError(f"dynamic shapes: the example {name!r} has length {t.shape[i]} in dimension "
                                  f"{i}, outside {d.name}'s range {d.min}..{d.max}")
            entry[i] = dims.setdefault(d.name, torch.export.Dim(d.name, min=d.min, max=d.max))
        spec.append(entry or None)
    return tuple(spec)


def import_module(module, example_inputs, dynamic: dict | None = None) -> ImportedModel:
    """``dynamic``: ``{input: {dim: DynamicDim}}`` (normalized), the dimensions kept symbolic."""
    import torch

    if isinstance(example_inputs, torch.Tensor):
        example_inputs = (example_inputs,)
    example_inputs = tuple(example_inputs)
    module = module.eval()
    kwargs = {}
    if dynamic:
        kwargs["dynamic_shapes"] = dynamic_shapes_for(module, example_inputs, dynamic)
    try:
        ep = torch.export.export(module, example_inputs, **kwargs)
    except Exception as e:  # torch.export's own errors are long; keep the first lines
        lines = str(e).strip().splitlines()
        msg = "\n".join(lines[:8])
        if dynamic and any("must always be equal" in ln for ln in lines):
            msg += ("\n(give equal dimensions one symbol: --dynamic seq=LO..HI --dynamic A:1=seq "
                    "--dynamic B:1=seq, or the same DynamicDim in CompileOptions.dynamic)")
        elif dynamic and any("specialized it to be a constant" in ln for ln in lines):
            msg = lines[0] + "\n" + next(ln for ln in lines if "specialized" in ln).strip() + \
                "\n(the model's code fixes that length: it cannot be dynamic without changing the model)"
        raise HwcompError(f"torch.export could not trace {type(module).__name__}: {msg}") from e
    return import_exported_program(ep, example_inputs, source=type(module).__name__, dynamic=dynamic)


def _torch_symbols(ep, dynamic: dict, source: str) -> tuple[dict[str, str], dict[str, tuple[int, int]]]:
    """For the user's ``dynamic`` (``{input: {dim: DynamicDim}}``) on an exported program: torch's
    symbol of each named dimension (``s53``) → the user's name, and the user's ranges by name. A
    dimension the program has static, or a range wider than the program's, is refused."""
    user = list(ep.graph_signature.user_inputs)
    unknown = sorted(set(dynamic) - set(user))
    if unknown:
        raise HwcompError(f"{source}: dynamic shapes name input(s) {unknown}, but the model's inputs are {user}")
    nodes = {n.name: n for n in ep.graph.nodes if n.op == "placeholder"}
    ranges = _symbol_ranges(ep)
    names: dict[str, str] = {}
    for arg in user:
        val = nodes[arg].meta.get("val") if arg in nodes else None
        for i, d in sorted(dynamic.get(arg, {}).items()):
            if val is None or i >= val.dim():
                raise HwcompError(f"{source}: input {arg!r} has no dimension {i}")
            sym = str(val.shape[i])
            if sym.isdigit():
                raise HwcompError(f"{source}: dimension {i} of input {arg!r} was exported static ({sym}); "
                                  "re-export with torch.export.export(..., dynamic_shapes=...) to make it dynamic")
            if names.setdefault(sym, d.name) != d.name:
                raise HwcompError(f"{source}: the program has one length for dimensions given symbols "
                                  f"{names[sym]!r} and {d.name!r}; give them one symbol")
            lo, hi = ranges.get(sym, (0, None))
            if d.min < lo or (hi is not None and d.max > hi):
                raise HwcompError(f"{source}: {d.name}={d.min}..{d.max} is outside the range the program was "
                                  f"exported for ({lo}..{hi if hi is not None else 'inf'})")
    return names, {d.name: (d.min, d.max) for dims in dynamic.values() for d in dims.values()}


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


def import_pt2(path: Path, input_shapes: dict | None = None, trust_pickle: bool = False,
               dynamic: dict | None = None) -> ImportedModel:
    """Import a ``.pt2``. Pickled content (which can run code) is refused unless ``trust_pickle``.

    Dimensions exported dynamic (``torch.export.Dim``) stay symbolic; ``dynamic`` may name them and
    narrow their ranges. For a dynamic input, ``input_shapes`` gives the shape of the random example
    input used when the file stores none."""
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
    model = import_exported_program(ep, source=str(path), dynamic=dynamic)
    sizes: dict[str, int] = {}
    if input_shapes:
        unknown = sorted(set(input_shapes) - {s.name for s in model.inputs})
        if unknown:
            raise HwcompError(f"{path}: --input-shape names {unknown}, but the model's inputs are "
                              f"{[s.name for s in model.inputs]}")
        for s in model.inputs:
            if s.name not in input_shapes:
                continue
            want = tuple(input_shapes[s.name])
            fits = len(want) == len(s.shape) and all(
                w == d if isinstance(d, int) else
                (model.dynamic[d][0] <= w and (model.dynamic[d][1] is None or w <= model.dynamic[d][1])
                 and sizes.setdefault(d, w) == w)
                for w, d in zip(want, s.shape))
            if not fits:
                kind = "dynamic" if any(isinstance(d, str) for d in s.shape) else "static"
                raise HwcompError(
                    f"{path}: input {s.name!r} was exported with {kind} shape {s.shape}; "
                    f"re-export to compile for {want}")
    if model.example_inputs is None:
        ranges = {k: ((sizes[k], sizes[k]) if k in sizes else v) for k, v in model.dynamic.items()}
        model.example_inputs = random_inputs(model.inputs, dynamic=ranges)
    return model
