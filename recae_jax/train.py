"""The training engine: pure jitted steps, one compiled call per epoch.

    train_step(state, rows_B) -> (state, metrics)    pure; inside the epoch's scan
    train_epoch(state, data)  -> (state, metrics)    jit, state donated, lax.scan
    evaluate(params, data, blocks, ...) -> sums      jit, lax.scan over row blocks

`train_and_evaluate(config, workdir)` wires them to the data, selects the
epoch on a validation carve-out of the training split, checkpoints with
orbax, and reports the selected epoch's test metrics.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import json
import math
import pathlib
import time
from typing import Any, Callable, Optional

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax

from recae_jax import checkpoint as ckpt_lib
from recae_jax import losses
from recae_jax import memory
from recae_jax import sharding
from recae_jax.config import Config
from recae_jax.data import sparse
from recae_jax.data.types import Ratings
from recae_jax.errors import UserError
from recae_jax.models import AutoEncoder, build_model
from recae_jax.pairs import PairBlocks, build_pair_blocks, fallback_values

# How many times each jitted function was traced (tests pin "compiles once").
TRACE_COUNTS: collections.Counter = collections.Counter()


class TrainingDiverged(UserError):
  """The loss became NaN/inf; the last good checkpoint is left in place."""


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  opt_state: Any
  rng: jax.Array  # raw uint32[2] key, so orbax can save it


@flax.struct.dataclass
class RowData:
  """Everything on device that a batch is made from."""

  source: sparse.RowSource
  side_RxS: Optional[jax.Array]  # side features per row (+ padding row) or None
  train_rows: jax.Array          # int32 rows with >= 1 training rating

  @property
  def n_rows(self) -> int:
    return self.source.n_rows

  def batch(self, rows_B):
    v_BxN, m_BxN = self.source.gather(rows_B)
    side = None if self.side_RxS is None else self.side_RxS[rows_B]
    return v_BxN, m_BxN, side


# ----------------------------------------------------------------- optimizers

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


def make_schedule(config: Config, steps_per_epoch: int):
  lr = config.learning_rate
  if config.schedule == "constant":
    return lr
  if config.schedule == "step":
    return optax.exponential_decay(lr, config.decay_epochs * steps_per_epoch,
                                   config.decay_rate, staircase=True)
  return optax.cosine_decay_schedule(lr, max(1, config.epochs * steps_per_epoch))


def make_optimizer(config: Config, steps_per_epoch: int) -> optax.GradientTransformation:
  """optax chain: [accumulate] → [clip] → [coupled weight decay] → optimizer."""
  lr = make_schedule(config, steps_per_epoch)
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
  else:  # momentum
    chain.append(optax.sgd(lr, momentum=config.momentum))
  return optax.chain(*chain)


# --------------------------------------------------------------- pure steps

def make_train_step(model: AutoEncoder, tx: optax.GradientTransformation,
                    config: Config, mesh=None) -> Callable:
  """Returns pure `train_step(state, rows_B, data) -> (state, (loss, sse, count))`.

  `rows_B` are row ids; id `data.n_rows` is a padding row with weight 0.
  Jit it with `jax.jit(step, donate_argnums=0)` to use it on its own; the
  epoch function scans it. With a `mesh`, the batch is split over 'data'.
  """
  div = config.rating_divisor
  l2 = config.l2
  n_cols = model.n_outputs

  def loss_fn(params, v_BxN, m_BxN, w_B, side, rng):
    x_BxN = v_BxN / div
    pred_BxN = model.apply({"params": params}, x_BxN, m_BxN, side, train=True,
                           rngs={"dropout": rng})
    sse, count = losses.masked_sse(pred_BxN, x_BxN, m_BxN, w_B)
    if config.loss_denominator == "observed":
      denom = jnp.maximum(1.0, count)
    else:  # torch MSELoss over every column of the (real) rows
      denom = jnp.maximum(1.0, jnp.sum(w_B)) * n_cols
    loss = sse / denom
    if l2 > 0:
      loss = loss + l2 * losses.l2_penalty(params)
    return loss, (sse, count)

  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

  def apply_grads(state, grads):
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    return optax.apply_updates(state.params, updates), opt_state

  def train_step(state: TrainState, rows_B, data: RowData):
    rows_B = sharding.constrain_batch(mesh, rows_B)
    w_B = (rows_B < data.n_rows).astype(jnp.float32)
    v_BxN, m_BxN, side = jax.tree.map(functools.partial(sharding.constrain_batch, mesh),
                                      data.batch(rows_B))
    rng = jax.random.fold_in(state.rng, state.step)
    (loss, (sse, count)), grads = grad_fn(state.params, v_BxN, m_BxN, w_B, side, rng)
    params, opt_state = apply_grads(state, grads)
    state = state.replace(params=params, opt_state=opt_state)
    for k in range(config.dense_refeeding):
      # DeepRecommender's dense re-feeding: f(x) is a dense rating vector the
      # model should reproduce, so train on it as input and target.
      y_BxN = jax.lax.stop_gradient(
          model.apply({"params": state.params}, v_BxN / div, m_BxN, side)) * div
      full_BxN = jnp.ones_like(m_BxN)
      _, grads = grad_fn(state.params, y_BxN, full_BxN, w_B, side,
                         jax.random.fold_in(rng, k + 1))
      params, opt_state = apply_grads(state, grads)
      state = state.replace(params=params, opt_state=opt_state)
    return state.replace(step=state.step + 1), (loss, sse, count)

  return train_step


def make_train_epoch(model: AutoEncoder, tx: optax.GradientTransformation,
                     config: Config, batch_size: int, mesh=None) -> Callable:
  """Returns jitted `train_epoch(state, data) -> (state, metrics)`: one call,
  a `lax.scan` of `train_step` over a shuffled, padded [K, B] grid of rows."""
  div = config.rating_divisor
  train_step = make_train_step(model, tx, config, mesh)

  @functools.partial(jax.jit, donate_argnums=0)
  def train_epoch(state: TrainState, data: RowData):
    TRACE_COUNTS["train_epoch"] += 1
    n_train = data.train_rows.shape[0]
    n_batches = -(-n_train // batch_size)
    rng, perm_rng = jax.random.split(state.rng)
    perm = (data.train_rows[jax.random.permutation(perm_rng, n_train)]
            if config.shuffle else data.train_rows)
    pad = jnp.full((n_batches * batch_size - n_train,), data.n_rows, jnp.int32)
    rows_KxB = jnp.concatenate([perm, pad]).reshape(n_batches, batch_size)
    state, (loss_K, sse_K, count_K) = jax.lax.scan(
        lambda s, rows: train_step(s, rows, data), state.replace(rng=rng), rows_KxB)
    return state, {"loss": jnp.mean(loss_K), "sse": jnp.sum(sse_K) * div * div,
                   "count": jnp.sum(count_K)}

  return train_epoch


def make_evaluate(model: AutoEncoder, config: Config,
                  rating_scale: tuple[float, float], mesh=None) -> Callable:
  """Returns jitted `evaluate(params, data, blocks, target, fb_mask, fb_value)`.

  Predicts every pair (clipped to the rating scale), substitutes fallbacks,
  and sums SSE / absolute error / count on device.
  """
  div = config.rating_divisor

  @jax.jit
  def evaluate(params, data: RowData, blocks: PairBlocks, target_n, fb_mask_n,
               fb_value_n):
    TRACE_COUNTS["evaluate"] += 1

    def block(_, xs):
      rows_B, local_P, cols_P = xs
      v_BxN, m_BxN, side = jax.tree.map(functools.partial(sharding.constrain_batch, mesh),
                                        data.batch(sharding.constrain_batch(mesh, rows_B)))
      out_BxN = model.apply({"params": params}, v_BxN / div, m_BxN, side)
      return None, out_BxN[local_P, cols_P] * div

    _, pred_KxP = jax.lax.scan(block, None, (blocks.rows_KxB, blocks.local_KxP,
                                             blocks.cols_KxP))
    return score_pairs(pred_KxP, blocks, target_n, fb_mask_n, fb_value_n, rating_scale)

  return evaluate


def score_pairs(pred_KxP, blocks: PairBlocks, target_n, fb_mask_n, fb_value_n,
                rating_scale: tuple[float, float]):
  """Block-ordered predictions → (pred_n in pair order, clipped, fallbacks
  substituted; {"sse", "abs", "count"})."""
  lo, hi = rating_scale
  pred_n = jnp.zeros((blocks.n_pairs,), jnp.float32).at[
      blocks.index_KxP.reshape(-1)].set(pred_KxP.reshape(-1), mode="drop")
  pred_n = jnp.where(fb_mask_n, fb_value_n, jnp.clip(pred_n, lo, hi))
  err = pred_n - target_n
  return pred_n, {"sse": jnp.sum(err * err), "abs": jnp.sum(jnp.abs(err)),
                  "count": jnp.float32(blocks.n_pairs)}


def init_state(model: AutoEncoder, tx, data: RowData, seed: int) -> TrainState:
  rng = jax.random.PRNGKey(seed)
  init_rng, rng = jax.random.split(rng)
  rows = jnp.zeros((1,), jnp.int32)
  v, m, side = data.batch(rows)
  params = model.init(init_rng, v, m, side)["params"]
  return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                    opt_state=tx.init(params), rng=rng)


# ------------------------------------------------------------ host problem

@dataclasses.dataclass
class EvalSet:
  """One set of pairs to predict, ready for `evaluate`."""

  ratings: Ratings
  blocks: PairBlocks
  target: jax.Array
  fb_mask: jax.Array
  fb_value: jax.Array
  n_fallback: int


@dataclasses.dataclass
class Problem:
  """A config's data, oriented and placed on device."""

  fit_data: RowData     # rows built from train minus validation
  full_data: RowData    # rows built from the whole training split (test inputs)
  valid: Optional[EvalSet]
  test: EvalSet
  n_cols: int
  rating_scale: tuple[float, float]
  n_fit: int
  n_train: int
  dataset_files: dict
  dataset_name: str


