"""Int8Quantizer: the three passes (annotate, calibrate, realize) sharing one state."""

from __future__ import annotations

import time
import warnings

import numpy as np
from tvm import relax

from ..errors import HwcompWarning
from ..passes.fold_batch_norm import fold_batch_norm
from ..passes.fold_conv_pad import FoldConvPad
from ..target import Target, require_target
from .annotate import annotate, fingerprint, weight_name_table
from .calibrate import HostModel, calibrate, input_specs, load_calibration
from .config import QuantConfig
from .fidelity import FidelityReport, compare_outputs, fallback, layer_errors, worst_first
from .gptq import WeightRounding, watch_layers
from .int8_compute import get_provider
from .realize import Realizer
from .smooth import smoothed_minmax, smoothing_factors


class Int8Quantizer:
    """State shared by the passes; ``summary()`` reports what they did."""

    def __init__(self, target: Target, config: QuantConfig | None = None, calib_data=None, *, params=None,
                 progress: bool = True, log=None):
        self.target = require_target(target, "Int8Quantizer")
        self.config = config or QuantConfig()
        self.calib_data = calib_data
        self.names = weight_name_table(params)
        self.progress = progress
        self.log = log or (lambda s: None)
        self.provider = get_provider(self.target)
        self.annotation = None
        self.calibration = None
        self.realizer = None
        self.fidelity: FidelityReport | None = None
        self.timings: dict[str, float] = {}
        self._annotated = None
        self._host_model = None
        self._heldout: list = []
        self._samples: list = []
        self.smooth: dict = {}
        self.ranges: dict = {}
        self.rounding: WeightRounding | None = None  # GPTQ's input moments, filled by calibration
        self._folded = None

    def use_weight_names(self, params: dict | None) -> None:
        """Name layers after the model's parameters (``hwcomp.compile`` calls this with the imported
        model's; ``params=`` at construction does the same)."""
        if not self.names and params:
            self.names = weight_name_table(params)

    def _carry_name(self, w: np.ndarray, folded: np.ndarray) -> None:
        name = self.names.get(fingerprint(w))
        if name:
            self.names[fingerprint(folded)] = name

    # ---- passes --------------------------------------------------------------------------------
    def annotate_pass(self, mod):
        t = time.perf_counter()
        # the torch importer's max_pool2d is (pool, zeros_like indices)[0]: canonicalized to the pool
        # itself, so a pooled int8 tensor is one value for its convs and a residual add
        mod = relax.transform.DeadCodeElimination()(relax.transform.CanonicalizeBindings()(mod))
        # batch-norm into the conv weights first: the int8 codes and bias then carry it; a folded
        # weight keeps its parameter's name (the skip list and the reports match on it)
        mod = fold_batch_norm(FoldConvPad(mod), on_fold=self._carry_name)
        out, self.annotation = annotate(mod, self.config, self.names)
        self._folded = mod  # the module the layers' vars belong to (their conv attributes)
        unmatched = self.config.unmatched_skips(layer.names for layer in self.annotation.layers)
        if unmatched:  # a typo must not pass for a layer left in fp32
            layers = self.annotation.layers
            known = (f"layers are named like {', '.join(x.name for x in layers[:4])}{', ...' if len(layers) > 4 else ''}"
                     if layers else "the model has no layer to quantize")
            warnings.warn(f"quantize: skip pattern(s) {', '.join(map(repr, unmatched))} matched no layer ({known})",
                          HwcompWarning, stacklevel=2)
        self._annotated = out
        self.timings["annotate_s"] = time.perf_counter() - t
        self.log("quantize: " + self.annotation.summary())
        return out

    def calibrate_pass(self, mod):
        t = time.perf_counter()
        if self.annotation is None:
            mod = self.annotate_pass(mod)
        samples = load_calibration(self.calib_data, input_specs(mod), self.config.max_calib_samples)
        heldout = []
        if self.config.fidelity_target is not None:
            n_hold = min(self.config.heldout, len(samples) - 1)
            if n_hold > 0:
                samples, heldout = samples[:-n_hold], samples[-n_hold:]
            else:
                heldout = samples[-1:]  # a single sample: measure on it (stated in the report)
        self._heldout = heldout
        self._samples = samples
        self._host_model = HostModel(mod)
        self.rounding = None
        if self.config.weight_rounding == "gptq":
            self.rounding = WeightRounding()
            watch_layers(self.rounding, self._folded["main"], self.annotation.layers, len(samples))
        self.calibration = calibrate(mod, self.config, samples, self.annotation.keys.keys(),
                                     progress=self.progress, model=self._host_model,
                                     on_tensor=self.rounding.observe if self.rounding else None)
        self.ranges = {k: o.range() for k, o in self.calibration.observers.items()}
        if self.config.smooth is not None:
            obs = self.calibration.observers
            self.smooth = smoothing_factors(mod, self.config, obs, self.names, float(self.config.smooth))
            if self.smooth and self.config.calib_method == "minmax":
                for k, sv in self.smooth.items():
                    self.ranges[k] = smoothed_minmax(obs[k], sv)
            elif self.smooth:  # histogram methods: observe the smoothed tensors in a second run
                second = calibrate(mod, self.config, samples, self.smooth.keys(), keep=0, progress=self.progress,
                                   model=self._host_model, divide=self.smooth)
                for k in self.smooth:
                    self.ranges[k] = second.observers[k].range()
        self.timings["calibrate_s"] = time.perf_counter() - t
        self.log(f"quantize: calibrated {len(self.annotation.keys)} activation tensors on {len(samples)} "
                 f"sample(s) ({self.config.calib_method})")
        return mod

    def realize_pass(self, mod):
        t = time.perf_counter()
        if self.calibration is None:
            mod = self.calibrate_pass(mod)
        ranges = self.ranges
        force: list[str] = []
        if self.config.fidelity_target is not None:
            force = self._fallback(mod, ranges)
        self.realizer = Realizer(self.config, self.provider, ranges, names=self.names, force_float=force,
                                 smooth=self.smooth, rounding=self.rounding)
        out = self.realizer(mod)
        if self.fidelity is None:  # per-layer report only (the model-level one needs held-out inputs)
            rows = layer_errors(mod, self.realizer, self.calibration.kept[:1])
            self.fidelity = FidelityReport(None, rows, [], None, None, [])
        self.timings["realize_s"] = time.perf_counter() - t
        n_q = sum(1 for r in self.realizer.report if r["status"] == "int8")
        n_g = len(self.realizer.gptq_layers)
        n_w = sum(1 for r in self.realizer.report if "Winograd" in r.get("kernel", ""))
        self.log(f"quantize: {n_q} layers int8 ({self.provider.describe()}), "
                 f"{len(self.realizer.report) - n_q} fp32" + (f"; {n_g} with GPTQ-rounded weights" if n_g else "")
                 + (f"; {n_w} 3x3 convs as Winograd F(4, 3)" if n_w else ""))
        if self.fidelity is not None:
            self.log(self.fidelity.format())
        return out

    def passes(self) -> list:
        def annotate_int8(mod):
            return self.annotate_pass(mod)

        def calibrate_int8(mod):
            return self.calibrate_pass(mod)

        def realize_int8(mod):
            return self.realize_pass(mod)

        for p in (annotate_int8, calibrate_int8, realize_int8):
            p.use_weight_names = self.use_weight_names  # see hwcomp.compile
        return [annotate_int8, calibrate_int8, realize_int8]

    # ---- fidelity ------------------------------------------------------------------------------
    def _fallback(self, mod, ranges) -> list[str]:
        host_provider = get_provider(self._host_model.target)
        heldout = self._heldout
        ref = [self._host_model.run(s) for s in heldout]
        probe = Realizer(self.config, host_provider, ranges, names=self.names, smooth=self.smooth, rounding=self.rounding)
        probe(mod)
        rows = layer_errors(mod, probe, self.calibration.kept)
        ranking = worst_first(rows)

        def evaluate(force):
            r = Realizer(self.config, host_provider, ranges, names=self.names, force_float=force, smooth=self.smooth, rounding=self.rounding)
            m = HostModel(r(mod))
            res = compare_outputs(ref, [m.run(s) for s in heldout])
            self.log(f"quantize: fidelity with {len(force)} layer(s) in fp32: cosine {res['cosine']:.6f}")
            return res

        force, res, history = fallback(evaluate, ranking, float(self.config.fidelity_target))
        self.fidelity = FidelityReport(res, rows, force, self.config.fidelity_target,
                                       res["cosine"] >= self.config.fidelity_target, history)
        return force

    def report_fidelity(self, mod_realized, inputs: list[list[np.ndarray]] | None = None) -> FidelityReport:
        """Model and per-layer fidelity of a realized module on ``inputs`` (default: held-out set)."""
        inputs = inputs or self._heldout or self.calibration_samples()[-1:]
        ref = [self._host_model.run(s) for s in inputs]
        host_mod = mod_realized
        if self.target.name != "host" and not self.target.runs_here():
            host_mod = Realizer(self.config, get_provider(self._host_model.target), self.ranges, names=self.names,
                                force_float=self.fidelity.fp32_layers if self.fidelity else (),
                                smooth=self.smooth, rounding=self.rounding)(self._annotated)
        m = HostModel(host_mod)
        res = compare_outputs(ref, [m.run(s) for s in inputs])
        rows = layer_errors(self._annotated, self.realizer, self.calibration.kept)
        fp32 = self.fidelity.fp32_layers if self.fidelity else []
        tgt = self.config.fidelity_target
        self.fidelity = FidelityReport(res, rows, fp32, tgt, None if tgt is None else res["cosine"] >= tgt,
                                       self.fidelity.history if self.fidelity else [])
        return self.fidelity

    def calibration_samples(self):
        return load_calibration(self.calib_data, input_specs(self._annotated), self.config.max_calib_samples)

    def summary(self) -> dict:
        out = {"quantize": "int8", "target_kernels": self.provider.describe(),
               "config": {"bits": self.config.bits, "per_channel": self.config.per_channel,
                          "activations": self.config.activations, "calib_method": self.config.calib_method,
                          "skip": list(self.config.skip), "fidelity_target": self.config.fidelity_target,
                          "weight_rounding": self.config.weight_rounding},
               "timings": self.timings}
        if self.calibration is not None:
            out["calibration_samples"] = self.calibration.num_samples
            out["smoothed_tensors"] = len(self.smooth)
        if self.realizer is not None:
            out["layers"] = self.realizer.report
        if self.fidelity is not None:
            out["fidelity"] = self.fidelity.to_dict()
        return out
