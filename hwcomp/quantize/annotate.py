"""Annotate: choose the ops to quantize and insert observation points.

``annotate(mod, config, weight_names)`` finds, in ``main``:

* ``dense``: ``R.matmul(x, W)`` with a constant weight (``permute_dims`` of a ``[N, K]`` constant,
  as torch's ``Linear`` imports, or a ``[K, N]`` constant as ONNX ``MatMul``/``Gemm``);
* ``batch_matmul``: ``R.matmul(a, b)`` of two float activations with the same batch dims
  (attention's ``Q K^T`` and ``P V``);
* ``conv2d``: ``R.nn.conv2d`` NCHW/OIHW, groups 1, constant weight.

Epilogues (bias add, ReLU/GELU) are recognized when realizing. A layer is skipped (left fp32) when
its name matches ``config.skip`` or its kind is not in ``config.quantize``. Names: ``dense0``,
``bmm0``, ``conv0``... in program order, plus the weight's parameter name with ``p_``/``_weight``
stripped (``encoder_layer_0_attention_self_query``) when the parameter arrays are given.

Every activation operand of a quantized layer is traced back through value-preserving ops
(reshape, permute_dims, expand_dims, squeeze, same-shape broadcast_to, multiply by a positive
scalar constant) to its *root* tensor; each root gets one observation point,
``R.call_pure_packed("hwcomp.quantize.observe", x, "t<k>")`` — an identity at run time that hands
the tensor to the calibration observers. Consumers sharing a root (Q, K, V reading one
LayerNorm output) share one observer and one quantized tensor.
"""

from __future__ import annotations

import dataclasses
import hashlib

import numpy as np
import tvm
from tvm import relax

from .config import QuantConfig
from .graph import Graph, const_array, dtype_of, observe_call, op_name, rebuild, static_shape


@dataclasses.dataclass
class Layer:
    id: str
    kind: str  # dense | batch_matmul | conv2d
    var: relax.Var
    operands: list
    weight: np.ndarray | None = None  # dense [N, K]; conv2d OIHW
    names: tuple[str, ...] = ()
    skipped: bool = False
    reason: str = ""
    keys: list = dataclasses.field(default_factory=list)  # observation key per operand
    stored: np.ndarray | None = None  # the weight constant as it appears in the IR

    @property
    def name(self) -> str:
        return self.names[-1] if self.names else self.id

    def describe(self) -> str:
        extra = f" ({self.names[-1]})" if len(self.names) > 1 else ""
        return f"{self.id}{extra}"


def fingerprint(a: np.ndarray) -> tuple:
    a = np.ascontiguousarray(a)
    return (a.shape, str(a.dtype), hashlib.blake2b(a.view(np.uint8).ravel()[: 1 << 20], digest_size=16).hexdigest(),
            float(a.astype(np.float64).sum()))


def weight_name_table(params: dict | None) -> dict:
    """Fingerprint → readable layer name, from an ImportedModel's ``params``."""
    if not params:
        return {}
    table = {}
    for name, arr in params.items():
        arr = np.asarray(arr)
        if arr.ndim < 2:
            continue
        n = name[2:] if name.startswith("p_") else name
        for suffix in ("_weight", ".weight"):
            if n.endswith(suffix):
                n = n[: -len(suffix)]
        table[fingerprint(arr)] = n
    return table


def _dense_weight(graph: Graph, b) -> tuple[np.ndarray, np.ndarray] | None:
    """``(W[N, K], the constant as stored)`` when ``b`` is a constant weight operand of a matmul."""
    val = graph.value(b) if isinstance(b, relax.Var) else None
    if op_name(val) == "relax.permute_dims":
        c = graph.const_value(val.args[0])
        axes = val.attrs.axes
        if c is not None and c.ndim == 2 and c.dtype == np.float32 and (axes is None or [int(x) for x in axes] == [1, 0]):
            return c, c
    c = graph.const_value(b)
    if c is not None and c.ndim == 2 and c.dtype == np.float32:
        return c.T, c
    return None


