"""Structured pruning: physically smaller layers whose outputs match the masked full-size model."""
from __future__ import annotations

import copy

import pytest
import torch
from compress_helpers import small_cnn
from torch import nn

from hwcomp.compress.prune import apply_masks, merge_masks
from hwcomp.compress.structured import (ChannelGroup, bert_attention_modules, bert_ffn_groups, drop_layers,
                                        group_masks, head_masks, head_scores, layer_importance, prune_heads,
                                        prune_units, select_units, sequential_groups, shrink_group, unit_scores)

transformers = pytest.importorskip("transformers")


def masked_and_shrunk(model: nn.Module, groups: list[ChannelGroup], amount: float, criterion: str = "l1"):
    scores = unit_scores(model, groups, criterion)
    keep = {g.producer: select_units(scores[g.producer], amount) for g in groups}
    masked, shrunk = copy.deepcopy(model), copy.deepcopy(model)
    apply_masks(masked, merge_masks(*(group_masks(masked, g, keep[g.producer]) for g in groups)))
    for g in groups:
        shrink_group(shrunk, g, keep[g.producer])
    return masked, shrunk, keep


def test_linear_pair_shrinks_and_matches_masked():
    model = nn.Sequential(nn.Linear(10, 64), nn.GELU(), nn.Linear(64, 7)).eval()
    groups = sequential_groups(model)
    assert groups == [ChannelGroup("0", ("2",))]
    masked, shrunk, keep = masked_and_shrunk(model, groups, 0.3)
    assert shrunk[0].weight.shape == (45, 10) and shrunk[2].weight.shape == (7, 45) and shrunk[0].bias.shape == (45,)
    x = torch.randn(32, 10)
    torch.testing.assert_close(shrunk(x), masked(x), atol=1e-5, rtol=0)
    assert not torch.allclose(masked(x), model(x), atol=1e-3)  # pruning did change the function


def test_conv_bn_conv_flatten_linear_shrinks_and_matches_masked():
    model = small_cnn()
    groups = sequential_groups(model)
    assert groups == [ChannelGroup("0", ("3",), "1"), ChannelGroup("3", ("7",)), ChannelGroup("7", ("9",))]
    masked, shrunk, keep = masked_and_shrunk(model, groups, 0.5)
    assert shrunk[0].weight.shape == (4, 1, 3, 3) and shrunk[1].running_mean.shape == (4,)
    assert shrunk[3].weight.shape == (6, 4, 3, 3) and shrunk[7].weight.shape == (10, 6 * 16)
    x = torch.randn(16, 1, 8, 8)
    torch.testing.assert_close(shrunk(x), masked(x), atol=1e-5, rtol=0)
    assert sum(p.numel() for p in shrunk.parameters()) < 0.5 * sum(p.numel() for p in model.parameters())


def test_round_to_multiple():
    keep = select_units(torch.arange(100.0), 0.3, round_to=16)
    assert keep.numel() == 80 and keep.tolist() == list(range(20, 100))


def tiny_bert() -> nn.Module:
    config = transformers.BertConfig(vocab_size=100, hidden_size=64, num_hidden_layers=3, num_attention_heads=4,
                                     intermediate_size=128, max_position_embeddings=32)
    torch.manual_seed(0)
    return transformers.BertModel(config, add_pooling_layer=False).eval()


def bert_inputs() -> dict[str, torch.Tensor]:
    ids = torch.randint(0, 100, (2, 12))
    mask = torch.ones_like(ids)
    mask[1, 8:] = 0
    return {"input_ids": ids, "attention_mask": mask}


def test_bert_ffn_pruning_matches_masked():
    model = tiny_bert()
    groups = bert_ffn_groups(model)
    assert len(groups) == 3 and groups[0].producer == "encoder.layer.0.intermediate.dense"
    masked, shrunk, _ = masked_and_shrunk(model, groups, 0.3)
    assert shrunk.encoder.layer[0].intermediate.dense.weight.shape == (90, 64)
    batch = bert_inputs()
    torch.testing.assert_close(shrunk(**batch).last_hidden_state, masked(**batch).last_hidden_state,
                               atol=1e-5, rtol=0)


def test_bert_head_pruning_matches_masked():
    model = tiny_bert()
    attns = bert_attention_modules(model)
    assert attns == [f"encoder.layer.{i}.attention" for i in range(3)]
    scores = head_scores(model, "l1")
    assert all(s.shape == (4,) for s in scores.values())
    heads = {attns[0]: [1, 3], attns[2]: [0]}
    masked, shrunk = copy.deepcopy(model), copy.deepcopy(model)
    apply_masks(masked, merge_masks(*(head_masks(masked, a, h) for a, h in heads.items())))
    prune_heads(shrunk, heads)
    sa = shrunk.encoder.layer[0].attention.self
    assert sa.query.weight.shape == (32, 64) and sa.num_attention_heads == 2
    assert shrunk.encoder.layer[0].attention.output.dense.weight.shape == (64, 32)
    batch = bert_inputs()
    torch.testing.assert_close(shrunk(**batch).last_hidden_state, masked(**batch).last_hidden_state,
                               atol=1e-5, rtol=0)


def test_drop_bert_layers_matches_skipping_them():
    model = tiny_bert()
    batch = bert_inputs()
    importance = layer_importance(model, "encoder.layer", [batch])
    assert importance.shape == (3,) and (importance > 0).all()
    skipped = copy.deepcopy(model)
    handle = skipped.encoder.layer[1].register_forward_hook(lambda _m, args, _out: args[0])  # identity layer
    with torch.no_grad():
        expected = skipped(**batch).last_hidden_state
    handle.remove()
    drop_layers(model, "encoder.layer", [1])
    assert len(model.encoder.layer) == 2 and model.config.num_hidden_layers == 2
    with torch.no_grad():
        torch.testing.assert_close(model(**batch).last_hidden_state, expected, atol=1e-5, rtol=0)


def test_prune_units_with_data_criterion():
    model = small_cnn()
    x = torch.randn(64, 1, 8, 8)
    data = [(x[i:i + 16], torch.randint(0, 5, (16,))) for i in range(0, 64, 16)]
    kept = prune_units(model, sequential_groups(model), 0.25, "taylor", data)
    assert [k.numel() for k in kept.values()] == [6, 9, 15]
    assert model(x).shape == (64, 5)
