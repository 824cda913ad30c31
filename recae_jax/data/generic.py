"""Any ratings file (CSV, TSV, Parquet) or DataFrame -> a `Dataset`.

`load_file(path, columns="")` reads a ratings file whose columns are found
by their header names (case, `_`, `-` and spaces ignored):

  user       user, userId, user_id, reviewerID, customer_id
  item       item, itemId, movieId, item_id, asin, productId
  rating     rating, overall, score, stars
  timestamp  timestamp, time, unixReviewTime, date, ts   (optional)

or named with `columns="user=COL,item=COL,rating=COL[,timestamp=COL]"` (the
`--columns` flag; any role left out is still found by name; COL may also be
a 1-based column number, the only way to name columns of a file without a
header). Other columns are ignored. A file without a header is
`user,item,rating[,timestamp]` as before, and a 3- or 4-column header none of
whose names is known is read in that order too.

Ids: a column whose every id is an integer that fits int64 and prints back
as written (no leading zeros or '+') gives int64 `user_ids`/`item_ids` in
numeric order, as before; any other column keeps its ids as strings (object
array of str, sorted, surrounding spaces stripped), so `Dataset.user_ids[i]`
is always the original id of index i. (The typed fast path for plain numeric
files reads '007' as 7, as it always has.) Ratings must be numbers; the rating
scale is (min, max) of the ratings. Timestamps are Unix seconds (integers, or
numbers floored) or ISO-8601 dates/times (`2014-05-23`,
`2014-05-23T10:00:00+02:00`; naive ones are UTC) and become int64 Unix seconds.

Plain numeric `user,item,rating[,timestamp]` files (with or without header)
still take the one-pass typed C-engine read (`_parse_fast`, which the
MovieLens loaders use too); everything else is read as strings by one pandas
C-engine read (CSV/TSV with quoting) or by vectorized line splitting (`::`,
whitespace, unquoted files) and converted a column at a time. Parquet needs
pyarrow (`pip install 'recae_jax[parquet]'`).

This module also holds the low-level parsing shared with `movielens` (file
checks, decoding, field splitting, the typed fast read, `RatingsFormat`,
`file_sha256`); `movielens` imports it, never the other way round.

`from_frame(df, user=..., item=..., rating=..., timestamp=None)` does the same
conversion for a DataFrame already in memory.

Every bad input is a one-line `UserError` naming the file and the line (or
the frame and the row, or the column) and the fix.
"""

from __future__ import annotations

import csv
import dataclasses
import importlib.util
import os
import pathlib
import re
import warnings
from typing import Callable, Optional

import numpy as np
import pandas as pd

from recae_jax.data import download as _download
from recae_jax.data.types import Dataset, Ratings
from recae_jax.errors import UserError

ROLES = ("user", "item", "rating", "timestamp")
REQUIRED = ROLES[:3]
ALIASES: dict[str, tuple[str, ...]] = {
    "user": ("user", "userId", "user_id", "reviewerID", "customer_id"),
    "item": ("item", "itemId", "movieId", "item_id", "asin", "productId"),
    "rating": ("rating", "overall", "score", "stars"),
    "timestamp": ("timestamp", "time", "unixReviewTime", "date", "ts"),
}
PARQUET_SUFFIXES = (".parquet", ".pq")
COLUMNS_FORMAT = "user=COL,item=COL,rating=COL[,timestamp=COL]"
_CHUNK = 1 << 19  # rows per pandas chunk when reading quoted CSV/TSV


def _norm(name) -> str:
  return re.sub(r"[\s_\-]", "", str(name)).lower()


_ALIAS_NORM = {role: {_norm(a) for a in names} for role, names in
               ALIASES.items()}


def _show(value) -> str:
  text = repr(str(value))
  return text if len(text) <= 40 else text[:37] + "...'"


def _listing(names) -> str:
  shown = ", ".join(_show(n) for n in list(names)[:12])
  return shown + (f" (+{len(names) - 12} more)" if len(names) > 12 else "")


# --------------------------------------------------------------- columns


def parse_columns(spec: str) -> dict[str, str]:
  """`"user=A,item=B,rating=C[,timestamp=D]"` -> {role: column}; "" -> {}."""
  spec = (spec or "").strip()
  if not spec:
    return {}
  out: dict[str, str] = {}
  for part in spec.split(","):  # a handful of roles
    role, eq, col = part.partition("=")
    role, col = role.strip().lower(), col.strip()
    if not eq or not col:
      raise UserError(f"--columns={spec}: {part.strip()!r} is not ROLE=COLUMN;"
                      f" expected {COLUMNS_FORMAT}")
    if role not in ROLES:
      raise UserError(f"--columns={spec}: unknown role {role!r}; roles are "
                      f"{', '.join(ROLES)} ({COLUMNS_FORMAT})")
    if role in out:
      raise UserError(f"--columns={spec}: {role} is given twice; give each "
                      f"role once ({COLUMNS_FORMAT})")
    out[role] = col
  return out


