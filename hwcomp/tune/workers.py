"""Builders and runners that measure tuning candidates, on this machine or on boards behind an RPC tracker.

Two costs dominate MetaSchedule on a small machine, and both are in the worker processes, not in
the search: (1) ``LocalBuilder`` starts a fresh process pool for every batch and its default build
function imports ``tvm.s_tir.tensor_intrin``, which registers every tensor intrinsic TVM has (well
over a minute on 2 busy cores); (2) every worker imports TVM, and TVM's FFI imports PyTorch eagerly
when it is installed (~10 s). :func:`build_module` builds without the intrinsic registry (hwcomp's
candidates never tensorize at build time: tensorization happens while scheduling) and
:func:`lean_workers` hides PyTorch from the worker processes only.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

#: Evaluator settings for candidates: as MetaSchedule's defaults, but several repeats so that
#: one noisy repeat on a shared machine does not decide a ranking.
NUMBER, REPEAT, MIN_REPEAT_MS = 3, 3, 40
#: On this machine every run starts with the weights out of cache (every argument but the first,
#: the activation, is flushed), as in a model, where each layer's weights were evicted by the layers
#: since their last use. Timed hot, MetaSchedule's matmul records beat hwcomp's default by up to 15 %
#: and BERT-base tuned that way ran 4.6 % slower than untuned.
COLD_REPEAT = 12


def build_module(mod, target, _params):
    """``LocalBuilder`` build function: MetaSchedule's default without the intrinsic registry."""
    import tvm
    from tvm.s_tir.transform import RemoveWeightLayoutRewriteBlock

    from hwcomp.tir_stack import pipeline_for

    mod = RemoveWeightLayoutRewriteBlock(skip_tensor_rewrite=True)(mod)
    return tvm.tirx.build(mod, target=target, pipeline=pipeline_for(target.kind.name))  # as compile builds it


@dataclass(frozen=True)
class Exporter:
    """``LocalBuilder`` export function: a shared library, cross-linked when ``compiler`` is given.

    MetaSchedule's default exports a ``.tar`` of object files that the device must link itself; a
    ``.so`` loads on a board that has only TVM's runtime and no compiler.
    """

    compiler: str | None = None

    def __call__(self, rt_mod) -> str:
        path = os.path.join(tempfile.mkdtemp(prefix="hwcomp-cand-"), "cand.so")
        if self.compiler:
            from tvm.support import cc

            rt_mod.export_library(path, fcompile=cc.cross_compiler(self.compiler))
        else:
            rt_mod.export_library(path)
        return path


@contextlib.contextmanager
def lean_workers():
    """Hide PyTorch from the Popen worker processes started inside this block.

    Only the environment of *child* processes changes: this process keeps its own ``sys.path``.
    """
    stub_root = Path(tempfile.mkdtemp(prefix="hwcomp-lean-"))
    (stub_root / "torch").mkdir()
    (stub_root / "torch" / "__init__.py").write_text(
        'raise ImportError("torch is hidden from hwcomp tuning workers")\n')
    old = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(stub_root), old]))
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = old
        shutil.rmtree(stub_root, ignore_errors=True)


_INTRIN_PKG = "tvm.s_tir.tensor_intrin"


@contextlib.contextmanager
def target_intrinsics(target):
    """Register only the target's tensor intrinsics while tuning contexts are created.

    ``TuneContext`` imports ``tvm.s_tir.tensor_intrin``, whose package import registers every
    intrinsic of every backend (CUDA's alone take minutes on a busy 2-core machine). For a CPU target
    only its own architecture's module is needed (x86 VNNI/AVX-512, ARM dot product): the package is
    stood in for by a namespace-like module inside this block, and removed after it (the submodule
    stays registered, so a later full import only adds the others).
    """
    import importlib
    import sys
    import types

    if _INTRIN_PKG in sys.modules or target.is_gpu:
        yield
        return
    import tvm.s_tir

    pkg = types.ModuleType(_INTRIN_PKG)
    pkg.__path__ = [os.path.join(os.path.dirname(tvm.s_tir.__file__), "tensor_intrin")]
    pkg.__package__ = _INTRIN_PKG
    pkg.__doc__ = "hwcomp: target-only stand-in for tvm.s_tir.tensor_intrin while tuning"
    sys.modules[_INTRIN_PKG] = pkg
    try:
        sub = {"x86_64": "x86", "aarch64": "arm_cpu"}.get(target.arch)
        if sub:
            importlib.import_module(f"{_INTRIN_PKG}.{sub}")
        yield
    finally:
        if sys.modules.get(_INTRIN_PKG) is pkg:
            del sys.modules[_INTRIN_PKG]


@dataclass(frozen=True)
class Fleet:
    """Where candidates run: this machine, or every server registered under ``key`` at a tracker."""

    tracker: tuple[str, int] | None = None
    key: str | None = None
    servers: int = 1

    @property
    def remote(self) -> bool:
        return self.tracker is not None

    def describe(self) -> str:
        if not self.remote:
            return "this machine"
        return f"{self.servers} device(s) with key {self.key!r} at tracker {self.tracker[0]}:{self.tracker[1]}"


