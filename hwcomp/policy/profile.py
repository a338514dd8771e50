"""Per-layer latency and sensitivity of each option.

Latency is measured on the target with hwcomp's real kernels: one single-layer model per distinct
``(rows, in, out)`` shape and option, compiled like the full model and timed with TVM's time
evaluator; results are cached as JSON lines beside the tuning database. Sensitivity is the output
error (1 − cosine against fp32 on the calibration inputs) when that layer alone takes the option,
simulated on the PyTorch model: block pruning (with the least-squares re-fit) exactly as compiled,
int8 as the realized scheme of ``QuantConfig()`` (SmoothQuant where the input has outlier channels,
per-channel weights, per-tensor affine activations).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np

from ..target import Target
from ..tune.database import POLICY_LATENCY
from .search import LayerProfile, OptionCost
from .space import Option


#: Options fitted to the calibration inputs: the re-fit of pruning, the data-aware low-rank SVD.
NEEDS_GRAM = ("sparse", "sparse_int8", "low_rank")


@dataclasses.dataclass(frozen=True)
class LinearLayer:
    name: str  # the torch module path, e.g. model.encoder.layer.0.attention.self.query
    rows: int
    k: int
    n: int

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.rows, self.k, self.n)


def find_linear_layers(model, example_inputs, min_elements: int = 1024) -> list[LinearLayer]:
    """Every ``nn.Linear`` the example inputs run through, with the number of rows it sees."""
    import torch

    rows: dict[str, int] = {}
    hooks = []
    for name, mod in model.named_modules():
        if isinstance(mod, torch.nn.Linear) and mod.weight.numel() >= min_elements:
            hooks.append(mod.register_forward_pre_hook(
                lambda m, a, name=name: rows.__setitem__(name, int(np.prod(a[0].shape[:-1])))))
    with torch.no_grad():
        model(*example_inputs)
    for h in hooks:
        h.remove()
    mods = dict(model.named_modules())
    return [LinearLayer(n, r, mods[n].in_features, mods[n].out_features) for n, r in rows.items()]


# ---- latency --------------------------------------------------------------------------------------


def _cache_path(target: Target) -> Path:
    from ..tune.database import user_database_dir

    return user_database_dir(target) / POLICY_LATENCY


def _load_cache(path: Path) -> dict:
    table = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                rec = json.loads(line)
                table[rec["key"]] = rec["ms"]
            except (json.JSONDecodeError, KeyError):
                continue  # a torn last line from an interrupted run: re-measure that entry
    return table


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


def prune_linear_(linear, option: Option, gram=None) -> None:
    """Block-prune one ``nn.Linear`` in place to ``option.sparsity`` (block = out rows × in cols).

    With ``gram`` (the layer's calibration input Gram matrix, :func:`layer_grams`) the mask is
    input-weighted and the surviving weights are re-fit by least squares; without, plain L1 magnitude.
    """
    import torch

    from ..kernels.bsr import apply_block_mask, block_scores, prune_mask_from_scores

    if gram is not None:
        from ..compress.block_refit import block_prune_refit_

        block_prune_refit_(linear, option.sparsity, option.block, gram)
        return
    w = linear.weight.detach().numpy()
    keep = prune_mask_from_scores(block_scores(w, option.block, "l1"), option.sparsity)
    linear.weight.data = torch.from_numpy(np.ascontiguousarray(apply_block_mask(w, keep, option.block)))


def layer_grams(model, names: list[str], samples, max_bytes: int = 1 << 29):
    """Yield ``(name, input Gram)`` for each named Linear in order, on the model as it is now.

    Grams are collected for as many layers per calibration pass as fit in ``max_bytes`` (BERT-base's
    3072-wide inputs take 75 MB each), so the calibration set runs a few times, not once per layer.
    """
    from ..compress.block_refit import input_grams

    mods = dict(model.named_modules())
    chunk: list[str] = []
    size = 0
    for i, name in enumerate(names):
        chunk.append(name)
        size += 8 * (mods[name].in_features + 1) ** 2
        nxt = names[i + 1] if i + 1 < len(names) else None
        if nxt is None or size + 8 * (mods[nxt].in_features + 1) ** 2 > max_bytes:
            grams = input_grams({n: mods[n] for n in chunk}, lambda: model_outputs(model, samples))
            for n in chunk:
                yield n, grams.pop(n)
            chunk, size = [], 0


@functools.lru_cache(maxsize=1)
def kernel_code_hash() -> str:
    """A short hash of the code that generates, schedules and lowers kernels (``schedules/``,
    ``hwcomp/{quantize,kernels,passes}``, ``build.py``)."""
    import hashlib

    import hwcomp
    import hwcomp.schedules

    pkg = Path(hwcomp.__file__).parent
    h = hashlib.sha1()
    for root in (Path(hwcomp.schedules.__file__).parent, pkg / "quantize", pkg / "kernels", pkg / "passes"):
        for path in sorted(root.rglob("*.py")):
            h.update(path.read_bytes())
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
                     options=CompileOptions(passes=layer_option_passes(target, option, calib), verify=False))
    ms = DeviceModel(art, device).time([x.numpy()], number=5, repeat=repeat).median
    cache[key] = ms
    cache_file.parent.mkdir(parents=True, exist_ok=True)
    with open(cache_file, "a") as f:
        f.write(json.dumps({"key": key, "ms": ms}) + "\n")
    return ms


def latency_table(target: Target, device: str = "local") -> Callable[[tuple[int, int, int], Option], float]:
    """``(rows, k, n), option -> ms``: :func:`measure_option_latency` with the database's cache."""
    cache_file = _cache_path(target)
    cache = _load_cache(cache_file)
    return lambda shape, opt: measure_option_latency(target, LinearLayer("", *shape), opt, cache, cache_file,
                                                     device=device)


# ---- sensitivity ----------------------------------------------------------------------------------


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-30))


