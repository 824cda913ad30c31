"""Parsing MovieLens and generic ratings files; every bad input is a UserError."""

from __future__ import annotations

import os
import pathlib
import shutil
import subprocess
import sys
import json

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from recae_jax.data import movielens
from recae_jax.data.movielens import load_dataset, load_fold
from recae_jax.errors import UserError

REPO = pathlib.Path(__file__).resolve().parents[1]
GENRES_100K = ["unknown", "Action", "Adventure", "Animation", "Children's",
               "Comedy", "Crime", "Documentary", "Drama", "Fantasy",
               "Film-Noir", "Horror", "Musical", "Mystery", "Romance",
               "Sci-Fi", "Thriller", "War", "Western"]


def make_ml100k(folder: pathlib.Path, data_lines: list[str],
                n_items: int = 5, n_users: int = 4) -> pathlib.Path:
  """A tiny ML-100K-shaped folder (no real data needed)."""
  folder.mkdir(parents=True, exist_ok=True)
  (folder / "u.genre").write_text(
      "".join(f"{g}|{k}\n" for k, g in enumerate(GENRES_100K)) + "\n")
  items = []
  for i in range(1, n_items + 1):  # test fixture, a handful of lines
    flags = ["0"] * 19
    flags[i % 19] = "1"
    items.append(f"{i}|Movie {i} (199{i % 10})|01-Jan-1995||http://x|"
                 + "|".join(flags))
  (folder / "u.item").write_bytes(("\n".join(items) + "\n").encode("latin-1"))
  (folder / "u.user").write_text("".join(
      f"{u}|{20 + u}|{'MF'[u % 2]}|{['writer', 'other'][u % 2]}|0000{u}\n"
      for u in range(1, n_users + 1)))
  (folder / "u.data").write_text("".join(line + "\n" for line in data_lines))
  return folder


GOOD = ["1\t1\t5\t881250949", "1\t2\t3\t881250950", "2\t3\t4\t881250951",
        "3\t1\t1\t881250952", "4\t5\t2\t881250953"]


def _error(fn, *args, **kwargs) -> str:
  with pytest.raises(UserError) as e:
    fn(*args, **kwargs)
  msg = str(e.value)
  assert "\n" not in msg
  return msg


# ------------------------------------------------------------ synthetic files


def test_fake_ml100k_loads(tmp_path):
  folder = make_ml100k(tmp_path / "ml-100k", GOOD)
  ds = load_dataset("ml-100k", tmp_path)
  assert (ds.n_users, ds.n_items, len(ds.ratings)) == (4, 5, 5)
  assert ds.genres == tuple(GENRES_100K)
  assert ds.items_info["movie_id"].tolist() == [1, 2, 3, 4, 5]
  assert ds.items_info.loc[0, "Action"] == 1
  assert ds.items_info["Action"].dtype == np.int8
  assert ds.directory == str(folder)
  assert set(ds.files) == {str(folder / f) for f in
                           ("u.data", "u.item", "u.genre", "u.user")}
  assert ds.ratings.users.dtype == np.int32
  assert ds.ratings.ratings.dtype == np.float32
  assert ds.ratings.timestamps.dtype == np.int64
  # data_dir may also be the dataset folder itself.
  assert len(load_dataset("ml-100k", folder).ratings) == 5


def test_item_space_comes_from_movies_file(tmp_path):
  make_ml100k(tmp_path / "ml-100k", GOOD[:2], n_items=9)
  ds = load_dataset("ml-100k", tmp_path)
  assert ds.n_items == 9 and ds.n_users == 1


@pytest.mark.parametrize("line, problem", [
    ("5\t1\t3", "expected 4 tab-separated fields"),
    ("5\t1\t3\t1\t9", "found 5 fields"),
    ("x5\t1\t3\t881250949", "user id 'x5' is not an integer"),
    ("5\t1.5\t3\t881250949", "item id '1.5' is not an integer"),
    ("5\t1\tnan\t881250949", "rating 'nan' is not a number"),
    ("5\t1\tgood\t881250949", "rating 'good' is not a number"),
    ("5\t1\t6\t881250949", "outside the dataset's scale [1, 5]"),
    ("5\t1\t0\t881250949", "outside the dataset's scale [1, 5]"),
    ("5\t1\t3\tnoon", "timestamp 'noon' is not an integer"),
    ("", "empty line"),
])
def test_malformed_line_names_file_and_line(tmp_path, line, problem):
  lines = GOOD[:2] + [line] + GOOD[2:]
  folder = make_ml100k(tmp_path / "ml-100k", lines, n_users=5)
  msg = _error(load_dataset, "ml-100k", tmp_path)
  assert str(folder / "u.data") in msg
  assert "line 3" in msg
  assert problem in msg


