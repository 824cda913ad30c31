"""What a training run holds at once, estimated before anything large is
allocated, and checked against --memory_budget_mb.

Exact parts (from shapes, via jax.eval_shape): parameters + optimizer state,
gradients, the best-so-far copy, the row data on the device. Estimated part:
one batch's working set, the larger of

  dense path   B x N floats x 6 (input, mask, dropout input, output, its
               gradient, the loss's difference) + B x hidden activations,
  sparse path  T entries x 16 bytes + the output kernel and its optimizer
               state's copies of it held as [N, H] rows beside the [H, N]
               originals (engine._output_rows_layout; with Adam 3 x N x H)
               and the two [N, width] gradient accumulators,
  evaluation   eval_batch x N floats x 3 (dense evaluation; the sparse one,
               on CSR rows, is counted like a sparse step).

Per device: the batch splits over the 'data' axis, the N-wide layers over
'model'. XLA may fuse some of the batch arrays away and the runtime adds a
few hundred MB of its own, so read the total as an order of magnitude.
"""

from __future__ import annotations

from typing import Optional

import jax

from recae_jax import engine
from recae_jax.data import sparse
from recae_jax.errors import UserError

MB = 1 << 20
_BATCH_ARRAYS = 6   # [B, N] float arrays alive at once in a dense step
_EVAL_ARRAYS = 3    # [eval_batch, N] float arrays in a dense evaluation block


def tree_bytes(tree) -> int:
  """Bytes of every array (or ShapeDtypeStruct) leaf."""
  return sum(int(x.size) * x.dtype.itemsize for x in jax.tree.leaves(tree)
             if hasattr(x, "dtype"))


def estimate(config, model, abstract_state, problem, batch_size: int, compute: str,
             sparse_entries: Optional[int] = None, data_parallel: int = 1,
             model_parallel: int = 1) -> dict:
  """{"total_mb", parts...}: the estimated peak of a training run, per device."""
  n = problem.n_cols
  widths = tuple(model.layers)
  state = tree_bytes(abstract_state) / model_parallel
  params = tree_bytes(abstract_state.params) / model_parallel
  data = tree_bytes(problem.fit_data.source)
  if problem.full_data is not problem.fit_data:
    data += tree_bytes(problem.full_data.source)
  rows = max(1, batch_size // data_parallel)
  if compute == "sparse":
    t = sparse_entries or 0
    held = (tree_bytes(engine.leaves_keyed(abstract_state, model.output_kernel_name))
            if model.holding_output_rows() else 0)
    batch = t * 16 + held + n * (widths[-1] + widths[0]) * 4 / model_parallel
  else:
    batch = rows * (n * 4 * _BATCH_ARRAYS / model_parallel + sum(widths) * 4 * 4)
  if compute == "sparse" and isinstance(problem.fit_data.source, sparse.CSRRows):
    evaluation = batch  # evaluated at the pairs only, like a sparse step's forward
  else:
    evaluation = (config.eval_batch_size // data_parallel * n * 4 * _EVAL_ARRAYS
                  / model_parallel)
  parts = {"state_mb": state / MB, "gradients_and_best_mb": 2 * params / MB,
           "data_mb": data / MB, "batch_mb": batch / MB, "eval_mb": evaluation / MB}
  parts["total_mb"] = (parts["state_mb"] + parts["gradients_and_best_mb"]
                       + parts["data_mb"] + max(parts["batch_mb"], parts["eval_mb"]))
  parts["per_batch_row_mb"] = (parts["batch_mb"] / rows) if compute != "sparse" else None
  return parts


def check_budget(config, est: dict, batch_size: int) -> None:
  """UserError naming the numbers and the fix if `est` exceeds
  config.memory_budget_mb (0 = no budget)."""
  budget = config.memory_budget_mb
  if budget <= 0 or est["total_mb"] <= budget:
    return
  what = (f"--memory_budget_mb={budget}: this run needs about {est['total_mb']:.0f} MB "
          f"per device (parameters + optimizer state {est['state_mb']:.0f}, gradients + "
          f"best copy {est['gradients_and_best_mb']:.0f}, data {est['data_mb']:.0f}, one "
          f"batch {est['batch_mb']:.0f}, one evaluation block {est['eval_mb']:.0f})")
  room = budget - (est["state_mb"] + est["gradients_and_best_mb"] + est["data_mb"])
  fixes = []
  if room <= 0:
    fixes.append("the model and data alone exceed it: use narrower --layers or more "
                 "--model_parallel devices")
  else:
    if est["batch_mb"] > room and est["per_batch_row_mb"] is None:  # sparse path
      fixes.append("lower --batch_size")
    elif est["batch_mb"] > room:
      rows = int(room // est["per_batch_row_mb"])
      fixes.append(f"lower --batch_size to {min(rows, batch_size - 1)} (or try "
                   "--compute=sparse)" if rows >= 1 else "try --compute=sparse")
    if est["eval_mb"] > room:
      rows = int(room // (est["eval_mb"] / config.eval_batch_size))
      fixes.append(f"lower --eval_batch_size to {max(1, rows)}")
  raise UserError(f"{what}. Fix: {'; '.join(fixes)}; or raise --memory_budget_mb")
