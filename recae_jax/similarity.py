"""Pearson / cosine similarity between all pairs of rows, blocked and jitted.

Every pairwise statistic is a masked matrix product over items, so one row
block against all rows is a handful of `[B, I] @ [I, C]` matmuls:

  n_ab   = m_a . m_b          (co-rated count)
  S_a|ab = x_a . m_b          S_b|ab = m_a . x_b
  Q_a|ab = x_a^2 . m_b        Q_b|ab = m_a . x_b^2
  P_ab   = x_a . x_b

`centering="corated"` centres each pair on its means over the co-rated items
(pandas `DataFrame.corr(min_periods=)`, Surprise's `pearson`):
  cov = P - S_a S_b / n,  var_a = Q_a - S_a^2 / n.
`centering="overall"` centres each row on the mean of all its ratings and sums
over co-rated items (S0's formula): sim = P / sqrt(Q_a Q_b).
`metric="cosine"` is the same over-co-rated-items form on raw values
(Surprise's `cosine`). `metric="pearson_baseline"` is the same form on
baseline residuals x = r − b_ui, b_ui = μ + b_row + b_col (Koren 2010 eq. 9;
Surprise's `pearson_baseline`): pass the fitted `baseline=` in the data's
orientation (`baselines.fit(r).transpose()` for item rows); without one, ALS
baselines with Surprise's defaults are fitted on the rows as given.
Surprise shrinks it by (n − 1) / (n − 1 + λ); here every metric uses Koren's
n / (n + λ). x is pre-centred on the row's overall mean for the
corated form too: Pearson is shift invariant and it keeps float32 sums small.

Zero variance, n < min_support, or n < 2 (pearson) give similarity 0, never
NaN. `shrinkage=λ` multiplies by n / (n + λ).

Rows here are users; pass `ratings.transpose()` for item-item similarity.
S_b|ab and Q_b|ab are S_a|ba and Q_a|ba transposed, so when [U, U] fits
(CROSS_LIMIT) the cross sums of all rows are computed once and each row block
adds only n and P: 4 GEMMs per block instead of 6.
`similarity_matrix` materialises [U, U] (fine for ML-100K/1M);
`topk_neighbors` keeps only k per row and never holds [U, U]: each row block is
compared with all rows (or with row chunks densified on the fly when the dense
[U, I] matrix would be too big, restricted to the items the block has rated).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Optional, Union

import jax
import jax.numpy as jnp
import numpy as np

from recae_jax import baselines as bl_lib
from recae_jax import sparse_ops
from recae_jax.data.types import Ratings
from recae_jax.errors import UserError

METRICS = ("pearson", "cosine", "pearson_baseline")
CENTERINGS = ("corated", "overall")

# Below this fraction of the raw sum of squares a variance is float32
# cancellation noise, not signal (relative error of the sums is ~1e-7).
_VAR_RTOL = 2e-6

# Dense [U, I] float32 arrays above this many elements switch topk_neighbors
# to chunked densification (3 arrays are kept: x, x^2, mask).
DENSE_LIMIT = 1 << 27
# Below this density topk_neighbors on a too-big-for-dense matrix takes the
# sparse path (on CPU gathers run ~20x slower per float than GEMMs).
SPARSE_DENSITY = 0.01
# Up to this many U x U elements, row blocks reuse the cross sums S, Q of
# all rows (two [U, U] float32 arrays held; 4 GEMMs per block instead of 6).
CROSS_LIMIT = 1 << 26

Data = Union[Ratings, tuple]


@dataclasses.dataclass(frozen=True)
class SimilarityConfig:
  """Which similarity; hashable so it can be a static jit argument."""

  metric: str = "pearson"
  centering: str = "corated"
  min_support: int = 1
  shrinkage: float = 0.0

  def __post_init__(self):
    if self.metric not in METRICS:
      raise UserError(f"unknown similarity {self.metric!r}; choose one of "
                      f"{', '.join(METRICS)}")
    if self.centering not in CENTERINGS:
      raise UserError(f"unknown centering {self.centering!r}; choose one of "
                      f"{', '.join(CENTERINGS)}")
    if int(self.min_support) != self.min_support or self.min_support < 0:
      raise UserError(f"min_support must be an integer >= 0, got "
                      f"{self.min_support!r}")
    if not (self.shrinkage >= 0 and math.isfinite(self.shrinkage)):
      raise UserError(f"shrinkage must be a finite number >= 0, got "
                      f"{self.shrinkage!r}")
    object.__setattr__(self, "min_support", int(self.min_support))
    object.__setattr__(self, "shrinkage", float(self.shrinkage))


def make_config(config: Optional[SimilarityConfig] = None,
                **kwargs) -> SimilarityConfig:
  if config is None:
    return SimilarityConfig(**kwargs)
  return dataclasses.replace(config, **kwargs) if kwargs else config


# ------------------------------------------------------------ host layouts


@dataclasses.dataclass(frozen=True, eq=False)
class _Rows:
  """Rows as CSR on the host, plus each row's mean (0 for empty rows)."""

  indptr: np.ndarray   # int64 [U + 1]
  indices: np.ndarray  # int32 [nnz]
  values: np.ndarray   # float32 [nnz]
  means: np.ndarray    # float32 [U]
  n_rows: int
  n_cols: int
  residual: bool = False  # values are already r - b_ui (pearson_baseline)

  @property
  def counts(self) -> np.ndarray:
    return np.diff(self.indptr)

  def dense(self, start: int = 0, stop: Optional[int] = None,
            col_map: Optional[np.ndarray] = None,
            n_cols: Optional[int] = None) -> tuple[np.ndarray, np.ndarray]:
    """Rows [start, stop) densified: (values, mask), optionally column-mapped.

    col_map[i] is the dense column of item i, or -1 to drop it.
    """
    stop = self.n_rows if stop is None else stop
    lo, hi = self.indptr[start], self.indptr[stop]
    rows = np.repeat(np.arange(stop - start), np.diff(self.indptr[start:stop + 1]))
    cols = self.indices[lo:hi]
    vals = self.values[lo:hi]
    width = self.n_cols
    if col_map is not None:
      cols = col_map[cols]
      keep = cols >= 0
      rows, cols, vals = rows[keep], cols[keep], vals[keep]
      width = int(n_cols)
    r = np.zeros((stop - start, width), np.float32)
    m = np.zeros((stop - start, width), np.float32)
    r[rows, cols] = vals
    m[rows, cols] = 1.0
    return r, m


