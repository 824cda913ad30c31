"""The models, as pure functions over flat parameter dicts: one forward each.

    input (N ratings [++ side features]) → encoder layers → code
      → decoder (mirror of the encoder without the code layer) → N outputs

AutoRec is `layers=(500,)` (N→500→N); DeepRecommender and S1 are
`(512, 512, 1024)` (N→512→512→1024→512→512→N); S3 is `(20, 10)`.

Kernel models (`mirror=False`: the layers are the hidden layers, then one
output layer, N→500→500→N for `layers=(500, 500)`):
  kernelNet / sparse_fc (Muller et al. 2018): every weight matrix is used as
    W ⊙ K(U, V), K_ij = max(0, 1 − ‖u_i − v_j‖²) from learned vectors u_i
    (one per input unit) and v_j (one per output unit): finite support, so
    most effective weights are exactly 0; `kernel_penalty` = ½ Σ K².
  GLocal-K (Han et al. 2021): the rating rows are first convolved with a
    g x g "global" kernel, relu(conv2d(R, G)), G = reshape(m_R · C) · s from
    the per-row means m_R of the pre-trained kernelNet's reconstruction
    (fixed, `gconv_rowmean`) and a trainable C [R, g²] (`gconv_kernel`).
    The convolution runs over the whole matrix, so a batch row r needs rows
    r−h..r+h (h = g // 2): they come as `DenseInput.nbr_BxGxN`, which makes
    minibatches and row blocks give exactly the full-matrix convolution.
    C is in the L2 penalty with the layers' W (the authors regularise only
    W); only C's component along m_R reaches G, so this shrinks the rest of
    C and hardly G: without it, validation 0.8770 vs 0.8765 on u1 (README).

`row_bias` (any rating autoencoder, dense inputs): a learned, unregularised
bias b_r added to every output of row r (`params["row_bias"]`, indexed by
`DenseInput.rows_B`); with items as rows, each item's bias beside the output
layer's per-user bias. A row the model never saw (a new user's fold-in) has
none.

`AutoEncoder.apply` is the ONLY forward pass of the rating autoencoders. Its
input comes in one of two forms and its output in one of two:

  first layer  `DenseInput`  (B x N rows, a GEMM)   or
               `SparseInput` (a batch's observed entries, spmm)
  last layer   all N outputs (a GEMM)               or
               outputs at (row, col) pairs only (`at=`, sddmm)

so the dense path, the sparse path, sweeps (members on a leading axis, by
vmap or one after another), evaluation and inference all run the same code.
The rates of the stochastic parts (input dropout, Gaussian input noise,
dropout on the code) are call arguments, traced, so members with different
rates share one compile; the module's static flags only say whether any
member draws them at all. Side features are appended to the input only; the
output always has exactly N rating columns. Parameter names
(`enc_0_kernel`, ..., `dec_{n-1}_kernel`) are the ones flax's AutoEncoder
used, so the parameter trees of older checkpoints keep their layout.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import flax.struct
import jax
import jax.numpy as jnp
from flax import linen as nn

from recae_jax import sparse_ops
from recae_jax.config import Config

ACT = {
    "sigmoid": nn.sigmoid, "relu": nn.relu, "selu": nn.selu, "elu": nn.elu,
    "tanh": jnp.tanh, "identity": lambda x: x, "lrelu": nn.leaky_relu,
}
_xavier = nn.initializers.variance_scaling(1.0, "fan_avg", "uniform")


@flax.struct.dataclass
class DenseInput:
  x_BxN: jax.Array                 # scaled ratings, 0 = missing
  m_BxN: jax.Array                 # bool: observed
  side_BxS: Optional[jax.Array] = None
  nbr_BxGxN: Optional[jax.Array] = None  # rows r-h..r+h of each row r (GLocal-K)
  rows_B: Optional[jax.Array] = None     # the rows' indices (padding: n_rows); None: new rows


@flax.struct.dataclass
class SparseInput:
  """A batch's observed entries, flattened to T slots (in column order)."""

  row_T: jax.Array    # int32 position in the batch (padding → B-1)
  col_T: jax.Array    # int32 column
  x_T: jax.Array      # float32 scaled rating (padding → 0)
  valid_T: jax.Array  # float32 1 real, 0 padding
  n_rows: int = flax.struct.field(pytree_node=False)  # B


