"""K-fold rotation of the top-N test users (`--user_folds=K`).

One top-N run (`topn.run`) tests `n_test_users` users: a few hundred users on
ML-100K, so its NDCG@100 moves by a few points with the split seed alone.
With `user_folds=K` every eligible user is tested exactly once:

  * the eligible users are those `topn.make_protocol` draws test users from
    (clicks = ratings >= `threshold`, users with >= `min_user_ratings` clicks);
  * they are permuted once with `split_seed` and cut into K folds of sizes
    differing by at most one (`np.array_split`);
  * run f holds out fold f as its test users; its validation users
    (`n_valid_users`) are drawn from the other users exactly as in a single
    split, and it trains/fits and selects on validation as a normal run.

WORKDIR/fold_{f}/ is an ordinary top-N workdir (config.json, metrics.json,
test_per_user.npz, checkpoints; `fold.json` names its test users so
`restore.load_topn` and recommend.py rebuild the same protocol).
WORKDIR/metrics.json pools the per-user test metrics of all folds: for each
metric (`test_ndcg@100`, `test_recall@20`, ... the keys topn writes) the mean
over all tested users and a 95% confidence interval, mean ± 1.96·sd/√n (the
normal approximation over users; sd with ddof=1), plus per-fold values.
A test user whose predict part lost every item (items nobody clicked in that
fold's training data are not candidates) has no relevant item and is not
counted, as in any top-N run; `n_untested_users` says how many.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
from typing import Callable, Optional

import numpy as np

from recae_jax import topn
from recae_jax import workdir as wd
from recae_jax.config import Config
from recae_jax.data import splits
from recae_jax.data.types import Dataset
from recae_jax.errors import UserError
from recae_jax.problem import load_dataset

FOLD_FILE = "fold.json"
Z95 = 1.959963984540054
_FOLD_STREAM = 0x5F01D  # the permutation's own random stream (per split_seed)


def eligible_users(config: Config, dataset: Dataset) -> np.ndarray:
  """Sorted user indices with >= 1 click left after the protocol's filters."""
  clicks = splits.apply_filters(dataset.ratings, implicit_threshold=config.threshold,
                                min_user_ratings=config.min_user_ratings)
  return np.flatnonzero(np.bincount(clicks.users, minlength=clicks.n_users) > 0)


