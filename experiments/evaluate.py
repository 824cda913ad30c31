r"""Re-evaluate a trained run from its checkpoint: RMSE/MAE and ranking metrics.

  python experiments/evaluate.py --workdir=runs/autorec --ks=5,10,20

Prints JSON: test RMSE/MAE of the selected parameters (same as the run's
metrics.json), and precision/recall/NDCG/hit rate/MAP@k and catalogue
coverage on the test users, where relevant = test rating >= --threshold and
each user's train/validation movies are excluded from the ranking.
"""

import json

from absl import app, flags

from recae_jax import recommend, restore
from recae_jax import workdir as wd
from recae_jax.errors import UserError, run_main

flags.DEFINE_string("workdir", None, "a trained run's directory")
flags.DEFINE_list("ks", ["10"], "ranking cut-offs")
flags.DEFINE_float("threshold", 4.0, "a held-out rating >= this is relevant")
flags.DEFINE_string("out", None, "also write the JSON here")
FLAGS = flags.FLAGS


@run_main
def main(argv):
  if not FLAGS.workdir:
    raise UserError("--workdir is required")
  try:
    ks = tuple(int(k) for k in FLAGS.ks)
  except ValueError:
    raise UserError(f"--ks: not a list of integers: {','.join(FLAGS.ks)}") from None
  if not ks or min(ks) <= 0:
    raise UserError(f"--ks: cut-offs must be positive, got {ks}")
  if restore.is_topn(FLAGS.workdir):  # a top-N run: ranking metrics only
    rec = recommend.from_workdir(FLAGS.workdir)
    out = {"workdir": FLAGS.workdir, "dataset": rec.config.dataset, "model": rec.kind,
           "ranking": recommend.evaluate(rec, ks=ks)}
    print(json.dumps(out, indent=2, sort_keys=True))
    if FLAGS.out:
      wd.write_json(FLAGS.out, out)
    return
  r = restore.load_workdir(FLAGS.workdir)
  errors = restore.test_errors(r)
  rec = recommend.from_restored(r)
  out = {"workdir": str(r.workdir), "dataset": r.config.dataset, "split": r.config.split,
         "epoch": r.meta.get("best_epoch", [None])[0], **errors,
         "ranking": recommend.evaluate(rec, ks=ks, threshold=FLAGS.threshold)}
  text = json.dumps(out, indent=2, sort_keys=True)
  if FLAGS.out:
    wd.write_json(FLAGS.out, out)
  print(text)


if __name__ == "__main__":
  app.run(main)
