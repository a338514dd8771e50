"""The imported model: a Relax module whose weights are kept apart, and its reference."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np

from ..errors import HwcompError


@dataclasses.dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple[int, ...]
    dtype: str

    def to_dict(self) -> dict:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}

    @classmethod
    def from_dict(cls, d: dict) -> TensorSpec:
        return cls(d["name"], tuple(d["shape"]), d["dtype"])


@dataclasses.dataclass
class ImportedModel:
    """``mod["main"]`` takes ``(*inputs, *params)`` (attr ``num_input``); ``params`` are NumPy arrays
    in that order. ``reference`` runs the original framework model on a list of input arrays; it
    gives the fidelity report its ground truth."""

    mod: object  # tvm.IRModule
    params: dict[str, np.ndarray]
    inputs: list[TensorSpec]
    reference: Callable[[list[np.ndarray]], list[np.ndarray]]
    source: str
    example_inputs: list[np.ndarray] | None = None

    def sample_inputs(self, seed: int = 0) -> list[np.ndarray]:
        """The example inputs if given, else random ones (token-like ints for integer inputs)."""
        if self.example_inputs is not None:
            return self.example_inputs
        return random_inputs(self.inputs, seed)


def random_inputs(specs: list[TensorSpec], seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    out = []
    for s in specs:
        if np.dtype(s.dtype).kind in "iu":
            # Masks and segment ids are 0/1; other integer inputs are read as token ids.
            high = 2 if any(k in s.name for k in ("mask", "type", "segment")) else 100
            out.append(rng.integers(0, high, size=s.shape).astype(s.dtype))
        elif np.dtype(s.dtype).kind == "b":
            out.append(np.ones(s.shape, dtype=s.dtype))
        else:
            out.append(rng.standard_normal(s.shape).astype(s.dtype))
    return out


def parse_input_shapes(items: list[str] | None) -> dict[str, tuple[int, ...]]:
    """``["x:1x3x32x32", "ids:1x128"]`` → ``{"x": (1, 3, 32, 32), "ids": (1, 128)}``."""
    shapes: dict[str, tuple[int, ...]] = {}
    for item in items or []:
        name, sep, dims = item.rpartition(":")
        try:
            if not sep or not name:
                raise ValueError
            shapes[name] = tuple(int(d) for d in dims.lower().split("x"))
        except ValueError:
            raise HwcompError(f"bad --input-shape {item!r}: expected NAME:DxDxD, e.g. x:1x3x32x32") from None
    return shapes
