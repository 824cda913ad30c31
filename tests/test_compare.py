"""experiments/compare.py: paired comparisons of runs on the same test set."""

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

from conftest import low_rank_ratings, write_ratings_csv
from recae_jax import compare, runs, topn
from recae_jax.config import make_config
from recae_jax.errors import UserError

QUIET = lambda s: None  # noqa: E731


# ------------------------------------------------------------- the statistics

def _topn_pair(d_U, base=0.3):
  users = np.arange(len(d_U))
  mk = lambda v: compare.RunData("x", "topn", "m", "d", "k", users, {"ndcg@10": v})  # noqa: E731
  return mk(np.full(len(d_U), base)), mk(base + d_U)


def test_bootstrap_ci_matches_the_normal_approximation():
  rng = np.random.default_rng(0)
  d = rng.normal(0.05, 0.3, 3000)
  a, b = _topn_pair(d)
  m = compare.compare_runs([a, b], n_boot=2000, seed=1)["comparisons"][0]["metrics"]["test_ndcg@10"]
  half = 1.96 * d.std(ddof=1) / np.sqrt(len(d))
  assert m["diff"] == pytest.approx(d.mean())
  assert m["ci_low"] == pytest.approx(d.mean() - half, abs=0.15 * half)
  assert m["ci_high"] == pytest.approx(d.mean() + half, abs=0.15 * half)
  assert m["p_value"] < 1e-6 and m["n_users"] == 3000
  # more users: a narrower interval; no effect: a large p-value, CI around 0
  a2, b2 = _topn_pair(d[:300])
  m2 = compare.compare_runs([a2, b2], n_boot=2000)["comparisons"][0]["metrics"]["test_ndcg@10"]
  assert (m2["ci_high"] - m2["ci_low"]) > 2.5 * (m["ci_high"] - m["ci_low"])
  a3, b3 = _topn_pair(rng.normal(0, 0.3, 3000))
  m3 = compare.compare_runs([a3, b3], n_boot=1000)["comparisons"][0]["metrics"]["test_ndcg@10"]
  assert m3["ci_low"] < 0 < m3["ci_high"] and m3["p_value"] > 0.01


def test_rating_bootstrap_is_over_users():
  # per-user sums: RMSE of the pooled pairs, resampled by whole users
  rng = np.random.default_rng(0)
  users = np.arange(400)
  n = rng.integers(1, 30, 400).astype(float)
  sse_a = n * rng.uniform(0.5, 1.5, 400)
  mk = lambda sse: compare.RunData("x", "rating", "m", "d", "k", users,  # noqa: E731
                                   {"sse": sse, "abs": np.sqrt(sse * n), "n": n})
  out = compare.compare_runs([mk(sse_a), mk(sse_a * 0.9)], n_boot=1000)
  m = out["comparisons"][0]["metrics"]["test_rmse"]
  assert m["value_a"] == pytest.approx(np.sqrt(sse_a.sum() / n.sum()))
  assert m["diff"] == pytest.approx(np.sqrt(0.9 * sse_a.sum() / n.sum()) - m["value_a"])
  assert m["ci_low"] < m["diff"] < m["ci_high"] < 0 and m["p_value"] < 1e-6


# ------------------------------------------------------------- rating runs

@pytest.fixture(scope="module")
def rating_runs(tmp_path_factory):
  root = tmp_path_factory.mktemp("cmp_rating")
  ds, _ = low_rank_ratings(n_users=150, n_items=80)
  r = ds.ratings
  csv = root / "ratings.csv"
  write_ratings_csv(csv, r)
  base = dict(dataset=str(csv), split="random", epochs=3, layers=(16,),
              checkpoint_every=3)
  dirs = {}
  for name, kw in (("a", {}), ("blend", {"ensemble": 2, "learning_rate": 1e-2})):
    dirs[name] = root / name
    runs.run(make_config("autorec", **base, **kw), dirs[name], progress=QUIET)
  # A run whose config names another split (same size): another test set.
  dirs["other_split"] = root / "other_split"
  shutil.copytree(dirs["a"], dirs["other_split"])
  cfg = json.loads((dirs["a"] / "config.json").read_text())
  (dirs["other_split"] / "config.json").write_text(json.dumps(dict(cfg, split_seed=1)))
  return dirs


def test_rating_runs(rating_runs):
  d = rating_runs
  out = compare.compare_workdirs([d["a"], d["a"], d["blend"]], n_boot=1000)
  assert out["kind"] == "rating"
  same, blend = out["comparisons"]
  for m in ("test_rmse", "test_mae"):
    assert same["metrics"][m]["diff"] == 0.0
    assert same["metrics"][m]["ci_low"] == 0.0 == same["metrics"][m]["ci_high"]
    assert same["metrics"][m]["p_value"] == 1.0
  assert blend["model"] == "autoencoder ensemble"
  for c, name in ((same, "a"), (blend, "blend")):  # the runs' own metrics.json values
    want = json.loads((d[name] / "metrics.json").read_text())
    assert c["metrics"]["test_rmse"]["value_b"] == pytest.approx(want["test_rmse"], rel=1e-5)
    assert c["metrics"]["test_mae"]["value_b"] == pytest.approx(want["test_mae"], rel=1e-5)
    m = c["metrics"]["test_rmse"]
    assert m["ci_low"] <= m["diff"] <= m["ci_high"] and 0 <= m["p_value"] <= 1
    assert m["n_users"] == out["n_users"] > 100
  with pytest.raises(UserError, match="different test sets"):
    compare.compare_workdirs([d["a"], d["other_split"]])


