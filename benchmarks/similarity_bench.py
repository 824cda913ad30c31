r"""Times Pearson similarity + KNN imputation (k=40); prints one JSON object.

  python benchmarks/similarity_bench.py                  # ML-100K + ML-1M
  python benchmarks/similarity_bench.py --ml20m --ml20m_users=256
  python benchmarks/similarity_bench.py --ml1m=false --ml20m_items=64  # item KNN

Ratios, each measured in the same run (speed figures only mean something
that way on these machines):
- similarity_fraction_of_peak: the GEMM FLOPs the similarity executes
  (2 U^2 I per product; 4 products with the cross-sum reuse, 6 without) over
  its time, against `matmul_gflops`, a plain float32 [B, I] @ [I, U] GEMM of
  the similarity's own block shape timed just before and after it (median).
  similarity_vs_six_products is the same with 6 products counted (what one
  block-vs-all pass without the reuse would do: the issue's 0.56).
- speedup_vs_surprise_per_pair (ML-100K u1, when scikit-surprise is
  installed; it stays optional): Surprise's fit + test over ours, per
  predicted pair, for KNNWithMeans pearson and KNNBaseline pearson_baseline
  (item-based) with k=40, both on the same --pairs random pairs of u1.base
  users and items (ours: similarity + prediction, compiled beforehand);
  surprise_rmse / ours_rmse on u1.test check it is one model. Also per
  pair of a whole fill (every missing u1.base cell): our fill_matrix against
  Surprise's fit + its measured per-pair predict time times the cells; and
  at 10x --pairs (ours measured, Surprise's predict scaled: it is linear).
  speedup_vs_surprise_marginal_per_pair is the cost of one more pair
  (Surprise's predict per pair over ours between --pairs and 10x --pairs);
  ours_fixed_s is what is left of our time at --pairs: the similarity,
  ranking and set-up, which each call pays once.
- similarity_compile_s: the compile time jax reports (jax.monitoring
  backend-compile + trace events) during the first call; never a difference
  of two timings.

ML-100K uses the real u.data when $RECAE_DATA_DIR (or --data_dir) has it,
else a synthetic matrix of that shape; ML-1M / ML-20M shapes are synthetic
(recae_jax.data.synthetic.generate). Each vectorized timing is taken after a
warm-up call (compile excluded; compile time reported separately).
fill_matrix_s is the whole job: it computes the similarity itself, then
imputes every cell. A NumPy reference with a Python loop over users (what S0
did) runs on --ref_users users and is extrapolated to all users for the
speed-up ratio.
ML-20M runs only blocked top-k neighbours for --ml20m_users query users
against all 138,493 users (never U x U). --ml20m_items runs item-based
KNNBaseline (pearson_baseline, top-k lists, impute.predict_pairs_topk) for
test pairs on that many items of the ML-20M shape against all 26,744 items,
in row blocks (never a dense I x I beyond one block), and reports the peak
RSS of the process (ru_maxrss; the synthetic data alone is reported too) and
the time per query item, extrapolated to all items.
"""

from __future__ import annotations

import json
import os
import pathlib
import resource
import time

import jax
import jax.numpy as jnp
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
flags.DEFINE_integer("ml20m_items", 0, "query items for ML-20M-shape "
                     "item-based KNNBaseline (0 = skip)")
flags.DEFINE_integer("repeats", 3, "timed repeats (median) of the similarity")
flags.DEFINE_bool("surprise", True, "compare with scikit-surprise on ML-100K "
                  "u1 when it is installed")
FLAGS = flags.FLAGS


