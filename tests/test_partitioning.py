"""Mesh, logical-axis rules and shardings on 8 virtual CPU devices."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hybridir.training import losses
from hybridir.training import partitioning

P = jax.sharding.PartitionSpec
MODEL_AXIS_NAMES = ("vocab", "embed", "heads", "relpos_buckets", "abspos", "token_types",
                    "joined_kv", "mlp", "projection", "batch", "length", "kv")


class ToyEncoder(nn.Module):
  """Embedding -> gated MLP -> mean pool -> projection, every param and activation named."""
  vocab_size: int = 32
  embed_dim: int = 8
  mlp_dim: int = 16

  @nn.compact
  def __call__(self, token_ids):
    init = nn.initializers.normal(0.5)
    embedding = self.param("embedding", nn.with_logical_partitioning(init, ("vocab", "embed")),
                           (self.vocab_size, self.embed_dim))
    x = nn.with_logical_constraint(embedding[token_ids], ("batch", "length", "embed"))
    h = nn.Dense(self.mlp_dim, kernel_init=nn.with_logical_partitioning(init, ("embed", "mlp")),
                 bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("mlp",)),
                 name="wi")(x)
    h = nn.with_logical_constraint(nn.gelu(h), ("batch", "length", "mlp"))
    x = x + nn.Dense(self.embed_dim, use_bias=False, name="wo",
                     kernel_init=nn.with_logical_partitioning(init, ("mlp", "embed")))(h)
    pooled = nn.with_logical_constraint(jnp.mean(x, axis=1), ("batch", "embed"))
    return nn.Dense(self.embed_dim, use_bias=False, name="projection",
                    kernel_init=nn.with_logical_partitioning(init, ("embed", "projection")))(pooled)


def toy_batch(batch=8, length=5, vocab_size=32, seed=0):
  rng = np.random.default_rng(seed)
  return {"query_ids": rng.integers(0, vocab_size, (batch, length), dtype=np.int32),
          "passage_ids": rng.integers(0, vocab_size, (batch, length), dtype=np.int32)}


@pytest.mark.parametrize("num_partitions, data_size", [(1, 8), (2, 4), (4, 2)])
def test_mesh_puts_num_partitions_on_model_and_the_rest_on_data(num_partitions, data_size):
  mesh = partitioning.create_mesh(num_partitions)
  assert mesh.axis_names == ("data", "model")
  assert dict(mesh.shape) == {"data": data_size, "model": num_partitions}
  assert sorted(d.id for d in mesh.devices.flat) == sorted(d.id for d in jax.devices())


def test_mesh_rejects_num_partitions_that_does_not_divide_devices():
  with pytest.raises(ValueError, match="num_partitions=3"):
    partitioning.create_mesh(3)


def test_rules_name_every_model_axis_in_every_variant():
  for activation_dims in (1, 2):
    for parameter_dims in (1, 2):
      rules = partitioning.standard_logical_axis_rules(activation_dims, parameter_dims)
      assert set(MODEL_AXIS_NAMES) <= {logical for logical, _ in rules}


def test_default_rules_shard_batch_over_data_and_wide_dims_over_model():
  rules = partitioning.standard_logical_axis_rules()
  spec = lambda *names: nn.logical_to_mesh_axes(names, rules)
  assert spec("batch", "length", "embed") == P("data", None, None)
  assert spec("batch", "heads", "length", "kv") == P("data", "model", None, None)
  assert spec("vocab", "embed") == P("model", None)
  assert spec("embed", "mlp") == P(None, "model")
  assert spec("embed", "joined_kv") == P(None, "model")
  assert spec("heads", "relpos_buckets") == P("model", None)
  assert spec("abspos", "embed") == P(None, None)
  assert spec("embed", "projection") == P(None, None)
  assert spec() == P()


def test_two_dim_parameter_partitioning_shards_embed_params_over_data():
  rules = partitioning.standard_logical_axis_rules(parameter_partitioning_dims=2)
  assert nn.logical_to_mesh_axes(("embed", "mlp"), rules) == P("data", "model")
  assert nn.logical_to_mesh_axes(("vocab", "embed"), rules) == P("model", "data")
  assert nn.logical_to_mesh_axes(("batch", "length", "embed"), rules) == P("data", None, None)


def test_two_dim_activation_partitioning_shards_embed_activations_over_model():
  rules = partitioning.standard_logical_axis_rules(activation_partitioning_dims=2)
  assert nn.logical_to_mesh_axes(("batch", "length", "embed"), rules) == P("data", None, "model")
  assert nn.logical_to_mesh_axes(("embed", "mlp"), rules) == P(None, "model")


def test_invalid_partitioning_dims_are_named():
  with pytest.raises(ValueError, match="parameter_partitioning_dims"):
    partitioning.standard_logical_axis_rules(parameter_partitioning_dims=3)


def test_logical_to_mesh_sharding_accepts_axis_tuples():
  mesh = partitioning.create_mesh(2)
  shardings = partitioning.logical_to_mesh_sharding(
      {"a": ("batch", "embed"), "b": P("embed", "mlp")}, mesh,
      partitioning.standard_logical_axis_rules())
  assert shardings["a"].spec == P("data", None)
  assert shardings["b"].spec == P(None, "model")


def test_params_are_born_sharded_as_the_rules_say():
  mesh = partitioning.create_mesh(2)
  rules = partitioning.standard_logical_axis_rules()
  model, ids = ToyEncoder(), jnp.zeros((8, 5), jnp.int32)
  abstract = jax.eval_shape(model.init, jax.random.key(0), ids)
  shardings = partitioning.params_shardings(abstract, mesh, rules)
  with partitioning.axis_rules_context(rules, mesh):
    variables = jax.jit(model.init, out_shardings=shardings)(jax.random.key(0), ids)
  params = nn.unbox(variables)["params"]
  assert params["embedding"].sharding.spec == P("model", None)
  assert params["embedding"].addressable_shards[0].data.shape == (16, 8)
  assert params["wi"]["kernel"].sharding.spec == P(None, "model")
  assert params["wi"]["kernel"].addressable_shards[0].data.shape == (8, 8)
  assert params["wi"]["bias"].sharding.spec == P("model")
  assert params["wo"]["kernel"].sharding.spec == P("model", None)
  assert params["projection"]["kernel"].sharding.is_fully_replicated


@pytest.mark.slow
def test_sharded_loss_and_grads_equal_single_device():
  model, batch = ToyEncoder(), toy_batch()
  params = nn.unbox(model.init(jax.random.key(0), jnp.asarray(batch["query_ids"])))["params"]

  def loss_fn(params, batch):
    query = model.apply({"params": params}, batch["query_ids"])
    passage = model.apply({"params": params}, batch["passage_ids"])
    return losses.in_batch_softmax_loss(query, passage, temperature=0.1)[0]

  expected_loss, expected_grads = jax.jit(jax.value_and_grad(loss_fn))(params, batch)

  mesh = partitioning.create_mesh(2)
  rules = partitioning.standard_logical_axis_rules()
  abstract = jax.eval_shape(model.init, jax.random.key(0), jnp.asarray(batch["query_ids"]))
  param_shardings = partitioning.params_shardings(abstract, mesh, rules)["params"]
  sharded_params = jax.device_put(params, param_shardings)
  global_batch = partitioning.host_local_to_global(batch, mesh)
  with partitioning.axis_rules_context(rules, mesh):
    step = jax.jit(jax.value_and_grad(loss_fn),
                   in_shardings=(param_shardings, partitioning.batch_sharding(mesh)),
                   out_shardings=(partitioning.replicated(mesh), param_shardings))
    loss, grads = step(sharded_params, global_batch)
  assert grads["wi"]["kernel"].sharding.spec == P(None, "model")
  np.testing.assert_allclose(loss, expected_loss, rtol=1e-5, atol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5),
               grads, expected_grads)


def test_host_local_to_global_on_one_process_splits_batch_over_data():
  mesh = partitioning.create_mesh(2)
  batch = toy_batch()
  global_batch = partitioning.host_local_to_global(batch, mesh)
  for key, value in batch.items():
    assert global_batch[key].shape == value.shape
    assert global_batch[key].sharding.spec == P("data")
    assert global_batch[key].addressable_shards[0].data.shape == (2, 5)
    np.testing.assert_array_equal(global_batch[key], value)


def test_host_local_to_global_rejects_batch_not_divisible_by_data():
  with pytest.raises(ValueError, match="query_ids"):
    partitioning.host_local_to_global({"query_ids": np.zeros((6, 3))}, partitioning.create_mesh(2))
