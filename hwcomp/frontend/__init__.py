"""Import models into Relax: ``load_model`` dispatches on what it is given."""

from __future__ import annotations

from pathlib import Path

from ..errors import HwcompError
from .model import DynamicDim, ImportedModel, TensorSpec, normalize_dynamic, parse_dynamic, parse_input_shapes


def load_model(model, example_inputs=None, input_shapes: dict | None = None,
               trust_pickle: bool = False, dynamic: dict | None = None) -> ImportedModel:
    """Import a ``torch.nn.Module`` (with example inputs), a ``.pt2`` exported program, an
    ``ExportedProgram`` or an ``.onnx`` file into an :class:`ImportedModel`. A ``.pt2`` that would
    unpickle content (which can run code) is refused unless ``trust_pickle``. ``dynamic``
    (``{input: {dim: DynamicDim or (lo, hi)}}``) keeps those dimensions symbolic."""
    dynamic = normalize_dynamic(dynamic)
    if isinstance(model, (str, Path)):
        path = Path(model)
        if not path.exists():
            raise HwcompError(f"model file {str(path)!r} does not exist")
        if path.suffix == ".onnx":
            from .onnx import import_onnx

            if dynamic:
                raise HwcompError(f"{path}: dynamic dimensions are supported for PyTorch models only "
                                  "(.pt2, nn.Module); give ONNX inputs static shapes with --input-shape")

            return import_onnx(path, input_shapes)
        if path.suffix in (".pt2", ".pt"):
            from .torch import import_pt2

            return import_pt2(path, input_shapes, trust_pickle, dynamic)
        raise HwcompError(f"unsupported model file {str(path)!r}: expected .pt2 (torch.export) or .onnx")
    from .torch import import_exported_program, import_module

    import torch

    if isinstance(model, torch.export.ExportedProgram):
        return import_exported_program(model, example_inputs, source="ExportedProgram", dynamic=dynamic)
    if isinstance(model, torch.nn.Module):
        if example_inputs is None:
            raise HwcompError("a torch.nn.Module needs example_inputs (a tuple of tensors)")
        return import_module(model, example_inputs, dynamic)
    raise HwcompError(f"cannot import a {type(model).__name__}: give an nn.Module, a .pt2 or an .onnx path")


__all__ = ["DynamicDim", "ImportedModel", "TensorSpec", "load_model", "normalize_dynamic", "parse_dynamic",
           "parse_input_shapes"]
