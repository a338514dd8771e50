"""Output-fidelity metrics shared by the compiler, the policy search and the runtime.

Imports only NumPy, so runtime-only code (``hwcomp.artifact``) can use it without the compiler.
"""

from __future__ import annotations

import numpy as np


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine similarity of ``a`` and ``b`` flattened, in float64.

    A zero vector has cosine 1 with another zero vector and 0 with anything else."""
    a = np.asarray(a, np.float64).ravel()
    b = np.asarray(b, np.float64).ravel()
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    if na == 0 or nb == 0:
        return 1.0 if na == nb else 0.0
    return float(a @ b / (na * nb))


def cosine_eps(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine similarity with ``1e-30`` added to the norm product instead of special-casing zero
    norms: a zero vector has cosine 0 with anything, another zero vector included. (The policy
    search's error model, ``1 - cosine``, was calibrated with this form.)"""
    a = np.asarray(a, np.float64).ravel()
    b = np.asarray(b, np.float64).ravel()
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-30))


def max_abs_error(a: np.ndarray, b: np.ndarray) -> float:
    """``max |a - b|`` in float64; 0 for empty arrays."""
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b))) if a.size else 0.0
