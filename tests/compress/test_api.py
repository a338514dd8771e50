"""prune_model / save_pruned / the prune CLI verb, and FLOP counting."""
from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
import torch
from compress_helpers import small_cnn
from torch import nn

from hwcomp.compress.api import PruneOptions, load_pruned, prune_model, save_pruned
from hwcomp.compress.finetune import FinetuneConfig
from hwcomp.cli.prune import add_prune_arguments, run_prune
from hwcomp.compress.size import layer_costs


def cnn_data(n: int = 128, seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, 8, 8, generator=g)
    y = torch.randint(0, 5, (n,), generator=g)
    return [(x[i:i + 32], y[i:i + 32]) for i in range(0, n, 32)]


def test_prune_model_then_saved_pt2_reproduces_outputs(tmp_path):
    model, data = small_cnn(), cnn_data()
    example = data[0][0][:1]
    report = prune_model(model, example, data, PruneOptions(criterion="taylor", granularity="block:4x1", sparsity=0.75,
                                                            finetune=FinetuneConfig(epochs=1)))
    assert report.excluded == ["9.weight"]  # the classifier stays dense
    assert report.layer_sparsity == {"0.weight": pytest.approx(7 / 9), "3.weight": pytest.approx(0.75),
                                     "7.weight": pytest.approx(0.75)}
    assert report.after.nonzero_flops < 0.4 * report.before.flops
    # 4x1 block structure in the Linear weight: rows 4i..4i+3 share the zero pattern
    w = model[7].weight.detach().reshape(5, 4, -1)
    assert ((w == 0).all(1) | (w != 0).all(1)).all()
    path = tmp_path / "pruned.pt2"
    save_pruned(model, example, path)
    program = torch.export.load(path)
    state = program.state_dict
    assert (state["7.weight"] == 0).float().mean() == pytest.approx(0.75)
    x = torch.randn(1, 1, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(program.module()(x), model(x), atol=1e-6, rtol=0)
    assert not any("hook" in str(n.target) for n in program.graph.nodes)


def test_distill_and_gradual_schedule_through_api():
    model, data = small_cnn(), cnn_data()
    report = prune_model(model, data[0][0][:1], data,
                         PruneOptions(criterion="l1", granularity="unstructured", sparsity=0.6,
                                      finetune=FinetuneConfig(epochs=2), distill=True, schedule="gradual"))
    assert report.sparsity == pytest.approx(0.6, abs=0.01) and len(report.finetune_losses) == 2
    assert json.dumps(report.to_dict())


def test_cli_prunes_a_factory_model(tmp_path):
    (tmp_path / "net.py").write_text(
        "import torch\n"
        "def make():\n"
        "    torch.manual_seed(0)\n"
        "    return torch.nn.Sequential(torch.nn.Linear(6, 32), torch.nn.ReLU(), torch.nn.Linear(32, 3)).eval()\n")
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "data.npz", x=rng.normal(size=(64, 6)).astype(np.float32), y=rng.integers(0, 3, 64))
    parser = argparse.ArgumentParser()
    add_prune_arguments(parser)
    out = tmp_path / "out.pt2"
    args = parser.parse_args([f"{tmp_path / 'net.py'}:make", "--criterion", "fisher", "--granularity", "block:8x1",
                              "--sparsity", "0.5", "--data", str(tmp_path / "data.npz"), "-o", str(out),
                              "--report", str(tmp_path / "r.json")])
    assert run_prune(args) == 0
    pruned = load_pruned(out)
    assert pruned(torch.randn(1, 6)).shape == (1, 3)
    assert json.loads((tmp_path / "r.json").read_text())["layer_sparsity"] == {"0.weight": 0.5}
    # a .pt2 goes back in: the unlifted module is pruned through its aten.linear weights
    args2 = parser.parse_args([str(out), "--criterion", "l1", "--granularity", "unstructured", "--sparsity", "0.9",
                               "--exclude", "nothing", "-o", str(tmp_path / "again.pt2")])
    assert run_prune(args2) == 0
    again = torch.export.load(tmp_path / "again.pt2").state_dict
    assert float((again["2.weight"] == 0).float().mean()) == pytest.approx(0.9, abs=0.01)


def test_layer_flops():
    model = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.Flatten(), nn.Linear(8 * 4 * 4, 10))
    with torch.no_grad():
        model[2].weight[:, :64] = 0
    costs = {c.name: c for c in layer_costs(model, torch.randn(2, 3, 8, 8))}
    assert costs["0.weight"].flops == 2 * (2 * 8 * 4 * 4) * (3 * 3 * 3)  # outputs x MACs each
    assert costs["2.weight"].flops == 2 * 2 * 128 * 10
    assert costs["2.weight"].nonzero_flops == 2 * 2 * 64 * 10
