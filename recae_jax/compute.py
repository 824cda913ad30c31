"""dense | sparse | auto: the ONE place a run's compute path is chosen.

`choose(config, ...)` returns the batcher a run uses, once, and the same
choice feeds training, the refit, evaluation and the memory estimate. On
the sparse path the N-wide input and output layers are evaluated only at
observed entries (see `batching`, `models`). Whether that beats dense
depends on density and on how fast the device gathers/scatters relative
to its GEMMs, so "auto" measures both epochs on the data at hand.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Optional, Sequence

import jax
import numpy as np

from recae_jax import engine, optim
from recae_jax.batching import DenseBatcher, SparseBatcher
from recae_jax.config import Config
from recae_jax.errors import UserError
from recae_jax.models import build_model
from recae_jax.problem import RowData
from recae_jax.tasks import Hyper, RatingTask


def supports(config: Config) -> tuple[bool, str]:
  """(True, "") if the sparse path can train `config`, else (False, why)."""
  why = []
  if config.tied:
    why.append("tied weights")
  if config.side_features:
    why.append("side features")
  if config.input_noise > 0:
    why.append("input noise (it makes missing inputs nonzero)")
  if config.dense_refeeding:
    why.append("dense re-feeding (dense targets)")
  if config.compute_dtype != "float32":
    why.append("bfloat16 compute")
  if config.model == "glocal_k":
    why.append("GLocal-K's global convolution (it reads each row's neighbouring "
               "dense rows; use --compute=dense)")
  if config.row_bias:
    why.append("a per-row output bias (--row_bias; use --compute=dense)")
  return (not why, ", ".join(why))


def check(config: Config, members=()) -> list[str]:
  """What keeps the sparse path from `config` and its members (empty if
  nothing); a UserError if --compute=sparse was asked for anyway."""
  bad = [why for ok, why in map(supports, tuple(members) or (config,)) if not ok]
  if config.compute == "sparse" and bad:
    raise UserError(f"--compute=sparse does not support {bad[0]}")
  return bad


def batcher_for(compute: str, config: Config, batch_size: int, mesh=None):
  if compute == "sparse":
    return SparseBatcher(batch_size, config.sparse_batching, mesh)
  return DenseBatcher(batch_size, mesh)


def choose(config: Config, rows: RowData, n_cols: int, batch_size: int, mesh=None,
           members=()) -> tuple[object, dict]:
  """(batcher, info) for config.compute in {"dense", "sparse", "auto"}."""
  bad = check(config, members)
  if config.compute != "dense" and mesh is not None and mesh.shape["model"] > 1:
    if config.compute == "sparse":
      raise UserError("--compute=sparse needs replicated parameters: use "
                      "--model_parallel=1 (the entries of a batch are split over "
                      "--data_parallel devices)")
    return DenseBatcher(batch_size, mesh), {"compute": "dense",
                                            "reason": "--model_parallel > 1"}
  if config.compute == "dense" or (config.compute == "auto" and bad):
    info = {"compute": "dense"}
    if bad:
      info["reason"] = f"sparse path does not support {bad[0]}"
    return DenseBatcher(batch_size, mesh), info
  if config.compute == "sparse":
    return SparseBatcher(batch_size, config.sparse_batching, mesh), {"compute": "sparse"}
  t = time_dense_and_sparse(config, rows, n_cols, batch_size=batch_size, mesh=mesh)
  choice = "sparse" if t["sparse_epoch_seconds"] < t["dense_epoch_seconds"] else "dense"
  return batcher_for(choice, config, batch_size, mesh), {
      "compute": choice, "device": jax.devices()[0].device_kind, **t}


@dataclasses.dataclass
class Run:
  """Everything one engine run holds, for benchmarks and the auto timing."""

  task: RatingTask
  tx: object
  batcher: object
  data: object
  state: engine.TrainState
  hyper: Hyper
  epoch: object  # the jitted epoch

  def step(self):
    self.state, m = self.epoch(self.state, self.data, self.hyper)
    return m


def make_run(config: Config, rows: RowData, n_cols: int, batch_size: int,
             compute: str = "dense", members: Sequence[Config] = (), mesh=None,
             group_size: Optional[int] = None) -> Run:
  """A ready engine (state, data, compiled-on-first-call epoch) for `config`
  or its `members` on `rows`, without the host loop."""
  cs = tuple(members) or (config,)
  n_train = int(rows.train_rows.shape[0])
  task = RatingTask.from_config(config, build_model(config, n_cols, members=cs,
                                                             n_rows=rows.n_rows), cs)
  tx = optim.make_optimizer(config, -(-n_train // batch_size))
  batcher = batcher_for(compute, config, batch_size, mesh)
  return Run(task, tx, batcher, batcher.data(rows),
             engine.init_state(task, tx, [c.seed for c in cs], config.seed),
             Hyper.from_configs(cs),
             engine.make_epoch(task, tx, batcher, shuffle=config.shuffle,
                               group_size=group_size))


def _compile_and_warm(fn, state, data, hyper):
  """(compile seconds, compiled epoch, state after one warm-up epoch)."""
  t = time.perf_counter()
  compiled = fn.lower(state, data, hyper).compile()
  compile_s = time.perf_counter() - t
  state, m = compiled(state, data, hyper)
  jax.block_until_ready(m)
  return compile_s, compiled, state


def time_dense_and_sparse(config: Config, rows: RowData, n_cols: int, *,
                          batch_size: Optional[int] = None, repeats: int = 3,
                          mesh=None) -> dict:
  """Median epoch seconds of both paths on this data, measured interleaved
  (dense, sparse, dense, ...) so machine noise hits both alike."""
  n_train = int(rows.train_rows.shape[0])
  batch = batch_size or min(config.batch_size, n_train)
  runs = {name: make_run(config, rows, n_cols, batch, name, mesh=mesh)
          for name in ("dense", "sparse")}
  compiled, states, data, out = {}, {}, {}, {}
  hyper = runs["dense"].hyper
  for name, r in runs.items():
    data[name] = r.data
    c_s, compiled[name], states[name] = _compile_and_warm(r.epoch, r.state, r.data, hyper)
    out[f"{name}_compile_seconds"] = c_s
  times = {name: [] for name in runs}
  for _ in range(repeats):
    for name in runs:
      t = time.perf_counter()
      states[name], m = compiled[name](states[name], data[name], hyper)
      jax.block_until_ready(m)
      times[name].append(time.perf_counter() - t)
  for name in runs:
    out[f"{name}_epoch_seconds"] = float(np.median(times[name]))
  sd = data["sparse"]
  out.update(
      sparse_speedup=out["dense_epoch_seconds"] / out["sparse_epoch_seconds"],
      max_entries=sd.max_entries, batching=sd.batching, batch_size=batch,
      dense_entries_per_batch=batch * n_cols,
      mean_entries_per_batch=float(sd.indptr[-1]) / sd.n_batches)
  return out
