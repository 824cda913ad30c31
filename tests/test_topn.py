"""Mult-VAE / Mult-DAE / EASE / popularity under strong generalization."""

import json

import jax.numpy as jnp
import numpy as np
import pytest

from conftest import low_rank_ratings, write_ratings_csv
from recae_jax import engine, tasks, topn
from recae_jax.errors import UserError


def test_ease_closed_form_matches_numpy():
  rng = np.random.default_rng(0)
  x = (rng.random((50, 12)) < 0.3).astype(np.float64)
  lam = 5.0
  p = np.linalg.inv(x.T @ x + lam * np.eye(12))
  b = np.eye(12) - p @ np.diag(1.0 / np.diag(p))  # Steck's formula as written
  got = np.asarray(topn.ease_weights(jnp.asarray(x, jnp.float32), lam))
  np.testing.assert_allclose(got, b, atol=2e-5)
  assert np.all(np.diag(got) == 0)


def test_multinomial_nll_and_beta():
  logits = jnp.array([[0.0, np.log(3.0)], [1.0, 1.0]])
  x = jnp.array([[1.0, 1.0], [0.0, 1.0]])
  w = jnp.array([1.0, 0.0])  # the second row is padding
  expect = -(np.log(1 / 4) + np.log(3 / 4))
  assert float(tasks.multinomial_nll(logits, x, w)) == pytest.approx(expect, rel=1e-6)
  beta = [float(tasks.anneal_beta(jnp.int32(s), 0.2, 100)) for s in (0, 50, 100, 500)]
  assert beta == pytest.approx([0.0, 0.2, 0.2, 0.2])
  assert float(tasks.anneal_beta(jnp.int32(10), 0.2, 100)) == pytest.approx(0.1)


@pytest.fixture(scope="module")
def protocol():
  ds, _ = low_rank_ratings(n_users=400, n_items=60, density=0.35, seed=1)
  cfg = topn.make_topn_config(None, n_test_users=60, n_valid_users=60)
  return topn.make_protocol(cfg, dataset=ds)


def test_protocol_is_strong_generalization(protocol):
  train_u = set(np.asarray(protocol.train_rows).tolist())
  valid_u, test_u = set(protocol.valid_users), set(protocol.test_users)
  assert not (train_u & valid_u) and not (train_u & test_u) and not (valid_u & test_u)
  assert len(test_u) == 60
  frac = len(protocol.test_in) / (len(protocol.test_in) + len(protocol.test_out))
  assert 0.75 < frac < 0.85
  assert np.all(protocol.train.ratings == 1.0)  # binarized clicks
  assert protocol.candidates_I[protocol.test_out.items].all()


def test_mult_models_beat_popularity(protocol, tmp_path):
  small = dict(hidden=(32,), latent=16, select_k=10, batch_size=64, epochs=20, eval_every=10,
               n_test_users=60, n_valid_users=60, learning_rate=3e-3, ks=(10,))
  quiet = lambda s: None
  pop = topn.run(topn.make_topn_config("popularity", **small), protocol=protocol,
                 progress=quiet)["test"]["ndcg@10"]
  ease = topn.run(topn.make_topn_config("ease", ease_lambdas=(10.0, 100.0), **small),
                  protocol=protocol, progress=quiet)["test"]["ndcg@10"]
  before = engine.TRACE_COUNTS["train_epoch"]
  vae = topn.run(topn.make_topn_config("mult_vae", **small), tmp_path / "vae",
                 protocol=protocol, progress=quiet)
  assert engine.TRACE_COUNTS["train_epoch"] == before + 1  # the epoch compiled once
  dae = topn.run(topn.make_topn_config("mult_dae", **dict(small, hidden=())),
                 protocol=protocol, progress=quiet)
  assert vae["best_epoch"] in (10, 20)
  assert (tmp_path / "vae" / "checkpoints").is_dir()
  assert json.loads((tmp_path / "vae" / "metrics.json").read_text())["model"] == "mult_vae"
  assert vae["test"]["ndcg@10"] > pop + 0.02, (vae["test"], pop)
  assert dae["test"]["ndcg@10"] > pop + 0.02, (dae["test"], pop)
  assert ease > pop + 0.02


