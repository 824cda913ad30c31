"""Epoch speed of the training engine vs the machine's float32 matmul peak.

  python benchmarks/train_bench.py --preset=autorec --dataset=ml-100k

Prints one JSON object: epoch seconds (median and min of --epochs after a
warm-up epoch), compile seconds, ratings/s, model FLOPs per epoch (matmuls of
the forward and backward passes over every row computed, padding included),
the achieved GFLOP/s, the float32 matmul GFLOP/s measured in the same run, and
their ratio. Also the same GEMMs run bare (`bare_gemm_gflops`: the epoch's
forward and backward matmuls at its batch and layer shapes, nothing else, in
one compiled scan): `bare_fraction_of_peak` is what these shapes allow on this
machine, `fraction_of_bare_gemms` how close the engine's epoch comes to it.
And the optimizer's update alone (`optimizer_seconds_per_epoch`: the epoch's
steps of tx.update + apply_updates on one member's parameters, a gradient per
step, state donated), so that the epoch splits into bare GEMMs, the update,
and the rest (activations, the masked loss, the batch gather). The epoch, the
peak, the bare GEMMs and the update are timed in turn, round after round, so
that a machine whose speed drifts affects every ratio alike.
"""

import json
import time

from absl import app, flags
import jax
import jax.numpy as jnp
import numpy as np
import optax

from recae_jax import compute, engine
from recae_jax import flags as cfg_flags
from recae_jax.errors import run_main
from recae_jax.problem import build_problem, load_split

cfg_flags.define_config_flags(skip=("epochs",))
flags.adopt_module_key_flags(cfg_flags)
flags.DEFINE_integer("epochs", 12, "timed epochs (after one warm-up epoch)")
flags.DEFINE_integer("matmul_size", 2048, "square matmul size for the peak measurement")
FLAGS = flags.FLAGS


def matmul(n: int):
  """(jitted fn, args, FLOPs) of one n x n float32 matmul: the peak reference."""
  a = jax.random.normal(jax.random.PRNGKey(0), (n, n), jnp.float32)
  b = jax.random.normal(jax.random.PRNGKey(1), (n, n), jnp.float32)
  return jax.jit(lambda a, b: a @ b), (a, b), 2.0 * n**3


def bare_gemms(layer_shapes, batch: int, n_batches: int):
  """(jitted fn, args, FLOPs): the matmuls `epoch_flops` counts, run bare over
  n_batches batches: per layer the forward x @ W, the weight gradient x.T @ g
  and (not for the first layer) the input gradient g @ W.T."""
  keys = jax.random.split(jax.random.PRNGKey(2), len(layer_shapes) + 1)
  ws = [0.01 * jax.random.normal(k, s, jnp.float32) for k, s in zip(keys, layer_shapes)]
  x = jax.random.normal(keys[-1], (n_batches, batch, layer_shapes[0][0]), jnp.float32)

  def step(ws, x_B):
    hs = [x_B]
    for w in ws:
      hs.append(hs[-1] @ w)
    g = hs[-1]
    new = [None] * len(ws)
    for i in reversed(range(len(ws))):
      new[i] = ws[i] - 1e-6 * (hs[i].T @ g)
      if i:
        g = g @ ws[i].T
    return new, None

  fn = jax.jit(lambda ws, x: jax.lax.scan(step, ws, x)[0])
  return fn, (ws, x), epoch_flops(layer_shapes, n_batches * batch)


def optimizer_steps(tx, params, n_steps: int):
  """(jitted fn, args): n_steps optimizer updates of `params` (one member's),
  one gradient per step scanned in as the epoch does, the state donated as the
  epoch donates it, the updates scaled, then added, as the engine applies them."""
  grads = jax.tree.map(lambda p: 1e-3 * jnp.ones((n_steps,) + p.shape, p.dtype), params)

  def step(carry, g):
    p, opt = carry
    upd, opt = tx.update(g, opt, p)
    return (optax.apply_updates(p, jax.tree.map(lambda u: 1e-3 * u, upd)), opt), None

  fn = jax.jit(lambda p, opt, g: jax.lax.scan(step, (p, opt), g)[0], donate_argnums=(0, 1))
  return Donating(fn, params, tx.init(params), grads)


