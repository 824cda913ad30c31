"""Load a trained workdir: its config, data, model and selected parameters.

`load_workdir(dir)` re-reads `config.json`, rebuilds the dataset and split
with `problem.load_split` (deterministic per config, so the same ratings are
"seen"), rebuilds the Problem with `problem.build_problem`, and restores the
newest readable checkpoint's `best_params` (the epoch chosen on validation)
into `jax.eval_shape` of a fresh train state. Ensemble workdirs hold one
ordinary run per member under `members/`; point at one of those.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
from typing import Any, Optional

import jax

from recae_jax import checkpoint as ckpt_lib
from recae_jax import engine, loop, optim
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
  params: Any
  meta: dict


def read_config(workdir) -> Config:
  workdir = pathlib.Path(workdir)
  if not workdir.is_dir():
    raise UserError(f"workdir {workdir} does not exist")
  path = workdir / "config.json"
  if not path.exists():
    raise UserError(f"workdir {workdir} has no config.json (not a training run)")
  try:
    return Config.from_json(json.loads(path.read_text()))
  except (json.JSONDecodeError, TypeError) as e:
    raise UserError(f"{path} is not a valid config: {e}") from None


def require_checkpoint(workdir) -> pathlib.Path:
  """The checkpoints folder, or a UserError saying there is none."""
  workdir = pathlib.Path(workdir)
  ckdir = workdir / "checkpoints"
  if not ckdir.is_dir() or not any(ckdir.iterdir()):
    hint = ""
    if (workdir / "members").is_dir():
      hint = f" (an ensemble: use one member, e.g. --workdir={workdir}/members/m0)"
    raise UserError(f"workdir {workdir} has no checkpoint{hint}")
  return ckdir


def restore_params(config: Config, workdir, problem: Problem
                   ) -> tuple[AutoEncoder, Any, dict]:
  """(model, best_params, meta) from `workdir/checkpoints` for `problem`."""
  workdir = pathlib.Path(workdir)
  ckdir = require_checkpoint(workdir)
  model = build_model(config, problem.n_cols, problem.n_side)
  task = RatingTask.from_config(config, model)
  n_rows = max(1, int(problem.fit_data.train_rows.shape[0]))
  tx = optim.make_optimizer(config, -(-n_rows // min(config.batch_size, n_rows)))
  abstract = jax.eval_shape(
      lambda: (lambda s: {"state": s, "best_params": s.params})(
          engine.init_state(task, tx, [config.seed], config.seed)))
  ckpts = ckpt_lib.Checkpoints(ckdir)
  try:
    restored = ckpts.restore_latest(abstract, fmt=loop.CHECKPOINT_FORMAT)
  finally:
    ckpts.close()
  if restored is None:
    raise UserError(f"workdir {workdir} has no checkpoint")
  tree, meta = restored
  return model, engine.member(tree["best_params"], 0), dict(meta)


def load_workdir(workdir, *, config: Optional[Config] = None,
                 dataset: Optional[Dataset] = None,
                 split: Optional[Split] = None) -> Restored:
  """Everything needed to use a trained model. `dataset`/`split` may be passed
  when the run was trained on a custom split (e.g. `recae_jax.topn`)."""
  workdir = pathlib.Path(workdir)
  config = config or read_config(workdir)
  require_checkpoint(workdir)  # fail before the (slower) data loading
  if dataset is None or split is None:
    dataset, split = load_split(config)
  problem = build_problem(config, dataset, split)
  model, params, meta = restore_params(config, workdir, problem)
  return Restored(workdir, config, dataset, split, problem, model, params, meta)


def test_errors(r: Restored) -> dict:
  """{"test_rmse", "test_mae", "n_test"} of the restored parameters, through
  the engine's evaluation."""
  task = RatingTask.from_config(r.config, r.model)
  evaluate = engine.make_evaluate(task, "dense", r.problem.rating_scale)
  _, sums = jax.device_get(evaluate(jax.tree.map(lambda x: x[None], r.params),
                                    r.problem.full_data, r.problem.test))
  e = engine.errors(sums)
  return {"test_rmse": float(e["rmse"][0]), "test_mae": float(e["mae"][0]),
          "n_test": int(sums["count"][0])}
