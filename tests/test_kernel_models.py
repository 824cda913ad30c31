"""Kernel rating models: kernelNet (sparse_fc), GLocal-K (glocal_k), L-BFGS."""

from __future__ import annotations

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import signal

from recae_jax import batching, blend, compute, engine, losses, recommend, train
from recae_jax.config import load_config, make_config
from recae_jax.data import sparse
from recae_jax.errors import UserError
from recae_jax.models import DenseInput, build_model
from recae_jax.problem import RowData, build_problem, load_split
from recae_jax.tasks import Hyper, RatingTask

SMALL = dict(layers=(16, 16), epochs=6, patience=0)


def test_kernel_layer_is_weight_times_finite_support_kernel():
  config = make_config("sparse_fc", layers=(7,))
  model = build_model(config, 9)
  assert not model.mirror and model.kernel_dim == 5
  params = model.init(jax.random.PRNGKey(0))
  assert sorted(params) == ["dec_0_bias", "dec_0_kernel", "dec_0_u", "dec_0_v",
                            "enc_0_bias", "enc_0_kernel", "enc_0_u", "enc_0_v"]
  rng = np.random.default_rng(0)  # spread u, v so some kernel values are exactly 0
  params["enc_0_u"] = jnp.asarray(rng.normal(0, 0.6, (9, 5)), jnp.float32)
  params["enc_0_v"] = jnp.asarray(rng.normal(0, 0.6, (7, 5)), jnp.float32)
  u, v = np.asarray(params["enc_0_u"]), np.asarray(params["enc_0_v"])
  k = np.maximum(0, 1 - ((u[:, None, :] - v[None, :, :]) ** 2).sum(-1))
  assert 0 < (k == 0).mean() < 1
  np.testing.assert_allclose(np.asarray(model._weight(params, "enc_0")),
                             np.asarray(params["enc_0_kernel"]) * k, atol=1e-5)
  want = 0.5 * (k ** 2).sum() + 0.5 * (np.asarray(model._kernel_values(params, "dec_0")) ** 2).sum()
  np.testing.assert_allclose(float(model.kernel_penalty(params)), want, rtol=1e-5)


def test_global_convolution_of_row_batches_is_the_whole_matrix_convolution(tiny):
  """Any batch of rows (shuffled, padded) sees exactly conv2d(R, G) at its rows."""
  _, split = tiny
  config = make_config("glocal_k", layers=(8,))
  csr = sparse.ratings_to_csr(split.train, "item")
  n_rows, n_cols = csr.shape
  data = RowData(sparse.make_row_source(csr, force="dense"), None,
                 jnp.arange(n_rows, dtype=jnp.int32), neighbours=1)
  model = build_model(config, n_cols, n_rows=n_rows)
  params = model.init(jax.random.PRNGKey(1))
  params["gconv_rowmean"] = jnp.asarray(np.random.default_rng(2).uniform(1, 5, n_rows),
                                        jnp.float32)
  dense_R = np.asarray(csr.to_dense())
  gk = np.asarray(params["gconv_rowmean"] @ params["gconv_kernel"]).reshape(3, 3)
  want = np.maximum(0, signal.correlate2d(dense_R, gk, mode="same"))
  rows = np.random.default_rng(3).permutation(n_rows)[:20].astype(np.int32)
  rows[-3:] = n_rows  # padding rows
  got = np.asarray(model.global_conv(params, data.neighbour_rows(jnp.asarray(rows))))
  np.testing.assert_allclose(got[:-3], want[rows[:-3]], rtol=1e-4, atol=1e-3)
  # the model's input goes through it: the first layer sees conv(R), not R
  x = data.inputs(jnp.asarray(rows))
  assert x.nbr_BxGxN.shape == (20, 3, n_cols)
  h = model.encode(params, x)
  h_raw = model.encode(params, DenseInput(x.x_BxN, x.m_BxN, None,
                                          jnp.zeros_like(x.nbr_BxGxN)))
  assert not np.allclose(np.asarray(h), np.asarray(h_raw))


