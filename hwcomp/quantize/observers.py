"""Activation-range observers: min-max, percentile, KL-divergence (entropy) and MSE.

Every observer sees the float tensors one batch at a time (``update``) and answers ``range()``,
the ``(lo, hi)`` the quantizer maps onto the integer codes. The histogram observers keep a signed
histogram of ``2 * num_bins`` bins over ``[-amax, amax]`` (re-binned when a batch has a larger
``|x|``) and choose a clipping threshold ``T`` on ``|x|``:

* ``percentile``: ``T`` = the ``p``-th percentile of ``|x|`` (affine: the ``100-p`` and ``p``
  percentiles of ``x``);
* ``entropy``: TensorRT's calibration: for every candidate ``T`` (a bin edge past the first
  ``2^(b-1)`` bins) the reference distribution ``P`` is the ``|x|`` histogram up to ``T`` with the
  clipped tail added to its last bin, ``Q`` is ``P`` merged into ``2^(b-1)`` levels and expanded
  back over ``P``'s non-empty bins; ``T`` minimizes ``KL(P || Q)``;
* ``mse``: ``T`` minimizes the expected squared quantization error (rounding inside ``T``,
  clipping outside) of the histogram's bin centers.

The chosen ``T`` is returned as ``(max(min, -T), min(max, T))``, so a one-sided tensor keeps
its sign. Exact zeros (ReLU outputs, padding) are counted apart and left out of the KL and MSE
searches: they are represented exactly at any threshold, and the spike they make in the first
bin otherwise drags the KL threshold down (a ReLU output with range 4.1 got 1.0, cosine 0.95).
"""

from __future__ import annotations

import numpy as np

from ..errors import HwcompError


class Observer:
    """Base: running min and max of everything seen."""

    def __init__(self, bits: int = 8):
        self.bits = bits
        self.min = np.inf
        self.max = -np.inf
        self.count = 0
        self.ch_min: np.ndarray | None = None  # per channel of the last axis (for smoothing)
        self.ch_max: np.ndarray | None = None

    def update(self, x: np.ndarray) -> None:
        x = np.asarray(x)
        if x.size == 0:
            return
        if not np.all(np.isfinite(x)):
            x = np.where(np.isfinite(x), x, 0).astype(x.dtype)
        self.min = min(self.min, float(x.min()))
        self.max = max(self.max, float(x.max()))
        self.count += x.size
        if x.ndim >= 1:
            flat = x.reshape(-1, x.shape[-1])
            lo, hi = flat.min(axis=0), flat.max(axis=0)
            self.ch_min = lo if self.ch_min is None or self.ch_min.shape != lo.shape else np.minimum(self.ch_min, lo)
            self.ch_max = hi if self.ch_max is None or self.ch_max.shape != hi.shape else np.maximum(self.ch_max, hi)
        self._update(x)

    def _update(self, x: np.ndarray) -> None:
        pass

    def _check(self):
        if self.count == 0:
            raise HwcompError("observer saw no data (empty calibration set?)")

    def range(self) -> tuple[float, float]:
        self._check()
        return self.min, self.max

    @property
    def nonnegative(self) -> bool:
        return self.count > 0 and self.min >= 0.0


class MinMaxObserver(Observer):
    """The full range seen: never clips, sensitive to outliers."""


class HistogramObserver(Observer):
    """Signed histogram of ``2 * num_bins`` bins over ``[-amax, amax]``."""

    def __init__(self, bits: int = 8, num_bins: int = 2048):
        super().__init__(bits)
        self.num_bins = int(num_bins)
        self.amax = 0.0
        self.hist = np.zeros(2 * self.num_bins, np.float64)
        self.zeros = 0  # exact zeros (ReLU outputs, padding): exact at any threshold, left out of KL/MSE

    def _edges(self, amax: float) -> np.ndarray:
        return np.linspace(-amax, amax, 2 * self.num_bins + 1)

    def _update(self, x: np.ndarray) -> None:
        x = x.astype(np.float32, copy=False).ravel()
        self.zeros += int(np.count_nonzero(x == 0))
        amax = float(np.abs(x).max())
        if amax <= 0.0 and self.amax <= 0.0:
            self.hist[self.num_bins] += x.size  # all zeros: the bin just above 0
            return
        if amax > self.amax:
            new_amax = amax
            if self.amax > 0.0 and self.hist.sum() > 0:
                old_edges = self._edges(self.amax)
                centers = 0.5 * (old_edges[:-1] + old_edges[1:])
                self.hist, _ = np.histogram(centers, bins=self._edges(new_amax), weights=self.hist)
            elif self.hist.sum() > 0:  # only zeros so far
                zeros = self.hist.sum()
                self.hist = np.zeros_like(self.hist)
                self.hist[self.num_bins] = zeros
            self.amax = new_amax
        h, _ = np.histogram(x, bins=self._edges(self.amax))
        self.hist += h

    def abs_hist(self, drop_zeros: bool = False) -> tuple[np.ndarray, float]:
        """``|x|`` histogram over ``[0, amax]`` (``num_bins`` bins) and the bin width."""
        n = self.num_bins
        h = self.hist[n:] + self.hist[:n][::-1]
        if drop_zeros and self.zeros:
            h = h.copy()
            h[0] = max(h[0] - self.zeros, 0.0)
        return h, self.amax / n

    def threshold(self) -> float:
        raise NotImplementedError

    def range(self) -> tuple[float, float]:
        self._check()
        if self.amax <= 0.0:
            return 0.0, 0.0
        t = float(self.threshold())
        return max(self.min, -t), min(self.max, t)


