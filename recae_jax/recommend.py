"""Use a trained autoencoder: predictions, top-N lists, embeddings, similar items.

    rec = recommend.from_workdir("runs/autorec")        # any workdir: lone, sweep, ensemble, top-N
    recommend.predict_users(rec, users_U)                # [U, I] ratings, jitted
    recommend.recommend(rec, user_id=1, k=10)            # DataFrame + cold-start note
    recommend.top_n(rec, users_U, k)                     # all users, lax.top_k blocks
    emb = recommend.item_embeddings(rec)                 # [I, D] bottleneck codes
    recommend.similar_items(rec, emb, "Liar Liar", k=10)
    recommend.evaluate(rec, ks=(10,))                    # ranking metrics on test

Orientation. A user-oriented model (U-AutoRec) reconstructs a user's row
directly. An item-oriented one (I-AutoRec) reconstructs each item's column of
users, so a user's row is read off the full item x user output, computed once
in blocks and cached (dense U x I: fine for MovieLens-sized catalogues).

Embeddings. The row entity's embedding is its bottleneck code (the encoder of
its training rating vector; S2's 128-d item codes). The column entity's
embedding is its column of the last decoder kernel: for AutoRec
(r̂_iu = g(code_i) · V[:, u] + b_u) that is exactly the vector its code is
dotted with; in deeper nets it lives in the last hidden layer's space.

Every workdir loads: a lone run; a sweep or the `best` ensemble, whose members'
predictions are averaged (embeddings come from the first member: members'
codes live in different spaces); a top-N run (Mult-VAE/DAE: scores are
logits and item embeddings the output layer's columns, user embeddings the
latent code; EASE: scores x·B and item embeddings B's columns; popularity:
scores only). Top-N scores are not ratings, so `predicted_rating` is NaN.

Ranking uses the raw (unclipped) outputs, so 5-star predictions are not all
tied; displayed ratings are clipped to the rating scale. Only items with at
least one training rating are recommended (the model never learned the
others), and items the user rated in training are excluded. A user with no
training rating is a cold start: they get the most popular items (most
training ratings) and `Recommendation.cold_start` says so.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import pathlib
from typing import Any, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd

from recae_jax import engine, ranking, restore, topn, train
from recae_jax import workdir as wd
from recae_jax.config import Config
from recae_jax.data import sparse
from recae_jax.data.types import Dataset, Ratings
from recae_jax.errors import UserError
from recae_jax.models import AutoEncoder, DenseInput
from recae_jax.pairs import fallback_values
from recae_jax.problem import RowData, build_problem
from recae_jax.restore import Restored, RestoredTopN


@dataclasses.dataclass
class Recommender:
  config: Config
  dataset: Dataset
  model: Any               # AutoEncoder, MultVAE, or None (EASE, popularity)
  params: Any              # rating models: stacked [K, ...] members (averaged)
  data: Optional[RowData]  # the model's input rows, built from train + validation
  seen: Ratings            # train + validation ratings (what the user "has rated")
  test: Ratings
  seen_rows: sparse.RowSource  # user rows marking seen items
  n_train_U: np.ndarray    # training ratings per user
  n_train_I: np.ndarray    # training ratings per item
  mean_I: np.ndarray       # training mean rating per item (cold-start display)
  kind: str = "autoencoder"  # or a top-N model: mult_vae, mult_dae, recvae, cdae, ease, popularity
  topn_scorer: Any = None  # top-N: (score_fn, ctx) of recae_jax.topn
  _table_UxI: Optional[jax.Array] = None

  @property
  def is_topn(self) -> bool:
    return self.kind != "autoencoder"

  def predict(self, user_ids, item_ids) -> tuple[np.ndarray, np.ndarray]:
    """See `predict_pairs`."""
    return predict_pairs(self, user_ids, item_ids)

  def recommend_new_user(self, ratings, k: int = 10) -> "NewUserRecommendation":
    """See `recommend_new_user`."""
    return recommend_new_user(self, ratings, k)

  @property
  def n_users(self) -> int:
    return self.seen.n_users

  @property
  def n_items(self) -> int:
    return self.seen.n_items

  @property
  def candidates_I(self) -> np.ndarray:
    return self.n_train_I > 0


def from_restored(r: Restored) -> Recommender:
  seen = r.split.train if r.split.valid is None else r.split.train.concat(r.split.valid)
  n_u = np.bincount(seen.users, minlength=seen.n_users)
  n_i = np.bincount(seen.items, minlength=seen.n_items)
  s_i = np.bincount(seen.items, weights=seen.ratings, minlength=seen.n_items)
  return Recommender(
      config=r.config, dataset=r.dataset, model=r.model, params=r.params,
      data=r.problem.full_data, seen=seen, test=r.split.test,
      seen_rows=ranking.seen_source(seen, r.config.dense_budget_mb << 20),
      n_train_U=n_u, n_train_I=n_i,
      mean_I=(s_i / np.maximum(n_i, 1)).astype(np.float32))


def from_topn(r: RestoredTopN) -> Recommender:
  p = r.protocol
  seen = p.train.concat(p.valid_in).concat(p.test_in)  # every click shown to the model
  n_u = np.bincount(seen.users, minlength=seen.n_users)
  n_i = np.bincount(p.train.items, minlength=seen.n_items)  # candidates: training clicks
  return Recommender(
      config=r.config, dataset=p.dataset, model=r.fitted["model"],
      params=r.fitted["params"], data=None, seen=seen, test=p.test_out,
      seen_rows=p.inputs, n_train_U=n_u, n_train_I=n_i,
      mean_I=np.zeros(seen.n_items, np.float32), kind=r.config.model,
      topn_scorer=(r.fitted["scorer"], r.fitted["ctx"]))


def from_workdir(workdir, dataset: Optional[Dataset] = None) -> Recommender:
  """A Recommender for any workdir (see the module docstring); pass the
  `dataset` a run was trained on when it came from code (`data.from_frame`)."""
  if restore.is_topn(workdir):
    return from_topn(restore.load_topn(workdir))
  return from_restored(restore.load_workdir(workdir, dataset=dataset))


# ------------------------------------------------------------ prediction

@functools.partial(jax.jit, static_argnames=("model", "div"))
def _apply_blocks(model: AutoEncoder, div: float, params_K, data: RowData, rows_KxB):
  """The members' average output for every row block."""
  def body(_, rows_B):
    x = data.inputs(rows_B, div)
    return None, engine.over_members(model.apply, params_K, x).mean(0) * div
  _, out = jax.lax.scan(body, None, rows_KxB)
  return out.reshape(-1, out.shape[-1])


