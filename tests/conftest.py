"""Shared fixtures.

Real-data tests that need ML-100K take the `data_dir` fixture. Without
$RECAE_DATA_DIR they skip, except when $RECAE_REQUIRE_REAL_DATA=1 (set by
.ci/run when ../shared/data exists): then a missing data directory is a
failure, so CI can never go green with the real-data tests silently skipped.

Tests that need only ml-latest-small take `small_data_dir` instead: the copy
bundled in the package, unpacked into a temporary cache. It is there
everywhere, so those tests never skip.

The suite compiles the same small programs again and again (every test
builds its own engine, every script test is a fresh process), so it shares
one XLA compilation cache, new for each session, and compiles with XLA's
LLVM back end at -O0 (TEST_XLA_FLAGS): see pytest_configure.
"""

import os
import pathlib
import shutil
import tempfile

import pytest

_OWN_CACHE = None  # the compilation cache directory this process made

# The suite's programs are small, so compiling them is most of its time, and
# LLVM at -O0 compiles about 1.7x faster (tests/sharded_check.py: 141 s -> 81 s
# on a 2-core AVX2 EPYC). Every test compares runs compiled alike, or compares
# with a tolerance, so no assertion depends on the optimisation level.
TEST_XLA_FLAGS = "--xla_backend_optimization_level=0"


def script_env(xla_flags: str = "", **extra) -> dict:
  """os.environ for a script's subprocess, with XLA_FLAGS set to the suite's
  flags plus `xla_flags` (a fake device count, say) and not the caller's."""
  env = {**os.environ, **extra}
  env["XLA_FLAGS"] = f"{TEST_XLA_FLAGS} {xla_flags}".strip()
  return env


def pytest_configure(config):
  """TEST_XLA_FLAGS and one persistent XLA compilation cache for the session,
  in-process and in every subprocess (they inherit the environment). A cache
  hit runs the very executable a compile would have made, so results are bit
  for bit the same; tracing still happens, so the trace-count tests are
  unaffected. A cache the caller set up ($JAX_COMPILATION_CACHE_DIR) is used
  as it is."""
  global _OWN_CACHE
  flags = os.environ.get("XLA_FLAGS", "")
  if TEST_XLA_FLAGS not in flags:  # (an xdist worker inherits the controller's)
    os.environ["XLA_FLAGS"] = f"{flags} {TEST_XLA_FLAGS}".strip()
  if "JAX_COMPILATION_CACHE_DIR" in os.environ:
    return  # the caller's, or the one an xdist controller made for its workers
  _OWN_CACHE = tempfile.mkdtemp(prefix="recae_jax_test_xla_cache_")
  os.environ["JAX_COMPILATION_CACHE_DIR"] = _OWN_CACHE
  os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"  # default: only >= 1 s


def pytest_unconfigure(config):
  if _OWN_CACHE is not None:
    shutil.rmtree(_OWN_CACHE, ignore_errors=True)


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
  """The directory holding ml-100k/ (and, in CI, ml-latest-small/)."""
  return _data_dir()


@pytest.fixture(scope="session")
def small_data_dir(tmp_path_factory) -> pathlib.Path:
  """A directory holding ml-latest-small/, unpacked from the bundled archive.

  Resolved the way `--dataset=ml-latest-small` is, with $RECAE_DATA_DIR unset
  and $RECAE_CACHE_DIR pointing at an empty temporary cache, so it always
  comes from the bundled copy (and never from the network)."""
  from recae_jax.data import download
  cache = tmp_path_factory.mktemp("bundled_cache")
  with pytest.MonkeyPatch.context() as mp:
    mp.delenv("RECAE_DATA_DIR", raising=False)
    mp.setenv("RECAE_CACHE_DIR", str(cache))
    folder = download.resolve_dataset_dir("ml-latest-small", download=False)
  assert folder == cache / "ml-latest-small" and (folder / download.STAMP).is_file()
  return cache


def low_rank_ratings(n_users=200, n_items=100, density=0.3, seed=0):
  """A small Dataset + Split with learnable low-rank structure (1..5 stars)."""
  import numpy as np
  from recae_jax.data.types import Dataset, Ratings, Split
  rng = np.random.default_rng(seed)
  u_f = rng.normal(size=(n_users, 3))
  i_f = rng.normal(size=(n_items, 3))
  full = np.clip(np.rint(3 + u_f @ i_f.T * 0.7 + rng.normal(0, 0.3, (n_users, n_items))), 1, 5)
  users, items = np.nonzero(rng.random((n_users, n_items)) < density)
  r = Ratings(users, items, full[users, items], np.arange(len(users)), n_users, n_items)
  part = rng.random(len(r))
  split = Split(train=r.subset(part < 0.7), valid=r.subset((part >= 0.7) & (part < 0.8)),
                test=r.subset(part >= 0.8), name="random")
  ds = Dataset("tiny", r, np.arange(n_users) + 1, np.arange(n_items) + 1, (1.0, 5.0))
  return ds, split


def write_ratings_csv(path, r, id_offset: int = 1):
  """`r` (a Ratings) as a user,item,rating CSV at `path`, ids shifted by `id_offset`."""
  path.write_text("user,item,rating\n" + "".join(
      f"{u + id_offset},{i + id_offset},{int(x)}\n"
      for u, i, x in zip(r.users, r.items, r.ratings)))
  return path


@pytest.fixture
def tiny():
  return low_rank_ratings()
