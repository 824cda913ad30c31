"""Parses MovieLens ratings files (and, via `generic`, any ratings file).

`load_dataset(name, data_dir, columns="")` takes a known name (`DATASETS`),
`synthetic:<shape>`, or a path to a ratings file: CSV, TSV, `::` or
whitespace separated text (delimiter and header line sniffed), or Parquet.
Such files are read by `recae_jax.data.generic.load_file`: columns found by
header name or given by `columns="user=COL,item=COL,rating=COL[,timestamp=COL]"`
(the `--columns` flag), string ids allowed, ISO-8601 dates allowed. For the
named MovieLens datasets the columns are known, so a non-empty `columns` is
an error rather than silently ignored.
Ids are remapped to 0..n-1 in sorted order
of the original ids (`Dataset.user_ids` / `item_ids` keep the originals). For
the movie datasets the item index space is every movie in the movies file
(u.item / movies.dat / movies.csv), rated or not; users come from the ratings.

Parsing is vectorized: one pandas C-engine read with explicit dtypes. When it
fails (or finds a NaN rating) the file is re-read as text and every check is
done on whole columns so the first offending line can be named; bad input
always ends in a one-line `UserError` naming the file, the line and the
problem (field count, non-integer id, rating outside the dataset's scale or
not a number, empty or missing file, encoding, duplicated pair).

Duplicated (user, item) pairs: with `duplicates="error"` (the default) the
first duplicated pair and its line numbers are reported. With
`duplicates="last"` the rating with the latest timestamp (then the later
line) is kept and a `warnings.warn` says how many were dropped.
"""

from __future__ import annotations

import os
import pathlib
from typing import Optional, Sequence

import numpy as np
import pandas as pd

from recae_jax.data import download as _download
from recae_jax.data import generic, synthetic
# The low-level parsing pieces live in `generic` (which never imports this
# module); re-exported here under the names they have always had.
from recae_jax.data.generic import (  # noqa: F401
    _COLUMNS, _HASHES, _SEP_NAMES, RatingsFormat, _check_head, _decode,
    _line_error, _parse_fast, _remap, _require_file, _split_fields,
    _text_lines, file_sha256)
from recae_jax.data.types import Dataset, Ratings
from recae_jax.errors import UserError

DATASETS = _download.DATASETS

RATING_SCALES: dict[str, tuple[float, float]] = {
    "ml-100k": (1.0, 5.0),
    "ml-1m": (1.0, 5.0),
    "ml-10m": (0.5, 5.0),
    "ml-latest-small": (0.5, 5.0),
    "ml-20m": (0.5, 5.0),
    "ml-25m": (0.5, 5.0),
}

FOLDS = ("u1", "u2", "u3", "u4", "u5", "ua", "ub")

# ML-1M users.dat stores occupations as codes; names from its README.
ML1M_OCCUPATIONS = (
    "other", "academic/educator", "artist", "clerical/admin",
    "college/grad student", "customer service", "doctor/health care",
    "executive/managerial", "farmer", "homemaker", "K-12 student", "lawyer",
    "programmer", "retired", "sales/marketing", "scientist", "self-employed",
    "technician/engineer", "tradesman/craftsman", "unemployed", "writer")

_INT_RE = r"\s*[+-]?\d{1,18}\s*"  # 18 digits always fit in int64


# ---------------------------------------------------------------- helpers


def _show(value) -> str:
  text = repr(str(value))
  return text if len(text) <= 40 else text[:37] + "...'"


def _int_column(path, col: pd.Series, first_line: int,
                what: str) -> np.ndarray:
  col = col.astype(object)
  ok = col.str.fullmatch(_INT_RE).fillna(False).to_numpy(bool)
  bad = np.flatnonzero(~ok)
  if len(bad):
    raise _line_error(path, first_line + bad[0],
                      f"{what} {_show(col.iloc[bad[0]])} is not an integer")
  return col.str.strip().astype(np.int64).to_numpy()


def _float_column(path, col: pd.Series, first_line: int,
                  what: str) -> np.ndarray:
  values = pd.to_numeric(col.astype(object).str.strip(),
                         errors="coerce").to_numpy(np.float64)
  bad = np.flatnonzero(np.isnan(values))
  if len(bad):
    raise _line_error(path, first_line + bad[0],
                      f"{what} {_show(col.iloc[bad[0]])} is not a number")
  return values


