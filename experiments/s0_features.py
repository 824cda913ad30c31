r"""Seed system S0 end to end: KNN-impute users x first movies, train a 5-d
feature autoencoder, export user features and original-vs-reconstructed plots.

  python experiments/s0_features.py --workdir=runs/s0 --faithful
  python experiments/s0_features.py --workdir=runs/s0_all --n_movies=0

--denominator: "signed" (Σ sim, S0's formula; the default with --faithful) or
"abs" (Σ|sim|, the improved default). Signed sums near zero give raw imputed
values far outside [1, 5] that the 0.5-step round-off clips silently; the
count is reported as n_imputed_out_of_scale either way.

Writes DIR/config.json, DIR/metrics.json (reconstruction_rmse_test / _train,
impute_seconds, train_seconds, n_users, n_movies, n_imputed,
n_imputed_out_of_scale, imputed_min, imputed_max), DIR/filled.npy,
DIR/user_features.npy (float32 [U, 5]) + DIR/user_ids.csv (original id per
row), DIR/item_ids.csv, DIR/plots/user_<id>.png and DIR/plots/movie_<id>.png.
Bad input: one line on stderr, exit status 2.
"""

from __future__ import annotations

import time

import numpy as np
from absl import app, flags

from recae_jax import s0, workdir as wd
from recae_jax.data import movielens
from recae_jax.errors import UserError, run_main

flags.DEFINE_string("data_dir", None, "directory holding ml-100k/ (default: "
                    "$RECAE_DATA_DIR, then the cache)")
flags.DEFINE_integer("n_movies", 64, "first N movies by id (0 or 1682 = all)")
flags.DEFINE_bool("faithful", False, "S0's choices: signed denominator")
flags.DEFINE_string("denominator", None, "signed (Σ sim, S0) or abs (Σ|sim|); "
                    "default: signed with --faithful, else abs")
flags.DEFINE_float("round_to", 0.5, "round imputed values to this step "
                   "(0 = no rounding); always clipped to [1, 5]")
flags.DEFINE_integer("epochs", 100, "training epochs")
flags.DEFINE_integer("batch_size", 100, "users per batch")
flags.DEFINE_float("learning_rate", 1e-3, "Adam learning rate")
flags.DEFINE_float("test_fraction", 0.2, "held-out users")
flags.DEFINE_integer("seed", 0, "seed for the row split and initialisation")
flags.DEFINE_string("user", None, "original user id to plot (default: the "
                    "first held-out user)")
flags.DEFINE_string("movie", None, "original movie id to plot (default: the "
                    "first movie)")
flags.DEFINE_string("workdir", None, "output directory", required=True)
FLAGS = flags.FLAGS


def _check_flags() -> str:
  denominator = FLAGS.denominator or ("signed" if FLAGS.faithful else "abs")
  if denominator not in ("signed", "abs"):
    raise UserError(f"--denominator must be signed or abs, got {denominator!r}")
  for name in ("epochs", "batch_size"):
    if FLAGS[name].value <= 0:
      raise UserError(f"--{name} must be positive, got {FLAGS[name].value}")
  if FLAGS.n_movies < 0:
    raise UserError(f"--n_movies must be >= 0 (0 = all), got {FLAGS.n_movies}")
  if FLAGS.round_to < 0:
    raise UserError(f"--round_to must be >= 0, got {FLAGS.round_to}")
  if not 0 < FLAGS.test_fraction < 1:
    raise UserError(f"--test_fraction must be in (0, 1), got "
                    f"{FLAGS.test_fraction}")
  if not FLAGS.learning_rate > 0:
    raise UserError(f"--learning_rate must be > 0, got {FLAGS.learning_rate}")
  return denominator


@run_main
def main(argv):
  denominator = _check_flags()
  out = wd.ensure_writable(FLAGS.workdir)
  dataset = movielens.load_dataset("ml-100k", FLAGS.data_dir)
  sub = s0.first_movies(dataset, FLAGS.n_movies)
  u, n = sub.ratings.n_users, sub.ratings.n_items
  train_rows, test_rows = s0.split_rows(u, FLAGS.test_fraction, FLAGS.seed)
  user_row = (s0.find_index(sub.user_ids, FLAGS.user, "user")
              if FLAGS.user else int(test_rows[0]))
  movie_col = (s0.find_index(sub.item_ids, FLAGS.movie, "movie")
               if FLAGS.movie else 0)
  cfg = s0.feature_config(FLAGS.epochs, FLAGS.batch_size, FLAGS.seed,
                          FLAGS.learning_rate)
  config = {k: FLAGS[k].value for k in (
      "data_dir", "n_movies", "faithful", "round_to", "epochs", "batch_size",
      "learning_rate", "test_fraction", "seed", "user", "movie", "workdir")}
  config.update(denominator=denominator, n_users=u, n_movies_used=n,
                dataset_files=dataset.files, engine_config=cfg.to_json())
  wd.write_json(out / "config.json", config)
  print(f"S0: {u} users x {n} movies, {len(sub.ratings)} ratings; "
        f"denominator={denominator}", flush=True)

  imp = s0.impute_first_movies(sub.ratings, denominator,
                               FLAGS.round_to or None)
  print(f"imputed {imp.n_imputed} cells in {imp.seconds:.2f}s; raw range "
        f"[{imp.imputed_min:.3g}, {imp.imputed_max:.3g}], "
        f"{imp.n_out_of_scale} outside [1, 5]", flush=True)
  np.save(out / "filled.npy", imp.filled_UxI)

  t0 = time.perf_counter()
  res = s0.train_feature_ae(imp.filled_UxI, train_rows, test_rows, cfg)
  total_train_s = time.perf_counter() - t0
  np.save(out / "user_features.npy", res.features_Ux5)
  np.savetxt(out / "user_ids.csv", sub.user_ids, fmt="%s")
  np.savetxt(out / "item_ids.csv", sub.item_ids, fmt="%s")
  uid, mid = sub.user_ids[user_row], sub.item_ids[movie_col]
  s0.plot_vector(imp.filled_UxI[user_row], res.recon_UxI[user_row],
                 imp.observed_UxI[user_row], out / "plots" / f"user_{uid}.png",
                 f"user {uid}: original vs reconstructed", "movie (column)")
  s0.plot_vector(imp.filled_UxI[:, movie_col], res.recon_UxI[:, movie_col],
                 imp.observed_UxI[:, movie_col],
                 out / "plots" / f"movie_{mid}.png",
                 f"movie {mid}: original vs reconstructed", "user (row)")
  metrics = {
      "reconstruction_rmse_test": res.rmse_test,
      "reconstruction_rmse_train": res.rmse_train,
      "impute_seconds": imp.seconds, "train_seconds": res.train_seconds,
      "train_seconds_incl_compile": total_train_s,
      "final_train_loss": res.losses[-1] if res.losses else None,
      "n_users": u, "n_movies": n, "n_train_users": len(train_rows),
      "n_test_users": len(test_rows), "n_ratings": len(sub.ratings),
      "n_imputed": imp.n_imputed,
      "n_imputed_out_of_scale": imp.n_out_of_scale,
      "imputed_min": imp.imputed_min, "imputed_max": imp.imputed_max,
      "denominator": denominator, "plot_user": str(uid),
      "plot_movie": str(mid)}
  wd.write_json(out / "metrics.json", metrics)
  print(f"reconstruction RMSE test={res.rmse_test:.4f} "
        f"train={res.rmse_train:.4f}; train {res.train_seconds:.1f}s", flush=True)


if __name__ == "__main__":
  app.run(main)