def _item_table(rec: Recommender) -> jax.Array:
  """[U, I] raw predictions of an item-oriented model, computed once."""
  if rec._table_UxI is None:
    rows = np.arange(rec.n_items, dtype=np.int32)
    out = _apply_blocks(rec.model, float(rec.config.rating_divisor), rec.params,
                        rec.data, ranking._blocks(rows, rec.config.eval_batch_size,
                                                  rec.n_items))
    rec._table_UxI = out[: rec.n_items].T
  return rec._table_UxI


@dataclasses.dataclass(frozen=True)
class _AEScorer:
  """score_fn for `ranking`: raw model outputs, popularity for cold users."""
  model: AutoEncoder
  div: float
  user_rows: bool

  def __call__(self, ctx, rows_B):
    if self.user_rows:
      x = ctx["data"].inputs(rows_B, self.div)
      s_BxI = engine.over_members(self.model.apply, ctx["params"], x).mean(0) * self.div
    else:
      s_BxI = ctx["table"][rows_B]
    cold_B = ctx["cold_U"][jnp.minimum(rows_B, ctx["cold_U"].shape[0] - 1)]
    return jnp.where(cold_B[:, None], ctx["pop_I"][None, :], s_BxI)


def scorer(rec: Recommender) -> tuple[Any, Any]:
  """(score_fn, ctx) for `recae_jax.ranking`: raw predicted ratings (or top-N
  scores) per user row."""
  if rec.is_topn:
    return rec.topn_scorer
  user_rows = rec.config.orientation == "user"
  ctx = {"cold_U": jnp.asarray(rec.n_train_U == 0),
         "pop_I": jnp.asarray(rec.n_train_I, jnp.float32)}
  if user_rows:
    ctx.update(params=rec.params, data=rec.data)
  else:
    ctx["table"] = _item_table(rec)
  return _AEScorer(rec.model, float(rec.config.rating_divisor), user_rows), ctx


