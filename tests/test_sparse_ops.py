"""The chunked sparse products equal their plain gather/segment-sum forms,
values and gradients, for any chunk size (padding included)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from recae_jax import sparse_ops


def _entries(seed=0, t=37, b=5, n=7, h=4):
  rng = np.random.default_rng(seed)
  row = np.sort(rng.integers(0, b, t)).astype(np.int32)   # sorted, with repeats
  col = rng.integers(0, n, t).astype(np.int32)             # duplicates (row, col) too
  value = rng.standard_normal(t).astype(np.float32)
  w = rng.standard_normal((n, h)).astype(np.float32)
  hb = rng.standard_normal((b, h)).astype(np.float32)
  return tuple(map(jnp.asarray, (row, col, value, w, hb))) + (b,)


def _plain_spmm(w, row, col, value, b):
  return jax.ops.segment_sum(value[:, None] * w[col], row, b)


def _plain_sddmm(hb, v, row, col):
  return jnp.sum(hb[row] * v[col], axis=-1)


@pytest.mark.parametrize("chunk", [1, 5, 16, 37, 64])
def test_spmm_value_and_grad(chunk):
  row, col, value, w, _, b = _entries()
  ct = jax.random.normal(jax.random.PRNGKey(1), (b, w.shape[1]))
  got = sparse_ops.spmm(w, row, col, value, b, chunk)
  np.testing.assert_allclose(got, _plain_spmm(w, row, col, value, b), rtol=1e-5, atol=1e-5)
  g = jax.grad(lambda w: jnp.sum(ct * sparse_ops.spmm(w, row, col, value, b, chunk)))(w)
  want = jax.grad(lambda w: jnp.sum(ct * _plain_spmm(w, row, col, value, b)))(w)
  np.testing.assert_allclose(g, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("chunk", [1, 5, 16, 37, 64])
def test_sddmm_value_and_grads(chunk):
  row, col, _, v, hb, _ = _entries(seed=2)
  ct = jax.random.normal(jax.random.PRNGKey(3), row.shape)
  got = sparse_ops.sddmm(hb, v, row, col, chunk)
  assert got.shape == row.shape
  np.testing.assert_allclose(got, _plain_sddmm(hb, v, row, col), rtol=1e-5, atol=1e-5)
  loss = lambda f: (lambda hb, v: jnp.sum(ct * f(hb, v)))
  g = jax.grad(loss(lambda hb, v: sparse_ops.sddmm(hb, v, row, col, chunk)),
               argnums=(0, 1))(hb, v)
  want = jax.grad(loss(lambda hb, v: _plain_sddmm(hb, v, row, col)), argnums=(0, 1))(hb, v)
  for a, e in zip(g, want):
    np.testing.assert_allclose(a, e, rtol=1e-5, atol=1e-5)


def test_ops_under_jit_and_chunk_size_bounds():
  row, col, value, w, hb, b = _entries(t=300, h=3)
  f = jax.jit(lambda w: sparse_ops.spmm(w, row, col, value, b, 64))
  np.testing.assert_allclose(f(w), _plain_spmm(w, row, col, value, b), rtol=1e-5, atol=1e-5)
  assert sparse_ops.chunk_size(10, 500) == 10                      # never more than T
  assert sparse_ops.chunk_size(10**6, 10**7) == 16                 # at least 16
  assert sparse_ops.chunk_size(10**6, 500, "cpu") * 500 <= sparse_ops.CHUNK_FLOATS["cpu"]
  # on an accelerator a chunk is far larger (a scan over small chunks serializes)
  assert sparse_ops.chunk_size(10**6, 500, "gpu") == min(
      10**6, sparse_ops.ACCELERATOR_CHUNK_FLOATS // 500)
