"""Matplotlib figures (PNG), made with the non-interactive Agg backend."""

from __future__ import annotations

import pathlib

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def plot_training_curves(runs: dict[str, list[dict]], path) -> pathlib.Path:
  """Train loss and validation RMSE per epoch for one or several runs."""
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  fig, (ax_loss, ax_val) = plt.subplots(1, 2, figsize=(10, 4))
  for name, rows in runs.items():
    epochs = [r["epoch"] for r in rows]
    ax_loss.plot(epochs, [r["train_loss"] for r in rows], label=name)
    val = [(r["epoch"], r["valid_rmse"]) for r in rows if "valid_rmse" in r]
    if val:
      ax_val.plot(*zip(*val), label=name)
  ax_loss.set(xlabel="epoch", ylabel="train loss", title="training objective")
  ax_val.set(xlabel="epoch", ylabel="RMSE", title="validation RMSE")
  for ax in (ax_loss, ax_val):
    ax.grid(alpha=0.3)
    if len(runs) > 1:
      ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)
  return path
