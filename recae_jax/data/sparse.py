"""Row storage for training: CSR on the host, dense batches made on device.

A model sees rows (users for U-AutoRec, items for I-AutoRec) as dense
vectors over the columns. `RowSource` keeps the whole training matrix on the
device either densely (small data: one row gather per batch) or as CSR (large
data: each batch's rows are scattered into a B x N buffer inside jit), chosen
by a memory budget. Observed ratings are always > 0, so a zero value means
"missing" and the mask is derived as `values != 0` rather than stored.

Padding: row id `n_rows` (one past the end) is the padding row; it densifies
to all zeros, so a ragged last batch keeps the compiled batch shape.
"""

from __future__ import annotations

import dataclasses

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from recae_jax.data.types import Ratings


@dataclasses.dataclass(frozen=True)
class CSR:
  """Host CSR matrix: row r holds indices[indptr[r]:indptr[r+1]]."""

  indptr: np.ndarray   # int64 [R+1]
  indices: np.ndarray  # int32 [nnz]
  data: np.ndarray     # float32 [nnz]
  shape: tuple[int, int]

  @property
  def nnz(self) -> int:
    return int(self.indptr[-1])

  def row_lengths(self) -> np.ndarray:
    return np.diff(self.indptr)

  def to_dense(self) -> np.ndarray:
    out = np.zeros(self.shape, np.float32)
    rows = np.repeat(np.arange(self.shape[0]), self.row_lengths())
    out[rows, self.indices] = self.data
    return out


def ratings_to_csr(ratings: Ratings, orientation: str = "user") -> CSR:
  """CSR with rows = users ("user") or rows = items ("item")."""
  if orientation == "user":
    rows, cols, shape = ratings.users, ratings.items, (ratings.n_users, ratings.n_items)
  elif orientation == "item":
    rows, cols, shape = ratings.items, ratings.users, (ratings.n_items, ratings.n_users)
  else:
    raise ValueError(f"orientation must be 'user' or 'item', got {orientation!r}")
  order = np.lexsort((cols, rows))
  counts = np.bincount(rows, minlength=shape[0])
  indptr = np.zeros(shape[0] + 1, np.int64)
  np.cumsum(counts, out=indptr[1:])
  return CSR(indptr, cols[order].astype(np.int32),
             ratings.ratings[order].astype(np.float32), shape)


@flax.struct.dataclass
class DenseRows:
  """Whole matrix resident on device, plus one zero padding row."""

  values_RxN: jax.Array

  @property
  def n_rows(self) -> int:
    return self.values_RxN.shape[0] - 1

  @property
  def n_cols(self) -> int:
    return self.values_RxN.shape[1]

  def gather(self, rows_B: jax.Array) -> tuple[jax.Array, jax.Array]:
    v_BxN = self.values_RxN[rows_B]
    return v_BxN, v_BxN != 0


@flax.struct.dataclass
class CSRRows:
  """Device-resident CSR; `gather` densifies a fixed-size batch of rows."""

  indptr: jax.Array   # int32 [R+2] (last row = empty padding row)
  indices: jax.Array  # int32 [nnz+1]
  data: jax.Array     # float32 [nnz+1]
  n_cols: int = flax.struct.field(pytree_node=False)
  max_row_nnz: int = flax.struct.field(pytree_node=False)

  @property
  def n_rows(self) -> int:
    return self.indptr.shape[0] - 2

  def gather(self, rows_B: jax.Array) -> tuple[jax.Array, jax.Array]:
    start_B = self.indptr[rows_B]
    length_B = self.indptr[rows_B + 1] - start_B
    offs_K = jnp.arange(self.max_row_nnz, dtype=jnp.int32)
    valid_BxK = offs_K[None, :] < length_B[:, None]
    # Out-of-row slots read the sentinel entry (value 0) so they add nothing.
    pos_BxK = jnp.where(valid_BxK, start_B[:, None] + offs_K[None, :],
                        self.data.shape[0] - 1)
    cols_BxK = self.indices[pos_BxK]
    vals_BxK = self.data[pos_BxK]
    b = rows_B.shape[0]
    v_BxN = jnp.zeros((b, self.n_cols), jnp.float32).at[
        jnp.arange(b)[:, None], cols_BxK].add(vals_BxK)
    return v_BxN, v_BxN != 0


RowSource = DenseRows | CSRRows


def dense_bytes(csr: CSR) -> int:
  return (csr.shape[0] + 1) * csr.shape[1] * 4


def make_row_source(csr: CSR, dense_budget_bytes: int = 1 << 30,
                    force: str | None = None) -> RowSource:
  """Puts `csr` on the device, densely if it fits `dense_budget_bytes`."""
  layout = force or ("dense" if dense_bytes(csr) <= dense_budget_bytes else "csr")
  if layout == "dense":
    dense = np.zeros((csr.shape[0] + 1, csr.shape[1]), np.float32)
    dense[:-1] = csr.to_dense()
    return DenseRows(jnp.asarray(dense))
  if layout != "csr":
    raise ValueError(f"layout must be 'dense' or 'csr', got {layout!r}")
  if csr.nnz >= 2**31 - 1:
    raise ValueError("CSR with >= 2^31 entries needs int64 indices")
  indptr = np.append(csr.indptr, csr.indptr[-1]).astype(np.int32)
  lengths = csr.row_lengths()
  return CSRRows(
      indptr=jnp.asarray(indptr),
      indices=jnp.asarray(np.append(csr.indices, 0).astype(np.int32)),
      data=jnp.asarray(np.append(csr.data, 0).astype(np.float32)),
      n_cols=int(csr.shape[1]),
      max_row_nnz=max(1, int(lengths.max()) if len(lengths) else 1))
