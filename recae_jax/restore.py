"""Load a trained workdir: its config, data, model and selected parameters.

`load_workdir(dir)` re-reads `config.json`, rebuilds the dataset and split
with `train.load_split` (deterministic per config, so the same ratings are
"seen"), rebuilds the Problem with `train.build_problem`, and restores the
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
from recae_jax import train
from recae_jax.config import Config
from recae_jax.data.types import Dataset, Split
from recae_jax.errors import UserError
from recae_jax.models import AutoEncoder, build_model


@dataclasses.dataclass
class Restored:
  workdir: pathlib.Path
  config: Config
  dataset: Dataset
  split: Split
  problem: train.Problem
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


def restore_params(config: Config, workdir, problem: train.Problem
                   ) -> tuple[AutoEncoder, Any, dict]:
  """(model, best_params, meta) from `workdir/checkpoints` for `problem`."""
  workdir = pathlib.Path(workdir)
  ckdir = require_checkpoint(workdir)
  model = build_model(config, problem.n_cols)
  n_rows = max(1, int(problem.fit_data.train_rows.shape[0]))
  batch_size = min(config.batch_size, n_rows)
  tx = train.make_optimizer(config, -(-n_rows // batch_size))
  abstract = jax.eval_shape(
      lambda: (lambda s: {"state": s, "best_params": s.params})(
          train.init_state(model, tx, problem.fit_data, config.seed)))
  ckpts = ckpt_lib.Checkpoints(ckdir)
  try:
    restored = ckpts.restore_latest(abstract)
  finally:
    ckpts.close()
  if restored is None:
    raise UserError(f"workdir {workdir} has no checkpoint")
  tree, meta = restored
  return model, tree["best_params"], dict(meta)


def load_workdir(workdir, *, config: Optional[Config] = None,
                 dataset: Optional[Dataset] = None,
                 split: Optional[Split] = None) -> Restored:
  """Everything needed to use a trained model. `dataset`/`split` may be passed
  when the run was trained on a custom split (e.g. `recae_jax.topn`)."""
  workdir = pathlib.Path(workdir)
  config = config or read_config(workdir)
  require_checkpoint(workdir)  # fail before the (slower) data loading
  if dataset is None or split is None:
    dataset, split = train.load_split(config)
  problem = train.build_problem(config, dataset, split)
  model, params, meta = restore_params(config, workdir, problem)
  return Restored(workdir, config, dataset, split, problem, model, params, meta)
