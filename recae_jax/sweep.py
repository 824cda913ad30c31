"""Train K configurations that differ only in numbers, in one compiled call.

A sweep's members share everything structural (data, layers, activations,
optimizer kind, batch size, epochs) and differ only in SWEEPABLE fields:
seed, learning_rate, l2, dropout, input_dropout, input_noise. Their params
and optimizer states are stacked along a leading K axis and trained together:

  * every member sees the SAME batches in the SAME order (one shared
    permutation per epoch, drawn from the sweep's base seed), so a member is
    exactly "this config trained alone with that batch order";
  * the first layer's input x_BxN is shared, so it is ONE GEMM against the
    members' concatenated kernels x_BxN @ [W_1 | ... | W_K] (N x K·H) instead
    of K GEMMs that each re-read x (and its backward is one GEMM too); when a
    member perturbs its input (input_dropout / input_noise) the inputs differ
    and the layer falls back to a per-member batched GEMM;
  * the rest of the network is a per-member batched einsum;
  * per-member learning rates: the optimizer is built with learning_rate=1
    and each member's update is scaled by its own rate (exact for every
    optimizer here: all are linear in the learning rate, schedules included);
  * per-member L2 and dropout rates are traced [K] arrays, so one compile
    serves every value.

How members share the device is a static choice (`group_size`): side by
side (all K in each step: the shared-input GEMM; the default on GPU/TPU) or
one group after another over the same batch grid inside the same compiled
call (the CPU default, see `default_group_size`). Both give the same result.

Dropout masks come from per-member keys (fold_in(member rng, step)) but not
through Flax's `make_rng` streams, so a member with dropout > 0 draws
different masks than `train.py` would (same distribution); with dropout 0 a
member matches a lone run to float tolerance (tests pin this).

Selection is per member on validation (best epoch, patience); best params
are kept per member with `jnp.where` on the K axis.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import json
import math
import pathlib
import time
from typing import Any, Callable, Optional, Sequence

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax

from recae_jax import losses
from recae_jax import train as train_lib
from recae_jax.config import Config, make_config
from recae_jax.errors import UserError
from recae_jax.models import _ACT, AutoEncoder, build_model
from recae_jax.pairs import PairBlocks

SWEEPABLE = ("seed", "learning_rate", "l2", "dropout", "input_dropout", "input_noise")
_INT_FIELDS = ("seed",)

# How many times each jitted sweep function was traced (tests pin "compiles once").
TRACE_COUNTS: dict[str, int] = {}


def _count(name: str) -> None:
  TRACE_COUNTS[name] = TRACE_COUNTS.get(name, 0) + 1


# ------------------------------------------------------------------ the spec

def parse_sweep(spec: str, mode: str = "grid") -> list[dict[str, Any]]:
  """'seed=0,1,2;l2=1e-3,3e-3' -> one override dict per member.

  mode "grid": the cartesian product of the axes (first axis slowest);
  mode "zip": the i-th values of every axis together (equal lengths needed).
  """
  if mode not in ("grid", "zip"):
    raise UserError(f"--sweep_mode: must be 'grid' or 'zip', got {mode!r}")
  axes: list[tuple[str, list]] = []
  for part in (p.strip() for p in (spec or "").split(";")):
    if not part:
      continue
    name, eq, values = part.partition("=")
    name = name.strip()
    if not eq or not name:
      raise UserError(f"--sweep: expected FIELD=V1,V2,... in {part!r}")
    if name not in SWEEPABLE:
      known = {f.name for f in dataclasses.fields(Config)}
      why = ("is not sweepable (it changes the model's structure or data); "
             if name in known else "is not a config field; ")
      raise UserError(f"--sweep: {name!r} {why}sweepable fields: {', '.join(SWEEPABLE)}")
    if name in (a for a, _ in axes):
      raise UserError(f"--sweep: field {name!r} given twice")
    kind = int if name in _INT_FIELDS else float
    parsed = []
    for v in (v.strip() for v in values.split(",")):
      try:
        parsed.append(kind(v))
      except ValueError:
        raise UserError(f"--sweep: {name}={v!r} is not a{'n integer' if kind is int else ' number'}"
                        ) from None
    if not parsed:
      raise UserError(f"--sweep: no values for {name!r}")
    axes.append((name, parsed))
  if not axes:
    raise UserError("--sweep: empty; give e.g. --sweep='seed=0,1,2,3;l2=1e-3,3e-3'")
  names = [a for a, _ in axes]
  if mode == "zip":
    lengths = {a: len(v) for a, v in axes}
    if len(set(lengths.values())) > 1:
      raise UserError(f"--sweep: zip mode needs equal lengths, got {lengths}")
    combos = list(zip(*(v for _, v in axes)))
  else:
    combos = list(itertools.product(*(v for _, v in axes)))
  return [dict(zip(names, c)) for c in combos]


def member_configs(base: Config, overrides: Sequence[dict[str, Any]]) -> list[Config]:
  """Validated per-member configs (base + each override)."""
  if base.ensemble > 1 or base.blend_uautorec or base.blend_knn:
    raise UserError("a sweep trains single models: drop --ensemble/--blend_* "
                    "(the sweep reports its own ensemble)")
  if base.dense_refeeding:
    raise UserError("--dense_refeeding is not supported in a sweep")
  d = base.to_json()
  return [make_config(None, **{**d, **o}) for o in overrides]


# -------------------------------------------------------- stacked hyperparams

@flax.struct.dataclass
class Hyper:
  """The members' numbers, each a [K] array (traced: one compile for all)."""

  learning_rate: jax.Array
  l2: jax.Array
  dropout: jax.Array
  input_dropout: jax.Array
  input_noise: jax.Array

  @classmethod
  def from_configs(cls, configs: Sequence[Config]) -> "Hyper":
    f = lambda name: jnp.asarray([getattr(c, name) for c in configs], jnp.float32)
    return cls(*(f(n) for n in ("learning_rate", "l2", "dropout", "input_dropout",
                                "input_noise")))


