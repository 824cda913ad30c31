"""S0 pipeline: signed-denominator imputation vs a loop reference, the AE on
the filled matrix, the script's files and its bad-flag handling."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from recae_jax import s0, similarity as S
from recae_jax.data.types import Dataset, Ratings

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _matrix(seed=0, u=24, i=10):
  rng = np.random.default_rng(seed)
  r = rng.integers(1, 6, (u, i)).astype(np.float32)
  m = rng.random((u, i)) < 0.45
  m[np.arange(u), np.arange(u) % i] = True  # every user rated something
  rows, cols = np.nonzero(m)
  return r, m, Ratings(rows, cols, r[rows, cols], np.zeros(len(rows)), u, i)


def _reference(r, m, sim):
  """S0's formula one cell at a time: all raters, Σ sim denominator, raw."""
  u, n = r.shape
  mu = (r * m).sum(1) / m.sum(1)
  out = np.where(m, r, 0.0).astype(np.float64)
  for a in range(u):
    for p in range(n):
      if m[a, p]:
        continue
      num = den = used = 0.0
      for b in range(u):
        if b != a and m[b, p] and sim[a, b] != 0:
          num += sim[a, b] * (r[b, p] - mu[b])
          den += sim[a, b]
          used += 1
      out[a, p] = mu[a] + num / den if used and den != 0 else mu[a]
  return out


def test_signed_imputation_matches_loop_and_counts_out_of_scale():
  r, m, train = _matrix()
  sim = S.similarity_matrix(train).astype(np.float64)
  ref = _reference(r, m, sim)
  imp = s0.impute_first_movies(train, "signed", 0.5)
  # Relative: signed sums near zero make huge raw values.
  np.testing.assert_allclose(imp.raw_UxI, ref, rtol=1e-3, atol=1e-4)
  raw = ref[~m]
  assert imp.n_imputed == (~m).sum()
  assert imp.n_out_of_scale == int(((raw < 1) | (raw > 5)).sum()) > 0
  assert imp.imputed_min == pytest.approx(raw.min(), rel=1e-3)
  want = np.clip(np.round(ref / 0.5) * 0.5, 1, 5)
  np.testing.assert_allclose(imp.filled_UxI[~m], want[~m], atol=1e-6)
  np.testing.assert_array_equal(imp.filled_UxI[m], r[m])
  assert set(np.unique(imp.filled_UxI * 2)) <= set(range(2, 11))
  abs_ = s0.impute_first_movies(train, "abs", 0.5)
  assert abs_.n_out_of_scale <= imp.n_out_of_scale


def test_first_movies_subset():
  r, m, train = _matrix(seed=1, u=12, i=8)
  ds = Dataset("tiny", train, np.arange(12) + 101, np.array([8, 7, 6, 5, 4, 3, 2, 1]),
               (1.0, 5.0))
  sub = s0.first_movies(ds, 3)
  np.testing.assert_array_equal(sub.item_ids, [1, 2, 3])
  users = np.flatnonzero(m[:, [7, 6, 5]].any(1))
  np.testing.assert_array_equal(sub.user_ids, users + 101)
  assert len(sub.ratings) == m[:, [7, 6, 5]].sum()
  assert s0.first_movies(ds, 0).ratings.n_items == 8


def test_feature_ae_on_tiny_matrix():
  rng = np.random.default_rng(0)
  filled = rng.integers(2, 11, (40, 12)).astype(np.float32) / 2
  tr, te = s0.split_rows(40, 0.2, 0)
  assert len(te) == 8 and not set(tr) & set(te)
  res = s0.train_feature_ae(filled, tr, te, s0.feature_config(epochs=3,
                                                              batch_size=16))
  assert res.features_Ux5.shape == (40, 5)
  assert res.features_Ux5.dtype == np.float32
  assert res.recon_UxI.shape == filled.shape
  assert np.isfinite([res.rmse_test, res.rmse_train]).all()
  assert res.losses[-1] < res.losses[0]


def _script(*args):
  return subprocess.run([sys.executable, str(ROOT / "experiments/s0_features.py"),
                         *args], capture_output=True, text=True, cwd=ROOT,
                        env=dict(os.environ), timeout=300)


def _tiny_ml100k(tmp_path) -> pathlib.Path:
  rng = np.random.default_rng(0)
  folder = tmp_path / "data" / "ml-100k"
  folder.mkdir(parents=True)
  lines = [f"{u}\t{i}\t{int(rng.integers(1, 6))}\t{880000000 + u * 100 + i}"
           for u in range(1, 51) for i in range(1, 21) if rng.random() < 0.4]
  (folder / "u.data").write_text("\n".join(lines) + "\n")
  # The side tables the ML-100K loader insists on, minimal but valid.
  (folder / "u.genre").write_text("unknown|0\nDrama|1\n\n")
  (folder / "u.item").write_text("".join(
      f"{i}|Movie {i} (1995)|01-Jan-1995||http://x|0|1\n" for i in range(1, 21)))
  (folder / "u.user").write_text("".join(
      f"{u}|30|M|other|00000\n" for u in range(1, 51)))
  (folder / "u.occupation").write_text("other\n")
  return tmp_path / "data"


def test_script_tiny_writes_every_file(tmp_path):
  out = tmp_path / "run"
  res = _script(f"--data_dir={_tiny_ml100k(tmp_path)}", "--n_movies=8",
                "--epochs=2", "--batch_size=16", f"--workdir={out}",
                "--faithful", "--movie=3")
  assert res.returncode == 0, res.stderr[-2000:]
  metrics = json.loads((out / "metrics.json").read_text())
  for key in ("reconstruction_rmse_test", "reconstruction_rmse_train",
              "impute_seconds", "train_seconds", "imputed_min", "imputed_max"):
    assert np.isfinite(metrics[key]), key
  assert metrics["n_movies"] == 8
  u = metrics["n_users"]
  assert metrics["n_imputed"] == u * 8 - metrics["n_ratings"]
  assert np.load(out / "user_features.npy").shape == (u, 5)
  assert np.load(out / "filled.npy").shape == (u, 8)
  assert len((out / "user_ids.csv").read_text().split()) == u
  assert (out / "plots" / "movie_3.png").exists()
  assert len(list((out / "plots").glob("user_*.png"))) == 1
  assert json.loads((out / "config.json").read_text())["denominator"] == "signed"


@pytest.mark.realdata
def test_ml100k_first_64(data_dir, tmp_path):
  from recae_jax.data import movielens
  ds = movielens.load_dataset("ml-100k", data_dir)
  sub = s0.first_movies(ds, 64)
  assert (sub.ratings.n_users, sub.ratings.n_items) == (797, 64)  # S0's shape
  imp = s0.impute_first_movies(sub.ratings, "signed", 0.5)
  assert imp.n_imputed == 42163 and imp.n_out_of_scale > 0
  tr, te = s0.split_rows(797, 0.2, 0)
  res = s0.train_feature_ae(imp.filled_UxI, tr, te,
                            s0.feature_config(epochs=3))
  assert res.features_Ux5.shape == (797, 5)
  assert np.isfinite(res.features_Ux5).all()
  assert 0 < res.rmse_test < 2 and 0 < res.rmse_train < 2


@pytest.mark.parametrize("flag", ["--denominator=median", "--epochs=0",
                                  "--n_movies=-1"])
def test_script_bad_flag(tmp_path, flag):
  res = _script(flag, f"--workdir={tmp_path}")
  assert res.returncode == 2
  assert "Traceback" not in res.stderr
  assert res.stderr.strip().count("\n") == 0 and flag[2:6] in res.stderr
