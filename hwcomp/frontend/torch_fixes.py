"""Workarounds for TVM 0.27's PyTorch importer (``from_exported_program``), in one place.

Each fix names the upstream symptom it avoids. :data:`CUSTOM_CONVERTERS` goes to
``from_exported_program(custom_convert_map=...)`` (``hwcomp.frontend.torch.import_exported_program``).
Drop a fix once the TVM release in use no longer needs it; each has a regression test in
``tests/frontend/test_families.py``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from torch import fx

if TYPE_CHECKING:
    from tvm import relax


def _is_legacy_empty(node) -> bool:
    """A tensor of shape ``(0,)``: what ``torch.tensor([])`` gives."""
    val = getattr(node, "meta", {}).get("val")
    return val is not None and hasattr(val, "shape") and tuple(val.shape) == (0,)


def convert_cat(node: fx.Node, importer) -> relax.Var:
    """``aten.cat`` that skips empty 1-D inputs, as ``torch.cat`` does.

    Upstream symptom: ``ValueError: Concat expects all input tensors to have same ndim. However, the
    input contains tensors with ndim 1 and 4``. ``torch.cat`` ignores a legacy empty tensor of shape
    ``(0,)`` whatever the other inputs' rank; TVM's converter hands it to ``relax.op.concat``, which
    rejects the rank mismatch. transformers' ``DynamicCache`` (on by default in GPT-2, Llama, Qwen2,
    ...) starts each layer's keys and values as ``torch.tensor([])`` and concatenates the new ones
    onto it, so every decoder called with its default ``use_cache`` hits this.
    """
    from tvm import relax

    tensors, kept = node.args[0], []
    for arg in tensors:
        if not _is_legacy_empty(arg):
            kept.append(importer.env[arg])
    if not kept:  # all empty: the result is empty too
        return importer.env[tensors[0]]
    if len(kept) == 1:
        return kept[0]
    axis = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
    return importer.block_builder.emit(relax.op.concat(kept, axis=axis))


def convert_slice(node: fx.Node, importer) -> relax.Var:
    """``aten.slice`` of ``x[..., :n]`` with a symbolic ``n`` that torch proved in bounds, without
    TVM's ``min(n, size)``.

    Upstream symptom (dynamic shapes): transformers slice a fixed buffer to the sequence length
    (DistilBERT's ``position_ids[:, :seq]``); TVM's converter gives the result the length
    ``T.min(seq, 512)``, which its shape analysis cannot equate with ``seq`` even though the
    function's ``tir_var_upper_bound`` says ``seq <= 512``: the next ``add`` with a ``seq``-long
    tensor loses its shape (``R.Tensor(ndim=3)``) and legalization fails with ``emit_te now only
    supports Tensor that has ShapeExpr shape``. torch.export's own shape (in the node's ``val``) says
    the result has length ``n``: then the slice is emitted with ``assume_inbound``, whose length is
    ``n``. Every other slice goes to TVM's converter.
    """
    from tvm import relax

    args = list(node.args) + [None] * (5 - len(node.args))
    src, dim, start, end, step = args[:5]
    dim = 0 if dim is None else dim
    start = 0 if start is None else start
    step = 1 if step is None else step
    out = node.meta.get("val")
    if isinstance(end, fx.Node) and start == 0 and step == 1 and out is not None and hasattr(out, "shape"):
        end_val = end.meta.get("val")
        d = dim if dim >= 0 else out.dim() + dim
        if end_val is not None and str(out.shape[d]) == str(end_val):
            end_expr = importer.env[end]
            import tvm

            if tvm.ir.is_prim_expr(end_expr):
                x = importer.env[src]
                return importer.block_builder.emit(relax.op.strided_slice(
                    x, axes=[d], begin=[0], end=[end_expr], strides=[1], assume_inbound=True))
    return importer._slice(node)


def _max_pool2d(node: fx.Node, importer) -> relax.Var:
    args = list(importer.retrieve_args(node))
    stride = args[2] if len(args) > 2 else None
    if stride is not None and len(stride) == 0:
        stride = None
    return importer._max_pool2d_impl(args[0], args[1], stride, args[3] if len(args) > 3 else 0,
                                     args[4] if len(args) > 4 else 1, args[5] if len(args) > 5 else False)


def convert_max_pool2d(node: fx.Node, importer) -> relax.Var:
    """``aten.max_pool2d`` (and ``max_pool2d_with_indices``) whose stride is given as ``[]`` (what
    ``F.max_pool2d(x, k, ceil_mode=True)`` exports): the stride is the kernel size, as in PyTorch.

    Upstream symptom: ``InternalError: ... The input strides length is expected to be 2. However,
    the given strides is ()`` — the importer takes ``[]`` for an explicit stride."""
    from tvm import relax

    out = _max_pool2d(node, importer)
    if "with_indices" not in str(node.target):
        return out
    # as upstream: the indices are a placeholder (inference graphs do not use them)
    return importer.block_builder.emit(relax.Tuple([out, relax.op.zeros_like(out)]))


CUSTOM_CONVERTERS: dict[str, Callable] = {
    "cat.default": convert_cat,
    "slice.Tensor": convert_slice,
    "max_pool2d.default": convert_max_pool2d,
    "max_pool2d_with_indices.default": convert_max_pool2d,
}
"""aten overload name → converter ``(node, importer) -> relax.Var``."""


__all__ = ["CUSTOM_CONVERTERS", "convert_cat", "convert_max_pool2d", "convert_slice"]
