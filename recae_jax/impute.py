"""Neighbourhood rating prediction: KNNWithMeans (S0's imputation), KNNBaseline.

  r̂(a, p) = mean_a + Σ_b w(a,b) (r_bp − mean_b) / D,   b ∈ N_k(a, p)
  r̂(a, p) = b_ap   + Σ_b w(a,b) (r_bp − b_bp)   / D    (`baseline=als|sgd`)

The second is Koren's (TKDD 2010, eq. 3) / Surprise's KNNBaseline, with
b_ui = μ + b_u + b_i from `recae_jax.baselines`. `orientation="item"` runs
the same formulas on the transposed ratings: a is the item, its neighbours
b are the items the user rated (Surprise's user_based=False); everything
below says "users" for the rows of whichever orientation is chosen.

N_k(a, p) is the k users most similar to a among those who rated p (Surprise
KNNWithMeans: ranked by raw similarity, ties to the lower user index; a is
never its own neighbour); `neighbors=None` or 0 uses every rater. w is the
similarity, or max(sim, 0) with `positive_only` (what Surprise >= 1.1 does).
D = Σ|w| (`denominator="abs"`, the default) or Σ w (`"signed"`, S0's formula;
near-zero sums make wild values, so predictions are clipped to the rating
scale, as S0's 0.5-step round-off did silently).

Fallbacks (counted): fewer than `min_k` neighbours with w != 0, or D == 0 →
the user's mean, or b_ap with a baseline (so do items nobody rated); users
with no ratings → the global mean (b_ap with a baseline). Output never
contains NaN.

`predict_pairs_topk` is the large-catalogue variant (ML-20M shape, item
orientation): each row keeps only its `list_size` most similar rows
(similarity.topk_neighbors, never a dense [R, R] beyond one block), and
N_k(a, p) is the first k of those that rated p; with list_size >= R - 1 it
is exactly predict_pairs.

How it stays fast without Python loops over users or items: "all raters" is
three masked matmuls (`W @ (m·dev)`, `|W| @ m`, `[W≠0] @ m`). The top-k among
raters of p only matters for items with more than k raters. For those, each
user's neighbours are ranked once (one host sort per user block; ranks are
distinct, ties going to the lower user index), so "the k best raters of p"
becomes "raters ranked below the k-th smallest rank among them", found by
bisection: ~log2(U) streaming compare-and-count passes instead of a top_k or
sort per (user, item). Items go into a few width buckets (raters padded to W),
and the candidates are laid out [item, W, user] so they are row gathers from
a [U+1, B] rank table and every reduction is vectorised over users. On
ML-100K this is ~8x faster than lax.top_k over [user, item, W].
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import math
import os
import time
from typing import Iterator, NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from recae_jax import baselines as bl_lib
from recae_jax import similarity as sim_lib
from recae_jax import workdir as wd
from recae_jax.data.types import Ratings
from recae_jax.errors import UserError

DENOMINATORS = ("abs", "signed")
ORIENTATIONS = ("user", "item")

# Elements of a user block's [B, U] / [B, I] arrays.
_ELEMENT_BUDGET = 1 << 24
# Candidates per chunk of fill_matrix's top-k selection (fits in cache).
_CHUNK_BUDGET = 1 << 21
# Candidates per chunk of predict_pairs (ranks + similarities ~1 MB: cache).
_PAIR_CHUNK = 1 << 17
# Similarities per thread of the host ranking (smaller blocks stay on one).
_RANK_SLICE = 1 << 19
# predict_pairs with at most this many pairs uses power-of-two bucket widths.
_FEW_PAIRS = 1 << 15


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
  baseline: Optional[bl_lib.BaselineConfig] = None  # "als"/"sgd": KNNBaseline
  orientation: str = "user"         # "item": neighbours among items

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
    object.__setattr__(self, "baseline", bl_lib.make_config(self.baseline))
    if self.orientation not in ORIENTATIONS:
      raise UserError(f"unknown orientation {self.orientation!r}; choose one "
                      f"of {', '.join(ORIENTATIONS)}")
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


def _width(n: np.ndarray, pow2: bool = False) -> np.ndarray:
  """Bucket widths: 8, 12, 16, 24, 32, 48, ... (at most 50% padding), or
  powers of two (half the buckets, so half the compiles)."""
  n = np.maximum(n, 8)
  e = np.floor(np.log2(n)).astype(np.int64)  # 2**e <= n < 2**(e+1)
  if pow2:
    return np.where(n == 2 ** e, 2 ** e, 2 ** (e + 1))
  return np.where(n == 2 ** e, 2 ** e,
                  np.where(n <= 3 * 2 ** (e - 1), 3 * 2 ** (e - 1),
                           2 ** (e + 1)))


def _rater_buckets(rows: sim_lib._Rows, row_off: np.ndarray,
                   col_off: np.ndarray, min_raters: int,
                   pow2: bool = False) -> list[_Bucket]:
  """Items with more than `min_raters` raters, grouped by padded width."""
  u = rows.n_rows
  users = np.repeat(np.arange(u, dtype=np.int32), rows.counts)
  items = rows.indices
  dev = rows.values - row_off[users] - col_off[items]
  # By item, then user: the CSR is already by user, so a stable sort on the
  # item keeps each item's raters in user order (~4x faster than lexsort).
  order = np.argsort(items, kind="stable")
  users, items, dev = users[order], items[order], dev[order]
  counts = np.bincount(items, minlength=rows.n_cols)
  starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
  pos = np.arange(len(items)) - starts[items]
  width = _width(counts, pow2)
  buckets = []
  for w in np.unique(width[counts > min_raters]):  # a handful of widths
    its = np.flatnonzero((width == w) & (counts > min_raters)).astype(np.int32)
    slot = np.full(rows.n_cols, -1, np.int64)
    slot[its] = np.arange(len(its))
    sel = slot[items] >= 0
    idx = np.full((len(its), w), u, np.int32)
    dv = np.zeros((len(its), w), np.float32)
    idx[slot[items[sel]], pos[sel]] = users[sel]
    dv[slot[items[sel]], pos[sel]] = dev[sel]
    buckets.append(_Bucket(its, idx, dv))
  return buckets


def _pad_rows(b: _Bucket, n_rows: int, n_users: int, n_items: int) -> _Bucket:
  """Padding rows point at item n_items (dropped) and user n_users (no rank)."""
  extra = n_rows - len(b.items)
  return _Bucket(np.pad(b.items, (0, extra), constant_values=n_items),
                 np.pad(b.idx, ((0, extra), (0, 0)), constant_values=n_users),
                 np.pad(b.dev, ((0, extra), (0, 0))))


# ------------------------------------------------------------ neighbour order


def _neighbour_ranks(sim_BxU, row0: int) -> np.ndarray:
  """_block_ranks over row slices in parallel threads (NumPy's sort and
  elementwise loops release the GIL): the host ranking is most of
  predict_pairs' fixed cost, and the device is idle meanwhile."""
  s = np.asarray(sim_BxU, np.float32)
  parts = min(os.cpu_count() or 1, -(-s.size // _RANK_SLICE))
  if parts <= 1:
    return _block_ranks(s, row0)
  step = -(-len(s) // parts)
  starts = range(0, len(s), step)
  with concurrent.futures.ThreadPoolExecutor(parts) as pool:
    return np.concatenate(list(pool.map(
        lambda a: _block_ranks(s[a:a + step], row0 + a), starts)))


def _block_ranks(sim_BxU: np.ndarray, row0: int) -> np.ndarray:
  """[B, U + 1] position of every user in each row's neighbour order.

  0 = most similar; equal similarities rank the lower user index first (the
  tie rule of top_k and of the references). The row's own user and the
  padding column U get rank U: never a neighbour. Ranks are distinct, so
  "the k best raters of p" is exactly "raters ranked below the k-th smallest
  rank among them" and needs no sort per item. On the host: NumPy's SIMD
  sort of one int64 key (similarity bits, user index) is ~20x faster here
  than XLA CPU's sort.
  """
  s = np.asarray(sim_BxU, np.float32) + np.float32(0)  # -0.0 -> +0.0
  b, u = s.shape
  # key = (descending similarity bits) << 32 | user, written straight into
  # the two int32 halves of each int64 (no int64 temporaries).
  bits = s.view(np.int32)
  desc = bits >> 31                  # -1 for negatives, else 0
  desc &= np.int32(0x7FFFFFFF)
  desc ^= bits                       # ascending in the float's order
  np.invert(desc, out=desc)          # most similar first
  key = np.empty((b, u), np.int64)
  halves = key.view(np.int32).reshape(b, u, 2)
  low, high = (0, 1) if np.little_endian else (1, 0)
  halves[:, :, high], halves[:, :, low] = desc, np.arange(u, dtype=np.int32)
  key.sort(axis=1)
  order = halves[:, :, low]  # users, most similar first
  dtype = np.int16 if u < np.iinfo(np.int16).max else np.int32
  rank = np.empty((b, u + 1), dtype)
  flat = order + (np.arange(b, dtype=np.int64) * (u + 1))[:, None]
  rank.ravel()[flat.ravel()] = np.tile(np.arange(u, dtype=dtype), b)
  rows = np.arange(b)
  own = rows[row0 + rows < u]
  rank[own, row0 + own] = u
  rank[:, u] = u
  return rank


# ------------------------------------------------------------ device math


class _Rule(NamedTuple):
  """The only KNNConfig fields the device math depends on (its jit key)."""
  positive_only: bool
  signed: bool

  @classmethod
  def of(cls, cfg: KNNConfig) -> "_Rule":
    return cls(bool(cfg.positive_only), cfg.denominator == "signed")


def _weights(s, rule: _Rule):
  return jnp.maximum(s, 0.0) if rule.positive_only else s


def _sums(w, dev, rule: _Rule, axis=-1):
  num = jnp.sum(w * dev, axis=axis)
  den = jnp.sum(w if rule.signed else jnp.abs(w), axis=axis)
  cnt = jnp.sum((w != 0).astype(jnp.float32), axis=axis)
  return num, den, cnt


def _rank_cutoff(r, k: int, n_ranks: int, axis: int):
  """Smallest t with at least k ranks < t along `axis` (n_ranks if none).

  Bisection: each of the ~log2(U) steps is one streaming compare-and-count,
  far cheaper on CPU than lax.top_k (which here costs ~30 ns per element).
  """
  axis %= r.ndim
  shape = r.shape[:axis] + r.shape[axis + 1:]
  lo = jnp.zeros(shape, r.dtype)            # count(lo) < k
  hi = jnp.full(shape, n_ranks, r.dtype)    # count(hi) >= k, or hi = n_ranks
  def step(_, bounds):
    lo, hi = bounds
    mid = lo + (hi - lo) // 2
    cnt = jnp.sum((r < jnp.expand_dims(mid, axis)).astype(r.dtype), axis)
    enough = cnt >= k
    return jnp.where(enough, lo, mid), jnp.where(enough, mid, hi)
  steps = max(1, math.ceil(math.log2(n_ranks + 1)))
  return jax.lax.fori_loop(0, steps, step, (lo, hi))[1]


def _topk_sums(r, s, dev, rule: _Rule, k: Optional[int], n_ranks: int,
               axis: int):
  """(num, den, cnt) over the candidates of the k lowest ranks along axis.

  r: ranks (n_ranks = not a candidate: padding or the user itself), s: their
  similarities, dev: r_bp - mean_b. k=None: every candidate.
  """
  if k is None or r.shape[axis] <= k:
    take = r < n_ranks
  else:
    take = r < jnp.expand_dims(_rank_cutoff(r, k, n_ranks, axis), axis)
  return _sums(jnp.where(take, _weights(s, rule), 0.0), dev, rule, axis)


@functools.partial(jax.jit, static_argnames=("rule",))
def _all_rater_sums(sim_BxU, mdev_UxI, m_UxI, rule: _Rule):
  """num/den/cnt [B, I] over every rater; sim_BxU has 0 on the self entry."""
  w_BxU = _weights(sim_BxU, rule)
  hp = jax.lax.Precision.HIGHEST
  num = jnp.matmul(w_BxU, mdev_UxI, precision=hp)
  den = jnp.matmul(w_BxU if rule.signed else jnp.abs(w_BxU), m_UxI, precision=hp)
  cnt = jnp.matmul((w_BxU != 0).astype(jnp.float32), m_UxI, precision=hp)
  return num, den, cnt


@functools.partial(jax.jit, static_argnames=("rule", "k", "chunk"))
def _bucket_sums(rank_U1xB, sim_U1xB, idx_PxW, dev_PxW, rule: _Rule, k,
                 chunk: int):
  """num/den/cnt [P, B]: each item's k best raters for every user of a block.

  Transposed layout: the candidates of `chunk` items are whole rows of the
  [U+1, B] rank / similarity tables ([chunk, W, B], a row gather) and every
  reduction runs over W with B as the vectorised minor axis. Chunks keep
  each step's working set in cache (~2M candidates).
  """
  p, w = idx_PxW.shape
  n_ranks = rank_U1xB.shape[0] - 1

  def one(args):
    idx, dev = args
    return _topk_sums(rank_U1xB[idx], sim_U1xB[idx], dev[:, :, None], rule, k,
                      n_ranks, axis=1)

  out = jax.lax.map(one, (idx_PxW.reshape(-1, chunk, w),
                          dev_PxW.reshape(-1, chunk, w)))
  return tuple(o.reshape(p, -1) for o in out)


@functools.partial(jax.jit, static_argnames=("rule", "k", "chunk"))
def _pair_sums(rank_BxU1, sim_BxU1, row0, lu, slot, idx, dev, rule: _Rule, k,
               chunk: int):
  """[3, n] num/den/cnt of n pairs (block row lu, item slot) of one bucket.

  Pairs go `chunk` at a time so the candidates' ranks stay in cache through
  the ~log2(U) passes of the rank bisection (2x faster than one pass over
  all pairs); flat 1-D gathers are ~2x faster than 2-D ones on CPU.
  """
  n_ranks = rank_BxU1.shape[1] - 1
  ranks, sims = rank_BxU1.ravel(), sim_BxU1.ravel()
  all_raters = k is None or idx.shape[1] <= k

  def one(args):
    lu, slot = args
    cand = idx[slot]  # [chunk, W] raters of each pair's item
    flat = lu[:, None] * (n_ranks + 1) + cand
    sim = jnp.take(sims, flat, mode="clip")
    if all_raters:  # no ranks to gather: every rater but the row itself
      take = (cand < n_ranks) & (cand != (row0 + lu)[:, None])
      return jnp.stack(_sums(jnp.where(take, _weights(sim, rule), 0.0), dev[slot], rule))
    return jnp.stack(_topk_sums(jnp.take(ranks, flat, mode="clip"), sim, dev[slot], rule,
                                k, n_ranks, axis=-1))

  out = jax.lax.map(one, (lu.reshape(-1, chunk), slot.reshape(-1, chunk)))
  return out.transpose(1, 0, 2).reshape(3, -1)


def _finish(num, den, cnt, base, cfg: KNNConfig, scale):
  """Predictions and a fallback mask, numpy float32 (host side).

  base: the user's mean or b_ap, already the fallback for empty users (an
  empty user has similarity 0 to everyone, so cnt = 0 there).
  """
  num, den, cnt = (np.asarray(a, np.float64) for a in (num, den, cnt))
  ok = (cnt >= max(cfg.min_k, 1)) & (den != 0)
  with np.errstate(divide="ignore", invalid="ignore"):
    pred = base + np.where(ok, num / np.where(ok, den, 1.0), 0.0)
  fallback = ~ok
  pred = np.where(np.isfinite(pred), pred, base)  # overflow guard
  if cfg.round_to:
    pred = np.round(pred / cfg.round_to) * cfg.round_to
  if cfg.clip or cfg.round_to:
    pred = np.clip(pred, *scale)
  return pred.astype(np.float32), fallback


class _Prepared:
  """Host/device state shared by fill_matrix and predict_pairs."""

  def __init__(self, train: Ratings, cfg: KNNConfig, for_pairs: bool,
               features: bool = True, pow2: bool = False):
    if not isinstance(train, Ratings):
      raise UserError(f"train must be Ratings, got {type(train).__name__}")
    self.cfg = cfg
    self.item_rows = cfg.orientation == "item"
    rows = sim_lib.as_rows(train.transpose() if self.item_rows else train)
    self.rows = rows
    self.u, self.i = rows.n_rows, rows.n_cols
    counts = rows.counts
    self.has_ratings = counts > 0
    self.global_mean = (float(rows.values.mean()) if len(rows.values)
                        else 0.0)
    self.means = np.where(self.has_ratings, rows.means,
                          self.global_mean).astype(np.float32)
    # Baselines are always fitted user x item (reg_u on users), then turned
    # to the rows' orientation; pearson_baseline needs them even without a
    # baseline predictor (Surprise fits ALS defaults there too).
    bl = None
    if cfg.baseline is not None or (cfg.metric == "pearson_baseline"
                                    and len(train)):
      bl = bl_lib.fit(train, cfg.baseline or bl_lib.BaselineConfig())
      bl = bl.transpose() if self.item_rows else bl
    self.baseline = bl
    if cfg.baseline is not None:  # offset(a, p) = μ + b_a + b_p
      self.row_off = (np.float32(bl.mu) + bl.b_u).astype(np.float32)
      self.col_off = bl.b_i
    else:                         # offset(a, p) = mean_a
      self.row_off = self.means
      self.col_off = np.zeros(self.i, np.float32)
    if features:
      self.feats = sim_lib.DenseFeatures(
          rows, cfg.similarity,
          bl if cfg.metric == "pearson_baseline" else None)
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
    if features:
      min_raters = 0 if for_pairs else (k if k is not None else self.u)
      self.buckets = _rater_buckets(rows, self.row_off, self.col_off,
                                    min_raters, pow2=pow2)

  def block_size(self, requested: Optional[int]) -> int:
    if requested:
      return int(min(requested, self.u))
    b = int(max(1, min(self.u, _ELEMENT_BUDGET // max(self.u, self.i))))
    return -(-self.u // -(-self.u // b)) if self.u else b  # balanced blocks

  def ranks(self, start: int, size: int):
    """(sim [size, U] on the device, ranks [size, U+1] on the host) of a user
    block; only the ranking goes through the host (its sort is faster there)."""
    sim = self.feats.block(start, size)
    return sim, _neighbour_ranks(np.asarray(sim), start)


class _Progress:
  """Calls `progress(line)` at most every `every` seconds, and once at the end."""

  def __init__(self, progress, total: int, what: str, every: float = 10.0):
    self.progress, self.total, self.what, self.every = progress, total, what, every
    self.t0 = self.last = time.perf_counter()

  def __call__(self, done: int):
    if self.progress is None:
      return
    now = time.perf_counter()
    if done < self.total and now - self.last < self.every:
      return
    self.last = now
    el = now - self.t0
    left = el / max(done, 1) * (self.total - done)
    self.progress(f"{self.what}: {done}/{self.total} rows "
                  f"({100 * done / max(self.total, 1):.0f}%), {el:.1f} s"
                  + (f", ~{left:.0f} s left" if done < self.total else ""))


def fill_blocks(train: Ratings, config: Optional[KNNConfig] = None, *,
                block_size: Optional[int] = None, keep_observed: bool = True,
                progress=None,
                **kwargs) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
  """Yields (start, pred [B, I] float32, fallback [B, I] bool) per row block.

  Rows start..start+B of the filled matrix, in order; only one block of
  output is held at a time (see fill_matrix / save_filled). With
  orientation="item" the rows are items (pred is [B, U]: the transposed
  matrix). kwargs are KNNConfig fields; keep_observed as in fill_matrix;
  progress(line) is called every ~10 s with rows done and time left.
  """
  cfg = make_config(config, **kwargs)
  prep = _Prepared(train, cfg, for_pairs=False)
  rule = _Rule.of(cfg)
  u, i = prep.u, prep.i
  r, m = prep.rows.dense()
  dev = np.where(m > 0, r - prep.row_off[:, None] - prep.col_off[None, :],
                 0.0).astype(np.float32)
  mdev, m_d = jnp.asarray(dev), jnp.asarray(m)
  bs = prep.block_size(block_size)
  buckets = []  # (items, idx, dev, chunk): rows padded to a chunk multiple
  for b in prep.buckets:
    p, w = b.idx.shape
    n_chunks = -(-p // max(1, _CHUNK_BUDGET // (w * bs)))
    chunk = -(-p // n_chunks)
    b = _pad_rows(b, n_chunks * chunk, u, i)
    buckets.append((b.items[:p], jnp.asarray(b.idx), jnp.asarray(b.dev),
                    chunk))
  zero_row = jnp.zeros((1, bs), jnp.float32)
  tick = _Progress(progress, u, "fill")
  for start in range(0, u, bs):  # user blocks
    stop = min(start + bs, u)
    sim, rank = prep.ranks(start, bs)
    num, den, cnt = (np.array(a) for a in
                     _all_rater_sums(sim, mdev, m_d, rule))
    if buckets:  # items with more than k raters: their k best raters only
      rank_t = jnp.asarray(np.ascontiguousarray(rank.T))
      sim_t = jnp.concatenate([sim.T, zero_row])
      for items, idx, dv, chunk in buckets:
        sums = _bucket_sums(rank_t, sim_t, idx, dv, rule, prep.k, chunk)
        for full, part in zip((num, den, cnt), sums):
          full[:, items] = np.asarray(part)[: len(items)].T
    sl = slice(0, stop - start)
    base = prep.row_off[start:stop, None] + prep.col_off[None, :]
    pred, fall = _finish(num[sl], den[sl], cnt[sl], base, cfg, prep.scale)
    if keep_observed:
      obs = m[start:stop] > 0
      pred[obs] = r[start:stop][obs]
      fall[obs] = False
    tick(stop)
    yield start, pred, fall


def _place(out: np.ndarray, start: int, block: np.ndarray, item_rows: bool):
  """Writes a fill_blocks block into the [U, I] output (item rows: columns)."""
  if item_rows:
    out[:, start:start + len(block)] = block.T
  else:
    out[start:start + len(block)] = block


def fill_matrix(train: Ratings, config: Optional[KNNConfig] = None, *,
                block_size: Optional[int] = None, keep_observed: bool = True,
                return_fallback: bool = False, progress=None, **kwargs):
  """Dense float32 [U, I]: observed ratings kept, every other cell predicted.

  kwargs are KNNConfig fields. With keep_observed=False observed cells are
  predicted too (leave-self-out: a is never its own neighbour). With
  return_fallback=True also returns the bool [U, I] fallback mask. For a
  matrix too big to hold, use fill_blocks or save_filled. progress: as in
  fill_blocks.
  """
  cfg = make_config(config, **kwargs)
  shape = (train.n_users, train.n_items)
  out = np.empty(shape, np.float32)
  fb = np.empty(shape, bool)
  for start, pred, fall in fill_blocks(train, cfg, block_size=block_size,
                                       keep_observed=keep_observed,
                                       progress=progress):
    _place(out, start, pred, cfg.orientation == "item")
    _place(fb, start, fall, cfg.orientation == "item")
  return (out, fb) if return_fallback else out


def save_filled(path: str | os.PathLike, train: Ratings,
                config: Optional[KNNConfig] = None, *,
                block_size: Optional[int] = None, keep_observed: bool = True,
                progress=None, **kwargs) -> tuple[int, int]:
  """Writes the filled [U, I] float32 matrix to `path` (.npy) block by block.

  The output is never held whole, only one user block of it (the inputs,
  ratings and similarity features, are still dense [U, I]). The file appears
  atomically: written beside `path` and renamed when complete, so a failure
  (or a full disk) never leaves a truncated file or clobbers an old one.
  """
  cfg = make_config(config, **kwargs)
  shape = (train.n_users, train.n_items)
  try:
    with wd.atomic_path(path, ".npy") as tmp:
      out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=shape)
      for start, pred, _ in fill_blocks(train, cfg, block_size=block_size,
                                        keep_observed=keep_observed,
                                        progress=progress):
        _place(out, start, pred, cfg.orientation == "item")
      out.flush()
      del out
  except OSError as e:
    raise UserError(f"{path}: could not write the filled matrix "
                    f"({e.strerror or e}); free space or choose another "
                    f"--workdir") from e
  return shape


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
  _check_pairs(train, users, items)
  # Each bucket shape compiles (~0.2 s): for few pairs, coarser widths (half
  # the buckets); for many, the tighter ones (~15% less work per pair).
  prep = _Prepared(train, cfg, for_pairs=True, pow2=len(users) <= _FEW_PAIRS)
  if prep.item_rows:  # rows are items: the pair's "user" is its item
    users, items = items, users
  n = len(users)
  num = np.zeros(n, np.float64)
  den = np.zeros(n, np.float64)
  cnt = np.zeros(n, np.float64)
  which = np.full(prep.i, -1, np.int64)
  slot = np.zeros(prep.i, np.int64)
  dev_idx = []
  for j, b in enumerate(prep.buckets):
    which[b.items] = j
    slot[b.items] = np.arange(len(b.items))
    # Rows padded to a power of two so other folds reuse the compiles.
    b = _pad_rows(b, 1 << max(3, (len(b.items) - 1).bit_length()), prep.u,
                  prep.i)
    dev_idx.append((jnp.asarray(b.idx), jnp.asarray(b.dev)))
  bs = prep.block_size(block_size)
  order = np.argsort(users, kind="stable")
  blk = users[order] // bs
  for blk_id in np.unique(blk):  # user blocks that have pairs
    start = int(blk_id) * bs
    sel = order[blk == blk_id]
    sim, rank = prep.ranks(start, bs)
    sim_ext = jnp.pad(sim, ((0, 0), (0, 1)))  # column U: padding
    rank = jnp.asarray(rank)
    for j in np.unique(which[items[sel]]):  # item buckets: a handful
      if j < 0:
        continue  # nobody rated these items: user-mean fallback
      p = sel[which[items[sel]] == j]
      size = max(64, 1 << int(math.ceil(math.log2(len(p)))))  # few shapes
      lu = np.zeros(size, np.int32)
      sl = np.zeros(size, np.int32)
      lu[:len(p)] = users[p] - start
      sl[:len(p)] = slot[items[p]]
      idx, dev = dev_idx[j]
      chunk = min(size, 1 << max(0, (_PAIR_CHUNK // idx.shape[1]).bit_length() - 1))
      out = _pair_sums(rank, sim_ext, start, lu, sl, idx, dev, _Rule.of(cfg),
                       prep.k, chunk)
      num[p], den[p], cnt[p] = np.asarray(out)[:, :len(p)]
  pred, fall = _finish(num, den, cnt, prep.row_off[users] + prep.col_off[items],
                       cfg, prep.scale)
  return pred, int(fall.sum())


def _check_pairs(train: Ratings, users: np.ndarray, items: np.ndarray):
  if users.shape != items.shape or users.ndim != 1:
    raise UserError("users and items must be 1-D arrays of equal length")
  u, i = train.n_users, train.n_items
  if len(users) and (users.min() < 0 or users.max() >= u
                     or items.min() < 0 or items.max() >= i):
    raise UserError(f"pair ids out of range: users must be in [0, {u}) "
                    f"and items in [0, {i})")


# ------------------------------------------- large catalogues: top-k lists

# Pair x list elements per host block of predict_pairs_topk (~64 MB of temps).
_LIST_BUDGET = 1 << 22


def predict_pairs_topk(train: Ratings, users: Sequence[int],
                       items: Sequence[int],
                       config: Optional[KNNConfig] = None, *,
                       list_size: Optional[int] = None,
                       block_size: Optional[int] = None,
                       chunk_size: Optional[int] = None,
                       **kwargs) -> tuple[np.ndarray, int]:
  """predict_pairs from each row's `list_size` most similar rows only.

  For catalogues whose [R, R] similarity (or dense [R, C] ratings) is too big:
  the lists come from similarity.topk_neighbors (row blocks against row
  chunks, never more than one block of [R, R]), computed only for the rows
  the pairs need; N_k(a, p) is then the first k rows of a's list that rated
  p (in similarity order, ties to the lower index). Rated lookups are one
  searchsorted over the sorted (row, column) keys, vectorized over pair
  blocks. list_size defaults to max(200, 10k); list_size >= R - 1 gives
  exactly predict_pairs. Returns (float32 [n], n_fallback).
  """
  cfg = make_config(config, **kwargs)
  users = np.asarray(users, np.int64)
  items = np.asarray(items, np.int64)
  _check_pairs(train, users, items)
  prep = _Prepared(train, cfg, for_pairs=True, features=False)
  if prep.item_rows:
    users, items = items, users
  rows, n = prep.rows, len(users)
  k = prep.k
  size = list_size if list_size is not None else max(200, 10 * (k or 0))
  if int(size) != size or size < 1:
    raise UserError(f"list_size must be an integer >= 1, got {list_size!r}")
  need = np.unique(users)
  sims, idx = sim_lib.topk_neighbors(
      rows, int(size), cfg.similarity, rows=need, block_size=block_size,
      chunk_size=chunk_size,
      baseline=prep.baseline if cfg.metric == "pearson_baseline" else None)
  slot = np.zeros(prep.u, np.int64)
  slot[need] = np.arange(len(need))
  keys = (np.repeat(np.arange(prep.u, dtype=np.int64), rows.counts) * prep.i
          + rows.indices)  # sorted: CSR rows are sorted by (row, column)
  num, den, cnt = (np.zeros(n) for _ in range(3))
  rule = _Rule.of(cfg)
  width = idx.shape[1]
  step = max(1, _LIST_BUDGET // max(width, 1))
  for p0 in range(0, n, step):  # pair blocks, each vectorized
    a, p = users[p0:p0 + step], items[p0:p0 + step]
    cand = idx[slot[a]].astype(np.int64)            # [n, L]
    s = sims[slot[a]].astype(np.float64)
    q = cand * prep.i + p[:, None]
    pos = np.minimum(np.searchsorted(keys, q), max(len(keys) - 1, 0))
    rated = (keys[pos] == q) if len(keys) else np.zeros(q.shape, bool)
    if k is not None:  # the k best of the list that rated p
      rated &= np.cumsum(rated, axis=1) <= k
    w = np.where(rated, np.maximum(s, 0.0) if rule.positive_only else s, 0.0)
    w = np.where(np.isfinite(w), w, 0.0)  # -inf: padding when R - 1 < L
    dev = np.where(rated, rows.values[pos] - prep.row_off[cand]
                   - prep.col_off[p][:, None], 0.0)
    num[p0:p0 + step] = np.sum(w * dev, axis=1)
    den[p0:p0 + step] = np.sum(w if rule.signed else np.abs(w), axis=1)
    cnt[p0:p0 + step] = np.sum(w != 0, axis=1)
  pred, fall = _finish(num, den, cnt, prep.row_off[users] + prep.col_off[items],
                       cfg, prep.scale)
  return pred, int(fall.sum())


# ------------------------------------------------- model choice for blends

# The neighbourhood models best_neighbourhood chooses from (k = 40 each):
# today's tuned Pearson KNNWithMeans, and Koren's KNNBaseline with
# pearson_baseline similarity (Surprise's best KNN), each user- and item-based.
CANDIDATES = (
    dict(orientation="user", metric="pearson", positive_only=True,
         shrinkage=50.0),
    dict(orientation="item", metric="pearson", positive_only=True,
         shrinkage=50.0),
    dict(orientation="user", metric="pearson_baseline", baseline="als",
         positive_only=True, shrinkage=100.0),
    dict(orientation="item", metric="pearson_baseline", baseline="als",
         positive_only=True, shrinkage=100.0),
)


def _config_dict(cfg: KNNConfig) -> dict:
  d = dataclasses.asdict(cfg)
  d["baseline"] = cfg.baseline.method if cfg.baseline else "none"
  return d


def best_neighbourhood(fit: Ratings, valid: Ratings, full: Ratings,
                       test: Ratings, rating_scale, progress=print,
                       candidates=CANDIDATES, neighbors: int = 40) -> dict:
  """The neighbourhood model with the lowest validation RMSE, and its predictions.

  Every candidate predicts the `valid` pairs from `fit` only; the winner then
  predicts the `test` pairs from `full` (= fit + valid), like a refit
  autoencoder member. Test ratings are never looked at. Returns {"valid":
  float32 [n_valid], "test": float32 [n_test], "n_test_fallback": int,
  "choice": config dict, "candidates": [{"config", "valid_rmse"}, ...]}.
  ~1.5 s on ML-100K once compiled (~6 s of compiles in a fresh process).
  """
  for name, r in (("fit", fit), ("valid", valid), ("full", full),
                  ("test", test)):
    if not isinstance(r, Ratings):
      raise UserError(f"{name} must be Ratings, got {type(r).__name__}")
  if len(fit) == 0 or len(valid) == 0:
    raise UserError(f"best_neighbourhood needs fitting and validation ratings "
                    f"(got {len(fit)} and {len(valid)}): use --valid_fraction "
                    f"> 0 on a split with a non-empty base")
  if not candidates:
    raise UserError("best_neighbourhood: no candidate configurations")
  scale = tuple(float(v) for v in rating_scale)
  rows, best = [], None
  for kw in candidates:  # a handful of fixed configurations
    cfg = KNNConfig(**{"neighbors": neighbors, **kw, "rating_scale": scale})
    pred, _ = predict_pairs(fit, valid.users, valid.items, cfg)
    rmse = float(np.sqrt(np.mean((pred.astype(np.float64)
                                  - valid.ratings) ** 2)))
    rows.append({"config": _config_dict(cfg), "valid_rmse": rmse})
    if progress:
      progress(f"knn {cfg.orientation}/{cfg.metric}/baseline="
               f"{rows[-1]['config']['baseline']}: valid RMSE {rmse:.4f}")
    if best is None or rmse < best[0]:
      best = (rmse, cfg, pred)
  _, cfg, valid_pred = best
  test_pred, n_fb = predict_pairs(full, test.users, test.items, cfg)
  return {"valid": valid_pred, "test": test_pred, "n_test_fallback": n_fb,
          "choice": _config_dict(cfg), "candidates": rows}
