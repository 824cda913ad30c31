"""(row, column) pairs to predict, grouped into fixed-shape row blocks.

Evaluation runs the autoencoder on blocks of B rows and reads off the outputs
at each pair's column. Pairs are grouped by block on the host once, padded to
the largest block's pair count, so evaluation is one compiled scan whatever
the data. Pairs whose user or item has no training rating cannot be predicted
by the model and get a documented fallback instead (see `fallback_values`).
"""

from __future__ import annotations

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from recae_jax.data.types import Ratings


@flax.struct.dataclass
class PairBlocks:
  rows_KxB: jax.Array    # int32 model rows of each block (n_rows = padding)
  local_KxP: jax.Array   # int32 row within the block for each pair slot
  cols_KxP: jax.Array    # int32 output column for each pair slot
  index_KxP: jax.Array   # int32 position in the original pair list (n = empty slot)
  n_pairs: int = flax.struct.field(pytree_node=False)


def build_pair_blocks(rows: np.ndarray, cols: np.ndarray, n_rows: int,
                      block_size: int) -> PairBlocks:
  n = len(rows)
  uniq, inv = np.unique(np.asarray(rows), return_inverse=True)
  n_blocks = max(1, -(-len(uniq) // block_size))
  rows_KxB = np.full(n_blocks * block_size, n_rows, np.int32)
  rows_KxB[: len(uniq)] = uniq
  block = inv // block_size
  order = np.argsort(block, kind="stable")
  counts = np.bincount(block, minlength=n_blocks)
  p = max(1, int(counts.max()) if n else 1)
  starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
  slot = np.arange(n) - starts[block[order]]
  local = np.zeros((n_blocks, p), np.int32)
  col = np.zeros((n_blocks, p), np.int32)
  index = np.full((n_blocks, p), n, np.int32)
  kb = block[order]
  local[kb, slot] = (inv % block_size)[order]
  col[kb, slot] = np.asarray(cols)[order]
  index[kb, slot] = order
  return PairBlocks(jnp.asarray(rows_KxB.reshape(n_blocks, block_size)),
                    jnp.asarray(local), jnp.asarray(col), jnp.asarray(index), n)


def fallback_values(train: Ratings, users: np.ndarray, items: np.ndarray,
                    mode: str = "item_user_global") -> tuple[np.ndarray, np.ndarray]:
  """(needs_fallback bool[n], value float32[n]) for pairs the model can't see.

  A pair needs a fallback when its user or its item has no training rating
  (its input row is empty or its output column was never trained). The value
  is the item's training mean if the item has ratings, else the user's mean,
  else the global mean ("item_user_global"); or always the global mean.
  Index -1 stands for an id the training data has never seen (no ratings).
  """
  # One zero slot at the end: index -1 (an unknown id) reads "no ratings".
  u_cnt = np.append(np.bincount(train.users, minlength=train.n_users), 0)
  i_cnt = np.append(np.bincount(train.items, minlength=train.n_items), 0)
  u_sum = np.append(np.bincount(train.users, weights=train.ratings,
                                minlength=train.n_users), 0.0)
  i_sum = np.append(np.bincount(train.items, weights=train.ratings,
                                minlength=train.n_items), 0.0)
  glob = float(train.ratings.mean()) if len(train) else 0.0
  need = (u_cnt[users] == 0) | (i_cnt[items] == 0)
  if mode == "global":
    value = np.full(len(users), glob)
  else:
    value = np.where(i_cnt[items] > 0, i_sum[items] / np.maximum(i_cnt[items], 1),
                     np.where(u_cnt[users] > 0,
                              u_sum[users] / np.maximum(u_cnt[users], 1), glob))
  return need, value.astype(np.float32)