def resolve_columns(names: list, spec: dict[str, str], where: str, *,
                    has_header: bool = True) -> dict[str, int]:
  """{role: column index} from header `names` and a parsed --columns spec.

  `where` starts every error ("data.csv, line 1" or "frame"). Without a
  header, `names` only gives the column count and the spec must use numbers.
  """
  n = len(names)
  out: dict[str, int] = {}
  for role, col in spec.items():  # at most four roles
    hits = [i for i, x in enumerate(names) if has_header and str(x) == col]
    if not hits and has_header:
      hits = [i for i, x in enumerate(names) if str(x).lower() == col.lower()]
    if len(hits) > 1:
      raise UserError(f"{where}: column {col!r} (--columns {role}) appears "
                      f"{len(hits)} times in the header (columns "
                      f"{', '.join(str(i + 1) for i in hits)}); name it by "
                      f"number, e.g. --columns={role}={hits[0] + 1}")
    if not hits and col.isdigit() and 1 <= int(col) <= n:
      hits = [int(col) - 1]
    if not hits:
      if not has_header:
        raise UserError(f"{where}: the file has no header line, so --columns "
                        f"must give column numbers 1..{n} "
                        f"(e.g. --columns=user=1,item=2,rating=3), not {col!r}")
      raise UserError(f"{where}: no column {col!r} for the {role} (--columns);"
                      f" the columns are {_listing(names)}")
    out[role] = hits[0]
  if has_header:
    known = {i for i, x in enumerate(names)
             if any(_norm(x) in a for a in _ALIAS_NORM.values())}
    for role in ROLES:  # by name, for roles the spec left out
      if role in out:
        continue
      hits = [i for i, x in enumerate(names) if _norm(x) in _ALIAS_NORM[role]
              and i not in out.values()]
      if len(hits) > 1:
        raise UserError(
            f"{where}: columns {' and '.join(_show(names[i]) for i in hits)} "
            f"could each be the {role}; choose one with "
            f"--columns={role}=COL")
      if hits:
        out[role] = hits[0]
    if not spec and not known and n in (3, 4):
      out = {role: i for i, role in enumerate(ROLES[:n])}  # as before
    if ("timestamp" not in out and n == 4 and
        [out.get(r) for r in REQUIRED] == [0, 1, 2] and 3 not in known):
      out["timestamp"] = 3  # user,item,rating,<anything>: as before
  elif not spec:
    if n not in (3, 4):
      raise UserError(f"{where}: expected 3 or 4 fields (user, item, "
                      f"rating[, timestamp]), found {n}; or add a header "
                      f"line, or name the columns with --columns=user=1,"
                      f"item=2,rating=3")
    out = {role: i for i, role in enumerate(ROLES[:n])}
  for role in REQUIRED:
    if role not in out:
      looked = ", ".join(ALIASES[role])
      raise UserError(f"{where}: no {role} column (looked for {looked}); the "
                      f"columns are {_listing(names)}; name it with "
                      f"--columns={role}=COL")
  used = {}
  for role, i in out.items():
    if i in used:
      raise UserError(f"{where}: column {_show(names[i])} is both the "
                      f"{used[i]} and the {role}; give each role its own "
                      f"column in --columns")
    used[i] = role
  return out


# ------------------------------------------------------------ locations


@dataclasses.dataclass(frozen=True)
class _Where:
  """Names rows in messages: "f.csv, line 7" or "frame, row 'x'"."""
  prefix: str
  unit: str                                   # "line" or "row"
  numbers: Callable[[np.ndarray], np.ndarray]  # row positions -> labels

  def at(self, row: int, column: Optional[str] = None) -> str:
    label = self.numbers(np.asarray([row]))[0]
    col = f" (column {_show(column)})" if column is not None else ""
    return f"{self.prefix}, {self.unit} {label}{col}"

  def many(self, rows: np.ndarray) -> str:
    labels = self.numbers(np.asarray(rows))
    return f"{self.unit}s {', '.join(str(x) for x in labels)}"


def _lines_from(first: int) -> Callable[[np.ndarray], np.ndarray]:
  return lambda rows: np.asarray(rows, np.int64) + first


# -------------------------------------------------------------- columns


def _array(values) -> np.ndarray:
  if isinstance(values, (pd.Series, pd.Index)):
    return values.to_numpy()
  return np.asarray(values)


def _factorized(values, where: _Where, what: str,
                column) -> tuple[np.ndarray, pd.Series]:
  """(code of each row, its distinct values as stripped str).

  String work (strip, regex, number parsing) then runs on the distinct
  values only (thousands of ids, a few ratings), not on every row: the rows
  just index the converted values. Missing or empty values are an error.
  """
  codes, uniques = pd.factorize(np.asarray(_array(values), dtype=object))
  text = pd.Series(np.asarray(uniques, dtype=object), dtype=object)
  text = text.astype(str).str.strip()
  empty = np.append(text.str.len().to_numpy() == 0, True)  # code -1: NaN
  bad = np.flatnonzero(empty[codes])
  if len(bad):
    raise UserError(f"{where.at(bad[0], column)}: {what} is empty (a blank "
                    f"line or a missing field?); every row needs a {what}")
  return codes, text


