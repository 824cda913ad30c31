"""Ensembles and blends, orchestrated above the training loop and selected
on validation data only.

`ensemble=K` trains K members that differ only in their seed (same split,
same validation carve-out) as the members of one engine (one compiled epoch
for all K, see `train.train_members`) and averages their predictions. The
blend then fits one linear combination (with intercept) of the components'
validation predictions — the member average, optionally U-AutoRec, kernel
models (sparse_fc and/or glocal_k, each averaged over its `blend_kernel_seeds`) and
the neighbourhood model — by least squares, and applies it to their test
predictions. With `blend_support` each weight is linear in the pair's log
user and item support (feature-weighted linear stacking: models that need
more data get more weight where there is more); `blend_rating_stats` adds
the user's and the item's mean and std of ratings to those features.
`blend_ridge` shrinks the weights (not the intercepts) towards 0, the
penalty chosen from a grid by 10-fold cross-validation over the validation
pairs. `blend_crossfit=R` trains every component R times, each without
another validation draw (`valid_draw`), fits the blend on all R draws'
validation pairs (each predicted by components that never saw it: R times
the pairs to fit on) and applies it to the components' test predictions
averaged over the R. Test ratings never influence a weight.

The members live in `workdir/members/` (their checkpoints there, each
member's files in `members/mK`), U-AutoRec in `members/uautorec`, the
kernel models in `members/sparse_fc` and `members/glocal_k` (K seeds:
`members/sparse_fc_xK/sJ`), cross-fitting's draw r in `members_draw{r}/`,
so `--resume` continues an interrupted blend and reuses finished parts.
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

_DATA_FIELDS = ("dataset", "data_dir", "columns", "duplicates", "split", "test_fraction",
                "time_quantile", "valid_fraction", "min_user_ratings", "min_item_ratings",
                "split_seed", "valid_draw", "eval_batch_size", "fallback", "dense_budget_mb")


def _finished(dirs) -> bool:
  return all((d / "metrics.json").exists() and (d / "test_pred.npy").exists() for d in dirs)


def _predictions(d: pathlib.Path) -> dict:
  return {"metrics": json.loads((d / "metrics.json").read_text()),
          "valid": np.load(d / "valid_pred.npy"), "test": np.load(d / "test_pred.npy")}


def fit_blend(valid_preds: np.ndarray, valid_target: np.ndarray,
              meta: np.ndarray | None = None, ridge: float = 0.0) -> np.ndarray:
  """Least-squares weights for C components (rows = pairs).

  Without `meta`: [intercept, w_1..w_C]. With meta [pairs, F] (column 0 all
  ones): feature-weighted linear stacking (Sill et al. 2009), each weight
  linear in the F features: F intercepts, then w[c, f] for c, f in order.
  `ridge` > 0 adds ridge x pairs x |w|² (the F intercepts are free).
  """
  return _solve(_design(valid_preds, meta).astype(np.float64),
                valid_target.astype(np.float64), ridge, _n_meta(meta))


def apply_blend(coef: np.ndarray, preds: np.ndarray,
                meta: np.ndarray | None = None) -> np.ndarray:
  return _design(preds, meta) @ coef


def cross_validated_rmse(valid_preds: np.ndarray, valid_target: np.ndarray,
                         meta: np.ndarray | None, rating_scale, folds: int = 10,
                         ridge: float = 0.0) -> float:
  """RMSE of the blend on validation pairs it was not fitted on: K-fold over
  the validation pairs (fixed permutation), clipped like the blend. The
  in-sample validation RMSE of a least-squares blend is optimistic, more so
  with more weights; this one compares component sets, features and ridge
  penalties fairly without the test set."""
  x = _design(valid_preds, meta).astype(np.float64)
  y = valid_target.astype(np.float64)
  fold = np.random.default_rng(0).permutation(len(y)) % folds
  out_of_fold = np.empty_like(y)
  for f in range(folds):  # K small solves, not a loop over pairs
    held = fold == f
    out_of_fold[held] = x[held] @ _solve(x[~held], y[~held], ridge, _n_meta(meta))
  return rating_errors(np.clip(out_of_fold, *rating_scale), y)["rmse"]


def choose_ridge(valid_preds: np.ndarray, valid_target: np.ndarray,
                 meta: np.ndarray | None, rating_scale, ridges) -> tuple[float, dict]:
  """The penalty in `ridges` with the lowest cross-validated RMSE (the first
  of equals), and every candidate's CV RMSE."""
  cv = {r: cross_validated_rmse(valid_preds, valid_target, meta, rating_scale, ridge=r)
        for r in ridges}
  return min(cv, key=cv.get), cv


