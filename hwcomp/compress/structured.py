"""Structured pruning that physically shrinks layers: neurons/channels, attention heads, whole layers.

A :class:`ChannelGroup` ties the output units of a *producer* (Linear or Conv, optionally followed by a
BatchNorm) to the input features of its *consumers*. Removing unit ``u`` removes producer row ``u`` (and
its bias / BatchNorm entries) and the consumer input columns fed by ``u``: one column for a Linear or Conv
consumer, ``repeat`` consecutive columns for a Linear that reads a flattened ``[C, H, W]`` map (channel-
major, as ``torch.flatten`` lays it out). :func:`group_masks` gives the equivalent *masks* (zeros in a
full-size model); :func:`shrink_group` builds the smaller layers. Both give the same outputs: the removed
unit's post-activation value (non-zero after a BatchNorm shift) reaches the consumer only through the
zeroed columns.
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .batches import Batch, LossFn, iterate, run_model, set_training
from .criteria import CriterionConfig, activation_frequency, weight_scores
from .layers import as_matrix
from .prune import Masks

_PRODUCERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
# Modules that act on each channel independently, so a unit's channel passes through them unchanged.
_CHANNELWISE = (nn.ReLU, nn.ReLU6, nn.GELU, nn.SiLU, nn.Tanh, nn.Sigmoid, nn.LeakyReLU, nn.Hardswish, nn.ELU,
                nn.Dropout, nn.Identity, nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d,
                nn.AvgPool3d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d,
                nn.AdaptiveMaxPool2d, nn.Flatten)


@dataclass(frozen=True)
class ChannelGroup:
    """Output units of ``producer`` read as input features by ``consumers`` (module names)."""

    producer: str
    consumers: tuple[str, ...]
    norm: str | None = None


def _units(model: nn.Module, group: ChannelGroup) -> int:
    return model.get_submodule(group.producer).weight.shape[0]


def _repeat(model: nn.Module, group: ChannelGroup, consumer: str) -> int:
    """Consumer input columns per producer unit (1, or H*W for a Linear after a flatten)."""
    c = model.get_submodule(consumer)
    width = c.in_features if isinstance(c, nn.Linear) else c.in_channels
    units = _units(model, group)
    if width % units or (not isinstance(c, nn.Linear) and width != units):
        raise ValueError(f"{consumer} reads {width} features, not a multiple of {group.producer}'s {units} units")
    if not isinstance(c, nn.Linear) and c.groups != 1:
        raise ValueError(f"grouped convolution {consumer} cannot be channel-pruned")
    return width // units


def _columns(keep_units: Tensor, repeat: int) -> Tensor:
    return (keep_units[:, None] * repeat + torch.arange(repeat)[None, :]).flatten()


def sequential_groups(model: nn.Module) -> list[ChannelGroup]:
    """Producer->consumer groups found inside every ``nn.Sequential`` of ``model``.

    A group links a Linear/Conv to the next Linear/Conv of the same Sequential when only channel-wise
    modules (activations, dropout, pooling, flatten, one BatchNorm right after the producer) lie between.
    """
    groups: list[ChannelGroup] = []
    for seq_name, seq in model.named_modules():
        if not isinstance(seq, nn.Sequential):
            continue
        prefix = f"{seq_name}." if seq_name else ""
        producer, norm = None, None
        for child_name, child in seq.named_children():
            name = prefix + child_name
            if isinstance(child, _PRODUCERS) and getattr(child, "groups", 1) == 1:
                if producer is not None:
                    groups.append(ChannelGroup(producer, (name,), norm))
                producer, norm = name, None
            elif isinstance(child, _NORMS) and producer is not None and norm is None:
                norm = name
            elif not isinstance(child, _CHANNELWISE):
                producer, norm = None, None
    return groups


def bert_ffn_groups(model: nn.Module) -> list[ChannelGroup]:
    """FFN groups (``intermediate.dense`` -> ``output.dense``) of every BERT-style layer in ``model``."""
    groups = []
    for name, m in model.named_modules():
        inter, out = getattr(m, "intermediate", None), getattr(m, "output", None)
        if isinstance(getattr(inter, "dense", None), nn.Linear) and isinstance(getattr(out, "dense", None), nn.Linear):
            p = f"{name}." if name else ""
            groups.append(ChannelGroup(f"{p}intermediate.dense", (f"{p}output.dense",)))
    return groups


def unit_scores(model: nn.Module, groups: Sequence[ChannelGroup], criterion: str | CriterionConfig = "l1",
                data: Iterable[Batch] | None = None, loss_fn: LossFn | None = None) -> dict[str, Tensor]:
    """Importance of every unit of each group: ``{producer name: [units]}``; higher is more important.

    Weight criteria sum the saliency of the unit's producer row and consumer columns (``l2``: square root
    of that sum, i.e. the L2 norm of the unit's weights). ``apoz`` is the unit's activation frequency
    (1 - APoZ) measured at the first consumer's input.
    """
    config = criterion if isinstance(criterion, CriterionConfig) else CriterionConfig(criterion)
    if config.name == "apoz":
        if data is None:
            raise ValueError("apoz needs a data source")
        names = [f"{g.consumers[0]}.weight" for g in groups]
        freq = activation_frequency(model, names, data, config.max_batches)
        return {g.producer: freq[n].reshape(_units(model, g), -1).mean(1) for g, n in zip(groups, names)}
    names = sorted({f"{g.producer}.weight" for g in groups} | {f"{c}.weight" for g in groups for c in g.consumers})
    sal = weight_scores(model, config, data, loss_fn, names)
    result = {}
    for g in groups:
        total = as_matrix(sal[f"{g.producer}.weight"]).sum(1).double()
        for c in g.consumers:
            cols = sal[f"{c}.weight"].transpose(0, 1).reshape(_units(model, g), -1)  # [units, repeat*out*kernel]
            total = total + cols.sum(1).double()
        result[g.producer] = (total.sqrt() if config.name == "l2" else total).float()
    return result


def select_units(scores: Tensor, amount: float, round_to: int = 1) -> Tensor:
    """Sorted indices of the units to keep after removing a fraction ``amount`` of the lowest scores.

    The kept count is rounded up to a multiple of ``round_to`` (hardware-friendly widths) and is >= 1.
    """
    n = scores.numel()
    keep = n - math.floor(amount * n + 0.5)
    keep = min(n, max(1, math.ceil(keep / round_to) * round_to))
    return torch.argsort(scores, descending=True, stable=True)[:keep].sort().values


def group_masks(model: nn.Module, group: ChannelGroup, keep: Tensor) -> Masks:
    """Masks equivalent to :func:`shrink_group`: producer rows/bias and consumer columns of removed units."""
    producer = model.get_submodule(group.producer)
    unit = torch.zeros(_units(model, group), dtype=torch.bool)
    unit[keep] = True
    shape = (-1,) + (1,) * (producer.weight.dim() - 1)
    masks = {f"{group.producer}.weight": unit.reshape(shape).expand_as(producer.weight).clone()}
    if producer.bias is not None:
        masks[f"{group.producer}.bias"] = unit.clone()
    for c in group.consumers:
        w = model.get_submodule(c).weight
        col = unit.repeat_interleave(_repeat(model, group, c))
        masks[f"{c}.weight"] = col.reshape(1, -1, *([1] * (w.dim() - 2))).expand_as(w).clone()
    return masks


def _take(p: Tensor | None, idx: Tensor, dim: int) -> nn.Parameter | None:
    return None if p is None else nn.Parameter(p.detach().index_select(dim, idx).clone(), p.requires_grad)


def shrink_group(model: nn.Module, group: ChannelGroup, keep: Tensor) -> None:
    """Physically remove the units not in ``keep`` from the producer, its norm and its consumers (in place)."""
    repeats = {c: _repeat(model, group, c) for c in group.consumers}
    producer = model.get_submodule(group.producer)
    producer.weight = _take(producer.weight, keep, 0)
    producer.bias = _take(producer.bias, keep, 0)
    if isinstance(producer, nn.Linear):
        producer.out_features = keep.numel()
    else:
        producer.out_channels = keep.numel()
    if group.norm is not None:
        bn = model.get_submodule(group.norm)
        bn.weight, bn.bias = _take(bn.weight, keep, 0), _take(bn.bias, keep, 0)
        if bn.running_mean is not None:
            bn.running_mean = bn.running_mean.index_select(0, keep).clone()
            bn.running_var = bn.running_var.index_select(0, keep).clone()
        bn.num_features = keep.numel()
    for c, rep in repeats.items():
        consumer = model.get_submodule(c)
        consumer.weight = _take(consumer.weight, _columns(keep, rep), 1)
        if isinstance(consumer, nn.Linear):
            consumer.in_features = keep.numel() * rep
        else:
            consumer.in_channels = keep.numel()


def prune_units(model: nn.Module, groups: Sequence[ChannelGroup], amount: float,
                criterion: str | CriterionConfig = "l1", data: Iterable[Batch] | None = None,
                loss_fn: LossFn | None = None, round_to: int = 1) -> dict[str, Tensor]:
    """Score, select and physically remove a fraction ``amount`` of every group's units.

    Returns ``{producer name: kept unit indices (into the original units)}``.
    """
    scores = unit_scores(model, groups, criterion, data, loss_fn)
    kept = {g.producer: select_units(scores[g.producer], amount, round_to) for g in groups}
    for g in groups:
        shrink_group(model, g, kept[g.producer])
    return kept


# --- attention heads (BERT-style self-attention: query/key/value -> output.dense) -----------------------

def bert_attention_modules(model: nn.Module) -> list[str]:
    """Names of BERT-style attention blocks (``.self.{query,key,value}`` and ``.output.dense``)."""
    found = []
    for name, m in model.named_modules():
        sa, out = getattr(m, "self", None), getattr(m, "output", None)
        if all(isinstance(getattr(sa, a, None), nn.Linear) for a in ("query", "key", "value")) \
                and isinstance(getattr(out, "dense", None), nn.Linear):
            found.append(name)
    return found


def _head_slices(model: nn.Module, attention: str) -> tuple[nn.Module, int, int]:
    sa = model.get_submodule(attention).self
    return sa, sa.num_attention_heads, sa.attention_head_size


def head_scores(model: nn.Module, criterion: str | CriterionConfig = "l1", data: Iterable[Batch] | None = None,
                loss_fn: LossFn | None = None) -> dict[str, Tensor]:
    """Importance of every head: ``{attention name: [heads]}``, the summed saliency of the head's
    query/key/value rows and output-projection columns (``apoz`` is not defined for heads)."""
    config = criterion if isinstance(criterion, CriterionConfig) else CriterionConfig(criterion)
    if config.name == "apoz":
        raise ValueError("apoz is not defined for attention heads")
    attns = bert_attention_modules(model)
    names = [f"{a}.self.{p}.weight" for a in attns for p in ("query", "key", "value")] + \
            [f"{a}.output.dense.weight" for a in attns]
    sal = weight_scores(model, config, data, loss_fn, names)
    result = {}
    for a in attns:
        _, heads, size = _head_slices(model, a)
        total = sum(sal[f"{a}.self.{p}.weight"].reshape(heads, -1).sum(1).double() for p in ("query", "key", "value"))
        total = total + sal[f"{a}.output.dense.weight"].T.reshape(heads, -1).sum(1).double()
        result[a] = (total.sqrt() if config.name == "l2" else total).float()
    return result


def head_masks(model: nn.Module, attention: str, heads: Iterable[int]) -> Masks:
    """Masks that silence ``heads`` of one attention block (q/k/v rows and output columns zeroed)."""
    sa, n_heads, size = _head_slices(model, attention)
    alive = torch.ones(n_heads, dtype=torch.bool)
    alive[list(heads)] = False
    rows = alive.repeat_interleave(size)
    masks: Masks = {}
    for p in ("query", "key", "value"):
        lin = getattr(sa, p)
        masks[f"{attention}.self.{p}.weight"] = rows[:, None].expand_as(lin.weight).clone()
        if lin.bias is not None:
            masks[f"{attention}.self.{p}.bias"] = rows.clone()
    dense = model.get_submodule(attention).output.dense
    masks[f"{attention}.output.dense.weight"] = rows[None, :].expand_as(dense.weight).clone()
    return masks


def prune_heads(model: nn.Module, heads: Mapping[str, Iterable[int]]) -> None:
    """Physically remove attention heads: ``{attention name: head indices}`` (in place).

    transformers 5.x dropped ``PreTrainedModel.prune_heads``; this slices the query/key/value rows and the
    output-projection columns of the removed heads and updates the head count, which the attention forward
    derives its reshape from. At least one head per block must remain.
    """
    for attention, drop in heads.items():
        sa, n_heads, size = _head_slices(model, attention)
        drop = set(int(h) for h in drop)
        keep_heads = [h for h in range(n_heads) if h not in drop]
        if not keep_heads:
            raise ValueError(f"cannot remove every head of {attention}")
        idx = torch.cat([torch.arange(h * size, (h + 1) * size) for h in keep_heads])
        for p in ("query", "key", "value"):
            lin = getattr(sa, p)
            lin.weight, lin.bias = _take(lin.weight, idx, 0), _take(lin.bias, idx, 0)
            lin.out_features = idx.numel()
        dense = model.get_submodule(attention).output.dense
        dense.weight = _take(dense.weight, idx, 1)
        dense.in_features = idx.numel()
        sa.num_attention_heads = len(keep_heads)
        sa.all_head_size = idx.numel()


# --- whole layers of a residual stack ------------------------------------------------------------------

def _hidden(args: tuple, kwargs: dict) -> Tensor:
    return args[0] if args else kwargs["hidden_states"]


def _out(out: object) -> Tensor:
    return out if isinstance(out, Tensor) else out[0]  # type: ignore[index]


@torch.no_grad()
def layer_importance(model: nn.Module, layers: str, data: Iterable[Batch], max_batches: int | None = None) -> Tensor:
    """Block influence of every layer of the ModuleList ``layers`` (e.g. ``"encoder.layer"``).

    ``1 - cos(input, output)`` averaged over tokens (Men et al. 2024, "ShortGPT"): a layer that barely
    changes its residual stream scores near 0 and is the cheapest to drop.
    """
    stack = model.get_submodule(layers)
    sums = torch.zeros(len(stack), dtype=torch.float64)
    counts = torch.zeros(len(stack), dtype=torch.float64)

    def hook(i: int):
        def fn(_m: nn.Module, args: tuple, kwargs: dict, out: object) -> None:
            x, y = _hidden(args, kwargs), _out(out)
            cos = F.cosine_similarity(x.reshape(-1, x.shape[-1]), y.reshape(-1, y.shape[-1]), dim=-1)
            sums[i] += (1 - cos).double().sum()
            counts[i] += cos.numel()
        return fn

    handles = [m.register_forward_hook(hook(i), with_kwargs=True) for i, m in enumerate(stack)]
    was_training = model.training
    set_training(model, False)
    try:
        for batch in iterate(data, max_batches, desc="layer importance"):
            run_model(model, batch)
    finally:
        for h in handles:
            h.remove()
        set_training(model, was_training)
    return (sums / counts.clamp(min=1)).float()


def drop_layers(model: nn.Module, layers: str, indices: Iterable[int]) -> None:
    """Remove the given layers from the ModuleList ``layers`` (in place); updates ``config.num_hidden_layers``
    when the model has a Hugging Face config. Only valid for residual blocks (same input and output shape)."""
    stack = model.get_submodule(layers)
    drop = set(int(i) for i in indices)
    kept = nn.ModuleList([m for i, m in enumerate(stack) if i not in drop])
    parent_name, _, attr = layers.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, attr, kept)
    config = getattr(model, "config", None)
    if config is not None and hasattr(config, "num_hidden_layers"):
        config.num_hidden_layers = len(kept)
