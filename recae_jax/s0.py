"""Seed system S0: Pearson user-KNN imputation, then a 5-d feature AE.

S0 (DESIGN.md) took ML-100K's users x first 64 movies, filled every missing
rating with

    r̂(a, p) = mean_a + Σ_b sim(a,b) (r_bp − mean_b) / Σ_b sim(a,b)

over all users b who rated p (Pearson, no top-k), rounded to 0.5 steps in
[1, 5], and trained an AE 64→16→5→16→64 (ReLU hidden, sigmoid output) on
ratings / 5 with Adam + MSE, 100 epochs, batch 100, on 80% of the users
(rows); the other 20% are held out and reconstructed from their own rows.

The signed denominator Σ sim is S0's formula (`denominator="signed"`); sums
near zero give raw values far outside [1, 5] that the round-off clips
silently. We count them (`n_out_of_scale`) and offer Σ|sim| ("abs") as the
improved default.

Everything here is vectorized (impute.fill_matrix; the engine's compiled
epoch); nothing loops over users, items or ratings in Python.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from recae_jax import config as config_lib
from recae_jax import engine, impute, models, optim, plots
from recae_jax.batching import DenseBatcher
from recae_jax.data import sparse
from recae_jax.data.types import Dataset, Ratings
from recae_jax.errors import UserError
from recae_jax.problem import RowData
from recae_jax.tasks import Hyper, RatingTask

SCALE = (1.0, 5.0)


@dataclasses.dataclass(frozen=True, eq=False)
class Subset:
  """The users x movies matrix S0 works on, with original ids."""

  ratings: Ratings       # remapped to [U, I] of this subset
  user_ids: np.ndarray   # original id of each row
  item_ids: np.ndarray   # original id of each column


def first_movies(dataset: Dataset, n_movies: int = 64) -> Subset:
  """The first `n_movies` movies by original id (0 = all) and the users who
  rated at least one of them (S0 pivoted u.data, so other users vanish)."""
  n_all = len(dataset.item_ids)
  if n_movies < 0:
    raise UserError(f"n_movies must be >= 0 (0 = all movies), got {n_movies}")
  n = n_all if n_movies in (0, n_all) else n_movies
  if n > n_all:
    raise UserError(f"n_movies={n_movies} but the dataset has {n_all} movies")
  item_order = np.argsort(_numeric(dataset.item_ids), kind="stable")
  keep_item = np.zeros(n_all, bool)
  keep_item[item_order[:n]] = True
  r = dataset.ratings
  sel = keep_item[r.items]
  users = np.unique(r.users[sel])
  items = item_order[:n]  # columns in original-id order
  u_map = np.full(r.n_users, -1, np.int64)
  u_map[users] = np.arange(len(users))
  i_map = np.full(r.n_items, -1, np.int64)
  i_map[items] = np.arange(len(items))
  sub = Ratings(u_map[r.users[sel]], i_map[r.items[sel]], r.ratings[sel],
                r.timestamps[sel], len(users), len(items))
  return Subset(sub, np.asarray(dataset.user_ids)[users],
                np.asarray(dataset.item_ids)[items])


def _numeric(ids: np.ndarray) -> np.ndarray:
  try:
    return np.asarray(ids).astype(np.int64)
  except (TypeError, ValueError):  # non-numeric ids: their given order
    return np.arange(len(ids))


@dataclasses.dataclass(frozen=True, eq=False)
class Imputed:
  filled_UxI: np.ndarray    # float32: observed kept, rest rounded + clipped
  raw_UxI: np.ndarray       # float32: imputed values before round / clip
  observed_UxI: np.ndarray  # bool
  n_imputed: int
  n_out_of_scale: int       # raw imputed values outside [1, 5]
  imputed_min: float        # over raw imputed values
  imputed_max: float
  seconds: float


def impute_first_movies(ratings: Ratings, denominator: str = "signed",
                        round_to: Optional[float] = 0.5,
                        centering: str = "corated") -> Imputed:
  """S0's fill: every rater of the item (no top-k), mean-centred, Pearson."""
  cfg = impute.KNNConfig(neighbors=0, metric="pearson", centering=centering,
                         denominator=denominator, round_to=None, clip=False,
                         rating_scale=SCALE)
  t0 = time.perf_counter()
  raw = impute.fill_matrix(ratings, cfg, keep_observed=True)
  seconds = time.perf_counter() - t0
  observed = np.zeros(raw.shape, bool)
  observed[ratings.users, ratings.items] = True
  imputed = raw[~observed]
  out = (imputed < SCALE[0]) | (imputed > SCALE[1])
  filled = raw
  if round_to:
    filled = np.round(filled / round_to) * round_to
  filled = np.where(observed, raw, np.clip(filled, *SCALE)).astype(np.float32)
  return Imputed(filled, raw, observed, int(imputed.size), int(out.sum()),
                 float(imputed.min()) if imputed.size else float("nan"),
                 float(imputed.max()) if imputed.size else float("nan"),
                 seconds)