def parse_tracker(text: str) -> tuple[str, int]:
    """``HOST:PORT`` → ``(host, port)``."""
    from ..errors import HwcompError

    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise HwcompError(f"bad --rpc-tracker {text!r}: expected HOST:PORT, e.g. 127.0.0.1:9190")
    return host.strip("[]"), int(port)


def resolve_fleet(rpc_tracker: str | tuple[str, int] | None, rpc_key: str | None) -> Fleet:
    """Check the tracker and count the servers registered under ``rpc_key``."""
    from ..errors import HwcompError

    if rpc_tracker is None:
        if rpc_key:
            raise HwcompError("--rpc-key needs --rpc-tracker HOST:PORT")
        return Fleet()
    if not rpc_key:
        raise HwcompError("--rpc-tracker needs --rpc-key KEY (the key the devices registered under)")
    host, port = parse_tracker(rpc_tracker) if isinstance(rpc_tracker, str) else rpc_tracker
    from ..runtime.rpc import tracker_servers

    try:
        servers = tracker_servers(host, port)
    except (OSError, RuntimeError, ConnectionError) as e:
        raise HwcompError(f"cannot reach the RPC tracker at {host}:{port}: {e}") from None
    n = sum(1 for s in servers if s.get("key") == f"server:{rpc_key}")
    if n == 0:
        keys = sorted({str(s.get("key", "")).removeprefix("server:") for s in servers})
        raise HwcompError(f"no device registered under key {rpc_key!r} at {host}:{port}"
                          f" (registered keys: {keys or 'none'})")
    return Fleet((host, port), rpc_key, n)


def make_builder(cross_compiler: str | None = None, timeout_s: float = 120.0, workers: int | None = None):
    """A ``LocalBuilder`` using :func:`build_module` and an :class:`Exporter`."""
    from tvm.s_tir import meta_schedule as ms

    workers = workers or max(1, min(os.cpu_count() or 1, 8))
    return ms.builder.LocalBuilder(max_workers=workers, timeout_sec=timeout_s,
                                   f_build=build_module, f_export=Exporter(cross_compiler))


def alloc_arguments(session, device, args_info, alloc_repeat: int) -> list:
    """``RPCRunner`` argument allocation that needs nothing on the device but TVM's runtime.

    MetaSchedule's default calls ``tvm.contrib.random.random_fill_for_measure`` on the device,
    which a runtime-only build (a board) does not have. The data are made here and copied over:
    floats uniform in [-1, 1] (no denormals to skew timings), integers 0 (always a valid index).
    """
    import numpy as np
    import tvm

    rng = np.random.default_rng(0)
    repeated = []
    for _ in range(alloc_repeat):
        args = []
        for info in args_info:
            kind, dtype, shape = info[0], info[1], [int(d) for d in info[2]]
            if kind != "TENSOR":
                raise NotImplementedError(f"argument kind {kind!r}")
            np_dtype = np.dtype(dtype) if dtype != "bool" else np.dtype("bool")
            if np_dtype.kind == "f":
                host = rng.uniform(-1.0, 1.0, size=shape).astype(np_dtype)
            else:
                host = np.zeros(shape, dtype=np_dtype)
            arr = tvm.runtime.empty(shape, dtype, device)
            arr.copyfrom(host)
            args.append(arr)
        repeated.append(args)
    return repeated


def make_runner(fleet: Fleet, timeout_s: float = 60.0):
    """``LocalRunner`` here, or an ``RPCRunner`` with one worker per registered device."""
    from tvm.s_tir import meta_schedule as ms

    evaluator = ms.runner.EvaluatorConfig(number=NUMBER, repeat=REPEAT, min_repeat_ms=MIN_REPEAT_MS,
                                          enable_cpu_cache_flush=False)
    if not fleet.remote:
        cold = ms.runner.EvaluatorConfig(number=1, repeat=COLD_REPEAT, min_repeat_ms=0, enable_cpu_cache_flush=True)
        return ms.runner.LocalRunner(timeout_sec=timeout_s, evaluator_config=cold)
    config = ms.runner.RPCConfig(tracker_host=fleet.tracker[0], tracker_port=fleet.tracker[1],
                                 tracker_key=fleet.key, session_timeout_sec=int(timeout_s))
    return ms.runner.RPCRunner(rpc_config=config, evaluator_config=evaluator, max_workers=fleet.servers,
                               f_alloc_argument=alloc_arguments)


def remove_builds(built) -> None:
    """Delete the candidate libraries a ``LocalBuilder`` wrote (``BuilderResult`` list)."""
    from tvm.s_tir.meta_schedule.utils import remove_build_dir

    for b in built:
        if b.artifact_path:
            try:
                remove_build_dir(b.artifact_path)
            except OSError:
                pass
