"""Batchers: how an epoch's rows become batches, as dense rows or as entries.

Both batchers cut one epoch into a fixed [n_batches, B] grid of row ids
(padding id = n_rows, weight 0, so a ragged last batch never recompiles):

  DenseBatcher   rows gathered as B x N (densified on device from a dense
                 matrix or a device CSR); the first and last layers are GEMMs.
  SparseBatcher  the batch's observed entries flattened into a static number
                 T of (row, col, value) slots; the first layer is an spmm and
                 the loss reads the outputs at the observed entries (sddmm).

Sparse batching:
  * "stratified" (default): rows sorted by length are cut into strata of
    n_batches rows; each epoch every stratum is shuffled and deals one row to
    each batch, so every batch holds one row per length stratum and
    T = Σ_strata (longest row in the stratum) ≈ the mean batch total;
  * "uniform": the dense batcher's grid (a plain permutation);
    T = Σ of the B longest rows, a bound that holds for any permutation.
Under a data-parallel mesh of D devices each device flattens its own B/D
rows, so T is the bound over any device's share of a batch.

Which batcher a run uses is decided once, in `recae_jax.compute`.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Optional

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from recae_jax import sharding
from recae_jax.data import sparse as sparse_lib
from recae_jax.problem import RowData

BATCHINGS = ("stratified", "uniform")


@flax.struct.dataclass
class DenseBatch:
  v_BxN: jax.Array               # raw ratings, 0 = missing
  m_BxN: jax.Array               # bool
  side_BxS: Optional[jax.Array]
  w_B: jax.Array                 # 1 real row, 0 padding
  nbr_BxGxN: Optional[jax.Array] = None  # neighbouring rows (GLocal-K), raw ratings
  rows_B: Optional[jax.Array] = None     # the rows' indices (padding: n_rows)


@flax.struct.dataclass
class SparseBatch:
  row_T: jax.Array    # int32 position in the batch (padding → B-1)
  col_T: jax.Array    # int32 column, ascending (padding → 0)
  value_T: jax.Array  # float32 raw rating (padding → 0)
  valid_T: jax.Array  # float32 1 real entry, 0 padding
  w_B: jax.Array      # 1 real row, 0 padding
  n_rows: int = flax.struct.field(pytree_node=False)  # B


def grid_rows(train_rows: jax.Array, n_rows: int, batch_size: int, rng: jax.Array,
              shuffle: bool) -> jax.Array:
  """A (shuffled) [n_batches, B] grid of row ids, padded with id n_rows."""
  n = train_rows.shape[0]
  n_batches = -(-n // batch_size)
  perm = train_rows[jax.random.permutation(rng, n)] if shuffle else train_rows
  pad = jnp.full((n_batches * batch_size - n,), n_rows, jnp.int32)
  return jnp.concatenate([perm, pad]).reshape(n_batches, batch_size)


# -------------------------------------------------------------------- dense

@dataclasses.dataclass(frozen=True)
class DenseBatcher:
  batch_size: int
  mesh: Any = None
  compute: str = "dense"

  def data(self, rows: RowData) -> RowData:
    return rows

  def epoch_rows(self, data: RowData, rng, shuffle: bool) -> jax.Array:
    return grid_rows(data.train_rows, data.n_rows, self.batch_size, rng, shuffle)

  def batch(self, data: RowData, rows_B) -> DenseBatch:
    rows_B = sharding.constrain_batch(self.mesh, rows_B)
    v, m, side = jax.tree.map(functools.partial(sharding.constrain_batch, self.mesh),
                              data.batch(rows_B))
    return DenseBatch(v, m, side, (rows_B < data.n_rows).astype(jnp.float32),
                      data.neighbour_rows(rows_B), rows_B)


# ------------------------------------------------------------------- sparse

@flax.struct.dataclass
class SparseRowData:
  """Device CSR + the epoch's strata; the static entry bound T of one batch."""

  indptr: jax.Array       # int32 [R+2]; row R is the empty padding row
  indices: jax.Array      # int32 [nnz+1]; last = sentinel
  data: jax.Array         # float32 [nnz+1]; last = 0 (sentinel)
  train_rows: jax.Array   # int32 rows with >= 1 rating
  strata_SxNb: jax.Array  # int32 [B, n_batches] rows by length (stratified)
  n_cols: int = flax.struct.field(pytree_node=False)
  batch_size: int = flax.struct.field(pytree_node=False)
  max_entries: int = flax.struct.field(pytree_node=False)  # T (per device)
  batching: str = flax.struct.field(pytree_node=False)

  @property
  def n_rows(self) -> int:
    return self.indptr.shape[0] - 2

  @property
  def n_batches(self) -> int:
    return self.strata_SxNb.shape[1]


