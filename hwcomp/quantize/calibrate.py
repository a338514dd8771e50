"""Calibrate: run the annotated fp32 model on calibration data and feed the observers.

The annotated module (observation points in place) is compiled with hwcomp for the host —
``finalize_weights`` → ``schedule`` → ``tvm.compile``, the same path as a normal build — and run
once per calibration sample. Each ``hwcomp.quantize.observe`` call hands its tensor to the
observer of its key; the first ``keep`` samples' tensors are also kept for the per-layer fidelity
report.

Calibration data (:func:`load_calibration`):

* a ``.npz`` path: arrays named like the model inputs (or ``arr_0``, ``arr_1``... / ``input0``...
  in input order), each either exactly one input's shape (one sample) or with one extra leading
  axis of samples;
* a Python iterable of samples, each a list/tuple of arrays in input order, a dict by input name,
  or (single-input models) a bare array.

Bad data is rejected with the sample index, the input name and the expected shape.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np

from ..errors import HwcompError
from ..target import Target, get_target
from .config import QuantConfig
from .graph import OBSERVE
from .observers import Observer, make_observer


class CalibrationError(HwcompError):
    """Calibration data that cannot be used: empty, wrong inputs, wrong shapes or dtypes."""


@dataclasses.dataclass(frozen=True)
class InputSpec:
    name: str
    shape: tuple[int, ...]
    dtype: str


def input_specs(mod) -> list[InputSpec]:
    """The model inputs of ``main`` (its first ``num_input`` parameters)."""
    from .graph import static_shape

    func = mod["main"]
    n = int(func.attrs["num_input"]) if func.attrs is not None and "num_input" in func.attrs else len(func.params)
    specs = []
    for p in func.params[:n]:
        shape = static_shape(p)
        if shape is None:
            raise CalibrationError(f"model input {p.name!r} has no static shape")
        specs.append(InputSpec(p.name, shape, str(p.ty.dtype)))
    return specs


def _check_sample(i: int, sample, specs: list[InputSpec]) -> list[np.ndarray]:
    if isinstance(sample, dict):
        missing = [s.name for s in specs if s.name not in sample]
        if missing:
            raise CalibrationError(f"calibration sample {i}: missing input(s) {missing}; got {sorted(sample)}")
        sample = [sample[s.name] for s in specs]
    elif isinstance(sample, np.ndarray) or hasattr(sample, "numpy") and not isinstance(sample, (list, tuple)):
        sample = [sample]
    sample = list(sample)
    if len(sample) != len(specs):
        raise CalibrationError(
            f"calibration sample {i} has {len(sample)} input(s) but the model takes {len(specs)}: "
            + ", ".join(f"{s.name}{list(s.shape)}:{s.dtype}" for s in specs))
    out = []
    for a, s in zip(sample, specs):
        a = a.detach().cpu().numpy() if hasattr(a, "detach") else np.asarray(a)
        if tuple(a.shape) != s.shape:
            raise CalibrationError(
                f"calibration sample {i}, input {s.name!r}: shape {list(a.shape)} but the model expects "
                f"{list(s.shape)}")
        want = np.dtype(s.dtype)
        if a.dtype != want:
            if a.dtype.kind != want.kind and not (a.dtype.kind in "iu" and want.kind in "iu"):
                raise CalibrationError(
                    f"calibration sample {i}, input {s.name!r}: dtype {a.dtype} but the model expects {s.dtype}")
            a = a.astype(want)
        out.append(np.ascontiguousarray(a))
    return out


def load_calibration(data, specs: list[InputSpec], limit: int | None = None) -> list[list[np.ndarray]]:
    """Calibration samples as lists of arrays in input order (see the module docstring)."""
    if data is None:
        raise CalibrationError("no calibration data given (int8 quantization needs --calib data.npz)")
    if isinstance(data, (str, Path)):
        path = Path(data)
        from ..frontend.model import read_npz

        try:
            npz = read_npz(path, "calibration")  # every member read and checked here, not lazily later
        except HwcompError as e:
            raise CalibrationError(str(e)) from None
        files = list(npz)
        if not files:
            raise CalibrationError(f"calibration set {path} is empty (no arrays)")
        arrays = []
        for idx, s in enumerate(specs):
            for key in (s.name, f"arr_{idx}", f"input{idx}"):
                if key in files:
                    arrays.append(npz[key])
                    break
            else:
                raise CalibrationError(
                    f"calibration file {path} has no array for input {s.name!r} (arrays: {files}); name arrays "
                    f"after the inputs: {[x.name for x in specs]}")
        counts = set()
        for a, s in zip(arrays, specs):
            if tuple(a.shape) == s.shape:
                counts.add(0)
            elif a.ndim == len(s.shape) + 1 and tuple(a.shape[1:]) == s.shape:
                counts.add(int(a.shape[0]))
            else:
                raise CalibrationError(
                    f"calibration file {path}, array for input {s.name!r}: shape {list(a.shape)}; expected "
                    f"{list(s.shape)} or [num_samples, {', '.join(map(str, s.shape))}]")
        if counts == {0}:
            samples = [list(arrays)]
        elif len(counts - {0}) == 1 and 0 not in counts:
            n = counts.pop()
            samples = [[a[i] for a in arrays] for i in range(n)]
        else:
            raise CalibrationError(f"calibration file {path}: inputs have different sample counts {sorted(counts)}")
    elif isinstance(data, np.ndarray):
        samples = [data] if tuple(data.shape) == specs[0].shape else list(data)
    elif isinstance(data, Iterable):
        samples = list(data)
    else:
        raise CalibrationError(f"calibration data must be a .npz path or an iterable of samples, got {type(data).__name__}")
    if limit is not None:
        samples = samples[:limit]
    if not samples:
        raise CalibrationError("calibration set is empty: give at least one sample")
    return [_check_sample(i, s, specs) for i, s in enumerate(samples)]


# ---------------------------------------------------------------------------------------------
class HostModel:
    """A Relax module (weights bound as constants) compiled with hwcomp for this machine."""

    def __init__(self, mod, target: Target | None = None):
        import tvm
        from tvm import relax

        from ..build import compile_module, finalize_weights, schedule

        self.target = target or get_target("host")  # the fp32 reference runs on this machine
        _register_observe()  # observation points resolve to it when the VM starts
        # finalize_weights' FoldWeightLayout assigns into the module it is given: work on a copy
        m, weights = finalize_weights(tvm.IRModule(dict(mod.functions_items()), attrs=mod.attrs))
        m = schedule(m, self.target)
        self.executable = compile_module(m, self.target)
        self.dev = tvm.cpu()
        self.vm = relax.VirtualMachine(self.executable, self.dev)
        self.weights = [tvm.runtime.tensor(w, self.dev) for w in weights.values()]

    def run(self, inputs: list[np.ndarray]) -> list[np.ndarray]:
        import tvm

        from ..artifact import flatten_outputs

        res = self.vm["main"](*[tvm.runtime.tensor(a, self.dev) for a in inputs], *self.weights)
        return flatten_outputs(res)


_ACTIVE: dict = {}


def _observe(tensor, key):
    """The observation point at run time: record, and return a *copy* — the VM's memory planner
    treats the result as a new tensor and may reuse the input's storage while it is still read."""
    import tvm

    arr = tensor.numpy()
    sink = _ACTIVE.get("sink")
    if sink is not None:
        sink(str(key), arr)
    return tvm.runtime.tensor(arr, tensor.device)


