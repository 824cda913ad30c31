"""--user_folds: K folds of top-N test users, every eligible user tested once."""

import json
import subprocess
import sys

import numpy as np
import pytest

from conftest import low_rank_ratings
from recae_jax import compare, recommend, restore, topn, user_folds
from recae_jax.data import movielens
from recae_jax.errors import UserError

QUIET = lambda s: None  # noqa: E731
K = 3


@pytest.fixture(scope="module")
def csv(tmp_path_factory):
  ds, _ = low_rank_ratings(n_users=240, n_items=90, density=0.35, seed=3)
  r = ds.ratings
  path = tmp_path_factory.mktemp("uf") / "ratings.csv"
  path.write_text("user,item,rating\n" + "".join(
      f"{u + 1},{i + 1},{int(x)}\n" for u, i, x in zip(r.users, r.items, r.ratings)))
  return path


def _cfg(csv, preset="popularity", **kw):
  return topn.make_topn_config(preset, dataset=str(csv), threshold=3.0, n_valid_users=30,
                               ks=(10, 20), select_k=20, user_folds=K, **kw)


@pytest.fixture(scope="module")
def runs(csv, tmp_path_factory):
  root = tmp_path_factory.mktemp("uf_runs")
  out = {}
  for preset, kw in (("popularity", {}), ("ease", {"ease_lambdas": (10.0, 100.0)})):
    out[preset] = (root / preset, user_folds.run_folds(_cfg(csv, preset, **kw), root / preset,
                                                       progress=QUIET))
  return out


def test_every_eligible_user_tested_exactly_once(csv, runs):
  cfg = _cfg(csv)
  ds = movielens.load_dataset(str(csv))
  eligible = user_folds.eligible_users(cfg, ds)
  folds = user_folds.fold_users(cfg, ds)
  assert len(folds) == K and max(map(len, folds)) - min(map(len, folds)) <= 1
  allf = np.concatenate(folds)
  assert len(np.unique(allf)) == len(allf)  # disjoint
  np.testing.assert_array_equal(np.sort(allf), eligible)  # covering
  root, summary = runs["popularity"]
  tested = []
  for f in range(K):
    d = root / f"fold_{f}"
    assert json.loads((d / "fold.json").read_text())["test_users"] == folds[f].tolist()
    per = user_folds.load_per_user(d)
    assert set(per["users"]) <= set(folds[f])  # fold f tests its own users only
    tested.append(per["users"])
    m = json.loads((d / "metrics.json").read_text())
    assert m["test_ndcg@20"] == pytest.approx(per["ndcg@20"].mean(), abs=1e-6)
    # validation and training users come from outside the fold
    p = topn.make_protocol(cfg, ds, test_users=folds[f])
    train_u = set(np.asarray(p.train_rows).tolist())
    assert not (set(p.valid_users) & set(folds[f])) and not (train_u & set(folds[f]))
    assert len(p.valid_users) == 30
  tested = np.concatenate(tested)
  assert len(np.unique(tested)) == len(tested)
  assert summary["n_users"] == len(tested) == len(eligible) - summary["n_untested_users"]
  assert summary["n_untested_users"] <= 2
  assert summary["n_eligible_users"] == len(eligible)


def test_pooled_means_and_cis(runs):
  for root, s in runs.values():
    per = [user_folds.load_per_user(root / f"fold_{f}") for f in range(K)]
    for name in ("ndcg@20", "recall@10", "recall@20"):
      key = f"test_{name}"
      v = np.concatenate([p[name] for p in per])
      m = s["metrics"][key]
      assert s[key] == pytest.approx(v.mean()) == pytest.approx(m["mean"])
      half = 1.959964 * v.std(ddof=1) / np.sqrt(len(v))
      assert m["ci_low"] == pytest.approx(v.mean() - half) and s[f"{key}_ci95"][1] == \
          pytest.approx(v.mean() + half)
      assert m["ci_low"] < m["mean"] < m["ci_high"]
      assert len(m["per_fold"]) == K and m["n_users"] == len(v)
      n_f = np.array([len(p[name]) for p in per])
      assert np.dot(n_f, m["per_fold"]) / n_f.sum() == pytest.approx(m["mean"])
  # what ranks better on each user is also better pooled (EASE vs popularity)
  assert runs["ease"][1]["test_ndcg@20"] > runs["popularity"][1]["test_ndcg@20"]


def test_mean_ci_shrinks_and_covers():
  rng = np.random.default_rng(0)
  small = user_folds.mean_ci(rng.random(100))
  big = user_folds.mean_ci(rng.random(10_000))
  w_small, w_big = small["ci_high"] - small["ci_low"], big["ci_high"] - big["ci_low"]
  assert 7 < w_small / w_big < 13  # ~ sqrt(100)
  # coverage of the true mean (0.5) over repeated samples of 200 users
  hits = [(lambda c: c["ci_low"] <= 0.5 <= c["ci_high"])(user_folds.mean_ci(rng.random(200)))
          for _ in range(400)]
  assert 0.91 < np.mean(hits) < 0.99


