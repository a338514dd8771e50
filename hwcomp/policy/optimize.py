"""``hwcomp optimize``: search a per-layer compression policy with the target in the loop, compile it,
measure it for real, and compare it with the uniform baselines.

    profile (latency on target × simulated sensitivity) → search under the budget → compile the
    policy → measure latency and cosine on held-out inputs → policy file + artifact + Pareto plot
"""

from __future__ import annotations

import copy
import dataclasses
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np

from ..artifact import Artifact
from ..metrics import cosine_eps
from ..target import Target, get_target
from .latency import latency_table, layer_option_passes
from .latency_model import fit_latency_model
from .layer_costs import Simulation, profile_layers
from .layers import (
    NEEDS_GRAM,
    LinearLayer,
    factorize_low_rank,
    find_linear_layers,
    int8_weight_bits,
    prune_linear_,
)
from .policy_io import policy_table, save_policy
from .search import LayerProfile, Policy, pareto_front, policy_for, search
from .simulate import layer_grams
from .space import Option, option_space
from .widths import (
    check_widths,
    merge_groups,
    narrow_,
    profile_widths,
    width_groups,
    width_options,
)


@dataclasses.dataclass
class Measured:
    name: str
    latency_ms: float
    cosine: float


@dataclasses.dataclass
class OptimizeResult:
    policy: Policy
    profiles: list[LayerProfile]
    front: list[Policy]
    baselines: list[Measured]
    chosen: Measured
    artifact_path: Path | None
    fixed_ms: float = 0.0  # the latency model's part outside the Linear layers
    layers: list[LinearLayer] = dataclasses.field(default_factory=list)
    error_scale: float = 1.0  # simulated / additive error of the chosen policy (the plot's front uses it)
    artifacts: dict = dataclasses.field(default_factory=dict)  # by Measured.name
    simulation: Simulation | None = None  # what the search checked policies with
    rejected: Measured | None = None  # the search's own policy, when a faster measured baseline replaced it


def compile_policy(model, example_inputs, target: str | Target, choices: dict[str, Option], calib, out_dir=None,
                   log: Callable[[str], None] | None = None, refit: bool = True):
    """Compile ``model`` with each Linear given its option (layers not named stay fp32).

    ``refit``: sparse layers are re-fit by least squares on ``calib`` (inputs of the fp32 model), when
    calibration data are given. Structured widths keep the units and re-fit the consumer on ``calib``
    (without it: the units with the largest weights, no re-fit)."""
    import torch

    from ..api import CompileOptions
    from ..api import compile as hw_compile

    target = get_target(target)
    original, model = model, copy.deepcopy(model)
    mods = dict(model.named_modules())
    narrowed = check_widths(original, choices)
    if narrowed:  # structured widths: units chosen and the consumer re-fit on calibration inputs
        consumers = [g.consumer for g in narrowed.values()]
        consumer_grams = dict(layer_grams(original, consumers, calib)) if calib else {
            c: torch.eye(mods[c].in_features + 1, dtype=torch.float64) for c in consumers}  # by weights alone
        for g in narrowed.values():
            narrow_(model, g, choices[g.producer].width, consumer_grams[g.consumer], shrink=True)
    fitted = {n: o for n, o in choices.items() if o.kind in NEEDS_GRAM}
    names = list(fitted)
    grams = layer_grams(original, names, calib) if refit and calib else ((n, None) for n in names)
    for name, gram in grams:
        if fitted[name].kind == "low_rank":  # the Linear becomes two (left in fp32)
            parent, _, attr = name.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, attr,
                    factorize_low_rank(mods[name], fitted[name], gram))
        else:
            prune_linear_(mods[name], fitted[name], gram)
    passes = []
    int8 = [n for n, o in choices.items() if o.kind in ("int8", "sparse_int8")]
    if int8:
        from ..quantize import QuantConfig, quantize_passes

        # Quantize only the Linear layers the policy names int8; everything else stays fp32. The
        # sparse ones among them become int8 BSR kernels inside the quantizer.
        all_linear = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]  # after factorizing
        skip = tuple(n for n in all_linear if n not in int8)
        sq = [o for o in choices.values() if o.kind == "sparse_int8"]
        config = QuantConfig(skip=skip, quantize=("dense",),
                             sparse_threshold=max(0.01, min(o.sparsity for o in sq) - 0.01) if sq else None,
                             sparse_block=sq[0].block if sq else None)
        passes += quantize_passes(target, config, calib, progress=False)
    fp32_sparse = [o for o in choices.values() if o.kind == "sparse"]
    if fp32_sparse:  # after the quantizer: the fp32 sparse layers it skipped become fp32 BSR kernels
        lowest = min(o.sparsity for o in fp32_sparse)
        passes += layer_option_passes(target, Option("sparse", lowest, fp32_sparse[0].block), None)
    return hw_compile(model, target, out_dir, example_inputs=example_inputs,
                      options=CompileOptions(passes=passes, verify=False, detect_sparse=False), log=log)


