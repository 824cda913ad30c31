r"""Implicit-feedback top-N under strong generalization (Mult-VAE protocol).

  python experiments/topn.py --dataset=ml-100k --models=popularity,ease,mult_dae,mult_vae
  python experiments/topn.py --dataset=ml-latest-small --n_test_users=60 \
      --n_valid_users=60 --models=mult_vae --epochs=200 --workdir=runs/topn_mlls
  python experiments/topn.py --models=ease --autoencoders=autorec,uautorec

Ratings >= --threshold become clicks; --n_test_users and --n_valid_users
users are held out with all their clicks, 80% of which are shown (fold-in)
and 20% predicted. Epochs (Mult-VAE/DAE) and λ (EASE) are chosen on the
validation users' NDCG@100, never on test. Prints a table of test NDCG@100,
Recall@20, Recall@50 (recall denominator min(k, #relevant)) and, with
--json, everything as JSON. --autoencoders adds rating autoencoder presets
(trained on star ratings of the training users plus the held-out users'
fold-in items) ranked by predicted rating. --user_folds=K (with --workdir)
runs each model over K folds of test users (every eligible user tested once,
WORKDIR/MODEL/fold_f) and prints the means with 95% CIs over all users.
"""

import json
import typing

from absl import app, flags

from recae_jax import recommend, topn, user_folds
from recae_jax.config import TOPN_DEFAULTS, TOPN_FIELDS, Config, make_config
from recae_jax.errors import UserError, run_main

flags.DEFINE_list("models", ["popularity", "ease", "mult_dae", "mult_vae"],
                  f"top-N presets to run: {', '.join(topn.MODELS)}")
flags.DEFINE_list("autoencoders", [], "rating AE presets to rank with too, e.g. autorec,uautorec")
flags.DEFINE_integer("ae_epochs", 0, "epochs for --autoencoders (0: the preset's)")
flags.DEFINE_string("workdir", None, "if set, each model writes WORKDIR/MODEL/"
                    "{config,metrics}.json")
flags.DEFINE_bool("json", False, "print all results as JSON")
_HINTS = typing.get_type_hints(Config)
_DEFAULTS = Config().to_json()
for _name in TOPN_FIELDS:
  _help = (f"top-N config field (default: the preset's, else "
           f"{TOPN_DEFAULTS.get(_name, _DEFAULTS[_name])!r})")
  if _HINTS[_name] is int:
    flags.DEFINE_integer(_name, None, _help)
  elif _HINTS[_name] is float:
    flags.DEFINE_float(_name, None, _help)
  else:
    flags.DEFINE_string(_name, None, _help)
FLAGS = flags.FLAGS


def _overrides() -> dict:
  return {name: getattr(FLAGS, name) for name in TOPN_FIELDS
          if getattr(FLAGS, name) is not None}


@run_main
def main(argv):
  if not FLAGS.models and not FLAGS.autoencoders:
    raise UserError("nothing to run: give --models and/or --autoencoders")
  over = _overrides()
  configs = [topn.make_topn_config(m, **over) for m in FLAGS.models]
  ae_configs = []
  for name in FLAGS.autoencoders:
    extra = {"epochs": FLAGS.ae_epochs} if FLAGS.ae_epochs else {}
    ae_configs.append((name, make_config(name, dataset=over.get("dataset", "ml-100k"),
                                         data_dir=over.get("data_dir"), **extra)))
  if ae_configs and not FLAGS.workdir:
    raise UserError("--autoencoders needs --workdir (they checkpoint like any run)")
  base = configs[0] if configs else topn.make_topn_config(None, **over)
  if base.user_folds:
    return _user_folds(configs, ae_configs)
  protocol = topn.make_protocol(base)
  if not FLAGS.json:
    print(f"# {protocol.dataset.name}: {json.dumps(protocol.summary())}")
  results = {"protocol": dict(protocol.summary(), dataset=protocol.dataset.name)}
  for cfg in configs:
    wd = None if FLAGS.workdir is None else f"{FLAGS.workdir}/{cfg.model}"
    r = topn.run(cfg, wd, protocol=protocol,
                 progress=(lambda s: None) if FLAGS.json else print)
    r.pop("_fitted")
    results[cfg.model] = r
  for name, cfg in ae_configs:
    results[name] = recommend.run_rating_ae(cfg, protocol, f"{FLAGS.workdir}/{name}",
                                       ks=base.ks, progress=lambda s: None)
  if FLAGS.json:
    print(json.dumps(results, indent=2, sort_keys=True))
    return
  print(f"{'model':12s} {'NDCG@100':>9s} {'Recall@20':>9s} {'Recall@50':>9s}  selected")
  for name, r in results.items():
    if name == "protocol":
      continue
    t = r["test"]
    sel = (f"λ={r['best_lambda']:g}" if "best_lambda" in r else
           f"epoch {r['best_epoch']}" if r.get("best_epoch") else "-")
    print(f"{name:12s} {t['ndcg@100']:9.4f} {t['recall@20']:9.4f} {t['recall@50']:9.4f}  {sel}")


def _user_folds(configs, ae_configs):
  """--user_folds=K: each model over the K folds of test users, WORKDIR/MODEL."""
  if ae_configs:
    raise UserError("--user_folds: --autoencoders run on one split only; drop one of them")
  if not FLAGS.workdir:
    raise UserError("--user_folds needs --workdir (each fold is a workdir)")
  quiet = (lambda s: None) if FLAGS.json else print
  results = {cfg.model: user_folds.run_folds(cfg, f"{FLAGS.workdir}/{cfg.model}",
                                             progress=quiet) for cfg in configs}
  if FLAGS.json:
    print(json.dumps(results, indent=2, sort_keys=True))
    return
  print(f"{'model':12s} " + "  ".join(f"{k:>24s}" for k in _HEADLINE) + "   (95% CI over users)")
  for name, r in results.items():
    cells = [f"{r[k]:.4f} [{r[k + '_ci95'][0]:.4f}, {r[k + '_ci95'][1]:.4f}]"
             for k in _HEADLINE]
    print(f"{name:12s} " + "  ".join(f"{c:>24s}" for c in cells) +
          f"   {r['n_users']} users, {r['user_folds']} folds")


_HEADLINE = ("test_ndcg@100", "test_recall@20", "test_recall@50")


if __name__ == "__main__":
  app.run(main)
