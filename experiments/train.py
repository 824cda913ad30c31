r"""Train an autoencoder recommender and report honest test metrics.

  python experiments/train.py --preset=autorec --dataset=ml-100k --split=u1 \
      --workdir=runs/autorec_u1

Writes DIR/config.json, DIR/metrics.jsonl (per epoch), DIR/metrics.json
(final: test_rmse, test_mae, best_epoch, ...), DIR/checkpoints/ and
DIR/plots/loss.png. The epoch is selected on a validation carve-out of the
training split (--valid_fraction), never on the test set. Any config field
is a flag; see --helpfull. Bad input: one line on stderr, exit status 2.
"""

from absl import app, flags

from recae_jax import flags as cfg_flags
from recae_jax.errors import run_main
from recae_jax.runs import run

cfg_flags.define_config_flags()
flags.DEFINE_string("workdir", None, "output directory for this run", required=True)
flags.adopt_module_key_flags(cfg_flags)
flags.DEFINE_bool("resume", False, "continue the run in --workdir from its last checkpoint")
flags.DEFINE_bool("distributed", False, "call jax.distributed.initialize() first (multi-host); "
                  "without the three flags below it auto-detects SLURM / Cloud TPU / MPI")
flags.DEFINE_string("coordinator_address", None, "multi-host: host:port of process 0")
flags.DEFINE_integer("num_processes", None, "multi-host: number of processes")
flags.DEFINE_integer("process_id", None, "multi-host: this process's id")


@run_main
def main(argv):
  if flags.FLAGS.distributed:
    import jax
    jax.distributed.initialize(flags.FLAGS.coordinator_address,
                               flags.FLAGS.num_processes, flags.FLAGS.process_id)
  config = cfg_flags.config_from_flags()
  run(config, flags.FLAGS.workdir, resume=flags.FLAGS.resume)


if __name__ == "__main__":
  app.run(main)
