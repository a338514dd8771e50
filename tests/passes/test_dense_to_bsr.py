"""PruneWeights + DenseToBSR: which layers are rewritten, idempotence, numerics, measured choices,
end to end through ``hwcomp.compile``."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import tvm
from tvm import relax

from hwcomp.build import bind_weights, compile_module, finalize_weights, schedule
from hwcomp.build_measure import bsr_latency
from hwcomp.frontend import load_model
from hwcomp.passes.dense_to_bsr import BSR_CHOICES, DenseToBSR, parse_block, sparse_passes
from hwcomp.passes.prune_weights import PruneWeights
from hwcomp.sparse_format.bsr import block_density, block_prune
from hwcomp.target import get_target


class Net(torch.nn.Module):
    """Two prunable linears (bias + ReLU epilogue), a small dense head, a 1x1 conv and a 3x3 conv."""

    def __init__(self):
        super().__init__()
        self.fc1 = torch.nn.Linear(64, 96)
        self.fc2 = torch.nn.Linear(96, 80)
        self.head = torch.nn.Linear(80, 6)
        self.pw = torch.nn.Conv2d(16, 32, 1)
        self.conv3 = torch.nn.Conv2d(16, 8, 3, padding=1)

    def forward(self, x, img):
        h = self.head(self.fc2(torch.relu(self.fc1(x))))
        return h, torch.relu(self.pw(img)), self.conv3(img)


BLOCK = (8, 1)


def _prune_torch(model: torch.nn.Module, sparsity: float, block=BLOCK, skip=("head", "conv3")) -> torch.nn.Module:
    """The same block pruning as PruneWeights(scope='layer'), applied to the torch weights."""
    with torch.no_grad():
        for name, mod in model.named_modules():
            if isinstance(mod, (torch.nn.Linear, torch.nn.Conv2d)) and name not in skip:
                w = mod.weight.detach().numpy()
                w2 = block_prune(w.reshape(w.shape[0], -1), sparsity, block).reshape(w.shape)
                mod.weight.copy_(torch.from_numpy(w2))
    return model


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    model = _prune_torch(Net().eval(), 0.9)
    inputs = (torch.randn(2, 5, 64), torch.randn(1, 16, 6, 6))
    return model, inputs


@pytest.fixture(scope="module")
def bound(net):
    model, inputs = net
    imported = load_model(model, inputs)
    return imported, bind_weights(imported.mod, imported.params)


def _call_tirs(mod) -> list[str]:
    names = []

    def visit(e):
        if isinstance(e, relax.Call) and isinstance(e.op, tvm.ir.Op) and e.op.name == "relax.call_tir":
            names.append(e.args[0].name_hint)

    relax.analysis.post_order_visit(mod["main"].body, visit)
    return names


def _ops(mod, name: str) -> int:
    count = [0]

    def visit(e):
        if isinstance(e, relax.Call) and isinstance(e.op, tvm.ir.Op) and e.op.name == name:
            count[0] += 1

    relax.analysis.post_order_visit(mod["main"].body, visit)
    return count[0]


def _run(mod, host, inputs):
    m, weights = finalize_weights(mod)
    ex = compile_module(schedule(m, host), host)
    vm = relax.VirtualMachine(ex, tvm.cpu())
    from hwcomp.artifact import flatten_outputs

    return flatten_outputs(vm["main"](*[tvm.runtime.tensor(a) for a in inputs],
                                      *[tvm.runtime.tensor(w) for w in weights.values()]))


def test_rewrites_only_qualifying_layers_and_is_idempotent(bound, tmp_path):
    _, mod = bound
    p = DenseToBSR(get_target("host"), threshold=0.7, block=BLOCK, measure=False, cache_dir=tmp_path)
    out = p(mod)
    chosen = {d.name.split(":")[0]: d for d in p.report.layers}
    assert len(p.report.layers) == 5  # fc1, fc2, head, 1x1 conv, 3x3 conv
    assert p.report.n_sparse == 3
    dense = [d for d in p.report.layers if d.chosen == "dense"]
    assert sorted(d.n for d in dense) == [6, 8] and all("threshold" in d.basis for d in dense)  # unpruned
    assert {d.epilogue for d in p.report.layers if d.chosen == "bsr"} >= {"bias+relu", "bias"}
    assert len(_call_tirs(out)) == 3
    assert _ops(out, "relax.matmul") == 1 and _ops(out, "relax.nn.conv2d") == 1  # head, 3x3 conv untouched
    assert not list(tmp_path.iterdir())  # nothing measured
    again = DenseToBSR(get_target("host"), threshold=0.7, block=BLOCK, measure=False, cache_dir=tmp_path)(out)
    tvm.ir.assert_structural_equal(again, out)
    assert "L0" in chosen and p.report.table().splitlines()[-1].startswith("3/5 layers sparse")


def test_high_threshold_changes_nothing(bound, tmp_path):
    _, mod = bound
    p = DenseToBSR(get_target("host"), threshold=0.95, block=BLOCK, measure=False, cache_dir=tmp_path)
    out = p(mod)
    assert out is mod and p.report.n_sparse == 0


def test_rewritten_module_matches_dense(bound, host, tmp_path):
    imported, mod = bound
    inputs = imported.sample_inputs()
    ref = imported.reference(inputs)
    out = _run(DenseToBSR(host, block=BLOCK, measure=False, cache_dir=tmp_path)(mod), host, inputs)
    for o, r in zip(out, ref):
        np.testing.assert_allclose(o, r, rtol=1e-4, atol=1e-4)


def test_measured_choice_is_cached(bound, host, tmp_path, monkeypatch):
    _, mod = bound
    p = DenseToBSR(host, block=BLOCK, min_gain=0.0, cache_dir=tmp_path,
                   latency=bsr_latency(host))  # gain >= 0: BSR always wins
    p(mod)
    measured = [d for d in p.report.layers if d.basis == "measured"]
    assert len(measured) == 3 and all(d.dense_ms > 0 and d.bsr_ms > 0 and d.chosen == "bsr" for d in measured)
    cache = json.loads((tmp_path / BSR_CHOICES).read_text())
    assert any(k.startswith("dense:") for k in cache) and any(k.startswith("bsr:") for k in cache)

    import hwcomp.build_measure as measure

    def boom(*a, **k):
        raise AssertionError("measured again despite the cache")

    monkeypatch.setattr(measure, "measure_dense_ms", boom)
    monkeypatch.setattr(measure, "measure_bsr_ms", boom)
    # impossible gain: all dense
    p2 = DenseToBSR(host, block=BLOCK, min_gain=1e9, cache_dir=tmp_path, latency=bsr_latency(host))
    assert p2(mod) is mod
    assert [d.chosen for d in p2.report.layers] == ["dense"] * 5

    # A damaged choices file is reported and set aside (not overwritten), and the shapes re-measured.
    (tmp_path / BSR_CHOICES).write_text('{"dense:1x2x3": {"ms": 1.0')
    monkeypatch.undo()
    with pytest.warns(UserWarning, match="corrupt BSR choices"):
        DenseToBSR(host, block=BLOCK, min_gain=0.0, cache_dir=tmp_path, latency=bsr_latency(host))(mod)
    assert (tmp_path / (BSR_CHOICES + ".corrupt")).read_text() == '{"dense:1x2x3": {"ms": 1.0'
    assert any(k.startswith("bsr:") for k in json.loads((tmp_path / BSR_CHOICES).read_text()))


def test_cross_target_uses_threshold(bound, tmp_path):
    _, mod = bound
    p = DenseToBSR(get_target("rpi4"), cache_dir=tmp_path)  # 4x1 blocks; cannot run here
    out = p(mod)
    assert p.report.n_sparse == 3 and all(d.basis == "threshold" for d in p.report.layers if d.chosen == "bsr")
    assert [d.kind for d in p.report.layers if d.chosen == "bsr"] == ["matmul", "matmul", "conv1x1"]
    assert all(d.expected_gain for d in p.report.layers if d.chosen == "bsr")
    t = get_target("rpi4")
    m, _ = finalize_weights(out)
    compile_module(schedule(m, t), t)  # builds for AArch64


def test_conv_im2col_matches_dense(host, tmp_path):
    torch.manual_seed(3)
    model = torch.nn.Sequential(torch.nn.Conv2d(8, 16, 3, padding=1), torch.nn.ReLU(),
                                torch.nn.Conv2d(16, 24, 3, stride=2, padding=(0, 1), dilation=(1, 2))).eval()
    _prune_torch(model, 0.8, BLOCK, skip=())
    x = torch.randn(2, 8, 9, 11)
    imported = load_model(model, (x,))
    p = DenseToBSR(host, block=BLOCK, measure=False, cache_dir=tmp_path)
    out = p(bind_weights(imported.mod, imported.params))
    assert [d.kind for d in p.report.layers] == ["conv", "conv"] and p.report.n_sparse == 2
    assert p.report.layers[0].epilogue == "bias+relu" and p.report.layers[0].k == 8 * 9
    (y,) = _run(out, host, [x.numpy()])
    np.testing.assert_allclose(y, imported.reference([x.numpy()])[0], rtol=1e-4, atol=1e-4)


def test_prune_weights_layer_and_global(net):
    _, inputs = net
    torch.manual_seed(1)
    fresh = Net().eval()
    imported = load_model(fresh, inputs)
    mod = bind_weights(imported.mod, imported.params)
    p = PruneWeights(0.8, block=(8, 1), min_elements=1000)
    p(mod)
    layers = {r["shape"][0]: r["sparsity"] for r in p.report}
    assert set(layers) == {96, 80, 8}  # fc1, fc2, the 3x3 conv as [8, 144]; head and 1x1 conv < 1000
    assert all(abs(s - 0.8) < 0.02 for s in layers.values())

    g = PruneWeights(0.8, block=(1, 1), scope="global", min_elements=0)
    g(mod)
    sizes = {tuple(r["shape"]): r["sparsity"] for r in g.report}
    total = sum(np.prod(s) for s in sizes)
    overall = sum(np.prod(s) * sp for s, sp in sizes.items()) / total
    assert abs(overall - 0.8) < 0.01 and len(set(sizes.values())) > 1


def test_sparse_passes_and_pre_pruned_detection(bound, tmp_path):
    _, mod = bound
    host = get_target("host")
    ps = sparse_passes(host, sparsity=0.9, block=(16, 1), threshold=0.7, measure=False, cache_dir=tmp_path)
    assert [type(p).__name__ for p in ps] == ["PruneWeights", "DenseToBSR"] and ps[0].block == (16, 1)
    ps = sparse_passes(host, sparsity=None, block=None, threshold=0.7, measure=False, cache_dir=tmp_path)
    assert [type(p).__name__ for p in ps] == ["DenseToBSR"]
    # The model's weights were pruned in torch (8x1): used as they are, without a prune pass.
    (d2b,) = sparse_passes(host, None, BLOCK, 0.7, measure=False, cache_dir=tmp_path)
    d2b(mod)
    assert d2b.report.n_sparse == 3
    assert parse_block("16x1") == (16, 1)
    with pytest.raises(ValueError):
        parse_block("16")


def test_compile_end_to_end_matches_pruned_torch(host, tmp_path):
    import hwcomp
    from hwcomp.api import CompileOptions

    torch.manual_seed(2)
    model = torch.nn.Sequential(torch.nn.Linear(48, 128), torch.nn.ReLU(), torch.nn.Linear(128, 64),
                                torch.nn.GELU(), torch.nn.Linear(64, 10)).eval()
    block = host.sparse_block
    # The torch model is pruned exactly as PruneWeights prunes it, so fidelity compares like with like.
    _prune_torch(model, 0.85, block, skip=())
    passes = [PruneWeights(0.85, block=block, min_elements=0),
              DenseToBSR(host, threshold=0.7, block=block, measure=False, cache_dir=tmp_path)]
    x = torch.randn(3, 48)
    art = hwcomp.compile(model, host, output_dir=tmp_path / "art", example_inputs=(x,),
                         options=CompileOptions(passes=passes, use_default_database=False))
    assert passes[1].report.n_sparse == 3
    fid = art.manifest["fidelity"]
    assert fid["max_abs_err"] < 1e-4, fid
    w = model[0].weight.detach().numpy()
    assert 1 - block_density(w, block) == pytest.approx(0.85, abs=0.01)


def test_tune_flags_measure_every_knob_set_into_the_named_database(bound, host, tmp_path):
    """``hwcomp tune --sparse-threshold 0.7 --db D``: BSR kernels tuned over the whole knob space, kept in D."""
    import argparse

    from hwcomp.schedules.x86.bsr import BSRKnobs

    from hwcomp.passes.dense_to_bsr import sparse_passes_from_options as sparse_passes_from_args

    _, mod = bound
    args = argparse.Namespace(sparsity=None, block="8x1", sparse_threshold=0.7, db=str(tmp_path))
    (d2b,) = sparse_passes_from_args(args, host, tune=True, latency=bsr_latency(host))
    d2b(mod)
    choices = json.loads((tmp_path / BSR_CHOICES).read_text())
    tuned = [v for k, v in choices.items() if k.startswith("bsr:")]
    assert len(tuned) == 3 and all(v["tuned"] for v in tuned)
    assert all(BSRKnobs(**v["knobs"]).to_dict() == v["knobs"] for v in tuned)
    # compile with the same --db (no tune) serves the tuned knobs without measuring again
    plain = sparse_passes_from_args(args, host, latency=bsr_latency(host))[0]
    plain(mod)
    assert [d.bsr_ms for d in plain.report.layers if d.chosen == "bsr"] == \
        [d.bsr_ms for d in d2b.report.layers if d.chosen == "bsr"]


def test_pre_pruned_weights_get_bsr_with_no_flag_and_dense_ones_do_not(host, tmp_path, monkeypatch):
    """``hwcomp.compile`` with default options finds a Linear already 90 % block-sparse."""
    import hwcomp

    monkeypatch.setenv("HWCOMP_CACHE", str(tmp_path / "cache"))  # no BSR choices from earlier runs
    torch.manual_seed(3)
    model = torch.nn.Sequential(torch.nn.Linear(256, 512), torch.nn.ReLU(), torch.nn.Linear(512, 64)).eval()
    x = torch.randn(16, 256)
    dense = hwcomp.compile(model, host, tmp_path / "dense", example_inputs=(x,))
    assert [p["name"] for p in dense.manifest["compression"]["passes"]] == []
    _prune_torch(model, 0.9, host.sparse_block, skip=())
    sparse = hwcomp.compile(model, host, tmp_path / "sparse", example_inputs=(x,))
    (summary,) = sparse.manifest["compression"]["passes"]
    assert summary["name"] == "DenseToBSR" and summary["report"]["n_sparse"] >= 1
    assert sparse.fidelity["max_abs_err"] < 1e-4 and sparse.fidelity["min_cosine"] > 0.99999
