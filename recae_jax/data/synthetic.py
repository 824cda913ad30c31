"""Synthetic ratings with MovieLens/Netflix shapes, for benchmarks and tests.

`generate(shape, seed)` draws exactly n_ratings distinct (user, item) pairs
with power-law user activity and item popularity (Zipf weights in a random
order, capped so no user/item expects more than half the other side), every
user getting at least one rating. Ratings are integers 1..5 from a rank-`rank`
model plus biases and Gaussian `noise`, rounded and clipped. Timestamps are
distinct: an increasing random sequence handed out to rows in random order.
Rows come sorted by (user, item), which is what the CSR builders like.

Pairs are sampled as int64 keys user * n_items + item and deduplicated with
np.unique, then topped up with fresh samples until the count is exact (small
shapes use exact weighted sampling without replacement over all cells).
Netflix's shape (100M ratings) takes a few GB and well under two minutes.
"""

from __future__ import annotations

from typing import Union

import numpy as np

from recae_jax.data.types import Dataset, Ratings
from recae_jax.errors import UserError

SHAPES = {
    "ml-100k": (943, 1682, 100_000),
    "ml-1m": (6040, 3706, 1_000_209),
    "ml-20m": (138_493, 26_744, 20_000_263),
    "netflix": (480_189, 17_770, 100_480_507),
}

_USER_EXPONENT = 0.6   # user activity is less skewed than item popularity
_ITEM_EXPONENT = 1.0
_EXACT_CELLS = 30_000_000  # below this, sample over all cells exactly
_CHUNK = 1 << 23
_T0 = 946_684_800  # 2000-01-01 UTC


def _zipf_probs(n: int, exponent: float, cap: float,
                rng: np.random.Generator) -> np.ndarray:
  """Zipf weights in random order, water-filled so none exceeds `cap`."""
  p = (np.arange(1, n + 1, dtype=np.float64) ** -exponent)[rng.permutation(n)]
  p /= p.sum()
  cap = max(cap, 1.0 / n)
  for _ in range(100):  # a few passes of redistribution, not a row loop
    over = p > cap * (1 + 1e-9)
    if not over.any():
      break
    excess = (p[over] - cap).sum()
    p[over] = cap
    p[~over] += excess * p[~over] / p[~over].sum()
  return p / p.sum()


def _draw(p: np.ndarray, m: int, rng: np.random.Generator,
          shuffle: bool) -> np.ndarray:
  """m iid draws from p: multinomial counts, repeated, optionally shuffled
  (O(m), much faster than inverse-CDF searchsorted on big tables)."""
  out = np.repeat(np.arange(len(p), dtype=np.int64), rng.multinomial(m, p))
  if shuffle:
    rng.shuffle(out)
  return out


def _sorted_unique(x: np.ndarray) -> np.ndarray:
  """np.unique via an in-place sort (numpy's hash-based unique is slower
  for 10^8 int64 keys)."""
  x.sort()
  return x[np.append(True, x[1:] != x[:-1])] if len(x) else x


def _exact_keys(n_users: int, n_items: int, n: int, pu: np.ndarray,
                pi: np.ndarray, rng: np.random.Generator) -> np.ndarray:
  """Efraimidis-Spirakis: the n smallest Exp(1)/w over all cells, with each
  user's best cell forced in."""
  w = np.outer(pu, pi)
  e = rng.exponential(size=w.shape) / w
  e[np.arange(n_users), np.argmin(e, axis=1)] = -1.0
  flat = e.ravel()
  if n == flat.size:
    return np.arange(n, dtype=np.int64)
  return np.sort(np.argpartition(flat, n - 1)[:n].astype(np.int64))


