"""Implicit-feedback top-N models under the strong-generalization protocol.

Models (`Config.model`, presets of the same names in `config.PRESETS`):

- "mult_vae": Mult-VAE (Liang et al. 2018): L2-normalised click vector,
  dropout 0.5 on the input, tanh MLP encoder to (μ, log σ²), z = μ + σ ε
  (μ at evaluation), tanh MLP decoder to logits; loss = multinomial
  log-likelihood −Σ_i x_i log softmax(logits)_i + β KL(q(z|x) || N(0, I)),
  β annealed linearly from 0 to `anneal_cap` (reached at `anneal_steps`).
- "mult_dae": the same without the variational layer (I → 200 → I, tanh).
- "recvae": RecVAE (Shenbin et al. 2020), "cdae": CDAE (Wu et al. 2016);
  see `recae_jax.topn_models` (RecVAE has its own one-jit epoch function
  for its alternating encoder / decoder passes).
- "ease": EASE (Steck 2019), closed form P = (XᵀX + λI)⁻¹,
  B = I − P · diagMat(1/diag(P)) (so diag(B) = 0); scores = x B.
- "popularity": items ranked by how many training users clicked them.

Protocol (Liang et al. on ML-20M; here on ML-100K / ml-latest-small):
ratings >= `threshold` become clicks (1), users with < `min_user_ratings`
clicks are dropped, `n_test_users` users go to test and `n_valid_users`
other users to validation with all their clicks; each held-out user's
clicks are split 80% fold-in (shown to the model, excluded from ranking) /
20% to predict (the relevant items). Models train on the remaining users
only. Items with no training click are neither candidates nor relevant.
Epochs (VAE/DAE) and λ (EASE) are chosen by validation NDCG@`select_k`
(100) — never on
test — and the test metrics are reported for that choice.

Mult-VAE/DAE, RecVAE and CDAE (`TRAINED`) train on the project's one engine (`tasks.MultinomialTask`,
`engine.make_epoch`, `loop.fit`: checkpoints and --resume included).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import pathlib
import tempfile
import time
from typing import Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from recae_jax import engine, loop, optim, ranking, topn_models
from recae_jax import workdir as wd
from recae_jax.batching import DenseBatcher
from recae_jax.config import TOPN_DEFAULTS, TOPN_MODELS, Config, make_config
from recae_jax.data import sparse, splits
from recae_jax.data.types import Dataset, Ratings, Split
from recae_jax.errors import UserError
from recae_jax.models import MultVAE
from recae_jax.problem import RowData, load_dataset
from recae_jax.tasks import Hyper, MultinomialTask

MODELS = TOPN_MODELS
TRAINED = ("mult_vae", "mult_dae", "recvae", "cdae")  # epochs on the engine + loop


def make_topn_config(preset: Optional[str] = None, **overrides) -> Config:
  """A top-N `Config`: one of the top-N presets, or (preset None) the
  protocol's defaults for building a `Protocol`."""
  if preset is not None and preset not in MODELS:
    raise UserError(f"unknown top-N preset {preset!r}; choose from {', '.join(MODELS)}")
  return make_config(preset, **{**({} if preset else TOPN_DEFAULTS), **overrides})


# ------------------------------------------------------------- protocol

@dataclasses.dataclass
class Protocol:
  """Binarized strong-generalization data, on device where it is used."""

  dataset: Dataset
  train: Ratings          # clicks of the training users
  valid_in: Ratings
  valid_out: Ratings
  test_in: Ratings
  test_out: Ratings
  candidates_I: np.ndarray   # items with >= 1 training click
  inputs: sparse.RowSource   # user rows: train clicks + every fold-in part
  relevant: sparse.RowSource  # user rows: valid_out + test_out
  train_rows: jax.Array      # int32 training users
  valid_users: np.ndarray
  test_users: np.ndarray

  @property
  def n_users(self) -> int:
    return self.train.n_users

  @property
  def n_items(self) -> int:
    return self.train.n_items

  def summary(self) -> dict:
    return {"n_train_users": int(self.train_rows.shape[0]),
            "n_valid_users": len(self.valid_users), "n_test_users": len(self.test_users),
            "n_items": int(self.candidates_I.sum()), "n_train_clicks": len(self.train),
            "n_test_fold_in": len(self.test_in), "n_test_predict": len(self.test_out)}


def _users_of(r: Ratings) -> np.ndarray:
  return np.unique(r.users)


