"""Learning-rate schedules, Adafactor / AdamW construction and optimizer-state shardings."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from hybridir.training import optim
from hybridir.training import partitioning

P = jax.sharding.PartitionSpec


def values_at(schedule, steps):
  return [float(schedule(step)) for step in steps]


def test_linear_schedule_warms_up_then_decays_to_end_value():
  schedule = optim.learning_rate_schedule(1.0, warmup_steps=10, total_steps=110,
                                          decay="linear", end_value_fraction=0.1)
  np.testing.assert_allclose(values_at(schedule, [0, 5, 10, 60, 110, 500]),
                             [0.0, 0.5, 1.0, 0.55, 0.1, 0.1], rtol=1e-6)


def test_cosine_schedule_is_halfway_at_mid_decay():
  schedule = optim.learning_rate_schedule(2.0, warmup_steps=10, total_steps=110, decay="cosine")
  np.testing.assert_allclose(values_at(schedule, [5, 10, 60, 110, 200]),
                             [1.0, 2.0, 1.0, 0.0, 0.0], rtol=1e-6, atol=1e-7)


def test_inverse_sqrt_without_linear_warmup_is_t5_rsqrt():
  schedule = optim.learning_rate_schedule(0.01, warmup_steps=10_000, decay="inverse_sqrt",
                                          linear_warmup=False)
  steps = [0, 5_000, 10_000, 40_000, 250_000]
  np.testing.assert_allclose(values_at(schedule, steps),
                             [1 / np.sqrt(max(step, 10_000)) for step in steps], rtol=1e-6)


def test_constant_schedule_holds_after_warmup():
  schedule = optim.learning_rate_schedule(3e-4, warmup_steps=4, decay="constant")
  np.testing.assert_allclose(values_at(schedule, [2, 4, 10**6]), [1.5e-4, 3e-4, 3e-4], rtol=1e-6)


def test_schedule_errors_name_the_parameter():
  with pytest.raises(ValueError, match="decay"):
    optim.learning_rate_schedule(1.0, decay="exponential")
  with pytest.raises(ValueError, match="total_steps"):
    optim.learning_rate_schedule(1.0, warmup_steps=10, total_steps=10, decay="linear")
  with pytest.raises(ValueError, match="optimizer name"):
    optim.create_optimizer("sgd")


def test_adafactor_factors_a_large_embedding():
  params = {"embedding": jnp.zeros((25_000, 64))}
  optimizer = optim.create_optimizer("adafactor", 1e-3, min_dim_size_to_factor=64)
  state = jax.eval_shape(optimizer.init, params)
  state_size = sum(leaf.size for leaf in jax.tree.leaves(state))
  assert state_size < params["embedding"].size / 50
  assert state_size >= 25_000 + 64  # Row and column statistics.


@pytest.mark.slow
def test_adafactor_and_adamw_update_params():
  params = {"kernel": jnp.ones((4, 3)), "scale": jnp.ones((3,))}
  grads = jax.tree.map(jnp.ones_like, params)
  for name in optim.OPTIMIZERS:
    schedule = optim.learning_rate_schedule(0.1, decay="constant")
    optimizer = optim.create_optimizer(name, schedule, weight_decay=0.01)
    updates, _ = optimizer.update(grads, optimizer.init(params), params)
    assert all(np.all(np.asarray(u) < 0) for u in jax.tree.leaves(updates)), name


def test_gradient_clipping_bounds_the_global_norm():
  params = {"w": jnp.zeros((10,))}
  large = {"w": jnp.full((10,), 30.0)}  # Global norm ~94.9.
  scaled = {"w": large["w"] / optax.tree.norm(large)}
  # eps=1 makes Adam's update depend on the gradient's scale, so clipping shows in the update.
  clipped = optim.create_optimizer("adamw", 1.0, gradient_clip_norm=1.0, eps=1.0)
  unclipped = optim.create_optimizer("adamw", 1.0, gradient_clip_norm=None, eps=1.0)
  update_clipped, _ = clipped.update(large, clipped.init(params), params)
  update_scaled, _ = unclipped.update(scaled, unclipped.init(params), params)
  update_large, _ = unclipped.update(large, unclipped.init(params), params)
  np.testing.assert_allclose(update_clipped["w"], update_scaled["w"], rtol=1e-6)
  assert not np.allclose(update_clipped["w"], update_large["w"])


def test_weight_decay_skips_vectors_and_scalars():
  mask = optim.decay_matrices_only({"kernel": jnp.ones((2, 2)), "bias": jnp.ones(2),
                                    "log_scale": jnp.float32(1.0)})
  assert mask == {"kernel": True, "bias": False, "log_scale": False}


@pytest.mark.parametrize("name", optim.OPTIMIZERS)
def test_optimizer_state_shardings_follow_params(name):
  mesh = partitioning.create_mesh(2)
  rules = partitioning.standard_logical_axis_rules()
  params = {"embedding": jnp.zeros((64, 32)), "mlp": {"kernel": jnp.zeros((32, 48))},
            "norm": jnp.zeros((32,)), "log_scale": jnp.zeros(())}
  logical = {"embedding": ("vocab", "embed"), "mlp": {"kernel": ("embed", "mlp")},
             "norm": ("embed",), "log_scale": ()}
  param_shardings = partitioning.logical_to_mesh_sharding(logical, mesh, rules)
  optimizer = optim.create_optimizer(name, 1e-3, min_dim_size_to_factor=16, weight_decay=0.1)
  state_shardings = optim.optimizer_state_shardings(
      optimizer, jax.eval_shape(lambda: params), param_shardings, mesh)

  state_leaves = jax.tree.leaves(jax.eval_shape(optimizer.init, params))
  sharding_leaves = jax.tree.leaves(state_shardings)
  assert len(sharding_leaves) == len(state_leaves)
  assert all(isinstance(s, jax.sharding.NamedSharding) for s in sharding_leaves)
  specs = {tuple(s.spec) for s in sharding_leaves}
  if name == "adamw":  # mu and nu of the embedding mirror its ('model', None) sharding.
    assert ("model", None) in specs and (None, "model") in specs
  else:  # Factored: the embedding's [64] column statistics keep the vocab axis on 'model'.
    assert ("model",) in specs and (None, "model") not in specs

  state = jax.jit(optimizer.init, out_shardings=state_shardings)(
      jax.device_put(params, param_shardings))
  for leaf, sharding in zip(jax.tree.leaves(state), sharding_leaves):
    assert leaf.sharding.is_equivalent_to(sharding, leaf.ndim)
