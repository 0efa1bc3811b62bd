"""layers.matmul: float32 accumulation, low-precision backward, bf16 dots kept in bf16 on CPU."""
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hybridir.models import layers


def operands(seed=0, tokens=48, features_in=32, features_out=24):
  rng = np.random.default_rng(seed)
  x = jnp.asarray(rng.standard_normal((tokens, features_in)), jnp.bfloat16)
  kernel = jnp.asarray(rng.standard_normal((features_in, features_out)), jnp.float32)
  cotangent = jnp.asarray(rng.standard_normal((tokens, features_out)), jnp.float32)
  return x, kernel, cotangent


def as_f32(x):
  return np.asarray(jnp.asarray(x).astype(jnp.float32), np.float64)


def test_bfloat16_matmul_multiplies_rounded_operands_in_float32():
  x, kernel, _ = operands()
  y = layers.matmul(x, kernel, jnp.bfloat16)
  assert y.dtype == jnp.float32
  expected = as_f32(x) @ as_f32(kernel.astype(jnp.bfloat16))
  np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5)


def test_bfloat16_matmul_gradients_are_mixed_precision_products():
  """The incoming gradient is rounded to bf16; x's gradient is bf16, the kernel's float32."""
  x, kernel, cotangent = operands()
  loss = lambda x, kernel: jnp.sum(layers.matmul(x, kernel, jnp.bfloat16) * cotangent)
  grad_x, grad_kernel = jax.jit(jax.grad(loss, argnums=(0, 1)))(x, kernel)
  assert grad_x.dtype == jnp.bfloat16 and grad_kernel.dtype == jnp.float32
  g = as_f32(cotangent.astype(jnp.bfloat16))
  expected_x = g @ as_f32(kernel.astype(jnp.bfloat16)).T
  np.testing.assert_allclose(as_f32(grad_x), as_f32(jnp.asarray(expected_x, jnp.bfloat16)),
                             rtol=1e-2, atol=1e-2)
  np.testing.assert_allclose(grad_kernel, as_f32(x).T @ g, rtol=1e-5, atol=1e-4)


def test_float32_matmul_is_a_plain_dot():
  x, kernel, cotangent = operands()
  x = x.astype(jnp.float32)
  ours = lambda x, k: jnp.sum(layers.matmul(x, k, jnp.float32) * cotangent)
  plain = lambda x, k: jnp.sum(jnp.dot(x, k) * cotangent)
  for a, b in zip(jax.grad(ours, (0, 1))(x, kernel), jax.grad(plain, (0, 1))(x, kernel)):
    np.testing.assert_array_equal(a, b)


def test_matmul_rejects_an_input_of_another_dtype():
  x, kernel, _ = operands()
  with pytest.raises(TypeError, match="x is float32, expected bfloat16"):
    layers.matmul(x.astype(jnp.float32), kernel, jnp.bfloat16)


def dot_operand_dtypes(hlo: str) -> list[tuple[str, str]]:
  """(lhs dtype, rhs dtype) of every dot in optimised HLO text."""
  dtypes = dict(re.findall(r"%(\S+) = (\w+)\[", hlo))
  return [(dtypes[lhs], dtypes[rhs]) for lhs, rhs in re.findall(r" dot\(%([^,\s]+), %([^,\s)]+)\)", hlo)]


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="XLA:CPU's dot lowering")
def test_forward_and_backward_dots_keep_bfloat16_operands_on_cpu():
  """XLA:CPU converts a bf16 dot with a transposed operand to float32 (half speed); the
  backward pass materialises its transposes so that all three dots stay bf16."""
  x, kernel, cotangent = operands(tokens=64, features_in=64, features_out=64)

  def forward_and_backward(x, kernel):
    y, backward = jax.vjp(lambda x, kernel: layers.matmul(x, kernel, jnp.bfloat16), x, kernel)
    return y, backward(cotangent)

  hlo = jax.jit(forward_and_backward).lower(x, kernel).compile().as_text()
  found = dot_operand_dtypes(hlo)
  assert len(found) == 3, hlo
  assert set(found) == {("bf16", "bf16")}, found


def apply_dropout(rate, x, deterministic=False, seed=0):
  return layers.Dropout(rate).apply({}, x, deterministic, rngs={"dropout": jax.random.PRNGKey(seed)})


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_dropout_drops_the_rate_and_rescales_the_rest(dtype):
  x = jnp.ones((500, 400), dtype)
  y = np.asarray(apply_dropout(0.1, x).astype(jnp.float32))
  dropped = np.mean(y == 0)
  assert abs(dropped - 0.1) < 0.003, dropped  # 200k draws: 4 standard deviations.
  kept = np.unique(y[y != 0])
  np.testing.assert_allclose(kept, [1 / 0.9], rtol=1e-2 if dtype == jnp.bfloat16 else 1e-4)
  assert apply_dropout(0.1, x).dtype == dtype


def test_dropout_masks_differ_by_key_and_vanish_when_deterministic():
  x = jnp.ones((64, 64))
  assert not np.array_equal(apply_dropout(0.5, x, seed=0), apply_dropout(0.5, x, seed=1))
  np.testing.assert_array_equal(apply_dropout(0.5, x, deterministic=True), x)
  np.testing.assert_array_equal(apply_dropout(0.0, x), x)
  np.testing.assert_array_equal(apply_dropout(1.0, x), np.zeros_like(x))


def test_dropout_rejects_a_rate_outside_zero_one():
  with pytest.raises(ValueError, match="dropout rate must be in \\[0, 1\\], got 1.5"):
    apply_dropout(1.5, jnp.ones((2, 2)))


