"""Ensembles and blends, selected on validation data only.

`ensemble=K` trains K members that differ only in their seed (same split,
same validation carve-out) and averages their predictions. The blend then
fits one linear combination (with intercept) of the components' validation
predictions — the member average, optionally U-AutoRec and the Pearson
user-KNN — by least squares, and applies it to their test predictions. Test
ratings never influence a weight.

Each member is an ordinary run in `workdir/members/NAME`, so `--resume`
skips finished members and continues an interrupted one.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import pathlib
from typing import Callable

import numpy as np

from recae_jax import workdir as wd
from recae_jax.config import Config, make_config
from recae_jax.metrics import rating_errors

_DATA_FIELDS = ("dataset", "data_dir", "split", "test_fraction", "time_quantile",
                "valid_fraction", "min_user_ratings", "min_item_ratings", "split_seed",
                "eval_batch_size", "fallback", "dense_budget_mb")


def _member_run(config: Config, workdir: pathlib.Path, make_problem: Callable,
                resume: bool, progress) -> dict:
  from recae_jax import train
  metrics_path = workdir / "metrics.json"
  if resume and metrics_path.exists() and (workdir / "test_pred.npy").exists():
    progress(f"member {workdir.name}: finished earlier, reusing its predictions")
    metrics = json.loads(metrics_path.read_text())
  else:
    metrics = train.train_and_evaluate(config, workdir, resume=resume,
                                       progress=progress, problem=make_problem())
  return {"metrics": metrics, "valid": np.load(workdir / "valid_pred.npy"),
          "test": np.load(workdir / "test_pred.npy")}


def fit_blend(valid_preds: np.ndarray, valid_target: np.ndarray) -> np.ndarray:
  """Least-squares weights [intercept, w_1..w_C] for C components (rows = pairs)."""
  x = np.column_stack([np.ones(len(valid_target)), valid_preds])
  coef, *_ = np.linalg.lstsq(x.astype(np.float64), valid_target.astype(np.float64),
                             rcond=None)
  return coef


def apply_blend(coef: np.ndarray, preds: np.ndarray) -> np.ndarray:
  return coef[0] + preds @ coef[1:]


def train_and_evaluate_ensemble(config: Config, workdir, *, resume: bool = False,
                                progress: Callable[[str], None] = print) -> dict:
  from recae_jax import train
  workdir = wd.ensure_writable(workdir)
  if config.valid_fraction <= 0:
    from recae_jax.errors import UserError
    raise UserError("--ensemble/--blend_* need --valid_fraction > 0 to fit weights")
  wd.write_json(workdir / "config.json", config.to_json())
  dataset, split = train.load_split(config)
  wd.write_json(workdir / "provenance.json", wd.provenance(dataset.files))
  lo, hi = dataset.rating_scale
  base = dataclasses.replace(config, ensemble=1, blend_uautorec=False, blend_knn=False)
  components: dict[str, dict] = {}
  members = []
  # Members differ only in their seed, so they share one device-resident problem.
  member_problem = functools.cache(lambda: train.build_problem(base, dataset, split))
  for k in range(config.ensemble):
    member_cfg = dataclasses.replace(base, seed=config.seed + k)
    progress(f"== member {k + 1}/{config.ensemble} (seed {member_cfg.seed})")
    members.append(_member_run(member_cfg, workdir / "members" / f"m{k}", member_problem,
                               resume, progress))
  components["autoencoder_mean"] = {
      "valid": np.mean([m["valid"] for m in members], axis=0),
      "test": np.mean([m["test"] for m in members], axis=0)}
  if config.blend_uautorec:
    ucfg = make_config("uautorec", **{f: getattr(config, f) for f in _DATA_FIELDS},
                       seed=config.seed, refit=config.refit)
    progress("== U-AutoRec component")
    components["uautorec"] = _member_run(
        ucfg, workdir / "members" / "uautorec",
        lambda: train.build_problem(ucfg, dataset, split), resume, progress)
  if config.blend_knn:
    progress("== Pearson user-KNN component")
    components["knn"] = _knn_component(split, dataset.rating_scale)

  valid_t, test_t = split.valid.ratings, split.test.ratings
  names = list(components)
  v = np.column_stack([components[n]["valid"] for n in names])
  t = np.column_stack([components[n]["test"] for n in names])
  coef = fit_blend(v, valid_t) if len(names) > 1 else np.array([0.0, 1.0])
  valid_pred = np.clip(apply_blend(coef, v), lo, hi)
  test_pred = np.clip(apply_blend(coef, t), lo, hi)
  te, ve = rating_errors(test_pred, test_t), rating_errors(valid_pred, valid_t)
  per_component = {n: {"valid_rmse": rating_errors(components[n]["valid"], valid_t)["rmse"],
                       "test_rmse": rating_errors(components[n]["test"], test_t)["rmse"]}
                   for n in names}
  per_member = [m["metrics"]["test_rmse"] for m in members]
  first = members[0]["metrics"]
  results = {
      "test_rmse": te["rmse"], "test_mae": te["mae"], "valid_rmse": ve["rmse"],
      "best_epoch": [m["metrics"]["best_epoch"] for m in members],
      "blend_weights": dict(zip(["intercept"] + names, coef.tolist())),
      "components": per_component, "member_test_rmse": per_member,
      "n_train": first["n_train"], "n_fit": first["n_fit"], "n_valid": first["n_valid"],
      "n_test": first["n_test"], "n_test_fallback": first["n_test_fallback"],
      "train_seconds": sum(m["metrics"]["train_seconds"] for m in members),
      "compile_seconds": sum(m["metrics"]["compile_seconds"] for m in members),
      "epoch_seconds_median": float(np.median(
          [m["metrics"]["epoch_seconds_median"] for m in members])),
      "dataset": dataset.name, "dataset_files": dict(dataset.files),
  }
  wd.save_npy(workdir / "test_pred.npy", test_pred.astype(np.float32))
  wd.save_npy(workdir / "valid_pred.npy", valid_pred.astype(np.float32))
  wd.write_json(workdir / "metrics.json", results)
  progress(f"ensemble of {len(names)} component(s): test RMSE {te['rmse']:.4f} "
           f"MAE {te['mae']:.4f}; weights {results['blend_weights']}")
  return results


def _knn_component(split, rating_scale) -> dict:
  """Pearson user-KNN (k=40, KNNWithMeans) predictions for validation and test.

  positive_only + shrinkage 50 were chosen on a validation carve-out of
  u1.base (see README, KNN section).

  Validation pairs are predicted from the fitting ratings only, test pairs
  from the whole training split, exactly like the autoencoder members.
  """
  from recae_jax import impute
  cfg = impute.KNNConfig(neighbors=40, positive_only=True, shrinkage=50.0,
                         rating_scale=tuple(rating_scale))
  full = split.train.concat(split.valid)
  valid, _ = impute.predict_pairs(split.train, split.valid.users, split.valid.items, cfg)
  test, _ = impute.predict_pairs(full, split.test.users, split.test.items, cfg)
  return {"valid": valid, "test": test}
