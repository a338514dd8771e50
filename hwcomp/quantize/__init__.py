"""Int8 quantization: annotate → calibrate → realize, with per-target int8 kernels.

Entry point for the compiler (``hwcomp compile ... --quantize int8 --calib data.npz
[--calib-method entropy] [--skip name,...] [--fidelity-target 0.99]``)::

    quantize_passes(target, config=None, calib_data=None, *, params=None, progress=True,
                    log=None) -> list[Callable[[IRModule], IRModule]]

* ``target``: a :class:`~hwcomp.target.Target` (``hwcomp.get_target(name)``); picks the int8
  kernels (x86 AVX2 ``vpmaddwd`` / AVX-512 VNNI ``vpdpbusd``, ARM ``sdot`` / NEON, CUDA ``dp4a``,
  generic);
* ``config``: a :class:`QuantConfig` (bits, per-channel weights, symmetric/affine activations,
  skip patterns, calibration method, fidelity target); default ``QuantConfig()``;
* ``calib_data``: a ``.npz`` path or an iterable of input lists (see ``calibrate``);
* ``params``: the imported model's parameter arrays by name (``ImportedModel.params``), only to
  name layers after their weights (``encoder_layer_0_attention_self_query``) for ``--skip`` and
  reports; without it layers are ``dense0``, ``bmm3``, ``conv1``.

The returned passes run in order on the module with weights bound as constants (what
``CompileOptions.passes`` does): ``annotate`` (observation points), ``calibrate`` (builds the
fp32 model for this host, runs the calibration set, fills observers, picks SmoothQuant factors
for activations with outlier channels; module unchanged), ``realize`` (integer kernels; with
``fidelity_target``, the fallback leaves the worst layers in fp32 until the held-out cosine meets
it). To keep the quantizer's state, build it yourself::

    q = Int8Quantizer(target, config, calib_data, params=imported.params)
    art = hwcomp.compile(imported, target, out, options=CompileOptions(passes=q.passes()))
    q.summary()          # JSON-able: config, per-layer status/params/kernel, fidelity, timings
    q.fidelity.format()  # which layers lose most (and the model-level result with a target)

Module map: ``config`` (QuantConfig), ``annotate``, ``observers``, ``calibrate``, ``smooth``,
``realize``, ``int8_compute`` (the int8 ops as TE computes, the provider lookup), ``qmath`` (the
NumPy reference arithmetic), ``fidelity``, ``qdq``, ``pipeline`` (Int8Quantizer); target kernels in
``hwcomp.schedules.{x86,arm,cuda}.int8``.

Pre-quantized ONNX QDQ models: :func:`qdq_passes` (``hwcomp.quantize.qdq``) realizes the
QuantizeLinear/DequantizeLinear pairs with the same kernels and no calibration.
"""

from __future__ import annotations

from ..target import Target
from .config import CALIB_METHODS, QuantConfig


def quantize_passes(target: Target, config: QuantConfig | None = None, calib_data=None, *, params=None,
                    progress: bool = True, log=None) -> list:
    """The passes for ``CompileOptions.passes`` (see the module docstring)."""
    from .pipeline import Int8Quantizer

    return Int8Quantizer(target, config, calib_data, params=params, progress=progress, log=log).passes()


def qdq_passes(target: Target, config: QuantConfig | None = None, *, params=None, log=None) -> list:
    """Passes that realize an imported ONNX QDQ model's own quantization (``qdq.py``)."""
    from .qdq import QDQRealizer

    return QDQRealizer(target, config, params=params, log=log).passes()


def __getattr__(name):
    if name == "Int8Quantizer":
        from .pipeline import Int8Quantizer

        return Int8Quantizer
    raise AttributeError(name)


__all__ = ["CALIB_METHODS", "Int8Quantizer", "QuantConfig", "qdq_passes", "quantize_passes"]
