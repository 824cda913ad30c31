r"""Score a file of (user, item) pairs with a trained model, in original ids.

  python experiments/predict.py --workdir=runs/best_u1 --pairs=pairs.csv --out=pred.csv

PAIRS is a CSV (or TSV) with `user` and `item` columns in the dataset's
original ids. OUT has the same rows in the same order plus `prediction` and
`fallback`: pairs the model cannot score (an unknown id, or a user or item
with no training rating) get the item's training mean, else the user's, else
the global mean (top-N models: NaN), with fallback=true; the count is
printed. Any workdir works: a run, a sweep or ensemble (members averaged), a
top-N run (scores, not ratings). Bad input: one line on stderr, exit 2.
"""

import json
import pathlib

from absl import app, flags
import pandas as pd

from recae_jax import recommend
from recae_jax import workdir as wd
from recae_jax.errors import UserError, run_main

flags.DEFINE_string("workdir", None, "a trained run's directory")
flags.DEFINE_string("pairs", None, "CSV/TSV with user,item columns (original ids)")
flags.DEFINE_string("out", None, "output CSV: the pairs + prediction, fallback")
FLAGS = flags.FLAGS


def read_pairs(path: str) -> pd.DataFrame:
  p = pathlib.Path(path)
  if not p.is_file():
    raise UserError(f"--pairs: missing file {p}")
  sep = "\t" if p.suffix.lower() in (".tsv", ".tab") else ","
  try:
    df = pd.read_csv(p, sep=sep, dtype=str, keep_default_na=False)
  except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as e:
    raise UserError(f"--pairs: {p} is not a readable CSV: {str(e).splitlines()[0]}") from None
  missing = [c for c in ("user", "item") if c not in df.columns]
  if missing:
    raise UserError(f"--pairs: {p} has no {' or '.join(missing)} column (columns: "
                    f"{', '.join(map(str, df.columns)) or 'none'}); the header must name "
                    "user and item")
  return df


@run_main
def main(argv):
  for name in ("workdir", "pairs", "out"):
    if not getattr(FLAGS, name):
      raise UserError(f"--{name} is required")
  df = read_pairs(FLAGS.pairs)
  out = pathlib.Path(FLAGS.out)
  try:  # before any work
    wd.ensure_writable(out.parent if str(out.parent) else ".")
  except UserError:
    raise UserError(f"--out: cannot write {out} (its folder {out.parent} is not "
                    "writable); choose another --out") from None
  rec = recommend.from_workdir(FLAGS.workdir)
  pred, fallback = rec.predict(df["user"], df["item"])
  df["prediction"] = pred
  df["fallback"] = fallback
  with wd.atomic_path(out, ".csv") as tmp:  # a failure keeps an old OUT intact
    df.to_csv(tmp, index=False)
  print(json.dumps({"pairs": len(df), "fallback": int(fallback.sum()), "out": str(out),
                    "kind": rec.kind}))


if __name__ == "__main__":
  app.run(main)
