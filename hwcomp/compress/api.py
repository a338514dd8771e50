"""Top-level pruning API: score -> mask -> (fine-tune / distill) -> bake -> export for the compiler."""
from __future__ import annotations

import copy
import importlib.util
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn

from ..errors import HwcompError
from .batches import Batch, LossFn, set_training, split_batch
from .criteria import CriterionConfig, weight_scores
from .distill import DistillConfig, Distiller
from .finetune import FinetuneConfig, finetune, recalibrate_batchnorm, supervised
from .layers import output_weight, prunable_weights
from .prune import (
    GradualPruner,
    GradualSchedule,
    Granularity,
    MaskHooks,
    Masks,
    PruneConfig,
    apply_masks,
    compute_masks,
)
from .size import SizeReport, size_report


@dataclass
class PruneReport:
    """What :func:`prune_model` did. ``sparsity`` is over the pruned weights only."""

    criterion: str
    granularity: str
    target_sparsity: float
    scope: str
    schedule: str
    pruned: list[str]
    excluded: list[str]
    sparsity: float
    layer_sparsity: dict[str, float]
    before: SizeReport
    after: SizeReport
    finetune_losses: list[float] = field(default_factory=list)
    masks: Masks = field(default_factory=dict, repr=False)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (masks left out)."""
        d = asdict(self)
        d.pop("masks")
        return d

    def __str__(self) -> str:
        lines = [f"pruned {len(self.pruned)} weights ({self.criterion}, {self.granularity}, {self.scope}, "
                 f"{self.schedule}) to {self.sparsity:.1%} (target {self.target_sparsity:.1%})"]
        lines += [f"  {n:<40} {s:6.1%}" for n, s in self.layer_sparsity.items()]
        if self.excluded:
            lines.append(f"  left dense: {', '.join(self.excluded)}")
        lines += [f"  before: {self.before}", f"  after:  {self.after}"]
        if self.finetune_losses:
            lines.append("  fine-tune loss per epoch: " + ", ".join(f"{x:.4f}" for x in self.finetune_losses))
        return "\n".join(lines)


def _example_batch(example_inputs: Any) -> Batch:
    """``example_inputs`` (tensor, tuple of tensors, or kwargs dict) as a target-less batch."""
    if isinstance(example_inputs, tuple) and len(example_inputs) > 1:
        return (example_inputs, None)
    return example_inputs


@dataclass
class PruneOptions:
    """Settings of :func:`prune_model` (defaults: one-shot Taylor pruning of 16x1 blocks to 90 %, no fine-tuning)."""

    criterion: str = "taylor"
    """``l1``, ``l2``, ``taylor``, ``fisher``, ``hessian`` or ``apoz`` (see :mod:`~.criteria`)."""
    granularity: str | Granularity = "block:16x1"
    """``"unstructured"`` or ``"block:RxC"`` (R output rows x C input columns)."""
    sparsity: float | Mapping[str, float] = 0.9
    """Fraction of blocks pruned per weight (or ``{weight name: sparsity}``)."""
    scope: Literal["layer", "global"] = "layer"
    """``"layer"`` or ``"global"`` threshold."""
    exclude: Sequence[str] | Literal["auto"] = "auto"
    """Globs of weights left dense; ``"auto"`` spares the last layer to run (the classifier)."""
    finetune: FinetuneConfig = field(default_factory=lambda: FinetuneConfig(epochs=0))
    """Fine-tuning with masks kept (epochs, learning rate, optimizer...); ``epochs=0`` (the default):
    one-shot only."""
    distill: bool = False
    """Fine-tune against a copy of the unpruned model (KL on logits, see ``distill_config``)."""
    distill_config: DistillConfig | None = None
    """Distillation loss settings for ``distill=True`` (None: :class:`~.distill.DistillConfig` defaults,
    alpha 0.9, T 4)."""
    loss_fn: LossFn | None = None
    """``loss_fn(output, target)`` for gradient criteria and fine-tuning (default: cross-entropy for
    integer targets, see :func:`~.batches.default_loss`)."""
    schedule: Literal["oneshot", "gradual"] = "oneshot"
    """``"oneshot"`` (prune, then fine-tune) or ``"gradual"`` (cubic schedule over the first two thirds
    of fine-tuning, masks recomputed ten times; needs ``finetune.epochs > 0``)."""
    max_batches: int | None = None
    """Batches used to compute data criteria (None: all)."""
    recalibrate_bn: bool = True
    """After one-shot pruning without fine-tuning, re-estimate BatchNorm statistics on ``data`` (pruning
    shifts what they normalize)."""


def prune_model(model: nn.Module, example_inputs: Any, data: Iterable[Batch] | None = None,
                options: PruneOptions | None = None) -> PruneReport:
    """Prune ``model`` in place and return a report; the masks end up baked into the weights (no hooks).

    Args:
        model: an ``nn.Module`` (or the module of a ``torch.export`` program).
        example_inputs: one input (tensor, tuple of tensors or kwargs dict) for FLOPs and layer order.
        data: re-iterable batches (see :mod:`~.batches`); needed by data criteria and fine-tuning.
        options: a :class:`PruneOptions` (None: the defaults).
    """
    opts = options or PruneOptions()
    criterion, granularity, sparsity, scope = opts.criterion, opts.granularity, opts.sparsity, opts.scope
    exclude, distill, loss_fn, schedule = opts.exclude, opts.distill, opts.loss_fn, opts.schedule
    max_batches, recalibrate_bn, distill_config = opts.max_batches, opts.recalibrate_bn, opts.distill_config
    crit = CriterionConfig(criterion, max_batches=max_batches)
    gran = Granularity.parse(granularity)
    ft = opts.finetune
    if ft.epochs and data is None:
        raise ValueError("fine-tuning needs a data source")
    example = _example_batch(example_inputs)
    if exclude == "auto":
        last = output_weight(model, example)
        exclude = [last] if last else []
    names = prunable_weights(model, exclude)
    excluded = [n for n in prunable_weights(model) if n not in names]
    if isinstance(sparsity, Mapping):
        names = [n for n in names if n in sparsity]
    before = size_report(model, example)
    teacher = set_training(copy.deepcopy(model), False) if distill else None
    config = PruneConfig(sparsity, gran, scope)
    objective = (Distiller(model, teacher, distill_config or DistillConfig(), loss_fn) if teacher
                 else supervised(loss_fn))

    def scores() -> dict[str, Tensor]:
        return weight_scores(model, crit, data, loss_fn, names)

    losses: list[float] = []
    try:
        if schedule == "gradual":
            if not ft.epochs or not hasattr(data, "__len__"):
                raise ValueError("gradual pruning needs finetune.epochs > 0 and a sized data source")
            end = max(1, (2 * ft.epochs * len(data)) // 3)  # type: ignore[arg-type]
            pruner = GradualPruner(model, names, config, GradualSchedule(end, frequency=max(1, end // 10)), scores)
            losses = finetune(model, data, ft, objective, callbacks=[pruner.step])
            masks = pruner.finish()
        elif schedule == "oneshot":
            masks = compute_masks(scores(), config)
            apply_masks(model, masks)
            if ft.epochs:
                losses = finetune(model, data, ft, objective, masks)
            elif recalibrate_bn and data is not None:
                recalibrate_batchnorm(model, data, max_batches)
        else:
            raise ValueError(f"unknown schedule {schedule!r}")
    finally:
        if isinstance(objective, Distiller):
            objective.close()
    apply_masks(model, masks)
    set_training(model, False)
    layer = {n: float((~m).sum()) / m.numel() for n, m in masks.items()}
    total = sum(m.numel() for m in masks.values())
    achieved = sum(float((~m).sum()) for m in masks.values()) / max(1, total)
    target = float(sparsity) if not isinstance(sparsity, Mapping) else achieved
    return PruneReport(crit.name, str(gran), target, scope, schedule, names, excluded, achieved, layer,
                       before, size_report(model, example), losses, masks)


def save_pruned(model: nn.Module, example_inputs: Any, path: str | os.PathLike,
                masks: Mapping[str, Tensor] | None = None, dynamic_batch: bool = False) -> torch.export.ExportedProgram:
    """Export ``model`` (eval mode) with ``torch.export`` and save it as a ``.pt2`` for the compiler.

    ``masks``, if given, are applied first; pruned weights are plain zeros in the saved weights. The model
    must carry no mask hooks (remove :class:`~.prune.MaskHooks` first; :func:`prune_model` leaves none).
    Shapes are those of ``example_inputs`` (static) unless ``dynamic_batch`` marks axis 0 of every tensor
    input as a symbolic batch size.
    """
    if MaskHooks.attached(model):
        raise ValueError("model still carries mask hooks: call MaskHooks.remove() before exporting")
    if masks:
        apply_masks(model, masks)
    set_training(model, False)
    args, kwargs, _ = split_batch(_example_batch(example_inputs))
    dynamic = None
    if dynamic_batch:
        batch = torch.export.Dim("batch", min=1)
        spec = lambda v: {0: batch} if isinstance(v, Tensor) else None  # noqa: E731
        # export specializes a size-1 axis to the constant 1: trace with two copies instead.
        grow = lambda v: torch.cat([v, v]) if isinstance(v, Tensor) and v.shape[0] == 1 else v  # noqa: E731
        args, kwargs = tuple(grow(a) for a in args), {k: grow(v) for k, v in kwargs.items()}
        dynamic = {k: spec(v) for k, v in kwargs.items()} if kwargs else tuple(spec(a) for a in args)
    with torch.no_grad():
        program = torch.export.export(model, tuple(args), kwargs, dynamic_shapes=dynamic)
    torch.export.save(program, os.fspath(path))
    return program


def load_pruned(path: str | os.PathLike) -> nn.Module:
    """Load a ``.pt2`` written by :func:`save_pruned` as a callable module."""
    return torch.export.load(os.fspath(path)).module()


def load_model(spec: str) -> tuple[nn.Module, Any]:
    """Load a model to prune; returns (module, example inputs or None).

    ``spec`` is either
      * a ``.pt2`` file written by ``torch.export.save``: its unlifted module (``ExportedProgram.module()``;
        Linear/Conv weights found as the weights of aten linear/conv nodes, BatchNorm frozen, dropout
        gone), example inputs taken from the program; or
      * ``path/to/file.py:factory``: ``factory()`` returns an ``nn.Module`` (weights loaded) or a pair
        ``(module, example_inputs)``.
    """
    if spec.endswith(".pt2"):
        program = torch.export.load(spec)
        args, kwargs = program.example_inputs or ((), {})
        example = kwargs if kwargs else (args[0] if len(args) == 1 else tuple(args)) if args else None
        return program.module(), example
    path, sep, factory = spec.rpartition(":")
    if not sep or not path.endswith(".py"):
        raise HwcompError(f"MODEL must be a .pt2 file or file.py:factory, got {spec!r}")
    if not Path(path).is_file():
        raise HwcompError(f"model file {path!r} does not exist")
    module_spec = importlib.util.spec_from_file_location(Path(path).stem, path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)  # the user's code: its own errors keep their traceback
    if not callable(getattr(module, factory, None)):
        raise HwcompError(f"{path} has no function {factory!r}")
    made = getattr(module, factory)()
    if isinstance(made, tuple):
        return made[0], made[1]
    return made, None
