"""Per-kernel time of an artifact on this machine: where the milliseconds go.

The Relax VM calls an instrument function before and after every call it makes (kernels and its own
builtins). Each kernel is timed between the two, so each kernel call adds a Python round trip. The
whole-model latency from ``hwcomp bench`` stays the figure to quote. This breakdown only ranks the
kernels; the ``overhead`` line shows what the instrumentation itself adds.
"""

from __future__ import annotations

import dataclasses
import time

from ..artifact import Artifact


@dataclasses.dataclass
class KernelTime:
    name: str
    calls: int  # per model run
    ms: float  # per model run, all calls together

    @property
    def per_call_ms(self) -> float:
        return self.ms / self.calls


@dataclasses.dataclass
class KernelProfile:
    kernels: list[KernelTime]  # slowest first
    runs: int
    wall_ms: float  # one instrumented model run, end to end
    builtin_ms: float  # the VM's own calls (allocation, shape checks, ...)

    @property
    def kernel_ms(self) -> float:
        return sum(k.ms for k in self.kernels)

    def lines(self, top: int = 15) -> list[str]:
        total = self.kernel_ms
        out = [f"{'kernel':58s} {'calls':>5s} {'ms/run':>9s} {'ms/call':>9s} {'share':>6s}"]
        for k in self.kernels[:top]:
            out.append(f"{k.name[:58]:58s} {k.calls:5d} {k.ms:9.3f} {k.per_call_ms:9.4f} {k.ms / total:6.1%}")
        rest = self.kernels[top:]
        if rest:
            ms = sum(k.ms for k in rest)
            out.append(f"{f'({len(rest)} more kernels)':58s} {sum(k.calls for k in rest):5d} {ms:9.3f} "
                       f"{'':9s} {ms / total:6.1%}")
        out.append(f"kernels {total:.3f} ms, VM builtins {self.builtin_ms:.3f} ms, instrumented run "
                   f"{self.wall_ms:.3f} ms (overhead {self.wall_ms - total - self.builtin_ms:.3f} ms); "
                   f"mean of {self.runs} runs")
        return out

    def to_json(self) -> dict:
        return {"runs": self.runs, "wall_ms": self.wall_ms, "builtin_ms": self.builtin_ms,
                "kernels": [dataclasses.asdict(k) for k in self.kernels]}


def profile_kernels(artifact: Artifact, inputs=None, runs: int = 5) -> KernelProfile:
    """Time every kernel call of ``artifact``'s ``main`` over ``runs`` runs (after one warm-up run).

    ``inputs``: arrays in ``main``'s order (default: the artifact's stored example inputs, else random).
    Local only: the instrument is a Python callback in this process.
    """
    ok, why = artifact.runs_here()
    if not ok:
        from ..errors import HwcompError

        raise HwcompError(f"cannot profile here: {why}")
    if inputs is None:
        inputs = artifact.sample_inputs()
    vm, dev = artifact.vm(), artifact.device()
    args = artifact.device_args(inputs)
    vm["main"](*args)  # warm-up: first-call costs (page faults, lazy init) are not a kernel's

    totals: dict[str, list[float]] = {}  # name → [calls, seconds]
    started: list[float] = []

    def instrument(func, symbol, before_run, ret_value, *call_args):
        if before_run:
            dev.sync()
            started.append(time.perf_counter())
        else:
            dev.sync()
            dt = time.perf_counter() - started.pop()
            entry = totals.setdefault(str(symbol), [0, 0.0])
            entry[0] += 1
            entry[1] += dt
        return 0  # run the call as usual

    vm.set_instrument(instrument)
    try:
        t0 = time.perf_counter()
        for _ in range(runs):
            vm["main"](*args)
        dev.sync()
        wall = (time.perf_counter() - t0) / runs
    finally:
        vm.set_instrument(None)
    kernels, builtin = [], 0.0
    for name, (calls, secs) in totals.items():
        if name.startswith("vm.builtin.") or name.startswith("relax."):
            builtin += secs
        else:
            kernels.append(KernelTime(name, round(calls / runs), secs / runs * 1e3))
    kernels.sort(key=lambda k: -k.ms)
    return KernelProfile(kernels, runs, wall * 1e3, builtin / runs * 1e3)
