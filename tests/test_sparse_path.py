"""The sparse-aware path: same loss and gradients as dense, similar accuracy."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from recae_jax import losses, sparse_autorec as sa, train
from recae_jax.config import make_config
from recae_jax.data import sparse
from recae_jax.models import build_model


def _dense_loss(model, config, params, v_BxN, m_BxN, w_B):
  """The dense engine's loss (train.make_train_step's loss_fn, no dropout)."""
  x = v_BxN / config.rating_divisor
  pred = model.apply({"params": params}, x, m_BxN)
  sse, count = losses.masked_sse(pred, x, m_BxN, w_B)
  denom = (jnp.maximum(1.0, count) if config.loss_denominator == "observed"
           else jnp.maximum(1.0, jnp.sum(w_B)) * model.n_outputs)
  return sse / denom + config.l2 * losses.l2_penalty(params)


@pytest.mark.parametrize("kw", [
    dict(orientation="item", layers=(12,), l2=1e-2),
    dict(orientation="user", layers=(12, 6), activation="relu", rating_divisor=5.0,
         loss_denominator="all", output_activation="sigmoid"),
])
def test_loss_and_grads_match_dense(tiny, kw):
  dataset, split = tiny
  config = make_config("autorec", **kw)
  csr = sparse.ratings_to_csr(split.train, config.orientation)
  src = sparse.make_row_source(csr, force="dense")
  sd = sa.from_csr(csr, batch_size=16, batching="uniform")
  model = build_model(config, csr.shape[1])
  tx = train.make_optimizer(config, 1)
  params = sa.init_state(model, tx, csr.shape[1], 3).params
  dense_vg = jax.jit(jax.value_and_grad(
      lambda p, v, m, w: _dense_loss(model, config, p, v, m, w)))
  sparse_vg = jax.jit(jax.value_and_grad(
      lambda p, e, n: sa.sparse_loss(model, config, p, e, n, 16)[0]))
  rng = np.random.default_rng(0)
  for _ in range(2):  # random batches, with padding rows and empty rows
    rows = rng.choice(csr.shape[0], 16, replace=False).astype(np.int32)
    rows[rng.random(16) < 0.3] = csr.shape[0]
    rows_B = jnp.asarray(rows)
    v, m = src.gather(rows_B)
    w = (rows_B < csr.shape[0]).astype(jnp.float32)
    ld, gd = dense_vg(params, v, m, w)
    e = sa.flatten_batch(sd, rows_B)
    assert float(e.valid_T.sum()) == float(m.sum())  # T bounds the batch
    ls, gs = sparse_vg(params, e, jnp.sum(w))
    np.testing.assert_allclose(float(ls), float(ld), rtol=1e-5)
    for name in gd:
      np.testing.assert_allclose(np.asarray(gs[name]), np.asarray(gd[name]),
                                 rtol=1e-4, atol=1e-6, err_msg=name)


def test_init_state_matches_engine(tiny):
  dataset, split = tiny
  config = make_config("autorec", layers=(8,))
  problem = train.build_problem(config, dataset, split)
  model = build_model(config, problem.n_cols)
  tx = train.make_optimizer(config, 1)
  a = train.init_state(model, tx, problem.fit_data, 7)
  b = sa.init_state(model, tx, problem.n_cols, 7)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_stratified_batches_cover_rows_within_bound(tiny):
  dataset, split = tiny
  csr = sparse.ratings_to_csr(split.train, "item")
  sd = sa.from_csr(csr, batch_size=16, batching="stratified")
  rows = np.asarray(sa.epoch_rows(sd, jax.random.PRNGKey(1), True))
  real = rows[rows < sd.n_rows]
  np.testing.assert_array_equal(np.sort(real), np.flatnonzero(csr.row_lengths() > 0))
  totals = np.append(csr.row_lengths(), 0)[rows].sum(1)
  assert totals.max() <= sd.max_entries


def test_sparse_training_matches_dense_accuracy(tiny, tmp_path):
  dataset, split = tiny
  results = {}
  for compute in ("dense", "sparse"):
    config = make_config("autorec", layers=(32,), epochs=40, batch_size=16, patience=0,
                         l2=1e-3, learning_rate=1e-2, compute=compute)
    results[compute] = train.train_and_evaluate(
        config, tmp_path / compute, progress=lambda _: None,
        problem=train.build_problem(config, dataset, split))
  dense, sparse_ = results["dense"], results["sparse"]
  assert sparse_["compute"]["compute"] == "sparse"
  assert dense["compute"]["compute"] == "dense"
  mean = float(np.mean(split.train.ratings))
  baseline = float(np.sqrt(np.mean((split.test.ratings - mean) ** 2)))
  assert sparse_["test_rmse"] < 0.9 * baseline, (sparse_, dense, baseline)
  assert abs(sparse_["test_rmse"] - dense["test_rmse"]) < 0.05


def test_choose_compute_and_unsupported(tiny):
  dataset, split = tiny
  config = make_config("autorec", layers=(8,), batch_size=32)
  problem = train.build_problem(config, dataset, split)
  out = sa.choose_compute(config, problem.fit_data, problem.n_cols, repeats=1)
  assert out["choice"] in ("dense", "sparse")
  assert out["dense_epoch_seconds"] > 0 and out["sparse_epoch_seconds"] > 0
  tied = dataclasses.replace(config, tied=True)
  assert sa.choose_compute(tied, problem.fit_data, problem.n_cols)["choice"] == "dense"


def test_refit_stays_on_the_sparse_path(tiny, tmp_path, monkeypatch):
  # The refit on train+valid must not fall back to the dense engine: at
  # ML-20M/Netflix scale that would be the slow path (and a dense batch).
  dataset, split = tiny
  paths = []
  real = sa.make_epoch_for
  monkeypatch.setattr(sa, "make_epoch_for",
                      lambda config, compute, *a, **k: paths.append(compute) or
                      real(config, compute, *a, **k))

  def no_dense(*a, **k):
    raise AssertionError("dense epoch built on a --compute=sparse run")

  monkeypatch.setattr(train, "make_train_epoch", no_dense)
  config = make_config("autorec", layers=(16,), epochs=3, batch_size=16, patience=0,
                       learning_rate=1e-2, compute="sparse", refit=True)
  m = train.train_and_evaluate(config, tmp_path / "run", progress=lambda _: None,
                               problem=train.build_problem(config, dataset, split))
  assert m["refit"] and paths == ["sparse", "sparse"]
  assert np.isfinite(m["test_rmse"])


def _csr_problem(config, dataset, split):
  """build_problem with both row sources held as device CSR (tiny fits dense)."""
  problem = train.build_problem(config, dataset, split)
  def as_csr(data, ratings):
    csr = sparse.ratings_to_csr(ratings, config.orientation)
    return dataclasses.replace(data, source=sparse.make_row_source(csr, force="csr"))
  return dataclasses.replace(problem, fit_data=as_csr(problem.fit_data, split.train),
                             full_data=as_csr(problem.full_data,
                                              split.train.concat(split.valid)))


@pytest.mark.parametrize("orientation", ["item", "user"])
def test_sparse_evaluate_matches_dense(tiny, orientation):
  dataset, split = tiny
  config = make_config("autorec", orientation=orientation, layers=(12, 6),
                       eval_batch_size=8)
  problem = _csr_problem(config, dataset, split)
  model = build_model(config, problem.n_cols)
  params = sa.init_state(model, train.make_optimizer(config, 1), problem.n_cols, 3).params
  t = problem.test
  args = (params, problem.full_data, t.blocks, t.target, t.fb_mask, t.fb_value)
  want_pred, want = train.make_evaluate(model, config, problem.rating_scale)(*args)
  got_pred, got = sa.make_evaluate(model, config, problem.rating_scale)(*args)
  np.testing.assert_allclose(got_pred, want_pred, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(got["sse"], want["sse"], rtol=1e-4)
  assert sa.block_entry_bound(problem.full_data.source, t.blocks) <= int(
      problem.full_data.source.indptr[-1])


def test_sparse_row_data_shares_the_csr_arrays(tiny):
  dataset, split = tiny
  config = make_config("autorec")
  problem = _csr_problem(config, dataset, split)
  sd = sa.from_row_data(problem.fit_data, 16)
  assert sd.indices is problem.fit_data.source.indices   # no second copy
  ref = sa.from_csr(sparse.ratings_to_csr(split.train, "item"), 16)
  np.testing.assert_array_equal(sd.strata_SxNb, ref.strata_SxNb)
  assert sd.max_entries == ref.max_entries
