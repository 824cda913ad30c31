"""Synthetic datasets: exact shape, 1..5 integer ratings, no duplicates."""

from __future__ import annotations

import numpy as np
import pytest

from recae_jax.data import synthetic
from recae_jax.errors import UserError


def _check(ds, n_users, n_items, n):
  r = ds.ratings
  assert (r.n_users, r.n_items, len(r)) == (n_users, n_items, n)
  keys = r.users.astype(np.int64) * n_items + r.items
  assert (np.diff(keys) > 0).all()  # sorted, so also no duplicates
  assert (np.bincount(r.users, minlength=n_users) >= 1).all()
  assert set(np.unique(r.ratings)) <= {1.0, 2.0, 3.0, 4.0, 5.0}
  assert ds.rating_scale == (1.0, 5.0)
  assert len(np.unique(r.timestamps)) == n
  assert r.users.dtype == np.int32 and r.ratings.dtype == np.float32


def test_ml100k_shape():
  ds = synthetic.generate("ml-100k", seed=0)
  _check(ds, 943, 1682, 100_000)
  assert ds.name == "synthetic-ml-100k"
  r = ds.ratings
  assert len(np.unique(r.ratings)) == 5
  assert 3.0 < r.ratings.mean() < 4.0
  counts = np.bincount(r.items, minlength=1682)
  assert counts.max() > 10 * np.median(counts)  # popularity is skewed


def test_deterministic_per_seed():
  a = synthetic.generate((60, 50, 700), seed=7)
  b = synthetic.generate((60, 50, 700), seed=7)
  c = synthetic.generate((60, 50, 700), seed=8)
  for field in ("users", "items", "ratings", "timestamps"):
    np.testing.assert_array_equal(getattr(a.ratings, field),
                                  getattr(b.ratings, field))
  assert not np.array_equal(a.ratings.items, c.ratings.items)


@pytest.mark.parametrize("shape", [(5, 4, 5), (5, 4, 20), (7, 3, 15),
                                   (30, 200, 1000)])
def test_small_and_dense_shapes(shape):
  _check(synthetic.generate(shape, seed=1), *shape)


def test_sampled_path(monkeypatch):
  monkeypatch.setattr(synthetic, "_EXACT_CELLS", 0)
  _check(synthetic.generate((300, 400, 20_000), seed=2), 300, 400, 20_000)
  _check(synthetic.generate((50, 40, 1500), seed=2), 50, 40, 1500)


def test_bad_shapes():
  with pytest.raises(UserError, match="unknown synthetic shape"):
    synthetic.generate("ml-7m")
  with pytest.raises(UserError, match="n_ratings"):
    synthetic.generate((5, 4, 21))
  with pytest.raises(UserError, match="n_ratings"):
    synthetic.generate((5, 4, 3))
