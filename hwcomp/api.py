"""The readable top of the pipeline: import → compress → schedule → build → artifact → verify."""

from __future__ import annotations

import dataclasses
import datetime
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from . import __version__
from .artifact import LIB, REFERENCE, WEIGHTS, Artifact, compare
from .artifact_files import check_replaceable, replace_dir, save_arrays, write_manifest
from .build import (
    bind_weights,
    compile_module,
    export_library,
    finalize_weights,
    layout_for_target,
    schedule,
)
from .frontend import ImportedModel, TensorSpec, load_model
from .target import Target, get_target


@dataclasses.dataclass
class CompileOptions:
    """Everything ``compile`` does besides the model and target.

    ``passes``: compression passes (``IRModule -> IRModule``) run on the module with weights bound
    as constants, in order. ``database``: a tuning database directory (default: the target's own
    under ``~/.cache/hwcomp/tuning/<target>`` and the shipped records, when present).
    ``fast_math``: on CPU targets, GELU/softmax/exp/erf/tanh use polynomial approximations that
    vectorize (absolute error ~1e-7) instead of libm's scalar functions. ``force``: replace an
    output directory that holds something other than an hwcomp artifact (see
    :func:`~hwcomp.artifact_files.check_replaceable`). ``trust_pickle``: import a ``.pt2`` even when it
    holds pickled content, which runs code of its author's choosing when loaded. ``detect_sparse``:
    when no pass converts to sparse kernels, weights that are already block-sparse (pruned
    beforehand) above the break-even density get the target's BSR kernels where they measure faster.
    ``dynamic``: dimensions kept symbolic, ``{input: {dim: DynamicDim(name, min, max) or (min, max)}}``
    (``hwcomp.frontend.DynamicDim``; a ``(min, max)`` tuple is its own symbol ``INPUT_DIM``); inputs
    given the same ``DynamicDim`` name share one length, e.g. ``seq = DynamicDim("seq", 1, 512)``,
    ``{"input_ids": {1: seq}, "attention_mask": {1: seq}}``. One artifact then runs every length in
    range; the manifest stores the symbolic shapes and the ranges. ``.pt2`` files exported with
    ``torch.export.Dim`` are dynamic without it (it may rename and narrow their symbols).
    ``retime_records``: when the database was measured on another CPU (or does not say) and the
    target runs here, each record the model uses is timed against the default schedule once (per
    CPU, cached) and served only where it is faster (:mod:`hwcomp.tune.retime`). ``winograd``: on
    CPU targets, stride-1 3x3 convolutions with enough output tiles run as Winograd F(4, 3) or
    F(2, 3) (2.25x / 1.78x fewer multiplies; fp32 results differ from the direct sum by ~1e-6
    relative per layer); False keeps every fp32 convolution direct (int8 convolutions follow
    ``QuantConfig.winograd``, since the quantize passes realize them before this option is read).
    """

    passes: list[Callable] = dataclasses.field(default_factory=list)
    database: str | Path | None = None
    use_default_database: bool = True
    verify: bool = True
    compression_summary: dict | None = None
    fast_math: bool = True
    force: bool = False
    trust_pickle: bool = False
    detect_sparse: bool = True
    dynamic: dict | None = None
    blocked_layout: bool = True
    pack_weights: bool = True
    retime_records: bool = True
    winograd: bool = True


def _default_database(target: Target) -> Path | None:
    from .records.locations import default_database_dir

    d = default_database_dir(target)
    return d if d is not None and d.is_dir() else None


def _records_for_this_cpu(mod, target: Target, database: Path, log) -> Path:
    """Records tuned elsewhere are served only where they beat the default here (``hwcomp.tune.retime``)."""
    from .records.locations import KNOBS, has_records

    if not (has_records(database) or (database / KNOBS).is_file()):
        return database
    from .build import lower
    from .tune.retime import records_for_this_cpu

    with target.tvm_target():
        lowered = lower(mod, target)
    return records_for_this_cpu(lowered, target, database, log=log)