def test_item_not_in_movies_file(tmp_path):
  make_ml100k(tmp_path / "ml-100k", GOOD + ["2\t77\t3\t881250949"])
  msg = _error(load_dataset, "ml-100k", tmp_path)
  assert "u.data, line 6" in msg and "item id 77 is not in u.item" in msg


def test_empty_and_missing_files(tmp_path):
  folder = make_ml100k(tmp_path / "ml-100k", [])
  msg = _error(load_dataset, "ml-100k", tmp_path)
  assert str(folder / "u.data") in msg and "empty" in msg
  (folder / "u.data").write_text("\n\n  \n")
  assert "empty" in _error(load_dataset, "ml-100k", tmp_path)
  (folder / "u.data").write_text("\n".join(GOOD))
  (folder / "u.item").unlink()
  msg = _error(load_dataset, "ml-100k", tmp_path)
  assert "missing file" in msg and str(folder / "u.item") in msg
  msg = _error(load_dataset, str(tmp_path / "nope.csv"))
  assert "missing file" in msg and "nope.csv" in msg


def test_duplicates_error_and_last(tmp_path):
  lines = GOOD + ["2\t3\t1\t881250999", "1\t1\t2\t800000000"]
  folder = make_ml100k(tmp_path / "ml-100k", lines)
  msg = _error(load_dataset, "ml-100k", tmp_path)
  assert str(folder / "u.data") in msg
  assert "user 2 rated item 3 more than once (lines 3, 6)" in msg
  assert "2 repeated" in msg
  with pytest.warns(UserWarning, match="dropped 2 repeated"):
    ds = load_dataset("ml-100k", tmp_path, duplicates="last")
  assert len(ds.ratings) == 5
  got = {(int(ds.user_ids[u]), int(ds.item_ids[i])): float(r)
         for u, i, r in zip(ds.ratings.users, ds.ratings.items,
                            ds.ratings.ratings)}
  assert got[(2, 3)] == 1.0   # the later timestamp wins
  assert got[(1, 1)] == 5.0   # the earlier line has the later timestamp
  with pytest.raises(UserError, match="duplicates="):
    load_dataset("ml-100k", tmp_path, duplicates="first")


def test_encodings(tmp_path):
  folder = make_ml100k(tmp_path / "ml-100k", GOOD)
  (folder / "u.data").write_bytes("\n".join(GOOD).encode("utf-16"))
  msg = _error(load_dataset, "ml-100k", tmp_path)
  assert str(folder / "u.data") in msg and "UTF-16" in msg
  (folder / "u.data").write_bytes("\n".join(GOOD).encode("utf-16-le"))
  msg = _error(load_dataset, "ml-100k", tmp_path)
  assert "line 1" in msg and "NUL" in msg
  bad = ("\n".join(GOOD[:3]) + "\n4\t5\t2\t88\xff\n").encode("latin-1")
  (folder / "u.data").write_bytes(bad)
  msg = _error(load_dataset, "ml-100k", tmp_path)
  assert "line 4" in msg and "0xff" in msg and "utf-8" in msg


def test_unknown_dataset_name():
  msg = _error(load_dataset, "ml-3m")
  assert "unknown dataset 'ml-3m'" in msg and "ml-100k" in msg


def test_synthetic_dataset_names():
  ds = load_dataset("synthetic:40x30x300")
  assert (ds.n_users, ds.n_items, len(ds.ratings)) == (40, 30, 300)
  assert load_dataset("synthetic:ml-100k").name == "synthetic-ml-100k"
  for bad in ("synthetic:ml-3m", "synthetic:4x5", "synthetic:5x5x100"):
    msg = _error(load_dataset, bad)
    assert "synthetic" in msg and "\n" not in msg


