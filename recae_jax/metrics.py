"""Accuracy metrics, summed over all pairs (never averaged per batch)."""

from __future__ import annotations

import numpy as np


def rating_errors(pred: np.ndarray, target: np.ndarray) -> dict:
  """RMSE = sqrt(Σ sse / Σ count) and MAE over every pair, in float64 on host."""
  pred = np.asarray(pred, np.float64)
  target = np.asarray(target, np.float64)
  if pred.shape != target.shape:
    raise ValueError(f"shape mismatch {pred.shape} vs {target.shape}")
  n = target.size
  if n == 0:
    return {"rmse": float("nan"), "mae": float("nan"), "count": 0}
  err = pred - target
  return {"rmse": float(np.sqrt(np.mean(err * err))),
          "mae": float(np.mean(np.abs(err))), "count": int(n)}
