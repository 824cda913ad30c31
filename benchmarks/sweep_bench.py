r"""K members in one compiled sweep vs K lone runs, timed in the same run.

  python benchmarks/sweep_bench.py --preset=autorec --dataset=ml-100k --members=8

Members differ in seed (and --sweep, if given). Per repeat: one sweep epoch
(all K members, --group_size side by side; the device default), all K side
by side too when that differs, then one epoch of each of the K lone runs (train.py's
compiled epoch; members that share a config share one compile). Also times a
naive `jax.vmap` of the engine's train step over the K stacked states.
Prints one JSON object; `speedup_vs_sequential` = sequential seconds / sweep
seconds (>= 1: the sweep is faster).
"""

import functools
import json
import time

from absl import app, flags
import jax
import jax.numpy as jnp
import numpy as np

from recae_jax import flags as cfg_flags
from recae_jax import sweep, train
from recae_jax.errors import run_main
from recae_jax.models import build_model

cfg_flags.define_config_flags()
flags.adopt_module_key_flags(cfg_flags)
flags.DEFINE_integer("members", 8, "K: members with seeds seed..seed+K-1")
flags.DEFINE_string("sweep", None, "optional spec instead of seeds, e.g. 'l2=1e-3,3e-3'")
flags.DEFINE_integer("repeats", 3, "timed repeats (after one warm-up epoch each)")
flags.DEFINE_integer("group_size", 0, "members side by side; 0 = the device default")
flags.DEFINE_bool("naive", True, "also time a naive vmap of the engine's train step")
FLAGS = flags.FLAGS


def _naive_epoch(model, tx, config, batch_size):
  """jax.vmap(train_step) over stacked TrainStates: K GEMMs re-reading x."""
  step = jax.vmap(train.make_train_step(model, tx, config), in_axes=(0, None, None))

  @functools.partial(jax.jit, donate_argnums=0)
  def epoch(states, data, order_rng):
    rows = sweep.epoch_rows(order_rng, data.train_rows, data.n_rows, batch_size, True)
    states, out = jax.lax.scan(lambda s, r: step(s, r, data), states, rows)
    return states, out[0]

  return epoch


@run_main
def main(argv):
  del argv
  base = cfg_flags.config_from_flags()
  overrides = (sweep.parse_sweep(FLAGS.sweep) if FLAGS.sweep else
               [{"seed": base.seed + k} for k in range(FLAGS.members)])
  configs = sweep.member_configs(base, overrides)
  k = len(configs)
  dataset, split = train.load_split(base)
  problem = train.build_problem(base, dataset, split)
  data = problem.fit_data
  model = build_model(base, problem.n_cols)
  n_rows = int(data.train_rows.shape[0])
  batch = min(base.batch_size, n_rows)
  steps = -(-n_rows // batch)

  st = sweep._static(base, configs)
  tx = sweep.make_sweep_optimizer(base, steps)
  hyper = sweep.Hyper.from_configs(configs)
  sstate = sweep.init_sweep_state(model, tx, data, configs, base.seed)
  group = FLAGS.group_size or sweep.default_group_size(k)
  t = time.perf_counter()
  sweep_fn = sweep.make_sweep_epoch(st, tx, base, batch, group).lower(
      sstate, data, hyper).compile()
  sweep_compile = time.perf_counter() - t
  side_fn, side_state = None, None
  if group != k:  # also time all K side by side (the accelerator layout)
    side_state = jax.tree.map(jnp.copy, sstate)
    side_fn = sweep.make_sweep_epoch(st, tx, base, batch, k).lower(
        side_state, data, hyper).compile()

  lone_fns, lone_states, lone_compile = {}, [], 0.0
  for cfg in configs:
    key = tuple(sorted(cfg.to_json().items(), key=lambda kv: kv[0]))
    key = str([kv for kv in key if kv[0] != "seed"])
    tx_k = train.make_optimizer(cfg, steps)
    state = train.init_state(model, tx_k, data, cfg.seed)
    if key not in lone_fns:
      t = time.perf_counter()
      lone_fns[key] = train.make_train_epoch(model, tx_k, cfg, batch).lower(state, data).compile()
      lone_compile += time.perf_counter() - t
    lone_states.append((key, state))

  naive = None
  if FLAGS.naive and all(c.learning_rate == base.learning_rate and c.l2 == base.l2
                         and c.dropout == base.dropout for c in configs):
    tx_n = train.make_optimizer(base, steps)
    nstates = [train.init_state(model, tx_n, data, c.seed) for c in configs]
    nstate = jax.tree.map(lambda *xs: jnp.stack(xs), *nstates)
    naive = _naive_epoch(model, tx_n, base, batch).lower(
        nstate, data, jax.random.PRNGKey(0)).compile()

  def run_sweep_epoch():
    nonlocal sstate
    sstate, m = sweep_fn(sstate, data, hyper)
    jax.block_until_ready(m)

  def run_sequential():
    for i, (key, state) in enumerate(lone_states):
      state, m = lone_fns[key](state, data)
      jax.block_until_ready(m)
      lone_states[i] = (key, state)

  def run_naive():
    nonlocal nstate
    nstate, m = naive(nstate, data, jax.random.PRNGKey(1))
    jax.block_until_ready(m)

  def run_side():
    nonlocal side_state
    side_state, m = side_fn(side_state, data, hyper)
    jax.block_until_ready(m)

  runs = {"sweep": run_sweep_epoch, "sequential": run_sequential}
  if side_fn is not None:
    runs["side_by_side"] = run_side
  if naive is not None:
    runs["naive_vmap"] = run_naive
  times = {n: [] for n in runs}
  for f in runs.values():  # warm-up
    f()
  for _ in range(FLAGS.repeats):  # interleaved: noise hits every variant alike
    for n, f in runs.items():
      t = time.perf_counter()
      f()
      times[n].append(time.perf_counter() - t)
  med = {n: float(np.median(v)) for n, v in times.items()}
  out = {
      "preset": FLAGS.preset, "dataset": base.dataset, "orientation": base.orientation,
      "layers": list(base.layers), "rows": n_rows, "cols": problem.n_cols,
      "batch_size": batch, "members": k, "device": jax.devices()[0].device_kind,
      "layout": type(data.source).__name__,
      "group_size": group, "sweep_epoch_seconds": med["sweep"],
      "sequential_epoch_seconds": med["sequential"],
      "speedup_vs_sequential": med["sequential"] / med["sweep"],
      "sweep_seconds_per_member_epoch": med["sweep"] / k,
      "lone_seconds_per_epoch": med["sequential"] / k,
      "sweep_compile_seconds": sweep_compile, "lone_compile_seconds": lone_compile,
      "repeats": FLAGS.repeats, "all_times": times,
  }
  if "side_by_side" in med:
    out["side_by_side_epoch_seconds"] = med["side_by_side"]
    out["side_by_side_speedup_vs_sequential"] = med["sequential"] / med["side_by_side"]
  if "naive_vmap" in med:
    out["naive_vmap_epoch_seconds"] = med["naive_vmap"]
    out["naive_vmap_speedup_vs_sequential"] = med["sequential"] / med["naive_vmap"]
  print(json.dumps(out, indent=2))


if __name__ == "__main__":
  app.run(main)
