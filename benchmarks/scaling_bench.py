r"""Epoch time, ratings/s and memory from 100K to 20M ratings (synthetic data).

  python benchmarks/scaling_bench.py                       # 100K, 1M, 10M, 20M (CPU)
  python benchmarks/scaling_bench.py --max_ratings=1000000 --out=runs/scaling
  python benchmarks/scaling_bench.py --sizes=ml-100k,ml-1m,ml-20m,netflix   # a GPU

I-AutoRec (items are rows, N = n_users -> 500 -> N, Adam, batch 256) on
`data.synthetic.generate(shape)`. Each size runs in its own subprocess so its
peak host RSS is its own. Row storage follows the engine's rule (dense matrix
on device if it fits --dense_budget_mb, else CSR densified per batch). Both
compute paths are timed on the one engine (`compute.make_run(..., "dense")`
and `compute.make_run(..., "sparse")`, K = 1). Big sizes would take hours per dense
epoch on a CPU, so each path runs --steps batches (a compiled scan over a
subset of rows / stratified batches) and the epoch time is extrapolated:
epoch_seconds = seconds_per_step x steps_per_epoch (dense: a random subset
of steps x batch rows; sparse: the first --steps columns of the stratified
grid, with the full epoch's entry bound T); the JSON says
"extrapolated": true when steps < steps_per_epoch. With --repeats=R the
paths are timed in R alternating rounds (dense, sparse, dense, ...) and each
figure is the median; `sparse_speedup_vs_dense` is the ratio of the medians.
Writes OUT/scaling.json
and OUT/scaling.png and prints the JSON.
"""

import json
import pathlib
import resource
import subprocess
import sys
import time

from absl import app, flags
import numpy as np

flags.DEFINE_string("sizes", "ml-100k,ml-1m,10m,ml-20m",
                    "synthetic shapes (data.synthetic.SHAPES, or 10m = 69878x10677x10M)")
flags.DEFINE_integer("max_ratings", 20_000_263, "skip sizes with more ratings")
flags.DEFINE_integer("steps", 8, "timed batches per path (capped at one epoch)")
flags.DEFINE_integer("repeats", 1, "timed rounds, the paths alternating (medians)")
flags.DEFINE_integer("batch_size", 256, "rows per batch")
flags.DEFINE_integer("hidden", 500, "hidden units")
flags.DEFINE_integer("dense_budget_mb", 1024, "dense matrix on device if it fits")
flags.DEFINE_string("paths", "dense,sparse", "compute paths to time")
flags.DEFINE_enum("model", "autoencoder", ["autoencoder", "sparse_fc"],
                  "autoencoder: I-AutoRec N->hidden->N; sparse_fc: kernelNet's "
                  "N->hidden->hidden->N kernel layers (trained by Adam on minibatches here)")
flags.DEFINE_string("out", "runs/scaling", "output directory")
flags.DEFINE_string("one", None, "internal: run one size and print its JSON")
FLAGS = flags.FLAGS

_EXTRA = {"10m": (69_878, 10_677, 10_000_054)}


def _shape(name):
  from recae_jax.data import synthetic
  return _EXTRA.get(name) or synthetic.SHAPES[name]