def entry_bound(lengths_R: np.ndarray, batch_size: int, batching: str,
                shards: int = 1) -> int:
  """The static T for rows of these lengths (train rows only): the most
  entries one of `shards` equal parts of any batch can hold."""
  lengths = np.sort(np.asarray(lengths_R, np.int64))[::-1]
  per = max(1, batch_size // shards)
  if batching == "uniform":
    return max(1, int(lengths[:per].sum()))
  n_batches = -(-len(lengths) // batch_size)
  longest = np.zeros(shards * per, np.int64)  # longest row of each stratum
  top = lengths[::n_batches][: shards * per]
  longest[: len(top)] = top
  return max(1, int(longest.reshape(shards, per).sum(1).max()))


def sparse_row_data(indptr, indices, data, lengths: np.ndarray, n_cols: int,
                    batch_size: int, batching: str, shards: int = 1) -> SparseRowData:
  """SparseRowData over device CSR arrays (padding-row layout) and host row lengths."""
  if batching not in BATCHINGS:
    raise ValueError(f"batching must be one of {BATCHINGS}, got {batching!r}")
  rows = np.flatnonzero(lengths > 0).astype(np.int32)
  n_batches = max(1, -(-len(rows) // batch_size))
  n_rows = len(lengths)
  by_len = rows[np.argsort(-lengths[rows], kind="stable")]
  strata = np.full(n_batches * batch_size, n_rows, np.int32)
  strata[: len(by_len)] = by_len
  return SparseRowData(
      indptr=indptr, indices=indices, data=data, train_rows=jnp.asarray(rows),
      strata_SxNb=jnp.asarray(strata.reshape(batch_size, n_batches)),
      n_cols=n_cols, batch_size=batch_size,
      max_entries=entry_bound(lengths[rows], batch_size, batching, shards),
      batching=batching)


def csr_arrays(csr: sparse_lib.CSR):
  """Device CSR arrays in the padding-row layout (one empty row, one sentinel)."""
  if csr.nnz >= 2**31 - 1:
    raise ValueError("CSR with >= 2^31 entries needs int64 indices")
  return (jnp.asarray(np.append(csr.indptr, csr.indptr[-1]).astype(np.int32)),
          jnp.asarray(np.append(csr.indices, 0).astype(np.int32)),
          jnp.asarray(np.append(csr.data, 0).astype(np.float32)))


def from_csr(csr: sparse_lib.CSR, batch_size: int, batching: str = "stratified",
             shards: int = 1) -> SparseRowData:
  return sparse_row_data(*csr_arrays(csr), csr.row_lengths(), int(csr.shape[1]),
                         batch_size, batching, shards)


def _csr_from_dense(source: sparse_lib.DenseRows) -> sparse_lib.CSR:
  dense = np.asarray(source.values_RxN)[:-1]
  r, c = np.nonzero(dense)
  indptr = np.zeros(dense.shape[0] + 1, np.int64)
  np.cumsum(np.bincount(r, minlength=dense.shape[0]), out=indptr[1:])
  return sparse_lib.CSR(indptr, c.astype(np.int32), dense[r, c].astype(np.float32),
                        dense.shape)


def from_row_data(data: RowData, batch_size: int, batching: str = "stratified",
                  shards: int = 1) -> SparseRowData:
  source = data.source
  if isinstance(source, sparse_lib.CSRRows):  # same layout: share its device arrays
    lengths = np.diff(np.asarray(source.indptr))[:-1]
    return sparse_row_data(source.indptr, source.indices, source.data, lengths,
                           source.n_cols, batch_size, batching, shards)
  return from_csr(_csr_from_dense(source), batch_size, batching, shards)


def flatten_rows(csr, rows_B: jax.Array, n_entries: int):
  """The nonzeros of rows_B in T = n_entries slots (no Python loops):
  (row_T, col_T, value_T, valid_T). `csr` is any device CSR with the
  padding-row layout (SparseRowData, data.sparse.CSRRows); T must bound the
  rows' total."""
  b = rows_B.shape[0]
  start_B = csr.indptr[rows_B]
  len_B = csr.indptr[rows_B + 1] - start_B
  end_B = jnp.cumsum(len_B)
  t_T = jnp.arange(n_entries, dtype=jnp.int32)
  row_T = jnp.minimum(jnp.searchsorted(end_B, t_T, side="right"), b - 1).astype(jnp.int32)
  valid = t_T < end_B[-1]
  pos_T = jnp.where(valid, start_B[row_T] + t_T - (end_B - len_B)[row_T],
                    csr.data.shape[0] - 1)
  return row_T, csr.indices[pos_T], csr.data[pos_T], valid.astype(jnp.float32)


@dataclasses.dataclass(frozen=True)
class SparseBatcher:
  batch_size: int
  batching: str = "stratified"
  mesh: Any = None
  compute: str = "sparse"

  @property
  def shards(self) -> int:
    return 1 if self.mesh is None else self.mesh.shape["data"]

  def data(self, rows: RowData) -> SparseRowData:
    return from_row_data(rows, self.batch_size, self.batching, self.shards)

  def epoch_rows(self, sd: SparseRowData, rng, shuffle: bool) -> jax.Array:
    if sd.batching == "stratified" and shuffle:
      keys_SxNb = jax.random.uniform(rng, sd.strata_SxNb.shape)
      perm_SxNb = jnp.argsort(keys_SxNb, axis=1)
      return jnp.take_along_axis(sd.strata_SxNb, perm_SxNb, axis=1).T
    return grid_rows(sd.train_rows, sd.n_rows, self.batch_size, rng, shuffle)

  def batch(self, sd: SparseRowData, rows_B) -> SparseBatch:
    """Entries of rows_B (on a mesh: of this device's share of rows_B), in
    column order: the gathers from and scatters into the N-row weights and
    gradients then walk memory forwards (at the ML-20M shape the step takes
    ~30 % less, the sort included; benchmarks/scaling_bench.py)."""
    entries = flatten_rows(sd, rows_B, sd.max_entries)
    order = jnp.argsort(entries[1], stable=True)
    row, col, value, valid = (a[order] for a in entries)
    return SparseBatch(row, col, value, valid, (rows_B < sd.n_rows).astype(jnp.float32),
                       rows_B.shape[0])


def block_entry_bound(source: sparse_lib.CSRRows, rows_KxB) -> int:
  """Most entries any evaluation block's rows hold (host; the static T)."""
  lengths = np.diff(np.asarray(source.indptr))          # padding row has 0
  return max(1, int(lengths[np.asarray(rows_KxB)].sum(axis=1).max()))
