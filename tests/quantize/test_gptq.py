"""GPTQ weight rounding (hwcomp/quantize/gptq.py): the pieces against NumPy/PyTorch, then the
quantizer end to end on AVX2's 7-bit conv weights, where nearest rounding costs the most.

Tolerances: im2col products vs torch's conv2d 1e-4 (float32); Gram matrices rtol 1e-4; output
error ``||X (W - Q)^T||^2`` of GPTQ at most 0.8x nearest rounding's on correlated inputs (measured
0.5-0.6x); the end-to-end model's cosine error ``1 - cos`` at most 0.8x nearest rounding's.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hwcomp.errors import HwcompError
from hwcomp.models import SmallCNN, randomize_batchnorm
from hwcomp.quantize import QuantConfig
from hwcomp.quantize.gptq import InputMoments, conv_patches, gptq_codes
from hwcomp.quantize.pipeline import Int8Quantizer
from hwcomp.quantize.qmath import cosine
from hwcomp.target import get_target

from .test_pipeline import (  # the suite's quantize + compile + fp32 reference
    _compile,
    _held_out,
)


@pytest.mark.parametrize("stride,padding,dilation", [((1, 1), (1, 1, 1, 1), (1, 1)), ((2, 2), (0, 1, 2, 0), (1, 1)),
                                                     ((1, 2), (2, 2, 2, 2), (2, 1))])
def test_conv_patches_times_weights_is_the_convolution(stride, padding, dilation):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 5, 9, 11)).astype(np.float32)
    w = rng.standard_normal((7, 5, 3, 3)).astype(np.float32)
    cols = conv_patches(x, (3, 3), stride, padding, dilation)
    pt, pl, pb, pr = padding
    xp = torch.nn.functional.pad(torch.from_numpy(x), (pl, pr, pt, pb))
    ref = torch.nn.functional.conv2d(xp, torch.from_numpy(w), stride=stride, dilation=dilation).numpy()
    out = (cols @ w.reshape(7, -1).T).reshape(2, ref.shape[2], ref.shape[3], 7).transpose(0, 3, 1, 2)
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-4)


def test_input_moments_switch_from_rows_to_gram():
    rng = np.random.default_rng(1)
    parts = [rng.standard_normal((n, 16)).astype(np.float32) for n in (5, 7, 30, 3)]
    m = InputMoments(16)
    m.add(parts[0])
    m.add(parts[1])  # 12 rows <= 16 columns: still rows
    np.testing.assert_allclose(m.gram(), np.concatenate(parts[:2]).T @ np.concatenate(parts[:2]), rtol=1e-4, atol=1e-4)
    m.add(parts[2])
    m.add(parts[3])
    x = np.concatenate(parts).astype(np.float64)
    assert m.n_rows == 45
    np.testing.assert_allclose(m.gram(), x.T @ x, rtol=1e-4, atol=1e-3)


def _correlated(rng, rows, d):
    x = rng.standard_normal((rows, d)).astype(np.float32)
    return x + 0.9 * np.roll(x, 1, axis=1) + 0.5 * x[:, :1]  # neighbours and a shared component


def _nearest(w, scale, qmax):
    return np.clip(np.round(w / scale[:, None]), -qmax, qmax)


def _output_error(w, codes, scale, h):
    e = w - codes * scale[:, None]
    return float(np.einsum("od,de,oe->", e, h, e))


@pytest.mark.parametrize("bits", [7, 8])
def test_gptq_lowers_the_output_error_and_keeps_zeros(bits):
    rng = np.random.default_rng(2)
    d, o, qmax = 96, 24, (1 << (bits - 1)) - 1
    x = _correlated(rng, 400, d)
    h = x.T @ x
    w = rng.standard_normal((o, d))
    w[:, 5::7] = 0.0  # pruned weights
    scale = np.abs(w).max(1) / qmax
    q = gptq_codes(w, scale, qmax, h)
    assert q.dtype == np.int8 and q.shape == (o, d)
    assert np.abs(q.astype(int)).max() <= qmax
    assert (q[:, 5::7] == 0).all()
    ratio = _output_error(w, q, scale, h) / _output_error(w, _nearest(w, scale, qmax), scale, h)
    assert ratio <= 0.8, ratio


def test_gptq_with_uncorrelated_inputs_is_nearest_rounding():
    """H diagonal: no column's error can be compensated by another, so the codes are nearest's."""
    rng = np.random.default_rng(3)
    w = rng.standard_normal((8, 20))
    scale = np.abs(w).max(1) / 127
    h = np.diag(rng.uniform(0.5, 2.0, 20)).astype(np.float32)
    h[4, 4] = 0.0  # an input the data never exercised
    np.testing.assert_array_equal(gptq_codes(w, scale, 127, h), _nearest(w, scale, 127))


def _quantize_cnn(target, rounding, tmp_path):
    torch.manual_seed(0)
    model = randomize_batchnorm(SmallCNN(width=16)).eval()
    rng = np.random.default_rng(0)
    calib = [[rng.standard_normal((1, 3, 32, 32)).astype(np.float32)] for _ in range(8)]
    art, q, _ = _compile(model, (torch.randn(1, 3, 32, 32),), calib, tmp_path, QuantConfig(weight_rounding=rounding),
                         name=rounding, target=target)
    held = [np.random.default_rng(9 + i).standard_normal((1, 3, 32, 32)).astype(np.float32) for i in range(3)]
    err = float(np.mean([1.0 - cosine(art.run([x])[0], _held_out(model, [x])) for x in held]))
    return err, q


def test_gptq_beats_nearest_on_avx2_seven_bit_conv_weights(tmp_path):
    if not get_target("x86-avx2").runs_here():
        pytest.skip("this CPU cannot run the x86-avx2 target")
    err_g, q = _quantize_cnn("x86-avx2", "gptq", tmp_path)
    err_n, _ = _quantize_cnn("x86-avx2", "nearest", tmp_path)
    rows = [r for r in q.realizer.report if r["status"] == "int8"]
    convs = [r for r in rows if r["kind"] == "conv2d"]
    assert convs and all(r["weight_rounding"] == "gptq" for r in convs)
    assert any(r["weight_bits"] == 7 for r in convs)  # the saturating AVX2 step's narrow weights
    assert q.summary()["config"]["weight_rounding"] == "gptq"
    assert err_g <= 0.8 * err_n, (err_g, err_n)


def test_weight_rounding_is_validated():
    with pytest.raises(HwcompError, match="weight_rounding"):
        QuantConfig(weight_rounding="stochastic")


def test_dense_layers_are_compensated_only_with_enough_calibration_rows(tmp_path):
    """8 samples of 64 rows: the 64-wide layer has 8 rows per column (GPTQ), the 128-wide ones 4
    (too few to estimate their moments: nearest)."""
    from hwcomp.models import MLP

    torch.manual_seed(0)
    model = MLP(64, 128, 10).eval()
    rng = np.random.default_rng(0)
    calib = [[rng.standard_normal((64, 64)).astype(np.float32)] for _ in range(8)]
    art, q, _ = _compile(model, (torch.randn(64, 64),), calib, tmp_path, name="mlp")
    rounding = {r["names"][-1]: r["weight_rounding"] for r in q.realizer.report if r["status"] == "int8"}
    assert rounding == {"net_0": "gptq", "net_2": "nearest", "net_4": "nearest"}, rounding
    x = rng.standard_normal((64, 64)).astype(np.float32)
    assert cosine(art.run([x])[0], _held_out(model, [x])) >= 0.999


def test_broken_moments_fall_back_to_nearest_rounding():
    """Moments with a NaN (a calibration input that overflowed) give no GPTQ codes, not a crash."""
    from hwcomp.quantize.gptq import WeightRounding

    r = WeightRounding()
    r.watch("t0", "dense0", 4, lambda a: a.reshape(-1, 4))
    x = np.ones((8, 4), np.float32)
    x[0, 0] = np.nan
    r.observe("t0", x)
    w = np.random.default_rng(0).standard_normal((3, 4))
    assert r.codes("dense0", w, np.abs(w).max(1) / 127, 8) is None
    assert r.codes("unwatched", w, np.abs(w).max(1) / 127, 8) is None


def test_calibration_moments_are_the_layers_real_inputs():
    """The moments GPTQ uses are the Gram matrices of each conv's true im2col input, including the
    conv behind a max-pool (rebuilt from the observed pre-pool tensor) — checked against PyTorch's
    own activations of the same model."""
    from hwcomp.build import bind_weights
    from hwcomp.frontend import load_model

    torch.manual_seed(0)
    model = randomize_batchnorm(SmallCNN(width=8)).eval()
    rng = np.random.default_rng(0)
    calib = [rng.standard_normal((1, 3, 16, 16)).astype(np.float32) for _ in range(3)]
    imported = load_model(model, (torch.from_numpy(calib[0]),))
    q = Int8Quantizer(get_target("host"), QuantConfig(), [[c] for c in calib], params=imported.params,
                      progress=False)
    q.calibrate_pass(q.annotate_pass(bind_weights(imported.mod, imported.params)))
    convs = [m for m in model.features if isinstance(m, torch.nn.Conv2d)]
    seen: dict = {}
    hooks = [c.register_forward_pre_hook(lambda m, a, i=i: seen.setdefault(i, []).append(a[0])) for i, c in enumerate(convs)]
    with torch.no_grad():
        for c in calib:
            model(torch.from_numpy(c))
    for h in hooks:
        h.remove()
    assert sorted(q.rounding.moments) == ["conv0", "conv1", "conv2"]  # conv1 reads the max-pooled tensor
    for i, conv in enumerate(convs):
        x = np.concatenate([torch.nn.functional.unfold(a, conv.kernel_size, conv.dilation, conv.padding,
                                                       conv.stride)[0].T.numpy() for a in seen[i]])
        ref = x.astype(np.float64).T @ x
        np.testing.assert_allclose(q.rounding.moments[f"conv{i}"].gram(), ref, rtol=2e-3, atol=2e-3 * np.abs(ref).max())