def model_outputs(model, samples, chunk: int = 16) -> list[np.ndarray]:
    """The model's (first) output on each sample, as NumPy.

    Samples are run ``chunk`` at a time, concatenated on axis 0 (one larger batch runs much faster
    than many small ones); a model whose output does not keep axis 0 as the batch runs one by one.
    """
    import torch

    def run(inputs):
        y = model(*inputs)
        return (y[0] if isinstance(y, (tuple, list)) else y).numpy()

    outs: list[np.ndarray] = []
    with torch.no_grad():
        for i in range(0, len(samples), chunk):
            group = samples[i:i + chunk]
            sizes = [s[0].shape[0] if s[0].ndim else 0 for s in group]
            same = all(len(s) == len(group[0]) and all(a.shape[1:] == b.shape[1:] for a, b in zip(s, group[0]))
                       for s in group)
            if len(group) > 1 and same and all(sizes):
                y = run([torch.from_numpy(np.concatenate([s[j] for s in group])) for j in range(len(group[0]))])
                if y.ndim and y.shape[0] == sum(sizes):
                    outs += np.split(y, np.cumsum(sizes)[:-1])
                    continue
            outs += [run([torch.from_numpy(a) for a in s]) for s in group]
    return outs


def _fake_int8_weight(w, bits: int = 8):
    """Per-output-channel symmetric ``bits``-wide codes, as the realized kernels store weights."""
    import torch

    qmax = (1 << (bits - 1)) - 1
    scale = w.abs().amax(dim=1, keepdim=True).clamp(min=1e-12) / qmax
    return torch.round(w / scale).clamp(-qmax, qmax) * scale


def full_width(k: int, n: int) -> int:
    """8-bit weights whatever the shape (the default ``weight_bits`` of the simulation)."""
    return 8


def int8_weight_bits(target: Target) -> Callable[[int, int], int]:
    """``(k, n) -> width`` of a ``k -> n`` dense layer's int8 weights as realized for ``target``
    (the kernel provider's own choice: 7 where ``reduce_range`` selects a faster kernel)."""
    from ..quantize.kernels import get_provider

    return get_provider(target).dense_weight_bits


def model_error(model, samples, reference: list[np.ndarray]) -> float:
    """1 − the mean cosine of the model's outputs against the reference outputs."""
    outs = model_outputs(model, samples)
    return 1.0 - float(np.mean([_cosine(o, r) for o, r in zip(outs, reference)]))


def _smoothing(ch_absmax: np.ndarray, w_absmax: np.ndarray, alpha: float, min_ratio: float = 4.0) -> np.ndarray:
    """SmoothQuant factors as ``hwcomp.quantize.smooth`` computes them (only with outlier channels)."""
    s = np.ones_like(ch_absmax, dtype=np.float64)
    med = float(np.median(ch_absmax))
    if med <= 0 or float(ch_absmax.max()) / med < min_ratio:
        return s
    good = (ch_absmax > 0) & (w_absmax > 0)
    s[good] = ch_absmax[good] ** alpha / w_absmax[good] ** (1.0 - alpha)
    return np.clip(s, 1e-5, 1e5)