@flax.struct.dataclass
class SweepState:
  step: jax.Array       # shared step counter
  params: Any           # every leaf [K, ...]
  opt_state: Any        # every leaf [K, ...]
  rng: jax.Array        # [K, 2] per-member keys (dropout)
  order_rng: jax.Array  # [2] shared key for the batch order


@dataclasses.dataclass(frozen=True)
class _Static:
  """What the stacked forward needs to know at trace time."""

  layers: tuple[int, ...]
  activation: str
  output_activation: str
  tied: bool
  perturbs_input: bool  # some member has input_dropout/input_noise > 0
  has_dropout: bool


def _static(config: Config, configs: Sequence[Config]) -> _Static:
  return _Static(tuple(config.layers), config.activation, config.output_activation,
                 config.tied,
                 any(c.input_dropout > 0 or c.input_noise > 0 for c in configs),
                 any(c.dropout > 0 for c in configs))


def stacked_apply(st: _Static, params_K, x_BxN, m_BxN, side_BxS, hyper: Hyper,
                  rng_K: Optional[jax.Array], train: bool):
  """All members' outputs [K, B, N]; mirrors `models.AutoEncoder.__call__`."""
  act, out_act = _ACT[st.activation], _ACT[st.output_activation]
  n_layers = len(st.layers)
  k = hyper.l2.shape[0]
  if train and rng_K is not None:
    keys_Kx3 = jax.vmap(lambda r: jax.random.split(r, 3))(rng_K)
  w0_KxIxH = params_K["enc_0_kernel"]
  b0_KxH = params_K["enc_0_bias"]
  if train and st.perturbs_input:
    # Each member sees its own perturbed input: per-member batched GEMM.
    def perturb(key3, p_in, noise):
      x = x_BxN
      keep = jax.random.bernoulli(key3[0], 1 - p_in, x.shape)
      x = jnp.where(p_in > 0, jnp.where(keep, x / (1 - p_in), 0.0), x)
      x = jnp.where((noise > 0) & m_BxN,
                    x + noise * jax.random.normal(key3[1], x.shape), x)
      return jnp.where(noise > 0, jnp.where(m_BxN, x, 0.0), x)
    x_KxBxN = jax.vmap(perturb)(keys_Kx3, hyper.input_dropout, hyper.input_noise)
    if side_BxS is not None:
      side = jnp.broadcast_to(side_BxS.astype(x_BxN.dtype),
                              (k,) + side_BxS.shape)
      x_KxBxN = jnp.concatenate([x_KxBxN, side], axis=-1)
    h_KxBxH = jnp.einsum("kbi,kih->kbh", x_KxBxN, w0_KxIxH)
  else:
    x = x_BxN
    if side_BxS is not None:
      x = jnp.concatenate([x, side_BxS.astype(x.dtype)], axis=-1)
    # The shared input: ONE GEMM against the members' concatenated kernels.
    kk, d_in, width = w0_KxIxH.shape
    w_IxKH = jnp.transpose(w0_KxIxH, (1, 0, 2)).reshape(d_in, kk * width)
    h_KxBxH = jnp.transpose((x @ w_IxKH).reshape(x.shape[0], kk, width), (1, 0, 2))
  h = act(h_KxBxH + b0_KxH[:, None, :])
  kernels = [w0_KxIxH]
  for i in range(1, n_layers):
    kern = params_K[f"enc_{i}_kernel"]
    kernels.append(kern)
    h = act(_member_matmul(h, kern) + params_K[f"enc_{i}_bias"][:, None, :])
  if train and st.has_dropout:
    p = hyper.dropout[:, None, None]
    # keep with probability 1 - p_k: a uniform draw against each member's rate.
    u = jax.vmap(lambda key3: jax.random.uniform(key3[2], h.shape[1:]))(keys_Kx3)
    keep = u >= p
    h = jnp.where(p > 0, jnp.where(keep, h / (1 - p), 0.0), h)
  n_out = params_K[f"dec_{n_layers - 1}_bias"].shape[-1]
  widths = list(reversed(st.layers[:-1])) + [n_out]
  for i, width in enumerate(widths):
    if st.tied:
      kern = jnp.swapaxes(kernels[n_layers - 1 - i], 1, 2)[:, :, :width]
    else:
      kern = params_K[f"dec_{i}_kernel"]
    h = _member_matmul(h, kern) + params_K[f"dec_{i}_bias"][:, None, :]
    h = out_act(h) if i == len(widths) - 1 else act(h)
  return h


