"""Ensembles and blends, orchestrated above the training loop and selected
on validation data only.

`ensemble=K` trains K members that differ only in their seed (same split,
same validation carve-out) as the members of one engine (one compiled epoch
for all K, see `train.train_members`) and averages their predictions. The
blend then fits one linear combination (with intercept) of the components'
validation predictions — the member average, optionally U-AutoRec, a
kernel model (sparse_fc / glocal_k) and the neighbourhood model — by least squares, and applies it to their test
predictions. Test ratings never influence a weight.

The members live in `workdir/members/` (their checkpoints there, each
member's files in `members/mK`), U-AutoRec in `members/uautorec`, the
kernel model in `members/sparse_fc` or `members/glocal_k`, so
`--resume` continues an interrupted blend and reuses finished parts.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
from typing import Callable

import numpy as np

from recae_jax import impute, train
from recae_jax import workdir as wd
from recae_jax.config import Config, make_config
from recae_jax.errors import UserError
from recae_jax.metrics import rating_errors
from recae_jax.problem import build_problem, load_split

_DATA_FIELDS = ("dataset", "data_dir", "columns", "split", "test_fraction", "time_quantile",
                "valid_fraction", "min_user_ratings", "min_item_ratings", "split_seed",
                "eval_batch_size", "fallback", "dense_budget_mb")


def _finished(dirs) -> bool:
  return all((d / "metrics.json").exists() and (d / "test_pred.npy").exists() for d in dirs)


def _predictions(d: pathlib.Path) -> dict:
  return {"metrics": json.loads((d / "metrics.json").read_text()),
          "valid": np.load(d / "valid_pred.npy"), "test": np.load(d / "test_pred.npy")}


def fit_blend(valid_preds: np.ndarray, valid_target: np.ndarray) -> np.ndarray:
  """Least-squares weights [intercept, w_1..w_C] for C components (rows = pairs)."""
  x = np.column_stack([np.ones(len(valid_target)), valid_preds])
  coef, *_ = np.linalg.lstsq(x.astype(np.float64), valid_target.astype(np.float64),
                             rcond=None)
  return coef


def apply_blend(coef: np.ndarray, preds: np.ndarray) -> np.ndarray:
  return coef[0] + preds @ coef[1:]


def train_and_evaluate_blend(config: Config, workdir, *, resume: bool = False,
                             progress: Callable[[str], None] = print,
                             dataset=None) -> dict:
  workdir = wd.ensure_writable(workdir)
  if config.valid_fraction <= 0:
    raise UserError("--ensemble/--blend_* need --valid_fraction > 0 to fit weights")
  wd.write_json(workdir / "config.json", config.to_json())
  dataset, split = load_split(config, dataset)
  wd.write_json(workdir / "provenance.json", wd.provenance(dataset.files))
  lo, hi = dataset.rating_scale
  base = config.blend_member()
  seeds = [dataclasses.replace(base, seed=config.seed + k) for k in range(config.ensemble)]
  dirs = [workdir / "members" / f"m{k}" for k in range(config.ensemble)]
  if resume and _finished(dirs):
    progress("members: finished earlier, reusing their predictions")
  else:
    progress(f"== {config.ensemble} member(s), seeds {config.seed}..{config.seed + config.ensemble - 1}")
    train.train_members(base, seeds, workdir / "members", member_dirs=dirs,
                        labels=[d.name for d in dirs], resume=resume, progress=progress,
                        problem=build_problem(base, dataset, split),
                        config_json={"base": base.to_json(),
                                     "members": [c.to_json() for c in seeds]},
                        shared_order=False)  # independent members: each its own order
  members = [_predictions(d) for d in dirs]
  components: dict[str, dict] = {
      "autoencoder_mean": {"valid": np.mean([m["valid"] for m in members], axis=0),
                           "test": np.mean([m["test"] for m in members], axis=0)}}
  if config.blend_uautorec:
    ucfg = make_config("uautorec", **{f: getattr(config, f) for f in _DATA_FIELDS},
                       seed=config.seed, refit=config.refit)
    udir = workdir / "members" / "uautorec"
    if resume and _finished([udir]):
      progress("U-AutoRec component: finished earlier, reusing its predictions")
    else:
      progress("== U-AutoRec component")
      train.train_and_evaluate(ucfg, udir, resume=resume, progress=progress,
                               problem=build_problem(ucfg, dataset, split))
    components["uautorec"] = _predictions(udir)
  if config.blend_kernel:
    kcfg = make_config(config.blend_kernel, **{f: getattr(config, f) for f in _DATA_FIELDS},
                       seed=config.seed)
    kdir = workdir / "members" / config.blend_kernel
    if resume and _finished([kdir]):
      progress(f"{config.blend_kernel} component: finished earlier, reusing its predictions")
    else:
      progress(f"== {config.blend_kernel} component")
      train.train_and_evaluate(kcfg, kdir, resume=resume, progress=progress,
                               problem=build_problem(kcfg, dataset, split))
    components[config.blend_kernel] = _predictions(kdir)
  if config.blend_knn:
    progress("== neighbourhood (KNN) component")
    components["knn"] = _knn_component(split, dataset.rating_scale, progress)

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
      **({"knn_choice": components["knn"]["choice"]} if "knn" in components else {}),
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


def _knn_component(split, rating_scale, progress) -> dict:
  """The neighbourhood model chosen on validation (`impute.best_neighbourhood`:
  user/item Pearson or pearson_baseline, with or without KNNBaseline's
  baselines). Validation pairs are predicted from the fitting ratings only,
  test pairs from the whole training split, like the autoencoder members."""
  full = split.train.concat(split.valid)
  out = impute.best_neighbourhood(split.train, split.valid, full, split.test,
                                  rating_scale, progress=None)
  progress(f"neighbourhood model chosen on validation: {out['choice']}")
  return out
