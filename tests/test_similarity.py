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


def _pearson_baseline_slow(r, m, b, shrinkage):
  """Koren 2010 eq. 9 over co-rated items, one pair at a time."""
  u = r.shape[0]
  out = np.zeros((u, u))
  for a in range(u):
    for c in range(u):
      co = m[a] & m[c]
      if a == c or not co.any():
        continue
      x, y = r[a, co] - b[a, co], r[c, co] - b[c, co]
      den = np.sqrt((x * x).sum() * (y * y).sum())
      n = co.sum()
      out[a, c] = (x * y).sum() / den * n / (n + shrinkage) if den > 0 else 0
  return out


@pytest.mark.parametrize("shrinkage", [0.0, 25.0])
def test_pearson_baseline_matches_slow_reference(shrinkage):
  from recae_jax import baselines
  from recae_jax.data.types import Ratings
  r, m = _random(seed=6, integer=True)
  rows, cols = np.nonzero(m)
  t = Ratings(rows, cols, r[rows, cols], np.zeros(len(rows)), 40, 30)
  bl = baselines.fit(t)
  b = bl.mu + bl.b_u[:, None] + bl.b_i[None, :]
  ref = _pearson_baseline_slow(r, m, b, shrinkage)
  got = S.similarity_matrix(t, metric="pearson_baseline", shrinkage=shrinkage,
                            baseline=bl)
  np.testing.assert_allclose(got, ref, atol=2e-5)
  # Without baseline= the same ALS defaults are fitted on the rows as given.
  np.testing.assert_array_equal(
      S.similarity_matrix(t, metric="pearson_baseline", shrinkage=shrinkage),
      got)
  # Item rows: the user x item baseline, transposed; top-k, chunked or not.
  bi = b.T
  ref_i = _pearson_baseline_slow(r.T, m.T, bi, shrinkage)
  got_i = S.similarity_matrix(t.transpose(), metric="pearson_baseline",
                              shrinkage=shrinkage, baseline=bl.transpose())
  np.testing.assert_allclose(got_i, ref_i, atol=2e-5)
  for chunk in (None, 7):
    v, i = S.topk_neighbors(t.transpose(), 5, metric="pearson_baseline",
                            shrinkage=shrinkage, baseline=bl.transpose(),
                            chunk_size=chunk, block_size=8)
    np.fill_diagonal(ref_i, -np.inf)
    np.testing.assert_allclose(v, -np.sort(-ref_i, axis=1)[:, :5], atol=2e-5)
  with pytest.raises(UserError, match="transpose"):
    S.similarity_matrix(t.transpose(), metric="pearson_baseline", baseline=bl)


@pytest.mark.surprise
def test_pearson_baseline_matches_surprise_if_installed():
  """Surprise shrinks by (n - 1) / (n - 1 + λ) and needs n >= 2; undo that."""
  surprise = pytest.importorskip("surprise")
  from recae_jax.data.types import Ratings
  rng = np.random.default_rng(7)
  m = rng.random((30, 20)) < 0.5
  rows, cols = np.nonzero(m)
  vals = rng.uniform(1, 5, len(rows)).astype(np.float32)
  t = Ratings(rows, cols, vals, np.zeros(len(rows)), 30, 20)
  df = pd.DataFrame({"u": rows, "i": cols, "r": vals.astype(np.float64)})
  ts = surprise.Dataset.load_from_df(
      df, surprise.Reader(rating_scale=(1, 5))).build_full_trainset()
  algo = surprise.KNNBaseline(sim_options={"name": "pearson_baseline",
                                           "shrinkage": 10}, verbose=False)
  algo.fit(ts)
  inner = [ts.to_inner_uid(u) for u in range(30)]
  theirs = algo.sim[np.ix_(inner, inner)]
  n = m.astype(float) @ m.T.astype(float)
  ours = S.similarity_matrix(t, metric="pearson_baseline", shrinkage=10.0,
                             min_support=2)
  with np.errstate(invalid="ignore", divide="ignore"):
    conv = np.where(n >= 2, ours / (n / (n + 10)) * (n - 1) / (n - 1 + 10), 0)
  off = ~np.eye(30, dtype=bool)
  np.testing.assert_allclose(conv[off], theirs[off], atol=2e-5)


def test_pearson_baseline_bad_input():
  r, m = _random(seed=8)
  with pytest.raises(UserError, match="shrinkage"):
    S.similarity_matrix((r, m), metric="pearson_baseline", shrinkage=-1)
  got = S.similarity_matrix((np.zeros((3, 2), np.float32),
                             np.zeros((3, 2), bool)), metric="pearson_baseline")
  assert np.all(got == 0)  # no ratings: nothing to fit, similarity 0


@pytest.mark.parametrize("metric,centering", [("pearson", "corated"),
                                              ("pearson", "overall"),
                                              ("cosine", "corated"),
                                              ("pearson_baseline", "corated")])
def test_blocks_from_cross_sums_equal_one_square_block(metric, centering):
  """Row blocks reuse the cross sums S, Q of all rows (transposed for the
  other side of each pair); padding rows of the last block change nothing."""
  r, m = _random(seed=9, u=45, integer=True)
  whole = S.similarity_matrix((r, m), metric=metric, centering=centering)
  for bs in (7, 16):
    got = S.similarity_matrix((r, m), metric=metric, centering=centering,
                              block_size=bs)
    np.testing.assert_allclose(got, whole, atol=1e-6)


@pytest.mark.parametrize("metric,centering", [("pearson", "corated"),
                                              ("pearson", "overall"),
                                              ("cosine", "corated"),
                                              ("pearson_baseline", "corated")])
def test_sparse_topk_equals_dense(metric, centering):
  r, m = _random(seed=10, u=50, integer=False)
  full = S.similarity_matrix((r, m), metric=metric, centering=centering)
  np.fill_diagonal(full, -np.inf)
  v, i = S.topk_neighbors((r, m), 6, metric=metric, centering=centering,
                          sparse=True, block_size=8, rows=np.arange(3, 50))
  np.testing.assert_allclose(v, -np.sort(-full[3:], axis=1)[:, :6], atol=2e-5)
  np.testing.assert_allclose(np.take_along_axis(full[3:], i, 1), v, atol=2e-5)