def _member_matmul(h_KxBxI, kern_KxIxO):
  """Each member's h @ kernel. One member (the CPU's group size 1) as a plain
  GEMM: XLA:CPU runs a batched dot with batch 1 markedly slower."""
  if h_KxBxI.shape[0] == 1:
    return (h_KxBxI[0] @ kern_KxIxO[0])[None]
  return jnp.einsum("kbi,kio->kbo", h_KxBxI, kern_KxIxO)


# ------------------------------------------------------------- train / eval

def make_sweep_optimizer(config: Config, steps_per_epoch: int) -> optax.GradientTransformation:
  """The members' shared optimizer at learning rate 1 (rates applied per member)."""
  return train_lib.make_optimizer(dataclasses.replace(config, learning_rate=1.0),
                                  steps_per_epoch)


def init_sweep_state(model: AutoEncoder, tx, data: train_lib.RowData,
                     configs: Sequence[Config], order_seed: int) -> SweepState:
  """Stacks `train.init_state` of each member: member k starts exactly where a
  lone run with seed configs[k].seed would."""
  states = [train_lib.init_state(model, tx, data, c.seed) for c in configs]
  stack = lambda *xs: jnp.stack(xs)
  return SweepState(step=jnp.zeros((), jnp.int32),
                    params=jax.tree.map(stack, *[s.params for s in states]),
                    opt_state=jax.tree.map(stack, *[s.opt_state for s in states]),
                    rng=jnp.stack([s.rng for s in states]),
                    order_rng=jax.random.PRNGKey(order_seed))


