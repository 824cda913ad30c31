"""Predictions, top-N, embeddings, similar items and the scripts' bad input."""

import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from conftest import low_rank_ratings
from recae_jax.problem import build_problem, load_split
from recae_jax import recommend, restore, train
from recae_jax.config import make_config
from recae_jax.data.types import Dataset, Split
from recae_jax.errors import UserError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TITLES = ["Liar Liar (1997)", "Liar (1995)", "Star Wars (1977)",
          "Star Wars: Episode I (1999)", "Toy Story (1995)"]


def _with_titles(ds: Dataset) -> Dataset:
  titles = [TITLES[i] if i < len(TITLES) else f"Movie {i} (2000)"
            for i in range(ds.n_items)]
  info = pd.DataFrame({"movie_id": ds.item_ids, "title": titles,
                       "Drama": (np.arange(ds.n_items) % 2).astype(int),
                       "Comedy": (np.arange(ds.n_items) % 3 == 0).astype(int)})
  return Dataset(ds.name, ds.ratings, ds.user_ids, ds.item_ids, ds.rating_scale,
                 items_info=info, genres=("Drama", "Comedy"))


def _cold_user_split(split: Split, user: int) -> Split:
  """Moves every train/valid rating of `user` into test (a cold start)."""
  def drop(r):
    return r.subset(r.users != user)
  moved = [r.subset(r.users == user) for r in (split.train, split.valid)]
  return Split(drop(split.train), split.test.concat(moved[0]).concat(moved[1]),
               drop(split.valid), split.name)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """Item- and user-oriented tiny AEs (3 epochs); user 0 is a cold start."""
  ds, split = low_rank_ratings(n_users=60, n_items=40, density=0.4)
  ds = _with_titles(ds)
  split = _cold_user_split(split, 0)
  recs = {}
  for orientation in ("item", "user"):
    cfg = make_config(None, dataset="tiny", orientation=orientation, layers=(8,),
                      epochs=3, batch_size=16, eval_batch_size=16)
    wd = tmp_path_factory.mktemp(orientation)
    train.train_and_evaluate(cfg, wd, problem=build_problem(cfg, ds, split),
                             progress=lambda s: None)
    recs[orientation] = recommend.from_restored(
        restore.load_workdir(wd, config=cfg, dataset=ds, split=split))
  return recs


@pytest.mark.parametrize("orientation", ["item", "user"])
def test_top_n_excludes_seen_and_matches_numpy(trained, orientation):
  rec = trained[orientation]
  users = np.arange(rec.n_users)
  pred = recommend.predict_users(rec, users, clip=False)
  assert pred.shape == (rec.n_users, rec.n_items)
  idx, score = recommend.top_n(rec, k=5, block_size=16)
  seen = np.zeros((rec.n_users, rec.n_items), bool)
  seen[rec.seen.users, rec.seen.items] = True
  assert not seen[users[:, None], idx].any()
  warm = rec.n_train_U > 0
  masked = np.where(seen | ~rec.candidates_I[None], -np.inf, pred)
  ref = np.argsort(-masked, axis=1, kind="stable")[:, :5]
  np.testing.assert_array_equal(idx[warm], ref[warm])
  np.testing.assert_allclose(score[warm], np.take_along_axis(pred, ref, 1)[warm],
                             rtol=1e-5, atol=1e-5)


def test_cold_start_falls_back_to_popularity(trained):
  rec = trained["user"]
  r = recommend.recommend(rec, user_id=1, k=4)  # user id 1 = index 0, cold
  assert r.cold_start and "cold start" in r.note
  expect = np.argsort(-rec.n_train_I, kind="stable")[:4]
  np.testing.assert_array_equal(r.items["movie_id"], rec.dataset.item_ids[expect])
  warm = recommend.recommend(rec, user_id=2, k=4)
  assert not warm.cold_start and len(warm.items) == 4
  assert set(warm.items.columns) >= {"movie_id", "title", "predicted_rating"}
  lo, hi = rec.dataset.rating_scale
  assert warm.items["predicted_rating"].between(lo, hi).all()
  frame = recommend.top_n_frame(rec, k=3)  # all users, long format
  assert len(frame) == 3 * rec.n_users
  assert frame.loc[frame.user_id == 1, "cold_start"].all()
  assert not frame.loc[frame.user_id == 2, "cold_start"].any()
  np.testing.assert_array_equal(frame.loc[frame.user_id == 2, "movie_id"],
                                warm.items["movie_id"][:3])


