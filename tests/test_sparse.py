"""Batch densify: CSR and dense layouts equal a NumPy reference, compile once."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from recae_jax.data import sparse
from recae_jax.data.types import Ratings


def _random_ratings(seed=0, n_users=37, n_items=23, density=0.2):
  rng = np.random.default_rng(seed)
  u, i = np.nonzero(rng.random((n_users, n_items)) < density)
  r = rng.integers(1, 6, len(u)).astype(np.float32)
  return Ratings(u, i, r, np.zeros(len(u)), n_users, n_items)


@pytest.mark.parametrize("orientation", ["user", "item"])
@pytest.mark.parametrize("layout", ["dense", "csr"])
def test_gather_matches_numpy(orientation, layout):
  r = _random_ratings()
  csr = sparse.ratings_to_csr(r, orientation)
  ref = np.zeros(csr.shape, np.float32)
  rows, cols = (r.users, r.items) if orientation == "user" else (r.items, r.users)
  ref[rows, cols] = r.ratings
  np.testing.assert_array_equal(csr.to_dense(), ref)
  src = sparse.make_row_source(csr, force=layout)
  gather = jax.jit(lambda s, ids: s.gather(ids))
  n_rows = csr.shape[0]
  rng = np.random.default_rng(1)
  for _ in range(3):
    ids = rng.integers(0, n_rows, 8)
    ids[-2:] = n_rows  # padding rows of a ragged last batch
    v, m = gather(src, jnp.asarray(ids, jnp.int32))
    expect = np.vstack([ref, np.zeros((1, csr.shape[1]), np.float32)])[ids]
    np.testing.assert_array_equal(np.asarray(v), expect)
    np.testing.assert_array_equal(np.asarray(m), expect != 0)
  assert gather._cache_size() == 1  # one compile for every batch of this shape


def test_layout_chosen_by_budget():
  csr = sparse.ratings_to_csr(_random_ratings(), "user")
  assert isinstance(sparse.make_row_source(csr), sparse.DenseRows)
  assert isinstance(sparse.make_row_source(csr, dense_budget_bytes=100), sparse.CSRRows)


def test_empty_rows_and_budget_errors():
  r = Ratings([0, 0], [1, 2], [4.0, 5.0], [0, 0], 3, 4)  # rows 1, 2 empty
  src = sparse.make_row_source(sparse.ratings_to_csr(r), force="csr")
  v, _ = src.gather(jnp.array([1, 0, 3], jnp.int32))
  np.testing.assert_array_equal(np.asarray(v), [[0, 0, 0, 0], [0, 4, 5, 0], [0, 0, 0, 0]])
  with pytest.raises(ValueError, match="layout"):
    sparse.make_row_source(sparse.ratings_to_csr(r), force="coo")
