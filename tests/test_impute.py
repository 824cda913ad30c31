"""KNN prediction vs a slow Python-loop KNNWithMeans reference."""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from recae_jax import impute, similarity as S
from recae_jax.data.types import Ratings
from recae_jax.errors import UserError

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _train(seed=1, u=30, i=25, integer=True):
  rng = np.random.default_rng(seed)
  r = (rng.integers(1, 6, (u, i)) if integer
       else rng.uniform(1, 5, (u, i))).astype(np.float32)
  m = rng.random((u, i)) < 0.5
  m[:, 4] = True    # item everybody (else) rated
  m[2] = False      # user with no ratings -> global mean
  m[:, 3] = False   # item nobody rated -> user mean
  rows, cols = np.nonzero(m)
  return r, m, Ratings(rows, cols, r[rows, cols], np.zeros(len(rows)), u, i)


def _reference(r, m, sim, k, positive_only, min_k, denominator, scale,
               round_to=None):
  """Surprise KNNWithMeans, one (a, p) at a time (ties: lower user first)."""
  u, n_items = r.shape
  cnt = m.sum(1)
  mu = np.where(cnt > 0, (r * m).sum(1) / np.maximum(cnt, 1), 0)
  out = np.zeros((u, n_items))
  for a in range(u):
    for p in range(n_items):
      if cnt[a] == 0:
        out[a, p] = r[m].mean()
        continue
      raters = sorted((b for b in range(u) if m[b, p] and b != a),
                      key=lambda b: (-sim[a, b], b))[:k or None]
      num = den = used = 0.0
      for b in raters:
        w = sim[a, b]
        if w == 0 or (positive_only and w < 0):
          continue
        num += w * (r[b, p] - mu[b])
        den += abs(w) if denominator == "abs" else w
        used += 1
      ok = used >= max(min_k, 1) and den != 0
      out[a, p] = mu[a] + num / den if ok else mu[a]
  if round_to:
    out = np.round(out / round_to) * round_to
  return np.clip(out, *scale)


CASES = [  # (k, positive_only, min_k, denominator)
    (0, False, 1, "abs"), (3, False, 1, "abs"), (10, True, 1, "abs"),
    (3, True, 3, "abs"), (10, False, 2, "signed"), (0, True, 1, "signed"),
    (40, False, 1, "abs")]


@pytest.mark.parametrize("k,positive_only,min_k,denominator", CASES)
def test_matches_knn_with_means_reference(k, positive_only, min_k,
                                          denominator):
  r, m, train = _train()
  sim = S.similarity_matrix(train).astype(np.float64)
  ref = _reference(r, m, sim, k, positive_only, min_k, denominator, (1, 5))
  kw = dict(neighbors=k, positive_only=positive_only, min_k=min_k,
            denominator=denominator)
  got = impute.fill_matrix(train, keep_observed=False, block_size=7, **kw)
  np.testing.assert_allclose(got, ref, atol=2e-5)
  uu, ii = np.indices(r.shape)
  pred, n_fb = impute.predict_pairs(train, uu.ravel(), ii.ravel(),
                                    block_size=8, **kw)
  np.testing.assert_allclose(pred, ref.ravel(), atol=2e-5)
  assert n_fb >= r.shape[1] * 2  # empty user row + unrated item column
  kept = impute.fill_matrix(train, **kw)
  np.testing.assert_array_equal(kept[m], r[m])


def test_selection_across_chunks_blocks_and_ties(monkeypatch):
  """Many users, few items (so many exactly tied similarities), several user
  blocks and tiny chunk budgets: the rank bisection picks exactly the
  reference's k raters (ties to the lower user index), in fills and pairs."""
  r, m, train = _train(seed=4, u=70, i=6)
  sim = S.similarity_matrix(train).astype(np.float64)
  assert len(np.unique(sim)) < sim.size / 4  # ties really are common
  monkeypatch.setattr(impute, "_CHUNK_BUDGET", 64)
  monkeypatch.setattr(impute, "_PAIR_CHUNK", 64)  # predict_pairs: many chunks
  uu, ii = np.indices(r.shape)
  for k in (3, 20):
    ref = _reference(r, m, sim, k, False, 1, "abs", (1, 5))
    got = impute.fill_matrix(train, keep_observed=False, block_size=16,
                             neighbors=k)
    np.testing.assert_allclose(got, ref, atol=2e-5)
    pred, _ = impute.predict_pairs(train, uu.ravel(), ii.ravel(), block_size=16,
                                   neighbors=k)
    np.testing.assert_allclose(pred, ref.ravel(), atol=2e-5)