def _impute(csv, workdir, *flags):
  p = subprocess.run([sys.executable, "experiments/impute.py", f"--dataset={csv}",
                      f"--workdir={workdir}", "--neighbors=20", *flags],
                     capture_output=True, text=True, timeout=300)
  assert p.returncode == 0, p.stderr[-2000:]


def test_a_neighbourhood_run_beside_an_autoencoder(rating_runs, tmp_path):
  """A one-fold impute.py run saves its test predictions and is paired with
  an autoencoder run of the same split; a several-fold one is refused."""
  d = rating_runs
  csv = json.loads((d["a"] / "config.json").read_text())["dataset"]
  knn = tmp_path / "knn"
  _impute(csv, knn, "--split=random")
  out = compare.compare_workdirs([knn, d["a"]], n_boot=200)
  assert out["a"]["model"] == "user KNN (pearson, k=20)"
  m = out["comparisons"][0]["metrics"]["test_rmse"]
  want = json.loads((knn / "metrics.json").read_text())["test_rmse"]
  assert m["value_a"] == pytest.approx(want, rel=1e-5) and m["n_users"] == out["n_users"]
  with pytest.raises(UserError, match="different test sets"):
    compare.compare_workdirs([knn, d["other_split"]])
  folds = tmp_path / "knn_folds"
  _impute(csv, folds, "--folds=random,random")
  assert not (folds / "test_pred.npy").exists()
  with pytest.raises(UserError, match="is a 2-fold impute.py run: compare runs of one fold"):
    compare.compare_workdirs([folds, d["a"]])


def test_refusals(rating_runs, topn_runs, tmp_path):
  d = rating_runs
  with pytest.raises(UserError, match="cannot compare a rating run with a topn run"):
    compare.compare_workdirs([d["a"], topn_runs["ease"]])
  with pytest.raises(UserError, match="does not exist"):
    compare.compare_workdirs([d["a"], tmp_path / "nope"])
  with pytest.raises(UserError, match="at least two workdirs"):
    compare.compare_workdirs([d["a"]])
  broken = tmp_path / "broken"
  shutil.copytree(d["blend"], broken)
  (broken / "test_pred.npy").unlink()
  with pytest.raises(UserError, match="has no test_pred.npy"):
    compare.compare_workdirs([d["a"], broken])
  broken_topn = tmp_path / "broken_topn"
  shutil.copytree(topn_runs["ease"], broken_topn)
  (broken_topn / topn.PER_USER_FILE).unlink()
  with pytest.raises(UserError, match="has no test_per_user.npz"):
    compare.compare_workdirs([topn_runs["ease"], broken_topn])


# ------------------------------------------------------------- top-N on ML-100K

@pytest.fixture(scope="module")
def topn_runs(data_dir, tmp_path_factory):
  root = tmp_path_factory.mktemp("cmp_topn")
  common = dict(data_dir=str(data_dir), n_test_users=300, ks=(20, 50, 100))
  ease = topn.make_topn_config("ease", ease_lambdas=(200.0,), **common)
  protocol = topn.make_protocol(ease)
  out = {}
  for name, cfg in (("ease", ease), ("popularity", topn.make_topn_config("popularity", **common)),
                    ("pop_seed1", topn.make_topn_config("popularity", split_seed=1, **common))):
    out[name] = root / name
    topn.run(cfg, out[name], protocol=protocol if name != "pop_seed1" else None,
             progress=QUIET)
  return out


def test_topn_self_and_ease_beats_popularity(topn_runs):
  out = compare.compare_workdirs([topn_runs["popularity"], topn_runs["popularity"],
                                  topn_runs["ease"]], n_boot=1000)
  assert out["kind"] == "topn" and out["n_users"] == 300
  same, ease = out["comparisons"]
  assert set(same["metrics"]) == {f"test_{m}@{k}" for m in ("ndcg", "recall")
                                  for k in (20, 50, 100)}
  for m in same["metrics"].values():
    assert (m["diff"], m["ci_low"], m["ci_high"], m["p_value"]) == (0.0, 0.0, 0.0, 1.0)
  nd = ease["metrics"]["test_ndcg@100"]
  want = json.loads((topn_runs["ease"] / "metrics.json").read_text())["test_ndcg@100"]
  assert nd["value_b"] == pytest.approx(want, abs=1e-6)
  assert nd["diff"] > 0.1 and nd["ci_low"] > 0.05 and nd["p_value"] < 1e-10
  with pytest.raises(UserError, match="different test sets"):
    compare.compare_workdirs([topn_runs["popularity"], topn_runs["pop_seed1"]])


def test_script_output_and_one_line_errors(topn_runs, tmp_path):
  cmd = [sys.executable, "experiments/compare.py", "--n_bootstrap=500"]
  out_file = tmp_path / "cmp.json"
  p = subprocess.run([*cmd, f"--out={out_file}", "--metrics=test_ndcg@100",
                      str(topn_runs["popularity"]), str(topn_runs["ease"])],
                     capture_output=True, text=True, timeout=120)
  assert p.returncode == 0, p.stderr[-2000:]
  got = json.loads(p.stdout)
  assert got == json.loads(out_file.read_text())
  m = got["comparisons"][0]["metrics"]
  assert list(m) == ["test_ndcg@100"]
  assert {"diff", "ci_low", "ci_high", "p_value", "value_a", "value_b", "n_users"} <= set(
      m["test_ndcg@100"])
  bad = subprocess.run([*cmd, str(topn_runs["popularity"]), str(topn_runs["pop_seed1"])],
                       capture_output=True, text=True, timeout=120)
  assert bad.returncode == 2 and "Traceback" not in bad.stderr
  lines = bad.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("error: ") and "different test sets" in lines[0]
