"""``hwcomp`` command line: each verb parses its arguments and calls the Python API, nothing else.

One module per verb group: :mod:`.args` (argument types, shared argument groups, checks run before any
work, ``run --inputs``), :mod:`.build` (``targets``, ``compile``), :mod:`.run` (``run``, ``inspect``,
``bench``, ``deploy``), :mod:`.board`, :mod:`.prune`, :mod:`.tune` (``tune``, ``db``), :mod:`.optimize` and
:mod:`.demo`. :func:`build_parser` wires each verb to its function; :func:`main` is the console script.
"""

from __future__ import annotations

import argparse
import sys
import threading
import warnings

from ..errors import HwcompError, HwcompWarning
from .args import check_args, load_inputs
from .board import add_board_arguments, cmd_board
from .build import (
    add_compile_arguments,
    add_targets_arguments,
    check_compile_args,
    cmd_compile,
    cmd_targets,
)
from .demo import add_demo_arguments, cmd_demo
from .optimize import add_optimize_arguments, check_optimize_args, cmd_optimize
from .prune import add_prune_arguments, check_prune_args, run_prune
from .run import (
    add_bench_arguments,
    add_deploy_arguments,
    add_inspect_arguments,
    add_run_arguments,
    check_bench_args,
    check_deploy_args,
    check_run_args,
    cmd_bench,
    cmd_deploy,
    cmd_inspect,
    cmd_run,
)
from .tune import (
    add_db_arguments,
    add_tune_arguments,
    check_tune_args,
    run_db,
    run_tune,
)

__all__ = ["build_parser", "check_args", "cmd_bench", "cmd_inspect", "load_inputs", "main"]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="hwcomp", description="Hardware-aware compression compiler on Apache TVM.")
    sub = p.add_subparsers(dest="command", required=True)
    # (verb, help, add its arguments, run it, check before any work); the functions are looked up here
    # each time, so that a test can replace one on this module.
    verbs = [
        ("targets", "list the target devices", add_targets_arguments, cmd_targets, None),
        ("compile", "compile a .pt2 or .onnx model into an artifact directory", add_compile_arguments,
         cmd_compile, check_compile_args),
        ("run", "run an artifact on this machine", add_run_arguments, cmd_run, check_run_args),
        ("inspect", "describe an artifact", add_inspect_arguments, cmd_inspect, None),
        ("bench", "measure an artifact locally, over RPC or through a tracker", add_bench_arguments, cmd_bench,
         check_bench_args),
        ("deploy", "make a runtime-only bundle, or push and run over RPC", add_deploy_arguments, cmd_deploy,
         check_deploy_args),
        ("board", "an emulated edge board (qemu-user aarch64 + TVM RPC server)", add_board_arguments, cmd_board,
         None),
        ("prune", "prune a PyTorch model (importance criteria, blocks, structured) → .pt2", add_prune_arguments,
         run_prune, check_prune_args),
        ("tune", "auto-tune a model's kernels for a target (MetaSchedule + XGBoost)", add_tune_arguments, run_tune,
         check_tune_args),
        ("db", "export, import or merge tuning databases", add_db_arguments, run_db, None),
        ("optimize", "search per-layer sparsity/precision with the target in the loop", add_optimize_arguments,
         cmd_optimize, check_optimize_args),
        ("demo", "compile, run and verify a default model for the host CPU", add_demo_arguments, cmd_demo, None),
    ]
    for name, help_text, add_arguments, func, check in verbs:
        s = sub.add_parser(name, help=help_text)
        add_arguments(s)
        s.set_defaults(func=func, **({"check": check} if check else {}))
    return p


# Errors of the files and folders a user names: one line, like HwcompError.
_PATH_ERRORS = (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError, FileExistsError)


def _os_error_message(e: OSError) -> str:
    what = e.strerror or str(e)
    names = [repr(str(f)) for f in (e.filename, e.filename2) if f is not None]
    return f"{what}: {' -> '.join(names)}" if names else what


def _one_line_warnings(show):
    """``warnings.showwarning`` that prints hwcomp's own warnings (:class:`HwcompWarning`) as one
    ``hwcomp: warning:`` line and hands every other to ``show``."""

    def showwarning(message, category, filename, lineno, file=None, line=None):
        if issubclass(category, HwcompWarning):
            print(f"hwcomp: warning: {message}", file=sys.stderr, flush=True)
        else:
            show(message, category, filename, lineno, file, line)

    showwarning.hwcomp_one_line = True
    return showwarning


_INSTALL_LOCK = threading.Lock()


def _install_one_line_warnings() -> None:
    """Wrap the process's warning display once (idempotent, under a lock: ``main`` may run in several
    threads; saving and restoring it per call, as ``warnings.catch_warnings`` does, is not thread-safe)."""
    with _INSTALL_LOCK:
        if not getattr(warnings.showwarning, "hwcomp_one_line", False):
            warnings.showwarning = _one_line_warnings(warnings.showwarning)


def main(argv: list[str] | None = None) -> int:
    """``hwcomp``: a user's error is one ``hwcomp: error: ...`` line on stderr and exit code 2
    (argparse's own: a usage line and its error, also 2); anything else is a bug and shows its traceback."""
    from ..runtime.rpc import DeviceURLError

    args = build_parser().parse_args(argv)
    try:
        _install_one_line_warnings()
        check_args(args)
        return args.func(args)
    except (HwcompError, DeviceURLError) as e:
        message = str(e)
    except _PATH_ERRORS as e:
        message = _os_error_message(e)
    print(f"hwcomp: error: {message}", file=sys.stderr, flush=True)
    return 2
