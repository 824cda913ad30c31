"""Issue 14, "any ratings file": generic CSV/TSV/Parquet files and from_frame."""

from __future__ import annotations

import ast
import calendar
import dataclasses
import datetime
import importlib.util
import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from recae_jax import config as config_lib, problem, topn, user_folds
from recae_jax.data import from_frame, generic, load_dataset, movielens, splits
from recae_jax.errors import UserError

REPO = pathlib.Path(__file__).resolve().parents[1]
AMAZON_COLUMNS = ["reviewerID", "asin", "reviewerName", "helpful",
                  "reviewText", "overall", "summary", "unixReviewTime",
                  "reviewTime"]


def make_amazon_csv(path: pathlib.Path, n_ratings: int = 200,
                    n_users: int = 40, n_items: int = 30, seed: int = 0,
                    sep: str = ",") -> pd.DataFrame:
  """An Amazon-review-style ratings file (string ids, quoted free text with
  commas, quotes and newlines, extra columns); returns the frame written.

  Book ASINs are ISBN-like digit strings with leading zeros (they must stay
  strings), the others look like B00XXXXXXX.
  """
  rng = np.random.default_rng(seed)
  users = np.array([f"A{rng.integers(16**8):08X}{k}" for k in range(n_users)])
  items = np.array([f"{rng.integers(10**9):010d}" if k % 3 == 0 else
                    f"B00{rng.integers(36**7):07d}" for k in range(n_items)])
  pairs = rng.choice(n_users * n_items, size=n_ratings, replace=False)
  u, i = pairs // n_items, pairs % n_items
  ts = rng.integers(1_300_000_000, 1_400_000_000, n_ratings)
  texts = np.array(['Great, "really" good', "meh\nsecond line", "ok",
                    "five, stars", ""], dtype=object)
  df = pd.DataFrame({
      "reviewerID": users[u],
      "asin": items[i],
      "reviewerName": np.where(rng.random(n_ratings) < 0.5, "Bob, Jr.", "Ann"),
      "helpful": "[0, 0]",
      "reviewText": texts[rng.integers(0, len(texts), n_ratings)],
      "overall": rng.integers(1, 6, n_ratings).astype(float),
      "summary": "Nice",
      "unixReviewTime": ts,
      "reviewTime": pd.to_datetime(ts, unit="s").strftime("%m %d, %Y"),
  })
  df.to_csv(path, index=False, sep=sep)
  return df


def _error(fn, *args, **kwargs) -> str:
  with pytest.raises(UserError) as e:
    fn(*args, **kwargs)
  msg = str(e.value)
  assert "\n" not in msg
  return msg


def _triples(ds) -> set:
  r = ds.ratings
  return set(zip(np.asarray(ds.user_ids)[r.users].tolist(),
                 np.asarray(ds.item_ids)[r.items].tolist(),
                 r.ratings.tolist(), r.timestamps.tolist()))


def _write(tmp_path, text: str, name: str = "r.csv") -> str:
  path = tmp_path / name
  path.write_text(text, encoding="utf-8")
  return str(path)


# ------------------------------------------------------------- Amazon-style


def test_amazon_style_csv(tmp_path):
  path = tmp_path / "ratings_Books.csv"
  df = make_amazon_csv(path)
  ds = load_dataset(str(path))
  truth = set(zip(df.reviewerID, df.asin, df.overall.astype(np.float32),
                  df.unixReviewTime))
  assert _triples(ds) == truth
  assert ds.user_ids.dtype == object and ds.item_ids.dtype == object
  assert ds.user_ids.tolist() == sorted(set(df.reviewerID))
  assert ds.item_ids.tolist() == sorted(set(df.asin))
  assert any(x.startswith("0") for x in ds.item_ids)  # leading zeros kept
  assert ds.rating_scale == (df.overall.min(), df.overall.max())
  assert ds.ratings.users.dtype == np.int32
  assert ds.ratings.ratings.dtype == np.float32
  assert ds.ratings.timestamps.dtype == np.int64
  assert ds.name == "ratings_Books.csv"
  assert ds.files == {str(path): movielens.file_sha256(path)}
  # The same data as TSV.
  tsv = tmp_path / "ratings.tsv"
  make_amazon_csv(tsv, sep="\t")
  assert _triples(load_dataset(str(tsv))) == truth


