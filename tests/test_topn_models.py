"""RecVAE and CDAE (recae_jax.topn_models) under the strong-generalization protocol."""

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import low_rank_ratings, write_ratings_csv
from recae_jax import engine, topn, topn_models
from recae_jax.batching import DenseBatcher
from recae_jax.errors import UserError
from recae_jax.problem import RowData
from recae_jax.tasks import Hyper

QUIET = lambda _: None
TINY = dict(hidden=(32,), latent=16, select_k=10, batch_size=64, epochs=4, eval_every=2,
            n_test_users=60, n_valid_users=60, ks=(10,))


@pytest.fixture(scope="module")
def protocol():
  ds, _ = low_rank_ratings(n_users=400, n_items=60, density=0.35, seed=1)
  return topn.make_protocol(topn.make_topn_config(None, n_test_users=60,
                                                  n_valid_users=60), dataset=ds)


def _rows(protocol, n=8):
  rows = jnp.asarray(protocol.train_rows[:n])
  return rows, protocol.inputs.gather(rows)[0]


def test_shapes(protocol):
  rows, x = _rows(protocol)
  rec = topn_models.RecVAE(protocol.n_items, hidden=32, latent=16)
  p = rec.init(jax.random.PRNGKey(0))
  out = jax.jit(lambda p, x: (rec.apply(p, x), rec.encode(p, x), rec.posterior(
      p["enc"], x, 0.5, jax.random.PRNGKey(1), train=True), rec.log_prior(
          p["old"], x, rec.encode(p, x))))(p, x)
  logits, code, (mu, logvar), log_p = out
  assert logits.shape == (8, protocol.n_items) and code.shape == (8, 16)
  assert mu.shape == logvar.shape == log_p.shape == (8, 16)
  cdae = topn_models.CDAE(protocol.n_items, protocol.n_users, latent=16)
  q = cdae.init(jax.random.PRNGKey(0))
  assert q["user"]["kernel"].shape == (protocol.n_users + 1, 16)
  s, h = jax.jit(lambda q, x, r: (cdae.apply(q, x, r), cdae.encode(q, x, r)))(q, x, rows)
  assert s.shape == (8, protocol.n_items) and bool(jnp.all((s > 0) & (s < 1)))
  assert h.shape == (8, 16)


def test_composite_prior_matches_numpy():
  rng = np.random.default_rng(0)
  rec = topn_models.RecVAE(n_items=30, hidden=8, latent=5)
  p = rec.init(jax.random.PRNGKey(3))
  x = (rng.random((4, 30)) < 0.3).astype(np.float32)
  z = rng.normal(0, 2, (4, 5)).astype(np.float32)
  mu, logvar = (np.asarray(a, np.float64) for a in rec.posterior(p["old"], jnp.asarray(x)))

  def lognorm(z, m, lv):
    return -0.5 * (lv + np.log(2 * np.pi) + (z - m) ** 2 / np.exp(lv))
  expect = np.log(3 / 20 * np.exp(lognorm(z, 0.0, 0.0)) + 3 / 4 * np.exp(lognorm(z, mu, logvar))
                  + 1 / 10 * np.exp(lognorm(z, 0.0, 10.0)))
  got = np.asarray(jax.jit(rec.log_prior)(p["old"], jnp.asarray(x), jnp.asarray(z)))
  np.testing.assert_allclose(got, expect, rtol=1e-5, atol=1e-5)


def _leaves_equal(a, b) -> bool:
  return all(bool(jnp.array_equal(u, v)) for u, v in zip(jax.tree.leaves(a),
                                                         jax.tree.leaves(b)))


