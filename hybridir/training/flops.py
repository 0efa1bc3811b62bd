"""The FLOPs of a dual-encoder train step, counted from the model's shapes (no compile)."""
from hybridir.models import t5


def matmul_params(cfg) -> int:
  """Parameters that multiply every token: attention and MLP weights of all layers."""
  attention = 4 * cfg.emb_dim * cfg.num_heads * cfg.head_dim
  mlp_inputs = len(cfg.mlp_activations) if isinstance(cfg, t5.T5Config) else 1
  return (attention + (mlp_inputs + 1) * cfg.emb_dim * cfg.mlp_dim) * cfg.num_layers


def encode_flops(cfg, length: int) -> float:
  """Forward FLOPs of one text of `length` tokens: 2 * matmul params * L + 4 * L^2 * heads *
  head_dim * layers (attention scores and values). The embedding lookup counts zero; padded
  positions count (every implementation computes them)."""
  return (2 * matmul_params(cfg) * length
          + 4 * length ** 2 * cfg.num_heads * cfg.head_dim * cfg.num_layers)


def train_step_flops(cfg, batch_size: int, lengths) -> float:
  """Forward + backward FLOPs (3x forward: encode_flops) of the query and passage calls, plus
  the loss matmul."""
  flops = sum(3 * batch_size * encode_flops(cfg, length) for length in lengths)
  return flops + 6 * batch_size * batch_size * cfg.emb_dim
