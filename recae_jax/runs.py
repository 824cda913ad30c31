"""What `experiments/train.py` runs for a config: a top-N model under the
strong-generalization protocol (--preset=mult_vae|mult_dae|ease|popularity;
with --user_folds=K over K folds of test users, `user_folds.run_folds`),
a blend of several runs (the `best` preset, --ensemble, --blend_*) or one
rating-autoencoder run."""

from __future__ import annotations

from typing import Callable

from recae_jax import blend, topn, train, user_folds
from recae_jax import workdir as wd
from recae_jax.config import Config


def run(config: Config, workdir, *, resume: bool = False,
        progress: Callable[[str], None] = print, dataset=None) -> dict:
  config = config.validate()
  with wd.run_lock(workdir):  # one run per workdir, for the run's whole life
    return _run(config, workdir, resume=resume, progress=progress, dataset=dataset)


def _run(config: Config, workdir, *, resume, progress, dataset) -> dict:
  if config.is_topn and config.user_folds > 0:  # every eligible user tested once
    return user_folds.run_folds(config, workdir, resume=resume, progress=progress,
                                dataset=dataset)
  if config.is_topn:
    if dataset is not None:
      return topn.run(config, workdir, resume=resume, progress=progress,
                      protocol=topn.make_protocol(config, dataset))
    return topn.run(config, workdir, resume=resume, progress=progress)
  if config.is_blend:
    return blend.train_and_evaluate_blend(config, workdir, resume=resume,
                                          progress=progress, dataset=dataset)
  return train.train_and_evaluate(config, workdir, resume=resume, progress=progress,
                                  dataset=dataset)