def make_protocol(config: Config, dataset: Optional[Dataset] = None,
                  test_users: Optional[np.ndarray] = None) -> Protocol:
  """Builds the split; `dataset` overrides loading `config.dataset`.
  `test_users` (user indices; `user_folds` passes one fold) replaces the
  seeded draw of `n_test_users` test users."""
  if dataset is None:
    dataset = load_dataset(config)
  if test_users is None:
    outer = splits.make_split(dataset, "heldout_users", n_heldout_users=config.n_test_users,
                              implicit_threshold=config.threshold,
                              min_user_ratings=config.min_user_ratings,
                              seed=config.split_seed)
  else:  # the same filters as make_split's, then these users held out
    clicks = splits.apply_filters(dataset.ratings, implicit_threshold=config.threshold,
                                  min_user_ratings=config.min_user_ratings)
    is_test = np.zeros(clicks.n_users, bool)
    is_test[np.asarray(test_users, np.int64)] = True
    outer = Split(train=clicks.subset(~is_test[clicks.users]),
                  test=clicks.subset(is_test[clicks.users]), name="heldout_users")
  # Validation users come out of the training users only (test untouched).
  inner = splits.make_split(dataclasses.replace(dataset, ratings=outer.train),
                            "heldout_users", n_heldout_users=config.n_valid_users,
                            seed=config.split_seed + 1)
  train = inner.train
  cand_I = np.bincount(train.items, minlength=train.n_items) > 0

  def held(r: Ratings, seed: int):
    r = r.subset(cand_I[r.items])  # items never clicked in training are unusable
    return splits.fold_in(r, config.fold_in_fraction, seed)

  valid_in, valid_out = held(inner.test, config.split_seed + 2)
  test_in, test_out = held(outer.test, config.split_seed + 3)
  budget = config.dense_budget_mb << 20
  inputs = ranking.seen_source(train.concat(valid_in).concat(test_in), budget)
  relevant = ranking.seen_source(valid_out.concat(test_out), budget)
  return Protocol(dataset, train, valid_in, valid_out, test_in, test_out, cand_I,
                  inputs, relevant, jnp.asarray(_users_of(train).astype(np.int32)),
                  np.intersect1d(_users_of(valid_in), _users_of(valid_out)),
                  np.intersect1d(_users_of(test_in), _users_of(test_out)))


def check_cutoffs(config: Config, protocol: Protocol) -> None:
  """--select_k and --ks within the candidate items, checked before training."""
  n_cand = int(protocol.candidates_I.sum())
  for name, ks in (("select_k", (config.select_k,)), ("ks", config.ks)):
    if max(ks) > n_cand:
      raise UserError(f"--{name}={','.join(map(str, ks))}: rankings have at most "
                      f"{n_cand} items here (those clicked by training users of "
                      f"{protocol.dataset.name}); choose cut-offs up to {n_cand}")


def evaluate_users(score_fn, ctx, protocol: Protocol, users: np.ndarray,
                   ks=(20, 50, 100), block_size: int = 256, per_user: bool = False):
  """Ranking metrics for held-out `users`: fold-in items excluded; with
  `per_user`, (metrics, per-user metrics) as `ranking.evaluate_ranking_per_user`."""
  fn = ranking.evaluate_ranking_per_user if per_user else ranking.evaluate_ranking
  return fn(score_fn, ctx, users, relevant=protocol.relevant, exclude=protocol.inputs,
            candidates_I=protocol.candidates_I, n_items=protocol.n_items,
            pad_row=protocol.n_users, ks=tuple(ks), block_size=block_size)


PER_USER_FILE = "test_per_user.npz"


def test_set_key(protocol: Protocol) -> str:
  """A fingerprint of the test set (dataset, test users' fold-in and predict
  clicks): runs with equal keys were evaluated on the same test set."""
  h = hashlib.sha256(f"topn:{protocol.dataset.name}:{protocol.n_items}".encode())
  for r in (protocol.test_in, protocol.test_out):
    order = np.lexsort((r.items, r.users))
    h.update(np.ascontiguousarray(r.users[order], np.int64).tobytes())
    h.update(np.ascontiguousarray(r.items[order], np.int64).tobytes())
  return h.hexdigest()


