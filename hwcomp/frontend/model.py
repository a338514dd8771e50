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
    """An input or output: a dimension is an ``int``, or a ``str`` naming a dynamic symbol (whose
    range is the model's ``dynamic`` map; inputs naming the same symbol must agree on its length)."""

    name: str
    shape: tuple[int | str, ...]
    dtype: str

    def concrete(self, sizes: dict[str, int]) -> tuple[int, ...]:
        """The shape with each symbol replaced by its length in ``sizes``."""
        return tuple(d if isinstance(d, int) else int(sizes[d]) for d in self.shape)

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
    #: dynamic symbol → (min, max) for the symbols named in ``inputs``' shapes (max None: unbounded)
    dynamic: dict[str, tuple[int, int | None]] = dataclasses.field(default_factory=dict)
    #: the Relax module's symbol (torch's ``s53``) → the name in ``inputs``, where they differ
    symbol_names: dict[str, str] = dataclasses.field(default_factory=dict)

    def sample_inputs(self, seed: int = 0) -> list[np.ndarray]:
        """The example inputs if given, else random ones (token-like ints for integer inputs)."""
        if self.example_inputs is not None:
            return self.example_inputs
        return random_inputs(self.inputs, seed, dynamic=self.dynamic)


def random_inputs(specs: list[TensorSpec], seed: int = 0,
                  dynamic: dict[str, tuple[int, int | None]] | None = None) -> list[np.ndarray]:
    """Random inputs of ``specs``; a dynamic dimension gets a length in its range (``dynamic``):
    16 clipped to the range when nothing else is known."""
    rng = np.random.default_rng(seed)
    sizes = {}
    for name, (lo, hi) in (dynamic or {}).items():
        sizes[name] = max(lo, min(16, hi if hi is not None else 16))
    out = []
    for s in specs:
        s = dataclasses.replace(s, shape=s.concrete({**{d: 16 for d in s.shape if isinstance(d, str)}, **sizes}))
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


@dataclasses.dataclass(frozen=True)
class DynamicDim:
    """A symbolic length: every input dimension given the same ``DynamicDim`` (same name) shares it."""

    name: str
    min: int
    max: int

    def to_dict(self) -> dict:
        return {"min": self.min, "max": self.max}


_SYMBOL = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_RANGE = re.compile(r"\s*([0-9]+)\s*\.\.\s*([0-9]+)\s*")


def _range(text: str, item: str) -> tuple[int, int]:
    m = _RANGE.fullmatch(text)
    if not m:
        raise HwcompError(f"bad --dynamic {item!r}: expected a range LO..HI of integers, e.g. 1..512")
    lo, hi = int(m.group(1)), int(m.group(2))
    if lo < 1 or hi < lo or hi > MAX_DIM:
        raise HwcompError(f"bad --dynamic {item!r}: the range needs 1 <= LO <= HI <= {MAX_DIM}")
    return lo, hi


def parse_dynamic(items: list[str] | None) -> dict[str, dict[int, DynamicDim]]:
    """``--dynamic`` flags → ``{input: {dim: DynamicDim}}`` (``CompileOptions.dynamic``).

    Three forms, any number of each:

    - ``INPUT:DIM=LO..HI``: dimension DIM of INPUT ranges over LO..HI (its own symbol, named
      ``INPUT_DIM``);
    - ``SYM=LO..HI``: declares a symbol SYM (a name, no colon);
    - ``INPUT:DIM=SYM``: dimension DIM of INPUT is SYM; inputs naming the same symbol always have
      the same length there (``--dynamic seq=1..512 --dynamic input_ids:1=seq
      --dynamic attention_mask:1=seq``).

    Raises :class:`HwcompError` naming the bad item."""
    symbols: dict[str, tuple[int, int]] = {}
    dims: list[tuple[str, int, str | tuple[int, int], str]] = []
    for item in items or []:
        lhs, eq, rhs = item.partition("=")
        lhs, rhs = lhs.strip(), rhs.strip()
        if not eq or not lhs or not rhs:
            raise HwcompError(f"bad --dynamic {item!r}: expected INPUT:DIM=LO..HI, SYM=LO..HI or INPUT:DIM=SYM")
        if ":" not in lhs:
            if not _SYMBOL.fullmatch(lhs):
                raise HwcompError(f"bad --dynamic {item!r}: symbol {lhs!r} must be a name (letters, digits, _)")
            if lhs in symbols:
                raise HwcompError(f"bad --dynamic {item!r}: symbol {lhs!r} is declared twice")
            symbols[lhs] = _range(rhs, item)
            continue
        name, _, dim = lhs.rpartition(":")
        if not name or not re.fullmatch(r"[0-9]+", dim.strip()):
            raise HwcompError(f"bad --dynamic {item!r}: expected INPUT:DIM with DIM a dimension index, "
                              "e.g. input_ids:1")
        value: str | tuple[int, int] = rhs if _SYMBOL.fullmatch(rhs) else _range(rhs, item)
        dims.append((name, int(dim), value, item))
    out: dict[str, dict[int, DynamicDim]] = {}
    used = set()
    for name, dim, value, item in dims:
        if isinstance(value, str):
            if value not in symbols:
                raise HwcompError(f"bad --dynamic {item!r}: symbol {value!r} has no range; declare it with "
                                  f"--dynamic {value}=LO..HI")
            used.add(value)
            d = DynamicDim(value, *symbols[value])
        else:
            d = DynamicDim(f"{name}_{dim}", *value)
        if dim in out.setdefault(name, {}):
            raise HwcompError(f"bad --dynamic {item!r}: dimension {dim} of {name!r} is given twice")
        out[name][dim] = d
    unused = sorted(set(symbols) - used)
    if unused:
        raise HwcompError(f"--dynamic declares symbol {unused[0]!r} but no INPUT:DIM={unused[0]} uses it")
    return out


def normalize_dynamic(dynamic: dict | None) -> dict[str, dict[int, DynamicDim]]:
    """``CompileOptions.dynamic`` with ``(lo, hi)`` shorthands made :class:`DynamicDim` (named
    ``INPUT_DIM``), checked: one range per symbol name."""
    out: dict[str, dict[int, DynamicDim]] = {}
    seen: dict[str, DynamicDim] = {}
    for name, dims in (dynamic or {}).items():
        if not isinstance(dims, dict):
            raise HwcompError(f"dynamic[{name!r}] must map dimension index → DynamicDim or (lo, hi)")
        for dim, d in dims.items():
            if not isinstance(d, DynamicDim):
                try:
                    lo, hi = (int(x) for x in d)
                except (TypeError, ValueError):
                    raise HwcompError(f"dynamic[{name!r}][{dim!r}] must be a DynamicDim or (lo, hi)") from None
                d = DynamicDim(f"{name}_{dim}", lo, hi)
            if not (type(dim) is int and dim >= 0):
                raise HwcompError(f"dynamic[{name!r}]: dimension {dim!r} is not a non-negative index")
            if not (1 <= d.min <= d.max <= MAX_DIM) or not _SYMBOL.fullmatch(d.name):
                raise HwcompError(f"dynamic[{name!r}][{dim}]: {d} needs a name and 1 <= min <= max")
            if seen.setdefault(d.name, d) != d:
                raise HwcompError(f"dynamic symbol {d.name!r} is given two ranges: {seen[d.name]} and {d}")
            out.setdefault(name, {})[dim] = d
    return out


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