def test_config_errors():
  with pytest.raises(UserError, match="unknown top-N preset"):
    topn.make_topn_config("bogus")
  with pytest.raises(UserError, match="--fold_in_fraction"):
    topn.make_topn_config("mult_vae", fold_in_fraction=1.5)
  assert topn.make_topn_config("ease", ease_lambdas="1,2").ease_lambdas == (1.0, 2.0)


def test_topn_presets_of_train_script_with_resume(tmp_path):
  import subprocess
  import sys
  from conftest import low_rank_ratings
  ds, _ = low_rank_ratings(n_users=300, n_items=160)
  r = ds.ratings
  csv = tmp_path / "ratings.csv"
  write_ratings_csv(csv, r)
  common = [sys.executable, "experiments/train.py", f"--dataset={csv}", "--threshold=3",
            "--n_test_users=40", "--n_valid_users=40", "--ks=10,20,50,100"]

  def run(*args):
    p = subprocess.run([*common, *args], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    return p.stdout

  run("--preset=ease", "--ease_lambdas=10,100", f"--workdir={tmp_path / 'ease'}")
  m = json.loads((tmp_path / "ease" / "metrics.json").read_text())
  for key in ("test_ndcg@100", "test_recall@20", "test_recall@50"):
    assert 0 <= m[key] <= 1, key
  assert m["best_lambda"] in (10.0, 100.0)
  # Mult-DAE checkpoints through the one loop; --resume continues from them.
  dae = [f"--workdir={tmp_path / 'dae'}", "--preset=mult_dae", "--eval_every=2",
         "--batch_size=32"]
  run(*dae, "--epochs=4")
  out = run(*dae, "--epochs=6", "--resume")
  assert "resumed from epoch 4" in out
  m = json.loads((tmp_path / "dae" / "metrics.json").read_text())
  assert m["best_epoch"] in (2, 4, 6) and "test_ndcg@100" in m
  rows = (tmp_path / "dae" / "metrics.jsonl").read_text().splitlines()
  assert [json.loads(x)["epoch"] for x in rows] == [1, 2, 3, 4, 5, 6]


def test_mult_sweep_members_match_lone_runs(tmp_path):
  # A Mult-DAE sweep trains its members in one engine; each member is the
  # lone run of its config (same protocol, same batch order).
  from conftest import low_rank_ratings
  from recae_jax import sweep
  from recae_jax.config import make_config
  ds, _ = low_rank_ratings(n_users=260, n_items=150)
  r = ds.ratings
  csv = tmp_path / "ratings.csv"
  write_ratings_csv(csv, r)
  base = make_config("mult_dae", dataset=str(csv), threshold=3.0, n_test_users=40,
                     n_valid_users=40, ks=(10, 100), batch_size=32, epochs=3,
                     eval_every=1, latent=16)
  configs = sweep.member_configs(base, sweep.parse_sweep("l2=0,0.05"))
  quiet = lambda _: None
  res = sweep.run_sweep(base, configs, tmp_path / "sweep", progress=quiet)
  assert res["n_members"] == 2
  for k, cfg in enumerate(configs):
    lone = topn.run(cfg, tmp_path / f"lone{k}", progress=quiet)
    got = json.loads((tmp_path / "sweep" / "members" / f"k{k:02d}" / "metrics.json"
                      ).read_text())
    assert got["best_epoch"] == lone["best_epoch"]
    assert got["best_valid_ndcg"] == pytest.approx(lone["best_valid_ndcg"], abs=1e-6)
    assert got["test_ndcg@100"] == pytest.approx(lone["test"]["ndcg@100"], abs=1e-6)
  assert (tmp_path / "sweep" / "checkpoints").is_dir()
  from recae_jax import recommend  # the sweep's workdir recommends with its best member
  rec = recommend.from_workdir(tmp_path / "sweep")
  assert rec.kind == "mult_dae" and len(recommend.recommend(rec, 1, k=3).items) == 3
