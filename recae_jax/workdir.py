"""Workdir files: written atomically so a crash never leaves half a file."""

from __future__ import annotations

import json
import os
import pathlib
import tempfile

from recae_jax.errors import UserError


def ensure_writable(workdir: str | os.PathLike) -> pathlib.Path:
  """Creates workdir and proves it is writable before any work starts."""
  path = pathlib.Path(workdir)
  try:
    path.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=path, prefix=".probe-"):
      pass
  except OSError as e:
    raise UserError(f"workdir {path} is not writable: {e.strerror or e}") from None
  return path


def is_primary() -> bool:
  """Only process 0 writes workdir files in a multi-host run (orbax
  coordinates its own checkpoint writes across processes)."""
  import jax
  return jax.process_index() == 0


def barrier(name: str) -> None:
  """Multi-host: waits until every process gets here (a no-op in one
  process). Call it after process 0 writes files the others will read."""
  import jax
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices(name)


def save_npy(path: str | os.PathLike, array) -> None:
  """np.save via a temp file + rename; process 0 only."""
  if not is_primary():
    return
  import numpy as np
  path = pathlib.Path(path)
  fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".npy")
  try:
    with os.fdopen(fd, "wb") as f:
      np.save(f, np.asarray(array))
    os.replace(tmp, path)
  except BaseException:
    pathlib.Path(tmp).unlink(missing_ok=True)
    raise


def write_json(path: str | os.PathLike, obj) -> None:
  """Writes JSON via a temp file + rename (atomic on POSIX)."""
  if not is_primary():
    return
  path = pathlib.Path(path)
  fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
  try:
    with os.fdopen(fd, "w") as f:
      json.dump(obj, f, indent=2, sort_keys=True, default=_default)
      f.write("\n")
    os.replace(tmp, path)
  except BaseException:
    pathlib.Path(tmp).unlink(missing_ok=True)
    raise


def append_jsonl(path: str | os.PathLike, obj) -> None:
  if not is_primary():
    return
  with open(path, "a") as f:
    f.write(json.dumps(obj, sort_keys=True, default=_default) + "\n")
    f.flush()


def _default(o):
  if hasattr(o, "item"):  # numpy / jax scalars
    return o.item()
  if hasattr(o, "tolist"):
    return o.tolist()
  raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def provenance(dataset_files: dict | None = None) -> dict:
  """What is needed to repeat a run: versions, code commit, device, data hashes."""
  import importlib.metadata as md
  import platform
  import subprocess
  import sys

  import jax

  versions = {}
  for pkg in ("recae_jax", "jax", "jaxlib", "flax", "optax", "orbax-checkpoint",
              "numpy", "pandas"):
    try:
      versions[pkg] = md.version(pkg)
    except md.PackageNotFoundError:
      versions[pkg] = None
  repo = pathlib.Path(__file__).resolve().parent.parent
  commit = dirty = None
  try:
    commit = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"],
                            capture_output=True, text=True, timeout=10).stdout.strip() or None
    if commit:
      dirty = bool(subprocess.run(["git", "-C", str(repo), "status", "--porcelain",
                                   "--untracked-files=no"], capture_output=True,
                                  text=True, timeout=10).stdout.strip())
  except (OSError, subprocess.SubprocessError):
    pass
  devices = jax.devices()
  return {
      "versions": versions, "python": platform.python_version(),
      "git_commit": commit, "git_dirty": dirty, "argv": list(sys.argv),
      "platform": platform.platform(), "device_kind": devices[0].device_kind,
      "device_count": len(devices), "process_count": jax.process_count(),
      "dataset_files_sha256": dict(dataset_files or {}),
  }