def _register_observe():
    import tvm_ffi

    tvm_ffi.register_global_func(OBSERVE, _observe, override=True)


@dataclasses.dataclass
class Calibration:
    """Observers by key, the kept tensors of the first samples, and the fp32 outputs per sample."""

    observers: dict[str, Observer]
    kept: list[dict[str, np.ndarray]]
    outputs: list[list[np.ndarray]]
    num_samples: int

    def range(self, key: str) -> tuple[float, float]:
        return self.observers[key].range()


def calibrate(mod, config: QuantConfig, samples: list[list[np.ndarray]], keys: Iterable[str],
              keep: int = 2, progress: bool = True, model: HostModel | None = None,
              divide: dict | None = None, on_tensor: Callable[[str, np.ndarray], None] | None = None
              ) -> Calibration:
    """Run the annotated ``mod`` on every sample; returns the filled observers. ``divide``: per-key
    vectors the observed tensors are divided by along their last axis first (smoothing).
    ``on_tensor(key, array)``: also called with every observed tensor (GPTQ's input moments)."""
    from tqdm import tqdm

    if not samples:
        raise CalibrationError("calibration set is empty: give at least one sample")
    _register_observe()
    model = model or HostModel(mod)
    affine = config.activations == "affine"
    observers = {k: make_observer(config.calib_method, config.bits, config.num_bins, config.percentile, affine)
                 for k in keys}
    kept: list[dict] = []
    outputs = []
    current: dict = {}

    def sink(key, arr):
        obs = observers.get(key)
        if obs is not None:
            obs.update(arr / divide[key] if divide and key in divide else arr)
        if on_tensor is not None:
            on_tensor(key, arr)
        if len(kept) < keep:
            current[key] = arr

    _ACTIVE["sink"] = sink
    try:
        for i, sample in enumerate(tqdm(samples, desc="calibrating", unit="sample", disable=not progress,
                                        leave=False)):
            current = {}
            outputs.append(model.run(sample))
            if i < keep:
                kept.append(current)
    finally:
        _ACTIVE.pop("sink", None)
    empty = [k for k, o in observers.items() if o.count == 0]
    if empty:
        raise CalibrationError(f"observation points {empty} saw no data during calibration")
    return Calibration(observers, kept, outputs, len(samples))
