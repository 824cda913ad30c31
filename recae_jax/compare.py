"""Paired comparison of runs evaluated on the same test set.

`compare_workdirs([A, B, C, ...])` compares run A against each other run on
the users of their common test set:

  * rating runs (a workdir with config.json and test_pred.npy: a lone run, a
    blend / `best` ensemble, a sweep member's folder, a one-fold
    experiments/impute.py neighbourhood run): RMSE and MAE. The test
    pairs are recomputed from the run's config (`problem.load_split`, as
    `restore` does) and must be the same pairs, in the same order, for every
    run;
  * top-N runs (test_per_user.npz, written by every top-N run; a
    `--user_folds` workdir pools all its folds): NDCG@k and Recall@k for the
    runs' cut-offs. The test set is fingerprinted by `topn.test_set_key`.

Per metric: `diff` = B − A on all test users, a paired bootstrap 95% CI
over users (users are resampled with replacement, the same draws for both
runs; per-user sums make each resample two matrix products: for RMSE
sqrt(Σ_u w_u SSE_u / Σ_u w_u n_u)), and the two-sided Wilcoxon signed-rank
p-value (scipy.stats.wilcoxon) of the per-user differences (for RMSE of the
users' mean squared errors, for MAE of their mean absolute errors). Runs on
different test sets, a rating run next to a top-N run, or a missing /
unfinished workdir are refused with a one-line UserError.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import pathlib
from typing import Optional, Sequence

import numpy as np
from scipy import stats

from recae_jax import restore, topn, user_folds
from recae_jax.data import movielens, splits
from recae_jax.errors import UserError
from recae_jax.problem import load_split


@dataclasses.dataclass
class RunData:
  """One run's per-user test data."""

  workdir: pathlib.Path
  kind: str               # "rating" | "topn"
  model: str
  dataset: str
  test_key: str           # equal keys: the same test set
  users: np.ndarray       # [U] sorted user indices
  per_user: dict          # rating: {"sse", "abs", "n"}; top-N: {"ndcg@k", "recall@k", ...}

  def describe(self) -> str:
    return f"{self.workdir} ({self.kind}, {self.model} on {self.dataset}, {len(self.users)} test users)"


def _read_metrics(workdir: pathlib.Path) -> dict:
  path = workdir / "metrics.json"
  if not path.exists():
    raise UserError(f"workdir {workdir} has no metrics.json (an unfinished run: continue "
                    "it with --resume)")
  try:
    return json.loads(path.read_text())
  except json.JSONDecodeError as e:
    raise UserError(f"{path} is not valid JSON: {e}") from None


def _topn_npz(d: pathlib.Path) -> dict:
  path = d / topn.PER_USER_FILE
  if not path.exists():
    raise UserError(f"workdir {d} has no {topn.PER_USER_FILE} (an unfinished top-N run, or "
                    "one written before per-user metrics were saved: rerun it)")
  return user_folds.load_per_user(d)


def load_run(workdir) -> RunData:
  """A finished rating or top-N workdir's per-user test data."""
  workdir = pathlib.Path(workdir)
  if not workdir.is_dir():
    raise UserError(f"workdir {workdir} does not exist")
  raw = restore.read_json(workdir)
  if restore.is_neighbourhood_run(raw):
    _read_metrics(workdir)  # a finished run
    dataset, split = _neighbourhood_split(workdir, raw)
    return _rating_run(workdir, _knn_name(raw), dataset.name, split.test,
                       _test_pred(workdir, raw))
  config = restore.read_config(workdir)
  metrics = _read_metrics(workdir)
  if config.is_topn:
    if user_folds.is_user_folds(workdir):
      k = int(metrics["user_folds"])
      parts = [_topn_npz(user_folds.fold_dir(workdir, f)) for f in range(k)]
      key = hashlib.sha256("|".join(str(p["test_key"]) for p in parts).encode()).hexdigest()
    elif (workdir / "members").is_dir() and not (workdir / topn.PER_USER_FILE).exists():
      raise UserError(f"workdir {workdir} is a sweep: compare one of its members, e.g. "
                      f"{workdir / 'members' / 'k00'}")
    else:
      parts = [_topn_npz(workdir)]
      key = str(parts[0]["test_key"])
    users = np.concatenate([p["users"] for p in parts])
    names = sorted(n for n in parts[0] if "@" in n)
    per = {n: np.concatenate([p[n] for p in parts]) for n in names}
    order = np.argsort(users, kind="stable")
    return RunData(workdir, "topn", config.model, metrics.get("dataset", config.dataset),
                   key, users[order], {n: v[order] for n, v in per.items()})
  if not (workdir / "test_pred.npy").exists() and (workdir / "members").is_dir() \
      and not config.ensemble > 1:
    raise UserError(f"workdir {workdir} is a sweep: compare one of its members, e.g. "
                    f"{workdir / 'members' / 'k00'}")
  pred = _test_pred(workdir, raw)
  dataset, split = load_split(config)
  return _rating_run(workdir, config.model if not config.ensemble > 1 else
                     f"{config.model} ensemble", dataset.name, split.test, pred)