def test_fill_blocks_and_save_filled(tmp_path, monkeypatch):
  r, m, train = _train(seed=5, u=40, i=20)
  # Same block size as below: the square (one-block) similarity path sums in
  # another order and may differ in the last float32 bit.
  full = impute.fill_matrix(train, neighbors=5, block_size=16)
  # ... and the one-block fill agrees to float32 rounding.
  np.testing.assert_allclose(impute.fill_matrix(train, neighbors=5), full,
                             rtol=1e-6, atol=1e-6)
  starts = []
  for start, pred, fall in impute.fill_blocks(train, neighbors=5,
                                              block_size=16):
    starts.append(start)
    np.testing.assert_array_equal(pred, full[start:start + len(pred)])
    assert not fall[m[start:start + len(pred)]].any()
  assert starts == [0, 16, 32]
  path = tmp_path / "filled.npy"
  assert impute.save_filled(path, train, neighbors=5, block_size=16) == (40, 20)
  np.testing.assert_array_equal(np.load(path), full)
  # A failure midway leaves the earlier file intact and no temporary behind.
  def boom(*a, **k):
    yield 0, full[:16], np.zeros((16, 20), bool)
    raise OSError(28, "No space left on device")
  monkeypatch.setattr(impute, "fill_blocks", boom)
  with pytest.raises(UserError, match="No space left"):
    impute.save_filled(path, train, neighbors=5)
  np.testing.assert_array_equal(np.load(path), full)
  assert sorted(p.name for p in tmp_path.iterdir()) == ["filled.npy"]


def test_neighbour_ranks_order_ties_and_self():
  sim = np.array([[0.0, -0.0, 0.5, 0.0, 0.5],
                  [0.3, 0.0, 0.3, 0.9, -1.0]], np.float32)
  rank = impute._neighbour_ranks(sim, row0=0)
  assert rank.shape == (2, 6)
  # Equal values (0.5 and 0.5; -0.0, 0.0 and 0.0) go to the lower user index
  # first; the row's own user and the padding column U get rank U.
  np.testing.assert_array_equal(rank[0], [5, 3, 0, 4, 1, 5])
  np.testing.assert_array_equal(rank[1], [1, 5, 2, 0, 4, 5])


def test_neighbour_ranks_threaded_equal_one_pass(monkeypatch):
  """Row slices ranked in threads give exactly the one-pass ranks, ties,
  negative zeros and the self entries (row0 > 0) included."""
  rng = np.random.default_rng(3)
  sim = np.round(rng.standard_normal((37, 50)), 1).astype(np.float32)
  sim[sim == 0] = -0.0
  one = impute._block_ranks(sim, row0=5)
  monkeypatch.setattr(impute, "_RANK_SLICE", 200)
  monkeypatch.setattr(impute.os, "cpu_count", lambda: 4)
  np.testing.assert_array_equal(impute._neighbour_ranks(sim, row0=5), one)
  # Each row is a permutation of 0..U-1 except the self/padding entries.
  assert (one[np.arange(37), 5 + np.arange(37)] == 50).all()


def test_rounding_and_scale():
  r, m, train = _train(seed=2, integer=False)
  sim = S.similarity_matrix(train).astype(np.float64)
  ref = _reference(r, m, sim, 5, False, 1, "signed", (1, 5), round_to=0.5)
  got = impute.fill_matrix(train, neighbors=5, denominator="signed",
                           round_to=0.5, rating_scale=(1, 5),
                           keep_observed=False)
  np.testing.assert_allclose(got, ref, atol=1e-6)
  assert set(np.unique(got * 2)) <= set(range(2, 11))