def save_per_user(path: pathlib.Path, protocol: Protocol, per: dict) -> None:
  """workdir/test_per_user.npz: the test users (indices and dataset ids), their
  NDCG@k / Recall@k, and `test_key` (for `recae_jax.compare`)."""
  wd.save_npz(path / PER_USER_FILE, user_ids=np.asarray(protocol.dataset.user_ids)[per["users"]],
              test_key=np.array(test_set_key(protocol)), **per)


# ------------------------------------------------------------- Mult-VAE / DAE

def build_mult_model(config: Config, n_items: int) -> MultVAE:
  return MultVAE(n_items=n_items, hidden=tuple(config.hidden), latent=config.latent,
                 variational=config.model == "mult_vae")


def multinomial_metrics(loss_NbxK, aux) -> dict:
  beta, _ = aux
  return {"loss": jnp.mean(loss_NbxK, 0), "beta": beta[-1]}


@dataclasses.dataclass(frozen=True)
class MultScorer:
  """score_fn: the model's logits for the users' input rows."""
  model: MultVAE

  def __call__(self, ctx, rows_B):
    x_BxI, _ = ctx["inputs"].gather(rows_B)
    return self.model.apply(ctx["params"], x_BxI)[0]


def scorer_of(model):
  return MultScorer(model) if isinstance(model, MultVAE) else topn_models.RowScorer(model)


def epoch_of(config: Config, task, tx, batch_size: int):
  """(batcher, the jitted epoch) of a TRAINED model."""
  if config.model == "recvae":
    batcher = DenseBatcher(batch_size)
    return batcher, topn_models.make_recvae_epoch(task, tx, batcher)
  if config.model == "cdae":
    batcher = topn_models.UserRowBatcher(batch_size)
    return batcher, engine.make_epoch(task, tx, batcher, summarize=topn_models.cdae_metrics)
  batcher = DenseBatcher(batch_size)
  return batcher, engine.make_epoch(task, tx, batcher, summarize=multinomial_metrics)


