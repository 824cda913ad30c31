r"""Movies similar to a given one, by cosine similarity of model embeddings.

  python experiments/similar.py --workdir=runs/autorec --movie="Liar Liar" --k=10
  python experiments/similar.py --workdir=runs/autorec --movie=1 --json

--movie is a movie id or a title: an exact (case-insensitive) title first,
else a unique case-insensitive substring; an ambiguous or unknown title is an
error that lists candidates. Embeddings: the bottleneck code of each movie's
rating vector for item-oriented models (I-AutoRec, S2), the output-layer
weight column for user-oriented ones. Exit status 2 on bad input.
"""

import json

from absl import app, flags

from recae_jax.errors import UserError, run_main

flags.DEFINE_string("workdir", None, "a trained run's directory")
flags.DEFINE_string("movie", None, "movie id or (part of its) title, e.g. 'Liar Liar (1997)'")
flags.DEFINE_integer("k", 10, "number of similar movies")
flags.DEFINE_bool("json", False, "print JSON instead of a table")
FLAGS = flags.FLAGS


@run_main
def main(argv):
  if not FLAGS.workdir or FLAGS.movie is None:
    raise UserError("--workdir and --movie are required")
  if FLAGS.k <= 0:
    raise UserError(f"--k={FLAGS.k} must be positive")
  import pandas as pd
  from recae_jax import recommend
  rec = recommend.from_workdir(FLAGS.workdir)
  recommend.find_item(rec.dataset, FLAGS.movie)  # title errors before encoding
  emb = recommend.item_embeddings(rec)
  q, table = recommend.similar_items(rec, emb, FLAGS.movie, FLAGS.k)
  title = recommend.titles(rec.dataset)[q]
  movie_id = rec.dataset.item_ids[q]
  movie_id = movie_id.item() if hasattr(movie_id, "item") else movie_id  # int or str id
  if FLAGS.json:
    print(json.dumps({"movie_id": movie_id, "title": title,
                      "embedding_dim": int(emb.shape[1]),
                      "similar": table.to_dict(orient="records")}, indent=2))
    return
  print(f"movies like {title} (id {movie_id}), {emb.shape[1]}-d embeddings:")
  with pd.option_context("display.max_colwidth", 60, "display.width", 120):
    print(table.to_string(index=False))


if __name__ == "__main__":
  app.run(main)
