"""Train / validation / test splits, all in the full dataset's index space.

SPLITS (the `name` argument of `make_split`):

- "u1".."u5", "ua", "ub": ML-100K's own fold files, exactly as shipped.
- "random": a seeded `test_fraction` of all ratings goes to test.
- "time": train = ratings with timestamp <= np.quantile(timestamps,
  time_quantile); test = the later ratings whose user AND item both occur in
  train (the others are dropped: nothing could be predicted for them).
- "user_holdout": round(holdout_fraction * n_u) of each user's ratings go to
  test, chosen at random, but a user with >= 2 ratings always keeps >= 1 in
  train (a user with one rating keeps it in train).
- "heldout_users": strong generalization. `n_heldout_users` users (or
  round(test_fraction * active users) when it is 0) go to test with ALL their
  ratings; `fold_in(split.test)` then splits each such user's ratings into a
  part the model may see and a part to predict.

Before splitting, `implicit_threshold` keeps ratings >= threshold and sets
them to 1.0, then the k-core filter drops ratings until every remaining user
has >= min_user_ratings and every item >= min_item_ratings (iterated to a
fixed point). Filters never remap ids. `valid_fraction > 0` carves a seeded
random validation set out of TRAIN only; the test set is identical with or
without it, and for every `valid_draw` (another carve-out of the same
train, as a blend's cross-fitting uses). Everything is deterministic per
seed (numpy Generator) and vectorized (random keys + lexsort, rank within
user group).
"""

from __future__ import annotations

from typing import Optional

import numpy as np

from recae_jax.data import movielens
from recae_jax.data.types import Dataset, Ratings, Split
from recae_jax.errors import UserError

FOLD_SPLITS = movielens.FOLDS
SPLITS = FOLD_SPLITS + ("random", "time", "user_holdout", "heldout_users")

# Independent streams per purpose, so e.g. asking for a validation set never
# changes which ratings are in test.
_TEST_STREAM, _VALID_STREAM, _FOLD_IN_STREAM = 0, 1, 2


def _rng(seed: int, stream: int) -> np.random.Generator:
  return np.random.default_rng([int(seed), stream])


def k_core_mask(ratings: Ratings, min_user_ratings: int = 0,
                min_item_ratings: int = 0) -> np.ndarray:
  """Rows kept by the iterated k-core filter (bool [n])."""
  keep = np.ones(len(ratings), bool)
  if min_user_ratings <= 1 and min_item_ratings <= 1:
    return keep
  while True:  # iterates until stable; each pass is vectorized
    n_u = np.bincount(ratings.users[keep], minlength=ratings.n_users)
    n_i = np.bincount(ratings.items[keep], minlength=ratings.n_items)
    new = keep & (n_u[ratings.users] >= min_user_ratings) & (
        n_i[ratings.items] >= min_item_ratings)
    if new.sum() == keep.sum():
      return new
    keep = new


def apply_filters(ratings: Ratings, *, min_user_ratings: int = 0,
                  min_item_ratings: int = 0,
                  implicit_threshold: Optional[float] = None) -> Ratings:
  """The implicit threshold, then the k-core filter; ids are not remapped."""
  if implicit_threshold is not None:
    ratings = ratings.subset(ratings.ratings >= implicit_threshold)
    ratings = Ratings(ratings.users, ratings.items,
                      np.ones(len(ratings), np.float32), ratings.timestamps,
                      ratings.n_users, ratings.n_items)
  return ratings.subset(k_core_mask(ratings, min_user_ratings,
                                    min_item_ratings))


def _pair_keys(r: Ratings) -> np.ndarray:
  return r.users.astype(np.int64) * r.n_items + r.items


def _rank_within_user(users: np.ndarray, rng: np.random.Generator
                      ) -> tuple[np.ndarray, np.ndarray]:
  """A random rank 0..n_u-1 of each row among its user's rows, and n_u."""
  keys = rng.random(len(users))
  order = np.lexsort((keys, users))
  counts = np.bincount(users)
  starts = np.cumsum(counts) - counts
  rank = np.empty(len(users), np.int64)
  rank[order] = np.arange(len(users)) - starts[users[order]]
  return rank, counts[users]


def _per_user_holdout(r: Ratings, fraction: float,
                      rng: np.random.Generator) -> np.ndarray:
  """Mask of rows held out: round(fraction * n_u) per user, >= 1 kept."""
  if len(r) == 0:
    return np.zeros(0, bool)
  rank, n_u = _rank_within_user(r.users, rng)
  k = np.floor(fraction * n_u + 0.5).astype(np.int64)
  k = np.minimum(k, np.maximum(n_u - 1, 0))
  return rank < k


def fold_in(test: Ratings, fraction: float = 0.8,
            seed: int = 0) -> tuple[Ratings, Ratings]:
  """Splits each held-out user's ratings into (fold_in_part, predict_part):
  about `fraction` of them to show the model, the rest to predict; every
  user with >= 2 ratings has >= 1 in the fold-in part."""
  if not 0.0 < fraction <= 1.0:
    raise UserError(f"fold_in fraction {fraction} must be in (0, 1]")
  predict = _per_user_holdout(test, 1.0 - fraction, _rng(seed, _FOLD_IN_STREAM))
  return test.subset(~predict), test.subset(predict)


