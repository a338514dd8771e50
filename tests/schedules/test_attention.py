"""The fused CPU attention kernel (``schedules/cpu/attention.py``) against NumPy's
``softmax(epilogue(q @ kt)) @ v``: ragged column counts (a tail panel and a scalar softmax tail),
rows not divisible by the row tile, broadcast biases, a scale, AVX2- and AVX-512-shaped tiles.

Tolerance: max |out - ref| <= 2e-5 with |v| ~ 1 (float32 sums over up to 1500 terms).
"""

import numpy as np
import pytest
import tvm
from hwcomp.schedules.cpu.attention import AttentionSpec, Bias, attention_kernel


def _ref(q, kt, v, steps=()):
    """``steps``: ("mul", c) or ("add", (bias, frame)), the bias added in the scores' 4-D frame."""
    s = q.astype(np.float64) @ kt
    for kind, arg in steps:
        s = s * arg if kind == "mul" else (s.reshape(arg[1]) + arg[0]).reshape(s.shape)
    s = s - s.max(-1, keepdims=True)
    e = np.exp(s)
    return (e / e.sum(-1, keepdims=True)) @ v


def _run(spec, q, kt, v, biases, vector_bits, registers, host):
    func = attention_kernel(spec, vector_bits, registers)
    lib = tvm.compile(tvm.IRModule({"main": func}), target=host.tvm_target())
    out = tvm.runtime.tensor(np.zeros((spec.groups, spec.rows, spec.out_depth), np.float32))
    lib["main"](*(tvm.runtime.tensor(a) for a in (q, kt, v, *biases)), out)
    return out.numpy()


@pytest.mark.parametrize("fast", [True, False])
@pytest.mark.parametrize("bits,regs", [(256, 16), (512, 32)])
@pytest.mark.parametrize("G,L,Lk,D,Dv", [(2, 7, 13, 16, 16), (3, 33, 50, 32, 24), (1, 197, 197, 64, 64),
                                         (1, 9, 1500, 64, 80), (4, 49, 49, 32, 32), (2, 16, 16, 32, 32)])
def test_matches_numpy(host, G, L, Lk, D, Dv, bits, regs, fast):
    if bits > host.vector_bits:
        pytest.skip(f"host vectors are {host.vector_bits} bits")
    rng = np.random.default_rng(L * Lk)
    q = rng.standard_normal((G, L, D), dtype=np.float32)
    kt = rng.standard_normal((G, D, Lk), dtype=np.float32)
    v = rng.standard_normal((G, Lk, Dv), dtype=np.float32)
    out = _run(AttentionSpec(G, L, Lk, D, Dv, fast_exp=fast), q, kt, v, [], bits, regs, host)
    np.testing.assert_allclose(out, _ref(q, kt, v), atol=2e-5)


def test_scale_and_broadcast_biases(host):
    """Two biases in a 4-D frame ``[B=2, H=3, L, Lk]``: a per-head relative bias ``[3, L, Lk]``
    and a per-batch key mask ``[2, 1, 1, Lk]`` with large negatives, after a scale of 0.125."""
    B, H, L, Lk, D = 2, 3, 11, 37, 16
    rng = np.random.default_rng(0)
    q = rng.standard_normal((B * H, L, D), dtype=np.float32)
    kt = rng.standard_normal((B * H, D, Lk), dtype=np.float32)
    v = rng.standard_normal((B * H, Lk, D), dtype=np.float32)
    rel = rng.standard_normal((H, L, Lk), dtype=np.float32)
    mask = np.zeros((B, 1, 1, Lk), np.float32)
    mask[1, ..., -5:] = -1e9
    frame = (B, H, L, Lk)
    spec = AttentionSpec(B * H, L, Lk, D, D, (("mul", 0.125), ("add", 0), ("add", 1)),
                         (Bias(rel.shape, frame), Bias(mask.shape, frame)))
    out = _run(spec, q, kt, v, [rel, mask], host.vector_bits, host.vector_registers, host)
    ref = _ref(q, kt, v, [("mul", 0.125), ("add", (rel, frame)), ("add", (mask, frame))])
    np.testing.assert_allclose(out, ref, atol=2e-5)


def test_safe_rows_fully_masked_give_zero(host):
    G, L, Lk, D = 1, 5, 20, 16
    rng = np.random.default_rng(1)
    q, kt, v = (rng.standard_normal(s, dtype=np.float32) for s in ((G, L, D), (G, D, Lk), (G, Lk, D)))
    mask = np.zeros((L, Lk), np.float32)
    mask[2] = -np.inf
    spec = AttentionSpec(G, L, Lk, D, D, (("add", 0),), (Bias(mask.shape, (G, L, Lk)),), safe=True)
    out = _run(spec, q, kt, v, [mask], host.vector_bits, host.vector_registers, host)
    assert np.all(out[0, 2] == 0)
    keep = [0, 1, 3, 4]
    ref = _ref(q[:, keep], kt, v)
    np.testing.assert_allclose(out[:, keep], ref, atol=2e-5)


def test_bias_must_broadcast():
    with pytest.raises(ValueError, match="does not broadcast"):
        AttentionSpec(6, 4, 5, 8, 8, (("add", 0),), (Bias((4, 4), (2, 3, 4, 5)),))


def test_tile_rows():
    """12 query rows per task with 32 registers, unless the last task would be more than a tenth
    empty (Swin's 49-token windows: 10 rows; 16 or 64 tokens: 8); 6 with 16 registers."""
    from hwcomp.schedules.cpu.attention import tile_rows

    assert [tile_rows(512, 32, n) for n in (49, 16, 64, 128, 197, 1500, 7)] == [10, 8, 8, 12, 12, 12, 7]
    assert [tile_rows(256, 16, n) for n in (49, 16, 128)] == [6, 6, 6]
