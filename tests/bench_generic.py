"""Parse speed of generic ratings files (issue 14); not collected by pytest.

  python tests/bench_generic.py [--rows=1000000] [--old=/tmp/old_movielens.py]

Writes, in a temporary folder, the same N ratings as (1) a headerless integer
`user,item,rating,timestamp` file (the typed fast path), (2) the same with
string ids, (3) string ids with a header and ISO-8601 dates, (4) an
Amazon-style CSV (header, quoted free text, extra columns), (5) Parquet when
pyarrow is installed; loads each with `load_dataset` (best of --repeats)
and prints one JSON line per file. `--old` times the integer file with another
copy of movielens.py (e.g. `git show <rev>:recae_jax/data/movielens.py`).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import pathlib
import sys
import tempfile
import time

import numpy as np
import pandas as pd

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from recae_jax.data import load_dataset  # noqa: E402


def _best(fn, repeats: int) -> float:
  times = []
  for _ in range(repeats):  # a few timed runs
    t = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t)
  return min(times)


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--rows", type=int, default=1_000_000)
  ap.add_argument("--repeats", type=int, default=2)
  ap.add_argument("--old", default="")
  args = ap.parse_args()
  n = args.rows
  rng = np.random.default_rng(0)
  n_users, n_items = max(n // 50, 10), max(n // 100, 10)
  keys = rng.choice(n_users * n_items, n, replace=False)
  u, i = keys // n_items, keys % n_items
  r = rng.integers(1, 6, n).astype(np.float32)
  ts = rng.integers(1_000_000_000, 1_400_000_000, n)
  user_names = np.array([f"A{k:012X}" for k in range(n_users)])
  item_names = np.array([f"B{k:09d}" for k in range(n_items)])
  with tempfile.TemporaryDirectory() as tmp:
    tmp = pathlib.Path(tmp)
    files = {}
    files["int_headerless"] = tmp / "int.csv"
    pd.DataFrame({"u": u, "i": i, "r": r, "t": ts}).to_csv(
        files["int_headerless"], header=False, index=False)
    files["str_headerless"] = tmp / "str.csv"
    pd.DataFrame({"u": user_names[u], "i": item_names[i], "r": r,
                  "t": ts}).to_csv(files["str_headerless"], header=False,
                                   index=False)
    files["str_header_iso_dates"] = tmp / "iso.csv"
    dates = pd.to_datetime(ts, unit="s").strftime("%Y-%m-%dT%H:%M:%SZ")
    pd.DataFrame({"user_id": user_names[u], "item_id": item_names[i],
                  "rating": r, "date": dates}).to_csv(
                      files["str_header_iso_dates"], index=False)
    files["amazon_quoted_extra_cols"] = tmp / "amazon.csv"
    pd.DataFrame({"reviewerID": user_names[u], "asin": item_names[i],
                  "reviewerName": "Bob, Jr.", "reviewText": 'ok, "fine"',
                  "overall": r, "unixReviewTime": ts}).to_csv(
                      files["amazon_quoted_extra_cols"], index=False)
    if importlib.util.find_spec("pyarrow") is not None:
      files["parquet_str"] = tmp / "r.parquet"
      pd.DataFrame({"reviewerID": user_names[u], "asin": item_names[i],
                    "overall": r, "unixReviewTime": ts}).to_parquet(
                        files["parquet_str"])
    base = None
    for label, path in files.items():  # a handful of files
      ds = load_dataset(str(path))
      assert len(ds.ratings) == n, label
      sec = _best(lambda: load_dataset(str(path)), args.repeats)
      base = base or sec
      print(json.dumps({"file": label, "rows": n,
                        "mb": round(path.stat().st_size / 2**20, 1),
                        "seconds": round(sec, 3),
                        "x_int_fast_path": round(sec / base, 2),
                        "user_ids_dtype": str(ds.user_ids.dtype)}))
    if args.old:
      spec = importlib.util.spec_from_file_location("old_movielens", args.old)
      old = importlib.util.module_from_spec(spec)
      sys.modules["old_movielens"] = old  # dataclasses look it up
      spec.loader.exec_module(old)
      path = files["int_headerless"]
      sec = _best(lambda: old.load_dataset(str(path)), args.repeats)
      print(json.dumps({"file": "int_headerless, old movielens.py",
                        "rows": n, "seconds": round(sec, 3),
                        "x_int_fast_path": round(sec / base, 2)}))


if __name__ == "__main__":
  main()
