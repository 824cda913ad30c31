"""Sweeps: K configurations that differ only in numbers, trained as the
members of one engine (one compiled call per epoch).

A sweep's members share everything structural (data, layers, activations,
optimizer kind, batch size, epochs) and differ only in `tasks.SWEEPABLE`
fields: seed, learning_rate, l2, dropout, input_dropout, input_noise. They
are the engine's members (see `engine`): every member sees the same batches
in the same order, drawn from the sweep's base seed, so a member trains
exactly like a lone run of its config with that batch order, dropout masks
included; the dense or sparse path, a mesh, checkpoints and --resume work
as for a lone run. Selection is per member on validation.
"""

from __future__ import annotations

import dataclasses
import itertools
import pathlib
from typing import Any, Callable, Optional, Sequence

import numpy as np
import pandas as pd

from recae_jax import plots, topn
from recae_jax import train as train_lib
from recae_jax import workdir as wd
from recae_jax.config import Config, make_config
from recae_jax.errors import UserError
from recae_jax.loop import read_history
from recae_jax.problem import Problem, build_problem, load_split
from recae_jax.tasks import SWEEPABLE

_INT_FIELDS = ("seed",)


# ------------------------------------------------------------------ the spec
def parse_sweep(spec: str, mode: str = "grid") -> list[dict[str, Any]]:
  """'seed=0,1,2;l2=1e-3,3e-3' -> one override dict per member.

  mode "grid": the cartesian product of the axes (first axis slowest);
  mode "zip": the i-th values of every axis together (equal lengths needed).
  """
  if mode not in ("grid", "zip"):
    raise UserError(f"--sweep_mode: must be 'grid' or 'zip', got {mode!r}")
  axes: list[tuple[str, list]] = []
  for part in (p.strip() for p in (spec or "").split(";")):
    if not part:
      continue
    name, eq, values = part.partition("=")
    name = name.strip()
    if not eq or not name:
      raise UserError(f"--sweep: expected FIELD=V1,V2,... in {part!r}")
    if name not in SWEEPABLE:
      known = {f.name for f in dataclasses.fields(Config)}
      why = ("is not sweepable (it changes the model's structure or data); "
             if name in known else "is not a config field; ")
      raise UserError(f"--sweep: {name!r} {why}sweepable fields: {', '.join(SWEEPABLE)}")
    if name in (a for a, _ in axes):
      raise UserError(f"--sweep: field {name!r} given twice")
    kind = int if name in _INT_FIELDS else float
    parsed = []
    for v in (v.strip() for v in values.split(",")):
      try:
        parsed.append(kind(v))
      except ValueError:
        raise UserError(f"--sweep: {name}={v!r} is not a{'n integer' if kind is int else ' number'}"
                        ) from None
    if not parsed:
      raise UserError(f"--sweep: no values for {name!r}")
    axes.append((name, parsed))
  if not axes:
    raise UserError("--sweep: empty; give e.g. --sweep='seed=0,1,2,3;l2=1e-3,3e-3'")
  names = [a for a, _ in axes]
  if mode == "zip":
    lengths = {a: len(v) for a, v in axes}
    if len(set(lengths.values())) > 1:
      raise UserError(f"--sweep: zip mode needs equal lengths, got {lengths}")
    combos = list(zip(*(v for _, v in axes)))
  else:
    combos = list(itertools.product(*(v for _, v in axes)))
  return [dict(zip(names, c)) for c in combos]


def member_configs(base: Config, overrides: Sequence[dict[str, Any]]) -> list[Config]:
  """Validated per-member configs (base + each override)."""
  if base.is_blend:
    raise UserError("a sweep trains single models: drop --ensemble/--blend_* "
                    "(the sweep reports its own ensemble)")
  d = base.to_json()
  return [make_config(None, **{**d, **o}) for o in overrides]


# --------------------------------------------------------------- ensembles

def rmse(pred: np.ndarray, target: np.ndarray) -> float:
  err = np.asarray(pred, np.float64) - np.asarray(target, np.float64)
  return float(np.sqrt(np.mean(err * err))) if err.size else float("nan")


def ensemble_report(valid_Kxn: Optional[np.ndarray], test_Kxn: np.ndarray,
                    valid_target: Optional[np.ndarray], test_target: np.ndarray) -> dict:
  """Mean of all members, and the best top-k (members ranked by validation
  RMSE, k chosen on validation) — test ratings never choose anything."""
  out = {"ensemble_test_rmse": rmse(test_Kxn.mean(0), test_target),
         "ensemble_size": int(test_Kxn.shape[0])}
  if valid_Kxn is not None and valid_target is not None and len(valid_target):
    out["ensemble_valid_rmse"] = rmse(valid_Kxn.mean(0), valid_target)
    order = np.argsort([rmse(v, valid_target) for v in valid_Kxn], kind="stable")
    csum = np.cumsum(valid_Kxn[order].astype(np.float64), axis=0)
    topk_valid = [rmse(csum[i] / (i + 1), valid_target) for i in range(len(order))]
    best_k = int(np.argmin(topk_valid)) + 1
    out.update(best_k=best_k, best_k_members=[int(i) for i in order[:best_k]],
               best_k_valid_rmse=topk_valid[best_k - 1],
               best_k_test_rmse=rmse(test_Kxn[order[:best_k]].mean(0), test_target))
  return out


# ---------------------------------------------------------------- the run

