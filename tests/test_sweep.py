"""Sweeps: a member == the same config trained alone (dropout included); ensembles; script."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import write_ratings_csv
from recae_jax import engine, optim, sweep, train
from recae_jax.batching import DenseBatcher
from recae_jax.config import make_config
from recae_jax.data import sparse
from recae_jax.errors import UserError
from recae_jax.models import build_model
from recae_jax.problem import build_problem
from recae_jax.tasks import Hyper, RatingTask


def _quiet(_):
  pass


def test_parse_sweep_grid_zip_and_errors():
  assert sweep.parse_sweep("seed=0,1;l2=1e-3,3e-3") == [
      {"seed": 0, "l2": 1e-3}, {"seed": 0, "l2": 3e-3},
      {"seed": 1, "l2": 1e-3}, {"seed": 1, "l2": 3e-3}]
  assert sweep.parse_sweep("seed=0,1;learning_rate=1e-3,2e-3", mode="zip") == [
      {"seed": 0, "learning_rate": 1e-3}, {"seed": 1, "learning_rate": 2e-3}]
  for bad in ("seed=a,1", "layers=10,20", "nonsense=1", "seed", "seed=0;seed=1", ""):
    with pytest.raises(UserError):
      sweep.parse_sweep(bad)
  with pytest.raises(UserError, match="equal lengths"):
    sweep.parse_sweep("seed=0,1;l2=1,2,3", mode="zip")


def test_member_matches_lone_run_with_shared_order(tiny):
  dataset, split = tiny
  base = make_config("autorec", orientation="user", layers=(16,), batch_size=32,
                     epochs=1)
  configs = sweep.member_configs(base, sweep.parse_sweep(
      "seed=0,3;learning_rate=1e-3,3e-3;l2=0,1e-2;dropout=0.3,0;input_dropout=0,0.2",
      mode="zip") + [{"seed": 5, "learning_rate": 2e-3, "l2": 1e-3, "dropout": 0.5}])
  problem = build_problem(base, dataset, split)
  # CSR rows, the general path (tiny would fit the dense budget).
  data = dataclasses.replace(problem.fit_data, source=sparse.make_row_source(
      sparse.ratings_to_csr(split.train, "user"), force="csr"))
  n_rows = int(data.train_rows.shape[0])
  tx = optim.make_optimizer(base, -(-n_rows // base.batch_size))
  model = build_model(base, problem.n_cols, members=tuple(configs))
  task = RatingTask.from_config(base, model, configs)
  hyper = Hyper.from_configs(configs)
  batcher = DenseBatcher(base.batch_size)
  state = engine.init_state(task, tx, [c.seed for c in configs], order_seed=0)
  state1 = jax.tree.map(jnp.copy, state)
  # side by side (vmap) and one member at a time (the CPU default)
  state, metrics = engine.make_epoch(task, tx, batcher, group_size=3)(state, data, hyper)
  state1, metrics1 = engine.make_epoch(task, tx, batcher, group_size=1)(state1, data, hyper)
  for a, b in zip(jax.tree.leaves((state, metrics)), jax.tree.leaves((state1, metrics1))):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2e-4, atol=2e-5)
  # Each member equals a lone run of its own config (its own model, task and
  # optimizer) with the sweep's batch order: dropout masks included.
  for k, cfg in enumerate(configs):
    lone_task = RatingTask.from_config(cfg, build_model(cfg, problem.n_cols))
    lone = engine.init_state(lone_task, tx, [cfg.seed], order_seed=0)
    lone, m = engine.make_epoch(lone_task, tx, batcher)(lone, data,
                                                       Hyper.from_configs([cfg]))
    got = engine.member(state1.params, k)
    for name, want in engine.member(lone.params, 0).items():
      np.testing.assert_allclose(np.asarray(got[name]), np.asarray(want),
                                 rtol=1e-6, atol=1e-7, err_msg=f"member {k} {name}")
    assert float(metrics1["loss"][k]) == pytest.approx(float(m["loss"][0]), rel=1e-6)


def test_sweep_members_match_lone_train_and_evaluate(tiny, tmp_path):
  # End to end: a member's whole history and test RMSE are the lone run's.
  dataset, split = tiny
  base = make_config("autorec", layers=(16,), batch_size=32, epochs=3,
                     learning_rate=1e-2)
  configs = sweep.member_configs(base, sweep.parse_sweep(
      "l2=0,1e-2;dropout=0.4,0", mode="zip"))
  problem = build_problem(base, dataset, split)
  sweep.run_sweep(base, configs, tmp_path / "sweep", progress=_quiet, problem=problem)
  for k, cfg in enumerate(configs):
    lone = train.train_and_evaluate(cfg, tmp_path / f"lone{k}", progress=_quiet,
                                    problem=problem)
    mdir = tmp_path / "sweep" / "members" / f"k{k:02d}"
    got = json.loads((mdir / "metrics.json").read_text())
    assert got["test_rmse"] == pytest.approx(lone["test_rmse"], abs=1e-6)
    assert got["best_epoch"] == lone["best_epoch"]
    rows = lambda d: [json.loads(x) for x in (d / "metrics.jsonl").read_text().splitlines()]
    for a, b in zip(rows(mdir), rows(tmp_path / f"lone{k}")):
      assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-6)
      assert a["valid_rmse"] == pytest.approx(b["valid_rmse"], rel=1e-6)


def test_sparse_sweep_on_the_sparse_path(tiny, tmp_path):
  dataset, split = tiny
  base = make_config("autorec", layers=(16,), batch_size=32, epochs=2,
                     compute="sparse", learning_rate=1e-2)
  configs = sweep.member_configs(base, sweep.parse_sweep("seed=0,1;l2=0,1e-2", "zip"))
  res = sweep.run_sweep(base, configs, tmp_path, progress=_quiet,
                        problem=build_problem(base, dataset, split))
  assert res["compute"] == "sparse"
  assert all(np.isfinite(res["member_test_rmse"]))


def test_sweep_resumes_from_its_checkpoint(tiny, tmp_path):
  dataset, split = tiny
  base = make_config("autorec", layers=(8,), batch_size=32, epochs=4, checkpoint_every=2,
                     learning_rate=1e-2)
  configs = sweep.member_configs(base, sweep.parse_sweep("l2=0,1e-2"))
  problem = build_problem(base, dataset, split)
  full = sweep.run_sweep(base, configs, tmp_path / "a", progress=_quiet, problem=problem)
  short = dataclasses.replace(base, epochs=2)
  sweep.run_sweep(short, sweep.member_configs(short, sweep.parse_sweep("l2=0,1e-2")),
                  tmp_path / "b", progress=_quiet, problem=problem)
  lines = []
  resumed = sweep.run_sweep(base, configs, tmp_path / "b", progress=lines.append,
                            problem=problem, resume=True)
  assert any("resumed from epoch 2" in x for x in lines)
  assert resumed["member_test_rmse"] == pytest.approx(full["member_test_rmse"], abs=1e-6)


def test_ensemble_report_is_mean_and_top_k_on_valid():
  rng = np.random.default_rng(0)
  vt, tt = rng.normal(size=50), rng.normal(size=40)
  noise = np.array([0.1, 0.5, 2.0])[:, None]
  v = vt[None] + noise * rng.normal(size=(3, 50))
  t = tt[None] + noise * rng.normal(size=(3, 40))
  rep = sweep.ensemble_report(v, t, vt, tt)
  assert rep["ensemble_test_rmse"] == pytest.approx(
      np.sqrt(np.mean((t.mean(0) - tt) ** 2)))
  k = rep["best_k"]
  members = rep["best_k_members"]
  assert members[0] == 0 and len(members) == k
  assert rep["best_k_test_rmse"] == pytest.approx(
      np.sqrt(np.mean((t[members].mean(0) - tt) ** 2)))


def test_run_sweep_writes_member_workdirs(tiny, tmp_path):
  dataset, split = tiny
  base = make_config("autorec", layers=(16,), batch_size=32, epochs=3, patience=0)
  # input_dropout/dropout members take the per-member-input path
  configs = sweep.member_configs(base, sweep.parse_sweep(
      "seed=0,1;l2=1e-3,1e-2;input_dropout=0,0.2;dropout=0,0.5", mode="zip") + [
          {"seed": 2, "l2": 3e-3, "input_dropout": 0.0, "dropout": 0.0},
          {"seed": 0, "l2": 1e-3, "input_dropout": 0.0, "dropout": 0.5}])
  problem = build_problem(base, dataset, split)
  res = sweep.run_sweep(base, configs, tmp_path, progress=_quiet, problem=problem)
  assert res["n_members"] == 4
  for k in range(4):
    d = tmp_path / "members" / f"k{k:02d}"
    m = json.loads((d / "metrics.json").read_text())
    for key in ("test_rmse", "test_mae", "best_epoch", "n_train", "n_test",
                "n_test_fallback", "train_seconds"):
      assert key in m
    assert (d / "test_pred.npy").exists() and (d / "valid_pred.npy").exists()
    assert len((d / "metrics.jsonl").read_text().splitlines()) == 3
    assert json.loads((d / "config.json").read_text())["seed"] == configs[k].seed
  preds = np.stack([np.load(tmp_path / "members" / f"k{k:02d}" / "test_pred.npy")
                    for k in range(4)])
  target = np.asarray(problem.test.target)
  assert res["ensemble_test_rmse"] == pytest.approx(
      np.sqrt(np.mean((preds.mean(0) - target) ** 2)), rel=1e-6)
  for f in ("summary.csv", "summary.md", "plots/valid_rmse.png", "metrics.json"):
    assert (tmp_path / f).exists()


def test_sweep_script_rejects_bad_sweep(tmp_path):
  for spec, word in (("seed=0,x", "integer"),):
    r = subprocess.run([sys.executable, "experiments/sweep.py", "--preset=autorec",
                        f"--sweep={spec}", f"--workdir={tmp_path / 'w'}"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and word in lines[0] and "Traceback" not in r.stderr


def test_sweep_script_writes_workdir(tiny, tmp_path):
  dataset, _ = tiny
  r = dataset.ratings
  csv = tmp_path / "ratings.csv"
  write_ratings_csv(csv, r, id_offset=0)
  out = tmp_path / "sweep"
  res = subprocess.run([sys.executable, "experiments/sweep.py", "--preset=autorec",
                        f"--dataset={csv}", "--split=random", "--layers=8",
                        "--epochs=2", "--batch_size=32", "--sweep=seed=0,1;l2=0.001",
                        f"--workdir={out}"], capture_output=True, text=True, timeout=120)
  assert res.returncode == 0, res.stderr[-2000:]
  for f in ("summary.csv", "summary.md", "plots/valid_rmse.png", "metrics.json",
            "members/k00/metrics.json", "members/k01/test_pred.npy"):
    assert (out / f).exists(), f
  assert json.loads((out / "metrics.json").read_text())["n_members"] == 2


@pytest.mark.parametrize("group_size", [1, 3])
def test_seed_ensemble_members_are_the_lone_runs_of_their_seeds(tiny, group_size):
  # Without a shared order (the blend's seed ensemble) each member draws its
  # batch order from its own seed: member k IS the lone run with seed k.
  dataset, split = tiny
  cfg = make_config("autorec", layers=(16,), batch_size=32, epochs=1, dropout=0.2)
  problem = build_problem(cfg, dataset, split)
  n_rows = int(problem.fit_data.train_rows.shape[0])
  tx = optim.make_optimizer(cfg, -(-n_rows // cfg.batch_size))
  task = RatingTask.from_config(cfg, build_model(cfg, problem.n_cols))
  seeds = [0, 1, 2]
  hyper = Hyper.from_configs([dataclasses.replace(cfg, seed=s) for s in seeds])
  epoch = engine.make_epoch(task, tx, DenseBatcher(cfg.batch_size), group_size=group_size)
  state = engine.init_state(task, tx, seeds)
  for _ in range(2):
    state, metrics = epoch(state, problem.fit_data, hyper)
  for k, seed in enumerate(seeds):
    lone = engine.init_state(task, tx, [seed], order_seed=seed)
    lone_epoch = engine.make_epoch(task, tx, DenseBatcher(cfg.batch_size))
    for _ in range(2):
      lone, m = lone_epoch(lone, problem.fit_data, Hyper.from_configs([cfg]))
    for name, want in engine.member(lone.params, 0).items():
      np.testing.assert_allclose(np.asarray(state.params[name][k]), np.asarray(want),
                                 rtol=2e-5, atol=2e-6, err_msg=f"seed {seed} {name}")
  assert len(set(np.asarray(metrics["loss"]).tolist())) == 3  # the orders differ