# ---------------------------------------------------------- ratings files


def sniff_format(path: str | os.PathLike, *, sep: Optional[str] = None,
                 n_fields: Optional[int] = None,
                 encoding: str = "utf-8") -> RatingsFormat:
  """Guesses delimiter, header and field count from the file's first block."""
  path = pathlib.Path(path)
  with open(path, "rb") as f:
    head = f.read(65536)
  _check_head(path, head)
  lines = head.decode(encoding, errors="replace").lstrip("\ufeff").split("\n")
  lines = [line.rstrip("\r") for line in lines[:3]]  # a few lines, not rows
  nonblank = [line for line in lines if line.strip()]
  if not nonblank:
    raise UserError(f"{path}: file is empty (only blank lines)")
  first = nonblank[0]
  if sep is None:
    sep = ("::" if "::" in first else "\t" if "\t" in first else
           "," if "," in first else " ")
  fields = first.split() if sep == " " else first.split(sep)
  numeric = pd.to_numeric(pd.Series(fields, dtype=object).str.strip(),
                          errors="coerce")
  header = int(bool(lines[0].strip()) and numeric.isna().all())
  if n_fields is None:
    data_line = lines[header] if len(lines) > header else ""
    n_fields = len(data_line.split() if sep == " " else data_line.split(sep))
    if not data_line.strip():
      n_fields = len(fields)
    if n_fields not in (3, 4):
      raise _line_error(path, header + 1,
                        f"expected 3 or 4 {_SEP_NAMES.get(sep, repr(sep))}"
                        f"-separated fields (user, item, rating[, timestamp]),"
                        f" found {n_fields}")
  return RatingsFormat(sep, n_fields, header, encoding)


def _parse_slow(path: pathlib.Path, fmt: RatingsFormat) -> pd.DataFrame:
  """Reads the file as text and names the first bad line (or parses it)."""
  lines, first = _text_lines(path, fmt.encoding, skip=fmt.header_lines)
  what = ", ".join(_COLUMNS[:fmt.n_fields])
  fields = _split_fields(path, lines, first, fmt.sep, fmt.n_fields, what)
  out = {
      "user": _int_column(path, fields[0], first, "user id"),
      "item": _int_column(path, fields[1], first, "item id"),
      "rating": _float_column(path, fields[2], first, "rating"),
  }
  if fmt.n_fields == 4:
    out["timestamp"] = _int_column(path, fields[3], first, "timestamp")
  return pd.DataFrame(out)


def read_ratings_file(path: str | os.PathLike,
                      fmt: Optional[RatingsFormat] = None, *,
                      scale: Optional[tuple[float, float]] = None,
                      what: str = "ratings file") -> tuple[pd.DataFrame, int]:
  """Parses one ratings file into columns user, item (original int64 ids),
  rating (float32), timestamp (int64; 0 if absent).

  Returns the frame and the line number of its first row. Ratings must be
  finite and, when `scale` is given, inside it.
  """
  path = pathlib.Path(path)
  _require_file(path, what)
  if fmt is None:
    fmt = sniff_format(path)
  else:
    with open(path, "rb") as f:
      _check_head(path, f.read(65536))
  df = _parse_fast(path, fmt)
  if df is None:
    df = _parse_slow(path, fmt)
  first = fmt.header_lines + 1
  if len(df) == 0:
    raise UserError(f"{path}: has a header line but no ratings")
  rating = df["rating"].to_numpy(np.float32)
  lo, hi = scale if scale is not None else (-np.inf, np.inf)
  bad = np.flatnonzero(~((rating >= lo) & (rating <= hi) & np.isfinite(rating)))
  if len(bad):
    where = (f"outside the dataset's scale [{lo:g}, {hi:g}]"
             if scale is not None else "not finite")
    raise _line_error(path, first + bad[0],
                      f"rating {rating[bad[0]]:g} is {where}")
  if "timestamp" not in df:
    df = df.assign(timestamp=np.zeros(len(df), np.int64))
  return df, first


