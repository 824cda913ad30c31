"""Prints a JSON summary of a dataset and, optionally, of one split.

  python experiments/data_info.py --dataset=ml-100k --split=u1
  python experiments/data_info.py --dataset=path/to/ratings.csv
  python experiments/data_info.py --dataset=reviews.csv \
      --columns=user=reviewer,item=product,rating=stars
"""

from __future__ import annotations

import json
from typing import Optional

from absl import app, flags
import numpy as np

from recae_jax.data import movielens, splits
from recae_jax.data.types import Ratings
from recae_jax.errors import run_main

FLAGS = flags.FLAGS
flags.DEFINE_string("dataset", "ml-100k",
                    "Dataset name or path to a user,item,rating[,timestamp] file.")
flags.DEFINE_string("data_dir", None, "Dataset folder or its parent.")
flags.DEFINE_string("columns", "",
                    "Ratings files only: user=COL,item=COL,rating=COL"
                    "[,timestamp=COL] (COL a header name or 1-based column "
                    "number); roles left out are found by header name.")
flags.DEFINE_bool("download", True, "Download from GroupLens if not found.")
flags.DEFINE_enum("duplicates", "error", ["error", "last"],
                  "What to do with repeated (user, item) ratings.")
flags.DEFINE_string("split", "none",
                    f"One of none, {', '.join(splits.SPLITS)}.")
flags.DEFINE_float("test_fraction", 0.1, "random / heldout_users test share.")
flags.DEFINE_float("time_quantile", 0.98, "time split: train quantile.")
flags.DEFINE_float("valid_fraction", 0.0, "Validation share carved from train.")
flags.DEFINE_float("holdout_fraction", 0.2, "user_holdout: share per user.")
flags.DEFINE_integer("n_heldout_users", 0, "heldout_users: number of users.")
flags.DEFINE_integer("min_user_ratings", 0, "k-core: min ratings per user.")
flags.DEFINE_integer("min_item_ratings", 0, "k-core: min ratings per item.")
flags.DEFINE_float("implicit_threshold", None,
                   "Keep ratings >= this as 1.0 (implicit feedback).")
flags.DEFINE_integer("seed", 0, "Split seed.")


def _histogram(r: Ratings) -> dict[str, int]:
  values, counts = np.unique(r.ratings, return_counts=True)
  return {f"{v:g}": int(c) for v, c in zip(values, counts)}


def _summary(r: Ratings) -> dict:
  n_users = int((np.bincount(r.users, minlength=r.n_users) > 0).sum())
  n_items = int((np.bincount(r.items, minlength=r.n_items) > 0).sum())
  return {"ratings": len(r), "users_with_ratings": n_users,
          "items_with_ratings": n_items}


def info(dataset_name: str, data_dir: Optional[str] = None,
         split: str = "none", *, download: bool = True,
         duplicates: str = "error", columns: str = "",
         **split_kwargs) -> dict:
  ds = movielens.load_dataset(dataset_name, data_dir, download=download,
                              duplicates=duplicates, columns=columns)
  r = ds.ratings
  out = {
      "dataset": ds.name,
      "directory": ds.directory,
      "users": ds.n_users,
      "items": ds.n_items,
      "ratings": len(r),
      "items_rated": int((np.bincount(r.items, minlength=r.n_items) > 0).sum()),
      "sparsity": 1.0 - len(r) / (ds.n_users * ds.n_items),
      "rating_scale": list(ds.rating_scale),
      "rating_histogram": _histogram(r),
      "genres": list(ds.genres),
      "has_user_attributes": ds.users_info is not None,
      "files": ds.files,
  }
  if split != "none":
    filtered = splits.apply_filters(
        r, min_user_ratings=split_kwargs["min_user_ratings"],
        min_item_ratings=split_kwargs["min_item_ratings"],
        implicit_threshold=split_kwargs["implicit_threshold"])
    s = splits.make_split(ds, split, **split_kwargs)
    n_valid = len(s.valid) if s.valid is not None else 0
    out["split"] = {
        "name": s.name,
        "ratings_after_filters": len(filtered),
        "train": _summary(s.train),
        "validation": _summary(s.valid) if s.valid is not None else None,
        "test": _summary(s.test),
        "n_train": len(s.train),
        "n_validation": n_valid,
        "n_test": len(s.test),
        # time split: later ratings of users/items unseen in train.
        "n_test_dropped": len(filtered) - len(s.train) - n_valid - len(s.test)
                          if split not in splits.FOLD_SPLITS else 0,
    }
  return out


def main(argv):
  split_kwargs = dict(
      test_fraction=FLAGS.test_fraction, time_quantile=FLAGS.time_quantile,
      valid_fraction=FLAGS.valid_fraction, seed=FLAGS.seed,
      min_user_ratings=FLAGS.min_user_ratings,
      min_item_ratings=FLAGS.min_item_ratings,
      implicit_threshold=FLAGS.implicit_threshold,
      holdout_fraction=FLAGS.holdout_fraction,
      n_heldout_users=FLAGS.n_heldout_users)
  print(json.dumps(info(FLAGS.dataset, FLAGS.data_dir, FLAGS.split,
                        download=FLAGS.download, duplicates=FLAGS.duplicates,
                        columns=FLAGS.columns, **split_kwargs), indent=2))


if __name__ == "__main__":
  app.run(run_main(main))
