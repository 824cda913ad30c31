r"""Epoch time of each rating model against I-AutoRec, measured in one run.

  PYTHONPATH=. python benchmarks/models_bench.py --dataset=ml-100k --split=u1

For each preset in --presets, builds its engine run on the split's fit rows
(`compute.make_run`, the compiled epoch the trainer uses), warms it up, then
times --repeats epochs of every preset interleaved (autorec, sparse_fc,
glocal_k, autorec, ...) so machine noise hits all alike. Reports the median
epoch seconds and `vs_autorec` = epoch time / I-AutoRec's. An "epoch" is
what the preset calls one: I-AutoRec's is a pass of Adam minibatches,
sparse_fc's and glocal_k's is one full-batch L-BFGS iteration (line search
included), so the JSON also gives the epochs each preset trains by default
(`preset_epochs`) and the resulting `train_seconds_estimate`. glocal_k's
figure is its fine-tuning epoch (its pre-training epochs are sparse_fc's).
Top-N presets (mult_vae, mult_dae, recvae, cdae) are timed the same way on
the dataset's strong-generalization protocol (their epoch is a pass over
the training users' click rows; RecVAE's is its encoder passes plus its
decoder pass), interleaved with the rating presets:

  PYTHONPATH=. python benchmarks/models_bench.py --presets=autorec,mult_vae,recvae,cdae

For the ML-20M shape on the sparse path (kernelNet layers by Adam minibatches):

  PYTHONPATH=. python benchmarks/scaling_bench.py --sizes=ml-20m --model=sparse_fc --paths=sparse

Prints one JSON object.
"""

import json
import time

from absl import app, flags
import jax
import jax.numpy as jnp
import numpy as np

from recae_jax import compute, engine, topn
from recae_jax.config import PRESETS, make_config
from recae_jax.errors import run_main
from recae_jax.problem import RowData, build_problem, load_split
from recae_jax.tasks import Hyper

flags.DEFINE_string("dataset", "ml-100k", "dataset name or path")
flags.DEFINE_string("data_dir", None, "dataset directory")
flags.DEFINE_string("split", "u1", "split")
flags.DEFINE_string("presets", "autorec,sparse_fc,glocal_k",
                    "presets to time: rating ones, and top-N ones of topn.TRAINED")
flags.DEFINE_integer("repeats", 5, "timed epochs per preset (after a warm-up)")
FLAGS = flags.FLAGS


def _topn_run(config):
  """(engine run, its rows, batch size) of a top-N preset, as topn.train_mult builds it."""
  protocol = topn.make_protocol(config)
  rows = RowData(protocol.inputs, None, protocol.train_rows)
  n_rows = int(protocol.train_rows.shape[0])
  batch = min(config.batch_size, n_rows)
  task, tx = topn.mult_task(config, protocol, -(-n_rows // batch))
  batcher, epoch = topn.epoch_of(config, task, tx, batch)
  return compute.Run(task, tx, batcher, batcher.data(rows),
                     engine.init_state(task, tx, [config.seed], config.seed),
                     Hyper.from_configs([config]), epoch), rows, batch


@run_main
def main(argv):
  del argv
  presets = FLAGS.presets.split(",")
  if "autorec" not in presets:
    presets = ["autorec"] + presets
  runs, out = {}, {"dataset": FLAGS.dataset, "split": FLAGS.split,
                   "device": jax.devices()[0].device_kind, "results": {}}
  for name in presets:
    if name in topn.TRAINED:
      config = topn.make_topn_config(name, dataset=FLAGS.dataset, data_dir=FLAGS.data_dir)
      run, rows, batch = _topn_run(config)
    else:
      config = make_config(name, dataset=FLAGS.dataset, data_dir=FLAGS.data_dir,
                           split=FLAGS.split)
      dataset, split = load_split(config)
      problem = build_problem(config, dataset, split)
      rows = problem.fit_data
      batch = min(config.batch_size, int(rows.train_rows.shape[0]))
      run = compute.make_run(config, rows, problem.n_cols, batch)
    if name == "glocal_k":  # fine-tuning starts from plausible row means
      run.state = run.state.replace(params={
          **run.state.params, "gconv_rowmean": jnp.full_like(
              run.state.params["gconv_rowmean"], 3.5)})
    t = time.perf_counter()
    compiled = run.epoch.lower(run.state, run.data, run.hyper).compile()
    compile_s = time.perf_counter() - t
    run.state, m = compiled(run.state, run.data, run.hyper)
    jax.block_until_ready(m)
    runs[name] = (run, compiled)
    out["results"][name] = {"compile_seconds": compile_s, "batch_size": batch,
                            "steps_per_epoch": -(-int(rows.train_rows.shape[0]) // batch),
                            "preset_epochs": PRESETS[name]["epochs"] + PRESETS[name].get(
                                "pretrain_epochs", 0) * (name == "glocal_k")}
  times = {name: [] for name in runs}
  for _ in range(FLAGS.repeats):
    for name, (run, compiled) in runs.items():
      t = time.perf_counter()
      run.state, m = compiled(run.state, run.data, run.hyper)
      jax.block_until_ready(m)
      times[name].append(time.perf_counter() - t)
  base = float(np.median(times["autorec"]))
  for name, r in out["results"].items():
    sec = float(np.median(times[name]))
    r.update(epoch_seconds=sec, vs_autorec=sec / base,
             train_seconds_estimate=sec * r["preset_epochs"])
  print(json.dumps(out, indent=1))


if __name__ == "__main__":
  app.run(main)