def test_bad_input_and_fallbacks():
  r, m, train = _train(seed=3)
  for bad in (dict(neighbors=-1), dict(metric="jaccard"),
              dict(centering="x"), dict(denominator="x"), dict(min_k=-2)):
    with pytest.raises(UserError):
      impute.fill_matrix(train, **bad)
  # k above the number of users: every rater (documented), no NaN.
  big = impute.fill_matrix(train, neighbors=1000)
  np.testing.assert_array_equal(big, impute.fill_matrix(train, neighbors=0))
  assert np.isfinite(big).all()
  assert np.allclose(big[2], r[m].mean())  # empty user -> global mean
  empty = Ratings([], [], [], [], 4, 3)
  pred, n_fb = impute.predict_pairs(empty, [0, 1], [2, 0])
  assert np.isfinite(pred).all() and n_fb == 2
  with pytest.raises(UserError):
    impute.predict_pairs(train, [0], [99])


def _read(path):
  import pandas as pd
  d = pd.read_csv(path, sep="\t", header=None).to_numpy()
  return d[:, 0] - 1, d[:, 1] - 1, d[:, 2]


@pytest.mark.realdata
def test_ml100k_u1_rmse(data_dir):
  folder = data_dir / "ml-100k"
  try:
    from recae_jax.data import movielens, splits
    ds = movielens.load_dataset("ml-100k", data_dir)
    split = splits.make_split(ds, "u1")
    train, test = split.train, split.test
    tu, ti, tr = test.users, test.items, test.ratings
  except ImportError:  # data layer not there: read the files directly
    u, i, r = _read(folder / "u1.base")
    train = Ratings(u, i, r, np.zeros(len(u)), 943, 1682)
    tu, ti, tr = _read(folder / "u1.test")
  pred, n_fb = impute.predict_pairs(train, tu, ti, neighbors=40)
  rmse = float(np.sqrt(np.mean((pred - tr) ** 2)))
  assert 0.90 < rmse < 0.975, rmse
  assert n_fb < 100


def _script(*args, env=None):
  return subprocess.run([sys.executable, str(ROOT / "experiments/impute.py"),
                         *args], capture_output=True, text=True, cwd=ROOT,
                        env={**os.environ, **(env or {})}, timeout=120)


def test_script_on_tiny_csv(tmp_path):
  rng = np.random.default_rng(0)
  rows = [(u, i, int(rng.integers(1, 6)), 1000 + u * 50 + i)
          for u in range(1, 41) for i in range(1, 31) if rng.random() < 0.5]
  path = tmp_path / "ratings.csv"
  path.write_text("userId,movieId,rating,timestamp\n"
                  + "".join(f"{u},{i},{r},{t}\n" for u, i, r, t in rows))
  out = tmp_path / "run"
  res = _script(f"--dataset={path}", "--split=random", "--neighbors=5",
                f"--workdir={out}", "--save_matrix")
  assert res.returncode == 0, res.stderr[-2000:]
  metrics = json.loads((out / "metrics.json").read_text())
  assert np.isfinite(metrics["test_rmse"]) and metrics["n_test"] > 0
  for key in ("test_mae", "n_train", "n_test_fallback", "similarity_seconds",
              "impute_seconds"):
    assert key in metrics
  assert json.loads((out / "config.json").read_text())["neighbors"] == 5
  assert np.load(out / "filled.npy").shape == (40, 30)


def test_script_columns_and_duplicates(tmp_path):
  """impute.py takes --columns and --duplicates as train.py does."""
  rng = np.random.default_rng(1)
  rows = [f"A{u},x,B{i},{rng.integers(1, 6)}" for u in range(30) for i in range(20)
          if rng.random() < 0.5]
  path = tmp_path / "shop.csv"
  path.write_text("who,note,what,stars\n" + "\n".join(rows + [rows[0]]) + "\n")
  res = _script(f"--dataset={path}", "--columns=user=who,item=what", "--split=random",
                f"--workdir={tmp_path / 'a'}")
  assert res.returncode == 2 and "Traceback" not in res.stderr
  assert "more than once" in res.stderr and "--duplicates=last" in res.stderr
  res = _script(f"--dataset={path}", "--columns=user=who,item=what", "--duplicates=last",
                "--split=random", f"--workdir={tmp_path / 'b'}")
  assert res.returncode == 0, res.stderr[-2000:]
  assert "warning: " in res.stderr and "dropped 1 repeated" in res.stderr
  config = json.loads((tmp_path / "b" / "config.json").read_text())
  assert config["columns"] == "user=who,item=what" and config["n_users"] == 30


