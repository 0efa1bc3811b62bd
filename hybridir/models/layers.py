"""Building blocks shared by the encoders: dense layers, norms, embeddings, attention.

Every parameter carries logical axis names (flax `nn.with_logical_partitioning`) and the main
activations carry logical constraints, so that `hybridir.partitioning` can shard them by rules.
Dense projections run as 2-D matmuls ([tokens, features]) and attention is computed heads-major:
both measured faster on XLA:CPU (shared/PERFORMANCE-NOTES.md) and neutral on TPU. With bfloat16
activations every dense matmul, forward and backward, multiplies bf16 operands with float32
accumulation (`matmul`), and dropout draws 16 random bits per element (`Dropout`): both measured
in BENCHMARKS.md ("Training step").
"""
import functools
from typing import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

Array = jax.Array
Initializer = Callable[..., Array]

# Large negative logit for masked attention keys (finite, so fully padded rows stay finite).
MASK_VALUE = -1e10


def constrain(x: Array, axes: Sequence[str]) -> Array:
  """Names the logical axes of an activation; a no-op unless axis rules and a mesh are active."""
  return nn.with_logical_constraint(x, tuple(axes))


def param_with_axes(module: nn.Module, name: str, init: Initializer, shape, axes, dtype=jnp.float32):
  """Declares a parameter annotated with its logical axis names."""
  return module.param(name, nn.with_logical_partitioning(init, tuple(axes)), shape, dtype)


