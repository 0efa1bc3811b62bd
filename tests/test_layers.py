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
