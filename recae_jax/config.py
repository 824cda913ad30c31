"""One frozen config per run, and the named presets.

Everything a run needs is in `Config`; `workdir/config.json` holds it so any
run can be repeated. Presets are plain dicts of overrides on the defaults, so
a preset plus flags is always `dataclasses.replace(Config(), **preset, **flags)`.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import re
from typing import Any, Optional

from recae_jax.errors import UserError

TOPN_MODELS = ("mult_vae", "mult_dae", "recvae", "cdae", "ease", "popularity")
RATING_MODELS = ("autoencoder", "sparse_fc", "glocal_k")
ACTIVATIONS = ("sigmoid", "relu", "selu", "elu", "tanh", "identity", "lrelu")
OPTIMIZERS = ("adam", "adamw", "rmsprop", "sgd", "momentum", "lbfgs")
SCHEDULES = ("constant", "step", "cosine")
SIDE_FEATURES = ("genre_counts", "user_attributes", "item_genres")
# Options only these models read: changed from the default on any other
# model they are a mistake (a one-line error), not a silently unused flag.
MODEL_OPTIONS = {
    "kernel_dim": ("sparse_fc", "glocal_k"), "kernel_l2": ("sparse_fc", "glocal_k"),
    "global_kernel_size": ("glocal_k",), "dot_scale": ("glocal_k",),
    "pretrain_epochs": ("glocal_k",), "row_bias": RATING_MODELS,
    "kl_gamma": ("recvae",), "enc_epochs": ("recvae",), "dec_epochs": ("recvae",)}


@dataclasses.dataclass(frozen=True)
class Config:
  # --- data ---
  dataset: str = "ml-100k"         # MovieLens name, a ratings file, or synthetic:<ml-20m|netflix|UxIxN>
  data_dir: Optional[str] = None
  columns: str = ""                # generic files: user=COL,item=COL,rating=COL[,timestamp=COL]; "" = find by name
  duplicates: str = "error"        # a repeated (user, item) rating in a ratings file: "error", or "last" keeps the latest of each
  split: str = "u1"
  test_fraction: float = 0.1       # "random" split
  time_quantile: float = 0.98      # "time" split
  valid_fraction: float = 0.05     # carved out of train for model selection
  min_user_ratings: int = 0
  min_item_ratings: int = 0
  split_seed: int = 0              # fixed across ensemble members / seeds
  valid_draw: int = 0              # which seeded draw of the validation carve-out (0: the usual one; --blend_crossfit=R uses 0..R-1); the test split stays put
  seed: int = 0                    # initialisation, shuffling, dropout
  # --- model ---
  orientation: str = "item"        # rows are items (I-AutoRec) or users
  layers: tuple[int, ...] = (500,)  # encoder widths; decoder mirrors layers[:-1]
  activation: str = "sigmoid"
  output_activation: str = "identity"
  dropout: float = 0.0             # on the code (last encoder) layer
  input_dropout: float = 0.0       # denoising: drop observed inputs
  input_noise: float = 0.0         # denoising: Gaussian noise std on observed inputs
  tied: bool = False               # decoder kernels = encoder kernels transposed
  side_features: tuple[str, ...] = ()
  side_scaling: str = "none"       # "standardize": z-score side columns on training rows
  rating_divisor: float = 1.0      # model sees rating / divisor (S0 used 5)
  row_bias: bool = False           # a learned, unregularised output bias per input row: with --orientation=item each item's, beside the output layer's per-user bias (dense compute)
  # --- kernel models (--model=sparse_fc: kernelNet; glocal_k: GLocal-K) ---
  kernel_dim: int = 5              # sparse_fc/glocal_k: width of the per-unit vectors u_i, v_j of each layer's kernel
  kernel_l2: float = 0.006         # sparse_fc/glocal_k: λs, weight of ½Σ K(u_i, v_j)² (the sparsity penalty)
  global_kernel_size: int = 3      # glocal_k: side of the global convolution kernel
  dot_scale: float = 1.0           # glocal_k: scale of the global kernel's dot product
  pretrain_epochs: int = 150       # glocal_k: epochs of local-kernel (sparse_fc) pre-training, selected on validation
  # --- loss ---
  loss_denominator: str = "observed"  # "observed": Σm; "all": B x N (S3's MSELoss); "sum": ½Σ (kernelNet's L-BFGS objective)
  l2: float = 0.0                  # λ/2 Σ W² over kernels
  # --- optimizer ---
  optimizer: str = "adam"
  learning_rate: float = 1e-3
  momentum: float = 0.9
  weight_decay: float = 0.0        # coupled (added to the gradient, as torch does)
  rms_decay: float = 0.99
  lbfgs_restart: int = 0           # L-BFGS: clear its curvature memory every N iterations, as the papers' code does (scipy L-BFGS-B run 5 iterations per epoch); 0 = never
  grad_clip: float = 0.0           # global norm; 0 = off
  schedule: str = "constant"
  decay_epochs: int = 0            # "step": multiply lr by decay_rate every N epochs
  decay_rate: float = 0.5
  accumulate_gradients: bool = False  # S3's never-zeroed .grad quirk
  # --- training ---
  batch_size: int = 256
  shuffle: bool = True             # S3 visited users in order
  epochs: int = 100
  patience: int = 0                # early stop after N epochs w/o val gain; 0 = off
  dense_refeeding: int = 0         # DeepRecommender's extra updates on f(x)
  refit: bool = False              # after selection, retrain on train+valid for best_epoch epochs
  checkpoint_every: int = 10
  tensorboard: bool = False        # also write TensorBoard event files under workdir/tb (pip install 'recae_jax[tensorboard]')
  dense_budget_mb: int = 1024      # whole matrix on device if it fits, else CSR
  memory_budget_mb: int = 0        # stop before training if the estimated peak per device exceeds it; 0 = no check
  compute_dtype: str = "float32"   # "bfloat16": bf16 matmuls, float32 params and loss
  compute: str = "dense"           # "sparse": touch only observed entries; "auto": time both
  sparse_batching: str = "stratified"  # sparse path: rows per batch by length band, or "uniform"
  data_parallel: int = 0           # devices on the mesh's 'data' axis; 0 = all left
  model_parallel: int = 1          # devices splitting the N-wide layers ('model' axis)
  eval_batch_size: int = 512
  fallback: str = "item_user_global"  # prediction for pairs with no training data
  # --- top-N models (implicit feedback, strong generalization; see recae_jax.topn) ---
  model: str = "autoencoder"       # autoencoder (rating AEs) or a top-N model: mult_vae, mult_dae, recvae, cdae, ease, popularity
  threshold: float = 4.0           # top-N: ratings >= threshold are clicks
  n_test_users: int = 100          # top-N: held-out test users
  n_valid_users: int = 100         # top-N: held-out validation users (model selection)
  fold_in_fraction: float = 0.8    # top-N: share of a held-out user's clicks shown
  hidden: tuple[int, ...] = (600,)  # Mult-VAE/DAE encoder widths before the latent layer (RecVAE: one width, its 5 dense layers')
  latent: int = 200                # Mult-VAE/DAE/RecVAE latent width (CDAE: its hidden layer and user vectors)
  anneal_cap: float = 0.2          # Mult-VAE: β's ceiling
  anneal_steps: int = 0            # Mult-VAE: steps to reach the cap; 0 = 80% of all steps
  kl_gamma: float = 0.005          # RecVAE: a user's KL weight = kl_gamma x their clicks
  enc_epochs: int = 3              # RecVAE: encoder passes per epoch (alternating updates)
  dec_epochs: int = 1              # RecVAE: decoder passes per epoch
  user_folds: int = 0              # top-N: rotate the held-out test users over K folds (every eligible user tested once); 0 = one split
  eval_every: int = 5              # top-N: validation NDCG@select_k every N epochs
  select_k: int = 100              # top-N: selection metric is validation NDCG@select_k
  ease_lambdas: tuple[float, ...] = (50.0, 100.0, 200.0, 500.0, 1000.0, 2000.0)  # EASE: λ grid chosen on validation
  ks: tuple[int, ...] = (20, 50, 100)  # top-N: reported cut-offs
  # --- ensemble / blend (the `best` preset) ---
  ensemble: int = 1                # members trained with seeds seed..seed+K-1
  blend_uautorec: bool = False     # add a U-AutoRec component to the blend
  blend_knn: bool = False          # add the Pearson user-KNN to the blend
  blend_kernel: tuple[str, ...] = ()  # add kernel models to the blend, each one component: sparse_fc and/or glocal_k (their presets)
  blend_kernel_seeds: tuple[int, ...] = (1,)  # each kernel component averages this many seeds (one engine run); one count for all, or one per --blend_kernel model
  blend_support: bool = False      # blend weights vary linearly with log user/item support in the fit split (feature-weighted stacking)
  blend_rating_stats: bool = False  # with --blend_support: the weights also vary linearly with the user's and the item's mean and std of ratings in the fit split
  blend_ridge: tuple[float, ...] = (0.0,)  # L2 penalty per validation pair on the blend weights (not the intercepts); several: the one with the lowest 10-fold CV RMSE on validation
  blend_crossfit: int = 1          # train every component on R validation draws (valid_draw 0..R-1); the blend is fitted on all R validation sets and applied to the test predictions averaged over the R

  @property
  def is_blend(self) -> bool:
    """Several runs blended on validation (recae_jax.blend)."""
    return (self.ensemble > 1 or self.blend_uautorec or self.blend_knn
            or bool(self.blend_kernel))

  def blend_member(self) -> "Config":
    """One member of this blend's seed ensemble: the blend options off."""
    return dataclasses.replace(self, ensemble=1, blend_uautorec=False, blend_knn=False,
                               blend_kernel=(), blend_kernel_seeds=(1,), blend_support=False,
                               blend_rating_stats=False, blend_ridge=(0.0,),
                               blend_crossfit=1)

  @property
  def kernel_components(self) -> list[tuple[str, int]]:
    """(model, seeds) of each kernel component of the blend."""
    seeds = self.blend_kernel_seeds
    if len(seeds) == 1:
      seeds = seeds * len(self.blend_kernel)
    return list(zip(self.blend_kernel, seeds))

  @property
  def is_topn(self) -> bool:
    """An implicit-feedback top-N model (recae_jax.topn), not a rating model."""
    return self.model in TOPN_MODELS

  def validate(self) -> "Config":
    def bad(name, msg):
      raise UserError(f"--{name}: {msg}")
    if self.duplicates not in ("error", "last"):
      bad("duplicates", f"must be 'error' or 'last', got {self.duplicates!r}")
    if self.orientation not in ("item", "user"):
      bad("orientation", f"must be 'item' or 'user', got {self.orientation!r}")
    if not self.layers or any(w <= 0 for w in self.layers):
      bad("layers", f"widths must be positive, got {self.layers}")
    for name in ("activation", "output_activation"):
      if getattr(self, name) not in ACTIVATIONS:
        bad(name, f"unknown {getattr(self, name)!r}; choose from {', '.join(ACTIVATIONS)}")
    if self.optimizer not in OPTIMIZERS:
      bad("optimizer", f"unknown {self.optimizer!r}; choose from {', '.join(OPTIMIZERS)}")
    if self.schedule not in SCHEDULES:
      bad("schedule", f"unknown {self.schedule!r}; choose from {', '.join(SCHEDULES)}")
    if self.optimizer == "lbfgs":
      if self.learning_rate != 1.0:
        bad("learning_rate", "L-BFGS takes its step by line search: use "
            f"--learning_rate=1 with --optimizer=lbfgs (got {self.learning_rate})")
      for name in ("grad_clip", "weight_decay", "dense_refeeding"):
        if getattr(self, name):
          bad(name, "does not combine with --optimizer=lbfgs (the line search "
              "needs the plain objective); use --l2 for regularisation")
      if self.accumulate_gradients or self.schedule != "constant":
        bad("optimizer", "lbfgs takes neither --accumulate_gradients nor a --schedule")
    if self.lbfgs_restart < 0:
      bad("lbfgs_restart", f"must be >= 0, got {self.lbfgs_restart}")
    if self.lbfgs_restart and self.optimizer != "lbfgs":
      bad("lbfgs_restart", f"restarts L-BFGS: it needs --optimizer=lbfgs "
          f"(got --optimizer={self.optimizer})")
    if self.model in ("sparse_fc", "glocal_k"):
      if self.tied:
        bad("tied", f"--model={self.model} has no mirrored decoder to tie")
      if self.kernel_dim <= 0:
        bad("kernel_dim", f"must be positive, got {self.kernel_dim}")
      if self.model == "glocal_k":
        if self.global_kernel_size <= 0 or self.global_kernel_size % 2 == 0:
          bad("global_kernel_size", f"must be a positive odd number, got "
              f"{self.global_kernel_size}")
        if self.refit:
          bad("refit", "--model=glocal_k is pre-trained then fine-tuned on the fit "
              "split; it has no refit (drop --refit)")
        if self.side_features:
          bad("side_features", "--model=glocal_k convolves the rating rows only")
    defaults = Config()
    for name, models in MODEL_OPTIONS.items():
      if self.model not in models and getattr(self, name) != getattr(defaults, name):
        bad(name, f"applies to --model={' or '.join(models)} only (this run's model "
            f"is {self.model})")
    if self.schedule == "step" and self.decay_epochs <= 0:
      bad("decay_epochs", "must be > 0 with --schedule=step")
    for f in self.side_features:
      if f not in SIDE_FEATURES:
        bad("side_features", f"unknown {f!r}; choose from {', '.join(SIDE_FEATURES)}")
    if self.compute_dtype not in ("float32", "bfloat16"):
      bad("compute_dtype", f"must be float32 or bfloat16, got {self.compute_dtype!r}")
    if self.compute not in ("dense", "sparse", "auto"):
      bad("compute", f"must be dense, sparse or auto, got {self.compute!r}")
    if self.sparse_batching not in ("stratified", "uniform"):
      bad("sparse_batching", "must be 'stratified' or 'uniform'")
    if self.side_scaling not in ("none", "standardize"):
      bad("side_scaling", "must be 'none' or 'standardize'")
    if self.loss_denominator not in ("observed", "all", "sum"):
      bad("loss_denominator", "must be 'observed', 'all' or 'sum'")
    for name in ("batch_size", "epochs", "checkpoint_every", "eval_batch_size",
                 "ensemble", "dense_budget_mb", "model_parallel"):
      if getattr(self, name) <= 0:
        bad(name, f"must be positive, got {getattr(self, name)}")
    for name in ("learning_rate", "rating_divisor"):
      if not getattr(self, name) > 0:
        bad(name, f"must be positive, got {getattr(self, name)}")
    for name in ("dropout", "input_dropout"):
      if not 0 <= getattr(self, name) < 1:
        bad(name, f"must be in [0, 1), got {getattr(self, name)}")
    if not 0 <= self.valid_fraction < 1:
      bad("valid_fraction", f"must be in [0, 1), got {self.valid_fraction}")
    for name in ("l2", "weight_decay", "input_noise", "grad_clip", "patience",
                 "dense_refeeding", "data_parallel", "memory_budget_mb", "valid_draw"):
      if getattr(self, name) < 0:
        bad(name, f"must be >= 0, got {getattr(self, name)}")
    if self.fallback not in ("item_user_global", "global"):
      bad("fallback", "must be 'item_user_global' or 'global'")
    if self.model not in RATING_MODELS + TOPN_MODELS:
      bad("model", f"unknown {self.model!r}; choose from {', '.join(RATING_MODELS + TOPN_MODELS)}")
    for name in ("n_test_users", "n_valid_users", "latent", "eval_every", "select_k"):
      if getattr(self, name) <= 0:
        bad(name, f"must be positive, got {getattr(self, name)}")
    if not 0 < self.fold_in_fraction < 1:
      bad("fold_in_fraction", f"must be in (0, 1), got {self.fold_in_fraction}")
    for name in ("anneal_cap", "anneal_steps"):
      if getattr(self, name) < 0:
        bad(name, f"must be >= 0, got {getattr(self, name)}")
    if not self.ease_lambdas or any(lam <= 0 for lam in self.ease_lambdas):
      bad("ease_lambdas", f"must be positive, got {self.ease_lambdas}")
    for name in self.blend_kernel:
      if name not in ("sparse_fc", "glocal_k"):
        bad("blend_kernel", f"must be sparse_fc and/or glocal_k, got {name!r}")
    if len(set(self.blend_kernel)) < len(self.blend_kernel):
      bad("blend_kernel", f"names a model twice: {','.join(self.blend_kernel)}")
    if not self.blend_kernel_seeds or min(self.blend_kernel_seeds) < 1:
      bad("blend_kernel_seeds", f"must be >= 1, got {self.blend_kernel_seeds}")
    if len(self.blend_kernel_seeds) not in (1, max(1, len(self.blend_kernel))):
      bad("blend_kernel_seeds", f"gives {len(self.blend_kernel_seeds)} counts for "
          f"{len(self.blend_kernel)} --blend_kernel model(s): give one count, or one per model")
    if self.blend_support and not self.is_blend:
      bad("blend_support", "weights the components of a blend: add components "
          "(--ensemble, --blend_uautorec, --blend_knn or --blend_kernel)")
    if self.blend_rating_stats and not self.blend_support:
      bad("blend_rating_stats", "adds features to the support-weighted blend: also set "
          "--blend_support")
    if self.blend_crossfit < 1:
      bad("blend_crossfit", f"must be >= 1, got {self.blend_crossfit}")
    if self.blend_crossfit > 1 and not self.is_blend:
      bad("blend_crossfit", "repeats the components of a blend: add components "
          "(--ensemble, --blend_uautorec, --blend_knn or --blend_kernel)")
    if not self.blend_ridge or min(self.blend_ridge) < 0:
      bad("blend_ridge", f"must be >= 0, got {self.blend_ridge}")
    if self.blend_ridge != (0.0,) and not self.is_blend:
      bad("blend_ridge", "penalises the weights of a blend: add components "
          "(--ensemble, --blend_uautorec, --blend_knn or --blend_kernel)")
    if max(self.blend_kernel_seeds) > 1 and not self.blend_kernel:
      bad("blend_kernel_seeds", "averages the seeds of the kernel component: also set "
          "--blend_kernel=sparse_fc or glocal_k")
    if not self.ks or any(k <= 0 for k in self.ks):
      bad("ks", f"must be positive, got {self.ks}")
    if self.user_folds < 0 or self.user_folds == 1:
      bad("user_folds", f"must be 0 (one split) or >= 2 folds, got {self.user_folds}")
    if self.user_folds and not self.is_topn:
      bad("user_folds", f"rotates the top-N test users (--model={self.model} is a rating "
          "model; for rating runs over ML-100K's folds use experiments/folds.py)")
    if self.kl_gamma < 0:
      bad("kl_gamma", f"must be >= 0, got {self.kl_gamma}")
    for name in ("enc_epochs", "dec_epochs"):
      if getattr(self, name) < 1:
        bad(name, f"must be >= 1, got {getattr(self, name)}")
    return self

  def to_json(self) -> dict:
    return dataclasses.asdict(self)

  @classmethod
  def from_json(cls, d: dict) -> "Config":
    return make_config(None, **d)


