"""Structured widths: keep a fraction of the hidden units between two Linear layers.

A width group is a *producer* Linear whose output units reach exactly one *consumer* Linear through
channel-wise ops only (a transformer FFN's ``intermediate.dense → GELU → output.dense``, or two
Linears of an ``nn.Sequential``). Keeping ``width`` % of the units shrinks both matmuls: the
producer to ``k → width·n`` and the consumer to ``width·n → n'``, with no sparse kernel needed.

Which units: those greedy Optimal Brain Surgeon removes at least cost to the consumer's output on
the calibration inputs, the consumer's remaining weights and bias updated to compensate
(:func:`~hwcomp.compress.reconstruct.obs_remove`, the structured pruning of ``hwcomp.compress``),
so it absorbs what the removed units carried, as the block re-fit does for block sparsity.

In the policy search a group is one knapsack item (:func:`merge_groups`): every pair of the two
layers' own options at full width, plus each width at fp32 and at int8 on both layers. Its lone
latency is measured on the shrunken shapes, its error simulated with both layers changed at once.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from .search import LayerProfile, OptionCost
from .simulate import apply_option_, model_error, trial
from .space import Option

#: Kept unit counts are rounded up to a multiple of this: every kernel layout (8-wide fp32 tiles,
#: ``[N/8, K/4]`` int8 packing, 16-wide AVX-512 rows) takes such widths without padding.
ROUND_UNITS = 16


@dataclasses.dataclass(frozen=True)
class WidthGroup:
    producer: str
    consumer: str


def width_groups(model, layers: list[str] | None = None) -> list[WidthGroup]:
    """The producer → consumer Linear pairs of ``model`` (BERT-style FFNs and ``nn.Sequential``
    neighbours with one Linear consumer, no norm between), restricted to ``layers`` if given."""
    import torch

    from ..compress.structured import bert_ffn_groups, sequential_groups

    mods = dict(model.named_modules())
    found: dict[str, WidthGroup] = {}
    for g in bert_ffn_groups(model) + sequential_groups(model):
        if len(g.consumers) != 1 or g.norm is not None or g.producer in found:
            continue
        p, c = mods[g.producer], mods[g.consumers[0]]
        if not (isinstance(p, torch.nn.Linear) and isinstance(c, torch.nn.Linear)) or c.in_features != p.out_features:
            continue
        if layers is not None and not (g.producer in layers and g.consumers[0] in layers):
            continue
        found[g.producer] = WidthGroup(g.producer, g.consumers[0])
    return list(found.values())


def kept_count(units: int, width: int) -> int:
    """Units kept at ``width`` %: rounded up to :data:`ROUND_UNITS`, at most all of them."""
    keep = max(1, round(units * width / 100))
    return min(units, -(-keep // ROUND_UNITS) * ROUND_UNITS)


def narrow_(model, group: WidthGroup, width: int, gram, shrink: bool) -> None:
    """Keep ``width`` % of ``group``'s units in place (``gram``: the consumer's input Gram,
    :func:`~hwcomp.policy.simulate.layer_grams` of the fp32 model): the units greedy OBS removes at
    least cost, the consumer's other weights and bias compensating (:func:`~hwcomp.compress.
    reconstruct.obs_remove`).

    ``shrink``: physically remove the other units (what is compiled); otherwise only zero the
    consumer's columns for them (the same outputs, full-size tensors: the in-place simulation)."""
    import torch

    from ..compress.reconstruct import obs_remove
    from ..compress.structured import ChannelGroup, shrink_group

    consumer = model.get_submodule(group.consumer)
    n = consumer.in_features
    keep, w, b = obs_remove(consumer.weight, consumer.bias, gram, n - kept_count(n, width))
    with torch.no_grad():
        if shrink:
            shrink_group(model, ChannelGroup(group.producer, (group.consumer,)), keep)
            consumer.weight.copy_(w.to(consumer.weight.dtype))
        else:
            full = torch.zeros_like(consumer.weight)
            full[:, keep] = w.to(full.dtype)
            consumer.weight.copy_(full)
        if consumer.bias is None:
            consumer.bias = torch.nn.Parameter(b.to(consumer.weight.dtype))
        else:
            consumer.bias.copy_(b.to(consumer.bias.dtype))


def width_options(widths, int8: bool) -> list[Option]:
    """The producer options of each width: fp32, and int8 when the target has it."""
    kinds = ("dense", "int8") if int8 else ("dense",)
    return [Option(kind, width=int(w)) for w in widths for kind in kinds]


def profile_widths(model, groups: list[WidthGroup], layers, options: list[Option], sim,
                   grams: dict, latency_of: Callable, log: Callable[[str], None] = print) -> dict:
    """Lone latency (producer + consumer, shrunken shapes) and simulated error of every group ×
    width option. ``grams``: the consumers' input Grams; ``latency_of(shape, option)``: measured ms.
    Returns ``{producer: [OptionCost with (producer option, consumer option)]}``."""
    from tqdm import tqdm

    rows = {l.name: l for l in layers}
    out: dict[str, list[OptionCost]] = {}
    for g in tqdm(groups, desc="widths per group", disable=None):
        p, c = rows[g.producer], rows[g.consumer]
        costs = []
        for opt in options:
            kept = kept_count(p.n, opt.width)
            full = Option(opt.kind)  # each layer's precision; the producer's width is in the shapes
            ms = latency_of((p.rows, p.k, kept), full) + latency_of((c.rows, kept, c.n), full)
            with trial(model, (g.producer, g.consumer)) as hooks:
                narrow_(model, g, opt.width, grams[g.consumer], shrink=False)
                if opt.kind == "int8":
                    for n in (g.producer, g.consumer):
                        hooks += apply_option_(model, n, full, sim.ranges, None, sim.weight_bits)
                err = max(0.0, model_error(model, sim.val, sim.reference))
            costs.append(OptionCost((opt, full), ms, err))
        out[g.producer] = costs
        log(f"{g.producer}: " + ", ".join(f"{c.option[0].label} {c.latency_ms:.3f} ms err {c.error:.2e}"
                                          for c in costs))
    return out


def merge_groups(profiles: list[LayerProfile], groups: list[WidthGroup], width_costs: dict,
                 scale: Callable[[str], float] = lambda kind: 1.0) -> list[LayerProfile]:
    """Each group's two layer profiles as one item: every pair of their options at full width (latency
    and error added), plus the group's width options (lone latency × ``scale(kind)``, the in-model
    factor the latency model fitted). Other profiles pass through; order follows ``profiles``."""
    by_name = {p.name: p for p in profiles}
    merged: dict[str, LayerProfile] = {}
    consumers = {g.consumer for g in groups}
    for g in groups:
        p, c = by_name[g.producer], by_name[g.consumer]
        costs = [OptionCost((a.option, b.option), a.latency_ms + b.latency_ms, a.error + b.error)
                 for a in p.costs for b in c.costs]
        costs += [OptionCost(w.option, w.latency_ms * scale(w.option[0].kind), w.error)
                  for w in width_costs.get(g.producer, [])]
        merged[g.producer] = LayerProfile(f"{g.producer} + {g.consumer}", p.shape, costs, (g.producer, g.consumer))
    return [merged.get(p.name, p) for p in profiles if p.name not in consumers]


def check_widths(model, choices: dict[str, Option]) -> dict[str, WidthGroup]:
    """The width groups ``choices`` narrow, by producer; a clear error where a consumer takes an
    option a narrowed input cannot have (sparse or low rank: their fit assumes the full input)."""
    narrowed = {}
    groups = None
    for name, opt in choices.items():
        if opt.width < 100:
            groups = groups if groups is not None else {g.producer: g for g in width_groups(model)}
            if name not in groups:
                raise ValueError(f"{name} does not feed exactly one Linear through channel-wise ops: "
                                 "it cannot take a width")
            g = groups[name]
            other = choices.get(g.consumer, Option("dense"))
            if other.kind not in ("dense", "int8") or other.width < 100:
                raise ValueError(f"{name} keeps {opt.width}% of its units, so its consumer {g.consumer} must be fp32 "
                                 f"or int8 at full width, not {other.label}")
            narrowed[name] = g
    return narrowed