def _orient(r: Ratings, orientation: str):
  return (r.items, r.users) if orientation == "item" else (r.users, r.items)


def _side_matrix(config: Config, dataset, train: Ratings) -> Optional[np.ndarray]:
  if not config.side_features:
    return None
  from recae_jax.data import features  # local: only side-feature runs need it
  parts = []
  for name in config.side_features:
    if name == "item_genres":
      if config.orientation != "item":
        raise UserError("--side_features=item_genres needs --orientation=item")
      parts.append(features.item_genres(dataset))
    else:
      if config.orientation != "user":
        raise UserError(f"--side_features={name} needs --orientation=user")
      if name == "genre_counts":
        parts.append(features.user_genre_counts(train, features.item_genres(dataset)))
      else:
        parts.append(features.user_attributes(dataset))
  side = np.concatenate(parts, axis=1).astype(np.float32)
  if config.side_scaling == "standardize":
    # Statistics over all rows: the features themselves come from training data.
    side = (side - side.mean(0)) / np.maximum(side.std(0), 1e-6)
  return np.concatenate([side, np.zeros((1, side.shape[1]), np.float32)])


def _row_data(config: Config, dataset, ratings: Ratings) -> RowData:
  csr = sparse.ratings_to_csr(ratings, config.orientation)
  source = sparse.make_row_source(csr, config.dense_budget_mb << 20)
  side = _side_matrix(config, dataset, ratings)
  rows = np.flatnonzero(csr.row_lengths() > 0).astype(np.int32)
  return RowData(source, None if side is None else jnp.asarray(side), jnp.asarray(rows))


