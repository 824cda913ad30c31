r"""Neighbourhood rating prediction (S0's imputation, KNNBaseline), evaluated.

  python experiments/impute.py --dataset=ml-100k --split=u1 --neighbors=40 \
      --workdir=runs/knn_u1
  python experiments/impute.py --dataset=ml-100k --folds=u1,u2,u3,u4,u5 \
      --workdir=runs/knn_5fold
  python experiments/impute.py --folds=u1,u2,u3,u4,u5 --orientation=item \
      --similarity=pearson_baseline --baseline=als --shrinkage=100 \
      --positive_only --workdir=runs/knnbaseline_item   # Koren's KNNBaseline

--baseline=als|sgd predicts b_ui + Σ w (r_vi − b_vi) / Σ|w| (KNNBaseline)
instead of the user's mean + weighted deviations (KNNWithMeans);
--baseline_only predicts b_ui = μ + b_u + b_i alone (Surprise's BaselineOnly;
ALS unless --baseline=sgd). --orientation=item takes neighbours among the
items the user rated. --similarity=pearson_baseline correlates baseline
residuals (ALS baselines unless --baseline=sgd).

--select ignores the model flags above and chooses, per fold, among
impute.CANDIDATES (user / item x Pearson KNNWithMeans / pearson_baseline
KNNBaseline, k=--neighbors) by RMSE on a --valid_fraction slice of that
fold's training part; the choice then predicts the test pairs from the whole
training part (metrics gain per-fold "choice" and "candidates"):
  python experiments/impute.py --folds=u1,u2,u3,u4,u5 --select \
      --workdir=runs/knn_select_5fold

Writes DIR/config.json (every flag, resolved) and DIR/metrics.json (test_rmse,
test_mae, n_train, n_test, n_test_fallback, similarity_seconds,
impute_seconds; with --folds also mean_test_rmse, std_test_rmse and a
per-fold list). A one-fold run also writes DIR/test_pred.npy, the test pairs'
predictions, so experiments/compare.py can pair it with an autoencoder run on
the same split. --save_matrix also writes the dense filled matrix
DIR/filled.npy (observed ratings kept) with DIR/user_ids.csv and
DIR/item_ids.csv giving the original id of each row / column.

--neighbors=0 uses every rater of the item; a --neighbors at or above the
number of other users is the same thing (documented fallback, not an error).
Bad input: one line on stderr, exit status 2.
"""

from __future__ import annotations

import time

import jax
import numpy as np
from absl import app, flags

from recae_jax import baselines, impute, metrics, similarity, workdir as wd
from recae_jax.data import movielens, splits
from recae_jax.errors import UserError, run_main

flags.DEFINE_string("dataset", "ml-100k", "dataset name or path to a "
                    "user,item,rating[,timestamp] file")
flags.DEFINE_string("data_dir", None, "directory holding the dataset "
                    "(default: $RECAE_DATA_DIR, then the cache)")
flags.DEFINE_string("columns", "", "ratings files: user=COL,item=COL,rating=COL"
                    "[,timestamp=COL]; \"\" = find the columns by header name")
flags.DEFINE_enum("duplicates", "error", ["error", "last"], "a repeated (user, item) "
                  "rating in a ratings file: error, or last keeps the latest of each")
flags.DEFINE_string("split", "u1", "split name (u1..u5, ua, ub, random, time)")
flags.DEFINE_list("folds", None, "run these splits and report mean/std "
                  "(e.g. u1,u2,u3,u4,u5); overrides --split")
flags.DEFINE_float("test_fraction", 0.1, "test fraction for random splits")
flags.DEFINE_integer("seed", 0, "seed for random splits")
flags.DEFINE_integer("neighbors", 40, "k nearest raters of the item "
                     "(0 = all raters)")
flags.DEFINE_string("similarity", "pearson", "pearson, cosine or "
                    "pearson_baseline")
flags.DEFINE_string("baseline", "none", "none (KNNWithMeans), als or sgd "
                    "(KNNBaseline: b_ui + weighted baseline residuals)")
flags.DEFINE_string("orientation", "user", "user (neighbours among users) or "
                    "item (among items)")
flags.DEFINE_bool("baseline_only", False, "predict the baseline b_ui alone "
                  "(Surprise's BaselineOnly)")
flags.DEFINE_bool("select", False, "choose the neighbourhood model per fold "
                  "on a validation slice of its training part")
flags.DEFINE_float("valid_fraction", 0.05, "validation slice for --select")
flags.DEFINE_string("centering", "corated", "corated (pairwise means over "
                    "co-rated items) or overall (each user's mean, S0)")