def plain_attention(query, key, value, bias, keep, keep_prob):
  """The attention core as plain jnp, differentiated by autodiff: the reference for `attend`."""
  logits = jnp.einsum("bhqd,bhkd->bhqk", query, key, preferred_element_type=jnp.float32)
  probs = jax.nn.softmax(logits + bias, axis=-1).astype(query.dtype)
  if keep is not None:
    probs = jnp.where(keep, probs / jnp.asarray(keep_prob, probs.dtype), 0).astype(probs.dtype)
  return jnp.einsum("bhqk,bhkd->bhqd", probs, value,
                    preferred_element_type=jnp.float32).astype(query.dtype)


def attention_inputs(dtype, bias_shape, dropout, seed=0):
  keys = jax.random.split(jax.random.PRNGKey(seed), 6)
  shape = (2, 3, 7, 4)  # batch, heads, length, head_dim
  query, key, value = (jax.random.normal(keys[i], shape).astype(dtype) for i in range(3))
  bias = jax.random.normal(keys[3], bias_shape)
  keep = jax.random.uniform(keys[4], (2, 3, 7, 7)) < 0.8 if dropout else None
  cotangent = jax.random.normal(keys[5], shape).astype(dtype)
  return (query, key, value, bias), keep, cotangent


def attention_vjp(fn, inputs, keep, cotangent):
  out, backward = jax.vjp(lambda q, k, v, b: fn(q, k, v, b, keep, 0.8), *inputs)
  return (out,) + backward(cotangent)


@pytest.mark.parametrize("bias_shape", [(2, 1, 1, 7), (1, 3, 7, 7)], ids=["padding", "relative"])
@pytest.mark.parametrize("dropout", [False, True], ids=["no_dropout", "dropout"])
def test_attend_gradients_equal_autodiff_in_float32(bias_shape, dropout):
  """The hand-written backward (query, key, value and the broadcast bias) equals autodiff."""
  inputs, keep, cotangent = attention_inputs(jnp.float32, bias_shape, dropout)
  ours = attention_vjp(layers.attend, inputs, keep, cotangent)
  reference = attention_vjp(plain_attention, inputs, keep, cotangent)
  for name, a, b in zip(["out", "query", "key", "value", "bias"], ours, reference):
    assert a.shape == b.shape, name
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5, err_msg=name)


def test_attend_bfloat16_gradients_match_float32_to_bfloat16_precision():
  inputs, keep, cotangent = attention_inputs(jnp.bfloat16, (2, 1, 1, 7), True)
  ours = attention_vjp(layers.attend, inputs, keep, cotangent)
  as32 = lambda tree: jax.tree.map(lambda x: x.astype(jnp.float32), tree)
  reference = attention_vjp(plain_attention, as32(inputs), keep, as32(cotangent))
  assert [x.dtype for x in ours[:4]] == [jnp.bfloat16] * 4
  for name, a, b in zip(["out", "query", "key", "value", "bias"], ours, reference):
    np.testing.assert_allclose(as_f32(a), as_f32(b), rtol=0.05, atol=0.05, err_msg=name)


def test_attend_rejects_a_bias_that_is_not_four_dimensional():
  (query, key, value, _), _, _ = attention_inputs(jnp.float32, (2, 1, 1, 7), False)
  with pytest.raises(ValueError, match="bias must be 4-D"):
    layers.attend(query, key, value, jnp.zeros((7, 7)), None, 1.0)


def saved_residual_bytes(fn, *args) -> dict[tuple[str, tuple[int, ...]], int]:
  """Bytes autodiff keeps for the backward pass, by (dtype, shape)."""
  from jax._src.ad_checkpoint import saved_residuals  # pylint: disable=g-import-not-at-top
  found = {}
  for residual, _ in saved_residuals(fn, *args):
    key = (str(residual.dtype), tuple(residual.shape))
    found[key] = found.get(key, 0) + residual.size * residual.dtype.itemsize
  return found


def test_bfloat16_attention_and_norms_keep_no_float32_activations_for_the_backward_pass():
  """Attention keeps its probabilities in bf16 (not the float32 softmax), layer norm and GELU
  only their bf16 inputs: the float32 copies autodiff would keep were most of the activation
  memory (BENCHMARKS.md, "Activation memory")."""
  from hybridir.models import xlmr  # pylint: disable=g-import-not-at-top
  cfg = xlmr.XLMRConfig(vocab_size=64, emb_dim=32, num_layers=1, num_heads=2, head_dim=16,
                        mlp_dim=64, dtype="bfloat16")
  layer = xlmr.EncoderLayer(cfg)
  x = jnp.ones((2, 8, 32), jnp.bfloat16)
  bias = jnp.zeros((2, 1, 1, 8), jnp.float32)
  rngs = {"params": jax.random.PRNGKey(0), "dropout": jax.random.PRNGKey(1)}
  params = layer.init(rngs, x, bias, False)

  def loss(params, x):
    y = layer.apply(params, x, bias, False, rngs={"dropout": jax.random.PRNGKey(2)})
    return jnp.sum(y.astype(jnp.float32))

  residuals = saved_residual_bytes(loss, params, x)
  float32_activations = {k: v for k, v in residuals.items()
                         if k[0] == "float32" and np.prod(k[1]) >= 2 * 8 * 16}  # Not the bias.
  assert not float32_activations, float32_activations
  assert ("bfloat16", (2, 2, 8, 8)) in residuals  # the attention probabilities
