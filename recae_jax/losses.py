"""Losses, all in float32 and summed over observed entries."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def masked_sse(pred_BxN, target_BxN, mask_BxN, row_w_B=None):
  """(Σ m (r − ŷ)², Σ m), with padding rows weighted out by `row_w_B`."""
  m = mask_BxN.astype(jnp.float32)
  if row_w_B is not None:
    m = m * row_w_B[:, None]
  diff = (pred_BxN.astype(jnp.float32) - target_BxN.astype(jnp.float32)) * m
  return jnp.sum(diff * diff), jnp.sum(m)


def masked_mse(pred_BxN, target_BxN, mask_BxN, row_w_B=None):
  """Σ m (r − ŷ)² / max(1, Σ m)."""
  sse, count = masked_sse(pred_BxN, target_BxN, mask_BxN, row_w_B)
  return sse / jnp.maximum(1.0, count)


def l2_penalty(params) -> jax.Array:
  """½ Σ W² over weight matrices (biases are not regularised, as in AutoRec)."""
  leaves = [x for path, x in jax.tree_util.tree_leaves_with_path(params)
            if "kernel" in jax.tree_util.keystr(path)]
  return 0.5 * sum(jnp.sum(jnp.square(x.astype(jnp.float32))) for x in leaves)