def predict_users(rec: Recommender, users: Sequence[int], clip: bool = True,
                  block_size: int = 256) -> np.ndarray:
  """[len(users), I] predicted ratings (user indices, not ids) for every item."""
  users = np.asarray(users, np.int32)
  if rec.is_topn:
    fn, ctx = rec.topn_scorer
    out = np.concatenate([np.asarray(fn(ctx, jnp.asarray(b)))
                          for b in np.asarray(ranking._blocks(users, block_size, rec.n_users))])
    return out[: len(users)]  # scores, not ratings: never clipped
  if rec.config.orientation == "user":
    out = _apply_blocks(rec.model, float(rec.config.rating_divisor), rec.params,
                        rec.data, ranking._blocks(users, block_size, rec.n_users))
    out = out[: len(users)]
  else:
    out = _item_table(rec)[jnp.asarray(users)]
  out = np.asarray(out)
  if clip:
    lo, hi = rec.dataset.rating_scale
    out = np.clip(out, lo, hi)
  return out


# ------------------------------------------------------------ top-N

def check_k(k: int, n_catalogue: int) -> None:
  if k <= 0:
    raise UserError(f"--k={k} must be positive")
  if k > n_catalogue:
    raise UserError(f"--k={k} is larger than the catalogue ({n_catalogue} "
                    f"recommendable items)")


def top_n(rec: Recommender, users: Optional[Sequence[int]] = None, k: int = 10,
          block_size: int = 256) -> tuple[np.ndarray, np.ndarray]:
  """(item indices [U, k], raw scores [U, k]) for user indices (default all),
  excluding items each user rated in training; vectorized over user blocks."""
  check_k(k, int(rec.candidates_I.sum()))
  users = np.arange(rec.n_users, dtype=np.int32) if users is None else np.asarray(
      users, np.int32)
  fn, ctx = scorer(rec)
  return ranking.top_k(fn, ctx, users, k, exclude=rec.seen_rows,
                       candidates_I=rec.candidates_I, n_items=rec.n_items,
                       pad_row=rec.n_users, block_size=block_size)


def top_n_frame(rec: Recommender, users: Optional[Sequence[int]] = None,
                k: int = 10) -> pd.DataFrame:
  """All users' (default) top-k as a long table: user_id, rank, movie_id, title,
  predicted_rating (clipped; the item mean for cold-start users), cold_start."""
  users = np.arange(rec.n_users) if users is None else np.asarray(users)
  idx, score = top_n(rec, users, k)
  lo, hi = rec.dataset.rating_scale
  cold_U = rec.n_train_U[users] == 0
  pred = np.where(cold_U[:, None], rec.mean_I[idx], np.clip(score, lo, hi))
  n = len(users)
  return pd.DataFrame({
      "user_id": np.repeat(np.asarray(rec.dataset.user_ids)[users], k),
      "rank": np.tile(np.arange(1, k + 1), n),
      "movie_id": np.asarray(rec.dataset.item_ids)[idx.reshape(-1)],
      "title": titles(rec.dataset)[idx.reshape(-1)],
      "predicted_rating": pred.reshape(-1).astype(np.float32),
      "cold_start": np.repeat(cold_U, k)})


def user_index(dataset: Dataset, user_id) -> int:
  """Index of an original user id (integer or string ids); UserError if unknown."""
  ids = np.asarray(dataset.user_ids)
  pos = int(id_indices(ids, [user_id])[0])
  if pos >= 0:
    return pos
  text = str(user_id).strip()
  if ids.dtype.kind in "iu":
    if not _is_integer(text):
      raise UserError(f"user id {user_id!r} is not an integer")
    raise UserError(f"unknown user id {text} in {dataset.name} "
                    f"(ids run from {ids.min()} to {ids.max()}, {len(ids)} users)")
  raise UserError(f"unknown user id {text} in {dataset.name} ({len(ids)} users)")


def _is_integer(text: str) -> bool:
  return text.lstrip("+-").isdigit()


@dataclasses.dataclass
class Recommendation:
  user_id: Any
  items: pd.DataFrame      # rank, movie_id, title, predicted_rating, score
  cold_start: bool
  note: str

  def to_json(self) -> dict:
    return {"user_id": self.user_id, "cold_start": self.cold_start,
            "note": self.note, "items": self.items.to_dict(orient="records")}


def titles(dataset: Dataset) -> np.ndarray:
  if dataset.items_info is not None and "title" in dataset.items_info:
    return dataset.items_info["title"].astype(str).to_numpy()
  return np.array([str(i) for i in dataset.item_ids])


