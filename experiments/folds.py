r"""Train one config on several splits and report the mean test metrics.

  python experiments/folds.py --preset=best --folds=u1,u2,u3,u4,u5 --workdir=runs/best_5fold

Each fold is an ordinary run in WORKDIR/<fold> (resumable with --resume);
WORKDIR/metrics.json holds per-fold and mean/std `test_rmse` / `test_mae`.
"""

import dataclasses

from absl import app, flags
import numpy as np

from recae_jax import flags as cfg_flags
from recae_jax import workdir as wd
from recae_jax.errors import UserError, run_main
from recae_jax.runs import run as train_and_evaluate

cfg_flags.define_config_flags(skip=("split",))
flags.adopt_module_key_flags(cfg_flags)
flags.DEFINE_list("folds", ["u1", "u2", "u3", "u4", "u5"], "splits to run")
flags.DEFINE_string("workdir", None, "output directory (one subdirectory per fold)",
                    required=True)
flags.DEFINE_bool("resume", False, "continue unfinished folds, reuse finished ones")
FLAGS = flags.FLAGS


@run_main
def main(argv):
  if not FLAGS.folds:
    raise UserError("--folds: give at least one split name")
  base = cfg_flags.config_from_flags()
  root = wd.ensure_writable(FLAGS.workdir)
  per_fold = {}
  for fold in FLAGS.folds:
    print(f"=== fold {fold}")
    res = train_and_evaluate(dataclasses.replace(base, split=fold), root / fold,
                             resume=FLAGS.resume)
    per_fold[fold] = {k: res[k] for k in ("test_rmse", "test_mae", "n_test",
                                          "n_test_fallback", "train_seconds")}
  rmse = np.array([r["test_rmse"] for r in per_fold.values()])
  mae = np.array([r["test_mae"] for r in per_fold.values()])
  summary = {"folds": per_fold, "mean_test_rmse": float(rmse.mean()),
             "std_test_rmse": float(rmse.std(ddof=1)) if len(rmse) > 1 else 0.0,
             "mean_test_mae": float(mae.mean()), "preset": FLAGS.preset}
  wd.write_json(root / "metrics.json", summary)
  print(f"mean test RMSE over {len(rmse)} folds: {rmse.mean():.4f} "
        f"(std {summary['std_test_rmse']:.4f}); MAE {mae.mean():.4f}")


if __name__ == "__main__":
  app.run(main)