def test_sparse_fc_sparse_path_matches_dense(tiny):
  _, split = tiny
  config = make_config("sparse_fc", layers=(12, 6), l2=0.5, kernel_l2=0.1)
  csr = sparse.ratings_to_csr(split.train, "item")
  src = sparse.make_row_source(csr, force="dense")
  model = build_model(config, csr.shape[1])
  task = RatingTask.from_config(config, model)
  assert task.kernel_l2 == 0.1
  hyper = engine.member(Hyper.from_configs([config]), 0)
  params = model.init(jax.random.PRNGKey(3))
  params = {k: (v * 300 if k.endswith(("_u", "_v")) else v) for k, v in params.items()}
  vg = jax.jit(jax.value_and_grad(lambda p, b: task.loss(p, b, hyper, None)[0]))
  rows_B = jnp.arange(16, dtype=jnp.int32)
  v, m = src.gather(rows_B)
  ld, gd = vg(params, batching.DenseBatch(v, m, None, jnp.ones(16)))
  e = batching.SparseBatcher(16, "uniform").batch(
      batching.from_csr(csr, batch_size=16, batching="uniform"), rows_B)
  ls, gs = vg(params, e)
  np.testing.assert_allclose(float(ls), float(ld), rtol=1e-5)
  for name in gd:
    np.testing.assert_allclose(np.asarray(gs[name]), np.asarray(gd[name]), rtol=1e-4,
                               atol=1e-5, err_msg=name)
  # "sum" is kernelNet's ½ Σ (r − ŷ)² + λ2·½ΣW² + λs·½ΣK²
  sse = float(task.loss(params, batching.DenseBatch(v, m, None, jnp.ones(16)), hyper,
                        None)[1][0])
  pen = 0.1 * float(model.kernel_penalty(params)) + 0.5 * float(losses.l2_penalty(params))
  np.testing.assert_allclose(float(ld), sse / 2 + pen, rtol=1e-5)


