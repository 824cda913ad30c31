r"""Top-N movie recommendations from a trained autoencoder.

  python experiments/recommend.py --workdir=runs/autorec --user=1 --k=10
  python experiments/recommend.py --workdir=runs/autorec --user=1 --json
  python experiments/recommend.py --workdir=runs/autorec --all_users --out=top10.csv

Movies the user rated in training are excluded; only movies with at least one
training rating are recommended; ranking uses the raw predicted rating, the
table shows it clipped to the rating scale. A user with no training ratings
(cold start) gets the most-rated movies, and the output says so. Bad input
(unknown user, k <= 0 or larger than the catalogue, a workdir with no
checkpoint): one line on stderr, exit status 2.
"""

import json
import sys
import time

from absl import app, flags
import pandas as pd

from recae_jax import recommend
from recae_jax.errors import UserError, run_main

flags.DEFINE_string("workdir", None, "a trained run's directory (config.json + checkpoints/)")
flags.DEFINE_string("user", None, "original user id (as in the ratings file)")
flags.DEFINE_integer("k", 10, "number of movies to recommend")
flags.DEFINE_bool("json", False, "print JSON instead of a table")
flags.DEFINE_bool("all_users", False, "recommend for every user (vectorized) and "
                  "write --out as CSV: user_id, rank, movie_id, title, predicted_rating, cold_start")
flags.DEFINE_string("out", None, "CSV path for --all_users")
flags.DEFINE_string("new_user", None, "CSV of item,rating (original item ids) of someone "
                    "not in the training data: recommend for them without retraining")
FLAGS = flags.FLAGS


@run_main
def main(argv):
  if not FLAGS.workdir:
    raise UserError("--workdir is required")
  if FLAGS.k <= 0:
    raise UserError(f"--k={FLAGS.k} must be positive")
  if sum([FLAGS.all_users, FLAGS.user is not None, FLAGS.new_user is not None]) != 1:
    raise UserError("give exactly one of --user=ID, --new_user=FILE or --all_users")
  if FLAGS.all_users and not FLAGS.out:
    raise UserError("--all_users needs --out=PATH.csv")
  rec = recommend.from_workdir(FLAGS.workdir)
  if FLAGS.all_users:
    recommend.top_n(rec, k=FLAGS.k)  # compile once, then time the real call
    t = time.perf_counter()
    recommend.top_n(rec, k=FLAGS.k)
    dt = time.perf_counter() - t
    table = recommend.top_n_frame(rec, k=FLAGS.k)
    table.to_csv(FLAGS.out, index=False)
    print(json.dumps({"users": int(rec.n_users), "k": FLAGS.k,
                      "cold_start_users": int(table["cold_start"].sum() // FLAGS.k),
                      "top_n_seconds": round(dt, 4), "out": FLAGS.out}))
    return
  if FLAGS.new_user is not None:
    return _new_user(rec)
  r = recommend.recommend(rec, FLAGS.user, FLAGS.k)
  if FLAGS.json:
    print(json.dumps(r.to_json(), indent=2))
    return
  if r.cold_start:
    print(f"note: {r.note}", file=sys.stderr)
  else:
    print(r.note)
  _print_table(rec, r.items)


def _new_user(rec):
  path = FLAGS.new_user
  try:
    ratings = pd.read_csv(path, dtype=str, keep_default_na=False)
  except FileNotFoundError:
    raise UserError(f"--new_user: missing file {path}") from None
  except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError):
    raise UserError(f"--new_user: {path} is empty or not a CSV of item,rating rows") from None
  if not {"item", "rating"} <= set(ratings.columns):
    raise UserError(f"--new_user: {path} needs an item,rating header (found "
                    f"{', '.join(ratings.columns) or 'no columns'})")
  r = recommend.recommend_new_user(rec, ratings, FLAGS.k)
  if r.n_unknown:
    print(f"warning: {r.n_unknown} of {r.n_known + r.n_unknown} rated items are not "
          "known to the model and were ignored", file=sys.stderr)
  if FLAGS.json:
    print(json.dumps(r.to_json(), indent=2))
    return
  print(f"new user ({r.n_known} known ratings), method: {r.method}; rated items excluded")
  _print_table(rec, r.items)


def _print_table(rec, items):
  """Rating models show the clipped predicted rating, top-N models their
  score (they predict no rating, so that column is empty for them)."""
  drop = "predicted_rating" if rec.is_topn else "score"
  with pd.option_context("display.max_colwidth", 60, "display.width", 120):
    print(items.drop(columns=[drop]).to_string(index=False))


if __name__ == "__main__":
  app.run(main)
