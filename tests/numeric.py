"""Numeric assertions shared by the tests."""

from __future__ import annotations

import numpy as np


def assert_close_to_scale(out: np.ndarray, ref: np.ndarray, rel_tol: float) -> None:
    """``max |out - ref| <= rel_tol * max |ref|``: error measured against the output's scale, so
    outputs near zero do not need an absolute floor."""
    assert out.shape == ref.shape
    scale = float(np.abs(ref).max())
    assert scale > 0
    err = float(np.abs(out.astype(np.float64) - ref).max())
    assert err <= rel_tol * scale, f"max abs err {err:.3g} vs output scale {scale:.3g}"