def _lookup(path, known: np.ndarray, ids: np.ndarray, first: int,
            what: str, where: str) -> np.ndarray:
  """Index of each id in the sorted array `known`, or names the first miss."""
  pos = np.searchsorted(known, ids)
  clipped = np.minimum(pos, len(known) - 1)
  bad = np.flatnonzero((pos >= len(known)) | (known[clipped] != ids))
  if len(bad):
    raise _line_error(path, first + bad[0],
                      f"{what} {ids[bad[0]]} is not in {where}")
  return pos.astype(np.int32)


def _dedupe(path, users: np.ndarray, items: np.ndarray, ts: np.ndarray,
            n_items: int, user_ids: np.ndarray, item_ids: np.ndarray,
            first: int, duplicates: str) -> Optional[np.ndarray]:
  """None if all (user, item) pairs are distinct, else the rows to keep
  (generic's rule; rows named as lines from `first`)."""
  where = generic._Where(str(path), "line", generic._lines_from(first))
  return generic._dedupe(where, users, items, ts, n_items, user_ids, item_ids,
                         duplicates)


# ----------------------------------------------------------- side tables


def _genre_columns(path, genres: pd.Series) -> pd.DataFrame:
  """`A|B|C` strings -> one int8 0/1 column per genre (sorted names)."""
  dummies = genres.fillna("").astype(object).str.get_dummies(sep="|")
  dummies = dummies.drop(columns=["(no genres listed)", ""], errors="ignore")
  return dummies.reindex(sorted(dummies.columns), axis=1).astype(np.int8)


def _year(titles: pd.Series) -> pd.Series:
  # "Title (1995)", "Series (2006-2007)", sometimes a trailing space.
  return pd.to_numeric(
      titles.astype(object).str.extract(r"\((\d{4})(?:[-\u2013]\d{0,4})?\)\s*$")[0],
      errors="coerce").astype(np.float64)


def _items_frame(path, ids: np.ndarray, titles: pd.Series, years: pd.Series,
                 genres: pd.DataFrame, first: int) -> tuple[np.ndarray, pd.DataFrame]:
  order = np.argsort(ids, kind="stable")
  sorted_ids = ids[order]
  dup = np.flatnonzero(sorted_ids[1:] == sorted_ids[:-1])
  if len(dup):
    rows = np.flatnonzero(ids == sorted_ids[dup[0]])
    raise _line_error(path, first + rows[1],
                      f"movie id {sorted_ids[dup[0]]} repeats line "
                      f"{first + rows[0]}")
  info = pd.DataFrame({
      "movie_id": sorted_ids,
      "title": titles.to_numpy(object)[order],
      "year": years.to_numpy(np.float64)[order],
  })
  info = pd.concat(
      [info, genres.iloc[order].reset_index(drop=True)], axis=1)
  return sorted_ids, info


def _read_ml100k_items(folder: pathlib.Path) -> tuple[np.ndarray, pd.DataFrame, tuple[str, ...]]:
  gpath = folder / "u.genre"
  _require_file(gpath, "ML-100K genre names")
  glines, gfirst = _text_lines(gpath, "latin-1")
  gfields = _split_fields(gpath, glines, gfirst, "|", 2, "genre, index")
  gidx = _int_column(gpath, gfields[1], gfirst, "genre index")
  genres = tuple(gfields[0].to_numpy(object)[np.argsort(gidx, kind="stable")])
  n_genres = len(genres)

  path = folder / "u.item"
  _require_file(path, "ML-100K movies")
  lines, first = _text_lines(path, "latin-1")
  fields = _split_fields(path, lines, first, "|", 5 + n_genres,
                         f"id, title, dates, url and {n_genres} genre flags")
  ids = _int_column(path, fields[0], first, "movie id")
  flags = np.stack([_int_column(path, fields[5 + g], first, "genre flag")
                    for g in range(n_genres)], axis=1)  # loop over genres
  bad = np.flatnonzero(((flags != 0) & (flags != 1)).any(axis=1))
  if len(bad):
    raise _line_error(path, first + bad[0], "genre flags must be 0 or 1")
  titles = fields[1].astype(object)
  year = _year(titles).fillna(pd.to_numeric(
      fields[2].astype(object).str.extract(r"(\d{4})\s*$")[0], errors="coerce"))
  genre_df = pd.DataFrame(flags.astype(np.int8), columns=list(genres))
  item_ids, info = _items_frame(path, ids, titles, year, genre_df, first)
  return item_ids, info, genres