def recommend(rec: Recommender, user_id, k: int = 10) -> Recommendation:
  """Top-k unseen movies for one user (original id), with titles."""
  u = user_index(rec.dataset, user_id)
  idx, score = top_n(rec, [u], k)
  idx, score = idx[0], score[0]
  cold = bool(rec.n_train_U[u] == 0)
  lo, hi = rec.dataset.rating_scale
  if rec.is_topn:
    pred = np.full(len(idx), np.nan)
    note = (f"user {user_id}: {rec.kind} top-N scores (not ratings); "
            f"{int(rec.n_train_U[u])} clicks shown to the model excluded; top {k} "
            f"of {int(rec.candidates_I.sum())} items")
  elif cold:
    pred = rec.mean_I[idx]
    note = (f"user {user_id} has no training ratings (cold start): showing the "
            f"{k} most-rated movies; predicted_rating is each movie's mean rating")
  else:
    pred = np.clip(score, lo, hi)
    note = (f"user {user_id}: {int(rec.n_train_U[u])} training ratings excluded; "
            f"top {k} of {int(rec.candidates_I.sum())} movies")
  items = pd.DataFrame({
      "rank": np.arange(1, len(idx) + 1),
      "movie_id": np.asarray(rec.dataset.item_ids)[idx],
      "title": titles(rec.dataset)[idx],
      "predicted_rating": np.round(pred.astype(float), 3),
      "score": np.round(score.astype(float), 4)})
  uid = rec.dataset.user_ids[u]
  return Recommendation(uid.item() if hasattr(uid, "item") else uid, items, cold, note)


# ------------------------------------------------------------ embeddings

@functools.partial(jax.jit, static_argnames=("model", "div"))
def _encode_blocks(model: AutoEncoder, div: float, params, data: RowData, rows_KxB):
  def body(_, rows_B):
    return None, model.encode(engine.member(params, 0), data.inputs(rows_B, div))
  _, out = jax.lax.scan(body, None, rows_KxB)
  return out.reshape(-1, out.shape[-1])


def _last_decoder_kernel(rec: Recommender) -> np.ndarray:
  """[H, N] output kernel of the first member (members' spaces differ)."""
  return np.asarray(rec.model.output_rows(engine.member(rec.params, 0))).T


def _topn_embeddings(rec: Recommender, kind: str) -> np.ndarray:
  """Top-N models: Mult-VAE/DAE, RecVAE, CDAE items = output-layer columns,
  users = latent codes (CDAE's with the user's vector); EASE items = columns
  of B (zero for non-candidates)."""
  if rec.kind in ("mult_vae", "mult_dae", "recvae", "cdae"):
    mult = rec.kind in ("mult_vae", "mult_dae")
    if kind == "item":
      return (np.asarray(rec.params["dec_out"]["kernel"]).T.copy() if mult
              else np.asarray(rec.model.item_embeddings(rec.params)).copy())
    fn = jax.jit(lambda p, rows: rec.model.encode(
        p, rec.seen_rows.gather(rows)[0], *(() if mult else (rows,))))
    users = np.arange(rec.n_users, dtype=np.int32)
    blocks = np.asarray(ranking._blocks(users, 512, rec.n_users))
    return np.concatenate([np.asarray(fn(rec.params, jnp.asarray(b))) for b in blocks]
                          )[: rec.n_users]
  if rec.kind == "ease" and kind == "item":
    _, ctx = rec.topn_scorer
    cols = np.asarray(ctx["cols_C"])
    out = np.zeros((rec.n_items, len(cols)), np.float32)
    out[cols] = np.asarray(ctx["b_CxC"]).T
    return out
  raise UserError(f"a {rec.kind} run has no {kind} embeddings"
                  + ("; EASE has item embeddings only" if rec.kind == "ease" else ""))


def row_codes(rec: Recommender, block_size: int = 512) -> np.ndarray:
  """Bottleneck codes of every model row (items or users), [R, D]."""
  n = rec.data.n_rows
  out = _encode_blocks(rec.model, float(rec.config.rating_divisor), rec.params,
                       rec.data, ranking._blocks(np.arange(n), block_size, n))
  return np.asarray(out[:n])


def item_embeddings(rec: Recommender) -> np.ndarray:
  """[I, D]: codes (item-oriented) or output-kernel columns (user-oriented)."""
  if rec.is_topn:
    return _topn_embeddings(rec, "item")
  if rec.config.orientation == "item":
    return row_codes(rec)
  return _last_decoder_kernel(rec).T.copy()


def user_embeddings(rec: Recommender) -> np.ndarray:
  """[U, D]: codes (user-oriented) or output-kernel columns (item-oriented)."""
  if rec.is_topn:
    return _topn_embeddings(rec, "user")
  if rec.config.orientation == "user":
    return row_codes(rec)
  return _last_decoder_kernel(rec).T.copy()


