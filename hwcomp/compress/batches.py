"""How the compression code reads a user's data: batch layouts, model calls and the default loss.

A *batch* is any of
  * a tensor ``x``                      -> ``model(x)``, no target;
  * a 1-tuple ``(x,)``                  -> ``model(x)``, no target;
  * a pair ``(x, y)``                   -> ``model(x)`` (``x`` may itself be a tuple of inputs), target ``y``;
  * a mapping of keyword arguments      -> ``model(**batch)``; a ``labels`` entry is taken out as the target.
A data source is any re-iterable of batches (a ``torch.utils.data.DataLoader``, a list of batches, ...).
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from itertools import islice
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

from ..errors import HwcompError

Batch = Any
LossFn = Callable[[Tensor, "Tensor | None"], Tensor]
"""``loss_fn(output, target) -> scalar``; ``target`` is None for label-free data."""


def split_batch(batch: Batch) -> tuple[tuple, dict, Tensor | None]:
    """Split a batch into (positional inputs, keyword inputs, target or None)."""
    if isinstance(batch, Mapping):
        kwargs = dict(batch)
        target = kwargs.pop("labels", None)
        return (), kwargs, target
    if isinstance(batch, Tensor):
        return (batch,), {}, None
    if isinstance(batch, (tuple, list)):
        if len(batch) == 1:
            return (batch[0],), {}, None
        if len(batch) == 2:
            x, y = batch
            args = tuple(x) if isinstance(x, (tuple, list)) else (x,)
            return args, {}, y
    raise TypeError(f"unsupported batch layout: {type(batch).__name__}; use x, (x,), (x, y) or a dict")


def run_model(model: nn.Module, batch: Batch) -> tuple[Any, Tensor | None]:
    """Call ``model`` on a batch; returns (raw output, target or None)."""
    args, kwargs, target = split_batch(batch)
    return model(*args, **kwargs), target


def output_tensor(output: Any) -> Tensor:
    """The main tensor of a model output: itself, ``.logits``, ``.last_hidden_state`` or the first element."""
    if isinstance(output, Tensor):
        return output
    for attr in ("logits", "last_hidden_state"):
        value = getattr(output, attr, None)
        if isinstance(value, Tensor):
            return value
    if isinstance(output, Mapping):
        return output_tensor(next(iter(output.values())))
    if isinstance(output, (tuple, list)) and output:
        return output_tensor(output[0])
    raise TypeError(f"cannot find a tensor in model output of type {type(output).__name__}")


def default_loss(output: Tensor, target: Tensor | None, generator: torch.Generator | None = None) -> Tensor:
    """Cross-entropy for integer targets, MSE for float targets, a sampled Gauss-Newton loss without targets.

    Without labels the loss is ``0.5 * ||f(x) - (f(x).detach() + eps)||^2 / batch`` with ``eps ~ N(0, I)``.
    Its gradient is a sample of ``J^T eps``, whose squared expectation is the Gauss-Newton (Fisher of a
    Gaussian output model) diagonal, so gradient criteria stay meaningful on label-free data such as
    embedding models (the gradient of a loss against the model's own output would be exactly zero).
    """
    if target is None:
        noise = torch.randn(output.shape, generator=generator, dtype=output.dtype, device=output.device)
        return 0.5 * (output - (output.detach() + noise)).pow(2).sum() / max(1, output.shape[0])
    if target.dtype in (torch.int64, torch.int32, torch.int16, torch.uint8):
        return F.cross_entropy(output.reshape(-1, output.shape[-1]), target.reshape(-1).long())
    return F.mse_loss(output, target.to(output.dtype))


def batch_loss(model: nn.Module, batch: Batch, loss_fn: LossFn | None = None,
               generator: torch.Generator | None = None) -> Tensor:
    """Run the model on a batch and return its scalar loss (``loss_fn`` or :func:`default_loss`)."""
    output, target = run_model(model, batch)
    out = output_tensor(output)
    return loss_fn(out, target) if loss_fn is not None else default_loss(out, target, generator)


def iterate(data: Iterable[Batch], max_batches: int | None = None, desc: str = "") -> Iterator[Batch]:
    """Iterate over at most ``max_batches`` batches with a progress bar that hides when not on a TTY."""
    total = None
    if hasattr(data, "__len__"):
        total = len(data) if max_batches is None else min(len(data), max_batches)
    it = data if max_batches is None else islice(data, max_batches)
    return iter(tqdm(it, total=total, desc=desc, leave=False, disable=None))


def batch_size_of(batch: Batch) -> int:
    """Number of samples in a batch (first dimension of its first tensor)."""
    args, kwargs, _ = split_batch(batch)
    for value in (*args, *kwargs.values()):
        if isinstance(value, Tensor):
            return value.shape[0]
    return 1


def set_training(model: nn.Module, mode: bool) -> nn.Module:
    """``model.train(mode)``, except on modules unlifted from ``torch.export`` whose mode is fixed."""
    try:
        model.train(mode)
    except NotImplementedError:  # ExportedProgram.module() refuses train()/eval(); it is already inference-only
        pass
    return model


def load_npz(path: str, batch_size: int, seed: int = 0) -> list[tuple]:
    """Batches ``(x, y)`` or ``(x,)`` from a ``.npz`` with array ``x`` (inputs, first axis = samples) and
    optional ``y`` (targets), shuffled once with ``seed``. Float arrays become float32, integer arrays
    int64: integer ``y`` are class labels (cross-entropy), float ``y`` regression targets (MSE); without
    ``y`` the loss is :func:`default_loss`'s label-free one."""
    from ..frontend.model import read_npz

    arrays = read_npz(path, "--data")
    if "x" not in arrays:
        raise HwcompError(f"--data {path!r} has no array 'x' (inputs, samples on axis 0); it has {list(arrays)}")
    x, y = arrays["x"], arrays.get("y")
    if x.ndim < 1 or len(x) == 0 or (y is not None and (y.ndim < 1 or len(y) != len(x))):
        raise HwcompError(f"--data {path!r}: x {list(x.shape)} and y {None if y is None else list(y.shape)} "
                          "need the same number (>= 1) of samples on axis 0")

    def tensor(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(a.astype(np.float32 if a.dtype.kind == "f" else np.int64))

    order = np.random.default_rng(seed).permutation(len(x))
    xs, ys = tensor(x[order]), (tensor(y[order]) if y is not None else None)
    return [(xs[i:i + batch_size], ys[i:i + batch_size]) if ys is not None else (xs[i:i + batch_size],)
            for i in range(0, len(xs), batch_size)]
