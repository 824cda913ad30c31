"""Side features: genres, user attributes, per-genre counts of liked items."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from recae_jax.data import features, movielens, splits, synthetic
from recae_jax.data.types import Dataset, Ratings
from recae_jax.errors import UserError


def _toy() -> Dataset:
  r = Ratings(np.array([0, 0, 1, 2, 2]), np.array([0, 1, 1, 0, 2]),
              np.array([5, 2, 3, 4, 3.5]), np.zeros(5), 3, 3)
  info = pd.DataFrame({"movie_id": [10, 20, 30], "title": ["a", "b", "c"],
                       "year": [1995.0, np.nan, 2001.0],
                       "Action": np.array([1, 0, 1], np.int8),
                       "Drama": np.array([1, 1, 0], np.int8)})
  users = pd.DataFrame({"user_id": [1, 2, 3], "age": [10.0, 30.0, 50.0],
                        "gender": ["F", "M", "M"],
                        "occupation": ["writer", "artist", "writer"],
                        "zip": ["1", "2", "3"]})
  return Dataset(name="toy", ratings=r, user_ids=np.arange(1, 4),
                 item_ids=np.array([10, 20, 30]), rating_scale=(1.0, 5.0),
                 items_info=info, users_info=users, genres=("Action", "Drama"))


def test_toy_features():
  ds = _toy()
  g = features.item_genres(ds)
  assert g.dtype == np.float32
  np.testing.assert_array_equal(g, [[1, 1], [0, 1], [1, 0]])
  a = features.user_attributes(ds)
  assert a.dtype == np.float32
  assert features.user_attribute_names(ds) == [
      "age", "gender=F", "gender=M", "occupation=artist", "occupation=writer"]
  np.testing.assert_allclose(a, [[0, 1, 0, 0, 1], [0.5, 0, 1, 1, 0],
                                 [1, 0, 1, 0, 1]])
  c = features.user_genre_counts(ds.ratings, g, min_rating=3.0)
  # user 0 liked item 0 (A, D); user 1 liked item 1 (D); user 2 liked 0 and 2
  np.testing.assert_array_equal(c, [[1, 1], [0, 1], [2, 1]])
  assert c.dtype == np.float32


def test_genre_counts_match_dense_reference():
  ds = synthetic.generate((50, 40, 600), seed=1)
  rng = np.random.default_rng(0)
  g = (rng.random((40, 7)) < 0.3).astype(np.float32)
  got = features.user_genre_counts(ds.ratings, g, min_rating=4.0)
  liked = np.zeros((50, 40), np.float32)
  m = ds.ratings.ratings >= 4.0
  liked[ds.ratings.users[m], ds.ratings.items[m]] = 1.0
  np.testing.assert_array_equal(got, liked @ g)
  with pytest.raises(UserError, match="shape"):
    features.user_genre_counts(ds.ratings, g[:3])


def test_missing_side_tables_are_user_errors():
  ds = synthetic.generate((5, 4, 10))
  with pytest.raises(UserError, match="no user attributes"):
    features.user_attributes(ds)
  with pytest.raises(UserError, match="no movie genres"):
    features.item_genres(ds)


def test_ml100k_features(data_dir):
  ds = movielens.load_dataset("ml-100k", data_dir)
  g = features.item_genres(ds)
  assert g.shape == (1682, 19) and set(np.unique(g)) == {0.0, 1.0}
  a = features.user_attributes(ds)
  assert a.shape == (943, 3 + 21)
  assert a[:, 0].min() == 0.0 and a[:, 0].max() == 1.0
  np.testing.assert_array_equal(a[:, 1] + a[:, 2], 1.0)
  np.testing.assert_array_equal(a[:, 3:].sum(axis=1), 1.0)
  train = splits.make_split(ds, "u1").train
  c = features.user_genre_counts(train, g)
  liked = train.ratings >= 3
  assert c.sum() == g[train.items[liked]].sum()
  assert c.shape == (943, 19)
  latest = movielens.load_dataset("ml-latest-small", data_dir)
  with pytest.raises(UserError, match="ml-latest-small"):
    features.user_attributes(latest)
  assert features.item_genres(latest).shape == (9742, len(latest.genres))