def compile(
    model,
    target: str | Target = "host",
    output_dir: str | Path | None = None,
    example_inputs=None,
    input_shapes: dict | None = None,
    options: CompileOptions | None = None,
    log: Callable[[str], None] | None = None,
) -> Artifact:
    """Compile ``model`` (``nn.Module`` + example inputs, ``.pt2`` or ``.onnx``) for ``target``.

    Returns the loaded :class:`Artifact`. When the target runs on this machine the compiled model is
    run on the example inputs and compared with the framework (``artifact.fidelity``). Without
    ``output_dir`` the artifact's files are in a temporary directory removed with the returned object
    (``artifact.pack(...)`` or a copy of ``artifact.path`` keeps them).
    """
    options = options or CompileOptions()
    log = log or (lambda s: None)
    target = get_target(target)
    if output_dir is not None:  # before any work: refusing after a long build helps no one
        check_replaceable(Path(output_dir), options.force)
    t0 = time.perf_counter()
    imported = model if isinstance(model, ImportedModel) else \
        load_model(model, example_inputs, input_shapes, options.trust_pickle, options.dynamic)
    log(f"imported {imported.source}: {len(imported.params)} weights, inputs "
        + ", ".join(f"{s.name}{list(s.shape)}:{s.dtype}" for s in imported.inputs)
        + "".join(f"; {k} in {lo}..{hi if hi is not None else 'inf'}" for k, (lo, hi) in imported.dynamic.items()))

    mod = bind_weights(imported.mod, imported.params)
    for p in options.passes:
        # Passes that match layers by parameter name (the quantizer's skip list) learn the names
        # here: the module they see has the weights bound as anonymous constants.
        hook = getattr(p, "use_weight_names", None)
        if hook is not None:
            hook(imported.params)
    passes = list(options.passes)
    detect = default_sparse_pass(target, passes) if options.detect_sparse else None
    for p in [*passes, *([detect] if detect else [])]:
        mod = p(mod)
    if detect is not None and detect.report.n_sparse:
        log("pre-pruned weights found: " + detect.report.table().splitlines()[-1] + " (no flag needed)")
        passes.append(detect)
    mod = layout_for_target(mod, target, options.blocked_layout, options.pack_weights, log, options.winograd)
    mod, weights = finalize_weights(mod)

    database = options.database
    if database is None and options.use_default_database:
        database = _default_database(target)
    if database is not None and options.retime_records and target.runs_here() and not target.is_gpu:
        database = _records_for_this_cpu(mod, target, Path(database), log)
    mod = schedule(mod, target, database, options.fast_math)
    executable = compile_module(mod, target)
    log(f"built for {target.name} in {time.perf_counter() - t0:.1f} s"
        + (f" (tuning database {database})" if database else ""))

    # No output_dir: the artifact lives in a temporary directory that goes with the returned Artifact
    # (garbage-collected or at exit), as an archive's extraction does; one left per call had
    # accumulated 1,100 directories (0.9 GB) in this machine's /tmp.
    home = None if output_dir else tempfile.TemporaryDirectory(prefix="hwcomp-artifact-")
    final = Path(output_dir) if output_dir else Path(home.name) / "artifact"
    check_replaceable(final, options.force)  # again: something may have been put there during the build
    # Everything is written into a sibling and renamed into place at the end: an interrupt never
    # leaves half an artifact, and a previous artifact at ``final`` survives a failed compile.
    final.parent.mkdir(parents=True, exist_ok=True)
    out = Path(tempfile.mkdtemp(prefix=f".{final.name}.hwcomp-tmp-", dir=final.parent))
    try:
        _write_artifact(out, executable, weights, imported, target, options, passes)
        art = Artifact.load(replace_dir(out, final))
        art._tmp = home
        return art
    finally:
        if out.exists():
            shutil.rmtree(out, ignore_errors=True)


def default_sparse_pass(target: Target, passes: list):
    """The BSR rewrite that finds pre-pruned weights with no flag, unless ``passes`` already decide
    sparsity or quantize (the quantizer makes its own int8 BSR choices)."""
    from .build_measure import bsr_latency
    from .passes.dense_to_bsr import DenseToBSR

    if any(isinstance(p, DenseToBSR) or type(p).__module__.startswith("hwcomp.quantize") for p in passes):
        return None
    return DenseToBSR(target, threshold=DEFAULT_SPARSE_THRESHOLD, latency=bsr_latency(target))


#: Block sparsity above which a weight is a candidate for BSR kernels (it gets them only where they
#: measure faster than dense on the target, or by this threshold alone when it cannot run here).
DEFAULT_SPARSE_THRESHOLD = 0.7


