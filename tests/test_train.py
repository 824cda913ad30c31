"""The engine: losses, compile-once epochs, learning, resume, NaN stop."""

import dataclasses
import json
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from recae_jax import blend, engine, impute, losses, optim, train
from recae_jax.batching import DenseBatcher
from recae_jax.config import make_config
from recae_jax.errors import UserError
from recae_jax.models import AutoEncoder, DenseInput, build_model, encode
from recae_jax.problem import build_problem, load_split
from recae_jax.tasks import Hyper, RatingTask


def _quiet(_):
  pass


def test_masked_mse_matches_numpy():
  rng = np.random.default_rng(0)
  p, t = rng.normal(size=(5, 7)), rng.normal(size=(5, 7))
  m = rng.random((5, 7)) < 0.4
  w = np.array([1, 1, 1, 0, 1], np.float32)
  mw = m * w[:, None]
  expect = np.sum(mw * (p - t) ** 2) / max(1, mw.sum())
  got = losses.masked_mse(jnp.asarray(p), jnp.asarray(t), jnp.asarray(m), jnp.asarray(w))
  np.testing.assert_allclose(float(got), expect, rtol=1e-5)
  # an all-missing batch has loss 0, not NaN
  assert float(losses.masked_mse(jnp.ones((2, 3)), jnp.zeros((2, 3)),
                                 jnp.zeros((2, 3), bool))) == 0.0


def test_l2_penalty_counts_kernels_only():
  params = {"enc_0_kernel": jnp.full((2, 3), 2.0), "enc_0_bias": jnp.full((3,), 9.0)}
  assert float(losses.l2_penalty(params)) == pytest.approx(0.5 * 6 * 4)


def test_accumulate_forever_sums_all_gradients():
  tx = optim.accumulate_forever()
  state = tx.init({"w": jnp.zeros(2)})
  out = []
  for g in ([1.0, 2.0], [3.0, 4.0], [5.0, 6.0]):
    upd, state = tx.update({"w": jnp.asarray(g)}, state)
    out.append(np.asarray(upd["w"]))
  np.testing.assert_allclose(out, [[1, 2], [4, 6], [9, 12]])


def test_model_shapes_tied_side_and_encoder():
  x = jnp.ones((4, 30))
  side = jnp.ones((4, 5))
  untied = AutoEncoder(n_outputs=30, layers=(8, 4), n_side=5)
  tied = AutoEncoder(n_outputs=30, layers=(8, 4), n_side=5, tied=True)
  p_u = untied.init(jax.random.PRNGKey(0))
  p_t = tied.init(jax.random.PRNGKey(0))
  assert p_u["enc_0_kernel"].shape == (35, 8)  # side features enter the input only
  assert p_u["dec_1_kernel"].shape == (8, 30)
  assert "dec_1_kernel" not in p_t and p_t["dec_1_bias"].shape == (30,)
  assert tied.apply(p_t, DenseInput(x, x != 0, side)).shape == (4, 30)
  # the outputs at pairs (the sparse path's last layer) are the full outputs' entries
  full = untied.apply(p_u, DenseInput(x, x != 0, side))
  rows, cols = jnp.array([0, 3, 3]), jnp.array([29, 0, 7])
  np.testing.assert_allclose(untied.apply(p_u, DenseInput(x, x != 0, side), at=(rows, cols)),
                             full[rows, cols], rtol=1e-5)
  assert encode(untied, p_u, x, side).shape == (4, 4)


