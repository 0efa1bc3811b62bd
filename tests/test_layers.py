"""The layers' two formulations: "portable" (autodiff, Bernoulli dropout, jax.nn.dot_product_attention)
and "cpu" (custom low-precision backward with bf16 dots kept in bf16 on CPU, 16-bit dropout,
hand-written attention gradient) compute the same thing."""
import re

import jax
import jax.numpy as jnp
import flax.linen as nn
import numpy as np
import pytest

from hybridir.models import bert
from hybridir.models import layers
from hybridir.models import t5
from hybridir.models import xlmr


def operands(seed=0, tokens=48, features_in=32, features_out=24):
  rng = np.random.default_rng(seed)
  x = jnp.asarray(rng.standard_normal((tokens, features_in)), jnp.bfloat16)
  kernel = jnp.asarray(rng.standard_normal((features_in, features_out)), jnp.float32)
  cotangent = jnp.asarray(rng.standard_normal((tokens, features_out)), jnp.float32)
  return x, kernel, cotangent


def as_f32(x):
  return np.asarray(jnp.asarray(x).astype(jnp.float32), np.float64)


@pytest.mark.parametrize("kernels", layers.KERNELS)
def test_bfloat16_matmul_multiplies_rounded_operands_in_float32(kernels):
  x, kernel, _ = operands()
  y = layers.matmul(x, kernel, jnp.bfloat16, kernels)
  assert y.dtype == jnp.float32
  expected = as_f32(x) @ as_f32(kernel.astype(jnp.bfloat16))
  np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5)


def test_cpu_bfloat16_matmul_gradients_are_mixed_precision_products():
  """The incoming gradient is rounded to bf16; x's gradient is bf16, the kernel's float32."""
  x, kernel, cotangent = operands()
  loss = lambda x, kernel: jnp.sum(layers.matmul(x, kernel, jnp.bfloat16, "cpu") * cotangent)
  grad_x, grad_kernel = jax.jit(jax.grad(loss, argnums=(0, 1)))(x, kernel)
  assert grad_x.dtype == jnp.bfloat16 and grad_kernel.dtype == jnp.float32
  g = as_f32(cotangent.astype(jnp.bfloat16))
  expected_x = g @ as_f32(kernel.astype(jnp.bfloat16)).T
  np.testing.assert_allclose(as_f32(grad_x), as_f32(jnp.asarray(expected_x, jnp.bfloat16)),
                             rtol=1e-2, atol=1e-2)
  np.testing.assert_allclose(grad_kernel, as_f32(x).T @ g, rtol=1e-5, atol=1e-4)


def test_portable_bfloat16_matmul_gradients_are_autodiff_of_the_dot_and_near_the_cpu_ones():
  x, kernel, cotangent = operands()
  loss = lambda kernels: lambda x, k: jnp.sum(
      layers.matmul(x, k, jnp.bfloat16, kernels) * cotangent)
  plain = lambda x, k: jnp.sum(
      jnp.dot(x, k.astype(jnp.bfloat16), preferred_element_type=jnp.float32) * cotangent)
  grads = {kernels: jax.jit(jax.grad(loss(kernels), (0, 1)))(x, kernel)
           for kernels in layers.KERNELS}
  for a, b in zip(grads["portable"], jax.jit(jax.grad(plain, (0, 1)))(x, kernel)):
    assert a.dtype == b.dtype
    np.testing.assert_array_equal(as_f32(a), as_f32(b))
  for a, b in zip(grads["portable"], grads["cpu"]):  # cpu rounds the incoming gradient to bf16.
    np.testing.assert_allclose(as_f32(a), as_f32(b), rtol=0.05, atol=0.1)