def _test_pred(workdir: pathlib.Path, raw: dict) -> np.ndarray:
  path = workdir / "test_pred.npy"
  if not path.exists():
    if restore.is_neighbourhood_run(raw):
      raise UserError(f"workdir {workdir} has no test_pred.npy: rerun that impute.py run "
                      "(one fold per run; older versions did not save its predictions)")
    raise UserError(f"workdir {workdir} has no test_pred.npy (an unfinished rating run: "
                    "continue it with --resume)")
  return np.load(path).astype(np.float64).reshape(-1)


def _neighbourhood_split(workdir: pathlib.Path, raw: dict):
  """The test split of an impute.py run, made as that script makes it."""
  if len(raw["folds"]) != 1:
    raise UserError(f"workdir {workdir} is a {len(raw['folds'])}-fold impute.py run: "
                    "compare runs of one fold (impute.py --split=NAME)")
  dataset = movielens.load_dataset(raw["dataset"], raw.get("data_dir"),
                                   columns=raw.get("columns", ""),
                                   duplicates=raw.get("duplicates", "error"))
  return dataset, splits.make_split(dataset, raw["folds"][0], seed=raw["seed"],
                                    test_fraction=raw["test_fraction"])


def _knn_name(raw: dict) -> str:
  if raw.get("select"):
    return "neighbourhood (chosen on validation)"
  if raw.get("baseline_only"):
    return "baseline"
  kind = "KNNBaseline" if raw.get("baseline", "none") != "none" else "KNN"
  return f"{raw['orientation']} {kind} ({raw['similarity']}, k={raw['neighbors']})"


def _rating_run(workdir: pathlib.Path, model: str, dataset_name: str, test,
                pred: np.ndarray) -> RunData:
  """Per-user squared and absolute errors of one rating run's test predictions."""
  if len(pred) != len(test):
    raise UserError(f"workdir {workdir}: test_pred.npy has {len(pred)} predictions but its "
                    f"config's test split has {len(test)} pairs (data changed since the run?)")
  h = hashlib.sha256(f"rating:{dataset_name}:{test.n_users}:{test.n_items}".encode())
  for a in (test.users.astype(np.int64), test.items.astype(np.int64),
            test.ratings.astype(np.float64)):
    h.update(np.ascontiguousarray(a).tobytes())
  err = pred - test.ratings.astype(np.float64)
  n_u = np.bincount(test.users, minlength=test.n_users)
  users = np.flatnonzero(n_u > 0)
  per = {"sse": np.bincount(test.users, err ** 2, test.n_users)[users],
         "abs": np.bincount(test.users, np.abs(err), test.n_users)[users],
         "n": n_u[users].astype(np.float64)}
  return RunData(workdir, "rating", model, dataset_name, h.hexdigest(), users, per)


def check_same_test_set(runs: Sequence[RunData]) -> None:
  a = runs[0]
  for b in runs[1:]:
    if a.kind != b.kind:
      raise UserError(f"cannot compare a {a.kind} run with a {b.kind} run: "
                      f"{a.describe()} vs {b.describe()}")
    if a.test_key != b.test_key or not np.array_equal(a.users, b.users):
      raise UserError(f"{a.workdir} and {b.workdir} were evaluated on different test sets "
                      f"({a.dataset}, {len(a.users)} users vs {b.dataset}, {len(b.users)} "
                      "users): a paired comparison needs the same split and test users")


def resample_weights(n_users: int, n_boot: int, seed: int, chunk: int = 250):
  """Yields [r, n_users] bootstrap counts (users drawn with replacement)."""
  rng = np.random.default_rng(seed)
  p = np.full(n_users, 1.0 / n_users)
  for start in range(0, n_boot, chunk):
    yield rng.multinomial(n_users, p, size=min(chunk, n_boot - start)).astype(np.float64)


