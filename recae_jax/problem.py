"""A config's data, oriented and placed on device: the rating problem.

    load_split(config)                  -> (Dataset, Split)     host
    build_problem(config, dataset, split) -> Problem            device rows + eval pairs

Rows are items (I-AutoRec) or users; `fit_data` holds the training split
minus the validation carve-out (validation inputs), `full_data` the whole
training split (test inputs, refit). Each evaluated set of pairs is grouped
into fixed-shape row blocks once (`EvalSet`).
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from recae_jax.config import Config
from recae_jax.data import features, movielens, sparse, splits
from recae_jax.data.types import Dataset, Ratings, Split
from recae_jax.errors import UserError
from recae_jax.models import DenseInput
from recae_jax.pairs import PairBlocks, build_pair_blocks, fallback_values


@flax.struct.dataclass
class RowData:
  """Everything on device that a dense batch is made from."""

  source: sparse.RowSource
  side_RxS: Optional[jax.Array]  # side features per row (+ padding row) or None
  train_rows: jax.Array          # int32 rows with >= 1 training rating
  neighbours: int = flax.struct.field(pytree_node=False, default=0)  # h: GLocal-K's rows r±h

  @property
  def n_rows(self) -> int:
    return self.source.n_rows

  def batch(self, rows_B):
    v_BxN, m_BxN = self.source.gather(rows_B)
    side = None if self.side_RxS is None else self.side_RxS[rows_B]
    return v_BxN, m_BxN, side

  def neighbour_rows(self, rows_B):
    """[B, 2h+1, N] raw rows r−h..r+h of each row r (zero outside the matrix),
    or None: what GLocal-K's convolution reads."""
    if not self.neighbours:
      return None
    h, n = self.neighbours, self.n_rows
    at = rows_B[:, None] + jnp.arange(-h, h + 1)[None, :]
    at = jnp.where((at >= 0) & (at < n) & (rows_B[:, None] < n), at, n)  # n: empty row
    v, _ = self.source.gather(at.reshape(-1))
    return v.reshape(at.shape + v.shape[-1:])

  def inputs(self, rows_B, div: float = 1.0) -> DenseInput:
    """The model's dense input for these rows, ratings divided by `div`."""
    v_BxN, m_BxN, side = self.batch(rows_B)
    nbr = self.neighbour_rows(rows_B)
    return DenseInput(v_BxN / div, m_BxN, side, None if nbr is None else nbr / div, rows_B)


@dataclasses.dataclass
class EvalSet:
  """One set of pairs to predict, ready for the engine's `evaluate`."""

  ratings: Ratings
  blocks: PairBlocks
  target: jax.Array
  fb_mask: jax.Array
  fb_value: jax.Array
  n_fallback: int


@dataclasses.dataclass
class Problem:
  fit_data: RowData     # rows built from train minus validation
  full_data: RowData    # rows built from the whole training split (test inputs)
  valid: Optional[EvalSet]
  test: EvalSet
  n_cols: int
  rating_scale: tuple[float, float]
  n_fit: int
  n_train: int
  dataset_files: dict
  dataset_name: str

  @property
  def n_side(self) -> int:
    side = self.fit_data.side_RxS
    return 0 if side is None else int(side.shape[1])


def orient(r: Ratings, orientation: str):
  """(rows, cols) of the pairs in `r` for an item- or user-oriented model."""
  return (r.items, r.users) if orientation == "item" else (r.users, r.items)


def side_matrix(config: Config, dataset: Dataset, train: Ratings) -> Optional[np.ndarray]:
  if not config.side_features:
    return None
  parts = []
  for name in config.side_features:
    if name == "item_genres":
      if config.orientation != "item":
        raise UserError("--side_features=item_genres needs --orientation=item")
      parts.append(features.item_genres(dataset))
    else:
      if config.orientation != "user":
        raise UserError(f"--side_features={name} needs --orientation=user")
      if name == "genre_counts":
        parts.append(features.user_genre_counts(train, features.item_genres(dataset)))
      else:
        parts.append(features.user_attributes(dataset))
  side = np.concatenate(parts, axis=1).astype(np.float32)
  if config.side_scaling == "standardize":
    # Statistics over all rows: the features themselves come from training data.
    side = (side - side.mean(0)) / np.maximum(side.std(0), 1e-6)
  return np.concatenate([side, np.zeros((1, side.shape[1]), np.float32)])


def row_data(config: Config, dataset: Dataset, ratings: Ratings) -> RowData:
  csr = sparse.ratings_to_csr(ratings, config.orientation)
  source = sparse.make_row_source(csr, config.dense_budget_mb << 20)
  side = side_matrix(config, dataset, ratings)
  rows = np.flatnonzero(csr.row_lengths() > 0).astype(np.int32)
  return RowData(source, None if side is None else jnp.asarray(side), jnp.asarray(rows),
                 config.global_kernel_size // 2 if config.model == "glocal_k" else 0)


def eval_set(config: Config, inputs: Ratings, pairs: Ratings, n_rows: int) -> EvalSet:
  rows, cols = orient(pairs, config.orientation)
  need, value = fallback_values(inputs, pairs.users, pairs.items, config.fallback)
  return EvalSet(pairs, build_pair_blocks(rows, cols, n_rows, config.eval_batch_size),
                 jnp.asarray(pairs.ratings), jnp.asarray(need), jnp.asarray(value),
                 int(need.sum()))


def load_dataset(config: Config) -> Dataset:
  """The dataset a run's config names: --dataset, --data_dir, --columns and
  --duplicates (every run kind loads its data here)."""
  return movielens.load_dataset(config.dataset, config.data_dir, columns=config.columns,
                                duplicates=config.duplicates)


def load_split(config: Config, dataset: Optional[Dataset] = None) -> tuple[Dataset, Split]:
  """The config's dataset (or the one given) and its split."""
  if dataset is None:
    dataset = load_dataset(config)
  split = splits.make_split(
      dataset, config.split, test_fraction=config.test_fraction,
      time_quantile=config.time_quantile, valid_fraction=config.valid_fraction,
      seed=config.split_seed, valid_draw=config.valid_draw,
      min_user_ratings=config.min_user_ratings,
      min_item_ratings=config.min_item_ratings)
  return dataset, split


def build_problem(config: Config, dataset: Dataset, split: Split) -> Problem:
  fit = split.train
  full = fit if split.valid is None else fit.concat(split.valid)
  fit_data = row_data(config, dataset, fit)
  full_data = fit_data if split.valid is None else row_data(config, dataset, full)
  n_rows = fit_data.n_rows
  n_cols = fit.n_users if config.orientation == "item" else fit.n_items
  valid = None
  if split.valid is not None and len(split.valid):
    valid = eval_set(config, fit, split.valid, n_rows)
  return Problem(fit_data, full_data, valid, eval_set(config, full, split.test, n_rows),
                 n_cols, tuple(dataset.rating_scale), len(fit), len(full),
                 dict(dataset.files), dataset.name)
