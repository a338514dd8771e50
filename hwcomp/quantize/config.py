"""QuantConfig: what to quantize and how.

Defaults are the configuration the benchmarks use: 8-bit, per-output-channel symmetric weights,
per-tensor affine activations on dense/conv inputs (symmetric on batch-matmul operands), SmoothQuant
alpha 0.7 on dense inputs, min-max calibration (``entropy``/``percentile``/``mse`` are the other
methods), every matmul/dense, batch matmul and conv2d quantized. Measured on all-MiniLM-L6-v2
(mean-pooled embedding cosine vs fp32, 6 held-out sentences, 12 calibration sentences): symmetric
without smoothing 0.982, symmetric + alpha 0.7 0.9958, affine + alpha 0.7 0.9967 (mean); clipping
calibrations (percentile 0.958, entropy 0.816, MSE 0.977) lose the outlier channels the model needs.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import re

from ..errors import HwcompError

CALIB_METHODS = ("minmax", "percentile", "entropy", "mse")
ACTIVATION_MODES = ("symmetric", "affine")
ROUNDINGS = ("gptq", "nearest")  # QuantConfig.weight_rounding (gptq.py)


@dataclasses.dataclass
class QuantConfig:
    """``bits``: integer width of weights and activations (2..8; stored as int8/uint8).
    ``per_channel``: one weight scale per output channel (else one per tensor).
    ``activations``: ``symmetric`` (zero point 0) or ``affine`` (zero point from the calibrated
    range; on dense/conv only; its cost is folded into the int32 bias at compile time).
    ``skip``: layer names or glob patterns (``encoder.layer.0.*``, ``dense3``) left in fp32;
    ``.`` and ``_`` are interchangeable (``torch.export`` turns dots into underscores).
    ``calib_method``/``percentile``/``num_bins``: activation range calibration (observers.py).
    ``quantize``: op kinds to quantize (``dense``, ``batch_matmul``, ``conv2d``).
    ``unsigned_nonneg``: activations calibrated non-negative (after ReLU, softmax) use uint8 with
    zero point 0 where the target kernel takes uint8 (x86, CUDA) — one more bit of resolution.
    ``fidelity_target``: minimum end-to-end cosine vs fp32 on held-out inputs; layers are left in
    fp32, worst first, until it is met (fidelity.py). ``heldout``: calibration samples (taken from
    the end of the set) used for that check, not for calibration. Without a target only the
    per-layer report is made (each layer alone on the first calibration sample).
    ``max_calib_samples``: cap on the calibration samples used.
    ``smooth``: SmoothQuant migration strength alpha for dense inputs (``smooth.py``), ``None`` off.
    ``sparse_threshold``: dense layers whose weights are at least this block-sparse (fraction of
    all-zero ``sparse_block`` tiles; default block: the target's) run the int8 BSR kernel —
    sparse + int8 in one kernel (CPU targets); ``None`` off.
    ``reduce_range``: dense weights one bit narrower (7 of 8) so AVX2's ``vpmaddubsw`` cannot
    saturate; ``None``: where the target's fastest kernel needs it (x86 with AVX2 and no VNNI:
    13 % faster per matmul), ``False``: always full-width weights.
    ``weight_rounding``: ``"gptq"`` rounds conv and dense weights column by column, moving each
    column's rounding error onto the columns not yet rounded through the calibration inputs'
    second moments (``gptq.py``; seconds per model); ``"nearest"``: each weight to its nearest code.
    ``fuse_residual``: a residual add (and a ReLU after it) right after a blocked int8 conv runs in
    that conv's epilogue, reading the other operand blocked (ResNet, MobileNet blocks stay int8
    between blocks); ``False``: the add runs in float32 between the kernels.
    ``winograd``: stride-1 3x3 convs with enough output tiles run the int8 Winograd F(4, 3)
    (``int8_winograd.py``: exact int16 input transform, int16 products, the transformed
    weights exact or rounded to an overflow-safe bound) where the target has an int16 pair dot
    (x86); ``False``: every int8 conv runs the direct kernel (bit-exact integer arithmetic).
    ``fold_taps``: a conv on a narrow float input (an image's 3 channels) reads each kernel row's
    taps as one run of channels (``int8_conv.conv2d_folded_int8_func``: the stem's 7 taps x 3
    channels as 24 bytes instead of 7 blocks of 4 or 8); ``False``: the blocked layout.
    """

    bits: int = 8
    per_channel: bool = True
    activations: str = "affine"
    skip: tuple[str, ...] = ()
    calib_method: str = "minmax"
    percentile: float = 99.99
    num_bins: int = 2048
    quantize: tuple[str, ...] = ("dense", "batch_matmul", "conv2d")
    unsigned_nonneg: bool = True
    fidelity_target: float | None = None
    heldout: int = 2
    max_calib_samples: int | None = None
    smooth: float | None = 0.7
    sparse_threshold: float | None = None
    sparse_block: tuple[int, int] | None = None
    reduce_range: bool | None = None
    fuse_residual: bool = True
    weight_rounding: str = "gptq"
    winograd: bool = True
    fold_taps: bool = True

    def __post_init__(self):
        if isinstance(self.skip, str):
            self.skip = tuple(s for s in self.skip.split(",") if s)
        self.skip = tuple(self.skip)
        self.quantize = tuple(self.quantize)
        if not 2 <= int(self.bits) <= 8:
            raise HwcompError(f"QuantConfig.bits must be 2..8 (int8 storage), got {self.bits}")
        if self.activations not in ACTIVATION_MODES:
            raise HwcompError(f"QuantConfig.activations must be one of {ACTIVATION_MODES}, got {self.activations!r}")
        if self.calib_method not in CALIB_METHODS:
            raise HwcompError(f"unknown calibration method {self.calib_method!r}; choose one of {', '.join(CALIB_METHODS)}")
        if not 50.0 < float(self.percentile) <= 100.0:
            raise HwcompError(f"QuantConfig.percentile must be in (50, 100], got {self.percentile}")
        bad = set(self.quantize) - {"dense", "batch_matmul", "conv2d"}
        if bad:
            raise HwcompError(f"QuantConfig.quantize: unknown op kinds {sorted(bad)}")
        if self.smooth is not None and not 0.0 <= float(self.smooth) <= 1.0:
            raise HwcompError(f"QuantConfig.smooth (alpha) must be in [0, 1] or None, got {self.smooth}")
        if self.sparse_threshold is not None and not 0.0 < float(self.sparse_threshold) < 1.0:
            raise HwcompError(f"QuantConfig.sparse_threshold must be in (0, 1), got {self.sparse_threshold}")
        if self.weight_rounding not in ROUNDINGS:
            raise HwcompError(f"QuantConfig.weight_rounding must be one of {', '.join(ROUNDINGS)}, got {self.weight_rounding!r}")
        if self.fidelity_target is not None and not 0.0 < float(self.fidelity_target) <= 1.0:
            raise HwcompError(f"fidelity target is a cosine in (0, 1], got {self.fidelity_target}")

    @property
    def qmax(self) -> int:
        """Largest signed code: 127 for 8 bits (codes are symmetric, -qmax..qmax)."""
        return (1 << (int(self.bits) - 1)) - 1

    def is_skipped(self, *names: str) -> bool:
        """True when any of a layer's names matches the skip list."""
        return any(_matches(p, names) for p in self.skip)

    def unmatched_skips(self, layer_names) -> list[str]:
        """The skip patterns that match none of ``layer_names`` (an iterable of name tuples)."""
        flat = [n for names in layer_names for n in names]
        return [p for p in self.skip if not _matches(p, flat)]


def _norm(s: str) -> str:
    return re.sub(r"[._]", "_", s.strip())


def _matches(pattern: str, names) -> bool:
    """Whether the skip ``pattern`` matches any of ``names`` (``.`` and ``_`` alike)."""
    p = _norm(pattern)
    return any(fnmatch.fnmatchcase(_norm(n), p) for n in names if n)