def run_sweep(base: Config, configs: Sequence[Config], workdir, *,
              progress: Callable[[str], None] = print,
              problem: Optional[Problem] = None,
              labels: Optional[Sequence[str]] = None, resume: bool = False,
              group_size: Optional[int] = None) -> dict:
  """Trains every member at once and writes the sweep's workdir.

  workdir/members/kXX/{config.json, metrics.jsonl, metrics.json, test_pred.npy,
  valid_pred.npy} (the same keys as a `train.py` run; `train_seconds` is the
  member's 1/K share of the sweep's wall time, `sweep_train_seconds` the whole),
  workdir/checkpoints (all members), summary.csv, summary.md,
  plots/valid_rmse.png, metrics.json (ensemble of the members' mean
  prediction, best top-k on validation).
  """
  with wd.run_lock(workdir):  # one run per workdir
    return _run_sweep(base, configs, workdir, progress=progress, problem=problem,
                      labels=labels, resume=resume, group_size=group_size)


def _run_sweep(base, configs, workdir, *, progress, problem, labels, resume, group_size):
  k = len(configs)
  if k == 0:
    raise UserError("--sweep: no members")
  if base.is_topn:  # a top-N model's sweep: the same engine, its own report
    if base.user_folds:
      raise UserError(f"--user_folds={base.user_folds} does not combine with --sweep (a "
                      "sweep runs on one split); sweep without it, or run each setting "
                      "with experiments/train.py --user_folds")
    return topn.run_sweep(base, [c for c in configs],
                          workdir, progress=progress, resume=resume)
  workdir = wd.ensure_writable(workdir)
  labels = list(labels) if labels is not None else [f"k{i:02d}" for i in range(k)]
  if problem is None:
    dataset, split = load_split(base)
    problem = build_problem(base, dataset, split)
  members = train_lib.train_members(
      base, configs, workdir, member_dirs=[workdir / "members" / lb for lb in labels],
      labels=labels, resume=resume, progress=progress, problem=problem,
      config_json={"base": base.to_json(), "members": [c.to_json() for c in configs]},
      group_size=group_size)
  for m, cfg in zip(members, configs):
    m["overrides"] = {f: getattr(cfg, f) for f in SWEEPABLE}
  t_ = problem.test
  test_Kxn = np.stack([np.load(workdir / "members" / lb / "test_pred.npy") for lb in labels])
  valid_Kxn = None
  if problem.valid is not None:
    valid_Kxn = np.stack([np.load(workdir / "members" / lb / "valid_pred.npy")
                          for lb in labels])
  ens = ensemble_report(valid_Kxn, test_Kxn,
                        None if problem.valid is None else np.asarray(problem.valid.target),
                        np.asarray(t_.target))
  best_i = int(np.argmin([m["best_valid_rmse"] if m["best_valid_rmse"] is not None
                          else m["test_rmse"] for m in members]))
  results = {
      **ens, "n_members": k, "members": labels,
      "member_test_rmse": [m["test_rmse"] for m in members],
      "member_best_valid_rmse": [m["best_valid_rmse"] for m in members],
      "best_member": labels[best_i], "best_member_test_rmse": members[best_i]["test_rmse"],
      "train_seconds": members[0]["sweep_train_seconds"] if k > 1 else
      members[0]["train_seconds"],
      "compile_seconds": members[0]["compile_seconds"],
      "epoch_seconds_median": (members[0]["epoch_seconds_median"] or 0.0) * k,
      "epochs_run": max(m["epochs_run"] for m in members), "n_train": problem.n_train,
      "n_test": len(t_.ratings), "n_test_fallback": t_.n_fallback,
      "compute": members[0]["compute"], "mesh": members[0]["mesh"],
      "batch_order": "shared: every member sees the same batches in the same order",
  }
  wd.save_npy(workdir / "ensemble_test_pred.npy", test_Kxn.mean(0))
  wd.write_json(workdir / "metrics.json", results)
  if wd.is_primary():
    write_summary(workdir, labels, members, ens)
    histories = {lb: loop_history(workdir / "members" / lb) for lb in labels}
    plots.plot_valid_rmse(histories, workdir / "plots" / "valid_rmse.png")
  progress(f"sweep of {k}: best member {labels[best_i]} test RMSE "
           f"{members[best_i]['test_rmse']:.4f}; ensemble of all {ens['ensemble_test_rmse']:.4f}"
           + (f"; best top-{ens['best_k']} on validation {ens['best_k_test_rmse']:.4f}"
              if "best_k" in ens else ""))
  return results


def loop_history(member_dir: pathlib.Path) -> list[dict]:
  return read_history(member_dir / "metrics.jsonl", upto=1 << 30)


def write_summary(workdir: pathlib.Path, labels: Sequence[str], members: Sequence[dict],
                  ens: dict) -> None:
  rows = []
  for label, m in zip(labels, members):
    rows.append({"member": label, **m["overrides"], "best_epoch": m["best_epoch"],
                 "best_valid_rmse": m["best_valid_rmse"], "test_rmse": m["test_rmse"],
                 "test_mae": m["test_mae"]})
  rows.append({"member": "ensemble(all)", "test_rmse": ens["ensemble_test_rmse"],
               "best_valid_rmse": ens.get("ensemble_valid_rmse")})
  if "best_k" in ens:
    rows.append({"member": f"ensemble(top-{ens['best_k']} on valid)",
                 "test_rmse": ens["best_k_test_rmse"],
                 "best_valid_rmse": ens["best_k_valid_rmse"]})
  df = pd.DataFrame(rows)
  df.to_csv(workdir / "summary.csv", index=False)
  cols = list(df.columns)
  fmt = lambda x: "" if x is None or (isinstance(x, float) and np.isnan(x)) else (
      f"{x:.4g}" if isinstance(x, float) else str(x))
  lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
  lines += ["| " + " | ".join(fmt(r[c]) for c in cols) + " |"
            for r in df.astype(object).to_dict("records")]
  (workdir / "summary.md").write_text("\n".join(lines) + "\n")