def test_script_bad_flag(tmp_path):
  res = _script("--neighbors=-3", f"--workdir={tmp_path}")
  assert res.returncode == 2
  assert "Traceback" not in res.stderr
  assert res.stderr.strip().count("\n") == 0 and "neighbors" in res.stderr


# ------------------------------------------- KNNBaseline, item orientation


def _offset_reference(r, m, sim, k, off, positive_only=True):
  """Koren 2010 eq. 3 / Surprise KNNBaseline, one (a, p) at a time:
  off[a, p] + Σ w (r_bp − off[b, p]) / Σ|w| over a's k most similar raters
  of p (ties: lower index first). off = b_ui, or mean_a for KNNWithMeans."""
  u, n_items = r.shape
  out = np.zeros((u, n_items))
  for a in range(u):
    for p in range(n_items):
      raters = sorted((b for b in range(u) if m[b, p] and b != a),
                      key=lambda b: (-sim[a, b], b))[:k or None]
      num = den = 0.0
      for b in raters:
        w = max(sim[a, b], 0.0) if positive_only else sim[a, b]
        num += w * (r[b, p] - off[b, p])
        den += abs(w)
      out[a, p] = off[a, p] + (num / den if den != 0 else 0.0)
  return np.clip(out, 1, 5)


@pytest.mark.parametrize("orientation", ["user", "item"])
@pytest.mark.parametrize("metric,baseline", [("pearson_baseline", "als"),
                                             ("pearson", "als"),
                                             ("pearson_baseline", "none"),
                                             ("pearson", "none")])
def test_knn_baseline_and_orientation_match_reference(orientation, metric,
                                                      baseline):
  from recae_jax import baselines
  r, m, train = _train(seed=6, integer=False)
  kw = dict(neighbors=4, metric=metric, baseline=baseline, shrinkage=5.0,
            positive_only=True, orientation=orientation, rating_scale=(1, 5))
  bl = baselines.fit(train)
  b = bl.mu + bl.b_u[:, None] + bl.b_i[None, :]
  rr, mm, bb, t = r, m, b, train
  if orientation == "item":
    rr, mm, bb, t, bl = r.T, m.T, b.T, train.transpose(), bl.transpose()
  sim = S.similarity_matrix(t, metric=metric, shrinkage=5.0,
                            baseline=bl).astype(np.float64)
  if baseline == "als":
    off = bb
  else:
    cnt = mm.sum(1, keepdims=True)
    mean = np.where(cnt > 0, (rr * mm).sum(1, keepdims=True)
                    / np.maximum(cnt, 1), rr[mm].mean())
    off = np.broadcast_to(mean, rr.shape)
  ref = _offset_reference(rr, mm, sim, 4, off)
  if orientation == "item":
    ref = ref.T
  got = impute.fill_matrix(train, keep_observed=False, block_size=7, **kw)
  np.testing.assert_allclose(got, ref, atol=2e-5)
  uu, ii = np.indices(r.shape)
  pred, _ = impute.predict_pairs(train, uu.ravel(), ii.ravel(), block_size=8,
                                 **kw)
  np.testing.assert_allclose(pred, ref.ravel(), atol=2e-5)
  # Top-k lists covering every other row are exactly predict_pairs.
  full_list = (r.shape[1] if orientation == "item" else r.shape[0]) - 1
  lst, _ = impute.predict_pairs_topk(train, uu.ravel(), ii.ravel(),
                                     list_size=full_list, **kw)
  np.testing.assert_allclose(lst, pred, atol=2e-5)


