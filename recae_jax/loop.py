"""The one host loop: epochs, selection on validation, patience, divergence,
checkpoints, history and progress, for K >= 1 members at once.

    result = fit(epoch, state, data, hyper, validate, ...)

Per epoch: one compiled epoch call, one validation call, ONE host sync.
Selection is per member: member k's best parameters are kept with
`jnp.where` on the member axis whenever its validation metric improves; a
member out of patience stops being selected (its slot keeps training inside
the shared compiled epoch, which costs time but no correctness). Without
validation data the last epoch is the selected one.

Checkpoints (orbax, see `checkpoint`) hold {"state", "best_params"} and the
bookkeeping as JSON (format 2: per-member lists). `resume=True` restores the
newest readable one and continues; the history files are cut back to it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import pathlib
import signal
import threading
import time
from typing import Any, Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from recae_jax import checkpoint as ckpt_lib
from recae_jax import engine
from recae_jax import workdir as wd
from recae_jax.errors import Interrupted, UserError

CHECKPOINT_FORMAT = 2


class TrainingDiverged(UserError):
  """The loss became NaN/inf; the last good checkpoint is left in place."""


@dataclasses.dataclass
class FitResult:
  best_params: Any             # stacked [K, ...]
  best_epoch: np.ndarray       # [K]
  best_metric: Optional[np.ndarray]  # [K] validation metric at best_epoch
  epochs_run: np.ndarray       # [K]
  histories: list[list[dict]]
  train_seconds: float
  compile_seconds: float
  epoch_seconds: list[float]


@contextlib.contextmanager
def stop_requests():
  """While training: SIGINT (Ctrl-C) and SIGTERM (what schedulers send before
  preemption) only set a flag, read at the next epoch boundary; a second
  Ctrl-C stops at once. Yields a dict whose "signal" is the signal received."""
  got = {"signal": None}
  if threading.current_thread() is not threading.main_thread():
    yield got  # signal handlers can only be installed from the main thread
    return

  def handler(signum, frame):
    del frame
    if got["signal"] is not None and signum == signal.SIGINT:
      raise KeyboardInterrupt
    got["signal"] = signum

  old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
  try:
    yield got
  finally:
    for s, h in old.items():
      signal.signal(s, h)


# Copies a pytree in one compiled call (eager jnp.copy compiles once per leaf).
copy_tree = jax.jit(lambda tree: jax.tree.map(jnp.copy, tree))


def select(mask_K, new, old):
  """Per member: a copy of new where mask_K else old (mask over the leading axis)."""
  mask_K = np.asarray(mask_K, bool)
  if mask_K.all():
    return copy_tree(new)
  if not mask_K.any():
    return old
  m = jnp.asarray(mask_K)
  return jax.tree.map(
      lambda n, o: jnp.where(m.reshape((-1,) + (1,) * (n.ndim - 1)), n, o), new, old)


def restore_best(checkpoint_dir: pathlib.Path, task, tx, seeds, order_seed,
                 workdir) -> tuple[Any, dict]:
  """(best_params stacked [K, ...], bookkeeping) of a run's newest readable
  checkpoint, for inference; a UserError if there is none."""
  abstract = jax.eval_shape(lambda: (lambda s: {"state": s, "best_params": s.params})(
      engine.init_state(task, tx, seeds, order_seed)))
  ckpts = ckpt_lib.Checkpoints(checkpoint_dir)
  try:
    restored = ckpts.restore_latest(abstract, fmt=CHECKPOINT_FORMAT)
  finally:
    ckpts.close()
  if restored is None:
    raise UserError(f"workdir {workdir} has no checkpoint")
  tree, meta = restored
  return tree["best_params"], dict(meta)


def read_history(path: pathlib.Path, upto: int) -> list[dict]:
  if not path.exists():
    return []
  rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
  return [r for r in rows if r["epoch"] <= upto]


def write_history(path: pathlib.Path, rows: list[dict]) -> None:
  if not wd.is_primary():
    return  # multi-host: process 0 owns the workdir's files
  path.parent.mkdir(parents=True, exist_ok=True)
  with wd.atomic_path(path) as tmp:
    tmp.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in rows))


def _row(epoch: int, m: dict, i: int, vrow: Optional[dict], seconds: float) -> dict:
  row = {"epoch": epoch, "train_loss": float(m["loss"][i])}
  if "sse" in m:
    row["train_rmse"] = float(np.sqrt(m["sse"][i] / max(1.0, float(m["count"][i]))))
  for key, v in m.items():
    if key not in ("loss", "sse", "count"):
      row[key] = float(v[i])
  if vrow is not None:
    row.update({k: float(v[i]) for k, v in vrow.items() if k != "metric"})
  row["seconds"] = seconds
  return row


class TensorBoard:
  """One event-file run per member (tensorboardX, an optional extra): per
  epoch the train loss, the validation metrics, the learning rate and the
  epoch seconds."""

  def __init__(self, dirs: Sequence[pathlib.Path]):
    try:
      from tensorboardX import SummaryWriter  # optional dependency
    except ImportError:
      raise UserError("--tensorboard needs tensorboardX: pip install "
                      "'recae_jax[tensorboard]'") from None
    self.writers = [SummaryWriter(logdir=str(d)) for d in dirs] if wd.is_primary() else []

  def log(self, i: int, row: dict, lr: float) -> None:
    if not self.writers:
      return
    w, epoch = self.writers[i], row["epoch"]
    for key, value in row.items():
      if key != "epoch":
        w.add_scalar(key, value, epoch)
    w.add_scalar("learning_rate", lr, epoch)

  def close(self) -> None:
    for w in self.writers:
      w.close()


def fit(epoch_fn, state, data, hyper, *, epochs: int, validate: Optional[Callable],
        patience: Sequence[int], checkpoint_dir: Optional[pathlib.Path],
        history_paths: Sequence,
        resume: bool = False, checkpoint_every: int = 10, eval_every: int = 1,
        higher_is_better: bool = False, labels: Sequence[str] = (),
        progress: Callable[[str], None] = print, place=None,
        tensorboard_dirs: Sequence = (), lr_at: Optional[Callable] = None) -> FitResult:
  """Trains until `epochs` or every member is out of patience.

  validate(params_K) -> {"metric": [K], other history fields: [K]} (device
  arrays are fine), or None without validation data. `place(tree)` re-places a
  restored state on the mesh. `checkpoint_dir=None`: no checkpoints.
  `tensorboard_dirs` (one per member) also log each epoch there, with the
  learning rate `lr_at(step) -> [K]`."""
  tb = TensorBoard(tensorboard_dirs) if tensorboard_dirs else None
  k = state.n_members
  labels = list(labels) or [f"k{i:02d}" for i in range(k)]
  patience = np.asarray(patience, np.int64)
  sign = -1.0 if higher_is_better else 1.0
  meta = {"format": CHECKPOINT_FORMAT, "epoch": 0, "best_epoch": [0] * k,
          "best_metric": [None] * k, "bad_epochs": [0] * k}
  best_params = copy_tree(state.params)  # the epoch donates the state
  ckpts = None if checkpoint_dir is None else ckpt_lib.Checkpoints(checkpoint_dir)
  if ckpts is not None:
    ckpts.check_space({"state": state, "best_params": best_params})
  if resume and ckpts is not None:
    restored = ckpts.restore_latest(ckpt_lib.abstract_like(
        {"state": state, "best_params": best_params}), fmt=CHECKPOINT_FORMAT)
    if restored is not None:
      tree, meta = restored
      state, best_params = tree["state"], copy_tree(tree["best_params"])
      if place is not None:
        state, best_params = place(state), place(state.replace(params=best_params)).params
      progress(f"resumed from epoch {meta['epoch']} in {checkpoint_dir.parent}")
  histories = [read_history(pathlib.Path(p), upto=meta["epoch"]) for p in history_paths]
  for p, h in zip(history_paths, histories):
    write_history(pathlib.Path(p), h)
  best = np.array([np.inf if v is None else sign * v for v in meta["best_metric"]])
  best_epoch = np.asarray(meta["best_epoch"], np.int64)
  bad = np.asarray(meta["bad_epochs"], np.int64)
  active = ~((patience > 0) & (bad >= patience))

  def save():
    if ckpts is not None and meta["epoch"] not in ckpts.steps():
      meta.update(best_epoch=best_epoch.tolist(), bad_epochs=bad.tolist(),
                  best_metric=[None if not np.isfinite(b) else float(sign * b)
                               for b in best])
      ckpts.save(meta["epoch"], {"state": state, "best_params": best_params}, dict(meta))

  t0 = time.perf_counter()
  compiled = epoch_fn.lower(state, data, hyper).compile()
  compile_seconds = time.perf_counter() - t0
  epoch_seconds: list[float] = []
  start = meta["epoch"] if active.any() else epochs  # a resumed run had stopped early
  t_train = time.perf_counter()
  with stop_requests() as request:
    for epoch in range(start + 1, epochs + 1):
      t = time.perf_counter()
      state, m = compiled(state, data, hyper)
      due = validate is not None and (epoch % eval_every == 0 or epoch == epochs)
      vs = validate(state.params) if due else None
      m, vs = jax.device_get((m, vs))  # the one host sync per epoch
      if not np.all(np.isfinite(m["loss"][active])):
        _diverged(epoch, m, active, state, labels, ckpts, meta, checkpoint_dir)
      if vs is not None:
        score = sign * np.asarray(vs["metric"], np.float64)
        improved = active & (score < best)
        best_params = select(improved, state.params, best_params)
        best = np.where(improved, score, best)
        best_epoch = np.where(improved, epoch, best_epoch)
        bad = np.where(improved, 0, bad + (active & ~improved))
      elif validate is None:  # no validation data: the last epoch is the selected one
        best_params = select(active, state.params, best_params)
        best_epoch = np.where(active, epoch, best_epoch)
      meta["epoch"] = epoch
      dt = time.perf_counter() - t
      epoch_seconds.append(dt)
      # Learning rates once per epoch (reading the step is a host sync), not per member.
      lrs = (np.asarray(lr_at(int(state.step))) if tb is not None and lr_at
             else np.full(k, np.nan))
      for i in np.flatnonzero(active):
        row = _row(epoch, m, i, vs, dt / k)
        histories[i].append(row)
        if wd.is_primary():
          wd.append_jsonl(history_paths[i], row)
        if tb is not None:
          tb.log(i, row, float(lrs[i]))
      progress(_progress_line(epoch, epochs, m, vs, active, epoch_seconds, higher_is_better))
      active &= ~((patience > 0) & (bad >= patience))
      stop = not active.any()
      if (epoch % checkpoint_every == 0 or epoch == epochs or stop
          or request["signal"] is not None):
        save()
      if request["signal"] is not None:  # the checkpoint above holds this epoch
        if ckpts is not None:
          ckpts.close()
        raise Interrupted(f"interrupted at epoch {epoch}; continue with --resume",
                          128 + int(request["signal"]))
      if stop:
        what = f"best epoch {int(best_epoch[0])}" if k == 1 else "every member"
        progress(f"early stop: no validation gain for {int(patience.max())} epochs ({what})")
        break
  train_seconds = time.perf_counter() - t_train
  if tb is not None:
    tb.close()
  save()
  if ckpts is not None:
    ckpts.close()
  return FitResult(best_params, best_epoch,
                   None if validate is None else sign * best,
                   np.array([h[-1]["epoch"] if h else 0 for h in histories]), histories,
                   train_seconds, compile_seconds, epoch_seconds)


def _diverged(epoch, m, active, state, labels, ckpts, meta, checkpoint_dir):
  save_note = (f"last good checkpoint: epoch {meta['epoch']}" if ckpts and ckpts.steps()
               else "no checkpoint was written yet")
  bad_k = np.flatnonzero(active & ~np.isfinite(m["loss"]))
  if len(labels) == 1:
    params = jax.device_get(state.params)
    bad = [name for name, v in params.items() if not np.all(np.isfinite(v))]
    where = (f"non-finite parameters: {', '.join(sorted(bad))}" if bad
             else "parameters still finite (non-finite data or loss)")
    raise TrainingDiverged(
        f"training diverged at epoch {epoch}: loss is {float(m['loss'][0])}, {where} "
        f"({save_note} in {checkpoint_dir}); lower --learning_rate or add --grad_clip")
  raise TrainingDiverged(
      f"sweep members {', '.join(labels[i] for i in bad_k)} diverged at epoch {epoch} "
      f"({save_note} in {checkpoint_dir}); lower their learning_rate or add --grad_clip")


def _label(name: str) -> str:
  name = name.removeprefix("valid_")
  return name.upper() if name in ("rmse", "mae") else name


def _progress_line(epoch, epochs, m, vs, active, epoch_seconds, higher) -> str:
  eta = np.median(epoch_seconds) * (epochs - epoch)
  dt = epoch_seconds[-1]
  if len(active) == 1:
    valid = ""
    if vs is not None:
      valid = "".join(f"  valid {_label(name)} {float(v[0]):.4f}" for name, v in vs.items()
                      if name not in ("metric", "valid_mae"))
    return (f"epoch {epoch:4d}/{epochs}  loss {float(m['loss'][0]):.4f}{valid}  "
            f"{dt:.2f}s  ETA {eta:.0f}s")
  if vs is not None:
    metric = np.asarray(vs["metric"])[active]
    best = metric.max() if higher else metric.min()
    summary = f"best valid {best:.4f}" if len(metric) else ""
  else:
    summary = f"loss {np.min(m['loss']):.4f}"
  return (f"epoch {epoch:4d}/{epochs}  {int(active.sum())}/{len(active)} members active  "
          f"{summary}  {dt:.2f}s  ETA {eta:.0f}s")
