"""Tasks: a model plus its loss and its prediction, for the one engine.

    task.init(rng)                              -> params of one member
    task.loss(params, batch, hyper, rng, step)  -> (loss, (sse, count))
    task.refeed(params, batch)                  -> a batch to train on again, or None

`RatingTask`: rating autoencoders, masked MSE on the observed ratings (S1's
Σ m (r−ŷ)² / max(1, Σ m), S3's mean over every column, or kernelNet's
½ Σ m (r−ŷ)²), + λ·½ΣW² (+ λs·½ΣK² for kernel layers). The
batch comes as dense rows or as flattened entries (see `batching`); both
go through the model's one forward and give the same loss.

`MultinomialTask`: Mult-VAE / Mult-DAE (Liang et al. 2018), multinomial
log-likelihood + β·KL, β annealed linearly to its cap.

`Hyper` holds the numbers that may differ between the members of a sweep,
each a [K] array (one member's slice is a scalar): traced, so one compile
serves every value.
"""

from __future__ import annotations

import dataclasses
from typing import Optional, Sequence

import flax.struct
import jax
import jax.numpy as jnp

from recae_jax import losses
from recae_jax.batching import DenseBatch, SparseBatch
from recae_jax.config import Config
from recae_jax.models import AutoEncoder, DenseInput, MultVAE, Rates, SparseInput

# The config fields a sweep may vary between members (numbers only).
SWEEPABLE = ("seed", "learning_rate", "l2", "dropout", "input_dropout", "input_noise")


@flax.struct.dataclass
class Hyper:
  learning_rate: jax.Array
  l2: jax.Array
  dropout: jax.Array
  input_dropout: jax.Array
  input_noise: jax.Array

  @classmethod
  def from_configs(cls, configs: Sequence) -> "Hyper":
    f = lambda name: jnp.asarray([float(getattr(c, name, 0.0)) for c in configs],
                                 jnp.float32)
    return cls(*(f(n) for n in ("learning_rate", "l2", "dropout", "input_dropout",
                                "input_noise")))

  @property
  def rates(self) -> Rates:
    return Rates(self.dropout, self.input_dropout, self.input_noise)