def _first_row(codes: np.ndarray, bad_values: np.ndarray) -> int:
  return int(np.flatnonzero(bad_values[codes])[0])


def ids_column(values, where: _Where, what: str,
               column=None) -> tuple[np.ndarray, np.ndarray]:
  """(original ids sorted, int32 index of each row's id).

  Integer columns (or strings that are all integers printed plainly: no
  leading zeros or '+') give int64 ids like the MovieLens loaders; anything
  else keeps the ids as str in an object array (surrounding spaces
  stripped).
  """
  arr = _array(values)
  if arr.dtype.kind in "iu":
    if arr.dtype.kind == "u" and len(arr) and arr.max() >= 2**63:
      arr = arr.astype(str)  # too big for int64: keep them as strings
    else:
      return _remap(arr.astype(np.int64))
  if arr.dtype.kind == "f":
    bad = np.flatnonzero(~np.isfinite(arr))
    if len(bad):
      raise UserError(f"{where.at(bad[0], column)}: {what} is missing (NaN);"
                      f" every row needs a {what}")
    if np.all(arr == np.round(arr)) and np.all(np.abs(arr) < 2.0**53):
      return _remap(arr.astype(np.int64))
  codes, text = _factorized(values, where, what, column)
  raw = text.to_numpy(dtype=object)
  try:  # C-speed int(); kept only if every id prints back as written
    ints = raw.astype(np.int64)
    if (ints.astype(str) == raw.astype(str)).all():
      return _remap(ints[codes])
  except (ValueError, TypeError, OverflowError):
    pass
  # Distinct raw values may strip to the same id: factorize once more.
  merged, ids = pd.factorize(text, sort=True)
  return np.asarray(ids, dtype=object), merged[codes].astype(np.int32)


def ratings_column(values, where: _Where, column=None,
                   scale: Optional[tuple[float, float]] = None) -> np.ndarray:
  """float32 ratings; not a number / not finite / off `scale` -> error."""
  arr = _array(values)
  if arr.dtype.kind in "iuf":
    raw, num = None, arr.astype(np.float64)
  else:
    codes, text = _factorized(values, where, "rating", column)
    num_u = pd.to_numeric(text, errors="coerce").to_numpy(np.float64)
    if np.isnan(num_u).any():
      row = _first_row(codes, np.isnan(num_u))
      raise UserError(
          f"{where.at(row, column)}: rating {_show(text.iloc[codes[row]])} "
          f"is not a number; ratings must be numeric (choose another column "
          f"with --columns=rating=COL)")
    raw, num = (codes, text), num_u[codes]
  bad = np.flatnonzero(np.isnan(num))
  if len(bad):
    raise UserError(f"{where.at(bad[0], column)}: rating is missing (NaN); "
                    f"every row needs a rating")
  with np.errstate(over="ignore"):  # 1e300 -> inf, named just below
    out = num.astype(np.float32)
  bad = np.flatnonzero(~np.isfinite(out))
  if len(bad):
    shown = (_show(raw[1].iloc[raw[0][bad[0]]]) if raw is not None else
             f"{num[bad[0]]:g}")
    raise UserError(f"{where.at(bad[0], column)}: rating {shown} is not "
                    f"finite; every rating must be a finite number")
  if scale is not None:
    lo, hi = scale
    bad = np.flatnonzero((out < lo) | (out > hi))
    if len(bad):
      raise UserError(f"{where.at(bad[0], column)}: rating {out[bad[0]]:g} "
                      f"is outside the rating scale [{lo:g}, {hi:g}]")
  return out


_ISO_HINT = "Unix seconds or an ISO-8601 date (2014-05-23, 2014-05-23T10:00:00Z)"


def _datetimes_to_seconds(dt: pd.Series) -> np.ndarray:
  if dt.dt.tz is not None:
    dt = dt.dt.tz_convert("UTC").dt.tz_localize(None)
  return dt.dt.floor("s").dt.as_unit("s").astype(np.int64).to_numpy()


def _numbers_to_seconds(num: np.ndarray, where: _Where, column) -> np.ndarray:
  ok = np.isfinite(num) & (np.abs(num) < 2.0**62)
  bad = np.flatnonzero(~ok)
  if len(bad):
    raise UserError(f"{where.at(bad[0], column)}: timestamp {num[bad[0]]:g} "
                    f"is not {_ISO_HINT}")
  return np.floor(num).astype(np.int64)