def test_compare_pools_user_folds_workdirs(runs):
  out = compare.compare_workdirs([runs["popularity"][0], runs["ease"][0]], n_boot=500)
  assert out["n_users"] == runs["popularity"][1]["n_users"]
  m = out["comparisons"][0]["metrics"]["test_ndcg@20"]
  assert m["value_a"] == pytest.approx(runs["popularity"][1]["test_ndcg@20"])
  assert m["diff"] == pytest.approx(runs["ease"][1]["test_ndcg@20"] -
                                    runs["popularity"][1]["test_ndcg@20"])
  # one fold is not the pooled test set
  with pytest.raises(UserError, match="different test sets"):
    compare.compare_workdirs([runs["popularity"][0], runs["ease"][0] / "fold_0"])


def test_resume_skips_finished_folds(csv, runs, monkeypatch, tmp_path):
  import shutil
  root = tmp_path / "pop"
  shutil.copytree(runs["popularity"][0], root)
  (root / "fold_1" / "metrics.json").unlink()
  calls, lines = [], []
  real = topn.run
  monkeypatch.setattr(topn, "run", lambda cfg, d, **kw: calls.append(d) or real(cfg, d, **kw))
  again = user_folds.run_folds(_cfg(csv), root, resume=True, progress=lines.append)
  assert calls == [root / "fold_1"]
  assert sum("finished earlier" in s for s in lines) == K - 1
  assert again["metrics"] == runs["popularity"][1]["metrics"]


def test_errors(csv, tmp_path):
  with pytest.raises(UserError, match="--user_folds: must be 0 .* got 1"):
    topn.make_topn_config("ease", user_folds=1)
  from recae_jax.config import make_config
  with pytest.raises(UserError, match="--user_folds: .*rating model"):
    make_config("autorec", user_folds=5)
  with pytest.raises(UserError, match=r"--user_folds=5000 is more than the \d+ eligible"):
    user_folds.run_folds(topn.make_topn_config("ease", dataset=str(csv), threshold=3.0,
                                               user_folds=5000), tmp_path / "a")
  with pytest.raises(UserError, match="--n_valid_users=200 leaves no training users"):
    user_folds.run_folds(topn.make_topn_config("ease", dataset=str(csv), threshold=3.0,
                                               user_folds=3, n_valid_users=200), tmp_path / "b")
  with pytest.raises(UserError, match="--user_folds=3: run the folds"):
    topn.run(_cfg(csv))
  from recae_jax import sweep
  base = _cfg(csv, "mult_dae")
  with pytest.raises(UserError, match="--user_folds=3 does not combine with --sweep"):
    sweep.run_sweep(base, sweep.member_configs(base, sweep.parse_sweep("l2=0,0.1")),
                    tmp_path / "sweep", progress=QUIET)


def test_train_script_and_recommend_from_a_fold(csv, tmp_path):
  wd = tmp_path / "ease"
  p = subprocess.run([sys.executable, "experiments/train.py", "--preset=ease",
                      f"--dataset={csv}", "--threshold=3", "--n_valid_users=30",
                      "--ks=10,20", "--select_k=20", "--ease_lambdas=10,100",
                      "--user_folds=2", f"--workdir={wd}"],
                     capture_output=True, text=True, timeout=300)
  assert p.returncode == 0, p.stderr[-2000:]
  m = json.loads((wd / "metrics.json").read_text())
  assert m["user_folds"] == 2 and "test_ndcg@20_ci95" in m
  assert "test_recall@20: " in p.stdout
  # a fold is an ordinary top-N workdir: recommend.py rebuilds its protocol
  r = restore.load_topn(wd / "fold_1")
  fold = json.loads((wd / "fold_1" / "fold.json").read_text())["test_users"]
  np.testing.assert_array_equal(np.sort(r.protocol.test_users), fold)
  rec = recommend.from_workdir(wd / "fold_1")
  assert len(recommend.recommend(rec, 1, k=3).items) == 3
  with pytest.raises(UserError, match="is a --user_folds=2 run: open one of its folds"):
    restore.load_topn(wd)
  bad = subprocess.run([sys.executable, "experiments/train.py", "--preset=autorec",
                        "--user_folds=3", f"--workdir={tmp_path / 'bad'}"],
                       capture_output=True, text=True, timeout=120)
  assert bad.returncode == 2 and "Traceback" not in bad.stderr
  assert bad.stderr.strip().startswith("error: --user_folds:") and \
      len(bad.stderr.strip().splitlines()) == 1
