"""Workdir files: written atomically so a crash never leaves half a file."""

from __future__ import annotations

import contextlib
import fcntl
import importlib.metadata as md
import json
import os
import pathlib
import platform
import subprocess
import sys
import tempfile
from typing import Iterator

import jax
from jax.experimental import multihost_utils
import numpy as np
import pandas as pd

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


@contextlib.contextmanager
def run_lock(workdir: str | os.PathLike) -> Iterator[None]:
  """Holds `workdir/.lock` (fcntl.flock) for the run's life: a second process
  on the same workdir gets a one-line UserError naming the holder's pid. The
  kernel drops the lock when the holder exits or crashes, so a stale lock
  file never blocks a later run. Multi-host: process 0 holds it."""
  path = ensure_writable(workdir)
  if not is_primary():
    yield
    return
  fd = os.open(path / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
  try:
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
      raise UserError(f"workdir {path} is in use by another run (pid {holder}); wait "
                      "for it to finish or choose another --workdir") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    yield
  finally:
    os.close(fd)  # releases the lock


def is_primary() -> bool:
  """Only process 0 writes workdir files in a multi-host run (orbax
  coordinates its own checkpoint writes across processes)."""
  return jax.process_index() == 0


def barrier(name: str) -> None:
  """Multi-host: waits until every process gets here (a no-op in one
  process). Call it after process 0 writes files the others will read."""
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(name)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = "") -> Iterator[pathlib.Path]:
  """Yields a temp path beside `path` to write; it replaces `path` only if the
  block completes, and is removed otherwise (a crash never leaves half a file
  and never clobbers the old one)."""
  path = pathlib.Path(path)
  fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
  os.close(fd)
  try:
    yield pathlib.Path(tmp)
    os.replace(tmp, path)
  finally:
    pathlib.Path(tmp).unlink(missing_ok=True)


def save_npy(path: str | os.PathLike, array) -> None:
  """np.save, atomically; process 0 only."""
  if not is_primary():
    return
  with atomic_path(path, ".npy") as tmp:
    np.save(tmp, np.asarray(array))


def save_npz(path: str | os.PathLike, **arrays) -> None:
  """np.savez, atomically; process 0 only. Object arrays of strings (string
  ids) are saved as str arrays: an object array would need pickle to load."""
  if not is_primary():
    return
  arrays = {k: np.asarray(v) for k, v in arrays.items()}
  for k, v in arrays.items():
    if v.dtype == object:  # infer_dtype: one C pass, not a Python loop over ids
      if pd.api.types.infer_dtype(v.ravel(), skipna=False) != "string":
        raise TypeError(f"save_npz: {k} is an object array of non-strings")
      arrays[k] = v.astype(str)
  with atomic_path(path, ".npz") as tmp:
    np.savez(tmp, **arrays)


def write_json(path: str | os.PathLike, obj) -> None:
  """Writes JSON atomically; process 0 only."""
  if not is_primary():
    return
  with atomic_path(path) as tmp:
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=_default) + "\n")


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