def epoch_rows(order_rng: jax.Array, train_rows: jax.Array, n_rows: int,
               batch_size: int, shuffle: bool) -> jax.Array:
  """The shared [n_batches, B] grid of row ids (padding id = n_rows)."""
  n_train = train_rows.shape[0]
  n_batches = -(-n_train // batch_size)
  perm = (train_rows[jax.random.permutation(order_rng, n_train)] if shuffle
          else train_rows)
  pad = jnp.full((n_batches * batch_size - n_train,), n_rows, jnp.int32)
  return jnp.concatenate([perm, pad]).reshape(n_batches, batch_size)


def make_sweep_step(st: _Static, tx, config: Config) -> Callable:
  """Pure `step(state, rows_B, data, hyper) -> (state, (loss_K, sse_K, count_K))`."""
  div = config.rating_divisor

  def loss_fn(params_K, x_BxN, m_BxN, w_B, side, hyper, rng_K):
    pred_KxBxN = stacked_apply(st, params_K, x_BxN, m_BxN, side, hyper, rng_K, True)
    m = m_BxN.astype(jnp.float32) * w_B[:, None]
    diff = (pred_KxBxN - x_BxN[None]) * m[None]
    sse_K = jnp.sum(diff * diff, axis=(1, 2))
    count = jnp.sum(m)
    if config.loss_denominator == "observed":
      denom = jnp.maximum(1.0, count)
    else:
      denom = jnp.maximum(1.0, jnp.sum(w_B)) * x_BxN.shape[1]
    l2_K = jax.vmap(losses.l2_penalty)(params_K)
    loss_K = sse_K / denom + hyper.l2 * l2_K
    # Members are independent, so d(Σ loss_k)/d params_k = d loss_k / d params_k.
    return jnp.sum(loss_K), (loss_K, sse_K, count)

  grad_fn = jax.grad(loss_fn, has_aux=True)

  def step(state: SweepState, rows_B, data: train_lib.RowData, hyper: Hyper):
    w_B = (rows_B < data.n_rows).astype(jnp.float32)
    v_BxN, m_BxN, side = data.batch(rows_B)
    rng_K = jax.vmap(lambda r: jax.random.fold_in(r, state.step))(state.rng)
    grads, (loss_K, sse_K, count) = grad_fn(state.params, v_BxN / div, m_BxN, w_B,
                                            side, hyper, rng_K)
    updates, opt_state = jax.vmap(tx.update)(grads, state.opt_state, state.params)
    updates = jax.tree.map(
        lambda u: u * hyper.learning_rate.reshape((-1,) + (1,) * (u.ndim - 1)), updates)
    params = optax.apply_updates(state.params, updates)
    count_K = jnp.broadcast_to(count, loss_K.shape)
    return (state.replace(step=state.step + 1, params=params, opt_state=opt_state),
            (loss_K, sse_K, count_K))

  return step


def default_group_size(k: int, platform: Optional[str] = None) -> int:
  """Members trained side by side per pass over the batches.

  On an accelerator all K at once: one small model leaves the chip idle, K
  fill it. On a CPU a lone I-AutoRec already runs near the matmul peak, and K
  stacked optimizer states (K x 4 x |params|) fall out of the last-level
  cache, so the optimizer's elementwise passes become DRAM-bound (measured:
  K=8 side by side ran at ~0.6-0.75x of sequential); there members go one
  after another inside the same compiled call (group size 1), each keeping its
  state cache-resident across the epoch's steps.
  """
  platform = platform or jax.default_backend()
  return 1 if platform == "cpu" else k


def make_sweep_epoch(st: _Static, tx, config: Config, batch_size: int,
                     group_size: Optional[int] = None) -> Callable:
  """Jitted `epoch(state, data, hyper) -> (state, metrics [K])`: one call.

  Members run in groups of `group_size` (default `default_group_size`): a
  `lax.map` over groups of a `lax.scan` over the (shared) batches; group size
  K is one scan with all members side by side. Every group replays the same
  batch grid, so the result does not depend on the grouping.
  """
  div = config.rating_divisor
  step = make_sweep_step(st, tx, config)

  @functools.partial(jax.jit, donate_argnums=0)
  def sweep_epoch(state: SweepState, data: train_lib.RowData, hyper: Hyper):
    _count("sweep_epoch")
    k = hyper.l2.shape[0]
    g = group_size or default_group_size(k)
    if k % g:
      raise ValueError(f"group_size {g} must divide the number of members {k}")
    order_rng, perm_rng = jax.random.split(state.order_rng)
    rows_NbxB = epoch_rows(perm_rng, data.train_rows, data.n_rows, batch_size,
                           config.shuffle)

    def run_group(xs):
      params, opt_state, rng, hyp = xs
      s = SweepState(state.step, params, opt_state, rng, order_rng)
      s, out = jax.lax.scan(lambda s, rows: step(s, rows, data, hyp), s, rows_NbxB)
      return (s.params, s.opt_state, s.rng), out

    if g == k:  # all members side by side: one scan; outputs [steps, K]
      (params, opt_state, rng), (loss, sse, count) = run_group(
          (state.params, state.opt_state, state.rng, hyper))
    else:
      groups = lambda t: jax.tree.map(lambda x: x.reshape((k // g, g) + x.shape[1:]), t)
      (params, opt_state, rng), out = jax.lax.map(
          run_group, groups((state.params, state.opt_state, state.rng, hyper)))
      params, opt_state, rng = jax.tree.map(lambda x: x.reshape((k,) + x.shape[2:]),
                                            (params, opt_state, rng))
      # per-step outputs come back [groups, steps, g]: make them [steps, K]
      loss, sse, count = (jnp.moveaxis(x, 1, 0).reshape(x.shape[1], k) for x in out)
    state = SweepState(state.step + rows_NbxB.shape[0], params, opt_state, rng, order_rng)
    return state, {"loss": jnp.mean(loss, 0), "sse": jnp.sum(sse, 0) * div * div,
                   "count": jnp.sum(count, 0)}

  return sweep_epoch


def make_sweep_evaluate(st: _Static, config: Config,
                        rating_scale: tuple[float, float]) -> Callable:
  """Jitted `evaluate(params_K, data, blocks, target, fb_mask, fb_value, hyper)
  -> (pred_Kxn, sums [K])`; the members' version of `train.make_evaluate`."""
  div = config.rating_divisor
  lo, hi = rating_scale

  @jax.jit
  def evaluate(params_K, data: train_lib.RowData, blocks: PairBlocks, target_n,
               fb_mask_n, fb_value_n, hyper: Hyper):
    _count("sweep_evaluate")
    k = hyper.l2.shape[0]

    def block(_, xs):
      rows_B, local_P, cols_P = xs
      v_BxN, m_BxN, side = data.batch(rows_B)
      out_KxBxN = stacked_apply(st, params_K, v_BxN / div, m_BxN, side, hyper, None,
                                False)
      return None, out_KxBxN[:, local_P, cols_P] * div

    _, pred_NbxKxP = jax.lax.scan(block, None, (blocks.rows_KxB, blocks.local_KxP,
                                                blocks.cols_KxP))
    pred_KxNbP = jnp.transpose(pred_NbxKxP, (1, 0, 2)).reshape(k, -1)
    pred_Kxn = jnp.zeros((k, blocks.n_pairs), jnp.float32).at[
        :, blocks.index_KxP.reshape(-1)].set(pred_KxNbP, mode="drop")
    pred_Kxn = jnp.where(fb_mask_n[None], fb_value_n[None], jnp.clip(pred_Kxn, lo, hi))
    err = pred_Kxn - target_n[None]
    return pred_Kxn, {"sse": jnp.sum(err * err, 1), "abs": jnp.sum(jnp.abs(err), 1),
                      "count": jnp.full((k,), blocks.n_pairs, jnp.float32)}

  return evaluate


def _select(mask_K: jax.Array, new, old):
  """Per member: new where mask_K else old (mask broadcast over leaf shapes)."""
  return jax.tree.map(
      lambda n, o: jnp.where(mask_K.reshape((-1,) + (1,) * (n.ndim - 1)), n, o), new, old)


# --------------------------------------------------------------- ensembles

def rmse(pred: np.ndarray, target: np.ndarray) -> float:
  err = np.asarray(pred, np.float64) - np.asarray(target, np.float64)
  return float(np.sqrt(np.mean(err * err))) if err.size else float("nan")


def ensemble_report(valid_Kxn: Optional[np.ndarray], test_Kxn: np.ndarray,
                    valid_target: Optional[np.ndarray], test_target: np.ndarray) -> dict:
  """Mean of all members, and the best top-k (members ranked by validation
  RMSE, k chosen on validation) — test ratings never choose anything."""
  out = {"ensemble_test_rmse": rmse(test_Kxn.mean(0), test_target),
         "ensemble_size": int(test_Kxn.shape[0])}
  if valid_Kxn is not None and valid_target is not None and len(valid_target):
    out["ensemble_valid_rmse"] = rmse(valid_Kxn.mean(0), valid_target)
    order = np.argsort([rmse(v, valid_target) for v in valid_Kxn], kind="stable")
    csum = np.cumsum(valid_Kxn[order].astype(np.float64), axis=0)
    topk_valid = [rmse(csum[i] / (i + 1), valid_target) for i in range(len(order))]
    best_k = int(np.argmin(topk_valid)) + 1
    out.update(best_k=best_k, best_k_members=[int(i) for i in order[:best_k]],
               best_k_valid_rmse=topk_valid[best_k - 1],
               best_k_test_rmse=rmse(test_Kxn[order[:best_k]].mean(0), test_target))
  return out


# ---------------------------------------------------------------- the run

def run_sweep(base: Config, configs: Sequence[Config], workdir, *,
              progress: Callable[[str], None] = print,
              problem: Optional[train_lib.Problem] = None,
              labels: Optional[Sequence[str]] = None) -> dict:
  """Trains every member at once and writes the sweep's workdir.

  workdir/members/kXX/{config.json, metrics.jsonl, metrics.json, test_pred.npy,
  valid_pred.npy} (the same keys as a `train.py` run; `train_seconds` is the
  member's 1/K share of the sweep's wall time, `sweep_train_seconds` the whole),
  workdir/summary.csv, summary.md, plots/valid_rmse.png, metrics.json
  (ensemble of the members' mean prediction, best top-k on validation).
  """
  from recae_jax import workdir as wd
  workdir = wd.ensure_writable(workdir)
  k = len(configs)
  if k == 0:
    raise UserError("--sweep: no members")
  if base.compute_dtype != "float32":
    raise UserError("--compute_dtype: sweeps compute in float32 only; drop the flag")
  labels = list(labels) if labels is not None else [f"k{i:02d}" for i in range(k)]
  wd.write_json(workdir / "config.json", {"base": base.to_json(),
                                          "members": [c.to_json() for c in configs]})
  if problem is None:
    dataset, split = train_lib.load_split(base)
    problem = train_lib.build_problem(base, dataset, split)
  model = build_model(base, problem.n_cols)
  n_train_rows = int(problem.fit_data.train_rows.shape[0])
  if n_train_rows == 0:
    raise UserError(f"dataset {base.dataset!r} split {base.split!r} has no training ratings")
  batch_size = min(base.batch_size, n_train_rows)
  steps_per_epoch = -(-n_train_rows // batch_size)
  st = _static(base, configs)
  tx = make_sweep_optimizer(base, steps_per_epoch)
  hyper = Hyper.from_configs(configs)
  epoch_fn = make_sweep_epoch(st, tx, base, batch_size)
  evaluate = make_sweep_evaluate(st, base, problem.rating_scale)
  state = init_sweep_state(model, tx, problem.fit_data, configs, base.seed)
  best_params = jax.tree.map(jnp.copy, state.params)

  t0 = time.perf_counter()
  compiled = epoch_fn.lower(state, problem.fit_data, hyper).compile()
  compile_seconds = time.perf_counter() - t0
  best_valid = np.full(k, np.inf)
  best_epoch = np.zeros(k, np.int64)
  bad = np.zeros(k, np.int64)
  active = np.ones(k, bool)
  stop_epoch = np.zeros(k, np.int64)
  histories: list[list[dict]] = [[] for _ in range(k)]
  epoch_seconds = []
  t_train = time.perf_counter()
  for epoch in range(1, base.epochs + 1):
    t = time.perf_counter()
    state, m = compiled(state, problem.fit_data, hyper)
    vs = None
    if problem.valid is not None:
      v = problem.valid
      _, vs = evaluate(state.params, problem.fit_data, v.blocks, v.target, v.fb_mask,
                       v.fb_value, hyper)
    m, vs = jax.device_get((m, vs))  # one host sync per epoch
    if not np.all(np.isfinite(m["loss"][active])):
      bad_k = [labels[i] for i in np.flatnonzero(~np.isfinite(m["loss"]) & active)]
      raise train_lib.TrainingDiverged(
          f"sweep members {', '.join(bad_k)} diverged at epoch {epoch}; lower their "
          "learning_rate or add --grad_clip")
    dt = time.perf_counter() - t
    epoch_seconds.append(dt)
    if vs is not None:
      v_rmse = np.sqrt(vs["sse"] / np.maximum(1.0, vs["count"]))
      v_mae = vs["abs"] / np.maximum(1.0, vs["count"])
      improved = active & (v_rmse < best_valid)
      best_params = _select(jnp.asarray(improved), state.params, best_params)
      best_valid = np.where(improved, v_rmse, best_valid)
      best_epoch = np.where(improved, epoch, best_epoch)
      bad = np.where(improved, 0, bad + active)
    else:  # no validation data: the last epoch is the selected one
      best_params = _select(jnp.asarray(active), state.params, best_params)
      best_epoch = np.where(active, epoch, best_epoch)
    for i in np.flatnonzero(active):
      row = {"epoch": epoch, "train_loss": float(m["loss"][i]),
             "train_rmse": math.sqrt(float(m["sse"][i]) / max(1.0, float(m["count"][i]))),
             "seconds": dt / k}
      if vs is not None:
        row.update(valid_rmse=float(v_rmse[i]), valid_mae=float(v_mae[i]))
      histories[i].append(row)
    stop_epoch = np.where(active, epoch, stop_epoch)
    if base.patience:
      active &= ~(bad >= np.array([c.patience for c in configs]))
    summary = (f"best valid RMSE {np.min(best_valid):.4f}" if vs is not None else
               f"loss {np.min(m['loss']):.4f}")
    progress(f"epoch {epoch:4d}/{base.epochs}  {int(active.sum())}/{k} members active  "
             f"{summary}  {dt:.2f}s")
    if not active.any():
      progress(f"early stop: every member ran out of patience ({base.patience})")
      break
  train_seconds = time.perf_counter() - t_train

  t_ = problem.test
  test_Kxn, ts = evaluate(best_params, problem.full_data, t_.blocks, t_.target,
                          t_.fb_mask, t_.fb_value, hyper)
  test_Kxn, ts = jax.device_get((test_Kxn, ts))
  valid_Kxn = None
  if problem.valid is not None:
    v = problem.valid
    valid_Kxn, _ = evaluate(best_params, problem.fit_data, v.blocks, v.target,
                            v.fb_mask, v.fb_value, hyper)
    valid_Kxn = np.asarray(jax.device_get(valid_Kxn))

  members = []
  for i, (label, cfg) in enumerate(zip(labels, configs)):
    mdir = workdir / "members" / label
    mdir.mkdir(parents=True, exist_ok=True)
    wd.write_json(mdir / "config.json", cfg.to_json())
    (mdir / "metrics.jsonl").write_text(
        "".join(json.dumps(r, sort_keys=True) + "\n" for r in histories[i]))
    n = max(1.0, float(ts["count"][i]))
    res = {
        "test_rmse": math.sqrt(float(ts["sse"][i]) / n),
        "test_mae": float(ts["abs"][i]) / n,
        "test_rmse_user_mean": train_lib.user_mean_rmse(t_.ratings, test_Kxn[i]),
        "best_epoch": int(best_epoch[i]),
        "best_valid_rmse": None if vs is None else float(best_valid[i]),
        "epochs_run": int(stop_epoch[i]), "n_train": problem.n_train,
        "n_fit": problem.n_fit,
        "n_valid": 0 if problem.valid is None else len(problem.valid.ratings),
        "n_test": len(t_.ratings), "n_test_fallback": t_.n_fallback,
        "train_seconds": train_seconds / k, "sweep_train_seconds": train_seconds,
        "compile_seconds": compile_seconds,
        "epoch_seconds_median": float(np.median(epoch_seconds)) / k,
        "dataset": problem.dataset_name, "dataset_files": problem.dataset_files,
        "device": jax.devices()[0].device_kind, "sweep_member": i, "sweep_size": k,
        "overrides": {f: getattr(cfg, f) for f in SWEEPABLE},
    }
    wd.save_npy(mdir / "test_pred.npy", test_Kxn[i])
    if valid_Kxn is not None:
      wd.save_npy(mdir / "valid_pred.npy", valid_Kxn[i])
    wd.write_json(mdir / "metrics.json", res)
    members.append(res)

  ens = ensemble_report(valid_Kxn, test_Kxn,
                        None if problem.valid is None else np.asarray(problem.valid.target),
                        np.asarray(t_.target))
  best_i = int(np.argmin([m["best_valid_rmse"] if m["best_valid_rmse"] is not None
                          else m["test_rmse"] for m in members]))
  results = {
      **ens, "n_members": k, "members": labels,
      "member_test_rmse": [m["test_rmse"] for m in members],
      "member_best_valid_rmse": [m["best_valid_rmse"] for m in members],
      "best_member": labels[best_i], "best_member_test_rmse": members[best_i]["test_rmse"],
      "train_seconds": train_seconds, "compile_seconds": compile_seconds,
      "epoch_seconds_median": float(np.median(epoch_seconds)),
      "epochs_run": len(epoch_seconds), "n_train": problem.n_train,
      "n_test": len(t_.ratings), "n_test_fallback": t_.n_fallback,
      "batch_order": "shared: every member sees the same batches in the same order",
  }
  wd.save_npy(workdir / "ensemble_test_pred.npy", test_Kxn.mean(0))
  wd.write_json(workdir / "metrics.json", results)
  write_summary(workdir, labels, members, ens)
  try:
    from recae_jax import plots  # noqa: F401  (sets the Agg backend)
    plot_valid_rmse(dict(zip(labels, histories)), workdir / "plots" / "valid_rmse.png")
  except ImportError:
    pass
  progress(f"sweep of {k}: best member {labels[best_i]} test RMSE "
           f"{members[best_i]['test_rmse']:.4f}; ensemble of all {ens['ensemble_test_rmse']:.4f}"
           + (f"; best top-{ens['best_k']} on validation {ens['best_k_test_rmse']:.4f}"
              if "best_k" in ens else ""))
  return results


def write_summary(workdir: pathlib.Path, labels: Sequence[str], members: Sequence[dict],
                  ens: dict) -> None:
  import pandas as pd
  rows = []
  for label, m in zip(labels, members):
    rows.append({"member": label, **m["overrides"], "best_epoch": m["best_epoch"],
                 "best_valid_rmse": m["best_valid_rmse"], "test_rmse": m["test_rmse"],
                 "test_mae": m["test_mae"]})
  rows.append({"member": "ensemble(all)", "test_rmse": ens["ensemble_test_rmse"],
               "best_valid_rmse": ens.get("ensemble_valid_rmse")})
  if "best_k" in ens:
    rows.append({"member": f"ensemble(top-{ens['best_k']} on valid)",
                 "test_rmse": ens["best_k_test_rmse"],
                 "best_valid_rmse": ens["best_k_valid_rmse"]})
  df = pd.DataFrame(rows)
  df.to_csv(workdir / "summary.csv", index=False)
  cols = list(df.columns)
  fmt = lambda x: "" if x is None or (isinstance(x, float) and np.isnan(x)) else (
      f"{x:.4g}" if isinstance(x, float) else str(x))
  lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
  lines += ["| " + " | ".join(fmt(r[c]) for c in cols) + " |"
            for r in df.astype(object).to_dict("records")]
  (workdir / "summary.md").write_text("\n".join(lines) + "\n")


def plot_valid_rmse(histories: dict[str, list[dict]], path) -> pathlib.Path:
  import matplotlib.pyplot as plt
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  fig, ax = plt.subplots(figsize=(7, 4.5))
  for name, rows in histories.items():
    pts = [(r["epoch"], r["valid_rmse"]) for r in rows if "valid_rmse" in r]
    if pts:
      ax.plot(*zip(*pts), label=name)
  ax.set(xlabel="epoch", ylabel="validation RMSE", title="sweep members")
  ax.grid(alpha=0.3)
  if len(histories) <= 16:
    ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)
  return path
