"""BSR packing/pruning helpers (``hwcomp.sparse_format.bsr``)."""

from __future__ import annotations

import numpy as np
import pytest

from hwcomp.sparse_format.bsr import (
    block_density,
    block_prune,
    bsr_matmul_reference,
    pack_bsr,
    random_block_sparse,
)


def _rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


# ---- NumPy helpers ---------------------------------------------------------------------------


@pytest.mark.parametrize("shape,block", [((37, 29), (8, 1)), ((64, 48), (16, 1)), ((10, 9), (4, 3)), ((5, 7), (1, 1))])
def test_pack_roundtrip_and_scipy(shape, block):
    w = random_block_sparse(*shape, block, 0.3, _rng())
    bsr = pack_bsr(w, block)
    np.testing.assert_array_equal(bsr.to_dense(), w)
    r, c = block
    padded = bsr.to_scipy().toarray()
    assert padded.shape == (-(-shape[0] // r) * r, -(-shape[1] // c) * c)
    np.testing.assert_array_equal(padded[: shape[0], : shape[1]], w)
    assert bsr.data.shape == (bsr.nnzb, c, r) and bsr.indices.dtype == np.int32 and bsr.indptr.dtype == np.int32
    assert bsr.density == pytest.approx(block_density(w, block))
    x = _rng(1).standard_normal((3, shape[1])).astype("float32")
    np.testing.assert_allclose(bsr_matmul_reference(x, bsr), x @ w.T, rtol=1e-5, atol=1e-5)


def test_block_prune_sparsity_and_idempotence():
    w = _rng().standard_normal((64, 96)).astype("float32")
    for block in [(1, 1), (8, 1), (16, 1), (4, 4)]:
        p = block_prune(w, 0.75, block)
        assert 1 - block_density(p, block) == pytest.approx(0.75, abs=1 / p.size * block[0] * block[1] + 1e-9)
        np.testing.assert_array_equal(block_prune(p, 0.75, block), p)
        kept = p != 0
        assert np.abs(w[kept]).mean() > np.abs(w[~kept]).mean()  # the large blocks survive
    l2 = block_prune(w, 0.5, (8, 1), norm="l2")
    assert 1 - block_density(l2, (8, 1)) == pytest.approx(0.5)
