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

from conftest import low_rank_ratings
from recae_jax import recommend, restore, runs, sweep
from recae_jax.config import make_config


@pytest.fixture(scope="module")
def workdirs(tmp_path_factory):
  root = tmp_path_factory.mktemp("workdirs")
  ds, _ = low_rank_ratings(n_users=260, n_items=150)
  r = ds.ratings
  csv = root / "ratings.csv"
  csv.write_text("user,item,rating\n" + "".join(
      f"{u + 1},{i + 1},{int(x)}\n" for u, i, x in zip(r.users, r.items, r.ratings)))
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
               ["similar.py", f"--workdir={d}", "--movie=3", "--k=2", "--json"],
               ["embed.py", f"--workdir={d}", f"--out={tmp_path / 'emb'}"],
               ["evaluate.py", f"--workdir={d}", "--ks=10"]):
    p = subprocess.run([sys.executable, f"experiments/{args[0]}", *args[1:]],
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, (args, p.stderr[-2000:])
    if args[0] == "evaluate.py":
      assert 0 <= json.loads(p.stdout)["ranking"]["ndcg@10"] <= 1
  assert (tmp_path / "emb" / "items.npy").exists() and (tmp_path / "emb" / "users.npy").exists()
