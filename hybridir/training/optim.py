"""Optimizers (Adafactor as in T5X, AdamW), learning-rate schedules, optimizer-state shardings."""
import math
from typing import Any, Callable, Optional, Union

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from hybridir import errors
from hybridir.training import partitioning

Schedule = Callable[[Any], jax.Array]
DECAYS = ("linear", "inverse_sqrt", "cosine", "constant")
OPTIMIZERS = ("adafactor", "adamw")


def learning_rate_schedule(base_learning_rate: float,
                           warmup_steps: int = 0,
                           total_steps: Optional[int] = None,
                           decay: str = "linear",
                           end_value_fraction: float = 0.0,
                           linear_warmup: bool = True) -> Schedule:
  """Warm-up to `base_learning_rate` over `warmup_steps`, then `decay` until `total_steps`.

  linear / cosine: down to base * end_value_fraction at total_steps, constant after.
  inverse_sqrt: base * sqrt(warmup_steps / step) after warm-up (T5's rsqrt schedule; with
  linear_warmup=False the rate is constant during warm-up, so base=0.01, warmup 10k is T5's
  1/sqrt(max(step, 10k))). end_value_fraction is unused by inverse_sqrt and constant.
  """
  if decay not in DECAYS:
    raise errors.SettingError(f"decay must be one of {DECAYS}, got {decay!r}")
  if not base_learning_rate > 0:
    raise errors.SettingError(f"base_learning_rate must be > 0, got {base_learning_rate!r}")
  if warmup_steps < 0:
    raise errors.SettingError(f"warmup_steps must be >= 0, got {warmup_steps!r}")
  if decay in ("linear", "cosine") and (total_steps is None or total_steps <= warmup_steps):
    raise errors.SettingError(f"total_steps must be > warmup_steps={warmup_steps} for {decay} "
                              f"decay, got {total_steps!r}")
  if decay == "inverse_sqrt" and warmup_steps < 1:
    raise errors.SettingError("warmup_steps must be >= 1 for inverse_sqrt decay (it sets the "
                              f"scale), got {warmup_steps!r}")
  if not 0.0 <= end_value_fraction <= 1.0:
    raise errors.SettingError(f"end_value_fraction must be in [0, 1], got {end_value_fraction!r}")

  def schedule(step):
    step = jnp.asarray(step, jnp.float32)
    if decay == "inverse_sqrt":
      value = base_learning_rate * jnp.sqrt(warmup_steps / jnp.maximum(step, warmup_steps))
    elif decay == "constant":
      value = jnp.full_like(step, base_learning_rate)
    else:
      progress = jnp.clip((step - warmup_steps) / (total_steps - warmup_steps), 0.0, 1.0)
      if decay == "linear":
        shape = 1.0 - progress
      else:
        shape = 0.5 * (1.0 + jnp.cos(math.pi * progress))
      value = base_learning_rate * (end_value_fraction + (1.0 - end_value_fraction) * shape)
    if warmup_steps and linear_warmup:
      value = value * jnp.minimum(1.0, step / warmup_steps)
    return value

  return schedule


def decay_matrices_only(params: Any) -> Any:
  """Weight-decay mask: kernels and embeddings (ndim >= 2); not norms, biases or the temperature."""
  return jax.tree.map(lambda p: jnp.ndim(p) >= 2, params)


def create_optimizer(name: str = "adafactor",
                     learning_rate_schedule: Union[float, Schedule] = 1e-3,
                     weight_decay: float = 0.0,
                     gradient_clip_norm: Optional[float] = 1.0,
                     factored: bool = True,
                     min_dim_size_to_factor: int = 128,
                     decay_rate: float = 0.8,
                     clipping_threshold: Optional[float] = 1.0,
                     multiply_by_parameter_scale: bool = True,
                     momentum: Optional[float] = None,
                     b1: float = 0.9,
                     b2: float = 0.999,
                     eps: float = 1e-8,
                     weight_decay_mask: Any = decay_matrices_only) -> optax.GradientTransformation:
  """Global-norm gradient clipping, then Adafactor (T5X defaults) or AdamW.

  Adafactor factors the second moment of any parameter whose two largest dims are both
  >= min_dim_size_to_factor, so a [250k, d_model] embedding keeps O(250k + d_model) statistics.
  In both, weight decay is decoupled and multiplied by the learning rate (AdamW's convention).
  gradient_clip_norm None or 0 turns clipping off.
  """
  if name not in OPTIMIZERS:
    raise errors.SettingError(f"optimizer name must be one of {OPTIMIZERS}, got {name!r}")
  if weight_decay < 0:
    raise errors.SettingError(f"weight_decay must be >= 0, got {weight_decay!r}")
  if gradient_clip_norm is not None and gradient_clip_norm < 0:
    raise errors.SettingError(f"gradient_clip_norm must be >= 0 or None, got "
                              f"{gradient_clip_norm!r}")
  transforms = []
  if gradient_clip_norm:
    transforms.append(optax.clip_by_global_norm(gradient_clip_norm))
  if name == "adamw":
    transforms.append(optax.adamw(learning_rate_schedule, b1=b1, b2=b2, eps=eps,
                                  weight_decay=weight_decay, mask=weight_decay_mask))
    return optax.chain(*transforms)
  transforms.append(optax.scale_by_factored_rms(
      factored=factored, decay_rate=decay_rate, min_dim_size_to_factor=min_dim_size_to_factor))
  if clipping_threshold is not None:
    transforms.append(optax.clip_by_block_rms(clipping_threshold))
  if multiply_by_parameter_scale:
    transforms.append(optax.scale_by_param_block_rms())
  if momentum is not None:
    transforms.append(optax.ema(momentum, debias=False))
  if weight_decay:
    transforms.append(optax.add_decayed_weights(weight_decay, mask=weight_decay_mask))
  transforms.append(optax.scale_by_learning_rate(learning_rate_schedule))
  return optax.chain(*transforms)


def optimizer_state_shardings(optimizer: optax.GradientTransformation, abstract_params: Any,
                              param_shardings: Any, mesh: jax.sharding.Mesh) -> Any:
  """NamedShardings for `optimizer.init(params)`'s state, derived from the params' shardings:
  each leaf as its param's, a factored leaf with that axis dropped (partitioning decides how).
  """
  abstract_params = nn.meta.unbox(abstract_params)
  abstract_state = jax.eval_shape(optimizer.init, abstract_params)
  return partitioning.shardings_like_params(abstract_state, abstract_params, param_shardings, mesh)
