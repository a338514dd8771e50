"""What every verb shares: argparse types, argument groups, the checks run before any work, ``--inputs``.

argparse reports a bad value of the types here as one usage line and ``error: argument --X: ...``, exit 2;
the checks raise :class:`~hwcomp.errors.HwcompError` (one ``hwcomp: error: ...`` line, exit 2).
"""

from __future__ import annotations

import argparse
import math
import re
from pathlib import Path

from ..errors import HwcompError, InputError


def _print(s: str) -> None:
    print(s, flush=True)


# ----------------------------------------------------------------------------- argument types

MAX_INT = 2**31 - 1


def fraction(lo: float = 0.0, hi: float = 1.0, *, lo_open: bool = False, hi_open: bool = False):
    """An argparse type: a finite float in [lo, hi] (``lo_open``/``hi_open``: that end excluded)."""
    interval = f"{'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"

    def parse(text: str) -> float:
        try:
            v = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number in {interval}, got {text!r}") from None
        if not (math.isfinite(v) and (lo < v if lo_open else lo <= v) and (v < hi if hi_open else v <= hi)):
            raise argparse.ArgumentTypeError(f"must be in {interval}, got {text}")
        return v

    parse.__name__ = "fraction"
    return parse


def _int_in(lo: int, hi: int = MAX_INT):
    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if not lo <= v <= hi:
            raise argparse.ArgumentTypeError(f"must be an integer from {lo} to {hi}, got {v}")
        return v

    parse.__name__ = "integer"
    return parse


positive_int = _int_in(1)
nonnegative_int = _int_in(0)


def _float_above(lo: float, inclusive: bool):
    def parse(text: str) -> float:
        try:
            v = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not (math.isfinite(v) and (v >= lo if inclusive else v > lo)):
            raise argparse.ArgumentTypeError(f"must be a finite number {'>=' if inclusive else '>'} {lo:g}, got {text}")
        return v

    parse.__name__ = "number"
    return parse


positive_float = _float_above(0.0, inclusive=False)
nonnegative_float = _float_above(0.0, inclusive=True)
sparsity_type = fraction(0.0, 1.0, hi_open=True)  # the fraction of weights pruned: all of them is not a model
threshold_type = fraction(0.0, 1.0, lo_open=True, hi_open=True)
cosine_type = fraction(0.0, 1.0, lo_open=True)


