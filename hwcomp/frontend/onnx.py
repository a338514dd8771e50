"""ONNX import: ``relax.frontend.onnx.from_onnx``, with ONNX Runtime as the reference."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import HwcompError, UnsupportedOpError
from .model import ImportedModel, TensorSpec

_ONNX_DTYPES = {1: "float32", 2: "uint8", 3: "int8", 6: "int32", 7: "int64", 9: "bool", 10: "float16", 11: "float64"}


def _graph_inputs(model, input_shapes: dict) -> list[TensorSpec]:
    inits = {i.name for i in model.graph.initializer}
    names = [vi.name for vi in model.graph.input if vi.name not in inits]
    unknown = sorted(set(input_shapes) - set(names))
    if unknown:
        raise HwcompError(f"--input-shape names {unknown}, but the model's inputs are {names}")
    specs = []
    for vi in model.graph.input:
        if vi.name in inits:
            continue
        tt = vi.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else None for d in tt.shape.dim]
        if vi.name in input_shapes:
            dims = list(input_shapes[vi.name])
        if any(d is None or d <= 0 for d in dims):
            raise HwcompError(
                f"ONNX input {vi.name!r} has a dynamic shape {dims}; give it with --input-shape {vi.name}:1x...")
        specs.append(TensorSpec(vi.name, tuple(int(d) for d in dims), _ONNX_DTYPES.get(tt.elem_type, "float32")))
    return specs


def import_onnx(path: Path, input_shapes: dict | None = None) -> ImportedModel:
    import onnx
    import tvm.relax.frontend.onnx as rx_onnx
    from tvm import relax

    try:
        model = onnx.load(str(path))
    except Exception as e:
        raise HwcompError(f"{path} is not a readable ONNX model: {str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__}") from None
    if not model.graph.node:
        raise HwcompError(f"{path} is not a readable ONNX model: it has no graph nodes")
    specs = _graph_inputs(model, input_shapes or {})
    unsupported = sorted({n.op_type for n in model.graph.node} - set(rx_onnx.onnx_frontend._get_convert_map()))
    if unsupported:
        where = "\n".join(f"  {n.op_type} at node {n.name!r} (inputs {list(n.input)})"
                          for n in model.graph.node if n.op_type in unsupported)
        raise UnsupportedOpError(f"{path}: ONNX operator(s) not supported: {', '.join(unsupported)}\n{where}")
    try:
        mod = rx_onnx.from_onnx(model, shape_dict={s.name: list(s.shape) for s in specs},
                                dtype_dict={s.name: s.dtype for s in specs}, keep_params_in_input=True)
    except rx_onnx.onnx_frontend.tvm.error.OpNotImplemented as e:  # pragma: no cover - pre-checked
        raise UnsupportedOpError(f"{path}: {e}") from None
    mod, params = relax.frontend.detach_params(mod)
    main = mod["main"]
    n_in = int(main.attrs["num_input"]) if main.attrs and "num_input" in main.attrs else len(specs)
    weights = {v.name: t.numpy() for v, t in zip(main.params[n_in:], params.get("main", []))}

    def reference(arrays: list[np.ndarray]) -> list[np.ndarray]:
        import onnxruntime as ort

        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return list(sess.run(None, {s.name: a for s, a in zip(specs, arrays)}))

    return ImportedModel(mod, weights, specs, reference, str(path))
