"""Honest probabilities: temperature scaling fitted on the validation cohort, and the expected
calibration error (ECE) that shows whether it is needed.

A network trained to separate easy cohorts says p < 0.01 or p > 0.99 for almost every scan. Dividing its
logits by one temperature T > 0, chosen to minimise the validation cohort's negative log-likelihood,
keeps every decision at the 0.5 operating point (sigmoid(z / T) >= 0.5 exactly when z >= 0) and the
ranking (so the AUC), and makes the probabilities mean what they say where the cohort allows it.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["ECE_BINS", "fit_temperature", "expected_calibration_error", "reliability", "temperature_entry"]

ECE_BINS = 10
"""Equal-width probability bins of the ECE and the reliability diagram."""
_T_RANGE = (1e-3, 1e3)
"""Wide enough for a decision whose raw logits sit within a few tenths of zero (a head computed from silent
lesion filters): the temperature is fitted, never clipped at a bound."""


def _nll(logits: np.ndarray, targets: np.ndarray, t: float) -> float:
    z = logits / t
    # log(1 + exp(-|z|)) form: no overflow for the extreme logits this is meant to tame
    return float(np.mean(np.maximum(z, 0) - z * targets + np.log1p(np.exp(-np.abs(z)))))


def fit_temperature(logits: np.ndarray, targets: np.ndarray) -> float:
    """The T in [0.001, 1000] minimising the mean binary NLL of ``sigmoid(logits / T)`` against ``targets``
    (both ``(N,)`` or ``(N, K)``; one T for all outputs). Golden-section search on log T: the NLL is
    unimodal in log T."""
    z = np.asarray(logits, dtype=np.float64).ravel()
    y = np.asarray(targets, dtype=np.float64).ravel()
    if z.size == 0 or z.shape != y.shape:
        raise ValueError(f"fit_temperature needs matching non-empty logits and targets; got {z.shape}, {y.shape}")
    lo, hi = np.log(_T_RANGE[0]), np.log(_T_RANGE[1])
    g = (np.sqrt(5) - 1) / 2
    a, b = hi - g * (hi - lo), lo + g * (hi - lo)
    fa, fb = _nll(z, y, np.exp(a)), _nll(z, y, np.exp(b))
    for _ in range(80):
        if fa < fb:
            hi, b, fb = b, a, fa
            a = hi - g * (hi - lo)
            fa = _nll(z, y, np.exp(a))
        else:
            lo, a, fa = a, b, fb
            b = lo + g * (hi - lo)
            fb = _nll(z, y, np.exp(b))
    return float(np.exp((lo + hi) / 2))


def expected_calibration_error(probs: np.ndarray, targets: np.ndarray, bins: int = ECE_BINS) -> float:
    """ECE of binary (or per-output multi-label) probabilities: the sample-weighted mean, over equal-width
    bins, of |mean predicted probability - observed frequency|; averaged over outputs."""
    p = np.asarray(probs, dtype=np.float64).reshape(len(probs), -1)
    y = np.asarray(targets, dtype=np.float64).reshape(len(targets), -1)
    if len(p) == 0:
        return float("nan")
    values = []
    for k in range(p.shape[1]):
        idx = np.minimum((p[:, k] * bins).astype(int), bins - 1)
        err = 0.0
        for b in range(bins):
            sel = idx == b
            if sel.any():
                err += sel.mean() * abs(p[sel, k].mean() - y[sel, k].mean())
        values.append(err)
    return float(np.mean(values))


def reliability(probs: np.ndarray, targets: np.ndarray, bins: int = ECE_BINS) -> list[dict[str, Any]]:
    """Per bin of the first output: its range, count, mean predicted probability and observed frequency."""
    p = np.asarray(probs, dtype=np.float64).reshape(len(probs), -1)[:, 0]
    y = np.asarray(targets, dtype=np.float64).reshape(len(targets), -1)[:, 0]
    idx = np.minimum((p * bins).astype(int), bins - 1)
    out = []
    for b in range(bins):
        sel = idx == b
        out.append({"low": b / bins, "high": (b + 1) / bins, "n": int(sel.sum()),
                    "predicted": float(p[sel].mean()) if sel.any() else None,
                    "observed": float(y[sel].mean()) if sel.any() else None})
    return out


def temperature_entry(logits: np.ndarray, targets: np.ndarray, source: str) -> dict[str, Any]:
    """The bundle metadata entry (``icnn.calibration``): the fitted temperature and the ECE it gives."""
    t = fit_temperature(logits, targets)
    z = np.asarray(logits, dtype=np.float64)
    y = np.asarray(targets, dtype=np.float64)
    sig = lambda v: 1.0 / (1.0 + np.exp(-v))  # noqa: E731
    return {
        "temperature": round(t, 5),
        "n_images": int(len(z)),
        "ece_uncalibrated": round(expected_calibration_error(sig(z), y), 5),
        "ece_calibrated": round(expected_calibration_error(sig(z / t), y), 5),
        "source": source,
    }
