"""Optimizers: one optax chain per config, built at learning rate 1.

The engine scales each member's update by its own learning rate (every
optimizer here is linear in it, schedules included), so members with
different rates share one optimizer and one compile.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from recae_jax.config import Config


def accumulate_forever() -> optax.GradientTransformation:
  """Passes on the running sum of all gradients so far.

  Reproduces PyTorch code that never calls `zero_grad()` (seed system S3):
  `.grad` then holds the sum of every gradient since the start of training.
  """
  def init(params):
    return jax.tree.map(jnp.zeros_like, params)

  def update(updates, state, params=None):
    del params
    acc = jax.tree.map(jnp.add, state, updates)
    return acc, acc

  return optax.GradientTransformation(init, update)


class RestartState(NamedTuple):
  count: jax.Array   # updates so far
  inner: Any


def restarting(inner: optax.GradientTransformationExtraArgs,
               every: int) -> optax.GradientTransformationExtraArgs:
  """`inner` with its state re-initialised before every `every`-th update.

  The kernelNet / GLocal-K code calls scipy's L-BFGS-B for 5 iterations per
  epoch, so its curvature memory starts afresh every 5 iterations; one long
  L-BFGS run is a different optimiser (on ML-100K u1 it fine-tunes GLocal-K
  into over-fitting: best validation RMSE 0.8863, vs 0.8752 restarted).
  """
  def init(params):
    return RestartState(jnp.zeros([], jnp.int32), inner.init(params))

  def update(updates, state, params=None, **extra):
    reset = (state.count > 0) & (state.count % every == 0)
    fresh = inner.init(params)
    kept = jax.tree.map(lambda f, s: jnp.where(reset, f, s), fresh, state.inner)
    updates, kept = inner.update(updates, kept, params, **extra)
    return updates, RestartState(state.count + 1, kept)

  return optax.GradientTransformationExtraArgs(init, update)


def make_schedule(config: Config, steps_per_epoch: int, lr: float):
  if config.schedule == "constant":
    return lr
  if config.schedule == "step":
    return optax.exponential_decay(lr, config.decay_epochs * steps_per_epoch,
                                   config.decay_rate, staircase=True)
  return optax.cosine_decay_schedule(lr, max(1, config.epochs * steps_per_epoch))


def make_optimizer(config: Config, steps_per_epoch: int,
                   lr: float = 1.0) -> optax.GradientTransformation:
  """optax chain: [accumulate] → [clip] → [coupled weight decay] → optimizer,
  at learning rate `lr` (1: the engine applies each member's rate)."""
  lr = make_schedule(config, steps_per_epoch, lr)
  chain = []
  if config.accumulate_gradients:
    chain.append(accumulate_forever())
  if config.grad_clip > 0:
    chain.append(optax.clip_by_global_norm(config.grad_clip))
  if config.weight_decay > 0 and config.optimizer != "adamw":
    chain.append(optax.add_decayed_weights(config.weight_decay))  # torch-style L2
  if config.optimizer == "adam":
    chain.append(optax.adam(lr))
  elif config.optimizer == "adamw":
    chain.append(optax.adamw(lr, weight_decay=config.weight_decay))
  elif config.optimizer == "rmsprop":
    # torch.optim.RMSprop: eps added outside the square root.
    chain.append(optax.rmsprop(lr, decay=config.rms_decay, eps=1e-8,
                               eps_in_sqrt=False))
  elif config.optimizer == "sgd":
    chain.append(optax.sgd(lr))
  elif config.optimizer == "lbfgs":
    # Full batch (the papers' kernelNet/GLocal-K optimiser); the zoom line
    # search evaluates the batch's loss (`value_fn`, passed by the engine).
    lbfgs = optax.lbfgs()
    chain.append(restarting(lbfgs, config.lbfgs_restart) if config.lbfgs_restart else lbfgs)
  else:  # momentum
    chain.append(optax.sgd(lr, momentum=config.momentum))
  return optax.chain(*chain)
