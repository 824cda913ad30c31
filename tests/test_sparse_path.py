"""The sparse path: same loss and gradients as dense, similar accuracy."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from recae_jax import batching, compute, engine, losses, train
from recae_jax.batching import DenseBatch
from recae_jax.config import make_config
from recae_jax.data import sparse
from recae_jax.models import DenseInput, build_model
from recae_jax.problem import build_problem
from recae_jax.tasks import Hyper, RatingTask


def _dense_loss(model, config, params, v_BxN, m_BxN, w_B):
  """The masked loss written out on the full B x N output (no dropout)."""
  x = v_BxN / config.rating_divisor
  pred = model.apply(params, DenseInput(x, m_BxN))
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
  sd = batching.from_csr(csr, batch_size=16, batching="uniform")
  model = build_model(config, csr.shape[1])
  task = RatingTask.from_config(config, model)
  hyper = engine.member(Hyper.from_configs([config]), 0)
  params = model.init(jax.random.PRNGKey(3))
  dense_vg = jax.jit(jax.value_and_grad(
      lambda p, v, m, w: _dense_loss(model, config, p, v, m, w)))
  task_vg = jax.jit(jax.value_and_grad(lambda p, b: task.loss(p, b, hyper, None)[0]))
  sparse_b = batching.SparseBatcher(16, "uniform")
  rng = np.random.default_rng(0)
  for _ in range(2):  # random batches, with padding rows and empty rows
    rows = rng.choice(csr.shape[0], 16, replace=False).astype(np.int32)
    rows[rng.random(16) < 0.3] = csr.shape[0]
    rows_B = jnp.asarray(rows)
    v, m = src.gather(rows_B)
    w = (rows_B < csr.shape[0]).astype(jnp.float32)
    ld, gd = dense_vg(params, v, m, w)
    e = sparse_b.batch(sd, rows_B)
    assert float(e.valid_T.sum()) == float(m.sum())  # T bounds the batch
    ls, gs = task_vg(params, e)
    lt, gt = task_vg(params, DenseBatch(v, m, None, w))  # the task's dense form
    for got_l, got_g in ((ls, gs), (lt, gt)):
      np.testing.assert_allclose(float(got_l), float(ld), rtol=1e-5)
      for name in gd:
        np.testing.assert_allclose(np.asarray(got_g[name]), np.asarray(gd[name]),
                                   rtol=1e-4, atol=1e-6, err_msg=name)


def test_stratified_batches_cover_rows_within_bound(tiny):
  dataset, split = tiny
  csr = sparse.ratings_to_csr(split.train, "item")
  sd = batching.from_csr(csr, batch_size=16, batching="stratified")
  rows = np.asarray(batching.SparseBatcher(16).epoch_rows(sd, jax.random.PRNGKey(1), True))
  real = rows[rows < sd.n_rows]
  np.testing.assert_array_equal(np.sort(real), np.flatnonzero(csr.row_lengths() > 0))
  totals = np.append(csr.row_lengths(), 0)[rows].sum(1)
  assert totals.max() <= sd.max_entries
  # Split over 4 devices, each quarter of every batch fits the per-device bound.
  sd4 = batching.from_csr(csr, batch_size=16, batching="stratified", shards=4)
  quarters = np.append(csr.row_lengths(), 0)[rows].reshape(len(rows), 4, 4).sum(2)
  assert quarters.max() <= sd4.max_entries < sd.max_entries


def test_sparse_training_matches_dense_accuracy(tiny, tmp_path):
  dataset, split = tiny
  results = {}
  for compute_ in ("dense", "sparse"):
    config = make_config("autorec", layers=(32,), epochs=40, batch_size=16, patience=0,
                         l2=1e-3, learning_rate=1e-2, compute=compute_)
    results[compute_] = train.train_and_evaluate(
        config, tmp_path / compute_, progress=lambda _: None,
        problem=build_problem(config, dataset, split))
  dense, sparse_ = results["dense"], results["sparse"]
  assert sparse_["compute"] == "sparse" and dense["compute"] == "dense"
  mean = float(np.mean(split.train.ratings))
  baseline = float(np.sqrt(np.mean((split.test.ratings - mean) ** 2)))
  assert sparse_["test_rmse"] < 0.9 * baseline, (sparse_, dense, baseline)
  assert abs(sparse_["test_rmse"] - dense["test_rmse"]) < 0.05


def test_choose_compute_and_unsupported(tiny):
  dataset, split = tiny
  config = make_config("autorec", layers=(8,), batch_size=32, compute="auto")
  problem = build_problem(config, dataset, split)
  b, out = compute.choose(config, problem.fit_data, problem.n_cols, 32)
  assert out["compute"] in ("dense", "sparse") and b.compute == out["compute"]
  assert out["dense_epoch_seconds"] > 0 and out["sparse_epoch_seconds"] > 0
  tied = dataclasses.replace(config, tied=True)
  b, out = compute.choose(tied, problem.fit_data, problem.n_cols, 32)
  assert out["compute"] == "dense" and "tied" in out["reason"]
  with pytest.raises(compute.UserError, match="--compute=sparse does not support tied"):
    compute.choose(dataclasses.replace(tied, compute="sparse"), problem.fit_data,
                   problem.n_cols, 32)


def test_refit_stays_on_the_sparse_path(tiny, tmp_path, monkeypatch):
  # The refit on train+valid must not fall back to the dense batcher: at
  # ML-20M/Netflix scale that would be the slow path (and a dense batch).
  dataset, split = tiny
  real = engine.make_epoch
  built = []
  monkeypatch.setattr(engine, "make_epoch", lambda task, tx, b, **k: built.append(
      b.compute) or real(task, tx, b, **k))
  config = make_config("autorec", layers=(16,), epochs=3, batch_size=16, patience=0,
                       learning_rate=1e-2, compute="sparse", refit=True)
  m = train.train_and_evaluate(config, tmp_path / "run", progress=lambda _: None,
                               problem=build_problem(config, dataset, split))
  assert m["refit"] and built == ["sparse", "sparse"]
  assert np.isfinite(m["test_rmse"])


def _csr_problem(config, dataset, split):
  """build_problem with both row sources held as device CSR (tiny fits dense)."""
  problem = build_problem(config, dataset, split)
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
  task = RatingTask.from_config(config, build_model(config, problem.n_cols))
  params = engine.stack([task.init(jax.random.PRNGKey(k)) for k in (3, 4)])
  t = problem.test
  want_pred, want = engine.make_evaluate(task, "dense", problem.rating_scale)(
      params, problem.full_data, t)
  got_pred, got = engine.make_evaluate(task, "sparse", problem.rating_scale)(
      params, problem.full_data, t)
  np.testing.assert_allclose(got_pred, want_pred, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(got["sse"], want["sse"], rtol=1e-4)
  assert batching.block_entry_bound(problem.full_data.source, t.blocks.rows_KxB) <= int(
      problem.full_data.source.indptr[-1])


def test_sparse_row_data_shares_the_csr_arrays(tiny):
  dataset, split = tiny
  config = make_config("autorec")
  problem = _csr_problem(config, dataset, split)
  sd = batching.from_row_data(problem.fit_data, 16)
  assert sd.indices is problem.fit_data.source.indices   # no second copy
  ref = batching.from_csr(sparse.ratings_to_csr(split.train, "item"), 16)
  np.testing.assert_array_equal(sd.strata_SxNb, ref.strata_SxNb)
  assert sd.max_entries == ref.max_entries


@pytest.mark.parametrize("preset,optimizer,batch_size", [
    ("autorec", "adam", 16), ("autorec", "momentum", 16), ("autorec", "lbfgs", 4096),
    ("sparse_fc", "adam", 16)])  # kernelNet: W ⊙ K(U, V), K held transposed too
def test_output_kernel_held_as_rows_changes_nothing(tiny, monkeypatch, preset, optimizer,
                                                    batch_size):
  # Inside a sparse epoch the output kernel and its optimizer state are held
  # as [N, H] rows (no transpose per step); what the epoch returns must be
  # what the [H, N] layout gives, in the [H, N] layout.
  dataset, split = tiny
  config = make_config(preset, layers=(12,) if preset == "autorec" else (12, 12),
                       batch_size=batch_size, l2=1e-3,
                       learning_rate=1.0 if optimizer == "lbfgs" else 1e-2,
                       optimizer=optimizer, compute="sparse",
                       lbfgs_restart=5 if optimizer == "lbfgs" else 0)
  problem = build_problem(config, dataset, split)

  def two_epochs():
    run = compute.make_run(config, problem.fit_data, problem.n_cols, batch_size, "sparse")
    shapes = jax.tree.map(jnp.shape, (run.state.params, run.state.opt_state))
    run.step(), run.step()
    assert jax.tree.map(jnp.shape, (run.state.params, run.state.opt_state)) == shapes
    return run

  held = two_epochs()
  assert engine._output_rows_layout(held.task, held.batcher)[1] == "dec_0_kernel"
  monkeypatch.setattr(type(held.task.model), "holding_output_rows", lambda self: None)
  plain = two_epochs()
  assert engine._output_rows_layout(plain.task, plain.batcher)[1] is None
  # The same sums; XLA fuses them differently (1-ulp differences). L-BFGS's
  # inner products over the whole kernel, and the kernel's gradient to U,
  # also sum it in the other order (float rounding, which Adam scales up).
  reordered = optimizer == "lbfgs" or preset == "sparse_fc"
  tol = dict(rtol=1e-5, atol=1e-6) if reordered else dict(rtol=1e-6, atol=1e-7)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, **tol),
               (held.state.params, held.state.opt_state),
               (plain.state.params, plain.state.opt_state))
