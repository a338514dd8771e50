"""Measured latencies: one single-layer model per distinct ``(rows, in, out)`` shape and option,
compiled with hwcomp's real kernels like the full model and timed on the target; results are cached
as JSON lines beside the tuning database."""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path

import numpy as np

from ..records.locations import POLICY_LATENCY, user_database_dir
from ..records.store import MeasurementStore
from ..target import Target
from .layers import LinearLayer, factorize_low_rank, prune_linear_
from .space import Option


def _cache_path(target: Target) -> Path:
    return user_database_dir(target) / POLICY_LATENCY


def _load_cache(path: Path) -> dict:
    # A torn last line from an interrupted run is left out: that entry is measured again.
    return {key: e["ms"] for key, e in MeasurementStore(path).load().items() if "ms" in e}


def layer_option_passes(target: Target, option: Option, calib: list[list[np.ndarray]] | None,
                        skip: tuple[str, ...] = ()) -> list[Callable]:
    """Compile passes that realize ``option`` on a model whose weights are already pruned."""
    if option.kind == "sparse":
        from ..passes.dense_to_bsr import DenseToBSR

        # The weights were pruned to the level; convert whatever reached it, without re-timing.
        return [DenseToBSR(target, threshold=max(0.0, option.sparsity - 0.01), block=option.block, measure=False)]
    if option.kind in ("int8", "sparse_int8"):
        from ..quantize import QuantConfig, quantize_passes

        sparse = option.kind == "sparse_int8"
        config = QuantConfig(skip=skip, sparse_threshold=max(0.01, option.sparsity - 0.01) if sparse else None,
                             sparse_block=option.block if sparse else None)
        return quantize_passes(target, config, calib, progress=False)
    return []


@functools.lru_cache(maxsize=1)
def kernel_code_hash() -> str:
    """A short hash of the code that generates, schedules and lowers kernels (``schedules/``,
    ``hwcomp/{quantize,sparse_format,passes}``, ``erf_approx.py``, ``build.py``)."""
    import hashlib

    import hwcomp
    import hwcomp.schedules

    pkg = Path(hwcomp.__file__).parent
    h = hashlib.sha1()
    for root in (Path(hwcomp.schedules.__file__).parent, pkg / "quantize", pkg / "sparse_format", pkg / "passes"):
        for path in sorted(root.rglob("*.py")):
            h.update(path.read_bytes())
    h.update((pkg / "erf_approx.py").read_bytes())
    h.update((pkg / "build.py").read_bytes())
    return h.hexdigest()[:10]


def measure_option_latency(target: Target, layer: LinearLayer, option: Option, cache: dict, cache_file: Path,
                           repeat: int = 10, device: str = "local") -> float:
    """Median latency (ms) of one ``rows × k → n`` linear with ``option`` on ``target``, measured on
    ``device`` (this machine or an RPC URL; cached)."""
    import os

    import torch

    from ..api import CompileOptions
    from ..api import compile as hw_compile
    from ..runtime.session import DeviceModel

    # The device, its thread count (here) and the kernel code are part of the key: a timing taken
    # elsewhere, with another pool size, or of kernels since rewritten, does not apply.
    where = f"{os.environ.get('TVM_NUM_THREADS', 'default')}t" if device == "local" else device
    key = f"{layer.rows}x{layer.k}x{layer.n}:{option.label}@{where}#{kernel_code_hash()}"
    if key in cache:
        return cache[key]
    torch.manual_seed(0)
    lin = torch.nn.Linear(layer.k, layer.n).eval()
    if option.kind in ("sparse", "sparse_int8"):
        prune_linear_(lin, option)
    if option.kind == "low_rank":
        lin = factorize_low_rank(lin, option).eval()
    x = torch.randn(layer.rows, layer.k)
    calib = [[torch.randn(layer.rows, layer.k).numpy()] for _ in range(4)]
    art = hw_compile(lin, target, None, example_inputs=(x,),
                     options=CompileOptions(passes=layer_option_passes(target, option, calib), verify=False,
                                            detect_sparse=False))
    with DeviceModel(art, device) as dm:  # closed before the next option's session opens
        ms = dm.time([x.numpy()], number=5, repeat=repeat).median
    cache[key] = ms
    MeasurementStore(cache_file).put(key, {"key": key, "ms": ms})
    return ms


def latency_table(target: Target, device: str = "local") -> Callable[[tuple[int, int, int], Option], float]:
    """``(rows, k, n), option -> ms``: :func:`measure_option_latency` with the database's cache."""
    cache_file = _cache_path(target)
    cache = _load_cache(cache_file)
    return lambda shape, opt: measure_option_latency(target, LinearLayer("", *shape), opt, cache, cache_file,
                                                     device=device)
