"""A thin wrapper over orbax's CheckpointManager.

Each checkpoint holds the train state, the best parameters seen so far and a
JSON of bookkeeping (epoch, best epoch, best validation RMSE). Orbax writes to
a temporary directory and renames it when complete, so a process killed
mid-save never leaves a half-written checkpoint as "latest". After each save
a sha256 manifest of the step's files goes to `<dir>_manifests/STEP.json`;
restore checks it before asking orbax (a damaged file is found without
orbax's noisy failure), moves unreadable steps aside to `<dir>_corrupt/` so
they are never picked again, and walks back to the newest step that loads.
An intact step that does not fit the state asked for (a changed config) is
an error, not damage: it stays where it is.
Multi-host: every process saves and restores (orbax coordinates); only
process 0 writes manifests or moves files, and the others wait for it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pathlib
import shutil
import time

import jax
import orbax.checkpoint as ocp

from recae_jax.errors import UserError
from recae_jax.workdir import barrier as _sync, is_primary


class Checkpoints:

  def __init__(self, directory, max_to_keep: int = 2):
    self.directory = pathlib.Path(directory).absolute()
    self._manifests = self.directory.with_name(self.directory.name + "_manifests")
    self._corrupt = self.directory.with_name(self.directory.name + "_corrupt")
    self._mngr = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep, create=True,
            enable_async_checkpointing=False),
        item_names=("state", "meta"))

  def steps(self) -> list[int]:
    return sorted(self._mngr.all_steps())

  def check_space(self, tree) -> None:
    """UserError before training if the disk cannot hold the checkpoints."""
    # max_to_keep steps plus the one being written.
    need = 3 * sum(x.nbytes for x in jax.tree.leaves(tree))
    free = shutil.disk_usage(self.directory).free
    if free < need:
      raise UserError(f"{self.directory}: {free / 2**20:.1f} MiB free but checkpoints "
                      f"need about {need / 2**20:.1f} MiB; free space or choose "
                      "another --workdir")

  def save(self, step: int, state, meta: dict) -> None:
    try:
      self._mngr.save(step, args=ocp.args.Composite(
          state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)),
          force=True)
      self._mngr.wait_until_finished()
    except OSError as e:  # disk full, permissions: the previous step stays intact
      raise UserError(f"could not write checkpoint {step} to {self.directory}: "
                      f"{e.strerror or e}") from None
    if is_primary():
      self._manifests.mkdir(exist_ok=True)
      tmp = self._manifests / f".{step}.json.tmp"
      tmp.write_text(json.dumps(_hash_tree(self.directory / str(step))))
      os.replace(tmp, self._manifests / f"{step}.json")
      for old in self._manifests.glob("*.json"):  # manifests of deleted steps
        if old.stem.isdigit() and not (self.directory / old.stem).exists():
          old.unlink(missing_ok=True)
    _sync(f"checkpoint-manifest-{step}")

  def _manifest_check(self, step: int) -> bool | None:
    """True: the step's files match its manifest; False: they differ (or the
    manifest is unreadable); None: no manifest (written by a process killed
    right after orbax finished)."""
    manifest = self._manifests / f"{step}.json"
    if not manifest.exists():
      return None
    try:
      return json.loads(manifest.read_text()) == _hash_tree(self.directory / str(step))
    except (OSError, ValueError):
      return False

  def _set_aside(self, step: int, why: str) -> None:
    logging.warning("checkpoint %d in %s is unreadable (%s); moved to %s, trying "
                    "an older one", step, self.directory, why, self._corrupt)
    if is_primary():
      self._corrupt.mkdir(exist_ok=True)
      shutil.move(str(self.directory / str(step)),
                  str(self._corrupt / f"{step}-{int(time.time())}"))
      (self._manifests / f"{step}.json").unlink(missing_ok=True)
    _sync(f"checkpoint-set-aside-{step}")
    self._mngr.reload()

  def restore_latest(self, abstract_state, fmt: int | None = None):
    """(state, meta) of the newest checkpoint that loads, or None if none exist.

    `fmt`: the bookkeeping format the caller reads; a checkpoint of another
    format (written by an older recae_jax) is a UserError, left untouched.

    A checkpoint that fails its manifest or fails to load (truncated,
    corrupted) is set aside with a warning and the previous one is tried.
    One whose files match their manifest but that does not load into
    `abstract_state` was written for another state (another model, optimizer
    or member count): a UserError, and the checkpoint is left where it is.
    """
    steps = self.steps()
    errors = []
    for step in reversed(steps):
      intact = self._manifest_check(step)
      if intact is False:
        errors.append(f"step {step}: files differ from their sha256 manifest")
        self._set_aside(step, "files differ from their sha256 manifest")
        continue
      if fmt is not None:
        self._check_format(step, fmt)
      try:
        restored = self._mngr.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state),
            meta=ocp.args.JsonRestore()))
        return restored["state"], restored["meta"]
      except Exception as e:  # orbax raises many types for damaged files
        if intact:  # undamaged: the state asked for is not the one saved
          raise UserError(
              f"checkpoint {step} in {self.directory} is intact but does not fit the "
              f"training state this config builds ({type(e).__name__}: another model, "
              "optimizer or member count); resume with the config.json it was written "
              "with, or start a new --workdir") from None
        errors.append(f"step {step}: {type(e).__name__}")
        self._set_aside(step, type(e).__name__)
    if steps:
      raise UserError(f"no readable checkpoint in {self.directory} "
                      f"({'; '.join(errors)}); start a fresh run in a new workdir")
    return None

  def _check_format(self, step: int, fmt: int) -> None:
    try:
      meta = self._mngr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
      found = dict(meta["meta"]).get("format", 1)
    except Exception:  # unreadable meta: let the full restore set it aside
      return
    if found != fmt:
      raise UserError(
          f"checkpoint {step} in {self.directory} was written by an older recae_jax "
          f"(checkpoint format {found}, this version reads {fmt}: one model per state, "
          "before the one-engine rework); retrain it in a new --workdir")

  def close(self):
    self._mngr.close()


def _hash_tree(root: pathlib.Path) -> dict:
  """relative path -> sha256 of every file under root."""
  out = {}
  for p in sorted(root.rglob("*")):
    if p.is_file():
      h = hashlib.sha256()
      with open(p, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
          h.update(chunk)
      out[str(p.relative_to(root))] = h.hexdigest()
  return out


def abstract_like(tree):
  """Shapes/dtypes of `tree` for orbax's restore target."""
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), tree)
