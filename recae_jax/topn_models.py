"""RecVAE and CDAE: two more top-N autoencoders on the one engine.

Both are pure functions over flat param dicts (like `models.MultVAE`):
`init(rng)`, `apply(params, x_BxI, rows_B)` (the scores of each row's
items), `encode(params, x_BxI, rows_B)` (the user's latent code).

RecVAE (Shenbin et al., WSDM 2020; settings of the authors' PyTorch code):

- encoder: the click row L2-normalised, dropout `input_dropout` (0.5) while
  the encoder trains, then 5 dense layers of width `hidden[0]` (600) with
  dense connections (layer j's pre-activation is fc_j(h_{j-1}) plus the sum
  of h_1..h_{j-1}), swish, layer norm (eps 0.1), then μ and log σ² of width
  `latent` (200); decoder: one linear layer latent → items (logits).
- loss: multinomial log-likelihood of the clicks at z ~ q(z|x), plus
  β_u · (log q(z|x) − log p(z|x)) at that same z (the one-sample KL of their
  code), β_u = `kl_gamma` x the user's number of clicks. The composite
  prior is, per latent dimension, the mixture 3/20 N(0, 1) + 3/4 q_old(z|x)
  + 1/10 N(0, e^10), q_old the posterior of the *old encoder*.
- alternating updates: an epoch is `enc_epochs` (3) passes over the users
  updating only the encoder (input dropout on), then `dec_epochs` (1) passes
  updating only the decoder (no input dropout, encoder fixed, z still
  sampled), then the encoder is copied into the old-encoder slot. The old
  encoder starts as a copy of the initial encoder (their code starts it from
  an independent random init). Two Adam states (their two optimizers), lr
  5e-4, batches of 500.

  How it sits on the engine: the engine's `make_epoch` runs one kind of
  step, so this module has its own epoch function, `make_recvae_epoch`: ONE
  jit (state donated), a `lax.scan` over the encoder passes' batches and one
  over the decoder passes', each step being `engine.make_member_update` of
  the task's encoder or decoder view with that phase's optimizer; members
  (a sweep) run one after another with `lax.map`. It keeps
  `engine.TrainState` / `init_state` (the two Adam states are the
  `opt_state` pair of `AlternatingTx`), `engine.TRACE_COUNTS` and `loop.fit`
  (selection, checkpoints, resume) unchanged.

CDAE (Wu et al., WSDM 2016): x̃ = dropout(x) with rate `input_dropout`
(kept entries scaled by 1/(1−q)), h = sigmoid(x̃ W + V_u + b) with a learned
per-user vector V_u of width `latent`, scores sigmoid(h W' + b'); loss: the
paper's logistic loss (binary cross-entropy over every item of the row),
mean over users, + λ·½(ΣW² + ΣW'² + ΣV²) (`l2`). It trains on the engine's
`make_epoch` as is; its batcher (`UserRowBatcher`) also hands the loss the
batch's row ids. Held-out (fold-in) users have no trained vector: V starts
at zero and only rows that appear in a training batch ever get a gradient
(Adam's update of an all-zero gradient history is exactly 0), so every
validation / test user is scored with V_u = 0, the usual way CDAE is
evaluated under strong generalization (no per-user fold-in steps).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, NamedTuple

import flax.struct
import jax
import jax.numpy as jnp
import optax

from recae_jax import engine, losses
from recae_jax.batching import DenseBatch, DenseBatcher
from recae_jax.tasks import Hyper, multinomial_nll

LOG_2PI = math.log(2 * math.pi)
MIXTURE_WEIGHTS = (3 / 20, 3 / 4, 1 / 10)  # N(0, 1), old posterior, N(0, e^10)
WIDE_LOGVAR = 10.0


def _linear(rng, fan_in: int, fan_out: int) -> dict:
  """torch.nn.Linear's init: kernel and bias ~ U(±1/√fan_in)."""
  bound = 1.0 / math.sqrt(fan_in)
  k1, k2 = jax.random.split(rng)
  return {"kernel": jax.random.uniform(k1, (fan_in, fan_out), jnp.float32, -bound, bound),
          "bias": jax.random.uniform(k2, (fan_out,), jnp.float32, -bound, bound)}


def _dense(p, h):
  return h @ p["kernel"] + p["bias"]


def _l2_normalize(x_BxI):
  return x_BxI / (jnp.sqrt(jnp.sum(x_BxI * x_BxI, axis=-1, keepdims=True)) + 1e-10)


