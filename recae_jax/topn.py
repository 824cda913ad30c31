"""Implicit-feedback top-N models under the strong-generalization protocol.

Models (`TopNConfig.model`, presets of the same names):

- "mult_vae": Mult-VAE (Liang et al. 2018): L2-normalised click vector,
  dropout 0.5 on the input, tanh MLP encoder to (μ, log σ²), z = μ + σ ε
  (μ at evaluation), tanh MLP decoder to logits; loss = multinomial
  log-likelihood −Σ_i x_i log softmax(logits)_i + β KL(q(z|x) || N(0, I)),
  β annealed linearly from 0 to `anneal_cap` (reached at `anneal_steps`).
- "mult_dae": the same without the variational layer (I → 200 → I, tanh).
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

The training engine is the project's idiom: `jax.jit` with donated state,
one `lax.scan` per epoch over a device-side permutation of user rows, last
batch padded with the zero padding row (weight 0), `train.make_optimizer`.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import pathlib
import time
from typing import Any, Callable, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from recae_jax import losses, ranking
from recae_jax.config import make_config
from recae_jax.data import sparse, splits
from recae_jax.data.types import Dataset, Ratings, Split
from recae_jax.errors import UserError
from recae_jax.train import TrainState, make_optimizer

MODELS = ("mult_vae", "mult_dae", "ease", "popularity")


@dataclasses.dataclass(frozen=True)
class TopNConfig:
  model: str = "mult_vae"          # mult_vae, mult_dae, ease, popularity
  # --- data / protocol ---
  dataset: str = "ml-100k"
  data_dir: Optional[str] = None
  threshold: float = 4.0           # ratings >= threshold are clicks
  min_user_ratings: int = 5        # users with fewer clicks are dropped
  n_test_users: int = 100          # held-out test users
  n_valid_users: int = 100         # held-out validation users (model selection)
  fold_in_fraction: float = 0.8    # share of a held-out user's clicks shown
  split_seed: int = 0
  seed: int = 0
  # --- Mult-VAE / Mult-DAE ---
  hidden: tuple[int, ...] = (600,)  # encoder MLP widths before the latent layer
  latent: int = 200
  input_dropout: float = 0.5
  l2: float = 0.0                  # λ/2 Σ W² over kernels
  learning_rate: float = 1e-3
  batch_size: int = 100
  epochs: int = 100
  anneal_cap: float = 0.2          # β's ceiling (VAE only)
  anneal_steps: int = 0            # steps to reach the cap; 0: 80% of all steps
  eval_every: int = 5              # validation NDCG@select_k every N epochs
  select_k: int = 100              # model selection metric: validation NDCG@select_k
  # --- EASE ---
  ease_lambdas: tuple[float, ...] = (50.0, 100.0, 200.0, 500.0, 1000.0, 2000.0)
  # --- evaluation ---
  ks: tuple[int, ...] = (20, 50, 100)
  eval_batch_size: int = 256
  dense_budget_mb: int = 1024

  def validate(self) -> "TopNConfig":
    def bad(name, msg):
      raise UserError(f"--{name}: {msg}")
    if self.model not in MODELS:
      bad("model", f"unknown {self.model!r}; choose from {', '.join(MODELS)}")
    for name in ("n_test_users", "n_valid_users", "latent", "batch_size",
                 "epochs", "eval_every", "eval_batch_size", "select_k"):
      if getattr(self, name) <= 0:
        bad(name, f"must be positive, got {getattr(self, name)}")
    if not 0 < self.fold_in_fraction < 1:
      bad("fold_in_fraction", f"must be in (0, 1), got {self.fold_in_fraction}")
    if not 0 <= self.input_dropout < 1:
      bad("input_dropout", f"must be in [0, 1), got {self.input_dropout}")
    if not self.learning_rate > 0:
      bad("learning_rate", "must be positive")
    if self.l2 < 0 or self.anneal_cap < 0 or self.anneal_steps < 0:
      bad("l2/anneal_cap/anneal_steps", "must be >= 0")
    if not self.ease_lambdas or any(lam <= 0 for lam in self.ease_lambdas):
      bad("ease_lambdas", f"must be positive, got {self.ease_lambdas}")
    if not self.ks or any(k <= 0 for k in self.ks):
      bad("ks", f"must be positive, got {self.ks}")
    return self

  def to_json(self) -> dict:
    return dataclasses.asdict(self)


PRESETS: dict[str, dict[str, Any]] = {
    # Liang et al. 2018: [I → 600 → 200 → 600 → I], tanh, dropout 0.5, β cap 0.2.
    "mult_vae": dict(model="mult_vae", hidden=(600,), latent=200, l2=0.0,
                     input_dropout=0.5, anneal_cap=0.2),
    # Their Mult-DAE: [I → 200 → I], tanh, dropout 0.5, loss + 2·(0.01/2)ΣW².
    "mult_dae": dict(model="mult_dae", hidden=(), latent=200, l2=0.02,
                     input_dropout=0.5),
    "ease": dict(model="ease"),
    "popularity": dict(model="popularity"),
}


def make_topn_config(preset: Optional[str] = None, **overrides) -> TopNConfig:
  fields = {f.name for f in dataclasses.fields(TopNConfig)}
  values: dict[str, Any] = {}
  if preset:
    if preset not in PRESETS:
      raise UserError(f"unknown top-N preset {preset!r}; choose from "
                      f"{', '.join(PRESETS)}")
    values.update(PRESETS[preset])
  for k, v in overrides.items():
    if k not in fields:
      raise UserError(f"unknown top-N config field {k!r}")
    values[k] = v
  for k, kind in (("hidden", int), ("ease_lambdas", float), ("ks", int)):
    if k in values and isinstance(values[k], str):
      try:
        values[k] = tuple(kind(v) for v in values[k].split(",") if v.strip())
      except ValueError:
        raise UserError(f"--{k}: cannot read {values[k]!r} as a list") from None
    elif k in values:
      values[k] = tuple(kind(v) for v in values[k])
  return TopNConfig(**values).validate()


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


def make_protocol(config: TopNConfig, dataset: Optional[Dataset] = None) -> Protocol:
  """Builds the split; `dataset` overrides loading `config.dataset`."""
  if dataset is None:
    from recae_jax.data import movielens
    dataset = movielens.load_dataset(config.dataset, config.data_dir)
  outer = splits.make_split(dataset, "heldout_users", n_heldout_users=config.n_test_users,
                            implicit_threshold=config.threshold,
                            min_user_ratings=config.min_user_ratings,
                            seed=config.split_seed)
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


def evaluate_users(score_fn, ctx, protocol: Protocol, users: np.ndarray,
                   ks=(20, 50, 100), block_size: int = 256) -> dict:
  """Ranking metrics for held-out `users`: fold-in items excluded."""
  return ranking.evaluate_ranking(
      score_fn, ctx, users, relevant=protocol.relevant, exclude=protocol.inputs,
      candidates_I=protocol.candidates_I, n_items=protocol.n_items,
      pad_row=protocol.n_users, ks=tuple(ks), block_size=block_size)


# ------------------------------------------------------------- Mult-VAE / DAE

class MultVAE(nn.Module):
  """Mult-VAE (variational=True) or Mult-DAE (False); returns (logits, KL_B)."""

  n_items: int
  hidden: tuple[int, ...] = (600,)
  latent: int = 200
  input_dropout: float = 0.5
  variational: bool = True

  @nn.compact
  def __call__(self, x_BxI, *, train: bool = False):
    init = nn.initializers.xavier_uniform()
    dense = functools.partial(nn.Dense, kernel_init=init,
                              bias_init=nn.initializers.normal(0.001))
    h = x_BxI / jnp.maximum(jnp.linalg.norm(x_BxI, axis=1, keepdims=True), 1e-12)
    h = nn.Dropout(self.input_dropout, deterministic=not train)(h)
    for i, w in enumerate(self.hidden):
      h = jnp.tanh(dense(w, name=f"enc_{i}")(h))
    if self.variational:
      mu_logvar = dense(2 * self.latent, name="enc_latent")(h)
      mu, logvar = jnp.split(mu_logvar, 2, axis=-1)
      kl_B = 0.5 * jnp.sum(-logvar + jnp.exp(logvar) + mu * mu - 1.0, axis=-1)
      z = mu
      if train:
        z = mu + jnp.exp(0.5 * logvar) * jax.random.normal(
            self.make_rng("sample"), mu.shape)
    else:  # Mult-DAE: a tanh code layer (Liang's [I → 200 → I] when hidden=())
      z = jnp.tanh(dense(self.latent, name="enc_latent")(h))
      kl_B = jnp.zeros(x_BxI.shape[0])
    h = z
    for i, w in enumerate(reversed(self.hidden)):
      h = jnp.tanh(dense(w, name=f"dec_{i}")(h))
    return dense(self.n_items, name="dec_out")(h), kl_B


def build_mult_model(config: TopNConfig, n_items: int) -> MultVAE:
  return MultVAE(n_items=n_items, hidden=tuple(config.hidden), latent=config.latent,
                 input_dropout=config.input_dropout,
                 variational=config.model == "mult_vae")


def multinomial_nll(logits_BxI, x_BxI, w_B) -> jax.Array:
  """Σ_b w_b (−Σ_i x_bi log softmax(logits_b)_i), the Mult-VAE likelihood."""
  return -jnp.sum(w_B * jnp.sum(jax.nn.log_softmax(logits_BxI) * x_BxI, axis=-1))


def anneal_beta(step, cap: float, total_steps: int):
  """β = min(cap, step / total_steps): Liang et al.'s linear KL annealing."""
  return jnp.minimum(cap, step.astype(jnp.float32) / max(1, total_steps))


