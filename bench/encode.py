"""Encoding throughput (texts/s): the Flax mT5-small-shaped dual encoder vs transformers (PyTorch).

Both encode the same token batches (mean pooling + L2 normalisation, float32, inference), run
alternately in one process so machine noise hits both alike; the table gives medians and the ratio.

  python bench/encode.py [--batch_size 32] [--length 128] [--repeats 5] [--model mt5_small]
"""
import argparse
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402

from hybridir import gin_utils  # noqa: E402
from hybridir.training import importers  # noqa: E402


def torch_model(cfg):
  """transformers' MT5EncoderModel with the same dims, in eval mode."""
  hf = transformers.MT5Config(
      vocab_size=cfg.vocab_size, d_model=cfg.emb_dim, d_kv=cfg.head_dim, d_ff=cfg.mlp_dim,
      num_layers=cfg.num_layers, num_heads=cfg.num_heads, feed_forward_proj="gated-gelu",
      relative_attention_num_buckets=cfg.relative_attention_num_buckets, dropout_rate=0.0)
  return transformers.MT5EncoderModel(hf).eval()


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--model", default="mt5_small")
  parser.add_argument("--batch_size", type=int, default=32)
  parser.add_argument("--length", type=int, default=128)
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--threads", type=int, default=os.cpu_count())
  args = parser.parse_args()
  torch.set_num_threads(args.threads)

  gin_utils.parse([f"gin_configs/models/{args.model}.gin"], ["DROPOUT_RATE = 0.0"])
  model = gin_utils.evaluate("MODEL")
  cfg = model.encoder_config
  rng = np.random.default_rng(0)
  lengths = rng.integers(args.length // 2, args.length + 1, args.batch_size)
  tokens = np.zeros((args.batch_size, args.length), np.int32)
  for row, n in enumerate(lengths):
    tokens[row, :n] = rng.integers(3, cfg.vocab_size, n)
    tokens[row, n - 1] = cfg.eos_id
  mask = tokens != cfg.pad_id

  params = jax.jit(lambda: importers.nn.unbox(
      model.init(jax.random.PRNGKey(0), tokens[:1], tokens[:1])["params"]))()
  flax_encode = jax.jit(lambda p, t: model.apply({"params": p}, t, method="encode"))
  jax_tokens = jnp.asarray(tokens)
  flax_encode(params, jax_tokens).block_until_ready()

  reference = torch_model(cfg)
  torch_tokens, torch_mask = torch.tensor(tokens, dtype=torch.long), torch.tensor(mask)

  def torch_encode():
    with torch.inference_mode():
      hidden = reference(input_ids=torch_tokens, attention_mask=torch_mask).last_hidden_state
      weights = torch_mask.unsqueeze(-1).float()
      pooled = (hidden * weights).sum(1) / weights.sum(1)
      return torch.nn.functional.normalize(pooled, dim=-1)

  torch_encode()
  timings = {"flax (jit)": [], "pytorch (eager)": []}
  for _ in range(args.repeats):
    start = time.perf_counter()
    flax_encode(params, jax_tokens).block_until_ready()
    timings["flax (jit)"].append(time.perf_counter() - start)
    start = time.perf_counter()
    torch_encode()
    timings["pytorch (eager)"].append(time.perf_counter() - start)

  print(f"{args.model}: batch {args.batch_size} x length {args.length} (real tokens "
        f"{int(mask.sum())}), float32, {args.threads} threads, {args.repeats} alternating repeats")
  print(f"{'implementation':<18}{'median s/batch':>16}{'texts/s':>10}")
  medians = {name: float(np.median(t)) for name, t in timings.items()}
  for name, median in medians.items():
    print(f"{name:<18}{median:>16.3f}{args.batch_size / median:>10.1f}")
  print(f"ratio flax/pytorch throughput: {medians['pytorch (eager)'] / medians['flax (jit)']:.2f}x")


if __name__ == "__main__":
  main()