def _check_fraction(name: str, value: float, allow_zero: bool) -> None:
  ok = (0.0 <= value < 1.0) if allow_zero else (0.0 < value < 1.0)
  if not ok:
    raise UserError(f"{name}={value} must be in {'[0' if allow_zero else '(0'}"
                    f", 1)")


def make_split(dataset: Dataset, name: str, *, test_fraction: float = 0.1,
               time_quantile: float = 0.98, valid_fraction: float = 0.0,
               seed: int = 0, valid_draw: int = 0, min_user_ratings: int = 0,
               min_item_ratings: int = 0,
               implicit_threshold: Optional[float] = None,
               holdout_fraction: float = 0.2,
               n_heldout_users: int = 0) -> Split:
  """Builds split `name` (see SPLITS in the module docstring)."""
  if name not in SPLITS:
    raise UserError(f"unknown split {name!r}: expected one of "
                    f"{', '.join(SPLITS)}")
  _check_fraction("valid_fraction", valid_fraction, allow_zero=True)
  filters = dict(min_user_ratings=min_user_ratings,
                 min_item_ratings=min_item_ratings,
                 implicit_threshold=implicit_threshold)
  ratings = apply_filters(dataset.ratings, **filters)

  if name in FOLD_SPLITS:
    if dataset.name != "ml-100k":
      raise UserError(f"split {name} is one of ML-100K's fold files; dataset "
                      f"{dataset.name} has none (use random, time, "
                      f"user_holdout or heldout_users)")
    base, test = movielens.load_fold(dataset, name)
    filtered = any(v for v in filters.values() if v is not None)
    if filtered:  # keep the fold rows whose pair survived the filters
      kept = np.sort(_pair_keys(ratings))
      def survives(r: Ratings) -> np.ndarray:
        pos = np.minimum(np.searchsorted(kept, _pair_keys(r)), len(kept) - 1)
        return (len(kept) > 0) & (kept[pos] == _pair_keys(r))
      base = apply_filters(base, implicit_threshold=implicit_threshold)
      test = apply_filters(test, implicit_threshold=implicit_threshold)
      base, test = base.subset(survives(base)), test.subset(survives(test))
    train = base
  elif name == "random":
    _check_fraction("test_fraction", test_fraction, allow_zero=False)
    rng = _rng(seed, _TEST_STREAM)
    n_test = int(round(test_fraction * len(ratings)))
    is_test = np.zeros(len(ratings), bool)
    is_test[rng.permutation(len(ratings))[:n_test]] = True
    train, test = ratings.subset(~is_test), ratings.subset(is_test)
  elif name == "time":
    if not 0.0 < time_quantile <= 1.0:
      raise UserError(f"time_quantile={time_quantile} must be in (0, 1]")
    if len(ratings) == 0:
      raise UserError("no ratings left after filtering")
    if np.all(ratings.timestamps == ratings.timestamps[0]):
      raise UserError(f"--split=time: every rating has the same timestamp "
                      f"({ratings.timestamps[0]}), so none comes later; a file without a "
                      f"timestamp column reads as all 0 (name it with "
                      f"--columns=timestamp=COL), or use --split=random")
    cut = np.quantile(ratings.timestamps, time_quantile)
    is_train = ratings.timestamps <= cut
    train = ratings.subset(is_train)
    later = ratings.subset(~is_train)
    seen_u = np.bincount(train.users, minlength=ratings.n_users) > 0
    seen_i = np.bincount(train.items, minlength=ratings.n_items) > 0
    test = later.subset(seen_u[later.users] & seen_i[later.items])
  elif name == "user_holdout":
    _check_fraction("holdout_fraction", holdout_fraction, allow_zero=False)
    is_test = _per_user_holdout(ratings, holdout_fraction,
                                _rng(seed, _TEST_STREAM))
    train, test = ratings.subset(~is_test), ratings.subset(is_test)
  else:  # heldout_users
    active = np.flatnonzero(np.bincount(ratings.users,
                                        minlength=ratings.n_users) > 0)
    if n_heldout_users:
      n_out = int(n_heldout_users)
    else:
      _check_fraction("test_fraction", test_fraction, allow_zero=False)
      n_out = int(round(test_fraction * len(active)))
    if not 0 < n_out < len(active):
      raise UserError(f"cannot hold out {n_out} of {len(active)} users: "
                      f"need at least 1 and leave at least 1 for training")
    rng = _rng(seed, _TEST_STREAM)
    out_users = np.zeros(ratings.n_users, bool)
    out_users[rng.choice(active, n_out, replace=False)] = True
    is_test = out_users[ratings.users]
    train, test = ratings.subset(~is_test), ratings.subset(is_test)

  if len(test) == 0:
    raise UserError(f"--split={name} leaves no test ratings ({len(ratings):,} ratings in "
                    f"all; a test RMSE of nothing would read as 0); "
                    + ("lower --time_quantile" if name == "time" else
                       "raise --test_fraction" if name == "random" else
                       "use more data or another --split"))
  valid = None
  if valid_fraction > 0:
    # draw r reads split seed seed+r's validation stream: on a fold file's
    # split (no seed moves its test set) it is exactly that seed's carve-out
    rng = _rng(seed + valid_draw, _VALID_STREAM)
    n_valid = int(round(valid_fraction * len(train)))
    is_valid = np.zeros(len(train), bool)
    is_valid[rng.permutation(len(train))[:n_valid]] = True
    train, valid = train.subset(~is_valid), train.subset(is_valid)
  return Split(train=train, test=test, valid=valid, name=name)