def _solve(x: np.ndarray, y: np.ndarray, ridge: float, n_free: int) -> np.ndarray:
  if ridge == 0:
    return np.linalg.lstsq(x, y, rcond=None)[0]
  # per pair, so one penalty means the same on any number of validation pairs
  penalty = np.full(x.shape[1], ridge * len(y))
  penalty[:n_free] = 0.0
  return np.linalg.solve(x.T @ x + np.diag(penalty), x.T @ y)


def _n_meta(meta: np.ndarray | None) -> int:
  return 1 if meta is None else meta.shape[1]


def _design(preds: np.ndarray, meta: np.ndarray | None) -> np.ndarray:
  meta = np.ones((len(preds), 1)) if meta is None else meta
  return np.column_stack([meta] + [preds[:, [c]] * meta for c in range(preds.shape[1])])


# The columns of support_features, as metrics.json's blend_support_weights names them
# (RATING_STAT_TERMS only with blend_rating_stats).
SUPPORT_TERMS = ("mean", "log_user_support", "log_item_support")
RATING_STAT_TERMS = ("user_rating_mean", "item_rating_mean", "user_rating_std",
                     "item_rating_std")


def support_features(fit, pairs, center: np.ndarray | None = None,
                     rating_stats: bool = False) -> tuple:
  """[1, log1p(n_u), log1p(n_i)] of each pair (SUPPORT_TERMS), n counted in
  the fit ratings; with `rating_stats` also the user's and the item's mean and
  std of their fit ratings (RATING_STAT_TERMS; the whole fit set's for one
  without any). All but the 1 centred and scaled by `center` ([2, F]: mean,
  std; default: these pairs')."""
  n_u = np.bincount(fit.users, minlength=fit.n_users)
  n_i = np.bincount(fit.items, minlength=fit.n_items)
  cols = [np.log1p(n_u[pairs.users]), np.log1p(n_i[pairs.items])]
  if rating_stats:
    r = fit.ratings.astype(np.float64)
    stats = {}
    for side, idx, n in (("user", fit.users, n_u), ("item", fit.items, n_i)):
      mean = np.bincount(idx, r, minlength=len(n)) / np.maximum(n, 1)
      var = np.bincount(idx, r * r, minlength=len(n)) / np.maximum(n, 1) - mean ** 2
      stats[side] = (np.where(n > 0, mean, r.mean()),
                     np.where(n > 0, np.sqrt(np.maximum(var, 0.0)), r.std()))
    cols += [stats["user"][0][pairs.users], stats["item"][0][pairs.items],
             stats["user"][1][pairs.users], stats["item"][1][pairs.items]]
  z = np.column_stack(cols)
  if center is None:
    center = np.stack([z.mean(0), np.maximum(z.std(0), 1e-6)])
  return np.column_stack([np.ones(len(z)), (z - center[0]) / center[1]]), center


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
  # Cross-fitting: the components of draw r are trained without that draw's
  # validation carve-out (draw 0: members/, draw r: members_draw{r}/).
  draws = []
  for r in range(config.blend_crossfit):
    cfg = dataclasses.replace(config, valid_draw=config.valid_draw + r)
    if r:
      progress(f"=== cross-fitting: the components again without validation draw "
               f"{cfg.valid_draw} ({r + 1} of {config.blend_crossfit})")
    split_r = split if r == 0 else load_split(cfg, dataset)[1]
    members, components = _components(cfg, workdir / ("members" if r == 0 else
                                                      f"members_draw{r}"),
                                      dataset, split_r, resume, progress)
    draws.append((split_r, members, components))
  split, members, _ = draws[0]
  names = list(draws[0][2])
  # the blend is fitted on every draw's validation pairs, each predicted by
  # components that did not see it, and applied to their mean test predictions
  v = np.vstack([np.column_stack([c[n]["valid"] for n in names]) for _, _, c in draws])
  valid_t = np.concatenate([s.valid.ratings for s, _, _ in draws])
  t = np.mean([np.column_stack([c[n]["test"] for n in names]) for _, _, c in draws], axis=0)
  test_t = split.test.ratings
  meta_v = meta_t = None
  if config.blend_support:  # features from the fit split's counts (no test rating)
    center, metas = None, []
    for s, _, _ in draws:
      m, center = support_features(s.train, s.valid, center, config.blend_rating_stats)
      metas.append(m)
    meta_v = np.vstack(metas)
    meta_t, _ = support_features(split.train, split.test, center, config.blend_rating_stats)
  blended = len(names) > 1 or meta_v is not None
  if blended:  # one candidate penalty: just its CV RMSE, for comparing blends
    ridge, ridge_cv = choose_ridge(v, valid_t, meta_v, (lo, hi), config.blend_ridge)
    if len(ridge_cv) > 1:
      progress(f"blend ridge penalty {ridge:g} chosen by 10-fold CV on validation "
               f"({', '.join(f'{r:g}: {e:.4f}' for r, e in ridge_cv.items())})")
    coef = fit_blend(v, valid_t, meta_v, ridge)
  else:
    coef = np.array([0.0, 1.0])
  valid_pred = np.clip(apply_blend(coef, v, meta_v), lo, hi)
  test_pred = np.clip(apply_blend(coef, t, meta_t), lo, hi)
  n_meta = _n_meta(meta_v)
  terms = SUPPORT_TERMS + (RATING_STAT_TERMS if config.blend_rating_stats else ())
  # Weights at the average validation pair (the features' means are 0).
  weights = dict(zip(["intercept"] + names, coef[::n_meta].tolist()))
  te, ve = rating_errors(test_pred, test_t), rating_errors(valid_pred, valid_t)
  per_component = {n: {"valid_rmse": rating_errors(v[:, j], valid_t)["rmse"],
                       "test_rmse": rating_errors(t[:, j], test_t)["rmse"]}
                   for j, n in enumerate(names)}
  per_member = [m["metrics"]["test_rmse"] for m in members]
  every_member = [m for _, ms, _ in draws for m in ms]
  first = members[0]["metrics"]
  results = {
      "test_rmse": te["rmse"], "test_mae": te["mae"], "valid_rmse": ve["rmse"],
      # for choosing components/features: the blend on validation pairs it did not see
      **({"blend_cv_valid_rmse": ridge_cv[ridge], "blend_ridge": ridge} if blended else {}),
      **({"blend_ridge_cv": {f"{r:g}": e for r, e in ridge_cv.items()}}
         if blended and len(ridge_cv) > 1 else {}),
      "best_epoch": [m["metrics"]["best_epoch"] for m in members],
      "blend_weights": weights,
      **({"blend_support_weights": {
          n: dict(zip(terms, coef[n_meta * j:n_meta * (j + 1)].tolist()))
          for j, n in enumerate(["intercept"] + names)}} if meta_v is not None else {}),
      "components": per_component, "member_test_rmse": per_member,
      **({"knn_choice": draws[0][2]["knn"]["choice"]} if "knn" in names else {}),
      # each draw chooses its neighbourhood model on its own validation pairs
      **({"knn_choices": [c["knn"]["choice"] for _, _, c in draws]}
         if "knn" in names and len(draws) > 1 else {}),
      "blend_crossfit": config.blend_crossfit,
      "n_train": first["n_train"], "n_fit": first["n_fit"], "n_valid": len(valid_t),
      "n_test": first["n_test"], "n_test_fallback": first["n_test_fallback"],
      # the seed members' cost, over every draw
      "train_seconds": sum(m["metrics"]["train_seconds"] for m in every_member),
      "compile_seconds": sum(m["metrics"]["compile_seconds"] for m in every_member),
      "epoch_seconds_median": float(np.median(
          [m["metrics"]["epoch_seconds_median"] for m in every_member])),
      "dataset": dataset.name, "dataset_files": dict(dataset.files),
  }
  wd.save_npy(workdir / "test_pred.npy", test_pred.astype(np.float32))
  wd.save_npy(workdir / "valid_pred.npy", valid_pred.astype(np.float32))
  wd.write_json(workdir / "metrics.json", results)
  cv = (f"valid RMSE {ve['rmse']:.4f} (10-fold CV on validation "
        f"{results['blend_cv_valid_rmse']:.4f}), " if blended else "")
  progress(f"ensemble of {len(names)} component(s): {cv}test RMSE {te['rmse']:.4f} "
           f"MAE {te['mae']:.4f}; weights {results['blend_weights']}")
  return results


