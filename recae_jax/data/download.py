"""Finds a MovieLens directory on disk, or downloads and verifies it.

Lookup order for `resolve_dataset_dir(name, data_dir)`:

1. `data_dir`, when given: either the dataset folder itself or a parent
   holding `name/`. An explicit `data_dir` is authoritative: if the data is
   not there we raise rather than silently reading some other copy.
2. `$RECAE_DATA_DIR/name`.
3. The cache: `$RECAE_CACHE_DIR/name`, else `~/.cache/recae_jax/name`.
   A copy that was unpacked from the bundled archive (it holds `.recae_bundled.json`)
   is checked member by member against the bundled manifest; a damaged one is
   named in a warning and unpacked again.
4. ml-latest-small only: the archive bundled in the package
   (`recae_jax/data/bundled/ml-latest-small.zip`, under the MovieLens licence
   beside it), unpacked into the cache (never into the package folder, which
   may be read-only) with every member's size and sha256 checked against
   `ml-latest-small.json`. This works offline. ML-100K and the larger sets may
   not be redistributed, so they are never bundled.
5. Download `https://files.grouplens.org/datasets/movielens/<name>.zip` into
   the cache, check its size and sha256 BEFORE opening it, and extract it with
   every member checked (no absolute paths, no `..`, no symlinks).

ml-10m's zip unpacks to `ml-10M100K/`; it is renamed to `ml-10m/`, and a
folder called `ml-10M100K` is accepted wherever `ml-10m` is looked for.
"""

from __future__ import annotations

import datetime
import hashlib
import importlib.resources
import json
import os
import pathlib
import shutil
import stat
import tempfile
import urllib.error
import urllib.request
import warnings
import zipfile
import zlib

from recae_jax.errors import UserError
from recae_jax.workdir import atomic_path

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


# Datasets shipped inside the package (their licence allows redistribution
# under the same terms). ML-100K's README forbids redistribution without
# separate permission, so it stays a checked download.
BUNDLED = ("ml-latest-small",)

# Marks a cache copy as unpacked from the bundled archive (so it may be
# checked against the manifest, and replaced when damaged).
STAMP = ".recae_bundled.json"

# What works with nothing but this repository, for offline error messages.
QUICK_COMMAND = ("python experiments/train.py --preset=autorec "
                 "--dataset=ml-latest-small --split=random --workdir=runs/quick")
OFFLINE_HINT = ("offline, the bundled ml-latest-small works now: "
                + QUICK_COMMAND)


def bundle_dir():
  """The package folder holding the bundled archives (tests monkeypatch it).

  It is only ever read: the data is unpacked into the cache."""
  return importlib.resources.files("recae_jax.data") / "bundled"


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
      if name in BUNDLED and (folder / STAMP).is_file():
        return _checked_cache_copy(folder, name, cache)
      return folder
    looked.append(folder / marker)

  missing_bundle = ""
  if name in BUNDLED:
    if _bundled_archive(name) is not None:
      return unpack_bundled(name, cache)
    missing_bundle = (f"; the bundled copy is missing from {bundle_dir()} "
                      f"(reinstall recae_jax)")
  hint = (f"looked for {', '.join(map(str, looked))}{missing_bundle}; pass "
          f"--data_dir (the {name} folder or its parent) or set "
          f"RECAE_DATA_DIR to a folder holding {name}/")
  if not env:
    hint += " (RECAE_DATA_DIR is not set)"
  if name not in BUNDLED:
    hint += f"; {OFFLINE_HINT}"
  if not download:
    raise UserError(f"dataset {name} not found and downloading is off: {hint}")
  try:
    return download_dataset(name, cache)
  except UserError as e:
    raise UserError(f"dataset {name} not found locally and download failed "
                    f"({e}); {hint}") from None


def _bundled_archive(name: str):
  """(archive, manifest) Traversables of the bundled copy, or None."""
  folder = bundle_dir()
  archive, manifest = folder / f"{name}.zip", folder / f"{name}.json"
  if name in BUNDLED and archive.is_file() and manifest.is_file():
    return archive, manifest
  return None


def bundle_manifest(name: str) -> dict:
  """The committed manifest: archive size/sha256 and every member's."""
  found = _bundled_archive(name)
  if found is None:
    raise UserError(f"no bundled copy of {name} in {bundle_dir()} "
                    f"(reinstall recae_jax)")
  manifest = found[1]
  try:
    data = json.loads(manifest.read_text(encoding="utf-8"))
    members = data["members"]
    for member, want in members.items():
      _check_member_name(member, manifest)
      if not member.startswith(f"{name}/") or member.endswith("/"):
        raise ValueError(f"member {member!r} is not a file under {name}/")
      int(want["size"]), str(want["sha256"])
  except (ValueError, KeyError, TypeError, AttributeError) as e:
    raise UserError(f"{manifest}: damaged bundle manifest ({e}); reinstall "
                    f"recae_jax (in a clone: git checkout -- "
                    f"recae_jax/data/bundled)") from None
  return data


