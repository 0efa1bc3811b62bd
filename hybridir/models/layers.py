"""Building blocks shared by the encoders: dense layers, norms, embeddings, attention.

Every parameter carries logical axis names (flax `nn.with_logical_partitioning`) and the main
activations carry logical constraints, so that `hybridir.training.partitioning` can shard them by
rules. Dense projections run as 2-D matmuls ([tokens, features]); norms and MLP activations are
recomputed from their inputs in the backward pass (BENCHMARKS.md, "Activation memory").

Two formulations, chosen by the encoder config's `kernels` (`KERNELS`):
- "portable" (the default): what any backend compiles well. Dense matmuls are `jnp.dot` with
  float32 accumulation differentiated by autodiff, dropout is a Bernoulli keep mask (as
  `nn.Dropout`), and attention without probability dropout is `jax.nn.dot_product_attention`, so
  that a backend may use its fused kernel; with probability dropout, the softmax expression.
- "cpu": tuned for XLA:CPU (BENCHMARKS.md, "Training step" and its "Layouts for XLA:CPU",
  "bfloat16 on XLA:CPU" and "Activation memory" sections). bf16 matmuls have a custom backward
  whose transposed operands are copied row-major (`_low_precision_matmul`), dropout draws 16
  random bits per element, and attention is computed heads-major with a hand-written gradient
  that keeps one bf16 copy of the probabilities (`attend`).
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
# The formulations an encoder config's `kernels` selects (module docstring).
KERNELS = ("portable", "cpu")


def check_kernels(owner: str, kernels: str) -> None:
  """Raises a one-line ValueError naming `owner`.kernels unless it is one of KERNELS."""
  if kernels not in KERNELS:
    raise ValueError(f"{owner}.kernels must be one of {KERNELS}, got {kernels!r}")


def constrain(x: Array, axes: Sequence[str]) -> Array:
  """Names the logical axes of an activation; a no-op unless axis rules and a mesh are active."""
  return nn.with_logical_constraint(x, tuple(axes))


def param_with_axes(module: nn.Module, name: str, init: Initializer, shape, axes, dtype=jnp.float32):
  """Declares a parameter annotated with its logical axis names."""
  return module.param(name, nn.with_logical_partitioning(init, tuple(axes)), shape, dtype)


def matmul(x: Array, kernel: Array, dtype: jnp.dtype, kernels: str = "portable") -> Array:
  """x [tokens, in] @ kernel [in, out] with `dtype` operands, accumulated and returned in float32.

  `x` must already be `dtype`; `kernel` is the float32 parameter, cast here so that its gradient
  is accumulated and returned in float32. In float32 this is a plain dot either way. In a lower
  precision, "portable" differentiates the dot by autodiff; "cpu" has a custom backward that
  multiplies `dtype` operands too (the incoming gradient cast to `dtype`, as mixed-precision
  training does), its transposed operands materialised for XLA:CPU (`_transposed`).
  """
  dtype = jnp.dtype(dtype)
  if x.dtype != dtype:
    raise TypeError(f"matmul: x is {x.dtype}, expected {dtype}")
  if dtype == jnp.float32:
    return jnp.dot(x, kernel, preferred_element_type=jnp.float32)
  if kernels == "cpu":
    return _low_precision_matmul(x, kernel, dtype)
  return jnp.dot(x, kernel.astype(dtype), preferred_element_type=jnp.float32)


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
  rows, cols = x.shape
  # Chosen when lowering, for the platform compiled for (a TPU program compiled ahead of time on
  # a CPU machine gets the plain transpose).
  return jax.lax.platform_dependent(
      x, cpu=lambda x: jnp.transpose(x.reshape(rows, cols, 1), (1, 0, 2)).reshape(cols, rows),
      default=lambda x: x.T)


class Dense(nn.Module):
  """A dense layer on the last axis, computed as one 2-D matmul over all leading axes."""
  features: int
  kernel_axes: tuple[str, str]
  use_bias: bool = False
  dtype: jnp.dtype = jnp.float32
  kernel_init: Initializer = nn.initializers.variance_scaling(1.0, "fan_in", "truncated_normal")
  bias_init: Initializer = nn.initializers.zeros
  kernels: str = "portable"  # KERNELS: how a low-precision matmul is differentiated (`matmul`).

  @nn.compact
  def __call__(self, x: Array) -> Array:
    in_features = x.shape[-1]
    kernel = param_with_axes(self, "kernel", self.kernel_init, (in_features, self.features),
                             self.kernel_axes)
    leading = x.shape[:-1]
    y = matmul(x.reshape(-1, in_features).astype(self.dtype), kernel, self.dtype, self.kernels)
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
    return _rms_norm(x, scale, self.epsilon, jnp.dtype(self.dtype))


class LayerNorm(nn.Module):
  """Standard layer norm with scale and bias (RoBERTa), computed in float32."""
  epsilon: float = 1e-5
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    features = x.shape[-1]
    scale = param_with_axes(self, "scale", nn.initializers.ones, (features,), ("embed",))
    bias = param_with_axes(self, "bias", nn.initializers.zeros, (features,), ("embed",))
    return _layer_norm(x, scale, bias, self.epsilon, jnp.dtype(self.dtype))


# The norms are recomputed from their input in the backward pass (jax.checkpoint): autodiff would
# keep two or three float32 copies of the activation for it instead of one in the activation dtype.
@functools.partial(jax.checkpoint, static_argnums=(2, 3))
def _rms_norm(x: Array, scale: Array, epsilon: float, dtype: jnp.dtype) -> Array:
  x32 = x.astype(jnp.float32)
  variance = jnp.mean(jnp.square(x32), axis=-1, keepdims=True)
  return (x32 * jax.lax.rsqrt(variance + epsilon) * scale).astype(dtype)


@functools.partial(jax.checkpoint, static_argnums=(3, 4))
def _layer_norm(x: Array, scale: Array, bias: Array, epsilon: float, dtype: jnp.dtype) -> Array:
  x32 = x.astype(jnp.float32)
  mean = jnp.mean(x32, axis=-1, keepdims=True)
  variance = jnp.mean(jnp.square(x32 - mean), axis=-1, keepdims=True)
  return ((x32 - mean) * jax.lax.rsqrt(variance + epsilon) * scale + bias).astype(dtype)


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
  """Inverted dropout from the 'dropout' RNG stream, as nn.Dropout.

  "portable": a Bernoulli(1 - rate) keep mask, as nn.Dropout draws it. "cpu": 16 random bits per
  element instead of 32, an element kept when its bits fall below round((1 - rate) * 2^16) (the
  rate exact to within 2^-17): random bits are most of dropout's cost on XLA:CPU (threefry
  hashing), so half the bits, half the cost (BENCHMARKS.md, "bfloat16 on XLA:CPU").
  """
  rate: float
  kernels: str = "portable"

  @property
  def threshold(self) -> int:
    """"cpu" kernels: elements whose 16 random bits are below this are kept (2^16: all kept)."""
    return round((1.0 - self._rate()) * 2 ** 16)

  @property
  def keep_prob(self) -> float:
    """The probability of keeping an element; kept elements are divided by it."""
    if self.kernels == "cpu":
      return self.threshold / 2 ** 16
    return 1.0 - self._rate()

  def _rate(self) -> float:
    """The rate, checked to be in [0, 1]."""
    if not 0.0 <= self.rate <= 1.0:
      raise ValueError(f"dropout rate must be in [0, 1], got {self.rate}")
    return self.rate

  def active(self, deterministic: bool) -> bool:
    """Whether a call drops anything."""
    return not deterministic and self.keep_prob < 1.0

  def keep_mask(self, shape: Sequence[int]) -> Array:
    """A bool mask of the elements to keep, drawn from the 'dropout' RNG stream."""
    if self.kernels == "cpu":
      bits = jax.random.bits(self.make_rng("dropout"), tuple(shape), jnp.uint16)
      return bits.astype(jnp.int32) < self.threshold
    return jax.random.bernoulli(self.make_rng("dropout"), self.keep_prob, tuple(shape))

  def __call__(self, x: Array, deterministic: bool) -> Array:
    if not self.active(deterministic):
      return x
    if self.keep_prob == 0:
      return jnp.zeros_like(x)
    return _dropped(x, self.keep_mask(x.shape), self.keep_prob)


class SelfAttention(nn.Module):
  """Multi-head self-attention with 2-D projections.

  `bias` is added to the logits ([batch or 1, heads or 1, length, length]): it holds the key
  padding mask and, for T5, the shared relative position bias. T5 does not rescale the logits
  (the 1/sqrt(head_dim) is folded into the query initialiser); RoBERTa does (`scale_logits`).
  "portable" kernels: `jax.nn.dot_product_attention` unless attention-probability dropout is
  active, then the softmax expression (`softmax_attention`), both on [batch, length, heads,
  head_dim]; "cpu": heads-major [batch, heads, length, head_dim] through `attend`.
  """
  num_heads: int
  head_dim: int
  dropout_rate: float = 0.0
  use_bias: bool = False
  scale_logits: bool = False
  dtype: jnp.dtype = jnp.float32
  kernel_init: Initializer = nn.initializers.variance_scaling(1.0, "fan_in", "truncated_normal")
  query_init: Initializer | None = None
  kernels: str = "portable"

  @nn.compact
  def __call__(self, x: Array, bias: Array, deterministic: bool) -> Array:
    batch, length, features = x.shape
    joined = self.num_heads * self.head_dim
    heads_major = self.kernels == "cpu"

    def project(name, init):
      y = Dense(joined, ("embed", "joined_kv"), self.use_bias, self.dtype, init, name=name,
                kernels=self.kernels)(x)
      y = y.reshape(batch, length, self.num_heads, self.head_dim)
      if heads_major:
        return constrain(y.transpose(0, 2, 1, 3), ("batch", "heads", "length", "kv"))
      return constrain(y, ("batch", "length", "heads", "kv"))

    query = project("query", self.query_init or self.kernel_init)
    key = project("key", self.kernel_init)
    value = project("value", self.kernel_init)
    bias = bias.astype(jnp.float32)
    dropout = Dropout(self.dropout_rate, self.kernels)
    keep = None
    if dropout.active(deterministic):
      keep = dropout.keep_mask((batch, self.num_heads, length, length))
    scale = self.head_dim ** -0.5 if self.scale_logits else 1.0
    if heads_major:
      if self.scale_logits:
        query = query * jnp.asarray(scale, self.dtype)
      out = attend(query, key, value, bias, keep, dropout.keep_prob)
      out = out.transpose(0, 2, 1, 3)
    elif keep is None:
      # implementation=None: JAX picks the kernel for the backend (in jax 0.10.2 still XLA's
      # expression everywhere; cuDNN's fused attention when JAX selects it on GPU).
      out = jax.nn.dot_product_attention(query, key, value, bias, scale=scale,
                                         implementation=None)
    else:
      out = softmax_attention(query, key, value, bias, keep, dropout.keep_prob, scale)
    out = constrain(out.reshape(batch, length, joined), ("batch", "length", "joined_kv"))
    return Dense(features, ("joined_kv", "embed"), self.use_bias, self.dtype, self.kernel_init,
                 name="out", kernels=self.kernels)(out)


def softmax_attention(query: Array, key: Array, value: Array, bias: Array, keep: Array | None,
                      keep_prob: float, scale: float = 1.0) -> Array:
  """softmax(scale * query key^T + bias), dropout, times value, differentiated by autodiff.

  query, key, value: [batch, length, heads, head_dim] (`jax.nn.dot_product_attention`'s layout)
  in the activation dtype; bias float32, broadcastable to [batch, heads, q_length, k_length];
  keep: the dropout mask of that full shape (None: none). Logits and softmax in float32, the
  probabilities then cast to the activation dtype, matmuls accumulated in float32.
  """
  dtype = query.dtype
  logits = jnp.einsum("bqhd,bkhd->bhqk", query, key, preferred_element_type=jnp.float32)
  if scale != 1.0:
    logits = logits * scale
  probs = jax.nn.softmax(logits + bias, axis=-1).astype(dtype)
  return jnp.einsum("bhqk,bkhd->bqhd", _dropped(probs, keep, keep_prob), value,
                    preferred_element_type=jnp.float32).astype(dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(5,))
def attend(query: Array, key: Array, value: Array, bias: Array, keep: Array | None,
           keep_prob: float) -> Array:
  """The "cpu" attention core: softmax(query key^T + bias), dropout, times value (no scaling).

  query, key, value: [batch, heads, length, head_dim] in the activation dtype; bias: float32,
  broadcastable to [batch, heads, q_length, k_length]; keep: the attention-dropout mask of that
  full shape (None: no dropout), kept probabilities divided by `keep_prob`. Logits and softmax
  are float32, the probabilities then cast to the activation dtype, and matmuls accumulate in
  float32 (as autodiff of the plain expression would). The gradient is hand-written so that the
  backward pass keeps only the probabilities (activation dtype) and the mask, where autodiff
  keeps the float32 softmax and the dropped probabilities twice besides (3x the bytes in
  bfloat16; BENCHMARKS.md, "Activation memory").
  """
  return _attend_forward(query, key, value, bias, keep, keep_prob)[0]


def _dropped(x: Array, keep: Array | None, keep_prob: float) -> Array:
  """Inverted dropout with a given mask: kept elements divided by keep_prob, the rest zero."""
  if keep is None:
    return x
  return jnp.where(keep, x / jnp.asarray(keep_prob, x.dtype), 0).astype(x.dtype)


def _attend_forward(query, key, value, bias, keep, keep_prob):
  if bias.ndim != 4:
    raise ValueError(f"attend: bias must be 4-D [batch or 1, heads or 1, q, k], got {bias.shape}")
  dtype = query.dtype
  logits = jnp.einsum("bhqd,bhkd->bhqk", query, key, preferred_element_type=jnp.float32)
  probs = jax.nn.softmax(logits + bias, axis=-1).astype(dtype)
  out = jnp.einsum("bhqk,bhkd->bhqd", _dropped(probs, keep, keep_prob), value,
                   preferred_element_type=jnp.float32).astype(dtype)
  return out, (query, key, value, bias, keep, probs)


def _attend_backward(keep_prob, residuals, grad):
  query, key, value, bias, keep, probs = residuals
  dtype = query.dtype
  grad = grad.astype(dtype)
  # The dropped probabilities again, written differently from the forward pass: XLA would merge
  # identical expressions and keep the forward's (float32 on CPU) copy alive until here.
  scale = 1 / keep_prob if keep_prob else 0.0
  dropped = probs if keep is None else probs * jnp.where(keep, scale, 0).astype(dtype)
  grad_value = jnp.einsum("bhqk,bhqd->bhkd", dropped, grad,
                          preferred_element_type=jnp.float32).astype(value.dtype)
  grad_probs = jnp.einsum("bhqd,bhkd->bhqk", grad, value, preferred_element_type=jnp.float32)
  if keep is not None:
    grad_probs = jnp.where(keep, grad_probs * scale, 0.0)
  probs32 = probs.astype(jnp.float32)
  grad_logits = probs32 * (grad_probs - jnp.sum(grad_probs * probs32, axis=-1, keepdims=True))
  grad_bias = jnp.sum(grad_logits, axis=tuple(i for i, n in enumerate(bias.shape) if n == 1),
                      keepdims=True)
  grad_logits = grad_logits.astype(dtype)
  grad_query = jnp.einsum("bhqk,bhkd->bhqd", grad_logits, key,
                          preferred_element_type=jnp.float32).astype(query.dtype)
  grad_key = jnp.einsum("bhqk,bhqd->bhkd", grad_logits, query,
                        preferred_element_type=jnp.float32).astype(key.dtype)
  return grad_query, grad_key, grad_value, grad_bias.astype(bias.dtype), None


attend.defvjp(_attend_forward, _attend_backward)


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
  # Recomputed from its input in the backward pass: autodiff of exact GELU keeps three
  # intermediates of the [tokens, mlp] activation.
  return jax.checkpoint(table[name])


def encoder_layers(parent: nn.Module, layer: nn.Module, num_layers: int, x: Array, bias: Array,
                   deterministic: bool, scan: bool = False) -> Array:
  """x through `parent`'s submodules layers_0 ... layers_{num_layers-1}, copies of the unbound
  `layer` called as layer(x, bias, deterministic).

  scan: apply them as one layer in a lax.scan over their stacked parameters, so that XLA compiles
  one layer instead of num_layers (a TPU compile takes minutes per unrolled layer: BENCHMARKS.md,
  "Ahead-of-time compilation"). Parameters keep their per-layer names either way (checkpoints are
  the same); only the dropout masks differ (layer i draws from split(rng, num_layers)[i]).
  """
  names = [f"layers_{i}" for i in range(num_layers)]
  if not scan or parent.is_initializing():
    for name in names:
      x = layer.clone(parent=parent, name=name)(x, bias, deterministic)
    return x
  params = nn.unbox(parent.variables["params"])
  stacked = jax.tree.map(lambda *each: jnp.stack(each), *[params[name] for name in names])
  keys = None
  if not deterministic and parent.has_rng("dropout"):
    keys = jax.random.split(parent.make_rng("dropout"), num_layers)

  def body(x, per_layer):
    layer_params, key = per_layer
    rngs = {} if key is None else {"dropout": key}
    return layer.apply({"params": layer_params}, x, bias, deterministic, rngs=rngs), None

  return jax.lax.scan(body, x, (stacked, keys))[0]