def _eval_set(config: Config, inputs: Ratings, pairs: Ratings, n_rows: int) -> EvalSet:
  rows, cols = _orient(pairs, config.orientation)
  need, value = fallback_values(inputs, pairs.users, pairs.items, config.fallback)
  return EvalSet(pairs, build_pair_blocks(rows, cols, n_rows, config.eval_batch_size),
                 jnp.asarray(pairs.ratings), jnp.asarray(need), jnp.asarray(value),
                 int(need.sum()))


def load_split(config: Config):
  from recae_jax.data import movielens, splits
  dataset = movielens.load_dataset(config.dataset, config.data_dir)
  split = splits.make_split(
      dataset, config.split, test_fraction=config.test_fraction,
      time_quantile=config.time_quantile, valid_fraction=config.valid_fraction,
      seed=config.split_seed, min_user_ratings=config.min_user_ratings,
      min_item_ratings=config.min_item_ratings)
  return dataset, split


def build_problem(config: Config, dataset, split) -> Problem:
  fit = split.train
  full = fit if split.valid is None else fit.concat(split.valid)
  fit_data = _row_data(config, dataset, fit)
  full_data = fit_data if split.valid is None else _row_data(config, dataset, full)
  n_rows = fit_data.n_rows
  n_cols = fit.n_users if config.orientation == "item" else fit.n_items
  valid = None
  if split.valid is not None and len(split.valid):
    valid = _eval_set(config, fit, split.valid, n_rows)
  return Problem(fit_data, full_data, valid, _eval_set(config, full, split.test, n_rows),
                 n_cols, tuple(dataset.rating_scale), len(fit), len(full),
                 dict(dataset.files), dataset.name)


