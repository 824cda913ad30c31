"""Weighted-deviation user-KNN prediction (S0's imputation, KNNWithMeans).

  r̂(a, p) = mean_a + Σ_b w(a,b) (r_bp − mean_b) / D,   b ∈ N_k(a, p)

N_k(a, p) is the k users most similar to a among those who rated p (Surprise
KNNWithMeans: ranked by raw similarity, ties to the lower user index; a is
never its own neighbour); `neighbors=None` or 0 uses every rater. w is the
similarity, or max(sim, 0) with `positive_only` (what Surprise >= 1.1 does).
D = Σ|w| (`denominator="abs"`, the default) or Σ w (`"signed"`, S0's formula;
near-zero sums make wild values, so predictions are clipped to the rating
scale, as S0's 0.5-step round-off did silently).

Fallbacks (counted): fewer than `min_k` neighbours with w != 0, or D == 0 →
the user's mean (so do items nobody rated); users with no ratings → the global
mean. Output never contains NaN.

How it stays fast without Python loops over users or items: "all raters" is
three masked matmuls (`W @ (m·dev)`, `|W| @ m`, `[W≠0] @ m`). The top-k among
raters of p only matters for items with more than k raters; those go into a
few width buckets (each item's raters padded to a bucket width W), and for a
block of users the candidate similarities are one gather [B, P, W] followed by
`lax.top_k` — or, when W − k < k, the complement: everything minus the W − k
worst, which is a much cheaper top_k. Blocks of users bound the memory.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from recae_jax import similarity as sim_lib
from recae_jax.data.types import Ratings
from recae_jax.errors import UserError

DENOMINATORS = ("abs", "signed")

# Elements of the largest [B, P, W] candidate tensor per user block.
_ELEMENT_BUDGET = 1 << 24


@dataclasses.dataclass(frozen=True)
class KNNConfig:
  """Everything that defines a KNN prediction; hashable (static under jit)."""

  neighbors: Optional[int] = 40     # None / 0: all raters of the item
  metric: str = "pearson"
  centering: str = "corated"
  min_support: int = 1
  shrinkage: float = 0.0
  positive_only: bool = False
  min_k: int = 1
  denominator: str = "abs"
  round_to: Optional[float] = None  # e.g. 0.5 (S0); then clipped to the scale
  clip: bool = True                 # clip predictions to rating_scale
  rating_scale: Optional[tuple[float, float]] = None  # None: train min/max

  def __post_init__(self):
    k = self.neighbors
    if k is not None and (isinstance(k, bool) or int(k) != k or k < 0):
      raise UserError(f"neighbors must be an integer >= 0 (0 = all raters), "
                      f"got {k!r}")
    object.__setattr__(self, "neighbors", None if not k else int(k))
    if int(self.min_k) != self.min_k or self.min_k < 0:
      raise UserError(f"min_k must be an integer >= 0, got {self.min_k!r}")
    object.__setattr__(self, "min_k", int(self.min_k))
    if self.denominator not in DENOMINATORS:
      raise UserError(f"unknown denominator {self.denominator!r}; choose one "
                      f"of {', '.join(DENOMINATORS)}")
    if self.round_to is not None and not (self.round_to > 0
                                          and math.isfinite(self.round_to)):
      raise UserError(f"round_to must be > 0, got {self.round_to!r}")
    if self.rating_scale is not None:
      lo, hi = (float(v) for v in self.rating_scale)
      if not lo <= hi:
        raise UserError(f"rating_scale must be (low, high), got "
                        f"{self.rating_scale!r}")
      object.__setattr__(self, "rating_scale", (lo, hi))
    self.similarity  # validates metric / centering / support / shrinkage

  @property
  def similarity(self) -> sim_lib.SimilarityConfig:
    return sim_lib.SimilarityConfig(self.metric, self.centering,
                                    self.min_support, self.shrinkage)


def make_config(config: Optional[KNNConfig] = None, **kwargs) -> KNNConfig:
  if config is None:
    return KNNConfig(**kwargs)
  return dataclasses.replace(config, **kwargs) if kwargs else config


# ------------------------------------------------------- item rater table


@dataclasses.dataclass(frozen=True, eq=False)
class _Bucket:
  items: np.ndarray   # int32 [P] item ids
  idx: np.ndarray     # int32 [P, W] rater user ids, padded with U
  dev: np.ndarray     # float32 [P, W] r_bp - mean_b, padded with 0
  mode: str           # "sum" (all raters), "top" (top k) or "comp"
  kk: int             # top_k size: k for "top", W - k for "comp"


def _width(n: np.ndarray) -> np.ndarray:
  """Bucket widths: 8, 12, 16, 24, 32, 48, ... (at most 50% padding)."""
  n = np.maximum(n, 8)
  e = np.floor(np.log2(n)).astype(np.int64)  # 2**e <= n < 2**(e+1)
  return np.where(n == 2 ** e, 2 ** e,
                  np.where(n <= 3 * 2 ** (e - 1), 3 * 2 ** (e - 1),
                           2 ** (e + 1)))


def _rater_buckets(rows: sim_lib._Rows, k: Optional[int],
                   min_raters: int) -> list[_Bucket]:
  """Items with more than `min_raters` raters, grouped by padded width."""
  u = rows.n_rows
  users = np.repeat(np.arange(u, dtype=np.int32), rows.counts)
  items = rows.indices
  dev = rows.values - rows.means[users]
  order = np.lexsort((users, items))  # by item, then user (tie order)
  users, items, dev = users[order], items[order], dev[order]
  counts = np.bincount(items, minlength=rows.n_cols)
  starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
  pos = np.arange(len(items)) - starts[items]
  width = _width(counts)
  buckets = []
  for w in np.unique(width[counts > min_raters]):  # a handful of widths
    its = np.flatnonzero((width == w) & (counts > min_raters)).astype(np.int32)
    slot = np.full(rows.n_cols, -1, np.int64)
    slot[its] = np.arange(len(its))
    sel = slot[items] >= 0
    # Rows padded to a power of two so other folds / datasets reuse compiles;
    # padded rows point at item n_cols (dropped on scatter) and user U.
    n_rows = 1 << int(math.ceil(math.log2(max(len(its), 8))))
    idx = np.full((n_rows, w), u, np.int32)
    dv = np.zeros((n_rows, w), np.float32)
    idx[slot[items[sel]], pos[sel]] = users[sel]
    dv[slot[items[sel]], pos[sel]] = dev[sel]
    its = np.concatenate([its, np.full(n_rows - len(its), rows.n_cols,
                                       np.int32)])
    if k is None or w <= k:
      mode, kk = "sum", 0
    elif w - k < k:
      mode, kk = "comp", int(w - k)
    else:
      mode, kk = "top", int(k)
    buckets.append(_Bucket(its, idx, dv, mode, kk))
  return buckets


# ------------------------------------------------------------ device math


def _weights(s, cfg: KNNConfig):
  """Similarity → weight; -inf (not a candidate) → 0."""
  if cfg.positive_only:
    return jnp.where(s > 0, s, 0.0)
  return jnp.where(jnp.isfinite(s), s, 0.0)


def _sums(w, dev, cfg: KNNConfig, axis=-1):
  num = jnp.sum(w * dev, axis=axis)
  den = jnp.sum(jnp.abs(w) if cfg.denominator == "abs" else w, axis=axis)
  cnt = jnp.sum((w != 0).astype(jnp.float32), axis=axis)
  return num, den, cnt


def _reduce(s, dev, mode: str, kk: int, cfg: KNNConfig):
  """(num, den, cnt) over the last axis of candidate sims s / deviations dev.

  s is -inf where there is no candidate (padding, or the user itself).
  """
  if mode == "sum":
    return _sums(_weights(s, cfg), dev, cfg)
  if mode == "top":
    v, pos = jax.lax.top_k(s, kk)
    d = jnp.take_along_axis(jnp.broadcast_to(dev, s.shape), pos, axis=-1)
    return _sums(_weights(v, cfg), d, cfg)
  # comp: all minus the kk worst. Reversed so ties exclude the higher user
  # index first, matching top_k's "lower index wins".
  total = _sums(_weights(s, cfg), dev, cfg)
  neg = jnp.flip(jnp.where(jnp.isfinite(s), -s, jnp.inf), axis=-1)
  v, pos = jax.lax.top_k(neg, kk)
  d = jnp.take_along_axis(jnp.broadcast_to(jnp.flip(dev, -1), s.shape), pos,
                          axis=-1)
  ex = _sums(_weights(-v, cfg), d, cfg)
  return tuple(t - e for t, e in zip(total, ex))


@functools.partial(jax.jit, static_argnames=("cfg", "modes"))
def _fill_block(sim_BxU, row0, mdev_UxI, m_UxI, bucket_items, bucket_idx,
                bucket_dev, cfg: KNNConfig, modes):
  """num/den/cnt [B, I] for a user block; sim_BxU has 0 on the self entry."""
  b, u = sim_BxU.shape
  w_BxU = _weights(sim_BxU, cfg)
  hp = jax.lax.Precision.HIGHEST
  num = jnp.matmul(w_BxU, mdev_UxI, precision=hp)
  den = jnp.matmul(jnp.abs(w_BxU) if cfg.denominator == "abs" else w_BxU,
                   m_UxI, precision=hp)
  cnt = jnp.matmul((w_BxU != 0).astype(jnp.float32), m_UxI, precision=hp)
  if bucket_items:
    self_ = (row0 + jnp.arange(b))[:, None] == jnp.arange(u)[None, :]
    sim_ext = jnp.concatenate(
        [jnp.where(self_, -jnp.inf, sim_BxU), jnp.full((b, 1), -jnp.inf)], 1)
    for items, idx, dev, (mode, kk) in zip(bucket_items, bucket_idx,
                                           bucket_dev, modes):
      s = jnp.take(sim_ext, idx, axis=1)  # [B, P, W]
      n_, d_, c_ = _reduce(s, dev[None], mode, kk, cfg)
      num = num.at[:, items].set(n_, mode="drop")
      den = den.at[:, items].set(d_, mode="drop")
      cnt = cnt.at[:, items].set(c_, mode="drop")
  return num, den, cnt


@functools.partial(jax.jit, static_argnames=("cfg", "mode", "kk"))
def _pairs_bucket(sim_ext_BxU1, lu, slot, idx, dev, cfg: KNNConfig,
                  mode: str, kk: int):
  s = sim_ext_BxU1[lu[:, None], idx[slot]]  # [n, W]
  return _reduce(s, dev[slot], mode, kk, cfg)


@jax.jit
def _self_excluded(sim_BxU, row0):
  b, u = sim_BxU.shape
  self_ = (row0 + jnp.arange(b))[:, None] == jnp.arange(u)[None, :]
  return jnp.concatenate(
      [jnp.where(self_, -jnp.inf, sim_BxU), jnp.full((b, 1), -jnp.inf)], 1)


def _finish(num, den, cnt, mean_a, has_ratings, global_mean, cfg: KNNConfig,
            scale):
  """Predictions and a fallback mask, numpy float32 (host side)."""
  num, den, cnt = (np.asarray(a, np.float64) for a in (num, den, cnt))
  ok = (cnt >= max(cfg.min_k, 1)) & (den != 0)
  with np.errstate(divide="ignore", invalid="ignore"):
    pred = mean_a + np.where(ok, num / np.where(ok, den, 1.0), 0.0)
  pred = np.where(has_ratings, pred, global_mean)
  fallback = ~ok | ~has_ratings
  pred = np.where(np.isfinite(pred), pred, mean_a)  # overflow guard
  if cfg.round_to:
    pred = np.round(pred / cfg.round_to) * cfg.round_to
  if cfg.clip or cfg.round_to:
    pred = np.clip(pred, *scale)
  return pred.astype(np.float32), fallback


class _Prepared:
  """Host/device state shared by fill_matrix and predict_pairs."""

  def __init__(self, train: Ratings, cfg: KNNConfig, for_pairs: bool):
    if not isinstance(train, Ratings):
      raise UserError(f"train must be Ratings, got {type(train).__name__}")
    self.cfg = cfg
    self.feats = sim_lib.DenseFeatures(train, cfg.similarity)
    rows = self.feats.rows
    self.rows = rows
    self.u, self.i = rows.n_rows, rows.n_cols
    counts = rows.counts
    self.has_ratings = counts > 0
    self.global_mean = (float(rows.values.mean()) if len(rows.values)
                        else 0.0)
    self.means = np.where(self.has_ratings, rows.means,
                          self.global_mean).astype(np.float32)
    if cfg.rating_scale is not None:
      self.scale = cfg.rating_scale
    elif len(rows.values):
      self.scale = (float(rows.values.min()), float(rows.values.max()))
    else:
      self.scale = (-np.inf, np.inf)
    # k >= number of other users means "all raters" (documented fallback).
    k = cfg.neighbors
    if k is not None and k >= self.u - 1:
      k = None
    self.k = k
    min_raters = 0 if for_pairs else (k if k is not None else self.u)
    self.buckets = _rater_buckets(rows, k, min_raters)

  def block_size(self, requested: Optional[int]) -> int:
    if requested:
      return int(min(requested, self.u))
    per_user = max([b.idx.size for b in self.buckets] + [self.u, self.i])
    return int(max(1, min(self.u, _ELEMENT_BUDGET // per_user)))


def fill_matrix(train: Ratings, config: Optional[KNNConfig] = None, *,
                block_size: Optional[int] = None, keep_observed: bool = True,
                return_fallback: bool = False, **kwargs):
  """Dense float32 [U, I]: observed ratings kept, every other cell predicted.

  kwargs are KNNConfig fields. With keep_observed=False observed cells are
  predicted too (leave-self-out: a is never its own neighbour). With
  return_fallback=True also returns the bool [U, I] fallback mask.
  """
  cfg = make_config(config, **kwargs)
  prep = _Prepared(train, cfg, for_pairs=False)
  u, i = prep.u, prep.i
  r, m = prep.rows.dense()
  dev = np.where(m > 0, r - prep.rows.means[:, None], 0.0).astype(np.float32)
  mdev, m_d = jnp.asarray(dev), jnp.asarray(m)
  b_items = tuple(jnp.asarray(b.items) for b in prep.buckets)
  b_idx = tuple(jnp.asarray(b.idx) for b in prep.buckets)
  b_dev = tuple(jnp.asarray(b.dev) for b in prep.buckets)
  modes = tuple((b.mode, b.kk) for b in prep.buckets)
  bs = prep.block_size(block_size)
  out = np.empty((u, i), np.float32)
  fb = np.empty((u, i), bool)
  for start in range(0, u, bs):  # user blocks
    stop = min(start + bs, u)
    sim = prep.feats.block(start, bs)
    num, den, cnt = _fill_block(sim, start, mdev, m_d, b_items, b_idx, b_dev,
                                cfg, modes)
    sl = slice(0, stop - start)
    pred, fall = _finish(np.asarray(num)[sl], np.asarray(den)[sl],
                         np.asarray(cnt)[sl], prep.means[start:stop, None],
                         prep.has_ratings[start:stop, None], prep.global_mean,
                         cfg, prep.scale)
    out[start:stop], fb[start:stop] = pred, fall
  if keep_observed:
    obs = m > 0
    out[obs] = r[obs]
    fb[obs] = False
  return (out, fb) if return_fallback else out


def predict_pairs(train: Ratings, users: Sequence[int], items: Sequence[int],
                  config: Optional[KNNConfig] = None, *,
                  block_size: Optional[int] = None,
                  **kwargs) -> tuple[np.ndarray, int]:
  """Predictions for (users[n], items[n]) pairs: (float32 [n], n_fallback).

  Work is per pair (its item's raters only), blocked over users, so this is
  far cheaper than fill_matrix when there are few pairs.
  """
  cfg = make_config(config, **kwargs)
  users = np.asarray(users, np.int64)
  items = np.asarray(items, np.int64)
  if users.shape != items.shape or users.ndim != 1:
    raise UserError("users and items must be 1-D arrays of equal length")
  prep = _Prepared(train, cfg, for_pairs=True)
  if len(users) and (users.min() < 0 or users.max() >= prep.u
                     or items.min() < 0 or items.max() >= prep.i):
    raise UserError(f"pair ids out of range: users must be in [0, {prep.u}) "
                    f"and items in [0, {prep.i})")
  n = len(users)
  num = np.zeros(n, np.float64)
  den = np.zeros(n, np.float64)
  cnt = np.zeros(n, np.float64)
  which = np.full(prep.i, -1, np.int64)
  slot = np.zeros(prep.i, np.int64)
  for j, b in enumerate(prep.buckets):
    real = b.items < prep.i
    which[b.items[real]] = j
    slot[b.items[real]] = np.flatnonzero(real)
  dev_idx = [(jnp.asarray(b.idx), jnp.asarray(b.dev)) for b in prep.buckets]
  bs = prep.block_size(block_size)
  order = np.argsort(users, kind="stable")
  blk = users[order] // bs
  for blk_id in np.unique(blk):  # user blocks that have pairs
    start = int(blk_id) * bs
    sel = order[blk == blk_id]
    sim_ext = _self_excluded(prep.feats.block(start, bs), start)
    for j in np.unique(which[items[sel]]):  # item buckets: a handful
      if j < 0:
        continue  # nobody rated these items: user-mean fallback
      p = sel[which[items[sel]] == j]
      size = max(64, 1 << int(math.ceil(math.log2(len(p)))))  # few shapes
      lu = np.zeros(size, np.int32)
      sl = np.zeros(size, np.int32)
      lu[:len(p)] = users[p] - start
      sl[:len(p)] = slot[items[p]]
      b = prep.buckets[j]
      idx, dev = dev_idx[j]
      out = _pairs_bucket(sim_ext, jnp.asarray(lu), jnp.asarray(sl), idx, dev,
                          cfg, b.mode, b.kk)
      num[p], den[p], cnt[p] = (np.asarray(a)[:len(p)] for a in out)
  pred, fall = _finish(num, den, cnt, prep.means[users],
                       prep.has_ratings[users], prep.global_mean, cfg,
                       prep.scale)
  return pred, int(fall.sum())
