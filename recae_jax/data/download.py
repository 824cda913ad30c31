"""Finds a MovieLens directory on disk, or downloads and verifies it.

Lookup order for `resolve_dataset_dir(name, data_dir)`:

1. `data_dir`, when given: either the dataset folder itself or a parent
   holding `name/`. An explicit `data_dir` is authoritative: if the data is
   not there we raise rather than silently reading some other copy.
2. `$RECAE_DATA_DIR/name`.
3. The cache: `$RECAE_CACHE_DIR/name`, else `~/.cache/recae_jax/name`.
4. Download `https://files.grouplens.org/datasets/movielens/<name>.zip` into
   the cache, check its size and sha256 BEFORE opening it, and extract it with
   every member checked (no absolute paths, no `..`, no symlinks).

ml-10m's zip unpacks to `ml-10M100K/`; it is renamed to `ml-10m/`, and a
folder called `ml-10M100K` is accepted wherever `ml-10m` is looked for.
"""

from __future__ import annotations

import hashlib
import os
import pathlib
import shutil
import stat
import tempfile
import urllib.error
import urllib.request
import zipfile

from recae_jax.errors import UserError

DATASETS = ("ml-100k", "ml-1m", "ml-10m", "ml-latest-small", "ml-20m",
            "ml-25m")

URL = "https://files.grouplens.org/datasets/movielens/{name}.zip"

# A file whose presence marks a usable copy of each dataset.
MARKER = {
    "ml-100k": "u.data",
    "ml-1m": "ratings.dat",
    "ml-10m": "ratings.dat",
    "ml-latest-small": "ratings.csv",
    "ml-20m": "ratings.csv",
    "ml-25m": "ratings.csv",
}

# Folder names a zip (or a hand-made copy) may use for a dataset.
ALIASES = {"ml-10m": ("ml-10m", "ml-10M100K")}

# (size in bytes, sha256) of the official zips, copied from
# tensorflow/datasets (tensorflow_datasets/url_checksums/movielens.txt), which
# downloaded and hashed them. We have not re-downloaded them here (no network).
# ml-10m.zip is not listed there and we do not know its hash, so for it we
# only check that the archive is a valid zip (CRCs) holding ratings.dat.
CHECKSUMS: dict[str, tuple[int, str]] = {
    "ml-100k": (4924029, "50d2a982c66986937beb9ffb3aa76efe955bf3d5c6b761f4e3a7cd717c6a3229"),
    "ml-1m": (5917549, "a6898adb50b9ca05aa231689da44c217cb524e7ebd39d264c56e2832f2c54e20"),
    "ml-latest-small": (978202, "696d65a3dfceac7c45750ad32df2c259311949efec81f0f144fdfb91ebc9e436"),
    "ml-20m": (198702078, "96f243c338a8665f6bcc89c53edf6ee39162a846940de6b7c8c48aeada765ff3"),
    "ml-25m": (261978986, "8b21cfb7eb1706b4ec0aac894368d90acf26ebdfb6aced3ebd4ad5bd1eb9c6aa"),
}


def cache_dir() -> pathlib.Path:
  env = os.environ.get("RECAE_CACHE_DIR")
  if env:
    return pathlib.Path(env).expanduser()
  return pathlib.Path("~/.cache/recae_jax").expanduser()


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 22) -> str:
  h = hashlib.sha256()
  with open(path, "rb") as f:
    while block := f.read(chunk):
      h.update(block)
  return h.hexdigest()


def _candidates(parent: pathlib.Path, name: str) -> list[pathlib.Path]:
  return [parent / alias for alias in ALIASES.get(name, (name,))]


def _usable(folder: pathlib.Path, name: str) -> bool:
  return (folder / MARKER[name]).is_file()


def _fetch(url: str, dest: pathlib.Path) -> None:
  """Downloads `url` to `dest` (tests monkeypatch this; they never fetch)."""
  with urllib.request.urlopen(url, timeout=60) as response, \
      open(dest, "wb") as out:
    shutil.copyfileobj(response, out, length=1 << 20)


