"""Shared fixtures.

Real-data tests take the `data_dir` fixture. Without $RECAE_DATA_DIR they
skip, except when $RECAE_REQUIRE_REAL_DATA=1 (set by .ci/run when
../shared/data exists): then a missing data directory is a failure, so CI can
never go green with the real-data tests silently skipped.
"""

import os
import pathlib

import pytest


def _data_dir():
  d = os.environ.get("RECAE_DATA_DIR")
  if d and pathlib.Path(d, "ml-100k", "u.data").exists():
    return pathlib.Path(d)
  msg = f"real MovieLens data not found (RECAE_DATA_DIR={d!r})"
  if os.environ.get("RECAE_REQUIRE_REAL_DATA") == "1":
    pytest.fail(msg + " but RECAE_REQUIRE_REAL_DATA=1")
  pytest.skip(msg)


@pytest.fixture(scope="session")
def data_dir() -> pathlib.Path:
  """The directory holding ml-100k/ and ml-latest-small/."""
  return _data_dir()