def test_lbfgs_full_batch_decreases_the_objective_every_step(tiny, tmp_path):
  dataset, split = tiny
  config = make_config("sparse_fc", **SMALL)
  res = train.train_and_evaluate(config, tmp_path, problem=build_problem(config, dataset,
                                                                          split))
  losses = [json.loads(line)["train_loss"] for line in
            (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert len(losses) == 6 and all(b < a for a, b in zip(losses, losses[1:]))
  assert res["test_rmse"] < 1.2


def test_lbfgs_restart_starts_the_memory_afresh_every_n_iterations():
  """restarting(lbfgs, 3) == lbfgs run 3 iterations at a time from a fresh
  state (the papers' scipy L-BFGS-B calls), and != one long L-BFGS run."""
  import optax
  from recae_jax import optim
  a = jnp.asarray(np.random.default_rng(0).uniform(0.1, 10, 6), jnp.float32)
  f = lambda x: jnp.sum(a * x ** 2) + jnp.sum(jnp.cos(3 * x))

  def run(tx, n, x, state=None):
    state = tx.init(x) if state is None else state
    path = []
    for _ in range(n):
      v, g = jax.value_and_grad(f)(x)
      u, state = tx.update(g, state, x, value=v, grad=g, value_fn=f)
      x = optax.apply_updates(x, u)
      path.append(x)
    return path, state

  x0 = jnp.linspace(-2, 2, 6, dtype=jnp.float32)
  got, _ = run(optim.restarting(optax.lbfgs(), 3), 7, x0)
  want, x = [], x0
  for n in (3, 3, 1):
    part, _ = run(optax.lbfgs(), n, x)
    want, x = want + part, part[-1]
  np.testing.assert_allclose(np.stack(got), np.stack(want), rtol=1e-6, atol=1e-7)
  plain, _ = run(optax.lbfgs(), 7, x0)
  assert np.abs(np.asarray(plain[-1]) - np.asarray(got[-1])).max() > 1e-4
  config = make_config("glocal_k")
  assert config.lbfgs_restart == 5
  assert isinstance(optim.make_optimizer(config, 1).init(
      {"w": jnp.zeros(2)})[0], optim.RestartState)


def test_glocal_k_pretrains_then_fine_tunes_from_the_pretrained_net(tiny, tmp_path,
                                                                    monkeypatch):
  dataset, _ = tiny
  config = make_config("glocal_k", **SMALL, pretrain_epochs=5, split="random")
  _, split = load_split(config, dataset)  # what from_workdir recomputes
  problem = build_problem(config, dataset, split)
  assert problem.fit_data.neighbours == 1
  starts = []
  real = engine.init_state
  monkeypatch.setattr(engine, "init_state", lambda *a, **kw: starts.append(
      a[4] if len(a) > 4 else kw.get("start")) or real(*a, **kw))
  res = train.train_and_evaluate(config, tmp_path, problem=problem)
  pre = json.loads((tmp_path / "pretrain" / "metrics.json").read_text())
  assert json.loads((tmp_path / "pretrain" / "config.json").read_text())["model"] == "sparse_fc"
  assert pre["epochs_run"] == 5 and res["epochs_run"] == 6
  start = [s for s in starts if s is not None][-1]
  # the fine-tuning starts from the pre-trained (selected) parameters ...
  from recae_jax import restore
  pre_config = load_config(tmp_path / "pretrain" / "config.json")
  assert pre_config == make_config("sparse_fc", **dict(SMALL, epochs=5), split="random",
                                   lbfgs_restart=5, row_bias=True)
  _, pre_params, _ = restore.restore_params(pre_config, tmp_path / "pretrain", problem)
  for name in pre_params:
    np.testing.assert_array_equal(np.asarray(start[name]), np.asarray(pre_params[name]))
  # ... with the row means of their clipped reconstruction of the fit matrix
  model = build_model(pre_config, problem.n_cols, n_rows=problem.fit_data.n_rows)
  rows = jnp.arange(problem.fit_data.n_rows, dtype=jnp.int32)
  out = model.apply(engine.member(pre_params, 0), problem.fit_data.inputs(rows))
  np.testing.assert_allclose(np.asarray(start["gconv_rowmean"][0]),
                             np.asarray(jnp.clip(out, 1, 5).mean(1)), rtol=1e-5)
  assert np.isfinite(res["test_rmse"]) and res["test_rmse"] < 1.3
  # every inference path opens the workdir
  rec = recommend.from_workdir(tmp_path, dataset=dataset)
  pairs = split.test
  pred, _ = rec.predict(dataset.user_ids[pairs.users[:50]], dataset.item_ids[pairs.items[:50]])
  assert np.all((np.asarray(pred) >= 1) & (np.asarray(pred) <= 5))
  emb = recommend.item_embeddings(rec)
  assert emb.shape[0] == dataset.ratings.n_items and np.isfinite(emb).all()
  assert len(recommend.similar_items(rec, emb, int(dataset.item_ids[0]), 5)[1]) == 5
  assert np.isfinite(recommend.user_embeddings(rec)).all()


def test_glocal_k_refuses_the_sparse_path_before_pre_training(tiny, tmp_path):
  # Its global convolution reads each row's dense neighbouring rows: on sparse
  # entries the fine-tuning once ran without it (test RMSE 1.19 on u1).
  dataset, split = tiny
  config = make_config("glocal_k", **SMALL, pretrain_epochs=2, compute="sparse")
  problem = build_problem(config, dataset, split)
  with pytest.raises(UserError, match="--compute=sparse does not support GLocal-K"):
    train.train_and_evaluate(config, tmp_path / "run", problem=problem)
  assert not (tmp_path / "run" / "pretrain").exists()
  auto = dataclasses.replace(config, compute="auto")
  _, info = compute.choose(auto, problem.fit_data, problem.n_cols, 32)
  assert info["compute"] == "dense" and "GLocal-K" in info["reason"]


@pytest.mark.parametrize("kw, flag", [
    (dict(kernel_dim=3), "--kernel_dim"),
    (dict(kernel_l2=0.1), "--kernel_l2"),
    (dict(model="sparse_fc", global_kernel_size=5), "--global_kernel_size"),
    (dict(model="glocal_k", global_kernel_size=4), "--global_kernel_size"),
    (dict(model="glocal_k", refit=True), "--refit"),
    (dict(optimizer="lbfgs"), "--learning_rate"),
    (dict(optimizer="lbfgs", learning_rate=1.0, grad_clip=1.0), "--grad_clip"),
    (dict(model="sparse_fc", tied=True), "--tied"),
    (dict(lbfgs_restart=5), "--lbfgs_restart"),
    (dict(optimizer="lbfgs", learning_rate=1.0, lbfgs_restart=-1), "--lbfgs_restart"),
])
def test_options_that_do_not_apply_are_one_line_errors(kw, flag):
  with pytest.raises(UserError, match=flag) as e:
    make_config(None, **kw)
  assert "\n" not in str(e.value)


def test_row_bias_adds_each_rows_own_unregularised_bias_to_its_outputs():
  config = make_config("sparse_fc", layers=(6,), row_bias=True)
  model = build_model(config, 9, n_rows=5)
  params = model.init(jax.random.PRNGKey(0))
  np.testing.assert_array_equal(np.asarray(params["row_bias"]), np.zeros(5))
  x = jnp.asarray(np.random.default_rng(0).integers(0, 6, (4, 9)), jnp.float32)
  rows = jnp.asarray([3, 0, 4, 5], jnp.int32)  # the last one is a padding row
  plain = model.apply(params, DenseInput(x, x > 0, rows_B=rows))
  biased = dict(params, row_bias=jnp.arange(1.0, 6.0))
  out = model.apply(biased, DenseInput(x, x > 0, rows_B=rows))
  np.testing.assert_allclose(np.asarray(out - plain),
                             np.broadcast_to(np.array([[4.0], [1.0], [5.0], [0.0]]), (4, 9)),
                             atol=1e-5)
  # a new row (no index) has no bias of its own; the bias is not in the L2 penalty
  np.testing.assert_array_equal(np.asarray(model.apply(biased, DenseInput(x, x > 0))),
                                np.asarray(model.apply(params, DenseInput(x, x > 0))))
  assert float(losses.l2_penalty(biased)) == float(losses.l2_penalty(params))
  with pytest.raises(UserError, match="--row_bias: applies to --model=autoencoder"):
    make_config("mult_vae", row_bias=True)


def test_row_bias_is_learned_in_both_glocal_k_stages_and_scores_new_users(
    tiny, tmp_path):
  dataset, _ = tiny
  config = make_config("glocal_k", **SMALL, pretrain_epochs=4, split="random",
                       row_bias=True)
  _, split = load_split(config, dataset)
  problem = build_problem(config, dataset, split)
  with pytest.raises(UserError, match="--compute=sparse does not support a per-row "
                     "output bias"):
    compute.check(make_config("sparse_fc", row_bias=True, compute="sparse"))
  res = train.train_and_evaluate(config, tmp_path, problem=problem)
  assert np.isfinite(res["test_rmse"])
  from recae_jax import restore
  pre_config = load_config(tmp_path / "pretrain" / "config.json")
  assert pre_config.model == "sparse_fc" and pre_config.row_bias
  _, pre_params, _ = restore.restore_params(pre_config, tmp_path / "pretrain", problem)
  rec = recommend.from_workdir(tmp_path, dataset=dataset)
  b_pre, b = np.asarray(pre_params["row_bias"][0]), np.asarray(rec.params["row_bias"][0])
  assert b.shape == (problem.fit_data.n_rows,)
  assert np.abs(b_pre).max() > 1e-3 and np.abs(b - b_pre).max() > 1e-4  # both stages move it
  # a new user's ridge fit on the item codes adds each item's bias: raising
  # the bias of an item they did not rate raises its score by as much
  items, values = np.array([0, 1, 2], np.int32), np.array([5.0, 3.0, 4.0], np.float32)
  before, _ = recommend._new_user_scores(rec, items, values)
  rec.params = dict(rec.params, row_bias=rec.params["row_bias"].at[:, 7].add(0.5))
  after, _ = recommend._new_user_scores(rec, items, values)
  np.testing.assert_allclose(after - before, np.eye(len(before))[7] * 0.5, atol=1e-4)


def test_lbfgs_with_minibatches_is_refused(tiny, tmp_path):
  dataset, split = tiny
  config = make_config("sparse_fc", **dict(SMALL, batch_size=8))
  with pytest.raises(UserError, match="--optimizer=lbfgs is full-batch.*--batch_size"):
    train.train_and_evaluate(config, tmp_path, problem=build_problem(config, dataset, split))


def test_a_kernel_model_is_a_blend_component(tiny, tmp_path, monkeypatch):
  from recae_jax import config as config_lib
  dataset, _ = tiny
  monkeypatch.setitem(config_lib.PRESETS, "sparse_fc",
                      dict(config_lib.PRESETS["sparse_fc"], **SMALL))  # a quick component
  config = make_config("autorec", layers=(8,), epochs=3, patience=0, split="random",
                       blend_kernel="sparse_fc")
  assert config.is_blend and config.blend_member().blend_kernel == ()
  res = blend.train_and_evaluate_blend(config, tmp_path, dataset=dataset)
  comp = json.loads((tmp_path / "members" / "sparse_fc" / "metrics.json").read_text())
  assert set(res["blend_weights"]) == {"intercept", "autoencoder_mean", "sparse_fc"}
  assert res["components"]["sparse_fc"]["test_rmse"] == pytest.approx(comp["test_rmse"],
                                                                      abs=1e-4)
  # the least-squares blend is at least as good on validation as either part
  assert res["valid_rmse"] <= min(c["valid_rmse"] for c in res["components"].values()) + 1e-6
  assert res["blend_cv_valid_rmse"] > res["valid_rmse"]  # held-out pairs: no in-sample fit
  with pytest.raises(UserError, match="--blend_kernel"):
    make_config("autorec", blend_kernel="autorec")
  # Several kernel seeds: one engine run whose members are averaged, and
  # support-weighted blending; seed 0 is the component above.
  config2 = dataclasses.replace(config, blend_kernel_seeds=(2,), blend_support=True)
  res2 = blend.train_and_evaluate_blend(config2, tmp_path / "x2", dataset=dataset)
  kdir = tmp_path / "x2" / "members" / "sparse_fc_x2"
  s0, s1 = (np.load(kdir / s / "test_pred.npy") for s in ("s0", "s1"))
  np.testing.assert_allclose(s0, np.load(tmp_path / "members" / "sparse_fc" / "test_pred.npy"),
                             atol=1e-5)
  assert np.abs(s0 - s1).max() > 1e-3  # the seeds differ
  _, split = load_split(config, dataset)
  want = np.sqrt(np.mean(((s0 + s1) / 2 - split.test.ratings) ** 2))
  assert res2["components"]["sparse_fc"]["test_rmse"] == pytest.approx(want, abs=1e-4)
  assert set(res2["blend_support_weights"]["sparse_fc"]) == {
      "mean", "log_user_support", "log_item_support"}
  assert set(res2["blend_weights"]) == set(res["blend_weights"])
  # --resume reuses finished components only if they were trained as asked now
  lines = []
  again = blend.train_and_evaluate_blend(config, tmp_path, dataset=dataset, resume=True,
                                         progress=lines.append)
  assert again["test_rmse"] == res["test_rmse"]
  assert sum("finished earlier" in line for line in lines) == 2  # members, sparse_fc
  monkeypatch.setitem(config_lib.PRESETS, "sparse_fc",
                      dict(config_lib.PRESETS["sparse_fc"], kernel_l2=0.01))
  with pytest.raises(UserError, match=r"sparse_fc component in .*members/sparse_fc was "
                     r"trained with a different config \(kernel_l2\)"):
    blend.train_and_evaluate_blend(config, tmp_path, dataset=dataset, resume=True)


def test_several_kernel_components_and_their_seed_counts(tmp_path):
  config = make_config("best", blend_kernel="sparse_fc,glocal_k", blend_kernel_seeds="5,1")
  assert config.kernel_components == [("sparse_fc", 5), ("glocal_k", 1)]
  assert make_config("autorec", blend_kernel="sparse_fc,glocal_k",
                     blend_kernel_seeds=2).kernel_components == [("sparse_fc", 2), ("glocal_k", 2)]
  # a config.json written when both were scalars still loads
  old = dict(config.to_json(), blend_kernel="sparse_fc", blend_kernel_seeds=5)
  (tmp_path / "config.json").write_text(json.dumps(old))
  assert load_config(tmp_path / "config.json").kernel_components == [("sparse_fc", 5)]
  with pytest.raises(UserError, match="--blend_kernel_seeds: gives 3 counts for 2"):
    make_config("autorec", blend_kernel="sparse_fc,glocal_k", blend_kernel_seeds="1,2,3")
  with pytest.raises(UserError, match="--blend_kernel: names a model twice"):
    make_config("autorec", blend_kernel="sparse_fc,sparse_fc")


def test_blend_option_errors():
  with pytest.raises(UserError, match="--blend_kernel_seeds.*--blend_kernel"):
    make_config("autorec", blend_kernel_seeds=3)
  with pytest.raises(UserError, match="--blend_kernel_seeds: must be >= 1"):
    make_config("autorec", blend_kernel="sparse_fc", blend_kernel_seeds=0)
  with pytest.raises(UserError, match="--blend_support: weights the components of a blend"):
    make_config("autorec", blend_support=True)
  with pytest.raises(UserError, match="--blend_rating_stats: .*also set --blend_support"):
    make_config("autorec", ensemble=2, blend_rating_stats=True)
  with pytest.raises(UserError, match="--blend_ridge: penalises the weights of a blend"):
    make_config("autorec", blend_ridge="0,0.01")
  with pytest.raises(UserError, match="--blend_ridge: must be >= 0"):
    make_config("autorec", ensemble=2, blend_ridge="-1")
  with pytest.raises(UserError, match="--blend_crossfit: repeats the components of a blend"):
    make_config("autorec", blend_crossfit=2)
  with pytest.raises(UserError, match="--blend_crossfit: must be >= 1"):
    make_config("autorec", ensemble=2, blend_crossfit=0)
  with pytest.raises(UserError, match="--valid_draw: must be >= 0"):
    make_config("autorec", valid_draw=-1)


def test_support_weighted_blend_recovers_weights_that_vary_with_support():
  rng = np.random.default_rng(0)
  n = 2000
  preds = rng.uniform(1, 5, (n, 2))
  meta = np.column_stack([np.ones(n), rng.standard_normal((n, 2))])
  w = np.array([[0.2, 0.0, 0.1],      # intercept's [mean, user, item] terms
                [0.6, 0.1, -0.05],    # component 1
                [0.3, -0.1, 0.05]])   # component 2
  target = meta @ w[0] + (preds[:, 0] * (meta @ w[1])) + (preds[:, 1] * (meta @ w[2]))
  coef = blend.fit_blend(preds, target, meta)
  np.testing.assert_allclose(coef, w.ravel(), atol=1e-8)
  np.testing.assert_allclose(blend.apply_blend(coef, preds, meta), target, atol=1e-8)
  # held-out error: exact weights stay exact; noise makes it worse than in-sample
  assert blend.cross_validated_rmse(preds, target, meta, (-10, 10)) < 1e-8
  noisy = target + rng.standard_normal(n)
  insample = np.sqrt(np.mean((blend.apply_blend(blend.fit_blend(preds, noisy, meta), preds,
                                                meta) - noisy) ** 2))
  cv = blend.cross_validated_rmse(preds, noisy, meta, (-10, 10))
  assert insample < cv < insample * 1.01
  assert blend.cross_validated_rmse(preds, noisy, meta, (2.0, 3.0)) > cv  # clipped like the blend
  # ridge: the closed form with ridge x pairs on every weight but the F
  # intercepts, shrinking the weights as it grows; a huge one leaves the mean
  x = blend._design(preds, meta)
  lam = 0.01
  pen = np.r_[np.zeros(3), np.full(6, lam * n)]
  np.testing.assert_allclose(blend.fit_blend(preds, noisy, meta, ridge=lam),
                             np.linalg.solve(x.T @ x + np.diag(pen), x.T @ noisy), atol=1e-10)
  norms = [np.abs(blend.fit_blend(preds, noisy, meta, ridge=r)[3:]).sum()
           for r in (0.0, 0.01, 1.0)]
  assert norms[0] > norms[1] > norms[2]
  flat = blend.apply_blend(blend.fit_blend(preds, noisy, ridge=1e9), preds)
  np.testing.assert_allclose(flat, noisy.mean(), atol=1e-4)
  # the grid's choice: none when the weights are exact, some when components
  # are many, noisy and collinear with few pairs to fit them on
  assert blend.choose_ridge(preds, target, meta, (-10, 10), (0.0, 0.1))[0] == 0.0
  few = rng.uniform(1, 5, 60)[:, None] + 0.3 * rng.standard_normal((60, 12))
  y = few.mean(1) + rng.standard_normal(60)
  chosen, cvs = blend.choose_ridge(few, y, None, (-10, 10), (0.0, 0.01, 0.1))
  assert chosen > 0 and cvs[chosen] < cvs[0.0]
  # without features it is the plain intercept + weights least squares
  plain = blend.fit_blend(preds, target)
  x = np.column_stack([np.ones(n), preds])
  np.testing.assert_allclose(plain, np.linalg.lstsq(x, target, rcond=None)[0], atol=1e-8)
  # the features of held-out pairs use the fitting pairs' centring
  from recae_jax.data.types import Ratings
  fit = Ratings(np.array([0, 0, 1]), np.array([0, 1, 1]), np.ones(3), np.zeros(3, int), 2, 2)
  pairs = Ratings(np.array([0, 1]), np.array([1, 0]), np.ones(2), np.zeros(2, int), 2, 2)
  m, center = blend.support_features(fit, pairs)
  np.testing.assert_allclose(m.mean(0), [1, 0, 0], atol=1e-12)
  m2, _ = blend.support_features(fit, pairs, center)
  np.testing.assert_array_equal(m, m2)


def test_rating_stat_features_are_each_pairs_user_and_item_mean_and_std():
  from recae_jax.data.types import Ratings
  # user 0 rated items 0, 1 (2, 4); user 1 rated item 1 (5); user 2 and item 2: none
  fit = Ratings(np.array([0, 0, 1]), np.array([0, 1, 1]), np.array([2.0, 4.0, 5.0]),
                np.zeros(3, int), 3, 3)
  pairs = Ratings(np.array([0, 1, 2]), np.array([1, 0, 2]), np.ones(3), np.zeros(3, int), 3, 3)
  raw = np.stack([np.zeros(6), np.ones(6)])  # no centring: the raw features
  m, _ = blend.support_features(fit, pairs, raw, rating_stats=True)
  assert m.shape == (3, 1 + 6) and len(blend.SUPPORT_TERMS + blend.RATING_STAT_TERMS) == 7
  every = np.array([2.0, 4.0, 5.0])
  np.testing.assert_allclose(m[:, 3], [3.0, 5.0, every.mean()])      # user mean
  np.testing.assert_allclose(m[:, 4], [4.5, 2.0, every.mean()])      # item mean
  np.testing.assert_allclose(m[:, 5], [1.0, 0.0, every.std()])       # user std
  np.testing.assert_allclose(m[:, 6], [0.5, 0.0, every.std()])       # item std
  # without them: the support features alone, unchanged
  np.testing.assert_array_equal(blend.support_features(fit, pairs, raw[:, :2])[0], m[:, :3])