PRESETS: dict[str, dict[str, Any]] = {
    # Sedhain et al. 2015, I-AutoRec: items are rows, 500 sigmoid, identity out.
    "autorec": dict(orientation="item", layers=(500,), activation="sigmoid",
                    optimizer="adam", learning_rate=1e-3, l2=3e-3,
                    batch_size=256, epochs=200, patience=30),
    "uautorec": dict(orientation="user", layers=(500,), activation="sigmoid",
                     optimizer="adam", learning_rate=1e-3, l2=1e-3,
                     batch_size=64, epochs=200, patience=30),
    # Kuchaiev & Ginsburg 2017, Netflix configuration (run.py flags in their README).
    "deeprec": dict(orientation="user", layers=(512, 512, 1024), activation="selu",
                    output_activation="selu", dropout=0.8, optimizer="momentum",
                    learning_rate=0.005, momentum=0.9, batch_size=128, epochs=12,
                    dense_refeeding=1),
    # S1: deep AE with masked MSE on ml-latest-small, time split.
    "s1_deep_ae": dict(dataset="ml-latest-small", split="time", time_quantile=0.98,
                       orientation="user", layers=(512, 512, 1024), activation="relu",
                       optimizer="adam", learning_rate=1e-3, batch_size=128,
                       epochs=40, valid_fraction=0.0),
    # S3: stacked sigmoid AE, one user per step, RMSprop + coupled weight decay,
    # gradients never zeroed (see README), MSELoss averaged over all columns.
    "s3_sae": dict(orientation="user", layers=(20, 10), activation="sigmoid",
                   optimizer="rmsprop", learning_rate=0.01, weight_decay=0.5,
                   accumulate_gradients=True, loss_denominator="all", batch_size=1,
                   epochs=200, valid_fraction=0.0, shuffle=False),
    # S4: S3 + side information appended to the input (loss on ratings only).
    "s4_side_ae": dict(orientation="user", layers=(20, 10), activation="sigmoid",
                       optimizer="rmsprop", learning_rate=0.01, weight_decay=0.5,
                       accumulate_gradients=True, loss_denominator="all",
                       batch_size=1, epochs=200, valid_fraction=0.0, shuffle=False,
                       side_features=("genre_counts", "user_attributes")),
    # S1 with a validation carve-out, early stopping and dropout on the code.
    "s1_deep_ae_improved": dict(dataset="ml-latest-small", split="time",
                                time_quantile=0.98, orientation="user",
                                layers=(512, 512, 1024), activation="relu",
                                optimizer="adam", learning_rate=1e-3, batch_size=128,
                                epochs=100, patience=15, dropout=0.5),
    # S3/S4 with the quirk removed and honest settings (the improved variants).
    "s3_sae_improved": dict(orientation="user", layers=(20, 10), activation="sigmoid",
                            optimizer="adam", learning_rate=1e-3, l2=1e-4,
                            batch_size=16, epochs=200, patience=20),
    "s4_side_ae_improved": dict(orientation="user", layers=(20, 10),
                                activation="sigmoid", optimizer="adam",
                                learning_rate=1e-3, l2=1e-4, batch_size=16,
                                epochs=200, patience=20,
                                side_features=("genre_counts", "user_attributes"),
                                side_scaling="standardize"),
}
# Top-N models of recae_jax.topn (Liang et al. 2018's protocol and settings).
TOPN_DEFAULTS = dict(min_user_ratings=5, batch_size=100, epochs=100, learning_rate=1e-3,
                     eval_batch_size=256, optimizer="adam", input_dropout=0.5)