def measure(art, model, heldout, name: str, repeat: int = 10, device: str = "local") -> Measured:
    """Latency (median, TVM time evaluator) and mean cosine against PyTorch fp32 on held-out inputs,
    both on ``device`` (``local``, ``rpc://HOST:PORT`` or ``tracker://HOST:PORT/KEY``)."""
    import torch

    from ..runtime.session import DeviceModel

    with DeviceModel(art, device) as dm:  # closed before the next point's session opens
        cosines = []
        for sample in heldout:
            with torch.no_grad():
                ref = model(*[torch.from_numpy(a) for a in sample])
            ref = (ref[0] if isinstance(ref, (tuple, list)) else ref).numpy()
            cosines.append(cosine_eps(dm.run(sample)[0], ref))
        ms = dm.time(heldout[0], number=3, repeat=repeat).median
    return Measured(name, ms, float(np.mean(cosines)))


def retime(points: list[Measured], artifacts: dict, sample: list[np.ndarray], rounds: int = 10,
           device: str = "local") -> None:
    """Re-time the points' artifacts round-robin (``time_round_robin``) on ``device`` and update
    their latency: variants compiled and timed minutes apart on a shared machine drift by several
    percent."""
    from ..runtime.measure import time_round_robin
    from ..runtime.session import DeviceModel

    first = DeviceModel(artifacts[points[0].name], device)
    models = [first] + [DeviceModel(artifacts[m.name], device, session=first.session) for m in points[1:]]
    try:
        calls = [dm.prepared(sample) for dm in models]
        with models[0].device_errors():
            for m, stats in zip(points, time_round_robin(calls, rounds=rounds)):
                m.latency_ms = stats.median
    finally:
        calls = None
        for dm in models:
            dm.close()


@dataclasses.dataclass
class OptimizeOptions:
    """Settings of :func:`optimize` (defaults: a fidelity- or budget-free search over int8 and three
    block-sparsity levels, measured on this machine, with the uniform baselines)."""

    latency_budget_ms: float | None = None
    """Search the most faithful policy within this latency (None: no latency budget)."""
    fidelity_target: float | None = None
    """Search the fastest policy whose output cosine is at least this (None: no fidelity target)."""
    out_dir: str | Path = "out/optimized"
    """Where ``policy.json``/``policy.txt``, the artifact and ``pareto.png`` are written."""
    sparsities: tuple[float, ...] = (0.5, 0.7, 0.9)
    """Block-sparsity levels offered to every Linear layer."""
    int8: bool = True
    """Offer int8 to every Linear layer."""
    sparse_int8: bool = False
    """Also offer sparse + int8 (only with ``int8``)."""
    ranks: tuple = ()
    """Low-rank options (percent of the full rank) offered to every Linear layer."""
    widths: tuple = ()
    """Structured widths (percent of units kept) offered to every width group (:mod:`.widths`:
    transformer FFNs, Linear pairs of an ``nn.Sequential``), fp32 and int8."""
    baselines: bool = True
    """Compile and measure the uniform policies (dense, int8, the highest and lowest sparsity) and fit
    the additive latency model to them (:mod:`.latency_model`)."""
    match_baseline: str | None = None
    """A baseline's name (e.g. ``"uniform int8"``): instead of ``fidelity_target``, the fidelity target
    is that baseline's simulated cosine — the fastest policy at least as faithful as the uniform choice."""
    device: str = "local"
    """Where every latency and the compiled outputs are measured — this machine, or the target over RPC
    (``rpc://HOST:PORT``, ``tracker://HOST:PORT/KEY``)."""


