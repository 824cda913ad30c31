"""Matplotlib figures (PNG), made with the non-interactive Agg backend."""

from __future__ import annotations

import json
import pathlib

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def histories(workdir, name: str) -> dict[str, list[dict]]:
  """{label: per-epoch rows} of a run's metrics.jsonl for the curve plots; a
  sweep or an ensemble, which keeps its history per member, gives one label
  per member (NAME/k00, ...)."""
  workdir = pathlib.Path(workdir)

  def rows(d: pathlib.Path) -> list[dict]:
    path = d / "metrics.jsonl"
    if not path.exists():
      return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

  own = rows(workdir)
  members = sorted(d for d in (workdir / "members").glob("*") if (d / "metrics.jsonl").exists())
  if own or not members:
    return {name: own}
  return {f"{name}/{d.name}": rows(d) for d in members}


def plot_training_curves(runs: dict[str, list[dict]], path,
                         selected_epoch: int | None = None) -> pathlib.Path:
  """Train loss and validation RMSE per epoch for one or several runs; the
  selected epoch is marked, and the validation panel zoomed to the range
  where the curves are informative (the first epochs' RMSE would flatten it)."""
  fig, (ax_loss, ax_val) = plt.subplots(1, 2, figsize=(10, 4))
  vals = []
  for name, rows in runs.items():
    epochs = [r["epoch"] for r in rows]
    ax_loss.plot(epochs, [r["train_loss"] for r in rows], label=name)
    val = [(r["epoch"], r["valid_rmse"]) for r in rows if "valid_rmse" in r]
    if val:
      ax_val.plot(*zip(*val), label=name)
      vals += [v for _, v in val]
  if vals:
    lo, mid = min(vals), sorted(vals)[len(vals) // 2]
    top = max(mid, lo) + max(mid - lo, 1e-3) * 2
    ax_val.set_ylim(lo - 0.1 * (top - lo), min(max(vals), top))
  if selected_epoch:
    for ax in (ax_loss, ax_val):
      ax.axvline(selected_epoch, color="k", ls="--", lw=1,
                 label=f"selected epoch {selected_epoch}")
  ax_loss.set(xlabel="epoch", ylabel="train loss", title="training objective")
  ax_val.set(xlabel="epoch", ylabel="RMSE", title="validation RMSE")
  for ax in (ax_loss, ax_val):
    ax.grid(alpha=0.3)
    if len(runs) > 1:
      ax.legend(fontsize=8)
  return _save(fig, path)


def _save(fig, path) -> pathlib.Path:
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)
  return path


def plot_pred_vs_actual(pred, actual, path, title: str = "") -> pathlib.Path:
  """Histograms of predicted ratings per actual rating (test pairs)."""
  pred, actual = np.asarray(pred, float), np.asarray(actual, float)
  fig, (ax_h, ax_b) = plt.subplots(1, 2, figsize=(10, 4))
  bins = np.linspace(min(pred.min(), actual.min()) - 0.25,
                     max(pred.max(), actual.max()) + 0.25, 40)
  ax_h.hist(actual, bins=bins, alpha=0.5, label="actual")
  ax_h.hist(pred, bins=bins, alpha=0.5, label="predicted")
  ax_h.set(xlabel="rating", ylabel="pairs", title=title or "predicted vs actual")
  ax_h.legend(fontsize=8)
  levels = np.unique(actual)
  if len(levels) <= 12:  # per-star box plot (10 half-star levels at most)
    ax_b.boxplot([pred[actual == v] for v in levels], showfliers=False)
    ax_b.set_xticks(range(1, len(levels) + 1), [f"{v:g}" for v in levels])
  else:
    ax_b.scatter(actual, pred, s=2, alpha=0.3)
  ax_b.set(xlabel="actual rating", ylabel="predicted rating",
           title="predicted rating by actual rating")
  for ax in (ax_h, ax_b):
    ax.grid(alpha=0.3)
  return _save(fig, path)


def plot_reconstruction(original, reconstructed, path, title: str,
                        xlabel: str = "position", observed=None) -> pathlib.Path:
  """S0-style: one user's (or movie's) ratings and the model's reconstruction
  of them, side by side. With `observed`, imputed originals are drawn hollow."""
  original = np.asarray(original, float)
  reconstructed = np.asarray(reconstructed, float)
  x = np.arange(len(original))
  fig, ax = plt.subplots(figsize=(max(6, min(16, 0.12 * len(x) + 4)), 4))
  if observed is None:
    ax.plot(x, original, "o", ms=4, label="original")
  else:
    observed = np.asarray(observed, bool)
    ax.plot(x[observed], original[observed], "o", ms=4, label="original (rated)")
    ax.plot(x[~observed], original[~observed], "o", ms=4, mfc="none",
            label="original (imputed)")
  ax.plot(x, reconstructed, "x", ms=4, label="reconstructed")
  ax.vlines(x, original, reconstructed, colors="grey", alpha=0.3, lw=0.8)
  ax.set(xlabel=xlabel, ylabel="rating", title=title)
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8)
  return _save(fig, path)


def plot_embedding_2d(xy_Nx2, labels, path, title: str,
                      annotate: dict | None = None) -> pathlib.Path:
  """Scatter of 2-D item embeddings coloured by label (e.g. primary genre);
  `annotate` maps row index -> text for a few points."""
  xy = np.asarray(xy_Nx2, float)
  labels = np.asarray(labels, dtype=object)
  names, counts = np.unique(labels, return_counts=True)
  names = names[np.argsort(-counts)]
  fig, ax = plt.subplots(figsize=(9, 7))
  cmap = plt.get_cmap("tab20")
  for j, name in enumerate(names):
    m = labels == name
    ax.scatter(xy[m, 0], xy[m, 1], s=6, alpha=0.6, color=cmap(j % 20), label=str(name))
  for i, text in (annotate or {}).items():
    ax.annotate(text, xy[i], fontsize=7)
  ax.set(title=title)
  ax.grid(alpha=0.3)
  ax.legend(fontsize=7, markerscale=2, ncol=2, loc="best")
  return _save(fig, path)


def plot_metric_curves(runs: dict[str, list[dict]], keys: tuple[str, ...], path,
                       title: str = "") -> pathlib.Path:
  """One panel per history key (e.g. train_loss, valid_ndcg@100) over epochs,
  for several runs; rows lacking a key are skipped (evaluated every N epochs)."""
  fig, axes = plt.subplots(1, len(keys), figsize=(5 * len(keys), 4), squeeze=False)
  for ax, key in zip(axes[0], keys):
    for name, rows in runs.items():
      pts = [(r["epoch"], r[key]) for r in rows if key in r and "epoch" in r]
      if pts:
        ax.plot(*zip(*pts), marker="." if len(pts) < 50 else None, label=name)
    ax.set(xlabel="epoch", ylabel=key, title=title or key)
    ax.grid(alpha=0.3)
    if len(runs) > 1:
      ax.legend(fontsize=8)
  return _save(fig, path)


def plot_valid_rmse(histories: dict[str, list[dict]], path) -> pathlib.Path:
  """Validation RMSE per epoch of a sweep's members, one line each."""
  fig, ax = plt.subplots(figsize=(7, 4.5))
  for name, rows in histories.items():
    pts = [(r["epoch"], r["valid_rmse"]) for r in rows if "valid_rmse" in r]
    if pts:
      ax.plot(*zip(*pts), label=name)
  ax.set(xlabel="epoch", ylabel="validation RMSE", title="sweep members")
  ax.grid(alpha=0.3)
  if len(histories) <= 16:
    ax.legend(fontsize=7)
  return _save(fig, path)