def _components(config: Config, members_dir: pathlib.Path, dataset, split, resume: bool,
                progress) -> tuple[list[dict], dict[str, dict]]:
  """Trains (or reuses) one draw's components in `members_dir`: the seed
  members, then U-AutoRec, the kernel models and the neighbourhood model as
  configured. Returns the members' runs and {component: valid/test preds}."""
  base = config.blend_member()
  dirs = [members_dir / f"m{k}" for k in range(config.ensemble)]
  members = _seed_ensemble(base, config.ensemble, members_dir, dirs, "members",
                           dataset, split, resume, progress)
  components: dict[str, dict] = {"autoencoder_mean": _mean(members)}
  data = {f: getattr(config, f) for f in _DATA_FIELDS}
  if config.blend_uautorec:
    ucfg = make_config("uautorec", **data, seed=config.seed, refit=config.refit)
    components["uautorec"] = _seed_ensemble(ucfg, 1, members_dir / "uautorec", None,
                                            "U-AutoRec component", dataset, split,
                                            resume, progress)[0]
  for kernel, n in config.kernel_components:
    kcfg = make_config(kernel, **data, seed=config.seed)
    kdir = members_dir / (kernel + (f"_x{n}" if n > 1 else ""))
    kdirs = [kdir / f"s{j}" for j in range(n)] if n > 1 else None
    components[kernel] = _mean(_seed_ensemble(kcfg, n, kdir, kdirs, f"{kernel} component",
                                              dataset, split, resume, progress))
  if config.blend_knn:
    progress("== neighbourhood (KNN) component")
    components["knn"] = _knn_component(split, dataset.rating_scale, progress)
  return members, components


