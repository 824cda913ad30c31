"""The one training engine: a whole epoch is one compiled call.

    init_state(task, tx, seeds, order_seed)          K members stacked on axis 0
    epoch = make_epoch(task, tx, batcher, ...)       jit, state donated
    epoch(state, data, hyper) -> (state, metrics)    lax.scan over the batches
    evaluate = make_evaluate(task, ...)              jit, lax.scan over row blocks
    evaluate(params_K, rows, eval_set) -> (pred_Kxn, {"sse", "abs", "count"} [K])

Members: every leaf of params / opt_state has a leading K axis (a lone run
is K = 1). In a sweep every member sees the same batches in the same order
(one grid per epoch from a shared `order_rng`); in a seed ensemble each
member draws its own order from its seed (`order_rng` [K, 2]). Member k's
dropout draws come from its own key folded with the step, so a member trains
exactly like a lone run of its config with that batch order. Members run in groups (`group_size`): side by
side by `vmap` (a shared input makes each layer one dot_general with the
member axis free; the accelerator default), or one after another by
`lax.map` over groups inside the same call (the CPU default, where K stacked
optimizer states fall out of cache: K=8 side by side measured ~0.6-0.75x of
sequential). A group of one runs the member's plain step, no vmap (XLA:CPU
runs batch-1 batched dots ~15% slower than GEMMs). The grouping does not
change the result.

Learning rates are per member: the optimizer is built at rate 1 and each
member's update is scaled by its own rate (exact: every optimizer here is
linear in it). Per-member L2 and dropout rates are traced `Hyper` values.

Devices: with a mesh, dense batches are split over 'data' by sharding
constraints (GSPMD) and the wide layers over 'model' (see `sharding`); a
sparse batch is split by `shard_map`: each device flattens the entries of
its B/D rows, computes its share of the loss and gradients, and the
gradients are summed over 'data' (the sparse path needs replicated
parameters: --model_parallel=1). A sparse epoch holds the output kernel as
[N, H] rows from its start to its end (`_output_rows_layout`).
"""

from __future__ import annotations

import collections
import dataclasses
import functools
from typing import Any, Optional, Sequence

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import PartitionSpec as P

from recae_jax import sharding
from recae_jax.batching import (SparseBatcher, block_entry_bound, flatten_rows)
from recae_jax.data import sparse as sparse_lib
from recae_jax.models import AutoEncoder, SparseInput
from recae_jax.pairs import PairBlocks

# How many times each jitted function was traced (tests pin "compiles once").
TRACE_COUNTS: collections.Counter = collections.Counter()


@flax.struct.dataclass
class TrainState:
  step: jax.Array       # shared step counter
  params: Any           # every leaf [K, ...]
  opt_state: Any        # every leaf [K, ...]
  rng: jax.Array        # [K, 2] raw uint32 member keys (dropout), orbax-savable
  order_rng: jax.Array  # [2] the shared batch order, or [K, 2] one per member

  @property
  def n_members(self) -> int:
    return int(self.rng.shape[0])


def member(tree, k: int):
  """Member k's slice of a stacked tree."""
  return jax.tree.map(lambda x: x[k], tree)


def stack(trees: Sequence):
  return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)


def init_state(task, tx, seeds: Sequence[int],
               order_seed: Optional[int] = None, start=None) -> TrainState:
  """Member k starts exactly where a lone run with seed seeds[k] would. With
  `order_seed` every member sees one shared batch order (a sweep); with None
  each member draws its own from its seed (a seed ensemble: then member k is
  exactly the lone run with seed seeds[k]). `start` (stacked [K, ...], any
  subset of the parameters) replaces those initial values (a second stage)."""
  params, opt_states, rngs = [], [], []
  init = jax.jit(task.init)
  for k, seed in enumerate(seeds):
    init_rng, rng = jax.random.split(jax.random.PRNGKey(int(seed)))
    p = init(init_rng)
    if start is not None:
      p = {**p, **member(start, k)}
    params.append(p)
    opt_states.append(tx.init(p))
    rngs.append(rng)
  order = lambda seed: jax.random.fold_in(jax.random.PRNGKey(int(seed)), 1)
  return TrainState(step=jnp.zeros((), jnp.int32), params=stack(params),
                    opt_state=stack(opt_states), rng=jnp.stack(rngs),
                    order_rng=(order(order_seed) if order_seed is not None
                               else jnp.stack([order(s) for s in seeds])))


def default_group_size(k: int, platform: Optional[str] = None) -> int:
  """Members side by side per pass over the batches: all K on an accelerator
  (one small model leaves the chip idle), one at a time on a CPU."""
  platform = platform or jax.default_backend()
  return 1 if platform == "cpu" else k


def _scaled(updates, lr):
  return jax.tree.map(lambda u: u * lr, updates)


