"""Run under 8 fake CPU devices (see test_sharding.py): trains one epoch
single-device and sharded, on the dense and the sparse path, for a lone run
and for members (a sweep), and prints the differences as JSON."""

import json
import os
import sys

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                           + " --xla_force_host_platform_device_count=8").strip()

import jax  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(__file__))
from conftest import low_rank_ratings  # noqa: E402
from recae_jax import compute, engine, optim, sharding  # noqa: E402
from recae_jax.config import make_config  # noqa: E402
from recae_jax.models import build_model  # noqa: E402
from recae_jax.problem import build_problem  # noqa: E402
from recae_jax.tasks import Hyper, RatingTask  # noqa: E402


def one_epoch(cfg, problem, mesh, configs):
  task = RatingTask.from_config(cfg, build_model(cfg, problem.n_cols, members=configs),
                                configs)
  tx = optim.make_optimizer(cfg, 4)
  rows = problem.fit_data
  state = engine.init_state(task, tx, [c.seed for c in configs], 0)
  if mesh is not None:
    rows = sharding.replicate(mesh, rows)
    state = sharding.shard_state(mesh, state)
  batcher, _ = compute.choose(cfg, rows, problem.n_cols, cfg.batch_size, mesh, configs)
  data = batcher.data(rows)
  epoch = engine.make_epoch(task, tx, batcher)
  hyper = Hyper.from_configs(configs)
  for _ in range(2):
    state, m = epoch(state, data, hyper)
  evaluate = engine.make_evaluate(task, cfg.compute, (1.0, 5.0), mesh)
  _, sums = evaluate(state.params, rows, problem.test)
  specs = {k: str(v.sharding.spec) for k, v in state.params.items()
           if hasattr(v.sharding, "spec")}
  return (jax.device_get(state.params), np.asarray(m["loss"]), np.asarray(sums["sse"]),
          specs)


def main():
  assert jax.device_count() == 8, jax.devices()
  ds, split = low_rank_ratings(n_users=200, n_items=96)  # 96 items, 200 users
  out = {}
  cases = [(o, c, k) for o in ("item", "user") for c in ("dense", "sparse")
           for k in (1, 2)]
  for orientation, compute_, k in cases:
    cfg = make_config("autorec", orientation=orientation, layers=(24, 8), batch_size=16,
                      eval_batch_size=32, learning_rate=1e-2, dropout=0.0,
                      compute=compute_)
    configs = tuple(make_config(None, **{**cfg.to_json(), "l2": l2, "seed": s})
                    for l2, s in [(0.0, 0), (1e-2, 3)][:k])
    problem = build_problem(cfg, ds, split)
    ref, ref_loss, ref_sse, _ = one_epoch(cfg, problem, None, configs)
    meshes = ((8, 1), (4, 2), (2, 4)) if compute_ == "dense" else ((8, 1), (2, 1))
    for dp, mp in meshes:
      mesh = sharding.make_mesh(dp, mp)
      params, loss, sse, specs = one_epoch(cfg, problem, mesh, configs)
      diff = max(float(np.max(np.abs(params[n] - ref[n]))) for n in ref)
      out[f"{orientation}_{compute_}_k{k}_{dp}x{mp}"] = {
          "max_param_diff": diff, "loss_diff": float(np.max(np.abs(loss - ref_loss))),
          "sse_rel_diff": float(np.max(np.abs(sse - ref_sse) / ref_sse)), "specs": specs}
  print(json.dumps(out))


if __name__ == "__main__":
  main()