flags.DEFINE_integer("min_support", 1, "co-rated items needed for a "
                     "non-zero similarity")
flags.DEFINE_float("shrinkage", 0.0, "similarity *= n / (n + shrinkage)")
flags.DEFINE_string("denominator", "abs", "abs (Σ|sim|) or signed (Σ sim, "
                    "S0's formula)")
flags.DEFINE_bool("positive_only", False, "only neighbours with sim > 0 "
                  "contribute (Surprise >= 1.1)")
flags.DEFINE_integer("min_k", 1, "fewer contributing neighbours -> user mean")
flags.DEFINE_float("round_to", 0.0, "round predictions to this step "
                   "(S0: 0.5); 0 = no rounding")
flags.DEFINE_integer("block_size", 0, "users per block (0 = automatic)")
flags.DEFINE_bool("save_matrix", False, "save DIR/filled.npy and id lists "
                  "(for the first fold)")
flags.DEFINE_string("workdir", None, "output directory", required=True)

FLAGS = flags.FLAGS


def _config(scale) -> impute.KNNConfig:
  if FLAGS.neighbors < 0:
    raise UserError(f"--neighbors must be >= 0 (0 = all raters), got "
                    f"{FLAGS.neighbors}")
  if FLAGS.round_to < 0:
    raise UserError(f"--round_to must be >= 0, got {FLAGS.round_to}")
  return impute.KNNConfig(
      neighbors=FLAGS.neighbors, metric=FLAGS.similarity,
      centering=FLAGS.centering, min_support=FLAGS.min_support,
      shrinkage=FLAGS.shrinkage, positive_only=FLAGS.positive_only,
      min_k=FLAGS.min_k, denominator=FLAGS.denominator,
      round_to=FLAGS.round_to or None, rating_scale=tuple(scale),
      baseline=FLAGS.baseline, orientation=FLAGS.orientation)


def _checked(flag: str, make):
  """Runs a config constructor; its UserError gains the flag's name."""
  try:
    return make()
  except UserError as e:
    raise UserError(f"--{flag}: {e}") from None


def _run_fold(dataset, name: str, cfg: impute.KNNConfig, out, save: bool):
  split = splits.make_split(dataset, name, test_fraction=FLAGS.test_fraction,
                            seed=FLAGS.seed)
  train, test = split.train, split.test
  if len(train) == 0:
    raise UserError(f"--split={name}: the training (base) part has no "
                    f"ratings")
  bs = FLAGS.block_size or None
  extra = {}
  if FLAGS.select:
    t0 = time.perf_counter()
    carve = splits.make_split(dataset, name, test_fraction=FLAGS.test_fraction,
                              seed=FLAGS.seed,
                              valid_fraction=FLAGS.valid_fraction)
    res = impute.best_neighbourhood(
        carve.train, carve.valid, train, test, cfg.rating_scale,
        progress=lambda line: print(f"[{name}] {line}", flush=True),
        neighbors=FLAGS.neighbors)
    pred, n_fb, sim_s = res["test"], res["n_test_fallback"], 0.0
    impute_s = time.perf_counter() - t0
    extra = {"choice": res["choice"], "candidates": res["candidates"]}
  elif FLAGS.baseline_only:
    t0 = time.perf_counter()
    bl = baselines.fit(train, cfg.baseline or baselines.BaselineConfig())
    pred = np.clip(bl.predict(test.users, test.items), *cfg.rating_scale)
    sim_s, impute_s, n_fb = 0.0, time.perf_counter() - t0, 0
  else:
    # Similarity alone, timed after a warm-up (the compile is not the cost),
    # on the rows of the chosen orientation.
    rows = train.transpose() if cfg.orientation == "item" else train
    bl = None
    if cfg.metric == "pearson_baseline":
      bl = baselines.fit(train, cfg.baseline or baselines.BaselineConfig())
      bl = bl.transpose() if cfg.orientation == "item" else bl
    similarity.similarity_matrix(rows, cfg.similarity, block_size=bs,
                                 baseline=bl)
    t0 = time.perf_counter()
    similarity.similarity_matrix(rows, cfg.similarity, block_size=bs,
                                 baseline=bl)
    sim_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    pred, n_fb = impute.predict_pairs(train, test.users, test.items, cfg,
                                      block_size=bs)
    jax.effects_barrier()
    impute_s = time.perf_counter() - t0
  err = metrics.rating_errors(pred, test.ratings)
  if len(FLAGS.folds or [name]) == 1:  # compare.py pairs it with other runs' on this split
    wd.save_npy(out / "test_pred.npy", np.asarray(pred, np.float32))
  row = {"split": name, "test_rmse": err["rmse"], "test_mae": err["mae"],
         "n_train": len(train), "n_test": len(test),
         "n_test_fallback": n_fb, "similarity_seconds": round(sim_s, 4),
         "impute_seconds": round(impute_s, 4), **extra}
  print(f"[{name}] train={len(train)} test={len(test)} "
        f"rmse={err['rmse']:.4f} mae={err['mae']:.4f} fallback={n_fb} "
        f"sim={sim_s:.3f}s impute={impute_s:.3f}s (compile included)",
        flush=True)
  if save:
    t0 = time.perf_counter()
    shape = impute.save_filled(
        out / "filled.npy", train, cfg, block_size=bs,
        progress=lambda line: print(f"[{name}] {line}", flush=True))
    row["fill_seconds"] = round(time.perf_counter() - t0, 4)
    np.savetxt(out / "user_ids.csv", dataset.user_ids, fmt="%s")
    np.savetxt(out / "item_ids.csv", dataset.item_ids, fmt="%s")
    print(f"[{name}] saved the filled {shape[0]}x{shape[1]} matrix to "
          f"{out / 'filled.npy'} in {row['fill_seconds']:.2f}s (compile "
          f"included)", flush=True)
  return row


