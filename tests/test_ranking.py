"""Ranking metrics pinned against hand-computed cases and a NumPy top-k."""

import math

import jax.numpy as jnp
import numpy as np
import pytest

from recae_jax import ranking
from recae_jax.data import sparse
from recae_jax.data.types import Ratings
from recae_jax.errors import UserError


def test_metrics_hand_computed():
  # user 0: ranking [0, 1, 2, 3], relevant {1, 3}; user 1: ranking [2, 0, 1, 3],
  # relevant {2}; user 2: no relevant item (left out of every average).
  top = np.array([[0, 1, 2, 3], [2, 0, 1, 3], [0, 1, 2, 3]])
  rel = np.zeros((3, 5), bool)
  rel[0, [1, 3]] = True
  rel[1, 2] = True
  m = ranking.ranking_metrics(top, rel, ks=(2, 4), n_catalogue=5)
  d = [1 / math.log2(j + 2) for j in range(4)]
  assert m["n_users"] == 2
  # @2: user 0 hits at rank 2 only; user 1 hits at rank 1.
  assert m["precision@2"] == pytest.approx((1 / 2 + 1 / 2) / 2)
  assert m["recall@2"] == pytest.approx((1 / 2 + 1 / 1) / 2)   # min(2, R)
  assert m["ndcg@2"] == pytest.approx((d[1] / (d[0] + d[1]) + 1.0) / 2, rel=1e-6)
  assert m["hit_rate@2"] == pytest.approx(1.0)
  assert m["map@2"] == pytest.approx(((1 / 2) / 2 + 1.0) / 2)
  # @4: user 0 hits at ranks 2 and 4.
  assert m["recall@4"] == pytest.approx((2 / 2 + 1 / 1) / 2)
  assert m["precision@4"] == pytest.approx((2 / 4 + 1 / 4) / 2)
  assert m["ndcg@4"] == pytest.approx(((d[1] + d[3]) / (d[0] + d[1]) + 1.0) / 2, rel=1e-6)
  assert m["map@4"] == pytest.approx(((1 / 2 + 2 / 4) / 2 + 1.0) / 2)
  # coverage counts only evaluated users' lists: {0,1,2} of 5 at @2... user 1 -> {2,0}
  assert m["coverage@2"] == pytest.approx(3 / 5)
  assert m["coverage@4"] == pytest.approx(4 / 5)


def test_recall_denominator_is_min_k_relevant():
  top = np.array([[0, 1, 2]])
  rel = np.zeros((1, 10), bool)
  rel[0, [0, 1, 5, 6, 7]] = True  # 5 relevant, k=2 -> denominator 2
  m = ranking.ranking_metrics(top, rel, ks=(2,))
  assert m["recall@2"] == pytest.approx(1.0)
  assert m["ndcg@2"] == pytest.approx(1.0)


def test_bad_k():
  with pytest.raises(UserError, match="positive"):
    ranking.ranking_metrics(np.zeros((1, 2), int), np.ones((1, 3), bool), ks=(0,))
  with pytest.raises(UserError, match="catalogue"):
    ranking.ranking_metrics(np.zeros((1, 2), int), np.ones((1, 3), bool), ks=(4,))


def _source(dense_UxI):
  u, i = np.nonzero(dense_UxI)
  r = Ratings(u, i, np.ones(len(u)), np.zeros(len(u)), *dense_UxI.shape)
  return sparse.make_row_source(sparse.ratings_to_csr(r, "user"))


@pytest.mark.parametrize("layout", ["dense", "csr"])
def test_blocked_topk_and_metrics_match_numpy(layout):
  rng = np.random.default_rng(0)
  n_u, n_i, k = 37, 23, 5
  scores = rng.normal(size=(n_u, n_i)).astype(np.float32)
  seen = rng.random((n_u, n_i)) < 0.3
  rel = (rng.random((n_u, n_i)) < 0.2) & ~seen
  cand = rng.random(n_i) < 0.9
  u, i = np.nonzero(seen)
  seen_src = sparse.make_row_source(sparse.ratings_to_csr(
      Ratings(u, i, np.ones(len(u)), np.zeros(len(u)), n_u, n_i), "user"), force=layout)
  table = jnp.asarray(scores)
  idx, vals = ranking.top_k(ranking.table_scores, table, np.arange(n_u), k,
                            exclude=seen_src, candidates_I=cand, n_items=n_i,
                            pad_row=n_u, block_size=8)
  masked = np.where(seen | ~cand[None], -np.inf, scores)
  ref = np.argsort(-masked, axis=1, kind="stable")[:, :k]
  np.testing.assert_array_equal(idx, ref)
  assert not seen[np.arange(n_u)[:, None], idx].any()
  got = ranking.evaluate_ranking(ranking.table_scores, table, np.arange(n_u),
                                 relevant=_source(rel), exclude=seen_src,
                                 candidates_I=cand, n_items=n_i, pad_row=n_u,
                                 ks=(3, 5), block_size=8)
  want = ranking.ranking_metrics(ref, rel, ks=(3, 5), n_catalogue=int(cand.sum()))
  for key, value in want.items():
    assert got[key] == pytest.approx(value, rel=1e-5, abs=1e-7), key