def _wilcoxon(d: np.ndarray) -> float:
  if len(d) == 0 or np.all(d == 0):
    return 1.0
  return float(stats.wilcoxon(d).pvalue)


def _rating_stats(a: RunData, b: RunData, n_boot: int, seed: int) -> dict:
  pa, pb = a.per_user, b.per_user
  n = pa["n"]
  point = {"test_rmse": (np.sqrt(pa["sse"].sum() / n.sum()), np.sqrt(pb["sse"].sum() / n.sum())),
           "test_mae": (pa["abs"].sum() / n.sum(), pb["abs"].sum() / n.sum())}
  boot = {"test_rmse": [], "test_mae": []}
  for w in resample_weights(len(n), n_boot, seed):
    cnt = w @ n
    boot["test_rmse"].append(np.sqrt(w @ pb["sse"] / cnt) - np.sqrt(w @ pa["sse"] / cnt))
    boot["test_mae"].append((w @ pb["abs"] - w @ pa["abs"]) / cnt)
  per_user_diff = {"test_rmse": pb["sse"] / n - pa["sse"] / n,
                   "test_mae": pb["abs"] / n - pa["abs"] / n}
  return {m: _stat(point[m], np.concatenate(boot[m]), per_user_diff[m], len(n))
          for m in point}


def _topn_stats(a: RunData, b: RunData, n_boot: int, seed: int) -> dict:
  names = [m for m in a.per_user if m in b.per_user]
  d = np.stack([b.per_user[m] - a.per_user[m] for m in names], axis=1)  # [U, M]
  n = len(a.users)
  boot = np.concatenate([w @ d / n for w in resample_weights(n, n_boot, seed)])  # [R, M]
  return {f"test_{m}": _stat((a.per_user[m].mean(), b.per_user[m].mean()), boot[:, j],
                             d[:, j], n)
          for j, m in enumerate(names)}


def _stat(point, boot: np.ndarray, per_user_diff: np.ndarray, n: int) -> dict:
  va, vb = float(point[0]), float(point[1])
  lo, hi = np.percentile(boot, [2.5, 97.5])
  return {"value_a": va, "value_b": vb, "diff": vb - va, "ci_low": float(lo),
          "ci_high": float(hi), "p_value": _wilcoxon(per_user_diff), "n_users": int(n)}


def compare_runs(runs: Sequence[RunData], n_boot: int = 2000, seed: int = 0) -> dict:
  if len(runs) < 2:
    raise UserError("compare needs at least two workdirs (A and one run to compare)")
  if n_boot < 100:
    raise UserError(f"--n_bootstrap={n_boot}: use at least 100 resamples")
  check_same_test_set(runs)
  a = runs[0]
  stats = _rating_stats if a.kind == "rating" else _topn_stats
  return {
      "kind": a.kind, "dataset": a.dataset, "n_users": int(len(a.users)),
      "test_set_key": a.test_key, "n_bootstrap": int(n_boot), "seed": int(seed),
      "method": ("diff = B - A; 95% CI: paired bootstrap over users (percentile); "
                 "p_value: two-sided Wilcoxon signed-rank on per-user differences"),
      "a": {"workdir": str(a.workdir), "model": a.model},
      "comparisons": [{"workdir": str(b.workdir), "model": b.model,
                       "metrics": stats(a, b, n_boot, seed)} for b in runs[1:]],
  }


def compare_workdirs(workdirs: Sequence, n_boot: int = 2000, seed: int = 0,
                     metrics: Optional[Sequence[str]] = None) -> dict:
  """`compare_runs` of the workdirs (A first); `metrics` keeps only those keys
  (e.g. test_ndcg@100)."""
  if len(workdirs) < 2:
    raise UserError("compare needs at least two workdirs: DIR_A DIR_B [DIR_C ...]")
  out = compare_runs([load_run(w) for w in workdirs], n_boot, seed)
  if metrics:
    known = set(out["comparisons"][0]["metrics"])
    unknown = [m for m in metrics if m not in known]
    if unknown:
      raise UserError(f"--metrics: {', '.join(unknown)} not among {', '.join(sorted(known))}")
    for c in out["comparisons"]:
      c["metrics"] = {m: c["metrics"][m] for m in metrics}
  return out