def make_member_update(task, tx, batcher):
  """Pure `update(params, opt, rng_key, hyper, data, rows_B, step)` of one member."""
  sparse_mesh = isinstance(batcher, SparseBatcher) and batcher.mesh is not None

  def grads_of(params, data, rows_B, hyper, rng, step):
    grad_fn = jax.value_and_grad(task.loss, has_aux=True)
    if not sparse_mesh:
      batch = batcher.batch(data, rows_B)
      return batch, grad_fn(params, batch, hyper, rng, step)
    return None, _sharded_sparse_grads(task, batcher, params, data, rows_B, hyper, rng,
                                       step)

  def update(params, opt_state, rng_key, hyper, data, rows_B, step):
    rng = jax.random.fold_in(rng_key, step)
    batch, ((loss, aux), grads) = grads_of(params, data, rows_B, hyper, rng, step)
    # L-BFGS's line search re-evaluates the batch's loss; other optimizers
    # ignore these arguments (optax.chain drops them).
    line_search = {} if sparse_mesh else dict(
        value=loss, grad=grads, value_fn=lambda p: task.loss(p, batch, hyper, rng, step)[0])
    upd, opt_state = tx.update(grads, opt_state, params, **line_search)
    params = optax.apply_updates(params, _scaled(upd, hyper.learning_rate))
    for k in range(task.dense_refeeding):
      again = task.refeed(params, batch)
      _, grads = jax.value_and_grad(task.loss, has_aux=True)(
          params, again, hyper, jax.random.fold_in(rng, k + 1), step)
      upd, opt_state = tx.update(grads, opt_state, params)
      params = optax.apply_updates(params, _scaled(upd, hyper.learning_rate))
    return params, opt_state, (loss, aux)

  return update


def _sharded_sparse_grads(task, batcher, params, data, rows_B, hyper, rng, step):
  """Loss and gradients of a sparse batch split over the mesh's 'data' axis.

  Each device flattens its own rows' entries; the loss's global
  denominators (entry count, real rows) are summed first, so the summed
  local gradients equal the single-device gradient of the whole batch."""
  mesh = batcher.mesh
  n_dev = mesh.shape["data"]

  def local(params, data, rows_b, hyper, rng, step):
    batch = batcher.batch(data, rows_b)
    glob = {"count": jax.lax.psum(jnp.sum(batch.valid_T), "data"),
            "rows": jax.lax.psum(jnp.sum(batch.w_B), "data")}
    fn = lambda p: task.loss(p, batch, hyper, rng, step, totals=glob, shards=n_dev)
    (loss, aux), grads = jax.value_and_grad(fn, has_aux=True)(params)
    return jax.lax.psum(((loss, aux), grads), "data")

  return jax.shard_map(local, mesh=mesh, in_specs=(P(), P(), P("data"), P(), P(), P()),
                       out_specs=P(), check_vma=False)(params, data, rows_B, hyper, rng,
                                                       step)


def _output_rows_layout(task, batcher):
  """(the task the epoch steps, the parameter it holds transposed or None).

  On the sparse path an autoencoder's output kernel is held as [N, H] rows
  for the whole epoch: sddmm gathers rows of it and its gradient scatters
  into rows, so one transpose of it and its optimizer state per epoch
  replaces two per step (at the ML-20M shape the step went from 0.58-0.61 s
  to 0.44-0.47 s on a 2-core AMD EPYC).
  Outside the epoch (checkpoints, evaluation) it is always [H, N]."""
  model = getattr(task, "model", None)
  if not (isinstance(batcher, SparseBatcher) and isinstance(model, AutoEncoder)):
    return task, None
  rows_model = model.holding_output_rows()
  if rows_model is None:
    return task, None
  return dataclasses.replace(task, model=rows_model), rows_model.output_kernel_name


def _keyed(path, name: str) -> bool:
  return bool(path) and getattr(path[-1], "key", None) == name


def leaves_keyed(tree, name: str) -> list:
  """The leaves keyed `name`: a parameter and its copies in an optimizer state."""
  return [x for path, x in jax.tree_util.tree_leaves_with_path(tree) if _keyed(path, name)]


def _swap_last_axes(tree, name: Optional[str]):
  """Every leaf keyed `name` (a parameter and its copies in the optimizer
  state, under any leading member or memory axes) with its last two axes
  swapped; the tree itself when `name` is None."""
  if name is None:
    return tree
  swap = lambda path, x: jnp.swapaxes(x, -1, -2) if _keyed(path, name) else x
  return jax.tree_util.tree_map_with_path(swap, tree)