def block_type(text: str) -> str:
    """``RxC`` with positive R and C (kept as text: the passes parse it)."""
    from ..passes.dense_to_bsr import parse_block

    try:
        r, c = parse_block(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    if max(r, c) > 1024:
        raise argparse.ArgumentTypeError(f"block dimensions must be at most 1024, got {text!r}")
    return f"{r}x{c}"


def host_port_type(text: str) -> str:
    """``HOST:PORT`` (kept as text)."""
    host, sep, port = text.rpartition(":")
    if not sep or not host.strip() or not re.fullmatch(r"[0-9]{1,5}", port) or not 1 <= int(port) <= 65535:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT with a port from 1 to 65535, got {text!r}")
    return text


def digest_type(text: str) -> str:
    """A sha256 hex digest (``hwcomp inspect`` prints an artifact's)."""
    if not re.fullmatch(r"[0-9a-fA-F]{64}", text.strip()):
        raise argparse.ArgumentTypeError(f"expected the 64 hex digits of a sha256 (hwcomp inspect prints it), "
                                         f"got {text!r}")
    return text.strip().lower()


def _list_type(item, what: str):
    """A comma-separated list of ``item`` values → tuple (empty text → empty tuple)."""
    def parse(text: str) -> tuple:
        out = []
        for part in (p.strip() for p in text.split(",")):
            if not part:
                continue
            try:
                out.append(item(part))
            except argparse.ArgumentTypeError:
                raise argparse.ArgumentTypeError(f"{what}, got {part!r} in {text!r}") from None
        return tuple(out)

    parse.__name__ = "list"
    return parse


sparsity_list_type = _list_type(fraction(0.0, 1.0, lo_open=True, hi_open=True), "each sparsity must be in (0, 1)")
percent_list_type = _list_type(_int_in(1, 99), "each percentage must be an integer from 1 to 99")


# ----------------------------------------------------------------------------- argument groups


def add_model_target_arguments(s: argparse.ArgumentParser) -> None:
    """``model`` and ``-t/--target`` of ``compile`` and ``tune``."""
    s.add_argument("model", help="a torch.export program (.pt2) or an ONNX model (.onnx)")
    s.add_argument("-t", "--target", default="host", help="target name (see `hwcomp targets`) or .toml path")


def add_input_shape_argument(s: argparse.ArgumentParser) -> None:
    s.add_argument("--input-shape", action="append", metavar="NAME:1x3x32x32",
                   help="static shape of an input (needed for dynamic ONNX inputs)")


def add_sparse_arguments(s: argparse.ArgumentParser, sparsity_help: str) -> None:
    """``--sparsity/--block/--sparse-threshold`` (``compile``, ``tune``)."""
    s.add_argument("--sparsity", type=sparsity_type, help=sparsity_help)
    s.add_argument("--block", type=block_type, help="sparse block RxC (default: the target's)")
    s.add_argument("--sparse-threshold", type=threshold_type,
                   help="rewrite layers at least this sparse, in (0, 1) (default 0.7)")


def add_artifact_arguments(s: argparse.ArgumentParser) -> None:
    """``artifact`` and ``--expect-digest`` (``run``, ``inspect``, ``bench``, ``deploy``)."""
    s.add_argument("artifact")
    s.add_argument("--expect-digest", type=digest_type, metavar="SHA256",
                   help="refuse the artifact unless its manifest has this sha256 (hwcomp inspect prints it)")


# ----------------------------------------------------------------------------- checks before any work


def check_output_path(path: str | None, flag: str) -> None:
    """``flag``'s file can be written: its folder exists and it is not itself a folder."""
    if not path:
        return
    p = Path(path)
    if p.is_dir():
        raise HwcompError(f"{flag} {path!r} is a folder; give a file name")
    parent = p.parent
    if not parent.is_dir():
        raise HwcompError(f"{flag} {path!r}: folder {str(parent)!r} does not exist"
                          + (" (it is a file)" if parent.exists() else ""))


def check_model_file(path: str) -> None:
    """The ``model`` of ``compile`` / ``tune`` is a file."""
    if not Path(path).is_file():
        raise HwcompError(f"model file {path!r} " + ("is a folder" if Path(path).is_dir() else "does not exist"))


def check_sparse_args(args) -> None:
    """``--sparsity/--block/--sparse-threshold``: ranges, and no flag that would be ignored."""
    from ..passes.dense_to_bsr import check_sparse_options

    check_sparse_options(getattr(args, "sparsity", None), getattr(args, "sparse_threshold", None),
                         getattr(args, "block", None))


def resolve_target(args):
    """``args.target`` as a :class:`~hwcomp.target.Target`, resolved once (kept as ``args._target``)."""
    from ..target import get_target

    if getattr(args, "_target", None) is None:
        args._target = get_target(args.target)
    return args._target


def check_args(args) -> None:
    """The checks of ``args.command`` that need no model, artifact or device (:func:`hwcomp.cli.main`
    runs them first): each raises :class:`HwcompError` (or ``DeviceURLError``) with one line."""
    check = getattr(args, "check", None)
    if check is not None:
        run_check(args, check)


def run_check(args, check) -> None:
    """Run ``check(args)`` once per ``args`` (main runs it; a verb called directly runs it itself)."""
    done = vars(args).setdefault("_checks_done", set())
    if check not in done:
        check(args)
        done.add(check)


# ----------------------------------------------------------------------------- run --inputs


def load_inputs(path, specs, dynamic: dict | None = None) -> list:
    """``run --inputs``: the arrays of a ``.npz`` for a model with input ``specs`` (dicts or
    :class:`~hwcomp.frontend.model.TensorSpec`: name, shape, dtype), in input order.

    Arrays are matched by name. Only the names ``np.savez`` gives unnamed arrays (``arr_0``,
    ``arr_1``, … exactly one per input) are taken by position. Names, shapes and dtypes that do not
    match raise :class:`~hwcomp.errors.InputError` saying what the model expects. A dimension that
    is a symbol of ``dynamic`` (the manifest's map) takes any length in its range, the same in every
    input naming it."""
    import numpy as np

    from ..frontend.model import read_npz

    specs = [s if isinstance(s, dict) else s.to_dict() for s in specs]
    names = [s["name"] for s in specs]
    arrays = read_npz(path, "inputs")
    given = list(arrays)
    if set(given) == set(names):
        ordered = [arrays[n] for n in names]
    elif given == [f"arr_{i}" for i in range(len(names))]:
        ordered = list(arrays.values())  # np.savez(path, a, b): positional
    else:
        missing = [n for n in names if n not in arrays]
        positional = "arr_0" if len(names) == 1 else f"arr_0..arr_{len(names) - 1}"
        extra = [k for k in given if k not in names]
        raise InputError(f"inputs {str(path)!r} do not match the model: it expects arrays named {names} "
                         f"(or {positional} by position, as np.savez names unnamed arrays), got {given}; "
                         f"missing {missing}, unexpected {extra}")
    from ..artifact import check_shapes

    check_shapes(specs, dynamic, ordered)
    for s, a in zip(specs, ordered):
        if str(a.dtype) != s["dtype"]:
            raise InputError(f"input {s['name']!r}: dtype {a.dtype} but the model expects {s['dtype']}")
    return [np.ascontiguousarray(a) for a in ordered]