def test_epoch_compiles_once_with_ragged_last_batch(tiny):
  ds, split = tiny
  cfg = make_config("autorec", layers=(16,), batch_size=7, epochs=3)
  problem = build_problem(cfg, ds, split)
  n_rows = int(problem.fit_data.train_rows.shape[0])
  assert n_rows % 7, "the test needs a ragged last batch"
  task = RatingTask.from_config(cfg, build_model(cfg, problem.n_cols))
  tx = optim.make_optimizer(cfg, steps_per_epoch=-(-n_rows // 7))
  epoch_fn = engine.make_epoch(task, tx, DenseBatcher(7))
  state = engine.init_state(task, tx, [0], 0)
  hyper = Hyper.from_configs([cfg])
  before = engine.TRACE_COUNTS["train_epoch"]
  losses_seen = []
  for _ in range(4):
    state, m = epoch_fn(state, problem.fit_data, hyper)
    losses_seen.append(float(m["loss"][0]))
  assert engine.TRACE_COUNTS["train_epoch"] - before == 1
  assert int(state.step) == 4 * -(-n_rows // 7)
  assert losses_seen[-1] < losses_seen[0]


@pytest.mark.parametrize("orientation", ["item", "user"])
def test_train_and_evaluate_beats_global_mean(tiny, tmp_path, orientation):
  ds, split = tiny
  cfg = make_config("autorec", orientation=orientation, layers=(32,), l2=1e-3,
                    learning_rate=1e-2, batch_size=16, epochs=60, patience=0)
  res = train.train_and_evaluate(cfg, tmp_path, progress=_quiet,
                                 problem=build_problem(cfg, ds, split))
  train_r = split.train.concat(split.valid).ratings
  baseline = np.sqrt(np.mean((split.test.ratings - train_r.mean()) ** 2))
  assert res["test_rmse"] < 0.9 * baseline, (res["test_rmse"], baseline)
  assert res["n_test"] == len(split.test)
  assert 1 <= res["best_epoch"] <= 60
  for name in ("config.json", "metrics.json", "metrics.jsonl", "plots/loss.png"):
    assert (tmp_path / name).exists(), name
  rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert [r["epoch"] for r in rows] == list(range(1, 61))
  assert res["peak_host_rss_mb"] > 10  # memory is reported with the metrics
  assert "device_peak_bytes" in res
  # the selected epoch is the one with the lowest validation RMSE
  assert res["best_epoch"] == min(rows, key=lambda r: r["valid_rmse"])["epoch"]


def test_fallback_pairs_are_counted(tiny, tmp_path):
  ds, split = tiny
  # make user 0 and item 0 unseen in training
  keep = (split.train.users != 0) & (split.train.items != 0)
  keep_v = (split.valid.users != 0) & (split.valid.items != 0)
  split = dataclasses.replace(split, train=split.train.subset(keep),
                              valid=split.valid.subset(keep_v))
  expect = int(np.sum((split.test.users == 0) | (split.test.items == 0)))
  assert expect > 0
  cfg = make_config("autorec", layers=(8,), epochs=2, batch_size=16)
  res = train.train_and_evaluate(cfg, tmp_path, progress=_quiet,
                                 problem=build_problem(cfg, ds, split))
  assert res["n_test_fallback"] == expect
  assert np.isfinite(res["test_rmse"])


class _Crash(Exception):
  pass


def test_resume_after_crash_matches_uninterrupted_run(tiny, tmp_path):
  ds, split = tiny
  cfg = make_config("autorec", layers=(16,), batch_size=16, epochs=8,
                    checkpoint_every=3, learning_rate=1e-2, input_dropout=0.1)
  problem = build_problem(cfg, ds, split)
  full = train.train_and_evaluate(cfg, tmp_path / "a", progress=_quiet, problem=problem)

  def crash_at_5(line):
    if line.startswith("epoch    5/"):
      raise _Crash()

  with pytest.raises(_Crash):
    train.train_and_evaluate(cfg, tmp_path / "b", progress=crash_at_5, problem=problem)
  with pytest.raises(UserError, match="--resume"):
    train.train_and_evaluate(cfg, tmp_path / "b", progress=_quiet, problem=problem)
  lines = []
  resumed = train.train_and_evaluate(cfg, tmp_path / "b", resume=True,
                                     progress=lines.append, problem=problem)
  assert lines[0].startswith("resumed from epoch 3")
  for key in ("test_rmse", "test_mae", "best_epoch", "best_valid_rmse"):
    assert resumed[key] == full[key], key
  hist = [json.loads(x)["epoch"] for x in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
  assert hist == list(range(1, 9))


def test_resume_refuses_a_different_config(tiny, tmp_path):
  ds, split = tiny
  cfg = make_config("autorec", layers=(8,), epochs=2, batch_size=16)
  train.train_and_evaluate(cfg, tmp_path, progress=_quiet,
                           problem=build_problem(cfg, ds, split))
  other = dataclasses.replace(cfg, layers=(9,))
  with pytest.raises(UserError, match="different config.*layers"):
    train.train_and_evaluate(other, tmp_path, resume=True, progress=_quiet,
                             problem=build_problem(other, ds, split))


def test_nan_stops_training_and_keeps_last_checkpoint(tiny, tmp_path):
  ds, split = tiny
  cfg = make_config("autorec", layers=(8,), epochs=2, batch_size=16, checkpoint_every=1)
  problem = build_problem(cfg, ds, split)
  train.train_and_evaluate(cfg, tmp_path, progress=_quiet, problem=problem)
  # Poison the training data, then continue: epoch 3 must stop the run.
  src = problem.fit_data.source
  bad = problem.fit_data.replace(source=src.replace(values_RxN=src.values_RxN.at[0, :].set(jnp.nan)))
  problem = dataclasses.replace(problem, fit_data=bad)
  more = dataclasses.replace(cfg, epochs=4)
  with pytest.raises(train.TrainingDiverged,
                     match="epoch 3.*non-finite parameters: .*enc_0_kernel.*last good checkpoint: epoch 2"):
    train.train_and_evaluate(more, tmp_path, resume=True, progress=_quiet, problem=problem)
  from recae_jax.checkpoint import Checkpoints
  assert Checkpoints(tmp_path / "checkpoints").steps()[-1] == 2


def test_optimizers_and_schedules_build():
  params = {"w": jnp.ones(3)}
  for opt in ("adam", "adamw", "rmsprop", "sgd", "momentum"):
    for sched in ("constant", "step", "cosine"):
      cfg = make_config(None, optimizer=opt, schedule=sched, decay_epochs=2,
                        weight_decay=0.1, grad_clip=1.0)
      tx = optim.make_optimizer(cfg, steps_per_epoch=5)
      upd, _ = tx.update({"w": jnp.ones(3)}, tx.init(params), params)
      assert np.all(np.isfinite(np.asarray(upd["w"])))


def test_train_script_bad_input_exits_2(tmp_path):
  for args in (["--preset=nope"], ["--batch_size=0"], ["--optimizer=adagrad"],
               ["--layers=5,-1"], ["--activation=swish"], ["stray_word"]):
    proc = subprocess.run([sys.executable, "experiments/train.py",
                           f"--workdir={tmp_path}", *args], capture_output=True, text=True)
    assert proc.returncode == 2, (args, proc.stderr)
    assert "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr


@pytest.mark.realdata
def test_train_script_on_ml100k_u1(data_dir, tmp_path):
  """The README's main job, shortened: I-AutoRec on u1 beats RMSE 0.95."""
  proc = subprocess.run(
      [sys.executable, "experiments/train.py", "--preset=autorec", "--dataset=ml-100k",
       "--split=u1", f"--data_dir={data_dir}", "--epochs=40", "--checkpoint_every=20",
       f"--workdir={tmp_path}"], capture_output=True, text=True)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert "ETA" in proc.stdout and "test RMSE" in proc.stdout
  m = json.loads((tmp_path / "metrics.json").read_text())
  assert m["n_train"] == 80000 and m["n_test"] == 20000
  assert m["n_fit"] + m["n_valid"] == 80000 and m["n_valid"] > 0
  assert m["test_rmse"] < 0.95, m["test_rmse"]
  cfg = json.loads((tmp_path / "config.json").read_text())
  assert cfg["epochs"] == 40 and cfg["layers"] == [500]
  # a second run into the same workdir without --resume is refused, cleanly
  again = subprocess.run(
      [sys.executable, "experiments/train.py", "--preset=autorec", f"--data_dir={data_dir}",
       "--epochs=40", f"--workdir={tmp_path}"], capture_output=True, text=True)
  assert again.returncode == 2 and "--resume" in again.stderr
  assert "Traceback" not in again.stderr


def _run(tiny, tmp_path, name, **kw):
  ds, split = tiny
  cfg = make_config("autorec", layers=(32,), l2=1e-3, learning_rate=1e-2,
                    batch_size=16, **kw)
  return train.train_and_evaluate(cfg, tmp_path / name, progress=_quiet,
                                  problem=build_problem(cfg, ds, split))


def test_sparse_compute_matches_dense_with_the_same_batches(tiny, tmp_path):
  dense = _run(tiny, tmp_path, "dense", epochs=15)
  sparse_ = _run(tiny, tmp_path, "sparse", epochs=15, compute="sparse",
                 sparse_batching="uniform")
  assert sparse_["compute"] == "sparse"
  assert sparse_["test_rmse"] == pytest.approx(dense["test_rmse"], abs=1e-4)


def test_sparse_stratified_and_auto_compute_learn(tiny, tmp_path):
  _, split = tiny
  train_r = split.train.concat(split.valid).ratings
  baseline = np.sqrt(np.mean((split.test.ratings - train_r.mean()) ** 2))
  strat = _run(tiny, tmp_path, "strat", epochs=60, compute="sparse")
  assert strat["test_rmse"] < 0.9 * baseline
  auto = _run(tiny, tmp_path, "auto", epochs=2, compute="auto")
  assert auto["compute"] == auto["compute_info"]["compute"] in ("dense", "sparse")
  assert auto["compute_info"]["dense_epoch_seconds"] > 0


def test_bfloat16_compute_trains_close_to_float32(tiny, tmp_path):
  f32 = _run(tiny, tmp_path, "f32", epochs=20)
  bf16 = _run(tiny, tmp_path, "bf16", epochs=20, compute_dtype="bfloat16")
  cfg = json.loads((tmp_path / "bf16" / "config.json").read_text())
  assert cfg["compute_dtype"] == "bfloat16"
  assert abs(bf16["test_rmse"] - f32["test_rmse"]) < 0.05, (bf16, f32)
  # the matmuls really run in bfloat16 (XLA on CPU may keep excess precision)
  model = AutoEncoder(n_outputs=6, layers=(4,), compute_dtype="bfloat16")
  x = jnp.ones((2, 6))
  params = model.init(jax.random.PRNGKey(0))
  assert "bf16" in str(jax.make_jaxpr(lambda p: model.apply(p, DenseInput(x, x != 0)))(params))


def test_workdir_records_provenance(tiny, tmp_path):
  _run(tiny, tmp_path, "run", epochs=1)
  prov = json.loads((tmp_path / "run" / "provenance.json").read_text())
  assert prov["versions"]["jax"] == jax.__version__
  assert prov["device_kind"] and prov["device_count"] >= 1
  assert prov["git_commit"] is None or len(prov["git_commit"]) == 40


def test_full_disk_is_refused_before_training(tiny, tmp_path, monkeypatch):
  import collections
  import shutil
  usage = collections.namedtuple("usage", "total used free")
  monkeypatch.setattr(shutil, "disk_usage", lambda _: usage(10**6, 10**6 - 1000, 1000))
  with pytest.raises(UserError, match="MiB free but checkpoints need"):
    _run(tiny, tmp_path, "full", epochs=3)
  assert not (tmp_path / "full" / "metrics.jsonl").exists()


def test_ensemble_blends_members_on_validation(tmp_path):
  from conftest import low_rank_ratings
  ds, _ = low_rank_ratings(n_users=150, n_items=80)
  r = ds.ratings
  csv = tmp_path / "ratings.csv"
  csv.write_text("user,item,rating,timestamp\n" + "".join(
      f"{u + 1},{i + 1},{int(x)},{t}\n"
      for u, i, x, t in zip(r.users, r.items, r.ratings, r.timestamps)))
  cfg = make_config("autorec", dataset=str(csv), split="random", test_fraction=0.2,
                    valid_fraction=0.1, layers=(16,), learning_rate=1e-2, batch_size=16,
                    epochs=8, ensemble=2, blend_uautorec=True)
  res = blend.train_and_evaluate_blend(cfg, tmp_path / "ens", progress=_quiet)
  assert set(res["components"]) == {"autoencoder_mean", "uautorec"}
  assert len(res["member_test_rmse"]) == 2 and np.isfinite(res["test_rmse"])
  # the blend is fitted on validation, so it is no worse there than either part
  for part in res["components"].values():
    assert res["valid_rmse"] <= part["valid_rmse"] + 1e-6
  for name in ("m0", "m1", "uautorec"):
    assert (tmp_path / "ens" / "members" / name / "test_pred.npy").exists()
  # a ridge grid re-blends the finished components (their configs do not
  # carry it) and keeps the penalty with the lowest cross-validated RMSE
  grid = dataclasses.replace(cfg, blend_ridge=(0.0, 0.01, 100.0))
  ridged = blend.train_and_evaluate_blend(grid, tmp_path / "ens", resume=True, progress=_quiet)
  assert ridged["member_test_rmse"] == res["member_test_rmse"]
  cv = ridged["blend_ridge_cv"]
  assert set(cv) == {"0", "0.01", "100"} and cv["0"] == pytest.approx(res["blend_cv_valid_rmse"])
  assert ridged["blend_cv_valid_rmse"] == min(cv.values()) == cv[f"{ridged['blend_ridge']:g}"]


def test_crossfitted_blend_fits_on_every_draw_and_averages_test_predictions(tmp_path):
  from conftest import low_rank_ratings
  ds, _ = low_rank_ratings(n_users=120, n_items=60)
  cfg = make_config("autorec", split="random", test_fraction=0.2, valid_fraction=0.1,
                    layers=(8,), learning_rate=1e-2, batch_size=16, epochs=4, ensemble=2,
                    blend_uautorec=True, blend_crossfit=2)
  res = blend.train_and_evaluate_blend(cfg, tmp_path / "xf", progress=_quiet, dataset=ds)
  root = tmp_path / "xf"
  runs = [root / d / m for d in ("members", "members_draw1") for m in ("m0", "m1", "uautorec")]
  metrics = [json.loads((r / "metrics.json").read_text()) for r in runs]
  assert res["blend_crossfit"] == 2
  assert res["n_valid"] == metrics[0]["n_valid"] + metrics[3]["n_valid"] > metrics[0]["n_valid"]
  assert json.loads((runs[3] / "config.json").read_text())["valid_draw"] == 1
  # no weights on the support: the blend is intercept + weights . mean over the draws
  test = [np.load(r / "test_pred.npy") for r in runs]
  mean_ae, mean_u = (test[0] + test[1] + test[3] + test[4]) / 4, (test[2] + test[5]) / 2
  w = res["blend_weights"]
  expect = np.clip(w["intercept"] + w["autoencoder_mean"] * mean_ae + w["uautorec"] * mean_u,
                   1, 5)
  np.testing.assert_allclose(np.load(root / "test_pred.npy"), expect, rtol=1e-5, atol=1e-5)
  # draw 0 is the plain blend's own: re-blended alone it is the plain blend
  one = blend.train_and_evaluate_blend(dataclasses.replace(cfg, blend_crossfit=1), root,
                                       resume=True, progress=_quiet, dataset=ds)
  plain = blend.train_and_evaluate_blend(dataclasses.replace(cfg, blend_crossfit=1),
                                         tmp_path / "plain", progress=_quiet, dataset=ds)
  assert one["test_rmse"] == plain["test_rmse"] and one["n_valid"] == metrics[0]["n_valid"]
  # support and rating-statistic features re-blend the same components: every
  # weight gets a term per feature, and validation in-sample can only improve
  feats = blend.train_and_evaluate_blend(dataclasses.replace(cfg, blend_support=True),
                                         root, resume=True, progress=_quiet, dataset=ds)
  stats = blend.train_and_evaluate_blend(
      dataclasses.replace(cfg, blend_support=True, blend_rating_stats=True), root,
      resume=True, progress=_quiet, dataset=ds)
  assert set(stats["blend_support_weights"]["uautorec"]) == set(
      blend.SUPPORT_TERMS + blend.RATING_STAT_TERMS)
  assert stats["valid_rmse"] < feats["valid_rmse"] < res["valid_rmse"]
  assert stats["member_test_rmse"] == res["member_test_rmse"]
  # a neighbourhood component is chosen per draw, and metrics.json says which
  knn = blend.train_and_evaluate_blend(dataclasses.replace(cfg, blend_knn=True), root,
                                       resume=True, progress=_quiet, dataset=ds)
  assert knn["member_test_rmse"] == res["member_test_rmse"] and "knn" in knn["components"]
  assert len(knn["knn_choices"]) == 2 and knn["knn_choices"][0] == knn["knn_choice"]
  for r, choice in enumerate(knn["knn_choices"]):  # what draw r's own validation picks
    s = load_split(dataclasses.replace(cfg, valid_draw=r), ds)[1]
    own = impute.best_neighbourhood(s.train, s.valid, s.train.concat(s.valid), s.test,
                                    ds.rating_scale, progress=None)["choice"]
    assert choice == own


def _events(run_dir) -> dict:
  """{tag: [(step, value), ...]} read back from the event files of one run."""
  import struct
  from tensorboardX.proto import event_pb2
  out = {}
  for path in sorted(run_dir.glob("events.out.tfevents.*")):
    data = path.read_bytes()
    pos = 0
    while pos < len(data):  # TFRecord: len u64, crc u32, payload, crc u32
      (n,) = struct.unpack("<Q", data[pos:pos + 8])
      event = event_pb2.Event.FromString(data[pos + 12:pos + 12 + n])
      pos += 12 + n + 4
      for v in event.summary.value:
        out.setdefault(v.tag, []).append((event.step, v.simple_value))
  return out


def test_tensorboard_events_per_run_and_per_sweep_member(tiny, tmp_path):
  from recae_jax import sweep
  ds, split = tiny
  cfg = make_config("autorec", layers=(8,), batch_size=32, epochs=3, tensorboard=True,
                    learning_rate=2e-3)
  train.train_and_evaluate(cfg, tmp_path / "run", progress=_quiet,
                           problem=build_problem(cfg, ds, split))
  ev = _events(tmp_path / "run" / "tb")
  rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
  assert [s for s, _ in ev["train_loss"]] == [1, 2, 3]
  np.testing.assert_allclose([v for _, v in ev["valid_rmse"]],
                             [r["valid_rmse"] for r in rows], rtol=1e-6)
  assert all(v == pytest.approx(2e-3) for _, v in ev["learning_rate"])
  assert len(ev["seconds"]) == 3
  configs = sweep.member_configs(cfg, sweep.parse_sweep("learning_rate=1e-3,3e-3"))
  sweep.run_sweep(cfg, configs, tmp_path / "sweep", progress=_quiet,
                  problem=build_problem(cfg, ds, split))
  for k, lr in enumerate((1e-3, 3e-3)):  # one run per member
    ev = _events(tmp_path / "sweep" / "tb" / f"k{k:02d}")
    assert len(ev["train_loss"]) == 3
    assert all(v == pytest.approx(lr) for _, v in ev["learning_rate"])
