"""Sparse weight formats in NumPy, target-agnostic: ``bsr`` (block-sparse rows: packing, block
magnitude pruning, the reference product) — what the per-target BSR kernels in ``schedules/`` read."""
