"""Side features for S4-style models (ratings ++ user/item attributes).

Only training ratings may feed a feature that is used at test time: pass
`split.train` to `user_genre_counts`, never the full dataset. "Months
registered" (used by some S4 variants) does not exist in MovieLens, so there
is no such feature here.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from recae_jax.data.types import Dataset, Ratings
from recae_jax.errors import UserError


def item_genres(dataset: Dataset) -> np.ndarray:
  """float32 [n_items, n_genres] multi-hot, columns in `dataset.genres`."""
  if dataset.items_info is None or not dataset.genres:
    raise UserError(f"dataset {dataset.name} has no movie genres (needs a "
                    f"movies file: u.item, movies.dat or movies.csv)")
  return dataset.items_info[list(dataset.genres)].to_numpy(np.float32)


def user_attribute_names(dataset: Dataset) -> list[str]:
  """Column names of `user_attributes(dataset)`."""
  info = _users_info(dataset)
  occupations = sorted(info["occupation"].dropna().unique())
  return ["age", "gender=F", "gender=M"] + [f"occupation={o}"
                                            for o in occupations]


def _users_info(dataset: Dataset) -> pd.DataFrame:
  if dataset.users_info is None:
    raise UserError(f"dataset {dataset.name} has no user attributes (only "
                    f"ml-100k's u.user and ml-1m's users.dat have them)")
  return dataset.users_info


def user_attributes(dataset: Dataset) -> np.ndarray:
  """float32 [n_users, 3 + n_occupations]: age scaled to [0, 1], gender
  one-hot (F, M), occupation one-hot (sorted names). Unknown users are 0."""
  info = _users_info(dataset)
  age = info["age"].to_numpy(np.float64)
  lo, hi = np.nanmin(age), np.nanmax(age)
  age01 = np.nan_to_num((age - lo) / max(hi - lo, 1e-12), nan=0.0)
  gender = info["gender"].to_numpy(object)
  occupations = sorted(info["occupation"].dropna().unique())
  occ_codes = pd.Categorical(info["occupation"], categories=occupations).codes
  occ = np.zeros((len(info), len(occupations)), np.float32)
  rows = np.flatnonzero(occ_codes >= 0)
  occ[rows, occ_codes[rows]] = 1.0
  return np.concatenate([
      age01[:, None], (gender == "F")[:, None], (gender == "M")[:, None], occ
  ], axis=1).astype(np.float32)


def user_genre_counts(train: Ratings, genres_IxG: np.ndarray,
                      min_rating: float = 3.0) -> np.ndarray:
  """float32 [n_users, G]: per genre, how many of the user's TRAINING
  ratings are >= min_rating."""
  genres_IxG = np.asarray(genres_IxG, np.float32)
  if genres_IxG.ndim != 2 or genres_IxG.shape[0] != train.n_items:
    raise UserError(f"genres matrix has shape {genres_IxG.shape}, expected "
                    f"[{train.n_items}, n_genres]")
  liked = train.ratings >= min_rating
  users, items = train.users[liked], train.items[liked]
  out = np.zeros((train.n_users, genres_IxG.shape[1]), np.float32)
  # One bincount per genre column (tens), never a loop over ratings; keeps
  # memory at O(n_ratings) instead of O(n_ratings * G).
  for g in range(genres_IxG.shape[1]):
    out[:, g] = np.bincount(users, weights=genres_IxG[items, g],
                            minlength=train.n_users)
  return out
