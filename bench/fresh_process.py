"""Time model variants in fresh processes, alternating: each rotation starts one process per variant
(the order reversed every other rotation), which loads the variant, warms it up and times it.

Why: on the shared 2-core VMs a benchmark that loads every variant into one process is biased by
load order (hwcomp's ResNet-50 fp32 and int8 builds in one process, Zen 4, 2026-12-06: whichever
was loaded first ran ~15 % slower, both orders tried), and a single process sees one placement of
its buffers and threads. A fresh process per measurement, alternated, spreads both over the
variants alike; ratios paired by rotation cancel the slow drift of the host's other load.

Variant kinds (what the child process loads from ``path``): ``hwcomp`` (an artifact folder),
``ort`` (an ONNX file: ``peers.ort_session``), ``openvino`` (an OpenVINO IR ``.xml`` or ONNX file:
``peers.ov_compile``). The child inherits the parent's environment (``TVM_NUM_THREADS``,
``ONEDNN_MAX_CPU_ISA``).

    python bench/fresh_process.py KIND PATH INPUT.npy [--rounds 10] [--number 3] [--warmup 3] [--threads 2]

(the child) prints one line ``RESULT {"samples_ms": [...]}`` (each sample the mean of ``--number``
calls), which the parent finds among whatever else the libraries print.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

KINDS = ("hwcomp", "ort", "openvino")
RESULT = "RESULT "  # the child's result line starts with this


@dataclass(frozen=True)
class Variant:
    """One timed variant: its label in the results, what loads it (one of ``KINDS``) and from where."""

    label: str
    kind: str
    path: Path


def _loader(kind: str, path: Path, x: np.ndarray, threads: int):
    """A zero-argument call running one inference of ``path`` on ``x``."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import peers

    if kind == "hwcomp":
        import hwcomp
        from hwcomp.runtime.measure import prepared_call

        art = hwcomp.load(path)
        return prepared_call(art.vm(), art.device(), art.device_args([x]))
    if kind == "ort":
        sess = peers.ort_session(path, threads)
        feeds = {sess.get_inputs()[0].name: x}
        return lambda: sess.run(None, feeds)
    if kind == "openvino":
        request = peers.ov_compile(path, threads).create_infer_request()
        return lambda: request.infer({0: x})
    raise ValueError(f"unknown variant kind {kind!r}; one of {', '.join(KINDS)}")


def child_main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="time one variant in this process (a child of time_fresh)")
    p.add_argument("kind", choices=KINDS)
    p.add_argument("path", type=Path)
    p.add_argument("input", type=Path, help=".npy file: the input")
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--number", type=int, default=3)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args(argv)
    os.environ["TVM_NUM_THREADS"] = str(a.threads)  # before TVM loads: every kind runs --threads
    call = _loader(a.kind, a.path, np.load(a.input), a.threads)
    for _ in range(a.warmup):
        call()
    samples = []
    for _ in range(a.rounds):
        t = time.perf_counter()
        for _ in range(a.number):
            call()
        samples.append((time.perf_counter() - t) / a.number * 1e3)
    print(RESULT + json.dumps({"samples_ms": samples}))


def time_fresh(variants: list[Variant], x: np.ndarray, workdir: Path, rotations: int, rounds: int = 10,
               number: int = 3, warmup: int = 3, threads: int = 2, timeout_s: float = 600.0,
               on_error=None) -> dict[str, list[list[float]]]:
    """Time every variant in ``rotations`` x ``len(variants)`` fresh processes, one process per
    variant per rotation, the order reversed every other rotation. Returns label -> one list of
    samples (ms) per rotation, so lists of different variants pair up by rotation. A variant whose
    process fails or exceeds ``timeout_s`` is reported to ``on_error(label, reason)`` and dropped:
    its list comes back empty."""
    workdir.mkdir(parents=True, exist_ok=True)
    inp = workdir / "fresh_process_input.npy"
    np.save(inp, x)
    out: dict[str, list[list[float]]] = {v.label: [] for v in variants}
    live = list(variants)
    for r in range(rotations):
        for v in (live if r % 2 == 0 else live[::-1]):
            cmd = [sys.executable, str(Path(__file__).resolve()), v.kind, str(v.path), str(inp),
                   "--rounds", str(rounds), "--number", str(number), "--warmup", str(warmup),
                   "--threads", str(threads)]
            try:
                out[v.label].append(_run_child(cmd, timeout_s))
            except (RuntimeError, ValueError, KeyError, TypeError, OSError, subprocess.TimeoutExpired) as e:
                if on_error is not None:
                    on_error(v.label, f"{type(e).__name__}: {e}"[-300:])
                live = [w for w in live if w.label != v.label]
                out[v.label] = []
    return out


def _run_child(cmd: list[str], timeout_s: float) -> list[float]:
    """Run one child; its samples, or an error naming why not (its last stderr line)."""
    done = subprocess.run(cmd, check=False, capture_output=True, text=True, errors="replace", timeout=timeout_s)
    results = [ln[len(RESULT):] for ln in done.stdout.splitlines() if ln.startswith(RESULT)]
    if done.returncode != 0 or not results:
        err = (done.stderr.strip().splitlines() or [f"exit status {done.returncode}, no result line"])[-1]
        raise RuntimeError(f"child process failed: {err}")
    samples = json.loads(results[-1])["samples_ms"]
    if not isinstance(samples, list) or not samples:
        raise ValueError(f"child process returned no samples: {results[-1][:100]}")
    return [float(v) for v in samples]


def paired_ratio(a: list[list[float]], b: list[list[float]]) -> float | None:
    """Median over rotations of median(a) / median(b), rotation by rotation; None unless both have
    the same number of rotations (``time_fresh`` returns a failed variant's list empty)."""
    if not a or len(a) != len(b):
        return None
    return float(np.median([np.median(x) / np.median(y) for x, y in zip(a, b)]))


if __name__ == "__main__":
    child_main()