def find_layers(func: relax.Function, config: QuantConfig, names: dict | None = None) -> list[Layer]:
    graph = Graph(func)
    names = names or {}
    layers: list[Layer] = []
    counters = {"dense": 0, "batch_matmul": 0, "conv2d": 0}
    prefix = {"dense": "dense", "batch_matmul": "bmm", "conv2d": "conv"}

    def add(kind, var, operands, weight=None, stored=None, reason=""):
        lid = f"{prefix[kind]}{counters[kind]}"
        counters[kind] += 1
        nm = (lid,)
        if stored is not None:
            pn = names.get(fingerprint(stored))
            if pn:
                nm = (lid, pn)
        layer = Layer(lid, kind, var, operands, weight, nm, stored=stored)
        if kind not in config.quantize:
            layer.skipped, layer.reason = True, f"{kind} not in QuantConfig.quantize"
        elif config.is_skipped(*nm):
            layer.skipped, layer.reason = True, "skip list"
        elif reason:
            layer.skipped, layer.reason = True, reason
        layers.append(layer)

    for b in graph.bindings:
        v = b.value
        name = op_name(v)
        if name == "relax.matmul":
            a, w = v.args
            if dtype_of(a) != "float32" or dtype_of(v) != "float32":
                continue
            sa = static_shape(a)
            dw = _dense_weight(graph, w)
            if dw is not None:
                wnk, stored = dw
                if sa is None or sa[-1] != wnk.shape[1]:
                    continue
                add("dense", b.var, [a], wnk, stored)
            elif graph.const_value(w) is None and dtype_of(w) == "float32":
                sb = static_shape(w)
                if sa is None or sb is None or len(sa) < 2 or len(sa) != len(sb):
                    continue
                reason = "" if sa[:-2] == sb[:-2] else "broadcast batch dims"
                add("batch_matmul", b.var, [a, w], reason=reason)
        elif name == "relax.nn.conv2d":
            x, w = v.args
            c = const_array(w)
            at = v.attrs
            if c is None or dtype_of(x) != "float32" or static_shape(x) is None or c.dtype != np.float32:
                continue
            reason = ""
            if str(at.data_layout) != "NCHW" or str(at.kernel_layout) != "OIHW" or str(at.out_layout) != "NCHW":
                reason = "layout is not NCHW/OIHW"
            elif int(at.groups) != 1 and not (int(at.groups) == c.shape[0] == static_shape(x)[1] and c.shape[1] == 1):
                reason = "grouped convolution"  # depthwise is taken (blocked int8 kernels only)
            add("conv2d", b.var, [x], c, c, reason)
    return layers


@dataclasses.dataclass
class Annotation:
    """What ``annotate`` decided: the layers, and per observation key the root tensor's shape."""

    layers: list[Layer]
    keys: dict  # key -> {"shape": ..., "layers": [layer ids]}

    def quantized(self) -> list[Layer]:
        return [layer for layer in self.layers if not layer.skipped]

    def summary(self) -> str:
        q = self.quantized()
        sk = [layer for layer in self.layers if layer.skipped]
        s = f"{len(q)} layers quantized ({', '.join(sorted({x.kind for x in q})) or 'none'})"
        if sk:
            s += f", {len(sk)} left fp32: " + ", ".join(f"{x.describe()} [{x.reason}]" for x in sk[:8])
            s += " ..." if len(sk) > 8 else ""
        return s


def annotate(mod: tvm.IRModule, config: QuantConfig, names: dict | None = None) -> tuple[tvm.IRModule, Annotation]:
    """Insert observation points for every quantized layer's activation roots (see module doc)."""
    func = mod["main"]
    graph = Graph(func)
    layers = find_layers(func, config, names)
    root_key: dict = {}
    keys: dict = {}
    for layer in layers:
        if layer.skipped:
            continue
        layer.keys = []
        for operand in layer.operands:
            root, _steps, _scale = graph.root(operand)
            if not isinstance(root, relax.Var) or dtype_of(root) != "float32" or static_shape(root) is None:
                layer.skipped, layer.reason = True, "operand is not a static float32 tensor"
                break
            if root not in root_key:
                root_key[root] = f"t{len(root_key)}"
                keys[root_key[root]] = {"shape": list(static_shape(root)), "layers": []}
            layer.keys.append(root_key[root])
        else:
            for k in layer.keys:
                keys[k]["layers"].append(layer.id)

    params = set(func.params)

    def on_start(bb, vmap):
        for root, key in root_key.items():
            if root in params:
                vmap[root] = bb.emit(observe_call(root, key), name_hint=f"obs_{key}")

    def after(bb, binding, new_var):
        key = root_key.get(binding.var)
        if key is None:
            return None
        return bb.emit(observe_call(new_var, key), name_hint=f"obs_{key}")

    out = rebuild(mod, lambda bb, b, value, vmap: None, on_start=on_start, after_binding=after)
    return out, Annotation(layers, keys)
