"""Every kind of workdir (lone, sweep, `best`-style ensemble, top-N) works
with the inference entry points: recommend, similar items, embeddings,
evaluate (the library calls behind recommend.py, similar.py, embed.py and
evaluate.py; one script run checks the script path)."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from conftest import low_rank_ratings, write_ratings_csv
from recae_jax import recommend, restore, runs, sweep
from recae_jax import workdir as wd
from recae_jax.config import make_config


@pytest.fixture(scope="module")
def workdirs(tmp_path_factory):
  root = tmp_path_factory.mktemp("workdirs")
  ds, _ = low_rank_ratings(n_users=260, n_items=150)
  r = ds.ratings
  csv = root / "ratings.csv"
  write_ratings_csv(csv, r)
  data = dict(dataset=str(csv), split="random", test_fraction=0.2, valid_fraction=0.1)
  quiet = lambda _: None
  ae = dict(layers=(16,), batch_size=32, epochs=3, learning_rate=1e-2, **data)
  topn = dict(dataset=str(csv), threshold=3.0, n_test_users=40, n_valid_users=40,
              ks=(10, 100), batch_size=32, epochs=2, eval_every=1)
  out = {}
  runs.run(make_config("autorec", **ae), root / "lone", progress=quiet)
  out["lone"] = root / "lone"
  runs.run(make_config("autorec", ensemble=2, **ae), root / "ensemble", progress=quiet)
  out["ensemble"] = root / "ensemble"
  base = make_config("uautorec", **{**ae, "batch_size": 16})
  sweep.run_sweep(base, sweep.member_configs(base, sweep.parse_sweep("l2=0,1e-2")),
                  root / "sweep", progress=quiet)
  out["sweep"] = root / "sweep"
  for preset in ("mult_dae", "ease", "popularity"):
    runs.run(make_config(preset, **({**topn, "ease_lambdas": (10.0, 100.0)}
                                    if preset == "ease" else topn)),
             root / preset, progress=quiet)
    out[preset] = root / preset
  return out


@pytest.mark.parametrize("kind", ["lone", "ensemble", "sweep", "mult_dae", "ease",
                                  "popularity"])
def test_every_workdir_recommends_embeds_and_evaluates(workdirs, kind):
  rec = recommend.from_workdir(workdirs[kind])
  r = recommend.recommend(rec, 1, k=5)
  assert len(r.items) == 5 and r.items["rank"].tolist() == [1, 2, 3, 4, 5]
  seen = rec.seen.items[rec.seen.users == recommend.user_index(rec.dataset, 1)]
  shown = [recommend.find_item(rec.dataset, i) for i in r.items["movie_id"]]
  assert not set(shown) & set(seen.tolist())  # rated / clicked items excluded
  assert rec.is_topn == (kind in ("mult_dae", "ease", "popularity"))
  if rec.is_topn:
    assert r.items["predicted_rating"].isna().all()  # scores, not ratings
  else:
    lo, hi = rec.dataset.rating_scale
    assert r.items["predicted_rating"].between(lo, hi).all()
  metrics = recommend.evaluate(rec, ks=(10,))
  assert 0 <= metrics["ndcg@10"] <= 1
  if kind == "popularity":
    with pytest.raises(restore.UserError, match="no item embeddings"):
      recommend.item_embeddings(rec)
    return
  emb = recommend.item_embeddings(rec)
  assert emb.shape[0] == rec.n_items and np.all(np.isfinite(emb))
  _, table = recommend.similar_items(rec, emb, 1, k=3)
  assert len(table) == 3 and table["cosine"].between(-1, 1).all()
  if kind != "ease":
    assert recommend.user_embeddings(rec).shape[0] == rec.n_users
  if not rec.is_topn:
    e = restore.test_errors(restore.load_workdir(workdirs[kind]))
    assert np.isfinite(e["test_rmse"])
    if kind == "lone":  # the restored parameters give the run's own test RMSE
      m = json.loads((workdirs[kind] / "metrics.json").read_text())
      assert e["test_rmse"] == pytest.approx(m["test_rmse"], abs=1e-5)
    if kind == "ensemble":  # members averaged: the mean of the members' predictions
      preds = np.mean([np.load(workdirs[kind] / "members" / f"m{i}" / "test_pred.npy")
                       for i in (0, 1)], axis=0)
      target = restore.load_workdir(workdirs[kind]).problem.test.target
      assert e["test_rmse"] == pytest.approx(
          float(np.sqrt(np.mean((preds - np.asarray(target)) ** 2))), abs=1e-5)


def test_scripts_on_a_top_n_workdir(workdirs, tmp_path):
  d = workdirs["mult_dae"]
  for args in (["recommend.py", f"--workdir={d}", "--user=2", "--k=4", "--json"],
               ["recommend.py", f"--workdir={d}", "--user=2", "--k=4"],
               ["similar.py", f"--workdir={d}", "--movie=3", "--k=2", "--json"],
               ["embed.py", f"--workdir={d}", f"--out={tmp_path / 'emb'}"],
               ["evaluate.py", f"--workdir={d}", "--ks=10"]):
    p = subprocess.run([sys.executable, f"experiments/{args[0]}", *args[1:]],
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, (args, p.stderr[-2000:])
    if args[0] == "evaluate.py":
      assert 0 <= json.loads(p.stdout)["ranking"]["ndcg@10"] <= 1
    if args[0] == "recommend.py" and "--json" not in args:  # the score, not an empty rating
      header = p.stdout.splitlines()[1].split()
      assert header[-1] == "score" and "predicted_rating" not in header, p.stdout
      assert "NaN" not in p.stdout, p.stdout
  assert (tmp_path / "emb" / "items.npy").exists() and (tmp_path / "emb" / "users.npy").exists()


@pytest.mark.parametrize("kind", ["lone", "ensemble", "sweep", "mult_dae", "ease"])
def test_predict_pairs_in_original_ids_with_fallbacks(workdirs, kind):
  rec = recommend.from_workdir(workdirs[kind])
  users = ["1", "2", "99999", "3"]
  items = ["5", "99999", "7", "8"]
  pred, fallback = rec.predict(users, items)
  assert pred.shape == (4,) and pred.dtype == np.float32
  assert fallback.tolist()[1:3] == [True, True]  # unknown item / unknown user
  if rec.is_topn:
    assert np.isnan(pred[1]) and np.isnan(pred[2])
    assert not fallback[0] or rec.n_train_U[recommend.user_index(rec.dataset, 1)] == 0
  else:
    lo, hi = rec.dataset.rating_scale
    assert np.all((pred >= lo) & (pred <= hi))
    # a known pair is the model's own prediction (the same as predict_users)
    u = recommend.user_index(rec.dataset, 1)
    i = recommend.find_item(rec.dataset, 5)
    if not fallback[0]:
      assert pred[0] == pytest.approx(float(recommend.predict_users(rec, [u])[0, i]), abs=1e-5)


@pytest.mark.parametrize("kind", ["lone", "sweep", "mult_dae", "ease", "popularity"])
def test_new_user_without_retraining(workdirs, kind):
  rec = recommend.from_workdir(workdirs[kind])
  # a real user's ratings, as if they were new: the fold-in / ridge fit should
  # rank that user's held-out liked items above chance
  u = recommend.user_index(rec.dataset, 3)
  mine = rec.seen.users == u
  rated = rec.seen.items[mine]
  ratings = {str(rec.dataset.item_ids[i]): float(r) for i, r in
             zip(rated, rec.dataset.ratings.ratings[np.flatnonzero(
                 rec.dataset.ratings.users == u)][:len(rated)])} if False else {
      str(rec.dataset.item_ids[i]): 5.0 for i in rated}
  ratings["no-such-item"] = 4.0
  r = rec.recommend_new_user(ratings, k=5)
  assert r.n_unknown == 1 and r.n_known == len(rated)
  assert len(r.items) == 5
  shown = {recommend.find_item(rec.dataset, i) for i in r.items["movie_id"]}
  assert not shown & set(rated.tolist())  # rated items excluded
  want = {"lone": "ridge regression on the item codes", "sweep": "fold-in",
          "mult_dae": "fold-in", "ease": "fold-in"}.get(kind, "popularity")
  assert r.method.startswith(want)
  with pytest.raises(restore.UserError, match="none of the new user's 1 items"):
    rec.recommend_new_user({"no-such-item": 4.0}, k=5)
  with pytest.raises(restore.UserError, match="off the scale"):
    rec.recommend_new_user({str(rec.dataset.item_ids[rated[0]]): 99.0}, k=5)
  with pytest.raises(restore.UserError, match="empty"):
    rec.recommend_new_user({}, k=5)


def test_predict_and_new_user_scripts(workdirs, tmp_path):
  d = workdirs["lone"]
  pairs = tmp_path / "pairs.csv"
  pairs.write_text("user,item,extra\n1,5,a\n2,99999,b\n99999,7,c\n")
  out = tmp_path / "out" / "pred.csv"
  out.parent.mkdir()
  p = subprocess.run([sys.executable, "experiments/predict.py", f"--workdir={d}",
                      f"--pairs={pairs}", f"--out={out}"], capture_output=True, text=True,
                     timeout=300)
  assert p.returncode == 0, p.stderr[-2000:]
  import pandas as pd
  got = pd.read_csv(out)
  assert got["user"].tolist() == [1, 2, 99999] and got["extra"].tolist() == ["a", "b", "c"]
  assert got["fallback"].tolist()[1:] == [True, True]
  assert json.loads(p.stdout)["fallback"] >= 2
  new = tmp_path / "new.csv"
  new.write_text("item,rating\n1,5\n2,4\nzzz,3\n")
  p = subprocess.run([sys.executable, "experiments/recommend.py", f"--workdir={d}",
                      f"--new_user={new}", "--k=3", "--json"], capture_output=True,
                     text=True, timeout=300)
  assert p.returncode == 0, p.stderr[-2000:]
  r = json.loads(p.stdout)
  assert r["method"] == "ridge regression on the item codes" and len(r["items"]) == 3
  assert "1 of 3 rated items are not known" in p.stderr
  # bad input: one line, exit 2, nothing written
  empty = tmp_path / "empty.csv"
  empty.write_text("")
  cases = [(["recommend.py", f"--workdir={d}", f"--new_user={empty}"], "empty"),
           (["predict.py", f"--workdir={d}", f"--pairs={pairs}", f"--out={pairs}/x.csv"],
            "not writable"),
           (["predict.py", f"--workdir={d}", f"--pairs={new}", f"--out={out}"],
            "no user column")]
  for args, word in cases:
    p = subprocess.run([sys.executable, f"experiments/{args[0]}", *args[1:]],
                       capture_output=True, text=True, timeout=300)
    lines = [x for x in p.stderr.splitlines() if x.strip()]
    assert p.returncode == 2 and len(lines) == 1 and word in lines[0], (args, p.stderr)
  assert pd.read_csv(out)["user"].tolist() == [1, 2, 99999]  # OUT untouched


def test_from_frame_with_string_ids_trains_and_predicts_in_original_ids(tmp_path):
  import pandas as pd
  from recae_jax import data, train
  ds0, _ = low_rank_ratings(n_users=120, n_items=60)
  r = ds0.ratings
  df = pd.DataFrame({"reviewerID": [f"A{u:05d}X" for u in r.users],
                     "asin": [f"B{i:07d}" for i in r.items], "overall": r.ratings,
                     "unixReviewTime": 1_400_000_000 + r.timestamps * 60})
  ds = data.from_frame(df, user="reviewerID", item="asin", rating="overall",
                       timestamp="unixReviewTime", name="shop")
  cfg = make_config("autorec", split="time", time_quantile=0.9, layers=(8,), epochs=3,
                    batch_size=16, learning_rate=1e-2)
  m = train.train_and_evaluate(cfg, tmp_path / "run", dataset=ds, progress=lambda _: None)
  assert np.isfinite(m["test_rmse"]) and m["dataset"] == "shop"
  rec = recommend.from_workdir(tmp_path / "run", dataset=ds)
  pred, fallback = rec.predict(["A00001X", "nobody"], ["B0000002", "B0000003"])
  assert fallback.tolist() == [False, True] and np.all(np.isfinite(pred))
  r1 = recommend.recommend(rec, "A00001X", k=3)
  assert all(str(i).startswith("B") for i in r1.items["movie_id"])


def test_scripts_on_a_string_id_ratings_file(tmp_path):
  """similar.py / recommend.py / predict.py on a run trained from a ratings
  file with string ids (similar.py once crashed on int(item id))."""
  ds0, _ = low_rank_ratings(n_users=80, n_items=40)
  r = ds0.ratings
  lines = [f"A{u:04d},B{i:04d},{x:g}" for u, i, x in zip(r.users, r.items, r.ratings)]
  csv = tmp_path / "shop.csv"
  csv.write_text("who,asin,stars\n" + "\n".join(lines) + "\n")
  d = tmp_path / "run"
  runs.run(make_config("autorec", dataset=str(csv), columns="user=who", split="random",
                       layers=(8,), epochs=2, batch_size=16), d, progress=lambda _: None)
  pairs = tmp_path / "pairs.csv"
  pairs.write_text("user,item\nA0001,B0002\nnobody,B0003\n")
  outs = {}
  for args in (["similar.py", f"--workdir={d}", "--movie=B0003", "--k=2", "--json"],
               ["recommend.py", f"--workdir={d}", "--user=A0001", "--k=3", "--json"],
               ["predict.py", f"--workdir={d}", f"--pairs={pairs}",
                f"--out={tmp_path / 'pred.csv'}"]):
    p = subprocess.run([sys.executable, f"experiments/{args[0]}", *args[1:]],
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, (args, p.stderr[-2000:])
    outs[args[0]] = json.loads(p.stdout)
  similar = outs["similar.py"]
  assert similar["movie_id"] == "B0003"
  assert [s["movie_id"][0] for s in similar["similar"]] == ["B", "B"]
  assert outs["predict.py"]["fallback"] == 1


def test_save_npz_stores_string_ids_loadable_without_pickle(tmp_path):
  wd.save_npz(tmp_path / "a.npz", ids=np.array(["u0", "p3"], dtype=object), n=np.arange(2))
  with np.load(tmp_path / "a.npz") as z:  # allow_pickle=False: would raise on objects
    assert z["ids"].dtype.kind == "U" and z["ids"].tolist() == ["u0", "p3"]
  with pytest.raises(TypeError, match="ids is an object array of non-strings"):
    wd.save_npz(tmp_path / "b.npz", ids=np.array(["u0", 3], dtype=object))
  assert not (tmp_path / "b.npz").exists()


def test_workdirs_without_a_model_are_one_line_errors(tmp_path):
  """An impute.py workdir, or a config.json with a field this version does
  not know, is named with what it is, not 'unknown config field'."""
  knn, odd = tmp_path / "knn", tmp_path / "odd"
  for d, cfg in ((knn, {"neighbors": 40, "similarity": "pearson", "baseline": "none"}),
                 (odd, {"layers": [8], "bogus": 1})):
    d.mkdir()
    (d / "config.json").write_text(json.dumps(cfg))
  with pytest.raises(restore.UserError, match=f"^{knn} is a neighbourhood run of "
                     "experiments/impute.py: it keeps metrics, not a model"):
    recommend.from_workdir(knn)
  with pytest.raises(restore.UserError, match=f"^{odd / 'config.json'}: unknown config "
                     "field 'bogus' \\(written by another version of recae_jax\\?\\)"):
    restore.read_config(odd)