def optimize(model, example_inputs, target: str | Target, samples: list[list[np.ndarray]],
             options: OptimizeOptions | None = None, log: Callable[[str], None] = print) -> OptimizeResult:
    """Search, compile and measure a per-layer policy for ``model`` on ``target``.

    ``samples``: calibration inputs (lists of arrays in input order), split by :func:`split_samples`
    into fit / validate / held out. ``options``: an :class:`OptimizeOptions` (None: the defaults);
    writes ``policy.json``/``policy.txt``, the artifact and ``pareto.png`` under ``options.out_dir``.
    The target is resolved here, once; what runs below gets the :class:`~hwcomp.target.Target`.
    """
    opts = options or OptimizeOptions()
    latency_budget_ms, fidelity_target, sparsities = opts.latency_budget_ms, opts.fidelity_target, opts.sparsities
    int8, sparse_int8, ranks, widths = opts.int8, opts.sparse_int8, opts.ranks, opts.widths
    baselines, match_baseline, device = opts.baselines, opts.match_baseline, opts.device
    out_dir = opts.out_dir
    target = get_target(target)
    if device == "local" and not target.runs_here():
        raise ValueError(f"optimize measures on the target; {target.name} cannot run here: "
                         "give a device (rpc://HOST:PORT or tracker://HOST:PORT/KEY)")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    calib, val, heldout = split_samples(samples)
    layers: list[LinearLayer] = find_linear_layers(model, example_inputs)
    options = option_space(target.sparse_block, sparsities, int8=int8, sparse_int8=sparse_int8 and int8,
                           ranks=ranks)
    log(f"{len(layers)} linear layers, {len(options)} options each: {', '.join(o.label for o in options)}")
    log(f"samples: {len(calib)} fit (re-fit, int8 ranges), {len(val)} validate (sensitivity, simulation), "
        f"{len(heldout)} held out (compiled measurement)")
    sim = Simulation.collect(model, calib, val, layers, int8_weight_bits(target))
    profiles = profile_layers(model, layers, options, sim, target, log=log, device=device)
    groups = width_groups(model, [l.name for l in layers]) if widths else []
    width_costs = {}
    if groups:
        log(f"{len(groups)} width groups, widths {', '.join(f'{w}%' for w in widths)}")
        grams = dict(layer_grams(model, [g.consumer for g in groups], calib))
        width_costs = profile_widths(model, groups, layers, width_options(widths, int8), sim, grams,
                                     latency_table(target, device), log=log)

    # Uniform policies measured whole: the baselines, and the points the latency model is fitted to.
    block = tuple(target.sparse_block)
    uniform = {"dense fp32": Option("dense")}
    if baselines:
        if int8:
            uniform["uniform int8"] = Option("int8")
        for sp in sorted({max(sparsities), min(sparsities)}, reverse=True):
            uniform[f"uniform {Option('sparse', sp, block).label}"] = Option("sparse", sp, block)
    measured: list[Measured] = []
    arts: dict = {}
    for name, opt in uniform.items():
        choices = {} if opt.kind == "dense" else {l.name: opt for l in layers}
        arts[name] = compile_policy(model, example_inputs, target, choices, calib)
        measured.append(measure(arts[name], model, heldout, name, device=device))
        log(f"{name}: {measured[-1].latency_ms:.2f} ms, cosine {measured[-1].cosine:.5f} (held out)")
    by_option = {uniform[m.name]: m.latency_ms for m in measured}
    if sum(o.kind == "sparse" for o in by_option) >= 2:
        model_fit = fit_latency_model(profiles, by_option)
        log(f"latency model: {model_fit.describe()}")
        profiles, fixed_ms = model_fit.apply(profiles), model_fit.fixed_ms
        scale = lambda kind: model_fit.scale.get(kind, 1.0)  # noqa: E731
    else:  # one point only: lone-layer latencies as they are, the rest of the model fixed
        fixed_ms = max(0.0, measured[0].latency_ms - sum(p.dense().latency_ms for p in profiles))
        scale = lambda kind: 1.0  # noqa: E731
    profiles = merge_groups(profiles, groups, width_costs, scale)  # a width group is one knapsack item

    if match_baseline is not None:
        # Judge "as faithful as the baseline" with the search's own estimator (the simulation on the
        # validation samples); both are then measured on the same held-out inputs.
        opt = uniform[match_baseline]
        fidelity_target = 1.0 - sim.error(model, {l.name: opt for l in layers})
        log(f"fidelity target: {fidelity_target:.5f} (simulated cosine of {match_baseline} on the validation "
            f"samples; {next(m.cosine for m in measured if m.name == match_baseline):.5f} measured held out)")
    policy, error_scale = checked_search(model, profiles, sim, latency_budget_ms=latency_budget_ms,
                                         fidelity_target=fidelity_target, fixed_ms=fixed_ms, log=log)
    front = pareto_front(profiles, fixed_ms=fixed_ms)
    art = compile_policy(model, example_inputs, target, policy.choices, calib, out_dir / "artifact")
    chosen = measure(art, model, heldout, "searched policy", device=device)
    arts[chosen.name] = art
    retime([*measured, chosen], arts, heldout[0], device=device)
    log("round-robin latency: " + ", ".join(f"{m.name} {m.latency_ms:.2f} ms" for m in [*measured, chosen]))
    rejected = None
    if fidelity_target is not None:
        # The search trusts an additive latency model; mixed policies pay conversions between fp32 and
        # int8 layers that uniform ones share or skip. A measured uniform policy that meets the target
        # by construction (dense, or the matched baseline) and runs faster is the better answer.
        feasible = [m for m in measured if m.name in ("dense fp32", match_baseline) and m.latency_ms < chosen.latency_ms]
        if feasible:
            best = min(feasible, key=lambda m: m.latency_ms)
            log(f"the searched policy measured {chosen.latency_ms:.2f} ms (predicted {policy.predicted_latency_ms:.2f}), "
                f"slower than {best.name} ({best.latency_ms:.2f} ms), which meets the target too: taking {best.name}")
            rejected = dataclasses.replace(chosen, name="searched policy (measured slower, rejected)")
            policy.measured_latency_ms, policy.measured_cosine = chosen.latency_ms, chosen.cosine
            save_policy(policy, out_dir / "policy-rejected.json", target.name, profiles)
            policy = policy_for(profiles, {l.name: uniform[best.name] for l in layers}, fixed_ms)
            policy.simulated_cosine = fidelity_target if best.name == match_baseline else 1.0
            # Its artifact is kept beside (artifact-rejected/, policy-rejected.json) for comparison.
            shutil.rmtree(out_dir / "artifact-rejected", ignore_errors=True)
            shutil.move(out_dir / "artifact", out_dir / "artifact-rejected")
            arts[rejected.name] = Artifact.load(out_dir / "artifact-rejected")
            shutil.copytree(arts[best.name].path, out_dir / "artifact")
            art = Artifact.load(out_dir / "artifact")
            chosen = Measured("searched policy", best.latency_ms, best.cosine)
            arts[chosen.name] = art
    policy.measured_latency_ms, policy.measured_cosine = chosen.latency_ms, chosen.cosine
    save_policy(policy, out_dir / "policy.json", target.name, profiles)
    log(policy_table(policy, profiles))
    plot_pareto(front, measured + [chosen] + ([rejected] if rejected else []), out_dir / "pareto.png", title=f"{type(model).__name__} on {target.name}",
                error_scale=error_scale)
    return OptimizeResult(policy, profiles, front, measured, chosen, art.path, fixed_ms, layers, error_scale, arts, sim,
                          rejected)