def test_issue_example_line_2(tmp_path):
  """The issue's report: a string user id used to stop at line 2."""
  path = _write(tmp_path, "user_id,item_id,rating\nA0017AEFC,B01,4\n"
                          "A0017AEFC,B02,5\nX9,B01,2\n")
  ds = load_dataset(path)
  assert ds.user_ids.tolist() == ["A0017AEFC", "X9"]
  assert ds.ratings.users.tolist() == [0, 0, 1]
  assert ds.ratings.items.tolist() == [0, 1, 0]


def test_headerless_string_ids(tmp_path):
  for sep in (",", "\t", "::", " "):  # four separators
    path = _write(tmp_path, sep.join(["u1", "i9", "4", "7"]) + "\n" +
                  sep.join(["u0", "i9", "2.5", "8"]) + "\n")
    ds = load_dataset(path)
    assert ds.user_ids.tolist() == ["u0", "u1"], sep
    assert ds.ratings.users.tolist() == [1, 0]
    assert ds.ratings.ratings.tolist() == [4.0, 2.5]
    assert ds.ratings.timestamps.tolist() == [7, 8]


def test_integer_ids_stay_integers(tmp_path):
  plain = load_dataset(_write(tmp_path, "10,7,4.5,100\n2,7,3,75\n"))
  extra = load_dataset(_write(
      tmp_path, "movieId,extra,userId,rating,timestamp\n7,x,10,4.5,100\n"
                "7,y,2,3,75\n", "extra.csv"))
  for ds in (plain, extra):
    assert ds.user_ids.dtype == np.int64 and ds.user_ids.tolist() == [2, 10]
    assert ds.item_ids.dtype == np.int64
  assert _triples(plain) == _triples(extra)
  # Ids with leading zeros would not read back as written: strings.
  ds = load_dataset(_write(tmp_path, "user,item,x,rating\n007,1,a,4\n8,1,b,3\n",
                           "zeros.csv"))
  assert ds.user_ids.tolist() == ["007", "8"]
  assert ds.item_ids.dtype == np.int64


# -------------------------------------------------------------- header names


@pytest.mark.parametrize("role", generic.ROLES)
def test_every_alias_is_found(tmp_path, role):
  base = {"user": "user", "item": "item", "rating": "rating",
          "timestamp": "timestamp"}
  values = {"user": "u1", "item": "i1", "rating": "4", "timestamp": "1234"}
  for alias in generic.ALIASES[role]:  # a handful of names
    names = dict(base, **{role: alias.upper() if len(alias) % 2 else alias})
    order = ["rating", "notes", "timestamp", "item", "user"]  # shuffled
    header = ",".join(names.get(c, c) for c in order)
    row = ",".join(values.get(c, "free text") for c in order)
    ds = load_dataset(_write(tmp_path, header + "\n" + row + "\n"))
    assert _triples(ds) == {("u1", "i1", 4.0, 1234)}, alias


def test_positional_headers_as_before(tmp_path):
  # No known names in a 3/4-column header: user, item, rating[, timestamp].
  ds = load_dataset(_write(tmp_path, "u,i,r,t\n1,2,3,4\n"))
  assert _triples(ds) == {(1, 2, 3.0, 4)}
  # Known first three and an unknown fourth: the fourth is the timestamp.
  ds = load_dataset(_write(tmp_path, "userId,movieId,rating,when\n1,2,3,4\n"))
  assert _triples(ds) == {(1, 2, 3.0, 4)}
  # Known names, another order: by name.
  ds = load_dataset(_write(tmp_path, "item,user,rating\n1,2,3\n"))
  assert _triples(ds) == {(2, 1, 3.0, 0)}


def test_unknown_and_ambiguous_columns(tmp_path):
  path = _write(tmp_path, "a,b,c,d,e\nu,i,4,5,6\n")
  msg = _error(load_dataset, path)
  assert path in msg and "line 1" in msg and "no user column" in msg
  assert "'a', 'b', 'c', 'd', 'e'" in msg and "--columns=user=COL" in msg
  path = _write(tmp_path, "userId,asin,rating,score,overall\nu,i,4,5,6\n")
  msg = _error(load_dataset, path)
  assert "'rating' and 'score' and 'overall' could each be the rating" in msg
  assert "--columns=rating=COL" in msg
  ds = load_dataset(path, columns="rating=score")
  assert ds.ratings.ratings.tolist() == [5.0]
  path = _write(tmp_path, "user,item,time,date,rating\nu,i,4,2020-01-01,3\n")
  assert "could each be the timestamp" in _error(load_dataset, path)
  ds = load_dataset(path, columns="timestamp=date")
  assert ds.ratings.timestamps.tolist() == [calendar.timegm((2020, 1, 1, 0,
                                                             0, 0))]
  path = _write(tmp_path, "user,item\nu,i\n")
  assert "no rating column" in _error(load_dataset, path)