def export_embeddings(path, emb_NxD: np.ndarray, frame: pd.DataFrame) -> list[pathlib.Path]:
  """Writes PATH.npy (float32) and PATH.csv (one row per embedding row, same
  order), and PATH.parquet (ids + embedding columns) when pyarrow is present."""
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  if len(frame) != len(emb_NxD):
    raise ValueError("frame and embeddings differ in length")
  written = [path.with_suffix(".npy"), path.with_suffix(".csv")]
  wd.save_npy(written[0], emb_NxD.astype(np.float32))  # atomic: a failure keeps the old file
  frame.to_csv(written[1], index=False)
  try:
    import pyarrow  # noqa: F401
  except ImportError:
    return written
  full = frame.copy()
  for j in range(emb_NxD.shape[1]):  # columns, not rows: a few hundred at most
    full[f"e{j}"] = emb_NxD[:, j].astype(np.float32)
  full.to_parquet(path.with_suffix(".parquet"), index=False)
  return written + [path.with_suffix(".parquet")]


def item_frame(rec: Recommender) -> pd.DataFrame:
  return pd.DataFrame({"index": np.arange(rec.n_items),
                       "movie_id": np.asarray(rec.dataset.item_ids),
                       "title": titles(rec.dataset),
                       "n_train_ratings": rec.n_train_I,
                       "primary_genre": primary_genres(rec.dataset)})


def user_frame(rec: Recommender) -> pd.DataFrame:
  return pd.DataFrame({"index": np.arange(rec.n_users),
                       "user_id": np.asarray(rec.dataset.user_ids),
                       "n_train_ratings": rec.n_train_U})


def primary_genres(dataset: Dataset) -> np.ndarray:
  """Each movie's first listed genre (skipping 'unknown' when another is set)."""
  info, genres = dataset.items_info, [g for g in dataset.genres]
  if info is None or not genres:
    return np.full(dataset.n_items, "unknown", dtype=object)
  g_IxG = info[genres].to_numpy(np.float32) > 0
  if "unknown" in genres:
    j = genres.index("unknown")
    g_IxG[:, j] &= g_IxG.sum(axis=1) == 1
  first = np.argmax(g_IxG, axis=1)
  return np.where(g_IxG.any(axis=1), np.asarray(genres, dtype=object)[first],
                  "unknown")


def pca_2d(x_NxD: np.ndarray) -> np.ndarray:
  """First two principal components (float64 SVD on the centred data)."""
  x = np.asarray(x_NxD, np.float64)
  x = x - x.mean(axis=0)
  if x.shape[1] <= 2:
    return np.pad(x, ((0, 0), (0, 2 - x.shape[1])))
  _, _, vt = np.linalg.svd(x, full_matrices=False)
  return x @ vt[:2].T


# ------------------------------------------------------------ similar items

def cosine_scores(e_IxD: jax.Array, rows_B: jax.Array) -> jax.Array:
  """Cosine similarity of query rows to every row (unit rows), self = -inf."""
  s_BxI = e_IxD[rows_B] @ e_IxD.T
  return jnp.where(jnp.arange(e_IxD.shape[0])[None, :] == rows_B[:, None],
                   -jnp.inf, s_BxI)


def find_item(dataset: Dataset, query) -> int:
  """Index of a movie given by its id (integer or string ids, e.g. the ASIN
  '0528881469') or by title: exact (case-insensitive) match first, else a
  unique case-insensitive substring."""
  text = str(query).strip()
  ids = np.asarray(dataset.item_ids)
  pos = int(id_indices(ids, [text])[0])
  if pos >= 0:  # an exact id wins over titles (and over ids it is part of)
    return pos
  if ids.dtype.kind in "iu" and _is_integer(text):
    raise UserError(f"unknown movie id {text} in {dataset.name}")
  if dataset.items_info is None or "title" not in dataset.items_info:
    raise UserError(f"unknown movie id {text!r} in {dataset.name} ({len(ids)} movies; "
                    "it has no titles, so give an id exactly as in the file)")
  if not text:
    raise UserError("empty movie title")
  names = titles(dataset)
  lower = pd.Series(names).str.lower()
  exact = np.flatnonzero((lower == text.lower()).to_numpy())
  if len(exact) == 1:
    return int(exact[0])
  hits = exact if len(exact) else np.flatnonzero(
      lower.str.contains(text.lower(), regex=False).to_numpy())
  if len(hits) == 1:
    return int(hits[0])

  def show(ix):
    return "; ".join(f"{names[i]} (id {ids[i]})" for i in ix[:10]) + (
        f"; ... {len(ix) - 10} more" if len(ix) > 10 else "")
  if len(hits) > 1:
    raise UserError(f"movie {text!r} is ambiguous, {len(hits)} titles match: "
                    f"{show(hits)}; give more of the title or --movie=ID")
  close = difflib.get_close_matches(text.lower(), lower.tolist(), n=5, cutoff=0.5)
  near = np.flatnonzero(lower.isin(close).to_numpy())
  hint = f"; did you mean: {show(near)}" if len(near) else ""
  raise UserError(f"no movie title contains {text!r} in {dataset.name}{hint}")


