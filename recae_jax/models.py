"""One configurable autoencoder for every model in the project.

    input (N ratings [++ side features]) → encoder layers → code
      → decoder (mirror of the encoder without the code layer) → N outputs

AutoRec is `layers=(500,)` (N→500→N); DeepRecommender and S1 are
`(512, 512, 1024)` (N→512→512→1024→512→512→N); S3 is `(20, 10)`.
Denoising (input dropout / Gaussian noise on observed entries), dropout on
the code, and a tied decoder (each decoder kernel is the transpose of its
mirror encoder kernel) are switches. Side features are appended to the input
only; the output always has exactly N rating columns.
"""

from __future__ import annotations

from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from recae_jax.config import Config

_ACT = {
    "sigmoid": nn.sigmoid, "relu": nn.relu, "selu": nn.selu, "elu": nn.elu,
    "tanh": jnp.tanh, "identity": lambda x: x, "lrelu": nn.leaky_relu,
}


class AutoEncoder(nn.Module):
  n_outputs: int
  layers: tuple[int, ...]
  activation: str = "sigmoid"
  output_activation: str = "identity"
  dropout: float = 0.0
  input_dropout: float = 0.0
  input_noise: float = 0.0
  tied: bool = False
  compute_dtype: str = "float32"  # matmul dtype; parameters stay float32

  @nn.compact
  def __call__(self, x_BxN, m_BxN, side_BxS: Optional[jax.Array] = None, *,
               train: bool = False, return_code: bool = False):
    """Reconstructs the N rating columns from observed ratings (+ side features).

    With `return_code=True` returns the bottleneck (code layer) instead.
    """
    act, out_act = _ACT[self.activation], _ACT[self.output_activation]
    init = nn.initializers.variance_scaling(1.0, "fan_avg", "uniform")  # Xavier
    dt = jnp.dtype(self.compute_dtype)

    def dense(h, kernel, bias):  # low-precision matmul, float32 accumulate
      return jnp.matmul(h.astype(dt), kernel.astype(dt),
                        preferred_element_type=jnp.float32) + bias

    x = x_BxN
    if train and self.input_dropout > 0:
      keep = jax.random.bernoulli(self.make_rng("dropout"), 1 - self.input_dropout,
                                  x.shape)
      x = jnp.where(keep, x / (1 - self.input_dropout), 0.0)
    if train and self.input_noise > 0:
      noise = self.input_noise * jax.random.normal(self.make_rng("dropout"), x.shape)
      x = jnp.where(m_BxN, x + noise, 0.0)
    if side_BxS is not None:
      x = jnp.concatenate([x, side_BxS.astype(x.dtype)], axis=-1)

    h, kernels = x, []
    for i, width in enumerate(self.layers):
      kernel = self.param(f"enc_{i}_kernel", init, (h.shape[-1], width))
      bias = self.param(f"enc_{i}_bias", nn.initializers.zeros, (width,))
      kernels.append(kernel)
      h = act(dense(h, kernel, bias))
    if return_code:
      return h
    if train and self.dropout > 0:
      keep = jax.random.bernoulli(self.make_rng("dropout"), 1 - self.dropout, h.shape)
      h = jnp.where(keep, h / (1 - self.dropout), 0.0)

    dec_widths = list(reversed(self.layers[:-1])) + [self.n_outputs]
    n = len(dec_widths)
    for i, width in enumerate(dec_widths):
      if self.tied:
        # Mirror of encoder (n-1-i), transposed; the first encoder kernel also
        # carries side-feature rows, which the decoder's N outputs drop.
        kernel = kernels[n - 1 - i].T[:, :width]
      else:
        kernel = self.param(f"dec_{i}_kernel", init, (h.shape[-1], width))
      bias = self.param(f"dec_{i}_bias", nn.initializers.zeros, (width,))
      h = dense(h, kernel, bias)
      h = out_act(h) if i == n - 1 else act(h)
    return h


def build_model(config: Config, n_outputs: int) -> AutoEncoder:
  return AutoEncoder(
      n_outputs=n_outputs, layers=tuple(config.layers),
      activation=config.activation, output_activation=config.output_activation,
      dropout=config.dropout, input_dropout=config.input_dropout,
      input_noise=config.input_noise, tied=config.tied,
      compute_dtype=config.compute_dtype)


def encode(model: AutoEncoder, params, x_BxN, side_BxS=None):
  """Bottleneck features (the code layer) for a batch of rows."""
  return model.apply({"params": params}, x_BxN, x_BxN != 0, side_BxS,
                     return_code=True)