class _CompileClock:
  """Seconds jax spends tracing and compiling, from its monitoring events."""

  EVENTS = ("/jax/core/compile/backend_compile_duration",
            "/jax/core/compile/jaxpr_trace_duration",
            "/jax/core/compile/jaxpr_to_mlir_module_duration")

  def __init__(self):
    self.total = 0.0
    jax.monitoring.register_event_duration_secs_listener(self._on)

  def _on(self, event, duration, **_):
    if event in self.EVENTS:
      self.total += duration

  def during(self, fn, *args, **kw):
    """(result, wall seconds, compile seconds) of one call."""
    c0, t0 = self.total, time.perf_counter()
    out = fn(*args, **kw)
    return out, time.perf_counter() - t0, self.total - c0


_CLOCK = None


def _clock() -> _CompileClock:
  global _CLOCK
  if _CLOCK is None:
    _CLOCK = _CompileClock()
  return _CLOCK


def _rss_mb() -> float:
  """Peak resident set size of this process so far (Linux: KiB)."""
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _matmul_gflops(b: int, i: int, u: int, repeats: int = 3) -> float:
  """float32 GEMM rate at the similarity's block shape, on random data."""
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal((b, i), np.float32))
  y = jnp.asarray(rng.standard_normal((u, i), np.float32))
  f = jax.jit(lambda x, y: jnp.matmul(x, y.T,
                                      precision=jax.lax.Precision.HIGHEST))
  f(x, y).block_until_ready()
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    f(x, y).block_until_ready()
    times.append(time.perf_counter() - t0)
  return 2 * b * i * u / float(np.median(times)) / 1e9


def _similarity_speed(train: Ratings) -> dict:
  """Similarity time (median of --repeats) and its fraction of the GEMM peak."""
  u, i = train.n_users, train.n_items
  bs = similarity._default_block(u, i)
  cross = bs < u and u * u <= similarity.CROSS_LIMIT
  products = 4 if (cross or bs >= u) else 6
  _, first, compile_s = _clock().during(similarity.similarity_matrix, train)
  peaks, times = [_matmul_gflops(bs, i, u)], []
  for _ in range(max(1, FLAGS.repeats)):
    t0 = time.perf_counter()
    similarity.similarity_matrix(train)
    times.append(time.perf_counter() - t0)
    peaks.append(_matmul_gflops(bs, i, u))
  sim_s, peak = float(np.median(times)), float(np.median(peaks))
  flop = 2.0 * u * u * i
  return {"similarity_s": sim_s, "similarity_first_call_s": first,
          "similarity_compile_s": round(compile_s, 3),
          "similarity_block_rows": bs, "similarity_gemm_products": products,
          "matmul_gflops": round(peak, 1),
          "similarity_gflops": round(products * flop / sim_s / 1e9, 1),
          "similarity_fraction_of_peak": products * flop / sim_s / 1e9 / peak,
          "similarity_vs_six_products": 6 * flop / sim_s / 1e9 / peak}


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
  res.update(_similarity_speed(train))
  rng = np.random.default_rng(0)
  n = min(FLAGS.pairs, train.n_users * train.n_items)
  pu = rng.integers(0, train.n_users, n)
  pi = rng.integers(0, train.n_items, n)
  _, res["predict_pairs_s"], _ = _timed(impute.predict_pairs, train, pu, pi,
                                        neighbors=k)
  res["n_pairs"] = int(n)
  if fill:
    progress = lambda line: print(f"# {name} {line}", flush=True)
    _, first, res["fill_matrix_compile_s"] = _clock().during(
        impute.fill_matrix, train, neighbors=k, progress=progress)
    res["fill_matrix_compile_s"] = round(res["fill_matrix_compile_s"], 3)
    t0 = time.perf_counter()
    impute.fill_matrix(train, neighbors=k, progress=progress)
    res["fill_matrix_s"] = time.perf_counter() - t0
  per_user = _numpy_loop_reference(train, min(FLAGS.ref_users, train.n_users), k)
  res["numpy_loop_ref_users"] = min(FLAGS.ref_users, train.n_users)
  res["numpy_loop_extrapolated_s"] = per_user * train.n_users
  if fill:
    res["speedup_vs_numpy_loop"] = (res["numpy_loop_extrapolated_s"]
                                    / res["fill_matrix_s"])
  print(f"# {name} done", flush=True)
  return {key: (round(v, 4) if isinstance(v, float) else v)
          for key, v in res.items()}