def similar_to(emb_IxD: np.ndarray, items: Sequence[int], k: int,
               valid_I: Optional[np.ndarray] = None,
               block_size: int = 256) -> tuple[np.ndarray, np.ndarray]:
  """(indices [Q, k], cosine [Q, k]) of each query item's k nearest items,
  blocked over queries; rows with `valid_I` False are never returned."""
  e = jnp.asarray(emb_IxD, jnp.float32)
  e = e / jnp.maximum(jnp.linalg.norm(e, axis=1, keepdims=True), 1e-12)
  n = e.shape[0]
  return ranking.top_k(cosine_scores, e, np.asarray(items, np.int32), k,
                       candidates_I=valid_I, n_items=n, pad_row=n - 1,
                       block_size=block_size)


def similar_items(rec: Recommender, emb_IxD: np.ndarray, movie, k: int = 10
                  ) -> tuple[int, pd.DataFrame]:
  """(query index, table of the k most similar movies) by embedding cosine.
  Movies with no training rating share one uninformative code and are skipped."""
  q = find_item(rec.dataset, movie)
  valid = rec.candidates_I.copy()
  valid[q] = False
  check_k(k, int(valid.sum()))
  idx, sim = similar_to(emb_IxD, [q], k, valid)
  table = pd.DataFrame({
      "rank": np.arange(1, k + 1),
      "movie_id": np.asarray(rec.dataset.item_ids)[idx[0]],
      "title": titles(rec.dataset)[idx[0]],
      "cosine": np.round(sim[0].astype(float), 4),
      "n_train_ratings": rec.n_train_I[idx[0]]})
  return q, table


# ------------------------------------------------------------ evaluation

def evaluate(rec: Recommender, ks: Sequence[int] = (10,), threshold: float = 4.0,
             block_size: int = 256) -> dict:
  """Ranking metrics on the test split: relevant = test rating >= threshold,
  excluding the items each user rated in train/validation."""
  fn, ctx = scorer(rec)
  if rec.is_topn:  # the held-out users' predict part: every click is relevant
    threshold = None
  relevant = ranking.relevance_source(rec.test, threshold,
                                      rec.config.dense_budget_mb << 20)
  users = np.unique(rec.test.users if threshold is None
                    else rec.test.users[rec.test.ratings >= threshold])
  out = ranking.evaluate_ranking(
      fn, ctx, users, relevant=relevant, exclude=rec.seen_rows,
      candidates_I=rec.candidates_I, n_items=rec.n_items, pad_row=rec.n_users,
      ks=ks, block_size=block_size)
  out["relevance_threshold"] = threshold
  return out


# ------------------------------------------- rating AEs on the top-N protocol

def run_rating_ae(ae_config, protocol: topn.Protocol, workdir, *, ks=(20, 50, 100),
                  progress=print) -> dict:
  """Trains a rating AE (a train.Config) on `rating_split(protocol)` and ranks
  the test users' unseen candidates by its predicted ratings."""
  split = topn.rating_split(protocol, ae_config.valid_fraction or 0.05, ae_config.split_seed)
  problem = build_problem(ae_config, protocol.dataset, split)
  metrics = train.train_and_evaluate(ae_config, workdir, problem=problem,
                                     progress=progress)
  model, params, meta = restore.restore_params(ae_config, workdir, problem)
  rec = from_restored(restore.Restored(
      pathlib.Path(workdir), ae_config, protocol.dataset, split, problem, model,
      params, meta))
  fn, ctx = scorer(rec)
  test = topn.evaluate_users(fn, ctx, protocol, protocol.test_users, ks=ks)
  valid = topn.evaluate_users(fn, ctx, protocol, protocol.valid_users, ks=ks)
  return {"model": f"{ae_config.orientation}-autoencoder", "test": test,
          "valid": valid, "best_epoch": metrics["best_epoch"],
          "test_rmse_predict_part": metrics["test_rmse"],
          "train_seconds": metrics["train_seconds"]}