def make_epoch(task, tx, batcher, *, shuffle: bool = True,
               group_size: Optional[int] = None, summarize=None):
  """Jitted `epoch(state, data, hyper) -> (state, metrics)`: one call, a
  lax.scan over this epoch's [n_batches, B] grid, per group of members.
  `data` is what `batcher.data(rows)` made; metrics are [K] arrays."""
  task, transposed = _output_rows_layout(task, batcher)
  update = make_member_update(task, tx, batcher)

  def run_group(state, data, rows, params, opt, rng, hyp, per_member: bool):
    """One group's pass over the grid; leaves carry a leading group axis g.
    `rows` is the shared [Nb, B] grid, or per member [g, Nb, B]. A group of
    one scans the member's unstacked state (no member axis in the loop carry:
    slicing it off and back on every step made XLA copy the whole state)."""
    g = rng.shape[0]
    if g == 1:
      params, opt, hyp = member(params, 0), member(opt, 0), member(hyp, 0)
      rng, rows = rng[0], rows[0] if per_member else rows
      fn = lambda p, o, rows_B, step: update(p, o, rng, hyp, data, rows_B, step)
    else:
      rows_axis = 0 if per_member else None
      fn = lambda p, o, rows_B, step: jax.vmap(
          update, in_axes=(0, 0, 0, 0, None, rows_axis, None))(p, o, rng, hyp, data,
                                                               rows_B, step)
      if per_member:
        rows = jnp.swapaxes(rows, 0, 1)  # scan over batches: [Nb, g, B]

    def body(carry, rows_B):
      p, o, step = carry
      p, o, out = fn(p, o, rows_B, step)
      return (p, o, step + 1), out

    (params, opt, _), out = jax.lax.scan(body, (params, opt, state.step), rows)
    if g == 1:
      params, opt, out = jax.tree.map(lambda x: x[None], params), jax.tree.map(
          lambda x: x[None], opt), jax.tree.map(lambda x: x[:, None], out)
    return params, opt, out  # out leaves [Nb, g]

  @functools.partial(jax.jit, donate_argnums=0)
  def epoch(state: TrainState, data, hyper):
    TRACE_COUNTS["train_epoch"] += 1
    k = state.rng.shape[0]
    g = group_size or default_group_size(k)
    if k % g:
      raise ValueError(f"group_size {g} must divide the number of members {k}")
    per_member = state.order_rng.ndim == 2  # each member its own batch order
    if per_member:
      keys = jax.vmap(jax.random.split)(state.order_rng)
      order_rng, perm_rng = keys[:, 0], keys[:, 1]
      rows = jax.vmap(lambda r: batcher.epoch_rows(data, r, shuffle))(perm_rng)
    else:
      order_rng, perm_rng = jax.random.split(state.order_rng)
      rows = batcher.epoch_rows(data, perm_rng, shuffle)
    n_batches = rows.shape[-2]
    held = lambda tree: _swap_last_axes(tree, transposed)  # its own inverse
    trees = (held(state.params), held(state.opt_state), state.rng, hyper) + (
        (rows,) if per_member else ())
    if g == k:
      params, opt, out = run_group(state, data, rows, *trees[:4], per_member)
    else:
      # A loop over groups that writes each group's state back into the
      # stacked (donated) state in place; a lax.map over [K/g, g] reshaped
      # trees made XLA copy the whole stacked state in and out every epoch.
      def group(i, tree_K):
        return jax.tree.map(lambda x: jax.lax.dynamic_slice_in_dim(x, i * g, g), tree_K)

      def one(i, t):
        return run_group(state, data, group(i, t[4]) if per_member else rows,
                         *group(i, t[:4]), per_member)

      out = jax.tree.map(lambda x: jnp.zeros(x.shape[:1] + (k,), x.dtype),
                         jax.eval_shape(one, 0, trees)[2])  # [steps, K]

      def body(i, carry):
        params, opt, out = carry
        p, o, y = one(i, (params, opt) + trees[2:])
        put = lambda axis: lambda x_K, x: jax.lax.dynamic_update_slice_in_dim(
            x_K, x, i * g, axis)
        return (jax.tree.map(put(0), params, p), jax.tree.map(put(0), opt, o),
                jax.tree.map(put(1), out, y))

      params, opt, out = jax.lax.fori_loop(0, k // g, body, (trees[0], trees[1], out))
    loss, aux = out
    state = state.replace(step=state.step + n_batches, params=held(params),
                          opt_state=held(opt), order_rng=order_rng)
    return state, (summarize or rating_metrics)(loss, aux)

  return epoch


def rating_metrics(loss_NbxK, aux) -> dict:
  sse, count = aux
  return {"loss": jnp.mean(loss_NbxK, 0), "sse": jnp.sum(sse, 0),
          "count": jnp.sum(count, 0)}


def over_members(fn, params_K, *args):
  """fn(member params, *args) for every member: [K, ...]; one member without vmap."""
  if jax.tree.leaves(params_K)[0].shape[0] == 1:
    return jax.tree.map(lambda x: x[None], fn(member(params_K, 0), *args))
  return jax.vmap(fn, in_axes=(0,) + (None,) * len(args))(params_K, *args)


def score_pairs(pred_KxP, blocks: PairBlocks, target_n, fb_mask_n, fb_value_n,
                rating_scale: tuple[float, float]):
  """Block-ordered predictions [Nb, K, P] → (pred_Kxn in pair order, clipped,
  fallbacks substituted; {"sse", "abs", "count"} each [K])."""
  lo, hi = rating_scale
  k = pred_KxP.shape[1]
  flat_KxNbP = jnp.transpose(pred_KxP, (1, 0, 2)).reshape(k, -1)
  pred = jnp.zeros((k, blocks.n_pairs), jnp.float32).at[
      :, blocks.index_KxP.reshape(-1)].set(flat_KxNbP, mode="drop")
  pred = jnp.where(fb_mask_n[None], fb_value_n[None], jnp.clip(pred, lo, hi))
  err = pred - target_n[None]
  return pred, {"sse": jnp.sum(err * err, 1), "abs": jnp.sum(jnp.abs(err), 1),
                "count": jnp.full((k,), blocks.n_pairs, jnp.float32)}


def make_evaluate(task, compute: str, rating_scale: tuple[float, float], mesh=None):
  """`evaluate(params_K, rows: RowData, eval_set) -> (pred_Kxn, sums [K])`.

  Predicts every pair (clipped to the rating scale, fallbacks substituted)
  and sums SSE / absolute error / count on device. On the sparse path with
  rows held as a device CSR, each block's hidden layer comes from its rows'
  entries (spmm) and the output layer is evaluated at the block's pairs only
  (sddmm), never B x N."""

  @jax.jit
  def dense_eval(params_K, data, blocks, target_n, fb_mask_n, fb_value_n):
    TRACE_COUNTS["evaluate"] += 1

    def block(_, xs):
      rows_B, local_P, cols_P = xs
      rows_B = sharding.constrain_batch(mesh, rows_B)
      inputs = jax.tree.map(functools.partial(sharding.constrain_batch, mesh),
                            data.inputs(rows_B))
      return None, over_members(lambda p: task.predict_at(p, inputs, (local_P, cols_P)),
                                params_K)

    _, pred = jax.lax.scan(block, None, (blocks.rows_KxB, blocks.local_KxP, blocks.cols_KxP))
    return score_pairs(pred, blocks, target_n, fb_mask_n, fb_value_n, rating_scale)

  @functools.partial(jax.jit, static_argnums=6)
  def sparse_eval(params_K, source, blocks, target_n, fb_mask_n, fb_value_n,
                  n_entries: int):
    TRACE_COUNTS["evaluate"] += 1
    out_rows_K = over_members(task.model.output_rows, params_K)  # once, not per block

    def block(_, xs):
      rows_B, local_P, cols_P = xs
      row, col, value, valid = flatten_rows(source, rows_B, n_entries)
      inputs = SparseInput(row, col, value, valid, rows_B.shape[0])
      fn = lambda p, v: task.predict_at(p, inputs, (local_P, cols_P), v)
      if out_rows_K.shape[0] == 1:
        return None, fn(member(params_K, 0), out_rows_K[0])[None]
      return None, jax.vmap(fn)(params_K, out_rows_K)

    _, pred = jax.lax.scan(block, None, (blocks.rows_KxB, blocks.local_KxP, blocks.cols_KxP))
    return score_pairs(pred, blocks, target_n, fb_mask_n, fb_value_n, rating_scale)

  bounds = {}  # per (rows, blocks): read back from the device once, not per epoch

  def evaluate(params_K, data, es):
    args = (es.blocks, es.target, es.fb_mask, es.fb_value)
    if (compute != "sparse" or not isinstance(data.source, sparse_lib.CSRRows)
        or data.side_RxS is not None):
      return dense_eval(params_K, data, *args)
    key = (id(data.source.indptr), id(es.blocks.rows_KxB))
    if key not in bounds:  # the arrays are kept with it, so their ids stay theirs
      bounds[key] = (data.source.indptr, es.blocks.rows_KxB,
                     block_entry_bound(data.source, es.blocks.rows_KxB))
    return sparse_eval(params_K, data.source, *args, bounds[key][2])

  return evaluate


def errors(sums) -> dict:
  """{"rmse", "mae"} [K] arrays from summed errors (host)."""
  n = np.maximum(1.0, np.asarray(sums["count"], np.float64))
  return {"rmse": np.sqrt(np.asarray(sums["sse"], np.float64) / n),
          "mae": np.asarray(sums["abs"], np.float64) / n}
