"""The ml-latest-small copy bundled in the package: its files, licence,
resolution order, checked unpacking and damage handling. Never touches the
network."""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import pathlib
import shutil
import stat
import subprocess
import sys
import types
import urllib.error
import zipfile

import pytest

from recae_jax.data import download
from recae_jax.data.download import resolve_dataset_dir, unpack_bundled
from recae_jax.errors import UserError

NAME = "ml-latest-small"
BUNDLE = pathlib.Path(download.__file__).parent / "bundled"
REPO = pathlib.Path(__file__).resolve().parents[1]

# GroupLens's files (sizes and sha256 as recorded when the offline copy was
# checked), independent of the committed manifest.
GROUPLENS = {
    "README.txt": (8342, "63d22ac138e80fae37021797ed8e1b9424b5239dc576a137422adf783ae3f404"),
    "links.csv": (197979, "97ad18e4e56a09363c65676b6cb3482ce3e2cea2372a24620c1599c843325f31"),
    "movies.csv": (494431, "5a5f32dd9bb3797b8e728a1b98958789d2b13f294a69fdfbc5727f8a9611aa07"),
    "ratings.csv": (2483723, "aa289ca83157595d0df6aea1be6a4ded676ddc4385472e8313a8ed9805352646"),
    "tags.csv": (118660, "92a9f8bb7916dceef6151209845788c3643f794dfa79d1feaec7121b5960399d"),
}


@pytest.fixture(autouse=True)
def _isolated(monkeypatch, tmp_path):
  monkeypatch.delenv("RECAE_DATA_DIR", raising=False)
  monkeypatch.setenv("RECAE_CACHE_DIR", str(tmp_path / "cache"))

  def no_network(url, dest):
    raise AssertionError(f"test tried to download {url}")
  monkeypatch.setattr(download, "_fetch", no_network)


def _sha(path) -> str:
  return hashlib.sha256(pathlib.Path(path).read_bytes()).hexdigest()


def _package_copy(tmp_path, name="pkg") -> pathlib.Path:
  """A copy of the bundled folder to damage (the real one stays intact)."""
  dest = tmp_path / name
  shutil.copytree(BUNDLE, dest)
  return dest


def _use_bundle(monkeypatch, folder: pathlib.Path) -> None:
  monkeypatch.setattr(download, "bundle_dir", lambda: folder)


def _leftovers(cache: pathlib.Path) -> list[str]:
  return sorted(p.name for p in cache.iterdir() if p.name.startswith("."))


def test_bundle_holds_grouplens_files_and_licence():
  manifest = json.loads((BUNDLE / f"{NAME}.json").read_text())
  archive = BUNDLE / f"{NAME}.zip"
  assert archive.stat().st_size < 2_000_000
  assert manifest["archive_size"] == archive.stat().st_size
  assert manifest["archive_sha256"] == _sha(archive)
  assert manifest["members"] == {f"{NAME}/{f}": {"size": s, "sha256": h}
                                 for f, (s, h) in GROUPLENS.items()}
  with zipfile.ZipFile(archive) as zf:
    assert zf.testzip() is None
    assert sorted(zf.namelist()) == sorted(manifest["members"])
    readme = zf.read(f"{NAME}/README.txt")
  # GroupLens's README (licence + citation) beside the archive, verbatim.
  assert (BUNDLE / f"{NAME}.README.txt").read_bytes() == readme
  assert b"may redistribute the data set" in readme
  notes = (BUNDLE / "README.md").read_text()
  for needle in ("F. Maxwell Harper and Joseph A. Konstan. 2015",
                 "The MovieLens Datasets", "Article 19",
                 "may redistribute the data set",
                 "may not redistribute the data without separate permission",
                 "commercial"):
    assert needle in notes, needle


def test_unpacks_into_cache_after_env_and_cache_before_download(tmp_path, monkeypatch):
  folder = resolve_dataset_dir(NAME)
  assert folder == tmp_path / "cache" / NAME
  for f, (size, digest) in GROUPLENS.items():
    assert (folder / f).stat().st_size == size and _sha(folder / f) == digest
  assert (folder / download.STAMP).is_file()
  assert _leftovers(tmp_path / "cache") == []
  # --data_dir, then $RECAE_DATA_DIR, come first.
  mine = tmp_path / "mine" / NAME
  mine.mkdir(parents=True)
  (mine / "ratings.csv").write_text("userId,movieId,rating,timestamp\n")
  assert resolve_dataset_dir(NAME, mine.parent) == mine
  monkeypatch.setenv("RECAE_DATA_DIR", str(mine.parent))
  assert resolve_dataset_dir(NAME) == mine


