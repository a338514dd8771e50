"""Pre-quantized ONNX models in QDQ form: QuantizeLinear/DequantizeLinear around MatMul/Conv/Gemm.

The ONNX importer turns each ``QuantizeLinear``/``DequantizeLinear`` into ``R.quantize`` /
``R.dequantize``. :func:`prepare` rewrites the imported module into the same annotated form the
calibration flow produces, with the model's own parameters instead of calibrated ranges:

* an activation pair ``dequantize(quantize(x, s, zp), s, zp)`` (per-tensor) becomes an
  observation point on ``x`` whose parameters are fixed to ``(s, zp, int8|uint8)``;
* ``dequantize`` of a constant (weights, int32 biases) is folded to a float constant, and the
  weight's own codes and scales are remembered so realize uses them unchanged (symmetric weights:
  zero points all 0; otherwise realize requantizes the folded float weight itself).

:class:`QDQRealizer` then runs :class:`~hwcomp.quantize.realize.Realizer` with those parameters:
same kernels, same int8 chaining, no calibration. Pairs on tensors that no quantized op reads
(after an activation, on the model output) are dropped: that value stays in float, which is at
least as accurate as the fake-quantized one. An int32 bias quantized with ``s_x * s_w`` comes
back bit-identical from ``round(b / (s_x s_w))``.
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax

from ..target import Target, require_target
from .annotate import fingerprint, weight_name_table
from .config import QuantConfig
from .graph import Graph, observe_call, op_name, rebuild
from .int8_compute import get_provider
from .realize import QParams, Realizer


def _scalar(a: np.ndarray | None):
    if a is None or a.size != 1:
        return None
    return a.reshape(()).item()


def prepare(mod: tvm.IRModule) -> tuple[tvm.IRModule, dict, dict]:
    """``(annotated module, fixed QParams by key, given weights by fingerprint)`` (module doc)."""
    g = Graph(mod["main"])
    fixed: dict[str, QParams] = {}
    given: dict = {}
    key_of: dict = {}

    def on_binding(bb, b, value, vmap):
        name = op_name(b.value)
        if name != "relax.dequantize":
            return None
        src, s_e, zp_e = b.value.args
        axis = int(b.value.attrs.axis)
        s, zp = g.const_value(s_e), g.const_value(zp_e)
        if s is None or zp is None:
            return None
        c = g.const_value(src)
        if c is not None:  # a constant: fold, remember weight codes
            shape = [1] * c.ndim
            if s.size > 1:
                shape[axis] = -1
            deq = ((c.astype(np.float64) - zp.astype(np.float64).reshape(shape)) * s.astype(np.float64).reshape(shape))
            deq = deq.astype(np.float32)
            if c.dtype == np.int8 and c.ndim >= 2 and not np.any(zp):
                given[fingerprint(deq)] = (c, s.astype(np.float32), axis if s.size > 1 else 0)
            return relax.const(deq)
        qv = g.value(src) if isinstance(src, relax.Var) else None
        if op_name(qv) != "relax.quantize":
            return None
        x, s2_e, zp2_e = qv.args
        s2, zp2 = g.const_value(s2_e), g.const_value(zp2_e)
        sv, zv = _scalar(s), _scalar(zp)
        if sv is None or zv is None or _scalar(s2) != sv or _scalar(zp2) != zv:
            return None  # per-channel activations or mismatched pair: keep the fake quantization
        dtype = str(qv.attrs.out_dtype)
        if dtype not in ("int8", "uint8"):
            return None
        p = QParams(float(sv), int(zv), dtype)
        x_new = vmap.get(x, x)
        k = key_of.get((x, p))
        if k is None:
            k = key_of[(x, p)] = f"t{len(key_of)}"
            fixed[k] = p
        return observe_call(x_new, k)

    out = rebuild(mod, on_binding)
    out = relax.transform.DeadCodeElimination(["main"])(out)
    return out, fixed, given


class QDQRealizer:
    """``passes()`` → one pass: :func:`prepare`, then realize with the model's parameters."""

    def __init__(self, target: Target, config: QuantConfig | None = None, *, params=None, log=None):
        self.target = require_target(target, "QDQRealizer")
        self.config = config or QuantConfig()
        self.names = weight_name_table(params)
        self.log = log or (lambda s: None)
        self.realizer: Realizer | None = None
        self.fixed: dict = {}

    def __call__(self, mod: tvm.IRModule) -> tvm.IRModule:
        annotated, self.fixed, given = prepare(mod)
        self.realizer = Realizer(self.config, get_provider(self.target), fixed=self.fixed, given_weights=given,
                                 names=self.names)
        out = self.realizer(annotated)
        n_q = sum(1 for r in self.realizer.report if r["status"] == "int8")
        self.log(f"quantize: QDQ model, {len(self.fixed)} quantized activation tensors, {n_q} layers int8")
        return out

    def passes(self) -> list:
        def realize_qdq(mod):
            return self(mod)

        return [realize_qdq]

    def summary(self) -> dict:
        return {"quantize": "int8 (ONNX QDQ)", "layers": self.realizer.report if self.realizer else []}