def resolve_dataset_dir(name: str, data_dir: str | os.PathLike | None = None,
                        *, download: bool = True) -> pathlib.Path:
  """Returns the folder holding dataset `name` (see module docstring)."""
  if name not in DATASETS:
    raise UserError(f"unknown dataset {name!r}: expected one of "
                    f"{', '.join(DATASETS)} or a path to a ratings file")
  marker = MARKER[name]
  looked: list[pathlib.Path] = []

  if data_dir is not None:
    root = pathlib.Path(data_dir).expanduser()
    for folder in [root] + _candidates(root, name):
      if _usable(folder, name):
        return folder
      looked.append(folder / marker)
    raise UserError(
        f"dataset {name} not found in --data_dir: looked for "
        f"{', '.join(map(str, looked))}; point --data_dir at the {name} folder "
        f"or at its parent")

  env = os.environ.get("RECAE_DATA_DIR")
  if env:
    for folder in _candidates(pathlib.Path(env).expanduser(), name):
      if _usable(folder, name):
        return folder
      looked.append(folder / marker)

  cache = cache_dir()
  for folder in _candidates(cache, name):
    if _usable(folder, name):
      return folder
    looked.append(folder / marker)

  hint = (f"looked for {', '.join(map(str, looked))}; pass --data_dir (the "
          f"{name} folder or its parent) or set RECAE_DATA_DIR to a folder "
          f"holding {name}/")
  if not env:
    hint += " (RECAE_DATA_DIR is not set)"
  if not download:
    raise UserError(f"dataset {name} not found and downloading is off: {hint}")
  try:
    return download_dataset(name, cache)
  except UserError as e:
    raise UserError(f"dataset {name} not found locally and download failed "
                    f"({e}); {hint}") from None


def download_dataset(name: str, cache: pathlib.Path) -> pathlib.Path:
  """Downloads, verifies and extracts `name` into `cache/name`."""
  url = URL.format(name=name)
  try:
    cache.mkdir(parents=True, exist_ok=True)
  except OSError as e:
    raise UserError(f"cannot create cache directory {cache}: {e}") from None
  zip_path = cache / f"{name}.zip"
  part = cache / f"{name}.zip.part"
  try:
    _fetch(url, part)
  except (urllib.error.URLError, OSError, TimeoutError) as e:
    part.unlink(missing_ok=True)
    raise UserError(f"could not download {url}: {e}") from None
  try:
    verify_zip(part, name)
  except UserError:
    part.unlink(missing_ok=True)
    raise
  part.replace(zip_path)
  with tempfile.TemporaryDirectory(dir=cache, prefix=f".{name}-") as tmp:
    safe_extract(zip_path, tmp)
    top = [p for p in pathlib.Path(tmp).iterdir()]
    src = next((p for p in top if p.name in ALIASES.get(name, (name,))), None)
    if src is None or not _usable(src, name):
      raise UserError(f"{zip_path}: archive has no {name}/{MARKER[name]}")
    dest = cache / name
    if dest.exists():
      shutil.rmtree(dest)
    src.replace(dest)
  zip_path.unlink(missing_ok=True)
  return dest


def verify_zip(path: pathlib.Path, name: str) -> None:
  """Checks size + sha256 where pinned, else zip integrity and layout."""
  if name in CHECKSUMS:
    size, digest = CHECKSUMS[name]
    actual_size = path.stat().st_size
    if actual_size != size:
      raise UserError(f"{path}: size {actual_size} bytes, expected {size} "
                      f"for the official {name}.zip")
    actual = sha256_file(path)
    if actual != digest:
      raise UserError(f"{path}: sha256 {actual} does not match the pinned "
                      f"{digest} for {name}.zip")
    return
  # No pinned hash (ml-10m): at least insist on an intact zip of the right shape.
  try:
    with zipfile.ZipFile(path) as zf:
      bad = zf.testzip()
      names = zf.namelist()
  except (zipfile.BadZipFile, OSError) as e:
    raise UserError(f"{path}: not a valid zip archive ({e})") from None
  if bad is not None:
    raise UserError(f"{path}: member {bad} fails its CRC check")
  wanted = {f"{alias}/{MARKER[name]}" for alias in ALIASES.get(name, (name,))}
  if not wanted & set(names):
    raise UserError(f"{path}: archive has no {' or '.join(sorted(wanted))}")


def _check_member(info: zipfile.ZipInfo, zip_path: os.PathLike) -> None:
  name = info.filename
  parts = name.replace("\\", "/").split("/")
  if name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
    raise UserError(f"{zip_path}: refusing member with absolute path {name!r}")
  if ".." in parts:
    raise UserError(f"{zip_path}: refusing member with '..' in its path "
                    f"{name!r}")
  mode = info.external_attr >> 16
  if stat.S_ISLNK(mode):
    raise UserError(f"{zip_path}: refusing symlink member {name!r}")


def safe_extract(zip_path: str | os.PathLike, dest: str | os.PathLike) -> None:
  """Extracts a zip after checking every member; nothing is written if any
  member is unsafe."""
  dest = pathlib.Path(dest).resolve()
  try:
    with zipfile.ZipFile(zip_path) as zf:
      infos = zf.infolist()
      for info in infos:  # a loop over archive members, not over data rows
        _check_member(info, zip_path)
        target = (dest / info.filename).resolve()
        if target != dest and dest not in target.parents:
          raise UserError(f"{zip_path}: member {info.filename!r} would be "
                          f"written outside {dest}")
      zf.extractall(dest)
  except zipfile.BadZipFile as e:
    raise UserError(f"{zip_path}: not a valid zip archive ({e})") from None