def test_load_fold_checks_index_space(tmp_path):
  folder = make_ml100k(tmp_path / "ml-100k", GOOD)
  (folder / "u1.base").write_text("\n".join(GOOD[:4]) + "\n")
  (folder / "u1.test").write_text(GOOD[4] + "\n9\t1\t3\t881250949\n")
  ds = load_dataset("ml-100k", tmp_path)
  msg = _error(load_fold, ds, "u1")
  assert str(folder / "u1.test") in msg and "line 2" in msg
  assert "user id 9" in msg
  (folder / "u1.test").write_text(GOOD[4] + "\n")
  base, test = load_fold(ds, "u1")
  assert (len(base), len(test)) == (4, 1)
  assert (base.n_users, base.n_items) == (ds.n_users, ds.n_items)
  assert "unknown fold" in _error(load_fold, ds, "u9")
  assert "missing file" in _error(load_fold, ds, "u2")


# --------------------------------------------------------------- generic files


@pytest.mark.parametrize("sep", [",", "\t", "::", " ", "  "])
@pytest.mark.parametrize("header", [False, True])
@pytest.mark.parametrize("timestamps", [False, True])
def test_generic_formats(tmp_path, sep, header, timestamps):
  rows = [(10, 7, 4.5, 100), (10, 3, 1.0, 50), (2, 7, 3.0, 75)]
  lines = [sep.join(str(x) for x in (r if timestamps else r[:3])) for r in rows]
  if header:
    lines.insert(0, sep.join(["user", "item", "rating", "ts"][:3 + timestamps]))
  path = tmp_path / "r.txt"
  path.write_text("\r\n".join(lines) + "\r\n")
  ds = load_dataset(str(path))
  assert (ds.n_users, ds.n_items, len(ds.ratings)) == (2, 2, 3)
  assert ds.user_ids.tolist() == [2, 10] and ds.item_ids.tolist() == [3, 7]
  assert ds.ratings.users.tolist() == [1, 1, 0]
  assert ds.ratings.items.tolist() == [1, 0, 1]
  assert ds.ratings.ratings.tolist() == [4.5, 1.0, 3.0]
  assert ds.ratings.timestamps.tolist() == ([100, 50, 75] if timestamps
                                            else [0, 0, 0])
  assert ds.rating_scale == (1.0, 4.5)
  assert ds.files == {str(path): movielens.file_sha256(path)}


def test_generic_bad_lines(tmp_path):
  path = tmp_path / "r.csv"
  path.write_text("user,item,rating\n1,2,3\n1,3,4,5\n")
  msg = _error(load_dataset, str(path))
  assert str(path) in msg and "line 3" in msg and "found 4 fields" in msg
  path.write_text("user,item,rating\n")
  assert "no data" in _error(load_dataset, str(path))
  path.write_text("1,2\n")
  assert "line 1" in _error(load_dataset, str(path))
  path.write_text("1,2,3\n1,3,inf\n")
  assert "line 2" in _error(load_dataset, str(path))
  # Issue 14: an id too long for int64 (or any non-integer id) is no longer
  # an error: the column's ids are kept as strings.
  path.write_text("1,2,3\n99999999999999999999999,3,4\n")
  assert load_dataset(str(path)).user_ids.tolist() == [
      "1", "99999999999999999999999"]
  path.write_text("1,2,3\n1,3,four\n")
  msg = _error(load_dataset, str(path))
  assert "line 2" in msg and "rating 'four' is not a number" in msg
  assert "directory" in _error(load_dataset, str(tmp_path))


def _load_quiet(path):
  try:
    load_dataset(str(path), duplicates="error")
  except UserError as e:
    assert "\n" not in str(e)


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=300))
def test_fuzz_random_bytes(tmp_path, data):
  path = tmp_path / "fuzz.csv"
  path.write_bytes(data)
  _load_quiet(path)


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(lines=st.lists(st.text(alphabet="0123456789,.:\t -naNx\r\xe9",
                              max_size=20), max_size=8))
def test_fuzz_text_lines(tmp_path, lines):
  path = tmp_path / "fuzz.csv"
  path.write_text("\n".join(lines), encoding="utf-8")
  _load_quiet(path)


# --------------------------------------------------------------- real data


@pytest.fixture(scope="module")
def ml100k(data_dir):
  return load_dataset("ml-100k", data_dir)


def _plain(path) -> set:
  df = pd.read_csv(path, sep="\t", header=None)
  return set(map(tuple, df.to_numpy().tolist()))


def _originals(ds, r) -> set:
  return set(zip(ds.user_ids[r.users].tolist(), ds.item_ids[r.items].tolist(),
                 r.ratings.astype(np.int64).tolist(), r.timestamps.tolist()))