# ------------------------------------------------- pairs and new users

def id_indices(ids: np.ndarray, wanted) -> np.ndarray:
  """Indices of original ids (int or string ids, given as ints or strings);
  -1 for an id the dataset does not hold."""
  ids = np.asarray(ids)
  wanted = pd.Series(np.asarray(wanted, dtype=object)).astype(str).str.strip()
  if ids.dtype.kind in "iu":
    as_int = pd.to_numeric(wanted, errors="coerce")
    ok = as_int.notna() & (as_int == as_int.round())
    keys = pd.Series(np.where(ok, as_int.fillna(0), -(2**62)), dtype="int64")
    idx = pd.Index(ids).get_indexer(keys)
    return np.where(ok, idx, -1).astype(np.int64)
  return pd.Index(ids.astype(str)).get_indexer(wanted).astype(np.int64)


def predict_pairs(rec: Recommender, user_ids, item_ids) -> tuple[np.ndarray, np.ndarray]:
  """(prediction float32 [n], fallback bool [n]) for pairs in original ids.

  Rating models: the members' averaged predicted rating, clipped to the
  scale. A pair whose user or item the model never saw (unknown id, or no
  training rating) falls back to the item's training mean, else the user's,
  else the global mean (`--fallback=global`: always the global mean), and is
  flagged. Top-N models: the raw score; an unknown pair's score is NaN."""
  users = id_indices(rec.dataset.user_ids, user_ids)
  items = id_indices(rec.dataset.item_ids, item_ids)
  if len(users) != len(items):
    raise UserError(f"{len(users)} user ids but {len(items)} item ids")
  known = (users >= 0) & (items >= 0)
  known &= (np.append(rec.n_train_U, 0)[users] > 0) & (np.append(rec.n_train_I, 0)[items] > 0)
  out = np.full(len(users), np.nan, np.float32)
  uniq, inv = np.unique(users[known], return_inverse=True)
  if len(uniq):
    scores_UxI = predict_users(rec, uniq)  # one row per distinct known user
    out[known] = scores_UxI[inv, items[known]]
  if not rec.is_topn:
    need, value = fallback_values(rec.seen, users, items, rec.config.fallback)
    out = np.where(known & ~need, out, value).astype(np.float32)
    return out, ~known | need
  return out, ~known


@dataclasses.dataclass
class NewUserRecommendation:
  items: pd.DataFrame     # rank, movie_id, title, predicted_rating, score
  method: str             # "fold-in" or "ridge regression on the item codes"
  n_known: int            # rated items the model knows
  n_unknown: int          # rated items it does not (ignored, warned about)

  def to_json(self) -> dict:
    return {"method": self.method, "n_known_items": self.n_known,
            "n_unknown_items": self.n_unknown,
            "items": self.items.to_dict(orient="records")}


RIDGE = 1.0  # λ of the new user's output weights (item-oriented models)


def _hidden_rows(rec: Recommender) -> np.ndarray:
  """[K, I, H]: each member's last hidden layer for every item row."""
  div = float(rec.config.rating_divisor)
  fn = jax.jit(lambda p, rows: engine.over_members(
      lambda q, x: rec.model.hidden(q, x), p, rec.data.inputs(rows, div)))
  n = rec.data.n_rows
  blocks = np.asarray(ranking._blocks(np.arange(n), 512, n))
  return np.concatenate([np.asarray(fn(rec.params, jnp.asarray(b))) for b in blocks],
                        axis=1)[:, :n]