@dataclasses.dataclass(frozen=True)
class RatingTask:
  model: AutoEncoder
  rating_divisor: float = 1.0
  loss_denominator: str = "observed"   # "all": S3's MSELoss over every column
  dense_refeeding: int = 0
  use_l2: bool = False                 # some member has l2 > 0 (else skip ½ΣW²)
  kernel_l2: float = 0.0               # λs of kernelNet layers' ½ΣK²

  @classmethod
  def from_config(cls, config: Config, model: AutoEncoder,
                  members: Sequence[Config] = ()) -> "RatingTask":
    return cls(model, config.rating_divisor, config.loss_denominator,
               config.dense_refeeding, any(c.l2 > 0 for c in (members or (config,))),
               config.kernel_l2 if model.kernel_dim else 0.0)

  def init(self, rng):
    return self.model.init(rng)

  def loss(self, params, batch, hyper: Hyper, rng, step=None, totals=None,
           shards: int = 1):
    """`totals` ({"count", "rows"} over every device's share of the batch) and
    `shards` make this device's share of the loss of a batch split over a mesh."""
    div = self.rating_divisor
    if isinstance(batch, SparseBatch):
      x_T = batch.value_T / div
      inputs = SparseInput(batch.row_T, batch.col_T, x_T, batch.valid_T, batch.n_rows)
      pred_T = self.model.apply(params, inputs, hyper.rates, rng, train=True,
                                at=(batch.row_T, batch.col_T))
      diff = (pred_T - x_T) * batch.valid_T
      sse, count = jnp.sum(diff * diff), jnp.sum(batch.valid_T)
    else:
      x_BxN = batch.v_BxN / div
      nbr = None if batch.nbr_BxGxN is None else batch.nbr_BxGxN / div
      pred_BxN = self.model.apply(params, DenseInput(x_BxN, batch.m_BxN, batch.side_BxS,
                                                     nbr, batch.rows_B),
                                  hyper.rates, rng, train=True)
      sse, count = losses.masked_sse(pred_BxN, x_BxN, batch.m_BxN, batch.w_B)
    totals = totals or {"count": count, "rows": jnp.sum(batch.w_B)}
    if self.loss_denominator == "observed":
      denom = jnp.maximum(1.0, totals["count"])
    elif self.loss_denominator == "sum":  # kernelNet / GLocal-K: ½ Σ m (r − ŷ)²
      denom = 2.0 / div / div  # on the data's scale, whatever rating_divisor is
    else:  # torch MSELoss over every column of the (real) rows
      denom = jnp.maximum(1.0, totals["rows"]) * self.model.n_outputs
    loss = sse / denom
    if self.use_l2:
      loss = loss + hyper.l2 * losses.l2_penalty(params) / shards
    if self.kernel_l2:
      loss = loss + self.kernel_l2 * self.model.kernel_penalty(params) / shards
    return loss, (sse * div * div, count)

  def refeed(self, params, batch) -> Optional[DenseBatch]:
    """DeepRecommender's dense re-feeding: f(x) is a dense rating vector the
    model should reproduce, so train on it as input and target."""
    div = self.rating_divisor
    x = DenseInput(batch.v_BxN / div, batch.m_BxN, batch.side_BxS, rows_B=batch.rows_B)
    y_BxN = jax.lax.stop_gradient(self.model.apply(params, x)) * div
    return DenseBatch(y_BxN, jnp.ones_like(batch.m_BxN), batch.side_BxS, batch.w_B,
                      rows_B=batch.rows_B)

  def predict_at(self, params, inputs, at, out_rows=None):
    """Predicted ratings at the block's pairs (same scale as the data)."""
    div = self.rating_divisor
    if isinstance(inputs, SparseInput):
      inputs = inputs.replace(x_T=inputs.x_T / div)
      return self.model.apply(params, inputs, at=at, out_rows=out_rows) * div
    nbr = None if inputs.nbr_BxGxN is None else inputs.nbr_BxGxN / div
    x = inputs.replace(x_BxN=inputs.x_BxN / div, nbr_BxGxN=nbr)  # every other field kept
    return self.model.apply(params, x)[at] * div


def anneal_beta(step, cap: float, total_steps: int):
  """β = min(cap, step / total_steps): Liang et al.'s linear KL annealing."""
  return jnp.minimum(cap, step.astype(jnp.float32) / max(1, total_steps))


def multinomial_nll(logits_BxI, x_BxI, w_B) -> jax.Array:
  """Σ_b w_b (−Σ_i x_bi log softmax(logits_b)_i), the Mult-VAE likelihood."""
  return -jnp.sum(w_B * jnp.sum(jax.nn.log_softmax(logits_BxI) * x_BxI, axis=-1))


@dataclasses.dataclass(frozen=True)
class MultinomialTask:
  model: MultVAE
  anneal_cap: float = 0.2
  anneal_steps: int = 1
  dense_refeeding: int = 0
  use_l2: bool = False

  def init(self, rng):
    return self.model.init(rng)

  def loss(self, params, batch: DenseBatch, hyper: Hyper, rng, step):
    beta = anneal_beta(step, self.anneal_cap, self.anneal_steps)
    logits, kl_B = self.model.apply(params, batch.v_BxN, hyper.input_dropout, rng,
                                    train=True)
    n = jnp.maximum(1.0, jnp.sum(batch.w_B))
    loss = (multinomial_nll(logits, batch.v_BxN, batch.w_B)
            + beta * jnp.sum(batch.w_B * kl_B)) / n
    if self.use_l2:
      loss = loss + hyper.l2 * losses.l2_penalty(params)
    return loss, (beta, n)

  def scores(self, params, x_BxI):
    return self.model.apply(params, x_BxI)[0]
