"""Non-negative least squares (Lawson and Hanson's active-set method), so fitting a latency
model needs numpy only.

Non-negative coefficients keep a fitted latency model monotone in every feature, which the
scheduler's chunk sizing relies on; an unconstrained fit happily trades a negative attention term
against a large per-token one.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray


def nnls(matrix: NDArray[np.float64], target: NDArray[np.float64]) -> NDArray[np.float64]:
    """argmin ||matrix @ x - target|| subject to x >= 0. Columns are rescaled to unit norm first
    (features differ by ten orders of magnitude); the answer is in the original units."""
    a = np.asarray(matrix, dtype=np.float64)
    b = np.asarray(target, dtype=np.float64)
    if a.ndim != 2 or b.shape != (a.shape[0],):
        raise ValueError(f"nnls: shapes {a.shape} and {b.shape} do not match")
    if not (np.all(np.isfinite(a)) and np.all(np.isfinite(b))):
        raise ValueError("nnls: inputs must be finite")
    norms = np.linalg.norm(a, axis=0)
    scale = np.where(norms > 0, norms, 1.0)
    x = _lawson_hanson(a / scale, b)
    return x / scale


def _lawson_hanson(a: NDArray[np.float64], b: NDArray[np.float64]) -> NDArray[np.float64]:
    num_cols = a.shape[1]
    x = np.zeros(num_cols)
    passive = np.zeros(num_cols, dtype=bool)  # variables free to move (the rest are held at 0)
    tol = 10 * np.finfo(np.float64).eps * max(a.shape) * max(np.abs(a).sum(axis=0).max(), 1.0)
    for _ in range(3 * num_cols + 10):
        gradient = a.T @ (b - a @ x)
        candidates = np.where(passive, -np.inf, gradient)
        if passive.all() or candidates.max() <= tol:
            break
        passive[int(np.argmax(candidates))] = True
        while True:
            trial = np.zeros(num_cols)
            if not passive.any():
                break
            trial[passive] = np.linalg.lstsq(a[:, passive], b, rcond=None)[0]
            if trial[passive].min() > 0:
                break
            # Step from x toward the trial as far as feasibility allows; drop what hits zero.
            blocking = passive & (trial <= 0)
            x_blocking = x[blocking]
            gap = x_blocking - trial[blocking]  # > 0 wherever x > 0
            ratios = np.where(x_blocking > 0, x_blocking / np.where(gap > 0, gap, 1.0), 0.0)
            step = float(ratios.min())
            x = x + step * (trial - x)
            passive &= x > tol
            x[~passive] = 0.0
        x = trial
    return x