def _dropout(rng, rate, x):
  keep = jax.random.bernoulli(rng, 1.0 - rate, x.shape)
  return jnp.where(keep, x / (1.0 - rate), 0.0)


def log_normal(z, mu, logvar):
  """Elementwise log N(z; μ, e^logvar)."""
  return -0.5 * (logvar + LOG_2PI + (z - mu) ** 2 / jnp.exp(logvar))


# ------------------------------------------------------------------ RecVAE

@dataclasses.dataclass(frozen=True)
class RecVAE:
  n_items: int
  hidden: int = 600
  latent: int = 200
  n_layers: int = 5
  ln_eps: float = 0.1

  def init_encoder(self, rng) -> dict:
    keys = jax.random.split(rng, self.n_layers + 2)
    enc = {}
    d = self.n_items
    for j in range(self.n_layers):
      enc[f"fc_{j}"] = _linear(keys[j], d, self.hidden)
      enc[f"ln_{j}"] = {"scale": jnp.ones(self.hidden), "bias": jnp.zeros(self.hidden)}
      d = self.hidden
    enc["mu"] = _linear(keys[-2], self.hidden, self.latent)
    enc["logvar"] = _linear(keys[-1], self.hidden, self.latent)
    return enc

  def init(self, rng) -> dict:
    """{"enc", "old" (a frozen copy of "enc"), "dec"}."""
    k_enc, k_dec = jax.random.split(rng)
    enc = self.init_encoder(k_enc)
    return {"enc": enc, "old": jax.tree.map(jnp.copy, enc),
            "dec": _linear(k_dec, self.latent, self.n_items)}

  def posterior(self, enc, x_BxI, input_dropout=0.0, rng=None, train: bool = False):
    """(μ, log σ²) [B, latent] of q(z|x) under encoder params `enc`."""
    h = _l2_normalize(x_BxI)
    if train:
      h = _dropout(rng, input_dropout, h)
    outs = []
    for j in range(self.n_layers):
      pre = _dense(enc[f"fc_{j}"], h)
      for prev in outs:  # dense connections: + h_1 + ... + h_{j-1}
        pre = pre + prev
      a = jax.nn.swish(pre)
      mean = jnp.mean(a, -1, keepdims=True)
      var = jnp.mean((a - mean) ** 2, -1, keepdims=True)
      h = ((a - mean) / jnp.sqrt(var + self.ln_eps) * enc[f"ln_{j}"]["scale"]
           + enc[f"ln_{j}"]["bias"])
      outs.append(h)
    return _dense(enc["mu"], h), _dense(enc["logvar"], h)

  def log_prior(self, old, x_BxI, z_BxL):
    """log p(z | x) of the composite prior, per latent dimension [B, L]."""
    post_mu, post_logvar = self.posterior(old, x_BxI)
    zeros = jnp.zeros_like(z_BxL)
    comps = jnp.stack([log_normal(z_BxL, zeros, zeros),
                       log_normal(z_BxL, post_mu, post_logvar),
                       log_normal(z_BxL, zeros, zeros + WIDE_LOGVAR)], -1)
    return jax.nn.logsumexp(comps + jnp.log(jnp.asarray(MIXTURE_WEIGHTS)), axis=-1)

  def encode(self, params, x_BxI, rows_B=None):
    del rows_B
    return self.posterior(params["enc"], x_BxI)[0]

  def apply(self, params, x_BxI, rows_B=None):
    """Logits of every item at z = μ (no dropout): the ranking scores."""
    return _dense(params["dec"], self.encode(params, x_BxI))

  def item_embeddings(self, params):
    return params["dec"]["kernel"].T


