"""Structured widths in the policy: unit choice and re-fit, compile = simulation, the search's group items."""

import numpy as np
import pytest
import torch

from hwcomp.compress.block_refit import input_gram
from hwcomp.policy import LayerProfile, Option, OptionCost, search
from hwcomp.policy.layer_costs import simulate_error
from hwcomp.policy.optimize import OptimizeOptions, compile_policy, measure, optimize
from hwcomp.policy.policy_io import load_policy, policy_table, save_policy
from hwcomp.policy.widths import WidthGroup, check_widths, kept_count, merge_groups, narrow_, width_groups


def _mlp(dead: int = 0, seed: int = 0, d: int = 64, hidden: int = 256):
    """d → hidden → d with ReLU; the last ``dead`` hidden units never fire (bias −100)."""
    torch.manual_seed(seed)
    m = torch.nn.Sequential(torch.nn.Linear(d, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, d)).eval()
    if dead:
        with torch.no_grad():
            m[0].bias[-dead:] = -100.0
    return m


def _gram(m, x):
    return input_gram(m[2], lambda: m(x))


def test_kept_count_rounds_to_kernel_friendly_widths():
    assert kept_count(1536, 75) == 1152 and kept_count(1536, 50) == 768
    assert kept_count(100, 50) == 64 and kept_count(10, 10) == 10  # rounded up to 16, never above all units


def test_narrowed_simulation_equals_shrunken_model_and_refit_beats_dropping():
    import copy

    m = _mlp()
    x = torch.randn(512, 64)
    gram = _gram(m, x)
    g = WidthGroup("0", "2")
    zeroed, shrunk = copy.deepcopy(m), copy.deepcopy(m)
    narrow_(zeroed, g, 50, gram, shrink=False)
    narrow_(shrunk, g, 50, gram, shrink=True)
    assert shrunk[0].weight.shape == (128, 64) and shrunk[2].weight.shape == (64, 128)
    with torch.no_grad():
        ref, a, b = m(x), zeroed(x), shrunk(x)
    assert torch.allclose(a, b, atol=1e-5)
    # The same units dropped without the least-squares re-fit of the consumer: a larger error.
    kept = (zeroed[2].weight.abs().sum(0) > 0).nonzero().ravel()
    dropped = copy.deepcopy(m)
    with torch.no_grad():
        mask = torch.zeros(256)
        mask[kept] = 1
        dropped[2].weight.mul_(mask)
        err_drop = (dropped(x) - ref).pow(2).mean().item()
    err_refit = (a - ref).pow(2).mean().item()
    assert err_refit < 0.7 * err_drop, (err_refit, err_drop)


def test_dead_units_are_the_ones_removed():
    m = _mlp(dead=128)
    x = torch.randn(256, 64)
    narrow_(m, WidthGroup("0", "2"), 50, _gram(m, x), shrink=True)
    assert (m[0].bias > -50).all()  # every kept unit is a live one
    with torch.no_grad():
        assert torch.allclose(m(x), _mlp(dead=128)(x), atol=1e-4)


def test_groups_found_in_bert_ffns_and_sequentials():
    import transformers

    cfg = transformers.BertConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128)
    bert = transformers.BertModel(cfg, add_pooling_layer=False)
    groups = width_groups(bert)
    assert [(g.producer, g.consumer) for g in groups] == [
        (f"encoder.layer.{i}.intermediate.dense", f"encoder.layer.{i}.output.dense") for i in range(2)]
    assert width_groups(_mlp()) == [WidthGroup("0", "2")]
    assert width_groups(_mlp(), layers=["0"]) == []  # both ends must be among the profiled layers


def test_width_needs_a_full_width_dense_or_int8_consumer():
    m = _mlp()
    with pytest.raises(ValueError, match="consumer 2 must be fp32 or int8"):
        check_widths(m, {"0": Option("dense", width=50), "2": Option("sparse", 0.9, (8, 1))})
    with pytest.raises(ValueError, match="cannot take a width"):
        check_widths(m, {"2": Option("int8", width=50)})
    with pytest.raises(ValueError, match="dense or int8"):
        Option("sparse", 0.9, (8, 1), width=50)


