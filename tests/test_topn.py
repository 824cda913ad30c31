"""Mult-VAE / Mult-DAE / EASE / popularity under strong generalization."""

import json

import jax.numpy as jnp
import numpy as np
import pytest

from conftest import low_rank_ratings
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
