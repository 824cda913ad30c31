"""Locating, verifying and safely extracting datasets; never touches the network."""

from __future__ import annotations

import hashlib
import pathlib
import stat
import urllib.error
import zipfile

import pytest

from recae_jax.data import download
from recae_jax.data.download import resolve_dataset_dir, safe_extract
from recae_jax.errors import UserError


@pytest.fixture(autouse=True)
def _isolated(monkeypatch, tmp_path):
  monkeypatch.delenv("RECAE_DATA_DIR", raising=False)
  monkeypatch.setenv("RECAE_CACHE_DIR", str(tmp_path / "cache"))

  def no_network(url, dest):
    raise AssertionError(f"test tried to download {url}")
  monkeypatch.setattr(download, "_fetch", no_network)


def _zip(path: pathlib.Path, members: dict[str, bytes],
         symlinks: dict[str, str] = {}) -> pathlib.Path:
  with zipfile.ZipFile(path, "w") as zf:
    for name, data in members.items():
      zf.writestr(name, data)
    for name, target in symlinks.items():
      info = zipfile.ZipInfo(name)
      info.external_attr = (stat.S_IFLNK | 0o777) << 16
      zf.writestr(info, target)
  return path


def _dataset(folder: pathlib.Path, marker: str = "u.data") -> pathlib.Path:
  folder.mkdir(parents=True)
  (folder / marker).write_text("1\t1\t1\t1\n")
  return folder


def test_resolution_order(tmp_path, monkeypatch):
  explicit = _dataset(tmp_path / "mine" / "ml-100k")
  env = _dataset(tmp_path / "env" / "ml-100k")
  cache = _dataset(tmp_path / "cache" / "ml-100k")
  assert resolve_dataset_dir("ml-100k", explicit) == explicit
  assert resolve_dataset_dir("ml-100k", explicit.parent) == explicit
  assert resolve_dataset_dir("ml-100k") == cache
  monkeypatch.setenv("RECAE_DATA_DIR", str(tmp_path / "env"))
  assert resolve_dataset_dir("ml-100k") == env
  assert resolve_dataset_dir("ml-100k", explicit) == explicit


def test_ml10m_folder_alias(tmp_path):
  folder = _dataset(tmp_path / "d" / "ml-10M100K", "ratings.dat")
  assert resolve_dataset_dir("ml-10m", tmp_path / "d") == folder


def test_explicit_data_dir_is_authoritative(tmp_path):
  _dataset(tmp_path / "cache" / "ml-100k")
  with pytest.raises(UserError) as e:
    resolve_dataset_dir("ml-100k", tmp_path / "elsewhere")
  msg = str(e.value)
  assert str(tmp_path / "elsewhere" / "u.data") in msg
  assert str(tmp_path / "elsewhere" / "ml-100k" / "u.data") in msg


def test_offline_error_lists_every_place(tmp_path, monkeypatch):
  monkeypatch.setenv("RECAE_DATA_DIR", str(tmp_path / "env"))
  with pytest.raises(UserError) as e:
    resolve_dataset_dir("ml-1m", download=False)
  msg = str(e.value)
  assert "\n" not in msg
  assert str(tmp_path / "env" / "ml-1m" / "ratings.dat") in msg
  assert str(tmp_path / "cache" / "ml-1m" / "ratings.dat") in msg
  assert "--data_dir" in msg and "RECAE_DATA_DIR" in msg
  assert "--dataset=ml-latest-small" in msg


def test_failed_download_lists_every_place(tmp_path, monkeypatch):
  def offline(url, dest):
    raise urllib.error.URLError("no route to host")
  monkeypatch.setattr(download, "_fetch", offline)
  with pytest.raises(UserError) as e:
    resolve_dataset_dir("ml-100k")
  msg = str(e.value)
  assert "\n" not in msg
  assert "no route to host" in msg and "ml-100k.zip" in msg
  assert str(tmp_path / "cache" / "ml-100k" / "u.data") in msg
  assert "RECAE_DATA_DIR is not set" in msg
  # ...and says what works offline right now, with the command.
  assert "bundled ml-latest-small works now" in msg
  assert msg.endswith(download.QUICK_COMMAND)
  assert not list((tmp_path / "cache").glob("*.part"))


