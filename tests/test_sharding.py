"""Sharded training equals single-device training (8 fake CPU devices).

XLA_FLAGS must be set before jax starts, so the check runs in a subprocess.
"""

import json
import pathlib
import subprocess
import sys

import pytest

from conftest import script_env
from recae_jax import sharding
from recae_jax.errors import UserError


def test_sharded_steps_match_single_device():
  script = pathlib.Path(__file__).with_name("sharded_check.py")
  proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                        timeout=600, env=script_env())
  assert proc.returncode == 0, proc.stderr[-3000:]
  results = json.loads(proc.stdout.strip().splitlines()[-1])
  meshes = {"dense": ("8x1", "4x2", "2x4"), "sparse": ("8x1", "2x1")}
  assert set(results) == {f"{o}_{c}_k{k}_{m}" for o in ("item", "user") for c in meshes
                          for k in (1, 2) for m in meshes[c]}
  for name, r in results.items():
    assert r["max_param_diff"] < 1e-4, (name, r)
    assert r["loss_diff"] < 1e-4, (name, r)
    assert r["sse_rel_diff"] < 1e-4, (name, r)
    if not name.endswith("x1"):  # the wide layers really are split over 'model'
      assert "model" in r["specs"]["enc_0_kernel"], (name, r["specs"])
      assert "model" in r["specs"]["dec_1_kernel"], (name, r["specs"])


def test_mesh_errors_name_the_numbers():
  with pytest.raises(UserError, match="needs 16 devices but only 1"):
    sharding.make_mesh(16, 1)
  assert sharding.make_mesh(0, 1) is None  # one device: no mesh, plain jit
  with pytest.raises(UserError, match=">= 1"):
    sharding.make_mesh(1, 0)


def test_sparse_path_refuses_model_parallel_with_the_fix(tiny):
  import types
  from recae_jax import compute
  from recae_jax.config import make_config
  from recae_jax.problem import build_problem
  ds, split = tiny
  cfg = make_config("autorec", compute="sparse")
  problem = build_problem(cfg, ds, split)
  mesh = types.SimpleNamespace(shape={"data": 2, "model": 2})
  with pytest.raises(UserError, match="--compute=sparse needs replicated parameters.*"
                     "--model_parallel=1"):
    compute.choose(cfg, problem.fit_data, problem.n_cols, 16, mesh)
  auto = make_config("autorec", compute="auto")
  b, info = compute.choose(auto, problem.fit_data, problem.n_cols, 16, mesh)
  assert info["compute"] == "dense" and "model_parallel" in info["reason"]