def _new_user_scores(rec: Recommender, items: np.ndarray, values: np.ndarray
                     ) -> tuple[np.ndarray, str]:
  """Scores over every item for a user who rated `items` with `values`."""
  if rec.is_topn:
    fn, ctx = rec.topn_scorer
    x = np.zeros((1, rec.n_items), np.float32)
    x[0, items] = np.where(values >= rec.config.threshold, 1.0, 0.0)
    if rec.kind == "popularity":
      return np.asarray(ctx, np.float32), "popularity (no personalisation)"
    if rec.kind == "ease":
      s = np.full(rec.n_items, -np.inf, np.float32)
      cols = np.asarray(ctx["cols_C"])
      s[cols] = x[0, cols] @ np.asarray(ctx["b_CxC"])
      return s, "fold-in"
    logits = rec.model.apply(rec.params, jnp.asarray(x))[0]
    return np.asarray(logits)[0], "fold-in"
  div = float(rec.config.rating_divisor)
  if rec.config.orientation == "user":  # the row goes through the model
    x = np.zeros((1, rec.n_items), np.float32)
    x[0, items] = values / div
    if rec.data.side_RxS is not None:
      raise UserError("a new user has no side features: this model was trained with "
                      f"--side_features={','.join(rec.config.side_features)}")
    inp = DenseInput(jnp.asarray(x), jnp.asarray(x != 0))
    out = engine.over_members(rec.model.apply, rec.params, inp).mean(0)
    return np.asarray(out)[0] * div, "fold-in"
  # Item-oriented: the user is an output column. Fit its weights v and bias c
  # to the rated items' hidden codes in closed form (ridge regression), then
  # score every item as g(h_i · v + c + b_i) (b_i: the item's --row_bias, or 0).
  if rec.config.output_activation != "identity":
    raise UserError("a new user of an item-oriented model is fitted by ridge "
                    "regression, which needs --output_activation=identity")
  h_KxIxH = _hidden_rows(rec)
  b_KxI = (np.asarray(rec.params["row_bias"]) if rec.model.row_bias
           else np.zeros(h_KxIxH.shape[:2], np.float32))
  scores = []
  for h_IxH, b_I in zip(h_KxIxH, b_KxI):  # a handful of members
    a = np.concatenate([h_IxH[items], np.ones((len(items), 1), np.float32)], 1)
    reg = RIDGE * np.eye(a.shape[1])
    reg[-1, -1] = 0.0  # the bias is not regularised
    w = np.linalg.solve(a.T.astype(np.float64) @ a + reg, a.T @ (values / div - b_I[items]))
    scores.append(np.concatenate([h_IxH, np.ones((len(h_IxH), 1))], 1) @ w + b_I)
  return (np.mean(scores, 0) * div).astype(np.float32), "ridge regression on the item codes"


def recommend_new_user(rec: Recommender, ratings, k: int = 10) -> NewUserRecommendation:
  """Top-k items for someone not in the training data, from their ratings
  (a DataFrame or mapping item -> rating, original item ids), without
  retraining. User-oriented models fold the new row in; item-oriented ones
  fit the user's output weights by ridge regression on the item codes.
  Rated items are excluded; unknown items are counted and ignored."""
  if isinstance(ratings, dict):
    ratings = pd.DataFrame({"item": list(ratings), "rating": list(ratings.values())})
  if len(ratings) == 0:
    raise UserError("the new user's ratings are empty: give item,rating rows")
  values = pd.to_numeric(ratings["rating"], errors="coerce").to_numpy(np.float64)
  lo, hi = rec.dataset.rating_scale
  bad = np.isnan(values) | (values < lo) | (values > hi)
  if bad.any():
    j = int(np.flatnonzero(bad)[0])
    raise UserError(f"rating {ratings['rating'].iloc[j]!r} of item "
                    f"{ratings['item'].iloc[j]!r} is off the scale [{lo:g}, {hi:g}]")
  idx = id_indices(rec.dataset.item_ids, ratings["item"])
  known = (idx >= 0) & (rec.n_train_I[np.maximum(idx, 0)] > 0)
  if not known.any():
    raise UserError(f"none of the new user's {len(idx)} items is known to the model "
                    f"(items with training ratings in {rec.dataset.name})")
  items, values = idx[known], values[known]
  scores, method = _new_user_scores(rec, items, values)
  allowed = rec.candidates_I.copy()
  allowed[idx[idx >= 0]] = False  # exclude everything the user rated
  check_k(k, int(allowed.sum()))
  s = np.where(allowed, scores, -np.inf)
  top = np.argsort(-s, kind="stable")[:k]
  pred = (np.full(k, np.nan) if rec.is_topn else np.clip(scores[top], lo, hi))
  table = pd.DataFrame({"rank": np.arange(1, k + 1),
                        "movie_id": np.asarray(rec.dataset.item_ids)[top],
                        "title": titles(rec.dataset)[top],
                        "predicted_rating": np.round(pred.astype(float), 3),
                        "score": np.round(scores[top].astype(float), 4)})
  return NewUserRecommendation(table, method, int(known.sum()), int((~known).sum()))