@pytest.mark.parametrize("kernels", layers.KERNELS)
def test_float32_matmul_is_a_plain_dot(kernels):
  x, kernel, cotangent = operands()
  x = x.astype(jnp.float32)
  ours = lambda x, k: jnp.sum(layers.matmul(x, k, jnp.float32, kernels) * cotangent)
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
def test_cpu_forward_and_backward_dots_keep_bfloat16_operands_on_cpu():
  """XLA:CPU converts a bf16 dot with a transposed operand to float32 (half speed); the
  backward pass materialises its transposes so that all three dots stay bf16."""
  x, kernel, cotangent = operands(tokens=64, features_in=64, features_out=64)

  def forward_and_backward(x, kernel):
    y, backward = jax.vjp(lambda x, kernel: layers.matmul(x, kernel, jnp.bfloat16, "cpu"), x,
                          kernel)
    return y, backward(cotangent)

  hlo = jax.jit(forward_and_backward).lower(x, kernel).compile().as_text()
  found = dot_operand_dtypes(hlo)
  assert len(found) == 3, hlo
  assert set(found) == {("bf16", "bf16")}, found


def apply_dropout(rate, x, deterministic=False, seed=0, kernels="portable"):
  return layers.Dropout(rate, kernels).apply({}, x, deterministic,
                                             rngs={"dropout": jax.random.PRNGKey(seed)})


@pytest.mark.parametrize("kernels", layers.KERNELS)
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_dropout_drops_the_rate_and_rescales_the_rest(dtype, kernels):
  x = jnp.ones((500, 400), dtype)
  y = np.asarray(apply_dropout(0.1, x, kernels=kernels).astype(jnp.float32))
  dropped = np.mean(y == 0)
  assert abs(dropped - 0.1) < 0.003, dropped  # 200k draws: 4 standard deviations.
  kept = np.unique(y[y != 0])
  np.testing.assert_allclose(kept, [1 / 0.9], rtol=1e-2 if dtype == jnp.bfloat16 else 1e-4)
  assert apply_dropout(0.1, x, kernels=kernels).dtype == dtype


def test_portable_dropout_is_flax_dropout():
  x = jnp.asarray(np.random.default_rng(0).standard_normal((64, 48)), jnp.float32)
  rngs = {"dropout": jax.random.PRNGKey(3)}
  np.testing.assert_array_equal(apply_dropout(0.3, x, seed=3),
                                nn.Dropout(0.3).apply({}, x, False, rngs=rngs))


@pytest.mark.parametrize("kernels", layers.KERNELS)
def test_dropout_masks_differ_by_key_and_vanish_when_deterministic(kernels):
  x = jnp.ones((64, 64))
  drop = lambda rate, **options: apply_dropout(rate, x, kernels=kernels, **options)
  assert not np.array_equal(drop(0.5, seed=0), drop(0.5, seed=1))
  np.testing.assert_array_equal(drop(0.5, deterministic=True), x)
  np.testing.assert_array_equal(drop(0.0), x)
  np.testing.assert_array_equal(drop(1.0), np.zeros_like(x))


@pytest.mark.parametrize("kernels", layers.KERNELS)
def test_dropout_rejects_a_rate_outside_zero_one(kernels):
  with pytest.raises(ValueError, match="dropout rate must be in \\[0, 1\\], got 1.5"):
    apply_dropout(1.5, jnp.ones((2, 2)), kernels=kernels)


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


@pytest.mark.slow
def test_cpu_bfloat16_attention_and_norms_keep_no_float32_activations_for_the_backward_pass():
  """With "cpu" kernels, attention keeps its probabilities in bf16 (not the float32 softmax), layer norm and GELU
  only their bf16 inputs: the float32 copies autodiff would keep were most of the activation
  memory (BENCHMARKS.md, "Activation memory")."""
  cfg = xlmr.XLMRConfig(vocab_size=64, emb_dim=32, num_layers=1, num_heads=2, head_dim=16,
                        mlp_dim=64, dtype="bfloat16", kernels="cpu")
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


def heads_minor(x):
  """[batch, heads, length, head_dim] -> [batch, length, heads, head_dim] and back."""
  return x.transpose(0, 2, 1, 3)


