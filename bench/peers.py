"""The peers hwcomp is timed against (PyTorch eager, ONNX Runtime, OpenVINO), FLOP counts and the
machine description; used by ``bench/zoo.py``.

Each ``*_runner`` returns a zero-argument callable that runs one inference (for
:func:`hwcomp.runtime.measure.time_round_robin`) and one that returns the output as numpy; a peer
that cannot handle a model raises, and the caller records the reason.
"""

from __future__ import annotations

import os
import platform
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # torch is imported where used: the ORT/OpenVINO timing children need none
    import torch


def count_flops(module: torch.nn.Module, inputs) -> int:
    """FLOPs of one forward (``torch.utils.flop_counter``: 2 per multiply-add of matmul, conv and
    attention; elementwise work is not counted)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        module(*inputs)
    return int(counter.get_total_flops())


def machine_info(threads: int) -> dict:
    """CPU model name and SIMD flags from /proc/cpuinfo, and the thread count every framework used."""
    name, flags = platform.processor() or platform.machine(), set()
    try:
        for ln in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, val = ln.partition(":")
            if key.strip() == "model name" and name in ("", platform.processor(), platform.machine()):
                name = val.strip()
            elif key.strip() == "flags" and not flags:
                flags = set(val.split())
    except OSError:
        pass
    return {"cpu": name, "avx2": "avx2" in flags, "fma": "fma" in flags, "avx512": "avx512f" in flags,
            "avx512_flags": sorted(f for f in flags if f.startswith("avx512")),
            "threads": threads, "cpus_available": len(os.sched_getaffinity(0))}


def torch_runner(module, inputs):
    import torch

    def call():
        with torch.no_grad():
            return module(*inputs)

    return call, lambda: call().detach().numpy()


def export_onnx(module, inputs, path: Path) -> tuple[list[str], str]:
    """Export to ONNX: the dynamo exporter (opset 18, its lowest without a version conversion), the
    TorchScript one (opset 17) when that fails. Returns (input names, which exporter)."""
    import contextlib
    import io
    import logging

    import torch

    names = [f"input{i}" for i in range(len(inputs))]
    errors = []
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    for dynamo in (True, False):
        try:
            with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
                warnings.simplefilter("ignore")
                torch.onnx.export(module, tuple(inputs), str(path), dynamo=dynamo,
                                  opset_version=18 if dynamo else 17, verbose=False,
                                  input_names=names, output_names=["output0"])
            return names, "dynamo" if dynamo else "torchscript"
        except Exception as e:  # noqa: BLE001 - try the other exporter, then report both
            errors.append(f"{'dynamo' if dynamo else 'torchscript'}: {type(e).__name__}: "
                          f"{(str(e).strip().splitlines() or [''])[0][:200]}")
    raise RuntimeError("ONNX export failed (" + "; ".join(errors) + ")")


def _feeds(model_input_names: list[str], names: list[str], arrays: list[np.ndarray]) -> dict:
    """Feeds by name; an input the exporter dropped (unused by the graph) is left out."""
    by_name = dict(zip(names, arrays))
    return {n: by_name[n] for n in model_input_names}


def ort_session(onnx_path: Path, threads: int):
    """An ONNX Runtime CPU session: all graph optimizations, ``threads`` intra-op threads, sequential."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    return ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])


def ort_runner(onnx_path: Path, names: list[str], arrays: list[np.ndarray], threads: int):
    sess = ort_session(onnx_path, threads)
    feeds = _feeds([i.name for i in sess.get_inputs()], names, arrays)

    def call():
        return sess.run(None, feeds)

    return call, lambda: np.asarray(call()[0])


def ov_compile(model, threads: int):
    """An OpenVINO CPU compiled model of ``model`` (a path to an ONNX file or OpenVINO IR, or an
    ``ov.Model``): latency hint, ``threads`` inference threads, fp32 arithmetic for whatever is not
    quantized (see :func:`openvino_runner`). The kernels follow the CPU, capped by the environment's
    ``ONEDNN_MAX_CPU_ISA`` (e.g. ``AVX2``), read when OpenVINO first compiles in the process."""
    import openvino as ov

    core = ov.Core()
    src = core.read_model(str(model)) if isinstance(model, (str, Path)) else model
    return core.compile_model(src, "CPU", {"INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY",
                                           "INFERENCE_PRECISION_HINT": "f32"})


def ov_conv_kernels(compiled) -> list[str]:
    """The kernels OpenVINO chose for a compiled model's convolutions (their ``primitiveType``, e.g.
    ``brgconv_avx2_1x1_I8``): which ISA it runs, read back rather than assumed."""
    kinds = set()
    for op in compiled.get_runtime_model().get_ordered_ops():
        rt = op.get_rt_info()
        if "layerType" in rt and "primitiveType" in rt and str(rt["layerType"].astype(str)) == "Convolution":
            kinds.add(str(rt["primitiveType"].astype(str)))
    return sorted(kinds)


def openvino_runner(onnx_path: Path | None, module, inputs, names: list[str], arrays: list[np.ndarray],
                    threads: int) -> tuple:
    """OpenVINO CPU plugin, latency hint, ``threads`` inference threads, fp32 arithmetic. Reads the
    ONNX file when there is one, else converts the PyTorch module directly (``ov.convert_model``).

    ``INFERENCE_PRECISION_HINT=f32``: on CPUs with AVX-512 BF16 or AMX the plugin's default is bf16
    (measured on an Intel Xeon with AMX: ResNet-50 12.2 ms, 672 GFLOP/s — past the CPU's fp32 FMA
    peak), which would compare bf16 against everyone else's fp32.
    Returns (call, output, "onnx" | "convert_model")."""
    import openvino as ov

    if onnx_path is not None:
        model, source = onnx_path, "onnx"
    else:
        model, source = ov.convert_model(module, example_input=tuple(inputs)), "convert_model"
    compiled = ov_compile(model, threads)
    request = compiled.create_infer_request()
    if source == "onnx":
        ov_names = [p.get_any_name() for p in compiled.inputs]
        feeds = _feeds(ov_names, names, arrays)
    else:
        feeds = list(arrays)

    def call():
        return request.infer(feeds)

    def output():
        call()
        return np.asarray(request.get_output_tensor(0).data).copy()

    return call, output, source
