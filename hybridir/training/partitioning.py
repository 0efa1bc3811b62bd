"""The device mesh, logical-axis rules and shardings: the only module that knows mesh axis names.

Models name their axes ('batch', 'embed', 'mlp', ...); the rules here map those names to the two
mesh axes, 'data' (batch, and very large parameters) and 'model' (tensor parallelism), as T5X does.
"""
import contextlib
import math
from typing import Any, Iterator, Mapping, Optional, Sequence, Tuple

import flax.linen as nn
import jax
from jax.experimental import mesh_utils
import numpy as np

from hybridir import errors

PartitionSpec = jax.sharding.PartitionSpec
NamedSharding = jax.sharding.NamedSharding
AxisRules = Tuple[Tuple[str, Optional[str]], ...]

DATA_AXIS = "data"
MODEL_AXIS = "model"
MESH_AXES = (DATA_AXIS, MODEL_AXIS)

# Logical names never sharded: position tables, sequence length, per-head feature dims, the
# projection head (small, and its output feeds the global in-batch loss).
_REPLICATED_AXES = ("length", "kv", "relpos_buckets", "abspos", "token_types", "projection")


def create_mesh(num_partitions: int = 1,
                devices: Optional[Sequence[jax.Device]] = None) -> jax.sharding.Mesh:
  """A (data, model) mesh over all global devices, num_partitions devices per model replica."""
  devices = list(jax.devices() if devices is None else devices)
  if not isinstance(num_partitions, int) or num_partitions < 1:
    raise errors.SettingError(f"num_partitions must be a positive int, got {num_partitions!r}")
  if len(devices) % num_partitions:
    raise errors.SettingError(f"num_partitions={num_partitions} must divide the number of devices "
                     f"({len(devices)}); choose one of {_divisors(len(devices))}")
  shape = (len(devices) // num_partitions, num_partitions)
  try:  # Topology-aware layout on TPU/GPU; keeps the model axis on the fastest links.
    device_array = mesh_utils.create_device_mesh(shape, devices, allow_split_physical_axes=True)
  except (ValueError, NotImplementedError, AssertionError):
    device_array = np.asarray(devices, dtype=object).reshape(shape)
  auto = jax.sharding.AxisType.Auto
  return jax.sharding.Mesh(device_array, MESH_AXES, axis_types=(auto, auto))


def _divisors(n: int) -> list[int]:
  return [d for d in range(1, n + 1) if n % d == 0]


def standard_logical_axis_rules(activation_partitioning_dims: int = 1,
                                parameter_partitioning_dims: int = 1) -> AxisRules:
  """Maps every logical axis name to a mesh axis or None, in priority order (flax semantics).

  Default (1, 1): batch over 'data'; vocab, mlp, heads and joined_kv over 'model' (pure data
  parallel when the model axis has size 1). activation_partitioning_dims=2 also shards 'embed'
  activations over 'model'; parameter_partitioning_dims=2 also shards 'embed' parameters over 'data'
  (ZeRO-3 like, for models whose parameters do not fit one replica). A rule applies only when its
  mesh axis is still free in that array: an ('embed', 'mlp') kernel gets mlp -> 'model' first.
  """
  for name, value in (("activation_partitioning_dims", activation_partitioning_dims),
                      ("parameter_partitioning_dims", parameter_partitioning_dims)):
    if value not in (1, 2):
      raise ValueError(f"{name} must be 1 or 2, got {value!r}")
  rules = [
      ("batch", DATA_AXIS),
      ("vocab", MODEL_AXIS),
      ("mlp", MODEL_AXIS),
      ("heads", MODEL_AXIS),
      ("joined_kv", MODEL_AXIS),
  ]
  if activation_partitioning_dims == 2:
    rules.append(("embed", MODEL_AXIS))
  if parameter_partitioning_dims == 2:
    rules.append(("embed", DATA_AXIS))
  if activation_partitioning_dims == 1 and parameter_partitioning_dims == 1:
    rules.append(("embed", None))
  rules.extend((name, None) for name in _REPLICATED_AXES)
  return tuple(rules)


def _is_logical_axes(x: Any) -> bool:
  return isinstance(x, PartitionSpec) or (
      isinstance(x, tuple) and all(a is None or isinstance(a, str) for a in x))


def logical_to_mesh_sharding(logical_axes_tree: Any, mesh: jax.sharding.Mesh,
                             rules: AxisRules) -> Any:
  """A tree of logical axis tuples / PartitionSpecs to a tree of NamedShardings on `mesh`."""
  specs = jax.tree.map(lambda axes: PartitionSpec(*axes), logical_axes_tree,
                       is_leaf=_is_logical_axes)
  return nn.logical_to_mesh_sharding(specs, mesh, rules)


def params_shardings(abstract_variables: Any, mesh: jax.sharding.Mesh, rules: AxisRules) -> Any:
  """NamedShardings for a linen variables tree of nn.Partitioned boxes (plain leaves replicate).

  The result has one sharding where each box (or plain leaf) is, so it can serve as jax.jit's
  out_shardings for `model.init` directly.
  """
  return nn.logical_to_mesh_sharding(nn.get_partition_spec(abstract_variables), mesh, rules)


def batch_spec() -> PartitionSpec:
  """Leading (batch) dimension split over 'data', the rest replicated (a spec, for shard_map)."""
  return PartitionSpec(DATA_AXIS)


def replicated_spec() -> PartitionSpec:
  """A full copy on every device (a spec, for shard_map)."""
  return PartitionSpec()


def batch_index() -> jax.Array:
  """Inside shard_map: this device's position along the batch ('data') axis."""
  return jax.lax.axis_index(DATA_AXIS)


def batch_sharding(mesh: jax.sharding.Mesh) -> NamedSharding:
  """Leading (batch) dimension split over 'data', the rest replicated."""
  return NamedSharding(mesh, batch_spec())


def data_parallel_size(mesh: jax.sharding.Mesh) -> int:
  """How many ways the batch is split: the size of the mesh's data axis."""
  return mesh.shape[DATA_AXIS]


def check_batch_splits(batch_size, mesh: jax.sharding.Mesh, hosts: int, chunks: int = 1) -> None:
  """Fails (SettingError, naming BATCH_SIZE and what it must divide by) unless the global batch
  splits evenly over the hosts, the data-parallel devices and GradCache's chunks."""
  data = data_parallel_size(mesh)
  unit = math.lcm(data, hosts) * chunks
  if not isinstance(batch_size, int) or batch_size < 1 or batch_size % unit:
    raise errors.SettingError(
        f"BATCH_SIZE={batch_size} does not split evenly: it must be a multiple of {unit} (mesh "
        f"{dict(mesh.shape)}: {data} data-parallel devices, {hosts} hosts, "
        f"LossConfig.grad_cache_chunks={chunks})")


def model_parallel_size(mesh: jax.sharding.Mesh) -> int:
  """How many devices each model replica's parameters are split over: the model axis's size."""
  return mesh.shape[MODEL_AXIS]


def replicated(mesh: jax.sharding.Mesh) -> NamedSharding:
  """A full copy on every device."""
  return NamedSharding(mesh, replicated_spec())


def shardings_like_params(tree: Any, abstract_params: Any, param_shardings: Any,
                          mesh: jax.sharding.Mesh) -> Any:
  """NamedShardings for a tree that mirrors the params (an optimizer state), from the params'.

  A leaf belongs to the param whose tree path ends its own path (mu/nu/v_row/... mirror the
  params tree). Same shape: the param's sharding. One axis fewer (Adafactor's factored row/column
  statistics): the param's spec with that axis dropped, replicated if which axis is ambiguous.
  Anything else (step counts, placeholders): replicated.
  """
  is_sharding = lambda x: isinstance(x, NamedSharding)
  param_leaves = jax.tree_util.tree_flatten_with_path(abstract_params)[0]
  sharding_leaves = jax.tree.leaves(param_shardings, is_leaf=is_sharding)
  if len(param_leaves) != len(sharding_leaves) or not all(map(is_sharding, sharding_leaves)):
    raise ValueError(f"param_shardings must hold one NamedSharding per param: "
                     f"{len(sharding_leaves)} leaves for {len(param_leaves)} params")
  by_path = {tuple(path): (leaf.shape, sharding)
             for (path, leaf), sharding in zip(param_leaves, sharding_leaves)}
  full_copy = replicated(mesh)

  def leaf_sharding(path, leaf):
    path = tuple(path)
    for start in range(len(path)):  # Longest matching param path first.
      if path[start:] in by_path:
        param_shape, sharding = by_path[path[start:]]
        return _derived_sharding(leaf.shape, param_shape, sharding, mesh) or full_copy
    return full_copy

  return jax.tree_util.tree_map_with_path(leaf_sharding, tree)


def _derived_sharding(shape, param_shape, sharding, mesh):
  """The param's sharding for a same-shape leaf, its spec less one axis for a reduced leaf."""
  if tuple(shape) == tuple(param_shape):
    return sharding
  spec = tuple(sharding.spec) + (None,) * (len(param_shape) - len(sharding.spec))
  candidates = {spec[:axis] + spec[axis + 1:]
                for axis in range(len(param_shape))
                if tuple(param_shape[:axis]) + tuple(param_shape[axis + 1:]) == tuple(shape)}
  if len(candidates) == 1:
    return NamedSharding(mesh, PartitionSpec(*candidates.pop()))
  return None


def host_local_to_global(batch: Mapping[str, np.ndarray],
                         mesh: jax.sharding.Mesh) -> dict[str, jax.Array]:
  """Assembles each host's share of the batch into global arrays split over 'data'."""
  sharding = batch_sharding(mesh)
  data_size = mesh.shape[DATA_AXIS]
  result = {}
  for key, value in batch.items():
    value = np.asarray(value)
    if value.ndim == 0:
      raise ValueError(f"batch[{key!r}] is a scalar; every feature needs a leading batch dimension")
    global_size = value.shape[0] * jax.process_count()
    if global_size % data_size:
      raise ValueError(f"batch[{key!r}] has global batch size {global_size}, not a multiple of "
                       f"the mesh's '{DATA_AXIS}' axis size {data_size}")
    result[key] = jax.make_array_from_process_local_data(sharding, value)
  return result


@contextlib.contextmanager
def axis_rules_context(rules: AxisRules,
                       mesh: Optional[jax.sharding.Mesh] = None) -> Iterator[None]:
  """Makes models' nn.with_logical_constraint use `rules` on `mesh`; trace jitted steps inside.

  Without a mesh (and none set by the caller) the constraints are no-ops.
  """
  with contextlib.ExitStack() as stack:
    if mesh is not None:
      stack.enter_context(jax.set_mesh(mesh))
    stack.enter_context(nn.logical_axis_rules(rules))
    yield