@pytest.mark.parametrize("bias_shape", [(2, 1, 1, 7), (1, 3, 7, 7)], ids=["padding", "relative"])
@pytest.mark.parametrize("dropout", [False, True], ids=["no_dropout", "dropout"])
def test_portable_softmax_attention_equals_attend_forward_and_backward(bias_shape, dropout):
  """The portable dropout path (autodiff, [batch, length, heads, head_dim]) and the "cpu" core."""
  inputs, keep, cotangent = attention_inputs(jnp.float32, bias_shape, dropout)

  def portable(q, k, v, b, keep, keep_prob):
    return heads_minor(layers.softmax_attention(heads_minor(q), heads_minor(k), heads_minor(v),
                                                b, keep, keep_prob))

  ours = attention_vjp(portable, inputs, keep, cotangent)
  reference = attention_vjp(layers.attend, inputs, keep, cotangent)
  for name, a, b in zip(["out", "query", "key", "value", "bias"], ours, reference):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5, err_msg=name)


def attention_module(kernels, dtype=jnp.float32, dropout_rate=0.0, scale_logits=False):
  return layers.SelfAttention(num_heads=3, head_dim=4, dropout_rate=dropout_rate, use_bias=True,
                              scale_logits=scale_logits, dtype=dtype, kernels=kernels)


def attention_call(module, params, x, bias, deterministic=True):
  return module.apply(params, x, bias, deterministic, rngs={"dropout": jax.random.PRNGKey(5)})


def padded_inputs(dtype=jnp.float32, length=7):
  """x [2, length, 12] and a padding bias whose second row masks every key."""
  x = jax.random.normal(jax.random.PRNGKey(1), (2, length, 12)).astype(dtype)
  mask = jnp.ones((2, length), bool).at[0, 4:].set(False).at[1].set(False)
  return x, layers.padding_bias(mask)


@pytest.mark.parametrize("scale_logits", [False, True], ids=["t5", "roberta"])
def test_portable_deterministic_attention_is_jax_dot_product_attention(scale_logits, monkeypatch):
  """Without attention dropout the portable layer hands its projections to
  jax.nn.dot_product_attention (T5: scale 1; RoBERTa: 1/sqrt(head_dim)); the result equals that
  call on the same projections bit for bit, and fully padded rows stay finite."""
  module = attention_module("portable", scale_logits=scale_logits)
  x, bias = padded_inputs()
  params = module.init(jax.random.PRNGKey(0), x, bias, True)
  calls = []
  real = jax.nn.dot_product_attention
  monkeypatch.setattr(jax.nn, "dot_product_attention",
                      lambda *a, **k: calls.append(k) or real(*a, **k))
  out = jax.jit(lambda p: attention_call(module, p, x, bias))(params)
  assert calls == [{"scale": 4 ** -0.5 if scale_logits else 1.0, "implementation": None}]

  weights = jax.tree.map(np.asarray, nn.unbox(params)["params"])
  project = lambda name: (x @ weights[name]["kernel"] + weights[name]["bias"]).reshape(2, 7, 3, 4)
  expected = real(project("query"), project("key"), project("value"), bias,
                  scale=4 ** -0.5 if scale_logits else 1.0)
  expected = expected.reshape(2, 7, 12) @ weights["out"]["kernel"] + weights["out"]["bias"]
  np.testing.assert_allclose(out, expected, rtol=1e-6, atol=1e-6)
  assert np.isfinite(np.asarray(out)).all()


def test_portable_attention_with_dropout_takes_the_softmax_expression(monkeypatch):
  module = attention_module("portable", dropout_rate=0.2)
  x, bias = padded_inputs()
  params = module.init(jax.random.PRNGKey(0), x, bias, True)
  without_dropout = attention_call(module, params, x, bias, deterministic=True)
  monkeypatch.setattr(jax.nn, "dot_product_attention", None)  # Not called: it has no dropout.
  out = attention_call(module, params, x, bias, deterministic=False)
  assert np.isfinite(np.asarray(out)).all()
  assert not np.allclose(out, without_dropout)


@pytest.mark.parametrize("scale_logits", [False, True], ids=["t5", "roberta"])
@pytest.mark.parametrize("dtype,tolerance", [(jnp.float32, 1e-5), (jnp.bfloat16, 0.05)])
def test_portable_and_cpu_attention_layers_agree_forward_and_backward(scale_logits, dtype,
                                                                      tolerance):
  x, bias = padded_inputs(dtype)
  cotangent = jax.random.normal(jax.random.PRNGKey(2), (2, 7, 12)).astype(dtype)
  results = {}
  for kernels in layers.KERNELS:
    module = attention_module(kernels, dtype, scale_logits=scale_logits)
    params = module.init(jax.random.PRNGKey(0), x, bias, True)
    out, backward = jax.vjp(lambda p, x: attention_call(module, p, x, bias), params, x)
    results[kernels] = (out,) + backward(cotangent)
  assert_trees_close(results["portable"], results["cpu"], tolerance)


