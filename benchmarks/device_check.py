r"""One command for a lent accelerator: speed, precision and memory, one JSON.

  python benchmarks/device_check.py                  # on the device ($OUT/device_check.json)
  python benchmarks/device_check.py --smoke --out=/tmp/x.json   # CPU, tiny shapes, < 60 s

Runs on whatever JAX sees (jax.devices()[0]) and writes ONE JSON object to
--out (default $OUT/device_check.json when $OUT is set), rewritten after
every section so a run cut short still leaves what it measured, and printed
to stdout at the end. Sections, in this order (each in its own try/except: a
failure is recorded as {"status": "error", "error": ...} and the rest runs;
a total budget --budget_s skips what would start after it, with a note):

  env            jax/jaxlib/flax/optax versions, device kind, platform, matmul precision
  peaks          float32 (default precision: TF32 tensor cores on a GPU),
                 float32 Precision.HIGHEST and bfloat16 (float32 accumulate,
                 as the models do) square-matmul TFLOP/s, and a device copy
                 bandwidth, each the median of --repeats_peak timed calls
                 (block_until_ready, after a warm-up, random data)
  epochs_ml-100k, epochs_ml-20m, epochs_netflix
                 I-AutoRec (autorec preset: N -> 500 -> N) and deep AE
                 (deeprec preset, 512-512-1024, dense re-feeding off so that
                 dense and sparse run the same math) epochs at that shape:
                 dense float32, dense bfloat16, sparse float32. Per variant:
                 seconds per step and per epoch, model TFLOP/s and its
                 fraction of the peak measured above, and a floor
                 max(FLOPs / peak, bytes / bandwidth) with the gap to it
  dtype_rmse     test RMSE after --rmse_epochs epochs, float32 vs bfloat16,
                 on ML-100K-shaped data (random 90/10 split), both presets
  sweep_ml-100k, sweep_ml-20m
                 one K = --members sweep epoch (engine default group size:
                 K side by side on an accelerator, one at a time on a CPU)
                 vs K lone epochs run one after the other
  memory         peak device memory (memory_stats()["peak_bytes_in_use"],
                 null where the backend has none); every timed variant also
                 records the peak so far

Data: `data.synthetic.generate` at the MovieLens/Netflix shapes (the shapes
of `--dataset=synthetic:ml-20m`), a random split (test 0.1, no validation),
rows from the training part. ML-20M and Netflix are generated in a
background thread while the first sections run. Epoch times: a variant
runs `min(--steps, steps_per_epoch)` batches per compiled call (dense: a
random subset of steps x B rows; sparse: the first steps columns of the
stratified grid, with the whole epoch's entry bound T); epoch_seconds =
seconds_per_step x steps_per_epoch, and "extrapolated" says when the timed
call was shorter than an epoch (as benchmarks/scaling_bench.py does).

FLOPs per step (matmuls, forward + backward, padding rows included): dense
Σ_layers (2 + (2 if first else 4)) · B · d_in · d_out; sparse: the first and
last layers at the T entry slots instead of B x N (spmm 2·T·H forward +
2·T·H for dW; sddmm 2·T·H forward + 4·T·H backward), middle layers dense.
Bytes per step (an estimate for the floor): the optimizer's passes over the
parameters (Adam: read p, g, m, v, write p, m, v, g = 8 x 4 bytes per
parameter; momentum/SGD: 6) plus the batch: dense 6 x B x N x 4 (densify,
mask, read, output, error, gradient), sparse 6 x T x 4.
"""

from __future__ import annotations

import concurrent.futures
import datetime
import importlib.metadata
import json
import os
import pathlib
import platform
import sys
import time
import traceback
import warnings

from absl import app, flags
import jax
import jax.numpy as jnp
import numpy as np

from recae_jax import compute, engine, sweep
from recae_jax.config import make_config
from recae_jax.data import sparse, splits, synthetic
from recae_jax.problem import RowData, build_problem