def _sampled_keys(n_users: int, n_items: int, n: int, pu: np.ndarray,
                  pi: np.ndarray, rng: np.random.Generator) -> np.ndarray:
  """Rejection sampling of distinct keys for big, sparse shapes."""
  first_item = _draw(pi, n_users, rng, shuffle=True)  # one per user, assured
  parts = [np.arange(n_users, dtype=np.int64) * n_items + first_item]
  have, accept, rounds = n_users, 0.95, 0
  while have < n:
    rounds += 1
    if rounds > 60:
      raise UserError(f"could not draw {n} distinct pairs from {n_users} x "
                      f"{n_items}: too dense for this sampler")
    need = n - have
    m = int(need / max(accept, 0.05) * 1.02) + 1000
    cand = _draw(pu, m, rng, shuffle=False)  # sorted users ...
    cand *= n_items
    cand += _draw(pi, m, rng, shuffle=True)  # ... paired with random items
    cand = _sorted_unique(cand)
    new = cand[first_item[cand // n_items] != cand % n_items]
    for prev in parts[1:]:  # earlier rounds (few), each sorted
      pos = np.minimum(np.searchsorted(prev, new), len(prev) - 1)
      new = new[prev[pos] != new]
    accept = len(new) / m
    if len(new) > need:  # keep a random subset, still sorted
      new = np.sort(new[rng.permutation(len(new))[:need]])
    parts.append(new)
    have += len(new)
  keys = np.concatenate(parts)
  keys.sort(kind="stable")  # a few sorted runs: timsort merges them
  return keys


def generate(shape: Union[str, tuple[int, int, int]], seed: int = 0,
             rank: int = 10, noise: float = 0.5) -> Dataset:
  """A synthetic Dataset named "synthetic-<shape>" (see module docstring)."""
  if isinstance(shape, str):
    if shape not in SHAPES:
      raise UserError(f"unknown synthetic shape {shape!r}: expected one of "
                      f"{', '.join(SHAPES)} or (n_users, n_items, n_ratings)")
    label = shape
    n_users, n_items, n = SHAPES[shape]
  else:
    n_users, n_items, n = (int(x) for x in shape)
    label = f"{n_users}x{n_items}x{n}"
  if min(n_users, n_items) < 1 or not n_users <= n <= n_users * n_items:
    raise UserError(f"synthetic shape {n_users} users x {n_items} items with "
                    f"{n} ratings: need n_users <= n_ratings <= n_users * "
                    f"n_items")
  rng = np.random.default_rng(seed)
  pu = _zipf_probs(n_users, _USER_EXPONENT, 0.5 * n_items / n, rng)
  pi = _zipf_probs(n_items, _ITEM_EXPONENT, 0.5 * n_users / n, rng)
  if n_users * n_items <= _EXACT_CELLS:
    keys = _exact_keys(n_users, n_items, n, pu, pi, rng)
  else:
    keys = _sampled_keys(n_users, n_items, n, pu, pi, rng)
  users = (keys // n_items).astype(np.int32)
  items = (keys % n_items).astype(np.int32)
  del keys

  # Low-rank "taste" model: var(u.v) = rank * sigma^4 = 0.8^2.
  sigma = np.sqrt(0.8 / np.sqrt(rank))
  u_f = rng.normal(0, sigma, (n_users, rank)).astype(np.float32)
  v_f = rng.normal(0, sigma, (n_items, rank)).astype(np.float32)
  b_u = rng.normal(0, 0.4, n_users).astype(np.float32)
  b_i = rng.normal(0, 0.5, n_items).astype(np.float32)
  ratings = np.empty(n, np.float32)
  for start in range(0, n, _CHUNK):  # chunks of ~8M rows bound memory
    sl = slice(start, min(start + _CHUNK, n))
    u, i = users[sl], items[sl]
    score = (np.einsum("nk,nk->n", u_f[u], v_f[i]) + b_u[u] + b_i[i] + 3.6
             + noise * rng.standard_normal(len(u), dtype=np.float32))
    ratings[sl] = np.clip(np.rint(score), 1, 5)

  steps = rng.integers(1, 120, n, dtype=np.int64)
  ts = np.empty(n, np.int64)
  ts[rng.permutation(n)] = _T0 + np.cumsum(steps)

  return Dataset(
      name=f"synthetic-{label}",
      ratings=Ratings(users, items, ratings, ts, n_users, n_items),
      user_ids=np.arange(n_users, dtype=np.int64),
      item_ids=np.arange(n_items, dtype=np.int64),
      rating_scale=(1.0, 5.0))
