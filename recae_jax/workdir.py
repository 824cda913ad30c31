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


def write_json(path: str | os.PathLike, obj) -> None:
  """Writes JSON via a temp file + rename (atomic on POSIX)."""
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
  with open(path, "a") as f:
    f.write(json.dumps(obj, sort_keys=True, default=_default) + "\n")
    f.flush()


def _default(o):
  if hasattr(o, "item"):  # numpy / jax scalars
    return o.item()
  if hasattr(o, "tolist"):
    return o.tolist()
  raise TypeError(f"not JSON serialisable: {type(o).__name__}")