def assert_trees_close(a, b, tolerance):
  """Each leaf within `tolerance` of the other's largest magnitude; the key projection's bias,
  whose true gradient is zero (softmax ignores a constant per query), within `tolerance` of the
  largest magnitude of all."""
  largest = max(float(np.abs(as_f32(y)).max()) for y in jax.tree.leaves(b))
  for (path, x), y in zip(jax.tree_util.tree_leaves_with_path(a), jax.tree.leaves(b)):
    x, y = as_f32(x), as_f32(y)
    assert x.shape == y.shape, jax.tree_util.keystr(path)
    assert np.isfinite(x).all(), jax.tree_util.keystr(path)
    zero = "['key']['bias']" in jax.tree_util.keystr(path)
    scale = largest if zero else max(float(np.abs(y).max()), 1e-6)
    assert np.abs(x - y).max() / scale < tolerance, (jax.tree_util.keystr(path),
                                                     np.abs(x - y).max() / scale)


TINY_ENCODERS = {
    "t5": lambda **options: t5.T5Config(vocab_size=50, emb_dim=16, num_layers=2, num_heads=2,
                                        head_dim=8, mlp_dim=32, dropout_rate=0.0, **options),
    "xlmr": lambda **options: xlmr.XLMRConfig(
        vocab_size=50, emb_dim=16, num_layers=2, num_heads=2, head_dim=8, mlp_dim=32,
        max_position_embeddings=20, dropout_rate=0.0, attention_dropout_rate=0.0, **options),
    "bert": lambda **options: bert.BertConfig(
        vocab_size=50, emb_dim=16, num_layers=2, num_heads=2, head_dim=8, mlp_dim=32,
        max_position_embeddings=16, dropout_rate=0.0, attention_dropout_rate=0.0, **options),
}


@pytest.mark.slow
@pytest.mark.parametrize("family", sorted(TINY_ENCODERS))
@pytest.mark.parametrize("dtype,tolerance", [("float32", 1e-5), ("bfloat16", 0.05)])
def test_portable_and_cpu_encoders_agree_without_dropout(family, dtype, tolerance):
  """The same parameters give the same hidden states and gradients (training mode, dropout 0),
  fully padded rows included."""
  from hybridir.models import families  # pylint: disable=g-import-not-at-top
  tokens = jnp.asarray(np.random.default_rng(0).integers(3, 50, (3, 10)), jnp.int32)
  configs = {k: TINY_ENCODERS[family](dtype=dtype, kernels=k) for k in layers.KERNELS}
  pad = configs["cpu"].pad_id
  tokens = tokens.at[0, 6:].set(pad).at[2].set(pad)
  weights = jax.random.normal(jax.random.PRNGKey(3), (3, 10, 16))
  encoder = {k: families.of_config(c).encoder_class(c) for k, c in configs.items()}
  params = encoder["cpu"].init(jax.random.PRNGKey(0), tokens)
  results = {}
  for kernels, module in encoder.items():
    def loss(params):
      hidden = module.apply(params, tokens, deterministic=False,
                            rngs={"dropout": jax.random.PRNGKey(1)})
      return jnp.sum(hidden.astype(jnp.float32) * weights), hidden
    (_, hidden), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(params)
    results[kernels] = (hidden, grads)
  assert_trees_close(results["portable"], results["cpu"], tolerance)


@pytest.mark.parametrize("family", sorted(TINY_ENCODERS))
def test_an_unknown_kernels_value_names_the_parameter(family):
  name = TINY_ENCODERS[family]().__class__.__name__
  with pytest.raises(ValueError) as error:
    TINY_ENCODERS[family](kernels="gpu")
  assert str(error.value) == f"{name}.kernels must be one of ('portable', 'cpu'), got 'gpu'"