def _bundle_fix(name: str) -> str:
  return (f"reinstall recae_jax (in a clone: git checkout -- "
          f"recae_jax/data/bundled/{name}.zip) or pass --data_dir to a copy "
          f"of {name}")


def _check_bundled_copy(folder: pathlib.Path, name: str,
                        members: dict | None = None) -> str | None:
  """None if every bundled member in `folder` has its manifest size and
  sha256 (`members`, default the bundled manifest's), else what is wrong
  with the first one that does not."""
  if members is None:
    members = bundle_manifest(name)["members"]
  try:
    for member, want in members.items():
      rel = member.split("/", 1)[1]
      path = folder / rel
      if not path.is_file():
        return f"member {rel} is missing"
      size = path.stat().st_size
      if size != want["size"]:
        return f"member {rel} has {size} bytes, expected {want['size']}"
      digest = sha256_file(path)
      if digest != want["sha256"]:
        return f"member {rel} has sha256 {digest}, expected {want['sha256']}"
  except (AttributeError, IndexError, KeyError, TypeError):
    return f"its {STAMP} is damaged"
  return None


def _checked_cache_copy(folder: pathlib.Path, name: str,
                        cache: pathlib.Path) -> pathlib.Path:
  """`folder`, a cache copy unpacked from the bundle, checked member by
  member; a damaged one is named in a warning and unpacked again."""
  if _bundled_archive(name) is not None:
    problem = _check_bundled_copy(folder, name)
    if problem is None:
      return folder
    warnings.warn(f"{folder}: {problem}; unpacking it again from the bundled "
                  f"archive", stacklevel=3)
    return unpack_bundled(name, cache)
  # The bundle is gone (a trimmed install?): check against the stamp itself.
  try:
    members = json.loads((folder / STAMP).read_text(encoding="utf-8"))["members"]
    problem = _check_bundled_copy(folder, name, members)
  except (OSError, ValueError, KeyError, TypeError):
    problem = f"its {STAMP} is damaged"
  if problem is None:
    return folder
  raise UserError(f"{folder}: {problem}, and the bundled archive is missing "
                  f"from {bundle_dir()}; reinstall recae_jax, or delete "
                  f"{folder} so that it is downloaded again")


def unpack_bundled(name: str, cache: pathlib.Path | None = None) -> pathlib.Path:
  """Unpacks the bundled `name` into `cache/name` and returns that folder.

  Only the members listed in the manifest are written, each checked for size
  and sha256 while it is copied into a temporary folder in the cache; the
  folder replaces `cache/name` only when every member passed. An existing
  copy that was not unpacked from the bundle is kept, renamed, not deleted."""
  cache = cache_dir() if cache is None else pathlib.Path(cache)
  found = _bundled_archive(name)
  if found is None:
    raise UserError(f"no bundled copy of {name} in {bundle_dir()} "
                    f"(reinstall recae_jax)")
  manifest = bundle_manifest(name)
  try:
    cache.mkdir(parents=True, exist_ok=True)
    tmp = pathlib.Path(tempfile.mkdtemp(dir=cache, prefix=f".{name}-"))
  except OSError as e:
    raise UserError(f"cannot unpack the bundled {name} into the cache {cache} "
                    f"({e}); set RECAE_CACHE_DIR to a writable folder") from None
  try:
    with importlib.resources.as_file(found[0]) as zip_path:
      _extract_checked(pathlib.Path(zip_path), name, manifest, tmp)
    src = tmp / name
    stamp = {"dataset": name, "archive_sha256": manifest.get("archive_sha256"),
             "members": manifest["members"]}
    with atomic_path(src / STAMP) as stamp_tmp:
      stamp_tmp.write_text(json.dumps(stamp, indent=1, sort_keys=True) + "\n")
      os.chmod(stamp_tmp, 0o644)
    return _install(src, cache / name, name)
  except OSError as e:
    raise UserError(f"cannot unpack the bundled {name} into the cache {cache} "
                    f"({e}); free some space or set RECAE_CACHE_DIR to a "
                    f"writable folder") from None
  finally:
    shutil.rmtree(tmp, ignore_errors=True)