@run_main
def main(argv):
  out = wd.ensure_writable(FLAGS.workdir)
  # Validate flags before loading data, each error naming its flag.
  _checked("neighbors", lambda: impute.KNNConfig(neighbors=FLAGS.neighbors))
  _checked("similarity", lambda: similarity.SimilarityConfig(
      metric=FLAGS.similarity))
  _checked("centering", lambda: similarity.SimilarityConfig(
      centering=FLAGS.centering))
  _checked("shrinkage", lambda: similarity.SimilarityConfig(
      shrinkage=FLAGS.shrinkage))
  _checked("min_support", lambda: similarity.SimilarityConfig(
      min_support=FLAGS.min_support))
  _checked("baseline", lambda: baselines.make_config(FLAGS.baseline))
  _checked("orientation", lambda: impute.KNNConfig(
      orientation=FLAGS.orientation))
  _checked("denominator", lambda: impute.KNNConfig(
      denominator=FLAGS.denominator))
  _checked("min_k", lambda: impute.KNNConfig(min_k=FLAGS.min_k))
  dataset = movielens.load_dataset(FLAGS.dataset, FLAGS.data_dir, columns=FLAGS.columns,
                                   duplicates=FLAGS.duplicates)
  cfg = _config(dataset.rating_scale)
  folds = FLAGS.folds or [FLAGS.split]
  config = {k: FLAGS[k].value for k in (
      "dataset", "data_dir", "columns", "duplicates", "split", "folds", "test_fraction",
      "seed", "neighbors", "similarity", "centering", "min_support", "shrinkage",
      "denominator", "positive_only", "min_k", "round_to", "block_size",
      "save_matrix", "workdir", "baseline", "orientation", "baseline_only",
      "select", "valid_fraction")}
  config.update(folds=folds, rating_scale=list(dataset.rating_scale),
                n_users=dataset.n_users, n_items=dataset.n_items,
                dataset_files=dataset.files)
  wd.write_json(out / "config.json", config)
  print(f"{dataset.name}: {dataset.n_users} users x {dataset.n_items} items, "
        f"{len(dataset.ratings)} ratings; folds {','.join(folds)}", flush=True)
  rows = [_run_fold(dataset, f, cfg, out, FLAGS.save_matrix and j == 0)
          for j, f in enumerate(folds)]  # a handful of folds
  result = dict(rows[0])
  if len(rows) > 1:
    rmses = np.array([r["test_rmse"] for r in rows])
    result = {
        "test_rmse": float(np.mean(rmses)),
        "test_mae": float(np.mean([r["test_mae"] for r in rows])),
        "mean_test_rmse": float(np.mean(rmses)),
        "std_test_rmse": float(np.std(rmses)),
        "n_train": int(sum(r["n_train"] for r in rows)),
        "n_test": int(sum(r["n_test"] for r in rows)),
        "n_test_fallback": int(sum(r["n_test_fallback"] for r in rows)),
        "similarity_seconds": float(sum(r["similarity_seconds"] for r in rows)),
        "impute_seconds": float(sum(r["impute_seconds"] for r in rows)),
        "folds": rows}
  wd.write_json(out / "metrics.json", result)
  print(f"test_rmse={result['test_rmse']:.4f}"
        + (f" (std {result['std_test_rmse']:.4f} over {len(rows)} folds)"
           if len(rows) > 1 else ""), flush=True)


if __name__ == "__main__":
  app.run(main)
