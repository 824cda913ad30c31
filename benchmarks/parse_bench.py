"""Times ratings-file parsing on synthetic files; prints JSON.

Writes a ratings.csv (ML-20M/25M layout, with a movies.csv) and a `::`
ratings.dat (ML-10M layout, with a movies.dat) of --lines lines to a temp
dir, then times `load_dataset` on them (parse, validate, remap, duplicate
check, sha256), and the bare parse alone. ML-25M has 25,000,095 lines:
`--lines=25000095` measures it directly (writing the file takes a while).

  python benchmarks/parse_bench.py --lines=2000000
"""

from __future__ import annotations

import json
import pathlib
import tempfile
import time

from absl import app, flags
import numpy as np
import pandas as pd

from recae_jax.data import movielens

FLAGS = flags.FLAGS
flags.DEFINE_integer("lines", 2_000_000,
                     "Ratings lines per file (ML-25M: 25_000_095).")
flags.DEFINE_list("formats", ["csv", "dat"], "Which layouts to time.")
flags.DEFINE_integer("repeats", 3, "Timed runs per measurement (best kept).")
flags.DEFINE_integer("seed", 0, "Seed for the synthetic file.")

_ML25M_LINES = 25_000_095
_PER_USER = 150


def _frame(n: int, seed: int) -> pd.DataFrame:
  """Distinct (user, item) pairs, half-star ratings, sorted by user."""
  rng = np.random.default_rng(seed)
  row = np.arange(n, dtype=np.int64)
  user = row // _PER_USER + 1
  # Within a user, items step by a user-specific stride: all distinct.
  item = (row % _PER_USER) * 7 + user % 7 + 1
  rating = rng.integers(1, 11, n) / 2
  ts = 789_652_009 + rng.integers(0, 800_000_000, n)
  return pd.DataFrame({"userId": user, "movieId": item, "rating": rating,
                       "timestamp": ts})


def _write(folder: pathlib.Path, fmt: str, df: pd.DataFrame) -> pathlib.Path:
  folder.mkdir()
  n_movies = int(df["movieId"].max())
  movie = np.arange(1, n_movies + 1)
  titles = pd.Series(movie).astype(str).radd("Movie ") + " (2000)"
  if fmt == "csv":
    df.to_csv(folder / "ratings.csv", index=False, float_format="%g")
    pd.DataFrame({"movieId": movie, "title": titles,
                  "genres": "Drama|Comedy"}).to_csv(folder / "movies.csv",
                                                    index=False)
    return folder / "ratings.csv"
  text = (df["userId"].astype(str) + "::" + df["movieId"].astype(str) + "::"
          + df["rating"].map("{:g}".format) + "::"
          + df["timestamp"].astype(str))
  (folder / "ratings.dat").write_text("\n".join(text) + "\n")
  (folder / "movies.dat").write_text(
      "\n".join(movie.astype(str).astype(object) + "::" + titles
                + "::Drama|Comedy") + "\n", encoding="latin-1")
  return folder / "ratings.dat"


def _best(fn, repeats: int) -> float:
  times = []
  for _ in range(repeats):  # repeats of a whole parse, not a row loop
    movielens._HASHES.clear()  # time the sha256 too
    t = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t)
  return min(times)


def main(argv):
  del argv
  n = FLAGS.lines
  df = _frame(n, FLAGS.seed)
  results = {"lines": n, "results": []}
  with tempfile.TemporaryDirectory() as tmp:
    for fmt in FLAGS.formats:
      name = {"csv": "ml-25m", "dat": "ml-10m"}[fmt]
      t = time.perf_counter()
      path = _write(pathlib.Path(tmp, fmt), fmt, df)
      write_s = time.perf_counter() - t
      layout = (movielens.RatingsFormat(",", 4, 1) if fmt == "csv" else
                movielens.RatingsFormat("::", 4, 0, "latin-1"))
      parse_s = _best(lambda: movielens.read_ratings_file(path, layout),
                      FLAGS.repeats)
      load_s = _best(lambda: movielens.load_dataset(name, path.parent),
                     FLAGS.repeats)
      results["results"].append({
          "format": fmt,
          "as_dataset": name,
          "bytes": path.stat().st_size,
          "write_seconds": round(write_s, 3),
          "parse_seconds": round(parse_s, 3),
          "parse_lines_per_second": round(n / parse_s),
          "load_dataset_seconds": round(load_s, 3),
          "load_lines_per_second": round(n / load_s),
          "projected_ml25m_load_seconds": round(load_s * _ML25M_LINES / n, 2),
      })
  print(json.dumps(results, indent=2))


if __name__ == "__main__":
  app.run(main)