def timestamps_column(values, where: _Where, column=None) -> np.ndarray:
  """int64 Unix seconds from numbers, datetimes or ISO-8601 strings."""
  s = values if isinstance(values, pd.Series) else pd.Series(values)
  s = s.reset_index(drop=True)
  if pd.api.types.is_datetime64_any_dtype(s.dtype):
    bad = np.flatnonzero(s.isna().to_numpy())
    if len(bad):
      raise UserError(f"{where.at(bad[0], column)}: timestamp is missing "
                      f"(NaT); every row needs one, or drop the timestamp")
    return _datetimes_to_seconds(s)
  if s.dtype.kind == "i" or (s.dtype.kind == "u" and (
      len(s) == 0 or s.max() < 2**62)):
    return s.to_numpy().astype(np.int64)
  if s.dtype.kind in "uf":
    return _numbers_to_seconds(s.to_numpy(np.float64), where, column)
  codes, text = _factorized(s, where, "timestamp", column)
  try:  # all integers: Unix seconds (fails at once on a date)
    return text.to_numpy(dtype=object).astype(np.int64)[codes]
  except (ValueError, TypeError, OverflowError):
    pass
  try:
    dt = pd.to_datetime(text, format="ISO8601", utc=True, errors="coerce")
  except (ValueError, OverflowError, TypeError):  # pandas edge cases
    dt = pd.Series(pd.NaT, index=text.index, dtype="datetime64[ns, UTC]")
  not_date = dt.isna().to_numpy()
  if not not_date.any():
    return _datetimes_to_seconds(dt)[codes]
  num_u = pd.to_numeric(text, errors="coerce").to_numpy(np.float64)
  is_num = ~np.isnan(num_u)
  if is_num.all():  # e.g. float seconds
    return _numbers_to_seconds(num_u, where, column)[codes]
  if is_num.any():  # some numbers, some not: name the first odd one out
    rows_num = is_num[codes]
    row = int(np.flatnonzero(rows_num != rows_num[0])[0])
    raise UserError(f"{where.at(row, column)}: timestamp "
                    f"{_show(text.iloc[codes[row]])} is not {_ISO_HINT}, or "
                    f"the column mixes the two (use one kind per column)")
  row = _first_row(codes, not_date)
  raise UserError(f"{where.at(row, column)}: timestamp "
                  f"{_show(text.iloc[codes[row]])} is not {_ISO_HINT}")


def _dedupe(where: _Where, users, items, ts, n_items, user_ids, item_ids,
            duplicates: str) -> Optional[np.ndarray]:
  """None if all (user, item) pairs are distinct, else the rows to keep: an
  error naming a repeated pair's rows, or (duplicates="last") the latest of
  each pair by timestamp, then by row, with a warning."""
  keys = users.astype(np.int64) * n_items + items
  if len(keys) < 2 or np.all(keys[1:] > keys[:-1]):
    return None
  order = np.argsort(keys, kind="stable")
  sorted_keys = keys[order]
  dup = sorted_keys[1:] == sorted_keys[:-1]
  if not dup.any():
    return None
  n_dup = int(dup.sum())
  if duplicates == "error":
    row = int(order[1:][dup].min())
    rows = np.flatnonzero(keys == keys[row])[:5]
    raise UserError(
        f"{where.prefix}: user {user_ids[users[row]]} rated item "
        f"{item_ids[items[row]]} more than once ({where.many(rows)}); {n_dup}"
        f" repeated (user, item) ratings in all; pass duplicates='last' "
        f"(--duplicates=last) to keep the latest of each")
  order = np.lexsort((np.arange(len(keys)), ts, keys))
  sorted_keys = keys[order]
  last = np.append(sorted_keys[1:] != sorted_keys[:-1], True)
  warnings.warn(f"{where.prefix}: dropped {n_dup} repeated (user, item) "
                f"ratings, keeping the latest of each", stacklevel=4)
  return np.sort(order[last])


def assemble(name: str, cols: dict, where: _Where, *, duplicates: str,
             names: Optional[dict] = None,
             rating_scale: Optional[tuple[float, float]] = None,
             files: Optional[dict] = None,
             directory: Optional[str] = None) -> Dataset:
  """Columns {role: values} (timestamp optional) -> a Dataset."""
  if duplicates not in ("error", "last"):
    raise UserError(f"duplicates={duplicates!r}: expected 'error' or 'last'")
  names = names or {}
  n = len(cols["user"])
  if n == 0:
    raise UserError(f"{where.prefix}: has no ratings")
  user_ids, users = ids_column(cols["user"], where, "user id", names.get("user"))
  item_ids, items = ids_column(cols["item"], where, "item id", names.get("item"))
  ratings = ratings_column(cols["rating"], where, names.get("rating"),
                           rating_scale)
  if cols.get("timestamp") is not None:
    ts = timestamps_column(cols["timestamp"], where, names.get("timestamp"))
  else:
    ts = np.zeros(n, np.int64)
  keep = _dedupe(where, users, items, ts, len(item_ids), user_ids, item_ids,
                 duplicates)
  if keep is not None:
    users, items, ratings, ts = users[keep], items[keep], ratings[keep], ts[keep]
  r = Ratings(users, items, ratings, ts, len(user_ids), len(item_ids))
  scale = rating_scale or (float(ratings.min()), float(ratings.max()))
  return Dataset(name=name, ratings=r, user_ids=user_ids, item_ids=item_ids,
                 rating_scale=(float(scale[0]), float(scale[1])),
                 files=dict(files or {}), directory=directory)


# ------------------------------------------------------------ DataFrames