def _mean(runs: list[dict]) -> dict:
  return {"valid": np.mean([r["valid"] for r in runs], axis=0),
          "test": np.mean([r["test"] for r in runs], axis=0)}


def _seed_ensemble(cfg: Config, n: int, workdir: pathlib.Path, dirs, what: str, dataset,
                   split, resume: bool, progress) -> list[dict]:
  """n runs of cfg with seeds cfg.seed.. (each its own batch order) as the
  members of one engine, in `dirs` under `workdir`; dirs=None: one lone run
  in `workdir` itself. Reused when finished and resuming."""
  done = [workdir] if dirs is None else dirs
  seeds = [dataclasses.replace(cfg, seed=cfg.seed + k) for k in range(n)]
  config_json = (cfg.to_json() if dirs is None else
                 {"base": cfg.to_json(), "members": [c.to_json() for c in seeds]})
  if resume and _finished(done):
    # finished parts are reused as they are, so every field must match
    # (a changed preset would otherwise be blended from stale predictions)
    diff = train.config_differences(config_json, workdir,
                                    ignore={"tensorboard", "checkpoint_every", "data_dir"})
    if diff:
      raise UserError(f"{what} in {workdir} was trained with a different config "
                      f"({', '.join(diff)}); delete that folder to retrain it, or use a "
                      "new --workdir")
    progress(f"{what}: finished earlier, reusing the predictions")
  elif dirs is None:
    progress(f"== {what}")
    train.train_and_evaluate(cfg, workdir, resume=resume, progress=progress,
                             problem=build_problem(cfg, dataset, split))
  else:
    progress(f"== {what}: {n} seed(s), {cfg.seed}..{cfg.seed + n - 1}")
    train.train_members(cfg, seeds, workdir, member_dirs=dirs, labels=[d.name for d in dirs],
                        resume=resume, progress=progress,
                        problem=build_problem(cfg, dataset, split), config_json=config_json,
                        shared_order=False)  # independent members: each its own order
  return [_predictions(d) for d in done]


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