def test_columns_flag(tmp_path):
  path = _write(tmp_path, "who,what,x,stars_given,when\n"
                          "u1,i1,zz,4,2021-03-04\nu2,i1,zz,2,2021-03-05\n")
  ds = load_dataset(path, columns="user=who,item=what,rating=stars_given,"
                                  "timestamp=when")
  assert _triples(ds) == {("u1", "i1", 4.0, 1614816000),
                          ("u2", "i1", 2.0, 1614902400)}
  # By 1-based number, case-insensitive names, spaces around.
  ds2 = load_dataset(path, columns=" user = WHO , item=2, rating=4, "
                                   "timestamp=5 ")
  assert _triples(ds2) == _triples(ds)
  cases = {
      "user=who,item=what": "no rating column",
      "user=nobody,item=what,rating=4": "no column 'nobody' for the user",
      "user=who,item=what,rating=x": "rating 'zz' is not a number",
      "user=who,item=who,rating=4": "is both the user and the item",
      "user=who,user=what,rating=4": "user is given twice",
      "person=who": "unknown role 'person'",
      "user": "'user' is not ROLE=COLUMN",
      "user=": "'user=' is not ROLE=COLUMN",
  }
  for spec, problem in cases.items():  # eight specs
    msg = _error(load_dataset, path, columns=spec)
    assert problem in msg, (spec, msg)
  msg = _error(load_dataset, path, columns="user=who,item=what,rating=x")
  assert "line 2 (column 'x')" in msg
  # Headerless files take column numbers only.
  path = _write(tmp_path, "5,u1,i1\n3,u2,i1\n", "nohead.csv")
  ds = load_dataset(path, columns="user=2,item=3,rating=1")
  assert _triples(ds) == {("u1", "i1", 5.0, 0), ("u2", "i1", 3.0, 0)}
  msg = _error(load_dataset, path, columns="user=who,item=3,rating=1")
  assert "no header line" in msg and "column numbers 1..3" in msg


def test_columns_refused_for_named_datasets():
  for name in ("ml-100k", "ml-1m", "synthetic:10x10x20"):  # three names
    msg = _error(load_dataset, name, columns="user=a")
    assert name in msg and "drop --columns" in msg
  assert load_dataset("synthetic:10x10x20", columns=" ").n_users == 10


# ----------------------------------------------------------------- values


def test_iso_dates_and_time_split(tmp_path):
  dates = ["2014-05-23", "2014-05-23T10:00:00Z", "2014-05-23 10:00:00+02:00",
           "2015-01-01T00:00:01.9"]
  expect = [calendar.timegm((2014, 5, 23, 0, 0, 0)),
            calendar.timegm((2014, 5, 23, 10, 0, 0)),
            calendar.timegm((2014, 5, 23, 8, 0, 0)),
            calendar.timegm((2015, 1, 1, 0, 0, 1))]
  rows = "".join(f"u{k},i{k % 2},{1 + k},{d}\n" for k, d in enumerate(dates))
  ds = load_dataset(_write(tmp_path, "user,item,rating,date\n" + rows))
  assert ds.ratings.timestamps.tolist() == expect
  assert ds.ratings.timestamps.dtype == np.int64
  # Enough ratings for the time split to put the late ones in test.
  n = 60
  stamps = [(datetime.datetime(2020, 1, 1) + datetime.timedelta(days=k)
             ).strftime("%Y-%m-%d") for k in range(n)]
  lines = "".join(f"u{k % 5},i{k % 12},{1 + k % 5},{s}\n"
                  for k, s in enumerate(stamps))
  ds = load_dataset(_write(tmp_path, "reviewerID,asin,overall,date\n" + lines))
  split = splits.make_split(ds, "time", time_quantile=0.8)
  assert len(split.test) > 0
  assert split.train.timestamps.max() < split.test.timestamps.min()
  # Unix seconds as floats are floored.
  ds = load_dataset(_write(tmp_path, "user,item,rating,time\na,b,1,12.9\n"))
  assert ds.ratings.timestamps.tolist() == [12]


