"""Data layer: parse, validate, split, and batch MovieLens-style ratings
(MovieLens by name, any ratings file by path, or a DataFrame: from_frame)."""

from recae_jax.data.types import Dataset, Ratings, Split  # noqa: F401
from recae_jax.data.movielens import DATASETS, load_dataset, load_fold  # noqa: F401
from recae_jax.data.generic import from_frame, load_file  # noqa: F401
from recae_jax.data.splits import SPLITS, fold_in, make_split  # noqa: F401