def test_bad_user_and_k(trained):
  rec = trained["item"]
  with pytest.raises(UserError, match="unknown user id 999"):
    recommend.recommend(rec, 999, 5)
  with pytest.raises(UserError, match="positive"):
    recommend.recommend(rec, 2, 0)
  with pytest.raises(UserError, match="catalogue"):
    recommend.recommend(rec, 2, rec.n_items + 1)


def test_find_item_by_id_and_title(trained):
  ds = trained["item"].dataset
  assert recommend.find_item(ds, "liar liar (1997)") == 0   # exact, any case
  assert recommend.find_item(ds, "Liar Liar") == 0          # unique substring
  assert recommend.find_item(ds, "Liar (1995)") == 1        # exact beats substring
  assert recommend.find_item(ds, "3") == 2                  # movie id
  with pytest.raises(UserError, match="ambiguous.*Star Wars \\(1977\\).*Episode I"):
    recommend.find_item(ds, "star wars")
  with pytest.raises(UserError, match="ambiguous.*Liar Liar.*Liar \\(1995\\)"):
    recommend.find_item(ds, "liar")
  with pytest.raises(UserError, match="no movie title contains 'Toy Storey'.*Toy Story"):
    recommend.find_item(ds, "Toy Storey")
  with pytest.raises(UserError, match="unknown movie id 9999"):
    recommend.find_item(ds, "9999")


def test_ids_that_are_strings_of_digits_are_found_as_ids():
  """A file's string ids can be all digits (ASINs such as '0528881469' keep
  their zeros); --movie / --user find them as ids, and an exact id wins over
  a longer id that contains it."""
  ds0, _ = low_rank_ratings(n_users=4, n_items=3)
  items = np.array(["0000000005", "B0003", "B00031"], dtype=object)
  users = np.array(["0528", "A1", "A2", "A3"], dtype=object)
  ds = Dataset("shop", ds0.ratings, users, items, ds0.rating_scale)
  assert recommend.find_item(ds, "0000000005") == 0
  assert recommend.find_item(ds, " B0003 ") == 1
  assert recommend.find_item(ds, "B00031") == 2
  for part in ("5", "B000"):  # no titles: ids match exactly, never in part
    with pytest.raises(UserError, match=f"unknown movie id '{part}' in shop .3 movies; "
                       "it has no titles, so give an id exactly as in the file"):
      recommend.find_item(ds, part)
  assert recommend.user_index(ds, "0528") == 0
  with pytest.raises(UserError, match="unknown user id 528 in shop \\(4 users\\)"):
    recommend.user_index(ds, 528)
  with pytest.raises(UserError, match="user id 'x5' is not an integer"):
    recommend.user_index(_with_titles(ds0), "x5")
  with pytest.raises(UserError, match="unknown user id 9999 in .*ids run from"):
    recommend.user_index(ds0, "9999")


def test_similar_items_cosine_matches_numpy(trained):
  rec = trained["item"]
  emb = recommend.item_embeddings(rec)
  assert emb.shape == (rec.n_items, 8)
  q, table = recommend.similar_items(rec, emb, "Liar Liar", k=5)
  e = emb / np.linalg.norm(emb, axis=1, keepdims=True)
  sim = e @ e[q]
  sim[q] = -np.inf
  sim[~rec.candidates_I] = -np.inf
  ref = np.argsort(-sim, kind="stable")[:5]
  np.testing.assert_array_equal(table["movie_id"], rec.dataset.item_ids[ref])
  np.testing.assert_allclose(table["cosine"], sim[ref], atol=1e-3)