class PercentileObserver(HistogramObserver):
    """Clip at the ``percentile``-th percentile of ``|x|`` (affine: of ``x``, both tails)."""

    def __init__(self, bits: int = 8, num_bins: int = 2048, percentile: float = 99.99, affine: bool = False):
        super().__init__(bits, num_bins)
        self.percentile = float(percentile)
        self.affine = affine

    @staticmethod
    def _quantile(hist: np.ndarray, edges: np.ndarray, q: float) -> float:
        cdf = np.cumsum(hist)
        total = cdf[-1]
        target = q * total
        i = int(np.searchsorted(cdf, target, side="left"))
        i = min(i, len(hist) - 1)
        before = cdf[i - 1] if i > 0 else 0.0
        frac = (target - before) / hist[i] if hist[i] > 0 else 1.0
        return float(edges[i] + np.clip(frac, 0.0, 1.0) * (edges[i + 1] - edges[i]))

    def threshold(self) -> float:
        h, w = self.abs_hist()
        return self._quantile(h, np.arange(len(h) + 1) * w, self.percentile / 100.0)

    def range(self) -> tuple[float, float]:
        self._check()
        if not self.affine or self.amax <= 0.0:
            return super().range()
        edges = self._edges(self.amax)
        lo = self._quantile(self.hist, edges, 1.0 - self.percentile / 100.0)
        hi = self._quantile(self.hist, edges, self.percentile / 100.0)
        return max(self.min, lo), min(self.max, hi)


class EntropyObserver(HistogramObserver):
    """TensorRT-style KL-divergence calibration (see the module docstring)."""

    def __init__(self, bits: int = 8, num_bins: int = 2048, max_candidates: int = 256):
        super().__init__(bits, num_bins)
        self.max_candidates = max_candidates

    def threshold(self) -> float:
        hist, width = self.abs_hist(drop_zeros=True)
        levels = 1 << (self.bits - 1)
        n = len(hist)
        if n <= levels:
            return self.amax
        starts = np.arange(levels, n + 1)
        if len(starts) > self.max_candidates:
            starts = np.unique(np.linspace(levels, n, self.max_candidates).round().astype(int))
        best_kl, best_i = np.inf, n
        tail = np.concatenate([np.cumsum(hist[::-1])[::-1], [0.0]])  # tail[i] = sum(hist[i:])
        for i in starts:
            p = hist[:i].copy()
            p[i - 1] += tail[i]
            ref = hist[:i]
            nz = ref > 0
            # merge the i bins into `levels` chunks (the last takes the remainder), as TensorRT
            merged = i // levels
            bounds = np.arange(levels) * merged
            sums = np.add.reduceat(ref, bounds)
            counts = np.add.reduceat(nz.astype(np.float64), bounds)
            chunk = np.minimum(np.arange(i) // merged, levels - 1)
            q = np.where(nz, (sums / np.maximum(counts, 1.0))[chunk], 0.0)
            ps, qs = p.sum(), q.sum()
            if ps <= 0 or qs <= 0:
                continue
            p_n, q_n = p / ps, q / qs
            m = p_n > 0
            # bins where P > 0 but Q == 0 (the clipped-tail bin can be one) get a small epsilon
            q_m = np.where(q_n[m] > 0, q_n[m], 1e-10)
            kl = float(np.sum(p_n[m] * np.log(p_n[m] / q_m)))
            if kl < best_kl:
                best_kl, best_i = kl, i
        return (best_i + 0.5) * width if best_i < n else self.amax


class MSEObserver(HistogramObserver):
    """Threshold minimizing the expected squared error of symmetric quantization on the histogram."""

    def __init__(self, bits: int = 8, num_bins: int = 2048, candidates: int = 256):
        super().__init__(bits, num_bins)
        self.candidates = candidates

    def threshold(self) -> float:
        hist, width = self.abs_hist(drop_zeros=True)
        centers = (np.arange(len(hist)) + 0.5) * width
        qmax = (1 << (self.bits - 1)) - 1
        nz = hist > 0
        c, h = centers[nz], hist[nz]
        ts = np.linspace(self.amax / self.candidates, self.amax, self.candidates)
        best_err, best_t = np.inf, self.amax
        for chunk in np.array_split(ts, max(1, len(ts) // 32)):
            step = chunk[:, None] / qmax
            q = np.minimum(np.round(c[None, :] / step), qmax) * step
            err = ((c[None, :] - q) ** 2 * h[None, :]).sum(axis=1)
            k = int(np.argmin(err))
            if err[k] < best_err:
                best_err, best_t = float(err[k]), float(chunk[k])
        return best_t


def make_observer(method: str, bits: int = 8, num_bins: int = 2048, percentile: float = 99.99,
                  affine: bool = False) -> Observer:
    """The observer for a :class:`~hwcomp.quantize.config.QuantConfig` ``calib_method``."""
    if method == "minmax":
        return MinMaxObserver(bits)
    if method == "percentile":
        return PercentileObserver(bits, num_bins, percentile, affine)
    if method == "entropy":
        return EntropyObserver(bits, num_bins)
    if method == "mse":
        return MSEObserver(bits, num_bins)
    raise HwcompError(f"unknown calibration method {method!r} (minmax, percentile, entropy, mse)")