def test_ml100k_real(ml100k, data_dir):
  ds = ml100k
  assert (ds.n_users, ds.n_items, len(ds.ratings)) == (943, 1682, 100_000)
  assert ds.rating_scale == (1.0, 5.0)
  assert len(ds.genres) == 19 and ds.genres[0] == "unknown"
  assert ds.items_info.shape[0] == 1682
  j = int(np.searchsorted(ds.item_ids, 543))
  assert "Misérables" in ds.items_info.loc[j, "title"]
  assert ds.items_info.loc[j, "year"] == 1995
  assert list(ds.users_info.columns[:5]) == ["user_id", "age", "gender",
                                             "occupation", "zip"]
  assert ds.files[str(data_dir / "ml-100k" / "u.data")] == (
      "06416e597f82b7342361e41163890c81036900f418ad91315590814211dca490")
  assert _originals(ds, ds.ratings) == _plain(data_dir / "ml-100k" / "u.data")


def test_ml100k_folds_match_files(ml100k, data_dir):
  folder = data_dir / "ml-100k"
  test_keys = []
  for fold in movielens.FOLDS:  # seven folds
    base, test = load_fold(ml100k, fold)
    assert _originals(ml100k, base) == _plain(folder / f"{fold}.base")
    assert _originals(ml100k, test) == _plain(folder / f"{fold}.test")
    assert len(base) + len(test) == 100_000
    if fold.startswith("ua") or fold.startswith("ub"):
      assert (np.bincount(test.users, minlength=943) == 10).all()
    else:
      test_keys.append(test.users.astype(np.int64) * 1682 + test.items)
  all_keys = ml100k.ratings.users.astype(np.int64) * 1682 + ml100k.ratings.items
  np.testing.assert_array_equal(np.sort(np.concatenate(test_keys)),
                                np.sort(all_keys))


def test_ml_latest_small_real(small_data_dir):
  ds = load_dataset("ml-latest-small", small_data_dir)
  assert (ds.n_users, ds.n_items, len(ds.ratings)) == (610, 9742, 100_836)
  assert ds.rating_scale == (0.5, 5.0)
  assert ds.users_info is None
  assert len(np.unique(ds.ratings.items)) == 9724
  assert set(np.unique(ds.ratings.ratings)) == set(np.arange(1, 11) / 2)
  j = int(np.flatnonzero(ds.items_info["title"] == "Liar Liar (1997)")[0])
  assert ds.items_info.loc[j, "Comedy"] == 1
  assert "(no genres listed)" not in ds.genres


@pytest.mark.parametrize("name", ["u.data", "u.item"])
def test_fuzz_truncated_real_files(data_dir, tmp_path, name):
  """Random truncations / byte flips of real files: UserError or success."""
  rng = np.random.default_rng(0)
  folder = tmp_path / "ml-100k"
  folder.mkdir()
  for f in ("u.data", "u.item", "u.genre", "u.user"):
    shutil.copy(data_dir / "ml-100k" / f, folder / f)
  original = (data_dir / "ml-100k" / name).read_bytes()
  cut_points = rng.integers(0, len(original), 10)
  for k, cut in enumerate(cut_points):  # ten seeded variants
    data = bytearray(original[:cut])
    if k % 2 and len(data):
      data[rng.integers(0, len(data))] = int(rng.integers(0, 256))
    (folder / name).write_bytes(bytes(data))
    os.utime(folder / name, ns=(k, k))
    try:
      load_dataset("ml-100k", tmp_path)
    except UserError as e:
      assert "\n" not in str(e)


def _run_info(*args, env_extra=None):
  env = dict(os.environ, PYTHONPATH=str(REPO), **(env_extra or {}))
  return subprocess.run([sys.executable, str(REPO / "experiments" /
                                             "data_info.py"), *args],
                        capture_output=True, text=True, env=env, timeout=120)


def test_data_info_bad_file_exits_2(tmp_path):
  path = tmp_path / "bad.csv"
  path.write_text("1,2,3\n1,2,x\n")  # (a string item id loads since issue 14)
  proc = _run_info(f"--dataset={path}")
  assert proc.returncode == 2
  assert "Traceback" not in proc.stderr
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("error: ")
  assert str(path) in lines[0] and "line 2" in lines[0]