def fold_users(config: Config, dataset: Dataset) -> list[np.ndarray]:
  """The K disjoint test-user folds (sorted user indices) covering every
  eligible user once; checks that each fold leaves validation and training users."""
  k = int(config.user_folds)
  users = eligible_users(config, dataset)
  if k > len(users):
    raise UserError(f"--user_folds={k} is more than the {len(users)} eligible users of "
                    f"{dataset.name} (after --threshold={config.threshold:g} and "
                    f"--min_user_ratings={config.min_user_ratings})")
  left = len(users) - -(-len(users) // k)  # users outside the largest fold
  if config.n_valid_users >= left:
    raise UserError(f"--n_valid_users={config.n_valid_users} leaves no training users "
                    f"with --user_folds={k} ({len(users)} eligible users, {left} outside "
                    "a test fold); lower --n_valid_users")
  perm = np.random.default_rng([config.split_seed, _FOLD_STREAM]).permutation(users)
  return [np.sort(f) for f in np.array_split(perm, k)]


def mean_ci(values: np.ndarray, z: float = Z95) -> dict:
  """{"mean", "ci_low", "ci_high", "sd", "n_users"}: mean ± z·sd/√n."""
  v = np.asarray(values, np.float64)
  n = len(v)
  mean = float(v.mean()) if n else float("nan")
  sd = float(v.std(ddof=1)) if n > 1 else 0.0
  half = z * sd / np.sqrt(n) if n else float("nan")
  return {"mean": mean, "ci_low": mean - half, "ci_high": mean + half, "sd": sd,
          "n_users": n}


def fold_dir(workdir, f: int) -> pathlib.Path:
  return pathlib.Path(workdir) / f"fold_{f}"


def is_user_folds(workdir) -> bool:
  """A --user_folds workdir (its metrics.json pools fold_0..fold_{K-1})."""
  path = pathlib.Path(workdir) / "metrics.json"
  try:
    return path.exists() and "user_folds" in json.loads(path.read_text())
  except (OSError, ValueError):
    return False


def _finished(d: pathlib.Path) -> bool:
  return (d / "metrics.json").exists() and (d / topn.PER_USER_FILE).exists()


def load_per_user(d: pathlib.Path) -> dict:
  path = d / topn.PER_USER_FILE
  with np.load(path) as z:
    try:
      return {k: z[k] for k in z.files}
    except ValueError:  # an object array: string ids saved before they were str arrays
      raise UserError(f"{path}: its string user ids were saved in a form that needs "
                      f"pickle to load (an older version); run this top-N run again "
                      f"into a new workdir") from None


def run_folds(config: Config, workdir, *, resume: bool = False,
              progress: Callable[[str], None] = print,
              dataset: Optional[Dataset] = None) -> dict:
  """Runs the K folds (each `topn.run` in WORKDIR/fold_{f}), pools their
  per-user test metrics into WORKDIR/metrics.json and returns it. `resume`
  skips finished folds (metrics.json and test_per_user.npz written) and
  continues an unfinished one from its checkpoints."""
  config = config.validate()
  if config.user_folds < 2:
    raise UserError(f"--user_folds={config.user_folds}: run_folds needs >= 2 folds")
  root = wd.ensure_writable(workdir)
  if dataset is None:
    dataset = load_dataset(config)
  folds = fold_users(config, dataset)
  wd.write_json(root / "config.json", config.to_json())
  k = len(folds)
  for f, users in enumerate(folds):
    d = fold_dir(root, f)
    if resume and _finished(d):
      progress(f"== fold {f + 1}/{k}: finished earlier, reusing its metrics")
      continue
    progress(f"== fold {f + 1}/{k}: {len(users)} test users")
    fcfg = dataclasses.replace(config, n_test_users=len(users))
    protocol = topn.make_protocol(fcfg, dataset, test_users=users)
    wd.ensure_writable(d)
    wd.write_json(d / FOLD_FILE, {"fold": f, "user_folds": k,
                                  "test_users": users.tolist()})
    res = topn.run(fcfg, d, protocol=protocol, resume=resume, progress=progress)
    res.pop("_fitted", None)
  summary = summarize(root, config, folds)
  wd.write_json(root / "metrics.json", summary)
  for key in summary["metrics"]:
    m = summary["metrics"][key]
    progress(f"{key}: {m['mean']:.4f}  95% CI [{m['ci_low']:.4f}, {m['ci_high']:.4f}]  "
             f"({m['n_users']} users, {k} folds)")
  return summary


def summarize(root: pathlib.Path, config: Config, folds: list[np.ndarray]) -> dict:
  """WORKDIR/metrics.json of finished folds: pooled per-user means and CIs."""
  per_fold, fold_metrics = [], []
  for f in range(len(folds)):
    d = fold_dir(root, f)
    per_fold.append(load_per_user(d))
    fold_metrics.append(json.loads((d / "metrics.json").read_text()))
  users = np.concatenate([p["users"] for p in per_fold])
  if len(np.unique(users)) != len(users):  # cannot happen with disjoint folds
    raise UserError(f"{root}: a user is tested in two folds (folds of another config?)")
  names = sorted(n for n in per_fold[0] if "@" in n)
  metrics = {}
  for name in names:
    key = f"test_{name}"
    metrics[key] = mean_ci(np.concatenate([p[name] for p in per_fold]))
    metrics[key]["per_fold"] = [float(p[name].mean()) if len(p[name]) else None
                                for p in per_fold]
  n_eligible = int(sum(len(f) for f in folds))
  out = {"model": config.model, "dataset": fold_metrics[0]["dataset"],
         "user_folds": len(folds), "split_seed": config.split_seed,
         "n_eligible_users": n_eligible, "n_users": int(len(users)),
         "n_untested_users": n_eligible - int(len(users)),
         "ci": "95% normal approximation over users: mean ± 1.96·sd/√n",
         "metrics": metrics,
         "folds": [{"fold": f, "workdir": f"fold_{f}", "n_test_users": len(folds[f]),
                    "n_users": int(len(per_fold[f]["users"])),
                    **{k: m[k] for k in ("best_lambda", "best_epoch", "best_valid_ndcg",
                                         "train_seconds") if k in m},
                    **{f"test_{n}": float(per_fold[f][n].mean())
                       if len(per_fold[f][n]) else None for n in names}}
                   for f, m in enumerate(fold_metrics)]}
  for key, m in metrics.items():  # flat keys, as a single top-N run writes them
    out[key] = m["mean"]
    out[f"{key}_ci95"] = [m["ci_low"], m["ci_high"]]
  return out
