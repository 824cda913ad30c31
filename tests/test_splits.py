"""Splits: fold files, random, time, per-user holdout, held-out users."""

from __future__ import annotations

import numpy as np
import pytest

from recae_jax.data import movielens, splits, synthetic
from recae_jax.data.splits import fold_in, make_split
from recae_jax.data.types import Dataset, Ratings
from recae_jax.errors import UserError


@pytest.fixture(scope="module")
def syn():
  return synthetic.generate("ml-100k", seed=3)


def _keys(r: Ratings) -> np.ndarray:
  return r.users.astype(np.int64) * r.n_items + r.items


def _same(a: Ratings, b: Ratings) -> bool:
  return np.array_equal(_keys(a), _keys(b)) and np.array_equal(
      a.ratings, b.ratings)


def _partition(whole: Ratings, *parts: Ratings) -> None:
  keys = np.concatenate([_keys(p) for p in parts])
  assert len(np.unique(keys)) == len(keys)
  np.testing.assert_array_equal(np.sort(keys), np.sort(_keys(whole)))


@pytest.mark.parametrize("name", ["random", "user_holdout", "heldout_users",
                                  "time"])
def test_deterministic_per_seed(syn, name):
  a = make_split(syn, name, seed=1, valid_fraction=0.1)
  b = make_split(syn, name, seed=1, valid_fraction=0.1)
  assert _same(a.train, b.train) and _same(a.test, b.test)
  assert _same(a.valid, b.valid)
  assert a.name == name
  for part in (a.train, a.test, a.valid):
    assert (part.n_users, part.n_items) == (syn.n_users, syn.n_items)
  if name != "time":
    c = make_split(syn, name, seed=2, valid_fraction=0.1)
    assert not _same(a.test, c.test)


@pytest.mark.parametrize("name", ["random", "user_holdout", "heldout_users",
                                  "time"])
def test_valid_carved_from_train_only(syn, name):
  plain = make_split(syn, name, seed=5)
  with_valid = make_split(syn, name, seed=5, valid_fraction=0.2)
  assert _same(plain.test, with_valid.test)  # test never touched
  _partition(plain.train, with_valid.train, with_valid.valid)
  assert not np.isin(_keys(with_valid.valid), _keys(with_valid.test)).any()
  assert len(with_valid.valid) == round(0.2 * len(plain.train))


@pytest.mark.parametrize("name", ["random", "user_holdout", "heldout_users"])
def test_valid_draws_are_other_carve_outs_of_the_same_train(syn, name):
  draw0 = make_split(syn, name, seed=5, valid_fraction=0.2)
  assert _same(draw0.valid, make_split(syn, name, seed=5, valid_fraction=0.2,
                                       valid_draw=0).valid)
  draw1 = make_split(syn, name, seed=5, valid_fraction=0.2, valid_draw=1)
  assert _same(draw0.test, draw1.test)  # the test set does not move
  _partition(draw0.train.concat(draw0.valid), draw1.train, draw1.valid)
  assert len(draw1.valid) == len(draw0.valid) and not _same(draw0.valid, draw1.valid)


def test_random_split(syn):
  s = make_split(syn, "random", test_fraction=0.25)
  _partition(syn.ratings, s.train, s.test)
  assert len(s.test) == 25_000


def test_user_holdout(syn):
  s = make_split(syn, "user_holdout", holdout_fraction=0.3, seed=0)
  _partition(syn.ratings, s.train, s.test)
  n_u = np.bincount(syn.ratings.users, minlength=syn.n_users)
  n_test = np.bincount(s.test.users, minlength=syn.n_users)
  np.testing.assert_array_equal(
      n_test, np.minimum(np.floor(0.3 * n_u + 0.5), np.maximum(n_u - 1, 0)))
  train_u = np.bincount(s.train.users, minlength=syn.n_users)
  assert (train_u[n_u >= 1] >= 1).all()


def test_user_holdout_small_users():
  r = Ratings(np.array([0, 1, 1, 2, 2, 2]), np.array([0, 0, 1, 0, 1, 2]),
              np.ones(6), np.zeros(6), 3, 3)
  ds = Dataset(name="t", ratings=r, user_ids=np.arange(3),
               item_ids=np.arange(3), rating_scale=(1.0, 5.0))
  s = make_split(ds, "user_holdout", holdout_fraction=0.9)
  # one rating: stays in train; >= 2: at least one stays in train
  assert np.bincount(s.train.users, minlength=3).tolist() == [1, 1, 1]