flags.DEFINE_bool("smoke", False, "tiny shapes and models (CPU, < 60 s): proves the script runs")
flags.DEFINE_string("out", None, "JSON path (default $OUT/device_check.json if $OUT is set)")
flags.DEFINE_float("budget_s", 420.0, "total seconds; sections that would start later are skipped")
flags.DEFINE_integer("steps", 16, "batches per timed call at the big shapes (capped at one epoch)")
flags.DEFINE_integer("repeats", 3, "timed calls per variant (median), after a warm-up call")
flags.DEFINE_integer("repeats_peak", 10, "timed calls per matmul / copy peak (median)")
flags.DEFINE_integer("matmul_size", 8192, "square matmul size for the peaks")
flags.DEFINE_integer("copy_mb", 1024, "array size for the copy bandwidth")
flags.DEFINE_integer("rmse_epochs", 50, "epochs before the float32 vs bfloat16 test RMSE")
flags.DEFINE_integer("members", 8, "K, the sweep's members")
flags.DEFINE_integer("netflix_ratings", synthetic.SHAPES["netflix"][2],
                     "ratings of the Netflix-shaped data (480189 x 17770); fewer is faster "
                     "to generate but makes the sparse path look better than at Netflix's density")
flags.DEFINE_string("sections", None, "comma-separated subset of the sections (default all)")
FLAGS = flags.FLAGS

SHAPES = {"ml-100k": synthetic.SHAPES["ml-100k"], "ml-20m": synthetic.SHAPES["ml-20m"],
          "netflix": None}  # netflix: (480189, 17770, --netflix_ratings)
SMOKE_SHAPES = {"ml-100k": (100, 160, 3000), "ml-20m": (240, 400, 6000),
                "netflix": (400, 120, 8000)}
MODELS = ("autorec", "deeprec")
VARIANTS = (("dense", "float32"), ("dense", "bfloat16"), ("sparse", "float32"))
# Seconds a section needs on an accelerator before it is worth starting.
NEED_S = {"epochs_ml-20m": 40, "sweep_ml-20m": 30, "epochs_netflix": 60}
SECTIONS = ("env", "peaks", "epochs_ml-100k", "dtype_rmse", "sweep_ml-100k",
            "epochs_ml-20m", "sweep_ml-20m", "epochs_netflix", "memory")


# ------------------------------------------------------------------ helpers

def _median_seconds(fn, repeats: int, min_total_s: float = 0.0,
                    max_repeats: int = 50) -> tuple[float, list[float]]:
  """Median of >= `repeats` timed calls after a warm-up; short calls repeat
  until `min_total_s` of timed calls (at most `max_repeats`)."""
  fn()  # warm-up
  times = []
  while len(times) < repeats or (sum(times) < min_total_s and len(times) < max_repeats):
    t = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t)
  return float(np.median(times)), times


def _memory() -> dict:
  try:
    stats = jax.local_devices()[0].memory_stats()
  except Exception:  # noqa: BLE001  (backends without memory stats)
    stats = None
  if not stats:
    return {"peak_bytes_in_use": None, "bytes_in_use": None, "bytes_limit": None}
  return {k: (None if stats.get(k) is None else int(stats[k]))
          for k in ("peak_bytes_in_use", "bytes_in_use", "bytes_limit")}


def model_config(name: str, smoke: bool, **kw):
  """The preset, with the deep AE's dense re-feeding off (the sparse path
  cannot re-feed; dense vs sparse should compare the same math)."""
  extra = {}
  if name == "deeprec":
    extra["dense_refeeding"] = 0
  if smoke:
    extra["layers"] = (32,) if name == "autorec" else (32, 32, 64)
  return make_config(name, **{**extra, **kw})


def layer_dims(model) -> list[tuple[int, int]]:
  widths = [model.n_inputs, *model.layers, *reversed(model.layers[:-1]), model.n_outputs]
  return list(zip(widths[:-1], widths[1:]))


def step_flops(model, batch: int, path: str, entries: int = 0, refeed: int = 0) -> float:
  dims = layer_dims(model)
  total = 0.0
  for i, (a, b) in enumerate(dims):
    first, last = i == 0, i == len(dims) - 1
    if path == "sparse" and first:
      total += 4.0 * entries * b
    elif path == "sparse" and last:
      total += 6.0 * entries * a
    else:
      total += (2 + (2 if first else 4)) * float(batch) * a * b
  fwd = sum(2.0 * batch * a * b for a, b in dims)
  return total * (1 + refeed) + fwd * refeed


