"""Top-N ranking and ranking metrics, vectorized over blocks of users.

Everything here runs on device in one compiled `lax.scan` over fixed-size
blocks of users: score the block, mask the items a user already saw (and
items outside the candidate catalogue) with -inf, `lax.top_k`, then read the
relevance of each ranked slot from the held-out rows and sum per-user metrics.

Metric definitions (per user with >= 1 relevant held-out item, then averaged
over those users; `hit_j` = 1 if the item ranked j-th (0-based) is relevant,
`R` = number of relevant items):

    precision@k = Σ_{j<k} hit_j / k
    recall@k    = Σ_{j<k} hit_j / min(k, R)        (Liang et al. 2018, Mult-VAE)
    NDCG@k      = Σ_{j<k} hit_j / log2(j+2)  /  Σ_{j<min(k,R)} 1 / log2(j+2)
    hit rate@k  = 1[Σ_{j<k} hit_j > 0]
    MAP@k       = Σ_{j<k} hit_j · precision@(j+1) / min(k, R)
    coverage@k  = |distinct items in all evaluated users' top-k| / |catalogue|

Users with no relevant item are left out of the averages (`n_users` says how
many counted). Ties in scores are broken by item index (lax.top_k's order).
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from recae_jax.data import sparse
from recae_jax.data.types import Ratings
from recae_jax.errors import UserError

METRICS = ("precision", "recall", "ndcg", "hit_rate", "map")

# score_fn(ctx, rows_B) -> scores_BxI; must be a module-level (hashable) function.
ScoreFn = Callable[[Any, jax.Array], jax.Array]


def _discounts(k: int) -> jax.Array:
  return 1.0 / jnp.log2(jnp.arange(k, dtype=jnp.float32) + 2.0)


def metrics_from_hits(hits_BxK: jax.Array, n_rel_B: jax.Array,
                      k: int) -> dict[str, jax.Array]:
  """Per-user metrics@k from the relevance of the ranked slots (first k used).

  `hits_BxK` is 0/1 for the top-K (K >= k) ranked items, `n_rel_B` the number
  of relevant items per user. Users with n_rel = 0 get 0 everywhere.
  """
  h = hits_BxK[:, :k].astype(jnp.float32)
  n_rel = n_rel_B.astype(jnp.float32)
  denom = jnp.maximum(jnp.minimum(float(k), n_rel), 1.0)
  disc_K = _discounts(k)
  dcg = h @ disc_K
  # IDCG: the first min(k, R) discounts, via a cumulative sum indexed by R.
  cum = jnp.concatenate([jnp.zeros(1), jnp.cumsum(disc_K)])
  idcg = cum[jnp.minimum(n_rel_B, k).astype(jnp.int32)]
  n_hit = jnp.sum(h, axis=1)
  prec_at_j = jnp.cumsum(h, axis=1) / jnp.arange(1, k + 1, dtype=jnp.float32)
  has = n_rel > 0
  z = jnp.zeros_like(n_hit)
  return {
      "precision": jnp.where(has, n_hit / k, z),
      "recall": jnp.where(has, n_hit / denom, z),
      "ndcg": jnp.where(has, dcg / jnp.maximum(idcg, 1e-12), z),
      "hit_rate": jnp.where(has, (n_hit > 0).astype(jnp.float32), z),
      "map": jnp.where(has, jnp.sum(h * prec_at_j, axis=1) / denom, z),
  }


def ranking_metrics(top_UxK, relevant_UxI, ks: Sequence[int] = (10,),
                    n_catalogue: Optional[int] = None) -> dict[str, float]:
  """Metrics of given rankings against a dense relevance matrix (small data).

  `top_UxK` are item indices in rank order; `relevant_UxI` is boolean.
  Returns {"precision@k": ..., "recall@k": ..., "ndcg@k": ..., "hit_rate@k",
  "map@k", "coverage@k", "n_users"}.
  """
  top_UxK = jnp.asarray(top_UxK, jnp.int32)
  rel_UxI = jnp.asarray(relevant_UxI).astype(bool)
  ks = tuple(int(k) for k in ks)
  _check_ks(ks, top_UxK.shape[1], rel_UxI.shape[1])
  n_cat = rel_UxI.shape[1] if n_catalogue is None else n_catalogue
  sums, n_users, covered = jax.device_get(_dense_metrics(top_UxK, rel_UxI, ks))
  out: dict[str, float] = {"n_users": int(n_users)}
  for name, v in sums.items():
    out[name] = float(v) / max(1, int(n_users))
  for k, c in zip(ks, covered):
    out[f"coverage@{k}"] = float(c) / n_cat
  return out


@functools.partial(jax.jit, static_argnames=("ks",))
def _dense_metrics(top_UxK, rel_UxI, ks):
  hits_UxK = jnp.take_along_axis(rel_UxI, top_UxK, axis=1)
  n_rel_U = jnp.sum(rel_UxI, axis=1)
  has_U = n_rel_U > 0
  sums, covered = {}, []
  for k in ks:
    per = metrics_from_hits(hits_UxK, n_rel_U, k)
    for name in METRICS:
      sums[f"{name}@{k}"] = jnp.sum(per[name])
    seen_I = jnp.zeros(rel_UxI.shape[1], bool).at[top_UxK[:, :k]].max(
        jnp.broadcast_to(has_U[:, None], top_UxK[:, :k].shape))
    covered.append(jnp.sum(seen_I))
  return sums, jnp.sum(has_U), jnp.stack(covered)


def _check_ks(ks: Sequence[int], k_max: int, n_items: int) -> None:
  if not ks:
    raise UserError("no cut-offs k given")
  for k in ks:
    if k <= 0:
      raise UserError(f"k={k} must be positive")
    if k > n_items:
      raise UserError(f"k={k} is larger than the catalogue ({n_items} items)")
    if k > k_max:
      raise UserError(f"k={k} is larger than the ranking depth {k_max}")


def _blocks(rows: np.ndarray, block_size: int, pad: int) -> jax.Array:
  rows = np.asarray(rows, np.int32)
  n_blocks = max(1, -(-len(rows) // block_size))
  out = np.full(n_blocks * block_size, pad, np.int32)
  out[: len(rows)] = rows
  return jnp.asarray(out.reshape(n_blocks, block_size))


def _masked_scores(score_fn, ctx, rows_B, exclude, candidates_I):
  s_BxI = score_fn(ctx, rows_B).astype(jnp.float32)
  if exclude is not None:
    _, seen_BxI = exclude.gather(rows_B)
    s_BxI = jnp.where(seen_BxI, -jnp.inf, s_BxI)
  return jnp.where(candidates_I[None, :], s_BxI, -jnp.inf)


@functools.partial(jax.jit, static_argnames=("score_fn", "k"))
def _topk_scan(score_fn, ctx, rows_KxB, exclude, candidates_I, k):
  def body(_, rows_B):
    s_BxI = _masked_scores(score_fn, ctx, rows_B, exclude, candidates_I)
    vals_BxK, idx_BxK = jax.lax.top_k(s_BxI, k)
    return None, (idx_BxK, vals_BxK)
  _, (idx, vals) = jax.lax.scan(body, None, rows_KxB)
  return idx.reshape(-1, k), vals.reshape(-1, k)


def top_k(score_fn: ScoreFn, ctx, rows: np.ndarray, k: int, *,
          exclude: Optional[sparse.RowSource] = None,
          candidates_I: Optional[np.ndarray] = None, n_items: int,
          pad_row: int, block_size: int = 256) -> tuple[np.ndarray, np.ndarray]:
  """(item indices [U, k], scores [U, k]) of the best unseen candidates.

  `exclude.gather(rows)` marks each user's seen items (never recommended);
  `candidates_I` (bool) limits the catalogue. `pad_row` is a row id that
  `score_fn` and `exclude` accept for padding the last block. A user with
  fewer than k admissible items gets -inf scores in the tail slots.
  """
  n_cand = n_items if candidates_I is None else int(np.sum(candidates_I))
  if k <= 0:
    raise UserError(f"k={k} must be positive")
  if k > n_cand:
    raise UserError(f"k={k} is larger than the catalogue ({n_cand} items)")
  cand = (jnp.ones(n_items, bool) if candidates_I is None
          else jnp.asarray(candidates_I, bool))
  idx, vals = _topk_scan(score_fn, ctx, _blocks(rows, block_size, pad_row),
                         exclude, cand, int(k))
  n = len(rows)
  idx, vals = jax.device_get((idx, vals))
  return np.asarray(idx[:n]), np.asarray(vals[:n])


PER_USER = ("ndcg", "recall")  # the per-user metrics evaluate_ranking_per_user returns


@functools.partial(jax.jit, static_argnames=("score_fn", "ks", "per_user"))
def _metrics_scan(score_fn, ctx, rows_KxB, exclude, relevant, candidates_I, ks,
                  per_user=False):
  k_max = max(ks)
  n_items = candidates_I.shape[0]

  def body(carry, rows_B):
    sums, counts, covered_KxI = carry
    s_BxI = _masked_scores(score_fn, ctx, rows_B, exclude, candidates_I)
    _, idx_BxK = jax.lax.top_k(s_BxI, k_max)
    rel_vals, _ = relevant.gather(rows_B)
    rel_BxI = rel_vals > 0
    hits_BxK = jnp.take_along_axis(rel_BxI, idx_BxK, axis=1)
    n_rel_B = jnp.sum(rel_BxI, axis=1)
    has_B = n_rel_B > 0
    new_sums, new_cov, rows_out = dict(sums), [], {}
    for j, k in enumerate(ks):
      per = metrics_from_hits(hits_BxK, n_rel_B, k)
      for name in METRICS:
        new_sums[f"{name}@{k}"] = sums[f"{name}@{k}"] + jnp.sum(per[name])
      new_cov.append(covered_KxI[j].at[idx_BxK[:, :k]].max(
          jnp.broadcast_to(has_B[:, None], (rows_B.shape[0], k))))
      if per_user:
        rows_out.update({f"{name}@{k}": per[name] for name in PER_USER})
    if per_user:
      rows_out["has"] = has_B
    return (new_sums, counts + jnp.sum(has_B), jnp.stack(new_cov)), rows_out

  sums0 = {f"{n}@{k}": jnp.zeros((), jnp.float32) for k in ks for n in METRICS}
  carry0 = (sums0, jnp.zeros((), jnp.int32), jnp.zeros((len(ks), n_items), bool))
  (sums, count, covered), rows_out = jax.lax.scan(body, carry0, rows_KxB)
  return sums, count, jnp.sum(covered, axis=1), rows_out


def _evaluate(score_fn, ctx, rows, relevant, exclude, candidates_I, n_items, pad_row,
              ks, block_size, per_user):
  ks = tuple(int(k) for k in ks)
  cand = (np.ones(n_items, bool) if candidates_I is None
          else np.asarray(candidates_I, bool))
  _check_ks(ks, max(ks), int(cand.sum()))
  sums, count, covered, rows_out = jax.device_get(_metrics_scan(
      score_fn, ctx, _blocks(rows, block_size, pad_row), exclude, relevant,
      jnp.asarray(cand), ks, per_user))
  n = max(1, int(count))
  out = {name: float(v) / n for name, v in sums.items()}
  for j, k in enumerate(ks):
    out[f"coverage@{k}"] = float(covered[j]) / max(1, int(cand.sum()))
  out["n_users"] = int(count)
  out = dict(sorted(out.items()))
  if not per_user:
    return out
  m = len(rows)  # the scan's outputs are [n_blocks, B]: flatten, drop the padding
  flat = {name: np.asarray(v).reshape(-1)[:m] for name, v in rows_out.items()}
  has = flat.pop("has")
  per = {"users": np.asarray(rows, np.int64)[has]}
  per.update({name: v[has].astype(np.float64) for name, v in sorted(flat.items())})
  return out, per


def evaluate_ranking(score_fn: ScoreFn, ctx, rows: np.ndarray, *,
                     relevant: sparse.RowSource,
                     exclude: Optional[sparse.RowSource] = None,
                     candidates_I: Optional[np.ndarray] = None, n_items: int,
                     pad_row: int, ks: Sequence[int] = (10,),
                     block_size: int = 256) -> dict[str, float]:
  """Ranking metrics of `score_fn` for users `rows` against held-out rows.

  `relevant.gather(rows)` gives > 0 for each user's relevant held-out items;
  `exclude` their seen items. Metric sums stay on device; one host transfer.
  """
  return _evaluate(score_fn, ctx, rows, relevant, exclude, candidates_I, n_items,
                   pad_row, ks, block_size, False)


def evaluate_ranking_per_user(score_fn: ScoreFn, ctx, rows: np.ndarray, *,
                              relevant: sparse.RowSource,
                              exclude: Optional[sparse.RowSource] = None,
                              candidates_I: Optional[np.ndarray] = None, n_items: int,
                              pad_row: int, ks: Sequence[int] = (10,),
                              block_size: int = 256) -> tuple[dict, dict]:
  """(`evaluate_ranking`'s averages, per-user metrics): the second is
  {"users": [n] the evaluated users with >= 1 relevant item, in `rows`' order,
  "ndcg@k", "recall@k": [n] float64 for each k}; their means are the averages.
  Computed in the same compiled scan (per-user values are its outputs)."""
  return _evaluate(score_fn, ctx, rows, relevant, exclude, candidates_I, n_items,
                   pad_row, ks, block_size, True)


def relevance_source(ratings: Ratings, threshold: Optional[float] = 4.0,
                     dense_budget_bytes: int = 1 << 30) -> sparse.RowSource:
  """User rows marking held-out items with rating >= threshold (all if None)."""
  if threshold is not None:
    ratings = ratings.subset(ratings.ratings >= threshold)
  ones = Ratings(ratings.users, ratings.items, np.ones(len(ratings), np.float32),
                 ratings.timestamps, ratings.n_users, ratings.n_items)
  return sparse.make_row_source(sparse.ratings_to_csr(ones, "user"),
                                dense_budget_bytes)


def seen_source(ratings: Ratings, dense_budget_bytes: int = 1 << 30
                ) -> sparse.RowSource:
  """User rows marking every item the user rated (values 1)."""
  return relevance_source(ratings, None, dense_budget_bytes)


# ------------------------------------------------------- common score fns

def table_scores(pred_UxI: jax.Array, rows_B: jax.Array) -> jax.Array:
  """Scores from a precomputed score table (out-of-range pad rows clamp)."""
  return pred_UxI[rows_B]


def popularity_scores(count_I: jax.Array, rows_B: jax.Array) -> jax.Array:
  """The same item-popularity scores for every user."""
  return jnp.broadcast_to(count_I[None, :], (rows_B.shape[0], count_I.shape[0]))