def test_topk_lists_restrict_neighbours_to_the_list():
  r, m, train = _train(seed=7, u=40, i=12, integer=False)
  kw = dict(neighbors=3, metric="pearson_baseline", baseline="als",
            orientation="item", shrinkage=0.0, positive_only=True,
            rating_scale=(1, 5))
  from recae_jax import baselines
  bl = baselines.fit(train).transpose()
  sim = S.similarity_matrix(train.transpose(), metric="pearson_baseline",
                            baseline=bl).astype(np.float64)
  L = 4  # keep each item's 4 most similar items, zero out the rest
  order = np.lexsort((np.broadcast_to(np.arange(12), (12, 12)),
                      -np.where(np.eye(12, dtype=bool), -np.inf, sim)))
  keep = np.zeros_like(sim, bool)
  np.put_along_axis(keep, order[:, :L], True, axis=1)
  b = (bl.mu + bl.b_u[:, None] + bl.b_i[None, :])
  ref = _offset_reference(r.T, m.T, np.where(keep, sim, -1e9), 3, b).T
  uu, ii = np.indices(r.shape)
  got, _ = impute.predict_pairs_topk(train, uu.ravel(), ii.ravel(),
                                     list_size=L, chunk_size=5, **kw)
  np.testing.assert_allclose(got, ref.ravel(), atol=2e-5)


@pytest.mark.surprise
def test_matches_surprise_knn_baseline_if_installed():
  """Surprise's (n-1)/(n-1+λ) shrink is 1 at λ = 0 with support >= 2."""
  surprise = pytest.importorskip("surprise")
  import pandas as pd
  r, m, train = _train(seed=8, u=30, i=25, integer=False)
  df = pd.DataFrame({"u": train.users, "i": train.items,
                     "r": train.ratings.astype(np.float64)})
  ts = surprise.Dataset.load_from_df(
      df, surprise.Reader(rating_scale=(1, 5))).build_full_trainset()
  uu, ii = np.nonzero(~m)
  keep = np.isin(uu, train.users) & np.isin(ii, train.items)  # known ids
  uu, ii = uu[keep], ii[keep]
  for user_based in (True, False):
    algo = surprise.KNNBaseline(k=5, sim_options={
        "name": "pearson_baseline", "shrinkage": 0, "min_support": 2,
        "user_based": user_based}, verbose=False).fit(ts)
    theirs = [algo.predict(u, i).est for u, i in zip(uu, ii)]
    ours, _ = impute.predict_pairs(
        train, uu, ii, neighbors=5, metric="pearson_baseline", baseline="als",
        min_support=2, positive_only=True, rating_scale=(1, 5),
        orientation="user" if user_based else "item")
    np.testing.assert_allclose(ours, theirs, atol=2e-5)


def test_best_neighbourhood_chooses_on_validation_only():
  rng = np.random.default_rng(9)
  r, m, train = _train(seed=9, u=50, i=30)
  perm = rng.permutation(len(train))
  fit, valid = train.subset(perm[40:]), train.subset(perm[:40])
  test = Ratings(rng.integers(0, 50, 30), rng.integers(0, 30, 30),
                 rng.integers(1, 6, 30), np.zeros(30), 50, 30)
  out = impute.best_neighbourhood(fit, valid, train, test, (1, 5),
                                  progress=None)
  rmses = [c["valid_rmse"] for c in out["candidates"]]
  assert len(rmses) == len(impute.CANDIDATES)
  best = out["candidates"][int(np.argmin(rmses))]["config"]
  assert out["choice"] == best
  cfg = {k: v for k, v in best.items()}
  cfg["rating_scale"] = tuple(cfg["rating_scale"])
  cfg = impute.KNNConfig(**cfg)
  np.testing.assert_array_equal(
      out["valid"], impute.predict_pairs(fit, valid.users, valid.items, cfg)[0])
  np.testing.assert_array_equal(
      out["test"], impute.predict_pairs(train, test.users, test.items, cfg)[0])
  assert min(rmses) == pytest.approx(
      np.sqrt(np.mean((out["valid"] - valid.ratings) ** 2)), abs=1e-6)
  # Scrambling the test ratings changes nothing: they are never read.
  test2 = dataclasses.replace(test, ratings=test.ratings[::-1].copy())
  again = impute.best_neighbourhood(fit, valid, train, test2, (1, 5),
                                    progress=None)
  assert again["choice"] == out["choice"]
  with pytest.raises(UserError, match="non-empty base"):
    impute.best_neighbourhood(fit.subset(slice(0, 0)), valid, train, test,
                              (1, 5), progress=None)