def test_bad_values_name_file_line_column(tmp_path):
  head = "user,item,rating,date,text\n"
  good = "u1,i1,4,2014-05-23,ok\n"
  cases = {
      "u2,i1,great,2014-05-23,ok\n": "rating 'great' is not a number",
      "u2,i1,,2014-05-23,ok\n": "rating is empty",
      "u2,i1,inf,2014-05-23,ok\n": "rating inf is not finite",
      "u2,i1,3,yesterday,ok\n": "timestamp 'yesterday' is not Unix seconds "
                                "or an ISO-8601 date",
      "u2,i1,3,1400000000,ok\n": "mixes the two",
      "u2,i1,3,2014-13-45,ok\n": "timestamp '2014-13-45' is not",
      ",i1,3,2014-05-23,ok\n": "user id is empty",
      "u2,i1,3,2014-05-23\n": "expected 5 ','-separated fields",
      "u2,i1\n": "found 2 fields",
      "\n": "found an empty line",
      "u2,i1,3,2014-05-23,ok,more\n": "found 6 fields",
      '"u2,i1,3,2014-05-23,ok\n': "a quoted field starts here and never ends",
  }
  for bad, problem in cases.items():  # ten bad rows
    path = _write(tmp_path, head + good + bad + good.replace("u1", "u3"))
    msg = _error(load_dataset, path)
    assert path in msg and "line 3" in msg and problem in msg, (bad, msg)
  # A quoted field spanning lines: errors still name the physical line.
  path = _write(tmp_path, head + 'u1,i1,4,2014-05-23,"two\nlines"\n'
                'u2,i1,x,2014-05-23,ok\n')
  msg = _error(load_dataset, path)
  assert "line 4 (column 'rating')" in msg
  # A stray '"' inside an unquoted field is literal (as in pandas); rows can
  # then only be named by their position.
  path = _write(tmp_path, head + 'u1,i1,4,2014-05-23,12" vinyl\n'
                'u2,i1,3,2014-05-23,ok\n')
  ds = load_dataset(path)
  assert _triples(ds) == {("u1", "i1", 4.0, 1400803200),
                          ("u2", "i1", 3.0, 1400803200)}
  path = _write(tmp_path, head + 'u1,i1,4,2014-05-23,12" vinyl\n'
                'u2,i1,x,2014-05-23,ok\n')
  assert "data row 2 (column 'rating')" in _error(load_dataset, path)


def test_duplicates_in_string_id_file(tmp_path):
  path = _write(tmp_path, "user,item,rating,time\nA,B,1,10\nC,B,2,10\n"
                          "A,B,5,20\n")
  msg = _error(load_dataset, path)
  assert "user A rated item B more than once (lines 2, 4)" in msg
  with pytest.warns(UserWarning, match="dropped 1 repeated"):
    ds = load_dataset(path, duplicates="last")
  assert _triples(ds) == {("A", "B", 5.0, 20), ("C", "B", 2.0, 10)}


def _clicks_file(tmp_path) -> tuple[str, int]:
  """Headers no alias matches and a text column between them (so --columns is
  needed), 60 users x 12 of 30 items, and one (user, item) rated twice;
  returns (path, lines of data)."""
  rng = np.random.default_rng(0)
  rows = [f"u{u},nice,p{i},{rng.integers(1, 6)}" for u in range(60)
          for i in rng.choice(30, 12, replace=False)]
  rows.append(rows[0].rsplit(",", 1)[0] + ",5")
  return (_write(tmp_path, "reviewer,note,product,grade\n" + "\n".join(rows) + "\n"),
          len(rows))


