r"""Figures (PNG) for one or several trained runs.

  python experiments/plot.py --workdirs=runs/autorec,runs/uautorec --out=figs
  python experiments/plot.py --workdirs=runs/autorec --out=figs --train_2d

Writes OUT/curves.png (train loss and validation curves of every run;
OUT/curves_topn.png for experiments/topn.py runs: loss and validation
NDCG@100) and,
per run NAME: NAME_pred_vs_actual.png (test predictions by actual rating),
NAME_user_reconstruction.png / NAME_movie_reconstruction.png (S0-style
original vs reconstructed ratings of --user and --movie), and
NAME_items_pca.png (PCA of the item embeddings, coloured by primary genre).
--train_2d also trains a small item autoencoder with a 2-d bottleneck on the
first run's data (S2's tutorial view) and plots its raw codes.
"""

import json
import pathlib

from absl import app, flags

from recae_jax.errors import UserError, run_main

flags.DEFINE_list("workdirs", None, "comma-separated trained run directories")
flags.DEFINE_string("out", None, "output directory for the PNGs")
flags.DEFINE_string("user", None, "user id for the reconstruction plot "
                    "(default: the test user with most test ratings)")
flags.DEFINE_string("movie", None, "movie id or title for the reconstruction "
                    "plot (default: the most-rated movie)")
flags.DEFINE_bool("train_2d", False, "train a small 2-d-bottleneck item AE and plot its codes")
flags.DEFINE_integer("epochs_2d", 60, "epochs for --train_2d")
FLAGS = flags.FLAGS


def _run_figures(workdir: pathlib.Path, out: pathlib.Path, name: str) -> list:
  import numpy as np
  from recae_jax import plots, recommend
  rec = recommend.from_workdir(workdir)
  written = []
  pred_path = workdir / "test_pred.npy"
  if pred_path.exists():
    pred = np.load(pred_path)
    if len(pred) == len(rec.test):
      written.append(plots.plot_pred_vs_actual(
          pred, rec.test.ratings, out / f"{name}_pred_vs_actual.png",
          f"{name}: test predictions"))
  # S0-style reconstructions: observed (train) ratings vs the model's output.
  if FLAGS.user is not None:
    u = recommend.user_index(rec.dataset, FLAGS.user)
  else:
    u = int(np.argmax(np.bincount(rec.test.users, minlength=rec.n_users)))
  row = recommend.predict_users(rec, [u])[0]
  mine = rec.seen.users == u
  items = rec.seen.items[mine]
  order = np.argsort(items)
  written.append(plots.plot_reconstruction(
      rec.seen.ratings[mine][order], row[items[order]],
      out / f"{name}_user_reconstruction.png",
      f"{name}: user {rec.dataset.user_ids[u]}'s ratings", "movie (index order)"))
  if FLAGS.movie is not None:
    i = recommend.find_item(rec.dataset, FLAGS.movie)
  else:
    i = int(np.argmax(rec.n_train_I))
  raters = np.flatnonzero(rec.seen.items == i)
  users = rec.seen.users[raters]
  col = recommend.predict_users(rec, users)[:, i]
  title = recommend.titles(rec.dataset)[i]
  written.append(plots.plot_reconstruction(
      rec.seen.ratings[raters], col, out / f"{name}_movie_reconstruction.png",
      f"{name}: ratings of {title}", "user"))
  emb = recommend.item_embeddings(rec)
  keep = rec.candidates_I
  written.append(plots.plot_embedding_2d(
      recommend.pca_2d(emb[keep]), recommend.primary_genres(rec.dataset)[keep],
      out / f"{name}_items_pca.png",
      f"{name}: PCA of {emb.shape[1]}-d item embeddings"))
  return written


def _train_2d(workdir: pathlib.Path, out: pathlib.Path) -> list:
  import numpy as np
  from recae_jax import plots, recommend, restore
  from recae_jax.config import make_config
  from recae_jax.runs import run as train_and_evaluate
  base = restore.read_config(workdir)
  cfg = make_config(None, dataset=base.dataset, data_dir=base.data_dir, split=base.split,
                    split_seed=base.split_seed, orientation="item", layers=(64, 2),
                    activation="elu", optimizer="adam", learning_rate=3e-3,
                    l2=1e-3, batch_size=128, epochs=FLAGS.epochs_2d,
                    checkpoint_every=FLAGS.epochs_2d)
  run_dir = out / "ae2d"
  if not (run_dir / "checkpoints").exists():
    train_and_evaluate(cfg, run_dir, progress=lambda s: None)
  rec = recommend.from_workdir(run_dir)
  keep = rec.candidates_I
  codes = recommend.item_embeddings(rec)[keep]
  titles = recommend.titles(rec.dataset)[keep]
  top = np.argsort(-rec.n_train_I[keep])[:8]  # label a few best-known movies
  return [plots.plot_embedding_2d(codes, recommend.primary_genres(rec.dataset)[keep],
                                  out / "items_2d_bottleneck.png",
                                  "2-d bottleneck of a small item AE (N→64→2→64→N)",
                                  annotate={int(j): titles[j] for j in top})]


@run_main
def main(argv):
  if not FLAGS.workdirs or not FLAGS.out:
    raise UserError("--workdirs and --out are required")
  from recae_jax import plots
  from recae_jax import workdir as wd
  from recae_jax.restore import require_checkpoint, read_config
  dirs = [pathlib.Path(d) for d in FLAGS.workdirs]
  topn_dirs = [d for d in dirs if read_config(d).is_topn]  # top-N runs: curves only
  dirs = [d for d in dirs if d not in topn_dirs]
  for d in dirs:  # check all before any slow work
    require_checkpoint(d)
  out = wd.ensure_writable(FLAGS.out)
  written = []
  if topn_dirs:
    written.append(plots.plot_metric_curves(
        {k: v for d in topn_dirs for k, v in plots.histories(d, d.name).items()},
        ("train_loss", "valid_ndcg@100"),
        out / "curves_topn.png"))
  if not dirs:
    print(json.dumps([str(p) for p in written], indent=2))
    return
  names = [d.name if [x.name for x in dirs].count(d.name) == 1 else str(d).replace("/", "_")
           for d in dirs]
  written.append(plots.plot_training_curves(
      {k: v for n, d in zip(names, dirs) for k, v in plots.histories(d, n).items()},
      out / "curves.png"))
  for name, d in zip(names, dirs):
    written += _run_figures(d, out, name)
  if FLAGS.train_2d:
    written += _train_2d(dirs[0], out)
  print(json.dumps([str(p) for p in written], indent=2))


if __name__ == "__main__":
  app.run(main)