def feature_config(epochs: int = 100, batch_size: int = 100, seed: int = 0,
                   learning_rate: float = 1e-3) -> config_lib.Config:
  """S0's AE: N→16→5→16→N, ReLU, sigmoid output on ratings / 5, Adam, MSE."""
  return config_lib.make_config(
      None, orientation="user", layers=(16, 5), activation="relu",
      output_activation="sigmoid", rating_divisor=5.0, optimizer="adam",
      learning_rate=learning_rate, batch_size=batch_size, epochs=epochs,
      valid_fraction=0.0, seed=seed)


def split_rows(n_rows: int, test_fraction: float = 0.2,
               seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
  """80/20 random rows: (train_rows, test_rows), int32, each sorted."""
  perm = np.random.default_rng(seed).permutation(n_rows)
  n_test = int(round(test_fraction * n_rows))
  if n_rows >= 2:
    n_test = min(max(n_test, 1), n_rows - 1)
  return (np.sort(perm[n_test:]).astype(np.int32),
          np.sort(perm[:n_test]).astype(np.int32))


@dataclasses.dataclass(frozen=True, eq=False)
class Trained:
  params: object
  model: models.AutoEncoder
  config: config_lib.Config
  recon_UxI: np.ndarray    # reconstruction in rating units, every user
  features_Ux5: np.ndarray  # bottleneck (code) of every user
  rmse_train: float
  rmse_test: float
  train_seconds: float
  losses: list


def _dense_ratings(filled_UxI: np.ndarray) -> Ratings:
  """A Ratings holding every cell (all >= 1, so the engine's mask is full)."""
  u, i = filled_UxI.shape
  uu, ii = np.indices((u, i))
  return Ratings(uu.ravel(), ii.ravel(), filled_UxI.ravel(),
                 np.zeros(u * i, np.int64), u, i)


def train_feature_ae(filled_UxI: np.ndarray, train_rows: np.ndarray,
                     test_rows: np.ndarray,
                     config: Optional[config_lib.Config] = None) -> Trained:
  """Trains on the training users' full rows with the project's engine."""
  cfg = config or feature_config()
  if not np.all(filled_UxI >= SCALE[0]):
    raise UserError("filled matrix must hold ratings >= 1 in every cell")
  u, n_items = filled_UxI.shape
  csr = sparse.ratings_to_csr(_dense_ratings(filled_UxI), "user")
  data = RowData(sparse.make_row_source(csr, cfg.dense_budget_mb << 20),
                 None, jnp.asarray(train_rows, jnp.int32))
  model = models.build_model(cfg, n_items)
  task = RatingTask.from_config(cfg, model)
  steps = max(1, -(-len(train_rows) // cfg.batch_size))
  tx = optim.make_optimizer(cfg, steps)
  state = engine.init_state(task, tx, [cfg.seed], cfg.seed)
  epoch_fn = engine.make_epoch(task, tx, DenseBatcher(cfg.batch_size), shuffle=cfg.shuffle)
  hyper = Hyper.from_configs([cfg])
  t0 = time.perf_counter()
  losses = []
  for _ in range(cfg.epochs):  # one compiled call per epoch
    state, m = epoch_fn(state, data, hyper)
    losses.append(m["loss"][0])
  losses = [float(v) for v in jax.device_get(losses)]
  params = engine.member(state.params, 0)
  jax.block_until_ready(params)
  seconds = time.perf_counter() - t0
  x_UxI = jnp.asarray(filled_UxI / cfg.rating_divisor, jnp.float32)
  recon = np.asarray(_reconstruct(model, params, x_UxI)) * cfg.rating_divisor
  feats = np.asarray(models.encode(model, params, x_UxI), np.float32)
  err2 = (recon.astype(np.float64) - filled_UxI) ** 2
  rmse = lambda rows: (float(np.sqrt(err2[rows].mean())) if len(rows)
                       else float("nan"))
  return Trained(params, model, cfg, recon.astype(np.float32), feats,
                 rmse(train_rows), rmse(test_rows), seconds, losses)


def _reconstruct(model, params, x_UxI):
  return jax.jit(lambda p, x: model.apply(p, models.DenseInput(x, x != 0)))(params, x_UxI)


def plot_vector(original, reconstructed, observed, path, title: str,
                xlabel: str):
  """Original (observed / imputed marked apart) vs reconstructed ratings."""
  return plots.plot_reconstruction(original, reconstructed, path, title, xlabel,
                                   observed=observed)


def find_index(ids: np.ndarray, wanted, what: str) -> int:
  """Row / column of an original id, or a UserError naming the flag."""
  hits = np.flatnonzero(np.asarray(ids).astype(str) == str(wanted))
  if not len(hits):
    raise UserError(f"--{what}={wanted} is not in the S0 matrix "
                    f"(ids {ids[0]}..{ids[-1]}, {len(ids)} of them)")
  return int(hits[0])