@flax.struct.dataclass
class Rates:
  """Per-member rates of the stochastic layers (scalars, traced)."""

  dropout: jax.Array
  input_dropout: jax.Array
  input_noise: jax.Array


def _drop(key, p, x):
  keep = jax.random.bernoulli(key, 1 - p, x.shape)
  return jnp.where(keep, x / (1 - p), 0.0)


@dataclasses.dataclass(frozen=True)
class AutoEncoder:
  n_outputs: int
  layers: tuple[int, ...]
  n_side: int = 0                  # side-feature columns appended to the input
  activation: str = "sigmoid"
  output_activation: str = "identity"
  tied: bool = False               # decoder kernels = encoder kernels transposed
  compute_dtype: str = "float32"   # matmul dtype; parameters stay float32
  # Whether any member draws these (static); the rates themselves are traced.
  input_dropout: bool = False
  input_noise: bool = False
  dropout: bool = False
  mirror: bool = True              # decoder mirrors layers[:-1]; False: one output layer
  kernel_dim: int = 0              # > 0: kernelNet layers with u, v of this width
  global_kernel: int = 0           # > 0: GLocal-K's g x g convolution of the input
  dot_scale: float = 1.0
  n_rows: int = 0                  # rows of the matrix (GLocal-K's C is [n_rows, g²], row_bias [n_rows])
  row_bias: bool = False           # a learned output bias per input row
  # The output kernel held as [N, H] rows (inside a sparse epoch: see holding_output_rows).
  output_as_rows: bool = False

  @property
  def n_inputs(self) -> int:
    return self.n_outputs + self.n_side

  def _decoder_widths(self) -> list[int]:
    if not self.mirror:
      return [self.n_outputs]
    return list(reversed(self.layers[:-1])) + [self.n_outputs]

  @property
  def _last(self) -> int:  # index of the output layer dec_{last}
    return len(self._decoder_widths()) - 1

  def init(self, rng: jax.Array) -> dict:
    """Xavier-uniform kernels, zero biases."""
    shapes, d = {}, self.n_inputs
    for i, w in enumerate(self.layers):
      shapes[f"enc_{i}"] = (d, w)
      d = w
    for i, w in enumerate(self._decoder_widths()):
      shapes[f"dec_{i}"] = (d, w)
      d = w
    # One key per layer (as before the kernel models: same AutoRec inits), + C's.
    keys = jax.random.split(rng, len(shapes) + (1 if self.global_kernel else 0))
    params = {}
    for key, (name, shape) in zip(keys, shapes.items()):
      k_w, k_u, k_v = jax.random.split(key, 3)
      if not (self.tied and name.startswith("dec_")):
        params[f"{name}_kernel"] = _xavier(k_w if self.kernel_dim else key, shape,
                                           jnp.float32)
      params[f"{name}_bias"] = jnp.zeros(shape[1:], jnp.float32)
      if self.kernel_dim:  # kernelNet's init: u, v ~ N(0, 1e-3²), truncated
        for k, n, tag in ((k_u, shape[0], "u"), (k_v, shape[1], "v")):
          params[f"{name}_{tag}"] = 1e-3 * jax.random.truncated_normal(
              k, -2.0, 2.0, (n, self.kernel_dim), jnp.float32)
    if self.global_kernel:
      g2 = self.global_kernel ** 2
      params["gconv_kernel"] = 0.1 * jax.random.truncated_normal(
          keys[-1], -2.0, 2.0, (self.n_rows, g2), jnp.float32)
      params["gconv_rowmean"] = jnp.zeros((self.n_rows,), jnp.float32)
    if self.row_bias:
      if not self.n_rows:
        raise ValueError("a row bias needs the matrix's n_rows")
      params["row_bias"] = jnp.zeros((self.n_rows,), jnp.float32)
    return params

  def _weight(self, params, name: str) -> jax.Array:
    """Layer `name`'s weight matrix as used, in the layout it is held: W, or
    W ⊙ K(U, V) (kernelNet)."""
    w = params[f"{name}_kernel"]
    if not self.kernel_dim:
      return w
    return w * self._kernel_values(params, name)

  def _kernel_values(self, params, name: str) -> jax.Array:
    u, v = params[f"{name}_u"], params[f"{name}_v"]
    if self._held_as_rows(name):
      u, v = v, u  # K(V, U) = K(U, V)ᵀ, the layout the kernel is held in
    d2 = (jnp.sum(u * u, 1)[:, None] + jnp.sum(v * v, 1)[None, :] - 2.0 * u @ v.T)
    return jnp.maximum(0.0, 1.0 - d2)

  def kernel_penalty(self, params) -> jax.Array:
    """½ Σ K(U, V)² over every layer (kernelNet's sparsity regulariser)."""
    names = [k[:-2] for k in params if k.endswith("_u")]
    return 0.5 * sum(jnp.sum(jnp.square(self._kernel_values(params, n))) for n in names)

  def global_conv(self, params, nbr_BxGxN) -> jax.Array:
    """relu(conv2d(R, G)) at the batch's rows: out[b, c] = Σ_ab G[a, b] ·
    R[r_b + a − h, c + b − h], zero outside the matrix (TF's SAME padding)."""
    g, h = self.global_kernel, self.global_kernel // 2
    mean_R = jax.lax.stop_gradient(params["gconv_rowmean"])  # fixed after pre-training
    gk = (mean_R @ params["gconv_kernel"] * self.dot_scale).reshape(g, g)
    n = nbr_BxGxN.shape[-1]
    padded = jnp.pad(nbr_BxGxN, ((0, 0), (0, 0), (h, h)))
    out = sum(gk[a, b] * padded[:, a, b:b + n] for a in range(g) for b in range(g))
    return jax.nn.relu(out)

  def _dense(self, h, kernel, bias):  # low-precision matmul, float32 accumulate
    dt = jnp.dtype(self.compute_dtype)
    return jnp.matmul(h.astype(dt), kernel.astype(dt),
                      preferred_element_type=jnp.float32) + bias

  def _decoder_kernel(self, params, i: int):
    if not self.tied:
      w = self._weight(params, f"dec_{i}")
      return w.T if self._held_as_rows(f"dec_{i}") else w
    # Mirror of encoder (n-1-i), transposed; the first encoder kernel also
    # carries side-feature rows, which the decoder's N outputs drop.
    n = len(self.layers)
    return params[f"enc_{n - 1 - i}_kernel"].T[:, :self._decoder_widths()[i]]

  def encode(self, params, inputs, rates: Optional[Rates] = None,
             rng: Optional[jax.Array] = None, train: bool = False) -> jax.Array:
    """The code layer [B, H_code] (before dropout)."""
    act = ACT[self.activation]
    draws = train and (self.input_dropout or self.input_noise)
    k_in, k_noise = jax.random.split(rng, 3)[:2] if draws else (None, None)
    if isinstance(inputs, SparseInput):
      if self.global_kernel:  # its convolution reads dense neighbouring rows
        raise ValueError("a GLocal-K model has no sparse-input path")
      x_T = inputs.x_T
      if train and self.input_dropout:
        x_T = _drop(k_in, rates.input_dropout, x_T)
      w0 = self._weight(params, "enc_0")
      chunk = sparse_ops.chunk_size(x_T.shape[0], w0.shape[1])
      h = act(sparse_ops.spmm(w0, inputs.row_T, inputs.col_T, x_T, inputs.n_rows, chunk)
              + params["enc_0_bias"])
    else:
      x = inputs.x_BxN
      if self.global_kernel:
        if inputs.nbr_BxGxN is None:
          raise ValueError("a GLocal-K model needs each row's neighbouring rows "
                           "(RowData.inputs gathers them)")
        x = self.global_conv(params, inputs.nbr_BxGxN)
      if train and self.input_dropout:
        x = _drop(k_in, rates.input_dropout, x)
      if train and self.input_noise:
        noise = rates.input_noise * jax.random.normal(k_noise, x.shape)
        x = jnp.where(inputs.m_BxN, x + noise, 0.0)
      if inputs.side_BxS is not None:
        x = jnp.concatenate([x, inputs.side_BxS.astype(x.dtype)], axis=-1)
      h = act(self._dense(x, self._weight(params, "enc_0"), params["enc_0_bias"]))
    for i in range(1, len(self.layers)):
      h = act(self._dense(h, self._weight(params, f"enc_{i}"), params[f"enc_{i}_bias"]))
    return h

  def hidden(self, params, inputs, rates=None, rng=None, train=False) -> jax.Array:
    """The last hidden layer [B, H], the output layer's input."""
    act = ACT[self.activation]
    h = self.encode(params, inputs, rates, rng, train)
    if train and self.dropout:
      h = _drop(jax.random.split(rng, 3)[2], rates.dropout, h)
    for i in range(self._last):
      h = act(self._dense(h, self._decoder_kernel(params, i), params[f"dec_{i}_bias"]))
    return h

  @property
  def output_kernel_name(self) -> str:
    return f"dec_{self._last}_kernel"

  def _held_as_rows(self, layer: str) -> bool:
    return self.output_as_rows and f"{layer}_kernel" == self.output_kernel_name

  def holding_output_rows(self) -> Optional["AutoEncoder"]:
    """This model with its output kernel held as [N, H] rows, the layout the
    sparse step gathers from (sddmm) and scatters its gradient into, or None
    where that kernel is the encoder's (tied). The engine transposes the
    kernel (and its optimizer state) into this layout once per sparse epoch
    instead of twice per step."""
    if self.tied or self.output_as_rows:
      return None
    return dataclasses.replace(self, output_as_rows=True)

  def output_rows(self, params) -> jax.Array:
    """The output layer's kernel as [N, H] rows, the layout sddmm gathers."""
    if self.output_as_rows:
      return self._weight(params, f"dec_{self._last}")
    # Materialised once: a transpose fused into the gather reads strided columns.
    return jax.lax.optimization_barrier(self._decoder_kernel(params, self._last).T)

  def apply(self, params, inputs, rates: Optional[Rates] = None,
            rng: Optional[jax.Array] = None, train: bool = False, *, at=None,
            out_rows: Optional[jax.Array] = None) -> jax.Array:
    """All N outputs [B, N], or with `at=(row_P, col_P)` the outputs at those
    pairs only [P] (pass `out_rows=self.output_rows(params)` in a loop)."""
    h = self.hidden(params, inputs, rates, rng, train)
    last = self._last
    out_act = ACT[self.output_activation]
    bias = params[f"dec_{last}_bias"]
    if at is None:
      out = self._dense(h, self._decoder_kernel(params, last), bias)
      if self.row_bias and inputs.rows_B is not None:  # a new row has no bias of its own
        out = out + jnp.take(params["row_bias"], inputs.rows_B, mode="fill",
                             fill_value=0.0)[:, None]
      return out_act(out)
    if self.row_bias:
      raise ValueError("a row-bias model has no sparse-output path")
    row_P, col_P = at
    v_NxH = self.output_rows(params) if out_rows is None else out_rows
    chunk = sparse_ops.chunk_size(row_P.shape[0], h.shape[-1])
    return out_act(sparse_ops.sddmm(h, v_NxH, row_P, col_P, chunk) + bias[col_P])


