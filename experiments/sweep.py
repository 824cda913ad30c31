r"""Train K configurations that differ only in numbers, in one compiled call.

  python experiments/sweep.py --preset=autorec --dataset=ml-100k --split=u1 \
      --sweep='seed=0,1,2,3;l2=1e-3,3e-3' --workdir=runs/sweep_u1

--sweep is FIELD=V1,V2,... axes separated by ';'. --sweep_mode=grid (default)
takes every combination (first axis slowest); --sweep_mode=zip pairs the i-th
values of every axis (equal lengths). Sweepable fields: seed, learning_rate,
l2, dropout, input_dropout, input_noise; anything else changes the model's
structure and needs its own run. Every member sees the same batches in the
same order (one shared permutation per epoch).

Writes DIR/members/kXX/{config.json, metrics.jsonl, metrics.json,
test_pred.npy, valid_pred.npy}, DIR/summary.csv, DIR/summary.md,
DIR/plots/valid_rmse.png and DIR/metrics.json (the members' averaged
prediction and the best top-k on validation). Bad input: one line on stderr,
exit status 2.
"""

from absl import app, flags

from recae_jax import flags as cfg_flags
from recae_jax import sweep
from recae_jax.errors import run_main

cfg_flags.define_config_flags()
flags.adopt_module_key_flags(cfg_flags)
flags.DEFINE_string("workdir", None, "output directory for the sweep", required=True)
flags.DEFINE_string("sweep", None, "e.g. 'seed=0,1,2,3;l2=1e-3,3e-3'", required=True)
flags.DEFINE_bool("resume", False, "continue the sweep in --workdir from its last checkpoint")
flags.DEFINE_enum("sweep_mode", "grid", ["grid", "zip"],
                  "grid: every combination; zip: i-th values together")


@run_main
def main(argv):
  fv = flags.FLAGS
  overrides = sweep.parse_sweep(fv.sweep, fv.sweep_mode)  # before any data loads
  base = cfg_flags.config_from_flags()
  configs = sweep.member_configs(base, overrides)
  sweep.run_sweep(base, configs, fv.workdir, resume=fv.resume)


if __name__ == "__main__":
  app.run(main)
