r"""Paired comparison of runs on the same test set: A against each other run.

  python experiments/compare.py runs/autorec runs/best
  python experiments/compare.py runs/topn/ease runs/topn/mult_vae --out=cmp.json
  python experiments/compare.py runs/folds/ease runs/folds/mult_vae   # two --user_folds runs: all users

Rating runs (test_pred.npy): RMSE and MAE; top-N runs (test_per_user.npz):
NDCG@k and Recall@k. For each metric: diff (B minus A), a paired bootstrap
95% CI over users (--n_bootstrap resamples, --seed) and a Wilcoxon
signed-rank p-value; the two runs' values and n_users. JSON on stdout (and
in --out). Runs on different test sets, a rating run with a top-N run, or an
unfinished workdir: one line on stderr, exit status 2.
"""

import json
import sys

from absl import app, flags

from recae_jax import compare
from recae_jax import workdir as wd
from recae_jax.errors import UserError, run_main

flags.DEFINE_integer("n_bootstrap", 2000, "bootstrap resamples of the test users")
flags.DEFINE_integer("seed", 0, "seed of the bootstrap draws")
flags.DEFINE_list("metrics", [], "keep only these metrics (e.g. test_ndcg@100,test_rmse)")
flags.DEFINE_string("out", None, "also write the JSON here")
FLAGS = flags.FLAGS
_DIRS: list = []


@run_main
def _main(argv):
  del argv
  out = compare.compare_workdirs(_DIRS, FLAGS.n_bootstrap, FLAGS.seed, FLAGS.metrics)
  if FLAGS.out:
    wd.write_json(FLAGS.out, out)
  json.dump(out, sys.stdout, indent=2, sort_keys=True)
  print()


def main(argv):
  _DIRS[:] = argv[1:]  # the workdirs are positional: DIR_A DIR_B [DIR_C ...]
  return _main(argv[:1])


if __name__ == "__main__":
  app.run(main)