def split_samples(samples: list) -> tuple[list, list, list]:
    """``(fit, validate, held out)``: the last quarter is held out for the compiled measurement; of
    the rest, the last third validates (sensitivity, simulation) what the first part fits (re-fit,
    int8 calibration). With very few samples the parts overlap rather than go empty."""
    n_held = max(1, len(samples) // 4)
    rest, heldout = samples[:-n_held] or samples, samples[-n_held:]
    n_val = max(1, len(rest) // 3)
    fit, val = rest[:-n_val] or rest, rest[-n_val:]
    return fit, val, heldout


def checked_search(model, profiles: list[LayerProfile], sim: Simulation, *,
                   latency_budget_ms: float | None, fidelity_target: float | None, fixed_ms: float,
                   max_rounds: int = 8, log: Callable[[str], None] = print) -> tuple[Policy, float]:
    """Search, then check the policy by simulating all its layers at once in PyTorch (``sim``).

    Per-layer errors do not simply add up (errors compound through the layers), so with a fidelity
    target the additive model's budget is tightened until the simulated policy meets the target:
    each round scales it by how far the additive prediction undershot the simulation. Returns the
    policy and the final error scale (simulated / additive error; the Pareto plot uses it).
    """
    scale = 1.0
    policy = None
    for rnd in range(max_rounds):
        if fidelity_target is not None:
            target = 1.0 - (1.0 - fidelity_target) / scale
            policy = search(profiles, fidelity_target=target, fixed_ms=fixed_ms)
        else:
            policy = search(profiles, latency_budget_ms=latency_budget_ms, fidelity_target=None, fixed_ms=fixed_ms)
        err = sim.error(model, policy.choices)
        log(f"search round {rnd + 1}: predicted cosine {policy.predicted_cosine:.5f} (additive), simulated "
            f"{1 - err:.5f}, predicted {policy.predicted_latency_ms:.2f} ms")
        policy.simulated_cosine = 1.0 - err
        if policy.predicted_error > 0:
            scale = max(scale, err / policy.predicted_error)
        if fidelity_target is None or 1.0 - err >= fidelity_target or policy.predicted_error == 0:
            break
        scale *= 1.1  # a margin so the next round does not land just short again
    return policy, scale


def plot_pareto(front: list[Policy], points: list[Measured], path: Path, title: str = "",
                error_scale: float = 1.0) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4))
    ax.plot([p.predicted_latency_ms for p in front], [1 - error_scale * p.predicted_error for p in front], "-",
            color="0.6", label="predicted Pareto front" + (f" (errors x{error_scale:.2f})" if error_scale != 1 else ""))
    for m in points:
        ax.scatter([m.latency_ms], [m.cosine], s=60 if m.name == "searched policy" else 35,
                   marker="*" if m.name == "searched policy" else "o", label=f"{m.name} (measured)", zorder=3)
    ax.set(xlabel="latency (ms)", ylabel="output cosine vs fp32", title=title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def load_samples(path: str | Path, n_inputs: int) -> list[list[np.ndarray]]:
    """Calibration samples from a ``.npz``: one array per input (in file order), samples on axis 0."""
    from ..errors import HwcompError
    from ..frontend.model import read_npz

    arrays = list(read_npz(path, "calibration").values())  # missing, .npy, truncated, ...: one-line errors
    if len(arrays) != n_inputs or any(a.ndim == 0 for a in arrays) or len({len(a) for a in arrays}) != 1 \
            or len(arrays[0]) < 2:
        raise HwcompError(f"{path}: expected {n_inputs} arrays with the same number (≥ 2) of samples on "
                          f"axis 0, got shapes {[a.shape for a in arrays]}")
    return [[a[i] for a in arrays] for i in range(len(arrays[0]))]