def matmul(x: Array, kernel: Array, dtype: jnp.dtype) -> Array:
  """x [tokens, in] @ kernel [in, out] with `dtype` operands, accumulated and returned in float32.

  `x` must already be `dtype`; `kernel` is the float32 parameter, cast here so that its gradient
  is accumulated and returned in float32. In float32 this is a plain dot. In a lower precision the
  backward pass multiplies `dtype` operands too (the incoming gradient is cast to `dtype`, as
  mixed-precision training does; bf16 x bf16 -> f32 is what a TPU's MXU does).
  """
  dtype = jnp.dtype(dtype)
  if x.dtype != dtype:
    raise TypeError(f"matmul: x is {x.dtype}, expected {dtype}")
  if dtype == jnp.float32:
    return jnp.dot(x, kernel, preferred_element_type=jnp.float32)
  return _low_precision_matmul(x, kernel, dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _low_precision_matmul(x: Array, kernel: Array, dtype: jnp.dtype) -> Array:
  return _low_precision_matmul_forward(x, kernel, dtype)[0]


def _low_precision_matmul_forward(x, kernel, dtype):
  kernel = kernel.astype(dtype)
  return jnp.dot(x, kernel, preferred_element_type=jnp.float32), (x, kernel)


def _low_precision_matmul_backward(dtype, residuals, grad):
  x, kernel = residuals
  grad = grad.astype(dtype)
  grad_x = jnp.dot(grad, _transposed(kernel), preferred_element_type=jnp.float32)
  grad_kernel = jnp.dot(_transposed(x), grad, preferred_element_type=jnp.float32)
  return grad_x.astype(dtype), grad_kernel


_low_precision_matmul.defvjp(_low_precision_matmul_forward, _low_precision_matmul_backward)


def _transposed(x: Array) -> Array:
  """x.T; on CPU materialised row-major, through a rank-3 view that XLA does not fold into the
  consuming dot.

  XLA:CPU runs a bf16 dot on the CPU's bf16 units (YNNPACK) only when neither operand is
  transposed; otherwise it converts both to float32 first, at half the speed (measured in
  BENCHMARKS.md). Copying the transposed operand costs a few percent of the dot.
  """
  if jax.default_backend() != "cpu":
    return x.T
  rows, cols = x.shape
  return jnp.transpose(x.reshape(rows, cols, 1), (1, 0, 2)).reshape(cols, rows)


class Dense(nn.Module):
  """A dense layer on the last axis, computed as one 2-D matmul over all leading axes."""
  features: int
  kernel_axes: tuple[str, str]
  use_bias: bool = False
  dtype: jnp.dtype = jnp.float32
  kernel_init: Initializer = nn.initializers.variance_scaling(1.0, "fan_in", "truncated_normal")
  bias_init: Initializer = nn.initializers.zeros

  @nn.compact
  def __call__(self, x: Array) -> Array:
    in_features = x.shape[-1]
    kernel = param_with_axes(self, "kernel", self.kernel_init, (in_features, self.features),
                             self.kernel_axes)
    leading = x.shape[:-1]
    y = matmul(x.reshape(-1, in_features).astype(self.dtype), kernel, self.dtype)
    if self.use_bias:
      bias = param_with_axes(self, "bias", self.bias_init, (self.features,), self.kernel_axes[1:])
      y = y + bias
    return y.astype(self.dtype).reshape(*leading, self.features)


class RMSNorm(nn.Module):
  """T5's layer norm: scale only, no mean subtraction and no bias, computed in float32."""
  epsilon: float = 1e-6
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    scale = param_with_axes(self, "scale", nn.initializers.ones, (x.shape[-1],), ("embed",))
    x32 = x.astype(jnp.float32)
    variance = jnp.mean(jnp.square(x32), axis=-1, keepdims=True)
    return (x32 * jax.lax.rsqrt(variance + self.epsilon) * scale).astype(self.dtype)


class LayerNorm(nn.Module):
  """Standard layer norm with scale and bias (RoBERTa), computed in float32."""
  epsilon: float = 1e-5
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    features = x.shape[-1]
    scale = param_with_axes(self, "scale", nn.initializers.ones, (features,), ("embed",))
    bias = param_with_axes(self, "bias", nn.initializers.zeros, (features,), ("embed",))
    x32 = x.astype(jnp.float32)
    mean = jnp.mean(x32, axis=-1, keepdims=True)
    variance = jnp.mean(jnp.square(x32 - mean), axis=-1, keepdims=True)
    return ((x32 - mean) * jax.lax.rsqrt(variance + self.epsilon) * scale + bias).astype(self.dtype)


class Embed(nn.Module):
  """A lookup table [num_embeddings, features] with logical axes (table_axis, 'embed')."""
  num_embeddings: int
  features: int
  table_axis: str
  dtype: jnp.dtype = jnp.float32
  embedding_init: Initializer = nn.initializers.normal(stddev=1.0)

  @nn.compact
  def __call__(self, ids: Array) -> Array:
    table = param_with_axes(self, "embedding", self.embedding_init,
                            (self.num_embeddings, self.features), (self.table_axis, "embed"))
    return jnp.take(table, ids, axis=0).astype(self.dtype)


class Dropout(nn.Module):
  """Inverted dropout drawing 16 random bits per element instead of nn.Dropout's 32.

  An element is kept when its bits fall below round((1 - rate) * 2^16), so the rate is exact to
  within 2^-17. Random bits are most of dropout's cost on CPU (threefry hashing): half the bits,
  half the cost (BENCHMARKS.md). Uses the 'dropout' RNG stream, as nn.Dropout does.
  """
  rate: float

  @nn.compact
  def __call__(self, x: Array, deterministic: bool) -> Array:
    if not 0.0 <= self.rate <= 1.0:
      raise ValueError(f"dropout rate must be in [0, 1], got {self.rate}")
    threshold = round((1.0 - self.rate) * 2 ** 16)
    if deterministic or threshold == 2 ** 16:
      return x
    if threshold == 0:
      return jnp.zeros_like(x)
    bits = jax.random.bits(self.make_rng("dropout"), x.shape, jnp.uint16)
    keep = bits.astype(jnp.int32) < threshold
    return jnp.where(keep, x / jnp.asarray(threshold / 2 ** 16, x.dtype), 0).astype(x.dtype)


class SelfAttention(nn.Module):
  """Multi-head self-attention with 2-D projections and heads-major score computation.

  `bias` is added to the logits ([batch or 1, heads or 1, length, length]): it holds the key
  padding mask and, for T5, the shared relative position bias. T5 does not rescale the logits
  (the 1/sqrt(head_dim) is folded into the query initialiser); RoBERTa does (`scale_logits`).
  """
  num_heads: int
  head_dim: int
  dropout_rate: float = 0.0
  use_bias: bool = False
  scale_logits: bool = False
  dtype: jnp.dtype = jnp.float32
  kernel_init: Initializer = nn.initializers.variance_scaling(1.0, "fan_in", "truncated_normal")
  query_init: Initializer | None = None

  @nn.compact
  def __call__(self, x: Array, bias: Array, deterministic: bool) -> Array:
    batch, length, features = x.shape
    joined = self.num_heads * self.head_dim

    def project(name, init):
      y = Dense(joined, ("embed", "joined_kv"), self.use_bias, self.dtype, init, name=name)(x)
      y = y.reshape(batch, length, self.num_heads, self.head_dim).transpose(0, 2, 1, 3)
      return constrain(y, ("batch", "heads", "length", "kv"))

    query = project("query", self.query_init or self.kernel_init)
    key = project("key", self.kernel_init)
    value = project("value", self.kernel_init)
    if self.scale_logits:
      query = query * jnp.asarray(self.head_dim ** -0.5, self.dtype)
    logits = jnp.einsum("bhqd,bhkd->bhqk", query, key, preferred_element_type=jnp.float32)
    weights = jax.nn.softmax(logits + bias.astype(jnp.float32), axis=-1).astype(self.dtype)
    weights = Dropout(self.dropout_rate)(weights, deterministic=deterministic)
    out = jnp.einsum("bhqk,bhkd->bhqd", weights, value,
                     preferred_element_type=jnp.float32).astype(self.dtype)
    out = out.transpose(0, 2, 1, 3).reshape(batch, length, joined)
    out = constrain(out, ("batch", "length", "joined_kv"))
    return Dense(features, ("joined_kv", "embed"), self.use_bias, self.dtype, self.kernel_init,
                 name="out")(out)


def padding_bias(mask: Array) -> Array:
  """[batch, length] bool mask of real tokens -> additive key mask [batch, 1, 1, length]."""
  return jnp.where(mask, 0.0, MASK_VALUE).astype(jnp.float32)[:, None, None, :]


def activation(name: str) -> Callable[[Array], Array]:
  """Activation by its T5X / Hugging Face name."""
  table = {
      "relu": jax.nn.relu,
      "gelu": lambda x: jax.nn.gelu(x, approximate=True),  # T5X's and HF's "gelu_new".
      "gelu_exact": lambda x: jax.nn.gelu(x, approximate=False),  # BERT/RoBERTa's "gelu".
      "linear": lambda x: x,
  }
  if name not in table:
    raise ValueError(f"unknown activation {name!r}; expected one of {sorted(table)}")
  return table[name]
