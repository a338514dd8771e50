"""The imported model: a Relax module whose weights are kept apart, and its reference."""

from __future__ import annotations

import dataclasses
import lzma
import re
import struct
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path

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


MAX_DIM = 2**31 - 1


def parse_input_shapes(items: list[str] | None) -> dict[str, tuple[int, ...]]:
    """``["x:1x3x32x32", "ids:1x128"]`` → ``{"x": (1, 3, 32, 32), "ids": (1, 128)}``.

    Every dimension must be a positive integer (these are the static shapes the model is compiled
    for); a name given twice is refused. Raises :class:`HwcompError` naming the bad item."""
    shapes: dict[str, tuple[int, ...]] = {}
    for item in items or []:
        name, sep, dims = item.rpartition(":")
        parts = dims.strip().lower().split("x")
        if not sep or not name.strip() or not all(re.fullmatch(r"[+-]?[0-9]+", p.strip()) for p in parts):
            raise HwcompError(f"bad --input-shape {item!r}: expected NAME:DxDxD with integer dimensions, "
                              "e.g. x:1x3x32x32")
        shape = tuple(int(p) for p in parts)
        for d in shape:
            if d < 1:
                raise HwcompError(f"bad --input-shape {item!r}: dimension {d} is not positive (a static shape "
                                  "needs every dimension >= 1)")
            if d > MAX_DIM:
                raise HwcompError(f"bad --input-shape {item!r}: dimension {d} is too large (at most {MAX_DIM})")
        if name in shapes:
            raise HwcompError(f"bad --input-shape {item!r}: input {name!r} is given twice")
        shapes[name] = shape
    return shapes


# Everything np.load / zipfile / zlib raise on a damaged, foreign or hostile file.
_NPZ_ERRORS = (OSError, ValueError, EOFError, KeyError, RuntimeError, MemoryError, OverflowError, zipfile.BadZipFile,
               zlib.error, struct.error, lzma.LZMAError)


def read_npz(path, what: str = "inputs") -> dict[str, np.ndarray]:
    """The numeric arrays of a ``.npz`` file (``np.savez``), by name, in file order.

    Any file that is not one (missing, a directory, a ``.npy``, truncated or corrupt zip, pickled
    or non-numeric members, no arrays at all) raises :class:`HwcompError` with one line naming it.
    """
    p = Path(path)
    if not p.exists():
        raise HwcompError(f"{what} file {str(p)!r} does not exist")
    if p.is_dir():
        raise HwcompError(f"{what} file {str(p)!r} is a directory, not a .npz file")
    try:
        with open(p, "rb") as f:
            magic = f.read(6)
    except OSError as e:
        raise HwcompError(f"cannot read {what} file {str(p)!r}: {e.strerror or e}") from None
    if magic.startswith(b"\x93NUMPY"):
        raise HwcompError(f"{what} file {str(p)!r} is a .npy file (one unnamed array); write a .npz with "
                          "np.savez(path, NAME=array, ...) instead")
    if not magic.startswith(b"PK"):
        raise HwcompError(f"{what} file {str(p)!r} is not a .npz file (np.savez writes a zip archive)")
    arrays: dict[str, np.ndarray] = {}
    try:
        with np.load(p, allow_pickle=False) as z:
            for key in z.files:
                a = z[key]
                if not isinstance(a, np.ndarray):
                    raise HwcompError(f"{what} file {str(p)!r}: member {key!r} is not a NumPy array")
                arrays[key] = a
    except HwcompError:
        raise
    except _NPZ_ERRORS as e:
        detail = (str(e).strip().splitlines() or [""])[0][:200]
        raise HwcompError(f"{what} file {str(p)!r} is not a readable .npz file: {type(e).__name__}: {detail}") from None
    if not arrays:
        raise HwcompError(f"{what} file {str(p)!r} holds no arrays")
    for key, a in arrays.items():
        if a.dtype.kind not in "biufc":
            raise HwcompError(f"{what} file {str(p)!r}: array {key!r} has dtype {a.dtype}; expected numbers")
    return arrays
