"""Coefficients of the vectorizable erf approximation the generated kernels use (GELU).

``erf(x) ≈ x · P(x²) / Q(x²)`` on ``x`` clamped to ``[-4, 4]`` (Eigen's ``generic_fast_erf_float``
rational approximation; max error about 4e-7 against scipy). It vectorizes, where a call to libm's
scalar ``erff`` would not. Both tuples are in ascending powers of ``x²`` (``P[0]`` is the constant
term); evaluate them with Horner's rule from the last coefficient.
"""

ERF_P = (-1.60960333262415e-02, -2.95459980854025e-03, -7.34990630326855e-04, -5.69250639462346e-05,
         -2.10102402082508e-06, 2.77068142495902e-08, -2.72614225801306e-10)
ERF_Q = (-1.42647390514189e-02, -7.37332916720468e-03, -1.68282697438203e-03, -2.13374055278905e-04,
         -1.45660718464996e-05)
ERF_CLAMP = 4.0