def test_unknown_name():
  with pytest.raises(UserError, match="unknown dataset 'ml-2m'"):
    resolve_dataset_dir("ml-2m")


def test_checksum_mismatch_is_rejected_before_extracting(tmp_path, monkeypatch):
  fake = _zip(tmp_path / "fake.zip", {"ml-100k/u.data": b"1\t1\t1\t1\n"})
  monkeypatch.setattr(download, "_fetch",
                      lambda url, dest: dest.write_bytes(fake.read_bytes()))
  with pytest.raises(UserError, match="ml-100k.zip"):
    resolve_dataset_dir("ml-100k")
  assert not (tmp_path / "cache" / "ml-100k").exists()
  # Right size and hash (pinned to our fake) -> extracted and found.
  data = fake.read_bytes()
  monkeypatch.setitem(download.CHECKSUMS, "ml-100k",
                      (len(data), hashlib.sha256(data).hexdigest()))
  folder = resolve_dataset_dir("ml-100k")
  assert folder == tmp_path / "cache" / "ml-100k"
  assert (folder / "u.data").read_text() == "1\t1\t1\t1\n"
  assert resolve_dataset_dir("ml-100k") == folder  # now from the cache


def test_unpinned_zip_normalises_ml10m(tmp_path, monkeypatch):
  assert "ml-10m" not in download.CHECKSUMS
  fake = _zip(tmp_path / "fake.zip", {"ml-10M100K/ratings.dat": b"1::1::5::1\n",
                                      "ml-10M100K/movies.dat": b"1::A::B\n"})
  seen = []

  def fetch(url, dest):
    seen.append(url)
    dest.write_bytes(fake.read_bytes())
  monkeypatch.setattr(download, "_fetch", fetch)
  folder = resolve_dataset_dir("ml-10m")
  assert seen == ["https://files.grouplens.org/datasets/movielens/ml-10m.zip"]
  assert folder == tmp_path / "cache" / "ml-10m"
  assert (folder / "movies.dat").exists()
  bad = _zip(tmp_path / "bad.zip", {"other/ratings.dat": b""})
  with pytest.raises(UserError, match="archive has no"):
    download.verify_zip(bad, "ml-10m")
  (tmp_path / "junk.zip").write_bytes(b"not a zip")
  with pytest.raises(UserError, match="not a valid zip"):
    download.verify_zip(tmp_path / "junk.zip", "ml-10m")


@pytest.mark.parametrize("members, symlinks, problem", [
    ({"/etc/evil": b"x"}, {}, "absolute path"),
    ({"ml-100k/../../evil": b"x"}, {}, "'..'"),
    ({"..\\evil": b"x"}, {}, "'..'"),
    ({"ml-100k/u.data": b"x"}, {"ml-100k/link": "/etc/passwd"}, "symlink"),
])
def test_safe_extract_rejects(tmp_path, members, symlinks, problem):
  z = _zip(tmp_path / "evil.zip", members, symlinks)
  out = tmp_path / "out"
  out.mkdir()
  with pytest.raises(UserError, match=problem) as e:
    safe_extract(z, out)
  assert str(z) in str(e.value)
  assert list(out.iterdir()) == []  # nothing written
  assert not (tmp_path / "evil").exists()


def test_safe_extract_ok(tmp_path):
  z = _zip(tmp_path / "ok.zip", {"ml-100k/u.data": b"abc", "ml-100k/": b""})
  safe_extract(z, tmp_path / "out")
  assert (tmp_path / "out" / "ml-100k" / "u.data").read_bytes() == b"abc"