# How many times the epoch function was traced (tests pin "compiles once").
TRACE_COUNTS: dict[str, int] = {"epoch": 0}


def make_mult_epoch(model: MultVAE, tx, config: TopNConfig, batch_size: int,
                    anneal_steps: int) -> Callable:
  """jitted `epoch(state, source, train_rows) -> (state, {"loss", "beta"})`."""
  l2 = config.l2

  def loss_fn(params, x_BxI, w_B, rng, beta):
    rng_drop, rng_sample = jax.random.split(rng)
    logits, kl_B = model.apply({"params": params}, x_BxI, train=True,
                               rngs={"dropout": rng_drop, "sample": rng_sample})
    n = jnp.maximum(1.0, jnp.sum(w_B))
    loss = (multinomial_nll(logits, x_BxI, w_B) + beta * jnp.sum(w_B * kl_B)) / n
    if l2 > 0:
      loss = loss + l2 * losses.l2_penalty(params)
    return loss

  grad_fn = jax.value_and_grad(loss_fn)

  def step(state: TrainState, rows_B, source):
    x_BxI, _ = source.gather(rows_B)
    w_B = (rows_B < source.n_rows).astype(jnp.float32)
    beta = anneal_beta(state.step, config.anneal_cap, anneal_steps)
    loss, grads = grad_fn(state.params, x_BxI, w_B,
                          jax.random.fold_in(state.rng, state.step), beta)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    return state.replace(step=state.step + 1, params=params, opt_state=opt_state), (
        loss, beta)

  @functools.partial(jax.jit, donate_argnums=0)
  def epoch(state: TrainState, source, train_rows):
    TRACE_COUNTS["epoch"] += 1
    n = train_rows.shape[0]
    n_batches = -(-n // batch_size)
    rng, perm_rng = jax.random.split(state.rng)
    perm = train_rows[jax.random.permutation(perm_rng, n)]
    pad = jnp.full((n_batches * batch_size - n,), source.n_rows, jnp.int32)
    rows_KxB = jnp.concatenate([perm, pad]).reshape(n_batches, batch_size)
    state, (loss_K, beta_K) = jax.lax.scan(lambda s, r: step(s, r, source),
                                           state.replace(rng=rng), rows_KxB)
    return state, {"loss": jnp.mean(loss_K), "beta": beta_K[-1]}

  return epoch


@dataclasses.dataclass(frozen=True)
class MultScorer:
  """score_fn: the model's logits for the users' input rows."""
  model: MultVAE

  def __call__(self, ctx, rows_B):
    x_BxI, _ = ctx["inputs"].gather(rows_B)
    logits, _ = self.model.apply({"params": ctx["params"]}, x_BxI, train=False)
    return logits


# Copies a pytree in one compiled call (eager jnp.copy compiles once per leaf).
_copy_tree = jax.jit(lambda tree: jax.tree.map(jnp.copy, tree))


def train_mult(config: TopNConfig, protocol: Protocol,
               progress: Callable[[str], None] = print) -> dict:
  """Trains Mult-VAE/DAE; returns {"params", "model", "history", ...}."""
  model = build_mult_model(config, protocol.n_items)
  n_rows = int(protocol.train_rows.shape[0])
  batch_size = min(config.batch_size, n_rows)
  steps_per_epoch = -(-n_rows // batch_size)
  anneal_steps = config.anneal_steps or max(1, int(0.8 * config.epochs * steps_per_epoch))
  tx = make_optimizer(make_config(optimizer="adam", learning_rate=config.learning_rate),
                      steps_per_epoch)

  @jax.jit  # one compile instead of one per eager init op
  def init(key):
    init_rng, rng = jax.random.split(key)
    params = model.init(init_rng, jnp.zeros((1, protocol.n_items)))["params"]
    return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                      opt_state=tx.init(params), rng=rng)

  state = init(jax.random.PRNGKey(config.seed))
  params = _copy_tree(state.params)  # the epoch donates state's buffers
  epoch_fn = make_mult_epoch(model, tx, config, batch_size, anneal_steps)
  scorer = MultScorer(model)
  sel = f"ndcg@{config.select_k}"
  best = {sel: -1.0, "epoch": 0, "params": params}
  history = []
  t0 = time.perf_counter()
  for ep in range(1, config.epochs + 1):
    state, m = epoch_fn(state, protocol.inputs, protocol.train_rows)
    row = {"epoch": ep}
    if ep % config.eval_every == 0 or ep == config.epochs:
      vm = evaluate_users(scorer, {"params": state.params, "inputs": protocol.inputs},
                          protocol, protocol.valid_users, ks=(config.select_k,),
                          block_size=config.eval_batch_size)
      row[f"valid_{sel}"] = vm[sel]
      if vm[sel] > best[sel]:
        best = {sel: vm[sel], "epoch": ep,
                "params": _copy_tree(state.params)}
    m = jax.device_get(m)  # one host sync per epoch
    row.update(train_loss=float(m["loss"]), beta=float(m["beta"]))
    if not math.isfinite(row["train_loss"]):
      raise UserError(f"{config.model} diverged at epoch {ep}; lower --learning_rate")
    history.append(row)
    if f"valid_{sel}" in row:
      progress(f"{config.model} epoch {ep:4d}/{config.epochs}  loss "
               f"{row['train_loss']:.3f}  β {row['beta']:.3f}  valid {sel} "
               f"{row[f'valid_{sel}']:.4f}")
  return {"model": model, "params": best["params"], "scorer": scorer,
          "ctx": {"params": best["params"], "inputs": protocol.inputs},
          "best_epoch": best["epoch"], "best_valid_ndcg": best[sel],
          "history": history, "train_seconds": time.perf_counter() - t0}


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


def train_ease(config: TopNConfig, protocol: Protocol,
               progress: Callable[[str], None] = print) -> dict:
  """Closed form on the candidate items, λ chosen by validation NDCG@100."""
  t0 = time.perf_counter()
  cols = np.flatnonzero(protocol.candidates_I).astype(np.int32)
  x = np.zeros((protocol.n_users, len(cols)), np.float32)
  pos = np.full(protocol.n_items, -1, np.int64)
  pos[cols] = np.arange(len(cols))
  x[protocol.train.users, pos[protocol.train.items]] = 1.0  # train clicks only
  x_UxC = jnp.asarray(x)
  best, history = None, []
  for lam in config.ease_lambdas:  # a handful of closed forms
    ctx = {"inputs": protocol.inputs, "cols_C": jnp.asarray(cols),
           "b_CxC": _ease_weights_jit(x_UxC, float(lam))}
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


def train_popularity(config: TopNConfig, protocol: Protocol,
                     progress: Callable[[str], None] = print) -> dict:
  del config, progress
  count_I = np.bincount(protocol.train.items, minlength=protocol.n_items)
  return {"scorer": ranking.popularity_scores,
          "ctx": jnp.asarray(count_I, jnp.float32), "history": [],
          "train_seconds": 0.0}


# ------------------------------------------------------------- the run

def run(config: TopNConfig, workdir=None, *, protocol: Optional[Protocol] = None,
        progress: Callable[[str], None] = print) -> dict:
  """Trains/fits `config.model`, selects on validation, reports test metrics.

  Writes workdir/config.json, metrics.jsonl (validation history),
  metrics.json and (Mult-VAE/DAE) checkpoints/ with the selected parameters
  when `workdir` is given.
  """
  config = config.validate()
  if protocol is None:
    protocol = make_protocol(config)
  fit = {"mult_vae": train_mult, "mult_dae": train_mult, "ease": train_ease,
         "popularity": train_popularity}[config.model]
  out = fit(config, protocol, progress)
  t = time.perf_counter()
  test = evaluate_users(out["scorer"], out["ctx"], protocol, protocol.test_users,
                        ks=config.ks, block_size=config.eval_batch_size)
  valid = evaluate_users(out["scorer"], out["ctx"], protocol, protocol.valid_users,
                         ks=config.ks, block_size=config.eval_batch_size)
  results = {"model": config.model, "dataset": protocol.dataset.name,
             "test": test, "valid": valid, "eval_seconds": time.perf_counter() - t,
             "train_seconds": out["train_seconds"], **protocol.summary()}
  results["selection"] = f"valid ndcg@{config.select_k}"
  for key in ("best_epoch", "best_lambda", "best_valid_ndcg"):
    if key in out:
      results[key] = out[key]
  if workdir is not None:
    from recae_jax import workdir as wd
    path = wd.ensure_writable(workdir)
    wd.write_json(path / "config.json", config.to_json())
    (path / "metrics.jsonl").write_text(
        "".join(json.dumps(r, sort_keys=True) + "\n" for r in out["history"]))
    wd.write_json(path / "metrics.json", results)
    if "params" in out:  # the selected Mult-VAE/DAE parameters, via orbax
      from recae_jax import checkpoint as ckpt_lib
      ckpts = ckpt_lib.Checkpoints(path / "checkpoints", max_to_keep=1)
      ckpts.save(int(out["best_epoch"]), {"params": out["params"]},
                 {"best_epoch": out["best_epoch"], "model": config.model})
      ckpts.close()
  results["_fitted"] = out  # in-memory only (params, scorer) for callers
  return results


def headline(results: dict) -> dict:
  """NDCG@100, Recall@20, Recall@50 on test (the Mult-VAE paper's table)."""
  t = results["test"]
  return {k: t.get(k) for k in ("ndcg@100", "recall@20", "recall@50")}


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


def run_rating_ae(ae_config, protocol: Protocol, workdir, *, ks=(20, 50, 100),
                  progress: Callable[[str], None] = print) -> dict:
  """Trains a rating AE (a train.Config) on `rating_split(protocol)` and ranks
  the test users' unseen candidates by its predicted ratings."""
  from recae_jax import recommend, restore, train
  split = rating_split(protocol, ae_config.valid_fraction or 0.05, ae_config.split_seed)
  problem = train.build_problem(ae_config, protocol.dataset, split)
  metrics = train.train_and_evaluate(ae_config, workdir, problem=problem,
                                     progress=progress)
  model, params, meta = restore.restore_params(ae_config, workdir, problem)
  rec = recommend.from_restored(restore.Restored(
      pathlib.Path(workdir), ae_config, protocol.dataset, split, problem, model,
      params, meta))
  scorer, ctx = recommend.scorer(rec)
  test = evaluate_users(scorer, ctx, protocol, protocol.test_users, ks=ks)
  valid = evaluate_users(scorer, ctx, protocol, protocol.valid_users, ks=ks)
  return {"model": f"{ae_config.orientation}-autoencoder", "test": test,
          "valid": valid, "best_epoch": metrics["best_epoch"],
          "test_rmse_predict_part": metrics["test_rmse"],
          "train_seconds": metrics["train_seconds"]}