def test_a_hand_made_cache_copy_wins_over_the_bundle(tmp_path):
  mine = tmp_path / "cache" / NAME
  mine.mkdir(parents=True)
  (mine / "ratings.csv").write_text("userId,movieId,rating,timestamp\n1,1,5,0\n")
  assert resolve_dataset_dir(NAME) == mine
  assert (mine / "ratings.csv").read_text().endswith("1,1,5,0\n")  # untouched
  assert not (mine / download.STAMP).exists()


def test_bundle_works_with_downloading_off(tmp_path):
  assert resolve_dataset_dir(NAME, download=False) == tmp_path / "cache" / NAME


def test_read_only_package_folder_is_never_written(tmp_path, monkeypatch):
  pkg = _package_copy(tmp_path)
  _use_bundle(monkeypatch, pkg)
  before = {p.name: (p.stat().st_mtime_ns, p.stat().st_size) for p in pkg.iterdir()}
  for p in [pkg, *pkg.iterdir()]:
    p.chmod(p.stat().st_mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
  try:
    folder = resolve_dataset_dir(NAME)
  finally:
    pkg.chmod(0o755)
  assert folder == tmp_path / "cache" / NAME
  assert _sha(folder / "ratings.csv") == GROUPLENS["ratings.csv"][1]
  after = {p.name: (p.stat().st_mtime_ns, p.stat().st_size) for p in pkg.iterdir()}
  assert after == before  # nothing unpacked, stamped or left beside the archive


def test_unwritable_cache_gives_the_fix(tmp_path, monkeypatch):
  blocker = tmp_path / "a_file"
  blocker.write_text("")
  monkeypatch.setenv("RECAE_CACHE_DIR", str(blocker / "cache"))
  with pytest.raises(UserError) as e:
    resolve_dataset_dir(NAME)
  msg = str(e.value)
  assert "\n" not in msg
  assert str(blocker / "cache") in msg and "set RECAE_CACHE_DIR" in msg


def _corrupt_member(archive: pathlib.Path, member: str) -> None:
  """Flips bytes in the middle of one member's compressed data."""
  with zipfile.ZipFile(archive) as zf:
    info = zf.getinfo(member)
  data = bytearray(archive.read_bytes())
  # local header: 30 bytes + name + extra, then the compressed data
  n, m = int.from_bytes(data[info.header_offset + 26:info.header_offset + 28], "little"), \
      int.from_bytes(data[info.header_offset + 28:info.header_offset + 30], "little")
  start = info.header_offset + 30 + n + m
  mid = start + info.compress_size // 2
  for i in range(mid, mid + 64):
    data[i] ^= 0x5A
  archive.write_bytes(bytes(data))


def test_damaged_archive_names_the_member_and_writes_nothing(tmp_path, monkeypatch):
  pkg = _package_copy(tmp_path)
  _use_bundle(monkeypatch, pkg)
  _corrupt_member(pkg / f"{NAME}.zip", f"{NAME}/movies.csv")
  with pytest.raises(UserError) as e:
    resolve_dataset_dir(NAME)
  msg = str(e.value)
  assert "\n" not in msg
  assert msg.startswith(f"{pkg / f'{NAME}.zip'}: member {NAME}/movies.csv ")
  assert "reinstall recae_jax" in msg and "--data_dir" in msg
  cache = tmp_path / "cache"
  assert not (cache / NAME).exists() and _leftovers(cache) == []


def test_member_that_does_not_match_the_manifest_is_named(tmp_path, monkeypatch):
  pkg = _package_copy(tmp_path)
  _use_bundle(monkeypatch, pkg)
  manifest = json.loads((pkg / f"{NAME}.json").read_text())
  manifest["members"][f"{NAME}/tags.csv"]["sha256"] = "0" * 64
  (pkg / f"{NAME}.json").write_text(json.dumps(manifest))
  with pytest.raises(UserError, match=f"member {NAME}/tags.csv has 118660 bytes, "
                     f"sha256 {GROUPLENS['tags.csv'][1]}; expected 118660 bytes, "
                     f"sha256 0000"):
    resolve_dataset_dir(NAME)
  assert not (tmp_path / "cache" / NAME).exists()


def test_missing_member_and_non_zip_are_named(tmp_path, monkeypatch):
  pkg = _package_copy(tmp_path)
  _use_bundle(monkeypatch, pkg)
  with zipfile.ZipFile(BUNDLE / f"{NAME}.zip") as src, \
      zipfile.ZipFile(pkg / f"{NAME}.zip", "w") as dst:
    for info in src.infolist():
      if not info.filename.endswith("links.csv"):
        dst.writestr(info, src.read(info))
  with pytest.raises(UserError, match=f"member {NAME}/links.csv is missing"):
    resolve_dataset_dir(NAME)
  (pkg / f"{NAME}.zip").write_bytes(b"PK\x03\x04 truncated")
  with pytest.raises(UserError, match="not a valid zip archive.*reinstall"):
    resolve_dataset_dir(NAME)
  (pkg / f"{NAME}.json").write_text("{not json")
  with pytest.raises(UserError, match=f"{NAME}.json: damaged bundle manifest"):
    resolve_dataset_dir(NAME)
  assert not (tmp_path / "cache" / NAME).exists()


@pytest.mark.parametrize("damage", ["truncate", "edit", "delete", "delete_marker"])
def test_damaged_cache_copy_is_named_and_unpacked_again(tmp_path, damage):
  folder = resolve_dataset_dir(NAME)
  victim = folder / ("ratings.csv" if damage == "delete_marker" else "movies.csv")
  if damage == "truncate":
    victim.write_bytes(victim.read_bytes()[:1000])
  elif damage == "edit":
    data = bytearray(victim.read_bytes())
    data[5000] ^= 1  # same size, different bytes
    victim.write_bytes(bytes(data))
  else:
    victim.unlink()
  if damage == "delete_marker":  # no longer a usable copy: simply unpacked again
    assert resolve_dataset_dir(NAME) == folder
  else:
    with pytest.warns(UserWarning, match=f"{folder}: member movies.csv .*"
                      "unpacking it again"):
      assert resolve_dataset_dir(NAME) == folder
  assert _sha(victim) == GROUPLENS[victim.name][1]
  cache = tmp_path / "cache"
  assert sorted(p.name for p in cache.iterdir()) == [NAME]  # nothing left over
  assert download._check_bundled_copy(folder, NAME) is None


def test_incomplete_folder_that_is_not_ours_is_kept_aside(tmp_path, monkeypatch):
  frozen = datetime.datetime(2026, 1, 2, 3, 4, 5)  # both replacements "at once"
  monkeypatch.setattr(download, "datetime", types.SimpleNamespace(
      datetime=types.SimpleNamespace(now=lambda: frozen)))
  mine = tmp_path / "cache" / NAME
  mine.mkdir(parents=True)
  (mine / "movies.csv").write_text("my notes\n")  # no ratings.csv: unusable
  with pytest.warns(UserWarning, match="old folder was kept as"):
    folder = resolve_dataset_dir(NAME)
  assert folder == mine and _sha(folder / "movies.csv") == GROUPLENS["movies.csv"][1]
  kept = [p for p in (tmp_path / "cache").iterdir() if p.name.startswith(f"{NAME}.replaced-")]
  assert len(kept) == 1 and (kept[0] / "movies.csv").read_text() == "my notes\n"
  assert kept[0].name == f"{NAME}.replaced-20260102T030405"
  # Again within the same second: the first kept folder is not overwritten.
  shutil.rmtree(folder)
  folder.mkdir()
  (folder / "tags.csv").write_text("more notes\n")
  with pytest.warns(UserWarning, match="old folder was kept as"):
    resolve_dataset_dir(NAME)
  kept = sorted(p for p in (tmp_path / "cache").iterdir()
                if p.name.startswith(f"{NAME}.replaced-"))
  assert len(kept) == 2
  assert sorted((p / f).read_text() for p in kept for f in ("movies.csv", "tags.csv")
                if (p / f).exists()) == ["more notes\n", "my notes\n"]


def test_second_unpack_keeps_an_intact_copy(tmp_path):
  folder = unpack_bundled(NAME, tmp_path / "cache")
  inode = (folder / "ratings.csv").stat().st_ino
  # e.g. another process that started unpacking before the first finished
  assert unpack_bundled(NAME, tmp_path / "cache") == folder
  assert (folder / "ratings.csv").stat().st_ino == inode  # not swapped under a reader
  assert _leftovers(tmp_path / "cache") == []


def test_missing_bundle_falls_back_to_a_checked_download(tmp_path, monkeypatch):
  _use_bundle(monkeypatch, tmp_path / "empty")

  def offline(url, dest):
    raise urllib.error.URLError("no route to host")
  monkeypatch.setattr(download, "_fetch", offline)
  with pytest.raises(UserError) as e:
    resolve_dataset_dir(NAME)
  msg = str(e.value)
  assert "\n" not in msg
  assert "no route to host" in msg and f"{NAME}.zip" in msg
  assert f"the bundled copy is missing from {tmp_path / 'empty'}" in msg
  assert download.QUICK_COMMAND not in msg  # it would not work either


def test_cache_copy_without_the_bundle_is_checked_against_its_stamp(tmp_path,
                                                                   monkeypatch):
  folder = resolve_dataset_dir(NAME)
  _use_bundle(monkeypatch, tmp_path / "empty")
  assert resolve_dataset_dir(NAME) == folder  # intact: used as it is
  (folder / "tags.csv").write_bytes(b"damaged")
  with pytest.raises(UserError) as e:
    resolve_dataset_dir(NAME)
  msg = str(e.value)
  assert msg.startswith(f"{folder}: member tags.csv has 7 bytes, expected 118660")
  assert "bundled archive is missing" in msg and f"delete {folder}" in msg
  (folder / download.STAMP).write_text("[]")
  with pytest.raises(UserError, match=f"its {download.STAMP} is damaged"):
    resolve_dataset_dir(NAME)


def test_build_bundle_reproduces_the_manifest(tmp_path):
  folder = unpack_bundled(NAME, tmp_path / "cache")
  out = tmp_path / "rebuilt"
  manifest = download.build_bundle(folder, out)
  committed = json.loads((BUNDLE / f"{NAME}.json").read_text())
  assert manifest["members"] == committed["members"]  # the stamp is not packed
  assert json.loads((out / f"{NAME}.json").read_text()) == manifest
  (folder / "README.txt").unlink()
  with pytest.raises(UserError, match="no README.txt"):
    download.build_bundle(folder, tmp_path / "again")


def _script(*args, env_extra=None, cwd=REPO, timeout=600):
  env = {k: v for k, v in os.environ.items() if k != "RECAE_DATA_DIR"}
  env.update(env_extra or {})
  return subprocess.run([sys.executable, *args], capture_output=True, text=True,
                        cwd=cwd, env=env, timeout=timeout)


def test_offline_ml100k_error_points_at_the_bundled_command(tmp_path):
  proc = _script("experiments/data_info.py", "--dataset=ml-100k", "--nodownload",
                 env_extra={"RECAE_CACHE_DIR": str(tmp_path / "cache")})
  assert proc.returncode == 2, proc.stderr
  assert "Traceback" not in proc.stderr
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].endswith(download.QUICK_COMMAND), proc.stderr


