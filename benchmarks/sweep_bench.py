r"""K members in one compiled sweep vs K lone runs, timed in the same run.

  python benchmarks/sweep_bench.py --preset=autorec --dataset=ml-100k --members=8

Members differ in seed (and --sweep, if given). Per repeat: one sweep epoch
(`compute.make_run(members=configs)`: all K members in one compiled epoch,
--group_size side by side; the device default), all K side by side too when
that differs, then one epoch of each of the K lone runs
(`compute.make_run(config)` per member; lone runs whose configs differ only in
seed share one compile). Also times a naive `jax.vmap` of a lone run's
epoch over the K stacked lone states: each member keeps its own batch order,
so nothing is shared between members (batched gathers, batched GEMMs).
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

from recae_jax import compute, engine, sweep
from recae_jax import flags as cfg_flags
from recae_jax.errors import run_main
from recae_jax.problem import build_problem, load_split

cfg_flags.define_config_flags()
flags.adopt_module_key_flags(cfg_flags)
flags.DEFINE_integer("members", 8, "K: members with seeds seed..seed+K-1")
flags.DEFINE_string("sweep", None, "optional spec instead of seeds, e.g. 'l2=1e-3,3e-3'")
flags.DEFINE_integer("repeats", 3, "timed repeats (after one warm-up epoch each)")
flags.DEFINE_integer("group_size", 0, "members side by side; 0 = the device default")
flags.DEFINE_bool("naive", True, "also time a naive vmap of a lone run's epoch")
FLAGS = flags.FLAGS


def naive_epoch(task, tx, batcher, shuffle: bool):
  """jax.vmap of a lone run's epoch over K stacked lone TrainStates (K = 1
  each, member axis squeezed): every member gathers its own batches in its
  own order, so the vmap batches the gathers and the GEMMs."""
  update = engine.make_member_update(task, tx, batcher)

  def lone(params, opt, rng, order_rng, step, hyper, data):
    rows_NbxB = batcher.epoch_rows(data, jax.random.split(order_rng)[1], shuffle)

    def body(carry, rows_B):
      p, o, s = carry
      p, o, (loss, _) = update(p, o, rng, hyper, data, rows_B, s)
      return (p, o, s + 1), loss

    (params, opt, _), loss = jax.lax.scan(body, (params, opt, step), rows_NbxB)
    return params, opt, jnp.mean(loss)

  @functools.partial(jax.jit, donate_argnums=0)
  def epoch(states, data, hyper):
    params, opt, rng, order_rng, step = states
    params, opt, loss = jax.vmap(lone, in_axes=(0, 0, 0, 0, None, 0, None))(
        params, opt, rng, order_rng, step, hyper, data)
    order_rng = jax.vmap(lambda r: jax.random.split(r)[0])(order_rng)
    n = batcher.epoch_rows(data, order_rng[0], False).shape[0]
    return (params, opt, rng, order_rng, step + n), loss

  return epoch


def _config_key(cfg) -> str:
  """Lone runs whose configs differ only in seed share one compiled epoch."""
  return json.dumps({k: v for k, v in cfg.to_json().items() if k != "seed"},
                    sort_keys=True, default=str)


def _timed_compile(fn, *args):
  t = time.perf_counter()
  compiled = fn.lower(*args).compile()
  return compiled, time.perf_counter() - t


@run_main
def main(argv):
  del argv
  base = cfg_flags.config_from_flags()
  overrides = (sweep.parse_sweep(FLAGS.sweep) if FLAGS.sweep else
               [{"seed": base.seed + k} for k in range(FLAGS.members)])
  configs = sweep.member_configs(base, overrides)
  k = len(configs)
  dataset, split = load_split(base)
  problem = build_problem(base, dataset, split)
  rows = problem.fit_data
  n_rows = int(rows.train_rows.shape[0])
  batch = min(base.batch_size, n_rows)
  path = "sparse" if base.compute == "sparse" else "dense"

  group = FLAGS.group_size or engine.default_group_size(k)
  srun = compute.make_run(base, rows, problem.n_cols, batch, path, members=configs,
                          group_size=group)
  sweep_fn, sweep_compile = _timed_compile(srun.epoch, srun.state, srun.data, srun.hyper)
  side = None
  if group != k:  # also time all K side by side (the accelerator layout)
    side = compute.make_run(base, rows, problem.n_cols, batch, path, members=configs,
                            group_size=k)
    side.epoch, _ = _timed_compile(side.epoch, side.state, side.data, side.hyper)

  lone_fns, lone_runs, lone_compile = {}, [], 0.0
  for cfg in configs:
    run = compute.make_run(cfg, rows, problem.n_cols, batch, path)
    key = _config_key(cfg)
    if key not in lone_fns:
      lone_fns[key], c_s = _timed_compile(run.epoch, run.state, run.data, run.hyper)
      lone_compile += c_s
    run.epoch = lone_fns[key]
    lone_runs.append(run)

  naive = None
  if FLAGS.naive:
    lone_states = [r.state for r in lone_runs]
    squeeze = lambda x: x[0]
    nstate = (engine.stack([jax.tree.map(squeeze, s.params) for s in lone_states]),
              engine.stack([jax.tree.map(squeeze, s.opt_state) for s in lone_states]),
              jnp.stack([s.rng[0] for s in lone_states]),
              jnp.stack([s.order_rng for s in lone_states]), jnp.zeros((), jnp.int32))
    # (new arrays: the lone runs keep their own states, the naive epoch donates)
    naive_fn, _ = _timed_compile(naive_epoch(srun.task, srun.tx, srun.batcher, base.shuffle),
                                 nstate, srun.data, srun.hyper)
    naive = [naive_fn, nstate]

  def run_sweep_epoch():
    m = srun.step()
    jax.block_until_ready(m)

  def run_sequential():
    for r in lone_runs:
      m = r.step()
      jax.block_until_ready(m)

  def run_naive():
    naive[1], m = naive[0](naive[1], srun.data, srun.hyper)
    jax.block_until_ready(m)

  def run_side():
    m = side.step()
    jax.block_until_ready(m)

  runs = {"sweep": run_sweep_epoch, "sequential": run_sequential}
  if side is not None:
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
      "layout": type(rows.source).__name__, "compute": path,
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
