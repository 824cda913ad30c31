"""Epoch speed of the training engine vs the machine's float32 matmul peak.

  python benchmarks/train_bench.py --preset=autorec --dataset=ml-100k

Prints one JSON object: epoch seconds (median of --epochs after a warm-up
epoch), compile seconds, ratings/s, model FLOPs per epoch (matmuls of the
forward and backward passes over every row computed, padding included), the
achieved GFLOP/s, the float32 matmul GFLOP/s measured in the same run, and
their ratio.
"""

import json
import time

from absl import app, flags
import jax
import jax.numpy as jnp
import numpy as np

from recae_jax import compute
from recae_jax import flags as cfg_flags
from recae_jax.errors import run_main
from recae_jax.problem import build_problem, load_split

cfg_flags.define_config_flags(skip=("epochs",))
flags.adopt_module_key_flags(cfg_flags)
flags.DEFINE_integer("epochs", 12, "timed epochs (after one warm-up epoch)")
flags.DEFINE_integer("matmul_size", 2048, "square matmul size for the peak measurement")
FLAGS = flags.FLAGS


def matmul_peak_gflops(n: int, repeats: int = 10) -> float:
  a = jax.random.normal(jax.random.PRNGKey(0), (n, n), jnp.float32)
  b = jax.random.normal(jax.random.PRNGKey(1), (n, n), jnp.float32)
  f = jax.jit(lambda a, b: a @ b)
  f(a, b).block_until_ready()
  times = []
  for _ in range(repeats):
    t = time.perf_counter()
    f(a, b).block_until_ready()
    times.append(time.perf_counter() - t)
  return 2 * n**3 / float(np.median(times)) / 1e9


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
  state, m = compiled(run.state, run.data, run.hyper)  # warm-up
  jax.block_until_ready(m)
  times = []
  for _ in range(FLAGS.epochs):
    t = time.perf_counter()
    state, m = compiled(state, run.data, run.hyper)
    jax.block_until_ready(m)
    times.append(time.perf_counter() - t)
  # Layers in forward order (enc_0 first: its input needs no gradient).
  order = lambda k: (k.startswith("dec_"), int(k.split("_")[1]))
  shapes = [tuple(state.params[k].shape[1:]) for k in sorted(state.params, key=order)
            if k.endswith("kernel")]
  flops = epoch_flops(shapes, steps * batch) * (1 + config.dense_refeeding)
  epoch_s = float(np.median(times))
  peak = matmul_peak_gflops(FLAGS.matmul_size)
  achieved = flops / epoch_s / 1e9
  print(json.dumps({
      "preset": FLAGS.preset, "dataset": config.dataset, "orientation": config.orientation,
      "rows": n_rows, "cols": problem.n_cols, "batch_size": batch, "layout":
      type(problem.fit_data.source).__name__, "device": jax.devices()[0].device_kind,
      "epoch_seconds_median": epoch_s, "epoch_seconds_min": float(np.min(times)),
      "compile_seconds": compile_s, "ratings_per_second": problem.n_fit / epoch_s,
      "gflop_per_epoch": flops / 1e9, "achieved_gflops": achieved,
      "matmul_peak_gflops": peak, "fraction_of_peak": achieved / peak,
  }, indent=2))


if __name__ == "__main__":
  app.run(main)