class Donating:
  """A jitted fn whose first arguments it donates and returns anew: each call
  feeds it the previous call's outputs, so it can be timed repeatedly."""

  def __init__(self, fn, *args, fixed: int = 1):
    self.fn, self.args, self.fixed = fn, list(args), fixed

  def __call__(self):
    carried = self.args[:-self.fixed]
    out = self.fn(*carried, *self.args[-self.fixed:])
    out = out if isinstance(out, tuple) else (out,)
    self.args[:len(carried)] = out[:len(carried)]
    return out


def time_alternately(fns, repeats: int = 10) -> list[list[float]]:
  """Seconds of every call of each fn (a zero-argument callable), the fns
  timed in turn in every round so that a machine whose speed drifts affects
  them alike; each is called once untimed first (compile, warm-up)."""
  for fn in fns:
    jax.block_until_ready(fn())
  times = [[] for _ in fns]
  for _ in range(repeats):
    for t_list, fn in zip(times, fns):
      t = time.perf_counter()
      jax.block_until_ready(fn())
      t_list.append(time.perf_counter() - t)
  return times


def epoch_flops(layer_shapes, rows_per_epoch: int) -> float:
  """Forward 2·B·in·out per layer; backward 4·B·in·out (2 for the first layer,
  whose input needs no gradient)."""
  total = 0
  for i, (d_in, d_out) in enumerate(layer_shapes):
    total += (2 + (2 if i == 0 else 4)) * d_in * d_out
  return float(total) * rows_per_epoch


@run_main
def main(argv):
  del argv
  config = cfg_flags.config_from_flags(epochs=FLAGS.epochs + 1)
  dataset, split = load_split(config)
  problem = build_problem(config, dataset, split)
  n_rows = int(problem.fit_data.train_rows.shape[0])
  batch = min(config.batch_size, n_rows)
  steps = -(-n_rows // batch)
  run = compute.make_run(config, problem.fit_data, problem.n_cols, batch, "dense")
  t = time.perf_counter()
  compiled = run.epoch.lower(run.state, run.data, run.hyper).compile()
  compile_s = time.perf_counter() - t
  epoch = Donating(compiled, run.state, run.data, run.hyper, fixed=2)
  state = run.state  # only its shapes are read below (the epoch donates it)
  # Layers in forward order (enc_0 first: its input needs no gradient).
  order = lambda k: (k.startswith("dec_"), int(k.split("_")[1]))
  shapes = [tuple(state.params[k].shape[1:]) for k in sorted(state.params, key=order)
            if k.endswith("kernel")]
  flops = epoch_flops(shapes, steps * batch) * (1 + config.dense_refeeding)
  updates = steps * (1 + config.dense_refeeding)  # re-feeding: one more update per step
  bare_fn, bare_args, bare_flops = bare_gemms(shapes, batch, updates)
  mm_fn, mm_args, mm_flops = matmul(FLAGS.matmul_size)
  fns = [epoch, lambda: bare_fn(*bare_args), lambda: mm_fn(*mm_args)]
  if config.optimizer != "lbfgs":  # L-BFGS's update needs the loss (its line search)
    fns.append(optimizer_steps(run.tx, engine.member(state.params, 0), updates))
  times, *medians = time_alternately(fns, repeats=FLAGS.epochs)
  epoch_s, bare_s, mm_s, *opt_s = [float(np.median(times))] + [float(np.median(t))
                                                             for t in medians]
  peak, bare = mm_flops / mm_s / 1e9, bare_flops / bare_s / 1e9
  achieved = flops / epoch_s / 1e9
  print(json.dumps({
      "preset": FLAGS.preset, "dataset": config.dataset, "orientation": config.orientation,
      "rows": n_rows, "cols": problem.n_cols, "batch_size": batch, "layout":
      type(problem.fit_data.source).__name__, "device": jax.devices()[0].device_kind,
      "epoch_seconds_median": epoch_s, "epoch_seconds_min": float(np.min(times)),
      "compile_seconds": compile_s, "ratings_per_second": problem.n_fit / epoch_s,
      "gflop_per_epoch": flops / 1e9, "achieved_gflops": achieved,
      "matmul_peak_gflops": peak, "fraction_of_peak": achieved / peak,
      "bare_gemm_gflops": bare, "bare_fraction_of_peak": bare / peak,
      "fraction_of_bare_gemms": achieved / bare,
      "optimizer_seconds_per_epoch": opt_s[0] if opt_s else None,
      "optimizer_fraction_of_epoch": opt_s[0] / epoch_s if opt_s else None,
  }, indent=2))


if __name__ == "__main__":
  app.run(main)
