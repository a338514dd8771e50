"""Knowledge distillation from a (dense) teacher into a (compressed) student.

    loss = alpha * soft(student, teacher) + (1 - alpha) * hard(student, target)
           + hidden_weight * mean_i MSE(h_student_i, h_teacher_i)

``soft`` is Hinton's temperature-softened KL (times T^2 so gradients keep their scale across T) for
logits, or MSE / (1 - cosine) for regression-like outputs such as embeddings. The hard term is skipped when
a batch has no target (the soft term then gets weight 1).
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .batches import Batch, LossFn, default_loss, output_tensor, run_model, set_training
from .finetune import FinetuneConfig, finetune

OutputFn = Callable[[Any, Batch], Tensor]
"""``output_fn(raw model output, batch) -> tensor`` compared between student and teacher."""


@dataclass(frozen=True)
class DistillConfig:
    """Distillation loss.

    Attributes:
        temperature: softmax temperature T of the ``kl`` soft loss.
        alpha: weight of the soft (teacher) term; ``1 - alpha`` goes to the hard (label) loss.
        soft_loss: ``"kl"`` (logits), ``"mse"`` or ``"cosine"`` (embeddings / hidden states).
        hidden_weight: weight of the hidden-state MSE term (0 disables it).
        hidden_pairs: ``(student module, teacher module)`` names whose outputs are matched by MSE;
            shapes must agree (match layers whose output width pruning did not change).
    """

    temperature: float = 4.0
    alpha: float = 0.9
    soft_loss: Literal["kl", "mse", "cosine"] = "kl"
    hidden_weight: float = 0.0
    hidden_pairs: Sequence[tuple[str, str]] = ()


def soft_target_loss(student: Tensor, teacher: Tensor, temperature: float) -> Tensor:
    """Hinton et al. (2015): ``T^2 * KL(softmax(teacher/T) || softmax(student/T))``, mean over samples."""
    s = F.log_softmax(student.reshape(-1, student.shape[-1]) / temperature, dim=-1)
    t = F.log_softmax(teacher.reshape(-1, teacher.shape[-1]) / temperature, dim=-1)
    return F.kl_div(s, t, log_target=True, reduction="batchmean") * temperature**2


def _first_tensor(x: Any) -> Tensor:
    return x if isinstance(x, Tensor) else output_tensor(x)


class Distiller:
    """A fine-tuning objective (``objective(student, batch)``) that distills ``teacher`` into the student.

    Registers forward hooks for ``hidden_pairs`` on both models; call :meth:`close` (or use ``with``) to
    remove them. The teacher runs in eval mode without gradients.
    """

    def __init__(self, student: nn.Module, teacher: nn.Module, config: DistillConfig = DistillConfig(),
                 loss_fn: LossFn | None = None, output_fn: OutputFn | None = None):
        self.teacher, self.config = set_training(teacher, False), config
        self.loss_fn, self.output_fn = loss_fn, output_fn or (lambda out, _b: output_tensor(out))
        self._student_h: dict[str, Tensor] = {}
        self._teacher_h: dict[str, Tensor] = {}
        self._handles = []
        for s_name, t_name in config.hidden_pairs:
            self._handles.append(student.get_submodule(s_name).register_forward_hook(
                lambda _m, _a, out, n=s_name: self._student_h.__setitem__(n, _first_tensor(out))))
            self._handles.append(teacher.get_submodule(t_name).register_forward_hook(
                lambda _m, _a, out, n=t_name: self._teacher_h.__setitem__(n, _first_tensor(out))))

    def _soft(self, s: Tensor, t: Tensor) -> Tensor:
        kind = self.config.soft_loss
        if kind == "kl":
            return soft_target_loss(s, t, self.config.temperature)
        if kind == "mse":
            return F.mse_loss(s, t)
        if kind == "cosine":
            return (1 - F.cosine_similarity(s.reshape(-1, s.shape[-1]), t.reshape(-1, t.shape[-1]), dim=-1)).mean()
        raise ValueError(f"unknown soft loss {kind!r}")

    def __call__(self, student: nn.Module, batch: Batch) -> Tensor:
        with torch.no_grad():
            t_out, _ = run_model(self.teacher, batch)
            t = self.output_fn(t_out, batch)
        s_out, target = run_model(student, batch)
        s = self.output_fn(s_out, batch)
        cfg = self.config
        alpha = cfg.alpha if target is not None else 1.0
        loss = alpha * self._soft(s, t)
        if target is not None and cfg.alpha < 1.0:
            hard = self.loss_fn(s, target) if self.loss_fn else default_loss(s, target)
            loss = loss + (1 - cfg.alpha) * hard
        if cfg.hidden_weight and cfg.hidden_pairs:
            hidden = sum(F.mse_loss(self._student_h[a], self._teacher_h[b]) for a, b in cfg.hidden_pairs)
            loss = loss + cfg.hidden_weight * hidden / len(cfg.hidden_pairs)
        return loss

    def close(self) -> None:
        """Remove the hidden-state hooks."""
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def __enter__(self) -> Distiller:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def distill(student: nn.Module, teacher: nn.Module, data: Iterable[Batch],
            config: DistillConfig | None = None, finetune_config: FinetuneConfig | None = None,
            masks: Mapping[str, Tensor] | None = None, loss_fn: LossFn | None = None,
            output_fn: OutputFn | None = None, callbacks: Sequence[Callable[[int], None]] = ()) -> list[float]:
    """Fine-tune ``student`` in place against ``teacher`` (masks kept applied); returns per-epoch losses."""
    with Distiller(student, teacher, config or DistillConfig(), loss_fn, output_fn) as objective:
        return finetune(student, data, finetune_config or FinetuneConfig(), objective, masks, callbacks)
