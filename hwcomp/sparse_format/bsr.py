"""Block-sparse row (BSR) weights in NumPy: packing, block magnitude pruning, reference product.

Target-agnostic. A weight is ``W[N, K]`` (output rows × input columns, the torch ``Linear`` layout);
a block ``(r, c)`` covers ``r`` output rows × ``c`` input columns. ``N`` and ``K`` are padded with
zeros to block multiples, so every shape can be packed. The kernels compute ``y = x @ W.T``.

Packed layout (what the per-target kernels read):

* ``data[nnzb, c, r]``: the nonzero blocks, block-transposed so the ``r`` output rows of one
  input column are contiguous (one vector load on a CPU, one coalesced load on a GPU);
* ``indices[nnzb]``: the block column of each block (int32), sorted within a block row;
* ``indptr[N_pad / r + 1]``: block row ``i`` owns blocks ``indptr[i]:indptr[i + 1]``.
"""

from __future__ import annotations

import dataclasses

import numpy as np

Block = tuple[int, int]


@dataclasses.dataclass(frozen=True)
class BSRMatrix:
    """A ``[N, K]`` weight in BSR form, ``data`` in kernel layout ``[nnzb, c, r]``."""

    data: np.ndarray
    indices: np.ndarray
    indptr: np.ndarray
    shape: tuple[int, int]
    block: Block

    @property
    def nnzb(self) -> int:
        return int(self.indices.shape[0])

    @property
    def block_rows(self) -> int:
        return int(self.indptr.shape[0]) - 1

    @property
    def block_cols(self) -> int:
        return -(-self.shape[1] // self.block[1])

    @property
    def density(self) -> float:
        """Fraction of blocks stored (1 - block sparsity)."""
        total = self.block_rows * self.block_cols
        return self.nnzb / total if total else 0.0

    def to_dense(self) -> np.ndarray:
        """The ``[N, K]`` weight (padding dropped)."""
        r, c = self.block
        n, k = self.shape
        out = np.zeros((self.block_rows, r, self.block_cols, c), dtype=self.data.dtype)
        rows = np.repeat(np.arange(self.block_rows), np.diff(self.indptr))
        out[rows, :, self.indices, :] = self.data.transpose(0, 2, 1)
        return out.reshape(self.block_rows * r, self.block_cols * c)[:n, :k]

    def to_scipy(self):
        """A ``scipy.sparse.bsr_matrix`` of the padded weight (scipy's ``[nnzb, r, c]`` layout)."""
        import scipy.sparse as sp

        r, c = self.block
        padded = (self.block_rows * r, self.block_cols * c)
        return sp.bsr_matrix((self.data.transpose(0, 2, 1), self.indices, self.indptr), shape=padded)


def _padded_blocks(w: np.ndarray, block: Block) -> np.ndarray:
    """``w[N, K]`` zero-padded and viewed as ``[N/r, r, K/c, c]``."""
    r, c = block
    n, k = w.shape
    np_, kp = -(-n // r) * r, -(-k // c) * c
    if (np_, kp) != (n, k):
        w = np.pad(w, ((0, np_ - n), (0, kp - k)))
    return w.reshape(np_ // r, r, kp // c, c)


def block_mask(w: np.ndarray, block: Block, tol: float = 0.0) -> np.ndarray:
    """``[N/r, K/c]`` bool: which blocks hold any entry with ``|v| > tol``."""
    return np.abs(_padded_blocks(np.asarray(w), block)).max(axis=(1, 3)) > tol


def block_density(w: np.ndarray, block: Block, tol: float = 0.0) -> float:
    """Fraction of ``block``-shaped tiles of ``w[N, K]`` that hold a nonzero."""
    m = block_mask(w, block, tol)
    return float(m.mean()) if m.size else 0.0


def pack_bsr(w: np.ndarray, block: Block, tol: float = 0.0) -> BSRMatrix:
    """Pack ``w[N, K]`` into BSR with ``block = (r, c)``, keeping blocks with any ``|v| > tol``."""
    w = np.asarray(w)
    if w.ndim != 2:
        raise ValueError(f"pack_bsr expects a 2-D weight, got shape {w.shape}")
    blocks = _padded_blocks(w, block)  # [br, r, bc, c]
    mask = np.abs(blocks).max(axis=(1, 3)) > tol
    rows, cols = np.nonzero(mask)  # row-major: sorted by row, then column
    data = blocks[rows, :, cols, :].transpose(0, 2, 1)  # [nnzb, c, r]
    indptr = np.zeros(mask.shape[0] + 1, dtype=np.int32)
    np.cumsum(mask.sum(axis=1), out=indptr[1:])
    return BSRMatrix(
        data=np.ascontiguousarray(data, dtype=w.dtype),
        indices=cols.astype(np.int32),
        indptr=indptr,
        shape=(int(w.shape[0]), int(w.shape[1])),
        block=(int(block[0]), int(block[1])),
    )


def block_scores(w: np.ndarray, block: Block, norm: str = "l1") -> np.ndarray:
    """Per-block magnitude ``[N/r, K/c]``: ``l1`` (sum |v|) or ``l2`` (Euclidean norm)."""
    a = np.abs(_padded_blocks(np.asarray(w, dtype=np.float64), block))
    if norm == "l1":
        return a.sum(axis=(1, 3))
    if norm == "l2":
        return np.sqrt((a * a).sum(axis=(1, 3)))
    raise ValueError(f"norm must be 'l1' or 'l2', got {norm!r}")


def prune_mask_from_scores(scores: np.ndarray, sparsity: float) -> np.ndarray:
    """Keep-mask zeroing the ``round(sparsity * size)`` lowest scores (ties broken by position)."""
    if not 0.0 <= sparsity <= 1.0:
        raise ValueError(f"sparsity must be in [0, 1], got {sparsity}")
    flat = scores.ravel()
    n_prune = round(sparsity * flat.size)
    keep = np.ones(flat.size, dtype=bool)
    if n_prune:
        keep[np.argsort(flat, kind="stable")[:n_prune]] = False
    return keep.reshape(scores.shape)


def apply_block_mask(w: np.ndarray, keep: np.ndarray, block: Block) -> np.ndarray:
    """``w`` with the blocks where ``keep`` is False set to zero (same shape and dtype as ``w``)."""
    r, c = block
    n, k = w.shape
    full = np.repeat(np.repeat(keep, r, axis=0), c, axis=1)[:n, :k]
    return np.where(full, w, np.zeros((), dtype=w.dtype))


def block_prune(w: np.ndarray, sparsity: float, block: Block = (1, 1), norm: str = "l1") -> np.ndarray:
    """Zero the ``sparsity`` fraction of ``block`` tiles of ``w[N, K]`` with the smallest norm.

    ``block=(1, 1)`` is unstructured magnitude pruning. Already-zero blocks score lowest, so pruning
    an already-pruned weight to the same sparsity returns it unchanged.
    """
    w = np.asarray(w)
    keep = prune_mask_from_scores(block_scores(w, block, norm), sparsity)
    return apply_block_mask(w, keep, block)


def bsr_matmul_reference(x: np.ndarray, w: BSRMatrix, bias: np.ndarray | None = None) -> np.ndarray:
    """``x[..., K] @ W.T (+ bias)`` with SciPy, for checking kernels."""
    n, k = w.shape
    lead = x.shape[:-1]
    x2 = np.asarray(x, dtype=np.float64).reshape(-1, k)
    kp = w.block_cols * w.block[1]
    if kp != k:
        x2 = np.pad(x2, ((0, 0), (0, kp - k)))
    y = np.asarray((w.to_scipy().astype(np.float64) @ x2.T).T)[:, :n]
    if bias is not None:
        y = y + bias
    return y.astype(x.dtype).reshape(*lead, n)


def random_block_sparse(
    n: int, k: int, block: Block, density: float, rng: np.random.Generator, dtype: str = "float32"
) -> np.ndarray:
    """A random ``[N, K]`` weight whose ``block`` tiles are nonzero with probability ``density``."""
    w = rng.standard_normal((n, k)).astype(dtype)
    keep = rng.random((-(-n // block[0]), -(-k // block[1]))) < density
    return apply_block_mask(w, keep, block)
