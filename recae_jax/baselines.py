r"""Baseline predictors b_ui = μ + b_u + b_i (Koren, TKDD 2010, §2.1).

What Surprise's BaselineOnly fits, and what KNNBaseline and the
`pearson_baseline` similarity subtract. Two fits, both minimising
Σ (r_ui − μ − b_u − b_i)² + regularisation:

`als` (Surprise's default): n_epochs (10) alternating closed-form updates,
items first, each one segment sum over the ratings:
  b_i = Σ_{u∈R(i)} (r_ui − μ − b_u) / (reg_i + |R(i)|)      reg_i = 10
  b_u = Σ_{i∈R(u)} (r_ui − μ − b_i) / (reg_u + |R(u)|)      reg_u = 15
`sgd`: n_epochs (20) passes of, for each rating,
  e = r_ui − b_ui;  b_u += lr (e − reg b_u);  b_i += lr (e − reg b_i)
(lr 0.005, reg 0.02). The ratings go in minibatches of `batch_size` under
one `lax.scan` per epoch; updates within a batch are summed (a user or item
seen twice in a batch gets both steps from the same start). batch_size=1
with seed=None (the given order) is exactly Surprise's loop.

Users / items without ratings get b = 0, so their b_ui falls back to μ + the
other side's bias (what Surprise does for unknown ids).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from recae_jax.data.types import Ratings
from recae_jax.errors import UserError

METHODS = ("als", "sgd")


@dataclasses.dataclass(frozen=True)
class BaselineConfig:
  """How to fit b_u, b_i; hashable. Defaults are Surprise's bsl_options."""

  method: str = "als"
  n_epochs: Optional[int] = None  # None: 10 (als) / 20 (sgd)
  reg_u: float = 15.0             # als
  reg_i: float = 10.0             # als
  reg: float = 0.02               # sgd
  learning_rate: float = 0.005    # sgd
  batch_size: int = 64            # sgd ratings per update
  seed: Optional[int] = 0         # sgd shuffle per epoch; None = given order

  def __post_init__(self):
    if self.method not in METHODS:
      raise UserError(f"unknown baseline {self.method!r}; choose one of "
                      f"{', '.join(METHODS)} (or none)")
    if self.n_epochs is None:
      object.__setattr__(self, "n_epochs", 10 if self.method == "als" else 20)
    if int(self.n_epochs) != self.n_epochs or self.n_epochs < 0:
      raise UserError(f"baseline n_epochs must be an integer >= 0, got "
                      f"{self.n_epochs!r}")
    for name in ("reg_u", "reg_i", "reg", "learning_rate"):
      v = getattr(self, name)
      if not (v >= 0 and math.isfinite(v)):
        raise UserError(f"baseline {name} must be a finite number >= 0, got "
                        f"{v!r}")
    if int(self.batch_size) != self.batch_size or self.batch_size < 1:
      raise UserError(f"baseline batch_size must be an integer >= 1, got "
                      f"{self.batch_size!r}")
    object.__setattr__(self, "n_epochs", int(self.n_epochs))


def make_config(method) -> Optional[BaselineConfig]:
  """A BaselineConfig from a config, a method name, or None / 'none'."""
  if method is None or isinstance(method, BaselineConfig):
    return method
  if method == "none":
    return None
  return BaselineConfig(method=str(method))


@dataclasses.dataclass(frozen=True, eq=False)
class Baselines:
  """Fitted μ, b_u [U], b_i [I] (float32)."""

  mu: float
  b_u: np.ndarray
  b_i: np.ndarray

  def predict(self, users, items) -> np.ndarray:
    """b_ui for pairs, float32 (no clipping)."""
    users = np.asarray(users, np.int64)
    items = np.asarray(items, np.int64)
    return (np.float32(self.mu) + self.b_u[users] + self.b_i[items]
            ).astype(np.float32)

  def transpose(self) -> "Baselines":
    """Roles of users and items swapped (for item-oriented neighbourhoods)."""
    return Baselines(self.mu, self.b_i, self.b_u)


def fit(train: Ratings, config: Optional[BaselineConfig] = None) -> Baselines:
  """Fits b_ui = μ + b_u + b_i on `train` (see the module docstring)."""
  cfg = config or BaselineConfig()
  if not isinstance(train, Ratings):
    raise UserError(f"train must be Ratings, got {type(train).__name__}")
  if len(train) == 0:
    raise UserError("baseline: the training set has no ratings")
  if not np.all(np.isfinite(train.ratings)):
    raise UserError("baseline: ratings must be finite")
  mu = float(np.mean(train.ratings, dtype=np.float64))
  if cfg.method == "als":
    b_u, b_i = _als(train, mu, cfg)
  else:
    b_u, b_i = _sgd(train, mu, cfg)
  return Baselines(mu, np.asarray(b_u, np.float32), np.asarray(b_i, np.float32))


def _als(train: Ratings, mu: float, cfg: BaselineConfig):
  u, i, r = train.users, train.items, train.ratings.astype(np.float64) - mu
  n_u = np.bincount(u, minlength=train.n_users)
  n_i = np.bincount(i, minlength=train.n_items)
  b_u = np.zeros(train.n_users)
  b_i = np.zeros(train.n_items)
  # Floor: an unrated user / item has a zero sum, so b = 0 even at reg 0.
  den_i, den_u = np.maximum(cfg.reg_i + n_i, 1e-12), np.maximum(cfg.reg_u + n_u, 1e-12)
  for _ in range(cfg.n_epochs):  # epochs, each vectorized over all ratings
    b_i = np.bincount(i, r - b_u[u], train.n_items) / den_i
    b_u = np.bincount(u, r - b_i[i], train.n_users) / den_u
  return b_u, b_i


@functools.partial(jax.jit, static_argnames=("lr", "reg"))
def _sgd_epoch(b_u, b_i, u_NxB, i_NxB, r_NxB, w_NxB, mu, lr: float,
               reg: float):
  def step(carry, batch):
    bu, bi = carry
    u, i, r, w = batch
    bu_u, bi_i = bu[u], bi[i]
    e = r - (mu + bu_u + bi_i)
    # Padding ratings have w = 0 and so change nothing.
    bu = bu.at[u].add(w * lr * (e - reg * bu_u))
    bi = bi.at[i].add(w * lr * (e - reg * bi_i))
    return (bu, bi), None
  return jax.lax.scan(step, (b_u, b_i), (u_NxB, i_NxB, r_NxB, w_NxB))[0]


def _sgd(train: Ratings, mu: float, cfg: BaselineConfig):
  n, bs = len(train), cfg.batch_size
  n_batches = -(-n // bs)
  pad = n_batches * bs - n
  rng = np.random.default_rng(cfg.seed) if cfg.seed is not None else None
  b_u = jnp.zeros(train.n_users, jnp.float32)
  b_i = jnp.zeros(train.n_items, jnp.float32)
  w = jnp.asarray(np.pad(np.ones(n, np.float32), (0, pad)).reshape(-1, bs))
  for _ in range(cfg.n_epochs):  # epochs; each one compiled scan
    order = rng.permutation(n) if rng is not None else np.arange(n)
    cols = [np.pad(a[order], (0, pad)).reshape(-1, bs)
            for a in (train.users, train.items, train.ratings)]
    b_u, b_i = _sgd_epoch(b_u, b_i, *(jnp.asarray(c) for c in cols), w,
                          jnp.float32(mu), lr=float(cfg.learning_rate),
                          reg=float(cfg.reg))
  return np.asarray(b_u), np.asarray(b_i)