def _rss_mb() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def run_one(name: str) -> dict:
  import jax
  import jax.numpy as jnp
  from recae_jax import compute
  from recae_jax.config import make_config
  from recae_jax.data import sparse, synthetic
  from recae_jax.problem import RowData

  t = time.perf_counter()
  ds = synthetic.generate(_EXTRA.get(name, name), seed=0)
  gen_s = time.perf_counter() - t
  if FLAGS.model == "sparse_fc":  # minibatch Adam: a full-batch L-BFGS step is the epoch
    config = make_config("sparse_fc", batch_size=FLAGS.batch_size,
                         layers=(FLAGS.hidden, FLAGS.hidden), optimizer="adam",
                         learning_rate=1e-3, loss_denominator="observed", l2=1e-3,
                         kernel_l2=1e-4, dense_budget_mb=FLAGS.dense_budget_mb)
  else:
    config = make_config("autorec", batch_size=FLAGS.batch_size, layers=(FLAGS.hidden,),
                         dense_budget_mb=FLAGS.dense_budget_mb)
  csr = sparse.ratings_to_csr(ds.ratings, "item")
  source = sparse.make_row_source(csr, FLAGS.dense_budget_mb << 20)
  rows = np.flatnonzero(csr.row_lengths() > 0).astype(np.int32)
  data = RowData(source, None, jnp.asarray(rows))
  n_cols = csr.shape[1]
  batch = min(FLAGS.batch_size, len(rows))
  steps_per_epoch = -(-len(rows) // batch)
  steps = min(FLAGS.steps, steps_per_epoch)
  out = {"size": name, "n_users": ds.ratings.n_users, "n_items": ds.ratings.n_items,
         "n_ratings": len(ds.ratings), "rows": int(len(rows)), "cols": int(n_cols),
         "density": len(ds.ratings) / (csr.shape[0] * csr.shape[1]),
         "layout": type(source).__name__, "batch_size": batch, "hidden": FLAGS.hidden,
         "model": FLAGS.model,
         "steps_per_epoch": steps_per_epoch, "timed_steps": steps,
         "extrapolated": steps < steps_per_epoch, "generate_seconds": gen_s,
         "device": jax.devices()[0].device_kind}
  rng = np.random.default_rng(0)
  paths = FLAGS.paths.split(",")
  ready = {}  # path -> [compiled epoch, state, data, hyper]
  for path in paths:
    run = compute.make_run(config, data, n_cols, batch, path)
    if path == "dense":
      sub = rows[rng.permutation(len(rows))[: steps * batch]]
      d = run.data.replace(train_rows=jnp.asarray(np.sort(sub)))
    else:
      sd = run.data
      d = sd.replace(strata_SxNb=sd.strata_SxNb[:, :steps])
      out["sparse_max_entries"] = sd.max_entries
    t = time.perf_counter()
    compiled = run.epoch.lower(run.state, d, run.hyper).compile()
    out[f"{path}_compile_seconds"] = time.perf_counter() - t
    state, m = compiled(run.state, d, run.hyper)  # warm-up
    jax.block_until_ready(m)
    ready[path] = [compiled, state, d, run.hyper]
  # The paths alternate, round by round, so a machine whose speed drifts
  # (these do, by tens of %) slows both alike; medians over the rounds.
  times = {path: [] for path in paths}
  for _ in range(FLAGS.repeats):
    for path in paths:
      compiled, state, d, hyper = ready[path]
      t = time.perf_counter()
      state, m = compiled(state, d, hyper)
      jax.block_until_ready(m)
      times[path].append((time.perf_counter() - t) / steps)
      ready[path][1] = state
  for path in paths:
    per_step = float(np.median(times[path]))
    epoch_s = per_step * steps_per_epoch
    out[f"{path}_seconds_per_step"] = per_step
    out[f"{path}_all_seconds_per_step"] = times[path]
    out[f"{path}_epoch_seconds"] = epoch_s
    out[f"{path}_ratings_per_second"] = len(ds.ratings) / epoch_s
  if {"dense", "sparse"} <= set(paths):
    out["sparse_speedup_vs_dense"] = (out["dense_seconds_per_step"]
                                      / out["sparse_seconds_per_step"])
  del ready
  stats = jax.devices()[0].memory_stats()
  out["device_peak_bytes"] = None if not stats else stats.get("peak_bytes_in_use")
  out["peak_rss_mb"] = _rss_mb()
  return out


def plot(results, path):
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
  n = [r["n_ratings"] for r in results]
  for p in FLAGS.paths.split(","):
    a.loglog(n, [r[f"{p}_epoch_seconds"] for r in results], "o-", label=p)
  a.set(xlabel="ratings", ylabel="epoch seconds (extrapolated where marked)",
        title="I-AutoRec epoch cost")
  b.semilogx(n, [r["peak_rss_mb"] for r in results], "o-")
  b.set(xlabel="ratings", ylabel="peak host RSS (MiB)", title="memory")
  for ax in (a, b):
    ax.grid(alpha=0.3, which="both")
  a.legend()
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def main(argv):
  del argv
  if FLAGS.one:
    print(json.dumps(run_one(FLAGS.one)))
    return
  results = []
  for name in FLAGS.sizes.split(","):
    if name not in _EXTRA:
      from recae_jax.data import synthetic
      if name not in synthetic.SHAPES:
        print(f"error: --sizes: unknown {name!r}", file=sys.stderr)
        sys.exit(2)
    if _shape(name)[2] > FLAGS.max_ratings:
      continue
    args = [sys.executable, __file__, f"--one={name}"] + [
        f"--{f}={getattr(FLAGS, f)}" for f in ("steps", "repeats", "batch_size", "hidden",
                                                "dense_budget_mb", "paths", "model")]
    r = subprocess.run(args, capture_output=True, text=True)
    if r.returncode != 0:
      print(r.stderr[-2000:], file=sys.stderr)
      sys.exit(r.returncode)
    results.append(json.loads(r.stdout.strip().splitlines()[-1]))
    print(f"{name}: " + ", ".join(f"{k}={results[-1][k]:.3g}" for k in results[-1]
                                  if k.endswith("epoch_seconds")), file=sys.stderr)
  out = pathlib.Path(FLAGS.out)
  out.mkdir(parents=True, exist_ok=True)
  (out / "scaling.json").write_text(json.dumps(results, indent=2) + "\n")
  plot(results, out / "scaling.png")
  print(json.dumps(results, indent=2))


if __name__ == "__main__":
  app.run(main)
