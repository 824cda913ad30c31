"""The two sparse products of the sparse-aware path, with their gradients,
walked in cache-sized chunks of entries.

    spmm(w_NxH, row_T, col_T, value_T, n_rows)  out[r] = Σ_{t: row_t=r} value_t · w[col_t]
    sddmm(h_BxH, v_NxH, row_T, col_T)            out[t] = h[row_t] · v[col_t]

Written plainly (gather T rows, multiply, segment-sum), each materialises a
[T, H] array: 22 MB per batch for I-AutoRec on ML-100K, 430 MB on ML-20M, so
every pass streams through main memory and XLA:CPU's gathers crawl. Here a
lax.scan walks the entries `chunk` at a time (chunk x H floats stay in L2)
and the custom VJPs keep the backward chunked too: autodiff of the plain
form would build the same [T, H] cotangents, and autodiff of the scan would
save every chunk's gathered rows as residuals. Only the index/value arrays are
kept for the backward; the gathers are redone there, from cache.

Gradients flow to the dense operands (w; h and v) only: the entry values are
data (ratings after input dropout) and indices are integers.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

# Floats of one chunk's gathered rows: on a CPU 128K floats = 512 KiB, about
# one L2. On an accelerator a lax.scan over small chunks serializes the
# kernel launches, so there a chunk holds up to 64M floats (256 MiB): one or
# a few chunks per batch, each a wide gather the chip runs in parallel.
CHUNK_FLOATS = {"cpu": 1 << 17}
ACCELERATOR_CHUNK_FLOATS = 1 << 26


def chunk_size(n_entries: int, width: int, platform: str | None = None) -> int:
  """Entries per chunk for rows of `width` floats (at least 16, at most T),
  chosen per backend (see CHUNK_FLOATS)."""
  floats = CHUNK_FLOATS.get(platform or jax.default_backend(), ACCELERATOR_CHUNK_FLOATS)
  return max(1, min(n_entries, max(16, floats // max(1, width))))


def _chunked(row_T, col_T, scale_T, chunk: int):
  """[T] arrays → [T/chunk, chunk]. The tail is padded with scale 0 (a padding
  slot adds nothing) and the last indices repeated (an order stays as it is)."""
  pad = -row_T.shape[0] % chunk
  return tuple(jnp.pad(a, (0, pad), mode=mode).reshape(-1, chunk) for a, mode in
               ((row_T, "edge"), (col_T, "edge"), (scale_T, "constant")))


def _rowdot(a_CxH, b_CxH):
  # (A*B) @ 1: XLA:CPU runs sum(A*B, -1) over gathered rows ~15x slower.
  return (a_CxH * b_CxH) @ jnp.ones((a_CxH.shape[-1],), a_CxH.dtype)


def _add_rows(acc_OxH, src_RxH, row_C, col_C, scale_C, *, src_by_col: bool):
  """acc[out_c] += scale_c · src[in_c] for one chunk, in place in the carry;
  (in, out) = (col, row) if src_by_col else (row, col). Entries may come in
  any order (XLA:CPU's scatter runs no faster when told they are sorted)."""
  idx_in, idx_out = (col_C, row_C) if src_by_col else (row_C, col_C)
  return acc_OxH.at[idx_out].add(scale_C[:, None] * src_RxH[idx_in])


def _accumulate(src_RxH, row_T, col_T, scale_T, n_out: int, *, src_by_col: bool,
                chunk: int):
  """out[n_out, H] = Σ_t scale_t · src[in_t] added at out_t, chunk by chunk."""
  rows, cols, scales = _chunked(row_T, col_T, scale_T, chunk)

  def body(acc, xs):
    return _add_rows(acc, src_RxH, *xs, src_by_col=src_by_col), None

  init = jnp.zeros((n_out, src_RxH.shape[-1]), src_RxH.dtype)
  return jax.lax.scan(body, init, (rows, cols, scales))[0]


# ------------------------------------------------------------------ spmm

@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5))
def spmm(w_NxH, row_T, col_T, value_T, n_rows: int, chunk: int):
  """Sparse [n_rows, N] (entries row/col/value, in any order) times dense w."""
  return _accumulate(w_NxH, row_T, col_T, value_T, n_rows, src_by_col=True, chunk=chunk)


def _spmm_fwd(w_NxH, row_T, col_T, value_T, n_rows, chunk):
  out = spmm(w_NxH, row_T, col_T, value_T, n_rows, chunk)
  return out, (w_NxH, row_T, col_T, value_T)  # w only for its shape (no copy)


def _spmm_bwd(n_rows, chunk, res, ct_BxH):
  w_NxH, row_T, col_T, value_T = res
  dw = _accumulate(ct_BxH, row_T, col_T, value_T, w_NxH.shape[0], src_by_col=False,
                   chunk=chunk)
  return dw, None, None, None


spmm.defvjp(_spmm_fwd, _spmm_bwd)


# ----------------------------------------------------------------- sddmm

@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def sddmm(h_BxH, v_NxH, row_T, col_T, chunk: int):
  """h[row_t] · v[col_t] for every entry t: the dense product h vᵀ sampled at
  the entries, without forming it."""
  rows, cols, _ = _chunked(row_T, col_T, jnp.zeros(row_T.shape, h_BxH.dtype), chunk)

  def body(_, xs):
    r, c = xs
    return None, _rowdot(h_BxH[r], v_NxH[c])

  return jax.lax.scan(body, None, (rows, cols))[1].reshape(-1)[:row_T.shape[0]]


def _sddmm_fwd(h_BxH, v_NxH, row_T, col_T, chunk):
  return sddmm(h_BxH, v_NxH, row_T, col_T, chunk), (h_BxH, v_NxH, row_T, col_T)


def _sddmm_bwd(chunk, res, ct_T):
  h_BxH, v_NxH, row_T, col_T = res
  rows, cols, cts = _chunked(row_T, col_T, ct_T, chunk)

  def body(acc, xs):
    dh, dv = acc
    r, c, s = xs
    return (_add_rows(dh, v_NxH, r, c, s, src_by_col=True),
            _add_rows(dv, h_BxH, r, c, s, src_by_col=False)), None

  dh, dv = jax.lax.scan(body, (jnp.zeros_like(h_BxH), jnp.zeros_like(v_NxH)),
                        (rows, cols, cts))[0]
  return dh, dv, None, None


sddmm.defvjp(_sddmm_fwd, _sddmm_bwd)