def _read_dat_movies(path: pathlib.Path) -> tuple[np.ndarray, pd.DataFrame, tuple[str, ...]]:
  _require_file(path, "movies")
  lines, first = _text_lines(path, "latin-1")
  # Titles may hold ':' (even '::'), so split the id off the left and the
  # genres off the right.
  head = lines.str.split("::", n=1, regex=False, expand=True)
  if head.shape[1] < 2 or head[1].isna().any():
    row = 0 if head.shape[1] < 2 else int(np.flatnonzero(head[1].isna())[0])
    raise _line_error(path, first + row,
                      "expected 'MovieID::Title::Genres'")
  tail = head[1].str.rsplit("::", n=1, expand=True)
  if tail.shape[1] < 2 or tail[1].isna().any():
    row = 0 if tail.shape[1] < 2 else int(np.flatnonzero(tail[1].isna())[0])
    raise _line_error(path, first + row,
                      "expected 'MovieID::Title::Genres'")
  ids = _int_column(path, head[0], first, "movie id")
  genres = _genre_columns(path, tail[1])
  item_ids, info = _items_frame(path, ids, tail[0], _year(tail[0]), genres,
                                first)
  return item_ids, info, tuple(genres.columns)


def _read_csv_movies(path: pathlib.Path) -> tuple[np.ndarray, pd.DataFrame, tuple[str, ...]]:
  _require_file(path, "movies")
  with open(path, "rb") as f:
    _check_head(path, f.read(65536))
  try:
    df = pd.read_csv(path, dtype=str, keep_default_na=False, engine="c",
                     encoding="utf-8")
  except UnicodeDecodeError as e:
    data = path.read_bytes()
    _decode(path, data, "utf-8")  # raises with the line number
    raise UserError(f"{path}: not valid UTF-8 ({e})") from None
  except pd.errors.EmptyDataError:
    raise UserError(f"{path}: file is empty") from None
  except (pd.errors.ParserError, ValueError) as e:
    raise UserError(f"{path}: {str(e).strip().splitlines()[-1]}") from None
  expected = ["movieId", "title", "genres"]
  if list(df.columns) != expected:
    raise _line_error(path, 1, f"expected header {','.join(expected)}, found "
                      f"{_show(','.join(map(str, df.columns)))}")
  if len(df) == 0:
    raise UserError(f"{path}: has a header line but no movies")
  ids = _int_column(path, df["movieId"], 2, "movie id")
  genres = _genre_columns(path, df["genres"])
  item_ids, info = _items_frame(path, ids, df["title"], _year(df["title"]),
                                genres, 2)
  return item_ids, info, tuple(genres.columns)


def _read_users(path: pathlib.Path, sep: str, fields_order: Sequence[str],
                user_ids: np.ndarray, encoding: str) -> pd.DataFrame:
  """u.user / users.dat aligned to `user_ids` (rows of unknown users NaN)."""
  _require_file(path, "user attributes")
  lines, first = _text_lines(path, encoding)
  fields = _split_fields(path, lines, first, sep, len(fields_order),
                         ", ".join(fields_order))
  fields.columns = list(fields_order)
  ids = _int_column(path, fields["user_id"], first, "user id")
  age = _int_column(path, fields["age"], first, "age")
  occupation = fields["occupation"].astype(object)
  if sep == "::":  # ML-1M codes
    codes = _int_column(path, occupation, first, "occupation code")
    bad = np.flatnonzero((codes < 0) | (codes >= len(ML1M_OCCUPATIONS)))
    if len(bad):
      raise _line_error(path, first + bad[0],
                        f"occupation code {codes[bad[0]]} is not 0..20")
    occupation = pd.Series(np.asarray(ML1M_OCCUPATIONS, object)[codes])
  gender = fields["gender"].astype(object).str.strip().str.upper()
  bad = np.flatnonzero(~gender.isin(["M", "F"]).to_numpy())
  if len(bad):
    raise _line_error(path, first + bad[0],
                      f"gender {_show(gender.iloc[bad[0]])} is not M or F")
  table = pd.DataFrame({"user_id": ids, "age": age.astype(np.float64),
                        "gender": gender.to_numpy(object),
                        "occupation": occupation.to_numpy(object),
                        "zip": fields["zip"].astype(object).to_numpy(object)})
  if table["user_id"].duplicated().any():
    row = int(np.flatnonzero(table["user_id"].duplicated().to_numpy())[0])
    raise _line_error(path, first + row, f"user id {ids[row]} repeats")
  table = table.set_index("user_id").reindex(user_ids)
  return table.reset_index().rename(columns={"index": "user_id"})