def test_columns_and_duplicates_reach_every_run_kind(tmp_path):
  """--columns and --duplicates are read wherever a run loads its data:
  rating splits, the top-N protocol and --user_folds (the top-N paths once
  loaded the file without them)."""
  path, n_lines = _clicks_file(tmp_path)
  cols = "user=reviewer,item=product,rating=grade"
  cfg = config_lib.make_config("ease", dataset=path, columns=cols, n_test_users=10,
                               n_valid_users=10, ks=(5, 10), select_k=10)
  assert "(--duplicates=last)" in _error(topn.make_protocol, cfg)
  cfg = config_lib.make_config("ease", dataset=path, columns=cols, n_test_users=10,
                               n_valid_users=10, ks=(5, 10), select_k=10,
                               duplicates="last")
  with pytest.warns(UserWarning, match="dropped 1 repeated"):
    protocol = topn.make_protocol(cfg)
  assert len(protocol.dataset.ratings) == n_lines - 1
  assert protocol.dataset.user_ids[0] == "u0" and len(protocol.test_users) == 10
  with pytest.warns(UserWarning, match="dropped 1 repeated"):
    summary = user_folds.run_folds(dataclasses.replace(cfg, user_folds=2),
                                   tmp_path / "folds", progress=lambda _: None)
  r = protocol.dataset.ratings
  clicks = np.bincount(r.users[r.ratings >= cfg.threshold], minlength=r.n_users)
  assert summary["n_users"] == summary["n_eligible_users"] == int((clicks >= 5).sum()) > 20
  # string ids are saved loadable without pickle (compare.py reads them too)
  assert user_folds.load_per_user(tmp_path / "folds" / "fold_0")["user_ids"][0][0] == "u"
  old = tmp_path / "old"  # as written before: an object array of ids
  old.mkdir()
  np.savez(old / topn.PER_USER_FILE, user_ids=np.array(["u0"], dtype=object))
  assert "needs pickle to load" in _error(user_folds.load_per_user, old)
  rating = config_lib.make_config("autorec", dataset=path, columns=cols, split="random",
                                  duplicates="last")
  with pytest.warns(UserWarning, match="dropped 1 repeated"):
    dataset, split = problem.load_split(rating)
  assert len(split.train) + len(split.test) + len(split.valid) == n_lines - 1
  msg = _error(topn.run, dataclasses.replace(cfg, select_k=100), protocol=protocol)
  assert msg.startswith("--select_k=100: rankings have at most 30 items")
  msg = _error(topn.run, dataclasses.replace(cfg, ks=(20, 50)), protocol=protocol)
  assert msg.startswith("--ks=20,50: rankings have at most 30 items")
  assert "Unknown" not in _error(config_lib.make_config, "autorec", duplicates="first")


def test_script_duplicates_flag_and_one_line_warning(tmp_path):
  """train.py takes --duplicates (the error names it); its warning is one line."""
  path, _ = _clicks_file(tmp_path)
  env = dict(os.environ, PYTHONPATH=str(REPO))
  args = [sys.executable, str(REPO / "experiments" / "train.py"), f"--dataset={path}",
          "--columns=user=reviewer,item=product,rating=grade", "--split=random",
          "--epochs=1", "--layers=8"]
  proc = subprocess.run(args + [f"--workdir={tmp_path / 'a'}"], capture_output=True,
                        text=True, env=env, timeout=300)
  assert proc.returncode == 2 and "(--duplicates=last)" in proc.stderr, proc.stderr
  proc = subprocess.run(args + [f"--workdir={tmp_path / 'b'}", "--duplicates=last"],
                        capture_output=True, text=True, env=env, timeout=300)
  assert proc.returncode == 0, proc.stderr
  warned = [line for line in proc.stderr.splitlines() if "repeated" in line]
  assert warned == [f"warning: {path}: dropped 1 repeated (user, item) ratings, "
                    f"keeping the latest of each"], proc.stderr
  assert json.loads((tmp_path / "b" / "config.json").read_text())["duplicates"] == "last"


def test_bom_blank_and_crlf(tmp_path):
  path = tmp_path / "bom.csv"
  path.write_bytes(b"\xef\xbb\xbfuserId,asin,overall\r\nA,\"B,1\",3\r\n\r\n")
  ds = load_dataset(str(path))
  assert _triples(ds) == {("A", "B,1", 3.0, 0)}
  path.write_bytes(b"userId,asin,overall\nA,B,3\n\nC,B,4\n")
  msg = _error(load_dataset, str(path))
  assert "line 3" in msg and "empty" in msg
  path.write_bytes(b"userId,asin,overall\nA,B\xff,3\n")
  msg = _error(load_dataset, str(path))
  assert "line 2" in msg and "0xff" in msg


# ---------------------------------------------------------------- Parquet


