"""The in-memory dataset types every other module speaks.

All arrays are numpy on the host, cast at this boundary: user/item indices
int32 in 0..n-1, ratings float32, timestamps int64. Splits keep the index
space of the whole dataset so ids mean the same thing in train and test.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import numpy as np
import pandas as pd


@dataclasses.dataclass(frozen=True, eq=False)
class Ratings:
  """A set of (user, item, rating, timestamp) tuples in a fixed index space."""

  users: np.ndarray       # int32 [n]
  items: np.ndarray       # int32 [n]
  ratings: np.ndarray     # float32 [n]
  timestamps: np.ndarray  # int64 [n] (0 when the source has none)
  n_users: int
  n_items: int

  def __post_init__(self):
    n = len(self.users)
    if not (len(self.items) == len(self.ratings) == len(self.timestamps) == n):
      raise ValueError("Ratings arrays must have equal length")
    object.__setattr__(self, "users", np.asarray(self.users, np.int32))
    object.__setattr__(self, "items", np.asarray(self.items, np.int32))
    object.__setattr__(self, "ratings", np.asarray(self.ratings, np.float32))
    object.__setattr__(self, "timestamps", np.asarray(self.timestamps, np.int64))

  def __len__(self) -> int:
    return len(self.users)

  def subset(self, selector) -> "Ratings":
    """Rows picked by a boolean mask or index array, same index space."""
    return dataclasses.replace(
        self, users=self.users[selector], items=self.items[selector],
        ratings=self.ratings[selector], timestamps=self.timestamps[selector])

  def concat(self, other: "Ratings") -> "Ratings":
    if (self.n_users, self.n_items) != (other.n_users, other.n_items):
      raise ValueError("cannot concatenate Ratings of different index spaces")
    return dataclasses.replace(
        self,
        users=np.concatenate([self.users, other.users]),
        items=np.concatenate([self.items, other.items]),
        ratings=np.concatenate([self.ratings, other.ratings]),
        timestamps=np.concatenate([self.timestamps, other.timestamps]))

  def transpose(self) -> "Ratings":
    """Swaps the roles of users and items (for item-oriented models)."""
    return Ratings(self.items, self.users, self.ratings, self.timestamps,
                   self.n_items, self.n_users)


@dataclasses.dataclass(frozen=True, eq=False)
class Dataset:
  """A parsed dataset: all ratings plus optional side tables and id maps.

  `user_ids[i]` / `item_ids[j]` are the original ids of index i / j: int64
  arrays for integer ids (MovieLens, synthetic, numeric files), object
  arrays of str when a generic file or frame has string ids (data.generic).
  `items_info` (if present) is indexed 0..n_items-1 with at least a `title`
  column and one 0/1 column per genre listed in `genres`; `users_info` is
  indexed 0..n_users-1 (ML-100K/1M: age, gender, occupation, zip).
  """

  name: str
  ratings: Ratings
  user_ids: np.ndarray
  item_ids: np.ndarray
  rating_scale: tuple[float, float]
  items_info: Optional[pd.DataFrame] = None
  users_info: Optional[pd.DataFrame] = None
  genres: tuple[str, ...] = ()
  files: dict = dataclasses.field(default_factory=dict)  # path -> sha256
  directory: Optional[str] = None

  @property
  def n_users(self) -> int:
    return self.ratings.n_users

  @property
  def n_items(self) -> int:
    return self.ratings.n_items


@dataclasses.dataclass(frozen=True, eq=False)
class Split:
  """train / test, plus an optional validation carve-out of train."""

  train: Ratings
  test: Ratings
  valid: Optional[Ratings] = None
  name: str = ""
