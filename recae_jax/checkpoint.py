"""A thin wrapper over orbax's CheckpointManager.

Each checkpoint holds the train state, the best parameters seen so far and a
JSON of bookkeeping (epoch, best epoch, best validation RMSE). Orbax writes to
a temporary directory and renames it when complete, so a process killed
mid-save never leaves a half-written checkpoint as "latest"; restore walks
back from the newest step to the newest one that loads.
"""

from __future__ import annotations

import logging
import pathlib

import jax
import orbax.checkpoint as ocp

from recae_jax.errors import UserError


class Checkpoints:

  def __init__(self, directory, max_to_keep: int = 2):
    self.directory = pathlib.Path(directory).absolute()
    self._mngr = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep, create=True,
            enable_async_checkpointing=False),
        item_names=("state", "meta"))

  def steps(self) -> list[int]:
    return sorted(self._mngr.all_steps())

  def save(self, step: int, state, meta: dict) -> None:
    self._mngr.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)),
        force=True)
    self._mngr.wait_until_finished()

  def restore_latest(self, abstract_state):
    """(state, meta) of the newest checkpoint that loads, or None if none exist.

    A checkpoint that fails to load (truncated, corrupted) is skipped with a
    warning and the previous one is tried.
    """
    steps = self.steps()
    errors = []
    for step in reversed(steps):
      try:
        restored = self._mngr.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state),
            meta=ocp.args.JsonRestore()))
        return restored["state"], restored["meta"]
      except Exception as e:  # orbax raises many types for damaged files
        logging.warning("checkpoint %d in %s is unreadable (%s); trying an older one",
                        step, self.directory, type(e).__name__)
        errors.append(f"step {step}: {type(e).__name__}")
    if steps:
      raise UserError(f"no readable checkpoint in {self.directory} "
                      f"({'; '.join(errors)}); start a fresh run in a new workdir")
    return None

  def close(self):
    self._mngr.close()


def abstract_like(tree):
  """Shapes/dtypes of `tree` for orbax's restore target."""
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), tree)
