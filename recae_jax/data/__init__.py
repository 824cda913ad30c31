"""Data layer: parse, validate, split, and batch MovieLens-style ratings."""

from recae_jax.data.types import Dataset, Ratings, Split  # noqa: F401
