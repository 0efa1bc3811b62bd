"""The train state and the train step: in-batch contrastive loss, optionally with GradCache.

The step sees the *global* batch (every device's passages are negatives for every query).
GradCache (Gao et al. 2021) makes large contrastive batches fit: embed the batch in chunks
without keeping activations, take the loss and its gradient w.r.t. the embeddings over the whole
batch, then back-propagate chunk by chunk, so memory is one chunk's activations while the
negatives stay global. Plain gradient accumulation would shrink the negatives to a chunk.
"""
import dataclasses
from typing import Any, Callable

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from hybridir import errors
from hybridir.models import dual_encoder
from hybridir.training import losses


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any  # {"model": DualEncoder params, "log_scale": scalar (learned temperature)}
  opt_state: Any


@dataclasses.dataclass(frozen=True)
class LossConfig:
  """How the in-batch loss is taken. temperature: a number, or 'learned' (starting at
  initial_temperature). grad_cache_chunks > 1 switches on gradient caching. mask_shared_passages:
  another example's positive with this example's passage key (same passage text, or a
  translation of it) is no negative."""
  temperature: float | str = 0.05
  initial_temperature: float = 0.05
  symmetric: bool = False
  mask_shared_passages: bool = True
  hard_negatives_per_query: int = 0
  grad_cache_chunks: int = 1

  def __post_init__(self):
    if not (self.temperature == "learned" or (isinstance(self.temperature, (int, float))
                                                and self.temperature > 0)):
      raise errors.SettingError(f"LossConfig.temperature must be > 0 or 'learned', got "
                                f"{self.temperature!r}")
    if self.grad_cache_chunks < 1:
      raise errors.SettingError(f"LossConfig.grad_cache_chunks must be >= 1, got "
                                f"{self.grad_cache_chunks}")


def initial_params(model_params, loss_config: LossConfig) -> dict:
  return {"model": model_params,
          "log_scale": jnp.asarray(losses.initial_log_scale(loss_config.initial_temperature),
                                   jnp.float32)}


def _temperature(params, loss_config: LossConfig):
  if loss_config.temperature == "learned":
    return losses.temperature_from_log_scale(params["log_scale"])
  return loss_config.temperature


def _passage_tokens(batch) -> jax.Array:
  """Positives first, then each query's hard negatives (the loss's layout)."""
  passages = batch["passage_tokens"]
  if "negative_tokens" in batch:  # [B, H, Lp]
    negatives = batch["negative_tokens"]
    passages = jnp.concatenate([passages, negatives.reshape(-1, negatives.shape[-1])], axis=0)
  return passages


def _passage_keys(batch) -> jax.Array:
  """The batch's passage keys (input_pipeline.HybridInput); without them, each pair id its own."""
  return batch["passage_keys"] if "passage_keys" in batch else batch["pair_ids"]


def _in_batch_loss(params, queries, passages, batch, loss_config: LossConfig):
  """The configured in-batch loss of (global) query and passage embeddings: (loss, metrics)."""
  return losses.in_batch_softmax_loss(
      queries, passages, temperature=_temperature(params, loss_config),
      passage_keys=_passage_keys(batch) if loss_config.mask_shared_passages else None,
      hard_negatives_per_query=loss_config.hard_negatives_per_query,
      symmetric=loss_config.symmetric)