def from_frame(df: pd.DataFrame, user, item, rating, timestamp=None, *,
               name: str = "frame", duplicates: str = "error",
               rating_scale: Optional[tuple[float, float]] = None) -> Dataset:
  """A Dataset from a DataFrame's user, item, rating [, timestamp] columns.

  Ids may be integers or strings (kept in `user_ids` / `item_ids`), ratings
  numbers (or numeric strings), timestamps Unix seconds, datetimes or
  ISO-8601 strings. Other columns are ignored. `rating_scale` defaults to
  (min, max) of the ratings; given, ratings outside it are an error.
  """
  if not isinstance(df, pd.DataFrame):
    raise UserError(f"{name}: from_frame needs a pandas DataFrame, got "
                    f"{type(df).__name__}")
  given = {"user": user, "item": item, "rating": rating,
           "timestamp": timestamp}
  columns = list(df.columns)
  cols, names = {}, {}
  for role, col in given.items():  # four roles
    if col is None:
      if role != "timestamp":
        raise UserError(f"{name}: from_frame needs {role}=<column name>")
      continue
    if col not in columns:
      raise UserError(f"{name}: no column {_show(col)} for the {role}; the "
                      f"columns are {_listing(columns)}")
    if columns.count(col) > 1:
      raise UserError(f"{name}: column {_show(col)} ({role}) appears "
                      f"{columns.count(col)} times; rename the copies")
    cols[role], names[role] = df[col], col
  chosen = [c for c in names.values()]
  if len(set(map(str, chosen))) < len(chosen):
    raise UserError(f"{name}: one column is given for two roles "
                    f"({', '.join(f'{r}={c}' for r, c in names.items())})")
  index = df.index
  where = _Where(name, "row", lambda rows: [
      repr(x) for x in index[np.asarray(rows, np.int64)].tolist()])
  return assemble(name, cols, where, duplicates=duplicates, names=names,
                  rating_scale=rating_scale)


# ------------------------------------------- low-level parsing (shared)
#
# File checks, decoding and field splitting that name the bad line, the
# typed one-pass read of plain numeric files, id remapping and the cached
# file hash. `movielens` imports these (and re-exports them under the
# names it has always had); this module never imports `movielens`.

_SEP_NAMES = {",": "','", "\t": "tab", "::": "'::'", " ": "whitespace",
              "|": "'|'"}
_COLUMNS = ("user", "item", "rating", "timestamp")


@dataclasses.dataclass(frozen=True)
class RatingsFormat:
  """How a ratings file is laid out (known, or sniffed from its head)."""
  sep: str            # ",", "\t", "::", or " " for runs of whitespace
  n_fields: int       # 3 (no timestamp) or 4
  header_lines: int   # 0 or 1
  encoding: str = "utf-8"


def _line_error(path, line: int, problem: str) -> UserError:
  return UserError(f"{path}, line {line}: {problem}")


_HASHES: dict[tuple[str, int, int], str] = {}


def file_sha256(path: str | os.PathLike) -> str:
  """sha256 of a file, cached per (path, size, mtime) so reloads are free."""
  st = os.stat(path)
  key = (str(pathlib.Path(path).resolve()), st.st_size, st.st_mtime_ns)
  if key not in _HASHES:
    _HASHES[key] = _download.sha256_file(path)
  return _HASHES[key]


def _require_file(path: pathlib.Path, what: str) -> None:
  if not path.is_file():
    raise UserError(f"missing file {path} ({what})")


def _check_head(path: pathlib.Path, head: bytes) -> None:
  """Cheap encoding checks on the first block: empty, UTF-16, binary."""
  if not head:
    raise UserError(f"{path}: file is empty")
  if head.startswith((b"\xff\xfe", b"\xfe\xff")):
    raise UserError(f"{path}: looks like UTF-16 text (byte-order mark); "
                    f"re-save it as UTF-8")
  nul = head.find(b"\x00")
  if nul >= 0:
    raise _line_error(path, head.count(b"\n", 0, nul) + 1,
                      "contains NUL bytes (UTF-16 or binary data?); expected "
                      "UTF-8 text")


def _decode(path: pathlib.Path, data: bytes, encoding: str) -> str:
  try:
    text = data.decode(encoding)
  except UnicodeDecodeError as e:
    raise _line_error(path, data.count(b"\n", 0, e.start) + 1,
                      f"byte 0x{data[e.start]:02x} is not valid {encoding} "
                      f"text; re-save the file as {encoding}") from None
  nul = text.find("\x00")
  if nul >= 0:
    raise _line_error(path, text.count("\n", 0, nul) + 1,
                      "contains NUL bytes (UTF-16 or binary data?)")
  return text


