"""--memory_budget_mb: the estimate's exact parts, and errors that name the
numbers and a fix that works."""

from __future__ import annotations

import dataclasses
import pathlib
import subprocess
import sys

import jax
import pytest

from recae_jax import engine, memory, optim
from recae_jax.problem import build_problem
from recae_jax.tasks import RatingTask
from recae_jax.config import make_config
from recae_jax.errors import UserError
from recae_jax.models import build_model

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _estimate(tiny, config, compute="dense", entries=None):
  dataset, split = tiny
  problem = build_problem(config, dataset, split)
  model = build_model(config, problem.n_cols)
  task = RatingTask.from_config(config, model)
  tx = optim.make_optimizer(config, 1)
  state = engine.init_state(task, tx, [0], 0)
  abstract = jax.eval_shape(lambda: engine.init_state(task, tx, [0], 0))
  est = memory.estimate(config, model, abstract, problem, config.batch_size, compute, entries)
  return est, state


def test_exact_parts_match_the_allocated_state(tiny):
  config = make_config("autorec", layers=(24,), batch_size=16)
  est, state = _estimate(tiny, config)
  assert est["state_mb"] * memory.MB == memory.tree_bytes(state)
  assert est["gradients_and_best_mb"] * memory.MB == 2 * memory.tree_bytes(state.params)
  parts = est["state_mb"] + est["gradients_and_best_mb"] + est["data_mb"]
  assert est["total_mb"] == pytest.approx(parts + max(est["batch_mb"], est["eval_mb"]))
  sparse_est, _ = _estimate(tiny, dataclasses.replace(config, compute="sparse"),
                            "sparse", entries=500)
  # The entries, the output kernel and Adam's two moments of it held as
  # [N, H] rows through the epoch, and the two [N, 24] gradient accumulators.
  n = state.params["dec_0_kernel"].shape[-1]
  assert sparse_est["batch_mb"] * memory.MB == pytest.approx(
      500 * 16 + 3 * n * 24 * 4 + 2 * n * 24 * 4)


def test_batch_part_is_linear_in_the_batch_size(tiny):
  config = make_config("autorec", orientation="user", layers=(24,), batch_size=16)
  a, _ = _estimate(tiny, config)
  b, _ = _estimate(tiny, dataclasses.replace(config, batch_size=32))
  assert b["batch_mb"] == pytest.approx(2 * a["batch_mb"])
  assert a["per_batch_row_mb"] == pytest.approx(a["batch_mb"] / 16)


def test_budget_error_names_a_batch_size_that_fits():
  # 20 MB fixed + 64 rows x 0.5 MB; a 40 MB budget leaves room for 40 rows.
  est = {"state_mb": 12.0, "gradients_and_best_mb": 6.0, "data_mb": 2.0,
         "batch_mb": 32.0, "eval_mb": 4.0, "total_mb": 52.0, "per_batch_row_mb": 0.5}
  config = make_config("autorec", batch_size=64, memory_budget_mb=40)
  with pytest.raises(UserError, match=r"--memory_budget_mb=40: this run needs about 52 MB"
                     r".*one batch 32.*lower --batch_size to 40 "):
    memory.check_budget(config, est, 64)
  memory.check_budget(dataclasses.replace(config, memory_budget_mb=52), est, 64)  # fits
  memory.check_budget(dataclasses.replace(config, memory_budget_mb=0), est, 64)   # off
  big_eval = dict(est, eval_mb=60.0, total_mb=80.0)
  with pytest.raises(UserError, match=r"lower --eval_batch_size to 170"):  # 20 / (60/512)
    memory.check_budget(config, big_eval, 64)


def test_model_alone_too_big_says_so(tiny):
  config = make_config("autorec", layers=(24,), batch_size=16, memory_budget_mb=1)
  est, _ = _estimate(tiny, make_config("autorec", layers=(4096,), batch_size=16))
  with pytest.raises(UserError, match="model and data alone exceed it"):
    memory.check_budget(config, est, 16)


def test_train_script_budget_error_exits_2_in_one_line(tmp_path):
  res = subprocess.run(
      [sys.executable, "experiments/train.py", "--preset=autorec",
       "--dataset=synthetic:300x200x6000", "--split=random", "--memory_budget_mb=1",
       f"--workdir={tmp_path / 'run'}"], cwd=ROOT, capture_output=True, text=True,
      timeout=120)
  assert res.returncode == 2
  lines = res.stderr.strip().splitlines()
  assert len(lines) == 1 and "--memory_budget_mb=1" in lines[0], res.stderr
  assert "Traceback" not in res.stderr
  assert not (tmp_path / "run" / "checkpoints").exists()