def test_data_info_on_bundled_copy_with_only_the_repository(tmp_path):
  cache = tmp_path / "cache"
  proc = _script("experiments/data_info.py", f"--dataset={NAME}", "--nodownload",
                 env_extra={"RECAE_CACHE_DIR": str(cache)})
  assert proc.returncode == 0, proc.stderr
  out = json.loads(proc.stdout)
  assert out["directory"] == str(cache / NAME)
  assert (out["users"], out["items"], out["ratings"]) == (610, 9742, 100_836)
  assert (cache / NAME / download.STAMP).is_file()


def test_quick_command_trains_with_only_the_repository(tmp_path):
  """The offline hint's command (shortened to 2 epochs) works from a fresh
  cache with no $RECAE_DATA_DIR and no network."""
  args = download.QUICK_COMMAND.split()[1:]
  assert args[0] == "experiments/train.py"
  workdir = tmp_path / "quick"
  args = [a if not a.startswith("--workdir=") else f"--workdir={workdir}" for a in args]
  proc = _script(*args, "--epochs=2",
                 env_extra={"RECAE_CACHE_DIR": str(tmp_path / "cache")})
  assert proc.returncode == 0, proc.stderr[-2000:]
  m = json.loads((workdir / "metrics.json").read_text())
  assert m["dataset"] == NAME
  assert m["n_train"] + m["n_test"] == 100_836 and m["n_test"] > 0
  assert m["test_rmse"] < 1.0, m["test_rmse"]  # the global mean scores about 1.04
  assert (tmp_path / "cache" / NAME / download.STAMP).is_file()