def test_parquet(tmp_path):
  path = tmp_path / "r.parquet"
  df = pd.DataFrame({"reviewerID": ["A", "B", "A"], "asin": ["x", "x", "y"],
                     "overall": [5.0, 3.0, 4.0],
                     "date": pd.to_datetime(["2020-01-01", "2020-01-02",
                                             "2020-01-03"]),
                     "extra": [1, 2, 3]})
  if importlib.util.find_spec("pyarrow") is not None:
    df.to_parquet(path)
    ds = load_dataset(str(path))
    day = 86400
    assert _triples(ds) == {("A", "x", 5.0, 18262 * day),
                            ("B", "x", 3.0, 18263 * day),
                            ("A", "y", 4.0, 18264 * day)}
    assert ds.files == {str(path): movielens.file_sha256(path)}
    ds = load_dataset(str(path), columns="rating=extra")
    assert ds.ratings.ratings.tolist() == [1.0, 2.0, 3.0]
    msg = _error(load_dataset, str(path), columns="user=nope")
    assert str(path) in msg and "no column 'nope'" in msg
    bad = df.assign(overall=["5", "three", "4"])
    bad.to_parquet(path)
    msg = _error(load_dataset, str(path))
    assert "row 2 (column 'overall')" in msg and "'three'" in msg
    path.write_bytes(b"PAR1 not really")
    msg = _error(load_dataset, str(path))
    assert "not a readable Parquet file" in msg
  else:
    path.write_bytes(b"PAR1" + bytes(100) + b"PAR1")
    msg = _error(load_dataset, str(path))
    assert str(path) in msg and "install recae_jax[parquet]" in msg
    # The suffix alone is enough to be taken for Parquet.
    other = tmp_path / "r.pq"
    other.write_text("user,item,rating\n1,2,3\n")
    assert "install recae_jax[parquet]" in _error(load_dataset, str(other))


# -------------------------------------------------------------- from_frame


def test_from_frame():
  df = pd.DataFrame({
      "customer": ["c2", "c1", "c2"], "product": [30, 10, 10],
      "stars": [4, 5, 1],
      "when": pd.to_datetime(["2020-01-01 00:00:05", "2020-01-01 00:00:00",
                              "2020-01-02 00:00:00"]).tz_localize(
                                  "Europe/Berlin"),
      "ignored": [object(), None, 3]}, index=[7, 8, 9])
  ds = from_frame(df, user="customer", item="product", rating="stars",
                  timestamp="when", name="shop")
  assert ds.name == "shop" and ds.files == {} and ds.directory is None
  assert ds.user_ids.tolist() == ["c1", "c2"]
  assert ds.item_ids.dtype == np.int64 and ds.item_ids.tolist() == [10, 30]
  assert ds.ratings.users.tolist() == [1, 0, 1]
  assert ds.ratings.items.tolist() == [1, 0, 0]
  assert ds.ratings.ratings.dtype == np.float32
  berlin = calendar.timegm((2019, 12, 31, 23, 0, 0))  # UTC+1 in winter
  assert ds.ratings.timestamps.tolist() == [berlin + 5, berlin,
                                            berlin + 86400]
  assert ds.rating_scale == (1.0, 5.0)
  ds = from_frame(df, "customer", "product", "stars", rating_scale=(0, 10))
  assert ds.rating_scale == (0.0, 10.0)
  assert ds.ratings.timestamps.tolist() == [0, 0, 0]
  # Integer seconds and ISO strings work as timestamps too.
  ds = from_frame(df.assign(when=[3, 2, 1]), "customer", "product", "stars",
                  timestamp="when")
  assert ds.ratings.timestamps.tolist() == [3, 2, 1]
  ds = from_frame(df.assign(when=["2020-01-01", "1970-01-02", "1970-01-01"]),
                  "customer", "product", "stars", timestamp="when")
  assert ds.ratings.timestamps.tolist() == [1577836800, 86400, 0]