# ------------------------------------------------------------ the full run

def _errors(sums) -> dict:
  n = max(1.0, float(sums["count"]))
  return {"rmse": math.sqrt(float(sums["sse"]) / n), "mae": float(sums["abs"]) / n}


def user_mean_rmse(ratings: Ratings, pred: np.ndarray) -> float:
  """Mean over users of each user's RMSE (seed system S3's reported 'loss')."""
  err2 = (pred.astype(np.float64) - ratings.ratings) ** 2
  cnt = np.bincount(ratings.users, minlength=ratings.n_users)
  sse = np.bincount(ratings.users, weights=err2, minlength=ratings.n_users)
  has = cnt > 0
  return float(np.mean(np.sqrt(sse[has] / cnt[has]))) if has.any() else float("nan")


_RESUMABLE_CHANGES = {"epochs", "patience", "checkpoint_every"}


def _check_workdir(config: Config, workdir: pathlib.Path, resume: bool):
  from recae_jax.config import load_config
  cfg_path = workdir / "config.json"
  has_ckpt = (workdir / "checkpoints").exists() and any((workdir / "checkpoints").iterdir())
  if not has_ckpt:
    return
  if not resume:
    raise UserError(f"workdir {workdir} already holds a run; pass --resume to continue "
                    "it or choose a new --workdir")
  if cfg_path.exists():
    old = load_config(cfg_path).to_json()
    new = config.to_json()
    diff = sorted(k for k in new if old.get(k) != new[k] and k not in _RESUMABLE_CHANGES)
    if diff:
      raise UserError(f"workdir {workdir} holds a run with a different config "
                      f"({', '.join(diff)}); use a new --workdir")


def memory_report() -> dict:
  """Peak host RSS of this process so far, and the device's peak bytes in use
  (None where the backend keeps no statistics, e.g. CPU)."""
  import resource
  stats = jax.local_devices()[0].memory_stats() or {}
  return {"peak_host_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
          "device_peak_bytes": stats.get("peak_bytes_in_use")}


