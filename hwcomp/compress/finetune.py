"""Fine-tuning loop that keeps pruning masks applied."""
from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from .batches import Batch, LossFn, batch_loss, iterate, run_model, set_training
from .prune import MaskHooks

Objective = Callable[[nn.Module, Batch], Tensor]
"""``objective(model, batch) -> scalar loss`` (see :func:`supervised` and :class:`~.distill.Distiller`)."""


@dataclass(frozen=True)
class FinetuneConfig:
    """Optimizer and length of a fine-tuning run.

    Attributes:
        epochs: passes over the data source.
        lr: learning rate.
        optimizer: ``"adam"`` (AdamW) or ``"sgd"`` (with momentum).
        weight_decay: decoupled weight decay.
        momentum: SGD momentum.
        max_steps: stop after this many optimizer steps (None: run all epochs).
        grad_clip: clip the gradient norm to this value (None: no clipping).
        cosine_decay: decay the learning rate to 0 with a cosine over the run.
        train_mode: put the model in train mode (dropout, BatchNorm updates); False keeps eval mode.
    """

    epochs: int = 1
    lr: float = 1e-3
    optimizer: Literal["adam", "sgd"] = "adam"
    weight_decay: float = 0.0
    momentum: float = 0.9
    max_steps: int | None = None
    grad_clip: float | None = None
    cosine_decay: bool = True
    train_mode: bool = True


def supervised(loss_fn: LossFn | None = None) -> Objective:
    """Objective from a plain ``loss_fn(output, target)`` (default: :func:`~.batches.default_loss`)."""
    generator = torch.Generator().manual_seed(0)
    return lambda model, batch: batch_loss(model, batch, loss_fn, generator)


def finetune(model: nn.Module, data: Iterable[Batch], config: FinetuneConfig = FinetuneConfig(),
             objective: Objective | None = None, masks: Mapping[str, Tensor] | None = None,
             callbacks: Sequence[Callable[[int], None]] = ()) -> list[float]:
    """Train ``model`` in place on ``data``; masked weights stay zero. Returns the mean loss of each epoch.

    ``callbacks`` are called with the 1-based global step after every optimizer step (e.g.
    :meth:`~.prune.GradualPruner.step`). The model is left in eval mode.
    """
    objective = objective or supervised()
    params = [p for p in model.parameters() if p.requires_grad]
    if config.optimizer == "adam":
        opt: torch.optim.Optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    elif config.optimizer == "sgd":
        opt = torch.optim.SGD(params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
    else:
        raise ValueError(f"unknown optimizer {config.optimizer!r}")
    steps_per_epoch = len(data) if hasattr(data, "__len__") else None
    total = config.max_steps or (steps_per_epoch * config.epochs if steps_per_epoch else None)
    sched = (torch.optim.lr_scheduler.CosineAnnealingLR(opt, total) if config.cosine_decay and total else None)
    hooks = MaskHooks(model, masks) if masks else None
    losses: list[float] = []
    step = 0
    set_training(model, config.train_mode)
    try:
        for epoch in range(config.epochs):
            running, n = 0.0, 0
            for batch in iterate(data, desc=f"finetune epoch {epoch + 1}/{config.epochs}"):
                loss = objective(model, batch)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                if config.grad_clip is not None:
                    torch.nn.utils.clip_grad_norm_(params, config.grad_clip)
                opt.step()
                if sched is not None:
                    sched.step()
                step += 1
                for cb in callbacks:
                    cb(step)
                running, n = running + float(loss.detach()), n + 1
                if config.max_steps is not None and step >= config.max_steps:
                    break
            losses.append(running / max(1, n))
            if config.max_steps is not None and step >= config.max_steps:
                break
    finally:
        if hooks is not None:
            hooks.remove()
        set_training(model, False)
    return losses


@torch.no_grad()
def evaluate_loss(model: nn.Module, data: Iterable[Batch], objective: Objective | None = None) -> float:
    """Mean objective over a data source, in eval mode, without gradients."""
    objective = objective or supervised()
    set_training(model, False)
    values = [float(objective(model, b)) for b in data]
    return sum(values) / max(1, len(values))


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, data: Iterable[Batch], max_batches: int | None = None) -> int:
    """Re-estimate every BatchNorm's running statistics on ``data``, changing no weight.

    Pruning shifts the activations a BatchNorm normalizes; its stale running statistics alone can collapse
    a one-shot pruned CNN to chance accuracy. Other modules stay in eval mode (no dropout). Returns the
    number of BatchNorm layers re-estimated; the model is left in eval mode.
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    set_training(model, False)
    if not norms:
        return 0
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the batches seen
        m.train()
    try:
        for batch in iterate(data, max_batches, desc="BatchNorm statistics"):
            run_model(model, batch)
    finally:
        for m, momentum in zip(norms, momenta):
            m.momentum = momentum
            m.eval()
    return len(norms)