def test_from_frame_errors():
  df = pd.DataFrame({"u": ["a", "b", "c"], "i": [1, 2, 3],
                     "r": [1.0, 2.0, 3.0]}, index=["x", "y", "z"])
  cases = [
      (dict(user="u", item="nope", rating="r"), "no column 'nope' for the item"),
      (dict(user="u", item="u", rating="r"), "one column is given for two"),
      (dict(user="u", item="i", rating=None), "needs rating=<column name>"),
      (dict(user="u", item="i", rating="r", rating_scale=(1, 2)),
       "row 'z' (column 'r'): rating 3 is outside the rating scale [1, 2]"),
  ]
  for kwargs, problem in cases:  # four calls
    msg = _error(from_frame, df, name="mine", **kwargs)
    assert msg.startswith("mine") and problem in msg, msg
  for column, values, problem in [
      ("r", [1.0, np.nan, 3.0], "row 'y' (column 'r'): rating is missing"),
      ("r", [1.0, np.inf, 3.0], "rating inf is not finite"),
      ("u", ["a", None, "c"], "row 'y' (column 'u'): user id is empty"),
      ("u", ["a", " ", "c"], "row 'y' (column 'u'): user id is empty"),
      ("i", [1.0, np.nan, 3.0], "row 'y' (column 'i'): item id is missing"),
  ]:
    msg = _error(from_frame, df.assign(**{column: values}), "u", "i", "r",
                 name="mine")
    assert problem in msg, msg
  assert "rating 'two' is not a number" in _error(
      from_frame, df.assign(r=["1", "two", "3"]), "u", "i", "r")
  assert "needs a pandas DataFrame" in _error(from_frame, {"u": []}, "u", "i",
                                              "r")
  assert "has no ratings" in _error(from_frame, df.iloc[:0], "u", "i", "r")
  dup = pd.DataFrame({"u": ["a", "a"], "i": ["b", "b"], "r": [1, 2]})
  msg = _error(from_frame, dup, "u", "i", "r", name="d")
  assert "user a rated item b more than once (rows 0, 1)" in msg


# ------------------------------------------------------------------ script


def test_script_exit_2_on_ambiguous_columns(tmp_path):
  path = _write(tmp_path, "user,item,stars,rating\na,b,1,2\n")
  env = dict(os.environ, PYTHONPATH=str(REPO))
  proc = subprocess.run(
      [sys.executable, str(REPO / "experiments" / "data_info.py"),
       f"--dataset={path}"], capture_output=True, text=True, env=env,
      timeout=120)
  assert proc.returncode == 2 and "Traceback" not in proc.stderr
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1 and path in lines[0] and "could each be" in lines[0]
  good = _write(tmp_path, "userId,asin,overall\na,b,1\nc,b,2\n", "good.csv")
  proc = subprocess.run(
      [sys.executable, str(REPO / "experiments" / "data_info.py"),
       f"--dataset={good}"], capture_output=True, text=True, env=env,
      timeout=120)
  assert proc.returncode == 0, proc.stderr
  assert json.loads(proc.stdout)["users"] == 2


def test_script_columns_flag_names_nonstandard_headers(tmp_path):
  """data_info --columns: same meaning as Config.columns / load_dataset."""
  path = _write(tmp_path, "reviewer,product,text,grade,day\n"
                "a,p1,nice,5,2014-05-23\n"
                "b,p1,\"ok, fine\",3,2014-05-24\n"
                "a,p2,meh,2,2014-05-25\n")
  env = dict(os.environ, PYTHONPATH=str(REPO))

  def info(*args):
    return subprocess.run(
        [sys.executable, str(REPO / "experiments" / "data_info.py"), *args],
        capture_output=True, text=True, env=env, timeout=120)

  proc = info(f"--dataset={path}")  # no known header names: a clear error
  assert proc.returncode == 2 and "Traceback" not in proc.stderr
  assert "no user column" in proc.stderr and "--columns" in proc.stderr
  proc = info(f"--dataset={path}",
              "--columns=user=reviewer,item=product,rating=grade,"
              "timestamp=day")
  assert proc.returncode == 0, proc.stderr
  out = json.loads(proc.stdout)
  want = load_dataset(path, columns="user=reviewer,item=product,rating=grade,"
                      "timestamp=day")
  assert (out["users"], out["items"], out["ratings"]) == (2, 2, 3)
  assert out["rating_scale"] == [2.0, 5.0]
  assert out["rating_histogram"] == {"2": 1, "3": 1, "5": 1}
  assert out["files"] == want.files
  proc = info(f"--dataset={path}", "--columns=user=1,item=2,rating=4")
  assert proc.returncode == 0, proc.stderr  # by number; day left unused
  assert json.loads(proc.stdout)["ratings"] == 3
  proc = info(f"--dataset={path}", "--columns=user=nobody")
  assert proc.returncode == 2 and "Traceback" not in proc.stderr
  assert "no column 'nobody'" in proc.stderr
  proc = info("--dataset=ml-100k", "--nodownload", "--columns=user=1")
  assert proc.returncode == 2 and "fixed columns" in proc.stderr