@dataclasses.dataclass(frozen=True)
class RecVAETask:
  """`phase` "enc": the encoder step's loss (decoder held fixed); "dec": the
  decoder step's loss (encoder fixed, no input dropout; the KL term does not
  depend on the decoder, so it is left out)."""

  model: RecVAE
  kl_gamma: float = 0.005
  enc_epochs: int = 3
  dec_epochs: int = 1
  phase: str = "enc"
  use_l2: bool = False
  dense_refeeding: int = 0  # engine.make_member_update reads it

  def init(self, rng):
    return self.model.init(rng)

  def loss(self, params, batch: DenseBatch, hyper: Hyper, rng, step=None):
    x, w = batch.v_BxN, batch.w_B
    k_drop, k_z = jax.random.split(rng)
    sg = jax.lax.stop_gradient
    enc = params["enc"] if self.phase == "enc" else sg(params["enc"])
    dec = params["dec"] if self.phase == "dec" else sg(params["dec"])
    mu, logvar = self.model.posterior(enc, x, hyper.input_dropout, k_drop,
                                      train=self.phase == "enc")
    z = mu + jnp.exp(0.5 * logvar) * jax.random.normal(k_z, mu.shape)
    n = jnp.maximum(1.0, jnp.sum(w))
    nll = multinomial_nll(_dense(dec, z), x, w)
    if self.phase == "enc":
      kl_B = jnp.sum(log_normal(z, mu, logvar) - self.model.log_prior(sg(params["old"]), x, z),
                     -1) * (self.kl_gamma * jnp.sum(x, -1))
      loss = (nll + jnp.sum(w * kl_B)) / n
    else:
      loss = nll / n
    if self.use_l2:
      loss = loss + hyper.l2 * losses.l2_penalty(params[self.phase])
    return loss, (n,)


def only(key: str, inner: optax.GradientTransformation) -> optax.GradientTransformation:
  """`inner` on params[key] alone; every other part gets a zero update."""

  def init(params):
    return inner.init(params[key])

  def update(grads, state, params=None, **extra):
    del extra  # an L-BFGS line search's arguments: not for Adam
    u, state = inner.update(grads[key], state, None if params is None else params[key])
    out = {k: jax.tree.map(jnp.zeros_like, v) for k, v in grads.items()}
    out[key] = u
    return out, state

  return optax.GradientTransformation(init, update)


class AlternatingTx(NamedTuple):
  """RecVAE's two optimizers; `init` is what `engine.init_state` calls."""
  enc: optax.GradientTransformation
  dec: optax.GradientTransformation

  def init(self, params):
    return (self.enc.init(params), self.dec.init(params))


def alternating_tx(inner: optax.GradientTransformation) -> AlternatingTx:
  return AlternatingTx(only("enc", inner), only("dec", inner))


def recvae_metrics(loss_enc_K, loss_dec_K) -> dict:
  return {"loss": loss_enc_K, "dec_nll": loss_dec_K}


def make_recvae_epoch(task: RecVAETask, tx: AlternatingTx, batcher: DenseBatcher, *,
                      shuffle: bool = True):
  """Jitted `epoch(state, data, hyper) -> (state, metrics [K])`: one call per
  RecVAE epoch (encoder passes, decoder passes, old-encoder copy)."""
  n_enc, n_dec = task.enc_epochs, task.dec_epochs
  upd_enc = engine.make_member_update(dataclasses.replace(task, phase="enc"), tx.enc,
                                      batcher)
  upd_dec = engine.make_member_update(dataclasses.replace(task, phase="dec"), tx.dec,
                                      batcher)

  def passes_rows(data, order_rng):
    """(next order key, [passes, Nb, B] row grids, one shuffle per pass)."""
    keys = jax.random.split(order_rng, n_enc + n_dec + 1)
    return keys[0], jnp.stack([batcher.epoch_rows(data, r, shuffle) for r in keys[1:]])

  def one_member(data, step0, params, opt, rng, hyp, rows_PxNbxB):
    b = rows_PxNbxB.shape[-1]

    def scan_pass(update, p, o, rows, step):
      def body(carry, rows_B):
        p, o, s = carry
        p, o, (loss, _) = update(p, o, rng, hyp, data, rows_B, s)
        return (p, o, s + 1), loss
      return jax.lax.scan(body, (p, o, step), rows.reshape(-1, b))

    (params, opt_e, step), loss_e = scan_pass(upd_enc, params, opt[0],
                                              rows_PxNbxB[:n_enc], step0)
    (params, opt_d, _), loss_d = scan_pass(upd_dec, params, opt[1],
                                           rows_PxNbxB[n_enc:], step)
    params = {**params, "old": params["enc"]}
    return params, (opt_e, opt_d), jnp.mean(loss_e), jnp.mean(loss_d)

  @functools.partial(jax.jit, donate_argnums=0)
  def epoch(state: engine.TrainState, data, hyper):
    engine.TRACE_COUNTS["recvae_epoch"] += 1
    k = state.rng.shape[0]
    if state.order_rng.ndim == 2:  # each member its own batch order
      order_rng, rows = jax.vmap(lambda r: passes_rows(data, r))(state.order_rng)
    else:
      order_rng, rows = passes_rows(data, state.order_rng)
      rows = jnp.broadcast_to(rows, (k,) + rows.shape)
    fn = functools.partial(one_member, data, state.step)
    trees = (state.params, state.opt_state, state.rng, hyper, rows)
    if k == 1:
      out = jax.tree.map(lambda x: x[None], fn(*engine.member(trees, 0)))
    else:
      out = jax.lax.map(lambda t: fn(*t), trees)
    params, opt, loss_e, loss_d = out
    n_steps = (n_enc + n_dec) * rows.shape[-2]
    state = state.replace(step=state.step + n_steps, params=params, opt_state=opt,
                          order_rng=order_rng)
    return state, recvae_metrics(loss_e, loss_d)

  return epoch