def train_mult(config: Config, protocol: Protocol,
               progress: Callable[[str], None] = print, workdir=None,
               resume: bool = False, members: Sequence[Config] = (),
               member_dirs: Sequence[pathlib.Path] = ()) -> dict:
  """Trains Mult-VAE/DAE, RecVAE or CDAE on the engine; the epoch is selected by validation
  NDCG@select_k. `members` (a sweep: configs differing in seed, learning
  rate, l2, input dropout) train as the engine's members in one compiled
  epoch, their histories in `member_dirs`. Returns {"params", "model",
  "history", ...} for a lone run, {"members": [...]} for a sweep."""
  members = tuple(members) or (config,)
  k = len(members)
  n_rows = int(protocol.train_rows.shape[0])
  batch_size = min(config.batch_size, n_rows)
  task, tx = mult_task(config, protocol, -(-n_rows // batch_size))
  task = dataclasses.replace(task, use_l2=any(c.l2 > 0 for c in members))
  model = task.model
  rows = RowData(protocol.inputs, None, protocol.train_rows)
  batcher, epoch_fn = epoch_of(config, task, tx, batch_size)
  state = engine.init_state(task, tx, [c.seed for c in members], config.seed)
  scorer = scorer_of(model)
  sel = f"ndcg@{config.select_k}"

  def ndcg(params):
    return evaluate_users(scorer, {"params": params, "inputs": protocol.inputs},
                          protocol, protocol.valid_users, ks=(config.select_k,),
                          block_size=config.eval_batch_size)[sel]

  def validate(params_K):
    v = np.array([ndcg(engine.member(params_K, i)) for i in range(k)])
    return {"metric": v, f"valid_{sel}": v}

  path = None if workdir is None else pathlib.Path(workdir)
  if member_dirs:
    history_paths = [pathlib.Path(d) / "metrics.jsonl" for d in member_dirs]
  else:
    history_paths = [(path or pathlib.Path(tempfile.mkdtemp())) / "metrics.jsonl"]
  try:
    result = loop.fit(epoch_fn, state, batcher.data(rows), Hyper.from_configs(members),
                      epochs=config.epochs, validate=validate, patience=[0] * k,
                      checkpoint_dir=None if path is None else path / "checkpoints",
                      history_paths=history_paths, resume=resume,
                      checkpoint_every=config.eval_every, eval_every=config.eval_every,
                      higher_is_better=True, labels=[f"k{i:02d}" for i in range(k)],
                      progress=lambda line: progress(f"{config.model} {line}"))
  except loop.TrainingDiverged:
    raise UserError(f"{config.model} diverged; lower --learning_rate") from None
  out = []
  for i in range(k):
    params = engine.member(result.best_params, i)
    out.append({"model": model, "params": params, "scorer": scorer,
                "ctx": {"params": params, "inputs": protocol.inputs},
                "best_epoch": int(result.best_epoch[i]),
                "best_valid_ndcg": float(result.best_metric[i]),
                "history": result.histories[i], "train_seconds": result.train_seconds / k})
  return out[0] if k == 1 and not member_dirs else {"members": out}


def run_sweep(base: Config, members: Sequence[Config], workdir, *,
              progress: Callable[[str], None] = print, resume: bool = False) -> dict:
  """A Mult-VAE/DAE sweep: every member in one engine; workdir/members/kXX
  hold each member's config.json, metrics.jsonl and metrics.json (the same
  keys as a lone top-N run), workdir/metrics.json the summary."""
  if base.model not in TRAINED:
    raise UserError(f"--sweep: {base.model} has no epochs to train; sweeps need "
                    f"--preset={', '.join(TRAINED)} (EASE selects its λ itself)")
  workdir = wd.ensure_writable(workdir)
  wd.write_json(workdir / "config.json", {"base": base.to_json(),
                                          "members": [c.to_json() for c in members]})
  protocol = make_protocol(base)
  check_cutoffs(base, protocol)
  labels = [f"k{i:02d}" for i in range(len(members))]
  dirs = [workdir / "members" / lb for lb in labels]
  fitted = train_mult(base, protocol, progress, workdir=workdir, resume=resume,
                      members=members, member_dirs=dirs)["members"]
  results = []
  for cfg, d, out in zip(members, dirs, fitted):
    test, per = evaluate_users(out["scorer"], out["ctx"], protocol, protocol.test_users,
                               ks=base.ks, block_size=base.eval_batch_size, per_user=True)
    save_per_user(d, protocol, per)
    res = {"model": base.model, "dataset": protocol.dataset.name, "test": test,
           "best_epoch": out["best_epoch"], "best_valid_ndcg": out["best_valid_ndcg"],
           "train_seconds": out["train_seconds"], **protocol.summary(),
           **{f"test_{key}": v for key, v in test.items()}}
    wd.write_json(d / "config.json", cfg.to_json())
    wd.write_json(d / "metrics.json", res)
    results.append(res)
  best = int(np.argmax([r["best_valid_ndcg"] for r in results]))
  summary = {"n_members": len(members), "members": labels, "best_member": labels[best],
             "selection": f"valid ndcg@{base.select_k}",
             "member_best_valid_ndcg": [r["best_valid_ndcg"] for r in results],
             "member_test_ndcg@100": [r["test"].get("ndcg@100") for r in results],
             **{f"best_member_{k}": v for k, v in results[best].items()
                if k.startswith("test_")}}
  wd.write_json(workdir / "metrics.json", summary)
  progress(f"sweep of {len(members)}: best member on validation {labels[best]} "
           f"(valid ndcg@{base.select_k} {results[best]['best_valid_ndcg']:.4f})")
  return summary


# ------------------------------------------------------------- EASE

def ease_weights(x_UxI: jax.Array, lam: float) -> jax.Array:
  """B = I − P · diagMat(1/diag(P)), P = (XᵀX + λI)⁻¹ (so diag(B) = 0)."""
  g_IxI = x_UxI.T @ x_UxI
  g_IxI = g_IxI + lam * jnp.eye(g_IxI.shape[0], dtype=g_IxI.dtype)
  p_IxI = jnp.linalg.inv(g_IxI)
  b_IxI = -p_IxI / jnp.diag(p_IxI)[None, :]
  return b_IxI.at[jnp.diag_indices(b_IxI.shape[0])].set(0.0)


_ease_weights_jit = jax.jit(ease_weights)


def ease_scores(ctx, rows_B):
  """x_B · B on the candidate columns (others -inf: never candidates)."""
  x_BxI, _ = ctx["inputs"].gather(rows_B)
  s_BxC = x_BxI[:, ctx["cols_C"]] @ ctx["b_CxC"]
  return jnp.full(x_BxI.shape, -jnp.inf).at[:, ctx["cols_C"]].set(s_BxC)


def _train_clicks(protocol: Protocol) -> tuple[np.ndarray, jax.Array]:
  """(candidate columns, the training users' clicks on them [U, C])."""
  cols = np.flatnonzero(protocol.candidates_I).astype(np.int32)
  x = np.zeros((protocol.n_users, len(cols)), np.float32)
  pos = np.full(protocol.n_items, -1, np.int64)
  pos[cols] = np.arange(len(cols))
  x[protocol.train.users, pos[protocol.train.items]] = 1.0  # train clicks only
  return cols, jnp.asarray(x)


def ease_context(protocol: Protocol, lam: float, fitted=None) -> dict:
  """The scoring context of EASE with ridge λ on this protocol's training clicks."""
  cols, x_UxC = fitted or _train_clicks(protocol)
  return {"inputs": protocol.inputs, "cols_C": jnp.asarray(cols),
          "b_CxC": _ease_weights_jit(x_UxC, float(lam))}


def train_ease(config: Config, protocol: Protocol,
               progress: Callable[[str], None] = print) -> dict:
  """Closed form on the candidate items, λ chosen by validation NDCG@100."""
  t0 = time.perf_counter()
  fitted = _train_clicks(protocol)
  best, history = None, []
  for lam in config.ease_lambdas:  # a handful of closed forms
    ctx = ease_context(protocol, lam, fitted)
    sel = f"ndcg@{config.select_k}"
    vm = evaluate_users(ease_scores, ctx, protocol, protocol.valid_users,
                        ks=(config.select_k,), block_size=config.eval_batch_size)
    history.append({"lambda": float(lam), f"valid_{sel}": vm[sel]})
    progress(f"ease λ={lam:g}  valid {sel} {vm[sel]:.4f}")
    if best is None or vm[sel] > best[0]:
      best = (vm[sel], float(lam), ctx)
  return {"scorer": ease_scores, "ctx": best[2], "best_lambda": best[1],
          "best_valid_ndcg": best[0], "history": history,
          "train_seconds": time.perf_counter() - t0}


def train_popularity(config: Config, protocol: Protocol,
                     progress: Callable[[str], None] = print) -> dict:
  del config, progress
  count_I = np.bincount(protocol.train.items, minlength=protocol.n_items)
  return {"scorer": ranking.popularity_scores,
          "ctx": jnp.asarray(count_I, jnp.float32), "history": [],
          "train_seconds": 0.0}


# ------------------------------------------------------------- the run

def run(config: Config, workdir=None, *, protocol: Optional[Protocol] = None,
        progress: Callable[[str], None] = print, resume: bool = False) -> dict:
  """Trains/fits `config.model`, selects on validation, reports test metrics.

  Writes workdir/config.json, metrics.jsonl (validation history),
  metrics.json and (Mult-VAE/DAE) checkpoints/ with the selected parameters
  when `workdir` is given.
  """
  config = config.validate()
  if protocol is None:
    if config.user_folds:
      raise UserError(f"--user_folds={config.user_folds}: run the folds with "
                      "recae_jax.user_folds.run_folds (experiments/train.py does)")
    protocol = make_protocol(config)
  check_cutoffs(config, protocol)
  path = None if workdir is None else wd.ensure_writable(workdir)
  if config.model in TRAINED:  # checkpoints + history via the loop
    out = train_mult(config, protocol, progress, workdir=path, resume=resume)
  else:
    fit = {"ease": train_ease, "popularity": train_popularity}[config.model]
    out = fit(config, protocol, progress)
  t = time.perf_counter()
  test, test_per_user = evaluate_users(out["scorer"], out["ctx"], protocol,
                                       protocol.test_users, ks=config.ks,
                                       block_size=config.eval_batch_size, per_user=True)
  valid = evaluate_users(out["scorer"], out["ctx"], protocol, protocol.valid_users,
                         ks=config.ks, block_size=config.eval_batch_size)
  results = {"model": config.model, "dataset": protocol.dataset.name,
             "test": test, "valid": valid, "eval_seconds": time.perf_counter() - t,
             "train_seconds": out["train_seconds"], **protocol.summary()}
  results["selection"] = f"valid ndcg@{config.select_k}"
  for key, value in test.items():  # flat keys, as rating runs have test_rmse
    results[f"test_{key}"] = value
  for key in ("best_epoch", "best_lambda", "best_valid_ndcg"):
    if key in out:
      results[key] = out[key]
  if path is not None:
    wd.write_json(path / "config.json", config.to_json())
    if "params" not in out:  # the loop wrote the Mult-VAE/DAE history itself
      loop.write_history(path / "metrics.jsonl", out["history"])
    save_per_user(path, protocol, test_per_user)
    wd.write_json(path / "metrics.json", results)
  results["_fitted"] = out  # in-memory only (params, scorer) for callers
  return results


def mult_task(config: Config, protocol: Protocol, steps_per_epoch: int):
  """(task, optimizer) of a Mult-VAE/DAE, RecVAE or CDAE run on this protocol."""
  adam = optim.make_optimizer(make_config(optimizer="adam"), steps_per_epoch)
  if config.model == "recvae":
    if len(config.hidden) != 1:
      raise UserError(f"--hidden: recvae takes one width (of its 5 dense layers), got "
                      f"{','.join(map(str, config.hidden)) or 'none'}")
    model = topn_models.RecVAE(protocol.n_items, config.hidden[0], config.latent)
    return (topn_models.RecVAETask(model, config.kl_gamma, config.enc_epochs,
                                   config.dec_epochs, use_l2=config.l2 > 0),
            topn_models.alternating_tx(adam))
  if config.model == "cdae":
    model = topn_models.CDAE(protocol.n_items, protocol.n_users, config.latent)
    return topn_models.CDAETask(model, use_l2=config.l2 > 0), adam
  model = build_mult_model(config, protocol.n_items)
  anneal = config.anneal_steps or max(1, int(0.8 * config.epochs * steps_per_epoch))
  task = MultinomialTask(model, config.anneal_cap, anneal, use_l2=config.l2 > 0)
  return task, adam


def restore_fitted(config: Config, protocol: Protocol, workdir,
                   members: Sequence[Config] = ()) -> dict:
  """What `run` fitted, from a finished workdir: Mult-VAE/DAE parameters from
  its checkpoints (the selected epoch; of a sweep's `members`, the member best
  on validation), EASE refitted at the selected λ, popularity recounted.
  {"scorer", "ctx", "model", "params"}."""
  workdir = pathlib.Path(workdir)
  members = tuple(members) or (config,)
  metrics_path = workdir / "metrics.json"
  if not metrics_path.exists():
    raise UserError(f"workdir {workdir} has no metrics.json (an unfinished top-N run)")
  metrics = json.loads(metrics_path.read_text())
  if config.model == "ease":
    return {"scorer": ease_scores, "ctx": ease_context(protocol, metrics["best_lambda"]),
            "model": None, "params": None}
  if config.model == "popularity":
    return {**train_popularity(config, protocol), "model": None, "params": None}
  n_rows = int(protocol.train_rows.shape[0])
  task, tx = mult_task(config, protocol, -(-n_rows // min(config.batch_size, n_rows)))
  best_params, _ = loop.restore_best(workdir / "checkpoints", task, tx,
                                     [c.seed for c in members], config.seed, workdir)
  best = int(np.argmax(metrics.get("member_best_valid_ndcg", [0.0])))
  params = engine.member(best_params, best)
  return {"scorer": scorer_of(task.model), "model": task.model, "params": params,
          "ctx": {"params": params, "inputs": protocol.inputs}}


# ------------------------------------------------- rating AEs on this protocol

def rating_split(protocol: Protocol, valid_fraction: float = 0.05,
                 seed: int = 0) -> Split:
  """An explicit-rating Split for a rating autoencoder on the same protocol.

  Train: every star rating of the training users, plus the star ratings of
  the held-out users' fold-in clicks (an AutoRec cannot fold a new user in
  without training on them; it sees exactly the fold-in items the top-N
  models see). A seeded `valid_fraction` of that is the validation carve-out
  for epoch selection (RMSE). Test: the star ratings of the test users'
  predict part (only used for RMSE; ranking uses the protocol's relevance).
  """
  full = protocol.dataset.ratings
  key = full.users.astype(np.int64) * full.n_items + full.items
  order = np.argsort(key)

  def stars(r: Ratings) -> Ratings:
    k = r.users.astype(np.int64) * r.n_items + r.items
    return full.subset(order[np.searchsorted(key[order], k)])

  train_users = np.zeros(full.n_users, bool)
  train_users[np.asarray(protocol.train_rows)] = True
  train = full.subset(train_users[full.users]).concat(
      stars(protocol.valid_in)).concat(stars(protocol.test_in))
  rng = np.random.default_rng([seed, 7])
  is_valid = rng.random(len(train)) < valid_fraction
  return Split(train=train.subset(~is_valid), valid=train.subset(is_valid),
               test=stars(protocol.test_out), name="heldout_users_fold_in_trained")