def step_bytes(config, n_params: int, batch: int, n_cols: int, path: str,
               entries: int = 0) -> float:
  per_param = 8 if config.optimizer == "adam" else 6
  data = 6.0 * 4 * (entries if path == "sparse" else batch * n_cols)
  return 4.0 * per_param * n_params + data


def _rows_of(config, csr: sparse.CSR, smoke_csr: bool) -> RowData:
  source = sparse.make_row_source(csr, config.dense_budget_mb << 20,
                                  force="csr" if smoke_csr else None)
  rows = np.flatnonzero(csr.row_lengths() > 0).astype(np.int32)
  return RowData(source, None, jnp.asarray(rows))


class Data:
  """Synthetic datasets, split, as host CSRs per orientation; the big ones
  are prepared in a background thread while the first sections run."""

  def __init__(self, shapes: dict):
    self.shapes = shapes
    self.pool = concurrent.futures.ThreadPoolExecutor(max_workers=1)
    self.futures = {}

  def prefetch(self, name: str):
    if name not in self.futures:
      self.futures[name] = self.pool.submit(self._prepare, name)

  def _prepare(self, name: str) -> dict:
    t = time.perf_counter()
    ds = synthetic.generate(self.shapes[name], seed=0)
    gen_s = time.perf_counter() - t
    split = splits.make_split(ds, "random", test_fraction=0.1, valid_fraction=0.0)
    csr = {o: sparse.ratings_to_csr(split.train, o) for o in ("item", "user")}
    return {"dataset": ds, "split": split, "csr": csr, "generate_seconds": gen_s,
            "prepare_seconds": time.perf_counter() - t}

  def get(self, name: str) -> dict:
    self.prefetch(name)
    return self.futures[name].result()

  def drop(self, name: str):
    self.futures.pop(name, None)


class Checker:
  def __init__(self, smoke: bool, out_path, budget_s: float):
    self.t0 = time.perf_counter()
    self.smoke, self.out_path, self.budget_s = smoke, out_path, budget_s
    self.report = {
        "script": "benchmarks/device_check.py", "smoke": smoke,
        "started_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(
            timespec="seconds"),
        "budget_s": budget_s, "argv": sys.argv[1:], "sections": {}, "notes": [],
    }
    self.peaks = {}

  def elapsed(self) -> float:
    return time.perf_counter() - self.t0

  def left(self) -> float:
    return self.budget_s - self.elapsed()

  def write(self):
    self.report["total_wall_s"] = self.elapsed()
    if self.out_path:
      path = pathlib.Path(self.out_path)
      path.parent.mkdir(parents=True, exist_ok=True)
      tmp = path.with_name(path.name + ".tmp")
      tmp.write_text(json.dumps(self.report, indent=2, default=str) + "\n")
      os.replace(tmp, path)

  def section(self, name: str, fn, need_s: float = 0.0):
    if self.left() < (0 if self.smoke else need_s) or self.left() <= 0:
      why = (f"skipped: {self.left():.0f} s of the {self.budget_s:.0f} s budget left, "
             f"{need_s:.0f} s needed")
      self.report["sections"][name] = {"status": "skipped", "note": why}
      self.report["notes"].append(f"{name}: {why}")
      self.write()
      return
    t = time.perf_counter()
    entry = {"status": "ok"}
    try:
      result = fn()
      entry["result"] = result
      errs = [f"{k}: {v['error']}" for k, v in _walk_variants(result) if "error" in v]
      if errs:
        entry.update(status="error", error="; ".join(errs))
    except Exception as e:  # noqa: BLE001  (one failure must not end the check)
      entry.update(status="error", error=f"{type(e).__name__}: {e}",
                   traceback=traceback.format_exc()[-3000:])
    entry["wall_s"] = time.perf_counter() - t
    entry["memory_after"] = _memory()
    self.report["sections"][name] = entry
    self.write()
    print(f"[device_check] {name}: {entry['status']} in {entry['wall_s']:.1f} s "
          f"({self.elapsed():.0f} s total)", file=sys.stderr, flush=True)


def _walk_variants(result):
  """(path, dict) for every sub-result that carries its own error."""
  if isinstance(result, dict):
    for k, v in result.items():
      if isinstance(v, dict):
        if "error" in v:
          yield k, v
        else:
          yield from ((f"{k}/{p}", d) for p, d in _walk_variants(v))