def _rows_from_ratings(ratings: Ratings) -> _Rows:
  # By user, then item (one int64 key: a stable sort of already ordered
  # data, such as a ratings file, is ~25x faster than lexsort).
  key = ratings.users.astype(np.int64) * max(ratings.n_items, 1) + ratings.items
  order = np.argsort(key, kind="stable")
  users = ratings.users[order]
  counts = np.bincount(users, minlength=ratings.n_users)
  indptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
  values = ratings.ratings[order]
  sums = np.bincount(users, weights=values, minlength=ratings.n_users)
  means = (sums / np.maximum(counts, 1)).astype(np.float32)
  return _Rows(indptr, ratings.items[order].astype(np.int32),
               values.astype(np.float32), means, ratings.n_users,
               ratings.n_items)


def _rows_from_dense(values, mask) -> _Rows:
  values = np.asarray(values, np.float32)
  mask = np.asarray(mask) != 0
  if values.ndim != 2 or values.shape != mask.shape:
    raise UserError(f"values and mask must be 2-D of one shape, got "
                    f"{values.shape} and {mask.shape}")
  if not np.all(np.isfinite(values[mask])):
    raise UserError("observed values must be finite")
  rows, cols = np.nonzero(mask)
  u, i = values.shape
  return _rows_from_ratings(Ratings(rows, cols, values[rows, cols],
                                    np.zeros(len(rows), np.int64), u, i))


def as_rows(data: Data) -> _Rows:
  """Accepts a Ratings or a dense (values [U, I], mask [U, I]) pair."""
  if isinstance(data, _Rows):
    return data
  if isinstance(data, Ratings):
    if len(data) and not np.all(np.isfinite(data.ratings)):
      raise UserError("ratings must be finite")
    return _rows_from_ratings(data)
  if isinstance(data, (tuple, list)) and len(data) == 2:
    return _rows_from_dense(*data)
  raise UserError(f"expected Ratings or (values, mask), got {type(data).__name__}")