# ------------------------------------------------------------------ CDAE

@dataclasses.dataclass(frozen=True)
class CDAE:
  """`n_users` rows of user vectors plus one zero padding row (index n_users)."""

  n_items: int
  n_users: int
  latent: int = 50

  def init(self, rng) -> dict:
    k_enc, k_dec = jax.random.split(rng)
    xavier = jax.nn.initializers.xavier_uniform()
    return {"enc": {"kernel": xavier(k_enc, (self.n_items, self.latent), jnp.float32),
                    "bias": jnp.zeros(self.latent)},
            "user": {"kernel": jnp.zeros((self.n_users + 1, self.latent))},
            "dec": {"kernel": xavier(k_dec, (self.latent, self.n_items), jnp.float32),
                    "bias": jnp.zeros(self.n_items)}}

  def encode(self, params, x_BxI, rows_B=None, input_dropout=0.0, rng=None,
             train: bool = False):
    """h = sigmoid(x̃ W + V_u + b); rows_B None: V_u = 0 (a new user)."""
    if train:
      x_BxI = _dropout(rng, input_dropout, x_BxI)
    pre = _dense(params["enc"], x_BxI)
    if rows_B is not None:
      pre = pre + params["user"]["kernel"][jnp.minimum(rows_B, self.n_users)]
    return jax.nn.sigmoid(pre)

  def logits(self, params, x_BxI, rows_B=None, input_dropout=0.0, rng=None,
             train: bool = False):
    return _dense(params["dec"], self.encode(params, x_BxI, rows_B, input_dropout, rng,
                                             train))

  def apply(self, params, x_BxI, rows_B=None):
    """Sigmoid scores of every item (no corruption)."""
    return jax.nn.sigmoid(self.logits(params, x_BxI, rows_B))

  def item_embeddings(self, params):
    return params["dec"]["kernel"].T


@flax.struct.dataclass
class UserRowBatch:
  v_BxN: jax.Array
  w_B: jax.Array
  rows_B: jax.Array


@dataclasses.dataclass(frozen=True)
class UserRowBatcher(DenseBatcher):
  """DenseBatcher whose batches also carry their row (user) ids."""

  def batch(self, data, rows_B) -> UserRowBatch:
    b = super().batch(data, rows_B)
    return UserRowBatch(b.v_BxN, b.w_B, rows_B)


@dataclasses.dataclass(frozen=True)
class CDAETask:
  model: CDAE
  use_l2: bool = True
  dense_refeeding: int = 0

  def init(self, rng):
    return self.model.init(rng)

  def loss(self, params, batch: UserRowBatch, hyper: Hyper, rng, step=None):
    x, w = batch.v_BxN, batch.w_B
    logits = self.model.logits(params, x, batch.rows_B, hyper.input_dropout, rng,
                               train=True)
    bce_B = jnp.sum(optax.sigmoid_binary_cross_entropy(logits, x), -1)
    n = jnp.maximum(1.0, jnp.sum(w))
    loss = jnp.sum(w * bce_B) / n
    if self.use_l2:
      loss = loss + hyper.l2 * losses.l2_penalty(params)
    return loss, (n,)


def cdae_metrics(loss_NbxK, aux) -> dict:
  del aux
  return {"loss": jnp.mean(loss_NbxK, 0)}


# ------------------------------------------------------------------ scoring

@dataclasses.dataclass(frozen=True)
class RowScorer:
  """score_fn of `topn.evaluate_users`: the model's scores for the rows."""
  model: Any

  def __call__(self, ctx, rows_B):
    x_BxI, _ = ctx["inputs"].gather(rows_B)
    return self.model.apply(ctx["params"], x_BxI, rows_B)

