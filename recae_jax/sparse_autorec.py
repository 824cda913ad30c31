"""Sparse-aware training: touch only the observed entries of each batch.

A dense I-AutoRec batch is B x N with ~5% of entries observed, yet the dense
engine multiplies all of it. Here each batch's nonzeros are flattened into a
fixed-size buffer of T (row, col, value) slots (padding slots have value 0,
weight 0), and

    input layer   h_BxH = act(segment_sum(x_t · W[col_t], row_t) + b)
    middle        dense B x H layers, as usual (code dropout included)
    output layer  ŷ_t = out_act(h[row_t] · V[:, col_t] + c[col_t])   observed only
    loss          Σ_t (ŷ_t − x_t)² / max(1, Σ_t 1) + λ · ½ Σ W²

which is exactly the dense path's masked loss (same params tree as
`models.AutoEncoder`, so evaluation, checkpoints and encoders are shared;
tests pin loss and gradients allclose to the dense path).

T is static. Batching:
  * "stratified" (default): rows sorted by length are cut into strata of
    n_batches rows; each epoch every stratum is shuffled and deals one row to
    each batch, so every batch holds one row per length stratum and
    T = Σ_strata (longest row in the stratum) ≈ the mean batch total;
  * "uniform": the dense engine's batches (a plain permutation);
    T = Σ of the B longest rows, a bound that holds for any permutation
    (larger padding, so slower).

Whether sparse beats dense depends on density and on how fast the device
gathers/scatters relative to its GEMMs; `choose_compute` measures both on the
given data and picks the faster. Supported: untied models without side
features or input noise (see `supports`).
"""

from __future__ import annotations

import functools
import time
from typing import Any, Callable, Optional

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax

from recae_jax import losses
from recae_jax import sparse_ops
from recae_jax import train as train_lib
from recae_jax.config import Config
from recae_jax.data import sparse as sparse_lib
from recae_jax.models import _ACT, AutoEncoder, build_model

BATCHINGS = ("stratified", "uniform")
TRACE_COUNTS: dict[str, int] = {}


def supports(config: Config) -> tuple[bool, str]:
  """(True, "") if the sparse path can train `config`, else (False, why)."""
  why = []
  if config.tied:
    why.append("tied weights")
  if config.side_features:
    why.append("side features")
  if config.input_noise > 0:
    why.append("input noise (it makes missing inputs nonzero)")
  if config.dense_refeeding:
    why.append("dense re-feeding (dense targets)")
  if config.compute_dtype != "float32":
    why.append("bfloat16 compute")
  return (not why, ", ".join(why))


# --------------------------------------------------------------------- data

@flax.struct.dataclass
class SparseRowData:
  """Device CSR + the static entry bound T of one batch."""

  indptr: jax.Array       # int32 [R+2]; row R is the empty padding row
  indices: jax.Array      # int32 [nnz+1]; last = sentinel
  data: jax.Array         # float32 [nnz+1]; last = 0 (sentinel)
  train_rows: jax.Array   # int32 rows with >= 1 rating
  strata_SxNb: jax.Array  # int32 [B, n_batches] rows by length (stratified)
  n_cols: int = flax.struct.field(pytree_node=False)
  batch_size: int = flax.struct.field(pytree_node=False)
  max_entries: int = flax.struct.field(pytree_node=False)  # T
  batching: str = flax.struct.field(pytree_node=False)

  @property
  def n_rows(self) -> int:
    return self.indptr.shape[0] - 2

  @property
  def n_batches(self) -> int:
    return self.strata_SxNb.shape[1]


