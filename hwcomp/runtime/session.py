"""Load an artifact on a device — this process, an RPC server, or a board behind a tracker — and
measure it there: load time, first run, latency statistics, correctness against the stored reference.

Runtime side only: imports ``tvm.runtime`` and ``tvm.rpc``, never the compiler.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from ..artifact import LIB, Artifact, compare, flatten_outputs, is_compressed, reproduces_build
from ..errors import HwcompError
from .measure import LatencyStats, prepared_call, time_vm
from .rpc import (
    ArchMismatchError,
    DeviceURLError,
    check_library_arch,
    connect,
    parse_device_url,
    session_deadline,
    upload_library,
)


@dataclasses.dataclass
class BenchConfig:
    """How to time: ``repeat`` samples, each the mean of ``number`` runs (at least ``min_repeat_ms``)."""

    device: str = "local"
    repeat: int = 20
    number: int = 5
    min_repeat_ms: int = 0
    warmup: int = 2
    cache_flush: bool = False
    session_timeout: float = 300.0
    arch: str | None = None  # device CPU architecture, when the URL does not tell


@dataclasses.dataclass
class BenchReport:
    artifact: str
    target: str
    device: str
    emulated: bool
    load_s: float
    first_run_ms: float
    latency_ms: dict[str, float]
    samples_ms: list[float]
    correctness: dict[str, Any] | None
    peak_rss_mb: float | None

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    def lines(self) -> list[str]:
        lat = self.latency_ms
        label = " (EMULATED: qemu-user timings say nothing about real board speed)" if self.emulated else ""
        out = [f"{self.artifact} on {self.device} [{self.target}]{label}",
               f"load {self.load_s * 1e3:.1f} ms, first run {self.first_run_ms:.3f} ms",
               f"latency ms: min {lat['min']:.3f}  median {lat['median']:.3f}  mean {lat['mean']:.3f}  "
               f"p90 {lat['p90']:.3f}  p99 {lat['p99']:.3f}  std {lat['std']:.3f}  "
               f"({lat['repeat']}×{lat['number']} runs)"]
        if self.peak_rss_mb is not None:
            out.append(f"peak RSS {self.peak_rss_mb:.1f} MB")
        if self.correctness:
            c = self.correctness
            verdict = "OK" if c["ok"] else "MISMATCH" if c["ok"] is False else \
                "not judged (compressed, and its build could not run to measure how far it may differ)"
            built = c.get("build")
            out.append(f"correctness vs reference: {verdict} (max abs err {c['max_abs_err']:.3g}, "
                       f"cosine {c['min_cosine']:.6f}, tolerance {c['tolerance']:.1g}"
                       + (f"; the build's own {built['max_abs_err']:.3g} / {built['min_cosine']:.6f} allowed"
                          if built and built["max_abs_err"] > 0 else "") + ")")
        return out


def _expected_arch(url, arch: str | None = None) -> str | None:
    """The device's CPU architecture: given, the board's, or the target whose RPC key is used."""
    if arch:
        return arch
    if url.kind == "local":
        import platform

        return platform.machine()
    from .board import DEFAULT_ROOT, board_status

    board = board_status(DEFAULT_ROOT)
    if board is not None and ((url.kind == "rpc" and url.port == board.port)
                              or (url.kind == "tracker" and url.key == board.key)):
        return board.arch
    if url.kind == "tracker":
        from ..target import get_target, target_names

        for name in target_names()[1:]:
            t = get_target(name)
            if t.rpc_key == url.key and not t.is_gpu:
                return t.arch
    return None


def _is_emulated(url) -> bool:
    if url.kind == "local":
        return False
    from .board import DEFAULT_ROOT, board_status

    board = board_status(DEFAULT_ROOT)
    return board is not None and ((url.kind == "rpc" and url.port == board.port)
                                  or (url.kind == "tracker" and url.key == board.key))


class DeviceModel:
    """An artifact loaded on a device — ``local``, ``rpc://HOST:PORT`` or ``tracker://HOST:PORT/KEY``
    — to run and time there. Construction connects, refuses a library of the wrong architecture
    before uploading it, uploads, and puts the weights on the device (``load_s``). ``session``: an
    open one to load into (another ``DeviceModel``'s): an RPC server serves one session at a time,
    so models used side by side must share it.

    ``session_timeout`` bounds the whole remote session, measurements included (see
    :class:`~.rpc.SessionDeadline`): a device that stops answering — silent, frozen, unreachable —
    raises :class:`HwcompError` within it, one that vanishes raises at once."""

    def __init__(self, artifact: Artifact, device: str = "local", session_timeout: float = 300.0,
                 arch: str | None = None, session=None):
        import tvm
        from tvm.runtime.vm import VirtualMachine

        try:
            self.url = parse_device_url(device)
        except DeviceURLError as e:
            raise HwcompError(str(e)) from None
        self.artifact, self.device = artifact, device
        self.is_cuda = artifact.target["tvm"]["kind"] == "cuda"
        expected = _expected_arch(self.url, arch)
        if expected is not None and not self.is_cuda:
            try:
                check_library_arch(artifact.path / LIB, expected)
            except ArchMismatchError as e:
                raise HwcompError(f"{e} (artifact target {artifact.target['name']!r})") from None
        try:
            session = session or connect(device, session_timeout=session_timeout)
        except HwcompError:  # the device did not answer within the session timeout
            raise
        except (ConnectionError, OSError) as e:
            raise HwcompError(f"cannot reach device {device}: {e}") from None
        self.session = session  # before any remote call: device_errors reads its deadline
        t0 = time.perf_counter()
        with self.device_errors():
            if self.url.kind == "local":  # a LocalSession's devices carry the RPC mask: use plain ones
                lib = artifact.load_library()
                self.dev = tvm.cuda(0) if self.is_cuda else tvm.cpu(0)
            else:
                lib = upload_library(session, artifact.path / LIB)
                self.dev = session.cuda(0) if self.is_cuda else session.cpu(0)
            self.vm = VirtualMachine(lib, self.dev)
            self.weights = [tvm.runtime.tensor(w, self.dev) for w in artifact.weights()]
        self.load_s = time.perf_counter() - t0

    @contextlib.contextmanager
    def device_errors(self):
        """Turn a failing remote call into a one-line :class:`HwcompError`: past the session's
        deadline (the watchdog shut the connection) it says so, otherwise the device vanished."""
        import tvm

        try:
            yield
        except HwcompError:  # bad inputs, or already translated
            raise
        except Exception as e:
            deadline = session_deadline(getattr(self, "session", None))
            if deadline is not None and (deadline.expired or deadline.remaining() <= 0):
                raise deadline.error() from None
            if isinstance(e, OSError):
                raise HwcompError(f"device {self.device} disappeared during measurement: {e}") from None
            if self.url.kind == "local" or not isinstance(e, (tvm.error.RPCError, tvm.error.InternalError)):
                raise
            # TVM reports a dropped session as kShutdown/connection errors from the RPC endpoint.
            raise HwcompError(f"device {self.device} failed or disappeared during measurement: "
                              f"{str(e).strip().splitlines()[-1]}") from None

    def args(self, inputs) -> list:
        """Inputs (checked against the artifact's specs) and weights, on the device."""
        import tvm

        return [tvm.runtime.tensor(a, self.dev) for a in self.artifact.check_inputs(inputs)] + self.weights

    def prepared(self, inputs):
        """A zero-argument call on ``inputs`` set once (:func:`~.measure.prepared_call`); on a remote
        device each call reports failures as :meth:`device_errors` does (callers time it outside)."""
        with self.device_errors():
            call = prepared_call(self.vm, self.dev, self.args(inputs))
        if self.url.kind == "local":  # nothing to translate: keep the timed call bare
            return call

        def guarded() -> None:
            with self.device_errors():
                call()

        return guarded

    def run(self, inputs) -> list[np.ndarray]:
        with self.device_errors():
            return flatten_outputs(self.vm["main"](*self.args(inputs)))

    def close(self) -> None:
        """End the session now. An RPC server serves one session at a time, and the objects that
        hold a remote session are freed by Python's cycle collector, not when the last reference
        goes (seen on the emulated board: a finished test's session kept the server busy until
        the collector ran, and the next connection's handshake timed out)."""
        remote = self.url.kind != "local" and getattr(self, "session", None) is not None
        self.vm = self.weights = self.dev = self.session = None
        if remote:
            gc.collect()

    def __enter__(self) -> DeviceModel:  # noqa: PYI034 (Python 3.10 has no typing.Self)
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def time(self, inputs, number: int = 5, repeat: int = 20, min_repeat_ms: int = 0,
             cache_flush: bool = False) -> LatencyStats:
        """Latency statistics on the device (TVM's time evaluator, on the device's clock)."""
        with self.device_errors():
            return time_vm(self.vm, self.dev, self.args(inputs), number=number, repeat=repeat,
                           min_repeat_ms=min_repeat_ms, cache_flush=cache_flush)


def bench(artifact: Artifact, config: BenchConfig | None = None, tolerance: float = 1e-3) -> BenchReport:
    """Upload (if remote), load, warm up, time and check ``artifact`` on ``config.device``."""
    config = config or BenchConfig()
    rss0 = _rss_mb() if config.device == "local" else None
    ref = artifact.reference()
    inputs = artifact.check_inputs(ref[0]) if ref else artifact.sample_inputs()
    with DeviceModel(artifact, config.device, config.session_timeout, config.arch) as dm:
        with dm.device_errors():
            call = dm.prepared(inputs)
            t1 = time.perf_counter()
            call()
            first_ms = (time.perf_counter() - t1) * 1e3
            outputs = flatten_outputs(dm.vm.get_outputs("main"))
            for _ in range(config.warmup):
                call()
        stats = dm.time(inputs, number=config.number, repeat=config.repeat, min_repeat_ms=config.min_repeat_ms,
                        cache_flush=config.cache_flush)
        call = None

    correctness = None
    if ref is not None:
        correctness = compare(outputs, ref[1])
        correctness["tolerance"] = tolerance
        fid = artifact.manifest.get("fidelity")
        measured = bool(fid) and "max_abs_err" in fid
        # a compressed artifact whose build could not run (a cross target) has no error to reproduce
        correctness["ok"] = None if is_compressed(artifact.manifest) and not measured else \
            reproduces_build(correctness, ref[1], tolerance, fid)
        if measured:
            correctness["build"] = {"max_abs_err": fid["max_abs_err"], "min_cosine": fid["min_cosine"]}
    peak = (_rss_mb() - rss0) if rss0 is not None else None
    return BenchReport(
        artifact=str(artifact.path), target=artifact.target["name"], device=str(dm.url),
        emulated=_is_emulated(dm.url), load_s=dm.load_s, first_run_ms=first_ms, latency_ms=stats.summary(),
        samples_ms=stats.samples_ms, correctness=correctness, peak_rss_mb=peak)


def _rss_mb() -> float:
    try:
        import psutil

        return psutil.Process().memory_info().rss / 1e6
    except ImportError:
        return float("nan")


def save_report(report: BenchReport, json_path: str | Path | None, plot_path: str | Path | None) -> None:
    if json_path:
        Path(json_path).write_text(json.dumps(report.to_json(), indent=2) + "\n")
    if plot_path:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 3.5))
        ax.hist(report.samples_ms, bins=min(30, max(5, len(report.samples_ms) // 2)))
        ax.axvline(report.latency_ms["median"], color="k", linestyle="--", label="median")
        title = f"{Path(report.artifact).name} on {report.device}"
        ax.set(xlabel="latency (ms)", ylabel="samples", title=title + (" (emulated)" if report.emulated else ""))
        ax.legend()
        fig.tight_layout()
        fig.savefig(plot_path, dpi=120)
        plt.close(fig)