# The fields a top-N run reads (experiments/topn.py defines a flag for each).
TOPN_FIELDS = ("dataset", "data_dir", "columns", "duplicates", "threshold", "min_user_ratings",
               "n_test_users", "n_valid_users", "fold_in_fraction", "split_seed", "seed",
               "hidden", "latent", "input_dropout", "l2", "learning_rate", "batch_size",
               "epochs", "anneal_cap", "anneal_steps", "kl_gamma", "enc_epochs",
               "dec_epochs", "eval_every", "select_k",
               "ease_lambdas", "ks", "eval_batch_size", "dense_budget_mb", "user_folds")
_TOPN = TOPN_DEFAULTS
PRESETS["mult_vae"] = dict(_TOPN, model="mult_vae", hidden=(600,), latent=200, l2=0.0,
                           input_dropout=0.5, anneal_cap=0.2)
PRESETS["mult_dae"] = dict(_TOPN, model="mult_dae", hidden=(), latent=200, l2=0.02,
                           input_dropout=0.5)
# Shenbin et al. 2020, the authors' run.py settings (600/200, lr 5e-4, 3 encoder +
# 1 decoder passes per epoch) except γ and the batch, chosen on ML-100K validation
# NDCG@100 (γ 0.005 → 0.02, batch 500 → 100: 0.449 → 0.463; Mult-VAE 0.455).
PRESETS["recvae"] = dict(_TOPN, model="recvae", hidden=(600,), latent=200, l2=0.0,
                         input_dropout=0.5, batch_size=100, learning_rate=5e-4,
                         kl_gamma=0.02, enc_epochs=3, dec_epochs=1)