def _guarded(fn, *args, **kw) -> dict:
  try:
    return fn(*args, **kw)
  except Exception as e:  # noqa: BLE001
    return {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()[-2000:]}


# ----------------------------------------------------------------- sections

def env_section() -> dict:
  versions = {}
  for pkg in ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "numpy"):
    try:
      versions[pkg] = importlib.metadata.version(pkg)
    except importlib.metadata.PackageNotFoundError:
      versions[pkg] = None
  plugins = {}
  for pkg in ("jax-cuda13-plugin", "jax-cuda12-plugin", "jax-cuda13-pjrt", "jax-cuda12-pjrt"):
    try:
      plugins[pkg] = importlib.metadata.version(pkg)
    except importlib.metadata.PackageNotFoundError:
      pass
  dev = jax.devices()[0]
  import jaxlib  # noqa: PLC0415
  versions["jax.__version__"] = jax.__version__
  versions["jaxlib.__version__"] = getattr(jaxlib, "__version__", None)
  out = {"versions": versions, "plugins": plugins, "python": sys.version.split()[0],
         "host": platform.platform(), "backend": jax.default_backend(),
         "device_kind": dev.device_kind, "device_count": jax.device_count(),
         "local_device_count": jax.local_device_count(),
         "default_matmul_precision": str(jax.config.jax_default_matmul_precision),
         "default_group_size_k": engine.default_group_size(FLAGS.members),
         "memory_stats_available": _memory()["bytes_limit"] is not None}
  try:
    out["platform_version"] = str(dev.client.platform_version)
  except Exception:  # noqa: BLE001
    pass
  return out


def peaks_section(ck: Checker) -> dict:
  n = 256 if ck.smoke else FLAGS.matmul_size
  k1, k2 = jax.random.split(jax.random.PRNGKey(0))
  a32 = jax.random.normal(k1, (n, n), jnp.float32)
  b32 = jax.random.normal(k2, (n, n), jnp.float32)
  out = {"matmul_size": n, "repeats": FLAGS.repeats_peak}
  cases = {
      "float32": (lambda a, b: a @ b, a32, b32),
      "float32_highest": (lambda a, b: jnp.matmul(a, b, precision=jax.lax.Precision.HIGHEST),
                          a32, b32),
      "bfloat16": (lambda a, b: jnp.matmul(a, b, preferred_element_type=jnp.float32),
                   a32.astype(jnp.bfloat16), b32.astype(jnp.bfloat16)),
  }
  for name, (f, a, b) in cases.items():
    fj = jax.jit(f)
    s, times = _median_seconds(lambda: fj(a, b).block_until_ready(), FLAGS.repeats_peak)
    out[f"{name}_tflops"] = 2.0 * n**3 / s / 1e12
    out[f"{name}_seconds"] = s
  m = (1 if ck.smoke else FLAGS.copy_mb) << 18  # floats
  x = jax.random.uniform(k1, (m,), jnp.float32)
  cp = jax.jit(lambda x: x * 1.0001 + 1.0)
  s, _ = _median_seconds(lambda: cp(x).block_until_ready(), FLAGS.repeats_peak)
  out["copy_bytes"] = 8 * m
  out["copy_gbps"] = 8.0 * m / s / 1e9  # read + write
  ck.peaks = out
  return out