_SURPRISE_MODELS = {  # name: (Surprise constructor kwargs, our KNNConfig kwargs)
    "knn_with_means_pearson": (
        dict(k=40, sim_options={"name": "pearson"}),
        dict(neighbors=40, positive_only=True)),
    "knn_baseline_pearson_baseline_item": (
        dict(k=40, sim_options={"name": "pearson_baseline",
                                "user_based": False}),
        dict(neighbors=40, positive_only=True, metric="pearson_baseline",
             baseline="als", shrinkage=100.0, orientation="item")),
}


def _fold(folder: pathlib.Path, name: str) -> Ratings:
  a = np.loadtxt(folder / name, dtype=np.int64)
  return Ratings(a[:, 0] - 1, a[:, 1] - 1, a[:, 2], a[:, 3], 943, 1682)


def _surprise_case() -> dict:
  """Surprise vs ours on ML-100K u1: the same models, fit + all test pairs."""
  try:
    import surprise
  except ImportError:
    return {"skipped": "scikit-surprise is not installed (pip install "
                       "scikit-surprise)"}
  d = FLAGS.data_dir or os.environ.get("RECAE_DATA_DIR")
  folder = pathlib.Path(d or "/nonexistent", "ml-100k")
  if not (folder / "u1.base").exists():
    return {"skipped": f"no {folder}/u1.base"}
  train, test = _fold(folder, "u1.base"), _fold(folder, "u1.test")
  data = surprise.Dataset.load_from_folds(
      [(str(folder / "u1.base"), str(folder / "u1.test"))],
      surprise.Reader("ml-100k"))
  s_train, s_test = next(surprise.model_selection.PredefinedKFold().split(data))
  rmse = lambda p: float(np.sqrt(np.mean((p - test.ratings) ** 2)))
  # Speed on --pairs random pairs of users and items known to u1.base (the
  # similarity is then amortised as it is in a fill); accuracy on u1.test.
  rng = np.random.default_rng(0)
  known_u, known_i = np.unique(train.users), np.unique(train.items)
  pu = rng.choice(known_u, FLAGS.pairs)
  pi = rng.choice(known_i, FLAGS.pairs)
  s_pairs = [(str(u + 1), str(i + 1), 0.0) for u, i in zip(pu, pi)]
  pu10 = rng.choice(known_u, 10 * FLAGS.pairs)
  pi10 = rng.choice(known_i, 10 * FLAGS.pairs)
  out = {"test_pairs": len(test), "speed_pairs": FLAGS.pairs}
  for name, (s_kw, o_kw) in _SURPRISE_MODELS.items():
    algo = (surprise.KNNBaseline if "baseline" in name
            else surprise.KNNWithMeans)(verbose=False, **s_kw)
    t0 = time.perf_counter()
    algo.fit(s_train)
    t1 = time.perf_counter()
    algo.test(s_pairs)
    t2 = time.perf_counter()
    s_rmse = float(surprise.accuracy.rmse(algo.test(s_test), verbose=False))
    cfg = impute.KNNConfig(rating_scale=(1.0, 5.0), **o_kw)
    _, ours_s, _ = _timed(impute.predict_pairs, train, pu, pi, cfg)
    # Ten times the pairs: our cost per extra pair (the similarity and the
    # ranking are a fixed cost per call), against Surprise's per-pair
    # predict time (its fit is its fixed cost; its predict is a Python loop,
    # linear in the pairs, so 10x its measured time is its cost there).
    _, ours_10x_s, _ = _timed(impute.predict_pairs, train, pu10, pi10, cfg)
    s_pair = (t2 - t1) / FLAGS.pairs
    ours_marginal = (ours_10x_s - ours_s) / (9 * FLAGS.pairs)
    ours, _ = impute.predict_pairs(train, test.users, test.items, cfg)
    # The whole fill (every missing cell), against Surprise's fit plus its
    # per-pair predict time over as many cells (extrapolated, not run).
    _, fill_s, _ = _timed(impute.fill_matrix, train, cfg)
    cells = train.n_users * train.n_items - len(train)
    s_fill = (t1 - t0) + (t2 - t1) / FLAGS.pairs * cells
    out[name] = {
        "surprise_fit_s": t1 - t0, "surprise_predict_s": t2 - t1,
        "ours_s": ours_s, "surprise_rmse": s_rmse, "ours_rmse": rmse(ours),
        "surprise_us_per_pair": 1e6 * (t2 - t0) / FLAGS.pairs,
        "ours_us_per_pair": 1e6 * ours_s / FLAGS.pairs,
        "speedup_vs_surprise_per_pair": (t2 - t0) / ours_s,
        "speedup_vs_surprise_predict_only": (t2 - t1) / ours_s,
        "ours_10x_pairs_s": ours_10x_s,
        "ours_marginal_us_per_pair": 1e6 * ours_marginal,
        "speedup_vs_surprise_marginal_per_pair": s_pair / ours_marginal,
        "speedup_vs_surprise_per_pair_10x_pairs": ((t1 - t0) + 10 * (t2 - t1))
                                                  / ours_10x_s,
        "ours_fixed_s": ours_s - FLAGS.pairs * ours_marginal,
        "ours_fill_s": fill_s, "fill_missing_cells": cells,
        "surprise_fill_extrapolated_s": s_fill,
        "speedup_vs_surprise_per_pair_fill": s_fill / fill_s}
  print("# surprise done", flush=True)
  return out