def _text_lines(path: pathlib.Path, encoding: str,
                skip: int = 0) -> tuple[pd.Series, int]:
  """The file's lines as a Series (CR stripped, trailing blank lines dropped)
  after `skip` header lines, plus the line number of the first one."""
  data = path.read_bytes()
  _check_head(path, data[:65536])
  text = _decode(path, data, encoding)
  if text.startswith("\ufeff"):
    text = text[1:]
  lines = pd.Series(text.split("\n"), dtype=object).str.rstrip("\r")
  nonblank = np.flatnonzero(lines.str.strip().str.len().to_numpy() > 0)
  if len(nonblank) == 0:
    raise UserError(f"{path}: file is empty (only blank lines)")
  lines = lines.iloc[skip:nonblank[-1] + 1]
  if len(lines) == 0:
    raise UserError(f"{path}: has a header line but no data")
  return lines.reset_index(drop=True), skip + 1


def _split_fields(path: pathlib.Path, lines: pd.Series, first_line: int,
                  sep: str, n_fields: int, what: str) -> pd.DataFrame:
  """Splits lines into exactly `n_fields` string columns or names the first
  line with another count (blank lines count as 0 fields)."""
  blank = lines.str.strip().str.len().to_numpy() == 0
  if sep == " ":
    counts = lines.str.split().str.len().to_numpy()
  else:
    counts = lines.str.count(re.escape(sep)).to_numpy() + 1
  counts = np.where(blank, 0, counts)
  bad = np.flatnonzero(counts != n_fields)
  if len(bad):
    row = bad[0]
    problem = ("empty line" if counts[row] == 0 else
               f"found {counts[row]} fields")
    raise _line_error(path, first_line + row,
                      f"expected {n_fields} {_SEP_NAMES.get(sep, repr(sep))}"
                      f"-separated fields ({what}), {problem}")
  if sep == " ":
    return lines.str.split(expand=True)
  return lines.str.split(sep, regex=False, expand=True)


def _parse_fast(path: pathlib.Path, fmt: RatingsFormat) -> Optional[pd.DataFrame]:
  """One C-engine read with explicit dtypes; None if anything looks off."""
  names = list(_COLUMNS[:fmt.n_fields])
  dtype = {"user": np.int64, "item": np.int64, "rating": np.float32,
           "timestamp": np.int64}
  sep = fmt.sep
  if fmt.sep == "::":
    # Split on ':' (C engine) and expect the fields in between to be empty.
    sep = ":"
    gaps = [f"_gap{k}" for k in range(fmt.n_fields - 1)]
    names = [x for pair in zip(names, gaps + [None]) for x in pair if x]
    dtype.update({g: np.float32 for g in gaps})
  elif fmt.sep == " ":
    sep = r"\s+"
  try:
    df = pd.read_csv(
        path, sep=sep, header=None, skiprows=fmt.header_lines, names=names,
        dtype={k: v for k, v in dtype.items() if k in names}, engine="c",
        quoting=csv.QUOTE_NONE, skip_blank_lines=False, index_col=False,
        encoding=fmt.encoding)
  except Exception:  # any parser complaint: the slow path explains it
    return None
  if fmt.sep == "::":
    if not df[[c for c in names if c.startswith("_gap")]].isna().all().all():
      return None
    df = df[list(_COLUMNS[:fmt.n_fields])]
  if len(df) == 0 or df["rating"].isna().any():
    return None
  return df