# ------------------------------------------------------------- datasets


def _ratings_path(name: str, folder: pathlib.Path) -> tuple[pathlib.Path, RatingsFormat]:
  if name == "ml-100k":
    return folder / "u.data", RatingsFormat("\t", 4, 0)
  if name in ("ml-1m", "ml-10m"):
    return folder / "ratings.dat", RatingsFormat("::", 4, 0, "latin-1")
  return folder / "ratings.csv", RatingsFormat(",", 4, 1)


def _build(name: str, path: pathlib.Path, df: pd.DataFrame, first: int,
           item_ids: Optional[np.ndarray], item_where: str,
           duplicates: str) -> tuple[Ratings, np.ndarray, np.ndarray]:
  """Remaps ids, checks items against the movies file, applies duplicates."""
  raw_users = df["user"].to_numpy(np.int64)
  raw_items = df["item"].to_numpy(np.int64)
  user_ids, users = _remap(raw_users)
  if item_ids is None:
    item_ids, items = _remap(raw_items)
  else:
    items = _lookup(path, item_ids, raw_items, first, "item id", item_where)
  ratings = df["rating"].to_numpy(np.float32)
  ts = df["timestamp"].to_numpy(np.int64)
  keep = _dedupe(path, users, items, ts, len(item_ids), user_ids, item_ids,
                 first, duplicates)
  if keep is not None:
    users, items, ratings, ts = users[keep], items[keep], ratings[keep], ts[keep]
  return (Ratings(users, items, ratings, ts, len(user_ids), len(item_ids)),
          user_ids, item_ids)


def load_dataset(name: str, data_dir: str | os.PathLike | None = None, *,
                 download: bool = True, duplicates: str = "error",
                 columns: str = "") -> Dataset:
  """Loads a MovieLens dataset by name, or a generic ratings file by path.

  `columns` ("user=COL,item=COL,rating=COL[,timestamp=COL]", the --columns
  flag) names the columns of a generic file; it is an error for the named
  and synthetic datasets, whose columns are fixed.
  """
  if duplicates not in ("error", "last"):
    raise UserError(f"duplicates={duplicates!r}: expected 'error' or 'last'")
  name = str(name)
  columns = (columns or "").strip()
  if columns and (name in DATASETS or name.startswith("synthetic:")):
    raise UserError(f"--columns={columns} is for ratings files; {name} has "
                    f"fixed columns (drop --columns)")
  if name.startswith("synthetic:"):
    return _load_synthetic(name)
  if name not in DATASETS:
    return _load_generic(name, duplicates, columns)
  folder = _download.resolve_dataset_dir(name, data_dir, download=download)
  path, fmt = _ratings_path(name, folder)
  _require_file(path, f"{name} ratings")
  # Sniff the header rather than trusting it: skipping a missing header would
  # silently drop the first rating.
  fmt = sniff_format(path, sep=fmt.sep, n_fields=fmt.n_fields,
                     encoding=fmt.encoding)
  scale = RATING_SCALES[name]
  df, first = read_ratings_file(path, fmt, scale=scale,
                                what=f"{name} ratings")
  files = [path]
  users_info = None
  if name == "ml-100k":
    item_ids, items_info, genres = _read_ml100k_items(folder)
    files += [folder / "u.genre", folder / "u.item"]
    where = "u.item"
  elif name in ("ml-1m", "ml-10m"):
    item_ids, items_info, genres = _read_dat_movies(folder / "movies.dat")
    files.append(folder / "movies.dat")
    where = "movies.dat"
  else:
    item_ids, items_info, genres = _read_csv_movies(folder / "movies.csv")
    files.append(folder / "movies.csv")
    where = "movies.csv"
  ratings, user_ids, item_ids = _build(name, path, df, first, item_ids, where,
                                       duplicates)
  if name == "ml-100k":
    users_info = _read_users(folder / "u.user", "|",
                             ("user_id", "age", "gender", "occupation", "zip"),
                             user_ids, "latin-1")
    files.append(folder / "u.user")
  elif name == "ml-1m":
    users_info = _read_users(folder / "users.dat", "::",
                             ("user_id", "gender", "age", "occupation", "zip"),
                             user_ids, "latin-1")
    files.append(folder / "users.dat")
  return Dataset(
      name=name, ratings=ratings, user_ids=user_ids, item_ids=item_ids,
      rating_scale=scale, items_info=items_info, users_info=users_info,
      genres=genres, files={str(p): file_sha256(p) for p in files},
      directory=str(folder))