def entry_bound(lengths_R: np.ndarray, batch_size: int, batching: str) -> int:
  """The static T for rows of these lengths (train rows only)."""
  lengths = np.sort(np.asarray(lengths_R, np.int64))[::-1]
  if batching == "uniform":
    return max(1, int(lengths[:batch_size].sum()))
  n_batches = -(-len(lengths) // batch_size)
  return max(1, int(lengths[::n_batches].sum()))  # longest row of each stratum


def from_csr(csr: sparse_lib.CSR, batch_size: int,
             batching: str = "stratified") -> SparseRowData:
  if csr.nnz >= 2**31 - 1:
    raise ValueError("CSR with >= 2^31 entries needs int64 indices")
  return _batched(jnp.asarray(np.append(csr.indptr, csr.indptr[-1]).astype(np.int32)),
                  jnp.asarray(np.append(csr.indices, 0).astype(np.int32)),
                  jnp.asarray(np.append(csr.data, 0).astype(np.float32)),
                  csr.row_lengths(), int(csr.shape[1]), batch_size, batching)


def _batched(indptr, indices, data, lengths: np.ndarray, n_cols: int, batch_size: int,
             batching: str) -> SparseRowData:
  """SparseRowData over device CSR arrays (padding-row layout) and host row lengths."""
  if batching not in BATCHINGS:
    raise ValueError(f"batching must be one of {BATCHINGS}, got {batching!r}")
  rows = np.flatnonzero(lengths > 0).astype(np.int32)
  batch_size = max(1, min(batch_size, len(rows)))
  n_batches = max(1, -(-len(rows) // batch_size))
  n_rows = len(lengths)
  by_len = rows[np.argsort(-lengths[rows], kind="stable")]
  strata = np.full(n_batches * batch_size, n_rows, np.int32)
  strata[: len(by_len)] = by_len
  return SparseRowData(
      indptr=indptr, indices=indices, data=data, train_rows=jnp.asarray(rows),
      strata_SxNb=jnp.asarray(strata.reshape(batch_size, n_batches)),
      n_cols=n_cols, batch_size=batch_size,
      max_entries=entry_bound(lengths[rows], batch_size, batching), batching=batching)


def _csr_from_dense(source: sparse_lib.DenseRows) -> sparse_lib.CSR:
  dense = np.asarray(source.values_RxN)[:-1]
  r, c = np.nonzero(dense)
  indptr = np.zeros(dense.shape[0] + 1, np.int64)
  np.cumsum(np.bincount(r, minlength=dense.shape[0]), out=indptr[1:])
  return sparse_lib.CSR(indptr, c.astype(np.int32), dense[r, c].astype(np.float32),
                        dense.shape)


def from_row_data(data: train_lib.RowData, batch_size: int,
                  batching: str = "stratified") -> SparseRowData:
  source = data.source
  if isinstance(source, sparse_lib.CSRRows):  # same layout: share its device arrays
    lengths = np.diff(np.asarray(source.indptr))[:-1]
    return _batched(source.indptr, source.indices, source.data, lengths, source.n_cols,
                    batch_size, batching)
  return from_csr(_csr_from_dense(source), batch_size, batching)


@flax.struct.dataclass
class Entries:
  """A batch's observed entries, flattened and padded to T slots."""

  row_T: jax.Array    # int32 position in the batch (sorted; padding → B-1)
  col_T: jax.Array    # int32 column (padding → 0)
  value_T: jax.Array  # float32 rating (padding → 0)
  valid_T: jax.Array  # float32 1 for a real entry, 0 for padding


def flatten_batch(sd, rows_B: jax.Array, n_entries: Optional[int] = None) -> Entries:
  """Gathers the nonzeros of rows_B into T slots (no Python loops). `sd` is
  any device CSR with the padding-row layout (SparseRowData, data.sparse.
  CSRRows); T = n_entries, default sd.max_entries, must bound the rows' total."""
  b = rows_B.shape[0]
  start_B = sd.indptr[rows_B]
  len_B = sd.indptr[rows_B + 1] - start_B
  end_B = jnp.cumsum(len_B)
  t_T = jnp.arange(sd.max_entries if n_entries is None else n_entries, dtype=jnp.int32)
  row_T = jnp.minimum(jnp.searchsorted(end_B, t_T, side="right"), b - 1).astype(jnp.int32)
  valid = t_T < end_B[-1]
  pos_T = jnp.where(valid, start_B[row_T] + t_T - (end_B - len_B)[row_T],
                    sd.data.shape[0] - 1)
  return Entries(row_T, sd.indices[pos_T], sd.data[pos_T], valid.astype(jnp.float32))


def epoch_rows(sd: SparseRowData, rng: jax.Array, shuffle: bool) -> jax.Array:
  """This epoch's [n_batches, B] row grid (padding id = n_rows)."""
  nb, bs = sd.n_batches, sd.batch_size
  if sd.batching == "stratified" and shuffle:
    keys_SxNb = jax.random.uniform(rng, sd.strata_SxNb.shape)
    perm_SxNb = jnp.argsort(keys_SxNb, axis=1)
    return jnp.take_along_axis(sd.strata_SxNb, perm_SxNb, axis=1).T
  n = sd.train_rows.shape[0]
  perm = sd.train_rows[jax.random.permutation(rng, n)] if shuffle else sd.train_rows
  pad = jnp.full((nb * bs - n,), sd.n_rows, jnp.int32)
  return jnp.concatenate([perm, pad]).reshape(nb, bs)


# ------------------------------------------------------------------ model

def encode(model: AutoEncoder, params, e: Entries, batch_size: int, *, div: float = 1.0,
           train: bool = False, rng: Optional[jax.Array] = None) -> jax.Array:
  """The last hidden layer [B, H] of the batch whose entries are `e`."""
  act = _ACT[model.activation]
  n_layers = len(model.layers)
  x_T = e.value_T / div
  if train and model.input_dropout > 0:
    rng, sub = jax.random.split(rng)
    keep = jax.random.bernoulli(sub, 1 - model.input_dropout, x_T.shape)
    x_T = jnp.where(keep, x_T / (1 - model.input_dropout), 0.0)
  w0 = params["enc_0_kernel"]
  # Sparse x dense: each slot adds value · W[col] to its row (rows are sorted).
  chunk = sparse_ops.chunk_size(x_T.shape[0], w0.shape[1])
  h = act(sparse_ops.spmm(w0, e.row_T, e.col_T, x_T, batch_size, chunk)
          + params["enc_0_bias"])
  for i in range(1, n_layers):
    h = act(h @ params[f"enc_{i}_kernel"] + params[f"enc_{i}_bias"])
  if train and model.dropout > 0:
    rng, sub = jax.random.split(rng)
    keep = jax.random.bernoulli(sub, 1 - model.dropout, h.shape)
    h = jnp.where(keep, h / (1 - model.dropout), 0.0)
  for i in range(n_layers - 1):
    h = act(h @ params[f"dec_{i}_kernel"] + params[f"dec_{i}_bias"])
  return h


def output_rows(model: AutoEncoder, params) -> jax.Array:
  """The output layer's kernel as [N, H] rows, the layout sddmm gathers."""
  # Materialised once: a transpose fused into the gather reads strided columns.
  return jax.lax.optimization_barrier(params[f"dec_{len(model.layers) - 1}_kernel"].T)


def outputs_at(model: AutoEncoder, params, h_BxH, row_P, col_P,
               v_NxH: Optional[jax.Array] = None) -> jax.Array:
  """The model's outputs at (row, col) pairs only: [P] (scaled like the input).
  Pass `output_rows(...)` as v_NxH when calling this in a loop."""
  last = len(model.layers) - 1
  if v_NxH is None:
    v_NxH = output_rows(model, params)
  chunk = sparse_ops.chunk_size(row_P.shape[0], h_BxH.shape[-1])
  out_P = (sparse_ops.sddmm(h_BxH, v_NxH, row_P, col_P, chunk)
           + params[f"dec_{last}_bias"][col_P])
  return _ACT[model.output_activation](out_P)


def predict_entries(model: AutoEncoder, params, e: Entries, batch_size: int, *,
                    div: float = 1.0, train: bool = False,
                    rng: Optional[jax.Array] = None) -> jax.Array:
  """The model's outputs at the observed (row, col) slots only: [T]."""
  h = encode(model, params, e, batch_size, div=div, train=train, rng=rng)
  return outputs_at(model, params, h, e.row_T, e.col_T)


def sparse_loss(model: AutoEncoder, config: Config, params, e: Entries, n_real_rows,
                batch_size: int, rng=None):
  """(loss, (sse, count)) — the dense engine's loss on the same batch."""
  div = config.rating_divisor
  pred_T = predict_entries(model, params, e, batch_size, div=div, train=True, rng=rng)
  diff = (pred_T - e.value_T / div) * e.valid_T
  sse = jnp.sum(diff * diff)
  count = jnp.sum(e.valid_T)
  if config.loss_denominator == "observed":
    denom = jnp.maximum(1.0, count)
  else:
    denom = jnp.maximum(1.0, n_real_rows) * model.n_outputs
  loss = sse / denom
  if config.l2 > 0:
    loss = loss + config.l2 * losses.l2_penalty(params)
  return loss, (sse, count)


def init_state(model: AutoEncoder, tx, n_cols: int, seed: int) -> train_lib.TrainState:
  """Identical to `train.init_state` (same keys, same params)."""
  rng = jax.random.PRNGKey(seed)
  init_rng, rng = jax.random.split(rng)
  x = jnp.zeros((1, n_cols), jnp.float32)
  params = model.init(init_rng, x, x != 0, None)["params"]
  return train_lib.TrainState(step=jnp.zeros((), jnp.int32), params=params,
                              opt_state=tx.init(params), rng=rng)


def make_train_step(model: AutoEncoder, tx: optax.GradientTransformation,
                    config: Config) -> Callable:
  """Pure `step(state, rows_B, sd) -> (state, (loss, sse, count))`."""
  ok, why = supports(config)
  if not ok:
    raise ValueError(f"the sparse path does not support {why}")
  grad_fn = jax.value_and_grad(
      lambda p, e, n, b, r: sparse_loss(model, config, p, e, n, b, r), has_aux=True)

  def step(state: train_lib.TrainState, rows_B, sd: SparseRowData):
    e = flatten_batch(sd, rows_B)
    n_real = jnp.sum(rows_B < sd.n_rows).astype(jnp.float32)
    rng = jax.random.fold_in(state.rng, state.step)
    (loss, (sse, count)), grads = grad_fn(state.params, e, n_real, rows_B.shape[0], rng)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    return (state.replace(step=state.step + 1,
                          params=optax.apply_updates(state.params, updates),
                          opt_state=opt_state), (loss, sse, count))

  return step


def make_train_epoch(model: AutoEncoder, tx: optax.GradientTransformation,
                     config: Config) -> Callable:
  """Jitted `epoch(state, sd) -> (state, metrics)`: the same contract and
  metrics as `train.make_train_epoch`, one lax.scan over the batches."""
  div = config.rating_divisor
  step = make_train_step(model, tx, config)

  @functools.partial(jax.jit, donate_argnums=0)
  def train_epoch(state: train_lib.TrainState, sd: SparseRowData):
    TRACE_COUNTS["train_epoch"] = TRACE_COUNTS.get("train_epoch", 0) + 1
    rng, perm_rng = jax.random.split(state.rng)
    rows = epoch_rows(sd, perm_rng, config.shuffle)
    state, (loss, sse, count) = jax.lax.scan(lambda s, r: step(s, r, sd),
                                             state.replace(rng=rng), rows)
    return state, {"loss": jnp.mean(loss), "sse": jnp.sum(sse) * div * div,
                   "count": jnp.sum(count)}

  return train_epoch


# -------------------------------------------------------------- evaluation

def block_entry_bound(source, blocks) -> int:
  """Most entries any evaluation block's rows hold (host; the static T)."""
  lengths = np.diff(np.asarray(source.indptr))          # padding row has 0
  rows_KxB = np.asarray(blocks.rows_KxB)
  return max(1, int(lengths[rows_KxB].sum(axis=1).max()))


def make_evaluate(model: AutoEncoder, config: Config,
                  rating_scale: tuple[float, float]) -> Callable:
  """`train.make_evaluate`'s contract for data held as a device CSR: each
  block's hidden layer comes from its rows' entries (spmm) and the output
  layer is evaluated at the block's pairs only (sddmm), never B x N. For
  RowData with a dense source it falls back to the dense evaluation."""
  div = config.rating_divisor
  dense_evaluate = train_lib.make_evaluate(model, config, rating_scale)

  @functools.partial(jax.jit, static_argnums=6)
  def sparse_evaluate(params, source, blocks, target_n, fb_mask_n, fb_value_n,
                      n_entries: int):
    v_NxH = output_rows(model, params)  # once, not per block

    def block(_, xs):
      rows_B, local_P, cols_P = xs
      e = flatten_batch(source, rows_B, n_entries)
      h = encode(model, params, e, rows_B.shape[0], div=div)
      return None, outputs_at(model, params, h, local_P, cols_P, v_NxH) * div

    _, pred_KxP = jax.lax.scan(block, None, (blocks.rows_KxB, blocks.local_KxP,
                                             blocks.cols_KxP))
    return train_lib.score_pairs(pred_KxP, blocks, target_n, fb_mask_n, fb_value_n,
                                 rating_scale)

  bounds = {}  # per (rows, blocks): read back from the device once, not per epoch

  def evaluate(params, data: train_lib.RowData, blocks, target_n, fb_mask_n, fb_value_n):
    if not isinstance(data.source, sparse_lib.CSRRows) or data.side_RxS is not None:
      return dense_evaluate(params, data, blocks, target_n, fb_mask_n, fb_value_n)
    key = (id(data.source.indptr), id(blocks.rows_KxB))
    if key not in bounds:  # the arrays are kept with it, so their ids stay theirs
      bounds[key] = (data.source.indptr, blocks.rows_KxB,
                     block_entry_bound(data.source, blocks))
    return sparse_evaluate(params, data.source, blocks, target_n, fb_mask_n, fb_value_n,
                           bounds[key][2])

  return evaluate


# ------------------------------------------------------- measure & choose

def _compile_and_warm(fn, state, data) -> tuple[float, Any, Any]:
  """(compile seconds, compiled epoch, state after one warm-up epoch)."""
  t = time.perf_counter()
  compiled = fn.lower(state, data).compile()
  compile_s = time.perf_counter() - t
  state, m = compiled(state, data)  # warm-up
  jax.block_until_ready(m)
  return compile_s, compiled, state


def time_dense_and_sparse(config: Config, fit_data: train_lib.RowData, n_cols: int, *,
                          repeats: int = 3, batching: str = "stratified",
                          sd: Optional[SparseRowData] = None) -> dict:
  """Median epoch seconds of both paths on this data, measured interleaved
  (dense, sparse, dense, ...) so machine noise hits both alike."""
  model = build_model(config, n_cols)
  n_train = int(fit_data.train_rows.shape[0])
  batch = min(config.batch_size, n_train)
  tx = train_lib.make_optimizer(config, -(-n_train // batch))
  if sd is None:
    sd = from_row_data(fit_data, batch, batching)
  runs = {
      "dense": (train_lib.make_train_epoch(model, tx, config, batch), fit_data),
      "sparse": (make_train_epoch(model, tx, config), sd),
  }
  compiled, states, out = {}, {}, {}
  for name, (fn, data) in runs.items():
    state = init_state(model, tx, n_cols, config.seed)
    c_s, compiled[name], states[name] = _compile_and_warm(fn, state, data)
    out[f"{name}_compile_seconds"] = c_s
  times = {name: [] for name in runs}
  for _ in range(repeats):
    for name, (_, data) in runs.items():
      t = time.perf_counter()
      states[name], m = compiled[name](states[name], data)
      jax.block_until_ready(m)
      times[name].append(time.perf_counter() - t)
  for name in runs:
    out[f"{name}_epoch_seconds"] = float(np.median(times[name]))
  out.update(
      sparse_speedup=out["dense_epoch_seconds"] / out["sparse_epoch_seconds"],
      max_entries=sd.max_entries, batching=sd.batching, batch_size=batch,
      dense_entries_per_batch=batch * n_cols,
      mean_entries_per_batch=float(sd.indptr[-1]) / sd.n_batches)
  return out


def choose_compute(config: Config, fit_data: train_lib.RowData, n_cols: int, *,
                   repeats: int = 3, batching: str = "stratified") -> dict:
  """Measures dense vs sparse epochs on this data/device; {"choice": ...}."""
  ok, why = supports(config)
  if not ok:
    return {"choice": "dense", "reason": f"sparse path does not support {why}"}
  t = time_dense_and_sparse(config, fit_data, n_cols, repeats=repeats, batching=batching)
  choice = "sparse" if t["sparse_epoch_seconds"] < t["dense_epoch_seconds"] else "dense"
  return {"choice": choice, "device": jax.devices()[0].device_kind, **t}


# --------------------------------------------- a config-compatible entry point

def make_epoch_for(config: Config, compute: str, model: AutoEncoder, tx,
                   fit_data: train_lib.RowData, batch_size: int, *,
                   batching: str = "stratified") -> tuple[Callable, Any, dict]:
  """(train_epoch, epoch_data, info) for compute in {"dense", "sparse", "auto"}.

  The hook for `train.train_and_evaluate`: call `compiled(state, epoch_data)`
  exactly as the dense `train_epoch(state, problem.fit_data)` is called now.
  """
  info: dict = {"compute": "dense"}
  if compute not in ("dense", "sparse", "auto"):
    raise ValueError(f"compute must be dense, sparse or auto, got {compute!r}")
  ok, why = supports(config)
  if compute == "sparse" and not ok:
    from recae_jax.errors import UserError
    raise UserError(f"--compute=sparse does not support {why}")
  if compute == "auto" and ok:
    info = choose_compute(config, fit_data, model.n_outputs, batching=batching)
    compute = info["choice"]
    info["compute"] = compute
  if compute == "sparse":
    sd = from_row_data(fit_data, batch_size, batching)
    info["compute"] = "sparse"
    return make_train_epoch(model, tx, config), sd, info
  return train_lib.make_train_epoch(model, tx, config, batch_size), fit_data, info
