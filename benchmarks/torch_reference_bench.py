r"""The same I-AutoRec in PyTorch (CPU) vs the JAX engine, timed in one run.

  pip install torch==2.13.0   # optional, benchmark only
  python benchmarks/torch_reference_bench.py --preset=autorec --dataset=ml-100k

Both sides: N -> H -> N, sigmoid hidden, identity output, masked MSE over
observed entries + l2 · ½ Σ W² on both kernels, Adam, the same batch size,
dense batches gathered from a dense on-device matrix, shuffled every epoch
(JAX: `compute.make_run(config, ..., "dense")`, the engine's K = 1 epoch).
Torch runs eager (the usual reference), with torch.set_num_threads = the
number of cores XLA sees. Epochs alternate (JAX, torch, JAX, ...) so machine
noise hits both. Prints JSON with both epoch medians and their ratio.
"""

import json
import os
import time

from absl import app, flags
import jax
import numpy as np

from recae_jax import compute
from recae_jax import flags as cfg_flags
from recae_jax.errors import UserError, run_main
from recae_jax.problem import build_problem, load_split

cfg_flags.define_config_flags()
flags.adopt_module_key_flags(cfg_flags)
flags.DEFINE_integer("repeats", 5, "timed epochs per engine (after one warm-up)")
flags.DEFINE_integer("threads", 0, "torch threads; 0 = os.cpu_count()")
FLAGS = flags.FLAGS


def torch_epoch_fn(torch, dense_RxN, train_rows, n_hidden, batch_size, lr, l2, seed):
  """A plain PyTorch I-AutoRec and one shuffled epoch of it."""
  torch.manual_seed(seed)
  n = dense_RxN.shape[1]
  enc = torch.nn.Linear(n, n_hidden)
  dec = torch.nn.Linear(n_hidden, n)
  for lin in (enc, dec):
    torch.nn.init.xavier_uniform_(lin.weight)
    torch.nn.init.zeros_(lin.bias)
  params = list(enc.parameters()) + list(dec.parameters())
  opt = torch.optim.Adam(params, lr=lr)
  rows = torch.as_tensor(train_rows, dtype=torch.long)

  def epoch():
    perm = rows[torch.randperm(len(rows))]
    total = 0.0
    for start in range(0, len(perm), batch_size):
      x = dense_RxN[perm[start:start + batch_size]]
      m = (x != 0).float()
      out = dec(torch.sigmoid(enc(x)))
      loss = ((out - x) * m).pow(2).sum() / m.sum().clamp(min=1.0)
      loss = loss + l2 * 0.5 * (enc.weight.pow(2).sum() + dec.weight.pow(2).sum())
      opt.zero_grad(set_to_none=True)
      loss.backward()
      opt.step()
      total += float(loss.detach())  # what a typical torch loop does once per step
    return total
  return epoch


@run_main
def main(argv):
  del argv
  try:
    import torch
  except ImportError:
    raise UserError("PyTorch is not installed: pip install torch==2.13.0") from None
  config = cfg_flags.config_from_flags()
  if len(config.layers) != 1 or config.activation != "sigmoid" or config.optimizer != "adam":
    raise UserError("the torch reference is I/U-AutoRec only: one sigmoid layer, Adam")
  threads = FLAGS.threads or os.cpu_count()
  torch.set_num_threads(threads)
  dataset, split = load_split(config)
  problem = build_problem(config, dataset, split)
  from recae_jax.data import sparse
  csr = sparse.ratings_to_csr(split.train, config.orientation)
  dense = torch.as_tensor(csr.to_dense())
  rows = np.flatnonzero(csr.row_lengths() > 0)
  batch = min(config.batch_size, len(rows))

  run = compute.make_run(config, problem.fit_data, problem.n_cols, batch, "dense")
  state = run.state
  jax_fn = run.epoch.lower(state, run.data, run.hyper).compile()
  t_fn = torch_epoch_fn(torch, dense, rows, config.layers[0], batch, config.learning_rate,
                        config.l2, config.seed)

  def run_jax():
    nonlocal state
    state, m = jax_fn(state, run.data, run.hyper)
    jax.block_until_ready(m)

  run_jax(), t_fn()  # warm-up
  times = {"jax": [], "torch": []}
  for _ in range(FLAGS.repeats):
    for name, f in (("jax", run_jax), ("torch", t_fn)):
      t = time.perf_counter()
      f()
      times[name].append(time.perf_counter() - t)
  jax_s, torch_s = float(np.median(times["jax"])), float(np.median(times["torch"]))
  print(json.dumps({
      "preset": FLAGS.preset, "dataset": config.dataset, "orientation": config.orientation,
      "rows": int(len(rows)), "cols": int(problem.n_cols), "hidden": config.layers[0],
      "batch_size": batch, "torch_version": torch.__version__, "torch_threads": threads,
      "jax_device": jax.devices()[0].device_kind, "jax_epoch_seconds": jax_s,
      "torch_epoch_seconds": torch_s, "jax_speedup_vs_torch": torch_s / jax_s,
      # min over repeats: the least-disturbed epoch of each (shared, noisy machine)
      "jax_epoch_seconds_min": min(times["jax"]),
      "torch_epoch_seconds_min": min(times["torch"]),
      "jax_speedup_vs_torch_min": min(times["torch"]) / min(times["jax"]),
      "repeats": FLAGS.repeats, "all_times": times,
  }, indent=2))


if __name__ == "__main__":
  app.run(main)
