"""The policy search on planted tables: exact optimum, constraints honoured, sensitive layer kept."""

import itertools

import pytest

from hwcomp.policy import LayerProfile, Option, OptionCost, pareto_front, search
from hwcomp.policy.policy_io import load_policy, save_policy

DENSE, INT8, SP90 = Option("dense"), Option("int8"), Option("sparse", 0.9, (8, 1))


def _layer(name, dense_ms, int8=(0.5, 1e-3), sp=(0.3, 4e-3)):
    return LayerProfile(name, (128, 768, 768), [OptionCost(DENSE, dense_ms, 0.0),
                                                 OptionCost(INT8, dense_ms * int8[0], int8[1]),
                                                 OptionCost(SP90, dense_ms * sp[0], sp[1])])


def _brute(profiles, max_error):
    best = None
    for combo in itertools.product(*[p.costs for p in profiles]):
        err = sum(c.error for c in combo)
        lat = sum(c.latency_ms for c in combo)
        if err <= max_error + 1e-12 and (best is None or lat < best):
            best = lat
    return best


def test_sensitive_layer_stays_in_high_precision():
    profiles = [_layer(f"l{i}", 1.0) for i in range(5)]
    profiles[2] = _layer("l2", 1.0, int8=(0.5, 0.05), sp=(0.3, 0.2))  # planted: compressing it hurts
    pol = search(profiles, fidelity_target=0.98)
    assert pol.choices["l2"] == DENSE
    assert all(pol.choices[f"l{i}"] == SP90 for i in (0, 1, 3, 4))
    assert pol.predicted_cosine >= 0.98


@pytest.mark.parametrize("target", [0.999, 0.995, 0.99, 0.98])
def test_dp_matches_brute_force(target):
    profiles = [_layer("a", 2.0), _layer("b", 1.0, int8=(0.6, 2e-3), sp=(0.2, 6e-3)),
                _layer("c", 3.0, int8=(0.4, 5e-4), sp=(0.35, 3e-3)), _layer("d", 0.5)]
    pol = search(profiles, fidelity_target=target, buckets=4000)
    assert pol.predicted_error <= 1 - target + 1e-9
    assert pol.predicted_latency_ms == pytest.approx(_brute(profiles, 1 - target), rel=0.02)


def test_latency_budget_is_met_and_front_is_monotone():
    profiles = [_layer(f"l{i}", 1.0 + i) for i in range(6)]
    front = pareto_front(profiles, fixed_ms=2.0)
    lats = [p.predicted_latency_ms for p in front]
    errs = [p.predicted_error for p in front]
    assert lats == sorted(lats, reverse=True) and errs == sorted(errs)
    pol = search(profiles, latency_budget_ms=12.0, fixed_ms=2.0)
    assert pol.predicted_latency_ms <= 12.0
    # the most faithful policy within budget: nothing on the front within budget has less error
    assert all(p.predicted_error >= pol.predicted_error - 1e-12 for p in front if p.predicted_latency_ms <= 12.0)


def test_policy_file_round_trips(tmp_path):
    profiles = [_layer(f"l{i}", 1.0) for i in range(3)]
    pol = search(profiles, fidelity_target=0.99)
    pol.measured_latency_ms, pol.measured_cosine = 1.5, 0.992
    save_policy(pol, tmp_path / "p.json", "host", profiles)
    again = load_policy(tmp_path / "p.json")
    assert again.choices == pol.choices and again.measured_cosine == 0.992
    assert "predicted" in (tmp_path / "p.txt").read_text()


def test_latency_model_recovers_fixed_part_and_per_kind_scales():
    from hwcomp.policy.latency_model import fit_latency_model, lone_sum

    sp50 = Option("sparse", 0.5, (8, 1))
    profiles = [LayerProfile(f"l{i}", (128, 64, 64), [
        OptionCost(DENSE, 1.0 + i, 0.0), OptionCost(INT8, 0.9 + i, 1e-3), OptionCost(sp50, 0.6 + 0.5 * i, 2e-3),
        OptionCost(SP90, 0.2 + 0.1 * i, 5e-3)]) for i in range(4)]
    fixed, scale = 7.0, {"dense": 1.6, "int8": 1.2, "sparse": 1.3}
    measured = {o: fixed + scale[o.kind] * lone_sum(profiles, o) for o in (DENSE, INT8, sp50, SP90)}
    fit = fit_latency_model(profiles, measured)
    assert fit.fixed_ms == pytest.approx(fixed)
    for kind in scale:
        assert fit.scale[kind] == pytest.approx(scale[kind])
    assert fit.scale["low_rank"] == fit.scale["dense"]  # two fp32 dense layers in the model
    scaled = fit.apply(profiles)
    # a mixed policy predicted with the fitted model: fixed + Σ scale[kind] · lone latency
    mixed = {"l0": DENSE, "l1": INT8, "l2": sp50, "l3": SP90}
    got = fit.fixed_ms + sum(next(c.latency_ms for c in p.costs if c.option == mixed[p.name]) for p in scaled)
    want = fixed + sum(scale[mixed[p.name].kind] * next(c.latency_ms for c in p.costs if c.option == mixed[p.name])
                       for p in profiles)
    assert got == pytest.approx(want)
