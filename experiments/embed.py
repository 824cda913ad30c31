r"""Export a trained model's item and user embeddings.

  python experiments/embed.py --workdir=runs/autorec --out=runs/autorec/embeddings

Writes OUT/items.npy + OUT/items.csv (index, movie_id, title,
n_train_ratings, primary_genre; same row order) and OUT/users.npy +
OUT/users.csv (index, user_id, n_train_ratings), plus .parquet copies with
the vectors as columns when pyarrow is installed. The row entity's embedding
is its bottleneck code; the other entity's is its output-layer weight column.
"""

import json

from absl import app, flags

from recae_jax.errors import UserError, run_main

flags.DEFINE_string("workdir", None, "a trained run's directory")
flags.DEFINE_string("out", None, "output directory")
flags.DEFINE_list("kind", ["item", "user"], "which embeddings: item, user")
FLAGS = flags.FLAGS


@run_main
def main(argv):
  if not FLAGS.workdir or not FLAGS.out:
    raise UserError("--workdir and --out are required")
  bad = [k for k in FLAGS.kind if k not in ("item", "user")]
  if bad or not FLAGS.kind:
    raise UserError(f"--kind: expected item and/or user, got {','.join(FLAGS.kind)}")
  from recae_jax import recommend
  from recae_jax import workdir as wd
  out = wd.ensure_writable(FLAGS.out)
  rec = recommend.from_workdir(FLAGS.workdir)
  written = {}
  if "item" in FLAGS.kind:
    emb = recommend.item_embeddings(rec)
    written["items"] = [str(p) for p in recommend.export_embeddings(
        out / "items", emb, recommend.item_frame(rec))] + [list(emb.shape)]
  if "user" in FLAGS.kind:
    emb = recommend.user_embeddings(rec)
    written["users"] = [str(p) for p in recommend.export_embeddings(
        out / "users", emb, recommend.user_frame(rec))] + [list(emb.shape)]
  print(json.dumps(written, indent=2))


if __name__ == "__main__":
  app.run(main)