# Wu et al. 2016: I -> latent (sigmoid, + a user vector) -> I (sigmoid), logistic loss.
# Their K=50 stayed at popularity's validation NDCG on ML-100K (0.276); latent,
# lr and dropout chosen on validation NDCG@100 (0.476 vs Mult-VAE's 0.455).
PRESETS["cdae"] = dict(_TOPN, model="cdae", hidden=(), latent=200, l2=1e-5,
                       learning_rate=3e-3, input_dropout=0.5)
PRESETS["ease"] = dict(_TOPN, model="ease", input_dropout=0.0)
PRESETS["popularity"] = dict(_TOPN, model="popularity", input_dropout=0.0)
# kernelNet (Muller et al. 2018) as GLocal-K's code runs it on ML-100K: two
# 500-wide kernel layers and a kernel output layer (N→500→500→N), items as
# rows, full-batch L-BFGS on ½ Σ (r − ŷ)² + λ2·½ΣW² + λs·½ΣK²; an epoch is
# one L-BFGS iteration (the papers' 5 per "epoch" x 30 epochs = 150).
PRESETS["sparse_fc"] = dict(model="sparse_fc", orientation="item", layers=(500, 500),
                            activation="sigmoid", output_activation="identity",
                            kernel_dim=5, kernel_l2=0.006, l2=20.0,
                            loss_denominator="sum", optimizer="lbfgs",
                            learning_rate=1.0, batch_size=1 << 20, epochs=150,
                            patience=50, checkpoint_every=25)