def _ml20m_items(n_items: int) -> dict:
  """Item-based KNNBaseline on the ML-20M shape in bounded memory."""
  big = synthetic.generate("ml-20m", seed=0).ratings
  data_rss = _rss_mb()
  rng = np.random.default_rng(0)
  items = rng.choice(big.n_items, n_items, replace=False)
  users = rng.integers(0, big.n_users, 10 * n_items)
  pair_items = np.repeat(items, 10)
  cfg = impute.KNNConfig(neighbors=FLAGS.k, positive_only=True,
                         metric="pearson_baseline", baseline="als",
                         shrinkage=100.0, orientation="item",
                         rating_scale=(1.0, 5.0))
  (pred, n_fb), wall, compile_s = _clock().during(
      impute.predict_pairs_topk, big, users, pair_items, cfg,
      block_size=min(n_items, 64))
  print("# ml-20m items done", flush=True)
  return {"users": big.n_users, "items": big.n_items, "ratings": len(big),
          "query_items": n_items, "pairs": len(users),
          "list_size": max(200, 10 * FLAGS.k),
          "seconds_incl_compile": round(wall, 2),
          "compile_s": round(compile_s, 2),
          "seconds_per_query_item": round(wall / n_items, 3),
          "extrapolated_all_items_h": round(wall / n_items * big.n_items
                                            / 3600, 2),
          "rss_after_data_mb": round(data_rss), "peak_rss_mb": round(_rss_mb()),
          "dense_item_item_would_be_mb": round(big.n_items ** 2 * 4 / 2 ** 20),
          "finite": bool(np.isfinite(pred).all()), "n_fallback": n_fb}


def main(argv):
  del argv
  out = {"date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
         "cpus": os.cpu_count(), "jax": jax.__version__,
         "backend": jax.default_backend()}
  if FLAGS.ml20m_items:  # first: its peak RSS is then its own
    out["ml-20m-items"] = _ml20m_items(FLAGS.ml20m_items)
  train, source = _ml100k()
  out["ml-100k"] = _case("ml-100k", train, source, fill=True)
  if FLAGS.surprise:
    out["surprise_ml-100k_u1"] = _surprise_case()
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