def test_heldout_users_and_fold_in(syn):
  s = make_split(syn, "heldout_users", n_heldout_users=50, seed=4)
  test_users = np.unique(s.test.users)
  assert len(test_users) == 50
  assert not np.isin(s.train.users, test_users).any()
  _partition(syn.ratings, s.train, s.test)
  shown, hidden = fold_in(s.test, fraction=0.8, seed=1)
  _partition(s.test, shown, hidden)
  assert np.array_equal(np.unique(shown.users), test_users)
  n_u = np.bincount(s.test.users, minlength=syn.n_users)[test_users]
  n_hidden = np.bincount(hidden.users, minlength=syn.n_users)[test_users]
  np.testing.assert_array_equal(n_hidden, np.floor(0.2 * n_u + 0.5))
  again = fold_in(s.test, fraction=0.8, seed=1)
  assert _same(shown, again[0])
  frac = make_split(syn, "heldout_users", test_fraction=0.1)
  assert len(np.unique(frac.test.users)) == round(0.1 * syn.n_users)


def test_time_split_synthetic(syn):
  s = make_split(syn, "time", time_quantile=0.9)
  cut = np.quantile(syn.ratings.timestamps, 0.9)
  assert (s.train.timestamps <= cut).all() and (s.test.timestamps > cut).all()
  assert np.isin(s.test.users, s.train.users).all()
  assert np.isin(s.test.items, s.train.items).all()


def test_a_split_with_no_test_ratings_is_an_error(syn):
  """An empty test set used to train and report test RMSE 0.0000."""
  r = syn.ratings
  untimed = Dataset(name="f.csv", ratings=Ratings(r.users, r.items, r.ratings,
                                                  np.zeros_like(r.timestamps),
                                                  r.n_users, r.n_items),
                    user_ids=syn.user_ids, item_ids=syn.item_ids,
                    rating_scale=syn.rating_scale)
  with pytest.raises(UserError, match="every rating has the same timestamp .0.*"
                                      "--columns=timestamp=COL"):
    make_split(untimed, "time")
  with pytest.raises(UserError, match="--split=time leaves no test ratings.*"
                                      "lower --time_quantile"):
    make_split(syn, "time", time_quantile=1.0)
  with pytest.raises(UserError, match=f"--split=random leaves no test ratings "
                     f"\\({len(syn.ratings):,} ratings in all;"):
    make_split(syn, "random", test_fraction=1e-9)


def test_k_core_and_implicit(syn):
  s = make_split(syn, "random", min_user_ratings=60, min_item_ratings=40)
  kept = s.train.concat(s.test)
  n_u = np.bincount(kept.users, minlength=syn.n_users)
  n_i = np.bincount(kept.items, minlength=syn.n_items)
  assert (n_u[n_u > 0] >= 60).all() and (n_i[n_i > 0] >= 40).all()
  assert 0 < len(kept) < len(syn.ratings)
  assert (kept.n_users, kept.n_items) == (syn.n_users, syn.n_items)
  imp = splits.apply_filters(syn.ratings, implicit_threshold=4.0)
  assert len(imp) == int((syn.ratings.ratings >= 4).sum())
  assert (imp.ratings == 1.0).all()


def test_bad_names(syn):
  with pytest.raises(UserError, match="unknown split 'nope'.*user_holdout"):
    make_split(syn, "nope")
  with pytest.raises(UserError, match="ML-100K"):
    make_split(syn, "u1")
  with pytest.raises(UserError, match="test_fraction"):
    make_split(syn, "random", test_fraction=1.5)
  with pytest.raises(UserError, match="hold out"):
    make_split(syn, "heldout_users", n_heldout_users=10_000)


def test_fold_split_real(data_dir):
  ds = movielens.load_dataset("ml-100k", data_dir)
  s = make_split(ds, "u1")
  base, test = movielens.load_fold(ds, "u1")
  assert _same(s.train, base) and _same(s.test, test)
  v = make_split(ds, "u1", valid_fraction=0.1, seed=0)
  assert _same(v.test, test)
  _partition(base, v.train, v.valid)
  # on a fold file, draw r is exactly split seed r's carve-out
  assert _same(make_split(ds, "u1", valid_fraction=0.1, seed=0, valid_draw=2).valid,
               make_split(ds, "u1", valid_fraction=0.1, seed=2).valid)
  f = make_split(ds, "u1", min_user_ratings=50)
  n_u = np.bincount(ds.ratings.users, minlength=ds.n_users)
  assert (n_u[f.train.users] >= 50).all() and (n_u[f.test.users] >= 50).all()


def test_time_split_ml_latest_small(small_data_dir):
  ds = movielens.load_dataset("ml-latest-small", small_data_dir)
  s = make_split(ds, "time", time_quantile=0.98)
  cut = np.quantile(ds.ratings.timestamps, 0.98)
  assert (s.train.timestamps <= cut).all()
  assert (s.test.timestamps >= cut).all() and (s.test.timestamps > cut).all()
  later = ds.ratings.subset(ds.ratings.timestamps > cut)
  assert 0 < len(s.test) < len(later)  # some later ratings were dropped
  assert np.isin(s.test.users, s.train.users).all()
  assert np.isin(s.test.items, s.train.items).all()
  assert len(s.train) + len(later) == len(ds.ratings)
