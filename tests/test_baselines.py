"""Baseline predictors vs Surprise's loops written out in Python."""

from __future__ import annotations

import numpy as np
import pytest

from recae_jax import baselines as B
from recae_jax.data.types import Ratings
from recae_jax.errors import UserError


def _ratings(seed=0, u=25, i=18, density=0.4):
  rng = np.random.default_rng(seed)
  m = rng.random((u, i)) < density
  m[4] = False     # user without ratings -> b_u = 0
  m[:, 7] = False  # item without ratings -> b_i = 0
  rows, cols = np.nonzero(m)
  r = rng.integers(1, 6, len(rows)).astype(np.float32)
  return Ratings(rows, cols, r, np.zeros(len(rows)), u, i)


def _als_reference(t: Ratings, n_epochs=10, reg_u=15.0, reg_i=10.0):
  """Surprise's optimize_baselines.baseline_als, loop for loop."""
  mu = float(np.mean(t.ratings, dtype=np.float64))
  ur = [[] for _ in range(t.n_users)]
  ir = [[] for _ in range(t.n_items)]
  for u, i, r in zip(t.users, t.items, t.ratings):
    ur[u].append((i, float(r)))
    ir[i].append((u, float(r)))
  bu, bi = np.zeros(t.n_users), np.zeros(t.n_items)
  for _ in range(n_epochs):
    for i in range(t.n_items):
      bi[i] = sum(r - mu - bu[u] for u, r in ir[i]) / (reg_i + len(ir[i]) or 1)
    for u in range(t.n_users):
      bu[u] = sum(r - mu - bi[i] for i, r in ur[u]) / (reg_u + len(ur[u]) or 1)
  return mu, bu, bi


def _sgd_reference(t: Ratings, n_epochs=20, reg=0.02, lr=0.005):
  """Surprise's baseline_sgd: one rating at a time, in the given order."""
  mu = float(np.mean(t.ratings, dtype=np.float64))
  bu, bi = np.zeros(t.n_users), np.zeros(t.n_items)
  for _ in range(n_epochs):
    for u, i, r in zip(t.users, t.items, t.ratings):
      err = r - (mu + bu[u] + bi[i])
      bu[u] += lr * (err - reg * bu[u])
      bi[i] += lr * (err - reg * bi[i])
  return mu, bu, bi


@pytest.mark.parametrize("n_epochs,reg_u,reg_i", [(10, 15.0, 10.0),
                                                  (3, 0.0, 5.0)])
def test_als_matches_surprise_loop(n_epochs, reg_u, reg_i):
  t = _ratings()
  got = B.fit(t, B.BaselineConfig("als", n_epochs=n_epochs, reg_u=reg_u,
                                  reg_i=reg_i))
  mu, bu, bi = _als_reference(t, n_epochs, reg_u, reg_i)
  assert got.mu == pytest.approx(mu)
  np.testing.assert_allclose(got.b_u, bu, atol=1e-6)
  np.testing.assert_allclose(got.b_i, bi, atol=1e-6)
  assert got.b_u[4] == 0 and got.b_i[7] == 0
  assert got.b_u.dtype == np.float32 and got.b_i.dtype == np.float32
  pred = got.predict(t.users, t.items)
  np.testing.assert_allclose(pred, mu + bu[t.users] + bi[t.items], atol=1e-5)


def test_sgd_batch_one_is_surprise_loop_and_batches_are_close():
  t = _ratings(seed=1)
  exact = B.fit(t, B.BaselineConfig("sgd", batch_size=1, seed=None))
  mu, bu, bi = _sgd_reference(t)
  np.testing.assert_allclose(exact.b_u, bu, atol=1e-5)
  np.testing.assert_allclose(exact.b_i, bi, atol=1e-5)
  # Minibatches (shuffled, summed updates) land near the same optimum.
  mb = B.fit(t, B.BaselineConfig("sgd", batch_size=16, n_epochs=200, seed=3))
  als = B.fit(t, B.BaselineConfig("als", reg_u=0.5, reg_i=0.5, n_epochs=50))
  rmse = lambda b: np.sqrt(np.mean((b.predict(t.users, t.items)
                                    - t.ratings) ** 2))
  assert abs(rmse(mb) - rmse(als)) < 0.05
  assert rmse(mb) < rmse(B.fit(t, B.BaselineConfig("als", n_epochs=0)))


def test_transpose_and_bad_input():
  t = _ratings(seed=2)
  b = B.fit(t)
  tb = b.transpose()
  np.testing.assert_allclose(tb.predict(t.items, t.users),
                             b.predict(t.users, t.items), atol=1e-6)
  with pytest.raises(UserError, match="unknown baseline"):
    B.BaselineConfig("lbfgs")
  with pytest.raises(UserError, match="reg_u"):
    B.BaselineConfig(reg_u=-1.0)
  with pytest.raises(UserError, match="no ratings"):
    B.fit(Ratings([], [], [], [], 3, 3))
  assert B.make_config("none") is None and B.make_config(None) is None
  assert B.make_config("sgd").method == "sgd"


@pytest.mark.surprise
def test_matches_surprise_baseline_only_if_installed():
  surprise = pytest.importorskip("surprise")
  import pandas as pd
  t = _ratings(seed=3)
  df = pd.DataFrame({"u": t.users, "i": t.items, "r": t.ratings})
  data = surprise.Dataset.load_from_df(df, surprise.Reader(rating_scale=(1, 5)))
  ts = data.build_full_trainset()
  algo = surprise.BaselineOnly(verbose=False).fit(ts)
  ours = B.fit(t)
  inner_u = [ts.to_inner_uid(u) for u in np.unique(t.users)]
  inner_i = [ts.to_inner_iid(i) for i in np.unique(t.items)]
  np.testing.assert_allclose(ours.b_u[np.unique(t.users)], algo.bu[inner_u],
                             atol=1e-6)
  np.testing.assert_allclose(ours.b_i[np.unique(t.items)], algo.bi[inner_i],
                             atol=1e-6)
