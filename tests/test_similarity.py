"""Similarity vs slow NumPy / pandas references."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from recae_jax import similarity as S
from recae_jax.errors import UserError


def _random(seed=0, u=40, i=30, density=0.4, integer=False):
  rng = np.random.default_rng(seed)
  r = (rng.integers(1, 6, (u, i)) if integer
       else rng.uniform(1, 5, (u, i))).astype(np.float32)
  m = rng.random((u, i)) < density
  m[3] = False       # user with no ratings
  r[5] = 3.0         # constant user: zero variance
  return r, m


def _off(u):
  return ~np.eye(u, dtype=bool)


def _slow(r, m, metric, centering):
  u = r.shape[0]
  mu = np.array([r[a, m[a]].mean() if m[a].any() else 0 for a in range(u)])
  out = np.zeros((u, u))
  for a in range(u):
    for b in range(u):
      co = m[a] & m[b]
      if metric == "cosine":
        x, y = r[a, co].astype(float), r[b, co].astype(float)
      else:
        x, y = r[a, co] - mu[a], r[b, co] - mu[b]
      den = np.sqrt((x * x).sum() * (y * y).sum())
      ok = den > 1e-9 and (metric == "cosine" or co.sum() >= 2)
      out[a, b] = (x * y).sum() / den if ok else 0.0
  return out


@pytest.mark.parametrize("min_periods", [1, 3, 6])
@pytest.mark.parametrize("integer", [False, True])
def test_corated_matches_pandas(min_periods, integer):
  r, m = _random(integer=integer)
  ref = pd.DataFrame(np.where(m, r, np.nan).T).corr(
      min_periods=min_periods).fillna(0).to_numpy()
  got = S.similarity_matrix((r, m), centering="corated",
                            min_support=min_periods)
  # Documented: a co-rated variance below ~1e-5 of the raw sum of squares is
  # float32 noise and counts as zero variance (pandas, in float64, says ±1).
  counts = m.sum(1, keepdims=True)
  means = np.where(m, r, 0).sum(1, keepdims=True) / np.maximum(counts, 1)
  x = np.where(m, r - means, 0)  # rows with no ratings stay all zero
  mf = m.astype(float)
  n = mf @ mf.T
  with np.errstate(invalid="ignore", divide="ignore"):
    var = (x * x) @ mf.T - (x @ mf.T) ** 2 / n
    rel = np.nan_to_num(var / ((x * x) @ mf.T), nan=1.0)
  keep = _off(40) & (rel > 1e-4) & (rel.T > 1e-4)
  np.testing.assert_allclose(got[keep], ref[keep], atol=2e-5)
  assert np.all(np.diag(got) == 0) and np.isfinite(got).all()


@pytest.mark.parametrize("metric,centering", [("pearson", "overall"),
                                              ("cosine", "corated")])
def test_overall_and_cosine_match_slow_reference(metric, centering):
  r, m = _random(seed=1)
  got = S.similarity_matrix((r, m), metric=metric, centering=centering)
  ref = _slow(r, m, metric, centering)
  np.testing.assert_allclose(got[_off(40)], ref[_off(40)], atol=2e-5)


def test_shrinkage_and_min_support():
  r, m = _random(seed=2)
  base = S.similarity_matrix((r, m))
  n = m.astype(float) @ m.T.astype(float)
  shrunk = S.similarity_matrix((r, m), shrinkage=10.0)
  np.testing.assert_allclose(shrunk, base * n / (n + 10.0), atol=1e-6)
  sup = S.similarity_matrix((r, m), min_support=8)
  np.testing.assert_array_equal(sup[n < 8], 0.0)
  np.testing.assert_allclose(sup[n >= 8], base[n >= 8], atol=1e-7)


def test_zero_variance_and_empty_rows_are_zero_not_nan():
  r, m = _random(seed=3)
  for metric in ("pearson", "cosine"):
    for centering in ("corated", "overall"):
      got = S.similarity_matrix((r, m), metric=metric, centering=centering)
      assert np.isfinite(got).all()
      assert np.all(got[3] == 0) and np.all(got[:, 3] == 0)
      if metric == "pearson":
        assert np.all(got[5] == 0)


@pytest.mark.parametrize("chunk", [None, 7])
def test_topk_blocked_equals_full(chunk):
  r, m = _random(seed=4, u=50, integer=True)
  full = S.similarity_matrix((r, m))
  np.fill_diagonal(full, -np.inf)
  k = 6
  order = np.lexsort((np.broadcast_to(np.arange(50), (50, 50)), -full))[:, :k]
  v, i = S.topk_neighbors((r, m), k, block_size=8, chunk_size=chunk)
  np.testing.assert_allclose(v, np.take_along_axis(full, order, 1), atol=1e-6)
  if chunk is None:
    np.testing.assert_array_equal(i, order)
  else:  # chunked sums round differently: tied neighbours may swap
    np.testing.assert_allclose(np.take_along_axis(full, i, 1), v, atol=1e-6)
  assert not np.any(i == np.arange(50)[:, None])  # never itself


def test_topk_bad_and_large_k():
  r, m = _random(seed=5, u=10)
  v, i = S.topk_neighbors((r, m), 100)
  assert v.shape == (10, 9)  # clamped to U - 1
  with pytest.raises(UserError):
    S.topk_neighbors((r, m), -1)
  with pytest.raises(UserError, match="unknown similarity"):
    S.similarity_matrix((r, m), metric="jaccard")
  with pytest.raises(UserError, match="unknown centering"):
    S.similarity_matrix((r, m), centering="median")