def _remap(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Sorted unique ids and each id's index into them (int32)."""
  lo, hi = int(ids.min()), int(ids.max())
  if hi - lo < 4 * len(ids) + 1024:  # dense id range: O(n), no sort
    present = np.zeros(hi - lo + 1, bool)
    present[ids - lo] = True
    uniq = np.flatnonzero(present).astype(np.int64) + lo
    lut = (np.cumsum(present) - 1).astype(np.int32)
    return uniq, lut[ids - lo]
  uniq, inverse = np.unique(ids, return_inverse=True)
  return uniq, inverse.astype(np.int32)



# ------------------------------------------------------------------ files


def _sniff_sep(first: str) -> str:
  return ("::" if "::" in first else "\t" if "\t" in first else
          "," if "," in first else " ")


def _header_fields(first: str, sep: str) -> list[str]:
  if sep in (",", "\t"):
    try:
      return next(csv.reader([first], delimiter=sep))
    except (csv.Error, StopIteration):
      return first.split(sep)
  return first.split() if sep == " " else first.split(sep)


@dataclasses.dataclass(frozen=True)
class _Records:
  """Where each CSV record starts and how many fields it has (bytes scan)."""
  lines: np.ndarray   # int64: physical line number of each record's start
  fields: np.ndarray  # int64: separators outside quotes + 1; 0 when blank


def _scan_records(data: bytes, sep: str) -> _Records:
  """Vectorized record scan of CSV text: a '"' toggles quoting, separators
  and newlines inside quotes belong to the field. Agrees with pandas' C
  parser on well-quoted files; the caller checks that (same row count)
  before trusting it, since a stray '"' inside an unquoted field is literal
  to pandas but toggles here."""
  b = np.frombuffer(data, np.uint8)
  newline = b == 10
  if data.find(b'"') >= 0:
    outside = ~np.logical_xor.accumulate(b == 34)
    ends = np.flatnonzero(newline & outside)
    seps = np.flatnonzero((b == ord(sep)) & outside)
  else:  # no quotes: every newline ends a record
    ends = np.flatnonzero(newline)
    seps = np.flatnonzero(b == ord(sep))
  n_newlines = int(newline.sum()) if len(ends) else 0
  all_nl = None if len(ends) == n_newlines else np.flatnonzero(newline)
  if len(b) and (not len(ends) or ends[-1] != len(b) - 1):
    ends = np.append(ends, len(b))  # last line without a newline
  starts = np.concatenate([[0], ends[:-1] + 1]).astype(np.int64)
  fields = np.diff(np.searchsorted(seps, ends), prepend=0) + 1
  length = ends - starts
  cr = (length > 0) & (b[np.maximum(ends - 1, 0)] == 13)
  blank = (length - cr) == 0
  lines = (np.arange(1, len(ends) + 1) if all_nl is None else
           np.searchsorted(all_nl, starts) + 1)
  return _Records(lines, np.where(blank, 0, fields))


def _parser_error(path, e: Exception, sep_name: str, what: str) -> UserError:
  msg = " ".join(str(e).split())
  m = re.search(r"Expected (\d+) fields in line (\d+), saw (\d+)", msg)
  if m:
    want, line, got = m.groups()
    return UserError(f"{path}, line {line}: expected {want} {sep_name}-"
                     f"separated fields ({what}), found {got} fields; quote "
                     f"fields that contain the separator")
  m = re.search(r"EOF inside string starting at row (\d+)", msg)
  if m:  # pandas counts lines from 0 here
    return UserError(f"{path}, line {int(m.group(1)) + 1}: a quoted field "
                     f"starts here and never ends; close the '\"' or remove "
                     f"it")
  msg = msg.replace("Error tokenizing data. C error: ", "")
  return UserError(f"{path}: cannot read it as {sep_name}-separated text "
                   f"({msg[:200]}); check its quoting")


def _read_csv(path: pathlib.Path, sep: str, header: int, n_fields: int,
              roles: dict[str, int], what: str) -> tuple[dict, _Where]:
  """One C-engine read (CSV quoting on) -> ({role: column}, where).

  Id columns are read as text (so 'A12' and '007' stay as written); the
  others are typed by the C parser when they are numbers, else text, so only
  a column that needs it (ISO dates, a bad rating) goes through Python
  strings. A vectorized byte scan (`_scan_records`) gives every record's
  line number and field count, so a short or long line is named exactly.
  """
  sep_name = _SEP_NAMES.get(sep, repr(sep))
  data = path.read_bytes()
  records = _scan_records(data, sep)
  lines, counts = records.lines[header:], records.fields[header:]

  def wrong_count(limit: Optional[int] = None) -> Optional[UserError]:
    bad = np.flatnonzero(counts[:limit] != n_fields)
    if not len(bad):
      return None
    k = bad[0]
    found = "an empty line" if counts[k] == 0 else f"{counts[k]} fields"
    return UserError(f"{path}, line {lines[k]}: expected {n_fields} "
                     f"{sep_name}-separated fields ({what}), found {found}; "
                     f"quote fields that contain the separator")

  options = dict(sep=sep, header=0 if header else None, index_col=False,
                 keep_default_na=False, na_filter=False,
                 skip_blank_lines=False, engine="c", encoding="utf-8")
  use = sorted(set(roles.values()))
  try:
    with warnings.catch_warnings():
      # "Length of header ... does not match length of data": a long line.
      warnings.simplefilter("error", pd.errors.ParserWarning)
      keys = (list(pd.read_csv(path, nrows=0, **options).columns) if header
              else None)
      if keys is not None and len(keys) != n_fields:
        raise UserError(f"{path}, line 1: the header has {len(keys)} fields "
                        f"read as CSV but {n_fields} split plainly; check its "
                        f"quoting")
      ids = [roles["user"], roles["item"]]
      dtype = {(keys[i] if keys is not None else i): object for i in ids}
      # Every column is read (pandas' usecols lets a line with extra fields
      # through), in chunks so only the used ones pile up.
      reader = pd.read_csv(path, dtype=dtype, chunksize=_CHUNK, **options)
      with reader:
        parts = [chunk.iloc[:, use].set_axis(use, axis=1) for chunk in reader]
    df = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(
        columns=use)
  except UnicodeDecodeError:
    _decode(path, data, "utf-8")  # names the line
    raise UserError(f"{path}: not valid UTF-8 text; re-save it as UTF-8"
                    ) from None
  except pd.errors.EmptyDataError:
    raise UserError(f"{path}: has a header line but no data") from None
  except (pd.errors.ParserError, pd.errors.ParserWarning, ValueError,
          csv.Error, OverflowError) as e:
    if isinstance(e, UserError):
      raise
    if "EOF inside string" not in str(e):
      error = wrong_count()
      if error is not None:
        raise error from None
    raise _parser_error(path, e, sep_name, what) from None
  # Trailing blank lines are not rows (looked for in the last rows only).
  tail = df.iloc[-1000:]
  blank = np.ones(len(tail), bool)
  for c in use:  # three or four columns
    blank &= tail[c].astype(str).str.strip().str.len().to_numpy() == 0
  n_blank = len(tail) if blank.all() else int(np.argmin(blank[::-1]))
  df = df.iloc[:len(df) - n_blank]
  if len(df) == 0:
    raise UserError(f"{path}: has a header line but no data")
  if len(counts) == len(df) + n_blank:  # the scan agrees with pandas
    error = wrong_count(len(df))
    if error is not None:
      raise error
    where = _Where(str(path), "line", lambda rows: lines[rows])
  else:  # stray quotes: rows can't be tied to lines
    where = _Where(str(path), "data row", _lines_from(1))
  return {r: df[i] for r, i in roles.items()}, where


def _load_parquet(path: pathlib.Path, spec: dict, duplicates: str,
                  files: dict) -> Dataset:
  if importlib.util.find_spec("pyarrow") is None:
    raise UserError(f"{path}: reading Parquet files needs pyarrow, which is "
                    f"not installed; install recae_jax[parquet] "
                    f"(pip install 'recae_jax[parquet]') or save it as CSV")
  import pyarrow.parquet as pq
  try:
    names = list(pq.read_schema(path).names)
  except Exception as e:  # pyarrow raises many types for a bad file
    detail = " ".join(str(e).split())[:160]
    raise UserError(f"{path}: not a readable Parquet file ({detail}); "
                    f"re-export it, or save it as CSV") from None
  roles = resolve_columns(names, spec, f"{path}, columns")
  want = sorted(set(roles.values()))
  try:
    table = pq.read_table(path, columns=[names[i] for i in want])
    df = table.to_pandas()
  except Exception as e:
    detail = " ".join(str(e).split())[:160]
    raise UserError(f"{path}: cannot read its columns ({detail}); re-export"
                    f" it, or save it as CSV") from None
  df.columns = want
  cols = {role: df[i] for role, i in roles.items()}
  where = _Where(str(path), "row", _lines_from(1))
  return assemble(path.name, cols, where, duplicates=duplicates,
                  names={r: names[i] for r, i in roles.items()},
                  files=files, directory=str(path.parent))


def load_file(path: str | os.PathLike, *, columns: str = "",
              duplicates: str = "error") -> Dataset:
  """A Dataset from a CSV / TSV / `::` / whitespace / Parquet ratings file."""
  path = pathlib.Path(path)
  spec = parse_columns(columns)
  _require_file(path, "ratings file")
  if duplicates not in ("error", "last"):
    raise UserError(f"duplicates={duplicates!r}: expected 'error' or 'last'")
  with open(path, "rb") as f:
    head = f.read(65536)
  files = {str(path): file_sha256(path)}
  if head.startswith(b"PAR1") or path.suffix.lower() in PARQUET_SUFFIXES:
    return _load_parquet(path, spec, duplicates, files)
  _check_head(path, head)
  text = head.decode("utf-8", errors="replace").lstrip("\ufeff")
  lines = [line.rstrip("\r") for line in text.split("\n")[:3]]
  nonblank = [line for line in lines if line.strip()]
  if not nonblank:  # as movielens.sniff_format
    raise UserError(f"{path}: file is empty (only blank lines)")
  first = nonblank[0]
  sep = _sniff_sep(first)
  fields = _header_fields(first, sep)
  unquoted = pd.Series([f.strip().strip('"').strip() for f in fields],
                       dtype=object)
  header = int(bool(lines[0].strip()) and
               pd.to_numeric(unquoted, errors="coerce").isna().all())
  names = fields if header else list(range(len(fields)))
  roles = resolve_columns(names, spec, f"{path}, line 1",
                          has_header=bool(header))
  n_fields = len(fields)
  what = (", ".join(str(x) for x in fields[:8]) +
          (", ..." if n_fields > 8 else "")) if header else (
              "user, item, rating[, timestamp]" if not spec else
              f"{n_fields} columns")
  colnames = {r: (fields[i] if header else f"{i + 1}") for r, i in
              roles.items()}
  plain = (n_fields in (3, 4) and
           roles == {r: i for i, r in enumerate(ROLES[:n_fields])})
  df = None
  if plain:
    fmt = RatingsFormat(sep, n_fields, header)
    df = _parse_fast(path, fmt)
    if df is not None:
      cols = {r: df[r] for r in ROLES[:n_fields]}
      where = _Where(str(path), "line", _lines_from(header + 1))
      colnames = {}  # the fast path's messages never needed column names
  if df is None:
    if sep in (",", "\t"):
      cols, where = _read_csv(path, sep, header, n_fields, roles, what)
    else:  # '::' and whitespace: split lines (the C parser has no '::')
      body, start = _text_lines(path, "utf-8", skip=header)
      split = _split_fields(path, body, start, sep, n_fields, what)
      cols = {r: split[i] for r, i in roles.items()}
      where = _Where(str(path), "line", _lines_from(start))
  return assemble(path.name, cols, where, duplicates=duplicates,
                  names=colnames, files=files, directory=str(path.parent))
