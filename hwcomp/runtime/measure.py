"""Latency measurement with TVM's time evaluator, and its statistics."""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass
class LatencyStats:
    """Per-run latencies in milliseconds (each sample is the mean of ``number`` runs)."""

    samples_ms: list[float]
    number: int

    @property
    def median(self) -> float:
        return float(np.median(self.samples_ms))

    def summary(self) -> dict[str, float]:
        s = np.asarray(self.samples_ms)
        return {"min": float(s.min()), "median": float(np.median(s)), "mean": float(s.mean()),
                "p90": float(np.percentile(s, 90)), "p99": float(np.percentile(s, 99)), "std": float(s.std()),
                "repeat": len(s), "number": self.number}


def time_vm(vm, dev, args, number: int = 10, repeat: int = 10, min_repeat_ms: int = 0,
            cache_flush: bool = False) -> LatencyStats:
    """Time ``vm["main"](*args)`` with TVM's time evaluator (the same code path over RPC).

    ``set_input`` + ``invoke_stateful`` keeps argument conversion out of the timed region and works
    for tuple outputs over RPC, where a direct call returns an opaque remote object. Over RPC the
    whole measurement must fit in the session's deadline (:class:`~.rpc.SessionDeadline`).
    """
    vm.set_input("main", *args)
    kwargs = {}
    if cache_flush:
        kwargs["f_preproc"] = "cache_flush_cpu_non_first_arg"
    timer = vm.time_evaluator("invoke_stateful", dev, number=number, repeat=repeat,
                              min_repeat_ms=min_repeat_ms, **kwargs)
    res = timer("main")
    return LatencyStats([float(r) * 1e3 for r in res.results], number)


def prepared_call(vm, dev, args):
    """A zero-argument call of ``vm["main"]`` on ``args``, argument conversion done once (the call
    :func:`time_vm` times); for :func:`time_round_robin`."""
    vm.set_input("main", *args)

    def call():
        vm.invoke_stateful("main")
        dev.sync()

    return call


def time_round_robin(calls: list, number: int = 3, rounds: int = 10, pause_s: float = 0.2) -> list[LatencyStats]:
    """Time several variants side by side: every round times each once (mean of ``number`` calls).

    ``calls``: zero-argument callables. Drift on a shared machine (other load, frequency, the
    previous variant's spinning thread pool, which the pause lets park) then hits all variants alike,
    which timing them one after another does not.
    """
    import time

    for fn in calls:
        fn()
    samples: list[list[float]] = [[] for _ in calls]
    for _ in range(rounds):
        for i, fn in enumerate(calls):
            time.sleep(pause_s)
            t0 = time.perf_counter()
            for _ in range(number):
                fn()
            samples[i].append((time.perf_counter() - t0) / number * 1e3)
    return [LatencyStats(s, number) for s in samples]


def time_callable(fn, number: int = 10, repeat: int = 10, warmup: int = 3) -> LatencyStats:
    """Time a Python callable (PyTorch, ONNX Runtime) the same way: ``repeat`` means of ``number``."""
    import time

    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        for _ in range(number):
            fn()
        samples.append((time.perf_counter() - t0) / number * 1e3)
    return LatencyStats(samples, number)