def build_model(config: Config, n_outputs: int, n_side: int = 0,
                members: tuple[Config, ...] = (), n_rows: int = 0) -> AutoEncoder:
  """The autoencoder of `config`; `members` (a sweep's configs) decide which
  stochastic layers are drawn at all; `n_rows` sizes GLocal-K's kernel."""
  cs = members or (config,)
  kernel = config.model in ("sparse_fc", "glocal_k")
  return AutoEncoder(
      n_outputs=n_outputs, layers=tuple(config.layers), n_side=n_side,
      activation=config.activation, output_activation=config.output_activation,
      tied=config.tied, compute_dtype=config.compute_dtype,
      input_dropout=any(c.input_dropout > 0 for c in cs),
      input_noise=any(c.input_noise > 0 for c in cs),
      dropout=any(c.dropout > 0 for c in cs), mirror=not kernel,
      kernel_dim=config.kernel_dim if kernel else 0,
      global_kernel=config.global_kernel_size if config.model == "glocal_k" else 0,
      dot_scale=config.dot_scale, row_bias=config.row_bias,
      n_rows=n_rows if config.model == "glocal_k" or config.row_bias else 0)


def encode(model: AutoEncoder, params, x_BxN, side_BxS=None):
  """Bottleneck features (the code layer) for a batch of dense rows."""
  return model.encode(params, DenseInput(x_BxN, x_BxN != 0, side_BxS))