def test_alternating_updates(protocol):
  cfg = topn.make_topn_config("recvae", **dict(TINY, hidden=(16,), latent=8))
  task, tx = topn.mult_task(cfg, protocol, 1)
  batcher = DenseBatcher(64)
  data = RowData(protocol.inputs, None, protocol.train_rows)
  hyper = engine.member(Hyper.from_configs([cfg]), 0)
  p0 = task.init(jax.random.PRNGKey(0))
  opt = tx.init(p0)
  rows = protocol.train_rows[:64]
  key = jax.random.PRNGKey(1)
  enc_step = engine.make_member_update(dataclasses.replace(task, phase="enc"), tx.enc, batcher)
  dec_step = engine.make_member_update(dataclasses.replace(task, phase="dec"), tx.dec, batcher)

  @jax.jit
  def enc_then_dec(p0, opt):
    p1, _, _ = enc_step(p0, opt[0], key, hyper, data, rows, jnp.int32(0))
    p2, _, _ = dec_step(p1, opt[1], key, hyper, data, rows, jnp.int32(1))
    return p1, p2

  p1, p2 = enc_then_dec(p0, opt)
  assert _leaves_equal(p1["dec"], p0["dec"]) and _leaves_equal(p1["old"], p0["old"])
  assert not _leaves_equal(p1["enc"], p0["enc"])
  assert _leaves_equal(p2["enc"], p1["enc"]) and _leaves_equal(p2["old"], p1["old"])
  assert not _leaves_equal(p2["dec"], p1["dec"])
  # A whole epoch: one compile; the old encoder becomes the trained encoder.
  epoch = topn_models.make_recvae_epoch(task, tx, batcher)
  state = engine.init_state(task, tx, [0], 0)
  before = engine.TRACE_COUNTS["recvae_epoch"]
  for _ in range(2):
    state, m = epoch(state, data, Hyper.from_configs([cfg]))
  assert engine.TRACE_COUNTS["recvae_epoch"] == before + 1
  n_batches = -(-int(protocol.train_rows.shape[0]) // 64)
  assert int(state.step) == 2 * (cfg.enc_epochs + cfg.dec_epochs) * n_batches
  assert _leaves_equal(state.params["old"], state.params["enc"])
  assert np.isfinite(np.asarray(m["loss"])).all() and m["dec_nll"].shape == (1,)


def test_cdae_user_vectors(protocol):
  cfg = topn.make_topn_config("cdae", **dict(TINY, epochs=3, l2=0.0, learning_rate=1e-2))
  out = topn.train_mult(cfg, protocol, QUIET)
  model, params = out["model"], out["params"]
  v = np.asarray(params["user"]["kernel"])
  train_u = np.asarray(protocol.train_rows)
  held = np.concatenate([protocol.valid_users, protocol.test_users])
  assert np.abs(v[train_u]).sum(1).min() > 0  # every training user learned a vector
  assert np.all(v[held] == 0) and np.all(v[-1] == 0)  # fold-in users: V_u = 0
  rows, x = _rows(protocol)
  with_u, without = model.apply(params, x, rows), model.apply(params, x)
  assert float(jnp.max(jnp.abs(with_u - without))) > 1e-3


def test_config_errors():
  with pytest.raises(UserError, match="^--kl_gamma: applies to --model=recvae only"):
    topn.make_topn_config("mult_vae", kl_gamma=0.01)
  with pytest.raises(UserError, match="^--enc_epochs"):
    topn.make_topn_config("cdae", enc_epochs=2)
  with pytest.raises(UserError, match="^--dec_epochs: must be >= 1"):
    topn.make_topn_config("recvae", dec_epochs=0)
  with pytest.raises(UserError, match="^--hidden: recvae takes one width"):
    topn.mult_task(topn.make_topn_config("recvae", hidden=(8, 8)), None, 1)
  assert topn.make_topn_config("recvae", kl_gamma=0.01).kl_gamma == 0.01


def test_ml100k_beat_popularity(data_dir):
  base = dict(dataset="ml-100k", data_dir=str(data_dir), eval_every=2, epochs=6)
  protocol = topn.make_protocol(topn.make_topn_config("popularity", **base))
  pop = topn.run(topn.make_topn_config("popularity", **base), protocol=protocol,
                 progress=QUIET)["valid"]["ndcg@100"]
  before = engine.TRACE_COUNTS["recvae_epoch"]
  rec = topn.run(topn.make_topn_config("recvae", hidden=(64,), latent=32, batch_size=100,
                                       learning_rate=3e-3, **base),
                 protocol=protocol, progress=QUIET)
  assert engine.TRACE_COUNTS["recvae_epoch"] == before + 1
  before = engine.TRACE_COUNTS["train_epoch"]
  cdae = topn.run(topn.make_topn_config("cdae", **dict(base, epochs=12, eval_every=6)),
                  protocol=protocol, progress=QUIET)
  assert engine.TRACE_COUNTS["train_epoch"] == before + 1
  print("valid ndcg@100: popularity", pop, "recvae", rec["valid"]["ndcg@100"], "cdae",
        cdae["valid"]["ndcg@100"])
  assert rec["valid"]["ndcg@100"] > pop + 0.02, (rec["valid"], pop)
  assert cdae["valid"]["ndcg@100"] > pop + 0.02, (cdae["valid"], pop)


@pytest.mark.parametrize("model", ["recvae", "cdae"])
def test_recommend_from_workdir(tmp_path, model):
  from recae_jax import recommend, runs
  from recae_jax.config import make_config
  ds, _ = low_rank_ratings(n_users=200, n_items=80, density=0.3, seed=2)
  r = ds.ratings
  csv = tmp_path / "ratings.csv"
  write_ratings_csv(csv, r)
  cfg = make_config(model, dataset=str(csv), threshold=3.0, n_test_users=30,
                    n_valid_users=30, ks=(10,), select_k=10, epochs=2, eval_every=1, latent=8,
                    **({"hidden": (16,), "enc_epochs": 1} if model == "recvae" else {}))
  res = runs.run(cfg, tmp_path / "wd", progress=QUIET)
  assert json.loads((tmp_path / "wd" / "metrics.json").read_text())["model"] == model
  rec = recommend.from_workdir(tmp_path / "wd")
  assert rec.kind == model
  user = int(np.asarray(rec.dataset.user_ids)[int(protocol_user(rec))])
  out = recommend.recommend(rec, user, k=5)
  assert len(out.items) == 5 and out.items["score"].is_monotonic_decreasing
  # the restored model scores the test users as the run did
  fitted = res["_fitted"]
  u = jnp.asarray(rec.topn_scorer[1]["inputs"].gather(jnp.arange(4))[0])
  np.testing.assert_allclose(np.asarray(rec.model.apply(rec.params, u, jnp.arange(4))),
                             np.asarray(fitted["model"].apply(fitted["params"], u,
                                                              jnp.arange(4))), rtol=1e-5)
  assert recommend.item_embeddings(rec).shape == (rec.n_items, 8)
  assert recommend.user_embeddings(rec).shape == (rec.n_users, 8)


def protocol_user(rec):
  """A user with clicks shown to the model."""
  return int(np.flatnonzero(rec.n_train_U > 0)[0])