def time_variant(ck: Checker, config, rows: RowData, n_cols: int, path: str, steps: int,
                 members=(), group_size=None, calls: int = 1) -> dict:
  """Median seconds of a compiled epoch over min(steps, steps_per_epoch)
  batches; `calls` epochs per timed repeat (sequential lone runs)."""
  n_train = int(rows.train_rows.shape[0])
  batch = min(config.batch_size, n_train)
  steps_per_epoch = -(-n_train // batch)
  steps = min(steps, steps_per_epoch)
  run = compute.make_run(config, rows, n_cols, batch, path, members=members,
                         group_size=group_size)
  data = run.data
  if steps < steps_per_epoch:
    if path == "sparse":
      data = data.replace(strata_SxNb=data.strata_SxNb[:, :steps],
                          train_rows=data.train_rows[: steps * batch])
    else:
      pick = np.random.default_rng(0).permutation(n_train)[: steps * batch]
      data = data.replace(train_rows=jnp.asarray(np.sort(np.asarray(rows.train_rows)[pick])))
  t = time.perf_counter()
  compiled = run.epoch.lower(run.state, data, run.hyper).compile()
  compile_s = time.perf_counter() - t
  state = [run.state]

  def call():
    for _ in range(calls):
      state[0], m = compiled(state[0], data, run.hyper)
    jax.block_until_ready(m)
    return m

  s, times = _median_seconds(call, FLAGS.repeats, 0.0 if ck.smoke else 0.5)
  m = jax.device_get(call())
  loss = np.asarray(m["loss"], np.float64)
  n_params = sum(int(np.prod(v.shape[1:])) for v in jax.tree.leaves(state[0].params))
  entries = int(getattr(data, "max_entries", 0))
  out = {"compute": path, "compute_dtype": config.compute_dtype, "rows": n_train,
         "cols": n_cols, "batch_size": batch, "layers": list(config.layers),
         "members": len(members) or 1, "steps_per_epoch": steps_per_epoch,
         "timed_steps": steps, "extrapolated": steps < steps_per_epoch,
         "compile_seconds": compile_s, "timed_calls": len(times), "call_seconds_median": s,
         "call_seconds_min": float(min(times)),
         "seconds_per_step": s / steps / calls,
         "epoch_seconds": s / steps / calls * steps_per_epoch,
         "final_loss": float(np.mean(loss)), "finite_loss": bool(np.all(np.isfinite(loss))),
         "n_params": n_params, "layout": type(rows.source).__name__}
  if path == "sparse":
    out["max_entries"] = entries
    out["mean_entries_per_batch"] = float(np.asarray(data.indptr[-1])) / run.data.n_batches
  model = run.task.model
  flops = step_flops(model, batch, path, entries, config.dense_refeeding) * (len(members) or 1)
  byts = step_bytes(config, n_params, batch, n_cols, path, entries) * (len(members) or 1)
  tflops = flops / out["seconds_per_step"] / 1e12
  out.update(tflop_per_step=flops / 1e12, achieved_tflops=tflops, bytes_per_step=byts)
  peak_key = "bfloat16_tflops" if config.compute_dtype == "bfloat16" else "float32_tflops"
  if ck.peaks.get(peak_key):
    peak = ck.peaks[peak_key] * 1e12
    bw = ck.peaks["copy_gbps"] * 1e9
    floor = max(flops / peak, byts / bw)
    out.update(peak_used=peak_key, fraction_of_peak=tflops * 1e12 / peak,
               floor_seconds_per_step=floor,
               floor_bound="flops" if flops / peak >= byts / bw else "bytes",
               gap_to_floor=out["seconds_per_step"] / floor)
  if path == "dense":
    dense_flops = flops
  else:
    dense_flops = step_flops(model, batch, "dense", 0, config.dense_refeeding) * (
        len(members) or 1)
  out["dense_equivalent_tflops"] = dense_flops / out["seconds_per_step"] / 1e12
  del run, compiled, state
  out["memory_after"] = _memory()
  return out


def epochs_section(ck: Checker, data: Data, shape: str) -> dict:
  d = data.get(shape)
  ds = d["dataset"]
  out = {"shape": shape, "n_users": ds.ratings.n_users, "n_items": ds.ratings.n_items,
         "n_ratings": len(ds.ratings), "n_train": len(d["split"].train),
         "density": len(ds.ratings) / (ds.ratings.n_users * ds.ratings.n_items),
         "generate_seconds": d["generate_seconds"], "prepare_seconds": d["prepare_seconds"],
         "method": ("each timed call runs min(steps, steps_per_epoch) batches; "
                    "epoch_seconds = seconds_per_step x steps_per_epoch")}
  if shape == "netflix" and not ck.smoke and len(ds.ratings) < synthetic.SHAPES["netflix"][2]:
    out["note"] = (f"{len(ds.ratings)} ratings (--netflix_ratings), not Netflix's "
                   "100480507: the sparse path's entries per batch shrink with them")
  for name in MODELS:
    res = {}
    csr = d["csr"][model_config(name, ck.smoke).orientation]
    rows = None
    for path, dt in VARIANTS:
      if ck.left() <= 0 and not ck.smoke:
        res[f"{path}_{dt}"] = {"skipped": "budget spent"}
        continue
      config = model_config(name, ck.smoke, compute_dtype=dt)
      if rows is None:  # one device copy of the rows per model (orientation)
        rows = _rows_of(config, csr, ck.smoke and shape != "ml-100k")
      res[f"{path}_{dt}"] = _guarded(time_variant, ck, config, rows, csr.shape[1], path,
                                     FLAGS.steps)
    del rows
    f32, bf16, sp = (res.get("dense_float32", {}), res.get("dense_bfloat16", {}),
                     res.get("sparse_float32", {}))
    if "epoch_seconds" in f32 and "epoch_seconds" in bf16:
      res["bfloat16_speedup_vs_float32"] = f32["epoch_seconds"] / bf16["epoch_seconds"]
    if "epoch_seconds" in f32 and "epoch_seconds" in sp:
      res["sparse_speedup_vs_dense"] = f32["epoch_seconds"] / sp["epoch_seconds"]
    out[name] = res
  return out


def dtype_rmse_section(ck: Checker, data: Data) -> dict:
  d = data.get("ml-100k")
  epochs = 2 if ck.smoke else FLAGS.rmse_epochs
  out = {"shape": "ml-100k", "epochs": epochs, "split": "random, test 0.1, no validation",
         "note": "deeprec with its preset's dense re-feeding (dense only)"}
  for name in MODELS:
    res = {}
    for dt in ("float32", "bfloat16"):
      res[dt] = _guarded(_rmse_after, ck, name, dt, d, epochs)
    if "test_rmse" in res["float32"] and "test_rmse" in res["bfloat16"]:
      res["rmse_bfloat16_minus_float32"] = (res["bfloat16"]["test_rmse"]
                                            - res["float32"]["test_rmse"])
      res["bfloat16_speedup_vs_float32"] = (res["float32"]["epoch_seconds_median"]
                                            / res["bfloat16"]["epoch_seconds_median"])
    out[name] = res
  return out


def _rmse_after(ck: Checker, name: str, dt: str, d: dict, epochs: int) -> dict:
  """The engine directly: `epochs` epochs on the training split, then the
  test pairs through engine.make_evaluate (no workdir)."""
  config = make_config(name, compute_dtype=dt, epochs=epochs, split="random",
                       test_fraction=0.1, valid_fraction=0.0,
                       **({"layers": (32,) if name == "autorec" else (32, 32, 64)}
                          if ck.smoke else {}))
  problem = build_problem(config, d["dataset"], d["split"])
  n_train = int(problem.fit_data.train_rows.shape[0])
  run = compute.make_run(config, problem.fit_data, problem.n_cols,
                         min(config.batch_size, n_train), "dense")
  times, losses = [], []
  t0 = time.perf_counter()
  for _ in range(epochs):
    t = time.perf_counter()
    m = jax.device_get(run.step())
    times.append(time.perf_counter() - t)
    losses.append(float(np.mean(m["loss"])))
  train_s = time.perf_counter() - t0
  evaluate = engine.make_evaluate(run.task, "dense", problem.rating_scale)
  _, sums = evaluate(run.state.params, problem.full_data, problem.test)
  err = engine.errors(jax.device_get(sums))
  return {"compute_dtype": dt, "test_rmse": float(err["rmse"][0]),
          "test_mae": float(err["mae"][0]), "n_test": len(problem.test.ratings),
          "epochs": epochs, "train_seconds": train_s,
          "epoch_seconds_median": float(np.median(times[1:] if len(times) > 1 else times)),
          "first_epoch_seconds": times[0], "loss_first": losses[0], "loss_last": losses[-1],
          "dense_refeeding": config.dense_refeeding}


def sweep_section(ck: Checker, data: Data, shape: str) -> dict:
  """K members in one compiled epoch vs one lone run's epoch called K times
  (the K lone runs of a sequential sweep have the same shapes and cost; one
  state is reused so K lone states need not fit beside the sweep's)."""
  d = data.get(shape)
  k = FLAGS.members
  base = model_config("autorec", ck.smoke)
  configs = sweep.member_configs(base, [{"seed": base.seed + i} for i in range(k)])
  csr = d["csr"][base.orientation]
  rows = _rows_of(base, csr, ck.smoke and shape != "ml-100k")
  group = engine.default_group_size(k)
  out = {"shape": shape, "preset": "autorec", "members": k, "group_size": group,
         "sequential": "one lone run's epoch called K times per timed repeat"}
  out["sweep"] = _guarded(time_variant, ck, base, rows, csr.shape[1], "dense", FLAGS.steps,
                          members=configs, group_size=group)
  out["lone"] = _guarded(time_variant, ck, base, rows, csr.shape[1], "dense", FLAGS.steps,
                         calls=k)
  s, l = out["sweep"], out["lone"]
  if "epoch_seconds" in s and "epoch_seconds" in l:
    out["sweep_epoch_seconds"] = s["epoch_seconds"]
    out["sequential_epoch_seconds"] = l["epoch_seconds"] * k
    out["speedup_vs_sequential"] = l["epoch_seconds"] * k / s["epoch_seconds"]
  return out


def memory_section() -> dict:
  return {**_memory(), "device_kind": jax.devices()[0].device_kind}


# --------------------------------------------------------------------- main

def main(argv):
  del argv
  if FLAGS.smoke:
    # Tiny shapes: compiling is most of the time, so compile with less effort
    # (read when the CPU backend starts, i.e. before the first jax call), time
    # each variant once over one batch (so the "big" shapes extrapolate).
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                               + " --xla_backend_optimization_level=0").strip()
    FLAGS.steps, FLAGS.repeats, FLAGS.repeats_peak = 1, 1, 3
  out_path = FLAGS.out
  if out_path is None and os.environ.get("OUT"):
    out_path = os.path.join(os.environ["OUT"], "device_check.json")
  ck = Checker(FLAGS.smoke, out_path, FLAGS.budget_s)
  wanted = SECTIONS if not FLAGS.sections else tuple(
      s for s in SECTIONS if s in FLAGS.sections.split(","))
  shapes = dict(SMOKE_SHAPES) if FLAGS.smoke else dict(SHAPES)
  if not FLAGS.smoke:
    shapes["netflix"] = (*synthetic.SHAPES["netflix"][:2], FLAGS.netflix_ratings)
  ck.report["shapes"] = {k: list(v) for k, v in shapes.items()}
  data = Data(shapes)
  for name in ("ml-100k", "ml-20m", "netflix"):  # in the order they are needed
    if any(s.endswith(name) for s in wanted):
      data.prefetch(name)
  caught = []
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always", DeprecationWarning)
    warnings.simplefilter("always", FutureWarning)
    plan = {
        "env": lambda: env_section(),
        "peaks": lambda: peaks_section(ck),
        "epochs_ml-100k": lambda: epochs_section(ck, data, "ml-100k"),
        "dtype_rmse": lambda: dtype_rmse_section(ck, data),
        "sweep_ml-100k": lambda: sweep_section(ck, data, "ml-100k"),
        "epochs_ml-20m": lambda: epochs_section(ck, data, "ml-20m"),
        "sweep_ml-20m": lambda: sweep_section(ck, data, "ml-20m"),
        "epochs_netflix": lambda: epochs_section(ck, data, "netflix"),
        "memory": lambda: memory_section(),
    }
    for name in wanted:
      if name == "epochs_netflix":
        data.drop("ml-100k")
      ck.section(name, plan[name], NEED_S.get(name, 0))
      if name == "sweep_ml-20m":
        data.drop("ml-20m")
  seen = set()
  ck.report["deprecations"] = []
  for w in caught:
    if issubclass(w.category, (DeprecationWarning, FutureWarning)):
      key = (w.category.__name__, str(w.message), w.filename, w.lineno)
      if key not in seen:
        seen.add(key)
        ck.report["deprecations"].append({"category": key[0], "message": key[1][:500],
                                          "file": w.filename, "line": w.lineno})
  ck.report["status"] = ("ok" if all(s["status"] == "ok"
                                     for s in ck.report["sections"].values()) else "incomplete")
  ck.write()
  data.pool.shutdown(wait=False, cancel_futures=True)
  print(json.dumps(ck.report, indent=2, default=str))


if __name__ == "__main__":
  app.run(main)
