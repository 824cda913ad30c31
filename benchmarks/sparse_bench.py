r"""Dense vs sparse-aware epochs on real data, timed interleaved in one run.

  python benchmarks/sparse_bench.py --dataset=ml-100k --split=u1

For each preset in --presets (I-AutoRec and U-AutoRec by default) and each
batching of the sparse path, times both paths' compiled epochs alternately
and reports the medians, the ratio (sparse_speedup = dense / sparse) and what
`--compute=auto` (`compute.choose`, which runs this same timing) would pick.
Timing is `compute.time_dense_and_sparse`; the batching is the config's
`sparse_batching`. Prints one JSON object.
"""

import json

from absl import app, flags
import jax

from recae_jax import compute
from recae_jax.config import make_config
from recae_jax.errors import run_main
from recae_jax.problem import build_problem, load_split

flags.DEFINE_string("dataset", "ml-100k", "dataset name or path")
flags.DEFINE_string("data_dir", None, "dataset directory")
flags.DEFINE_string("split", "u1", "split")
flags.DEFINE_string("presets", "autorec,uautorec", "presets to compare")
flags.DEFINE_string("batchings", "stratified,uniform", "sparse batchings")
flags.DEFINE_integer("repeats", 5, "timed epochs per path (after a warm-up)")
FLAGS = flags.FLAGS


@run_main
def main(argv):
  del argv
  out = {"dataset": FLAGS.dataset, "split": FLAGS.split,
         "device": jax.devices()[0].device_kind, "results": []}
  for preset in FLAGS.presets.split(","):
    config = make_config(preset, dataset=FLAGS.dataset, data_dir=FLAGS.data_dir,
                         split=FLAGS.split)
    dataset, split = load_split(config)
    problem = build_problem(config, dataset, split)
    for batching in FLAGS.batchings.split(","):
      cfg = make_config(preset, dataset=FLAGS.dataset, data_dir=FLAGS.data_dir,
                        split=FLAGS.split, sparse_batching=batching)
      r = compute.time_dense_and_sparse(cfg, problem.fit_data, problem.n_cols,
                                        repeats=FLAGS.repeats)
      r.update(preset=preset, orientation=config.orientation, rows=int(
          problem.fit_data.train_rows.shape[0]), cols=problem.n_cols,
               choice="sparse" if r["sparse_speedup"] > 1 else "dense")
      out["results"].append(r)
  print(json.dumps(out, indent=2))


if __name__ == "__main__":
  app.run(main)