def test_no_import_cycle_and_imports_at_module_top():
  """generic never imports movielens (movielens imports it), neither imports
  inside a function except pyarrow (optional), and movielens still has the
  shared parsing names, as the very objects generic uses."""
  folder = REPO / "recae_jax" / "data"
  for name in ("generic", "movielens"):
    tree = ast.parse((folder / f"{name}.py").read_text())
    top = set()
    for node in tree.body:
      if isinstance(node, ast.ImportFrom) and node.module:
        top |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
      elif isinstance(node, ast.Import):
        top |= {a.name for a in node.names}
    if name == "generic":
      assert not any("movielens" in t for t in top)
    for fn in ast.walk(tree):
      if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
        for node in ast.walk(fn):
          if isinstance(node, (ast.Import, ast.ImportFrom)):
            mods = ([a.name for a in node.names] if isinstance(
                node, ast.Import) else [node.module or ""])
            assert all(m.split(".")[0] == "pyarrow" for m in mods), (
                name, fn.name, mods)
  for attr in ("RatingsFormat", "file_sha256", "_HASHES", "_remap",
               "_parse_fast", "_text_lines", "_split_fields", "_check_head",
               "_decode", "_require_file", "_SEP_NAMES"):
    assert getattr(movielens, attr) is getattr(generic, attr), attr


# ------------------------------------------------------------------- fuzz


def _load_quiet(path, **kwargs):
  try:
    ds = load_dataset(str(path), **kwargs)
  except UserError as e:
    assert "\n" not in str(e)
    return None
  r = ds.ratings
  assert len(ds.user_ids) == ds.n_users and len(ds.item_ids) == ds.n_items
  assert r.users.dtype == np.int32 and r.ratings.dtype == np.float32
  assert np.isfinite(r.ratings).all()
  return ds


_NAMES = st.sampled_from(["user", "reviewerID", "asin", "item", "rating",
                          "overall", "score", "date", "time", "x", ""])
_CELL = st.text(alphabet='0123456789AB,."\n -:TZe', max_size=12)


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(header=st.lists(_NAMES, min_size=1, max_size=5),
       rows=st.lists(st.lists(_CELL, min_size=0, max_size=6), max_size=6),
       sep=st.sampled_from([",", "\t"]),
       columns=st.sampled_from(["", "rating=x", "user=1,item=2,rating=3",
                                "timestamp=date"]))
def test_fuzz_headered_text(tmp_path, header, rows, sep, columns):
  text = sep.join(header) + "\n" + "\n".join(sep.join(r) for r in rows)
  path = tmp_path / "fuzz.csv"
  path.write_text(text, encoding="utf-8")
  _load_quiet(path, columns=columns)


@settings(max_examples=100, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=300),
       prefix=st.sampled_from([b"", b"PAR1", b"userId,asin,overall,date\n",
                               b"a\tb\tc\n"]))
def test_fuzz_bytes_with_headers(tmp_path, data, prefix):
  path = tmp_path / "fuzz.csv"
  path.write_bytes(prefix + data)
  _load_quiet(path)


_ID = st.text(alphabet='AB01 ,"\n\t:é', min_size=1, max_size=6).filter(
    lambda s: s.strip() != "")


@settings(max_examples=100, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.lists(st.tuples(_ID, _ID, st.integers(-5, 10),
                               st.integers(0, 2**40)),
                     min_size=1, max_size=12,
                     unique_by=lambda t: (t[0].strip(), t[1].strip())),
       sep=st.sampled_from([",", "\t"]), order=st.permutations(range(5)))
def test_fuzz_round_trip(tmp_path, rows, sep, order):
  """Whatever string ids and column order, file and frame give back the
  original (user, item, rating, timestamp) tuples."""
  users, items, ratings, ts = map(list, zip(*rows))
  df = pd.DataFrame({"reviewerID": users, "asin": items, "overall": ratings,
                     "unixReviewTime": ts, "junk": "a,b"})
  df = df.iloc[:, list(order)]
  path = tmp_path / "rt.csv"
  df.to_csv(path, index=False, sep=sep)
  expect = set(zip(*(pd.Series(c, dtype=object).str.strip().tolist()
                     for c in (users, items)),
                   np.asarray(ratings, np.float32).tolist(), ts))

  def normal(ds):  # integer-looking ids come back as ints
    return {(str(u), str(i), r, t) for u, i, r, t in _triples(ds)}

  # (Ids are stripped, so rows are unique after stripping.)
  frame = from_frame(df, "reviewerID", "asin", "overall", "unixReviewTime")
  assert normal(frame) == expect
  assert normal(load_dataset(str(path))) == expect