def _extract_checked(zip_path: pathlib.Path, name: str, manifest: dict,
                     dest: pathlib.Path) -> None:
  fix = _bundle_fix(name)
  try:
    zf = zipfile.ZipFile(zip_path)
  except (zipfile.BadZipFile, OSError, EOFError) as e:
    raise UserError(f"{zip_path}: not a valid zip archive ({e}); {fix}") from None
  with zf:
    present = set(zf.namelist())
    for member, want in manifest["members"].items():  # archive members, not rows
      if member not in present:
        raise UserError(f"{zip_path}: member {member} is missing; {fix}")
      target = dest / member
      target.parent.mkdir(parents=True, exist_ok=True)
      h, n = hashlib.sha256(), 0
      with open(target, "wb") as out:
        try:
          with zf.open(member) as src:
            while block := src.read(1 << 20):
              n += len(block)
              if n > want["size"]:
                break
              h.update(block)
              out.write(block)
        except (zipfile.BadZipFile, zlib.error, EOFError, ValueError,
                NotImplementedError) as e:
          raise UserError(f"{zip_path}: member {member} is damaged ({e}); "
                          f"{fix}") from None
      if n != want["size"] or h.hexdigest() != want["sha256"]:
        got = (f"more than {want['size']} bytes" if n > want["size"]
               else f"{n} bytes, sha256 {h.hexdigest()}")
        raise UserError(f"{zip_path}: member {member} has {got}; expected "
                        f"{want['size']} bytes, sha256 {want['sha256']}; {fix}")


def build_bundle(src_dir: str | os.PathLike, out_dir: str | os.PathLike,
                 name: str = "ml-latest-small") -> dict:
  """Maintainers: writes `out_dir/name.zip` and its manifest `name.json` from
  a GroupLens folder (README.txt and the csv files, byte for byte).

  The zip is deterministic for a given zlib: members sorted, fixed date
  (the dataset's generation day), mode 0644. Returns the manifest."""
  src, out = pathlib.Path(src_dir), pathlib.Path(out_dir)
  files = sorted(p for p in src.iterdir()
                 if p.is_file() and not p.name.startswith("."))
  names = {p.name for p in files}
  for need in ("README.txt", MARKER[name]):
    if need not in names:
      raise UserError(f"{src}: no {need}; point at the GroupLens {name} folder")
  members = {}
  out.mkdir(parents=True, exist_ok=True)
  with atomic_path(out / f"{name}.zip") as tmp:
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as zf:
      for path in files:
        data = path.read_bytes()
        info = zipfile.ZipInfo(f"{name}/{path.name}", (2018, 9, 26, 0, 0, 0))
        info.compress_type = zipfile.ZIP_DEFLATED
        info.create_system = 3
        info.external_attr = (stat.S_IFREG | 0o644) << 16
        zf.writestr(info, data, compresslevel=9)
        members[info.filename] = {"size": len(data),
                                  "sha256": hashlib.sha256(data).hexdigest()}
  archive = out / f"{name}.zip"
  manifest = {"dataset": name, "archive": archive.name,
              "archive_size": archive.stat().st_size,
              "archive_sha256": sha256_file(archive), "members": members}
  with atomic_path(out / f"{name}.json") as tmp:
    tmp.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
  return manifest


def _install(src: pathlib.Path, dest: pathlib.Path, name: str) -> pathlib.Path:
  """Moves the checked folder `src` to `dest`, replacing a damaged copy.

  A damaged copy we unpacked (it has the stamp) is discarded with `src`'s
  temporary folder; any other folder at `dest` is renamed beside it, never
  deleted."""
  if (name in BUNDLED and _usable(dest, name) and (dest / STAMP).is_file()
      and _check_bundled_copy(dest, name) is None):
    return dest  # another process unpacked an intact copy meanwhile
  old = kept = None
  if dest.exists() or dest.is_symlink():
    if (dest / STAMP).is_file() and not dest.is_symlink():
      old = src.parent / "replaced"
    else:
      when = datetime.datetime.now().strftime("%Y%m%dT%H%M%S")
      old = kept = dest.with_name(f"{dest.name}.replaced-{when}")
      i = 1
      while kept.exists() or kept.is_symlink():
        old = kept = dest.with_name(f"{dest.name}.replaced-{when}-{i}")
        i += 1
    dest.rename(old)
  try:
    src.rename(dest)
  except OSError:
    if old is not None and not (dest.exists() or dest.is_symlink()):
      old.rename(dest)  # put it back as it was
    elif old is None and _usable(dest, name) and _check_bundled_copy(dest, name) is None:
      return dest  # another process unpacked it first
    raise
  if kept is not None:
    warnings.warn(f"{dest} was not a usable copy of {name}; it is now the "
                  f"bundled copy, and the old folder was kept as {kept}",
                  stacklevel=4)
  return dest


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


def _check_member_name(name: str, zip_path) -> None:
  parts = name.replace("\\", "/").split("/")
  if name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
    raise UserError(f"{zip_path}: refusing member with absolute path {name!r}")
  if ".." in parts:
    raise UserError(f"{zip_path}: refusing member with '..' in its path "
                    f"{name!r}")


def _check_member(info: zipfile.ZipInfo, zip_path: os.PathLike) -> None:
  name = info.filename
  _check_member_name(name, zip_path)
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