def test_new_bad_input_and_progress():
  r, m, train = _train(seed=10)
  for bad in (dict(baseline="lbfgs"), dict(orientation="diagonal"),
              dict(metric="pearson_baseline", shrinkage=-1.0)):
    with pytest.raises(UserError):
      impute.predict_pairs(train, [0], [0], **bad)
  with pytest.raises(UserError, match="list_size"):
    impute.predict_pairs_topk(train, [0], [0], list_size=0)
  # k above the number of items (item rows): every rated item, no NaN.
  big = impute.fill_matrix(train, neighbors=999, orientation="item",
                           baseline="als")
  np.testing.assert_array_equal(big, impute.fill_matrix(
      train, neighbors=0, orientation="item", baseline="als"))
  assert np.isfinite(big).all()
  with pytest.raises(UserError, match="no ratings"):
    impute.predict_pairs(Ratings([], [], [], [], 3, 3), [0], [0],
                         baseline="als")
  lines = []
  impute.fill_matrix(train, block_size=4, progress=lines.append)
  assert lines and lines[-1].startswith("fill: 30/30 rows (100%)")


def _tiny_csv(tmp_path):
  rng = np.random.default_rng(0)
  rows = [(u, i, int(rng.integers(1, 6)), 1000 + u * 50 + i)
          for u in range(1, 41) for i in range(1, 31) if rng.random() < 0.5]
  path = tmp_path / "ratings.csv"
  path.write_text("userId,movieId,rating,timestamp\n"
                  + "".join(f"{u},{i},{r},{t}\n" for u, i, r, t in rows))
  return path


@pytest.mark.parametrize("flags", [
    ["--similarity=pearson_baseline", "--baseline=als", "--orientation=item",
     "--shrinkage=100", "--positive_only", "--save_matrix"],
    ["--baseline=sgd", "--orientation=user"],
    ["--baseline_only"],
    ["--select", "--valid_fraction=0.1"]])
def test_script_new_models(tmp_path, flags):
  out = tmp_path / "run"
  res = _script(f"--dataset={_tiny_csv(tmp_path)}", "--split=random",
                "--neighbors=5", f"--workdir={out}", *flags)
  assert res.returncode == 0, res.stderr[-2000:]
  metrics = json.loads((out / "metrics.json").read_text())
  assert np.isfinite(metrics["test_rmse"]) and metrics["n_test"] > 0
  config = json.loads((out / "config.json").read_text())
  assert {"baseline", "orientation", "baseline_only", "select"} <= set(config)
  if "--select" in flags:
    assert metrics["choice"] in [c["config"] for c in metrics["candidates"]]
    assert len(metrics["candidates"]) == len(impute.CANDIDATES)
  if "--save_matrix" in flags:
    assert np.load(out / "filled.npy").shape == (40, 30)
    assert "fill: 30/30 rows (100%)" in res.stdout  # item rows: 30 items

@pytest.mark.parametrize("flag,name", [("--baseline=lbfgs", "--baseline"),
                                       ("--similarity=jaccard", "--similarity"),
                                       ("--shrinkage=-1", "--shrinkage"),
                                       ("--orientation=diag", "--orientation")])
def test_script_new_bad_flags(tmp_path, flag, name):
  res = _script(flag, f"--workdir={tmp_path}")
  assert res.returncode == 2 and "Traceback" not in res.stderr
  assert res.stderr.strip().count("\n") == 0 and name in res.stderr


def test_script_empty_base(tmp_path):
  path = tmp_path / "one.csv"
  path.write_text("userId,movieId,rating,timestamp\n1,1,4,100\n")
  res = _script(f"--dataset={path}", "--split=random", "--test_fraction=0.6",
                f"--workdir={tmp_path / 'run'}")
  assert res.returncode == 2 and "Traceback" not in res.stderr
  assert "no ratings" in res.stderr and res.stderr.strip().count("\n") == 0