# GLocal-K (Han et al. 2021): sparse_fc pre-trained for 150 iterations, then
# fine-tuned with the 3x3 global convolution for 300 (their 60 x 5), both
# stages restarting L-BFGS every 5 iterations as their scipy calls do. Not in
# their code: an item bias in both stages (row_bias; chosen on validation in
# session 19, README "Kernel models"; --norow_bias is the paper's network).
PRESETS["glocal_k"] = dict(PRESETS["sparse_fc"], model="glocal_k", pretrain_epochs=150,
                           epochs=300, global_kernel_size=3, dot_scale=1.0, lbfgs_restart=5,
                           row_bias=True)
# The project's most accurate rating model (see README "What helped").
PRESETS["best"] = dict(PRESETS["autorec"], ensemble=5, refit=True, blend_uautorec=True,
                       blend_knn=True, blend_kernel=("sparse_fc", "glocal_k"),
                       blend_kernel_seeds=(5, 1),
                       blend_support=True, blend_rating_stats=True,
                       blend_ridge=(0.0, 0.001, 0.003, 0.01, 0.03, 0.1), blend_crossfit=3)


def make_config(preset: Optional[str] = None, **overrides) -> Config:
  """Defaults ← preset ← overrides; unknown names are a UserError."""
  fields = {f.name for f in dataclasses.fields(Config)}
  values: dict[str, Any] = {}
  if preset:
    if preset not in PRESETS:
      raise UserError(f"--preset: unknown {preset!r}; choose from {', '.join(sorted(PRESETS))}")
    values.update(PRESETS[preset])
  for k, v in overrides.items():
    if k not in fields:
      raise UserError(f"unknown config field {k!r}")
    values[k] = v
  kinds = {"layers": int, "side_features": str, "hidden": int, "ease_lambdas": float,
           "ks": int, "blend_kernel": str, "blend_kernel_seeds": int,
           "blend_ridge": float}
  for k, kind in kinds.items():
    if k in values and not isinstance(values[k], tuple):
      values[k] = _as_tuple(values[k], kind)
  return Config(**values).validate()


def _as_tuple(value, kind) -> tuple:
  if isinstance(value, str):
    value = [v for v in value.replace(" ", "").split(",") if v]
  elif isinstance(value, (int, float)):  # one number (a config.json written before it was a list)
    value = [value]
  try:
    return tuple(kind(v) for v in value)
  except ValueError:
    raise UserError(f"cannot read {value!r} as a list of {kind.__name__}") from None


def load_config(path) -> Config:
  with open(path) as f:
    return Config.from_json(json.load(f))


def field_help() -> dict[str, str]:
  """Each Config field's trailing comment, for --help (one source of truth)."""
  out = {}
  for line in inspect.getsource(Config).splitlines():
    m = re.match(r"\s+(\w+): [^=]+=\s*(.+?)(?:\s+#\s*(.*))?$", line)
    if m:
      out[m.group(1)] = m.group(3) or ""
  return out
