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


CUSTOM_CONVERTERS: dict[str, Callable] = {
    "cat.default": convert_cat,
}
"""aten overload name → converter ``(node, importer) -> relax.Var``."""


__all__ = ["CUSTOM_CONVERTERS", "convert_cat"]