def _load_synthetic(name: str) -> Dataset:
  """"synthetic:<shape>" (ml-100k, ml-1m, ml-20m, netflix) or
  "synthetic:<users>x<items>x<ratings>": data.synthetic.generate, seed 0."""
  spec = name.split(":", 1)[1]
  parts = spec.split("x")
  if spec in synthetic.SHAPES:
    return synthetic.generate(spec, seed=0)
  try:
    shape = tuple(int(p) for p in parts)
  except ValueError:
    shape = ()
  if len(shape) != 3:
    raise UserError(f"unknown dataset {name!r}: expected synthetic:<shape> with "
                    f"shape one of {', '.join(synthetic.SHAPES)} or "
                    f"<users>x<items>x<ratings>")
  return synthetic.generate(shape, seed=0)


def _load_generic(name: str, duplicates: str, columns: str = "") -> Dataset:
  path = pathlib.Path(name).expanduser()
  if not path.exists():
    looks_like_path = (os.sep in name or "/" in name or path.suffix != "")
    if looks_like_path:
      raise UserError(f"missing file {path} (ratings file)")
    raise UserError(f"unknown dataset {name!r}: expected one of "
                    f"{', '.join(DATASETS)} or a path to a ratings file "
                    f"(CSV, TSV or Parquet with user, item, rating columns)")
  if path.is_dir():
    raise UserError(f"{path} is a directory: pass a ratings file, or a "
                    f"dataset name ({', '.join(DATASETS)}) with --data_dir")
  return generic.load_file(path, columns=columns, duplicates=duplicates)


def load_fold(dataset: Dataset, fold: str) -> tuple[Ratings, Ratings]:
  """ML-100K's `{fold}.base` / `{fold}.test` in the dataset's index space."""
  if fold not in FOLDS:
    raise UserError(f"unknown fold {fold!r}: expected one of "
                    f"{', '.join(FOLDS)}")
  if dataset.directory is None:
    raise UserError(f"dataset {dataset.name} has no directory to read "
                    f"{fold}.base from")
  out = []
  for part in ("base", "test"):  # two files, not rows
    path = pathlib.Path(dataset.directory) / f"{fold}.{part}"
    df, first = read_ratings_file(path, RatingsFormat("\t", 4, 0),
                                  scale=dataset.rating_scale,
                                  what=f"ML-100K fold {fold}")
    users = _lookup(path, dataset.user_ids, df["user"].to_numpy(np.int64),
                    first, "user id", f"{dataset.name}'s ratings")
    items = _lookup(path, dataset.item_ids, df["item"].to_numpy(np.int64),
                    first, "item id", f"{dataset.name}'s items")
    ts = df["timestamp"].to_numpy(np.int64)
    _dedupe(path, users, items, ts, dataset.n_items, dataset.user_ids,
            dataset.item_ids, first, "error")
    out.append(Ratings(users, items, df["rating"].to_numpy(np.float32), ts,
                       dataset.n_users, dataset.n_items))
  return out[0], out[1]