def make_train_step(model: dual_encoder.DualEncoder, optimizer: optax.GradientTransformation,
                    loss_config: LossConfig, constrain_batch: Callable = lambda x: x):
  """(state, batch, dropout_rng) -> (state, metrics). `constrain_batch` pins chunk shardings."""

  def encode(model_params, tokens, tower, rng):
    return model.apply({"params": model_params}, tokens, tower, deterministic=False,
                       rngs={"dropout": rng}, method=dual_encoder.DualEncoder.encode)

  def plain_grads(params, batch, rng):
    query_rng, passage_rng = jax.random.split(rng)

    def loss_fn(params):
      queries = encode(params["model"], batch["query_tokens"], "query", query_rng)
      passages = encode(params["model"], _passage_tokens(batch), "passage", passage_rng)
      return _in_batch_loss(params, queries, passages, batch, loss_config)

    return jax.value_and_grad(loss_fn, has_aux=True)(params)

  def chunked(tokens):
    """[B, L] -> [C, B/C, L], chunk c = rows c, c+C, ...: each device keeps its rows."""
    chunks = loss_config.grad_cache_chunks
    if tokens.shape[0] % chunks:
      raise ValueError(f"batch of {tokens.shape[0]} does not split into "
                       f"LossConfig.grad_cache_chunks={chunks} chunks")
    return tokens.reshape(tokens.shape[0] // chunks, chunks, -1).transpose(1, 0, 2)

  def unchunked(embeddings):
    return embeddings.transpose(1, 0, 2).reshape(-1, embeddings.shape[-1])

  def cached_grads(params, batch, rng):
    towers = {"query": chunked(batch["query_tokens"]), "passage": chunked(_passage_tokens(batch))}
    rngs = {name: jax.random.split(key, loss_config.grad_cache_chunks)
            for name, key in zip(towers, jax.random.split(rng))}

    def embed_all(name):  # Forward only, no activations kept.
      def body(_, xs):
        tokens, key = xs
        return None, encode(params["model"], constrain_batch(tokens), name, key)
      return unchunked(jax.lax.scan(body, None, (towers[name], rngs[name]))[1])

    embeddings = {name: jax.lax.stop_gradient(embed_all(name)) for name in towers}

    def loss_fn(params, queries, passages):
      return _in_batch_loss(params, queries, passages, batch, loss_config)

    (loss, metrics), (grads, query_cot, passage_cot) = jax.value_and_grad(
        loss_fn, argnums=(0, 1, 2), has_aux=True)(params, embeddings["query"],
                                                  embeddings["passage"])
    cotangents = {"query": query_cot, "passage": passage_cot}
    model_grads = jax.tree.map(jnp.zeros_like, params["model"])
    for name in towers:  # Re-run each chunk with the same dropout key, back-propagate its slice.
      def body(acc, xs, name=name):
        tokens, key, cotangent = xs
        _, backward = jax.vjp(lambda p: encode(p, constrain_batch(tokens), name, key),
                              params["model"])
        return jax.tree.map(jnp.add, acc, backward(cotangent)[0]), None
      model_grads = jax.lax.scan(
          body, model_grads,
          (towers[name], rngs[name], chunked(cotangents[name])))[0]
    grads = {**grads, "model": jax.tree.map(jnp.add, grads["model"], model_grads)}
    return (loss, metrics), grads

  grads_fn = cached_grads if loss_config.grad_cache_chunks > 1 else plain_grads

  def train_step(state: TrainState, batch, rng):
    rng = jax.random.fold_in(rng, state.step)
    (loss, metrics), grads = grads_fn(state.params, batch, rng)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = dict(metrics, grad_norm=optax.tree.norm(grads))
    return TrainState(state.step + 1, params, opt_state), metrics

  return train_step, grads_fn


def compiler_options(platform: str | None = None) -> dict[str, Any] | None:
  """XLA options for jitting the train and eval steps (`jax.jit(..., compiler_options=...)`).

  On CPU: XLA's memory-optimising scheduler (the default one lengthens buffer lifetimes to run
  independent operations concurrently) and no excess precision (otherwise XLA keeps float32
  copies where the program rounds to bfloat16): less memory and a faster bfloat16 step
  (BENCHMARKS.md, "Activation memory"). Other backends: their defaults (None).
  `platform`: the one compiled for (default: this process's backend).
  """
  if (platform or jax.default_backend()) != "cpu":
    return None
  return {"xla_cpu_scheduler_type": "CPU_SCHEDULER_TYPE_MEMORY_OPTIMIZED",
          "xla_allow_excess_precision": False}


def make_eval_step(model: dual_encoder.DualEncoder, loss_config: LossConfig):
  """(params, batch) -> in-batch metrics without dropout: a cheap held-out check."""

  def eval_step(params, batch):
    encode = lambda tokens, tower: model.apply(
        {"params": params["model"]}, tokens, tower, method=dual_encoder.DualEncoder.encode)
    return _in_batch_loss(params, encode(batch["query_tokens"], "query"),
                          encode(_passage_tokens(batch), "passage"), batch, loss_config)[1]

  return eval_step


def strip_boxes(tree):
  """The values inside logical-partitioning boxes, without applying sharding constraints."""
  is_box = lambda x: isinstance(x, nn.meta.AxisMetadata)
  return jax.tree.map(lambda x: x.unbox(apply_constraint=False) if is_box(x) else x, tree,
                      is_leaf=is_box)


def init_model_params(model: dual_encoder.DualEncoder, rng, query_length: int,
                      passage_length: int):
  return nn.unbox(model.init(rng, jnp.ones((1, query_length), jnp.int32),
                             jnp.ones((1, passage_length), jnp.int32))["params"])