def train_and_evaluate(config: Config, workdir, *, resume: bool = False,
                       progress: Callable[[str], None] = print,
                       problem: Optional[Problem] = None) -> dict:
  """Trains `config`, selects the epoch on validation, writes the workdir.

  Returns the final metrics (also written to workdir/metrics.json). Ensemble
  and blend configs are handled by `recae_jax.ensemble`.
  """
  from recae_jax import workdir as wd
  config = config.validate()
  if config.ensemble > 1 or config.blend_uautorec or config.blend_knn:
    from recae_jax import ensemble
    return ensemble.train_and_evaluate_ensemble(config, workdir, resume=resume,
                                                progress=progress)
  workdir = wd.ensure_writable(workdir)
  _check_workdir(config, workdir, resume)
  wd.write_json(workdir / "config.json", config.to_json())
  if problem is None:
    dataset, split = load_split(config)
    problem = build_problem(config, dataset, split)
  wd.write_json(workdir / "provenance.json", wd.provenance(problem.dataset_files))

  model = build_model(config, problem.n_cols)
  n_train_rows = int(problem.fit_data.train_rows.shape[0])
  if n_train_rows == 0:
    raise UserError(f"dataset {config.dataset!r} split {config.split!r} has no training ratings")
  mesh = sharding.make_mesh(config.data_parallel, config.model_parallel)
  batch_size = config.batch_size if mesh else min(config.batch_size, n_train_rows)
  steps_per_epoch = -(-n_train_rows // batch_size)
  tx = make_optimizer(config, steps_per_epoch)
  evaluate = make_evaluate(model, config, problem.rating_scale, mesh)
  if config.compute != "dense" and mesh is None:
    from recae_jax import sparse_autorec  # single-device sparse-aware path
    train_epoch, epoch_data, compute_info = sparse_autorec.make_epoch_for(
        config, config.compute, model, tx, problem.fit_data, batch_size,
        batching=config.sparse_batching)
    progress(f"compute: {compute_info['compute']}")
    if compute_info["compute"] == "sparse":  # outputs at the evaluated pairs only
      evaluate = sparse_autorec.make_evaluate(model, config, problem.rating_scale)
  else:
    if config.compute != "dense":
      progress("compute: dense (the sparse path is single-device)")
    train_epoch = make_train_epoch(model, tx, config, batch_size, mesh)
    epoch_data, compute_info = None, {"compute": "dense"}

  abstract_state = jax.eval_shape(lambda: init_state(model, tx, problem.fit_data,
                                                     config.seed))
  mem = memory.estimate(
      config, model, abstract_state, problem, batch_size, compute_info["compute"],
      getattr(epoch_data, "max_entries", None),
      **({} if mesh is None else {"data_parallel": mesh.shape["data"],
                                  "model_parallel": mesh.shape["model"]}))
  memory.check_budget(config, mem, batch_size)  # before the state is allocated
  state = init_state(model, tx, problem.fit_data, config.seed)
  if mesh is not None:
    sharding.check_divisible(mesh, batch_size, config.eval_batch_size, problem.n_cols,
                             int(state.params["enc_0_kernel"].shape[0]))
    problem = dataclasses.replace(
        problem, fit_data=sharding.replicate(mesh, problem.fit_data),
        full_data=sharding.replicate(mesh, problem.full_data))
    state = sharding.shard_state(mesh, state)
    progress(f"mesh: {dict(mesh.shape)} over {mesh.devices.size} devices")
  if epoch_data is None:
    epoch_data = problem.fit_data
  best_params = state.params
  meta = {"epoch": 0, "best_epoch": 0, "best_valid_rmse": None, "bad_epochs": 0}
  ckpts = ckpt_lib.Checkpoints(workdir / "checkpoints")
  ckpts.check_space({"state": state, "best_params": best_params})
  history_path = workdir / "metrics.jsonl"
  if resume:
    restored = ckpts.restore_latest(ckpt_lib.abstract_like(
        {"state": state, "best_params": best_params}))
    if restored is not None:
      tree, meta = restored
      state, best_params = tree["state"], tree["best_params"]
      if mesh is not None:
        state = sharding.shard_state(mesh, state)
        best_params = sharding.shard_state(mesh, state.replace(params=best_params)).params
      progress(f"resumed from epoch {meta['epoch']} in {workdir}")
  history = _read_history(history_path, upto=meta["epoch"])
  _write_history(history_path, history)

  def save():
    if meta["epoch"] not in ckpts.steps():
      ckpts.save(meta["epoch"], {"state": state, "best_params": best_params}, dict(meta))

  t0 = time.perf_counter()
  compiled = train_epoch.lower(state, epoch_data).compile()
  compile_seconds = time.perf_counter() - t0
  epoch_seconds = []
  start_epoch = meta["epoch"]
  if config.patience and meta["bad_epochs"] >= config.patience:
    start_epoch = config.epochs  # the resumed run had already stopped early
  t_train = time.perf_counter()
  for epoch in range(start_epoch + 1, config.epochs + 1):
    t = time.perf_counter()
    state, m = compiled(state, epoch_data)
    row = {"epoch": epoch}
    vs = None
    if problem.valid is not None:
      v = problem.valid
      _, vs = evaluate(state.params, problem.fit_data, v.blocks, v.target, v.fb_mask,
                       v.fb_value)
    m, vs = jax.device_get((m, vs))  # the one host sync per epoch
    row.update(train_loss=float(m["loss"]),
               train_rmse=math.sqrt(float(m["sse"]) / max(1.0, float(m["count"]))))
    if not np.isfinite(row["train_loss"]):
      save_note = (f"last good checkpoint: epoch {meta['epoch']}" if ckpts.steps()
                   else "no checkpoint was written yet")
      bad = [k for k, v in jax.device_get(state.params).items()
             if not np.all(np.isfinite(v))]
      where = f"non-finite parameters: {', '.join(sorted(bad))}" if bad else \
          "parameters still finite (non-finite data or loss)"
      raise TrainingDiverged(
          f"training diverged at epoch {epoch}: loss is {row['train_loss']}, {where} "
          f"({save_note} in {workdir}/checkpoints); lower --learning_rate or add --grad_clip")
    if vs is not None:
      ve = _errors(vs)
      row.update(valid_rmse=ve["rmse"], valid_mae=ve["mae"])
      best = meta["best_valid_rmse"]
      if best is None or ve["rmse"] < best:
        meta.update(best_valid_rmse=ve["rmse"], best_epoch=epoch, bad_epochs=0)
        best_params = jax.tree.map(jnp.copy, state.params)
      else:
        meta["bad_epochs"] += 1
    else:  # no validation data: the last epoch is the selected one
      meta["best_epoch"] = epoch
      best_params = state.params
    meta["epoch"] = epoch
    dt = time.perf_counter() - t
    epoch_seconds.append(dt)
    row["seconds"] = dt
    history.append(row)
    wd.append_jsonl(history_path, row)
    progress(_progress_line(row, config.epochs, epoch_seconds))
    stop = config.patience and meta["bad_epochs"] >= config.patience
    if epoch % config.checkpoint_every == 0 or epoch == config.epochs or stop:
      save()
    if stop:
      progress(f"early stop: no validation gain for {config.patience} epochs "
               f"(best epoch {meta['best_epoch']})")
      break
  train_seconds = time.perf_counter() - t_train
  save()
  ckpts.close()
  # Only best_params is needed from here: free the training state before a
  # refit allocates its own (Netflix-size I-AutoRec: 5.8 GB of parameters
  # and Adam moments).
  state = compiled = epoch_data = None

  test_params = best_params
  if config.refit and problem.valid is not None and meta["best_epoch"] > 0:
    # Retrain from the same initialisation on the whole training split
    # (validation ratings included) for the selected number of epochs, on
    # the compute path the training used.
    progress(f"refit on all {problem.n_train} training ratings for "
             f"{meta['best_epoch']} epochs")
    n_full = int(problem.full_data.train_rows.shape[0])
    refit_batch = config.batch_size if mesh else min(config.batch_size, n_full)
    refit_tx = make_optimizer(config, -(-n_full // refit_batch))
    refit_data = problem.full_data
    if compute_info["compute"] == "sparse":
      from recae_jax import sparse_autorec
      refit_epoch, refit_data, _ = sparse_autorec.make_epoch_for(
          config, "sparse", model, refit_tx, problem.full_data, refit_batch,
          batching=config.sparse_batching)
    else:
      refit_epoch = make_train_epoch(model, refit_tx, config, refit_batch, mesh)
    refit_state = init_state(model, refit_tx, problem.full_data, config.seed)
    if mesh is not None:
      refit_state = sharding.shard_state(mesh, refit_state)
    for _ in range(meta["best_epoch"]):
      refit_state, m = refit_epoch(refit_state, refit_data)
    if not np.isfinite(float(m["loss"])):
      raise TrainingDiverged("the refit on the whole training split diverged; "
                             "run without --refit")
    test_params = refit_state.params

  t = problem.test
  pred, ts = evaluate(test_params, problem.full_data, t.blocks, t.target, t.fb_mask,
                      t.fb_value)
  pred, ts = jax.device_get((pred, ts))
  te = _errors(ts)
  results = {
      "test_rmse": te["rmse"], "test_mae": te["mae"],
      "test_rmse_user_mean": user_mean_rmse(t.ratings, pred),
      "best_epoch": meta["best_epoch"], "best_valid_rmse": meta["best_valid_rmse"],
      "epochs_run": meta["epoch"], "refit": bool(config.refit and problem.valid is not None),
      "n_train": problem.n_train, "n_fit": problem.n_fit,
      "n_valid": 0 if problem.valid is None else len(problem.valid.ratings),
      "n_test": len(t.ratings), "n_test_fallback": t.n_fallback,
      "train_seconds": train_seconds, "compile_seconds": compile_seconds,
      "epoch_seconds_median": float(np.median(epoch_seconds)) if epoch_seconds else None,
      "dataset": problem.dataset_name, "dataset_files": problem.dataset_files,
      "device": jax.devices()[0].device_kind, "compute": compute_info,
      "estimated_peak_mb": round(mem["total_mb"], 1), **memory_report(),
  }
  # Multi-host: process 0 writes the workdir's files (save_npy / write_json).
  wd.save_npy(workdir / "test_pred.npy", pred)
  if problem.valid is not None:
    v = problem.valid
    vpred, _ = evaluate(best_params, problem.fit_data, v.blocks, v.target, v.fb_mask,
                        v.fb_value)
    vpred = jax.device_get(vpred)  # every process: it may be a collective
    wd.save_npy(workdir / "valid_pred.npy", vpred)
  wd.write_json(workdir / "metrics.json", results)
  try:
    from recae_jax import plots
    if wd.is_primary():
      plots.plot_training_curves({workdir.name: history}, workdir / "plots" / "loss.png")
  except ImportError:  # matplotlib missing: plots are optional
    pass
  wd.barrier("train-and-evaluate-done")  # others may read these files next (ensembles)
  progress(f"test RMSE {te['rmse']:.4f}  MAE {te['mae']:.4f}  (epoch {meta['best_epoch']}, "
           f"{t.n_fallback} fallback pairs)")
  return results


def _progress_line(row: dict, epochs: int, epoch_seconds: list) -> str:
  eta = np.median(epoch_seconds) * (epochs - row["epoch"])
  valid = f"  valid RMSE {row['valid_rmse']:.4f}" if "valid_rmse" in row else ""
  return (f"epoch {row['epoch']:4d}/{epochs}  loss {row['train_loss']:.4f}{valid}  "
          f"{row['seconds']:.2f}s  ETA {eta:.0f}s")


def _read_history(path: pathlib.Path, upto: int) -> list[dict]:
  if not path.exists():
    return []
  rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
  return [r for r in rows if r["epoch"] <= upto]


def _write_history(path: pathlib.Path, rows: list[dict]) -> None:
  from recae_jax import workdir as wd
  if not wd.is_primary():
    return  # multi-host: process 0 owns the workdir's files
  with wd.atomic_path(path) as tmp:
    tmp.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in rows))