def _write_artifact(out: Path, executable, weights: dict, imported: ImportedModel, target: Target,
                    options: CompileOptions, passes: list) -> None:
    """The artifact's files in ``out``, with the fidelity measured when the target runs here."""
    export_library(executable, out / LIB, target)
    save_arrays(out / WEIGHTS, weights)

    ref_inputs = imported.sample_inputs()
    ref_outputs = imported.reference(ref_inputs)
    save_arrays(out / REFERENCE, {**{f"input{i}": a for i, a in enumerate(ref_inputs)},
                                  **{f"output{i}": a for i, a in enumerate(ref_outputs)}})
    manifest = {
        "hwcomp_version": __version__,
        "tvm_version": _tvm_version(),
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "source": imported.source,
        "target": target.to_dict(),
        "inputs": [s.to_dict() for s in imported.inputs],
        "outputs": _output_specs(imported, ref_outputs),
        "weights": {"count": len(weights), "bytes": int(sum(w.nbytes for w in weights.values()))},
        "compression": {**(options.compression_summary or {}), "passes": [_pass_summary(p) for p in passes]},
        "fidelity": None,
    }
    if imported.dynamic:
        manifest["dynamic"] = {k: {"min": lo, "max": hi} for k, (lo, hi) in imported.dynamic.items()}
    write_manifest(out, manifest)
    if options.verify:
        artifact = Artifact.load(out)
        ok, why = artifact.runs_here()
        if ok:
            fidelity = compare(artifact.run(ref_inputs), ref_outputs)
            fidelity["on"] = "example inputs"
        else:
            fidelity = {"not_measured": why}
        manifest["fidelity"] = fidelity
        write_manifest(out, manifest)


def _output_specs(imported: ImportedModel, ref_outputs: list) -> list[dict]:
    """Output specs: the reference outputs' shapes, with each dimension that is symbolic in the
    imported ``main``'s return type written as its expression in the inputs' symbols (``"seq"``)."""
    specs = [TensorSpec(f"output{i}", tuple(o.shape), str(o.dtype)) for i, o in enumerate(ref_outputs)]
    if not imported.dynamic:
        return [s.to_dict() for s in specs]
    import re

    from tvm import relax, tirx

    def leaves(si):
        if isinstance(si, relax.TupleType):
            return [x for f in si.fields for x in leaves(f)]
        return [si]

    try:
        ret = leaves(imported.mod["main"].ret_ty)
    except Exception:  # noqa: BLE001 - the static shapes are still right for the example
        return [s.to_dict() for s in specs]
    if len(ret) != len(specs):
        return [s.to_dict() for s in specs]
    out = []
    for s, si in zip(specs, ret):
        shape = list(s.shape)
        dims = getattr(getattr(si, "shape", None), "values", None)
        if dims is not None and len(dims) == len(shape):
            for k, d in enumerate(dims):
                if not isinstance(d, tirx.IntImm):
                    text = re.sub(r"[A-Za-z_][A-Za-z0-9_]*",
                                  lambda m: imported.symbol_names.get(m.group(0), m.group(0)), str(d))
                    shape[k] = text
        out.append({"name": s.name, "shape": shape, "dtype": s.dtype})
    return out


def _pass_summary(p) -> dict:
    """A pass's name and, when it keeps one, its report (per-layer decisions) for the manifest."""
    out = {"name": getattr(p, "__name__", type(p).__name__)}
    report = getattr(p, "report", None)
    if report is not None:
        out["report"] = report.to_dict() if hasattr(report, "to_dict") else report
    return out


def load(path: str | Path) -> Artifact:
    """Load and verify a saved artifact directory or archive."""
    return Artifact.load(path)


def _tvm_version() -> str:
    import tvm

    return tvm.__version__


def summarize_fidelity(fidelity: dict | None) -> str:
    if not fidelity:
        return "fidelity: not measured"
    if "not_measured" in fidelity:
        return f"fidelity: not measured ({fidelity['not_measured']})"
    return f"fidelity vs reference: max abs err {fidelity['max_abs_err']:.3g}, cosine {fidelity['min_cosine']:.6f}"


__all__ = ["CompileOptions", "compile", "load", "summarize_fidelity"]