def residual_rows(data: Data, cfg: SimilarityConfig,
                  baseline: Optional[bl_lib.Baselines] = None) -> _Rows:
  """The rows to compare: as given, or for pearson_baseline their baseline
  residuals r − b_ui (means 0), so every path below stays one formula."""
  rows = as_rows(data)
  if cfg.metric != "pearson_baseline" or rows.residual:
    return rows
  if baseline is None:
    if len(rows.values) == 0:
      return rows  # nothing to fit: every similarity is 0 anyway
    r = np.repeat(np.arange(rows.n_rows, dtype=np.int32), rows.counts)
    baseline = bl_lib.fit(Ratings(r, rows.indices, rows.values,
                                  np.zeros(len(r), np.int64), rows.n_rows,
                                  rows.n_cols))
  if (len(baseline.b_u), len(baseline.b_i)) != (rows.n_rows, rows.n_cols):
    raise UserError(f"baseline has {len(baseline.b_u)} x {len(baseline.b_i)} "
                    f"biases for {rows.n_rows} x {rows.n_cols} rows x columns "
                    f"(item rows need baseline.transpose())")
  row_ids = np.repeat(np.arange(rows.n_rows), rows.counts)
  res = rows.values - baseline.predict(row_ids, rows.indices)
  return _Rows(rows.indptr, rows.indices, res.astype(np.float32),
               np.zeros(rows.n_rows, np.float32), rows.n_rows, rows.n_cols,
               residual=True)