# ------------------------------------------------------------- Mult-VAE / DAE

@dataclasses.dataclass(frozen=True)
class MultVAE:
  """Mult-VAE (variational=True) or Mult-DAE (False) of Liang et al. 2018:
  L2-normalised clicks, input dropout, tanh MLP; `apply` returns (logits, KL_B)."""

  n_items: int
  hidden: tuple[int, ...] = (600,)
  latent: int = 200
  variational: bool = True

  def _shapes(self) -> dict:
    shapes, d = {}, self.n_items
    for i, w in enumerate(self.hidden):
      shapes[f"enc_{i}"] = (d, w)
      d = w
    shapes["enc_latent"] = (d, 2 * self.latent if self.variational else self.latent)
    d = self.latent
    for i, w in enumerate(reversed(self.hidden)):
      shapes[f"dec_{i}"] = (d, w)
      d = w
    shapes["dec_out"] = (d, self.n_items)
    return shapes

  def init(self, rng: jax.Array) -> dict:
    """Xavier-uniform kernels, N(0, 0.001) biases (their code's init)."""
    params = {}
    shapes = self._shapes()
    keys = jax.random.split(rng, 2 * len(shapes))
    for i, (name, shape) in enumerate(shapes.items()):
      params[name] = {
          "kernel": nn.initializers.xavier_uniform()(keys[2 * i], shape, jnp.float32),
          "bias": 0.001 * jax.random.normal(keys[2 * i + 1], shape[1:], jnp.float32)}
    return params

  def encode(self, params, x_BxI) -> jax.Array:
    """The latent code of each row: μ (VAE) or the tanh code (DAE)."""
    dense = lambda name, h: h @ params[name]["kernel"] + params[name]["bias"]
    h = x_BxI / jnp.maximum(jnp.linalg.norm(x_BxI, axis=1, keepdims=True), 1e-12)
    for i in range(len(self.hidden)):
      h = jnp.tanh(dense(f"enc_{i}", h))
    if self.variational:
      return jnp.split(dense("enc_latent", h), 2, axis=-1)[0]
    return jnp.tanh(dense("enc_latent", h))

  def apply(self, params, x_BxI, input_dropout=0.0, rng=None, train: bool = False):
    dense = lambda name, h: h @ params[name]["kernel"] + params[name]["bias"]
    h = x_BxI / jnp.maximum(jnp.linalg.norm(x_BxI, axis=1, keepdims=True), 1e-12)
    if train:
      k_drop, k_sample = jax.random.split(rng)
      h = _drop(k_drop, input_dropout, h)
    for i in range(len(self.hidden)):
      h = jnp.tanh(dense(f"enc_{i}", h))
    if self.variational:
      mu, logvar = jnp.split(dense("enc_latent", h), 2, axis=-1)
      kl_B = 0.5 * jnp.sum(-logvar + jnp.exp(logvar) + mu * mu - 1.0, axis=-1)
      z = mu
      if train:
        z = mu + jnp.exp(0.5 * logvar) * jax.random.normal(k_sample, mu.shape)
    else:  # Mult-DAE: a tanh code layer (Liang's [I → 200 → I] when hidden=())
      z = jnp.tanh(dense("enc_latent", h))
      kl_B = jnp.zeros(x_BxI.shape[0])
    h = z
    for i in range(len(self.hidden)):
      h = jnp.tanh(dense(f"dec_{i}", h))
    return dense("dec_out", h), kl_B

