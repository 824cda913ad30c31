"""Multi-device training by sharding (GSPMD), not pmap.

A 2-D mesh ('data', 'model'):
- batch rows are split over 'data' (data parallelism; parameters replicated);
- the wide N-sized layers — the first encoder kernel (N[+S] x H), the last
  decoder kernel (H x N) and its bias — are split along N over 'model'
  (model parallelism for item-based models on many users).
XLA inserts the collectives. The same code runs on 1 device (no mesh), on N
devices of one host, or across hosts after `jax.distributed.initialize()`.
"""

from __future__ import annotations

from typing import Optional

import jax
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

from recae_jax.errors import UserError


def make_mesh(data_parallel: int = 0, model_parallel: int = 1) -> Optional[Mesh]:
  """A ('data', 'model') mesh; None when it would hold a single device.

  `data_parallel=0` uses every device not taken by `model_parallel`.
  """
  n_dev = jax.device_count()
  if model_parallel < 1 or data_parallel < 0:
    raise UserError(f"--model_parallel must be >= 1 and --data_parallel >= 0, got "
                    f"{model_parallel} and {data_parallel}")
  if data_parallel == 0:
    if n_dev % model_parallel:
      raise UserError(f"--model_parallel={model_parallel} does not divide the "
                      f"{n_dev} available devices")
    data_parallel = n_dev // model_parallel
  if data_parallel * model_parallel > n_dev:
    raise UserError(f"mesh {data_parallel}x{model_parallel} needs "
                    f"{data_parallel * model_parallel} devices but only {n_dev} are "
                    "available; lower --data_parallel/--model_parallel")
  if data_parallel * model_parallel == 1:
    return None
  # Auto axes: XLA propagates shardings from our constraints (GSPMD).
  return jax.make_mesh((data_parallel, model_parallel), ("data", "model"),
                       axis_types=(AxisType.Auto, AxisType.Auto),
                       devices=jax.devices()[: data_parallel * model_parallel])


def check_divisible(mesh: Optional[Mesh], batch_size: int, eval_batch_size: int,
                    n_cols: int, n_inputs: int) -> None:
  if mesh is None:
    return
  dp, mp = mesh.shape["data"], mesh.shape["model"]
  for name, b in (("batch_size", batch_size), ("eval_batch_size", eval_batch_size)):
    if b % dp:
      raise UserError(f"--{name}={b} is not divisible by the {dp} data-parallel "
                      f"devices; use a multiple of {dp}")
  if mp > 1:
    for what, n in (("output width (columns)", n_cols), ("input width", n_inputs)):
      if n % mp:
        raise UserError(f"the {what} {n} is not divisible by --model_parallel={mp}; "
                        "choose a model_parallel that divides it")


def _param_spec(name: str, last_decoder: str) -> P:
  """Spec of a member-stacked parameter [K, ...]: the member axis replicated."""
  if name == "enc_0_kernel":
    return P(None, "model", None)
  if name == f"{last_decoder}_kernel":
    return P(None, None, "model")
  if name == f"{last_decoder}_bias":
    return P(None, "model")
  return P()


def param_shardings(mesh: Mesh, params) -> dict:
  """NamedSharding per parameter (model-parallel wide layers, rest replicated)."""
  n_dec = sum(1 for k in params if k.startswith("dec_") and k.endswith("_bias"))
  last = f"dec_{n_dec - 1}"
  mp = mesh.shape["model"]
  return {k: NamedSharding(mesh, _param_spec(k, last) if mp > 1 else P())
          for k in params}


def shard_state(mesh: Mesh, state):
  """Places params and the optimizer's param-shaped moments of an
  `engine.TrainState`; the rest replicated."""
  shard = param_shardings(mesh, state.params)
  replicated = NamedSharding(mesh, P())
  params = {k: jax.device_put(v, shard[k]) for k, v in state.params.items()}

  def place_opt(path, leaf):
    # Optimizer moments are dicts keyed like params; find the key in the path.
    for entry in reversed(path):
      key = getattr(entry, "key", None)
      if key in shard and tuple(leaf.shape) == tuple(state.params[key].shape):
        return jax.device_put(leaf, shard[key])
    return jax.device_put(leaf, replicated)

  opt_state = jax.tree_util.tree_map_with_path(place_opt, state.opt_state)
  return state.replace(params=params, opt_state=opt_state,
                       step=jax.device_put(state.step, replicated),
                       rng=jax.device_put(state.rng, replicated),
                       order_rng=jax.device_put(state.order_rng, replicated))


def replicate(mesh: Mesh, tree):
  return jax.device_put(tree, NamedSharding(mesh, P()))


def constrain_batch(mesh: Optional[Mesh], x):
  """Splits the leading (batch) axis over 'data'."""
  if mesh is None:
    return x
  spec = P("data", *([None] * (x.ndim - 1)))
  return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, spec))
