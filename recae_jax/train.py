"""Train rating autoencoders: a lone run, or K members (a sweep) at once.

    train_and_evaluate(config, workdir)             one model, K = 1
    train_members(base, configs, workdir, labels)   K members, one compiled epoch

Both wire the problem (`problem`), the compute path (`compute`), the task
(`tasks.RatingTask`), the engine (`engine`) and the host loop (`loop`), then
report each member's selected epoch on the test set. The epoch is selected
on a validation carve-out of the training split, never on the test set.
Ensembles and blends are orchestration above this (`blend`).
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import resource
from typing import Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from recae_jax import compute as compute_lib
from recae_jax import engine, loop, memory, optim, plots, sharding
from recae_jax import workdir as wd
from recae_jax.config import MODEL_OPTIONS, Config
from recae_jax.data.types import Dataset, Ratings
from recae_jax.errors import UserError
from recae_jax.models import build_model
from recae_jax.problem import Problem, build_problem, load_split
from recae_jax.tasks import Hyper, RatingTask

TrainingDiverged = loop.TrainingDiverged
_RESUMABLE_CHANGES = {"epochs", "patience", "checkpoint_every", "tensorboard"}


def user_mean_rmse(ratings: Ratings, pred: np.ndarray) -> float:
  """Mean over users of each user's RMSE (seed system S3's reported 'loss')."""
  err2 = (pred.astype(np.float64) - ratings.ratings) ** 2
  cnt = np.bincount(ratings.users, minlength=ratings.n_users)
  sse = np.bincount(ratings.users, weights=err2, minlength=ratings.n_users)
  has = cnt > 0
  return float(np.mean(np.sqrt(sse[has] / cnt[has]))) if has.any() else float("nan")


def memory_report() -> dict:
  """Peak host RSS of this process so far, and the device's peak bytes in use
  (None where the backend keeps no statistics, e.g. CPU)."""
  stats = jax.local_devices()[0].memory_stats() or {}
  return {"peak_host_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
          "device_peak_bytes": stats.get("peak_bytes_in_use")}


def check_workdir(config_json: dict, workdir: pathlib.Path, resume: bool) -> None:
  """A workdir holding a run is continued only with --resume and the same config."""
  ck = workdir / "checkpoints"
  if not (ck.exists() and any(ck.iterdir())):
    return
  if not resume:
    raise UserError(f"workdir {workdir} already holds a run; pass --resume to continue "
                    "it or choose a new --workdir")
  diff = config_differences(config_json, workdir, ignore=_RESUMABLE_CHANGES)
  if diff:
    raise UserError(f"workdir {workdir} holds a run with a different config "
                    f"({', '.join(diff)}); use a new --workdir")


def config_differences(config_json: dict, workdir: pathlib.Path,
                       ignore=frozenset()) -> list[str]:
  """The fields (outside `ignore`) in which workdir/config.json differs from
  `config_json` (a config, or a sweep's {"base", "members"}); [] without one.
  Both sides are read as Configs, so fields added since that run count as
  their defaults and a scalar written before a field became a list matches."""
  path = workdir / "config.json"
  if not path.exists():
    return []
  fields = set(Config().to_json())  # a field since removed is not a difference
  norm = lambda d: json.loads(json.dumps(Config.from_json(
      {k: v for k, v in d.items() if k in fields}).to_json()))

  def changed(o, n):
    o, n = norm(o), norm(n)
    return {k for k in n if o[k] != n[k] and k not in ignore}

  old, new = json.loads(path.read_text()), config_json
  if "members" not in new:
    return sorted(changed(old, new))
  if len(old.get("members", [])) != len(new["members"]):
    return ["members"]
  return sorted(set().union(changed(old.get("base", {}), new["base"]), *(
      changed(o, n) for o, n in zip(old["members"], new["members"]))))


def _shard(mesh, state):
  return state if mesh is None else sharding.shard_state(mesh, state)


def train_members(base: Config, configs: Sequence[Config], workdir, *,
                  member_dirs: Sequence[pathlib.Path], labels: Sequence[str],
                  resume: bool = False, progress: Callable[[str], None] = print,
                  problem: Optional[Problem] = None, dataset: Optional[Dataset] = None,
                  config_json: Optional[dict] = None, group_size: Optional[int] = None,
                  shared_order: bool = True) -> list[dict]:
  """Trains `configs` (differing only in tasks.SWEEPABLE fields) as members of
  one engine, selects each on validation, writes each member's metrics.json,
  metrics.jsonl, test_pred.npy and valid_pred.npy into its `member_dirs`,
  and returns their metrics. GLocal-K members are first pre-trained as
  sparse_fc runs in workdir/pretrain (see `_pretrain_local_kernels`)."""
  return _train_members(base, configs, workdir, member_dirs=member_dirs, labels=labels,
                        resume=resume, progress=progress, problem=problem,
                        dataset=dataset, config_json=config_json,
                        group_size=group_size, shared_order=shared_order)[0]


def _train_members(base, configs, workdir, *, member_dirs, labels, resume, progress,
                   problem, dataset, config_json, group_size, shared_order):
  """train_members, also returning the selected parameters [K, ...]."""
  workdir = wd.ensure_writable(workdir)
  check_workdir(config_json or base.to_json(), workdir, resume)
  wd.write_json(workdir / "config.json", config_json or base.to_json())
  if problem is None:
    dataset, split = load_split(base, dataset)
    problem = build_problem(base, dataset, split)
  wd.write_json(workdir / "provenance.json", wd.provenance(problem.dataset_files))
  k = len(configs)
  n_train_rows = int(problem.fit_data.train_rows.shape[0])
  if n_train_rows == 0:
    raise UserError(f"dataset {base.dataset!r} split {base.split!r} has no training ratings")
  mesh = sharding.make_mesh(base.data_parallel, base.model_parallel)
  batch_size = base.batch_size if mesh else min(base.batch_size, n_train_rows)
  if base.optimizer == "lbfgs" and batch_size < n_train_rows:
    raise UserError(f"--optimizer=lbfgs is full-batch: set --batch_size to at least the "
                    f"{n_train_rows} training rows (got {base.batch_size})")
  compute_lib.check(base, configs)  # a refused --compute fails before any training
  start = None
  if base.model == "glocal_k":
    start = _pretrain_local_kernels(
        base, configs, workdir, problem, labels=labels, resume=resume, progress=progress,
        group_size=group_size, shared_order=shared_order)
  model = build_model(base, problem.n_cols, problem.n_side, tuple(configs),
                      problem.fit_data.n_rows)
  task = RatingTask.from_config(base, model, configs)
  hyper = Hyper.from_configs(configs)
  steps_per_epoch = -(-n_train_rows // batch_size)
  tx = optim.make_optimizer(base, steps_per_epoch)
  batcher, info = compute_lib.choose(base, problem.fit_data, problem.n_cols, batch_size,
                                     mesh, configs)
  if base.compute != "dense":
    progress(f"compute: {info['compute']}" + (f" ({info['reason']})" if "reason" in info else ""))
  evaluate = engine.make_evaluate(task, info["compute"], problem.rating_scale, mesh)
  seeds = [c.seed for c in configs]
  order_seed = base.seed if shared_order else None  # None: each member its own order
  abstract = jax.eval_shape(lambda: engine.init_state(task, tx, seeds, order_seed))
  fit_rows, full_rows = problem.fit_data, problem.full_data
  if mesh is not None:
    fit_rows = sharding.replicate(mesh, fit_rows)
    full_rows = (fit_rows if problem.full_data is problem.fit_data
                 else sharding.replicate(mesh, full_rows))
  data = batcher.data(fit_rows)
  mem = memory.estimate(base, model, abstract, problem, batch_size, info["compute"],
                        getattr(data, "max_entries", None),
                        **({} if mesh is None else {"data_parallel": mesh.shape["data"],
                                                    "model_parallel": mesh.shape["model"]}))
  memory.check_budget(base, mem, batch_size)  # before the state is allocated
  if mesh is not None:
    sharding.check_divisible(mesh, batch_size, base.eval_batch_size, problem.n_cols,
                             model.n_inputs)
    progress(f"mesh: {dict(mesh.shape)} over {mesh.devices.size} devices")
  state = _shard(mesh, engine.init_state(task, tx, seeds, order_seed, start))
  start = None
  epoch_fn = engine.make_epoch(task, tx, batcher, shuffle=base.shuffle,
                               group_size=group_size)
  validate = None
  if problem.valid is not None:
    v = problem.valid

    def validate(params_K):
      _, sums = evaluate(params_K, fit_rows, v)
      n = sums["count"]
      rmse = (sums["sse"] / n) ** 0.5
      return {"metric": rmse, "valid_rmse": rmse, "valid_mae": sums["abs"] / n}

  result = loop.fit(
      epoch_fn, state, data, hyper, epochs=base.epochs, validate=validate,
      patience=[c.patience for c in configs], checkpoint_dir=workdir / "checkpoints",
      history_paths=[d / "metrics.jsonl" for d in member_dirs], resume=resume,
      checkpoint_every=base.checkpoint_every, labels=labels, progress=progress,
      place=lambda s: _shard(mesh, s),
      tensorboard_dirs=(([workdir / "tb"] if k == 1 else [workdir / "tb" / lb for lb in labels])
                        if base.tensorboard else ()),
      lr_at=lambda step: _learning_rates(base, configs, steps_per_epoch, step))
  # Only the best parameters are needed from here: free the training state
  # before a refit allocates its own (Netflix-size I-AutoRec: 5.8 GB).
  state = data = None

  test_params = result.best_params
  refit = bool(base.refit and problem.valid is not None and result.best_epoch.max() > 0)
  if refit:
    test_params = _refit(base, task, seeds, order_seed, problem, batcher, mesh, hyper,
                         result.best_epoch, progress)
  t = problem.test
  pred_Kxn, ts = jax.device_get(evaluate(test_params, full_rows, t))
  vpred_Kxn = None
  if problem.valid is not None:
    vpred_Kxn = jax.device_get(evaluate(result.best_params, fit_rows, problem.valid)[0])
  te = engine.errors(ts)
  out = []
  for i, (cfg, mdir) in enumerate(zip(configs, member_dirs)):
    res = {
        "test_rmse": float(te["rmse"][i]), "test_mae": float(te["mae"][i]),
        "test_rmse_user_mean": user_mean_rmse(t.ratings, pred_Kxn[i]),
        "best_epoch": int(result.best_epoch[i]),
        "best_valid_rmse": (None if result.best_metric is None
                            else float(result.best_metric[i])),
        "epochs_run": int(result.epochs_run[i]), "refit": refit,
        "n_train": problem.n_train, "n_fit": problem.n_fit,
        "n_valid": 0 if problem.valid is None else len(problem.valid.ratings),
        "n_test": len(t.ratings), "n_test_fallback": t.n_fallback,
        "train_seconds": result.train_seconds / k,
        "compile_seconds": result.compile_seconds,
        "epoch_seconds_median": (float(np.median(result.epoch_seconds)) / k
                                 if result.epoch_seconds else None),
        "dataset": problem.dataset_name, "dataset_files": problem.dataset_files,
        "device": jax.devices()[0].device_kind, "compute": info["compute"],
        "compute_info": info, "mesh": None if mesh is None else dict(mesh.shape),
        "estimated_peak_mb": round(mem["total_mb"], 1), **memory_report(),
    }
    if k > 1:
      res.update(sweep_member=i, sweep_size=k, sweep_train_seconds=result.train_seconds)
    # Multi-host: process 0 writes the workdir's files (save_npy / write_json).
    wd.save_npy(mdir / "test_pred.npy", pred_Kxn[i])
    if vpred_Kxn is not None:
      wd.save_npy(mdir / "valid_pred.npy", vpred_Kxn[i])
    if mdir != workdir:
      wd.write_json(mdir / "config.json", cfg.to_json())
    wd.write_json(mdir / "metrics.json", res)
    out.append(res)
  if wd.is_primary():
    for mdir, hist, res in zip(member_dirs, result.histories, out):
      plots.plot_training_curves({mdir.name: hist}, mdir / "plots" / "loss.png",
                                 selected_epoch=res["best_epoch"])
  wd.barrier("train-and-evaluate-done")  # others may read these files next (ensembles)
  return out, result.best_params


def _pretrain_local_kernels(base: Config, configs, workdir, problem: Problem, *, labels,
                            resume, progress, group_size, shared_order):
  """GLocal-K's first stage: each member's local kernel net is a sparse_fc
  run of `pretrain_epochs` (selected on validation; its own workdir,
  checkpoints and metrics in workdir/pretrain). Returns the second stage's
  starting parameters [K, ...]: those networks, and in `gconv_rowmean` the
  per-row means of their reconstructions of the training matrix (clipped to
  the rating scale), from which the global kernel is computed."""
  # the options sparse_fc does not read go back to their defaults
  unread = {n: getattr(Config, n) for n, models in MODEL_OPTIONS.items()
            if "sparse_fc" not in models}
  local = lambda c: dataclasses.replace(c, model="sparse_fc", epochs=c.pretrain_epochs,
                                        **unread)
  pre_dir = pathlib.Path(workdir) / "pretrain"
  pre_configs = [local(c) for c in configs]
  _, params_K = _train_members(
      local(base), pre_configs, pre_dir,
      member_dirs=[pre_dir] if len(configs) == 1 else [pre_dir / lb for lb in labels],
      labels=labels, resume=resume, progress=lambda line: progress(f"pretrain {line}"),
      problem=problem, dataset=None, config_json=None, group_size=group_size,
      shared_order=shared_order)
  model = build_model(local(base), problem.n_cols, problem.n_side, tuple(pre_configs),
                      problem.fit_data.n_rows)
  means = _reconstruction_row_means(model, float(base.rating_divisor), params_K,
                                    problem.fit_data, problem.rating_scale,
                                    base.eval_batch_size)
  return {**params_K, "gconv_rowmean": means}


def _reconstruction_row_means(model, div: float, params_K, data, rating_scale,
                              block: int) -> jax.Array:
  """[K, R]: each member's mean predicted rating of every row, over all columns."""
  n = data.n_rows
  rows = jnp.arange(-(-n // block) * block, dtype=jnp.int32)
  rows = jnp.where(rows < n, rows, n).reshape(-1, block)

  @jax.jit
  def run(params_K, data):
    def body(_, rows_B):
      x = data.inputs(rows_B, div)
      out = engine.over_members(lambda p: model.apply(p, x), params_K) * div
      return None, jnp.clip(out, *rating_scale).mean(-1)
    _, m = jax.lax.scan(body, None, rows)  # [blocks, K, B]
    return jnp.moveaxis(m, 1, 0).reshape(m.shape[1], -1)[:, :n]

  return run(params_K, data)


def _learning_rates(base: Config, configs, steps_per_epoch: int, step: int) -> np.ndarray:
  """Each member's learning rate at `step` (its rate times the schedule)."""
  factor = optim.make_schedule(base, steps_per_epoch, 1.0)
  factor = float(factor(step)) if callable(factor) else float(factor)
  return np.array([c.learning_rate * factor for c in configs])


def _refit(base, task, seeds, order_seed, problem, batcher, mesh, hyper, best_epoch,
           progress):
  """Retrains every member from the same initialisation on the whole training
  split (validation ratings included) for its selected number of epochs, on
  the compute path the training used; member k's parameters are taken at
  epoch best_epoch[k]."""
  progress(f"refit on all {problem.n_train} training ratings for "
           f"{', '.join(str(int(e)) for e in best_epoch)} epochs")
  n_full = int(problem.full_data.train_rows.shape[0])
  refit_batch = base.batch_size if mesh else min(base.batch_size, n_full)
  tx = optim.make_optimizer(base, -(-n_full // refit_batch))
  batcher = dataclasses.replace(batcher, batch_size=refit_batch)
  rows = problem.full_data if mesh is None else sharding.replicate(mesh, problem.full_data)
  data = batcher.data(rows)
  epoch_fn = engine.make_epoch(task, tx, batcher, shuffle=base.shuffle)
  state = _shard(mesh, engine.init_state(task, tx, seeds, order_seed))
  kept = loop.copy_tree(state.params)  # the epoch donates the state
  for epoch in range(1, int(best_epoch.max()) + 1):
    state, m = epoch_fn(state, data, hyper)
    kept = loop.select(np.asarray(best_epoch) == epoch, state.params, kept)
  if not np.all(np.isfinite(jax.device_get(m["loss"]))):
    raise TrainingDiverged("the refit on the whole training split diverged; "
                           "run without --refit")
  return kept


def train_and_evaluate(config: Config, workdir, *, resume: bool = False,
                       progress: Callable[[str], None] = print,
                       problem: Optional[Problem] = None,
                       dataset: Optional[Dataset] = None) -> dict:
  """Trains `config` alone, selects the epoch on validation, writes the
  workdir and returns its metrics (also in workdir/metrics.json). Pass a
  `dataset` (e.g. from `recae_jax.data.from_frame`) to train on it."""
  config = config.validate()
  if config.is_blend:
    raise UserError("--ensemble/--blend_* runs are blends of several runs: use "
                    "recae_jax.blend.train_and_evaluate_blend (experiments/train.py does)")
  workdir = wd.ensure_writable(workdir)
  res = train_members(config, [config], workdir, member_dirs=[workdir], labels=["run"],
                      resume=resume, progress=progress, problem=problem, dataset=dataset)[0]
  progress(f"test RMSE {res['test_rmse']:.4f}  MAE {res['test_mae']:.4f}  (epoch "
           f"{res['best_epoch']}, {res['n_test_fallback']} fallback pairs)")
  return res