def apply_option_(model, layer_name: str, option: Option, ranges: dict, gram=None,
                  weight_bits: Callable[[int, int], int] = full_width, pruned: dict | None = None) -> list:
    """Put ``option`` on one layer of ``model`` in place (PyTorch simulation); returns hooks to remove.

    int8 follows the realized scheme of ``QuantConfig()``: SmoothQuant (alpha 0.7) where the input
    has outlier channels, weights per output channel, the smoothed input per tensor, affine (uint8
    when non-negative). ``ranges``: :func:`activation_ranges`. ``gram``: the layer's input Gram
    matrix, to prune with re-fit exactly as :func:`compile_policy` will. ``weight_bits``: dense int8
    weight width by shape (:func:`int8_weight_bits`; sparse + int8 keeps 8)."""
    import torch

    from ..quantize import QuantConfig
    from ..quantize.qmath import activation_params

    lin = dict(model.named_modules())[layer_name]
    hooks = []
    if option.kind in ("sparse", "sparse_int8"):
        key = (option.sparsity, option.block)
        if pruned is not None and key in pruned:
            lin.weight.data = pruned[key][0].clone()
            if lin.bias is not None:
                lin.bias.data = pruned[key][1].clone()
        else:
            prune_linear_(lin, option, gram)
            if pruned is not None:
                pruned[key] = lin.weight.data.clone(), None if lin.bias is None else lin.bias.data.clone()
    if option.kind == "low_rank":
        # The product of the two factors: the factorized layer's output, up to float rounding.
        seq = factorize_low_rank(lin, option, gram)
        lin.weight.data = (seq[1].weight.data @ seq[0].weight.data).to(lin.weight.dtype)
    if option.kind in ("int8", "sparse_int8"):
        cfg = QuantConfig()
        lo_c, hi_c = ranges[layer_name]
        w = lin.weight.data.double()
        s = np.ones(w.shape[1])
        if cfg.smooth is not None:
            s = _smoothing(np.maximum(np.abs(lo_c), np.abs(hi_c)), w.abs().amax(0).numpy(), cfg.smooth)
        lo, hi = float(np.min(lo_c / s)), float(np.max(hi_c / s))
        scale, zp, dtype = activation_params(lo, hi, cfg.activations, cfg.bits, unsigned=cfg.unsigned_nonneg)
        qmin, qmax = (0, 255) if dtype == "uint8" else (-128, 127)
        st = torch.from_numpy(s)
        bits = weight_bits(lin.in_features, lin.out_features) if option.kind == "int8" else 8
        lin.weight.data = (_fake_int8_weight(w * st, bits) / st).to(lin.weight.dtype)

        def quant_input(m, args, st=st.float()):
            xs = args[0] / st
            q = torch.clamp(torch.round(xs / scale) + zp, qmin, qmax)
            return ((q - zp) * scale * st,) + tuple(args[1:])

        hooks.append(lin.register_forward_pre_hook(quant_input))
    return hooks


def factorize_low_rank(linear, option: Option, gram=None):
    """``linear`` as two Linears of ``option``'s rank; data-aware (output error on the calibration
    inputs) with the layer's input ``gram`` from :func:`layer_grams`."""
    from ..compress.low_rank import factorize_linear

    k = linear.in_features
    return factorize_linear(linear, option.rank_for(k, linear.out_features),
                            None if gram is None else gram[:k, :k])