def test_data_info_ml100k_u1(data_dir):
  proc = _run_info("--dataset=ml-100k", "--split=u1", f"--data_dir={data_dir}")
  assert proc.returncode == 0, proc.stderr
  out = json.loads(proc.stdout)
  assert (out["users"], out["items"], out["ratings"]) == (943, 1682, 100_000)
  assert out["rating_histogram"] == {"1": 6110, "2": 11370, "3": 27145,
                                     "4": 34174, "5": 21201}
  assert out["split"]["n_train"] == 80_000
  assert out["split"]["n_test"] == 20_000
  assert out["split"]["n_test_dropped"] == 0
  assert len(out["files"]) == 4


def test_fake_ml1m_and_ml10m(tmp_path):
  folder = tmp_path / "ml-1m"
  folder.mkdir()
  (folder / "ratings.dat").write_text(
      "1::20::5::978300760\n1::10::3::978302109\n6::10::4::978301968\n")
  (folder / "movies.dat").write_bytes(
      "10::Star Wars: Episode IV (1977)::Action|Sci-Fi\n"
      "20::Misérables, Les (1995)::Drama\n"
      "30::Unrated (2000)::Action\n".encode("latin-1"))
  (folder / "users.dat").write_text("1::F::1::10::48067\n6::M::56::16::70072\n")
  ds = load_dataset("ml-1m", tmp_path)
  assert (ds.n_users, ds.n_items, len(ds.ratings)) == (2, 3, 3)
  assert ds.genres == ("Action", "Drama", "Sci-Fi")
  assert ds.items_info["title"].tolist()[:2] == [
      "Star Wars: Episode IV (1977)", "Misérables, Les (1995)"]
  assert ds.items_info["year"].tolist() == [1977, 1995, 2000]
  assert ds.items_info["Sci-Fi"].tolist() == [1, 0, 0]
  assert ds.users_info["occupation"].tolist() == ["K-12 student",
                                                  "self-employed"]
  assert ds.users_info["gender"].tolist() == ["F", "M"]
  (folder / "ratings.dat").write_text("1::20::5::978300760\n1::10:3::97\n")
  msg = _error(load_dataset, "ml-1m", tmp_path)
  assert "ratings.dat, line 2" in msg and "'::'" in msg
  # ML-10M: half stars, no users.dat, folder may be called ml-10M100K.
  folder10 = tmp_path / "ml-10M100K"
  folder10.mkdir()
  (folder10 / "ratings.dat").write_text("5::10::4.5::1\n5::20::0.5::2\n")
  (folder10 / "movies.dat").write_text(
      "10::A (1990)::(no genres listed)\n20::B (1991)::Comedy\n")
  ds = load_dataset("ml-10m", tmp_path)
  assert ds.ratings.ratings.tolist() == [4.5, 0.5] and ds.users_info is None
  assert ds.genres == ("Comedy",) and ds.rating_scale == (0.5, 5.0)


def test_fake_ml25m_csv(tmp_path):
  folder = tmp_path / "ml-25m"
  folder.mkdir()
  (folder / "ratings.csv").write_bytes(
      b"userId,movieId,rating,timestamp\r\n1,2,3.5,5\r\n1,1,4.0,6\r\n")
  (folder / "movies.csv").write_text(
      'movieId,title,genres\r\n1,"American President, The (1995)",'
      'Comedy|Drama|Romance\r\n2,Sherlock (2010\u20132017),Crime\r\n',
      encoding="utf-8")
  ds = load_dataset("ml-25m", tmp_path)
  assert ds.items_info["title"][0] == "American President, The (1995)"
  assert ds.items_info["year"].tolist() == [1995, 2010]
  assert ds.ratings.items.tolist() == [1, 0]
  (folder / "ratings.csv").write_text("1,2,3.5,5\n1,1,4.0,6\n")  # no header
  assert len(load_dataset("ml-25m", tmp_path).ratings) == 2
  (folder / "ratings.csv").write_text("1,2,3.5,5\n1,1,5.5,6\n")
  msg = _error(load_dataset, "ml-25m", tmp_path)
  assert "line 2" in msg and "[0.5, 5]" in msg
  (folder / "ratings.csv").write_text("1,2,3.5,5\n1,1,4.5,6\n")
  (folder / "movies.csv").write_bytes(b"movieId,title,genres\n1,A\xe9,X\n")
  msg = _error(load_dataset, "ml-25m", tmp_path)
  assert "movies.csv, line 2" in msg and "0xe9" in msg
