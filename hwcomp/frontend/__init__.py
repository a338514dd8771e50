"""Import models into Relax: ``load_model`` dispatches on what it is given."""

from __future__ import annotations

from pathlib import Path

from ..errors import HwcompError
from .model import ImportedModel, TensorSpec, parse_input_shapes


def load_model(model, example_inputs=None, input_shapes: dict | None = None,
               trust_pickle: bool = False) -> ImportedModel:
    """Import a ``torch.nn.Module`` (with example inputs), a ``.pt2`` exported program, an
    ``ExportedProgram`` or an ``.onnx`` file into an :class:`ImportedModel`. A ``.pt2`` that would
    unpickle content (which can run code) is refused unless ``trust_pickle``."""
    if isinstance(model, (str, Path)):
        path = Path(model)
        if not path.exists():
            raise HwcompError(f"model file {str(path)!r} does not exist")
        if path.suffix == ".onnx":
            from .onnx import import_onnx

            return import_onnx(path, input_shapes)
        if path.suffix in (".pt2", ".pt"):
            from .torch import import_pt2

            return import_pt2(path, input_shapes, trust_pickle)
        raise HwcompError(f"unsupported model file {str(path)!r}: expected .pt2 (torch.export) or .onnx")
    from .torch import import_exported_program, import_module

    import torch

    if isinstance(model, torch.export.ExportedProgram):
        return import_exported_program(model, example_inputs, source="ExportedProgram")
    if isinstance(model, torch.nn.Module):
        if example_inputs is None:
            raise HwcompError("a torch.nn.Module needs example_inputs (a tuple of tensors)")
        return import_module(model, example_inputs)
    raise HwcompError(f"cannot import a {type(model).__name__}: give an nn.Module, a .pt2 or an .onnx path")


__all__ = ["ImportedModel", "TensorSpec", "load_model", "parse_input_shapes"]