def test_embeddings_export(trained, tmp_path):
  for orientation, rec in trained.items():
    items, users = recommend.item_embeddings(rec), recommend.user_embeddings(rec)
    assert items.shape[0] == rec.n_items and users.shape[0] == rec.n_users
    written = recommend.export_embeddings(tmp_path / f"{orientation}_items", items,
                                          recommend.item_frame(rec))
    arr = np.load(tmp_path / f"{orientation}_items.npy")
    np.testing.assert_allclose(arr, items, rtol=1e-6)
    frame = pd.read_csv(tmp_path / f"{orientation}_items.csv")
    assert list(frame["title"][:2]) == TITLES[:2] and len(frame) == rec.n_items
    assert {p.suffix for p in written} >= {".npy", ".csv"}
    try:
      import pyarrow  # noqa: F401
      assert (tmp_path / f"{orientation}_items.parquet").exists()
    except ImportError:
      pass


def test_evaluate_ranking_on_test(trained):
  m = recommend.evaluate(trained["item"], ks=(5,))
  assert m["n_users"] > 0
  for key in ("precision@5", "recall@5", "ndcg@5", "hit_rate@5", "map@5", "coverage@5"):
    assert 0.0 <= m[key] <= 1.0


# ---------------------------------------------------------------- scripts

@pytest.fixture(scope="module")
def real_workdir(data_dir, tmp_path_factory):
  """A 2-epoch I-AutoRec on ML-100K u1 (a few seconds)."""
  wd = tmp_path_factory.mktemp("real")
  cfg = make_config("autorec", data_dir=str(data_dir / "ml-100k"), layers=(16,),
                    epochs=2, checkpoint_every=2)
  train.train_and_evaluate(cfg, wd, progress=lambda s: None)
  return wd


def _run_all(commands):
  """Runs the scripts concurrently (each pays JAX's import once)."""
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  procs = [subprocess.Popen([sys.executable, f"experiments/{c[0]}", *c[1:]], cwd=ROOT,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True) for c in commands]
  return [(p.wait(timeout=240), p.stdout.read(), p.stderr.read()) for p in procs]


def test_scripts_bad_input_exit_2(real_workdir, tmp_path):
  empty = tmp_path / "empty"
  empty.mkdir()
  (empty / "config.json").write_text((real_workdir / "config.json").read_text())
  wd = str(real_workdir)
  cases = [
      (["recommend.py", f"--workdir={wd}", "--user=99999"], "unknown user id 99999"),
      (["recommend.py", f"--workdir={wd}", "--user=1", "--k=0"], "must be positive"),
      (["similar.py", f"--workdir={wd}", "--movie=Return of the"], "ambiguous"),
      (["embed.py", f"--workdir={empty}", f"--out={tmp_path}/e"], "no checkpoint"),
      (["evaluate.py", f"--workdir={tmp_path}/nope"], "does not exist"),
      (["plot.py", f"--workdirs={empty}", f"--out={tmp_path}/p"], "no checkpoint"),
      (["topn.py", "--models=bogus"], "unknown top-N preset"),
  ]
  for (cmd, expect), (rc, out, err) in zip(cases, _run_all([c for c, _ in cases])):
    assert rc == 2, (cmd, out, err)
    assert "Traceback" not in err, cmd
    lines = [l for l in err.splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and expect in lines[0], (
        cmd, err)


def test_scripts_happy_paths(real_workdir, tmp_path):
  import json
  wd = str(real_workdir)
  (rc1, out1, err1), (rc4, out4, err4) = _run_all([
      ["recommend.py", f"--workdir={wd}", "--user=1", "--k=5", "--json"],
      ["evaluate.py", f"--workdir={wd}", "--ks=5,10"]])
  assert rc1 == 0, err1
  rec = json.loads(out1)
  assert rec["user_id"] == 1 and len(rec["items"]) == 5
  assert rc4 == 0, err4
  ev = json.loads(out4)
  metrics = json.loads((real_workdir / "metrics.json").read_text())
  assert ev["test_rmse"] == pytest.approx(metrics["test_rmse"], rel=1e-4)
  assert 0 < ev["ranking"]["ndcg@10"] <= 1