def activation_ranges(model, samples, layers: list[LinearLayer]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per-input-channel ``(min, max)`` of each layer's input over the samples (min-max observer)."""
    import torch

    ranges: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    def observe(name, x):
        x = x.detach().reshape(-1, x.shape[-1])
        lo, hi = x.amin(0).double().numpy(), x.amax(0).double().numpy()
        if name in ranges:
            lo, hi = np.minimum(ranges[name][0], lo), np.maximum(ranges[name][1], hi)
        ranges[name] = (lo, hi)

    mods = dict(model.named_modules())
    hooks = [mods[l.name].register_forward_pre_hook(lambda m, a, n=l.name: observe(n, a[0])) for l in layers]
    with torch.no_grad():
        model_outputs(model, samples)
    for h in hooks:
        h.remove()
    return ranges


def simulate_error(model, choices: dict[str, Option], samples, reference: list[np.ndarray],
                   ranges: dict, refit: bool = True, fit_samples=None,
                   weight_bits: Callable[[int, int], int] = full_width) -> float:
    """1 − cosine of the whole policy, simulated in PyTorch on ``samples`` (every layer at once);
    sparse layers re-fit, and structured widths chosen and re-fit, on ``fit_samples`` (default
    ``samples``)."""
    import copy

    from .widths import check_widths, narrow_

    sim = copy.deepcopy(model)
    narrowed = check_widths(model, choices)
    sparse = [n for n, o in choices.items() if o.kind in NEEDS_GRAM] if refit else []
    names = sparse + [g.consumer for g in narrowed.values()]
    grams = dict(layer_grams(model, names, fit_samples or samples)) if names else {}
    for g in narrowed.values():
        narrow_(sim, g, choices[g.producer].width, grams[g.consumer], shrink=False)
    for name, opt in choices.items():
        if opt.kind != "dense":
            apply_option_(sim, name, opt, ranges, grams.get(name) if name in sparse else None, weight_bits)
    return max(0.0, model_error(sim, samples, reference))


@contextlib.contextmanager
def trial(model, names):
    """Layers of ``model`` changed in place for one simulated trial and restored afterwards — their
    weights and biases, and the hooks collected in the yielded list (a deep copy per trial would copy
    BERT-base hundreds of times)."""
    mods = dict(model.named_modules())
    saved = {n: (mods[n].weight.data.clone(), None if mods[n].bias is None else mods[n].bias.data.clone())
             for n in names}
    hooks: list = []
    try:
        yield hooks
    finally:
        for n, (w, b) in saved.items():
            mods[n].weight.data = w
            if b is None:
                mods[n].bias = None  # a trial may have given it one (a width's compensated bias)
            else:
                mods[n].bias.data = b
        for h in hooks:
            h.remove()


@dataclasses.dataclass
class Simulation:
    """What every PyTorch simulation of a policy shares, collected once: the validation inputs and
    the fp32 model's outputs on them, and the fit inputs with the int8 input ranges observed on them
    (re-fit and ranges come from ``fit``, errors are measured on ``val`` — kept apart, or the
    re-fit's overfitting to its own data reads as fidelity)."""

    fit: list
    val: list
    reference: list[np.ndarray]
    ranges: dict
    weight_bits: Callable[[int, int], int] = full_width  # dense int8 weight width by shape (int8_weight_bits)

    @classmethod
    def collect(cls, model, fit, val, layers: list[LinearLayer],
                weight_bits: Callable[[int, int], int] = full_width) -> Simulation:
        return cls(fit, val, model_outputs(model, val), activation_ranges(model, fit, layers), weight_bits)

    def error(self, model, choices: dict[str, Option], refit: bool = True) -> float:
        """1 − cosine of ``model`` with every layer of ``choices`` at once, on ``val``."""
        return simulate_error(model, choices, self.val, self.reference, self.ranges, refit, fit_samples=self.fit,
                              weight_bits=self.weight_bits)


def profile_layers(model, layers: list[LinearLayer], options: list[Option], sim: Simulation, target: Target,
                   log: Callable[[str], None] = print, refit: bool = True, device: str = "local") -> list[LayerProfile]:
    """Latency (measured on ``target`` at ``device``) and sensitivity (simulated, ``sim``) of every
    layer × option.

    ``refit``: sparse options prune with the least-squares re-fit (as compiled)."""
    from tqdm import tqdm

    latency_of = latency_table(target, device)
    shapes = sorted({l.shape for l in layers})
    latency: dict = {}
    for shape in tqdm(shapes, desc="latency per shape", disable=None):
        for opt in options:
            latency[shape, opt] = latency_of(shape, opt)
    log("latency per option (ms): " + "; ".join(
        f"{'x'.join(map(str, s))}: " + ", ".join(f"{o.label} {latency[s, o]:.3f}" for o in options)
        for s in shapes))
    profiles = []
    sparse = any(o.kind in NEEDS_GRAM for o in options)
    grams = layer_grams(model, [l.name for l in layers], sim.fit) if sparse and refit else None
    for layer in tqdm(layers, desc="sensitivity per layer", disable=None):
        gram = next(grams)[1] if grams is not None else None
        costs = []
        pruned: dict = {}
        for opt in options:
            if opt.kind == "dense":
                err = 0.0
            else:
                with trial(model, [layer.name]) as hooks:
                    hooks += apply_option_(model, layer.name, opt, sim.ranges, gram, sim.weight_bits, pruned)
                    err = max(0.0, model_error(model, sim.val, sim.reference))
            costs.append(OptionCost(opt, latency[layer.shape, opt], err))
        profiles.append(LayerProfile(layer.name, layer.shape, costs))
    return profiles