@pytest.mark.parametrize("kind, tol", [("dense", 1e-4), ("int8", 5e-3)])
def test_width_policy_compiles_to_the_simulated_model(tmp_path, kind, tol):
    """Compiled with its units removed (smaller weights), the model matches the PyTorch simulation."""
    m = _mlp(seed=1)
    rng = np.random.default_rng(0)
    samples = [[rng.standard_normal((32, 64)).astype("float32")] for _ in range(6)]
    choices = {"0": Option(kind, width=50), "2": Option(kind)}
    art = compile_policy(m, (torch.from_numpy(samples[0][0]),), "host", choices, samples[:4], tmp_path / kind)
    shapes = {tuple(w.shape) for w in art.weights() if w.ndim >= 2}
    assert not any(256 in s for s in shapes), shapes  # 128 units kept, however the kernels pack them
    with torch.no_grad():
        ref = [m(torch.from_numpy(s[0])).numpy() for s in samples[4:]]
    sim = 1 - simulate_error(m, choices, samples[4:], ref, _ranges(m, samples[:4]), fit_samples=samples[:4])
    got = measure(art, m, samples[4:], "width")
    assert abs(got.cosine - sim) < tol, (got.cosine, sim)
    assert sim < 0.9999  # half the units of a random layer: a real loss, so the comparison means something


def _ranges(m, samples):
    from hwcomp.policy.layers import find_linear_layers
    from hwcomp.policy.simulate import activation_ranges

    return activation_ranges(m, samples, find_linear_layers(m, (torch.from_numpy(samples[0][0]),)))


def _profile(name, ms, err_int8):
    return LayerProfile(name, (32, 64, 64), [OptionCost(Option("dense"), ms, 0.0), OptionCost(Option("int8"), ms * 0.9,
                                                                                           err_int8)])


def test_merged_group_is_one_item_and_the_search_takes_a_harmless_width(tmp_path):
    profiles = [_profile("0", 1.0, 1e-3), _profile("2", 1.0, 1e-3), _profile("3", 1.0, 1e-3)]
    width = {"0": [OptionCost((Option("dense", width=50), Option("dense")), 1.0, 1e-5),
                   OptionCost((Option("int8", width=50), Option("int8")), 0.8, 5e-3)]}
    merged = merge_groups(profiles, [WidthGroup("0", "2")], width, scale=lambda kind: 1.2 if kind == "int8" else 1.0)
    assert [p.name for p in merged] == ["0 + 2", "3"] and len(merged[0].costs) == 2 * 2 + 2
    assert merged[0].cost_of({"0": Option("int8", width=50), "2": Option("int8")}).latency_ms == pytest.approx(0.96)
    assert merged[0].dense().latency_ms == 2.0
    pol = search(merged, fidelity_target=1 - 1e-4)
    assert pol.choices == {"0": Option("dense", width=50), "2": Option("dense"), "3": Option("dense")}
    assert pol.predicted_latency_ms == pytest.approx(2.0 - 1.0 + 1.0)
    assert "fp32 w50% + fp32" in policy_table(pol, merged)
    save_policy(pol, tmp_path / "p.json", "host", merged)
    assert load_policy(tmp_path / "p.json").choices == pol.choices


def test_optimize_removes_dead_units(tmp_path):
    """Half the hidden units never fire: optimize offers width 50 % and takes it (no loss, less work)."""
    # large enough that half the work is ~0.3 ms saved: at 64 → 256 → 64 both ran in microseconds
    # and a loaded host picked either
    m = _mlp(dead=512, seed=2, d=256, hidden=1024)
    rng = np.random.default_rng(0)
    samples = [[rng.standard_normal((64, 256)).astype("float32")] for _ in range(6)]
    res = optimize(m, (torch.from_numpy(samples[0][0]),), "host", samples,
                   OptimizeOptions(fidelity_target=0.9999, out_dir=tmp_path, sparsities=(0.9,), int8=False,
                                   widths=(50,), baselines=False), log=lambda s: None)
    # width 50 loses nothing; it is taken unless the measured profile says full width is faster
    # (a timing question for bench/: a loaded host can measure anything)
    prof = next(p for p in res.profiles if p.members == ("0", "2"))
    half = next(c for c in prof.costs if prof.choices_of(c)["0"] == Option("dense", width=50)
                and prof.choices_of(c)["2"] == Option("dense"))
    assert half.error < 1e-6
    assert prof.cost_of(res.policy.choices).latency_ms <= half.latency_ms
    assert res.policy.choices["2"] == Option("dense")
    assert res.chosen.cosine > 0.9999
    assert any(p.members == ("0", "2") for p in res.profiles)