def _features(r_UxI: np.ndarray, m_UxI: np.ndarray, means_U: np.ndarray,
              cfg: SimilarityConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(x, x^2, m) with x centred on each row's overall mean (cosine: raw;
  pearson_baseline: the rows already hold residuals, see `residual_rows`)."""
  if cfg.metric in ("cosine", "pearson_baseline"):
    x = r_UxI * m_UxI
  else:
    x = (r_UxI - means_U[:, None]) * m_UxI
  return x, x * x, m_UxI


# ------------------------------------------------------------ device math


_dot = functools.partial(jnp.matmul, precision=jax.lax.Precision.HIGHEST)


def _corated(cfg: SimilarityConfig) -> bool:
  """Whether the pair needs its co-rated sums S_a, S_b (Pearson, corated)."""
  return cfg.metric == "pearson" and cfg.centering == "corated"


def _pair_similarity(q, c, cfg: SimilarityConfig,
                     square: bool = False) -> jax.Array:
  """sim_BxC between query rows q=(x, x2, m) [B, I] and candidates c [C, I].

  square: q is c (all rows against all), so the cross sums are transposes of
  each other and two of the six matmuls can be skipped.
  """
  xq, x2q, mq = q
  xc, x2c, mc = c
  n = _dot(mq, mc.T)
  p = _dot(xq, xc.T)
  qa = _dot(x2q, mc.T)
  qb = qa.T if square else _dot(mq, x2c.T)
  sa = sb = None
  if _corated(cfg):
    sa = _dot(xq, mc.T)
    sb = sa.T if square else _dot(mq, xc.T)
  return _combine(n, p, qa, qb, sa, sb, cfg)


def _combine(n, p, qa, qb, sa, sb, cfg: SimilarityConfig) -> jax.Array:
  """The similarity from the pair sums (elementwise; fuses into one loop)."""
  if _corated(cfg):
    n_safe = jnp.maximum(n, 1.0)
    cov = p - sa * sb / n_safe
    var_a = qa - sa * sa / n_safe
    var_b = qb - sb * sb / n_safe
    ok = (var_a > _VAR_RTOL * qa) & (var_b > _VAR_RTOL * qb) & (n >= 2)
  else:
    cov, var_a, var_b = p, qa, qb
    ok = (var_a > 0) & (var_b > 0)
    if cfg.metric == "pearson":
      ok &= n >= 2
  den = jnp.sqrt(jnp.where(ok, var_a, 1.0) * jnp.where(ok, var_b, 1.0))
  sim = jnp.where(ok, jnp.clip(cov / den, -1.0, 1.0), 0.0)
  if cfg.min_support > 0:
    sim = jnp.where(n >= cfg.min_support, sim, 0.0)
  if cfg.shrinkage > 0:
    sim = sim * (n / (n + cfg.shrinkage))
  return sim.astype(jnp.float32)


@functools.partial(jax.jit, static_argnames=("cfg", "square"))
def _block_vs_all(q, c, cfg: SimilarityConfig, square: bool) -> jax.Array:
  return _pair_similarity(q, c, cfg, square)


@functools.partial(jax.jit, static_argnames=("cfg",))
def _cross_sums(q, c, cfg: SimilarityConfig) -> jax.Array:
  """[Q_a; S_a] of a row block vs all rows: one [2B, I] @ [I, U] GEMM."""
  xq, x2q, _ = q
  lhs = jnp.concatenate([x2q, xq]) if _corated(cfg) else x2q
  return _dot(lhs, c[2].T)


@functools.partial(jax.jit, static_argnames=("cfg", "parts"))
def _block_from_cross(q, c, cross, row0, cfg: SimilarityConfig, parts: int):
  """sim [B, U] of the row block at row0, given the cross sums of all rows.

  cross: [parts * U_pad, U_pad], Q of every row, then S (corated Pearson).
  S_b|ab = m_a . x_b is S_a|ba transposed (likewise Q), so only n and P are
  new products here: 4 GEMMs per block instead of 6 (1.5x fewer FLOPs).
  """
  xq, _, mq = q
  xc, _, mc = c
  b, u = xq.shape[0], xc.shape[0]
  u_pad = cross.shape[0] // parts
  n = _dot(mq, mc.T)
  p = _dot(xq, xc.T)
  def part(j):  # this block's rows, and its columns transposed
    row = jax.lax.dynamic_slice_in_dim(cross, j * u_pad + row0, b, axis=0)
    col = jax.lax.dynamic_slice_in_dim(cross[j * u_pad:(j + 1) * u_pad], row0,
                                       b, axis=1)
    return row[:, :u], col[:u].T
  qa, qb = part(0)
  sa, sb = part(1) if parts == 2 else (None, None)
  return _mask_self(_combine(n, p, qa, qb, sa, sb, cfg), row0, 0, 0.0)


def _mask_self(sim_BxC: jax.Array, row0, col0, fill) -> jax.Array:
  """Puts `fill` where global row == global column (self-similarity)."""
  b, c = sim_BxC.shape
  rows = row0 + jnp.arange(b)[:, None]
  cols = col0 + jnp.arange(c)[None, :]
  return jnp.where(rows == cols, fill, sim_BxC)


@functools.partial(jax.jit, static_argnames=("k",))
def _merge_topk(v1, i1, v2, i2, k: int):
  v = jnp.concatenate([v1, v2], axis=1)
  i = jnp.concatenate([i1, i2], axis=1)
  vals, pos = jax.lax.top_k(v, k)
  return vals, jnp.take_along_axis(i, pos, axis=1)


class DenseFeatures:
  """All rows' (x, x^2, m) on device plus row means: the small-U fast path."""

  def __init__(self, data: Data, cfg: SimilarityConfig,
               baseline: Optional[bl_lib.Baselines] = None):
    self.rows = residual_rows(data, cfg, baseline)
    self.cfg = cfg
    r, m = self.rows.dense()
    self.feats = tuple(jnp.asarray(a) for a in
                       _features(r, m, self.rows.means, cfg))

  @property
  def n_rows(self) -> int:
    return self.rows.n_rows

  def query(self, start: int, size: int):
    """Rows [start, start+size), zero-padded past the end (fixed shapes)."""
    u = self.n_rows
    stop = min(start + size, u)
    out = tuple(a[start:stop] for a in self.feats)
    if stop - start < size:
      pad = size - (stop - start)
      out = tuple(jnp.pad(a, ((0, pad), (0, 0))) for a in out)
    return out

  def block(self, start: int, size: int) -> jax.Array:
    """sim [size, U] of rows [start, start+size) vs all rows; self = 0."""
    square = start == 0 and size == self.n_rows
    if not square and self.n_rows ** 2 <= CROSS_LIMIT:
      return self._cross_block(start, size)
    sim = _block_vs_all(self.query(start, size), self.feats, self.cfg, square)
    return _mask_self(sim, start, 0, 0.0)

  def _cross_block(self, start: int, size: int) -> jax.Array:
    """block() from the cross sums of all rows, computed once per block size
    ([2 U_pad, U_pad] floats on the device; see _block_from_cross)."""
    if getattr(self, "_cross_size", None) != size:
      u = self.n_rows
      u_pad = -(-u // size) * size
      blocks = [_cross_sums(self.query(s, size), self.feats, self.cfg)
                for s in range(0, u, size)]  # a handful of row blocks
      parts = blocks[0].shape[0] // size  # 1 (Q) or 2 (Q, S)
      # Part j's rows at j * U_pad; columns padded to U_pad (zeros), so every
      # block's column slice stays in range.
      self._cross = jnp.pad(jnp.concatenate(
          [jnp.concatenate([blk[j * size:(j + 1) * size] for blk in blocks])
           for j in range(parts)]), ((0, 0), (0, u_pad - u)))
      self._cross_size, self._cross_parts = size, parts
    return _block_from_cross(self.query(start, size), self.feats, self._cross,
                             start, self.cfg, self._cross_parts)


def _default_block(n_rows: int, n_cols: int, budget: int = 1 << 24) -> int:
  """Rows per block so a [B, U] / [B, I] intermediate stays ~64 MB, balanced
  so the last block is not mostly padding (which is computed all the same)."""
  b = int(max(1, min(n_rows, budget // max(1, max(n_rows, n_cols)))))
  return -(-n_rows // -(-n_rows // b)) if n_rows else b


def similarity_matrix(data: Data, config: Optional[SimilarityConfig] = None, *,
                      block_size: Optional[int] = None,
                      baseline: Optional[bl_lib.Baselines] = None,
                      **kwargs) -> np.ndarray:
  """Dense float32 [U, U] similarity; the diagonal is 0 (never a neighbour).

  kwargs: metric, centering, min_support, shrinkage (see SimilarityConfig);
  baseline: the fitted biases pearson_baseline subtracts.
  """
  cfg = make_config(config, **kwargs)
  feats = DenseFeatures(data, cfg, baseline)
  u = feats.n_rows
  bs = block_size or _default_block(u, feats.rows.n_cols)
  out = np.empty((u, u), np.float32)
  for start in range(0, u, bs):  # a handful of row blocks
    stop = min(start + bs, u)
    out[start:stop] = np.asarray(feats.block(start, bs))[: stop - start]
  return out


def topk_neighbors(data: Data, k: int,
                   config: Optional[SimilarityConfig] = None, *,
                   block_size: Optional[int] = None,
                   rows: Optional[np.ndarray] = None,
                   chunk_size: Optional[int] = None,
                   baseline: Optional[bl_lib.Baselines] = None,
                   sparse: Optional[bool] = None,
                   **kwargs) -> tuple[np.ndarray, np.ndarray]:
  """Top-k most similar other rows for each row: (sim [R, k], idx [R, k]).

  Never materialises [U, U]: one block of `block_size` query rows is compared
  with all rows at a time. `rows` restricts the query rows (default all).
  k larger than U - 1 is clamped to U - 1 (every other row). Self is never a
  neighbour; ties go to the lower row index. When the dense [U, I] matrix
  would exceed DENSE_LIMIT elements (or `chunk_size` is given), candidate rows
  are densified in chunks of `chunk_size`, restricted to the items the query
  block has rated (every other item contributes nothing to any pair sum) --
  or, below SPARSE_DENSITY (or with sparse=True), the pair sums of a query
  block against all rows are sparse x dense products over the ratings
  (sparse_ops.spmm: work ~ nnz x block instead of U x I x block; 10-20x less
  at the ML-20M shape, 0.5% dense).
  """
  cfg = make_config(config, **kwargs)
  if int(k) != k or k < 0:
    raise UserError(f"k must be an integer >= 0, got {k!r}")
  src = residual_rows(data, cfg, baseline)
  u, n_items = src.n_rows, src.n_cols
  query = np.arange(u) if rows is None else np.asarray(rows, np.int64)
  k = int(min(k, max(u - 1, 0)))
  if k == 0 or len(query) == 0:
    return (np.zeros((len(query), k), np.float32),
            np.zeros((len(query), k), np.int32))
  bs = int(block_size or min(len(query), 1024))
  chunked = chunk_size is not None or u * n_items > DENSE_LIMIT
  if sparse is None:
    sparse = (chunked and chunk_size is None
              and len(src.values) < SPARSE_DENSITY * u * n_items)
  sims, idxs = [], []
  if sparse:
    entries = _sparse_entries(src, cfg)
  elif not chunked:
    feats = DenseFeatures(src, cfg)
  for b0 in range(0, len(query), bs):  # row blocks, not rows
    q_rows = query[b0:b0 + bs]
    nq = len(q_rows)
    if sparse:
      v, i = _sparse_topk(src, entries, q_rows, bs, k, cfg)
    elif not chunked:
      q = tuple(jnp.pad(a[q_rows], ((0, bs - nq), (0, 0))) for a in feats.feats)
      q_ids = jnp.asarray(np.pad(q_rows, (0, bs - nq), constant_values=-1))
      sim = _pair_similarity_jit(q, feats.feats, cfg)
      v, i = _topk_masked(sim, q_ids, 0, k)
    else:
      v, i = _chunked_topk(src, q_rows, bs, k, cfg, chunk_size)
    sims.append(np.asarray(v)[:nq])
    idxs.append(np.asarray(i)[:nq].astype(np.int32))
  return np.concatenate(sims), np.concatenate(idxs)


_pair_similarity_jit = jax.jit(_pair_similarity, static_argnames=("cfg",))


@functools.partial(jax.jit, static_argnames=("k",))
def _topk_masked(sim_BxC, q_ids_B, col0, k: int):
  cols = col0 + jnp.arange(sim_BxC.shape[1])
  sim = jnp.where(q_ids_B[:, None] == cols[None, :], -jnp.inf, sim_BxC)
  vals, idx = jax.lax.top_k(sim, k)
  return vals, idx + col0


def _chunked_topk(src: _Rows, q_rows: np.ndarray, bs: int, k: int,
                  cfg: SimilarityConfig, chunk_size: Optional[int]):
  """Top-k for one query block against candidate row chunks densified here."""
  # Only the items this block rated can enter any pair sum.
  q_r, q_m = _gather_dense(src, q_rows)
  items = np.flatnonzero(q_m.any(axis=0))
  col_map = np.full(src.n_cols, -1, np.int64)
  col_map[items] = np.arange(len(items))
  width = max(1, len(items))
  q_r, q_m = q_r[:, items], q_m[:, items]
  if width > len(items):  # block with no ratings at all
    q_r, q_m = np.zeros((len(q_rows), 1), np.float32), np.zeros((len(q_rows), 1), np.float32)
  pad = bs - len(q_rows)
  q_means = src.means[q_rows]
  q = tuple(jnp.asarray(np.pad(a, ((0, pad), (0, 0))))
            for a in _features(q_r, q_m, q_means, cfg))
  q_ids = jnp.asarray(np.pad(q_rows, (0, pad), constant_values=-1))
  cs = int(chunk_size or max(k + 1, min(src.n_rows, DENSE_LIMIT // (3 * width))))
  best_v = best_i = None
  for c0 in range(0, src.n_rows, cs):  # candidate chunks
    c1 = min(c0 + cs, src.n_rows)
    c_r, c_m = src.dense(c0, c1, col_map, width)
    if c1 - c0 < cs:  # fixed shapes: pad with empty rows, masked below
      c_r = np.pad(c_r, ((0, cs - (c1 - c0)), (0, 0)))
      c_m = np.pad(c_m, ((0, cs - (c1 - c0)), (0, 0)))
    c_means = np.pad(src.means[c0:c1], (0, cs - (c1 - c0)))
    c = tuple(jnp.asarray(a) for a in _features(c_r, c_m, c_means, cfg))
    sim = _pair_similarity_jit(q, c, cfg)
    sim = _mask_cols(sim, c1 - c0)
    kk = min(k, cs)
    v, i = _topk_masked(sim, q_ids, c0, kk)
    if best_v is None:
      best_v, best_i = v, i
    else:
      best_v, best_i = _merge_topk(best_v, best_i, v, i, min(k, best_v.shape[1] + kk))
  return best_v, best_i


@jax.jit
def _mask_cols(sim_BxC, n_valid):
  cols = jnp.arange(sim_BxC.shape[1])
  return jnp.where(cols[None, :] < n_valid, sim_BxC, -jnp.inf)


def _gather_dense(src: _Rows, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Dense (values, mask) of arbitrary rows, vectorized over their ratings."""
  starts, stops = src.indptr[rows], src.indptr[rows + 1]
  lens = stops - starts
  local = np.repeat(np.arange(len(rows)), lens)
  offs = np.arange(lens.sum()) - np.repeat(np.cumsum(lens) - lens, lens)
  pos = np.repeat(starts, lens) + offs
  r = np.zeros((len(rows), src.n_cols), np.float32)
  m = np.zeros((len(rows), src.n_cols), np.float32)
  r[local, src.indices[pos]] = src.values[pos]
  m[local, src.indices[pos]] = 1.0
  return r, m


# ------------------------------------------------------------ sparse path


def _sparse_entries(src: _Rows, cfg: SimilarityConfig):
  """Every rating as (row, column, x, x^2) device arrays, rows sorted."""
  rows = np.repeat(np.arange(src.n_rows, dtype=np.int32), src.counts)
  x = src.values if cfg.metric in ("cosine", "pearson_baseline") else (
      src.values - src.means[rows])
  x = x.astype(np.float32)
  return tuple(jnp.asarray(a) for a in (rows, src.indices, x, x * x))


@functools.partial(jax.jit, static_argnames=("cfg", "n_rows", "chunk"))
def _sparse_block_sim(q_CxB, entries, q_ids_B, cfg: SimilarityConfig,
                      n_rows: int, chunk: tuple):
  """sim [B, R] of B query rows against all R rows, from three spmm calls.

  q_CxB = (x, x^2, m) of the query rows, transposed ([columns, B]); each
  pair sum is Σ over the candidate's ratings (row r, column c, value v) of
  v · q[c]: value 1 gives n, Q_a, S_a; value x gives P, S_b; x^2 gives Q_b.
  """
  xq, x2q, mq = q_CxB
  row, col, x, x2 = entries
  b = xq.shape[1]
  corated = _corated(cfg)
  ones = jnp.concatenate([mq, x2q, xq] if corated else [mq, x2q], axis=1)
  by_x = jnp.concatenate([xq, mq] if corated else [xq], axis=1)
  one = jnp.ones_like(x)
  s1 = sparse_ops.spmm(ones, row, col, one, n_rows, chunk[0]).T
  sx = sparse_ops.spmm(by_x, row, col, x, n_rows, chunk[1]).T
  qb = sparse_ops.spmm(mq, row, col, x2, n_rows, chunk[2]).T
  n, qa = s1[:b], s1[b:2 * b]
  sa = s1[2 * b:] if corated else None
  p, sb = (sx[:b], sx[b:]) if corated else (sx, None)
  sim = _combine(n, p, qa, qb, sa, sb, cfg)
  cols = jnp.arange(n_rows)
  return jnp.where(q_ids_B[:, None] == cols[None, :], -jnp.inf, sim)


def _sparse_topk(src: _Rows, entries, q_rows: np.ndarray, bs: int, k: int,
                 cfg: SimilarityConfig):
  """Top-k for one query block on the sparse path."""
  r, m = _gather_dense(src, q_rows)
  pad = bs - len(q_rows)
  q = tuple(jnp.asarray(np.pad(a, ((0, pad), (0, 0))).T)
            for a in _features(r, m, src.means[q_rows], cfg))
  q_ids = jnp.asarray(np.pad(q_rows, (0, pad), constant_values=-1))
  nnz = int(entries[0].shape[0])
  widths = (3 * bs, 2 * bs, bs) if _corated(cfg) else (2 * bs, bs, bs)
  chunk = tuple(sparse_ops.chunk_size(nnz, w) for w in widths)
  sim = _sparse_block_sim(q, entries, q_ids, cfg, src.n_rows, chunk)
  return _topk_masked(sim, q_ids, 0, k)
