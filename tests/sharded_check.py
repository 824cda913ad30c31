"""Run by test_sharding.py in a subprocess with 8 fake CPU devices.

Trains one epoch single-device and on each mesh from the same state and
batch order; prints the max parameter difference per mesh as JSON.
"""

import os

os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"

import json  # noqa: E402
import sys  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(__file__))
from conftest import low_rank_ratings  # noqa: E402
from recae_jax import sharding, train  # noqa: E402
from recae_jax.config import make_config  # noqa: E402
from recae_jax.models import build_model  # noqa: E402


def one_epoch(cfg, problem, mesh):
  model = build_model(cfg, problem.n_cols)
  tx = train.make_optimizer(cfg, 4)
  data = problem.fit_data
  state = train.init_state(model, tx, data, 0)
  if mesh is not None:
    data = sharding.replicate(mesh, data)
    state = sharding.shard_state(mesh, state)
  epoch = train.make_train_epoch(model, tx, cfg, cfg.batch_size, mesh)
  for _ in range(2):
    state, m = epoch(state, data)
  evaluate = train.make_evaluate(model, cfg, (1.0, 5.0), mesh)
  t = problem.test
  _, sums = evaluate(state.params, data, t.blocks, t.target, t.fb_mask, t.fb_value)
  specs = {k: str(v.sharding.spec) for k, v in state.params.items()
           if hasattr(v.sharding, "spec")}
  return jax.device_get(state.params), float(m["loss"]), float(sums["sse"]), specs


def main():
  assert jax.device_count() == 8, jax.devices()
  ds, split = low_rank_ratings(n_users=200, n_items=96)  # 96 items, 200 users
  out = {}
  for orientation in ("item", "user"):
    cfg = make_config("autorec", orientation=orientation, layers=(24, 8), batch_size=16,
                      eval_batch_size=32, learning_rate=1e-2, dropout=0.0)
    problem = train.build_problem(cfg, ds, split)
    ref, ref_loss, ref_sse, _ = one_epoch(cfg, problem, None)
    for dp, mp in ((8, 1), (4, 2), (2, 4)):
      mesh = sharding.make_mesh(dp, mp)
      params, loss, sse, specs = one_epoch(cfg, problem, mesh)
      diff = max(float(np.max(np.abs(params[k] - ref[k]))) for k in ref)
      out[f"{orientation}_{dp}x{mp}"] = {
          "max_param_diff": diff, "loss_diff": abs(loss - ref_loss),
          "sse_rel_diff": abs(sse - ref_sse) / ref_sse, "specs": specs}
  print(json.dumps(out))


if __name__ == "__main__":
  main()
