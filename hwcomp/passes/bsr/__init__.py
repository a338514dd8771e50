"""The pieces of :class:`~hwcomp.passes.dense_to_bsr.DenseToBSR`: ``match`` (eligible constant-weight
matmuls / convs), ``decide`` (density, threshold, injected measurement, report), ``rewrite`` (the
IRModule rewrite)."""
