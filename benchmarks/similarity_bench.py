r"""Times Pearson similarity + KNN imputation (k=40); prints one JSON object.

  python benchmarks/similarity_bench.py                  # ML-100K + ML-1M
  python benchmarks/similarity_bench.py --ml20m --ml20m_users=256

ML-100K uses the real u.data when $RECAE_DATA_DIR (or --data_dir) has it,
else a synthetic matrix of that shape; ML-1M / ML-20M shapes are synthetic
(recae_jax.data.synthetic.generate). Each vectorized timing is taken after a
warm-up call (compile excluded; compile time reported separately).
fill_matrix_s is the whole job: it computes the similarity itself, then
imputes every cell. A NumPy reference with a Python loop over users (what S0
did) runs on --ref_users users and is extrapolated to all users for the
speed-up ratio.
ML-20M runs only blocked top-k neighbours for --ml20m_users query users
against all 138,493 users (never U x U).
"""

from __future__ import annotations

import json
import os
import pathlib
import time

import numpy as np
from absl import app, flags

from recae_jax import impute, similarity
from recae_jax.data import synthetic
from recae_jax.data.types import Ratings

flags.DEFINE_string("data_dir", None, "dir with ml-100k/ (default "
                    "$RECAE_DATA_DIR)")
flags.DEFINE_integer("k", 40, "neighbours")
flags.DEFINE_integer("ref_users", 30, "users timed in the NumPy-loop reference")
flags.DEFINE_bool("ml1m", True, "time the ML-1M shape")
flags.DEFINE_bool("ml1m_fill", False, "also time fill_matrix on all ML-1M "
                  "cells (slow: ~minutes on 2 CPU cores)")
flags.DEFINE_integer("pairs", 100_000, "test pairs predicted for ML-1M")
flags.DEFINE_bool("ml20m", False, "time blocked top-k on the ML-20M shape")
flags.DEFINE_integer("ml20m_users", 256, "query users for ML-20M top-k")
FLAGS = flags.FLAGS


def _timed(fn, *args, **kw):
  t0 = time.perf_counter()
  out = fn(*args, **kw)
  first = time.perf_counter() - t0
  t0 = time.perf_counter()
  out = fn(*args, **kw)
  return out, time.perf_counter() - t0, first


def _ml100k() -> tuple[Ratings, str]:
  d = FLAGS.data_dir or os.environ.get("RECAE_DATA_DIR")
  path = pathlib.Path(d or "/nonexistent", "ml-100k", "u.data")
  if path.exists():
    a = np.loadtxt(path, dtype=np.int64)
    return Ratings(a[:, 0] - 1, a[:, 1] - 1, a[:, 2], a[:, 3], 943, 1682), "real"
  return synthetic.generate("ml-100k", seed=0).ratings, "synthetic"


def _numpy_loop_reference(train: Ratings, n_users: int, k: int) -> float:
  """Seconds per user for S0-style code: a Python loop over users."""
  r = np.zeros((train.n_users, train.n_items))
  m = np.zeros((train.n_users, train.n_items), bool)
  r[train.users, train.items] = train.ratings
  m[train.users, train.items] = True
  mu = (r.sum(1) / np.maximum(m.sum(1), 1))
  dev = np.where(m, r - mu[:, None], 0.0)
  t0 = time.perf_counter()
  for a in range(n_users):  # the slow reference, on purpose
    co = m[a][None, :] & m
    n = co.sum(1)
    ra = np.where(co, r[a], 0.0)
    rb = np.where(co, r, 0.0)
    sa, sb = ra.sum(1), rb.sum(1)
    nn = np.maximum(n, 1)
    cov = (ra * rb).sum(1) - sa * sb / nn
    va = (ra * ra).sum(1) - sa * sa / nn
    vb = (rb * rb).sum(1) - sb * sb / nn
    with np.errstate(invalid="ignore", divide="ignore"):
      sim = np.where((va > 0) & (vb > 0), cov / np.sqrt(va * vb), 0.0)
    sim[a] = -np.inf
    order = np.argsort(-sim, kind="stable")
    ranked = m[order]                           # [U, I] raters in sim order
    take = ranked & (np.cumsum(ranked, 0) <= k)
    w = np.where(np.isfinite(sim[order]), sim[order], 0.0)[:, None] * take
    den = np.abs(w).sum(0)
    _ = mu[a] + np.where(den > 0, (w * dev[order]).sum(0) / np.maximum(den, 1e-12), 0)
  return (time.perf_counter() - t0) / n_users


def _case(name: str, train: Ratings, source: str, fill: bool) -> dict:
  k = FLAGS.k
  res = {"users": train.n_users, "items": train.n_items,
         "ratings": len(train), "data": source, "k": k}
  _, res["similarity_s"], first = _timed(similarity.similarity_matrix, train)
  res["similarity_compile_s"] = round(first - res["similarity_s"], 3)
  rng = np.random.default_rng(0)
  n = min(FLAGS.pairs, train.n_users * train.n_items)
  pu = rng.integers(0, train.n_users, n)
  pi = rng.integers(0, train.n_items, n)
  _, res["predict_pairs_s"], _ = _timed(impute.predict_pairs, train, pu, pi,
                                        neighbors=k)
  res["n_pairs"] = int(n)
  if fill:
    _, res["fill_matrix_s"], first = _timed(impute.fill_matrix, train,
                                            neighbors=k)
    res["fill_matrix_compile_s"] = round(first - res["fill_matrix_s"], 3)
  per_user = _numpy_loop_reference(train, min(FLAGS.ref_users, train.n_users), k)
  res["numpy_loop_ref_users"] = min(FLAGS.ref_users, train.n_users)
  res["numpy_loop_extrapolated_s"] = per_user * train.n_users
  if fill:
    res["speedup_vs_numpy_loop"] = (res["numpy_loop_extrapolated_s"]
                                    / res["fill_matrix_s"])
  print(f"# {name} done", flush=True)
  return {key: (round(v, 4) if isinstance(v, float) else v)
          for key, v in res.items()}


def main(argv):
  del argv
  out = {}
  train, source = _ml100k()
  out["ml-100k"] = _case("ml-100k", train, source, fill=True)
  if FLAGS.ml1m:
    out["ml-1m"] = _case("ml-1m", synthetic.generate("ml-1m", seed=0).ratings,
                         "synthetic", fill=FLAGS.ml1m_fill)
  if FLAGS.ml20m:
    big = synthetic.generate("ml-20m", seed=0).ratings
    rows = np.arange(min(FLAGS.ml20m_users, big.n_users))
    t0 = time.perf_counter()
    v, _ = similarity.topk_neighbors(big, FLAGS.k, rows=rows,
                                     block_size=len(rows))
    out["ml-20m"] = {"users": big.n_users, "items": big.n_items,
                     "ratings": len(big), "query_users": len(rows),
                     "topk_s_incl_compile": round(time.perf_counter() - t0, 2),
                     "finite": bool(np.isfinite(v).all())}
  print(json.dumps(out, indent=2))


if __name__ == "__main__":
  app.run(main)
