"""Load a trained workdir: its config, data, model and selected parameters.

Every kind of workdir loads:
  * a lone rating run (config.json + checkpoints/),
  * a sweep (config.json holds {"base", "members"}; one checkpoint for all),
  * a blend / `best` ensemble (its seed members trained as one engine in
    members/, checkpoints in members/checkpoints),
  * a top-N run (Mult-VAE/DAE from its checkpoints, EASE refitted at the
    selected λ, popularity recounted).

For rating runs `load_workdir` re-reads the config, rebuilds the dataset and
split with `problem.load_split` (deterministic per config, so the same
ratings are "seen"), rebuilds the Problem, and restores the newest readable
checkpoint's `best_params` (the epochs chosen on validation) for every member,
stacked on a leading axis: users of an ensemble or sweep get the members'
average.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
from typing import Any, Optional

import jax
import numpy as np

from recae_jax import engine, loop, optim, topn
from recae_jax.config import Config
from recae_jax.data.types import Dataset, Split
from recae_jax.errors import UserError
from recae_jax.models import AutoEncoder, build_model
from recae_jax.problem import Problem, build_problem, load_split
from recae_jax.tasks import RatingTask


@dataclasses.dataclass
class Restored:
  workdir: pathlib.Path
  config: Config
  dataset: Dataset
  split: Split
  problem: Problem
  model: AutoEncoder
  params: Any          # stacked [K, ...]: the members (K = 1 for a lone run)
  meta: dict


@dataclasses.dataclass
class RestoredTopN:
  workdir: pathlib.Path
  config: Config
  protocol: topn.Protocol
  fitted: dict         # {"scorer", "ctx", "model", "params"}


def read_json(workdir) -> dict:
  """A workdir's config.json as written (any run kind); UserError if absent."""
  workdir = pathlib.Path(workdir)
  if not workdir.is_dir():
    raise UserError(f"workdir {workdir} does not exist")
  path = workdir / "config.json"
  if not path.exists():
    raise UserError(f"workdir {workdir} has no config.json (not a training run)")
  try:
    return json.loads(path.read_text())
  except json.JSONDecodeError as e:
    raise UserError(f"{path} is not a valid config: {e}") from None


def is_neighbourhood_run(d: dict) -> bool:
  """Whether a config.json is an experiments/impute.py run's (KNN: metrics
  and, for one fold, test predictions; no model)."""
  return "neighbors" in d and "similarity" in d and "layers" not in d


def _config(d: dict, path) -> Config:
  if is_neighbourhood_run(d):
    raise UserError(f"{path.parent} is a neighbourhood run of experiments/impute.py: it "
                    "keeps metrics, not a model to restore; open a run of "
                    "experiments/train.py or experiments/sweep.py")
  try:
    return Config.from_json(d)
  except UserError as e:  # a field this version does not know
    raise UserError(f"{path}: {e} (written by another version of recae_jax?)") from None
  except TypeError as e:
    raise UserError(f"{path} is not a valid config: {e}") from None


def read_config(workdir) -> Config:
  """The run's config (a sweep's base config)."""
  workdir = pathlib.Path(workdir)
  d = read_json(workdir)
  return _config(d["base"] if "members" in d else d, workdir / "config.json")


def members_of(workdir) -> tuple[Config, list[Config], pathlib.Path]:
  """(base config, member configs, the folder holding their checkpoints/)."""
  workdir = pathlib.Path(workdir)
  d = read_json(workdir)
  if "members" in d:  # a sweep
    path = workdir / "config.json"
    return _config(d["base"], path), [_config(m, path) for m in d["members"]], workdir
  config = _config(d, workdir / "config.json")
  if config.is_blend:
    base = config.blend_member()
    seeds = [dataclasses.replace(base, seed=config.seed + k) for k in range(config.ensemble)]
    return base, seeds, workdir / "members"
  return config, [config], workdir


def require_checkpoint(workdir) -> pathlib.Path:
  """The checkpoints folder, or a UserError saying there is none."""
  workdir = pathlib.Path(workdir)
  ckdir = workdir / "checkpoints"
  if not ckdir.is_dir() or not any(ckdir.iterdir()):
    raise UserError(f"workdir {workdir} has no checkpoint (an unfinished or "
                    "interrupted run: continue it with --resume)")
  return ckdir


def restore_params(config: Config, workdir, problem: Problem,
                   members: Optional[list[Config]] = None, independent: bool = False
                   ) -> tuple[AutoEncoder, Any, dict]:
  """(model, best_params stacked [K, ...], meta) from `workdir/checkpoints`;
  `independent`: the members drew their own batch orders (an ensemble)."""
  workdir = pathlib.Path(workdir)
  ckdir = require_checkpoint(workdir)
  members = members or [config]
  model = build_model(config, problem.n_cols, problem.n_side, tuple(members),
                      problem.fit_data.n_rows)
  task = RatingTask.from_config(config, model, members)
  n_rows = max(1, int(problem.fit_data.train_rows.shape[0]))
  tx = optim.make_optimizer(config, -(-n_rows // min(config.batch_size, n_rows)))
  params, meta = loop.restore_best(ckdir, task, tx, [c.seed for c in members],
                                   None if independent else config.seed, workdir)
  return model, params, meta


def is_topn(workdir) -> bool:
  return read_config(workdir).is_topn


def load_topn(workdir) -> RestoredTopN:
  workdir = pathlib.Path(workdir)
  config, members, _ = members_of(workdir)
  tcfg = config
  fold = workdir / "fold.json"  # one fold of a --user_folds run: its test users
  if fold.exists():
    protocol = topn.make_protocol(tcfg, test_users=np.asarray(
        json.loads(fold.read_text())["test_users"], np.int64))
  elif config.user_folds:
    raise UserError(f"workdir {workdir} is a --user_folds={config.user_folds} run: "
                    f"open one of its folds, e.g. {workdir / 'fold_0'}")
  else:
    protocol = topn.make_protocol(tcfg)
  return RestoredTopN(workdir, config, protocol, topn.restore_fitted(
      tcfg, protocol, workdir, [m for m in members]))


def load_workdir(workdir, *, config: Optional[Config] = None,
                 dataset: Optional[Dataset] = None,
                 split: Optional[Split] = None) -> Restored:
  """Everything needed to use a trained rating model. Pass the `dataset` of a
  run trained on one given in code (`data.from_frame`), and `split` for a
  custom split."""
  workdir = pathlib.Path(workdir)
  base, members, ckroot = members_of(workdir)
  config = config or base
  require_checkpoint(ckroot)  # fail before the (slower) data loading
  if split is None:  # the config's split of its dataset, or of the one given
    dataset, split = load_split(config, dataset)
  problem = build_problem(config, dataset, split)
  model, params, meta = restore_params(config, ckroot, problem, members,
                                       independent=ckroot != workdir)
  return Restored(workdir, config, dataset, split, problem, model, params, meta)


def test_errors(r: Restored) -> dict:
  """{"test_rmse", "test_mae", "n_test"} of the restored members' average
  prediction, through the engine's evaluation."""
  task = RatingTask.from_config(r.config, r.model)
  evaluate = engine.make_evaluate(task, "dense", r.problem.rating_scale)
  pred_Kxn, _ = jax.device_get(evaluate(r.params, r.problem.full_data, r.problem.test))
  err = np.asarray(pred_Kxn, np.float64).mean(0) - np.asarray(r.problem.test.target)
  return {"test_rmse": float(np.sqrt(np.mean(err ** 2))) if err.size else float("nan"),
          "test_mae": float(np.mean(np.abs(err))) if err.size else float("nan"),
          "n_test": int(err.size)}
